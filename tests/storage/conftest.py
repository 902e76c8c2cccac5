"""Fixtures of the storage suite: one ``backend`` fixture parametrised over SQLite and Redis
that opens storages and reaches under them (raw rows and keys) to damage or measure what
they store. The real ``redis-server`` is the ``redis_server`` fixture of
``tests/conftest.py`` (the actor and CLI tests use it too)."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import coredis
import pytest

from actors.storage import (
    ConversationStorage,
    RedisConversationStorage,
    SQLiteConversationStorage,
)
from actors.storage.testing import RedisServer


@attrs.define
class Backend:
    """One backend under test: opens storages on the same data, and raw access to it."""

    name: str
    sqlite_path: Path | None = None
    redis_url: str | None = None
    prefix: str = ""
    #: Options every storage of this backend gets (the SQLite worker kind).
    options: dict[str, Any] = attrs.field(factory=dict)

    def storage(self, **options: Any) -> ConversationStorage:
        """A new (unopened) storage on this backend's data."""
        if self.sqlite_path is not None:
            return SQLiteConversationStorage(self.sqlite_path, **self.options, **options)
        assert self.redis_url is not None
        return RedisConversationStorage(self.redis_url, prefix=self.prefix, **options)

    @asynccontextmanager
    async def opened(self, **options: Any) -> AsyncIterator[ConversationStorage]:
        """A new storage, open for the ``async with`` block."""
        async with self.storage(**options) as storage:
            yield storage

    # ----------------------------------------------------------------- raw access

    def _sql(self, statement: str, *args: Any) -> list[tuple[Any, ...]]:
        assert self.sqlite_path is not None
        with sqlite3.connect(self.sqlite_path) as conn:
            rows = conn.execute(statement, args).fetchall()
        conn.close()
        return rows

    @asynccontextmanager
    async def _redis(self) -> AsyncIterator[coredis.Redis[bytes]]:
        assert self.redis_url is not None
        async with coredis.Redis.from_url(self.redis_url) as client:
            yield client

    def _key(self, cid: str, part: str) -> str:
        return f"{self.prefix}{{{cid}}}:{part}"

    async def set_entry(self, cid: str, version: int, data: bytes) -> None:
        """Overwrite the stored log entry of ``version`` (no compaction must have run)."""
        if self.sqlite_path is not None:
            self._sql(
                "UPDATE trouper_changes SET record = ? WHERE conversation_id = ? AND version = ?",
                data,
                cid,
                version,
            )
            return
        async with self._redis() as client:
            await client.lset(self._key(cid, "log"), version - 1, data)

    async def set_head_version(self, cid: str, value: str) -> None:
        """Overwrite the stored version with ``value`` (a string: the wrong shape)."""
        if self.sqlite_path is not None:
            self._sql("UPDATE trouper_heads SET version = ? WHERE id = ?", value, cid)
            return
        async with self._redis() as client:
            await client.hset(self._key(cid, "meta"), {"version": value})

    async def entries(self, cid: str) -> list[bytes]:
        """The stored log entries, oldest first."""
        if self.sqlite_path is not None:
            rows = self._sql(
                "SELECT record FROM trouper_changes WHERE conversation_id = ? ORDER BY version",
                cid,
            )
            return [bytes(r[0]) for r in rows]
        async with self._redis() as client:
            return list(await client.lrange(self._key(cid, "log"), 0, -1))

    async def bytes_written_by(self, write: Callable[[], Awaitable[object]]) -> int:
        """How many bytes ``write`` wrote, measured under the storage.

        SQLite: the size of every row that is new or different afterwards (SQLite rewrites
        a row whole, so a row that changed counts whole). Redis: the bytes the server
        received meanwhile (``total_net_input_bytes``, which also counts one ``INFO``)."""
        if self.sqlite_path is not None:
            before = self._rows()
            await write()
            return sum(len(row) for row in self._rows() - before)
        async with self._redis() as client:
            first = str((await client.info("stats"))["total_net_input_bytes"])
            await write()
            second = str((await client.info("stats"))["total_net_input_bytes"])
        return int(second) - int(first)

    def _rows(self) -> set[bytes]:
        rows = set()
        for table in ("trouper_heads", "trouper_changes", "trouper_snapshots", "trouper_leases"):
            for row in self._sql(f"SELECT * FROM {table}"):
                rows.add(repr((table, row)).encode())
        return rows


@pytest.fixture(params=["sqlite", "sqlite-thread", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Each backend in turn, on fresh data (a new file; a new key prefix). SQLite runs
    twice: its database work in a worker process (the default), and on a thread."""
    if request.param == "sqlite":
        return Backend("sqlite", sqlite_path=tmp_path / "conversations.db")
    if request.param == "sqlite-thread":
        path = tmp_path / "conversations.db"
        return Backend("sqlite", sqlite_path=path, options={"worker": "thread"})
    server: RedisServer = request.getfixturevalue("redis_server")
    return Backend("redis", redis_url=server.url, prefix=f"test-{uuid.uuid4().hex[:12]}:")
