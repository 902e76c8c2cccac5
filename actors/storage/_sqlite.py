"""The embedded backend: :class:`SQLiteConversationStorage`, conversations in one SQLite file.

Tables (none is ever rewritten whole by an append):

- ``trouper_heads``: one small row per conversation (version, counters, times);
- ``trouper_changes``: the log, one row per append ``(conversation_id, version, record)``;
- ``trouper_snapshots``: the fold of the log up to a version, written by compaction only;
- ``trouper_leases``: owner, fencing token and expiry per conversation id (kept when the
  conversation is deleted, so tokens keep increasing).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import attrs
import outcome
import structlog

from .._context import ContextSnapshot
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
from ._errors import (
    ConversationCorruptError,
    LeaseHeldError,
    StorageError,
    StorageUnavailableError,
    check_id,
    check_owner,
    check_ttl,
)
from ._fold import (
    EMPTY,
    OFF_LOOP_BYTES,
    decode_entry,
    decode_snapshot,
    encode_snapshot,
    fold_entries,
    heavier_than,
    prepare_append,
)
from ._keeper import LeaseKeeper
from ._phase import Phase
from ._sqlite_group import (
    READ_ALONE,
    Head,
    apply_append,
    check_int,
    check_lease_row,
    check_number,
    extend_leases,
    group_supported,
    lease_values,
    read_conversations,
    read_heads,
    read_leases,
    write_group,
    write_leases,
)
from ._worker import Batcher, WorkerClosedError, WorkerThread

__all__ = ["SQLiteConversationStorage"]

T = TypeVar("T")
I = TypeVar("I")  # noqa: E741
R = TypeVar("R")
log = structlog.get_logger("trouper.actors.storage")

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS trouper_heads (
        id               TEXT PRIMARY KEY,
        version          INTEGER NOT NULL,
        snapshot_version INTEGER NOT NULL,
        created_at       REAL NOT NULL,
        updated_at       REAL NOT NULL,
        message_count    INTEGER NOT NULL,
        log_entries      INTEGER NOT NULL,
        log_bytes        INTEGER NOT NULL,
        snapshot_bytes   INTEGER NOT NULL,
        append_id        TEXT
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS trouper_changes (
        conversation_id TEXT NOT NULL,
        version         INTEGER NOT NULL,
        record          BLOB NOT NULL
    )
    """,
    """
    CREATE UNIQUE INDEX IF NOT EXISTS trouper_changes_by_version
        ON trouper_changes (conversation_id, version)
    """,
    """
    CREATE TABLE IF NOT EXISTS trouper_snapshots (
        conversation_id TEXT PRIMARY KEY,
        version         INTEGER NOT NULL,
        data            BLOB NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS trouper_leases (
        conversation_id TEXT PRIMARY KEY,
        owner           TEXT NOT NULL,
        token           INTEGER NOT NULL,
        expires_at      REAL NOT NULL
    )
    """,
)

#: The table of ``SQLiteContextStorage`` (one row per conversation, rewritten whole).
_LEGACY_TABLE = "trouper_conversations"
_LEGACY_RENAMED = "trouper_conversations_v1"

_HEAD_COLUMNS = (
    "version, snapshot_version, created_at, updated_at, message_count, log_entries, "
    "log_bytes, snapshot_bytes"
)

_DAMAGED = ("not a database", "malformed", "corrupt")

#: What an append checks, in one statement: the head (version, message count, log entries,
#: log bytes, snapshot bytes, last append id) and the lease, each NULL when missing.
_APPEND_READ = (
    "SELECT h.version, h.message_count, h.log_entries, h.log_bytes, h.snapshot_bytes, "
    "h.append_id, l.owner, l.token, l.expires_at FROM (SELECT ? AS id) AS k "
    "LEFT JOIN trouper_heads AS h ON h.id = k.id "
    "LEFT JOIN trouper_leases AS l ON l.conversation_id = k.id"
)


@attrs.frozen(slots=True)
class _Append:
    """One append waiting for its group's transaction."""

    cid: str
    changes: Sequence[Change]
    expected: int
    lease: Lease | None
    append_id: str | None
    #: ``prepare_append(changes)``, done on the loop for light changes (``None``: heavy
    #: content, encoded in the thread).
    prepared: tuple[bytes, bool, int] | None = None


class _GroupFailed(Exception):
    """A group could not be written in a few statements: write each append on its own."""


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


def _blob(conversation_id: str, value: object, what: str) -> bytes | str:
    if not isinstance(value, bytes | str):
        raise ConversationCorruptError(
            conversation_id, f"{what} is a {type(value).__name__}, not JSON text"
        )
    return value


