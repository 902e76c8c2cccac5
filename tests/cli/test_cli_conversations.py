"""``trouper chat --conversation NAME --store ...`` on SQLite and Redis, and ``trouper
conversations list|show|delete``: the real console script against a scripted server, a real
SQLite file and a real redis-server. Every storage problem is one ``error:`` line, exit 2."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest
import trio

from actors.storage import AppendMessages, RecordToolCalls, conversation_storage
from actors.storage.testing import RedisServer
from actors.testing import ChunkFactory, Reply, ScriptedOpenAIServer

from .cli_kit import QUICK_TIMEOUT, cli_env, run, trouper


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store: an SQLite file, or a database of the session's redis-server."""
    if request.param == "sqlite":
        return str(tmp_path / "conversations.db")
    server: RedisServer = request.getfixturevalue("redis_server")
    url = server.url.rsplit("/", 1)[0]
    # One database per test run is enough isolation: tests of this file use unique ids.
    return f"{url}/3"


async def chat(server: ScriptedOpenAIServer, *args: str) -> subprocess.CompletedProcess[bytes]:
    """``trouper chat`` against ``server`` with ``args``, to completion."""
    with trio.fail_after(QUICK_TIMEOUT):
        return await trio.run_process(
            [*trouper(), "chat", "--base-url", server.base_url, "--api-key", "k",
             "--model", "m", "--no-tools", *args],
            capture_stdout=True, capture_stderr=True, env=cli_env(), check=False,
        )  # fmt: skip


def one_error_line(stderr: str) -> str:
    """The single ``error:`` line of ``stderr`` (and nothing else but blank lines)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


async def test_a_conversation_is_kept_listed_shown_and_deleted(store: str, tmp_path: Path) -> None:
    cid = f"ann-{tmp_path.name}"
    chunks = ChunkFactory()
    async with ScriptedOpenAIServer() as server:
        server.add(
            Reply.sse(chunks.text_stream(["Nice to meet", " you, Ann."])),
            Reply.sse(chunks.text_stream(["You are Ann."])),
        )
        first = await chat(server, "--conversation", cid, "--store", store, "--prompt", "I am Ann.")
        assert first.returncode == 0, first.stderr.decode()
        second = await chat(server, "--conversation", cid, "--store", store, "--prompt", "Who?")
        assert second.returncode == 0, second.stderr.decode()
        assert f"Continuing conversation {cid} (3 messages)" in second.stderr.decode()
        sent = server.requests[1].json["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]

    listed = run("conversations", "list", "--store", store)
    assert listed.returncode == 0, listed.stderr
    (row,) = [line for line in listed.stdout.splitlines() if line.startswith(cid)]
    words = row.split()
    assert words[1] == "5"  # version: the start, then one append per message
    assert words[-2:] == ["5", "-"]  # 5 messages, no live lease
    assert listed.stdout.splitlines()[0].split() == [
        "ID",
        "VERSION",
        "UPDATED",
        "MESSAGES",
        "LEASE",
    ]

    shown = run("conversations", "show", cid, "--store", store)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[1:] == [
        f"system: {lines[1].split(': ', 1)[1]}",
        "user: I am Ann.",
        "assistant: Nice to meet you, Ann.",
        "user: Who?",
        "assistant: You are Ann.",
    ]

    deleted = run("conversations", "delete", cid, "--store", store)
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout.strip() == f"deleted conversation {cid}"
    gone = run("conversations", "show", cid, "--store", store)
    assert gone.returncode == 1
    assert f"no conversation '{cid}'" in one_error_line(gone.stderr)


async def test_a_leased_conversation_is_neither_deleted_nor_chatted_in(
    store: str, tmp_path: Path
) -> None:
    cid = f"busy-{tmp_path.name}"
    async with conversation_storage(store) as storage:
        lease = await storage.acquire_lease(cid, "host-b:4242:chat", 60)
        await storage.append(
            cid,
            [AppendMessages([{"role": "user", "content": "hi"}])],
            expected_version=0,
            lease=lease,
        )
        refused = await trio.to_thread.run_sync(
            lambda: run("conversations", "delete", cid, "--store", store)
        )
        assert refused.returncode == 2
        line = one_error_line(refused.stderr)
        assert f"conversation '{cid}' is in use by host-b:4242:chat" in line
        assert "lease expires in" in line
        async with ScriptedOpenAIServer() as server:
            busy = await chat(server, "--conversation", cid, "--store", store, "--prompt", "x")
            assert server.requests == []
        assert busy.returncode == 2
        assert "is in use by host-b:4242:chat" in one_error_line(busy.stderr.decode())
        stored = await storage.load(cid)
        assert stored is not None
        assert stored.version == 1
        await storage.release_lease(lease)
    listed = run("conversations", "list", "--store", store)
    assert cid in listed.stdout


async def test_a_crashed_chat_left_its_tool_calls_settled_when_continued(tmp_path: Path) -> None:
    db = str(tmp_path / "c.db")
    async with conversation_storage(db) as storage:
        await storage.append(
            "t",
            [
                AppendMessages(
                    [{"role": "system", "content": "s"}, {"role": "user", "content": "?"}]
                ),
                RecordToolCalls([("k1", "calculate", '{"expression": "1+1"}')]),
            ],
            expected_version=0,
        )
    chunks = ChunkFactory()
    async with ScriptedOpenAIServer() as server:
        server.add(Reply.sse(chunks.text_stream(["Again?"])))
        done = await chat(server, "--conversation", "t", "--store", db, "--prompt", "Hello?")
        assert done.returncode == 0, done.stderr.decode()
        sent = server.requests[0].json["messages"]
    assert sent[3] == {"role": "tool", "tool_call_id": "k1", "content": "INTERRUPTED"}
    shown = run("conversations", "show", "t", "--store", db)
    assert "assistant:  ⏹ interrupted" in shown.stdout
    assert '  → calculate({"expression": "1+1"}) [k1]' in shown.stdout


def _garbage_file(path: Path) -> None:
    path.write_bytes(b"SQLite format 3\x00" + b"\xff" * 8192)


def _wrong_shape(path: Path) -> None:
    trio.run(_store_one, str(path))
    with sqlite3.connect(path) as db:
        db.execute("UPDATE trouper_changes SET record = '[1, 2, 3]'")
    db.close()


async def _store_one(path: str) -> None:
    async with conversation_storage(path) as storage:
        await storage.append(
            "x", [AppendMessages([{"role": "user", "content": "hi"}])], expected_version=0
        )


@pytest.mark.parametrize("damage", [_garbage_file, _wrong_shape])
def test_a_damaged_store_is_one_error_line_and_exit_2(tmp_path: Path, damage: object) -> None:
    path = tmp_path / "damaged.db"
    assert callable(damage)
    damage(path)
    result = run(
        "chat", "--base-url", "http://127.0.0.1:9/v1", "--model", "m",
        "--conversation", "x", "--store", str(path), "--prompt", "hi",
    )  # fmt: skip
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert "corrupt" in line or "not a database" in line or "cannot" in line
    for action in (["show", "x"], ["list"]):
        listed = run("conversations", *action, "--store", str(path))
        if listed.returncode != 0:
            assert listed.returncode == 2
            one_error_line(listed.stderr)


def test_an_unknown_store_url_is_one_error_line() -> None:
    result = run("conversations", "list", "--store", "mongodb://x")
    assert result.returncode == 2
    assert "unknown conversation store" in one_error_line(result.stderr)
    down = run("conversations", "list", "--store", "redis://127.0.0.1:9/0")
    assert down.returncode == 2
    one_error_line(down.stderr)
