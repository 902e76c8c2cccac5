"""No input is lost around a task's start and end.

- Frames pushed into a stage from outside (a transport's input) before the task has started
  are held and delivered once it has, in order with the frames queued on the task;
  ``wait_started()`` waits for that moment.
- Pushing into a stage of a finished task is refused with a clear error; input held for a
  task that ends before it starts is logged, never dropped silently.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from runtime import (
    Actor,
    Frame,
    FrameDirection,
    Pipeline,
    PipelineTask,
    SessionStateError,
    StartFrame,
)
from runtime.testing import capture_logs

from .runtime_helpers import Incr, Ping, numbers


class Entry(Actor[Frame]):
    """An input stage, like a transport's: the application pushes frames from it."""

    accepts = ()


class Recorder:
    """Every frame that reaches either end of a task, in the order they arrived."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []

    def __call__(self, frame: Frame, direction: FrameDirection) -> None:
        self.frames.append(frame)


class TestInputBeforeTheStart:
    async def test_frames_pushed_before_the_task_runs_are_delivered(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Pushed into the input stage and queued on the task, interleaved, before ``run()``:
        all arrive, each way in the order it was given."""
        entry = Entry()
        out = Recorder()
        task = PipelineTask(Pipeline([entry, Incr()]), on_downstream=out)
        await entry.push_frame(Ping(1))
        await task.queue_frame(Ping(10))
        await entry.push_frame(Ping(2))
        await task.queue_frame(Ping(20))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(task.run)
            await task.wait_started()
            await task.end()
        got = numbers(out.frames)
        assert sorted(got) == [2, 3, 11, 21]
        assert [n for n in got if n < 10] == [2, 3]
        assert [n for n in got if n > 10] == [11, 21]

    async def test_frames_pushed_while_the_task_starts_are_delivered_in_order(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Right after ``run()`` was started, and at every step of its start (session opened,
        actors spawned, the ``StartFrame`` crossing them), a frame pushed into the input
        stage arrives: none is lost, none overtakes another."""
        entry = Entry()
        out = Recorder()
        task = PipelineTask(Pipeline([entry, Incr(), Incr()]), on_downstream=out)
        sent = 0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(task.run)
            while not task.has_started():
                await entry.push_frame(Ping(sent))
                sent += 1
                await trio.lowlevel.checkpoint()
            await entry.push_frame(Ping(sent))
            sent += 1
            await task.end()
        assert sent > 3  # the start took several steps, and input came at each of them
        assert numbers(out.frames) == [n + 2 for n in range(sent)]

    async def test_wait_started_returns_once_every_stage_has_started(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        out = Recorder()
        task = PipelineTask(Pipeline([Incr()]), on_downstream=out)
        await task.queue_frame(Ping(1))
        assert not task.has_started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(task.run)
            await task.wait_started()
            assert task.has_started()
            assert isinstance(out.frames[0], StartFrame)
            assert task.session.running
            await task.wait_started()  # at once, once started
            await task.end()
        await task.wait_started()  # it did start, even if it has finished since
        assert numbers(out.frames) == [2]

    async def test_wait_started_of_a_task_cancelled_before_its_start_raises(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        task = PipelineTask(Pipeline([Incr()]))
        task.cancel("changed my mind")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(task.run)
            with pytest.raises(SessionStateError, match=r"ended before it started.*changed my"):
                await task.wait_started()

    async def test_input_held_for_a_task_that_never_started_is_logged(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Cancelled before its start: the held input goes nowhere, and the log says so."""
        entry = Entry()
        task = PipelineTask(Pipeline([entry, Incr()]), name="early")
        await entry.push_frame(Ping(1))
        await task.queue_frame(Ping(2))
        task.cancel()
        with capture_logs() as logs:
            await task.run()
        (dropped,) = [e for e in logs if e["event"].startswith("input dropped")]
        assert dropped["log_level"] == "warning"
        assert dropped["session"] == "early"
        assert dropped["frames"] == 2
        assert dropped["kinds"] == ["Ping"]


class TestInputAfterTheEnd:
    async def test_pushing_into_a_stage_of_a_finished_task_is_refused(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        entry = Entry()
        task = PipelineTask(Pipeline([entry, Incr()]), name="over")
        await task.end()
        await task.run()
        with pytest.raises(SessionStateError, match=r"task 'over' has finished.*Entry"):
            await entry.push_frame(Ping(1))
        with pytest.raises(SessionStateError, match="has finished"):
            await task.queue_frame(Ping(1))
