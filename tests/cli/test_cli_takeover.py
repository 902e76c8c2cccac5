"""Two ``trouper chat`` processes on one conversation (one SQLite file; one redis-server):

- process A is killed with SIGKILL in the middle of an answer; process B cannot have the
  conversation while A's lease lives, takes it over once it expired, and continues with
  every committed turn there. The answer A was streaming was never committed (the store
  commits an answer when it ends or is interrupted), so it is absent, and the next request
  is valid for the API (the scripted server records it);
- process A' is paused with SIGSTOP past its lease's ttl while it waits for an answer;
  another owner takes the conversation over and writes; A' resumes, its write is refused
  (``LeaseLostError``: one ``error:`` line) and the new owner's turn stays intact.

What a dead owner's tool calls become (settled ``INTERRUPTED``, the answer marked
interrupted) is proven with a writer killed while its calls run in
``tests/storage/test_storage_processes.py`` and through the context store in
``tests/actors/test_actors_storage.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from actors.storage import (
    AppendMessages,
    ConversationStorage,
    LeaseHeldError,
    OpenedConversation,
    conversation_storage,
    open_conversation,
)
from actors.storage.testing import RedisServer, sqlite_write_lock_free
from actors.testing import ChunkFactory, Reply, ScriptedOpenAIServer

from ..conversation_kit import assert_valid
from .cli_kit import QUICK_TIMEOUT, cli_env, trouper

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs POSIX signals")

SYSTEM_PROMPT = "Be brief."


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "conversations.db")
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url.rsplit("/", 1)[0] + "/4"


def chat_args(server: ScriptedOpenAIServer, store: str, cid: str, ttl: float) -> list[str]:
    return [
        *trouper(), "chat", "--base-url", server.base_url, "--api-key", "k", "--model", "m",
        "--no-tools", "--system", SYSTEM_PROMPT, "--conversation", cid, "--store", store,
        "--lease-ttl", str(ttl),
    ]  # fmt: skip


async def run_chat(args: list[str], prompt: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(QUICK_TIMEOUT):
        return await trio.run_process(
            [*args, "--prompt", prompt],
            capture_stdout=True,
            capture_stderr=True,
            env=cli_env(),
            check=False,
        )


async def start_chat(args: list[str], prompt: str) -> trio.Process:
    return await trio.lowlevel.open_process(
        [*args, "--prompt", prompt],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
    )


async def until(
    what: str, condition: Callable[[], Awaitable[bool]], within: float = QUICK_TIMEOUT
) -> None:
    """Wait until ``condition()`` holds (``what`` names it in the failure)."""
    with trio.fail_after(within):
        while True:
            if await condition():
                return
            await trio.sleep(0.02)


async def lease_gone(storage: ConversationStorage, cid: str) -> bool:
    info = await storage.info(cid)
    return info is not None and info.lease_owner is None


async def reap(process: trio.Process) -> tuple[str, str]:
    """Wait for ``process`` to end; its stdout and stderr."""
    assert process.stdout is not None
    assert process.stderr is not None
    with trio.fail_after(QUICK_TIMEOUT):
        async with trio.open_nursery() as nursery:

            async def read(stream: trio.abc.ReceiveStream, into: list[bytes]) -> None:
                async for chunk in stream:
                    into.append(bytes(chunk))

            outs: list[bytes] = []
            errs: list[bytes] = []
            nursery.start_soon(read, process.stdout, outs)
            nursery.start_soon(read, process.stderr, errs)
        await process.wait()
    out, err = b"".join(outs), b"".join(errs)
    return out.decode(), err.decode()


async def test_a_chat_killed_mid_answer_is_taken_over_after_its_ttl(store: str) -> None:
    cid = f"kill-{uuid.uuid4().hex[:8]}"
    ttl = 1.5
    chunks = ChunkFactory()
    async with ScriptedOpenAIServer() as server:
        server.add(
            Reply.sse(chunks.text_stream(["Hello", " Ann."])),
            # The answer A is killed in: its first words arrive, then it hangs.
            Reply.sse(chunks.text_stream(["Let me", " think"]), done=False, ending="stall"),
            Reply.sse(chunks.text_stream(["Where were we?"])),
        )
        args = chat_args(server, store, cid, ttl)
        first = await run_chat(args, "I am Ann.")
        assert first.returncode == 0, first.stderr.decode()

        a = await start_chat(args, "Tell me a story.")
        try:
            assert a.stdout is not None
            seen = b""
            with trio.fail_after(QUICK_TIMEOUT):
                while b"Let me think" not in seen:
                    seen += await a.stdout.receive_some(4096)
            os.kill(a.pid, signal.SIGKILL)
            await a.wait()
            assert a.returncode == -signal.SIGKILL
        finally:
            if a.returncode is None:
                a.kill()
                await a.wait()

        # Right away, A's lease still lives: nobody can have the conversation.
        async with conversation_storage(store) as storage:
            with pytest.raises(LeaseHeldError, match=f":{a.pid}:"):
                await open_conversation(storage, cid, owner="b", ttl=5)
            await until("A's lease expired", lambda: lease_gone(storage, cid))
            stored = await storage.load(cid)
        assert stored is not None
        assert [m.get("content") for m in stored.snapshot.messages] == [
            SYSTEM_PROMPT,
            "I am Ann.",
            "Hello Ann.",
            "Tell me a story.",  # committed before A asked the model
        ]

        # B after the ttl: continues the conversation.
        b = await run_chat(args, "Where were we?")
        assert b.returncode == 0, b.stderr.decode()
        assert "Continuing conversation" in b.stderr.decode()
        sent = server.requests[-1].json["messages"]
        assert [m["content"] for m in sent] == [
            SYSTEM_PROMPT,
            "I am Ann.",
            "Hello Ann.",
            "Tell me a story.",
            "Where were we?",
        ]
        assert_valid(sent)
        assert len(server.requests) == 3


async def test_a_chat_paused_past_its_ttl_cannot_write_when_it_resumes(store: str) -> None:
    cid = f"pause-{uuid.uuid4().hex[:8]}"
    ttl = 0.5
    chunks = ChunkFactory()
    async with ScriptedOpenAIServer() as server:
        # The answer comes while A' is stopped; it reads it when it resumes.
        server.add(Reply.sse(chunks.text_stream(["Too", " late."]), first_delay=0.3))
        args = chat_args(server, store, cid, ttl)
        a = await start_chat(args, "Are you there?")
        try:
            await until("A's request", _requested(server))
            await _stop_between_writes(a, store)
            async with conversation_storage(store) as storage:
                await trio.sleep(ttl * 2)  # A's renewals are frozen: its lease runs out
                taken = await _take_over(storage, cid)
                version = await storage.append(
                    cid,
                    [AppendMessages([{"role": "user", "content": "the new owner's turn"}])],
                    expected_version=taken.version,
                    lease=taken.lease,
                )
                os.kill(a.pid, signal.SIGCONT)
                out, err = await reap(a)
                assert a.returncode == 1, err
                errors = [line for line in err.splitlines() if line.startswith("error:")]
                assert len(errors) == 1, err
                assert "LeaseLostError" in errors[0]
                assert "Traceback" not in err
                assert "Too late." in out  # shown, but not stored
                stored = await storage.load(cid)
                await storage.release_lease(taken.lease)
        finally:
            if a.returncode is None:
                os.kill(a.pid, signal.SIGCONT)
                a.kill()
                await a.wait()
    assert stored is not None
    assert stored.version == version
    assert [m.get("content") for m in stored.snapshot.messages] == [
        SYSTEM_PROMPT,
        "Are you there?",
        "the new owner's turn",
    ]


def _requested(server: ScriptedOpenAIServer) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return len(server.requests) >= 1

    return check


async def _stop_between_writes(process: trio.Process, store: str) -> None:
    """SIGSTOP ``process``, but not while it holds the SQLite file's write lock (that would
    freeze every other writer of the file too)."""
    while True:
        os.kill(process.pid, signal.SIGSTOP)
        if not store.endswith(".db") or sqlite_write_lock_free(Path(store)):
            return
        os.kill(process.pid, signal.SIGCONT)
        await trio.sleep(0.01)


async def _take_over(storage: ConversationStorage, cid: str) -> OpenedConversation:
    with trio.fail_after(QUICK_TIMEOUT):
        while True:
            try:
                return await open_conversation(storage, cid, owner="new-owner", ttl=30)
            except LeaseHeldError:
                await trio.sleep(0.05)
