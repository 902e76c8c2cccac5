"""End-to-end: the actors (``OpenAILLMService`` in the seed pipeline, run by ``PipelineTask``)
against the real llama-server on the real local model.

The assertions are about the wire format and the frames -- never about what the 0.5B model
says. Every step is bounded in real time (see ``STEP_TIMEOUT``). These tests need ``make local``;
without it they skip, except under ``CI=true`` where they fail (see ``tests/conftest.py``).
"""

from __future__ import annotations

import importlib.util
import io
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import pytest
import trio
from PIL import Image

from actors import (
    ErrorCategory,
    FunctionCallInProgressFrame,
    FunctionCallParams,
    FunctionCallResultFrame,
    FunctionCallsStartedFrame,
    FunctionSchema,
    LLMMessagesUpdateFrame,
    LLMTextFrame,
    LLMUsageMetricsData,
    ProcessingMetricsData,
    ToolsSchema,
    TTFBMetricsData,
    VisionImageRawFrame,
)
from actors.client import BadRequestError, InternalServerError
from runtime import MetricsFrame

from ..conftest import LocalLLM
from .e2e_kit import STEP_TIMEOUT, open_conversation, server_get, sockets_to, wait_until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]

WEATHER = FunctionSchema(
    name="get_weather",
    description="Get the current weather for a city",
    properties={"city": {"type": "string", "description": "City name"}},
    required=["city"],
)
WEATHER_RESULT = {"temperature_c": 18, "condition": "sunny"}


def _metrics(frames: list[MetricsFrame]) -> list[Any]:
    return [item for frame in frames for item in frame.data]


async def test_text_turn_streams_with_usage_and_ttfb(local_llm_server: LocalLLM) -> None:
    async with open_conversation(local_llm_server) as chat:
        await chat.transport.send_text("Say hello in one short sentence.")
        await chat.wait_for(lambda: bool(chat.ends()), "the end of the answer")
        await chat.wait_for(
            lambda: any(
                isinstance(m, LLMUsageMetricsData) for m in _metrics(chat.of_type(MetricsFrame))
            ),
            "the usage metrics",
        )
        answer = await chat.transport.wait_answer()

    assert chat.errors == []
    assert len(chat.starts()) == 1
    assert len(chat.ends()) == 1
    end = chat.ends()[0]
    assert not end.interrupted
    assert not end.error
    texts = chat.of_type(LLMTextFrame)
    assert len(texts) >= 2, "the answer arrives token by token"
    first, last = chat.position(chat.starts()[0]), chat.position(end)
    assert all(first < chat.position(t) < last for t in texts)
    assert chat.text().strip()
    assert answer == chat.text()
    assert chat.context.messages[-1] == {"role": "assistant", "content": chat.text()}

    metrics = _metrics(chat.of_type(MetricsFrame))
    (usage,) = [m.value for m in metrics if isinstance(m, LLMUsageMetricsData)]
    assert usage.prompt_tokens > 0
    assert usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.completion_tokens >= len(texts) - 1  # one delta per token, at most one spare
    (ttfb,) = [m for m in metrics if isinstance(m, TTFBMetricsData)]
    assert 0 < ttfb.value < STEP_TIMEOUT
    assert ttfb.model == local_llm_server.model
    (processing,) = [m for m in metrics if isinstance(m, ProcessingMetricsData)]
    assert processing.value >= ttfb.value


