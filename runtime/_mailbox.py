"""Typed two-lane mailboxes and the :class:`Envelope` a frame travels in.

A mailbox has a **system lane** (unbounded, never blocks the sender, served first by its own
task) and an ordered **data lane** (bounded: a downstream sender waits while it is full, which
is how a slow consumer slows its producer). Upstream data is never made to wait, so the
downstream/upstream pair of edges between two actors can never deadlock (every cycle in a
topology has a non-blocking edge).

Each lane has one consumer. The data lane's consumer takes envelopes with :meth:`take_data`
and, when it is empty, waits in :meth:`get_data`. The system lane is served by a task that
exists only while there are system frames: the mailbox calls
:meth:`SystemServer.start_system_service` of the server given to :meth:`serve_system_with`
when a frame arrives and no task is serving, and the task takes frames with
:meth:`take_system` until that returns ``None`` (which ends the service: the next frame
starts a new task).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import attrs
import outcome
import trio

from ._errors import ActorDeadError
from ._frames import Frame, FrameDirection
from ._park import Trap, make_trap, park, settle, wake

__all__ = [
    "DataServer",
    "DemandMailbox",
    "Envelope",
    "Mailbox",
    "MailboxStatistics",
    "Reply",
    "SystemServer",
]

_UPSTREAM = FrameDirection.UPSTREAM


class SystemServer(Protocol):
    """What serves a mailbox's system lane (the actor's cell). An object, not a callback: a
    bound method kept by every mailbox would be one more object per actor for the garbage
    collector to scan."""

    def start_system_service(self) -> bool:
        """Start a task serving the system lane; ``False`` if it cannot now (the frames then
        wait for the next call)."""


class DataServer(Protocol):
    """What serves the data lane of a :class:`DemandMailbox` (a passive cell)."""

    def data_arrived(self) -> None:
        """A data frame was queued: start a task serving the lane if none runs (and the
        actor serves data now; frames that arrive before wait for its start)."""


@attrs.define(eq=False)
class Reply:
    """The reply slot of one ask: set once, read by the asker."""

    result: outcome.Outcome[Any] | None = None
    #: The asker's task while it waits (:meth:`wait`).
    waiter: trio.lowlevel.Task | None = None

    def set(self, result: outcome.Outcome[Any]) -> None:
        """Store the answer (the first one wins) and wake the asker."""
        if self.result is None:
            self.result = result
            waiter, self.waiter = self.waiter, None
            if waiter is not None:
                wake(waiter)

    async def wait(self) -> None:
        """Wait until the answer is stored (at once if it is; the wait can be cancelled)."""
        if self.result is not None:
            await trio.lowlevel.checkpoint()
            return
        self.waiter = trio.lowlevel.current_task()
        settle(await park(make_trap(self)))

    def __call__(self, _: object) -> trio.lowlevel.Abort:
        """The abort function of the asker's wait (it is cancelled): it waits no more."""
        self.waiter = None
        return trio.lowlevel.Abort.SUCCEEDED


@attrs.define(eq=False, weakref_slot=False)
class Envelope:
    """A frame on its way through a mailbox. Never changed once made (so it can be passed on
    as it is: a stage that forwards the frame it handles re-sends its envelope).

    Args:
        frame: The frame.
        direction: Which way it travels; ``None`` for a frame sent straight to the actor
            (``ActorRef.send``, a ``StartFrame`` given to one actor): handled, not passed on.
        turn: The turn it was stamped with when it entered the session (or was pushed).
        reply: The reply slot of an ask, else ``None``.
        uninterruptible: Made uninterruptible by its sender
            (:meth:`~runtime.Actor.push_uninterruptible`): no interruption drops it, whatever
            its frame's ``interruptible`` says. A stage that passes the frame on as it came
            re-sends this envelope, so the mark travels with it.
    """

    frame: Frame
    direction: FrameDirection | None
    turn: int
    reply: Reply | None = None
    uninterruptible: bool = False


