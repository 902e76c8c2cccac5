"""How the SQLite backend commits a group of appends in a handful of statements.

Why statements, not appends, are what to count: Python's ``sqlite3`` releases the GIL around
every step of every statement and must take it back afterwards. While the trio loop is busy
(hundreds of sessions streaming), each take-back can wait for CPython's switch interval
(5 ms), so a thread that runs five statements per append spends most of its time waiting
for the GIL, and every session waiting for its append waits with it. A group therefore
costs a fixed number of statements, whatever its size:

- one read of every head and lease of the group (``json_each`` in, ``json_group_array``
  out: one row, one step);
- the checks and the new heads computed here, in Python (appends to the same conversation
  in one group see each other's effect, in order);
- one multi-row ``INSERT`` of the log rows and one multi-row upsert of the heads (per
  chunk of the database's bound-parameter limit).

This needs SQLite's JSON functions and ``ON CONFLICT ... DO UPDATE`` (3.24+): a library
without them uses the per-append path, as does a group that meets any database error (so
that each append gets its own answer).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import attrs

from ._contract import CompactionPolicy, Lease
from ._errors import (
    ConversationConflictError,
    ConversationCorruptError,
    LeaseHeldError,
    LeaseLostError,
)

__all__ = [
    "READ_ALONE",
    "Head",
    "apply_append",
    "check_int",
    "check_lease_row",
    "check_number",
    "extend_leases",
    "group_supported",
    "lease_values",
    "read_conversations",
    "read_heads",
    "read_leases",
    "write_group",
    "write_leases",
]

#: Every head and lease of a group in one row (a JSON array of arrays, in ``json_each``'s
#: order): id, version, message count, log entries, log bytes, snapshot bytes, append id,
#: lease owner, lease token, lease expiry; NULL where missing.
_GROUP_READ = (
    "SELECT json_group_array(json_array(k.value, h.version, h.message_count, h.log_entries, "
    "h.log_bytes, h.snapshot_bytes, h.append_id, l.owner, l.token, l.expires_at)) "
    "FROM json_each(?) AS k "
    "LEFT JOIN trouper_heads AS h ON h.id = k.value "
    "LEFT JOIN trouper_leases AS l ON l.conversation_id = k.value"
)

_HEAD_UPSERT = (
    "INSERT INTO trouper_heads (id, version, snapshot_version, created_at, updated_at, "
    "message_count, log_entries, log_bytes, snapshot_bytes, append_id) VALUES {} "
    "ON CONFLICT (id) DO UPDATE SET version = excluded.version, "
    "updated_at = excluded.updated_at, message_count = excluded.message_count, "
    "log_entries = excluded.log_entries, log_bytes = excluded.log_bytes, "
    "append_id = excluded.append_id"
)
_LEASES_READ = (
    "SELECT json_group_array(json_array(l.conversation_id, l.owner, l.token, l.expires_at)) "
    "FROM json_each(?) AS k JOIN trouper_leases AS l ON l.conversation_id = k.value"
)
_LEASES_EXTEND = (
    "UPDATE trouper_leases SET expires_at = (SELECT json_extract(k.value, '$[1]') "
    "FROM json_each(?1) AS k WHERE json_extract(k.value, '$[0]') = conversation_id) "
    "WHERE conversation_id IN (SELECT json_extract(value, '$[0]') FROM json_each(?1))"
)
#: Leases extended per statement.
_EXTEND_CHUNK = 64
_LEASES_WRITE = (
    "INSERT OR REPLACE INTO trouper_leases (conversation_id, owner, token, expires_at) "
    "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), "
    "json_extract(value, '$[2]'), json_extract(value, '$[3]') FROM json_each(?)"
)
#: Every conversation of a group in one row: id, version, snapshot version, the snapshot's
#: version, data (as text) and type, and the log after the snapshot as JSON arrays (texts)
#: of versions, records (as text) and their types.
_CONVERSATIONS_READ = (
    "SELECT json_group_array(json_array(k.value, h.version, h.snapshot_version, "
    "s.version, CAST(s.data AS TEXT), typeof(s.data), "
    "(SELECT json_group_array(c.version) FROM (SELECT version FROM trouper_changes "
    " WHERE conversation_id = k.value AND version > h.snapshot_version ORDER BY version) AS c), "
    "(SELECT json_group_array(c.record) FROM (SELECT CAST(record AS TEXT) AS record "
    " FROM trouper_changes WHERE conversation_id = k.value AND version > h.snapshot_version "
    " ORDER BY version) AS c), "
    "(SELECT json_group_array(c.kind) FROM (SELECT typeof(record) AS kind "
    " FROM trouper_changes WHERE conversation_id = k.value AND version > h.snapshot_version "
    " ORDER BY version) AS c))) "
    "FROM json_each(?) AS k LEFT JOIN trouper_heads AS h ON h.id = k.value "
    "LEFT JOIN trouper_snapshots AS s ON s.conversation_id = k.value"
)
_CHANGES_INSERT = "INSERT INTO trouper_changes (conversation_id, version, record) VALUES {}"


def check_int(conversation_id: str, value: object, what: str) -> int:
    """``value`` if it is an integer.

    Raises:
        ConversationCorruptError: It is not (``what`` names it).
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConversationCorruptError(conversation_id, f"its {what} is {value!r}, not an integer")
    return value


