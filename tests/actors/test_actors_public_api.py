"""The public surface: what ``actors`` exports, the names the seed example and the design
brief use, and the seed example itself running a tool round trip against a scripted server."""

from __future__ import annotations

import ast
import importlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import cast

import pytest
import trio
import trio.testing

import actors
import runtime
from actors.testing import ChunkFactory, Reply, ScriptedOpenAIServer

from ..api_kit import public_names
from ..conversation_kit import assert_valid, tool_answer

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "examples" / "function_calling.py"

#: The public names of ``actors``: changing this list is changing the public API.
PUBLIC = {
    "AppendMessagesRequest",
    "ContextSnapshot",
    "ContextStore",
    "ContextStoreRequest",
    "ContextUpdatedRequest",
    "ContextWindow",
    "ErrorCategory",
    "FunctionCallCancelFrame",
    "FunctionCallFromLLM",
    "FunctionCallInProgressFrame",
    "FunctionCallParams",
    "FunctionCallResultFrame",
    "FunctionCallResultProperties",
    "FunctionCallsStartedFrame",
    "FunctionHandler",
    "FunctionRegistration",
    "FunctionSchema",
    "GetContextRequest",
    "LLMAssistantContextAggregator",
    "LLMContext",
    "LLMContextAggregatorPair",
    "LLMContextFrame",
    "LLMFullResponseEndFrame",
    "LLMFullResponseStartFrame",
    "LLMMessagesAppendFrame",
    "LLMMessagesFrame",
    "LLMMessagesUpdateFrame",
    "LLMMetricsData",
    "LLMRunFrame",
    "LLMSetToolChoiceFrame",
    "LLMSetToolsFrame",
    "LLMSettings",
    "LLMTextFrame",
    "LLMTokenUsage",
    "LLMUpdateSettingsFrame",
    "LLMUsageMetricsData",
    "LLMUserAggregatorParams",
    "LLMUserContextAggregator",
    "MetricsCollector",
    "MetricsReport",
    "ModelMetrics",
    "OpenAIContextAggregatorPair",
    "OpenAILLMContext",
    "OpenAILLMContextFrame",
    "OpenAILLMService",
    "OutputCallback",
    "OutputTransport",
    "PipelineParams",
    "ProcessingMetricsData",
    "RecordToolCallsRequest",
    "RecordToolSettlementRequest",
    "ReplaceMessagesRequest",
    "RunFunctionCallsRequest",
    "SetToolChoiceRequest",
    "SetToolsRequest",
    "StartInterruptionFrame",
    "TTFBMetricsData",
    "TextFrame",
    "TextInputTransport",
    "TextOutputTransport",
    "TextTransport",
    "TimingStats",
    "TokenCounter",
    "ToolExecutor",
    "ToolsSchema",
    "TranscriptionFrame",
    "UserStartedSpeakingFrame",
    "UserStoppedSpeakingFrame",
    "VisionImageRawFrame",
}

#: DESIGN.md §4: the seed's names and the frames a pipeline needs around them.
DESIGN_NAMES = [
    "OpenAILLMService",
    "OpenAILLMContext",
    "FunctionSchema",
    "ToolsSchema",
    "FunctionCallParams",
    "FunctionCallResultProperties",
    "Pipeline",
    "PipelineTask",
    "PipelineRunner",
    "PipelineParams",
    "OpenAILLMContextFrame",
    "LLMMessagesFrame",
    "VisionImageRawFrame",
    "LLMUpdateSettingsFrame",
    "LLMFullResponseStartFrame",
    "LLMFullResponseEndFrame",
    "LLMTextFrame",
    "FunctionCallInProgressFrame",
    "FunctionCallResultFrame",
    "ErrorFrame",
    "StartFrame",
    "EndFrame",
    "CancelFrame",
    "InterruptionFrame",
    "StartInterruptionFrame",
    "UserStartedSpeakingFrame",
    "UserStoppedSpeakingFrame",
    "TranscriptionFrame",
    "TextFrame",
    "FunctionCallsStartedFrame",
    "FunctionCallCancelFrame",
    "LLMMessagesAppendFrame",
    "LLMMessagesUpdateFrame",
    "LLMSetToolsFrame",
    "LLMSetToolChoiceFrame",
    "MetricsFrame",
]


class TestExports:
    """``actors.__all__`` is exactly the public set, sorted, and matches the namespace."""

    def test_all_is_exactly_the_public_set(self) -> None:
        assert set(actors.__all__) == PUBLIC
        assert actors.__all__ == sorted(actors.__all__)
        assert len(actors.__all__) == len(set(actors.__all__))

    def test_namespace_holds_what_all_says(self) -> None:
        assert public_names(actors) == set(actors.__all__)
        for name in actors.__all__:
            assert getattr(actors, name) is not None

    def test_every_name_of_the_design_brief_is_importable(self) -> None:
        missing = [n for n in DESIGN_NAMES if n not in actors.__all__ and n not in runtime.__all__]
        assert missing == []
        assert actors.StartInterruptionFrame is runtime.InterruptionFrame
        assert actors.OpenAILLMService.InputParams is not None


class TestSeedExample:
    """The seed example imports only public names and, run unchanged against a scripted
    server, answers a question with a tool round trip."""

    def test_it_imports_only_public_names(self) -> None:
        tree = ast.parse(SEED.read_text())
        used: dict[str, list[str]] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in ("actors", "runtime"):
                used.setdefault(node.module, []).extend(a.name for a in node.names)
        assert set(used) == {"actors", "runtime"}
        assert set(used["actors"]) <= set(actors.__all__)
        assert set(used["runtime"]) <= set(runtime.__all__)

    async def test_it_answers_with_a_tool_round_trip(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-seed-test")
        monkeypatch.delenv("OPENAI_MODEL", raising=False)
        monkeypatch.syspath_prepend(str(ROOT))
        seed = importlib.import_module("examples.function_calling")
        main = cast(Callable[[list[str]], Awaitable[list[str]]], seed.main)
        server.add(
            Reply.sse(
                chunks.tool_call_stream(
                    [("get_weather", json.dumps({"location": "Paris"}), "call_w")], usage=(40, 9)
                )
            ),
            Reply.sse(chunks.text_stream(["It is ", "75°F and sunny in Paris."], usage=(60, 8))),
        )

        with trio.fail_after(60):
            answers = await main(["What's the weather in Paris?"])

        assert answers == ["It is 75°F and sunny in Paris."]
        assert len(server.requests) == 2
        first, second = (r.json for r in server.requests)
        assert first["model"] == "gpt-4o"
        assert first["temperature"] == 0.7
        assert [t["function"]["name"] for t in first["tools"]] == ["get_weather"]
        assert server.requests[0].headers["authorization"] == "Bearer sk-seed-test"
        messages = second["messages"]
        assert_valid(messages)
        assert json.loads(tool_answer(messages, "call_w")) == {
            "location": "Paris",
            "temperature": "75°F",
            "conditions": "sunny",
        }
        with trio.fail_after(5):
            await server.wait_connections_closed()
