"""An actor's own tasks (``create_task`` and its system lane's) run in the session's nursery,
not in a nursery of the actor's: they still belong to the actor. Its stop cancels them, its
loops end only once they have, and an exception in one is the actor's crash (restarted by its
policy, or escalated)."""

from __future__ import annotations

import pytest
import trio

from runtime import Actor, ActorState, Frame, FrameDirection, RestartPolicy, Session
from runtime.testing import capture_logs, running_tasks

from .runtime_helpers import Ping


class Worker(Actor[Ping]):
    """Ping 1 starts a task that waits forever and takes 1 s (shielded) to clean up; ping -1
    starts one that fails after 0.5 s. Records its starts and when the cleanup ended."""

    accepts = (Ping,)

    def __init__(self, restart_policy: RestartPolicy | None = None) -> None:
        super().__init__(name="worker", restart_policy=restart_policy)
        self.starts: list[float] = []
        self.cleaned_up: list[float] = []
        self.handled: list[int] = []

    async def on_start(self) -> None:
        self.starts.append(trio.current_time())

    async def lingering(self) -> None:
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(1)
            self.cleaned_up.append(trio.current_time())

    async def failing(self) -> None:
        await trio.sleep(0.5)
        raise LookupError("the task failed")

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        assert isinstance(frame, Ping)
        self.handled.append(frame.n)
        self.create_task(self.lingering if frame.n > 0 else self.failing)


async def test_a_failing_task_restarts_its_actor_once_its_other_tasks_have_ended(
    autojump_clock: object,
) -> None:
    """A task's exception crashes its actor: its other tasks are cancelled, and the restart
    (after the policy's backoff) comes only once they have ended; the actor then serves the
    frames that follow."""
    worker = Worker(RestartPolicy(backoff_secs=0.25))
    async with Session.open() as session:
        ref = session.spawn(worker)
        await ref.send(Ping(1))
        await ref.send(Ping(-1))
        await trio.sleep(5)
        assert worker.cleaned_up == [pytest.approx(1.5)]  # cancelled at 0.5, 1 s to clean up
        assert worker.starts == [0.0, pytest.approx(1.75)]  # after the cleanup and backoff
        await ref.send(Ping(2))
        await trio.sleep(1)
        assert worker.handled == [1, -1, 2]
        assert worker.state is ActorState.RUNNING


async def test_a_failing_task_without_a_policy_escalates_after_the_others_have_ended(
    autojump_clock: object,
) -> None:
    """Without a policy the task's exception ends the session, raised as itself, once the
    actor's other tasks have cleaned up."""
    worker = Worker()

    async def scenario() -> None:
        async with Session.open() as session:
            ref = session.spawn(worker)
            await ref.send(Ping(1))
            await ref.send(Ping(-1))
            await trio.sleep(5)

    with pytest.raises(LookupError, match="the task failed"):
        await scenario()
    assert worker.cleaned_up == [pytest.approx(1.5)]
    assert worker.state is ActorState.CRASHED


async def test_removing_an_actor_cancels_its_tasks_and_leaves_none(
    autojump_clock: object,
) -> None:
    """Removing an actor cancels the tasks it started; none is left once they have cleaned up,
    and the session goes on."""
    worker = Worker()
    async with Session.open() as session:
        before = set(running_tasks())
        ref = session.spawn(worker)
        await ref.send(Ping(1))
        await trio.sleep(1)
        assert len(set(running_tasks()) - before) == 2  # the actor's and its lingering one
        await session.remove(ref)
        await trio.sleep(2)
        assert worker.cleaned_up == [pytest.approx(2.0)]  # cancelled at 1, 1 s to clean up
        assert set(running_tasks()) <= before
        assert worker.state is ActorState.STOPPED
        assert session.running


async def test_a_task_failing_while_the_handler_fails_too_is_logged(
    autojump_clock: object,
) -> None:
    """When a handler raises while a task of the same actor has failed, the handler's
    exception is the crash and the task's is logged, not lost."""

    class Both(Actor[Ping]):
        accepts = (Ping,)

        async def failing(self) -> None:
            await trio.sleep(0.5)
            raise LookupError("the task failed")

        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            self.create_task(self.failing)
            with trio.CancelScope(shield=True):
                await trio.sleep(1)
            raise ValueError("the handler failed")

    async def scenario() -> None:
        async with Session.open() as session:
            ref = session.spawn(Both(name="both"))
            await ref.send(Ping(1))
            await trio.sleep(5)

    with capture_logs() as logs, pytest.raises(ValueError, match="the handler failed"):
        await scenario()
    [lost] = [e for e in logs if e["event"] == "actor task failed"]
    assert lost["actor"] == "both"
    assert lost["error"] == "LookupError: the task failed"
