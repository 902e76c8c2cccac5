"""Metrics through the public pipeline, in virtual time: TTFB to the first content or tool-call
chunk, processing time, usage once per completion (the last snapshot, also when interrupted),
and the per-model summary of the metrics collector."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from actors import (
    FunctionCallParams,
    FunctionSchema,
    LLMTokenUsage,
    LLMUpdateSettingsFrame,
    LLMUsageMetricsData,
    PipelineParams,
    ProcessingMetricsData,
    ToolsSchema,
    TTFBMetricsData,
)
from actors.testing import ChunkFactory, Reply, ScriptedOpenAIServer
from runtime import MetricsFrame

from ..conversation_kit import MODEL, metrics_of, open_conversation

ALL_METRICS = PipelineParams(enable_metrics=True, enable_usage_metrics=True)


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


class TestTimingMetrics:
    """TTFB runs from the request to the first chunk with content or a tool call, processing
    time over the whole inference; both go out once per inference as ``MetricsFrame``s."""

    async def test_ttfb_and_processing_time_of_a_text_answer(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        events = chunks.text_stream(["a", "b", "c"], usage=(10, 3))
        # role chunk (no output) after 1.5 s, then every event 0.25 s after the previous one
        server.add(Reply.sse(events, first_delay=1.5, delay=0.25))
        async with open_conversation(server, params=ALL_METRICS) as conv:
            await conv.say("Hi")
            await conv.wait_ends(1)
            (ttfb,) = metrics_of(conv.sink, TTFBMetricsData)
            assert ttfb.value == pytest.approx(1.75)
            assert (ttfb.processor, ttfb.model) == (conv.llm.name, MODEL)
            (processing,) = metrics_of(conv.sink, ProcessingMetricsData)
            pieces = len(events) + 1  # [DONE]
            assert processing.value == pytest.approx(1.5 + 0.25 * (pieces - 1), abs=0.01)
            (usage,) = metrics_of(conv.sink, LLMUsageMetricsData)
            assert usage.value == LLMTokenUsage(
                prompt_tokens=10, completion_tokens=3, total_tokens=13
            )
            assert usage.model == MODEL

    async def test_ttfb_of_a_tool_call_answer(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        tools = ToolsSchema(standard_tools=[FunctionSchema(name="ping")])
        server.add(
            Reply.sse(
                chunks.tool_call_stream([("ping", "{}", "call_1")]), first_delay=0.5, delay=0.5
            ),
            Reply.sse(chunks.text_stream(["pong"]), first_delay=2.0),
        )
        async with open_conversation(server, tools=tools, params=ALL_METRICS) as conv:

            async def ping(params: FunctionCallParams) -> None:
                await params.result_callback("pong")

            conv.llm.register_function("ping", ping)
            await conv.say("ping")
            await conv.wait_ends(2)
            ttfbs = [m.value for m in metrics_of(conv.sink, TTFBMetricsData)]
            # first tool-call fragment at 0.5 + 0.5; first content of the follow-up at 2.0
            assert ttfbs == [pytest.approx(1.0), pytest.approx(2.0)]
            assert len(metrics_of(conv.sink, ProcessingMetricsData)) == 2

    async def test_report_only_initial_ttfb(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        server.add(Reply.sse(chunks.text_stream(["1"])), Reply.sse(chunks.text_stream(["2"])))
        params = PipelineParams(enable_metrics=True, report_only_initial_ttfb=True)
        async with open_conversation(server, params=params) as conv:
            await conv.say("one")
            await conv.wait_ends(1)
            await conv.say("two")
            await conv.wait_ends(2)
            assert len(metrics_of(conv.sink, TTFBMetricsData)) == 1
            assert len(metrics_of(conv.sink, ProcessingMetricsData)) == 2

    async def test_nothing_is_pushed_when_disabled(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        server.add(Reply.sse(chunks.text_stream(["a"], usage=(3, 1))))
        async with open_conversation(server) as conv:
            await conv.say("Hi")
            await conv.wait_ends(1)
            assert [f for f in conv.sink if isinstance(f, MetricsFrame)] == []
            # The collector still counts.
            summary = conv.llm.metrics.summary()[MODEL]
            assert (summary.completions, summary.total_tokens, summary.ttfb.count) == (1, 4, 1)

    async def test_usage_alone(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        server.add(Reply.sse(chunks.text_stream(["a"], usage=(3, 1))))
        async with open_conversation(
            server, params=PipelineParams(enable_usage_metrics=True)
        ) as conv:
            await conv.say("Hi")
            await conv.wait_ends(1)
            data = [d for f in conv.sink if isinstance(f, MetricsFrame) for d in f.data]
            assert [type(d) for d in data] == [LLMUsageMetricsData]


class TestUsage:
    """Usage is reported once per completion with the last snapshot the server sent, also
    when the completion was interrupted, and never made up when none was seen."""

    async def test_continuous_usage_last_snapshot_wins(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        # vLLM's continuous_usage_stats: a usage snapshot on every chunk
        events = [
            chunks.chunk({"role": "assistant", "content": ""}, usage=_usage(7, 0)),
            chunks.chunk({"content": "a"}, usage=_usage(7, 1)),
            chunks.chunk({"content": "b"}, usage=_usage(7, 2)),
            chunks.chunk({}, finish_reason="stop", usage=_usage(7, 3)),
        ]
        server.add(Reply.sse(events))
        async with open_conversation(server, params=ALL_METRICS) as conv:
            await conv.say("Hi")
            await conv.wait_ends(1)
            (usage,) = conv.usage()
            assert usage.value == LLMTokenUsage(
                prompt_tokens=7, completion_tokens=3, total_tokens=10
            )

    async def test_interrupted_before_any_usage_reports_none(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        words = [f"w{i} " for i in range(20)]
        server.add(Reply.sse(chunks.text_stream(words, usage=(5, 20)), delay=0.5))
        async with open_conversation(server, params=ALL_METRICS) as conv:
            await conv.say("Long answer please")
            await conv.wait_for(lambda: len(conv.texts()) >= 3)
            conv.task.interrupt()
            await conv.wait_ends(1)
            assert conv.ends()[0].interrupted
            assert conv.usage() == []
            assert len(metrics_of(conv.sink, ProcessingMetricsData)) == 1
            assert conv.llm.metrics.summary()[MODEL].completions == 0

    async def test_interrupted_after_a_snapshot_reports_it_once(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        events = [chunks.chunk({"content": f"w{i} "}, usage=_usage(9, i + 1)) for i in range(20)]
        server.add(Reply.sse(events, delay=0.5))
        async with open_conversation(server, params=ALL_METRICS) as conv:
            await conv.say("Long answer please")
            await conv.wait_for(lambda: len(conv.texts()) >= 3)
            conv.task.interrupt()
            await conv.wait_ends(1)
            (usage,) = conv.usage()
            seen = len(conv.texts())
            assert usage.value.completion_tokens == seen
            assert usage.value.prompt_tokens == 9
            assert conv.llm.metrics.summary()[MODEL].completions == 1


class TestSummary:
    """``llm.metrics.summary()`` aggregates timing and usage per model."""

    async def test_per_model_totals(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        first = chunks.text_stream(["a"])
        first.append(chunks.usage(100, 10, cached_tokens=64, reasoning_tokens=4))
        server.add(
            Reply.sse(first, first_delay=1.0),
            Reply.sse(chunks.text_stream(["b"], usage=(120, 20)), first_delay=3.0),
            Reply.sse(chunks.text_stream(["c"], usage=(50, 5)), first_delay=0.5),
        )
        async with open_conversation(server) as conv:
            await conv.say("one")
            await conv.wait_ends(1)
            await conv.say("two")
            await conv.wait_ends(2)
            await conv.queue(LLMUpdateSettingsFrame({"model": "gpt-small"}))
            await conv.say("three")
            await conv.wait_ends(3)

            summary = conv.llm.metrics.summary()
            assert sorted(summary) == ["gpt-small", MODEL]
            big, small = summary[MODEL], summary["gpt-small"]
            assert (big.completions, big.prompt_tokens, big.completion_tokens) == (2, 220, 30)
            assert (big.total_tokens, big.cached_tokens, big.reasoning_tokens) == (250, 64, 4)
            assert big.ttfb.count == 2
            assert big.ttfb.mean == pytest.approx(2.0)
            assert big.ttfb.min == pytest.approx(1.0)
            assert big.ttfb.max == pytest.approx(3.0)
            assert big.processing.count == 2
            assert (small.completions, small.total_tokens, small.ttfb.count) == (1, 55, 1)
            # One report per inference reaches the collector (its TTFB with the rest).
            assert (conv.llm.metrics.received, conv.llm.metrics.dropped) == (3, 0)
            assert small.as_dict()["model"] == "gpt-small"
            assert conv.llm.metrics.dropped == 0
