"""The embedded backend: :class:`SQLiteConversationStorage`, conversations in one SQLite file.

This module is the storage's face on the trio loop: it checks arguments, encodes appends
and hands requests to its engine (:mod:`actors.storage._sqlite_engine`, where the tables
and every statement live), in a worker process by default
(:mod:`actors.storage._sqlite_process`) or on a thread (:mod:`actors.storage._sqlite_thread`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Literal, Self

import structlog
import trio

from ._background import Background
from ._changes import Change
from ._contract import (
    CompactionPolicy,
    ConversationInfo,
    Lease,
    StoredConversation,
    check_append_id,
    check_lease,
    check_positive,
    check_version,
)
from ._errors import StorageUnavailableError, check_id, check_owner, check_ttl
from ._fold import OFF_LOOP_BYTES, heavier_than, prepare_append
from ._keeper import LeaseKeeper
from ._phase import Phase
from ._sqlite_engine import AppendRequest, SQLiteEngine
from ._sqlite_link import EngineLink
from ._sqlite_process import ProcessLink
from ._sqlite_thread import ThreadLink
from ._worker import WorkerClosedError

__all__ = ["SQLiteConversationStorage"]

log = structlog.get_logger("trouper.actors.storage")

#: Where the database work runs (see :class:`SQLiteConversationStorage`).
Worker = Literal["process", "thread"]


def _log_note(level: str, event: str, fields: dict[str, Any]) -> None:
    getattr(log, level, log.warning)(event, **fields)


class SQLiteConversationStorage:
    """Conversations in an embedded SQLite database file: the default, for one host.

    The trio loop never touches the database: every read and write runs in a worker
    process of the storage's own (``worker="process"``, the default), which owns the
    connection, so neither the disk, nor a big conversation, nor a lock held by another
    process, nor Python's GIL hand-offs around SQLite calls hold the loop up. The loop
    only encodes appends and passes requests and answers through a pipe. The worker
    finishes what it was handed and exits when the storage closes or its process dies;
    if it dies first, calls fail with one :class:`StorageUnavailableError` naming how.
    ``worker="thread"`` runs the same work on a thread of this process instead, for
    applications that cannot start processes (it shares the GIL with the loop: slower
    under many sessions).

    The database is in WAL mode with ``synchronous=NORMAL``: a committed append survives
    the process crashing (only the last moments before a power loss can be lost). A lock
    held by another connection is waited for in short ``busy_timeout`` steps, retried up
    to ``lock_timeout``, then reported as :class:`StorageUnavailableError`.

    Each append is one transaction that checks the lease and the version and inserts one
    log row: its cost is the size of the change, whatever the conversation's size.
    Appends, loads and lease acquisitions and renewals made together are carried out
    together, a few statements per group. When a conversation's log passes
    ``compact_after_entries`` entries, or holds more bytes than its snapshot (and at
    least ``compact_min_bytes``), the worker folds it into the snapshot after answering
    the append. Leases use the host's wall clock (processes sharing a file share a host).

    Use one storage per process and file; it serves any number of sessions::

        async with SQLiteConversationStorage("conversations.db") as storage:
            stored = await storage.load("user-42")

    A file written by ``SQLiteContextStorage`` is imported when opened (each conversation
    becomes a snapshot at version 1; its table is kept, renamed
    ``trouper_conversations_v1``).

    Args:
        path: The database file (created if missing; its directory must exist), or
            ``":memory:"``.
        lock_timeout: Longest wait for a lock held by another connection, in seconds.
        busy_timeout: SQLite's own wait per attempt, in seconds (short: the worker retries).
        compact_after_entries: Log entries that trigger a compaction.
        compact_min_bytes: Log bytes below which size alone never triggers one.
        import_legacy: Import the conversations of ``SQLiteContextStorage`` found in the file.
        worker: ``"process"`` (the default) or ``"thread"``: where the database work runs.

    Raises:
        ValueError: A non-positive timeout or threshold, or an unknown ``worker``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        lock_timeout: float = 5.0,
        busy_timeout: float = 0.02,
        compact_after_entries: int = 256,
        compact_min_bytes: int = 1 << 20,
        import_legacy: bool = True,
        worker: Worker = "process",
    ) -> None:
        check_positive(
            lock_timeout=lock_timeout,
            busy_timeout=busy_timeout,
            compact_after_entries=compact_after_entries,
            compact_min_bytes=compact_min_bytes,
        )
        if worker not in ("process", "thread"):
            raise ValueError(
                f"worker must be 'process' or 'thread' (where the database work runs), "
                f"got {worker!r}"
            )
        self.path = str(path)
        self.lock_timeout = float(lock_timeout)
        self.busy_timeout = float(busy_timeout)
        self.compaction = CompactionPolicy(int(compact_after_entries), int(compact_min_bytes))
        self.import_legacy = import_legacy
        self.worker: Worker = worker
        config: dict[str, Any] = {
            "path": self.path,
            "lock_timeout": self.lock_timeout,
            "busy_timeout": self.busy_timeout,
            "compaction": self.compaction,
            "import_legacy": import_legacy,
        }
        self._link: EngineLink
        if worker == "process":
            self._link = ProcessLink(config, repr(self), grace=self.lock_timeout + 10.0)
        else:
            self._link = ThreadLink(SQLiteEngine(**config, note=_log_note))
        self._state = Phase.NEW
        self._stack: AsyncExitStack | None = None
        self._background: Background | None = None
        self._link_tasks: Background | None = None
        #: Renews the leases of the sessions writing through this storage, in one task.
        self.lease_keeper = LeaseKeeper(self)

    def __repr__(self) -> str:
        return f"SQLiteConversationStorage({self.path!r})"

    # ----------------------------------------------------------------- lifetime

    async def __aenter__(self) -> Self:
        """Start the worker and open the database (create its tables, import a legacy
        table).

        Raises:
            StorageUnavailableError: Its directory does not exist, it is not an SQLite
                database, it cannot be opened, or the worker cannot start.
        """
        if self._state is not Phase.NEW:
            raise StorageUnavailableError(f"{self!r} was opened already (open it once)")
        self._state = Phase.OPEN
        stack = AsyncExitStack()
        try:
            # The link's tasks (if any) end after the lease keeper's: closing stops the
            # keeper first, then lets the worker finish.
            self._link_tasks = await Background.open(stack)
            await self._link.start(self._link_tasks)
            self._background = await Background.open(stack)
        except BaseException:
            self._state = Phase.CLOSED
            await self._link.stop()
            if self._link_tasks is not None:
                self._link_tasks.cancel()
            await stack.aclose()
            raise
        self._stack = stack
        self._background.start_soon(self.lease_keeper.run, name=f"{self!r}: leases")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the database (:meth:`aclose`) and end the storage's tasks."""
        await self.aclose()
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    async def aclose(self) -> None:
        """Stop renewing leases, finish the queued work, close the database and stop the
        worker. Idempotent.

        Called inside the ``async with`` block, it cancels the storage's own task (the
        lease keeper), never the block: the code after it runs on, and every later call is
        refused with :class:`StorageUnavailableError`.
        """
        self._state = Phase.CLOSED
        if self._background is not None:
            self._background.cancel()  # its tasks only: never the caller's block
        await self._link.stop()
        if self._link_tasks is not None:
            self._link_tasks.cancel()

    # ----------------------------------------------------------------- requests

    async def _call(self, op: str, arg: Any, *, heavy: bool = False) -> Any:
        """``arg`` through the engine's ``op`` (grouped with the calls made meanwhile when
        ``op`` is batched).

        Raises:
            StorageUnavailableError: The storage is not open, or its worker died.
        """
        if self._state is not Phase.OPEN:
            raise StorageUnavailableError(self._not_open())
        try:
            return await self._link.call(op, arg, heavy=heavy)
        except WorkerClosedError:
            raise StorageUnavailableError(self._not_open()) from None

    def _not_open(self) -> str:
        if self._state is Phase.NEW:
            return f"{self!r} is not open: use it in 'async with'"
        failure = self._link.failure
        return failure if failure is not None else f"{self!r} is closed"

    # ----------------------------------------------------------------- reading

    async def load(self, conversation_id: str) -> StoredConversation | None:
        """The conversation and its version, or ``None`` (see
        :meth:`ConversationStorage.load`). Loads made together are read together."""
        cid = check_id(conversation_id)
        result: StoredConversation | None = await self._call("load", cid)
        return result

    async def info(self, conversation_id: str) -> ConversationInfo | None:
        """What is known about the conversation, or ``None``."""
        cid = check_id(conversation_id)
        result: ConversationInfo | None = await self._call("info", cid)
        return result

    async def list_conversations(self) -> list[ConversationInfo]:
        """Every stored conversation, most recently updated first.

        Raises:
            ConversationCorruptError: A conversation's head row is not valid.
        """
        result: list[ConversationInfo] = await self._call("list", None)
        return result

    # ----------------------------------------------------------------- writing

    async def append(
        self,
        conversation_id: str,
        changes: Sequence[Change],
        *,
        expected_version: int,
        lease: Lease | None = None,
        append_id: str | None = None,
    ) -> int:
        """Append ``changes`` as one entry at ``expected_version``; the new version (see
        :meth:`ConversationStorage.append`).

        Appends made while the worker is busy are committed together: one transaction of a
        few statements per group (a refused append leaves the others alone), one wake-up
        of the loop for the group. The changes are encoded here, or on a thread when they
        hold more than 64 KiB of text."""
        cid = check_id(conversation_id)
        expected = check_version(expected_version)
        aid = check_append_id(append_id)
        check_lease(cid, lease)
        heavy = heavier_than(changes, OFF_LOOP_BYTES)
        if heavy:
            record, reset, count = await trio.to_thread.run_sync(prepare_append, changes)
        else:
            record, reset, count = prepare_append(changes)
        item = AppendRequest(cid, expected, lease, aid, record, reset, count)
        version: int = (await self._call("append", item, heavy=heavy))[0]  # (version, due)
        return version

    async def delete(self, conversation_id: str, *, lease: Lease | None = None) -> bool:
        """Forget the conversation; whether it existed (see
        :meth:`ConversationStorage.delete`)."""
        cid = check_id(conversation_id)
        check_lease(cid, lease)
        result: bool = await self._call("delete", (cid, lease))
        return result

    async def compact(self, conversation_id: str) -> bool:
        """Fold the log into the snapshot now; whether there was anything to fold."""
        cid = check_id(conversation_id)
        result: bool = await self._call("compact", cid)
        return result

    # ----------------------------------------------------------------- leases

    async def acquire_lease(self, conversation_id: str, owner: str, ttl: float) -> Lease:
        """Lease the conversation to ``owner`` for ``ttl`` seconds (see
        :meth:`ConversationStorage.acquire_lease`). Acquisitions made together (many
        sessions opening at once) are carried out together."""
        item = (check_id(conversation_id), check_owner(owner), check_ttl(ttl))
        result: Lease = await self._call("acquire", item)
        return result

    async def renew_lease(self, lease: Lease, ttl: float | None = None) -> Lease:
        """Extend a live lease (see :meth:`ConversationStorage.renew_lease`). Renewals made
        together (the lease keeper renews many at once) are carried out together."""
        check_lease(None, lease)
        seconds = lease.ttl if ttl is None else check_ttl(ttl)
        result: Lease = await self._call("renew", (lease, seconds))
        return result

    async def release_lease(self, lease: Lease) -> bool:
        """End the lease now; whether it was still live. Releases made together (sessions
        ending together) are carried out together."""
        check_lease(None, lease)
        result: bool = await self._call("release", lease)
        return result
