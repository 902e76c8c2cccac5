"""Request/reply with ``ActorRef.ask``."""

from __future__ import annotations

import attrs
import pytest
import trio

from runtime import (
    Actor,
    ActorDeadError,
    ActorError,
    AskTimeoutError,
    DataFrame,
    Frame,
    FrameDirection,
    SelfAskError,
    Session,
)
from runtime.testing import run_frames, wait_idle

from .runtime_helpers import Gate, Note, Ping


@attrs.frozen
class Question(DataFrame):
    value: int = 0


class Doubler(Actor[Question | Note]):
    """Answers a ``Question`` with twice its value; ``-1`` raises; ``-2`` never answers."""

    accepts = (Question, Note)

    def __init__(self, *, name: str | None = None) -> None:
        super().__init__(name=name)
        self.answering = trio.Event()
        self.cancelled = False

    async def on_ask(self, frame: Frame) -> object:
        if isinstance(frame, Note):
            return f"note:{frame.text}"
        assert isinstance(frame, Question)
        if frame.value == -1:
            raise ValueError("negative")
        if frame.value == -2:
            self.answering.set()
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                self.cancelled = True
                raise
        if frame.value == -3:
            await trio.sleep(10)
        return frame.value * 2


class TestAsk:
    async def test_ask_returns_the_reply(self) -> None:
        """``ask`` delivers the frame to ``on_ask`` and returns its return value."""
        async with Session.open() as session:
            ref = session.spawn(Doubler())
            assert await ref.ask(Question(21)) == 42
            assert await ref.ask(Note("x")) == "note:x"  # system frames are asked too

    async def test_an_exception_in_on_ask_goes_to_the_asker_and_the_actor_lives_on(
        self,
    ) -> None:
        """What ``on_ask`` raises is raised by ``ask``; the actor keeps running."""
        async with Session.open() as session:
            ref = session.spawn(Doubler())
            with pytest.raises(ValueError, match="negative"):
                await ref.ask(Question(-1))
            assert await ref.ask(Question(1)) == 2

    async def test_ask_times_out_in_virtual_time(self, autojump_clock: object) -> None:
        """No reply within the deadline raises ``AskTimeoutError`` (also a TimeoutError)
        after exactly that much trio time."""
        async with Session.open() as session:
            ref = session.spawn(Doubler(name="slow"))
            start = trio.current_time()
            with pytest.raises(AskTimeoutError, match="'slow' did not answer Question") as info:
                await ref.ask(Question(-3), timeout=2.5)
            assert trio.current_time() - start == pytest.approx(2.5)
            assert isinstance(info.value, TimeoutError)
            assert isinstance(info.value, ActorError)
            # The late answer is not an error; the actor goes on answering.
            assert await ref.ask(Question(2), timeout=None) == 4

    async def test_the_deadline_covers_waiting_for_room_in_the_mailbox(
        self, autojump_clock: object
    ) -> None:
        """An ask to an actor whose data lane stays full times out too."""

        class BusyAnswerer(Gate):
            async def on_ask(self, frame: Frame) -> object:
                return "late"

        actor = BusyAnswerer(mailbox_size=1)
        async with Session.open() as session:
            ref = session.spawn(actor)
            await ref.send(Ping(0))
            await ref.send(Ping(1))
            await wait_idle()
            start = trio.current_time()
            with trio.fail_after(60), pytest.raises(AskTimeoutError):
                await ref.ask(Ping(2), timeout=3)
            assert trio.current_time() - start == pytest.approx(3)
            actor.open()

    async def test_an_actor_asking_itself_gets_self_ask_error(self, autojump_clock: object) -> None:
        """An actor asking its own reference fails at once instead of deadlocking."""

        class Narcissist(Actor[Question]):
            accepts = (Question,)
            error: BaseException | None = None

            async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
                try:
                    await self.ref.ask(Question(1))
                except SelfAskError as exc:
                    self.error = exc

        actor = Narcissist(name="me")
        await run_frames([actor], [Question(1)])
        assert isinstance(actor.error, SelfAskError)
        assert "'me' asked itself" in str(actor.error)

    async def test_asking_a_stopped_actor_raises_actor_dead_error(self) -> None:
        """Asking (or sending to) an actor that has stopped fails with ``ActorDeadError``."""
        async with Session.open() as session:
            actor = Doubler(name="gone")
            ref = session.spawn(actor)
            await session.remove(ref)
            assert not ref.is_alive()
            with pytest.raises(ActorDeadError, match="'gone'"):
                await ref.ask(Question(1))
            with pytest.raises(ActorDeadError):
                await ref.send(Question(1))

    async def test_asks_queued_when_the_actor_stops_fail_with_actor_dead_error(
        self, autojump_clock: object
    ) -> None:
        """Asks still waiting in the mailbox of an actor that stops are failed at once."""

        class BusyAnswerer(Gate):
            async def on_ask(self, frame: Frame) -> object:
                return "never"

        actor = BusyAnswerer()
        errors: list[BaseException] = []
        async with Session.open() as session:
            ref = session.spawn(actor)
            await ref.send(Ping(0))  # the handler waits on the gate

            async def asker() -> None:
                try:
                    await ref.ask(Ping(1), timeout=None)
                except ActorDeadError as exc:
                    errors.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(asker)
                nursery.start_soon(asker)
                await wait_idle()
                await session.remove(ref)
        assert len(errors) == 2

    async def test_an_ask_being_answered_when_the_actor_stops_fails_with_actor_dead_error(
        self, autojump_clock: object
    ) -> None:
        """An ask whose ``on_ask`` is running when the actor stops gets ``ActorDeadError``
        (it does not wait for a reply that cannot come)."""
        actor = Doubler()
        async with Session.open() as session:
            ref = session.spawn(actor)
            async with trio.open_nursery() as nursery:

                async def stop_when_answering() -> None:
                    await actor.answering.wait()
                    await session.remove(ref)

                nursery.start_soon(stop_when_answering)
                with trio.fail_after(60), pytest.raises(ActorDeadError, match="stopped"):
                    await ref.ask(Question(-2), timeout=None)
        assert actor.cancelled
