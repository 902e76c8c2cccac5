"""No turn is lost, and a failed turn says so before it ends -- at the level a user works at:
``TextTransport`` in the quick start's pipeline, against a scripted server on a real socket.

- A line sent right after starting the task (from asyncio through ``AsyncioBridge``, or from
  trio) is answered: input given before the task has started is held, not dropped.
- A line sent to a task that has finished is refused with a clear error, and
  ``wait_answer()`` does not wait for an answer that cannot come.
- Every way a turn can fail (HTTP error, retries exhausted, stream cut or in-stream error
  after content, first-token timeout, refused image, tool errors) reports its ``ErrorFrame``
  to the task before the frame that ends the answer reaches the output, so the user who waits
  for the answer knows it failed as soon as it returns.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
import trio
import trio.testing

from actors import (
    ErrorCategory,
    FunctionCallParams,
    FunctionCallResultFrame,
    FunctionCallResultProperties,
    FunctionSchema,
    LLMFullResponseEndFrame,
    OpenAILLMContext,
    OpenAILLMService,
    TextTransport,
    ToolsSchema,
    TranscriptionFrame,
    VisionImageRawFrame,
)
from actors.client import RetryPolicy, Timeouts
from actors.testing import ChunkFactory, Reply, ScriptedOpenAIServer
from runtime import (
    AsyncioBridge,
    ErrorFrame,
    Frame,
    Pipeline,
    PipelineTask,
    Session,
    SessionStateError,
)
from runtime.testing import FrameCollector

from ..conversation_kit import API_KEY, MODEL, SYSTEM, WAIT_SECS, Conversation, open_conversation

NO_RETRY = RetryPolicy(max_retries=0)

WEATHER = FunctionSchema(
    name="get_weather",
    description="Current weather",
    properties={"location": {"type": "string"}},
    required=["location"],
)


# ---------------------------------------------------------------------- input before the start


async def _serve(server: ScriptedOpenAIServer, url: asyncio.Future[str]) -> None:
    """Run the scripted server in trio until this call is cancelled from asyncio."""
    async with server:
        url.set_result(server.base_url)
        await trio.sleep_forever()


def _quick_start(base_url: str) -> tuple[TextTransport, PipelineTask, OpenAILLMContext]:
    """The README's quick-start pipeline on ``base_url``."""
    transport = TextTransport()
    llm = OpenAILLMService(model=MODEL, api_key=API_KEY, base_url=base_url)
    pair = llm.create_context_aggregator(OpenAILLMContext(messages=[SYSTEM]))
    pipeline = Pipeline([transport.input(), pair.user(), llm, transport.output(), pair.assistant()])
    return transport, PipelineTask(pipeline), pair.context


def test_asyncio_app_sends_a_line_right_after_starting_the_task() -> None:
    """The review's case: ``bridge.run(transport.send_text, ...)`` right after starting
    ``task.run`` from asyncio. The line is answered, and so is the next one."""
    chunks = ChunkFactory()
    server = ScriptedOpenAIServer()
    server.add(
        Reply.sse(chunks.text_stream(["Hello", " from", " trio"])),
        Reply.sse(chunks.text_stream(["Again."])),
    )

    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        async with AsyncioBridge() as bridge:
            url: asyncio.Future[str] = loop.create_future()
            serving = asyncio.create_task(bridge.run(_serve, server, url))
            transport, task, context = _quick_start(await url)
            running = asyncio.create_task(bridge.run(task.run))
            await bridge.run(transport.send_text, "Hi")
            answers = [await asyncio.wait_for(bridge.run(transport.wait_answer), 30)]
            await bridge.run(task.wait_started)  # long since started: returns at once
            await bridge.run(transport.send_text, "Once more")
            answers.append(await asyncio.wait_for(bridge.run(transport.wait_answer), 30))
            await bridge.run(task.end)
            await running
            serving.cancel()
        assert [m["role"] for m in context.get_messages()] == [
            "system", "user", "assistant", "user", "assistant",
        ]  # fmt: skip
        return answers

    assert asyncio.run(main()) == ["Hello from trio", "Again."]
    assert len(server.requests) == 2


