"""Per-session settings carried by the StartFrame, and the public turn of the running handler."""

from __future__ import annotations

import attrs
import pytest

from runtime import (
    Actor,
    Frame,
    FrameDirection,
    PipelineParams,
    RestartPolicy,
    Session,
    StartFrame,
    current_turn,
)
from runtime.serialization import dumps, loads
from runtime.testing import FrameCollector, open_test_task, run_frames, wait_idle

from .runtime_helpers import Ping, numbers


@attrs.frozen
class StageParams(PipelineParams):
    """Settings of some stages, riding along with the runtime's."""

    loud: bool = False


class Settings(Actor[Ping | StartFrame]):
    """Records the start frame it sees in each ``on_start`` and as a handled frame; crashes
    on negative pings."""

    accepts = (Ping, StartFrame)

    def __init__(self, *, restart_policy: RestartPolicy | None = None) -> None:
        super().__init__(name="settings", restart_policy=restart_policy)
        self.at_start: list[StartFrame | None] = []
        self.handled: list[StartFrame] = []

    async def on_start(self) -> None:
        self.at_start.append(self.start_frame)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, StartFrame):
            self.handled.append(frame)
        elif isinstance(frame, Ping) and frame.n < 0:
            raise ValueError("negative")
        else:
            await self.push_frame(frame, direction)


class TestStartParams:
    async def test_the_task_params_reach_every_actor(self, autojump_clock: object) -> None:
        """A subclass of ``PipelineParams`` given to the task reaches every stage, as the
        very object, through one StartFrame that each stage keeps."""
        params = StageParams(loud=True, mailbox_size=4)
        first, second = Settings(), FrameCollector()
        await run_frames([first, second], [], params=params)
        assert first.start_frame is not None
        assert first.start_frame is second.start_frame
        assert first.start_frame.params is params
        assert first.at_start == [first.start_frame]

    async def test_a_restarted_actor_gets_the_same_start_frame_again(
        self, autojump_clock: object
    ) -> None:
        """After a crash, the restart policy hands the actor the StartFrame it started with
        (not a new one with default settings)."""
        params = StageParams(loud=True)
        actor = Settings(restart_policy=RestartPolicy(backoff_secs=1))
        result = await run_frames([actor], [Ping(1), Ping(-1), Ping(2)], params=params)
        assert numbers(result.downstream) == [1, 2]
        start = actor.start_frame
        assert start is not None
        assert start.params is params
        assert actor.at_start == [start, start]
        assert actor.handled == [start, start]

    async def test_a_spawned_actor_gets_the_session_params(self, autojump_clock: object) -> None:
        """``Session.spawn`` starts an actor with a StartFrame carrying the session's params;
        in a task's session those are the task's."""
        params = StageParams(loud=True)
        async with Session.open(params=params) as session:
            actor = Settings()
            session.spawn(actor)
            await wait_idle()
            assert actor.start_frame is not None
            assert actor.start_frame.params is params
        late = Settings()
        async with open_test_task([FrameCollector()], params=params) as t:
            t.session.spawn(late)
            await wait_idle()
        assert late.start_frame is not None
        assert late.start_frame.params is params

    async def test_without_params_a_start_frame_carries_the_defaults(self) -> None:
        """A bare StartFrame has default runtime settings."""
        assert StartFrame().params == PipelineParams()

    def test_a_start_frame_with_stage_params_round_trips(self) -> None:
        """Serialized and read back, the StartFrame's params keep their subclass."""
        frame = StartFrame(params=StageParams(loud=True, mailbox_size=3))
        back = loads(dumps(frame))
        assert isinstance(back, StartFrame)
        assert type(back.params) is StageParams
        assert back.params == frame.params


class Turns(Actor[Ping]):
    """Records ``current_turn()`` in its handler and in a task it starts there."""

    accepts = (Ping,)

    def __init__(self) -> None:
        super().__init__(name="turns")
        self.in_handler: list[int | None] = []
        self.in_task: list[int | None] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        self.in_handler.append(current_turn())

        async def later() -> None:
            self.in_task.append(current_turn())

        self.create_task(later)
        await self.push_frame(frame, direction)


class TestCurrentTurn:
    async def test_current_turn_is_the_handled_frames_turn(self, autojump_clock: object) -> None:
        """In a handler ``current_turn()`` is the turn of the frame (tasks started there
        inherit it); outside any handler it is ``None``."""
        turns = Turns()
        assert current_turn() is None
        async with open_test_task([turns]) as t:
            await t.push(Ping(1))
            await t.next_frames(1)
            t.interrupt()
            await t.push(Ping(2))
            await t.next_frames(1)
            assert current_turn() is None
        assert turns.in_handler == [0, 1]
        assert turns.in_task == [0, 1]

    async def test_the_turn_a_frame_is_stamped_with_is_the_current_turn(
        self, autojump_clock: object
    ) -> None:
        """A frame made in a handler belongs to the handler's turn."""
        made: list[Frame] = []

        class Maker(Actor[Ping]):
            accepts = (Ping,)

            async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
                assert isinstance(frame, Ping)
                made.append(Ping(frame.n + 10))
                await self.push_frame(made[-1], direction)

        result = await run_frames([Maker()], [Ping(1, turn=0)])
        assert numbers(result.downstream) == [11]
        assert [f.turn for f in made] == [0]


def test_the_runtime_params_are_checked_in_subclasses_too() -> None:
    """A subclass keeps the runtime's validation."""
    with pytest.raises(ValueError, match="mailbox_size must be at least 1"):
        StageParams(mailbox_size=0)
