"""Helpers shared by the client tests: fixture files, their expected parse, a request factory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from actors.client import ChatCompletionsClient, ChatRequest, RetryPolicy, Timeouts
from actors.testing import ChunkFactory, ScriptedOpenAIServer

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "openai"

API_KEY = "sk-test-Zq8wX1vB7nM4kL2pR9tY6uI3oP5aS0dF"
"""A key-shaped secret: the redaction tests check it never shows up."""
F = ChunkFactory()
"""The chunk factory the client tests script their streams with."""
HELLO = F.text_stream(["Hel", "lo", "!"], usage=(12, 3))
"""A short text answer: "Hello!", with usage."""
NO_RETRY = RetryPolicy(max_retries=0)
"""A policy that never retries."""


def fixture_bytes(name: str) -> bytes:
    """The raw bytes of a fixture file (line endings untouched)."""
    return (FIXTURES / name).read_bytes()


@attrs.frozen
class Expected:
    """One row of tests/fixtures/openai/README.md."""

    text: str
    finish_reason: str | None
    usage: tuple[int, int, int, int | None, int | None] | None
    chunks: int
    tool_calls: tuple[tuple[int, str, str], ...] = ()
    refusal: str | None = None
    error: str | None = None
    incomplete: bool = False
    logprobs: int | None = None


EXPECTED: dict[str, Expected] = {
    "01_openai_text_usage.sse": Expected(
        text="Paris is the capital of France. It sits on the Seine and is home to about 2.1 "
        "million people.",
        finish_reason="stop",
        usage=(1210, 23, 1233, 1024, 0),
        chunks=26,
    ),
    "02_openai_tool_call_single.sse": Expected(
        text="",
        finish_reason="tool_calls",
        usage=(84, 22, 106, 0, 0),
        chunks=16,
        tool_calls=((0, "get_weather", '{"location":"San Francisco, CA","unit":"celsius"}'),),
    ),
    "03_openai_parallel_tool_calls_interleaved.sse": Expected(
        text="",
        finish_reason="tool_calls",
        usage=(152, 275, 427, 0, 192),
        chunks=11,
        tool_calls=(
            (0, "get_weather", '{"location":"Paris, France","unit":"celsius"}'),
            (1, "get_local_time", '{"timezone":"Europe/Paris"}'),
        ),
    ),
    "04_openai_text_then_tool_calls.sse": Expected(
        text="Let me look that up in the docs.",
        finish_reason="tool_calls",
        usage=(311, 29, 340, 256, 0),
        chunks=24,
        tool_calls=((0, "search_docs", '{"query":"SSE keep-alive","limit":3}'),),
    ),
    "05_openai_refusal.sse": Expected(
        text="",
        refusal="I'm sorry, but I can't help with that.",
        finish_reason="stop",
        usage=(95, 10, 105, 0, 0),
        chunks=13,
    ),
    "06_openai_finish_length_logprobs.sse": Expected(
        text="Once upon a time, in a quiet village by the sea, there lived an",
        finish_reason="length",
        usage=(27, 16, 43, 0, 0),
        chunks=19,
        logprobs=16,
    ),
    "07_openai_keepalive_crlf.sse": Expected(
        text="Keep-alive comments are ignored.",
        finish_reason="stop",
        usage=(40, 6, 46, 0, 0),
        chunks=9,
    ),
    "08_openai_error_mid_stream.sse": Expected(
        text="Here is the first part",
        finish_reason=None,
        usage=None,
        chunks=6,
        error="The server had an error while processing your request. Sorry about that!",
    ),
    "09_openai_truncated_no_done.sse": Expected(
        text="The connection dropped after this",
        finish_reason=None,
        usage=None,
        chunks=6,
        incomplete=True,
    ),
    "10_openai_unicode_split.sse": Expected(
        text="你好\uff0c世界\uff01\U0001f44b Café ñandú — \U0001f469\u200d\U0001f4bb "
        "\U0001f1ef\U0001f1f5 日本語テキスト \U0001f680 déjà vu",
        finish_reason="stop",
        usage=(18, 27, 45, 0, 0),
        chunks=22,
    ),
    "11_vllm_continuous_usage.sse": Expected(
        text="Hello! How can I help you today?",
        finish_reason="stop",
        usage=(46, 10, 56, None, None),
        chunks=12,
    ),
    "12_vllm_tool_call.sse": Expected(
        text="",
        finish_reason="tool_calls",
        usage=None,
        chunks=10,
        tool_calls=((0, "get_weather", '{"location": "Berlin, Germany", "unit": "celsius"}'),),
    ),
    "13_llamacpp_text_usage_timings.sse": Expected(
        text="The current directory is `/home/user/project`.",
        finish_reason="stop",
        usage=(463, 12, 475, 448, None),
        chunks=14,
    ),
}

MESSAGES = ({"role": "user", "content": "Hello"},)


def make_request(**overrides: object) -> ChatRequest:
    """A small valid request; keyword arguments override its fields."""
    fields: dict[str, object] = {"model": "test-model", "messages": MESSAGES}
    fields.update(overrides)
    return ChatRequest(**fields)  # type: ignore[arg-type]


TIMEOUTS = Timeouts(connect=5.0, first_token=10.0, idle=5.0, total=None)
"""Short deadlines for tests (virtual time under autojump_clock)."""


def client_for(
    server: ScriptedOpenAIServer,
    *,
    retry: RetryPolicy | None = None,
    timeouts: Timeouts | None = None,
    **kwargs: Any,
) -> ChatCompletionsClient:
    """A client pointed at a scripted server, with the test key and short timeouts."""
    return ChatCompletionsClient(
        api_key=API_KEY,
        base_url=server.base_url,
        timeouts=timeouts or TIMEOUTS,
        retry=retry or RetryPolicy(),
        **kwargs,
    )
