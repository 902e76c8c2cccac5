"""No input is lost around a task's start and end, and a reported error reaches the task
before what its reporter sends next.

- Frames pushed into a stage from outside (a transport's input) before the task has started
  are held and delivered once it has, in order with the frames queued on the task;
  ``wait_started()`` waits for that moment.
- Pushing into a stage of a finished task is refused with a clear error; input held for a
  task that ends before it starts is logged, never dropped silently.
- ``push_error`` returns once the error has been delivered (it reached the task, or a stage
  took it), so whatever the reporter pushes next reaches the output after it.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from runtime import (
    Actor,
    ErrorFrame,
    Frame,
    FrameDirection,
    ParallelPipeline,
    Pipeline,
    PipelineTask,
    Session,
    SessionStateError,
    StartFrame,
)
from runtime.testing import capture_logs

from .runtime_helpers import Incr, Note, Ping, numbers


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


class Failing(Actor[Ping]):
    """Reports an error for every ``Ping``, then passes the ``Ping`` on."""

    accepts = (Ping,)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        assert isinstance(frame, Ping)
        await self.push_error(f"ping {frame.n} failed")
        await self.push_frame(frame, direction)


class Pass(Actor[Frame]):
    """Passes everything on (a stage the error crosses on its way upstream)."""

    accepts = ()


class Swallow(Actor[ErrorFrame]):
    """Takes every ``ErrorFrame`` and passes none on."""

    accepts = (ErrorFrame,)

    def __init__(self) -> None:
        super().__init__()
        self.taken: list[str] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        assert isinstance(frame, ErrorFrame)
        self.taken.append(frame.error)


class SlowNotes(Actor[Note]):
    """Spends ten seconds on every ``Note`` (system lane): what queues behind it waits."""

    accepts = (Note,)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await trio.sleep(10)


class TestErrorBeforeWhatFollows:
    async def test_the_error_reaches_the_task_before_the_next_frame_reaches_the_output(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The error travels upstream across three stages, the ``Ping`` one stage downstream:
        the task still gets the error first (one log of both ends, in arrival order)."""
        ends = Recorder()
        task = PipelineTask(
            Pipeline([Pass(), Pass(), Pass(), Failing()]), on_downstream=ends, on_upstream=ends
        )
        await task.queue_frames([Ping(1), Ping(2)])
        await task.end()
        await task.run()
        kinds = [
            f.error if isinstance(f, ErrorFrame) else f.n
            for f in ends.frames
            if isinstance(f, ErrorFrame | Ping)
        ]
        assert kinds == ["ping 1 failed", 1, "ping 2 failed", 2]
        assert [e.error for e in task.errors] == ["ping 1 failed", "ping 2 failed"]

    async def test_an_error_a_stage_takes_does_not_hold_its_reporter(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        swallow = Swallow()
        out = Recorder()
        task = PipelineTask(Pipeline([swallow, Pass(), Failing()]), on_downstream=out)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(task.run)
            await task.queue_frame(Ping(1))
            await trio.testing.wait_all_tasks_blocked()
            # The Ping left (after push_error returned) while every stage was still running.
            assert numbers(out.frames) == [1]
            await task.end()
        assert swallow.taken == ["ping 1 failed"]
        assert task.errors == []
        assert numbers(out.frames) == [1]

    async def test_an_error_that_crosses_parallel_branches_reaches_the_task_once(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """Reported after a fan-in, the error goes up every branch and is merged at the
        fan-out: the reporter waits for all of those copies, the task gets it once."""
        ends = Recorder()
        task = PipelineTask(
            Pipeline([Pass(), ParallelPipeline([Pass()], [Pass(), Pass()], [Pass()]), Failing()]),
            on_downstream=ends,
            on_upstream=ends,
        )
        await task.queue_frame(Ping(1))
        await task.end()
        with trio.fail_after(5):
            await task.run()
        kinds = [type(f).__name__ for f in ends.frames if isinstance(f, ErrorFrame | Ping)]
        assert kinds == ["ErrorFrame", "Ping"]

    async def test_an_error_with_nowhere_to_go_does_not_hold_its_reporter(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """An actor with no upstream neighbour (spawned on its own) reports and goes on."""
        failing = Failing()
        async with Session.open() as session:
            session.spawn(failing)
            with trio.fail_after(5):
                await failing.ref.send(Ping(1))
                await trio.testing.wait_all_tasks_blocked()
            (snap,) = session.snapshot().actors
            assert snap.busy_with is None  # the Ping was handled to the end
            assert snap.mailbox is not None
            assert snap.mailbox.delivered == 2  # its StartFrame and the Ping

    async def test_an_error_still_queued_in_a_stage_that_stops_reaches_the_task(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The error waits in a stage's system lane (behind a slow system frame) when the
        ``EndFrame`` passes that stage and stops it: it is passed on, not dropped with the
        stage's queue, and its reporter's next frame still comes after it."""
        ends = Recorder()
        task = PipelineTask(
            Pipeline([Pass(), SlowNotes(), Failing()]), on_downstream=ends, on_upstream=ends
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(task.run)
            await task.wait_started()
            await task.queue_frame(Note("slow"))
            await task.queue_frame(Ping(1))
            await trio.testing.wait_all_tasks_blocked()  # the error is queued behind the Note
            await task.end()
        assert trio.current_time() < 10  # the Note's handler was cut short by the stop
        assert [e.error for e in task.errors] == ["ping 1 failed"]
        kinds = [type(f).__name__ for f in ends.frames if isinstance(f, ErrorFrame | Ping)]
        assert kinds == ["ErrorFrame", "Ping"]
