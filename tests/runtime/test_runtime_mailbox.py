"""Typed mailboxes, the two lanes, backpressure, ordering and mailbox statistics."""

from __future__ import annotations

import pytest
import trio

from runtime import (
    Actor,
    EndFrame,
    Frame,
    FrameDirection,
    FrameTypeError,
    MailboxStatistics,
    PipelineParams,
    Session,
    Stage,
)
from runtime.testing import FrameCollector, open_test_task, run_frames, wait_idle

from .runtime_helpers import Gate, Incr, Note, Ping, Said, Text, Upper, numbers


class TestTypedMailbox:
    async def test_direct_send_of_a_wrong_type_raises_type_error_naming_actor_and_type(
        self,
    ) -> None:
        """A direct send of a frame the actor does not accept fails at the send with a
        TypeError that names the actor and the frame type."""
        upper = Upper(name="upper")
        async with Session.open() as session:
            session.spawn(upper)
            ref = upper.ref
            with pytest.raises(FrameTypeError, match=r"'upper' \(Upper\) does not accept Ping"):
                await ref.send(Ping(1))  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="does not accept Ping"):
                ref.send_nowait(Ping(1))  # type: ignore[arg-type]
            with pytest.raises(FrameTypeError, match="does not accept Ping"):
                await ref.ask(Ping(1))  # type: ignore[arg-type]
            with pytest.raises(FrameTypeError, match="only takes frames; got str"):
                await ref.send("text")  # type: ignore[arg-type]
            assert ref.statistics().data_depth == 0

    async def test_accepted_types_include_subclasses(self) -> None:
        """An actor accepting a frame class also accepts its subclasses."""
        actor = Upper()
        assert actor.accepts_frame(Said("hi"))
        assert not actor.accepts_frame(Ping())

    async def test_frames_not_accepted_pass_through_in_order(self, autojump_clock: object) -> None:
        """Frames an actor does not accept pass through it, in order with what it emits."""
        frames: list[Frame] = [Text("a"), Ping(1), Text("b"), Ping(2), Ping(3)]
        result = await run_frames([Upper()], frames)
        assert result.downstream == [Text("A"), Ping(1), Text("B"), Ping(2), Ping(3)]

    async def test_default_actor_accepts_everything_and_forwards_nothing_itself(
        self, autojump_clock: object
    ) -> None:
        """The base class accepts every frame and its default handler drops data frames; the
        runtime still forwards lifecycle frames."""
        result = await run_frames([Actor()], [Ping(1)], include_lifecycle=True)
        assert [type(f).__name__ for f in result.downstream] == ["StartFrame", "EndFrame"]


class TestBackpressure:
    async def test_a_full_data_lane_blocks_the_sender_until_there_is_room(
        self, autojump_clock: object
    ) -> None:
        """A downstream send to a full data lane waits; it resumes as the receiver takes
        frames."""
        gate = Gate(mailbox_size=2)
        async with Session.open() as session:
            ref = session.spawn(gate)
            for n in range(3):  # one in the handler, two queued
                await ref.send(Ping(n))
            await wait_idle()
            assert ref.statistics().data_depth == 2
            with pytest.raises(trio.WouldBlock):
                ref.send_nowait(Ping(9))
            sent = trio.Event()

            async def sender() -> None:
                await ref.send(Ping(3))
                sent.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender)
                await wait_idle()
                assert not sent.is_set()
                assert ref.statistics().waiting_senders == 1
                gate.open()
                await wait_idle()
                assert sent.is_set()
            assert gate.finished == [0, 1, 2, 3]

    async def test_a_system_frame_overtakes_queued_data(self, autojump_clock: object) -> None:
        """A system frame is handled while data frames still wait in the full data lane."""
        gate = Gate(mailbox_size=2)
        async with Session.open() as session:
            ref = session.spawn(gate)
            for n in range(3):
                await ref.send(Ping(n))
            await ref.send(Note("urgent"))
            await wait_idle()
            assert gate.notes == ["urgent"]
            assert gate.finished == []
            assert ref.statistics().data_depth == 2
            gate.open()
            await wait_idle()
            assert gate.finished == [0, 1, 2]

    async def test_a_slow_stage_slows_its_producer(self, autojump_clock: object) -> None:
        """A blocked stage makes the stage before it wait instead of growing its queue."""
        gate = Gate(name="gate", mailbox_size=2)
        params = PipelineParams(mailbox_size=2)
        async with open_test_task([Incr(name="incr"), gate], params=params) as t:
            async with trio.open_nursery() as nursery:

                async def feed() -> None:
                    await t.push(*[Ping(n) for n in range(20)])

                nursery.start_soon(feed)
                await wait_idle()
                snapshot = {a.name: a for a in t.snapshot().actors}
                gate_box = snapshot["gate"].mailbox
                incr_box = snapshot["incr"].mailbox
                assert gate_box is not None
                assert incr_box is not None
                assert gate_box.data_depth == 2
                assert incr_box.data_depth == 2
                assert gate_box.waiting_senders == 1  # incr waits in push_frame
                assert incr_box.waiting_senders == 1  # the feeder waits in push()
                gate.open()
            assert numbers(await t.drain()) == list(range(1, 21))

    async def test_upstream_data_never_blocks(self, autojump_clock: object) -> None:
        """Upstream data frames are queued past the bound: a reply path cannot deadlock."""

        class Replier(Actor[Ping]):
            accepts = (Ping,)

            async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
                for n in range(10):
                    await self.push_frame(Ping(100 + n), FrameDirection.UPSTREAM)

        gate = Gate(mailbox_size=1)
        replier = Replier()
        async with Session.open() as session:
            session.spawn(gate)
            session.spawn(replier)
            session.link(gate, replier)
            await gate.ref.send(Ping(0))  # keeps the gate busy
            await replier.ref.send(Ping(1))
            await wait_idle()
            stats = gate.ref.statistics()
            assert stats.data_depth == 10 > stats.data_capacity
            assert stats.waiting_senders == 0

    async def test_tell_queues_past_the_bound_without_waiting(self) -> None:
        """``ActorRef.tell`` never waits, even on a full data lane, and keeps the order."""
        gate = Gate(mailbox_size=1)
        async with Session.open() as session:
            ref = session.spawn(gate)
            for n in range(5):
                gate.ref.tell(Ping(n))
            assert ref.statistics().data_depth + len(gate.started) == 5
            gate.open()
            await wait_idle()
            assert gate.finished == [0, 1, 2, 3, 4]


