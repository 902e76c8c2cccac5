"""The seed pipeline embedded in an asyncio application through ``AsyncioBridge``, and tool
handlers written with asyncio libraries.

Synchronous tests that start their own asyncio loop: the scripted OpenAI server and the
pipeline run in trio (as the bridge's guest), the application code that feeds the user's
text, reads the answer and interrupts is asyncio; so are the handlers, which run on the
application's loop. The last test is a trio application (no bridge).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import sniffio
import trio
import trio.lowlevel
import trio.testing

from actors import (
    FunctionCallCancelFrame,
    FunctionCallParams,
    FunctionCallResultProperties,
    FunctionSchema,
    LLMFullResponseEndFrame,
    LLMTextFrame,
    OpenAILLMContext,
    OpenAILLMService,
    ToolsSchema,
    TranscriptionFrame,
)
from actors.testing import ChunkFactory, Reply, ScriptedOpenAIServer
from runtime import (
    AsyncioBridge,
    EventLoopMismatchError,
    Frame,
    FrameDirection,
    Pipeline,
    PipelineTask,
)

from ..conversation_kit import API_KEY, MODEL, SYSTEM, WAIT_SECS, open_conversation, tool_answer

T = TypeVar("T")


async def _serve(server: ScriptedOpenAIServer, url: asyncio.Future[str]) -> None:
    """Run the scripted server in trio until this call is cancelled from asyncio."""
    async with server:
        url.set_result(server.base_url)
        await trio.sleep_forever()


def test_an_asyncio_app_holds_a_conversation_and_interrupts_it() -> None:
    chunks = ChunkFactory()
    server = ScriptedOpenAIServer()
    server.add(
        Reply.sse(chunks.text_stream(["Hello", " from", " trio"])),
        # The second answer sends its first piece at once and then stalls: the application
        # interrupts it after that piece.
        Reply.sse(
            [
                chunks.chunk({"role": "assistant", "content": "One"}),
                chunks.text(" two"),
                chunks.finish(),
            ],
            first_delay=0.0,
            delay=60.0,
        ),
        Reply.sse(chunks.text_stream(["Sure."])),
    )

    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        frames: asyncio.Queue[Frame] = asyncio.Queue()

        def listener(frame: Frame, direction: FrameDirection) -> None:
            if isinstance(frame, LLMTextFrame | LLMFullResponseEndFrame):
                frames.put_nowait(frame)

        async def answer() -> str:
            text = []
            while not isinstance(frame := await frames.get(), LLMFullResponseEndFrame):
                assert isinstance(frame, LLMTextFrame)
                text.append(frame.text)
            return "".join(text)

        async with AsyncioBridge() as trio_side:
            url: asyncio.Future[str] = loop.create_future()
            serving = asyncio.create_task(trio_side.run(_serve, server, url))
            llm = OpenAILLMService(model=MODEL, api_key=API_KEY, base_url=await url)
            pair = llm.create_context_aggregator(OpenAILLMContext(messages=[SYSTEM]))
            task = PipelineTask(
                Pipeline([pair.user(), llm, pair.assistant()]), on_downstream=listener
            )
            running = asyncio.create_task(trio_side.run(task.run))

            answers = []
            await trio_side.run(task.queue_frame, TranscriptionFrame("Hi", user_id="u"))
            answers.append(await answer())

            await trio_side.run(task.queue_frame, TranscriptionFrame("Count", user_id="u"))
            first = await frames.get()
            assert isinstance(first, LLMTextFrame)
            await trio_side.run_sync(task.interrupt)
            answers.append(first.text)
            # The interrupted response still ends with its end frame, and no text after it.
            assert isinstance(await frames.get(), LLMFullResponseEndFrame)

            await trio_side.run(task.queue_frame, TranscriptionFrame("Stop?", user_id="u"))
            answers.append(await answer())

            await trio_side.run(task.end)
            await running
            serving.cancel()
            messages = pair.context.get_messages()
        assert [m["role"] for m in messages] == [
            "system", "user", "assistant", "user", "assistant", "user", "assistant",
        ]  # fmt: skip
        assert messages[4]["content"].startswith("One")  # committed, marked as interrupted
        assert len(server.requests) == 3
        return answers

    assert asyncio.run(main()) == ["Hello from trio", "One", "Sure."]


# ---------------------------------------------------------------------- tool handlers

NOTES = FunctionSchema(
    name="save_note",
    description="Save a note",
    properties={"text": {"type": "string"}},
    required=["text"],
)
CLOCK = FunctionSchema(name="server_clock", description="The server's clock", properties={})


def _in_asyncio_app(scenario: Callable[[], Awaitable[T]]) -> T:
    """Run the trio ``scenario`` as an asyncio application would: under ``AsyncioBridge``.
    Afterwards no asyncio task is left but the application's own."""

    async def main() -> T:
        async with AsyncioBridge() as trio_side:
            result = await trio_side.run(scenario)
        assert asyncio.all_tasks() == {asyncio.current_task()}
        return result

    return asyncio.run(main())


