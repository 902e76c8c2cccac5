"""Topologies: linear :class:`Pipeline` (nestable) and fan-out/fan-in :class:`ParallelPipeline`.

A topology is a description: it holds actor instances and says how they link. A
``PipelineTask`` (or :func:`build` with a :class:`~runtime.Session`) spawns and links them.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Union

import attrs

from ._actor import Actor
from ._cell import Cell, register_cell_class
from ._frames import EndFrame, FrameDirection, StartFrame
from ._mailbox import Envelope
from ._session import Session

__all__ = ["ParallelPipeline", "Pipeline", "Segment", "Stage", "build"]

#: Anything that can be a stage of a pipeline.
Stage = Union[Actor[Any], "Pipeline", "ParallelPipeline"]


@attrs.frozen
class Segment:
    """A materialised topology: its actors, internal links, entry and exit actors."""

    actors: tuple[Actor[Any], ...]
    links: tuple[tuple[Actor[Any], Actor[Any]], ...]
    heads: tuple[Actor[Any], ...]
    tails: tuple[Actor[Any], ...]


def _segment(stage: object) -> Segment:
    if isinstance(stage, Actor):
        return Segment((stage,), (), (stage,), (stage,))
    if isinstance(stage, Pipeline | ParallelPipeline):
        return stage.segment()
    raise TypeError(
        f"a pipeline stage must be an Actor, a Pipeline or a ParallelPipeline; got "
        f"{type(stage).__name__} ({stage!r})"
    )


class Pipeline:
    """Stages linked in a line: each stage's downstream output feeds the next one.

    Stages are actors or nested topologies (``Pipeline``, ``ParallelPipeline``).

    Args:
        stages: The stages, input end first.
        name: Optional name (for logs).
    """

    def __init__(self, stages: Sequence[Stage], *, name: str | None = None) -> None:
        if isinstance(stages, Actor | Pipeline | ParallelPipeline):
            raise TypeError("Pipeline takes a list of stages: Pipeline([a, b, c])")
        self.stages: tuple[Stage, ...] = tuple(stages)
        self.name = name or "Pipeline"
        seen: set[int] = set()
        for actor in self.segment().actors:
            if id(actor) in seen:
                raise ValueError(f"actor {actor.name!r} appears twice in the topology")
            seen.add(id(actor))

    def segment(self) -> Segment:
        """Materialise the links of this pipeline."""
        segments = [s for s in (_segment(stage) for stage in self.stages) if s.actors]
        if not segments:
            return Segment((), (), (), ())
        actors: list[Actor[Any]] = []
        links: list[tuple[Actor[Any], Actor[Any]]] = []
        for i, seg in enumerate(segments):
            actors.extend(seg.actors)
            links.extend(seg.links)
            if i:
                prev = segments[i - 1]
                links.extend((t, h) for t in prev.tails for h in seg.heads)
        return Segment(tuple(actors), tuple(links), segments[0].heads, segments[-1].tails)

    def __repr__(self) -> str:
        return f"Pipeline({list(self.stages)!r})"


class ParallelPipeline:
    """Branches that all see every frame; what comes out of them is merged.

    Each frame entering the parallel section is given to every branch; a frame leaving it is
    passed on once, however many branches let it through (frames are deduplicated by id).
    ``StartFrame`` and ``EndFrame`` leave only after every branch has passed them, so an end
    still drains every branch.

    Args:
        branches: One list of stages (or one topology) per branch; at least one, none empty.
    """

    def __init__(self, *branches: Sequence[Stage] | Pipeline) -> None:
        if not branches:
            raise ValueError("ParallelPipeline needs at least one branch")
        self.branches: tuple[Pipeline, ...] = tuple(
            b if isinstance(b, Pipeline) else Pipeline(b) for b in branches
        )
        for i, branch in enumerate(self.branches):
            if not branch.segment().actors:
                raise ValueError(f"ParallelPipeline branch {i} is empty")
        self._fan_out = _Merge(FrameDirection.UPSTREAM, len(self.branches), name="ParallelIn")
        self._fan_in = _Merge(FrameDirection.DOWNSTREAM, len(self.branches), name="ParallelOut")

    def segment(self) -> Segment:
        """Materialise the links of this parallel section."""
        actors: list[Actor[Any]] = [self._fan_out]
        links: list[tuple[Actor[Any], Actor[Any]]] = []
        for branch in self.branches:
            seg = branch.segment()
            actors.extend(seg.actors)
            links.extend(seg.links)
            links.extend((self._fan_out, h) for h in seg.heads)
            links.extend((t, self._fan_in) for t in seg.tails)
        actors.append(self._fan_in)
        return Segment(tuple(actors), tuple(links), (self._fan_out,), (self._fan_in,))


_merge_ids = itertools.count(1)


class _Merge(Actor[Any]):
    """Fan-out/fan-in point: forwards frames travelling in ``merge`` direction once (its cell,
    :class:`_MergeCell`, does the work)."""

    accepts = ()

    def __init__(self, merge: FrameDirection, branches: int, *, name: str) -> None:
        super().__init__(name=f"{name}#{next(_merge_ids)}")
        self.merge = merge
        self.branches = branches


class _MergeCell(Cell):
    """Passes a frame travelling in the merge direction on once, however many branches let
    it through; ``StartFrame`` and ``EndFrame`` only once every branch has."""

    _CAP = 16384
    __slots__ = ("branches", "merge", "seen")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        actor = self.actor
        assert isinstance(actor, _Merge)
        self.merge = actor.merge
        self.branches = actor.branches
        self.seen: OrderedDict[int, int] = OrderedDict()

    async def forward(self, envelope: Envelope) -> bool:
        frame = envelope.frame
        if envelope.direction is not self.merge or self.branches == 1:
            return await super().forward(envelope)
        seen = self.seen
        count = seen.get(frame.id, 0) + 1
        if count >= self.branches:
            seen.pop(frame.id, None)
        else:
            seen[frame.id] = count
            if len(seen) > self._CAP:
                seen.popitem(last=False)
        cls = type(frame)
        if cls is StartFrame or cls is EndFrame:
            if count == self.branches:
                return await super().forward(envelope)
        elif count == 1:
            return await super().forward(envelope)
        return False


register_cell_class(_Merge, _MergeCell)


def build(session: Session, topology: Stage, *, start: bool = True) -> Segment:
    """Spawn every actor of ``topology`` in ``session`` and link them; returns the segment."""
    seg = _segment(topology)
    for actor in seg.actors:
        session.spawn(actor, start=start)
    for a, b in seg.links:
        session.link(a, b)
    return seg