class TestOrdering:
    async def test_thousands_of_frames_keep_their_order_through_several_actors(
        self, autojump_clock: object
    ) -> None:
        """Under load (small mailboxes, several hops, pass-through and handled frames mixed)
        every frame arrives once and in order."""
        count = 3000
        frames: list[Frame] = []
        for n in range(count):
            frames.append(Ping(n))
            if n % 100 == 0:
                frames.append(Text(str(n)))
        stages: list[Stage] = [
            Incr(),
            Upper(),
            FrameCollector(mailbox_size=1),
            Incr(),
            FrameCollector(),
        ]
        result = await run_frames(stages, frames, params=PipelineParams(mailbox_size=4))
        assert numbers(result.downstream) == [n + 2 for n in range(count)]
        texts = [f.text for f in result.of_type(Text)]
        assert texts == [str(n) for n in range(0, count, 100)]
        # Each text frame is still right behind the ping it followed.
        positions = {id(f): i for i, f in enumerate(result.downstream)}
        for text in result.of_type(Text):
            before = result.downstream[positions[id(text)] - 1]
            assert isinstance(before, Ping)
            assert before.n == int(text.text) + 2

    async def test_end_frame_follows_every_data_frame(self, autojump_clock: object) -> None:
        """The ``EndFrame`` leaves after every frame queued before it."""
        result = await run_frames(
            [Incr(), Incr()], [Ping(n) for n in range(50)], include_lifecycle=True
        )
        assert isinstance(result.downstream[-1], EndFrame)
        assert numbers(result.downstream) == [n + 2 for n in range(50)]


class TestMailboxStatistics:
    async def test_statistics_report_depth_peak_capacity_waiters_and_counters(
        self, autojump_clock: object
    ) -> None:
        """``statistics()`` is a frozen snapshot of both lanes and the mailbox counters."""
        gate = Gate(mailbox_size=3)
        async with Session.open() as session:
            ref = session.spawn(gate)
            await wait_idle()
            start = ref.statistics()
            assert start.delivered == 1  # the StartFrame
            for n in range(4):
                await ref.send(Ping(n))
            await wait_idle()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ref.send, Ping(4))
                await wait_idle()
                stats = ref.statistics()
                assert isinstance(stats, MailboxStatistics)
                assert stats == MailboxStatistics(
                    system_depth=0,
                    data_depth=3,
                    data_capacity=3,
                    peak_data_depth=3,
                    waiting_senders=1,
                    delivered=2,
                    dropped_stale=0,
                    closed=False,
                )
                gate.open()
            await wait_idle()
            after = ref.statistics()
            assert (after.data_depth, after.peak_data_depth, after.waiting_senders) == (0, 3, 0)
            assert after.delivered == 6
            with pytest.raises(AttributeError):
                after.data_depth = 9  # type: ignore[misc]
        assert ref.statistics().closed
        assert not ref.is_alive()

    async def test_capacity_must_be_positive(self) -> None:
        """A data lane of capacity zero is refused with a clear message."""
        with pytest.raises(ValueError, match="mailbox_size must be at least 1"):
            PipelineParams(mailbox_size=0)
        with pytest.raises(ValueError, match="mailbox_size must be at least 1"):
            Session(mailbox_size=0)
