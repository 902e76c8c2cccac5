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

#: Renewals run at once, at most (each is a storage call).
_CONCURRENT_RENEWALS = 64


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
    _renewed_at: float
    kept: bool = True

    def stop(self) -> None:
        """Stop renewing it (before releasing it, say). Idempotent."""
        self.kept = False

    def _alive(self) -> bool:
        if self.kept and self._owner is not None and self._owner() is None:
            self.kept = False  # its owner is gone without stopping it: let it expire
        return self.kept


class LeaseKeeper:
    """Renews the leases handed to it, all in one task (:meth:`run`, which the storage
    starts in its task group when it opens).

    A lease is renewed every third of its ttl. A renewal the storage could not carry out
    (unreachable) is retried at the next period until the lease would have expired; then,
    or when the storage says the lease is lost, the lease's ``on_lost`` is called once with
    the :class:`LeaseLostError` and the lease is dropped.

    Args:
        storage: The storage whose ``renew_lease`` it calls.
    """

    def __init__(self, storage: ConversationStorage) -> None:
        self._storage = storage
        self._due: list[tuple[float, int, KeptLease]] = []
        self._order = itertools.count()
        self._sleep: trio.CancelScope | None = None
        self._running = False

    @property
    def running(self) -> bool:
        """Whether its task runs (leases handed to it are renewed)."""
        return self._running

    def __len__(self) -> int:
        """Leases it renews."""
        return sum(1 for _, _, kept in self._due if kept.kept)

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
            while True:
                deadline = self._due[0][0] if self._due else math.inf
                with trio.CancelScope(deadline=deadline) as self._sleep:
                    await trio.sleep_forever()
                self._sleep = None
                now = trio.current_time()
                due = []
                while self._due and self._due[0][0] <= now:
                    kept = heapq.heappop(self._due)[2]
                    if kept._alive():
                        due.append(kept)
                if due:
                    limit = trio.CapacityLimiter(_CONCURRENT_RENEWALS)
                    async with trio.open_nursery() as nursery:
                        for kept in due:
                            nursery.start_soon(self._renew, kept, limit)
        finally:
            self._running = False
            self._sleep = None

    async def _renew(self, kept: KeptLease, limit: trio.CapacityLimiter) -> None:
        async with limit:
            if not kept._alive():
                return
            lease = kept.lease
            try:
                kept.lease = await self._storage.renew_lease(lease)
                kept._renewed_at = trio.current_time()
            except LeaseLostError as exc:
                self._lost(kept, exc)
                return
            except (StorageError, ValueError) as exc:
                if trio.current_time() - kept._renewed_at >= lease.ttl:
                    lost = LeaseLostError(
                        lease.conversation_id,
                        lease.owner,
                        lease.token,
                        f"the storage was unreachable until it expired: {exc}",
                    )
                    self._lost(kept, lost)
                    return
                log.warning(
                    "lease renewal failed; retrying",
                    conversation_id=lease.conversation_id,
                    error=str(exc),
                )
        if kept._alive():
            self._schedule(kept, trio.current_time() + kept.lease.ttl / 3)

    @staticmethod
    def _lost(kept: KeptLease, error: LeaseLostError) -> None:
        if not kept._alive():
            return
        kept.kept = False
        try:
            kept._on_lost(error)
        except Exception as exc:
            log.warning("a lease-lost callback failed", error=repr(exc))