def test_asyncio_app_waits_for_the_start_then_sends() -> None:
    """``await bridge.run(task.wait_started)`` returns once the task is up."""
    chunks = ChunkFactory()
    server = ScriptedOpenAIServer()
    server.add(Reply.sse(chunks.text_stream(["Ready."])))

    async def main() -> str:
        loop = asyncio.get_running_loop()
        async with AsyncioBridge() as bridge:
            url: asyncio.Future[str] = loop.create_future()
            serving = asyncio.create_task(bridge.run(_serve, server, url))
            transport, task, _ = _quick_start(await url)
            running = asyncio.create_task(bridge.run(task.run))
            await asyncio.wait_for(bridge.run(task.wait_started), 30)
            assert task.has_started()
            await bridge.run(transport.send_text, "Hi")
            answer = await asyncio.wait_for(bridge.run(transport.wait_answer), 30)
            await bridge.run(task.end)
            await running
            serving.cancel()
        return answer

    assert asyncio.run(main()) == "Ready."


async def test_trio_app_sends_a_line_right_after_starting_the_task(
    autojump_clock: trio.testing.MockClock,
    server: ScriptedOpenAIServer,
    chunks: ChunkFactory,
) -> None:
    """The same in plain trio: ``start_soon(task.run)``, then ``send_text`` at once."""
    server.add(Reply.sse(chunks.text_stream(["Hello", " there"])))
    transport, task, _ = _quick_start(server.base_url)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(task.run)
        await transport.send_text("Hi")
        with trio.fail_after(WAIT_SECS):
            assert await transport.wait_answer() == "Hello there"
        await task.end()
    assert len(server.requests) == 1


async def test_a_line_sent_before_the_task_runs_is_answered(
    autojump_clock: trio.testing.MockClock,
    server: ScriptedOpenAIServer,
    chunks: ChunkFactory,
) -> None:
    server.add(Reply.sse(chunks.text_stream(["Early", " bird"])))
    transport, task, _ = _quick_start(server.base_url)
    await transport.send_text("Hi")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(task.run)
        with trio.fail_after(WAIT_SECS):
            assert await transport.wait_answer() == "Early bird"
        await task.end()


async def test_a_line_sent_to_a_finished_task_is_refused(
    autojump_clock: trio.testing.MockClock,
    server: ScriptedOpenAIServer,
) -> None:
    transport, task, _ = _quick_start(server.base_url)
    async with task:
        pass
    with pytest.raises(SessionStateError, match="has finished"):
        await transport.send_text("Anyone there?")
    with trio.fail_after(1):  # nothing is coming, so nothing to wait for
        await transport.wait_answer()
    assert server.requests == []


# ---------------------------------------------------------------------- errors before the end


def first(
    seen: list[Frame], cls: type[Frame], where: Callable[[Any], bool] = lambda f: True
) -> int:
    """Where the first frame of ``cls`` (that ``where`` accepts) is in ``seen``."""
    for i, frame in enumerate(seen):
        if isinstance(frame, cls) and where(frame):
            return i
    raise AssertionError(f"no {cls.__name__} in {[type(f).__name__ for f in seen]}")


def last(seen: list[Frame], cls: type[Frame]) -> int:
    """Where the last frame of ``cls`` is in ``seen``."""
    return max(i for i, frame in enumerate(seen) if isinstance(frame, cls))


def open_chat(
    server: ScriptedOpenAIServer, **options: Any
) -> AbstractAsyncContextManager[Conversation]:
    """The quick-start pipeline; its ``seen`` is what the user can see, in arrival order: every
    frame reaching the output (``on_output``) and every error reaching the task."""
    return open_conversation(server, quick_start=True, **options)


