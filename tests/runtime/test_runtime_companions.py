"""Companion actors: helpers spawned, started and stopped with their owner, pushing through
the owner's links."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio

from runtime import (
    Actor,
    ActorState,
    DataFrame,
    Frame,
    FrameDirection,
    PipelineParams,
    Session,
    SessionStateError,
    SystemFrame,
)
from runtime.testing import FrameCollector, open_test_task, wait_idle

from .runtime_helpers import Ping, numbers


@attrs.frozen
class Emit(SystemFrame):
    """Tells a helper to push ``Ping(n)`` (upstream if ``upstream``)."""

    n: int
    upstream: bool = False


@attrs.frozen
class Work(DataFrame):
    """Interruptible work for a helper: it waits until cancelled."""


class Helper(Actor[Emit | Work]):
    """A companion: pushes what it is told to; records its stop in ``log``."""

    accepts = (Emit, Work)

    def __init__(self, log: list[str], *, name: str = "helper") -> None:
        super().__init__(name=name)
        self.stops = log
        self.cancelled = 0

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, Emit):
            where = FrameDirection.UPSTREAM if frame.upstream else FrameDirection.DOWNSTREAM
            await self.push_frame(Ping(frame.n), where)
        elif isinstance(frame, Work):
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                self.cancelled += 1
                raise

    async def on_stop(self) -> None:
        self.stops.append(self.name)


class Owner(FrameCollector):
    """Passes everything on; owns a helper (or two)."""

    def __init__(self, log: list[str], *helpers: Actor[Any], stop_with_owner: bool = True) -> None:
        super().__init__(name="owner")
        self.stops = log
        for helper in helpers:
            self.add_companion(helper, stop_with_owner=stop_with_owner)

    async def on_stop(self) -> None:
        self.stops.append(self.name)


class TestPushes:
    async def test_a_companion_pushes_to_its_owners_neighbours(
        self, autojump_clock: object
    ) -> None:
        """Downstream pushes reach the owner's downstream neighbours, upstream pushes its
        upstream ones; the companion itself is in no link."""
        log: list[str] = []
        helper = Helper(log)
        head, tail = FrameCollector(name="head"), FrameCollector(name="tail")
        async with open_test_task([head, Owner(log, helper), tail]) as t:
            await helper.ref.send(Emit(1))
            await helper.ref.send(Emit(2, upstream=True))
            await tail.wait_for(1, Ping)
            await head.wait_for(1, Ping)
        assert numbers(tail.downstream) == [1]
        assert numbers(head.upstream) == [2]
        assert numbers(t.upstream) == [2]

    async def test_a_companion_follows_its_owner_when_it_is_relinked(
        self, autojump_clock: object
    ) -> None:
        """Relinking the owner (unlink/link, insert_between) changes where the companion's
        frames go at once."""
        log: list[str] = []
        helper = Helper(log)
        owner = Owner(log, helper)
        first, second, middle = (
            FrameCollector(name="first", forward=False),
            FrameCollector(name="second", forward=False),
            FrameCollector(name="middle", forward=False),
        )
        async with Session.open() as session:
            for actor in (owner, first, second):
                session.spawn(actor)
            session.link(owner, first)
            await helper.ref.send(Emit(1))
            await wait_idle()
            session.unlink(owner, first)
            session.link(owner, second)
            await helper.ref.send(Emit(2))
            await wait_idle()
            session.insert_between(middle, owner, second)
            await helper.ref.send(Emit(3))
            await wait_idle()
        assert (numbers(first.downstream), numbers(second.downstream)) == ([1], [2])
        assert numbers(middle.downstream) == [3]

    async def test_a_companion_has_no_links_of_its_own(self, autojump_clock: object) -> None:
        """Linking a companion is refused: it would change its owner's links."""
        helper = Helper([])
        other = FrameCollector()
        async with Session.open() as session:
            session.spawn(Owner([], helper))
            session.spawn(other)
            with pytest.raises(ValueError, match="companion of 'owner'"):
                session.link(helper, other)
            with pytest.raises(ValueError, match="companion of 'owner'"):
                session.link(other, helper)


