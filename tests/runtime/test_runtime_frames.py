"""Frames: immutable messages with an id, a creation time, a turn and an interruptibility."""

from __future__ import annotations

import attrs
import pytest
import trio

from runtime import (
    Actor,
    CancelFrame,
    ControlFrame,
    DataFrame,
    EndFrame,
    ErrorFrame,
    Frame,
    FrameDirection,
    InterruptionFrame,
    MetricsFrame,
    Pipeline,
    PipelineParams,
    StartFrame,
    SystemFrame,
)
from runtime.testing import FrameCollector, open_test_task, run_frames, wait_idle

from .runtime_helpers import Latency, Ping, Said, Text, TurnBegins, numbers


class TestFrames:
    def test_frames_are_frozen_and_slotted(self) -> None:
        """A frame cannot be changed after creation; ``attrs.evolve`` makes a new one."""
        frame = Text("hi")
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            frame.text = "changed"  # type: ignore[misc]
        assert not hasattr(frame, "__dict__")
        assert attrs.evolve(frame, text="other").text == "other"

    def test_ids_are_unique_and_increasing_and_names_readable(self) -> None:
        """Every frame gets a fresh, increasing id; ``name`` is ``ClassName#id``."""
        first, second = Ping(1), Ping(1)
        assert second.id > first.id
        assert first == second  # equality compares the content, not the identity fields
        assert first.name == f"Ping#{first.id}"
        assert first.created_at > 0

    def test_families_and_default_interruptibility(self) -> None:
        """Lifecycle and user-input frames have the documented lane and interruptibility."""
        assert isinstance(StartFrame(), SystemFrame)
        assert isinstance(CancelFrame(), SystemFrame)
        assert isinstance(InterruptionFrame(), SystemFrame)
        assert isinstance(ErrorFrame("x"), SystemFrame)
        assert isinstance(MetricsFrame(), SystemFrame)
        assert isinstance(EndFrame(), ControlFrame)
        assert not EndFrame().interruptible
        assert isinstance(Text("x"), DataFrame)
        assert Text("x").interruptible
        assert not Said("x").interruptible
        assert Text("x", interruptible=False).interruptible is False

    def test_metrics_frames_hold_a_tuple(self) -> None:
        """``MetricsFrame.data`` is stored as a tuple whatever sequence it was given."""
        frame = MetricsFrame(data=[Latency("llm", value=0.1)])
        assert frame.data == (Latency("llm", value=0.1),)

    def test_a_frame_made_outside_an_actor_has_no_turn_yet(self) -> None:
        """The application's frames get their turn when they enter a session."""
        assert Ping(1).turn is None


class TestTurnStamping:
    async def test_frames_made_in_a_handler_carry_the_turn_of_the_frame_handled(
        self, autojump_clock: object
    ) -> None:
        """A frame created while an actor handles a frame of turn N belongs to turn N."""

        class Maker(Actor[TurnBegins | Ping]):
            accepts = (TurnBegins, Ping)

            async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
                await self.push_frame(Text(f"made in turn {self.session.turn}"), direction)

        collector = FrameCollector()
        async with open_test_task([Maker(), collector]) as t:
            await t.push(Ping(1))
            await wait_idle()
            t.interrupt()
            await t.push(TurnBegins())
            await wait_idle()
        made = collector.of_type(Text)
        assert [(f.text, f.turn) for f in made] == [("made in turn 0", 0), ("made in turn 1", 1)]


class TestCycles:
    async def test_a_cycle_with_an_upstream_edge_does_not_deadlock_under_load(
        self, autojump_clock: object
    ) -> None:
        """Two stages that talk both ways through one-slot mailboxes never deadlock: the
        upstream edge of the cycle does not block."""

        class Asker(Actor[Ping]):
            accepts = (Ping,)

            def __init__(self) -> None:
                super().__init__(mailbox_size=1)
                self.replies: list[int] = []

            async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
                assert isinstance(frame, Ping)
                if direction is FrameDirection.UPSTREAM:
                    self.replies.append(frame.n)
                else:
                    await self.push_frame(frame, direction)

        class Answerer(Actor[Ping]):
            accepts = (Ping,)

            async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
                assert isinstance(frame, Ping)
                await self.push_frame(Ping(-frame.n), FrameDirection.UPSTREAM)
                await self.push_frame(frame, direction)

        asker = Asker()
        with trio.fail_after(600):
            result = await run_frames(
                Pipeline([asker, Answerer()]),
                [Ping(n) for n in range(1, 1001)],
                params=PipelineParams(mailbox_size=1),
                send_end=False,  # (an EndFrame would stop the asker before the last reply)
            )
        assert numbers(result.downstream) == list(range(1, 1001))
        assert asker.replies == [-n for n in range(1, 1001)]
