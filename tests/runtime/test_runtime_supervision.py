"""Supervision: escalation by default, restart policies with backoff and intensity, watchers."""

from __future__ import annotations

import pytest
import trio

from runtime import (
    Actor,
    ActorState,
    ActorStoppedFrame,
    Frame,
    FrameDirection,
    Pipeline,
    PipelineTask,
    RestartIntensityExceeded,
    RestartPolicy,
    Session,
)
from runtime.testing import FrameCollector, capture_logs, open_test_task, run_frames, wait_idle

from .runtime_helpers import Ping, numbers


class Flaky(Actor[Ping]):
    """Raises on negative pings, passes the others on; counts its starts."""

    accepts = (Ping,)

    def __init__(self, *, name: str = "flaky", restart_policy: RestartPolicy | None = None) -> None:
        super().__init__(name=name, restart_policy=restart_policy)
        self.starts: list[float] = []

    async def on_start(self) -> None:
        self.starts.append(trio.current_time())

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        assert isinstance(frame, Ping)
        if frame.n < 0:
            raise ValueError(f"bad ping {frame.n}")
        await self.push_frame(frame, direction)


class TestEscalation:
    async def test_without_a_policy_run_raises_the_actors_own_exception(
        self, autojump_clock: object
    ) -> None:
        """By default a crash stops the session and ``run()`` raises the actor's exception
        itself, not an exception group."""
        flaky = Flaky()
        with capture_logs() as logs:
            task = PipelineTask(Pipeline([flaky, FrameCollector()]), name="esc")
            await task.queue_frames([Ping(1), Ping(-1), Ping(2)])
            with pytest.raises(ValueError, match="bad ping -1") as info:
                await task.run()
        assert type(info.value) is ValueError
        assert flaky.state is ActorState.CRASHED
        [event] = [e for e in logs if e["event"] == "actor crashed"]
        assert event["actor"] == "flaky"
        assert event["error"] == "ValueError: bad ping -1"
        assert event["session"] == "esc"
        assert event["log_level"] == "error"

    async def test_the_crash_keeps_its_own_cause(self, autojump_clock: object) -> None:
        """An escalated exception keeps its ``__cause__`` chain."""

        class Chained(Actor[Ping]):
            accepts = (Ping,)

            async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
                table: dict[str, int] = {}
                try:
                    table["missing"]
                except KeyError as exc:
                    raise RuntimeError("lookup failed") from exc

        with pytest.raises(RuntimeError, match="lookup failed") as info:
            await run_frames([Chained()], [Ping(1)])
        assert isinstance(info.value.__cause__, KeyError)

    async def test_a_crash_in_a_background_task_escalates_too(self, autojump_clock: object) -> None:
        """An exception in a task started with ``create_task`` is handled like a handler's."""

        class Background(Actor[Ping]):
            accepts = (Ping,)

            async def boom(self) -> None:
                await trio.sleep(1)
                raise LookupError("background")

            async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
                self.create_task(self.boom)

        async def scenario() -> None:
            async with open_test_task([Background()]) as t:
                await t.push(Ping(1))
                await trio.sleep(5)

        with pytest.raises(LookupError, match="background"):
            await scenario()
        assert trio.current_time() == pytest.approx(1)


