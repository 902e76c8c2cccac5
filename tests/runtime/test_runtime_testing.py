"""The test kit itself (``runtime.testing``)."""

from __future__ import annotations

import pytest
import structlog
import trio

from runtime import (
    Actor,
    CancelFrame,
    EndFrame,
    ErrorFrame,
    Frame,
    FrameDirection,
    InterruptionFrame,
    PipelineParams,
    StartFrame,
)
from runtime.testing import (
    LIFECYCLE_FRAMES,
    FrameCollector,
    FramesResult,
    TaskHarness,
    capture_logs,
    open_test_task,
    run_frames,
    running_tasks,
    tasks_left_running,
    wait_idle,
)

from .runtime_helpers import Gate, Incr, Note, Ping, Sleeper, Text, Upper, numbers


class NeverEnds(Actor[EndFrame]):
    """Holds the ``EndFrame`` forever."""

    accepts = (EndFrame,)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await trio.sleep_forever()


class TestRunFrames:
    async def test_collects_both_ends_without_lifecycle_frames_by_default(
        self, autojump_clock: object
    ) -> None:
        """``run_frames`` returns what left each end; Start/End frames only on request."""

        class Complains(Actor[Ping]):
            accepts = (Ping,)

            async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
                await self.push_error("no pings")
                await self.push_frame(frame, direction)

        result = await run_frames([Complains()], [Ping(1), Text("x")])
        assert isinstance(result, FramesResult)
        assert result.downstream == [Ping(1), Text("x")]
        assert [e.error for e in result.errors] == ["no pings"]
        assert result.of_type(ErrorFrame, FrameDirection.UPSTREAM) == result.errors
        assert result.of_type(Text) == [Text("x")]
        full = await run_frames([Upper()], [Text("x")], include_lifecycle=True)
        assert [type(f) for f in full.downstream] == [StartFrame, Text, EndFrame]
        assert (StartFrame, EndFrame, CancelFrame) == LIFECYCLE_FRAMES

    async def test_upstream_input_enters_at_the_output_end(self, autojump_clock: object) -> None:
        """``(frame, FrameDirection.UPSTREAM)`` items travel from the output end up."""
        result = await run_frames([Incr(), Incr()], [(Ping(0), FrameDirection.UPSTREAM)])
        assert numbers(result.upstream) == [2]
        assert result.downstream == []

    async def test_without_end_the_task_is_cancelled_once_idle(
        self, autojump_clock: object
    ) -> None:
        """With ``send_end=False`` the task is cancelled as soon as everything is blocked;
        pending timers do not fire."""
        result = await run_frames(
            [Incr(), Sleeper(50.0)], [Ping(1)], send_end=False, include_lifecycle=True
        )
        assert numbers(result.downstream) == []
        assert isinstance(result.downstream[-1], CancelFrame)
        assert trio.current_time() == 0

    async def test_a_topology_that_never_ends_fails_with_a_snapshot(
        self, autojump_clock: object
    ) -> None:
        """When the ``EndFrame`` never gets through, ``run_frames`` raises ``TimeoutError``
        after ``timeout`` virtual seconds, describing where things are stuck."""
        with pytest.raises(TimeoutError, match=r"for the task to finish; snapshot: .*NeverEnds"):
            await run_frames([NeverEnds(name="stuck")], [Ping(1)], timeout=5)
        assert trio.current_time() == pytest.approx(5)

    async def test_a_crash_is_raised_as_itself(self, autojump_clock: object) -> None:
        """An escalated crash propagates out of ``run_frames`` unchanged."""

        class Crash(Actor[Ping]):
            accepts = (Ping,)

            async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
                raise ArithmeticError("overflow")

        with pytest.raises(ArithmeticError, match="overflow"):
            await run_frames([Crash()], [Ping(1)])


class TestOpenTestTask:
    async def test_push_and_read_incrementally(self, autojump_clock: object) -> None:
        """Frames pushed into the running task are read back one batch at a time."""
        async with open_test_task([Sleeper(1.0)]) as t:
            assert isinstance(t, TaskHarness)
            await t.push(Ping(1), Ping(2))
            assert numbers(await t.next_frames(2)) == [1, 2]
            assert trio.current_time() == pytest.approx(2)
            await t.push(Ping(3))
            frame = await t.next_frame()
            assert isinstance(frame, Ping)
            assert frame.n == 3
            await t.push(Ping(4), direction=FrameDirection.UPSTREAM)
            assert numbers([await t.next_frame(FrameDirection.UPSTREAM)]) == [4]
            assert numbers(t.downstream) == [1, 2, 3]
            assert await t.drain() == []

    async def test_waiting_for_frames_that_do_not_come_times_out_with_details(
        self, autojump_clock: object
    ) -> None:
        """``next_frames`` fails after its timeout, listing what did arrive."""
        gate = Gate()
        async with open_test_task([gate]) as t:
            await t.push(Ping(1))
            with pytest.raises(TimeoutError, match=r"2 downstream frames \(timed out; got \[\]"):
                await t.next_frames(2, timeout=3)
            assert trio.current_time() == pytest.approx(3)
            gate.open()

    async def test_leaving_the_block_ends_gracefully(self, autojump_clock: object) -> None:
        """On a normal exit the task is ended and drained."""
        async with open_test_task([Sleeper(1.0)], include_lifecycle=True) as t:
            await t.push(Ping(1), Ping(2))
        assert t.has_finished()
        assert numbers(t.downstream) == [1, 2]
        assert isinstance(t.downstream[-1], EndFrame)
        await t.end()  # already finished: nothing more happens

    async def test_an_exception_in_the_block_cancels_the_task(self, autojump_clock: object) -> None:
        """An exception in the block cancels the task and propagates unchanged."""
        sleeper = Sleeper(100.0)
        harness: list[TaskHarness] = []

        async def scenario() -> None:
            async with open_test_task([sleeper]) as t:
                harness.append(t)
                await t.push(Ping(1))
                await wait_idle()
                raise LookupError("test failure")

        with pytest.raises(LookupError, match="test failure"):
            await scenario()
        assert harness[0].has_finished()
        assert sleeper.cancelled == [1]

    async def test_interrupt_end_and_cancel_are_available(self, autojump_clock: object) -> None:
        """The harness interrupts, ends and cancels the task it runs."""
        async with open_test_task([Gate()]) as t:
            frame = t.interrupt("test")
            assert isinstance(frame, InterruptionFrame)
            assert await t.drain() == [frame]
            t.cancel()
            await t.wait_finished()
        with pytest.raises(TimeoutError, match="for the task to finish"):
            async with open_test_task([NeverEnds()], timeout=2):
                pass