class TestLifecycle:
    async def test_companions_start_with_the_owners_start_frame(
        self, autojump_clock: object
    ) -> None:
        """Spawned with the owner, started with the very StartFrame it started with (the
        task's params), listed by snapshots as the owner's companions."""
        params = PipelineParams(mailbox_size=5)
        helper = Helper([])
        owner = Owner([], helper)
        async with open_test_task([owner], params=params) as t:
            await wait_idle()
            assert helper.state is ActorState.RUNNING
            assert helper.start_frame is owner.start_frame
            assert helper.start_frame is not None
            assert helper.start_frame.params is params
            snaps = {a.name: a for a in t.snapshot().actors}
        assert snaps["helper"].companion_of == "owner"
        assert snaps["owner"].companion_of is None
        assert snaps["helper"].downstream == snaps["owner"].downstream

    async def test_companions_stop_after_their_owner(self, autojump_clock: object) -> None:
        """When the owner stops (here at the EndFrame) its companions stop, after it."""
        log: list[str] = []
        helpers = Helper(log, name="h1"), Helper(log, name="h2")
        async with open_test_task([Owner(log, *helpers), FrameCollector()]) as t:
            await t.end()
            assert all(h.state is ActorState.STOPPED for h in helpers)
        assert log == ["owner", "h1", "h2"]

    async def test_removing_the_owner_stops_its_companions(self, autojump_clock: object) -> None:
        """``Session.remove`` of the owner stops the companions after it; the session goes
        on. A companion kept with ``stop_with_owner=False`` runs until the session closes."""
        log: list[str] = []
        helper, kept = Helper(log), Helper(log, name="kept")
        owner = Owner(log, helper)
        owner.add_companion(kept, stop_with_owner=False)
        async with Session.open() as session:
            session.spawn(owner)
            await wait_idle()
            await session.remove(owner)
            assert log == ["owner", "helper"]
            assert kept.state is ActorState.RUNNING
            assert session.running
        assert log == ["owner", "helper", "kept"]

    async def test_a_companion_added_while_the_owner_runs_starts_at_once(
        self, autojump_clock: object
    ) -> None:
        """``add_companion`` on a running owner spawns the companion in its session and
        starts it with the owner's StartFrame."""
        log: list[str] = []
        owner = Owner(log)
        tail = FrameCollector(name="tail", forward=False)
        late = Helper(log, name="late")
        async with Session.open() as session:
            session.spawn(owner)
            session.spawn(tail)
            session.link(owner, tail)
            await wait_idle()
            owner.add_companion(late)
            await wait_idle()
            assert late.start_frame is owner.start_frame
            await late.ref.send(Emit(4))
            await wait_idle()
        assert numbers(tail.downstream) == [4]
        assert log == ["owner", "late"]

    async def test_an_interruption_cancels_a_companions_work(self, autojump_clock: object) -> None:
        """Companions are interrupted like every actor: a handler busy with interruptible
        work is cancelled."""
        helper = Helper([])
        async with Session.open() as session:
            session.spawn(Owner([], helper))
            await helper.ref.send(Work())
            await wait_idle()
            session.interrupt()
            await wait_idle()
            assert helper.cancelled == 1

    def test_bad_companions_are_refused(self) -> None:
        """An actor cannot be its own companion, nor the companion of two owners; adding
        the same companion twice changes nothing."""
        helper = Helper([])
        owner = Owner([], helper)
        with pytest.raises(ValueError, match="its own companion"):
            owner.add_companion(owner)
        owner.add_companion(helper)
        with pytest.raises(ValueError, match="'helper' is a companion of 'owner' already"):
            Owner([], helper)

    async def test_a_spawned_actor_cannot_become_a_companion(self, autojump_clock: object) -> None:
        """A companion is spawned by its owner, not before."""
        helper = Helper([])
        async with Session.open() as session:
            session.spawn(helper)
            with pytest.raises(SessionStateError, match="already spawned"):
                Owner([], helper)