def _failures(chunks: ChunkFactory) -> dict[str, tuple[list[Reply], dict[str, Any]]]:
    """Each way an inference can fail: the server's replies and the service's settings."""
    return {
        "http_error": ([Reply.error(500, "scripted 500")], {"retry": NO_RETRY}),
        "retries_exhausted": (
            [Reply.error(429, "slow down", retry_after=1) for _ in range(3)],
            {},
        ),
        "stream_cut_after_content": (
            [Reply.sse([chunks.role(), chunks.text("Half an ")], done=False, ending="disconnect")],
            {},
        ),
        "in_stream_error_after_content": (
            [Reply.sse([chunks.role(), chunks.text("Half"), chunks.error("boom")], done=False)],
            {},
        ),
        "first_token_timeout": (
            [Reply.stall(before_headers=False)],
            {"retry": NO_RETRY, "timeouts": Timeouts(first_token=4)},
        ),
    }


FAILURES = list(_failures(ChunkFactory()))


class TestAFailedAnswerSaysSoBeforeItEnds:
    @pytest.mark.parametrize("failure", FAILURES)
    async def test_the_error_reaches_the_task_before_the_end_reaches_the_output(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
        failure: str,
    ) -> None:
        replies, settings = _failures(chunks)[failure]
        server.add(*replies)
        async with open_chat(server, **settings) as chat:
            await chat.transport.send_text("Hello")
            with trio.fail_after(WAIT_SECS):
                await chat.transport.wait_answer()
            # The moment the wait returns, the task has the error.
            (error,) = chat.task.errors
            assert error.source == chat.llm.name
            end = first(chat.seen, LLMFullResponseEndFrame)
            assert first(chat.seen, ErrorFrame) < end
            assert chat.seen[end].error  # type: ignore[attr-defined]

    async def test_a_refused_image_ends_its_answer_after_the_error(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
    ) -> None:
        """An oversized image never reaches the server, but its answer still ends (with
        ``error=True``), after the error: whoever waits for the answer is not left waiting."""
        async with open_chat(server, max_image_bytes=1_000) as chat:
            image = VisionImageRawFrame(
                image=b"\x89PNG" + bytes(5_000), size=(64, 64), format="image/png"
            )
            await chat.task.queue_frame(image)
            await chat.wait_for(lambda: bool(chat.ends()))
            (error,) = chat.task.errors
            assert error.category == ErrorCategory.INVALID_REQUEST
            end = first(chat.seen, LLMFullResponseEndFrame)
            assert first(chat.seen, ErrorFrame) < end
            assert chat.seen[end].error  # type: ignore[attr-defined]
        assert server.requests == []


def _tool_call(chunks: ChunkFactory, name: str, arguments: str) -> Reply:
    return Reply.sse(chunks.tool_call_stream([(name, arguments, "call_1")]))


def _is_result(frame: FunctionCallResultFrame) -> bool:
    return frame.tool_call_id == "call_1"


