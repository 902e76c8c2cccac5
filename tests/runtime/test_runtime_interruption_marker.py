"""Where an interruption falls among an actor's ordered data: the ``InterruptionMarkerFrame``
an actor can ask for, and senders that an interruption cancels while they wait for room."""

from __future__ import annotations

from typing import ClassVar

import trio

from runtime import (
    Actor,
    Frame,
    FrameDirection,
    InterruptionMarkerFrame,
)
from runtime.testing import FrameCollector, open_test_task, wait_idle

from .runtime_helpers import Ping, Sleeper, numbers


class Recorder(Actor[Ping | InterruptionMarkerFrame]):
    """Records the pings it handles, in order: waits for :attr:`gate` on ping 0, interrupts
    the turn on ping :attr:`interrupt_on`."""

    accepts: ClassVar[tuple[type[Frame], ...]] = (Ping,)

    def __init__(self, *, name: str | None = None, mailbox_size: int | None = None) -> None:
        super().__init__(name=name, mailbox_size=mailbox_size)
        self.gate = trio.Event()
        self.seen: list[str] = []
        self.interrupt_on: int | None = None

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, InterruptionMarkerFrame):
            self.seen.append(f"marker {frame.turn}")
            return
        assert isinstance(frame, Ping)
        self.seen.append(f"ping {frame.n}")
        if frame.n == self.interrupt_on:
            self.session.interrupt("test")
        if frame.n == 0:
            await self.gate.wait()
        await self.push_frame(frame, direction)


class MarkerRecorder(Recorder):
    """A :class:`Recorder` that asks for interruption markers, and records them too."""

    accepts = (Ping, InterruptionMarkerFrame)


class TestInterruptionMarker:
    async def test_the_marker_falls_between_frames_queued_before_and_after(
        self, autojump_clock: object
    ) -> None:
        """An actor that names ``InterruptionMarkerFrame`` in ``accepts`` gets one in its data
        lane at the moment of the interruption: behind the frames that survived it, ahead of
        the frames queued after it. It is not passed on, and actors that take every frame do
        not get one."""
        recorder = MarkerRecorder()
        collector = FrameCollector()
        async with open_test_task([recorder, collector]) as t:
            await t.push(Ping(0, interruptible=False), Ping(1, interruptible=False), Ping(2))
            await wait_idle()
            assert recorder.seen == ["ping 0"]
            t.interrupt()
            await t.push(Ping(3))
            recorder.gate.set()
            out = await t.drain()
        assert recorder.seen == ["ping 0", "ping 1", "marker 1", "ping 3"]
        assert numbers(out) == [0, 1, 3]
        assert collector.of_type(InterruptionMarkerFrame) == []
        assert not [f for f in out if isinstance(f, InterruptionMarkerFrame)]


class Marking(Actor[Ping]):
    """Passes pings on, and marks its output at interruptions (as an output stage does)."""

    accepts = (Ping,)
    marks_interruptions = True

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await self.push_frame(frame, direction)


class TestMarkingStages:
    async def test_the_marker_follows_what_the_marking_stage_pushed_before(
        self, autojump_clock: object
    ) -> None:
        """A marking stage's marker is queued behind what it pushed before the interruption,
        frames a slow stage after it still holds included, and ahead of what it pushes
        after. It travels on through stages that do not name it (one that takes every frame
        too, without seeing it), and the actor that names it gets this one marker only."""
        holder = Sleeper(1.0, name="holder")  # uninterruptible pings: never cancelled
        collector = FrameCollector()
        recorder = MarkerRecorder()
        async with open_test_task([Marking(), holder, collector, recorder]) as t:
            await t.push(*(Ping(n, interruptible=False) for n in (1, 2, 3)))
            await wait_idle()
            assert holder.ref.statistics().data_depth == 2  # busy with 1, holds 2 and 3
            t.interrupt()
            await t.push(Ping(4, interruptible=False))
            await t.drain()
        assert recorder.seen == ["ping 1", "ping 2", "ping 3", "marker 1", "ping 4"]
        assert collector.of_type(InterruptionMarkerFrame) == []

    async def test_the_task_does_not_hand_markers_to_its_listeners(
        self, autojump_clock: object
    ) -> None:
        """A marker nobody consumes reaches the task's sink, which drops it."""
        async with open_test_task([Marking(), FrameCollector()]) as t:
            await t.push(Ping(1))
            t.interrupt()
            await t.push(Ping(2))
            out = await t.drain()
        assert numbers(out) == [2]
        assert [f for f in out if isinstance(f, InterruptionMarkerFrame)] == []


class Producer(Actor[Ping]):
    """Ping 0 passes; ping 1 makes it push uninterruptible pings 100 and 101."""

    accepts = (Ping,)

    def __init__(self) -> None:
        super().__init__(name="producer")
        self.cancelled = False

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        assert isinstance(frame, Ping)
        if frame.n == 0:
            await self.push_frame(frame, direction)
            return
        try:
            await self.push_frame(Ping(100, interruptible=False), direction)
            await self.push_frame(Ping(101, interruptible=False), direction)
        except trio.Cancelled:
            self.cancelled = True
            raise


class TestCancelledSenders:
    async def test_a_sender_woken_for_room_but_interrupted_before_it_ran_does_not_queue(
        self, autojump_clock: object
    ) -> None:
        """A producer waits for room in a full mailbox. The consumer takes a frame, which
        wakes the producer, and interrupts the turn before the producer runs: the producer's
        handler is cancelled and its frame is never queued, and the room goes to the next
        waiting sender."""
        consumer = Recorder(name="consumer", mailbox_size=1)
        consumer.interrupt_on = 100
        producer = Producer()
        async with open_test_task([producer, consumer]) as t:
            await t.push(Ping(0, interruptible=False))  # the consumer holds it: busy
            await wait_idle()
            await t.push(Ping(1))  # 100 fills the mailbox, 101 waits for room
            await wait_idle()
            async with trio.open_nursery() as nursery:
                # A second sender, waiting behind the producer.
                nursery.start_soon(consumer.ref.send, Ping(200, interruptible=False))
                await wait_idle()
                assert consumer.ref.statistics().waiting_senders == 2
                consumer.gate.set()  # 0 done; taking 100 wakes the producer; 100 interrupts
                await wait_idle()
                nursery.cancel_scope.cancel()
            await t.drain()
        assert consumer.seen == ["ping 0", "ping 100", "ping 200"]
        assert producer.cancelled
