"""Lifecycle of a task: start, end, cancel, idle timeout, embedding, the runner, and the
guarantee that nothing of a session is left running once it is over."""

from __future__ import annotations

import gc
import signal

import pytest
import trio

from runtime import (
    Actor,
    ActorState,
    CancelFrame,
    EndFrame,
    ErrorFrame,
    Frame,
    FrameDirection,
    Pipeline,
    PipelineParams,
    PipelineRunner,
    PipelineTask,
    Session,
    SessionStateError,
    StartFrame,
)
from runtime.testing import (
    FrameCollector,
    capture_logs,
    open_test_task,
    run_frames,
    running_tasks,
    wait_idle,
)

from .runtime_helpers import Gate, Kind, Ping, Sleeper, numbers


class Journal(Actor[Frame]):
    """Writes down ``on_start``, every frame it handles and ``on_stop``, in order."""

    accepts = (Frame,)

    def __init__(self, name: str) -> None:
        super().__init__(name=name)
        self.events: list[str] = []

    async def on_start(self) -> None:
        self.events.append("on_start")

    async def on_stop(self) -> None:
        self.events.append("on_stop")

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        self.events.append(type(frame).__name__)
        if isinstance(frame, Ping):
            await self.push_frame(frame, direction)


class TestStart:
    async def test_start_frame_reaches_every_actor_before_any_data_frame(
        self, autojump_clock: object
    ) -> None:
        """Every actor runs ``on_start`` and sees the ``StartFrame`` before any data frame,
        also for frames queued before ``run()`` started."""
        journals = [Journal(f"j{i}") for i in range(3)]
        task = PipelineTask(Pipeline(journals))
        await task.queue_frames([Ping(1), Ping(2)])
        await task.end()
        await task.run()
        for journal in journals:
            assert journal.events == [
                "on_start",
                "StartFrame",
                "Ping",
                "Ping",
                "EndFrame",
                "on_stop",
            ], journal.name

    async def test_data_sent_before_the_start_frame_waits_for_it(
        self, autojump_clock: object
    ) -> None:
        """An actor spawned without a ``StartFrame`` keeps data queued until one arrives."""
        collector = FrameCollector(forward=False)
        async with Session.open() as session:
            ref = session.spawn(collector, start=False)
            await ref.send(Ping(1))
            await wait_idle()
            assert collector.frames == []
            assert collector.state is ActorState.CREATED
            await ref.send(StartFrame())
            await wait_idle()
            assert [type(f) for f, _ in collector.frames] == [StartFrame, Ping]
            assert collector.state.name == "RUNNING"

    async def test_start_frame_carries_the_task_params(self, autojump_clock: object) -> None:
        """The task's ``PipelineParams`` reach every actor through the ``StartFrame``, which
        each actor keeps (``start_frame``)."""
        actor = FrameCollector()
        params = PipelineParams(mailbox_size=8, stop_timeout_secs=2.0)
        assert actor.start_frame is None
        result = await run_frames([actor], [], params=params, include_lifecycle=True)
        start = result.downstream[0]
        assert isinstance(start, StartFrame)
        assert start.params is params
        assert actor.start_frame is start

    async def test_a_start_frame_that_never_crosses_times_out(self, autojump_clock: object) -> None:
        """A stage that never lets the ``StartFrame`` through fails ``run()`` after
        ``start_timeout_secs`` (virtual time), leaving nothing behind."""

        class Stuck(Actor[Frame]):
            async def on_start(self) -> None:
                await trio.sleep_forever()

        before = set(running_tasks())
        task = PipelineTask(Stuck(), PipelineParams(start_timeout_secs=3, stop_timeout_secs=1))
        with pytest.raises(trio.TooSlowError):
            await task.run()
        assert trio.current_time() == pytest.approx(3)
        assert set(running_tasks()) <= before


