"""One task that renews every lease a storage's sessions hold: :class:`LeaseKeeper`.

A task per session renewing its own lease would cost every session a task, its frame and
its cancel scope for as long as it lives, for a renewal every ten seconds. A storage
instead runs one keeper (in its own task group, for as long as it is open); a session
hands it its lease with :meth:`LeaseKeeper.keep` and gets a callback if the lease is lost.
"""

from __future__ import annotations

import heapq
import itertools
import math
import weakref
from collections.abc import Callable
from typing import NoReturn

import attrs
import structlog
import trio

from ._contract import ConversationStorage, Lease
from ._errors import LeaseLostError, StorageError

__all__ = ["KeptLease", "LeaseKeeper"]

log = structlog.get_logger("trouper.actors.storage")

#: Renewals in flight at once, at most (each is a storage call; the backends carry the
#: renewals made together in one transaction or one round trip).
_CONCURRENT_RENEWALS = 128


def retry_delay(ttl: float, failures: int) -> float:
    """Seconds to wait before renewing a lease of ``ttl`` again after ``failures`` failed
    renewals in a row: a thirtieth of the ttl, doubled at each failure, at most a sixth.
    Several tries then fit before the lease would expire, where a retry at the next period
    (a third of the ttl) loses the lease after two failures in a row."""
    return min(ttl / 6, ttl / 30 * (1 << min(failures - 1, 8)))


def log_renewal_failure(lease: Lease, failures: int, error: Exception) -> None:
    """Log a failed renewal that will be retried: the first of a run of failures as a
    warning, the retries after it (every lease of a storage that is away fails at once,
    and each is retried several times) at debug level."""
    report = log.warning if failures == 1 else log.debug
    report(
        "lease renewal failed; retrying",
        conversation_id=lease.conversation_id,
        attempt=failures,
        error=str(error),
    )


def unreachable_until_expired(lease: Lease, error: Exception) -> LeaseLostError:
    """The error that reports ``lease`` lost because the storage could not renew it (``error``)
    before it expired."""
    return LeaseLostError(
        lease.conversation_id,
        lease.owner,
        lease.token,
        f"the storage was unreachable until it expired: {error}",
    )


@attrs.define(eq=False, slots=True)
class KeptLease:
    """A lease the keeper renews every third of its ttl until :meth:`stop`.

    Attributes:
        lease: The lease, as last renewed.
        kept: Whether it is still renewed (``False`` after :meth:`stop` or its loss).
    """

    lease: Lease
    _on_lost: Callable[[LeaseLostError], object]
    _owner: weakref.ref[object] | None
    #: When the last renewal that succeeded was sent (the lease lives at least a ttl
    #: from then, however late its answer came).
    _renewed_at: float
    _failures: int = 0
    kept: bool = True

    def stop(self) -> None:
        """Stop renewing it (before releasing it, say). Idempotent."""
        self.kept = False

    def _alive(self) -> bool:
        if self.kept and self._owner is not None and self._owner() is None:
            self.kept = False  # its owner is gone without stopping it: let it expire
        return self.kept


class LeaseKeeper:
    """Renews the leases handed to it, from one task (:meth:`run`, which the storage
    starts in its task group when it opens).

    A lease is renewed every third of its ttl, counted from when its last renewal was sent.
    Each renewal runs on its own (a slow one holds up no other lease), at most
    ``_CONCURRENT_RENEWALS`` at once. A renewal the storage could not carry out
    (unreachable, or no answer within its timeout) is retried soon (:func:`retry_delay`)
    until the lease would have expired; then, or when the storage says the lease is lost,
    the lease's ``on_lost`` is called once with the :class:`LeaseLostError` and the lease is
    dropped.

    Args:
        storage: The storage whose ``renew_lease`` it calls.
    """

    def __init__(self, storage: ConversationStorage) -> None:
        self._storage = storage
        self._due: list[tuple[float, int, KeptLease]] = []
        self._order = itertools.count()
        self._sleep: trio.CancelScope | None = None
        self._running = False
        self._in_flight = 0

    @property
    def running(self) -> bool:
        """Whether its task runs (leases handed to it are renewed)."""
        return self._running

    def __len__(self) -> int:
        """Leases it renews."""
        return sum(1 for _, _, kept in self._due if kept.kept) + self._in_flight

    def keep(
        self,
        lease: Lease,
        on_lost: Callable[[LeaseLostError], object],
        *,
        owner: object | None = None,
    ) -> KeptLease:
        """Renew ``lease`` from now on, every third of its ttl.

        Args:
            lease: A live lease, just acquired or renewed.
            on_lost: Called (on the loop, once) with the error if the lease is lost.
            owner: If given, the lease is dropped (left to expire) once ``owner`` is
                garbage: a safety net for an owner that ends without :meth:`KeptLease.stop`.
        """
        now = trio.current_time()
        ref = None if owner is None else weakref.ref(owner)
        kept = KeptLease(lease, on_lost, ref, now)
        self._schedule(kept, now + lease.ttl / 3)
        return kept

    def _schedule(self, kept: KeptLease, when: float) -> None:
        heapq.heappush(self._due, (when, next(self._order), kept))
        if self._sleep is not None and when < self._sleep.deadline:
            self._sleep.deadline = when

    async def run(self) -> NoReturn:
        """Renew the leases as they fall due, until cancelled."""
        self._running = True
        try:
            async with trio.open_nursery() as renewals:
                while True:
                    deadline = self._dispatch(renewals)
                    with trio.CancelScope(deadline=deadline) as self._sleep:
                        await trio.sleep_forever()
                    self._sleep = None
        finally:
            self._running = False
            self._sleep = None

    def _dispatch(self, renewals: trio.Nursery) -> float:
        """Start the renewals that are due (as many as may run); when to look again
        (``inf``: when a renewal ends, or a lease is handed over)."""
        now = trio.current_time()
        due = self._due
        while due and self._in_flight < _CONCURRENT_RENEWALS:
            when, _, kept = due[0]
            if when > now:
                return when
            heapq.heappop(due)
            if kept._alive():
                self._in_flight += 1
                renewals.start_soon(self._renew, kept)
        return math.inf

    async def _renew(self, kept: KeptLease) -> None:
        try:
            await self._renew_once(kept)
        finally:
            self._in_flight -= 1
            if self._in_flight == _CONCURRENT_RENEWALS - 1 and self._sleep is not None:
                self._sleep.cancel()  # it waited for a free place: look at the due leases

    async def _renew_once(self, kept: KeptLease) -> None:
        lease = kept.lease
        sent = trio.current_time()
        try:
            renewed = await self._storage.renew_lease(lease)
        except LeaseLostError as exc:
            self._lost(kept, exc)
            return
        except (StorageError, ValueError) as exc:
            kept._failures += 1
            retry = trio.current_time() + retry_delay(lease.ttl, kept._failures)
            if retry >= kept._renewed_at + lease.ttl:
                self._lost(kept, unreachable_until_expired(lease, exc))
                return
            if kept._alive():
                log_renewal_failure(lease, kept._failures, exc)
                self._schedule(kept, retry)
            return
        kept.lease = renewed
        kept._renewed_at = sent
        kept._failures = 0
        if kept._alive():
            self._schedule(kept, sent + renewed.ttl / 3)

    @staticmethod
    def _lost(kept: KeptLease, error: LeaseLostError) -> None:
        if not kept._alive():
            return
        kept.kept = False
        try:
            kept._on_lost(error)
        except Exception as exc:
            log.warning("a lease-lost callback failed", error=repr(exc))
