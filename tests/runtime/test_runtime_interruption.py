"""Turns and interruption: cancellation of the interrupted turn's work, stale frames dropped."""

from __future__ import annotations

import pytest
import trio

from runtime import (
    Actor,
    Frame,
    FrameDirection,
    InterruptionFrame,
    Session,
)
from runtime.testing import FrameCollector, open_test_task, wait_idle

from .runtime_helpers import Gate, Note, Ping, Text, TurnBegins, numbers


class TestInterruptionDropsOnlyTheInterruptedTurn:
    async def test_interruptible_frames_of_the_turn_are_dropped_the_rest_survives(
        self, autojump_clock: object
    ) -> None:
        """Queued interruptible frames of the interrupted turn are dropped; uninterruptible
        frames, system frames and frames queued after the interruption survive."""
        gate = Gate(name="gate")
        async with open_test_task([gate, FrameCollector()]) as t:
            await t.push(Ping(1), Ping(2), Ping(3, interruptible=False), Ping(4))
            await wait_idle()
            assert gate.started == [1]
            t.interrupt("user spoke")
            await t.push(Note("system"), Ping(5))
            gate.open()
            out = await t.drain()
            assert numbers(out) == [3, 5]
            assert [f.text for f in out if isinstance(f, Note)] == ["system"]
            assert gate.cancelled == [1]
            assert gate.finished == [3, 5]
            stats = gate.ref.statistics()
            assert stats.dropped_stale == 2

    async def test_the_handler_of_an_uninterruptible_frame_pushes_into_the_current_turn(
        self, autojump_clock: object
    ) -> None:
        """Frames created while handling an uninterruptible frame belong to the current turn,
        so they are not dropped further down."""
        gate = Gate()
        collector = FrameCollector()
        async with open_test_task([gate, collector]) as t:
            await t.push(Ping(1), Ping(2, interruptible=False))
            await wait_idle()
            t.interrupt()
            gate.open()
            out = await t.drain()
        assert numbers(out) == [2]
        [pushed] = collector.of_type(Ping)
        assert pushed.turn == 1  # created by the gate in the current turn

    async def test_an_in_flight_handler_is_cancelled_mid_await(
        self, autojump_clock: object
    ) -> None:
        """The handler working on an interruptible frame sees ``trio.Cancelled`` at once,
        wherever it waits; the actor then serves the next frame."""
        gate = Gate()
        async with open_test_task([gate]) as t:
            await t.push(Ping(1))
            await wait_idle()
            assert gate.started == [1]
            assert gate.cancelled == []
            t.interrupt()
            await wait_idle()
            assert gate.cancelled == [1]
            gate.open()
            await t.push(Ping(2))
            assert numbers(await t.drain()) == [2]

    async def test_a_handler_interrupted_after_its_last_await_does_not_cancel_the_next_frame(
        self, autojump_clock: object
    ) -> None:
        """An interruption that lands while a finished handler is about to return does not
        leak into the handler of the next (uninterruptible) frame."""

        class Waiter(Actor[Ping]):
            accepts = (Ping,)

            def __init__(self) -> None:
                super().__init__()
                self.release = trio.Event()
                self.handled: list[int] = []

            async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
                assert isinstance(frame, Ping)
                if frame.n == 1:
                    await self.release.wait()
                else:
                    await trio.sleep(1)
                self.handled.append(frame.n)
                await self.push_frame(frame, direction)

        waiter = Waiter()
        async with open_test_task([waiter]) as t:
            await t.push(Ping(1), Ping(2, interruptible=False))
            await wait_idle()
            waiter.release.set()  # the handler is scheduled to resume...
            t.interrupt()  # ...and the interruption lands before it runs
            await trio.sleep(2)
            out = await t.drain()
        assert waiter.handled == [1, 2]
        assert numbers(out)[-1] == 2

    async def test_a_handler_blocked_by_backpressure_is_cancelled_without_queuing(
        self, autojump_clock: object
    ) -> None:
        """A producer waiting for room in a slow consumer's full mailbox is cancelled by the
        interruption; the frame it was sending is not queued."""

        class Streamer(Actor[Ping]):
            accepts = (Ping,)

            async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
                for n in range(10):
                    await self.push_frame(Ping(100 + n), direction)

        gate = Gate(name="slow", mailbox_size=2)
        async with open_test_task([Streamer(), gate]) as t:
            await t.push(Ping(1))
            await wait_idle()
            assert gate.ref.statistics().waiting_senders == 1
            t.interrupt()
            await wait_idle()
            stats = gate.ref.statistics()
            assert (stats.waiting_senders, stats.data_depth, stats.dropped_stale) == (0, 0, 2)
            assert gate.cancelled == [100]
            gate.open()
            await t.push(Ping(2))
            assert numbers(await t.drain()) == list(range(100, 110))

    async def test_the_interruption_frame_reaches_every_stage(self, autojump_clock: object) -> None:
        """After the synchronous cancel, the ``InterruptionFrame`` still travels through
        every stage and out of the topology."""
        collectors = [FrameCollector(name=f"c{i}") for i in range(3)]
        async with open_test_task(collectors) as t:
            frame = t.interrupt()
            out = await t.drain()
        assert isinstance(frame, InterruptionFrame)
        for collector in collectors:
            assert collector.of_type(InterruptionFrame) == [frame]
        assert out == [frame]

    async def test_interruption_queued_as_a_frame_takes_effect_on_entry(
        self, autojump_clock: object
    ) -> None:
        """An ``InterruptionFrame`` fed in with ``queue_frame`` interrupts the turn the moment
        it enters, not when it reaches a stage."""
        gate = Gate()
        async with open_test_task([gate]) as t:
            await t.push(Ping(1), Ping(2))
            await wait_idle()
            turn = t.session.turn
            await t.push(InterruptionFrame())
            assert t.session.turn == turn + 1
            await wait_idle()
            assert gate.cancelled == [1]
            gate.open()
            out = await t.drain()
        assert numbers(out) == []

    async def test_frames_pushed_in_reaction_to_an_interruption_belong_to_the_new_turn(
        self, autojump_clock: object
    ) -> None:
        """A stage that originates an interruption (say, on voice activity) starts a new
        turn; what later stages push while handling it is not dropped as stale."""

        class Vad(Actor[TurnBegins]):
            accepts = (TurnBegins,)

            async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
                await self.push_frame(frame, direction)
                await self.push_frame(InterruptionFrame(), direction)

        class Reacts(Actor[InterruptionFrame]):
            accepts = (InterruptionFrame,)

            async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
                await self.push_frame(Text("[interrupted]"), direction)

        async with open_test_task([Vad(), Reacts()]) as t:
            await t.push(TurnBegins())
            out = await t.drain()
            assert t.session.turn == 1
        # The speaking frame (data lane) and the interruption (system lane) are not ordered.
        assert sorted(type(f).__name__ for f in out) == [
            "InterruptionFrame",
            "Text",
            "TurnBegins",
        ]
        assert [f.text for f in out if isinstance(f, Text)] == ["[interrupted]"]

    async def test_session_interrupt_drops_queued_frames_without_a_task(
        self, autojump_clock: object
    ) -> None:
        """``Session.interrupt`` applies to actors run without a ``PipelineTask`` too."""
        gate = Gate()
        async with Session.open() as session:
            ref = session.spawn(gate)
            for n in range(3):
                await ref.send(Ping(n))
            await wait_idle()
            frame = session.interrupt("test")
            assert isinstance(frame, InterruptionFrame)
            assert session.turn == 1
            await wait_idle()
            assert gate.cancelled == [0]
            assert ref.statistics().dropped_stale == 2