class TestLifecycleForwarding:
    async def test_a_stage_that_forwards_everything_does_not_duplicate_lifecycle_frames(
        self, autojump_clock: object
    ) -> None:
        """Lifecycle frames are forwarded by the runtime; a Pipecat-style stage that pushes
        every frame it handles does not make them arrive twice."""

        class ForwardsAll(Actor[Frame]):
            async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
                await self.push_frame(frame, direction)

        async with open_test_task([ForwardsAll(), ForwardsAll()], include_lifecycle=True) as t:
            await t.push(Ping(1))
            await wait_idle()
            t.interrupt()
            await wait_idle()
        kinds = [type(f).__name__ for f in t.downstream]
        assert sorted(kinds) == ["EndFrame", "InterruptionFrame", "Ping", "StartFrame"]


class TestEndAndCancel:
    async def test_end_drains_the_queued_frames_then_stops_every_actor(
        self, autojump_clock: object
    ) -> None:
        """``end()`` lets every queued frame through before the actors stop."""
        sleeper = Sleeper(1.0)
        result = await run_frames([sleeper], [Ping(n) for n in range(5)], include_lifecycle=True)
        assert numbers(result.downstream) == [0, 1, 2, 3, 4]
        assert isinstance(result.downstream[-1], EndFrame)
        assert trio.current_time() == pytest.approx(5)
        assert sleeper.state is ActorState.STOPPED

    async def test_wait_stopped_returns_when_the_actor_stops_and_at_once_after(self) -> None:
        """``ActorRef.wait_stopped()`` blocks while the actor runs, wakes when it is removed,
        and returns at once for an actor that has already stopped."""
        async with Session.open() as session:
            actor = Sleeper(1.0, name="napper")
            ref = session.spawn(actor)
            woke: list[ActorState] = []

            async def waiter() -> None:
                await ref.wait_stopped()
                woke.append(actor.state)

            with trio.fail_after(5):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(waiter)
                    nursery.start_soon(waiter)
                    await wait_idle()
                    assert woke == []
                    await session.remove(ref)
            assert woke == [ActorState.STOPPED, ActorState.STOPPED]
            with trio.fail_after(1):
                await ref.wait_stopped()

    async def test_cancel_stops_at_once_without_draining(self, autojump_clock: object) -> None:
        """``cancel()`` overtakes the queued frames: the handler in progress is cancelled and
        the rest is abandoned."""
        sleeper = Sleeper(1.0)
        async with open_test_task([sleeper], include_lifecycle=True) as t:
            await t.push(*[Ping(n) for n in range(5)])
            await trio.sleep(1.5)
            assert not t.task.was_cancelled()
            t.cancel("stop now")
            assert t.task.was_cancelled()  # at once, before the topology is torn down
            await t.wait_finished()
            assert t.task.was_cancelled()
            assert trio.current_time() == pytest.approx(1.5)
        assert numbers(t.downstream) == [0]
        assert sleeper.cancelled == [1]
        assert isinstance(t.downstream[-1], CancelFrame)
        assert t.downstream[-1].reason == "stop now"
        assert sleeper.state is ActorState.STOPPED

    async def test_cancel_is_idempotent_and_safe_before_start(self, autojump_clock: object) -> None:
        """Cancelling a task that has not started, twice, makes ``run()`` return quickly."""
        task = PipelineTask(FrameCollector())
        await task.queue_frame(Ping(1))
        task.cancel()
        task.cancel()
        await task.run()
        assert task.has_finished()

    async def test_a_task_runs_once_and_refuses_frames_afterwards(
        self, autojump_clock: object
    ) -> None:
        """A finished task cannot be run again nor fed."""
        task = PipelineTask(FrameCollector())
        await task.end()
        await task.run()
        assert not task.was_cancelled()  # it ended
        task.cancel()
        assert not task.was_cancelled()  # a finished task is not cancelled any more
        with pytest.raises(SessionStateError, match="already ran"):
            await task.run()
        with pytest.raises(SessionStateError, match="has finished"):
            await task.queue_frame(Ping(1))
        with pytest.raises(TypeError, match="takes a Frame"):
            await PipelineTask(FrameCollector()).queue_frame("text")  # type: ignore[arg-type]

    async def test_a_fatal_error_frame_cancels_the_session(self, autojump_clock: object) -> None:
        """An upstream ``ErrorFrame`` with ``fatal=True`` cancels the task once it reaches the
        input end; non-fatal ones are collected in ``task.errors``."""

        class Failing(Actor[Ping]):
            accepts = (Ping,)

            async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
                assert isinstance(frame, Ping)
                await self.push_error(
                    f"bad {frame.n}", fatal=frame.n == 2, category=Kind.APPLICATION
                )

        task = PipelineTask(Failing(name="failing"))
        await task.queue_frames([Ping(1), Ping(2), Ping(3)])
        with trio.fail_after(60):
            await task.run()
        # Ping(3) may be handled before the fatal error reaches the input end.
        assert [e.error for e in task.errors][:2] == ["bad 1", "bad 2"]
        assert task.errors[1].fatal
        assert task.errors[1].source == "failing"
        assert task.was_cancelled()

    async def test_errors_pushed_upstream_while_draining_still_reach_the_task(
        self, autojump_clock: object
    ) -> None:
        """An error reported by a stage while the pipeline drains after ``end()`` reaches the
        input end (the task's source keeps listening until the session is over)."""

        class LateError(Actor[Ping]):
            accepts = (Ping,)

            async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
                await trio.sleep(1)
                await self.push_error("late")

        result = await run_frames([Sleeper(0.0), LateError()], [Ping(1)])
        assert [e.error for e in result.errors] == ["late"]