async def test_tool_call_round_trip(local_llm_server: LocalLLM) -> None:
    calls: list[FunctionCallParams] = []

    async def get_weather(params: FunctionCallParams) -> None:
        calls.append(params)
        await params.result_callback(WEATHER_RESULT)

    async with open_conversation(
        local_llm_server,
        tools=ToolsSchema(standard_tools=[WEATHER]),
        functions={"get_weather": get_weather},
    ) as chat:
        await chat.transport.send_text("What's the weather in Paris?")
        await chat.wait_for(lambda: len(chat.ends()) >= 2, "the follow-up answer")
        answer = await chat.transport.wait_answer()

    assert chat.errors == []
    # First inference: streamed tool_calls -> one FunctionCallsStartedFrame, no text.
    (started,) = chat.of_type(FunctionCallsStartedFrame)
    (call,) = started.function_calls
    assert call.function_name == "get_weather"
    assert call.tool_call_id
    assert call.arguments_error is None
    assert isinstance(call.arguments.get("city"), str)
    assert json.loads(call.arguments_json) == dict(call.arguments)
    # The registered handler ran once, with those arguments.
    assert len(calls) == 1
    assert calls[0].tool_call_id == call.tool_call_id
    assert dict(calls[0].arguments) == dict(call.arguments)
    (progress,) = chat.of_type(FunctionCallInProgressFrame)
    (result,) = chat.of_type(FunctionCallResultFrame)
    assert progress.tool_call_id == result.tool_call_id == call.tool_call_id
    assert result.result == WEATHER_RESULT
    assert result.error is None
    # Then the follow-up inference answered in text: two Start/End pairs, text only in the 2nd.
    assert len(chat.starts()) == 2
    assert len(chat.ends()) == 2
    assert not any(e.interrupted or e.error for e in chat.ends())
    order = chat.position
    first_end, second_start = order(chat.ends()[0]), order(chat.starts()[1])
    assert order(started) < first_end < order(result) < second_start
    texts = chat.of_type(LLMTextFrame)
    assert texts, "the follow-up produced text"
    assert all(order(t) > second_start for t in texts)
    assert answer.strip()
    assert answer == chat.text()
    # The conversation holds the whole round, in the OpenAI shape.
    roles = [m["role"] for m in chat.context.messages]
    assert roles == ["system", "user", "assistant", "tool", "assistant"]
    assistant_call, tool, final = chat.context.messages[2:]
    assert assistant_call["tool_calls"][0]["id"] == call.tool_call_id
    assert assistant_call["tool_calls"][0]["function"]["name"] == "get_weather"
    assert tool["tool_call_id"] == call.tool_call_id
    assert json.loads(tool["content"]) == WEATHER_RESULT
    assert final == {"role": "assistant", "content": answer}


async def test_interruption_closes_the_stream_and_the_next_turn_works(
    local_llm_server: LocalLLM,
) -> None:
    port = local_llm_server.port

    async def slots_idle() -> bool:
        slots = await server_get(local_llm_server, "/slots")
        return not any(slot["is_processing"] for slot in slots)

    async def wait_idle() -> None:
        with trio.fail_after(60):
            while True:
                if await slots_idle():
                    return
                await trio.sleep(0.1)

    await wait_idle()  # the proof below starts from an idle server
    async with open_conversation(local_llm_server) as chat:
        await chat.transport.send_text("Count from 1 to 200, one number per line.")
        await chat.wait_for(lambda: len(chat.of_type(LLMTextFrame)) >= 5, "5 text frames")
        # The stream is live: our socket to the server is open and a slot is generating.
        assert sockets_to(port) == 1
        assert not await slots_idle()

        chat.task.interrupt("test interrupts the answer")
        chat.transport.interrupted()
        await chat.wait_for(lambda: bool(chat.ends()), "the end frame of the interrupted answer")
        # Our side: the socket is closed at once, not left to the pool.
        await wait_until(lambda: sockets_to(port) == 0, "socket to llama-server closed", 10.0)
        # The server's side: it noticed the closed connection and stopped generating (long
        # before the 200 numbers were written).
        await wait_idle()
        (end,) = chat.ends()
        assert end.interrupted
        assert not end.error
        partial = chat.text()

        # The next turn works, in the same session.
        await chat.transport.send_text("Say hello in one short sentence.")
        await chat.wait_for(lambda: len(chat.ends()) == 2, "the end of the next answer")
        answer = await chat.transport.wait_answer()

    assert chat.errors == []
    assert len(chat.starts()) == 2
    ends = chat.ends()
    assert [e.interrupted for e in ends] == [True, False]
    assert sum(e.interrupted for e in ends) == 1
    assert not ends[1].error
    # No text of the interrupted answer arrived after its end frame: every later text frame
    # belongs to the next answer.
    order = chat.position
    late = [f for f in chat.output[order(ends[0]) :] if isinstance(f, LLMTextFrame)]
    assert late
    assert all(order(f) > order(chat.starts()[1]) for f in late)
    assert answer.strip()
    # The partial answer stays in the conversation, marked as interrupted: exactly the text the
    # output showed (docs/trust.md, "The context is what the user saw").
    messages = chat.context.messages
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    assert messages[2]["content"]
    assert messages[2]["content"] == partial.strip()
    assert chat.context.is_interrupted(2)
    assert not chat.context.is_interrupted(4)