class TestTurnTasks:
    async def test_interruptible_background_tasks_are_cancelled_the_others_are_not(
        self, autojump_clock: object
    ) -> None:
        """``create_task(..., interruptible=True)`` belongs to the turn and is cancelled by
        the next interruption; a plain background task lives until the actor stops."""

        class Spawner(Actor[Ping]):
            accepts = (Ping,)

            def __init__(self) -> None:
                super().__init__()
                self.outcomes: dict[str, str] = {}

            async def work(self, label: str) -> None:
                try:
                    await trio.sleep_forever()
                except trio.Cancelled:
                    self.outcomes[label] = f"cancelled in turn {self.session.turn}"
                    raise

            async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
                self.create_task(self.work, "turn", interruptible=True)
                self.create_task(self.work, "background")

        spawner = Spawner()
        async with open_test_task([spawner]) as t:
            await t.push(Ping(1))
            await wait_idle()
            assert t.snapshot().turn_tasks == 1
            t.interrupt()
            await wait_idle()
            assert spawner.outcomes == {"turn": "cancelled in turn 1"}
            assert t.snapshot().turn_tasks == 0
            [snap] = [a for a in t.snapshot().actors if a.name == spawner.name]
            assert snap.background_tasks == 1
        assert spawner.outcomes["background"].startswith("cancelled")

    async def test_an_interruptible_task_of_an_interrupted_turn_is_cancelled_from_the_start(
        self, autojump_clock: object
    ) -> None:
        """A handler whose turn was interrupted before its next checkpoint starts an
        interruptible task: the task belongs to that turn, so it is cancelled at once (as a
        ``turn_scope`` for it is); a plain task of the same handler runs."""

        class Late(Actor[Ping]):
            accepts = (Ping,)

            def __init__(self) -> None:
                super().__init__()
                self.ran: list[str] = []

            async def work(self, label: str) -> None:
                await trio.lowlevel.checkpoint()
                self.ran.append(label)

            async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
                self.session.interrupt()  # the turn of this frame is over from here on
                self.create_task(self.work, "turn", interruptible=True)
                self.create_task(self.work, "background")

        late = Late()
        async with open_test_task([late]) as t:
            await t.push(Ping(1))
            await wait_idle()
            assert late.ran == ["background"]
            assert t.snapshot().turn_tasks == 0

    async def test_turn_scope_cancels_work_of_the_interrupted_turn(
        self, autojump_clock: object
    ) -> None:
        """``Actor.turn_scope`` ties work outside a handler to a turn; code after the block
        still runs, and a scope for an already interrupted turn is cancelled at once."""

        class ToolRunner(Actor[Ping]):
            accepts = (Ping,)

            def __init__(self) -> None:
                super().__init__()
                self.log_lines: list[str] = []

            async def run_tool(self, turn: int) -> None:
                with self.turn_scope(turn) as scope:
                    await trio.sleep_forever()
                self.log_lines.append(f"turn {turn} cancelled={scope.cancelled_caught}")

            async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
                self.create_task(self.run_tool, self.session.turn)

        runner = ToolRunner()
        async with open_test_task([runner]) as t:
            await t.push(Ping(1))
            await wait_idle()
            t.interrupt()
            await wait_idle()
            assert runner.log_lines == ["turn 0 cancelled=True"]
            runner.create_task(runner.run_tool, 0)  # turn 0 is over: cancelled at once
            await wait_idle()
            assert runner.log_lines[-1] == "turn 0 cancelled=True"

    async def test_on_interruption_runs_inside_interrupt_before_the_cancellation(
        self, autojump_clock: object
    ) -> None:
        """The callback runs synchronously inside ``interrupt()``, once; the handler then only
        sees the cancellation; leaving the block unregisters it."""
        events: list[str] = []

        class Streamer(Actor[Ping]):
            accepts = (Ping,)

            async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
                assert isinstance(frame, Ping)
                try:
                    with self.on_interruption(lambda: events.append(f"hook {frame.n}")):
                        if frame.n == 2:
                            return  # left before any interruption: never called
                        await trio.sleep_forever()
                except trio.Cancelled:
                    events.append(f"cancelled {frame.n}")
                    raise

        streamer = Streamer()
        async with open_test_task([streamer]) as t:
            await t.push(Ping(2))
            await wait_idle()
            await t.push(Ping(1))
            await wait_idle()
            t.interrupt()
            assert events == ["hook 1"]  # before interrupt() returned, before any checkpoint
            await wait_idle()
            assert events == ["hook 1", "cancelled 1"]
            t.interrupt()  # nothing in flight: no hook left to run
            await wait_idle()
        assert events == ["hook 1", "cancelled 1"]

    async def test_on_interruption_is_not_called_for_uninterruptible_work(
        self, autojump_clock: object
    ) -> None:
        """A handler of an uninterruptible frame is not cancelled, so its callback stays quiet;
        a failing callback is logged and the interruption goes on."""
        from runtime.testing import capture_logs

        calls: list[int] = []

        def broken() -> None:
            raise OSError("socket already gone")

        class Worker(Actor[Ping]):
            accepts = (Ping,)

            async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
                assert isinstance(frame, Ping)
                with self.on_interruption(lambda: calls.append(frame.n)):
                    if frame.n == 2:
                        with self.on_interruption(broken):
                            await trio.sleep(10)
                    else:
                        await trio.sleep(1)
                await self.push_frame(frame)

        collector = FrameCollector()
        with capture_logs() as logs:
            async with open_test_task([Worker(), collector]) as t:
                await t.push(Ping(1, interruptible=False))
                await wait_idle()
                t.interrupt()
                await trio.sleep(2)
                assert calls == []
                await t.push(Ping(2))
                await wait_idle()
                t.interrupt()
                await wait_idle()
                assert calls == [2]
        assert numbers(collector.of_type(Ping)) == [1]
        [event] = [e for e in logs if e["event"] == "on_interruption callback raised"]
        assert event["error"] == "OSError: socket already gone"

    async def test_interruption_logs_cancelled_and_dropped_counts(
        self, autojump_clock: object
    ) -> None:
        """The interruption is reported with the number of cancelled tasks and dropped
        frames."""
        from runtime.testing import capture_logs

        gate = Gate()
        with capture_logs() as logs:
            async with open_test_task([gate], name="turns") as t:
                await t.push(Ping(1), Ping(2), Ping(3))
                await wait_idle()
                t.interrupt("barge-in")
                gate.open()
        [event] = [e for e in logs if e["event"] == "interruption"]
        assert event["session"] == "turns"
        assert event["cancelled"] == 1
        assert event["dropped_frames"] == 2
        assert event["turn"] == 1
        assert event["previous_turn"] == 0
        assert event["reason"] == "barge-in"

    async def test_interrupting_a_task_that_is_not_running_raises(self) -> None:
        """``interrupt()`` needs a running session."""
        from runtime import PipelineTask, SessionStateError

        task = PipelineTask(FrameCollector())
        with pytest.raises(SessionStateError, match="not running"):
            task.interrupt()


