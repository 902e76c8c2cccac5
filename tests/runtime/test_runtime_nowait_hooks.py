"""Asks answered and frames handled at once: ``Actor.on_ask_nowait`` (with ``NOT_NOW``) in
the asker's task, ``Actor.process_frame_nowait`` in the sender's task or the actor's own loop,
and the pushes it makes (``push_frame_nowait``, ``push_uninterruptible_nowait``)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import attrs
import pytest
import trio

from runtime import (
    NOT_NOW,
    Actor,
    ActorDeadError,
    DataFrame,
    EndFrame,
    Frame,
    FrameDirection,
    FrameTypeError,
    Pipeline,
    PipelineTask,
    RestartPolicy,
    Session,
    SystemFrame,
    current_turn,
)
from runtime.logging import add_actor_fields
from runtime.testing import wait_idle

from .runtime_helpers import Gate, Note, Ping, numbers


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

    def process_frame_nowait(self, frame: Frame, direction: FrameDirection) -> bool:
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
        """While a frame is being handled, or frames wait, later ones are queued behind them;
        the actor's loop then gives them to the synchronous handler first, in its own task."""
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
            assert actor.handled == [("process_frame", 0), ("at once", 1), ("at once", 2)]
            assert trio.lowlevel.current_task() not in actor.tasks
            ref.send_nowait(Add(4))  # idle again
            assert actor.handled[-1] == ("at once", 4)
            assert actor.tasks[-1] is trio.lowlevel.current_task()

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


class Relay(Actor[Ping]):
    """Adds one to every ``Ping`` in its synchronous handler when the next stage has room,
    else in ``process_frame``; counts which did it."""

    accepts = (Ping,)

    def __init__(self, *, name: str | None = None) -> None:
        super().__init__(name=name)
        self.at_once = 0
        self.later = 0

    def process_frame_nowait(self, frame: Frame, direction: FrameDirection) -> bool:
        assert isinstance(frame, Ping)
        if not self.push_frame_nowait(Ping(frame.n + 1), direction):
            return False  # nothing was pushed
        self.at_once += 1
        return True

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        assert isinstance(frame, Ping)
        self.later += 1
        await self.push_frame(Ping(frame.n + 1), direction)


class Marker(Actor[Ping]):
    """Passes every ``Ping`` on at once, marked as ``push_uninterruptible`` marks it."""

    accepts = (Ping,)

    def process_frame_nowait(self, frame: Frame, direction: FrameDirection) -> bool:
        return self.push_uninterruptible_nowait(frame, direction)


class Passer(Actor[Ping]):
    """Passes every ``Ping`` on at once, unmarked."""

    accepts = (Ping,)

    def process_frame_nowait(self, frame: Frame, direction: FrameDirection) -> bool:
        return self.push_frame_nowait(frame, direction)


class Pusher(Actor[Ping]):
    """Pushes whatever it is told to from its handler, recording ``push_frame_nowait``'s
    answers."""

    accepts = (Ping,)

    def __init__(self) -> None:
        super().__init__()
        self.answers: list[bool] = []

    def process_frame_nowait(self, frame: Frame, direction: FrameDirection) -> bool:
        for extra in (Note("system"), EndFrame()):
            self.answers.append(self.push_frame_nowait(extra, direction))
        self.answers.append(self.push_frame_nowait(frame, direction))
        return True


