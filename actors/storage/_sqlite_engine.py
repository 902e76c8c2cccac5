"""The SQLite backend's database work, synchronous: :class:`SQLiteEngine`.

The engine owns one connection and does every read and write of
:class:`~actors.storage.SQLiteConversationStorage`; the storage only checks arguments and
hands the engine requests. It runs where the storage puts it: in a process of its own (the
default, see :mod:`actors.storage._sqlite_process`) or on a thread of the storage's process
(:mod:`actors.storage._sqlite_thread`). So that the worker process starts in tens of
milliseconds, this module imports nothing of trio, structlog or the rest of the package
beyond the storage's own data modules; its log lines go through the ``note`` callback.

Tables (none is ever rewritten whole by an append):

- ``trouper_heads``: one small row per conversation (version, counters, times);
- ``trouper_changes``: the log, one row per append ``(conversation_id, version, record)``;
- ``trouper_snapshots``: the fold of the log up to a version, written by compaction only;
- ``trouper_leases``: owner, fencing token and expiry per conversation id (kept when the
  conversation is deleted, so tokens keep increasing).
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import attrs
import outcome

from .._context import ContextSnapshot
from ._contract import CompactionPolicy, ConversationInfo, Lease, StoredConversation
from ._errors import (
    ConversationCorruptError,
    LeaseHeldError,
    StorageError,
    StorageUnavailableError,
)
from ._fold import EMPTY, decode_entry, decode_snapshot, encode_snapshot, fold_entries
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

__all__ = ["BATCHED", "AppendRequest", "Note", "SQLiteEngine"]

T = TypeVar("T")

#: Logs a line where the storage's logs go: ``note(level, event, fields)``.
Note = Callable[[str, str, dict[str, Any]], None]

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


@attrs.frozen(slots=True)
class AppendRequest:
    """One append, as the engine takes it: checked and encoded by the storage.

    Attributes:
        cid: The conversation.
        expected: The version the append is based on.
        lease: The writer's lease, if any.
        append_id: The append's id, if any.
        record: The encoded log entry (``prepare_append``).
        reset: Whether the changes replace the messages (for the head's message count).
        count: The message count's change (or the new count after a reset).
    """

    cid: str
    expected: int
    lease: Lease | None
    append_id: str | None
    record: bytes
    reset: bool
    count: int


#: The operations that are carried out a group at a time (``SQLiteEngine.run_group``);
#: every other one is run alone (``SQLiteEngine.run``).
BATCHED = frozenset({"load", "append", "acquire", "renew", "release"})


def _ignore(level: str, event: str, fields: dict[str, Any]) -> None:
    """The default ``note``: log lines are dropped."""


@attrs.define(eq=False)
class SQLiteEngine:
    """The database work of one storage, on one connection; every method blocks.

    Requests come as ``(operation, argument)``: :meth:`run` for one, :meth:`run_group` for
    the requests of one :data:`BATCHED` operation made together (one transaction of a few
    statements, an :class:`outcome.Outcome` each). Appends whose conversation is due for
    compaction are remembered; :meth:`compact_due` folds them (run it after answering).

    Args:
        path: The database file, or ``":memory:"``.
        lock_timeout: Longest wait for a lock held by another connection, in seconds.
        busy_timeout: SQLite's own wait per attempt, in seconds.
        compaction: When a log is folded into its snapshot.
        import_legacy: Import the table of ``SQLiteContextStorage`` when opening.
        note: Where log lines go.
    """

    path: str
    lock_timeout: float
    busy_timeout: float
    compaction: CompactionPolicy
    import_legacy: bool = True
    note: Note = _ignore
    _conn: sqlite3.Connection | None = attrs.field(default=None, init=False)
    #: Whether appends are written a group at a time (see ``_sqlite_group``).
    _group_statements: bool = attrs.field(default=False, init=False)
    _due: dict[str, None] = attrs.field(factory=dict, init=False)

    # ----------------------------------------------------------------- lifetime

    def open(self) -> None:
        """Connect, switch to WAL, create the tables, import a legacy table.

        Raises:
            StorageUnavailableError: The directory does not exist, the file is not an SQLite
                database, or it stayed locked.
        """
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
        self._conn = conn

    def close(self) -> None:
        """Close the connection (compactions still due are left for a later append)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    @property
    def conn(self) -> sqlite3.Connection:
        """The open connection.

        Raises:
            StorageUnavailableError: Not open.
        """
        if self._conn is None:
            raise StorageUnavailableError(f"the conversation database {self.path!r} is not open")
        return self._conn

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
            self._transaction(conn, create, write=True)
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
                self.note("warning", "legacy conversation not imported", {"conversation_id": cid})
                continue
            text = '{{"messages":{},"tools":{},"tool_choice":{},"interrupted":{}}}'.format(*parts)
            try:
                snapshot = decode_snapshot(cid, text)
            except ConversationCorruptError as exc:
                self.note(
                    "warning",
                    "legacy conversation not imported",
                    {"conversation_id": cid, "error": str(exc)},
                )
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
        self.note("info", "imported conversations from SQLiteContextStorage", {"count": imported})

    # ----------------------------------------------------------------- requests

    def run(self, op: str, arg: Any) -> Any:
        """Carry out one request of an operation not in :data:`BATCHED`: ``info`` (a
        conversation id), ``list`` (ignored), ``delete`` (``(id, lease)``) or ``compact`` (an
        id). Lock waits are retried up to ``lock_timeout``.

        Raises:
            StorageError: What the operation raises (never an ``sqlite3`` error).
            ValueError: An unknown operation.
        """
        if op == "info":
            return self._retrying(self.conn, lambda c: self._info_of(c, arg), arg)
        if op == "list":
            return self._retrying(self.conn, self._listing, None)
        if op == "delete":
            cid, lease = arg
            return self._retrying(self.conn, lambda c: self._delete(c, cid, lease), cid)
        if op == "compact":
            return self._retrying(self.conn, lambda c: self._compact(c, arg), arg)
        raise ValueError(f"unknown storage operation {op!r}")

    def run_group(self, op: str, items: list[Any]) -> list[outcome.Outcome[Any]]:
        """Carry out the requests of one :data:`BATCHED` operation made together; an outcome
        each, in order: ``load`` (ids), ``append`` (:class:`AppendRequest`), ``acquire``
        (``(id, owner, ttl)``), ``renew`` (``(lease, ttl)``), ``release`` (leases).

        Raises:
            ValueError: An unknown operation.
        """
        if op == "append":
            return self._append_batch(self.conn, items)
        if op == "load":
            return self._load_batch(self.conn, items)
        if op == "acquire":
            return self._acquire_batch(self.conn, items)
        if op == "renew":
            return self._renew_batch(self.conn, items)
        if op == "release":
            return self._release_batch(self.conn, items)
        raise ValueError(f"unknown storage operation {op!r}")

    @property
    def compaction_due(self) -> bool:
        """Whether an append left a conversation due for compaction."""
        return bool(self._due)

    def compact_due(self) -> None:
        """Fold the logs of the conversations whose appends asked for it (a failure is a
        log line: the append it follows was committed)."""
        while self._due:
            cid = next(iter(self._due))
            del self._due[cid]
            try:
                self._retrying(self.conn, functools.partial(self._compact, cid=cid), cid)
            except StorageError as exc:
                self.note(
                    "warning", "compaction failed", {"conversation_id": cid, "error": str(exc)}
                )

    # ----------------------------------------------------------------- helpers

    def _transaction(
        self, conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T], *, write: bool
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
                    self.note("warning", "rollback failed", {"error": repr(exc)})
            raise
        return result

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

        return self._transaction(conn, read, write=False)

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

    # ----------------------------------------------------------------- reading

    def _load_batch(
        self, conn: sqlite3.Connection, cids: list[str]
    ) -> list[outcome.Outcome[StoredConversation | None]]:
        """The loads made together (many sessions opening at once), read in one statement
        when possible; an outcome each."""
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

    def _info_of(self, conn: sqlite3.Connection, cid: str) -> ConversationInfo | None:
        def read(conn: sqlite3.Connection) -> ConversationInfo | None:
            head = self._head(conn, cid)
            if head is None:
                return None
            return self._info(cid, head, self._lease_row(conn, cid), time.time())

        return self._transaction(conn, read, write=False)

    def _listing(self, conn: sqlite3.Connection) -> list[ConversationInfo]:
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

    # ----------------------------------------------------------------- writing

    def _append_batch(
        self, conn: sqlite3.Connection, items: list[AppendRequest]
    ) -> list[outcome.Outcome[tuple[int, bool]]]:
        """One transaction for ``items``; an outcome each.

        The whole group is checked and written in a few statements (see
        :mod:`actors.storage._sqlite_group`); if that is not possible (an SQLite without
        JSON functions, or any database error on the way), each append gets its own
        savepoint, so a refused append leaves the others alone. A lock held elsewhere is
        retried for the whole group (nothing was committed)."""
        try:
            if self._group_statements:
                try:
                    results = self._retrying(
                        conn,
                        lambda c: self._transaction(
                            c, lambda c: self._write_group(c, items), write=True
                        ),
                        None,
                    )
                except _GroupFailed:
                    pass  # rolled back: every append on its own, each with its own answer
                else:
                    return self._note_due(items, results)
            results = self._retrying(
                conn,
                lambda c: self._transaction(c, lambda c: self._write_each(c, items), write=True),
                None,
            )
            return self._note_due(items, results)
        except StorageError as exc:
            return [outcome.Error(exc) for _ in items]

    def _note_due(
        self, items: list[AppendRequest], results: list[outcome.Outcome[tuple[int, bool]]]
    ) -> list[outcome.Outcome[tuple[int, bool]]]:
        for item, result in zip(items, results, strict=True):
            if isinstance(result, outcome.Value) and result.value[1]:
                self._due[item.cid] = None
        return results

    def _write_group(
        self, conn: sqlite3.Connection, items: list[AppendRequest]
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
        for item in items:
            head = heads.get(item.cid)
            if head is None:  # pragma: no cover (json_each yields every id given)
                raise _GroupFailed(f"no head read for {item.cid!r}")
            try:
                version, due, write = self._apply(head, item, now)
            except StorageError as exc:
                results.append(outcome.Error(exc))
                continue
            if write:
                rows.append((item.cid, version, item.record))
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
        self, conn: sqlite3.Connection, items: list[AppendRequest]
    ) -> list[outcome.Outcome[tuple[int, bool]]]:
        """The group one append at a time, a savepoint each."""
        now = time.time()
        results: list[outcome.Outcome[tuple[int, bool]]] = []
        for item in items:
            conn.execute("SAVEPOINT trouper_append")
            try:
                value = self._append(conn, item, now)
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

    def _apply(self, head: Head, item: AppendRequest, now: float) -> tuple[int, bool, bool]:
        return apply_append(
            head,
            expected=item.expected,
            lease=item.lease,
            append_id=item.append_id,
            record_bytes=len(item.record),
            reset=item.reset,
            count=item.count,
            now=now,
            policy=self.compaction,
        )

    def _append(
        self, conn: sqlite3.Connection, item: AppendRequest, now: float
    ) -> tuple[int, bool]:
        cid = item.cid
        row = conn.execute(_APPEND_READ, (cid,)).fetchone()
        head = Head.from_row(cid, row)
        stored = head.stored
        version, due, write = self._apply(head, item, now)
        if not write:
            return version, due
        conn.execute(
            "INSERT INTO trouper_changes (conversation_id, version, record) VALUES (?, ?, ?)",
            (cid, version, item.record),
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

    def _delete(self, conn: sqlite3.Connection, cid: str, lease: Lease | None) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            check_lease_row(cid, self._lease_row(conn, cid), lease, time.time())
            gone = conn.execute("DELETE FROM trouper_heads WHERE id = ?", (cid,)).rowcount
            conn.execute("DELETE FROM trouper_changes WHERE conversation_id = ?", (cid,))
            conn.execute("DELETE FROM trouper_snapshots WHERE conversation_id = ?", (cid,))
            return gone > 0

        return self._transaction(conn, write, write=True)

    # ----------------------------------------------------------------- compaction

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

        return self._transaction(conn, write, write=True)

    # ----------------------------------------------------------------- leases

    def _acquire_batch(
        self, conn: sqlite3.Connection, items: list[tuple[str, str, float]]
    ) -> list[outcome.Outcome[Lease]]:
        """Every acquisition of the group in one transaction, in order (a second one for
        the same conversation finds the first's lease); an outcome each."""

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
            return self._retrying(
                conn, lambda c: self._transaction(c, acquire_all, write=True), None
            )
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

    def _renew_batch(
        self, conn: sqlite3.Connection, items: list[tuple[Lease, float]]
    ) -> list[outcome.Outcome[Lease]]:
        """Every renewal of the group in one transaction; an outcome each."""

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
            return self._retrying(conn, lambda c: self._transaction(c, renew_all, write=True), None)
        except StorageError as exc:
            return [outcome.Error(exc) for _ in items]

    def _release_batch(
        self, conn: sqlite3.Connection, leases: list[Lease]
    ) -> list[outcome.Outcome[bool]]:
        """Every release of the group (sessions ending together) in one transaction;
        whether each lease was still live."""

        def release_all(conn: sqlite3.Connection) -> list[outcome.Outcome[bool]]:
            now = time.time()
            results: list[outcome.Outcome[bool]] = []
            for lease in leases:
                cursor = conn.execute(
                    "UPDATE trouper_leases SET expires_at = 0 WHERE conversation_id = ? "
                    "AND owner = ? AND token = ? AND expires_at > ?",
                    (lease.conversation_id, lease.owner, lease.token, now),
                )
                results.append(outcome.Value(cursor.rowcount > 0))
            return results

        try:
            return self._retrying(
                conn, lambda c: self._transaction(c, release_all, write=True), None
            )
        except StorageError as exc:
            return [outcome.Error(exc) for _ in leases]