class _Marker(Actor[Ping]):
    """Passes odd ``Ping``s on with ``push_uninterruptible``, even ones with ``push_frame``."""

    accepts = (Ping,)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        assert isinstance(frame, Ping)
        if frame.n % 2:
            await self.push_uninterruptible(frame, direction)
        else:
            await self.push_frame(frame, direction)


class _Holder(Actor[Ping]):
    """Holds each ``Ping`` until opened, then pushes that same frame on."""

    accepts = (Ping,)

    def __init__(self) -> None:
        super().__init__(name="holder")
        self.opened = trio.Event()
        self.cancelled: list[int] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        assert isinstance(frame, Ping)
        try:
            await self.opened.wait()
        except trio.Cancelled:
            self.cancelled.append(frame.n)
            raise
        await self.push_frame(frame, direction)


class TestPushUninterruptible:
    async def test_no_interruption_drops_the_frame_or_cancels_its_handlers(
        self, autojump_clock: object
    ) -> None:
        """A frame pushed with ``push_uninterruptible`` is neither dropped by an interruption
        while it is queued further down (past a stage that forwards it untouched) nor is the
        handler that holds it cancelled; the frame itself is not copied and stays
        interruptible. Frames pushed with ``push_frame`` are dropped as usual."""
        holder = _Holder()
        collector = FrameCollector()

        class Forward(Actor[Frame]):
            accepts = ()

        pings = [Ping(n) for n in range(1, 7)]
        async with open_test_task([_Marker(), Forward(), holder, collector]) as t:
            await t.push(*pings)
            await wait_idle()  # the holder handles Ping 1; 2 to 6 wait in its mailbox
            t.interrupt()
            await wait_idle()
            assert holder.cancelled == []
            holder.opened.set()
            out = await t.drain()
            assert numbers(out) == [1, 3, 5]
            assert holder.ref.statistics().dropped_stale == 3  # 2, 4 and 6
        assert [f for f in collector.of_type(Ping)] == [pings[0], pings[2], pings[4]]
        assert all(a is b for a, b in zip(collector.of_type(Ping), pings[::2], strict=True))
        assert all(f.interruptible for f in collector.of_type(Ping))
