"""Asks answered and frames handled at once, in the sender's task: ``Actor.on_ask_nowait``
(with ``NOT_NOW``) and ``Actor.process_frame_nowait``."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio

from runtime import (
    NOT_NOW,
    Actor,
    ActorDeadError,
    DataFrame,
    Frame,
    FrameDirection,
    FrameTypeError,
    RestartPolicy,
    Session,
    SystemFrame,
    current_turn,
)
from runtime.logging import add_actor_fields
from runtime.testing import wait_idle

from .runtime_helpers import Note, Ping


@attrs.frozen
class Add(DataFrame):
    """Adds ``n`` to the tally (an ordinary data frame, handled by ``process_frame``)."""

    n: int = 1


@attrs.frozen
class Get(DataFrame):
    """Asks for the tally; ``wait`` makes ``on_ask_nowait`` answer ``NOT_NOW``."""

    wait: bool = False
    fail: bool = False


@attrs.frozen
class Peek(SystemFrame):
    """Asks for the tally on the system lane."""


class Tally(Actor[Add | Get | Note | Peek]):
    """Keeps a sum; answers ``Get`` at once when it can, else from ``on_ask``.

    ``hold`` keeps ``process_frame`` waiting until it is set. Records who answered each ask,
    in which task, and what the log fields and the turn were meanwhile.
    """

    accepts = (Add, Get, Note, Peek)

    def __init__(self, *, name: str | None = None) -> None:
        super().__init__(name=name)
        self.total = 0
        self.hold: trio.Event | None = None
        self.answered: list[str] = []
        self.tasks: list[trio.lowlevel.Task] = []
        self.fields: list[dict[str, Any]] = []
        self.turns: list[int | None] = []

    async def on_start(self) -> None:
        self.answered.append("started")

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        assert isinstance(frame, Add | Note)
        if self.hold is not None:
            await self.hold.wait()
        if isinstance(frame, Add):
            self.total += frame.n

    def on_ask_nowait(self, frame: Frame) -> object:
        assert isinstance(frame, Get | Peek)
        if isinstance(frame, Get) and frame.wait:
            return NOT_NOW
        if isinstance(frame, Get) and frame.fail:
            raise ValueError("no tally for you")
        self.answered.append("at once")
        self.tasks.append(trio.lowlevel.current_task())
        self.fields.append(add_actor_fields(None, "info", {}))
        self.turns.append(current_turn())
        return self.total

    async def on_ask(self, frame: Frame) -> object:
        self.answered.append("on_ask")
        self.tasks.append(trio.lowlevel.current_task())
        return self.total


class DemandTally(Tally):
    """The same, served on demand (a passive cell: no task while its mailbox is empty)."""

    serve_on_demand = True


async def _ask_while_held(ref: Any, frame: Frame, hold: trio.Event) -> list[object]:
    """Ask ``ref`` in a task while the actor is held: the ask must not be answered until
    ``hold`` is set (it is set here once every task waits); what it was answered."""
    got: list[object] = []

    async def ask() -> None:
        got.append(await ref.ask(frame, timeout=None))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask)
        await wait_idle()
        assert got == []  # behind the frame being handled
        hold.set()
    return got


KINDS = pytest.mark.parametrize("kind", [Tally, DemandTally], ids=["own task", "on demand"])


class TestAskNowait:
    @KINDS
    async def test_an_idle_actor_answers_in_the_askers_task(self, kind: type[Tally]) -> None:
        """An ask that finds the actor idle is answered by ``on_ask_nowait`` in the asker's
        own task, with the actor's log fields and turn set meanwhile and the asker's back
        after."""
        actor = kind(name="tally")
        async with Session.open(name="s") as session:
            ref = session.spawn(actor)
            await ref.send(Add(2))
            await wait_idle()
            assert await ref.ask(Get()) == 2
            assert actor.answered == ["started", "at once"]
            assert actor.tasks == [trio.lowlevel.current_task()]
            assert actor.fields == [{"session": "s", "actor": "tally", "turn": session.turn}]
            assert actor.turns == [session.turn]
            assert add_actor_fields(None, "info", {}) == {}  # the asker's context is back
            assert current_turn() is None

    @KINDS
    async def test_not_now_queues_the_ask_for_on_ask(self, kind: type[Tally]) -> None:
        """``NOT_NOW`` sends the ask the usual way: ``on_ask`` answers it, in the actor's task."""
        actor = kind()
        async with Session.open() as session:
            ref = session.spawn(actor)
            await ref.send(Add(3))
            await wait_idle()
            assert await ref.ask(Get(wait=True)) == 3
            assert actor.answered == ["started", "on_ask"]
            assert actor.tasks != [trio.lowlevel.current_task()]

    @KINDS
    async def test_frames_queued_before_the_ask_are_handled_first(self, kind: type[Tally]) -> None:
        """With frames still in its mailbox the actor is not idle: the ask waits behind them
        and ``on_ask`` answers it, so the answer counts them."""
        actor = kind()
        async with Session.open() as session:
            ref = session.spawn(actor)
            await wait_idle()
            ref.send_nowait(Add(1))
            ref.send_nowait(Add(4))
            assert await ref.ask(Get()) == 5
            assert actor.answered == ["started", "on_ask"]

    @KINDS
    async def test_an_actor_in_its_handler_answers_after_it(
        self, kind: type[Tally], autojump_clock: object
    ) -> None:
        """While a handler runs (waiting on something), the ask is not answered at once: it
        is answered when the handler has finished."""
        actor = kind()
        actor.hold = trio.Event()
        async with Session.open() as session:
            ref = session.spawn(actor)
            await ref.send(Add(7))
            await wait_idle()
            assert await _ask_while_held(ref, Get(), actor.hold) == [7]
            assert actor.answered == ["started", "on_ask"]

    @KINDS
    async def test_each_lane_is_idle_on_its_own(
        self, kind: type[Tally], autojump_clock: object
    ) -> None:
        """The two lanes are served concurrently, and an ask is answered at once when its own
        lane is idle: while a system frame is being handled, a data ask is answered at once
        (as the data lane would have answered it meanwhile) and a system ask waits for it."""
        actor = kind()
        async with Session.open() as session:
            ref = session.spawn(actor)
            await wait_idle()
            actor.hold = trio.Event()
            ref.send_nowait(Note("held"))
            await wait_idle()
            assert await ref.ask(Get()) == 0
            assert actor.answered == ["started", "at once"]
            assert await _ask_while_held(ref, Peek(), actor.hold) == [0]
            assert actor.answered == ["started", "at once", "on_ask"]
            await wait_idle()
            assert await ref.ask(Peek()) == 0  # the system lane idle again
            assert actor.answered[-1] == "at once"

    @KINDS
    async def test_an_ask_before_the_start_waits_for_it(self, kind: type[Tally]) -> None:
        """An actor that has not started is not idle: the ask is answered after ``on_start``."""
        actor = kind()
        async with Session.open() as session:
            ref = session.spawn(actor)
            assert await ref.ask(Get()) == 0
            assert actor.answered == ["started", "on_ask"]

    async def test_what_on_ask_nowait_raises_goes_to_the_asker_and_the_actor_lives_on(
        self,
    ) -> None:
        actor = Tally()
        async with Session.open() as session:
            ref = session.spawn(actor)
            await wait_idle()
            with pytest.raises(ValueError, match="no tally for you"):
                await ref.ask(Get(fail=True))
            assert ref.is_alive()
            await ref.send(Add(1))
            await wait_idle()
            assert await ref.ask(Get()) == 1

    async def test_a_cancelled_asker_gets_no_answer_and_changes_nothing(self) -> None:
        """The ask stays a cancellation point: an asker already cancelled is not answered."""
        actor = Tally()
        async with Session.open() as session:
            ref = session.spawn(actor)
            await wait_idle()
            with trio.CancelScope() as scope:
                scope.cancel()
                await ref.ask(Get())
            assert scope.cancelled_caught
            assert actor.answered == ["started"]

    async def test_wrong_types_and_stopped_actors_fail_as_before(self) -> None:
        actor = Tally(name="gone")
        async with Session.open() as session:
            ref = session.spawn(actor)
            await wait_idle()
            with pytest.raises(FrameTypeError):
                await ref.ask(Ping(1))
            await session.remove(ref)
            with pytest.raises(ActorDeadError, match="'gone'"):
                await ref.ask(Get())
        assert actor.answered == ["started"]

    async def test_an_actor_without_on_ask_nowait_answers_from_on_ask(self) -> None:
        """The default ``on_ask_nowait`` answers ``NOT_NOW``: nothing changes for an actor
        that does not override it."""

        class Plain(Actor[Get]):
            accepts = (Get,)

            async def on_ask(self, frame: Frame) -> object:
                return trio.lowlevel.current_task()

        async with Session.open() as session:
            ref = session.spawn(Plain())
            await wait_idle()
            assert Plain().on_ask_nowait(Get()) is NOT_NOW
            assert await ref.ask(Get()) is not trio.lowlevel.current_task()
        assert repr(NOT_NOW) == "NOT_NOW"