class TestNothingLeftBehind:
    async def test_no_task_of_the_session_remains_after_run(self, autojump_clock: object) -> None:
        """After ``run()`` returns (end, cancel, idle timeout, crash), no task of the session
        is left: not the actors' loops, nor their background tasks."""

        class Busy(Actor[Ping]):
            accepts = (Ping,)

            async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
                self.create_task(trio.sleep_forever)
                self.create_task(trio.sleep_forever, interruptible=True)
                await self.push_frame(frame, direction)

        class Crash(Actor[Ping]):
            accepts = (Ping,)

            async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
                self.create_task(trio.sleep_forever)
                raise RuntimeError("crash")

        before = set(running_tasks())
        root_nurseries = len(trio.lowlevel.current_task().child_nurseries)

        task = PipelineTask(Pipeline([Busy(), Gate()]))
        await task.queue_frames([Ping(1)])
        await task.end()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(task.run)
            await wait_idle()
            # run() and the Gate's task still running (the task's ends have no task)
            assert len(set(running_tasks()) - before) >= 2
            task.cancel()
        assert set(running_tasks()) <= before

        task = PipelineTask(Busy(), PipelineParams(idle_timeout_secs=2))
        await task.queue_frame(Ping(1))
        await task.run()
        assert set(running_tasks()) <= before

        task = PipelineTask(Pipeline([Busy(), Crash()]))
        await task.queue_frame(Ping(1))
        with pytest.raises(RuntimeError, match="crash"):
            await task.run()
        assert set(running_tasks()) <= before
        assert len(trio.lowlevel.current_task().child_nurseries) == root_nurseries

    async def test_a_run_cancelled_from_outside_while_idle_tears_the_session_down(
        self, autojump_clock: object
    ) -> None:
        """``run()`` cancelled by its caller while the session waits for input stops every
        actor and returns; the task is finished, and a later ``cancel()`` is harmless."""
        before = set(running_tasks())
        journal = Journal("j")
        task = PipelineTask(Pipeline([journal, Gate()]))
        with trio.move_on_after(5) as scope:
            await task.run()
        assert scope.cancelled_caught
        assert task.has_finished()
        assert journal.events[0] == "on_start"
        assert journal.events[-1] == "on_stop"
        assert set(running_tasks()) <= before
        task.cancel()  # nothing left to wake
        assert not task.was_cancelled()

    async def test_a_socket_opened_by_an_actor_is_closed_when_the_session_ends(
        self, autojump_clock: object
    ) -> None:
        """A socket an actor uses in its turn's work is closed by the cancellation, on cancel
        as on an interruption."""

        class Streamer(Actor[Ping]):
            accepts = (Ping,)

            def __init__(self) -> None:
                super().__init__()
                self.sockets: dict[int, list[trio.socket.SocketType]] = {}

            async def stream(self, n: int) -> None:
                a, b = trio.socket.socketpair()
                self.sockets[n] = [a, b]
                with a, b:
                    await a.recv(1)  # a response that never comes

            async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
                assert isinstance(frame, Ping)
                self.create_task(self.stream, frame.n, interruptible=frame.n == 1)

        def open_fds(n: int) -> list[bool]:
            return [s.fileno() >= 0 for s in streamer.sockets[n]]

        streamer = Streamer()
        async with open_test_task([streamer]) as t:
            await t.push(Ping(1), Ping(2))
            await wait_idle()
            assert open_fds(1) == open_fds(2) == [True, True]
            t.interrupt()
            await wait_idle()
            assert open_fds(1) == [False, False]  # the turn's stream: closed at once
            assert open_fds(2) == [True, True]
            t.cancel()
        assert open_fds(2) == [False, False]

    async def test_on_stop_is_time_boxed(self, autojump_clock: object) -> None:
        """A hanging ``on_stop`` is abandoned after ``stop_timeout_secs`` with a warning."""

        class Hangs(Actor[Frame]):
            async def on_stop(self) -> None:
                await trio.sleep_forever()

        with capture_logs() as logs:
            task = PipelineTask(Hangs(name="hangs"), PipelineParams(stop_timeout_secs=2))
            await task.end()
            await task.run()
        assert trio.current_time() == pytest.approx(2)
        assert any(e["event"] == "on_stop timed out" and e["actor"] == "hangs" for e in logs)