def test_a_handler_in_an_asyncio_app_awaits_a_real_asyncio_library(tmp_path: Path) -> None:
    """The handler writes to a real SQLite file with aiosqlite (an asyncio library: a worker
    thread resolving asyncio futures). Under a bridge it runs as an asyncio task on the
    application's loop; its result and its ``on_context_updated`` callback work from there."""
    database = tmp_path / "notes.db"
    with contextlib.closing(sqlite3.connect(database)) as db, db:
        db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL)")
    chunks = ChunkFactory()
    updated: list[str] = []

    async def save_note(params: FunctionCallParams) -> None:
        async with aiosqlite.connect(database) as db:
            cursor = await db.execute(
                "INSERT INTO notes (text) VALUES (?)", (params.arguments["text"],)
            )
            await db.commit()
            note_id = cursor.lastrowid

        async def context_updated() -> None:
            await asyncio.sleep(0)  # asyncio again
            updated.append(sniffio.current_async_library())

        await params.result_callback(
            {"id": note_id, "loop": sniffio.current_async_library()},
            properties=FunctionCallResultProperties(on_context_updated=context_updated),
        )

    async def scenario() -> list[dict[str, Any]]:
        async with ScriptedOpenAIServer() as server:
            server.add(
                Reply.sse(chunks.tool_call_stream([("save_note", '{"text": "buy milk"}', "c1")])),
                Reply.sse(chunks.text_stream(["Saved."])),
            )
            tools = ToolsSchema(standard_tools=[NOTES])
            async with open_conversation(server, tools=tools, quick_start=True, within=10) as chat:
                chat.llm.register_function("save_note", save_note)
                await chat.say("Note: buy milk")
                with trio.fail_after(10):
                    assert await chat.transport.wait_answer() == "Saved."
                assert chat.task.errors == []
            return chat.messages()

    messages = _in_asyncio_app(scenario)
    assert json.loads(tool_answer(messages, "c1")) == {"id": 1, "loop": "asyncio"}
    assert updated == ["asyncio"]
    with contextlib.closing(sqlite3.connect(database)) as db:
        assert db.execute("SELECT id, text FROM notes").fetchall() == [(1, "buy milk")]


def test_a_timeout_cancels_the_asyncio_task_of_a_handler_and_waits_for_it() -> None:
    """The handler sees ``CancelledError`` and its asyncio cleanup finishes before the call
    settles as timed out; the model then answers."""
    chunks = ChunkFactory()
    events: list[str] = []

    async def slow_clock(params: FunctionCallParams) -> None:
        events.append("started")
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(0.001)  # asyncio cleanup
            events.append("cleaned up")
            raise

    async def scenario() -> None:
        async with ScriptedOpenAIServer() as server:
            server.add(
                Reply.sse(chunks.tool_call_stream([("server_clock", "{}", "c1")])),
                Reply.sse(chunks.text_stream(["The clock is slow."])),
            )
            tools = ToolsSchema(standard_tools=[CLOCK])
            async with open_conversation(server, tools=tools, quick_start=True, within=10) as chat:
                chat.llm.register_function("server_clock", slow_clock, timeout_secs=0.05)
                await chat.say("What time is it?")
                with trio.fail_after(10):
                    assert await chat.transport.wait_answer() == "The clock is slow."
                (cancel,) = chat.of_type(FunctionCallCancelFrame)
                assert cancel.reason == "timeout"
                assert events == ["started", "cleaned up"]

    _in_asyncio_app(scenario)