class Collector(Actor[Add]):
    """Sums ``Add`` frames; handles them at once unless ``n`` is 0 (queued for
    ``process_frame``); ``n < 0`` raises. ``hold`` keeps ``process_frame`` waiting."""

    accepts = (Add,)

    def __init__(self, *, name: str | None = None, restart_policy: Any = None) -> None:
        super().__init__(name=name, restart_policy=restart_policy)
        self.total = 0
        self.starts = 0
        self.hold: trio.Event | None = None
        self.handled: list[tuple[str, int]] = []
        self.tasks: list[trio.lowlevel.Task] = []
        self.fields: list[dict[str, Any]] = []

    async def on_start(self) -> None:
        self.starts += 1

    def process_frame_nowait(self, frame: Frame) -> bool:
        assert isinstance(frame, Add)
        if frame.n == 0:
            return False
        if frame.n < 0:
            raise RuntimeError("negative")
        self.total += frame.n
        self.handled.append(("at once", frame.n))
        self.tasks.append(trio.lowlevel.current_task())
        self.fields.append(add_actor_fields(None, "info", {}))
        return True

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        assert isinstance(frame, Add)
        if self.hold is not None:
            await self.hold.wait()
        self.total += frame.n
        self.handled.append(("process_frame", frame.n))


class DemandCollector(Collector):
    serve_on_demand = True