class TestIdleTimeout:
    async def test_idle_timeout_is_off_by_default(self, autojump_clock: object) -> None:
        """Without ``idle_timeout_secs`` a quiet task runs for as long as it is not ended."""
        async with open_test_task([FrameCollector()]) as t:
            await trio.sleep(24 * 3600)
            assert not t.has_finished()

    async def test_an_idle_task_is_cancelled_after_the_timeout(
        self, autojump_clock: object
    ) -> None:
        """With ``idle_timeout_secs`` set, a task where no frame reached an end for that long
        is cancelled; frames reaching an end restart the clock."""
        params = PipelineParams(idle_timeout_secs=10)
        with capture_logs() as logs:
            async with open_test_task([Sleeper(3.0)], params=params) as t:
                await t.push(Ping(1))  # comes out at t=3
                await t.wait_finished(timeout=60)
        assert t.task.was_cancelled()
        assert trio.current_time() == pytest.approx(13)
        assert numbers(t.downstream) == [1]
        assert any(e["event"] == "idle timeout" for e in logs)


class TestEmbedding:
    async def test_async_with_runs_the_task_in_the_background_and_ends_it(
        self, autojump_clock: object
    ) -> None:
        """``async with PipelineTask(...)`` runs the task during the block and ends it
        gracefully (draining) when the block is left."""
        out: list[Frame] = []
        task = PipelineTask(Sleeper(1.0), on_downstream=lambda f, d: out.append(f))
        async with task:
            assert task.session.running
            await task.queue_frames([Ping(1), Ping(2)])
        assert task.has_finished()
        assert numbers(out) == [1, 2]

    async def test_listeners_run_in_the_pushing_stage_without_a_hop(
        self, autojump_clock: object
    ) -> None:
        """Data frames reach ``on_downstream`` inside the last stage's own task, in push order,
        with the ``EndFrame`` last; a frame of an interrupted turn pushed after the
        interruption (by a stage it has not cancelled yet) is dropped, not delivered."""
        seen: list[tuple[str, str]] = []
        frames: list[Frame] = []

        class Last(Actor[Ping]):
            accepts = (Ping,)

            async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
                assert isinstance(frame, Ping)
                if frame.n == 3:
                    # The interruption cancels this very handler, but it has not reached a
                    # checkpoint yet: its push must not leak the old turn's frame.
                    self.session.interrupt()
                await self.push_frame(Ping(frame.n * 10), direction)

        def listener(frame: Frame, direction: FrameDirection) -> None:
            seen.append((type(frame).__name__, trio.lowlevel.current_task().name))
            frames.append(frame)

        last = Last(name="last")
        task = PipelineTask(Pipeline([Sleeper(1.0), last]), on_downstream=listener)
        async with task:
            await task.queue_frames([Ping(1), Ping(2), Ping(3)])
            await trio.sleep(10)  # the interruption happened at t=3
            await task.queue_frame(Ping(4))
        names = [name for name, _ in seen]
        assert names == ["StartFrame", "Ping", "Ping", "Ping", "EndFrame"]
        pings = [where for name, where in seen if name == "Ping"]
        assert all(where == pings[0] for where in pings)
        assert "last" in pings[0]
        assert numbers(frames) == [10, 20, 40]  # 30 belonged to the interrupted turn

    async def test_an_async_listener_holds_the_pushing_stage_and_the_next_listeners(
        self, autojump_clock: object
    ) -> None:
        """Listeners may be async: the last stage's push waits for one, the listeners after it
        are called once it is done, and every frame goes through all of them in order."""
        calls: list[tuple[str, int]] = []

        def first(frame: Frame, direction: FrameDirection) -> None:
            if isinstance(frame, Ping):
                calls.append(("first", frame.n))

        async def slow(frame: Frame, direction: FrameDirection) -> None:
            if isinstance(frame, Ping):
                await trio.sleep(1)
                calls.append(("slow", frame.n))

        def last(frame: Frame, direction: FrameDirection) -> None:
            if isinstance(frame, Ping):
                calls.append(("last", frame.n))

        task = PipelineTask(Pipeline([Sleeper(0.0)]), on_downstream=first)
        task.add_listener(slow, FrameDirection.DOWNSTREAM)
        task.add_listener(last, FrameDirection.DOWNSTREAM)
        async with task:
            await task.queue_frames([Ping(1), Ping(2)])
        assert calls == [(who, n) for n in (1, 2) for who in ("first", "slow", "last")]
        assert trio.current_time() == 2

    async def test_an_exception_in_the_block_cancels_the_task_and_propagates_as_itself(
        self, autojump_clock: object
    ) -> None:
        """If the block raises, the task is cancelled and the block's own exception (not an
        exception group) propagates."""
        sleeper = Sleeper(100.0)
        task = PipelineTask(sleeper)

        async def block_that_fails() -> None:
            async with task:
                await task.queue_frame(Ping(1))
                await wait_idle()
                raise KeyError("mine")

        with pytest.raises(KeyError, match="mine"):
            await block_that_fails()
        assert task.has_finished()
        assert sleeper.cancelled == [1]
        assert trio.current_time() < 1

    async def test_an_actor_crash_surfaces_from_the_async_with_block_as_itself(
        self, autojump_clock: object
    ) -> None:
        """An escalated crash ends the block with the actor's own exception, as ``run()``
        does."""

        class Crash(Actor[Ping]):
            accepts = (Ping,)

            async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
                raise ZeroDivisionError("actor bug")

        task = PipelineTask(Crash())

        async def block() -> None:
            async with task:
                await task.queue_frame(Ping(1))
                await trio.sleep_forever()

        with pytest.raises(ZeroDivisionError, match="actor bug"):
            await block()


