"""Typed two-lane mailboxes.

A mailbox has a **system lane** (unbounded, never blocks the sender, served first by its own
task) and an ordered **data lane** (bounded: a downstream sender waits while it is full, which
is how a slow consumer slows its producer). Upstream data is never made to wait, so the
downstream/upstream pair of edges between two actors can never deadlock (every cycle in a
topology has a non-blocking edge).

Items are ``(frame, direction, turn, reply)`` tuples; the turn is the one the frame was
stamped with when it entered the session, ``reply`` is an :class:`_Reply` for asks.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import outcome
import trio

from ._errors import ActorDeadError
from ._frames import FrameDirection

if TYPE_CHECKING:
    from ._frames import Frame

__all__ = ["Mailbox", "MailboxStatistics"]

Item = tuple["Frame", "FrameDirection | None", int, "_Reply | None"]


class _SystemServer(Protocol):
    """What a mailbox needs of its actor: start a task serving the system lane."""

    def _serve_system_soon(self) -> bool: ...


@attrs.define(eq=False)
class _Reply:
    """The reply slot of one ask: set once, read by the asker."""

    event: trio.Event = attrs.Factory(trio.Event)
    result: outcome.Outcome[Any] | None = None

    def set(self, result: outcome.Outcome[Any]) -> None:
        if self.result is None:
            self.result = result
            self.event.set()


@attrs.frozen
class MailboxStatistics:
    """A snapshot of one mailbox.

    Args:
        system_depth: Frames waiting on the system lane.
        data_depth: Frames waiting on the data lane.
        data_capacity: Bound of the data lane for downstream senders.
        peak_data_depth: Highest data depth seen since the mailbox was made.
        waiting_senders: Tasks blocked because the data lane is full.
        delivered: Frames taken out of the mailbox so far.
        dropped_stale: Frames dropped because their turn was interrupted.
        closed: Whether the mailbox refuses new frames.
    """

    system_depth: int
    data_depth: int
    data_capacity: int
    peak_data_depth: int
    waiting_senders: int
    delivered: int
    dropped_stale: int
    closed: bool


@attrs.define(eq=False)
class Mailbox:
    """Two-lane mailbox of one actor (see the module docs)."""

    capacity: int
    owner: str
    _system: deque[Item] = attrs.field(factory=deque, init=False)
    _data: deque[Item] = attrs.field(factory=deque, init=False)
    # The system lane is served by a task started when a frame arrives and none is serving:
    # ``server`` is the running actor (its ``_serve_system_soon()`` says whether it started
    # one). A reference, not a bound method: one object less per actor.
    server: _SystemServer | None = attrs.field(default=None, init=False)
    _system_serving: bool = attrs.field(default=False, init=False)
    # The data lane has one consumer (the actor's data loop): the task waiting on it, woken
    # directly (no parking lot: a wake-up per frame is the common case).
    _data_task: trio.lowlevel.Task | None = attrs.field(default=None, init=False)
    # Senders waiting for room; made when the first one has to wait (most lanes never fill).
    _send_lot: trio.lowlevel.ParkingLot | None = attrs.field(default=None, init=False)
    # Waiting senders, counted by hand: cheaper than asking the parking lot on every frame.
    _send_waiting: int = attrs.field(default=0, init=False)
    _peak: int = attrs.field(default=0, init=False)
    delivered: int = attrs.field(default=0, init=False)
    dropped_stale: int = attrs.field(default=0, init=False)
    closed: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError(f"mailbox capacity must be at least 1, got {self.capacity}")

    # ----------------------------------------------------------------- senders

    def put_system(self, item: Item) -> None:
        """Queue on the system lane (never blocks)."""
        if self.closed:
            raise ActorDeadError(f"actor {self.owner!r} has stopped")
        self._system.append(item)
        if not self._system_serving:
            self.start_system_service()

    def start_system_service(self) -> None:
        """Start a task to serve the queued system frames, unless one is serving them or the
        actor is not running (then it starts one when it runs)."""
        server = self.server
        if server is not None and self._system and not self._system_serving:
            self._system_serving = server._serve_system_soon()

    def try_put_data(self, item: Item) -> bool:
        """Queue on the data lane if there is room (or the frame goes upstream)."""
        if self.closed:
            raise ActorDeadError(f"actor {self.owner!r} has stopped")
        data = self._data
        if len(data) >= self.capacity and item[1] is not FrameDirection.UPSTREAM:
            return False
        if self._send_waiting and item[1] is not FrameDirection.UPSTREAM:
            # Others are already waiting: keep their place in line.
            return False
        data.append(item)
        n = len(data)
        if n > self._peak:
            self._peak = n
        if self._data_task is not None:
            self._wake_data()
        return True

    def put_data_unbounded(self, item: Item) -> None:
        """Queue on the data lane without waiting, even past the bound (cycle-closing edges)."""
        if self.closed:
            raise ActorDeadError(f"actor {self.owner!r} has stopped")
        data = self._data
        data.append(item)
        if len(data) > self._peak:
            self._peak = len(data)
        if self._data_task is not None:
            self._wake_data()

    async def put_data(self, item: Item) -> None:
        """Queue on the data lane, waiting while it is full (backpressure).

        Cancellation leaves the mailbox unchanged (the frame is not queued), also when the
        sender was woken for room but cancelled before it ran.
        """
        if self.try_put_data(item):
            return
        while True:
            self._send_waiting += 1
            try:
                if self._send_lot is None:
                    self._send_lot = trio.lowlevel.ParkingLot()
                await self._send_lot.park()
            finally:
                self._send_waiting -= 1
            if self.closed:
                raise ActorDeadError(f"actor {self.owner!r} has stopped")
            data = self._data
            if trio.current_effective_deadline() == -math.inf:
                # Woken, but cancelled (an interruption, say) before it could run: a cancelled
                # sender never queues, even when room came up first. The room goes to the next.
                if self._send_waiting and len(data) < self.capacity:
                    self._wake_sender()
                await trio.lowlevel.checkpoint_if_cancelled()
            if len(data) < self.capacity:
                data.append(item)
                n = len(data)
                if n > self._peak:
                    self._peak = n
                if self._data_task is not None:
                    self._wake_data()
                if self._send_waiting and n < self.capacity:
                    self._wake_sender()
                return

    # ----------------------------------------------------------------- receivers

    def get_system_nowait(self) -> Item:
        """Take the next system frame or raise :class:`trio.WouldBlock`."""
        try:
            item = self._system.popleft()
        except IndexError:
            raise trio.WouldBlock from None
        self.delivered += 1
        return item

    def get_data_nowait(self) -> Item:
        """Take the next data frame or raise :class:`trio.WouldBlock`."""
        try:
            item = self._data.popleft()
        except IndexError:
            raise trio.WouldBlock from None
        self.delivered += 1
        if self._send_waiting:
            self._wake_sender()
        return item

    async def get_data(self) -> Item:
        """Wait for and take the next data frame (only the actor's own loop waits here)."""
        while not self._data:
            assert self._data_task is None, "a mailbox lane has one consumer"
            self._data_task = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(self._abort_data)
        return self.get_data_nowait()

    def _wake_sender(self) -> None:
        """Let one waiting sender retry (only called while ``_send_waiting``)."""
        assert self._send_lot is not None
        self._send_lot.unpark()

    def _wake_data(self) -> None:
        task, self._data_task = self._data_task, None
        assert task is not None
        trio.lowlevel.reschedule(task)

    def _abort_data(self, _: object) -> trio.lowlevel.Abort:
        self._data_task = None
        return trio.lowlevel.Abort.SUCCEEDED

    # ----------------------------------------------------------------- maintenance

    def purge(self, is_stale: Callable[[Item], bool]) -> list[Item]:
        """Remove the data-lane items for which ``is_stale`` is true; returns them."""
        kept: deque[Item] = deque()
        dropped: list[Item] = []
        for item in self._data:
            (dropped if is_stale(item) else kept).append(item)
        if dropped:
            # In place: the data loop holds on to this deque.
            self._data.clear()
            self._data.extend(kept)
            self.dropped_stale += len(dropped)
            free = self.capacity - len(kept)
            lot = self._send_lot
            for _ in range(min(free, len(lot) if lot is not None else 0)):
                self._wake_sender()
        return dropped

    def count_stale(self, n: int = 1) -> None:
        """Account frames dropped by the receiver because their turn was interrupted."""
        self.dropped_stale += n

    def close(self) -> list[Item]:
        """Refuse further frames, wake every waiter and return what was still queued."""
        self.closed = True
        left = [*self._system, *self._data]
        self._system.clear()
        self._data.clear()
        if self._send_lot is not None:
            self._send_lot.unpark_all()
        if self._data_task is not None:
            self._wake_data()
        return left

    def reopen(self) -> None:
        """Accept frames again (used when an actor restarts)."""
        self.closed = False

    def statistics(self) -> MailboxStatistics:
        """Return a frozen snapshot of this mailbox."""
        return MailboxStatistics(
            system_depth=len(self._system),
            data_depth=len(self._data),
            data_capacity=self.capacity,
            peak_data_depth=self._peak,
            waiting_senders=len(self._send_lot) if self._send_lot is not None else 0,
            delivered=self.delivered,
            dropped_stale=self.dropped_stale,
            closed=self.closed,
        )