def check_number(conversation_id: str, value: object, what: str) -> float:
    """``value`` as a float if it is a number.

    Raises:
        ConversationCorruptError: It is not (``what`` names it).
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConversationCorruptError(conversation_id, f"its {what} is {value!r}, not a number")
    return float(value)


def lease_values(
    cid: str, owner: object, token: object, expires_at: object
) -> tuple[str, int, float]:
    """A lease row's values, checked: ``(owner, token, expires_at)``.

    Raises:
        ConversationCorruptError: A value of the wrong type.
    """
    if not isinstance(owner, str):
        raise ConversationCorruptError(cid, f"its lease owner is {owner!r}, not a string")
    return (
        owner,
        check_int(cid, token, "lease token"),
        check_number(cid, expires_at, "lease expiry"),
    )


def check_lease_row(
    cid: str, row: tuple[str, int, float] | None, lease: Lease | None, now: float
) -> tuple[str, int, float] | None:
    """Whether a writer holding ``lease`` (``None``: no lease) may write at ``now``.

    Raises:
        LeaseHeldError: No lease given, and someone else holds a live one.
        LeaseLostError: The lease given is not the live one.
    """
    live = row is not None and row[2] > now
    if lease is None:
        if live:
            assert row is not None
            raise LeaseHeldError(cid, row[0], row[2] - now)
        return row
    if row is None:
        raise LeaseLostError(cid, lease.owner, lease.token, "the conversation has no lease")
    if (row[0], row[1]) != (lease.owner, lease.token):
        raise LeaseLostError(
            cid, lease.owner, lease.token, f"taken over by {row[0]!r} with lease {row[1]}"
        )
    if not live:
        raise LeaseLostError(cid, lease.owner, lease.token, f"it expired {now - row[2]:.3g} s ago")
    return row


@attrs.define(slots=True)
class Head:
    """A conversation's head as an append sees it (``version == 0``: none stored yet), and
    its lease row; updated in place by :func:`apply_append`."""

    cid: str
    version: int
    message_count: Any
    log_entries: Any
    log_bytes: Any
    snapshot_bytes: Any
    append_id: Any
    lease: tuple[Any, Any, Any] | None
    #: Whether a head row exists in the database (else the append inserts one).
    stored: bool

    @classmethod
    def from_row(cls, cid: str, row: Sequence[Any]) -> Head:
        """From ``(version, message count, log entries, log bytes, snapshot bytes, append
        id, lease owner, lease token, lease expiry)``, NULLs where missing.

        Raises:
            ConversationCorruptError: The stored version is not an integer.
        """
        stored = row[0] is not None
        version = check_int(cid, row[0], "version") if stored else 0
        lease = None if row[6] is None else (row[6], row[7], row[8])
        return cls(cid, version, row[1], row[2], row[3], row[4], row[5], lease, stored)


def apply_append(
    head: Head,
    *,
    expected: int,
    lease: Lease | None,
    append_id: str | None,
    record_bytes: int,
    reset: bool,
    count: int,
    now: float,
    policy: CompactionPolicy,
) -> tuple[int, bool, bool]:
    """Check one append against ``head`` and apply it there: ``(version, compaction due,
    whether a log row is to be written)`` -- no row when the same append (by
    ``append_id``) was committed already.

    Raises:
        LeaseHeldError, LeaseLostError: The writer may not write.
        ConversationConflictError: ``expected`` is not the head's version.
        ConversationCorruptError: A stored value of the wrong type.
    """
    cid = head.cid
    row = None if head.lease is None else lease_values(cid, *head.lease)
    check_lease_row(cid, row, lease, now)
    current = head.version
    if current != expected:
        stored_id = head.append_id if isinstance(head.append_id, str) else None
        retried = append_id is not None and stored_id == append_id
        if retried and current == expected + 1:  # this append, committed already
            due = policy.due(
                check_int(cid, head.log_entries, "log length"),
                check_int(cid, head.log_bytes, "log size"),
                check_int(cid, head.snapshot_bytes, "size"),
            )
            return current, due, False
        raise ConversationConflictError(cid, expected, current, head_append_id=stored_id)
    if head.stored or current > 0:
        messages = count if reset else check_int(cid, head.message_count, "message count") + count
        entries = check_int(cid, head.log_entries, "log length") + 1
        log_bytes = check_int(cid, head.log_bytes, "log size") + record_bytes
        snapshot_bytes = check_int(cid, head.snapshot_bytes, "snapshot size")
    else:
        messages, entries, log_bytes, snapshot_bytes = count, 1, record_bytes, 0
    head.version = current + 1
    head.message_count, head.log_entries, head.log_bytes = messages, entries, log_bytes
    head.snapshot_bytes, head.append_id = snapshot_bytes, append_id
    return head.version, policy.due(entries, log_bytes, snapshot_bytes), True


def group_supported(conn: sqlite3.Connection) -> bool:
    """Whether this SQLite library has what :func:`read_heads` and :func:`write_group`
    use (JSON functions, upsert)."""
    if sqlite3.sqlite_version_info < (3, 24, 0):
        return False
    try:
        conn.execute("SELECT json_group_array(json_array(value)) FROM json_each('[1]')").fetchone()
    except sqlite3.Error:
        return False
    return True


def read_heads(conn: sqlite3.Connection, cids: Sequence[str]) -> dict[str, Head]:
    """The heads and leases of ``cids`` in one statement (one step of the database).

    Raises:
        sqlite3.Error: The statement failed (e.g. a stored value JSON cannot hold).
        ConversationCorruptError: A stored version is not an integer.
    """
    row = conn.execute(_GROUP_READ, (json.dumps(list(cids)),)).fetchone()
    heads: dict[str, Head] = {}
    for entry in json.loads(row[0]) if row and row[0] else ():
        cid = entry[0]
        heads[cid] = Head.from_row(cid, entry[1:])
    return heads


def _chunks(rows: Sequence[tuple[Any, ...]], size: int) -> Iterator[Sequence[tuple[Any, ...]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def _many(conn: sqlite3.Connection, template: str, rows: Sequence[tuple[Any, ...]]) -> None:
    """``template`` with one ``(?, ...)`` per row, in as few statements as the bound
    parameter limit allows."""
    if not rows:
        return
    width = len(rows[0])
    per = max(1, min(conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER), 32766) // width)
    marks = "(" + ", ".join("?" * width) + ")"
    for chunk in _chunks(rows, per):
        params = [value for row in chunk for value in row]
        conn.execute(template.format(", ".join([marks] * len(chunk))), params)


def write_group(
    conn: sqlite3.Connection,
    changes: Sequence[tuple[str, int, bytes]],
    heads: Sequence[Head],
    now: float,
) -> None:
    """Insert the log rows ``(conversation id, version, record)`` and write the heads that
    changed, in a few multi-row statements (inside the caller's transaction).

    Raises:
        sqlite3.Error: A statement failed (nothing of the group is to be committed).
    """
    _many(conn, _CHANGES_INSERT, changes)
    _many(
        conn,
        _HEAD_UPSERT,
        [
            (h.cid, h.version, 0, now, now, h.message_count, h.log_entries, h.log_bytes,
             h.snapshot_bytes, h.append_id)
            for h in heads
        ],
    )  # fmt: skip


def read_leases(conn: sqlite3.Connection, cids: Sequence[str]) -> dict[str, tuple[Any, Any, Any]]:
    """The lease rows ``(owner, token, expires_at)`` of ``cids`` that have one, unchecked,
    in one statement.

    Raises:
        sqlite3.Error: The statement failed (e.g. a stored value JSON cannot hold).
    """
    row = conn.execute(_LEASES_READ, (json.dumps(list(dict.fromkeys(cids))),)).fetchone()
    return {e[0]: (e[1], e[2], e[3]) for e in (json.loads(row[0]) if row and row[0] else ())}


def extend_leases(conn: sqlite3.Connection, expiries: Sequence[tuple[str, float]]) -> None:
    """Set the expiry of each ``(conversation id, expires_at)`` in one statement (the last
    one given wins for an id given twice).

    Raises:
        sqlite3.Error: The statement failed.
    """
    latest = list(dict(expiries).items())
    # The statement looks each row's expiry up in the list: chunks keep that linear.
    for start in range(0, len(latest), _EXTEND_CHUNK):
        conn.execute(_LEASES_EXTEND, (json.dumps(latest[start : start + _EXTEND_CHUNK]),))


def write_leases(conn: sqlite3.Connection, leases: Mapping[str, tuple[str, int, float]]) -> None:
    """Write each conversation's lease ``(owner, token, expires_at)`` in one statement.

    Raises:
        sqlite3.Error: The statement failed.
    """
    if leases:
        rows = [[cid, owner, token, expires] for cid, (owner, token, expires) in leases.items()]
        conn.execute(_LEASES_WRITE, (json.dumps(rows),))


#: What :func:`read_conversations` gives for a conversation to read on its own.
READ_ALONE = object()

_TEXTUAL = ("text", "blob")


def _array(value: object) -> list[Any]:
    """A JSON array nested by a subquery: a list, or its text (SQLite versions differ on
    whether a subquery keeps the JSON subtype)."""
    if isinstance(value, str):
        value = json.loads(value)
    return value if isinstance(value, list) else []


def read_conversations(conn: sqlite3.Connection, cids: Sequence[str]) -> dict[str, object]:
    """Every conversation of ``cids`` in one statement: for each, ``None`` (not stored),
    ``(version, snapshot version, snapshot data, [(version, record), ...])`` as the
    per-conversation read gives it, or :data:`READ_ALONE` when anything is unusual (a
    value of an odd type, a missing snapshot, a gap): the per-conversation read then
    reports it precisely.

    Raises:
        sqlite3.Error: The statement failed.
        ValueError: Its answer is not the JSON expected (read each one alone).
    """
    row = conn.execute(_CONVERSATIONS_READ, (json.dumps(list(dict.fromkeys(cids))),)).fetchone()
    out: dict[str, object] = {}
    for entry in json.loads(row[0]) if row and row[0] else ():
        cid, version, snapshot_version, s_version, data, data_kind = entry[:6]
        if version is None:
            out[cid] = None
            continue
        versions, records, kinds = (_array(value) for value in entry[6:9])
        usable = (
            type(version) is int
            and type(snapshot_version) is int
            and (snapshot_version == 0 or (s_version == snapshot_version and data_kind in _TEXTUAL))
            and all(kind in _TEXTUAL for kind in kinds)
            and versions == list(range(snapshot_version + 1, version + 1))
            and len(records) == len(versions)
        )
        if not usable:
            out[cid] = READ_ALONE
            continue
        snapshot = data if snapshot_version > 0 else None
        out[cid] = (version, snapshot_version, snapshot, list(zip(versions, records, strict=True)))
    return out