def test_a_trio_native_handler_runs_in_trio_and_mismatches_are_explained() -> None:
    """Under a bridge, ``trio_native=True`` runs a handler in trio. A trio handler that awaits
    asyncio code, and an asyncio handler that awaits trio code, fail with an error that says
    what to do instead of trio's or asyncio's raw one."""
    chunks = ChunkFactory()

    async def trio_clock(params: FunctionCallParams) -> None:
        await trio.lowlevel.checkpoint()
        await params.result_callback({"loop": sniffio.current_async_library()})

    async def asyncio_in_trio(params: FunctionCallParams) -> None:
        await asyncio.sleep(0.001)

    async def trio_in_asyncio(params: FunctionCallParams) -> None:
        await trio.sleep(0.001)

    async def scenario() -> tuple[list[dict[str, Any]], list[str]]:
        async with ScriptedOpenAIServer() as server:
            calls = [("trio_clock", "{}", "c1"), ("broken_a", "{}", "c2"), ("broken_b", "{}", "c3")]
            server.add(
                Reply.sse(chunks.tool_call_stream(calls)),
                Reply.sse(chunks.text_stream(["Done."])),
            )
            async with open_conversation(server, quick_start=True, within=10) as chat:
                chat.llm.register_function("trio_clock", trio_clock, trio_native=True)
                chat.llm.register_function("broken_a", asyncio_in_trio, trio_native=True)
                chat.llm.register_function("broken_b", trio_in_asyncio)
                await chat.say("Go")
                with trio.fail_after(10):
                    await chat.transport.wait_answer()
                errors = sorted(error.error for error in chat.task.errors)
            return chat.messages(), errors

    messages, errors = _in_asyncio_app(scenario)
    assert json.loads(tool_answer(messages, "c1")) == {"loop": "trio"}
    assert "failed" in tool_answer(messages, "c2")
    assert "failed" in tool_answer(messages, "c3")
    asyncio_error, trio_error = errors
    assert "EventLoopMismatchError: the handler of 'broken_a' awaited asyncio code in trio" in (
        asyncio_error
    )
    assert "runtime.asyncio_call" in asyncio_error
    assert "without trio_native=True" in asyncio_error
    assert "EventLoopMismatchError: the handler of 'broken_b' used trio" in trio_error
    assert "Register it with trio_native=True" in trio_error


async def test_an_asyncio_handler_in_a_trio_app_is_explained(
    autojump_clock: trio.testing.MockClock, server: ScriptedOpenAIServer, chunks: ChunkFactory
) -> None:
    """Without a bridge (``trio.run``), an asyncio call in a handler fails with an error that
    names the fix, and the model is told the function failed."""

    async def save_note(params: FunctionCallParams) -> None:
        await asyncio.sleep(0.001)

    server.add(
        Reply.sse(chunks.tool_call_stream([("save_note", '{"text": "x"}', "c1")])),
        Reply.sse(chunks.text_stream(["Sorry."])),
    )
    tools = ToolsSchema(standard_tools=[NOTES])
    async with open_conversation(server, tools=tools, quick_start=True) as chat:
        chat.llm.register_function("save_note", save_note)
        await chat.say("Note: x")
        with trio.fail_after(WAIT_SECS):
            assert await chat.transport.wait_answer() == "Sorry."
        (error,) = chat.task.errors
    assert "the handler of 'save_note' awaited asyncio code in trio" in error.error
    assert "AsyncioBridge" in error.error
    assert isinstance(error.exception, EventLoopMismatchError)
    assert "failed" in tool_answer(chat.messages(), "c1")