@attrs.frozen
class MailboxStatistics:
    """A snapshot of one mailbox.

    Args:
        system_depth: Frames waiting on the system lane.
        data_depth: Frames waiting on the data lane.
        data_capacity: Bound of the data lane for downstream senders.
        peak_data_depth: Highest data depth seen since the mailbox was made.
        waiting_senders: Tasks blocked because the data lane is full.
        delivered: Frames taken out of the mailbox so far, and those the actor handled at
            once without queuing them (:meth:`~runtime.Actor.on_ask_nowait`,
            :meth:`~runtime.Actor.process_frame_nowait`).
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
    """Two-lane mailbox of one actor (see the module docs).

    Args:
        capacity: Bound of the data lane for downstream senders.
        owner: Name of the actor (for error messages).
    """

    capacity: int
    owner: str
    # The system lane: made by its first frame, dropped when it is served empty (system
    # frames are rare: most of the time the lane needs no deque for the collector to scan).
    _system: deque[Envelope] | None = attrs.field(default=None, init=False)
    _data: deque[Envelope] = attrs.field(factory=deque, init=False)
    # Starts a task serving the system lane (``None``: not running).
    _server: SystemServer | None = attrs.field(default=None, init=False)
    _system_serving: bool = attrs.field(default=False, init=False)
    # The data lane has one consumer: the task waiting on it, woken directly (no parking lot:
    # a wake-up per frame is the common case).
    _data_task: trio.lowlevel.Task | None = attrs.field(default=None, init=False)
    # What get_data parks on (made at its first wait: a cell's loop parks on its own).
    _trap: Trap | None = attrs.field(default=None, init=False)
    # Senders waiting for room; made when the first one has to wait (most lanes never fill).
    _send_lot: trio.lowlevel.ParkingLot | None = attrs.field(default=None, init=False)
    # Waiting senders, counted by hand: cheaper than asking the parking lot on every frame.
    _send_waiting: int = attrs.field(default=0, init=False)
    # Whether a woken sender has yet to run. The consumer then wakes nobody: that sender wakes
    # the next one if there is room when it has queued its frame. (A lane kept full by a fast
    # producer would otherwise call ``ParkingLot.unpark`` for every frame taken.)
    _sender_woken: bool = attrs.field(default=False, init=False)
    _peak: int = attrs.field(default=0, init=False)
    _delivered: int = attrs.field(default=0, init=False)
    _dropped_stale: int = attrs.field(default=0, init=False)
    #: Whether the mailbox refuses new frames (read it; change it with close/reopen).
    closed: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError(f"mailbox capacity must be at least 1, got {self.capacity}")

    def _dead(self) -> ActorDeadError:
        return ActorDeadError(f"actor {self.owner!r} has stopped")

    # ----------------------------------------------------------------- system lane

    def put_system(self, envelope: Envelope) -> None:
        """Queue on the system lane (never blocks); starts its service if none is running.

        Raises:
            ActorDeadError: the mailbox is closed.
        """
        if self.closed:
            raise self._dead()
        system = self._system
        if system is None:
            system = self._system = deque()
        system.append(envelope)
        if not self._system_serving and self._server is not None:
            self._system_serving = self._server.start_system_service()

    def serve_system_with(self, server: SystemServer | None) -> None:
        """Install (or, with ``None``, remove) what starts a task serving the system lane.

        ``server.start_system_service()`` starts the task and returns ``True``, or returns
        ``False`` if it cannot now (the frames then wait for the next call). Installing it
        starts a task at once if system frames are waiting.
        """
        self._server = server
        self._system_serving = False
        if server is not None and self._system:
            self._system_serving = server.start_system_service()

    def take_system(self) -> Envelope | None:
        """The next system frame, or ``None`` when the lane is empty, which also ends the
        service: the caller's task must then end without waiting on anything else first, as
        the next frame starts a new one."""
        system = self._system
        if system:
            self._delivered += 1
            return system.popleft()
        self._system = None
        self._system_serving = False
        return None

    def peek_system(self) -> Envelope | None:
        """The next system frame, left in the lane (``None`` when the lane is empty)."""
        system = self._system
        return system[0] if system else None

    def end_system_service(self) -> None:
        """The serving task ends early (it failed, was cancelled, or the actor's own task
        served the lane until it started): the next system frame starts a new one."""
        self._system_serving = False
        if not self._system:
            self._system = None  # no empty deque kept for the collector to scan

    # ----------------------------------------------------------------- data lane: senders

    def try_put_data(self, envelope: Envelope, nowait: bool = False) -> bool:
        """Queue on the data lane if there is room (upstream frames always have room).

        Args:
            envelope: What to queue.
            nowait: The sender cannot await anything (a synchronous handler's push):
                ``False`` must then mean that nothing was done. A mailbox that hands frames
                over as they come finishes the handing over itself; this one ignores it.

        Raises:
            ActorDeadError: the mailbox is closed.
        """
        if self.closed:
            raise self._dead()
        data = self._data
        if (len(data) >= self.capacity or self._send_waiting) and (
            envelope.direction is not _UPSTREAM
        ):
            # Full, or others are already waiting: keep their place in line.
            return False
        data.append(envelope)
        n = len(data)
        if n > self._peak:
            self._peak = n
        if self._data_task is not None:
            self._wake_data()
        return True

    def put_data_unbounded(self, envelope: Envelope) -> None:
        """Queue on the data lane without waiting, even past the bound (cycle-closing edges).

        Raises:
            ActorDeadError: the mailbox is closed.
        """
        if self.closed:
            raise self._dead()
        data = self._data
        data.append(envelope)
        if len(data) > self._peak:
            self._peak = len(data)
        if self._data_task is not None:
            self._wake_data()

    async def put_data(self, envelope: Envelope) -> None:
        """Queue on the data lane, waiting while it is full (backpressure).

        Cancellation leaves the mailbox unchanged (the frame is not queued), also when the
        sender was woken for room but cancelled before it ran.

        Raises:
            ActorDeadError: the mailbox is (or gets) closed.
        """
        if self.try_put_data(envelope):
            return
        while True:
            self._send_waiting += 1
            try:
                if self._send_lot is None:
                    self._send_lot = trio.lowlevel.ParkingLot()
                await self._send_lot.park()
            finally:
                self._send_waiting -= 1
                # Woken (or cancelled): whoever takes next may wake another sender.
                self._sender_woken = False
            if self.closed:
                raise self._dead()
            try:
                # Woken, but cancelled (an interruption, say) before it could run: a cancelled
                # sender never queues, even when room came up first. (Not by comparing
                # trio.current_effective_deadline() with -inf: that walks every enclosing
                # cancel scope, recursively, and sessions entered one inside another nest
                # them a level each, a thousand deep for a thousand sessions.)
                await trio.lowlevel.checkpoint_if_cancelled()
            except BaseException:
                # The room goes to the next sender.
                if self._send_waiting and len(self._data) < self.capacity:
                    self._wake_sender()
                raise
            data = self._data
            if len(data) < self.capacity:
                data.append(envelope)
                n = len(data)
                if n > self._peak:
                    self._peak = n
                if self._data_task is not None:
                    self._wake_data()
                if self._send_waiting and n < self.capacity:
                    self._wake_sender()
                return

    # ----------------------------------------------------------------- data lane: consumer

    def take_data(self) -> Envelope | None:
        """The next data frame, or ``None`` when the lane is empty (never waits)."""
        data = self._data
        if not data:
            return None
        self._delivered += 1
        if self._send_waiting and not self._sender_woken:
            self._wake_sender()
        return data.popleft()

    async def get_data(self) -> Envelope:
        """Wait for and take the next data frame (the lane has one consumer).

        Closing the mailbox wakes the consumer, which waits again (it is cancelled when its
        actor stops).
        """
        data = self._data
        while not data:
            self.expect_data()
            if self._trap is None:
                self._trap = make_trap(self.abort_data_wait)
            settle(await park(self._trap))
        self._delivered += 1
        if self._send_waiting and not self._sender_woken:
            self._wake_sender()
        return data.popleft()

    def expect_data(self) -> None:
        """The consumer's task is about to wait for data, in :func:`runtime._park.park` on a
        trap whose abort function calls :meth:`abort_data_wait`: the next frame (or
        :meth:`close`) wakes it (:func:`runtime._park.wake`); it then takes with
        :meth:`take_data`, which may find nothing (after a close). :meth:`get_data` in one
        call; a loop that waits itself saves a coroutine (and a frame to resume at each
        wake-up)."""
        assert self._data_task is None, "a mailbox lane has one consumer"
        self._data_task = trio.lowlevel.current_task()

    @property
    def data_depth(self) -> int:
        """Frames waiting on the data lane."""
        return len(self._data)

    @property
    def consumer_waiting(self) -> bool:
        """Whether the data lane's consumer is waiting for a frame (see :meth:`expect_data`)."""
        return self._data_task is not None

    def system_quiet(self) -> bool:
        """Whether nothing waits in the system lane and no task serves it."""
        return not self._system and not self._system_serving

    def _wake_sender(self) -> None:
        """Let one waiting sender retry (only called while ``_send_waiting``)."""
        assert self._send_lot is not None
        self._sender_woken = bool(self._send_lot.unpark())

    def _wake_data(self) -> None:
        task, self._data_task = self._data_task, None
        assert task is not None
        wake(task)

    def abort_data_wait(self, _: object) -> trio.lowlevel.Abort:
        """The abort function of the consumer's wait (see :meth:`expect_data`)."""
        self._data_task = None
        return trio.lowlevel.Abort.SUCCEEDED

    # ----------------------------------------------------------------- maintenance

    def purge(self, is_stale: Callable[[Envelope], bool]) -> list[Envelope]:
        """Remove the data-lane envelopes for which ``is_stale`` is true (counted as dropped
        stale); wakes as many waiting senders as there is room now. Returns them."""
        kept: deque[Envelope] = deque()
        dropped: list[Envelope] = []
        for envelope in self._data:
            (dropped if is_stale(envelope) else kept).append(envelope)
        if dropped:
            # In place: keep the one deque.
            self._data.clear()
            self._data.extend(kept)
            self._dropped_stale += len(dropped)
            free = self.capacity - len(kept)
            lot = self._send_lot
            for _ in range(min(free, len(lot) if lot is not None else 0)):
                self._wake_sender()
        return dropped

    def count_delivered(self) -> None:
        """Account a frame its actor handled at once, without queuing it."""
        self._delivered += 1

    def count_stale(self, n: int = 1) -> None:
        """Account frames dropped by the consumer because their turn was interrupted."""
        self._dropped_stale += n

    def close(self) -> list[Envelope]:
        """Refuse further frames, wake every waiter and return what was still queued."""
        self.closed = True
        left = [*self._system, *self._data] if self._system else list(self._data)
        self._system = None
        self._data.clear()
        if self._send_lot is not None:
            self._send_lot.unpark_all()
        if self._data_task is not None:
            self._wake_data()
        return left

    def reopen(self) -> None:
        """Accept frames again."""
        self.closed = False

    def statistics(self) -> MailboxStatistics:
        """Return a frozen snapshot of this mailbox."""
        return MailboxStatistics(
            system_depth=len(self._system) if self._system is not None else 0,
            data_depth=len(self._data),
            data_capacity=self.capacity,
            peak_data_depth=self._peak,
            waiting_senders=len(self._send_lot) if self._send_lot is not None else 0,
            delivered=self._delivered,
            dropped_stale=self._dropped_stale,
            closed=self.closed,
        )


@attrs.define(eq=False)
class DemandMailbox(Mailbox):
    """The mailbox of a passive cell: its data lane has no task waiting on it, so each frame
    queued tells ``server`` (:meth:`DataServer.data_arrived`), which starts one if none runs.

    Args:
        server: What serves the data lane (the cell); ``None`` until it is set.
    """

    server: DataServer | None = None

    def try_put_data(self, envelope: Envelope, nowait: bool = False) -> bool:
        if not super().try_put_data(envelope):
            return False
        if self.server is not None:
            self.server.data_arrived()
        return True

    def put_data_unbounded(self, envelope: Envelope) -> None:
        super().put_data_unbounded(envelope)
        if self.server is not None:
            self.server.data_arrived()

    async def put_data(self, envelope: Envelope) -> None:
        await super().put_data(envelope)
        if self.server is not None:
            self.server.data_arrived()
