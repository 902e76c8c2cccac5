"""The actor state machine: the documented moves, and nothing else."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import trio

from runtime import (
    Actor,
    ActorState,
    EndFrame,
    Frame,
    FrameDirection,
    RestartPolicy,
    Session,
)
from runtime._lifecycle import Lifecycle, LifecycleError
from runtime.testing import capture_logs, run_frames, wait_idle

from .runtime_helpers import Ping

S = ActorState


def state(actor: Actor[Any]) -> ActorState:
    """The actor's state now (a call, so the type checker does not pin it)."""
    return actor.state


#: The table of runtime/_lifecycle.py, written out again: the test fails if the code and the
#: documentation part ways.
DOCUMENTED = {
    S.CREATED: {S.STARTING, S.STOPPING, S.RESTARTING, S.CRASHED},
    S.STARTING: {S.RUNNING, S.STOPPING, S.RESTARTING, S.CRASHED},
    S.RUNNING: {S.STOPPING, S.RESTARTING, S.CRASHED},
    S.RESTARTING: {S.STARTING, S.STOPPING, S.CRASHED},
    S.STOPPING: {S.STOPPED, S.CRASHED},
    S.STOPPED: set(),
    S.CRASHED: set(),
}


def _at(state: ActorState) -> Lifecycle:
    """A lifecycle brought to ``state`` through allowed moves."""
    paths = {
        S.CREATED: [],
        S.STARTING: [S.STARTING],
        S.RUNNING: [S.STARTING, S.RUNNING],
        S.RESTARTING: [S.STARTING, S.RESTARTING],
        S.STOPPING: [S.STOPPING],
        S.STOPPED: [S.STOPPING, S.STOPPED],
        S.CRASHED: [S.CRASHED],
    }
    life = Lifecycle("a")
    for step in paths[state]:
        life.to(step)
    assert life.state is state
    return life


class TestTransitions:
    def test_the_documented_table_covers_every_state(self) -> None:
        """Every state has a row, and the final states have no way out."""
        assert set(DOCUMENTED) == set(ActorState)

    @pytest.mark.parametrize(
        ("old", "new"),
        list(itertools.product(ActorState, ActorState)),
        ids=lambda s: s.value,
    )
    def test_a_move_is_allowed_exactly_when_the_table_lists_it(
        self, old: ActorState, new: ActorState
    ) -> None:
        """``to()`` makes the documented moves and refuses every other one with a
        ``LifecycleError`` naming the actor, both states and what is allowed, leaving the
        state unchanged."""
        life = _at(old)
        if new in DOCUMENTED[old]:
            life.to(new)
            assert life.state is new
        else:
            with pytest.raises(LifecycleError, match=f"'a' cannot go from {old.value} to"):
                life.to(new)
            assert life.state is old

    def test_the_message_lists_the_allowed_moves(self) -> None:
        """The error says where the actor could have gone."""
        with pytest.raises(LifecycleError, match=r"allowed from stopped: nothing \(final state\)"):
            _at(S.STOPPED).to(S.RUNNING)
        with pytest.raises(LifecycleError, match=r"\['crashed', 'stopped'\]"):
            _at(S.STOPPING).to(S.RUNNING)

    async def test_wait_for_wakes_on_the_move(self) -> None:
        """A waiter wakes when the state it waits for is reached, and returns at once (after
        a checkpoint) when it is there already."""
        life = Lifecycle("a")
        woke: list[ActorState] = []

        async def waiter() -> None:
            await life.wait_for(frozenset({S.RUNNING}))
            woke.append(life.state)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            life.to(S.STARTING)
            await trio.testing.wait_all_tasks_blocked()
            assert woke == []
            life.to(S.RUNNING)
        assert woke == [S.RUNNING]
        await life.wait_for(frozenset({S.RUNNING}))


class Recorder(Actor[Ping | EndFrame]):
    """Records its state in each hook; raises on negative pings."""

    accepts = (Ping, EndFrame)

    def __init__(self, *, restart_policy: RestartPolicy | None = None) -> None:
        super().__init__(name="rec", restart_policy=restart_policy)
        self.seen: list[tuple[str, ActorState]] = []

    async def on_start(self) -> None:
        self.seen.append(("on_start", self.state))

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, EndFrame):
            return
        assert isinstance(frame, Ping)
        self.seen.append(("process", self.state))
        if frame.n < 0:
            raise ValueError("negative")

    async def on_stop(self) -> None:
        self.seen.append(("on_stop", self.state))


class TestActorStates:
    async def test_an_actor_walks_the_documented_path(self, autojump_clock: object) -> None:
        """CREATED until its StartFrame, STARTING in ``on_start``, RUNNING in handlers,
        STOPPING in ``on_stop``, STOPPED after."""
        rec = Recorder()
        assert state(rec) is S.CREATED
        await run_frames([rec], [Ping(1)])
        assert rec.seen == [
            ("on_start", S.STARTING),
            ("process", S.RUNNING),
            ("on_stop", S.STOPPING),
        ]
        assert state(rec) is S.STOPPED

    async def test_a_restart_goes_through_restarting_and_starting_again(
        self, autojump_clock: object
    ) -> None:
        """A crash with a restart policy: RESTARTING during the backoff (snapshots say so),
        then STARTING and RUNNING again."""
        rec = Recorder(restart_policy=RestartPolicy(backoff_secs=2))
        async with Session.open() as session:
            ref = session.spawn(rec)
            await ref.send(Ping(-1))
            await trio.sleep(1)
            assert state(rec) is S.RESTARTING
            assert session.snapshot().actors[0].state == "restarting"
            await trio.sleep(2)
            assert state(rec) is S.RUNNING
        assert [s for hook, s in rec.seen if hook == "on_start"] == [S.STARTING, S.STARTING]
        assert state(rec) is S.STOPPED

    async def test_an_actor_stopped_before_its_start_frame_goes_straight_to_stopping(
        self, autojump_clock: object
    ) -> None:
        """Removed while waiting for its StartFrame: CREATED → STOPPING → STOPPED."""
        rec = Recorder()
        async with Session.open() as session:
            session.spawn(rec, start=False)
            await wait_idle()
            assert state(rec) is S.CREATED
            await session.remove(rec)
        assert rec.seen == [("on_stop", S.STOPPING)]
        assert state(rec) is S.STOPPED

    async def test_a_crash_without_policy_is_final(self, autojump_clock: object) -> None:
        """No policy: RUNNING → CRASHED, and the crash escalates."""
        rec = Recorder()
        with capture_logs(), pytest.raises(ValueError, match="negative"):
            await run_frames([rec], [Ping(-1)])
        assert state(rec) is S.CRASHED

    async def test_an_end_frame_stops_an_actor_once(self, autojump_clock: object) -> None:
        """An EndFrame sent straight to a running actor stops it (``on_stop`` once); a
        removal afterwards changes nothing."""
        rec = Recorder()
        async with Session.open() as session:
            ref = session.spawn(rec)
            await ref.send(EndFrame())
            await wait_idle()
            assert state(rec) is S.STOPPED
            await session.remove(rec)
        assert [hook for hook, _ in rec.seen] == ["on_start", "on_stop"]
