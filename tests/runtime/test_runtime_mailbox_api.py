"""The mailbox on its own: envelopes, the two lanes, backpressure, purge, close, wake-ups."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from runtime import ActorDeadError, FrameDirection, MailboxStatistics
from runtime._mailbox import Envelope, Mailbox, Reply

from .runtime_helpers import Note, Ping, Text

DOWN = FrameDirection.DOWNSTREAM
UP = FrameDirection.UPSTREAM


def data(n: int, *, turn: int = 0, direction: FrameDirection = DOWN) -> Envelope:
    return Envelope(Ping(n), direction, turn)


class Server:
    """A system-lane server that counts its starts and may refuse to start."""

    def __init__(self, *, can_start: bool = True) -> None:
        self.starts = 0
        self.can_start = can_start

    def start_system_service(self) -> bool:
        self.starts += 1
        return self.can_start


def numbers(envelopes: list[Envelope]) -> list[int]:
    out = []
    for envelope in envelopes:
        assert isinstance(envelope.frame, Ping)
        out.append(envelope.frame.n)
    return out


class TestEnvelope:
    def test_an_envelope_names_its_parts(self) -> None:
        """Frame, direction, turn and reply slot, by name; no reply unless given."""
        frame = Text("hi")
        envelope = Envelope(frame, DOWN, 3)
        assert (envelope.frame, envelope.direction, envelope.turn) == (frame, DOWN, 3)
        assert envelope.reply is None
        reply = Reply()
        assert Envelope(frame, None, 0, reply).reply is reply


class TestDataLane:
    def test_frames_come_out_in_order_and_none_when_empty(self) -> None:
        """``take_data`` hands the envelopes over in order, then ``None``; delivered and peak
        depth are counted."""
        box = Mailbox(4, "a")
        for n in range(3):
            assert box.try_put_data(data(n))
        assert box.data_depth == 3
        taken = [box.take_data() for _ in range(4)]
        assert numbers([e for e in taken if e is not None]) == [0, 1, 2]
        assert taken[3] is None
        stats = box.statistics()
        assert (stats.delivered, stats.peak_data_depth, stats.data_depth) == (3, 3, 0)

    def test_a_full_lane_refuses_downstream_data_but_takes_upstream(self) -> None:
        """At capacity ``try_put_data`` says no to downstream frames; upstream frames always
        get in (so a pair of opposite edges cannot deadlock); the unbounded put goes past the
        bound."""
        box = Mailbox(1, "a")
        assert box.try_put_data(data(1))
        assert not box.try_put_data(data(2))
        assert box.try_put_data(data(3, direction=UP))
        box.put_data_unbounded(data(4))
        assert numbers(_drain(box)) == [1, 3, 4]

    async def test_a_waiting_sender_gets_in_when_the_consumer_takes(self) -> None:
        """``put_data`` waits while the lane is full and queues as soon as there is room;
        the waiter is counted in the statistics."""
        box = Mailbox(1, "a")
        box.try_put_data(data(1))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(box.put_data, data(2))
            await trio.testing.wait_all_tasks_blocked()
            assert box.statistics().waiting_senders == 1
            assert not box.try_put_data(data(3))  # keeps the waiter's place in line
            first = box.take_data()
            await trio.testing.wait_all_tasks_blocked()
        assert first is not None
        assert numbers(_drain(box)) == [2]

    async def test_a_woken_sender_cancelled_before_it_runs_passes_the_room_on(
        self, autojump_clock: object
    ) -> None:
        """A sender woken by a take but cancelled before it could run (an interruption, say)
        never queues its frame; the room goes to the next waiting sender."""
        box = Mailbox(1, "a")
        box.try_put_data(data(1))
        first_scope = trio.CancelScope()

        async def first() -> None:
            with first_scope:
                await box.put_data(data(2))

        with trio.fail_after(5):  # the second sender left waiting: fails here, not hangs
            async with trio.open_nursery() as nursery:
                nursery.start_soon(first)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(box.put_data, data(3))
                await trio.testing.wait_all_tasks_blocked()
                assert box.statistics().waiting_senders == 2
                taken = box.take_data()  # wakes the first sender...
                first_scope.cancel()  # ...which is cancelled before it runs
                await trio.testing.wait_all_tasks_blocked()
        assert taken is not None
        assert first_scope.cancelled_caught
        assert numbers(_drain(box)) == [3]

    async def test_the_consumer_waits_for_data(self) -> None:
        """``get_data`` waits until a frame arrives."""
        box = Mailbox(2, "a")
        got: list[Envelope] = []

        async def consume() -> None:
            got.append(await box.get_data())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []
            box.try_put_data(data(7))
        assert numbers(got) == [7]

    async def test_purge_drops_what_is_stale_and_makes_room(self) -> None:
        """``purge`` removes the envelopes the predicate picks, counts them as dropped
        stale, and wakes senders waiting for the room it made."""
        box = Mailbox(2, "a")
        box.try_put_data(data(1, turn=0))
        box.try_put_data(data(2, turn=1))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(box.put_data, data(3, turn=1))
            await trio.testing.wait_all_tasks_blocked()
            dropped = box.purge(lambda e: e.turn < 1)
        assert numbers(dropped) == [1]
        assert numbers(_drain(box)) == [2, 3]
        box.count_stale(2)
        assert box.statistics().dropped_stale == 3


class TestSystemLane:
    def test_a_system_frame_starts_a_server_only_when_none_serves(self) -> None:
        """The starter runs when a frame arrives and no task serves the lane; ``take_system``
        returning ``None`` ends the service, so the next frame starts a new task."""
        box = Mailbox(1, "a")
        server = Server()
        box.put_system(Envelope(Note("early"), None, 0))
        box.serve_system_with(server)  # frames waiting: a server starts at once
        assert server.starts == 1
        box.put_system(Envelope(Note("more"), None, 0))
        assert server.starts == 1  # one is serving
        assert [e.frame.text for e in _drain_system(box)] == ["early", "more"]  # type: ignore[attr-defined]
        box.put_system(Envelope(Note("later"), None, 0))
        assert server.starts == 2

    def test_a_starter_that_cannot_start_leaves_the_frames_waiting(self) -> None:
        """A starter that returns ``False`` (the actor is not running) gets another chance
        with the next frame; without a starter frames just wait."""
        box = Mailbox(1, "a")
        server = Server(can_start=False)
        box.serve_system_with(server)
        box.put_system(Envelope(Note("a"), None, 0))
        box.put_system(Envelope(Note("b"), None, 0))
        assert server.starts == 2
        box.serve_system_with(None)
        box.put_system(Envelope(Note("c"), None, 0))
        assert server.starts == 2
        assert box.statistics().system_depth == 3


class TestClose:
    async def test_close_returns_what_was_queued_and_refuses_more(self) -> None:
        """``close`` hands back both lanes' envelopes, wakes blocked senders with
        ``ActorDeadError``, and every put raises until ``reopen``."""
        box = Mailbox(1, "a")
        box.put_system(Envelope(Note("s"), None, 0))
        box.try_put_data(data(1))
        refused: list[str] = []

        async def send() -> None:
            try:
                await box.put_data(data(2))
            except ActorDeadError as exc:
                refused.append(str(exc))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            await trio.testing.wait_all_tasks_blocked()
            left = box.close()
        assert refused == ["actor 'a' has stopped"]
        assert [type(e.frame) for e in left] == [Note, Ping]
        for put in (box.put_system, box.try_put_data, box.put_data_unbounded):
            with pytest.raises(ActorDeadError):
                put(data(3))
        assert box.statistics() == MailboxStatistics(
            system_depth=0,
            data_depth=0,
            data_capacity=1,
            peak_data_depth=1,
            waiting_senders=0,
            delivered=0,
            dropped_stale=0,
            closed=True,
        )
        box.reopen()
        assert box.try_put_data(data(4))

    def test_a_mailbox_holds_at_least_one_frame(self) -> None:
        with pytest.raises(ValueError, match="at least 1"):
            Mailbox(0, "a")


def _drain(box: Mailbox) -> list[Envelope]:
    out = []
    while (envelope := box.take_data()) is not None:
        out.append(envelope)
    return out


def _drain_system(box: Mailbox) -> list[Envelope]:
    out = []
    while (envelope := box.take_system()) is not None:
        out.append(envelope)
    return out