def _transaction(
    conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T], *, write: bool
) -> T:
    conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
    try:
        result = fn(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error as exc:
                log.warning("rollback failed", error=repr(exc))
        raise
    return result


class SQLiteConversationStorage:
    """Conversations in an embedded SQLite database file: the default, for one host.

    Every database operation runs on one dedicated thread that owns the connection, so the
    trio loop is never blocked by the disk, by a big conversation or by a lock held by
    another process (see :mod:`actors.storage._worker` for why one thread). The database is
    in WAL mode with ``synchronous=NORMAL``: a committed append survives the process
    crashing (only the last moments before a power loss can be lost). A lock held by
    another connection is waited for in short ``busy_timeout`` steps, retried inside the
    thread up to ``lock_timeout``, then reported as :class:`StorageUnavailableError`.

    Each append is one transaction that checks the lease and the version and inserts one
    log row: its cost is the size of the change, whatever the conversation's size. When a
    conversation's log passes ``compact_after_entries`` entries, or holds more bytes than
    its snapshot (and at least ``compact_min_bytes``), the thread folds it into the snapshot
    after the append returns. Leases use the hosts' wall clock (processes sharing a file
    share a host).

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
        busy_timeout: SQLite's own wait per attempt, in seconds (short: the thread retries).
        compact_after_entries: Log entries that trigger a compaction.
        compact_min_bytes: Log bytes below which size alone never triggers one.
        import_legacy: Import the conversations of ``SQLiteContextStorage`` found in the file.

    Raises:
        ValueError: A non-positive timeout or threshold.
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
    ) -> None:
        check_positive(
            lock_timeout=lock_timeout,
            busy_timeout=busy_timeout,
            compact_after_entries=compact_after_entries,
            compact_min_bytes=compact_min_bytes,
        )
        self.path = str(path)
        self.lock_timeout = float(lock_timeout)
        self.busy_timeout = float(busy_timeout)
        self.compaction = CompactionPolicy(int(compact_after_entries), int(compact_min_bytes))
        self.import_legacy = import_legacy
        self._worker: WorkerThread[sqlite3.Connection] = WorkerThread(
            f"trouper-sqlite:{Path(self.path).name}", self._connect, self._disconnect
        )
        self._appends: Batcher[sqlite3.Connection, _Append, tuple[int, bool]] = Batcher(
            self._worker, self._append_batch
        )
        self._acquisitions: Batcher[sqlite3.Connection, tuple[str, str, float], Lease] = Batcher(
            self._worker, self._acquire_batch
        )
        self._loads: Batcher[sqlite3.Connection, str, StoredConversation | None] = Batcher(
            self._worker, self._load_batch
        )
        self._renewals: Batcher[sqlite3.Connection, tuple[Lease, float], Lease] = Batcher(
            self._worker, self._renew_batch
        )
        self._state = Phase.NEW
        self._compaction_queued: set[str] = set()
        #: Whether appends are written a group at a time (see ``_sqlite_group``); set when
        #: the database opens.
        self._group_statements = False
        self._stack: AsyncExitStack | None = None
        self._background: Background | None = None
        #: Renews the leases of the sessions writing through this storage, in one task.
        self.lease_keeper = LeaseKeeper(self)

    def __repr__(self) -> str:
        return f"SQLiteConversationStorage({self.path!r})"

    # ----------------------------------------------------------------- lifetime

    async def __aenter__(self) -> Self:
        """Open the database (create its tables, import a legacy table).

        Raises:
            StorageUnavailableError: Its directory does not exist, it is not an SQLite
                database, or it cannot be opened.
        """
        if self._state is not Phase.NEW:
            raise StorageUnavailableError(f"{self!r} was opened already (open it once)")
        self._state = Phase.OPEN
        stack = AsyncExitStack()
        try:
            await self._worker.start()
            self._background = await Background.open(stack)
        except BaseException:
            self._state = Phase.CLOSED
            await stack.aclose()
            await self._worker.stop()
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
        """Close the database (:meth:`aclose`) and end the storage's task (the lease
        keeper)."""
        await self.aclose()
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    async def aclose(self) -> None:
        """Stop renewing leases, finish the queued work, close the database and stop the
        thread. Idempotent.

        Called inside the ``async with`` block, it cancels the storage's own task (the
        lease keeper), never the block: the code after it runs on, and every later call is
        refused with :class:`StorageUnavailableError`.
        """
        self._state = Phase.CLOSED
        if self._background is not None:
            self._background.cancel()  # its tasks only: never the caller's block
        await self._worker.stop()

    def _connect(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            parent = Path(self.path).expanduser().resolve().parent
            if not parent.is_dir():
                raise StorageUnavailableError(
                    f"cannot create the conversation database {self.path!r}: the directory "
                    f"{str(parent)!r} does not exist"
                )
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=self.busy_timeout)
        except sqlite3.Error as exc:
            raise StorageUnavailableError(
                f"cannot open the conversation database {self.path!r}: {exc}"
            ) from exc
        try:
            self._retrying(conn, self._prepare, None)
        except BaseException:
            conn.close()
            raise
        return conn

    def _disconnect(self, conn: sqlite3.Connection) -> None:
        conn.close()

    def _prepare(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute("PRAGMA journal_mode=WAL").fetchone()
            conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.DatabaseError as exc:
            if _is_busy(exc):
                raise
            raise StorageUnavailableError(
                f"cannot use {self.path!r} as the conversation database: {exc}"
            ) from exc

        def create(conn: sqlite3.Connection) -> None:
            for statement in _SCHEMA:
                conn.execute(statement)
            columns = {row[1] for row in conn.execute("PRAGMA table_info(trouper_heads)")}
            if "append_id" not in columns:  # a file written before append ids
                conn.execute("ALTER TABLE trouper_heads ADD COLUMN append_id TEXT")
            if self.import_legacy:
                self._import_legacy(conn)

        self._group_statements = group_supported(conn)
        try:
            _transaction(conn, create, write=True)
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                raise
            raise StorageUnavailableError(
                f"cannot use {self.path!r} as the conversation database: {exc}"
            ) from exc
        except sqlite3.DatabaseError as exc:
            raise StorageUnavailableError(
                f"cannot use {self.path!r} as the conversation database: {exc}"
            ) from exc

    def _import_legacy(self, conn: sqlite3.Connection) -> None:
        found = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (_LEGACY_TABLE,)
        ).fetchone()
        if found is None:
            return
        rows = conn.execute(
            f"SELECT id, messages, tools, tool_choice, interrupted, updated_at FROM {_LEGACY_TABLE}"
        ).fetchall()
        imported = 0
        for cid, messages, tools, tool_choice, interrupted, updated_at in rows:
            exists = conn.execute("SELECT 1 FROM trouper_heads WHERE id = ?", (cid,)).fetchone()
            if exists is not None or not isinstance(cid, str):
                continue
            parts = [messages, tools or "null", tool_choice or "null", interrupted]
            if not all(isinstance(p, str) for p in parts):
                log.warning("legacy conversation not imported", conversation_id=cid)
                continue
            text = '{{"messages":{},"tools":{},"tool_choice":{},"interrupted":{}}}'.format(*parts)
            try:
                snapshot = decode_snapshot(cid, text)
            except ConversationCorruptError as exc:
                log.warning("legacy conversation not imported", conversation_id=cid, error=str(exc))
                continue
            data = encode_snapshot(snapshot)
            at = float(updated_at) if isinstance(updated_at, int | float) else time.time()
            conn.execute(
                f"INSERT INTO trouper_heads (id, {_HEAD_COLUMNS}) "
                "VALUES (?, 1, 1, ?, ?, ?, 0, 0, ?)",
                (cid, at, at, len(snapshot.messages), len(data)),
            )
            conn.execute(
                "INSERT INTO trouper_snapshots (conversation_id, version, data) VALUES (?, 1, ?)",
                (cid, data),
            )
            imported += 1
        conn.execute(f"ALTER TABLE {_LEGACY_TABLE} RENAME TO {_LEGACY_RENAMED}")
        log.info("imported conversations from SQLiteContextStorage", count=imported)

    # ----------------------------------------------------------------- the thread side

    def _retrying(
        self, conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T], cid: str | None
    ) -> T:
        deadline = time.monotonic() + self.lock_timeout
        pause = 0.001
        while True:
            try:
                return fn(conn)
            except sqlite3.Error as exc:
                if not _is_busy(exc):
                    raise self._translate(exc, cid) from exc
                if time.monotonic() >= deadline:
                    raise StorageUnavailableError(
                        f"the conversation database {self.path!r} stayed locked by another "
                        f"connection for more than {self.lock_timeout:g} s"
                    ) from exc
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def _translate(self, exc: sqlite3.Error, cid: str | None) -> StorageError:
        text = str(exc)
        if isinstance(exc, sqlite3.DatabaseError) and any(d in text for d in _DAMAGED):
            if cid is not None:
                return ConversationCorruptError(cid, f"the database file is damaged ({text})")
            return StorageUnavailableError(
                f"the conversation database {self.path!r} is damaged: {text}"
            )
        if isinstance(exc, sqlite3.OperationalError | sqlite3.ProgrammingError):
            return StorageUnavailableError(f"the conversation database {self.path!r}: {text}")
        if cid is not None:
            return ConversationCorruptError(cid, f"the database refused it: {text}")
        return StorageError(f"the conversation database {self.path!r}: {text}")

    async def _run(
        self, cid: str | None, fn: Callable[[sqlite3.Connection], T], *, retry: bool = True
    ) -> T:
        """Run ``fn`` in the thread (with the lock retries unless it does its own)."""

        def job(conn: sqlite3.Connection) -> T:
            return self._retrying(conn, fn, cid) if retry else fn(conn)

        if self._state is not Phase.OPEN:
            raise StorageUnavailableError(self._not_open())
        try:
            return await self._worker.call(job)
        except WorkerClosedError:
            raise StorageUnavailableError(self._not_open()) from None

    async def _grouped(self, batcher: Batcher[sqlite3.Connection, I, R], item: I) -> R:
        """``item`` through ``batcher`` (carried out with the calls made meanwhile).

        Raises:
            StorageUnavailableError: The storage is not open.
        """
        if self._state is not Phase.OPEN:
            raise StorageUnavailableError(self._not_open())
        try:
            return await batcher.call(item)
        except WorkerClosedError:
            raise StorageUnavailableError(self._not_open()) from None

    def _not_open(self) -> str:
        if self._state is Phase.NEW:
            return f"{self!r} is not open: use it in 'async with'"
        return f"{self!r} is closed"

    def _head(self, conn: sqlite3.Connection, cid: str) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = conn.execute(
            f"SELECT {_HEAD_COLUMNS} FROM trouper_heads WHERE id = ?", (cid,)
        ).fetchone()
        if row is not None:
            for value, what in zip(row[:2], ("version", "snapshot version"), strict=False):
                check_int(cid, value, what)
        return row

    def _read(
        self, conn: sqlite3.Connection, cid: str
    ) -> tuple[int, int, Any, list[tuple[Any, Any]]] | None:
        """``(version, snapshot_version, snapshot data, log rows)`` in one read transaction."""

        def read(conn: sqlite3.Connection) -> tuple[int, int, Any, list[tuple[Any, Any]]] | None:
            head = self._head(conn, cid)
            if head is None:
                return None
            version, snapshot_version = head[0], head[1]
            data = None
            if snapshot_version > 0:
                row = conn.execute(
                    "SELECT version, data FROM trouper_snapshots WHERE conversation_id = ?",
                    (cid,),
                ).fetchone()
                if row is None or row[0] != snapshot_version:
                    raise ConversationCorruptError(
                        cid, f"its snapshot at version {snapshot_version} is missing"
                    )
                data = row[1]
            rows = conn.execute(
                "SELECT version, record FROM trouper_changes "
                "WHERE conversation_id = ? AND version > ? ORDER BY version",
                (cid, snapshot_version),
            ).fetchall()
            return version, snapshot_version, data, rows

        return _transaction(conn, read, write=False)

    @staticmethod
    def _fold(
        cid: str, version: int, snapshot_version: int, data: Any, rows: list[tuple[Any, Any]]
    ) -> ContextSnapshot:
        base = EMPTY if data is None else decode_snapshot(cid, _blob(cid, data, "its snapshot"))
        entries = []
        expected = snapshot_version + 1
        for row_version, record in rows:
            if check_int(cid, row_version, "change version") != expected:
                raise ConversationCorruptError(
                    cid, f"its change log has a gap: version {expected} is missing"
                )
            what = f"change log entry {expected}"
            entries.append(decode_entry(cid, expected, _blob(cid, record, what)))
            expected += 1
        if expected - 1 != version:
            raise ConversationCorruptError(
                cid, f"its version is {version} but its change log ends at {expected - 1}"
            )
        return fold_entries(cid, base, entries)

    def _lease_row(self, conn: sqlite3.Connection, cid: str) -> tuple[str, int, float] | None:
        row = conn.execute(
            "SELECT owner, token, expires_at FROM trouper_leases WHERE conversation_id = ?",
            (cid,),
        ).fetchone()
        if row is None:
            return None
        return lease_values(cid, *row)

    def _check_writer(
        self, conn: sqlite3.Connection, cid: str, lease: Lease | None, now: float
    ) -> tuple[str, int, float] | None:
        return check_lease_row(cid, self._lease_row(conn, cid), lease, now)

    # ----------------------------------------------------------------- reading

    async def load(self, conversation_id: str) -> StoredConversation | None:
        """The conversation and its version, or ``None`` (see
        :meth:`ConversationStorage.load`)."""
        cid = check_id(conversation_id)
        return await self._grouped(self._loads, cid)

    def _load_batch(
        self, conn: sqlite3.Connection, cids: list[str]
    ) -> list[outcome.Outcome[StoredConversation | None]]:
        """In the thread: the loads made together (many sessions opening at once), read in
        one statement when possible; an outcome each."""
        reads: dict[str, object] = {}
        if self._group_statements:
            try:
                reads = self._retrying(conn, lambda c: read_conversations(c, cids), None)
            except (StorageError, ValueError):
                reads = {}  # each on its own: its own error, if it has one
        results: list[outcome.Outcome[StoredConversation | None]] = []
        for cid in cids:
            results.append(outcome.capture(self._load_one, conn, cid, reads.get(cid, READ_ALONE)))
        return results

    def _load_one(
        self, conn: sqlite3.Connection, cid: str, read: object
    ) -> StoredConversation | None:
        got: tuple[int, int, Any, list[tuple[Any, Any]]] | None
        if read is READ_ALONE:
            got = self._retrying(conn, lambda c: self._read(c, cid), cid)
        else:
            got = cast("tuple[int, int, Any, list[tuple[Any, Any]]] | None", read)
        if got is None:
            return None
        snapshot = self._fold(cid, *got)
        return StoredConversation(cid, got[0], snapshot)

    def _info(self, cid: str, head: tuple[Any, ...], lease: Any, now: float) -> ConversationInfo:
        version, _, created, updated, messages, entries, log_bytes, snapshot_bytes = head
        owner = expires = None
        if lease is not None and lease[2] > now:
            owner, expires = lease[0], lease[2] - now
        return ConversationInfo(
            conversation_id=cid,
            version=version,
            created_at=check_number(cid, created, "creation time"),
            updated_at=check_number(cid, updated, "update time"),
            message_count=check_int(cid, messages, "message count"),
            stored_bytes=check_int(cid, log_bytes, "log size")
            + check_int(cid, snapshot_bytes, "size"),
            log_entries=check_int(cid, entries, "log length"),
            lease_owner=owner,
            lease_expires_in=expires,
        )

    async def info(self, conversation_id: str) -> ConversationInfo | None:
        """What is known about the conversation, or ``None``."""
        cid = check_id(conversation_id)

        def info(conn: sqlite3.Connection) -> ConversationInfo | None:
            def read(conn: sqlite3.Connection) -> ConversationInfo | None:
                head = self._head(conn, cid)
                if head is None:
                    return None
                return self._info(cid, head, self._lease_row(conn, cid), time.time())

            return _transaction(conn, read, write=False)

        return await self._run(cid, info)

    async def list_conversations(self) -> list[ConversationInfo]:
        """Every stored conversation, most recently updated first.

        Raises:
            ConversationCorruptError: A conversation's head row is not valid.
        """

        def listing(conn: sqlite3.Connection) -> list[ConversationInfo]:
            rows = conn.execute(
                f"SELECT h.id, {', '.join('h.' + c for c in _HEAD_COLUMNS.split(', '))}, "
                "l.owner, l.token, l.expires_at FROM trouper_heads AS h "
                "LEFT JOIN trouper_leases AS l ON l.conversation_id = h.id "
                "ORDER BY h.updated_at DESC, h.id"
            ).fetchall()
            now = time.time()
            out = []
            for row in rows:
                cid, head, lease = row[0], row[1:9], row[9:]
                check_int(str(cid), head[0], "version")
                out.append(self._info(str(cid), head, None if lease[0] is None else lease, now))
            return out

        return await self._run(None, listing)

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

        Appends made while the thread is busy are committed together: one transaction of a
        few statements per group (a refused append leaves the others alone), one wake-up of
        the loop for the group."""
        cid = check_id(conversation_id)
        item = _Append(
            cid,
            changes,
            check_version(expected_version),
            lease,
            check_append_id(append_id),
            # Light changes are encoded here: the thread would hold the GIL for it anyway,
            # and a group's worth of encoding there holds it (and the loop) for long.
            None if heavier_than(changes, OFF_LOOP_BYTES) else prepare_append(changes),
        )
        check_lease(cid, lease)
        version, due = await self._grouped(self._appends, item)
        if due and cid not in self._compaction_queued:
            self._compaction_queued.add(cid)
            self._worker.post(lambda conn: self._compact_quietly(conn, cid))
        return version

    def _append_batch(
        self, conn: sqlite3.Connection, items: list[_Append]
    ) -> list[outcome.Outcome[tuple[int, bool]]]:
        """In the thread: one transaction for ``items``; an outcome each.

        The whole group is checked and written in a few statements (see
        :mod:`actors.storage._sqlite_group` for why that matters); if that is not possible
        (an SQLite without JSON functions, or any database error on the way), each append
        gets its own savepoint, so a refused append leaves the others alone. A lock held
        elsewhere is retried for the whole group (nothing was committed)."""
        prepared: list[tuple[bytes, bool, int] | outcome.Error] = []
        for item in items:
            try:
                prepared.append(item.prepared or prepare_append(item.changes))
            except ValueError as exc:
                prepared.append(outcome.Error(exc))
        try:
            if self._group_statements:
                try:
                    return self._retrying(
                        conn,
                        lambda c: _transaction(
                            c, lambda c: self._write_group(c, items, prepared), write=True
                        ),
                        None,
                    )
                except _GroupFailed:
                    pass  # rolled back: every append on its own, each with its own answer
            return self._retrying(
                conn,
                lambda c: _transaction(
                    c, lambda c: self._write_each(c, items, prepared), write=True
                ),
                None,
            )
        except StorageError as exc:
            return [
                ready if isinstance(ready, outcome.Error) else outcome.Error(exc)
                for ready in prepared
            ]

    def _write_group(
        self,
        conn: sqlite3.Connection,
        items: list[_Append],
        prepared: list[tuple[bytes, bool, int] | outcome.Error],
    ) -> list[outcome.Outcome[tuple[int, bool]]]:
        """The group in a few statements: every head read at once, checked and advanced
        here, the log rows and the changed heads written at once.

        Raises:
            _GroupFailed: A database error other than a lock (the caller rolls back and
                writes each append on its own).
        """
        now = time.time()
        cids = list(dict.fromkeys(item.cid for item in items))
        try:
            heads = read_heads(conn, cids)
        except sqlite3.Error as exc:
            if _is_busy(exc):
                raise
            raise _GroupFailed from exc
        except ConversationCorruptError as exc:
            raise _GroupFailed from exc
        results: list[outcome.Outcome[tuple[int, bool]]] = []
        rows: list[tuple[str, int, bytes]] = []
        changed: dict[str, Head] = {}
        for item, ready in zip(items, prepared, strict=True):
            if isinstance(ready, outcome.Error):
                results.append(ready)
                continue
            record, reset, count = ready
            head = heads.get(item.cid)
            if head is None:  # pragma: no cover (json_each yields every id given)
                raise _GroupFailed(f"no head read for {item.cid!r}")
            try:
                version, due, write = self._apply(head, item, record, reset, count, now)
            except StorageError as exc:
                results.append(outcome.Error(exc))
                continue
            if write:
                rows.append((item.cid, version, record))
                changed[item.cid] = head
            results.append(outcome.Value((version, due)))
        try:
            write_group(conn, rows, list(changed.values()), now)
        except sqlite3.Error as exc:
            if _is_busy(exc):
                raise
            raise _GroupFailed from exc
        return results

    def _write_each(
        self,
        conn: sqlite3.Connection,
        items: list[_Append],
        prepared: list[tuple[bytes, bool, int] | outcome.Error],
    ) -> list[outcome.Outcome[tuple[int, bool]]]:
        """The group one append at a time, a savepoint each."""
        now = time.time()
        results: list[outcome.Outcome[tuple[int, bool]]] = []
        for item, ready in zip(items, prepared, strict=True):
            if isinstance(ready, outcome.Error):
                results.append(ready)
                continue
            conn.execute("SAVEPOINT trouper_append")
            try:
                value = self._append(conn, item, *ready, now)
            except (StorageError, sqlite3.Error) as exc:
                conn.execute("ROLLBACK TO trouper_append")
                conn.execute("RELEASE trouper_append")
                if isinstance(exc, sqlite3.Error):
                    if _is_busy(exc):
                        raise  # the whole group waits and runs again
                    exc = self._translate(exc, item.cid)
                results.append(outcome.Error(exc))
            else:
                conn.execute("RELEASE trouper_append")
                results.append(outcome.Value(value))
        return results

    def _apply(
        self, head: Head, item: _Append, record: bytes, reset: bool, count: int, now: float
    ) -> tuple[int, bool, bool]:
        return apply_append(
            head,
            expected=item.expected,
            lease=item.lease,
            append_id=item.append_id,
            record_bytes=len(record),
            reset=reset,
            count=count,
            now=now,
            policy=self.compaction,
        )

    def _append(
        self,
        conn: sqlite3.Connection,
        item: _Append,
        record: bytes,
        reset: bool,
        count: int,
        now: float,
    ) -> tuple[int, bool]:
        cid = item.cid
        row = conn.execute(_APPEND_READ, (cid,)).fetchone()
        head = Head.from_row(cid, row)
        stored = head.stored
        version, due, write = self._apply(head, item, record, reset, count, now)
        if not write:
            return version, due
        conn.execute(
            "INSERT INTO trouper_changes (conversation_id, version, record) VALUES (?, ?, ?)",
            (cid, version, record),
        )
        if not stored:
            conn.execute(
                f"INSERT INTO trouper_heads (id, {_HEAD_COLUMNS}, append_id) "
                "VALUES (?, ?, 0, ?, ?, ?, ?, ?, 0, ?)",
                (cid, version, now, now, head.message_count, head.log_entries, head.log_bytes,
                 item.append_id),
            )  # fmt: skip
        else:
            conn.execute(
                "UPDATE trouper_heads SET version = ?, updated_at = ?, message_count = ?, "
                "log_entries = ?, log_bytes = ?, append_id = ? WHERE id = ?",
                (version, now, head.message_count, head.log_entries, head.log_bytes,
                 item.append_id, cid),
            )  # fmt: skip
        return version, due

    async def delete(self, conversation_id: str, *, lease: Lease | None = None) -> bool:
        """Forget the conversation; whether it existed (see
        :meth:`ConversationStorage.delete`)."""
        cid = check_id(conversation_id)
        check_lease(cid, lease)

        def delete(conn: sqlite3.Connection) -> bool:
            def write(conn: sqlite3.Connection) -> bool:
                self._check_writer(conn, cid, lease, time.time())
                gone = conn.execute("DELETE FROM trouper_heads WHERE id = ?", (cid,)).rowcount
                conn.execute("DELETE FROM trouper_changes WHERE conversation_id = ?", (cid,))
                conn.execute("DELETE FROM trouper_snapshots WHERE conversation_id = ?", (cid,))
                return gone > 0

            return _transaction(conn, write, write=True)

        return await self._run(cid, delete)

    # ----------------------------------------------------------------- compaction

    async def compact(self, conversation_id: str) -> bool:
        """Fold the log into the snapshot now; whether there was anything to fold."""
        cid = check_id(conversation_id)
        return await self._run(cid, lambda conn: self._compact(conn, cid))

    def _compact_quietly(self, conn: sqlite3.Connection, cid: str) -> None:
        # The thread runs every job of this storage in order: the compaction sees every
        # append queued before it, and an append queued after it may queue another one.
        self._compaction_queued.discard(cid)
        try:
            self._retrying(conn, lambda c: self._compact(c, cid), cid)
        except StorageError as exc:
            log.warning("compaction failed", conversation_id=cid, error=str(exc))

    def _compact(self, conn: sqlite3.Connection, cid: str) -> bool:
        read = self._read(conn, cid)
        if read is None or not read[3]:
            return False
        version, snapshot_version, _, rows = read
        snapshot = self._fold(cid, *read)
        data = encode_snapshot(snapshot)
        folded_bytes = sum(len(record) for _, record in rows)

        def write(conn: sqlite3.Connection) -> bool:
            head = self._head(conn, cid)
            if head is None or head[1] != snapshot_version:
                return False  # deleted, or compacted by someone else meanwhile
            conn.execute(
                "INSERT OR REPLACE INTO trouper_snapshots (conversation_id, version, data) "
                "VALUES (?, ?, ?)",
                (cid, version, data),
            )
            conn.execute(
                "DELETE FROM trouper_changes WHERE conversation_id = ? AND version <= ?",
                (cid, version),
            )
            conn.execute(
                "UPDATE trouper_heads SET snapshot_version = ?, log_entries = log_entries - ?, "
                "log_bytes = log_bytes - ?, snapshot_bytes = ? WHERE id = ?",
                (version, len(rows), folded_bytes, len(data), cid),
            )
            return True

        return _transaction(conn, write, write=True)

    # ----------------------------------------------------------------- leases

    async def acquire_lease(self, conversation_id: str, owner: str, ttl: float) -> Lease:
        """Lease the conversation to ``owner`` for ``ttl`` seconds (see
        :meth:`ConversationStorage.acquire_lease`).

        Acquisitions made while the thread is busy (many sessions opening at once) are
        carried out together, in one transaction of a few statements."""
        item = (check_id(conversation_id), check_owner(owner), check_ttl(ttl))
        return await self._grouped(self._acquisitions, item)

    def _acquire_batch(
        self, conn: sqlite3.Connection, items: list[tuple[str, str, float]]
    ) -> list[outcome.Outcome[Lease]]:
        """In the thread: every acquisition of the group in one transaction, in order (a
        second one for the same conversation finds the first's lease); an outcome each."""

        def acquire_all(conn: sqlite3.Connection) -> list[outcome.Outcome[Lease]]:
            now = time.time()
            rows = self._lease_rows(conn, [cid for cid, _, _ in items])
            results: list[outcome.Outcome[Lease]] = []
            written: dict[str, tuple[str, int, float]] = {}
            for cid, who, seconds in items:
                try:
                    row = written.get(cid) or rows(cid)
                except StorageError as exc:
                    results.append(outcome.Error(exc))
                    continue
                if row is not None and row[2] > now:
                    results.append(outcome.Error(LeaseHeldError(cid, row[0], row[2] - now)))
                    continue
                token = 1 if row is None else row[1] + 1
                written[cid] = (who, token, now + seconds)
                results.append(outcome.Value(Lease(cid, who, token, seconds)))
            if self._group_statements:
                write_leases(conn, written)
            else:
                conn.executemany(
                    "INSERT OR REPLACE INTO trouper_leases (conversation_id, owner, token, "
                    "expires_at) VALUES (?, ?, ?, ?)",
                    [(cid, *row) for cid, row in written.items()],
                )
            return results

        try:
            return self._retrying(conn, lambda c: _transaction(c, acquire_all, write=True), None)
        except StorageError as exc:
            return [outcome.Error(exc) for _ in items]

    def _lease_rows(
        self, conn: sqlite3.Connection, cids: list[str]
    ) -> Callable[[str], tuple[str, int, float] | None]:
        """The lease rows of ``cids`` (one statement when possible): a function giving each
        one, checked (raising :class:`ConversationCorruptError` for a damaged row).

        Raises:
            sqlite3.Error: A lock held elsewhere.
        """
        if self._group_statements:
            try:
                found = read_leases(conn, cids)
            except sqlite3.Error as exc:
                if _is_busy(exc):
                    raise
            else:

                def checked(cid: str) -> tuple[str, int, float] | None:
                    row = found.get(cid)
                    return None if row is None else lease_values(cid, *row)

                return checked

        def each(cid: str) -> tuple[str, int, float] | None:
            try:
                return self._lease_row(conn, cid)
            except sqlite3.Error as exc:
                if _is_busy(exc):
                    raise
                raise self._translate(exc, cid) from exc

        return each

    async def renew_lease(self, lease: Lease, ttl: float | None = None) -> Lease:
        """Extend a live lease (see :meth:`ConversationStorage.renew_lease`).

        Renewals made while the thread is busy are carried out together, in one
        transaction of a few statements (the lease keeper renews many at once)."""
        check_lease(None, lease)
        seconds = lease.ttl if ttl is None else check_ttl(ttl)
        return await self._grouped(self._renewals, (lease, seconds))

    def _renew_batch(
        self, conn: sqlite3.Connection, items: list[tuple[Lease, float]]
    ) -> list[outcome.Outcome[Lease]]:
        """In the thread: every renewal of the group in one transaction; an outcome each."""

        def renew_all(conn: sqlite3.Connection) -> list[outcome.Outcome[Lease]]:
            now = time.time()
            rows = self._lease_rows(conn, [lease.conversation_id for lease, _ in items])
            results: list[outcome.Outcome[Lease]] = []
            renewed: list[tuple[str, float]] = []
            for lease, seconds in items:
                cid = lease.conversation_id
                try:
                    check_lease_row(cid, rows(cid), lease, now)
                except StorageError as exc:
                    results.append(outcome.Error(exc))
                    continue
                renewed.append((cid, now + seconds))
                results.append(outcome.Value(Lease(cid, lease.owner, lease.token, seconds)))
            if self._group_statements:
                extend_leases(conn, renewed)
            else:
                conn.executemany(
                    "UPDATE trouper_leases SET expires_at = ? WHERE conversation_id = ?",
                    [(expires, cid) for cid, expires in renewed],
                )
            return results

        try:
            return self._retrying(conn, lambda c: _transaction(c, renew_all, write=True), None)
        except StorageError as exc:
            return [outcome.Error(exc) for _ in items]

    async def release_lease(self, lease: Lease) -> bool:
        """End the lease now; whether it was still live."""
        cid = check_lease(None, lease)

        def release(conn: sqlite3.Connection) -> bool:
            def write(conn: sqlite3.Connection) -> bool:
                cursor = conn.execute(
                    "UPDATE trouper_leases SET expires_at = 0 WHERE conversation_id = ? "
                    "AND owner = ? AND token = ? AND expires_at > ?",
                    (cid, lease.owner, lease.token, time.time()),
                )
                return cursor.rowcount > 0

            return _transaction(conn, write, write=True)

        return await self._run(cid, release)