class TestPipelineRunner:
    async def test_the_runner_runs_tasks_concurrently_until_all_are_done(
        self, autojump_clock: object
    ) -> None:
        """``PipelineRunner.run`` runs several tasks at once and returns when all have
        finished."""
        tasks = [PipelineTask(Sleeper(float(n))) for n in (1, 2, 3)]
        for task in tasks:
            await task.queue_frame(Ping(1))
            await task.end()
        await PipelineRunner().run(*tasks)
        assert all(task.has_finished() for task in tasks)
        assert trio.current_time() == pytest.approx(3)

    async def test_freeze_gc_after_start_freezes_while_the_tasks_run(
        self, autojump_clock: object
    ) -> None:
        """With ``freeze_gc_after_start=True`` the objects alive once every task has started
        (the sessions' actors among them) are frozen while the tasks run, and unfrozen when
        they are done."""
        assert gc.get_freeze_count() == 0
        collecting: list[bool] = []

        class Starting(Sleeper):
            async def on_start(self) -> None:
                collecting.append(gc.isenabled())

        sleepers = [Starting(1.0), Starting(2.0)]
        tasks = [PipelineTask(s) for s in sleepers]
        for task in tasks:
            await task.queue_frame(Ping(1))
            await task.end()
        seen: list[int] = []

        async def watch() -> None:
            await trio.sleep(0.5)  # both tasks have started, neither has finished
            seen.append(gc.get_freeze_count())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            await PipelineRunner(freeze_gc_after_start=True).run(*tasks)
        (frozen,) = seen
        assert frozen > len(sleepers)  # the sessions' objects and everything else alive
        assert gc.get_freeze_count() == 0
        assert collecting == [False, False]  # the collector paused while they started
        assert gc.isenabled()
        assert all(task.has_finished() for task in tasks)

    async def test_no_freeze_by_default(self, autojump_clock: object) -> None:
        """By default the runner leaves the garbage collector alone."""
        task = PipelineTask(Sleeper(1.0))
        await task.queue_frame(Ping(1))
        await task.end()
        seen: list[int] = []

        async def watch() -> None:
            await trio.sleep(0.5)
            seen.append(gc.get_freeze_count())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            await PipelineRunner().run(task)
        assert seen == [0]

    async def test_sigterm_cancels_every_task(self, autojump_clock: object) -> None:
        """With ``handle_sigterm=True`` a SIGTERM cancels the tasks and ``run`` returns."""
        tasks = [PipelineTask(Sleeper(1000.0)) for _ in range(2)]
        for task in tasks:
            await task.queue_frame(Ping(1))
        runner = PipelineRunner(handle_sigterm=True)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner.run, *tasks)
            await wait_idle()
            signal.raise_signal(signal.SIGTERM)
        assert all(task.has_finished() for task in tasks)
        assert trio.current_time() < 1000

    async def test_a_crash_in_one_task_is_raised_by_the_runner(
        self, autojump_clock: object
    ) -> None:
        """A task's escalated crash stops the runner and is raised by ``run``."""

        class Crash(Actor[Ping]):
            accepts = (Ping,)

            async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
                raise OSError("disk full")

        crashing = PipelineTask(Crash())
        await crashing.queue_frame(Ping(1))
        other = PipelineTask(Sleeper(1000.0))
        await other.queue_frame(Ping(1))
        with pytest.raises(OSError, match="disk full"):
            await PipelineRunner().run(crashing, other)
        assert other.has_finished()


class TestErrorFrames:
    async def test_push_error_sends_an_error_frame_upstream_with_its_source(
        self, autojump_clock: object
    ) -> None:
        """``push_error`` reports an ``ErrorFrame`` upstream that reaches the input end."""

        class Reports(Actor[Ping]):
            accepts = (Ping,)

            async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
                await self.push_error("upstream service down", category=Kind.CONNECTIVITY)

        result = await run_frames([FrameCollector(), Reports(name="svc")], [Ping(1)])
        [error] = result.errors
        assert isinstance(error, ErrorFrame)
        assert (error.error, error.source, error.category, error.fatal) == (
            "upstream service down",
            "svc",
            Kind.CONNECTIVITY,
            False,
        )