class TestSynchronousHandlerInAPipeline:
    async def test_the_loop_hands_frames_to_it_and_they_pass_in_order(self) -> None:
        relay = Relay()
        out: list[Frame] = []
        async with PipelineTask(Pipeline([relay]), on_downstream=lambda f, d: out.append(f)) as t:
            for n in range(50):
                await t.queue_frame(Ping(n))
            await wait_idle()
        assert numbers(out) == list(range(1, 51))
        assert (relay.at_once, relay.later) == (50, 0)

    async def test_no_room_next_means_nothing_pushed_and_the_handler_takes_it(
        self, autojump_clock: object
    ) -> None:
        """The next stage's lane full: ``push_frame_nowait`` says so having pushed nothing,
        ``process_frame`` waits for room; nothing is lost, doubled or reordered."""
        relay = Relay()
        gate = Gate(mailbox_size=2)
        out: list[Frame] = []
        async with PipelineTask(
            Pipeline([relay, gate]), on_downstream=lambda f, d: out.append(f)
        ) as t:
            for n in range(10):
                await t.queue_frame(Ping(n * 10))
            await wait_idle()
            assert relay.later >= 1  # the gate's lane filled up
            gate.open()
            await wait_idle()
        assert numbers(out) == [n * 10 + 1 for n in range(10)]
        assert relay.at_once + relay.later == 10
        assert gate.finished == [n * 10 + 1 for n in range(10)]

    async def test_it_pushes_no_system_frame_and_no_end_frame(self) -> None:
        pusher = Pusher()
        out: list[Frame] = []
        async with PipelineTask(Pipeline([pusher]), on_downstream=lambda f, d: out.append(f)) as t:
            await t.queue_frame(Ping(1))
            await wait_idle()
        assert pusher.answers == [False, False, True]
        assert [type(f) for f in out if isinstance(f, Ping | Note)] == [Ping]

    @pytest.mark.parametrize(
        ("kind", "finished", "cancelled"),
        [(Marker, [1, 2], []), (Passer, [], [1])],
        ids=["marked", "unmarked"],
    )
    async def test_an_uninterruptible_push_survives_the_interruption(
        self,
        kind: type[Actor[Ping]],
        finished: list[int],
        cancelled: list[int],
        autojump_clock: object,
    ) -> None:
        """Marked by ``push_uninterruptible_nowait``, frames pass the interruption: the one
        being handled next is not cancelled, the one queued behind it not dropped. Unmarked,
        both are lost."""
        gate = Gate()
        async with PipelineTask(Pipeline([kind(), gate])) as t:
            await t.queue_frame(Ping(1))  # the gate holds it
            await t.queue_frame(Ping(2))  # queued at the gate
            await wait_idle()
            t.interrupt()
            await wait_idle()
            gate.open()
            await wait_idle()
        assert (gate.finished, gate.cancelled) == (finished, cancelled)

    async def test_a_listener_that_returns_an_awaitable_is_awaited_in_order(self) -> None:
        """The task's listeners, reached from a synchronous handler: each called once per
        frame, in order, and an awaitable one finished before the next frame reaches any."""
        events: list[str] = []

        def first(frame: Frame, direction: FrameDirection) -> Awaitable[None] | None:
            if not isinstance(frame, Ping):
                return None
            events.append(f"first {frame.n}")
            if frame.n % 2:
                return None

            async def slowly() -> None:
                await trio.lowlevel.checkpoint()
                await trio.lowlevel.checkpoint()
                events.append(f"first {frame.n} done")

            return slowly()

        def second(frame: Frame, direction: FrameDirection) -> None:
            if isinstance(frame, Ping):
                events.append(f"second {frame.n}")

        relay = Relay()
        task = PipelineTask(Pipeline([relay]), on_downstream=first)
        task.add_listener(second, FrameDirection.DOWNSTREAM)
        async with task:
            for n in range(4):
                await task.queue_frame(Ping(n))
            await wait_idle()
        assert relay.at_once == 4
        assert events == [
            "first 1", "second 1",
            "first 2", "first 2 done", "second 2",
            "first 3", "second 3",
            "first 4", "first 4 done", "second 4",
        ]  # fmt: skip

    async def test_before_the_start_a_frame_is_held_and_delivered(self) -> None:
        relay = Relay()
        out: list[Frame] = []
        task = PipelineTask(Pipeline([relay]), on_downstream=lambda f, d: out.append(f))
        assert relay.push_frame_nowait(Ping(7))
        async with task:
            await wait_idle()
        assert numbers(out) == [7]
