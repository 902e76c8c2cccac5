"""A domain-free session for the cluster's tests: an echo stage, built by :func:`factory`
(importable by the worker processes the tests start: ``tests.cluster.echo_app:factory``)."""

from __future__ import annotations

import attrs
import trio

from runtime import Actor, DataFrame, Frame, FrameDirection, Pipeline, PipelineTask

__all__ = ["Echo", "Piece", "Say", "factory"]


@attrs.frozen(slots=True)
class Say(DataFrame):
    """Ask the echo stage for ``pieces`` pieces of ``text``, ``delay`` seconds apart."""

    text: str
    pieces: int = 1
    delay: float = 0.0


@attrs.frozen(slots=True)
class Piece(DataFrame):
    """One piece of an echo: ``index`` of ``of``."""

    text: str
    index: int
    of: int


class Echo(Actor[Frame]):
    """Echoes each :class:`Say` as its pieces."""

    accepts = (Say,)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        assert isinstance(frame, Say)
        for index in range(frame.pieces):
            if index and frame.delay:
                await trio.sleep(frame.delay)
            await self.push_frame(Piece(frame.text, index, frame.pieces), direction)


async def factory(key: str) -> PipelineTask:
    """The session of ``key``: one echo stage."""
    return PipelineTask(Pipeline([Echo()]), name=f"echo-{key}")
