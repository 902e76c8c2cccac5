"""OpenTelemetry spans (``actors.tracing``), read back from the SDK's in-memory exporter: a
turn with two tool calls gives turn -> chat -> execute_tool with the GenAI attribute names;
interrupted work ends in error with ``error.type="cancelled"``; HTTP errors name their
status; OpenTelemetry is imported only when tracing is enabled."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
import trio
import trio.testing
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from actors import FunctionHandler, tracing
from actors.testing import ChunkFactory, Reply, ScriptedOpenAIServer

from ..conversation_kit import MODEL, open_conversation
from .actors_kit import TOOLS, TWO_CALLS, TWO_TOOL_FUNCTIONS, BlockingTool


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing enabled into an in-memory exporter for the test."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider)
    assert tracing.is_enabled()
    yield exporter
    tracing.disable()
    assert not tracing.is_enabled()
    provider.shutdown()


def _named(exporter: InMemorySpanExporter) -> dict[str, list[ReadableSpan]]:
    out: dict[str, list[ReadableSpan]] = {}
    for span in exporter.get_finished_spans():
        out.setdefault(span.name, []).append(span)
    return out


def _parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def _span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    span_id: int = span.context.span_id
    return span_id


def _assert_failed(error_type: str, *spans: ReadableSpan) -> None:
    """Each span ended in error, with this ``error.type``."""
    for span in spans:
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes is not None
        assert span.attributes["error.type"] == error_type


class TestTwoToolTurn:
    async def test_turn_chat_and_tool_spans(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
        spans: InMemorySpanExporter,
    ) -> None:
        server.add(
            Reply.sse(chunks.tool_call_stream(TWO_CALLS, usage=(40, 12)), first_delay=0.3),
            Reply.sse(chunks.text_stream(["Sunny."], usage=(60, 5)), first_delay=0.1),
        )
        functions = TWO_TOOL_FUNCTIONS
        async with open_conversation(server, tools=TOOLS, functions=functions, name="traced"):
            pass  # (opened and closed: no span without a request)
        assert spans.get_finished_spans() == ()
        async with open_conversation(
            server, tools=TOOLS, functions=functions, name="traced"
        ) as conv:
            await conv.say("Weather and time in Paris?")
            await conv.wait_ends(2)

        named = _named(spans)
        assert sorted(named) == [
            "chat gpt-test",
            "execute_tool get_time",
            "execute_tool get_weather",
            "turn",
        ]
        (turn,) = named["turn"]
        first, follow_up = sorted(named["chat gpt-test"], key=lambda s: s.start_time or 0)
        (weather_span,) = named["execute_tool get_weather"]
        (time_span,) = named["execute_tool get_time"]

        # One trace: the turn is the root, both requests are its children, the tool calls
        # children of the request that asked for them (they ran in the executor's tasks).
        assert turn.parent is None
        assert {s.context.trace_id for s in spans.get_finished_spans() if s.context} == {
            turn.context.trace_id if turn.context else 0
        }
        assert _parent_id(first) == _parent_id(follow_up) == _span_id(turn)
        assert _parent_id(weather_span) == _parent_id(time_span) == _span_id(first)
        assert turn.attributes is not None
        assert turn.attributes["trouper.session"] == "traced"
        assert turn.attributes["trouper.actor"] == conv.llm.name
        assert turn.status.status_code is StatusCode.UNSET
        # The turn ends with its last request.
        assert (turn.end_time or 0) >= (follow_up.end_time or 0)

        assert first.kind is SpanKind.CLIENT
        assert first.attributes is not None
        assert dict(first.attributes) | {"trouper.ttfb_ms": 0} == {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.system": "openai",
            "gen_ai.request.model": MODEL,
            "gen_ai.response.model": "scripted-model",  # what the server said
            "gen_ai.response.id": first.attributes["gen_ai.response.id"],
            "gen_ai.response.finish_reasons": ("tool_calls",),
            "gen_ai.usage.input_tokens": 40,
            "gen_ai.usage.output_tokens": 12,
            "trouper.messages": 2,
            "trouper.tools": 2,
            "trouper.ttfb_ms": 0,
        }
        assert first.attributes["trouper.ttfb_ms"] == pytest.approx(300.0, abs=1.0)
        assert [e.name for e in first.events] == ["first_token"]
        assert follow_up.attributes is not None
        assert follow_up.attributes["gen_ai.response.finish_reasons"] == ("stop",)
        assert follow_up.attributes["gen_ai.usage.input_tokens"] == 60
        assert follow_up.attributes["trouper.messages"] == 5

        assert weather_span.attributes is not None
        assert dict(weather_span.attributes) == {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": "get_weather",
            "gen_ai.tool.call.id": "call_w",
            "gen_ai.tool.type": "function",
        }
        assert weather_span.status.status_code is StatusCode.UNSET
        _assert_failed("RuntimeError", time_span)
        # The calls start once their request has ended, and the follow-up once they settled
        # (span times are the wall clock's, not trio's virtual one).
        for tool in (weather_span, time_span):
            assert (first.end_time or 0) <= (tool.start_time or 0)
            assert (tool.end_time or 0) <= (follow_up.start_time or 0)


class TestInterruptedTurn:
    async def test_an_interrupted_stream_ends_its_spans_as_cancelled(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
        spans: InMemorySpanExporter,
    ) -> None:
        server.add(Reply.sse(chunks.text_stream(["a", "b", "c", "d", "e"]), delay=0.5))
        async with open_conversation(server) as conv:
            await conv.say("Tell me a long story")
            await conv.wait_for(lambda: len(conv.texts(conv.sink)) >= 2)
            conv.task.interrupt()
            await conv.wait_ends(1)

        named = _named(spans)
        (chat,) = named["chat gpt-test"]
        (turn,) = named["turn"]
        _assert_failed("cancelled", chat, turn)

    async def test_tool_calls_cancelled_by_an_interruption(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
        spans: InMemorySpanExporter,
    ) -> None:
        server.add(Reply.sse(chunks.tool_call_stream(TWO_CALLS)))
        lookup = BlockingTool()
        functions: dict[str | None, FunctionHandler] = {"get_weather": lookup, "get_time": lookup}
        async with open_conversation(server, tools=TOOLS, functions=functions) as conv:
            await conv.say("Weather and time?")
            await lookup.wait_running()
            await trio.testing.wait_all_tasks_blocked()
            assert [s.name for s in spans.get_finished_spans()] == ["chat gpt-test"]
            conv.task.interrupt()
            await trio.testing.wait_all_tasks_blocked()
            # The turn ended with its last call, without waiting for the session's end.
            named = _named(spans)
            assert "turn" in named

        (chat,) = named["chat gpt-test"]
        assert chat.status.status_code is StatusCode.UNSET  # it had ended well before
        tools = named["execute_tool get_weather"] + named["execute_tool get_time"]
        (turn,) = named["turn"]
        _assert_failed("cancelled", *tools, turn)
        assert {_parent_id(s) for s in tools} == {_span_id(chat)}


class TestErrors:
    async def test_an_http_error_names_its_status(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        spans: InMemorySpanExporter,
    ) -> None:
        server.add(Reply.error(400, "bad request"))
        async with open_conversation(server) as conv:
            await conv.say("Hello")
            await conv.wait_ends(1)
        named = _named(spans)
        (chat,) = named["chat gpt-test"]
        (turn,) = named["turn"]
        _assert_failed("400", chat, turn)

    def test_enabling_without_opentelemetry_says_what_to_install(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setitem(sys.modules, "opentelemetry", None)
        with pytest.raises(ImportError, match=r"pip install 'trouper\[otel\]'"):
            tracing.enable()
        assert not tracing.is_enabled()


def test_opentelemetry_is_imported_only_when_tracing_is_enabled() -> None:
    code = (
        "import sys, trio\n"
        "import actors, actors.tracing, runtime\n"
        "from actors.testing import ScriptedOpenAIServer\n"
        "assert not actors.tracing.is_enabled()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'opentelemetry'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
