"""Actors that serve their mailbox on demand (``Actor.serve_on_demand``): no task of their own
while idle, and otherwise the same behaviour as any actor (order, asks, interruptions, crashes
and restarts, stops, background tasks)."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from runtime import (
    Actor,
    ActorState,
    Frame,
    FrameDirection,
    Pipeline,
    PipelineTask,
    RestartPolicy,
)
from runtime.testing import open_test_task, running_tasks, wait_idle

from .runtime_helpers import Gate, Ping, Sleeper, numbers


class OnDemandGate(Gate):
    serve_on_demand = True


class OnDemandSleeper(Sleeper):
    serve_on_demand = True


class Doubler(Actor[Ping]):
    """Answers a ``Ping`` ask with its number doubled; passes pushed ones on, doubled."""

    accepts = (Ping,)
    serve_on_demand = True

    def __init__(self, *, name: str | None = None, restart_policy: RestartPolicy | None = None):
        super().__init__(name=name, restart_policy=restart_policy)
        self.starts = 0
        self.stops = 0

    async def on_start(self) -> None:
        self.starts += 1

    async def on_stop(self) -> None:
        self.stops += 1

    async def on_ask(self, frame: Frame) -> object:
        assert isinstance(frame, Ping)
        return frame.n * 2

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        assert isinstance(frame, Ping)
        if frame.n < 0:
            raise ValueError(f"bad ping {frame.n}")
        await self.push_frame(Ping(frame.n * 2), direction)


def _tasks_of(actor: Actor[Any]) -> list[str]:
    """The names of the running trio tasks that work for ``actor``."""
    return [t.name for t in running_tasks() if actor.name in t.name]


class TestNoTaskWhileIdle:
    async def test_an_idle_on_demand_actor_has_no_task(self, autojump_clock: object) -> None:
        """Started and idle, it runs no task; a frame starts one, which ends once the
        mailbox is empty."""
        doubler = Doubler(name="doubler")
        async with open_test_task([doubler]) as harness:
            await wait_idle()
            assert doubler.state is ActorState.RUNNING
            assert doubler.starts == 1
            assert _tasks_of(doubler) == []
            for n in (1, 2, 3):
                await harness.push(Ping(n))
            assert numbers(await harness.next_frames(3)) == [2, 4, 6]
            await wait_idle()
            assert _tasks_of(doubler) == []
        assert doubler.stops == 1
        assert doubler.ref.is_alive() is False

    async def test_a_session_starts_no_task_for_an_on_demand_companion(
        self, autojump_clock: object
    ) -> None:
        """A companion with no ``on_start`` of its own starts with its owner, without any
        task (its StartFrame is applied when it arrives)."""
        spawned: list[str] = []

        class Spawns(trio.abc.Instrument):
            def task_spawned(self, task: trio.lowlevel.Task) -> None:
                spawned.append(task.name)

        class Quiet(Actor[Ping]):
            accepts = (Ping,)
            serve_on_demand = True

        owner = Actor[Frame](name="owner")
        quiet = Quiet(name="quiet")
        owner.add_companion(quiet)
        trio.lowlevel.add_instrument(Spawns())
        async with PipelineTask(Pipeline([owner])) as task:
            await task.wait_started()
            await wait_idle()
            assert quiet.state is ActorState.RUNNING
            assert [name for name in spawned if "quiet" in name] == []

    async def test_frames_sent_before_the_start_wait_for_it(self, autojump_clock: object) -> None:
        """Frames that reach an on-demand actor while its ``on_start`` runs are handled after
        it, in order."""

        class SlowStart(Doubler):
            async def on_start(self) -> None:
                await trio.sleep(5)
                await super().on_start()

        slow = SlowStart(name="slow")
        task = PipelineTask(Pipeline([slow]))
        out: list[Frame] = []
        task.add_listener(lambda f, d: out.append(f), FrameDirection.DOWNSTREAM)
        await task.queue_frames([Ping(1), Ping(2)])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(task.run)
            await task.wait_started()
            await task.end()
        assert numbers(out) == [2, 4]
        assert slow.starts == 1


class TestSameBehaviour:
    async def test_asks_are_answered(self, autojump_clock: object) -> None:
        doubler = Doubler(name="asked")
        async with open_test_task([doubler]):
            assert await doubler.ref.ask(Ping(21)) == 42
            assert await doubler.ref.ask(Ping(5)) == 10
            await wait_idle()
            assert _tasks_of(doubler) == []

    async def test_an_interruption_cancels_the_running_handler(
        self, autojump_clock: object
    ) -> None:
        """The handler is cancelled at once; a frame of the new turn is served after it."""
        gate = OnDemandGate(name="gate")
        async with open_test_task([gate]) as harness:
            await harness.push(Ping(1))
            await wait_idle()
            assert gate.started == [1]
            harness.interrupt()
            await wait_idle()
            assert gate.cancelled == [1]
            gate.open()
            await harness.push(Ping(2))
            await wait_idle()
            assert numbers(harness.downstream) == [2]
            assert gate.finished == [2]

    async def test_frames_queued_behind_an_interrupted_handler_are_served(
        self, autojump_clock: object
    ) -> None:
        """The interruption ends the task that served the lane; an uninterruptible frame
        queued behind the cancelled handler is served by the next one, at once."""
        gate = OnDemandGate(name="gate")
        async with open_test_task([gate]) as harness:
            await harness.push(Ping(1), Ping(2, interruptible=False))
            await wait_idle()
            assert gate.started == [1]
            harness.interrupt()
            await wait_idle()
            assert gate.cancelled == [1]
            assert gate.started == [1, 2]  # served without any new frame arriving
            gate.open()
            await wait_idle()
            assert numbers(harness.downstream) == [2]

    async def test_stale_frames_are_dropped(self, autojump_clock: object) -> None:
        """Frames queued behind a long handler belong to its turn: an interruption drops
        them (as it does for any actor)."""
        sleeper = OnDemandSleeper(10.0, name="sleeper")
        async with open_test_task([sleeper]) as harness:
            for n in (1, 2, 3):
                await harness.push(Ping(n))
            await wait_idle()
            harness.interrupt()
            await harness.push(Ping(4))
            await trio.sleep(11)
            assert numbers(harness.downstream) == [4]
            assert sleeper.cancelled == [1]
            assert sleeper.ref.statistics().dropped_stale == 2

    async def test_a_crash_without_a_policy_escalates(self, autojump_clock: object) -> None:
        doubler = Doubler(name="crashy")
        task = PipelineTask(Pipeline([doubler]))
        await task.queue_frames([Ping(-1), Ping(2)])
        with pytest.raises(ValueError, match="bad ping -1"):
            await task.run()
        assert doubler.state is ActorState.CRASHED

    async def test_a_crash_with_a_policy_restarts_the_actor(self, autojump_clock: object) -> None:
        """The actor starts again (``on_start`` runs again) and serves the next frames."""
        doubler = Doubler(name="restarted", restart_policy=RestartPolicy(max_restarts=3))
        async with open_test_task([doubler]) as harness:
            await harness.push(Ping(-1))
            await harness.push(Ping(3))
            assert numbers(await harness.next_frames(1)) == [6]
            assert doubler.starts == 2
            assert doubler.state is ActorState.RUNNING

    async def test_a_failing_background_task_cancels_the_handler_and_restarts(
        self, autojump_clock: object
    ) -> None:
        """A crash in a background task ends the actor's other work (its running handler is
        cancelled), as it does for an actor with a task of its own; the policy restarts it."""

        class Worker(OnDemandGate):
            async def on_start(self) -> None:
                self.create_task(self._fail)

            async def _fail(self) -> None:
                await trio.sleep(1)
                if not self.cancelled:
                    raise LookupError("background")

        worker = Worker(name="worker")
        worker.restart_policy = RestartPolicy(max_restarts=3)
        async with open_test_task([worker]) as harness:
            await harness.push(Ping(1))
            await wait_idle()
            assert worker.started == [1]
            await trio.sleep(2)  # the background task fails
            await wait_idle()
            assert worker.cancelled == [1]
            assert worker.state is ActorState.RUNNING
            worker.open()
            await harness.push(Ping(2))
            assert numbers(await harness.next_frames(1)) == [2]

    async def test_an_end_frame_stops_it_after_the_queued_frames(
        self, autojump_clock: object
    ) -> None:
        doubler = Doubler(name="ending")
        sleeper = OnDemandSleeper(1.0, name="slow")
        out: list[Frame] = []
        task = PipelineTask(Pipeline([sleeper, doubler]), on_downstream=lambda f, d: out.append(f))
        await task.queue_frames([Ping(1), Ping(2)])
        await task.end()
        await task.run()
        assert numbers(out) == [2, 4]
        assert doubler.stops == 1
        assert sleeper.state is ActorState.STOPPED