class TestFrameCollector:
    async def test_records_what_passes_and_waits_for_frames(self, autojump_clock: object) -> None:
        """A collector records frames in both directions and can wait for a count."""
        collector = FrameCollector(name="probe")
        async with open_test_task([Sleeper(1.0), collector]) as t:
            await t.push(Ping(1), Ping(2))
            await t.push(Ping(3), direction=FrameDirection.UPSTREAM)
            assert len(await collector.wait_for(2, Ping)) >= 2
            assert len(await collector.wait_for(3, Ping)) == 3
            assert numbers(collector.upstream) == [3]
            assert numbers(collector.downstream) == [1, 2]
            assert isinstance(collector.of_type(StartFrame)[0], StartFrame)
            with pytest.raises(TimeoutError, match="probe saw 3 of the 4 Ping frames"):
                await collector.wait_for(4, Ping, timeout=1)

    async def test_a_collector_that_does_not_forward_is_a_sink(
        self, autojump_clock: object
    ) -> None:
        """``forward=False`` keeps data frames; lifecycle frames still go on."""
        result = await run_frames(
            [FrameCollector(forward=False)], [Ping(1)], include_lifecycle=True
        )
        assert [type(f) for f in result.downstream] == [StartFrame, EndFrame]


class TestHelpers:
    async def test_wait_idle_returns_when_every_task_is_blocked(
        self, autojump_clock: object
    ) -> None:
        """``wait_idle`` returns once frames in flight are handled, before timers fire."""
        collector = FrameCollector(forward=False)
        async with open_test_task([Incr(), Incr(), collector], params=PipelineParams()) as t:
            await t.push(*[Ping(n) for n in range(100)])
            await wait_idle()
            assert numbers(collector.downstream) == [n + 2 for n in range(100)]
            assert trio.current_time() == 0

    async def test_an_idle_actor_is_one_task_and_system_frames_get_a_task_while_served(
        self, autojump_clock: object
    ) -> None:
        """An idle actor runs as its supervisor only; a system frame is served by a task that
        ends once the system lane is empty."""
        async with open_test_task([Incr(name="incr")]) as t:
            await wait_idle()

            def incr_tasks() -> list[str]:
                return sorted(task.name for task in running_tasks() if "incr" in task.name)

            assert incr_tasks() == ["actor:incr"]
            await t.push(Note("hello"))
            await wait_idle()
            assert [f.text for f in t.downstream if isinstance(f, Note)] == ["hello"]
            assert incr_tasks() == ["actor:incr"]

    async def test_running_tasks_sees_the_session(self, autojump_clock: object) -> None:
        """``running_tasks`` lists this task and, while a session runs, the actors' tasks."""
        me = trio.lowlevel.current_task()
        before = running_tasks()
        assert me in before
        async with open_test_task([Incr()]):
            names = {task.name for task in running_tasks()}
            assert any(name.startswith("actor:Incr") for name in names)
        assert set(running_tasks()) <= set(before)

    async def test_tasks_left_running_names_a_task_left_and_waits_for_one_ending(
        self, autojump_clock: object
    ) -> None:
        """``tasks_left_running`` reports a task left sleeping forever in a longer-lived task
        group, and not one that ends by itself within ``settle`` (a service's round trip)."""
        before = set(running_tasks())
        async with trio.open_nursery() as outer:

            async def left_behind() -> None:
                await trio.sleep_forever()

            async def in_flight() -> None:
                await trio.sleep(0.05)

            outer.start_soon(left_behind)
            outer.start_soon(in_flight)
            left = await tasks_left_running(before)
            assert [task.name for task in left] == [f"{__name__}.{left_behind.__qualname__}"]
            outer.cancel_scope.cancel()
        assert await tasks_left_running(before) == []

    async def test_capture_logs_sees_debug_events_and_restores_the_configuration(
        self, autojump_clock: object
    ) -> None:
        """``capture_logs`` captures every level and puts the configuration back."""
        before = structlog.get_config()
        with capture_logs() as logs:
            await run_frames([Incr(name="incr")], [])
        assert any(e["event"] == "actor started" and e["log_level"] == "debug" for e in logs)
        after = structlog.get_config()
        assert after["wrapper_class"] is before["wrapper_class"]
        assert after["processors"] == before["processors"]
