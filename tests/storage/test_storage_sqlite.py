"""What only the SQLite backend has: a file that can be damaged, another connection holding
its lock, the legacy table of ``SQLiteContextStorage``, the worker thread."""

from __future__ import annotations

import os
import random
import sqlite3
import threading
from pathlib import Path

import orjson
import pytest
import trio

from actors import OpenAILLMContext
from actors.storage import (
    AppendMessages,
    ConversationCorruptError,
    SQLiteConversationStorage,
    StorageError,
    StorageUnavailableError,
    conversation_storage,
)

from .storage_kit import assistant, texts, turn, user


async def test_garbage_file_is_unavailable_not_a_raw_sqlite_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(os.urandom(8192))
    with pytest.raises(StorageUnavailableError, match=r"garbage\.db") as caught:
        async with SQLiteConversationStorage(path):
            pass
    assert not isinstance(caught.value, sqlite3.Error)


async def test_missing_directory_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StorageUnavailableError, match="does not exist"):
        async with SQLiteConversationStorage(tmp_path / "nowhere" / "c.db"):
            pass


async def test_damage_inside_the_file_is_always_a_storage_error(tmp_path: Path) -> None:
    """Garbage written over random pages of a real database: every load either works or
    raises a StorageError (the issue saw raw sqlite3 errors in 36 of 50 loads)."""
    path = tmp_path / "c.db"
    async with SQLiteConversationStorage(path, compact_after_entries=10_000) as storage:
        for i in range(40):
            cid = f"c{i % 4}"
            await storage.append(
                cid,
                [AppendMessages([user("z" * 3000)])],
                expected_version=await _version(storage, cid),
            )
    size = path.stat().st_size
    rng = random.Random(12)
    outcomes: dict[str, int] = {}
    for attempt in range(50):
        damaged = tmp_path / f"damaged-{attempt}.db"
        data = bytearray(path.read_bytes())
        start = rng.randrange(100, size - 600)
        data[start : start + 512] = os.urandom(512)
        damaged.write_bytes(bytes(data))
        try:
            async with SQLiteConversationStorage(damaged) as storage:
                for i in range(4):
                    await storage.load(f"c{i}")
            outcome = "ok"
        except StorageError as exc:
            outcome = type(exc).__name__
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert sum(outcomes.values()) == 50
    assert set(outcomes) <= {"ok", "StorageUnavailableError", "ConversationCorruptError"}
    assert outcomes.get("ok", 0) < 50, outcomes


async def _version(storage: SQLiteConversationStorage, cid: str) -> int:
    info = await storage.info(cid)
    return 0 if info is None else info.version


async def test_a_record_of_the_wrong_type_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    async with SQLiteConversationStorage(path) as storage:
        await storage.append("c", turn(1), expected_version=0)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE trouper_changes SET record = 12 WHERE conversation_id = 'c'")
    conn.close()
    async with SQLiteConversationStorage(path) as storage:
        with pytest.raises(ConversationCorruptError, match=r"'c'.*not JSON text"):
            await storage.load("c")


async def test_a_gap_in_the_log_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    async with SQLiteConversationStorage(path) as storage:
        version = await storage.append("c", turn(1), expected_version=0)
        await storage.append("c", turn(2), expected_version=version)
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM trouper_changes WHERE version = 1")
    conn.close()
    async with SQLiteConversationStorage(path) as storage:
        with pytest.raises(ConversationCorruptError, match="version 1 is missing"):
            await storage.load("c")


async def test_a_lock_held_elsewhere_is_waited_for_off_the_loop(tmp_path: Path) -> None:
    """Another connection holds the write lock for 0.6 s: the append waits in the worker
    thread (the loop keeps running other tasks) and lands once the lock is released."""
    path = tmp_path / "c.db"
    locked, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        locked.set()
        release.wait(10)
        conn.execute("COMMIT")
        conn.close()

    async with SQLiteConversationStorage(path) as storage:
        await storage.append("c", turn(1), expected_version=0)
        holder = threading.Thread(target=hold_lock)
        holder.start()
        await trio.to_thread.run_sync(locked.wait)
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await trio.sleep(0.01)
                ticks += 1

        async def unlock_later() -> None:
            await trio.sleep(0.6)
            release.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(tick)
            nursery.start_soon(unlock_later)
            version = await storage.append("c", turn(2), expected_version=1)
            nursery.cancel_scope.cancel()
        holder.join()
        assert version == 2
        assert ticks >= 3, ticks