class TestRestartPolicy:
    async def test_a_crashed_actor_restarts_after_a_backoff_and_keeps_its_mailbox(
        self, autojump_clock: object
    ) -> None:
        """With a policy the actor restarts (``on_start`` again) after an exponential backoff
        in virtual time; frames queued in its mailbox are kept, the crashing frame is
        dropped."""
        policy = RestartPolicy(max_restarts=3, within_secs=60, backoff_secs=1, max_backoff_secs=10)
        flaky = Flaky(restart_policy=policy)
        with capture_logs() as logs:
            result = await run_frames(
                [flaky], [Ping(1), Ping(-1), Ping(2), Ping(-2), Ping(3), Ping(4)]
            )
        assert numbers(result.downstream) == [1, 2, 3, 4]
        assert flaky.starts == [0.0, pytest.approx(1.0), pytest.approx(3.0)]
        restarts = [e for e in logs if e["event"] == "actor restarting"]
        assert [(e["restart"], e["backoff_secs"]) for e in restarts] == [(1, 1.0), (2, 2.0)]
        assert restarts[0]["error"] == "ValueError: bad ping -1"
        assert flaky.state is ActorState.STOPPED

    async def test_snapshot_counts_restarts(self, autojump_clock: object) -> None:
        """The session snapshot reports how often an actor was restarted."""
        flaky = Flaky(restart_policy=RestartPolicy(backoff_secs=0.5))
        async with Session.open() as session:
            ref = session.spawn(flaky)
            await ref.send(Ping(-1))
            await trio.sleep(1)
            [snap] = session.snapshot().actors
            assert snap.restarts == 1
            assert snap.state == "running"

    async def test_restarts_outside_the_window_do_not_count(self, autojump_clock: object) -> None:
        """Only crashes inside the sliding window count towards the intensity limit."""
        flaky = Flaky(restart_policy=RestartPolicy(max_restarts=1, within_secs=5))
        async with Session.open() as session:
            ref = session.spawn(flaky)
            for _ in range(4):
                await ref.send(Ping(-1))
                await trio.sleep(10)
            assert len(flaky.starts) == 5

    async def test_an_actor_removed_during_its_backoff_stays_stopped(
        self, autojump_clock: object
    ) -> None:
        """Removing an actor while it waits to be restarted stops it for good; the session
        goes on."""
        flaky = Flaky(restart_policy=RestartPolicy(backoff_secs=5))
        async with Session.open() as session:
            ref = session.spawn(flaky)
            await ref.send(Ping(-1))
            await trio.sleep(1)
            await session.remove(ref)
            await trio.sleep(10)
            assert flaky.state is ActorState.STOPPED
            assert len(flaky.starts) == 1
            assert session.running

    async def test_too_many_restarts_raise_restart_intensity_exceeded_with_the_crash(
        self, autojump_clock: object
    ) -> None:
        """One crash more than the policy allows within the window escalates:
        ``run()`` raises ``RestartIntensityExceeded`` whose ``__cause__`` is the crash."""
        flaky = Flaky(restart_policy=RestartPolicy(max_restarts=2, within_secs=10))
        with (
            capture_logs() as logs,
            pytest.raises(RestartIntensityExceeded, match="'flaky' crashed more than 2") as e,
        ):
            await run_frames([flaky], [Ping(-1), Ping(-2), Ping(-3), Ping(4)])
        assert isinstance(e.value.__cause__, ValueError)
        assert str(e.value.__cause__) == "bad ping -3"
        assert flaky.state is ActorState.CRASHED
        assert any(x["event"] == "actor restart intensity exceeded" for x in logs)

    async def test_policies_are_validated(self) -> None:
        """Nonsensical policies are refused with a message naming the field."""
        with pytest.raises(ValueError, match="max_restarts must be 0 or more"):
            RestartPolicy(max_restarts=-1)
        with pytest.raises(ValueError, match="backoff_secs must be a positive number"):
            RestartPolicy(backoff_secs=0)
        with pytest.raises(ValueError, match="within_secs"):
            RestartPolicy(within_secs=float("inf"))
        assert RestartPolicy(backoff_secs=1, max_backoff_secs=3).backoff(5) == 3


class TestWatchers:
    async def test_a_watcher_gets_actor_stopped_frame_when_the_watched_actor_stops(
        self, autojump_clock: object
    ) -> None:
        """``watch`` delivers an ``ActorStoppedFrame`` on the watcher's system lane when the
        other actor stops, and at once when it has stopped already."""
        watcher = FrameCollector(name="watcher", forward=False)
        target = FrameCollector(name="target")
        late = FrameCollector(name="late")
        async with Session.open() as session:
            session.spawn(watcher)
            target_ref = session.spawn(target)
            session.spawn(late)
            watcher.watch(target_ref)
            watcher.watch(target_ref)  # idempotent
            await session.remove(target_ref)
            await wait_idle()
            await session.remove(late)
            watcher.watch(late)  # already stopped: notified at once
            await wait_idle()
        stopped = watcher.of_type(ActorStoppedFrame)
        assert [(f.actor, f.reason, f.error) for f in stopped] == [
            ("target", "stopped", None),
            ("late", "stopped", None),
        ]

    async def test_a_watcher_learns_that_a_restarting_actor_gave_up(
        self, autojump_clock: object
    ) -> None:
        """When an actor crashes for good its watchers are told ``reason="crashed"`` with the
        error, before the crash escalates."""
        seen: list[ActorStoppedFrame] = []

        class Watcher(Actor[ActorStoppedFrame]):
            accepts = (ActorStoppedFrame,)

            async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
                assert isinstance(frame, ActorStoppedFrame)
                seen.append(frame)

            async def on_stop(self) -> None:
                await trio.lowlevel.checkpoint()

        flaky = Flaky(restart_policy=RestartPolicy(max_restarts=0))

        async def scenario() -> None:
            async with Session.open() as session:
                watcher = Watcher()
                session.spawn(watcher)
                ref = session.spawn(flaky)
                watcher.watch(ref)
                await wait_idle()
                await ref.send(Ping(-1))
                await trio.sleep_forever()

        with pytest.raises(RestartIntensityExceeded):
            await scenario()
        assert flaky.state is ActorState.CRASHED
        assert [(f.actor, f.reason, f.error) for f in seen] == [
            ("flaky", "crashed", "ValueError: bad ping -1")
        ]