class TestAFailedToolSaysSoBeforeItsResult:
    """A tool's error reaches the task before the call's result frame reaches the output:
    that frame may end the answer (no follow-up), and it feeds the follow-up otherwise."""

    async def test_a_handler_that_raises(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        server.add(
            _tool_call(chunks, "get_weather", json.dumps({"location": "Paris"})),
            Reply.sse(chunks.text_stream(["No weather today."])),
        )
        async with open_chat(server, tools=ToolsSchema(standard_tools=[WEATHER])) as chat:

            async def broken(params: FunctionCallParams) -> None:
                raise RuntimeError("weather service down")

            chat.llm.register_function("get_weather", broken)
            await chat.transport.send_text("Weather in Paris?")
            with trio.fail_after(WAIT_SECS):
                assert await chat.transport.wait_answer() == "No weather today."
            (error,) = chat.task.errors
            assert "weather service down" in error.error
            result = first(chat.seen, FunctionCallResultFrame, _is_result)
            assert first(chat.seen, ErrorFrame) < result
            follow_up_end = last(chat.seen, LLMFullResponseEndFrame)
            assert result < follow_up_end

    async def test_a_handler_that_raises_after_a_final_result(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        """The result asks for no follow-up, so it ends the answer: the error comes first."""
        server.add(_tool_call(chunks, "get_weather", json.dumps({"location": "Paris"})))
        async with open_chat(server, tools=ToolsSchema(standard_tools=[WEATHER])) as chat:

            async def half_broken(params: FunctionCallParams) -> None:
                await params.result_callback(
                    {"sky": "sunny"}, properties=FunctionCallResultProperties(run_llm=False)
                )
                raise RuntimeError("cleanup failed")

            chat.llm.register_function("get_weather", half_broken)
            await chat.transport.send_text("Weather in Paris?")
            with trio.fail_after(WAIT_SECS):
                await chat.transport.wait_answer()
            (error,) = chat.task.errors
            assert "cleanup failed" in error.error
            assert first(chat.seen, ErrorFrame) < first(
                chat.seen, FunctionCallResultFrame, _is_result
            )
        assert len(server.requests) == 1

    @pytest.mark.parametrize(
        ("name", "arguments", "message"),
        [
            ("get_weather", '{"location": "Par', "Invalid arguments"),
            ("get_stock_price", "{}", "has no handler"),
        ],
        ids=["invalid_arguments", "unknown_function"],
    )
    async def test_a_call_that_cannot_run(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
        name: str,
        arguments: str,
        message: str,
    ) -> None:
        server.add(
            _tool_call(chunks, name, arguments),
            Reply.sse(chunks.text_stream(["Sorry."])),
        )
        async with open_chat(server, tools=ToolsSchema(standard_tools=[WEATHER])) as chat:

            async def weather(params: FunctionCallParams) -> None:
                await params.result_callback({"sky": "sunny"})

            chat.llm.register_function("get_weather", weather)
            await chat.transport.send_text("Weather in Paris?")
            with trio.fail_after(WAIT_SECS):
                assert await chat.transport.wait_answer() == "Sorry."
            (error,) = chat.task.errors
            assert message in error.error
            assert first(chat.seen, ErrorFrame) < first(
                chat.seen, FunctionCallResultFrame, _is_result
            )


# ---------------------------------------------------------------------- input before the store


async def test_text_handled_before_the_context_store_has_started_still_gets_an_answer(
    autojump_clock: trio.testing.MockClock,
    server: ScriptedOpenAIServer,
    chunks: ChunkFactory,
) -> None:
    """Built on a plain ``Session`` (no task to hold input): the user aggregator spawns the
    context store when it starts, and the first line can reach the aggregator before the
    store has handled its own ``StartFrame``. A store that has not started yet is not a store
    that has stopped: the line still goes through it and gets its answer. Which task trio runs
    first varies, so the case is run many times (before the fix it lost about one turn in
    two: the line went into the context, no inference ran)."""
    for attempt in range(16):
        server.add(Reply.sse(chunks.text_stream([f"Answer {attempt}"])))
        llm = OpenAILLMService(model=MODEL, api_key=API_KEY, base_url=server.base_url)
        pair = llm.create_context_aggregator(OpenAILLMContext(messages=[SYSTEM]))
        out = FrameCollector()
        async with Session.open() as session:
            for actor in (pair.user(), llm, out):
                session.spawn(actor)
            session.link(pair.user(), llm)
            session.link(llm, out)
            await pair.user().ref.send(TranscriptionFrame("Hello", user_id="u", timestamp=""))
            (end,) = await out.wait_for(1, LLMFullResponseEndFrame, timeout=WAIT_SECS)
            assert not end.error  # type: ignore[attr-defined]
        assert [m["role"] for m in pair.context.get_messages()] == ["system", "user"], attempt
    assert len(server.requests) == 16