async def test_a_lock_held_too_long_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    async with SQLiteConversationStorage(path, lock_timeout=0.2) as storage:
        await storage.append("c", turn(1), expected_version=0)
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StorageUnavailableError, match="stayed locked"):
                await storage.append("c", turn(2), expected_version=1)
        finally:
            conn.execute("COMMIT")
            conn.close()
        assert await storage.append("c", turn(2), expected_version=1) == 2


async def test_a_cancelled_append_still_completes(tmp_path: Path) -> None:
    """A caller cancelled while its write is queued never has to guess: the write is done
    when the call returns."""
    async with SQLiteConversationStorage(tmp_path / "c.db") as storage:
        with trio.CancelScope() as scope:
            scope.cancel()
            version = await storage.append("c", turn(1), expected_version=0)
        assert version == 1
        stored = await storage.load("c")
        assert stored is not None
        assert stored.version == 1


async def test_the_legacy_table_is_imported_once(tmp_path: Path) -> None:
    """A file of SQLiteContextStorage: its conversations load at version 1, its table is
    kept under another name, and reopening imports nothing again."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE trouper_conversations (id TEXT PRIMARY KEY, messages TEXT NOT NULL, "
            "tools TEXT, tool_choice TEXT, interrupted TEXT NOT NULL, revision INTEGER NOT NULL,"
            " updated_at REAL NOT NULL)"
        )
        conn.execute(
            "INSERT INTO trouper_conversations VALUES (?, ?, NULL, ?, ?, 3, 100.0)",
            ("old", orjson.dumps([user("hi"), assistant("he")]).decode(), '"auto"', "[1]"),
        )
        conn.execute(
            "INSERT INTO trouper_conversations VALUES ('broken', '{', NULL, NULL, '[]', 1, 1.0)"
        )
    conn.close()
    expected = OpenAILLMContext(messages=[user("hi")], tool_choice="auto")
    expected.add_message(assistant("he"), interrupted=True)
    async with SQLiteConversationStorage(path) as storage:
        stored = await storage.load("old")
        assert stored is not None
        assert stored.version == 1
        assert stored.snapshot == expected.snapshot()
        assert await storage.load("broken") is None
        await storage.append("old", [AppendMessages([user("more")])], expected_version=1)
        await storage.delete("broken")
    async with SQLiteConversationStorage(path) as storage:
        stored = await storage.load("old")
        assert stored is not None
        assert texts(stored.snapshot) == ["hi", "he", "more"]
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert "trouper_conversations_v1" in tables
    assert "trouper_conversations" not in tables


async def test_memory_database_and_store_specs(tmp_path: Path) -> None:
    async with conversation_storage("sqlite://:memory:") as storage:
        await storage.append("c", turn(1), expected_version=0)
        assert await storage.load("c") is not None
    spec = conversation_storage(str(tmp_path / "x.db"))
    assert isinstance(spec, SQLiteConversationStorage)
    assert spec.path == str(tmp_path / "x.db")
    assert conversation_storage(f"sqlite://{tmp_path}/y.db").path == str(tmp_path / "y.db")  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="unknown conversation store"):
        conversation_storage("postgres://db/x")
    with pytest.raises(ValueError, match="empty"):
        conversation_storage(" ")


async def test_the_worker_thread_ends_with_the_storage(tmp_path: Path) -> None:
    async with SQLiteConversationStorage(tmp_path / "threads.db", worker="thread") as storage:
        await storage.append("c", turn(1), expected_version=0)
        (worker,) = [t for t in threading.enumerate() if t.name == "trouper-sqlite:threads.db"]
    await trio.to_thread.run_sync(worker.join, 2.0)
    assert not worker.is_alive()
