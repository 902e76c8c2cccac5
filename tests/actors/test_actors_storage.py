"""Persisting and resuming conversations in a real SQLite file (``SQLiteContextStorage``)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from actors import (
    ContextSnapshot,
    FunctionCallParams,
    FunctionSchema,
    OpenAILLMContext,
    OpenAILLMService,
    SQLiteContextStorage,
    ToolsSchema,
)
from actors.testing import ChunkFactory, Reply, ScriptedOpenAIServer
from runtime import ErrorFrame

from ..conversation_kit import API_KEY, MODEL, SYSTEM, assert_valid, open_conversation
from .actors_kit import BlockingTool

WEATHER = FunctionSchema(
    name="get_weather",
    description="Weather in a city",
    properties={"location": {"type": "string"}},
    required=["location"],
)


def _call(name: str, arguments: dict[str, Any], call_id: str) -> tuple[str, str, str]:
    return name, json.dumps(arguments), call_id


class TestStorage:
    """The storage itself: rows, round trips and clear errors."""

    def test_a_saved_conversation_loads_back_equal(self, tmp_path: Path) -> None:
        path = tmp_path / "conversations.db"
        context = OpenAILLMContext(
            messages=[SYSTEM, {"role": "user", "content": "Hi ☀"}],
            tools=ToolsSchema(standard_tools=[WEATHER]),
            tool_choice="auto",
        )
        context.add_message({"role": "assistant", "content": "Hel"}, interrupted=True)
        with SQLiteContextStorage(path) as storage:
            storage.save("c1", context)
            storage.save("c2", OpenAILLMContext(messages=[SYSTEM]))
            assert storage.revision("c1") == 1
            storage.save("c1", context.snapshot())
            assert storage.revision("c1") == 2
            assert storage.revision("missing") == 0
        with SQLiteContextStorage(path) as reopened:  # a new connection: it is on disk
            assert set(reopened.conversations()) == {"c1", "c2"}
            loaded = reopened.load("c1")
            assert loaded is not None
            assert loaded.snapshot() == context.snapshot()
            assert loaded.is_interrupted(2)
            assert reopened.load("nobody") is None
            assert reopened.delete("c2") is True
            assert reopened.delete("c2") is False
            assert reopened.conversations() == ["c1"]

    def test_bad_input_is_reported_clearly(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match=r"directory .* does not exist"):
            SQLiteContextStorage(tmp_path / "no" / "such" / "dir.db")
        not_a_db = tmp_path / "notes.txt"
        not_a_db.write_text("this is not a database, " * 100)
        with pytest.raises(ValueError, match=r"cannot use .*notes\.txt"):
            SQLiteContextStorage(not_a_db)
        with SQLiteContextStorage(":memory:") as storage:
            with pytest.raises(ValueError, match="non-empty string"):
                storage.save("  ", OpenAILLMContext())
            with pytest.raises(ValueError, match="non-empty string"):
                storage.load("")
        llm = OpenAILLMService(model=MODEL, api_key=API_KEY, base_url="http://127.0.0.1:9/v1")
        with pytest.raises(ValueError, match="both storage= and conversation_id="):
            llm.create_context_aggregator(OpenAILLMContext(), storage=storage)
        with pytest.raises(ValueError, match="both storage= and conversation_id="):
            llm.create_context_aggregator(OpenAILLMContext(), conversation_id="c")

    def test_from_snapshot_checks_the_interrupted_marks(self) -> None:
        snapshot = ContextSnapshot(messages=(SYSTEM,), interrupted=frozenset({3}))
        with pytest.raises(ValueError, match="marks message 3 as interrupted, but it has 1"):
            OpenAILLMContext.from_snapshot(snapshot)

    def test_a_corrupt_row_is_named(self, tmp_path: Path) -> None:
        path = tmp_path / "c.db"
        with SQLiteContextStorage(path) as storage:
            storage.save("c1", OpenAILLMContext(messages=[SYSTEM]))
        with sqlite3.connect(path) as db:
            db.execute("UPDATE trouper_conversations SET messages = '{broken' WHERE id = 'c1'")
        with (
            SQLiteContextStorage(path) as storage,
            pytest.raises(ValueError, match="stored conversation 'c1' is not valid"),
        ):
            storage.load("c1")


class TestPersistedConversation:
    """A session writes through to the file; a later session resumes from it."""

    async def test_turns_are_written_as_they_happen_and_resumed_later(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
        tmp_path: Path,
    ) -> None:
        path = tmp_path / "conversations.db"
        storage = SQLiteContextStorage(path)
        server.add(
            Reply.sse(chunks.text_stream(["Hello", " Ann"])),
            Reply.sse(chunks.text_stream(["You are", " Ann."])),
        )
        async with open_conversation(server, storage=storage, conversation_id="ann") as conv:
            await conv.say("I am Ann")
            await conv.wait_ends(1)
            # Already on disk, read through a separate connection while the session runs.
            with SQLiteContextStorage(path) as reader:
                during = reader.load("ann")
            assert during is not None
            assert during.get_messages() == conv.messages()
        storage.close()

        # A new process would do this: open the file, load, go on.
        with SQLiteContextStorage(path) as storage2:
            context = storage2.load("ann")
            assert context is not None
            async with open_conversation(
                server, context=context, storage=storage2, conversation_id="ann"
            ) as conv2:
                await conv2.say("Who am I?")
                await conv2.wait_ends(1)
                assert conv2.request_messages(1) == [
                    SYSTEM,
                    {"role": "user", "content": "I am Ann"},
                    {"role": "assistant", "content": "Hello Ann"},
                    {"role": "user", "content": "Who am I?"},
                ]
            final = storage2.load("ann")
            assert final is not None
            assert final.get_messages()[-1] == {"role": "assistant", "content": "You are Ann."}
            assert_valid(final.get_messages())

    async def test_a_tool_call_is_on_disk_while_it_runs_and_settled_after(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
        tmp_path: Path,
    ) -> None:
        storage = SQLiteContextStorage(tmp_path / "tools.db")
        server.add(
            Reply.sse(chunks.tool_call_stream([_call("get_weather", {"location": "Oslo"}, "c1")])),
            Reply.sse(chunks.text_stream(["Snow."])),
        )
        release, looked = trio.Event(), trio.Event()
        on_disk_while_running: list[list[dict[str, Any]]] = []
        async with open_conversation(
            server,
            tools=ToolsSchema(standard_tools=[WEATHER]),
            storage=storage,
            conversation_id="oslo",
        ) as conv:

            async def get_weather(params: FunctionCallParams) -> None:
                await trio.testing.wait_all_tasks_blocked()
                stored = storage.load("oslo")
                assert stored is not None
                on_disk_while_running.append(stored.get_messages())
                looked.set()
                await release.wait()
                await params.result_callback({"sky": "snow"})

            conv.llm.register_function("get_weather", get_weather)
            await conv.say("Weather in Oslo?")
            with trio.fail_after(60):
                await looked.wait()
            release.set()
            await conv.wait_ends(2)
        (running,) = on_disk_while_running
        assert running[-1] == {"role": "tool", "tool_call_id": "c1", "content": "IN_PROGRESS"}
        final = storage.load("oslo")
        assert final is not None
        messages = final.get_messages()
        assert messages[-2] == {"role": "tool", "tool_call_id": "c1", "content": '{"sky": "snow"}'}
        assert messages[-1] == {"role": "assistant", "content": "Snow."}
        storage.close()

    async def test_a_failed_write_is_an_error_frame_and_the_session_goes_on(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        storage = SQLiteContextStorage(":memory:")
        storage.close()  # every write now fails
        server.add(Reply.sse(chunks.text_stream(["Still", " here"])))
        async with open_conversation(server, storage=storage, conversation_id="c") as conv:
            await conv.say("Hello?")
            await conv.wait_ends(1)
            assert conv.messages()[-1] == {"role": "assistant", "content": "Still here"}
            errors = [f for f in conv.upstream if isinstance(f, ErrorFrame)]
            assert errors
            assert "conversation 'c' was not saved" in errors[0].error

    async def test_a_call_still_open_at_the_end_is_stored_as_cancelled(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
        tmp_path: Path,
    ) -> None:
        storage = SQLiteContextStorage(tmp_path / "open.db")
        server.add(
            Reply.sse(chunks.tool_call_stream([_call("get_weather", {"location": "Rome"}, "c9")]))
        )
        never = BlockingTool()
        async with open_conversation(
            server,
            tools=ToolsSchema(standard_tools=[WEATHER]),
            storage=storage,
            conversation_id="rome",
        ) as conv:
            conv.llm.register_function("get_weather", never)
            await conv.say("Weather in Rome?")
            await never.wait_running()
            await trio.testing.wait_all_tasks_blocked()
            during = storage.load("rome")
            assert during is not None
            assert during.open_tool_calls() == ["c9"]
        stored = storage.load("rome")
        assert stored is not None
        assert stored.get_messages()[-1] == {
            "role": "tool",
            "tool_call_id": "c9",
            "content": "CANCELLED",
        }
        storage.close()
