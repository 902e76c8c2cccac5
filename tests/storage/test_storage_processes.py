"""Two real OS processes on one conversation (one SQLite file; one Redis server): a writer
killed with SIGKILL in the middle of an answer is taken over after its lease's ttl with
nothing committed lost; a writer paused with SIGSTOP past its ttl cannot write when it
resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from actors.storage import (
    INTERRUPTED_TOOL_RESULT,
    AppendMessages,
    ConversationStorage,
    LeaseHeldError,
    OpenedConversation,
    open_conversation,
)
from actors.storage.testing import sqlite_write_lock_free

from .conftest import Backend
from .storage_kit import assert_api_valid, texts, user

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs POSIX signals")


class Child:
    """A ``child_writer`` process and its stdout, line by line."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self._buffer = b""
        self.lines: list[str] = []

    @classmethod
    async def start(cls, backend: Backend, mode: str, cid: str, ttl: float) -> Child:
        store = str(backend.sqlite_path) if backend.sqlite_path else backend.redis_url
        assert store is not None
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        env["TROUPER_PREFIX"] = backend.prefix
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "tests.storage.child_writer", mode, store, cid, str(ttl)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
            env=env,
        )
        return cls(process)

    async def line(self) -> str:
        """The next line of its stdout (fails if it exits first)."""
        assert self.process.stdout is not None
        while b"\n" not in self._buffer:
            chunk = await self.process.stdout.receive_some(4096)
            if not chunk:
                raise AssertionError(f"the child exited early; it said {self.lines}")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\n", 1)
        text = raw.decode()
        self.lines.append(text)
        return text

    async def until(self, word: str) -> list[str]:
        """Read lines until one starting with ``word``; its words."""
        while True:
            words = (await self.line()).split()
            if words and words[0] == word:
                return words

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the child (by its pid)."""
        os.kill(self.process.pid, signum)

    async def close(self) -> None:
        """Kill it if it still runs, and reap it."""
        if self.process.returncode is None:
            self.process.kill()
        with trio.CancelScope(shield=True):
            await self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                await stream.aclose()


async def _stop_between_writes(child: Child, backend: Backend) -> None:
    """SIGSTOP the child, making sure (on SQLite) that it is not frozen while holding the
    file's write lock -- which would freeze every other writer too."""
    while True:
        child.signal(signal.SIGSTOP)
        if backend.sqlite_path is None or sqlite_write_lock_free(backend.sqlite_path):
            return
        child.signal(signal.SIGCONT)
        await trio.sleep(0.01)


async def _take_over(storage: ConversationStorage, cid: str) -> OpenedConversation:
    """Open the conversation as the parent, retrying while the child's lease lives."""
    while True:
        try:
            return await open_conversation(storage, cid, owner="parent", ttl=5)
        except LeaseHeldError:
            await trio.sleep(0.05)


async def test_a_killed_writer_is_taken_over_after_its_ttl(backend: Backend) -> None:
    ttl = 1.5
    child = await Child.start(backend, "kill", "shared", ttl)
    try:
        with trio.fail_after(60):
            token = int((await child.until("leased"))[1])
            committed = []
            while True:
                words = (await child.line()).split()
                if words[0] == "committed":
                    committed.append((int(words[1]), int(words[2])))
                elif words[0] == "in-flight":
                    in_flight_version, call_ids = int(words[1]), words[2:]
                    break
            child.signal(signal.SIGKILL)
            await child.process.wait()
            assert child.process.returncode == -signal.SIGKILL

            async with backend.opened() as storage:
                with pytest.raises(LeaseHeldError, match=f"child-{child.process.pid}"):
                    await open_conversation(storage, "shared", owner="parent", ttl=5)
                opened = await _take_over(storage, "shared")
                assert opened.lease.token > token
                assert opened.snapshot is not None
                contents = texts(opened.snapshot)
                for _, turn in committed:
                    assert f"turn {turn}" in contents
                    assert f"answer {turn}" in contents
                assert [t for _, t in committed] == [0, 1, 2]
                # The answer in flight: its calls settled as interrupted, its message marked.
                assert opened.recovered == tuple(call_ids)
                assert opened.version == in_flight_version + 1
                assert contents[-2:] == [INTERRUPTED_TOOL_RESULT] * 2
                assert opened.snapshot.interrupted == {7}
                assert_api_valid(opened.snapshot)
                # The parent goes on.
                version = await storage.append(
                    "shared",
                    [AppendMessages([user("and now?")])],
                    expected_version=opened.version,
                    lease=opened.lease,
                )
                stored = await storage.load("shared")
                assert stored is not None
                assert stored.version == version == in_flight_version + 2
                assert texts(stored.snapshot)[-1] == "and now?"
    finally:
        await child.close()


async def test_a_writer_paused_past_its_ttl_cannot_write(backend: Backend) -> None:
    ttl = 0.5
    child = await Child.start(backend, "pause", "paused", ttl)
    try:
        with trio.fail_after(60):
            token = int((await child.until("leased"))[1])
            await child.until("ready")
            await _stop_between_writes(child, backend)
            await trio.sleep(ttl * 2)  # renewals are frozen with it: the lease runs out

            async with backend.opened() as storage:
                opened = await _take_over(storage, "paused")
                assert opened.lease.token > token
                assert opened.version == 1
                version = await storage.append(
                    "paused",
                    [AppendMessages([user("the new owner's turn")])],
                    expected_version=opened.version,
                    lease=opened.lease,
                )
                child.signal(signal.SIGCONT)
                assert child.process.stdin is not None
                await child.process.stdin.send_all(b"go\n")
                await child.until("lease-lost")
                await child.process.wait()
                assert child.process.returncode == 3, child.lines
                stored = await storage.load("paused")
                assert stored is not None
                assert stored.version == version == 2
                assert texts(stored.snapshot) == ["before the pause", "the new owner's turn"]
    finally:
        await child.close()