async def test_prompt_over_the_context_size_is_a_clear_invalid_request(
    local_llm_server: LocalLLM,
) -> None:
    slots = await server_get(local_llm_server, "/slots")
    n_ctx = slots[0]["n_ctx"]
    too_long = "hello " * (n_ctx + 200)  # one token per word
    async with open_conversation(local_llm_server) as chat:
        await chat.transport.send_text(too_long)
        await chat.wait_for(lambda: bool(chat.errors) and bool(chat.ends()), "the error")
        (error,) = chat.errors
        (end,) = chat.ends()
        assert end.error
        assert not end.interrupted
        assert chat.of_type(LLMTextFrame) == []
        assert not chat.task.has_finished()

        # The session goes on: replace the conversation and run the LLM again.
        short = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
        await chat.task.queue_frame(LLMMessagesUpdateFrame(short, run_llm=True))
        await chat.wait_for(lambda: len(chat.ends()) == 2, "the answer after the error")

    assert error.category == ErrorCategory.INVALID_REQUEST
    assert not error.fatal
    assert error.source == chat.llm.name
    assert isinstance(error.exception, BadRequestError)
    assert error.exception.status == 400
    assert error.exception.attempts == 1, "a 400 is not retried"
    assert "400" in error.error
    assert "exceeds the available context size" in error.error
    assert f"({n_ctx} tokens)" in error.error
    assert len(chat.errors) == 1
    second = chat.ends()[1]
    assert not second.error
    assert not second.interrupted
    assert chat.text().strip()


def _png(width: int = 8, height: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


async def test_image_is_refused_with_a_clear_error(local_llm_server: LocalLLM) -> None:
    png = _png()
    assert png.startswith(b"\x89PNG")
    async with open_conversation(local_llm_server) as chat:
        frame = VisionImageRawFrame(png, (8, 8), "image/png", "What is in this image?")
        await chat.task.queue_frame(frame)
        await chat.wait_for(lambda: bool(chat.errors) and bool(chat.ends()), "the error")

    (error,) = chat.errors
    (end,) = chat.ends()
    assert end.error
    assert chat.of_type(LLMTextFrame) == []
    assert error.category == ErrorCategory.SERVER
    assert not error.fatal
    assert isinstance(error.exception, InternalServerError)
    assert error.exception.status == 500
    assert "500" in error.error
    assert "image input is not supported" in error.error


def _example_main(
    name: str, server: LocalLLM, monkeypatch: pytest.MonkeyPatch
) -> Callable[[list[str]], Awaitable[list[str]]]:
    """The ``main`` of ``examples/<name>.py``, pointed at the local model."""
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "no-key")
    monkeypatch.setenv("OPENAI_MODEL", server.model)
    spec = importlib.util.spec_from_file_location(
        f"{name}_example", ROOT / "examples" / f"{name}.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return cast("Callable[[list[str]], Awaitable[list[str]]]", module.main)


async def test_seed_example_runs_on_the_local_model(
    local_llm_server: LocalLLM,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    main = _example_main("function_calling", local_llm_server, monkeypatch)

    with trio.fail_after(STEP_TIMEOUT * 2):
        answers = await main(["What's the weather in Paris?"])

    assert len(answers) == 1
    assert answers[0].strip()
    out = capsys.readouterr().out
    assert "> What's the weather in Paris?" in out
    assert answers[0] in out


async def test_pipecat_1x_example_runs_on_the_local_model(
    local_llm_server: LocalLLM,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The 1.x-style example (``LLMContext`` with a plain function and a handler-carrying
    schema, the standalone aggregator pair, ``Settings``, ``LLMRunFrame``, ``PipelineWorker``):
    a greeting, then an answer."""
    main = _example_main("function_calling_1x", local_llm_server, monkeypatch)

    with trio.fail_after(STEP_TIMEOUT * 3):
        answers = await main(["What's the weather in Paris?"])

    assert len(answers) == 2
    assert all(answer.strip() for answer in answers)
    out = capsys.readouterr().out
    assert "> What's the weather in Paris?" in out
    assert answers[1] in out
