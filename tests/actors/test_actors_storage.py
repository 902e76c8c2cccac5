"""Persisted conversations: the context store writing through a real ``ConversationStorage``
(an SQLite file; a real redis-server), resuming, crash recovery, leases and errors.

No ``autojump_clock`` here: the SQLite storage works in a thread, and virtual time would
jump while the loop waits for it."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from actors import (
    FunctionCallParams,
    FunctionSchema,
    OpenAILLMContext,
    OpenAILLMService,
    ToolsSchema,
)
from actors.storage import (
    INTERRUPTED_TOOL_RESULT,
    AppendMessages,
    ConversationStorage,
    RecordToolCalls,
    RedisConversationStorage,
    SQLiteConversationStorage,
    StoredConversation,
)
from actors.storage.testing import RedisServer
from actors.testing import ChunkFactory, Reply, ScriptedOpenAIServer
from runtime.testing import capture_logs

from ..conversation_kit import API_KEY, MODEL, SYSTEM, assert_valid, open_conversation
from ..process_kit import child_pids
from .actors_kit import BlockingTool

WEATHER = FunctionSchema(
    name="get_weather",
    description="Weather in a city",
    properties={"location": {"type": "string"}},
    required=["location"],
)
TOOLS = ToolsSchema(standard_tools=[WEATHER])


def _call(name: str, arguments: dict[str, Any], call_id: str) -> tuple[str, str, str]:
    return name, json.dumps(arguments), call_id


StorageFactory = Callable[[], ConversationStorage]


@pytest.fixture(params=["sqlite", "redis"])
def make_storage(request: pytest.FixtureRequest, tmp_path: Path) -> StorageFactory:
    """Makes (unopened) storages on one fresh store: an SQLite file, or a Redis key prefix."""
    if request.param == "sqlite":
        path = tmp_path / "conversations.db"
        return lambda: SQLiteConversationStorage(path)
    server: RedisServer = request.getfixturevalue("redis_server")
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    return lambda: RedisConversationStorage(server.url, prefix=prefix)


@asynccontextmanager
async def opened(make: StorageFactory) -> AsyncIterator[ConversationStorage]:
    async with make() as storage:
        yield storage


async def stored_when(
    storage: ConversationStorage, cid: str, done: Callable[[StoredConversation], bool]
) -> StoredConversation:
    """The stored conversation once ``done`` holds for it (the store's write of the last
    change may still be on its way when the frames that caused it have left)."""
    with trio.fail_after(10):
        while True:
            stored = await storage.load(cid)
            if stored is not None and done(stored):
                return stored
            await trio.sleep(0.01)


async def test_turns_are_written_as_they_happen_and_resumed_later(
    make_storage: StorageFactory, server: ScriptedOpenAIServer, chunks: ChunkFactory
) -> None:
    server.add(
        Reply.sse(chunks.text_stream(["Hello", " Ann"])),
        Reply.sse(chunks.text_stream(["You are", " Ann."])),
    )
    async with opened(make_storage) as storage:
        async with open_conversation(server, storage=storage, conversation_id="ann") as conv:
            await conv.say("I am Ann")
            await conv.wait_ends(1)
            # On the store while the session runs, read through a storage of its own.
            async with opened(make_storage) as reader:
                during = await stored_when(reader, "ann", lambda s: len(s.snapshot) == 3)
                info = await reader.info("ann")
            assert list(during.snapshot.messages) == conv.messages()
            assert info is not None
            assert info.lease_owner is not None  # the session holds the lease
        after = await storage.info("ann")
        assert after is not None
        assert after.lease_owner is None  # released at the end

    # Another process would do this: a fresh context; the store resumes the stored one.
    async with opened(make_storage) as storage2:
        fresh = OpenAILLMContext(messages=[{"role": "system", "content": "ignored"}])
        async with open_conversation(
            server, context=fresh, storage=storage2, conversation_id="ann"
        ) as conv2:
            await conv2.say("Who am I?")
            await conv2.wait_ends(1)
            assert conv2.request_messages(1) == [
                SYSTEM,
                {"role": "user", "content": "I am Ann"},
                {"role": "assistant", "content": "Hello Ann"},
                {"role": "user", "content": "Who am I?"},
            ]
        final = await storage2.load("ann")
        assert final is not None
        assert final.snapshot.messages[-1] == {"role": "assistant", "content": "You are Ann."}
        assert list(final.snapshot.messages) == fresh.get_messages()
        assert_valid(list(final.snapshot.messages))


async def test_a_tool_call_is_stored_while_it_runs_and_settled_after(
    make_storage: StorageFactory, server: ScriptedOpenAIServer, chunks: ChunkFactory
) -> None:
    server.add(
        Reply.sse(chunks.tool_call_stream([_call("get_weather", {"location": "Oslo"}, "c1")])),
        Reply.sse(chunks.text_stream(["Snow."])),
    )
    release, looked = trio.Event(), trio.Event()
    while_running: list[StoredConversation] = []
    async with opened(make_storage) as storage:
        async with open_conversation(
            server, tools=TOOLS, storage=storage, conversation_id="oslo"
        ) as conv:

            async def get_weather(params: FunctionCallParams) -> None:
                while_running.append(
                    await stored_when(storage, "oslo", lambda s: len(s.snapshot) == 4)
                )
                looked.set()
                await release.wait()
                await params.result_callback({"sky": "snow"})

            conv.llm.register_function("get_weather", get_weather)
            await conv.say("Weather in Oslo?")
            with trio.fail_after(10):
                await looked.wait()
            release.set()
            await conv.wait_ends(2)
        (running,) = while_running
        assert running.snapshot.messages[-1] == {
            "role": "tool",
            "tool_call_id": "c1",
            "content": "IN_PROGRESS",
        }
        final = await storage.load("oslo")
        assert final is not None
        assert final.snapshot.messages[-2:] == (
            {"role": "tool", "tool_call_id": "c1", "content": '{"sky": "snow"}'},
            {"role": "assistant", "content": "Snow."},
        )
        assert final.snapshot.tools == tuple(TOOLS.to_openai())


async def test_a_call_still_open_at_the_end_is_stored_as_cancelled(
    make_storage: StorageFactory, server: ScriptedOpenAIServer, chunks: ChunkFactory
) -> None:
    server.add(
        Reply.sse(chunks.tool_call_stream([_call("get_weather", {"location": "Rome"}, "c9")]))
    )
    never = BlockingTool()
    async with opened(make_storage) as storage:
        async with open_conversation(
            server, tools=TOOLS, storage=storage, conversation_id="rome"
        ) as conv:
            conv.llm.register_function("get_weather", never)
            await conv.say("Weather in Rome?")
            await never.wait_running()
            during = await stored_when(storage, "rome", lambda s: len(s.snapshot) == 4)
            assert during.snapshot.messages[-1]["content"] == "IN_PROGRESS"
            version_during = during.version
        stored = await storage.load("rome")
        assert stored is not None
        assert stored.snapshot.messages[-1] == {
            "role": "tool",
            "tool_call_id": "c9",
            "content": "CANCELLED",
        }
        assert stored.version == version_during + 1  # the settlements, in one append


async def test_open_tool_calls_of_a_dead_owner_are_settled_at_start(
    make_storage: StorageFactory, server: ScriptedOpenAIServer, chunks: ChunkFactory
) -> None:
    server.add(Reply.sse(chunks.text_stream(["Sorry, that was cut short."])))
    async with opened(make_storage) as storage:
        # What a process killed while its tools ran leaves behind.
        await storage.append(
            "crashed",
            [
                AppendMessages([SYSTEM, {"role": "user", "content": "Weather?"}]),
                RecordToolCalls([("k1", "get_weather", '{"location": "Oslo"}')]),
            ],
            expected_version=0,
        )
        async with open_conversation(
            server, tools=TOOLS, storage=storage, conversation_id="crashed"
        ) as conv:
            await conv.pair.store.wait_opened()
            assert conv.context.is_interrupted(2)
            await conv.say("Still there?")
            await conv.wait_ends(1)
            sent = conv.request_messages(0)
        assert sent[3] == {"role": "tool", "tool_call_id": "k1", "content": "INTERRUPTED"}
        assert_valid(sent)
        stored = await storage.load("crashed")
        assert stored is not None
        assert [m.get("content") for m in stored.snapshot.messages].count(
            INTERRUPTED_TOOL_RESULT
        ) == 1


async def test_the_tools_of_the_given_context_replace_the_stored_ones(
    make_storage: StorageFactory, server: ScriptedOpenAIServer, chunks: ChunkFactory
) -> None:
    server.add(Reply.sse(chunks.text_stream(["Hi."])), Reply.sse(chunks.text_stream(["Yes."])))
    async with opened(make_storage) as storage:
        async with open_conversation(server, storage=storage, conversation_id="t") as conv:
            await conv.say("Hello")
            await conv.wait_ends(1)
        first = await storage.load("t")
        assert first is not None
        assert first.snapshot.tools is None
        context = OpenAILLMContext(tools=TOOLS, tool_choice="auto")
        async with open_conversation(
            server, context=context, storage=storage, conversation_id="t"
        ) as conv2:
            await conv2.say("Tools now?")
            await conv2.wait_ends(1)
            assert conv2.request(1)["tools"] == TOOLS.to_openai()
        stored = await storage.load("t")
        assert stored is not None
        assert stored.snapshot.tools == tuple(TOOLS.to_openai())
        assert stored.snapshot.tool_choice == "auto"
        assert len(stored.snapshot) == 5


async def test_a_failed_write_is_an_error_frame_and_the_session_goes_on(
    tmp_path: Path, server: ScriptedOpenAIServer, chunks: ChunkFactory
) -> None:
    server.add(
        Reply.sse(chunks.text_stream(["Still", " here"])),
        Reply.sse(chunks.text_stream(["And", " again"])),
    )
    storage = SQLiteConversationStorage(tmp_path / "c.db")
    async with (
        storage,
        open_conversation(server, storage=storage, conversation_id="c") as conv,
    ):
        await conv.pair.store.wait_opened()
        await storage.aclose()  # every write now fails
        await conv.say("Hello?")
        await conv.wait_ends(1)
        await conv.wait_errors(1)
        assert conv.messages()[-1] == {"role": "assistant", "content": "Still here"}
        assert "conversation 'c' was not saved: StorageUnavailableError" in (conv.errors[0].error)
        assert conv.errors[0].category == "storage"


async def test_a_killed_sqlite_worker_is_an_error_frame_and_the_context_keeps_what_was_shown(
    tmp_path: Path, server: ScriptedOpenAIServer, chunks: ChunkFactory
) -> None:
    """The storage's worker process dies (SIGKILL) in the middle of a session: the next
    writes fail with one ErrorFrame naming how it ended, the answers go on, the context
    holds exactly what the output showed, and neither the frames nor the logs carry the
    API key."""
    server.add(
        Reply.sse(chunks.text_stream(["Still", " here"])),
        Reply.sse(chunks.text_stream(["And", " again"])),
    )
    before = child_pids()
    storage = SQLiteConversationStorage(tmp_path / "c.db")
    with capture_logs() as logs:
        async with (
            storage,
            open_conversation(server, storage=storage, conversation_id="c") as conv,
        ):
            await conv.pair.store.wait_opened()
            (worker,) = child_pids() - before
            os.kill(worker, signal.SIGKILL)
            await conv.say("Hello?")
            await conv.wait_ends(1)
            await conv.wait_errors(1)
            await conv.say("Anyone?")
            await conv.wait_ends(2)
            assert conv.text() == "Still hereAnd again"
            assert conv.messages()[-3:] == [
                {"role": "assistant", "content": "Still here"},
                {"role": "user", "content": "Anyone?"},
                {"role": "assistant", "content": "And again"},
            ]
            error = conv.errors[0]
            assert "conversation 'c' was not saved: StorageUnavailableError" in error.error
            assert "killed by SIGKILL" in error.error
            assert "open the storage again" in error.error
            assert error.category == "storage"
    shown = " ".join(e.error for e in conv.errors) + repr(logs)
    assert API_KEY not in shown


async def test_a_write_that_failed_once_is_made_good_by_the_next(
    tmp_path: Path, server: ScriptedOpenAIServer, chunks: ChunkFactory
) -> None:
    """A passing failure (here: content that is not JSON) loses nothing: the next write
    stores the whole conversation."""
    server.add(Reply.sse(chunks.text_stream(["Fine."])))
    async with SQLiteConversationStorage(tmp_path / "c.db") as storage:
        async with open_conversation(server, storage=storage, conversation_id="c") as conv:
            store = conv.pair.store
            await store.wait_opened()
            assert store.writer is not None
            error = await store.writer.write(
                [AppendMessages([{"role": "user", "content": "x", "bad": {1, 2}}])]
            )
            assert isinstance(error, ValueError)
            await conv.say("Hello")
            await conv.wait_ends(1)
            messages = conv.messages()
        stored = await storage.load("c")
        assert stored is not None
        assert list(stored.snapshot.messages) == messages


async def test_a_corrupt_conversation_is_one_error_frame_and_the_session_runs_in_memory(
    tmp_path: Path, server: ScriptedOpenAIServer, chunks: ChunkFactory
) -> None:
    path = tmp_path / "c.db"
    async with SQLiteConversationStorage(path) as storage:
        await storage.append("c", [AppendMessages([SYSTEM])], expected_version=0)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE trouper_changes SET record = '{broken' WHERE conversation_id = 'c'")
    db.close()
    server.add(Reply.sse(chunks.text_stream(["In memory."])))
    async with SQLiteConversationStorage(path) as storage:
        async with open_conversation(server, storage=storage, conversation_id="c") as conv:
            await conv.wait_errors(1)
            assert "conversation 'c' was not opened" in conv.errors[0].error
            assert "ConversationCorruptError" in conv.errors[0].error
            await conv.say("Hello")
            await conv.wait_ends(1)
            assert len(conv.errors) == 1
        info = await storage.info("c")
        assert info is not None
        assert info.lease_owner is None


async def test_a_conversation_leased_by_another_session_is_not_touched(
    make_storage: StorageFactory, server: ScriptedOpenAIServer, chunks: ChunkFactory
) -> None:
    server.add(Reply.sse(chunks.text_stream(["Alone."])))
    async with opened(make_storage) as storage:
        other = await storage.acquire_lease("busy", "other-host:1:session", 30)
        await storage.append("busy", [AppendMessages([SYSTEM])], expected_version=0, lease=other)
        async with open_conversation(server, storage=storage, conversation_id="busy") as conv:
            await conv.wait_errors(1)
            assert "LeaseHeldError" in conv.errors[0].error
            assert "other-host:1:session" in conv.errors[0].error
            await conv.say("Hi")
            await conv.wait_ends(1)
        stored = await storage.load("busy")
        assert stored is not None
        assert stored.version == 1


async def test_a_session_that_lost_its_lease_stops_writing_and_says_so_once(
    make_storage: StorageFactory, server: ScriptedOpenAIServer, chunks: ChunkFactory
) -> None:
    server.add(
        Reply.sse(chunks.text_stream(["One."])),
        Reply.sse(chunks.text_stream(["Two."])),
        Reply.sse(chunks.text_stream(["Three."])),
    )
    async with opened(make_storage) as storage:
        async with open_conversation(server, storage=storage, conversation_id="x") as conv:
            await conv.say("one")
            await conv.wait_ends(1)
            writer = conv.pair.store.writer
            assert writer is not None
            assert writer.lease is not None
            # As if the session had been paused past its ttl: the lease ends, another
            # owner takes the conversation over and writes.
            await storage.release_lease(writer.lease)
            stored = await stored_when(storage, "x", lambda s: len(s.snapshot) == 3)
            new = await storage.acquire_lease("x", "new-owner", 30)
            version = await storage.append(
                "x",
                [AppendMessages([{"role": "user", "content": "the new owner's"}])],
                expected_version=stored.version,
                lease=new,
            )
            await conv.say("two")
            await conv.wait_ends(2)
            await conv.wait_errors(1)
            await conv.say("three")
            await conv.wait_ends(3)
            assert len(conv.errors) == 1
            assert "LeaseLostError" in conv.errors[0].error
            assert "stops writing" in conv.errors[0].error
        final = await storage.load("x")
        assert final is not None
        assert final.version == version
        assert final.snapshot.messages[-1] == {"role": "user", "content": "the new owner's"}
        info = await storage.info("x")
        assert info is not None
        assert info.lease_owner == "new-owner"


async def test_the_lease_is_renewed_while_the_session_runs(
    make_storage: StorageFactory, server: ScriptedOpenAIServer, chunks: ChunkFactory
) -> None:
    server.add(Reply.sse(chunks.text_stream(["Later."])))
    async with opened(make_storage) as storage:
        async with open_conversation(
            server, storage=storage, conversation_id="short", lease_ttl=0.3
        ) as conv:
            await conv.pair.store.wait_opened()
            writer = conv.pair.store.writer
            assert writer is not None
            assert writer.lease is not None
            token = writer.lease.token
            await trio.sleep(1.0)  # several ttls: renewed all along
            info = await storage.info("short")
            assert info is not None
            assert info.lease_owner == writer.owner
            await conv.say("hello")
            await conv.wait_ends(1)
            assert conv.errors == []
            assert writer.lease.token == token
        stored = await storage.load("short")
        assert stored is not None
        assert stored.snapshot.messages[-1] == {"role": "assistant", "content": "Later."}


def test_the_removed_sqlite_context_storage_gets_its_migration(tmp_path: Path) -> None:
    llm = OpenAILLMService(model=MODEL, api_key=API_KEY, base_url="http://127.0.0.1:9/v1")

    class SQLiteContextStorage:  # what an application written for the old API passes
        pass

    with pytest.raises(TypeError, match=r"SQLiteContextStorage was removed.*same file"):
        llm.create_context_aggregator(
            OpenAILLMContext(),
            storage=SQLiteContextStorage(),  # type: ignore[arg-type]
            conversation_id="c",
        )
    with pytest.raises(ImportError, match="SQLiteConversationStorage"):
        from actors import SQLiteContextStorage as _  # type: ignore[attr-defined]  # noqa: F401
    storage = SQLiteConversationStorage(tmp_path / "c.db")
    with pytest.raises(ValueError, match="both storage= and conversation_id="):
        llm.create_context_aggregator(OpenAILLMContext(), storage=storage)
    with pytest.raises(ValueError, match="both storage= and conversation_id="):
        llm.create_context_aggregator(OpenAILLMContext(), conversation_id="c")
    with pytest.raises(ValueError, match="lease_ttl"):
        llm.create_context_aggregator(
            OpenAILLMContext(), storage=storage, conversation_id="c", lease_ttl=0
        )