COLLECTORS = pytest.mark.parametrize(
    "kind", [Collector, DemandCollector], ids=["own task", "on demand"]
)


class TestProcessFrameNowait:
    @COLLECTORS
    async def test_an_idle_actor_handles_a_frame_in_the_senders_task(
        self, kind: type[Collector]
    ) -> None:
        """``send_nowait`` and ``tell`` to an idle actor: handled before they return, in the
        sender's task, as the actor (log fields), and counted as delivered."""
        actor = kind(name="sum")
        async with Session.open(name="s") as session:
            ref = session.spawn(actor)
            await wait_idle()
            delivered = ref.statistics().delivered
            ref.send_nowait(Add(2))
            assert actor.total == 2
            ref.tell(Add(3))
            assert actor.total == 5
            assert actor.handled == [("at once", 2), ("at once", 3)]
            assert actor.tasks == [trio.lowlevel.current_task()] * 2
            assert actor.fields[0] == {"session": "s", "actor": "sum", "turn": session.turn}
            assert add_actor_fields(None, "info", {}) == {}
            assert ref.statistics().delivered == delivered + 2

    @COLLECTORS
    async def test_false_queues_the_frame_for_process_frame(self, kind: type[Collector]) -> None:
        actor = kind()
        async with Session.open() as session:
            ref = session.spawn(actor)
            await wait_idle()
            ref.send_nowait(Add(0))
            assert actor.handled == []
            await wait_idle()
            assert actor.handled == [("process_frame", 0)]

    @COLLECTORS
    async def test_a_busy_actor_gets_the_frame_queued_in_order(
        self, kind: type[Collector], autojump_clock: object
    ) -> None:
        """While a frame is being handled, or frames wait, later ones are queued behind them."""
        actor = kind()
        actor.hold = trio.Event()
        async with Session.open() as session:
            ref = session.spawn(actor)
            await wait_idle()
            ref.send_nowait(Add(0))  # queued: process_frame holds
            await wait_idle()
            ref.send_nowait(Add(1))
            ref.tell(Add(2))
            assert actor.handled == []
            actor.hold.set()
            await wait_idle()
            assert actor.handled == [
                ("process_frame", 0),
                ("process_frame", 1),
                ("process_frame", 2),
            ]
            ref.send_nowait(Add(4))  # idle again
            assert actor.handled[-1] == ("at once", 4)

    @COLLECTORS
    async def test_what_it_raises_crashes_the_actor_and_its_policy_restarts_it(
        self, kind: type[Collector], autojump_clock: object
    ) -> None:
        actor = kind(restart_policy=RestartPolicy(max_restarts=1))
        async with Session.open() as session:
            ref = session.spawn(actor)
            await wait_idle()
            assert actor.starts == 1
            ref.send_nowait(Add(-1))  # the sender is not told
            await trio.sleep(1)  # the restart's backoff (virtual time)
            await wait_idle()
            assert actor.starts == 2
            assert ref.is_alive()
            ref.send_nowait(Add(5))
            assert actor.total == 5

    async def test_without_a_policy_the_crash_escalates(self, autojump_clock: object) -> None:
        async def crash_one() -> None:
            async with Session.open() as session:
                ref = session.spawn(DemandCollector())
                await wait_idle()
                ref.send_nowait(Add(-1))
                await trio.sleep_forever()

        with pytest.raises(RuntimeError, match="negative"):
            await crash_one()

    async def test_a_frame_of_an_interrupted_turn_is_dropped_as_stale(self) -> None:
        actor = Collector()
        async with Session.open() as session:
            ref = session.spawn(actor)
            await wait_idle()
            turn = session.turn
            session.interrupt()
            await wait_idle()
            ref.send_nowait(Add(1, turn=turn))
            assert actor.handled == []
            assert ref.statistics().dropped_stale == 1
            ref.send_nowait(Add(1))
            assert actor.handled == [("at once", 1)]
