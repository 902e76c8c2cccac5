"""Every frame of the conversation stages serializes losslessly (record and replay)."""

from __future__ import annotations

import pytest

import actors
from actors import (
    AppendMessagesRequest,
    ContextUpdatedRequest,
    FunctionCallCancelFrame,
    FunctionCallFromLLM,
    FunctionCallInProgressFrame,
    FunctionCallResultFrame,
    FunctionCallResultProperties,
    FunctionCallsStartedFrame,
    FunctionSchema,
    GetContextRequest,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMMessagesAppendFrame,
    LLMMessagesFrame,
    LLMMessagesUpdateFrame,
    LLMRunFrame,
    LLMSetToolChoiceFrame,
    LLMSetToolsFrame,
    LLMTextFrame,
    LLMTokenUsage,
    LLMUpdateSettingsFrame,
    LLMUsageMetricsData,
    MetricsReport,
    OpenAILLMContext,
    OpenAILLMContextFrame,
    ProcessingMetricsData,
    RecordToolCallsRequest,
    RecordToolSettlementRequest,
    ReplaceMessagesRequest,
    RunFunctionCallsRequest,
    SetToolChoiceRequest,
    SetToolsRequest,
    StartInterruptionFrame,
    TextFrame,
    ToolsSchema,
    TranscriptionFrame,
    TTFBMetricsData,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VisionImageRawFrame,
)
from runtime import Frame, MetricsFrame
from runtime.serialization import check_serializable, dumps, loads

_TOOLS = ToolsSchema(
    standard_tools=[
        FunctionSchema("get_weather", "Weather", {"city": {"type": "string"}}, ["city"])
    ]
)
_CONTEXT = OpenAILLMContext(
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi ✓"}],
    tools=_TOOLS,
    tool_choice="auto",
)
_CALL = FunctionCallFromLLM("get_weather", "call_1", {"city": "Paris"}, '{"city": "Paris"}')
_MESSAGES = [{"role": "user", "content": "again"}]

EXAMPLES: list[Frame] = [
    TextFrame("Hello", append_to_context=False),
    TranscriptionFrame("Bonjour", user_id="u1", timestamp="2024-01-01T00:00:00Z"),
    UserStartedSpeakingFrame(),
    UserStoppedSpeakingFrame(),
    StartInterruptionFrame(),
    OpenAILLMContextFrame(_CONTEXT),
    LLMMessagesFrame(_MESSAGES),
    VisionImageRawFrame(b"\x00\x01\x02" * 4, (2, 2), "RGB", "What is it?"),
    LLMUpdateSettingsFrame({"model": "m", "temperature": 0.5}),
    LLMMessagesAppendFrame(_MESSAGES, run_llm=True),
    LLMMessagesUpdateFrame(_MESSAGES, run_llm=False),
    LLMSetToolsFrame(_TOOLS),
    LLMSetToolChoiceFrame("required"),
    LLMRunFrame(),
    LLMFullResponseStartFrame(),
    LLMFullResponseEndFrame(interrupted=True),
    LLMTextFrame("Bonjour"),
    FunctionCallsStartedFrame([_CALL]),
    FunctionCallInProgressFrame("get_weather", "call_1", {"city": "Paris"}),
    FunctionCallResultFrame(
        "get_weather",
        "call_1",
        {"city": "Paris"},
        {"temp_c": 18},
        properties=FunctionCallResultProperties(run_llm=False),
    ),
    FunctionCallCancelFrame("get_weather", "call_1", reason="timeout", run_llm=True),
    MetricsFrame([LLMUsageMetricsData("llm", "m", value=LLMTokenUsage(1, 2, 3, 0, None))]),
    MetricsFrame([TTFBMetricsData("llm", "m", value=0.25), ProcessingMetricsData("llm", None)]),
    MetricsReport([LLMUsageMetricsData("llm", "m", value=LLMTokenUsage(4, 5, 9))]),
    GetContextRequest(),
    AppendMessagesRequest(_MESSAGES, interrupted=True),
    ReplaceMessagesRequest(_MESSAGES),
    SetToolsRequest([{"type": "function", "function": {"name": "f"}}]),
    SetToolChoiceRequest("none"),
    RecordToolCallsRequest([_CALL], "Let me check."),
    RecordToolSettlementRequest("call_1", '{"temp_c": 18}', run_llm=True),
    RunFunctionCallsRequest([_CALL], _CONTEXT.snapshot(), batch_turn=3),
    ContextUpdatedRequest(["call_1", "call_2"]),
]


class TestActorFramesSerialize:
    """The stages' frames round-trip through JSON exactly (callables excepted by design)."""

    @pytest.mark.parametrize("frame", EXAMPLES, ids=lambda f: type(f).__name__)
    def test_round_trip(self, frame: Frame) -> None:
        """A frame read back from its JSON text equals the original."""
        assert loads(dumps(frame)) == frame

    def test_every_actors_frame_class_is_serializable(self) -> None:
        """No frame class exported by ``actors`` holds a field that cannot be serialized."""
        classes = [
            getattr(actors, name)
            for name in actors.__all__
            if isinstance(getattr(actors, name), type) and issubclass(getattr(actors, name), Frame)
        ]
        assert classes
        for cls in classes:
            check_serializable(cls)

    def test_every_exported_frame_class_has_an_example(self) -> None:
        """This test's examples cover every frame class ``actors`` exports."""
        exported = {
            getattr(actors, name)
            for name in actors.__all__
            if isinstance(getattr(actors, name), type) and issubclass(getattr(actors, name), Frame)
        }
        covered = {type(f) for f in EXAMPLES}
        assert exported - covered <= {actors.ContextStoreRequest}
