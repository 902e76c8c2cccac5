"""The SQLite backend's worker process: it ends with its storage and with its storage's
process, a death is one clear error and never a hang, Ctrl-C does not reach it, and what
crosses the pipe (big changes, big conversations, typed errors) arrives whole."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import trio

from actors.storage import (
    AppendMessages,
    ConversationConflictError,
    LeaseHeldError,
    LeaseLostError,
    SQLiteConversationStorage,
    StorageUnavailableError,
)

from ..process_kit import child_pids
from .storage_kit import assistant, turn, user


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def _opened_worker(storage: SQLiteConversationStorage, before: set[int]) -> int:
    (pid,) = child_pids(os.getpid()) - before
    return pid


async def test_the_worker_process_ends_with_the_storage(tmp_path: Path) -> None:
    before = child_pids(os.getpid())
    async with SQLiteConversationStorage(tmp_path / "c.db") as storage:
        pid = await _opened_worker(storage, before)
        assert _alive(pid)
        await storage.append("c", turn(1), expected_version=0)
    assert not _alive(pid)
    assert child_pids(os.getpid()) == before


async def test_a_killed_worker_is_one_clear_error_and_nothing_hangs(tmp_path: Path) -> None:
    """The worker dies (SIGKILL) while appends wait for a lock held elsewhere: every one
    of them, and every later call, fails with one error naming the cause and the fix."""
    path = tmp_path / "c.db"
    before = child_pids(os.getpid())
    async with SQLiteConversationStorage(path, lock_timeout=30) as storage:
        pid = await _opened_worker(storage, before)
        await storage.append("c", turn(1), expected_version=0)
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        errors: list[BaseException] = []

        async def write(i: int) -> None:
            try:
                await storage.append(f"w{i}", turn(1), expected_version=0)
            except StorageUnavailableError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(write, i)
            await trio.sleep(0.2)  # the worker is retrying the lock: real time passes
            os.kill(pid, signal.SIGKILL)
        holder.execute("ROLLBACK")
        holder.close()
        assert len(errors) == 3
        for error in errors:
            text = str(error)
            assert "killed by SIGKILL" in text
            assert "open the storage again" in text
            assert str(path) in text
        with pytest.raises(StorageUnavailableError, match="killed by SIGKILL"):
            await storage.load("c")
    assert not _alive(pid)


_OWNER = textwrap.dedent(
    """
    import sys, trio
    from actors.storage import SQLiteConversationStorage

    async def main() -> None:
        async with SQLiteConversationStorage(sys.argv[1]) as storage:
            await storage.list_conversations()
            print("open", flush=True)
            await trio.sleep_forever()

    trio.run(main)
    """
)


def test_the_worker_never_outlives_its_process(tmp_path: Path) -> None:
    """The storage's process is killed with SIGKILL: its worker ends by itself (its stdin
    closes). A plain test: it only starts and watches processes."""
    root = Path(__file__).resolve().parents[2]
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER, str(tmp_path / "c.db")],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        assert owner.stdout is not None
        assert owner.stdout.readline() == b"open\n"
        (worker,) = child_pids(owner.pid)
        owner.kill()
        owner.wait()
        deadline = time.monotonic() + 10
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.02)  # another process's exit: nothing to wait on but its state
        assert not _alive(worker)
    finally:
        owner.kill()
        owner.wait()
        assert owner.stdout is not None
        owner.stdout.close()


async def test_ctrl_c_reaches_the_storage_not_its_worker(tmp_path: Path) -> None:
    """A Ctrl-C in a terminal signals the whole process group: the worker ignores it, so
    the storage can still finish its work and close in order."""
    before = child_pids(os.getpid())
    async with SQLiteConversationStorage(tmp_path / "c.db") as storage:
        pid = await _opened_worker(storage, before)
        os.kill(pid, signal.SIGINT)
        assert await storage.append("c", turn(1), expected_version=0) == 1
        assert _alive(pid)


async def test_big_changes_and_conversations_cross_the_pipe_whole(tmp_path: Path) -> None:
    """Over 64 KiB, an append is encoded and pickled on a thread, and a load's answer is
    unpickled on one: the content arrives unchanged both ways."""
    big = "é" * 3_000_000 + "end"
    async with SQLiteConversationStorage(tmp_path / "c.db") as storage:
        await storage.append("c", [AppendMessages((user(big),))], expected_version=0)
        await storage.append("c", [AppendMessages((assistant("ok"),))], expected_version=1)
        stored = await storage.load("c")
    assert stored is not None
    assert stored.version == 2
    assert [m["content"] for m in stored.snapshot.messages] == [big, "ok"]


async def test_typed_errors_keep_their_details_across_the_worker(tmp_path: Path) -> None:
    async with SQLiteConversationStorage(tmp_path / "c.db") as storage:
        await storage.append("c", turn(1), expected_version=0, append_id="first")
        with pytest.raises(ConversationConflictError) as conflict:
            await storage.append("c", turn(2), expected_version=0)
        assert (conflict.value.conversation_id, conflict.value.expected_version) == ("c", 0)
        assert (conflict.value.actual_version, conflict.value.head_append_id) == (1, "first")
        lease = await storage.acquire_lease("c", "alice", 30)
        with pytest.raises(LeaseHeldError) as held:
            await storage.acquire_lease("c", "bob", 30)
        assert (held.value.conversation_id, held.value.holder) == ("c", "alice")
        assert 0 < held.value.expires_in <= 30
        await storage.release_lease(lease)
        await storage.acquire_lease("c", "bob", 30)
        with pytest.raises(LeaseLostError) as lost:
            await storage.append("c", turn(2), expected_version=1, lease=lease)
        assert (lost.value.owner, lost.value.token) == ("alice", lease.token)
        assert "nothing was written" in str(lost.value)


def test_an_unknown_worker_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'process' or 'thread'"):
        SQLiteConversationStorage(tmp_path / "c.db", worker="fork")  # type: ignore[arg-type]


async def test_a_worker_that_cannot_start_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))
    with pytest.raises(StorageUnavailableError, match="worker='thread'"):
        async with SQLiteConversationStorage(tmp_path / "c.db"):
            pass
