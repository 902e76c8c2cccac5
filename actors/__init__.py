"""trouper's conversation stages, built on :mod:`runtime`.

The OpenAI LLM service (the LLM streamer actor) with its tool executor and metrics collector,
the ``PipelineParams`` carrying their metrics switches,
the conversation (``OpenAILLMContext``) owned by the context store actor with its user and
assistant aggregators and the window of its requests (``ContextWindow``, ``TokenCounter``),
tool schemas, Pipecat 1.x's names for them (``LLMContext``,
``LLMContextFrame``, ``LLMContextAggregatorPair``, ``LLMSettings``; see
``docs/pipecat.md``), the conversation frames (text, transcriptions, the user's
turns, the LLM's frames and metrics), the error categories and a text transport. The
OpenAI-compatible streaming client is in :mod:`actors.client`, the redaction of secrets in
:mod:`actors.client.redaction` (importing :mod:`actors` installs it into the runtime's
scrubbers), the embedded local model in :mod:`actors.local`, conversation storage in
:mod:`actors.storage`, test helpers in :mod:`actors.testing`.
"""

from __future__ import annotations

import typing as _typing

import runtime as _runtime

from ._aggregators import LLMAssistantContextAggregator as LLMAssistantContextAggregator
from ._aggregators import LLMContextAggregatorPair as LLMContextAggregatorPair
from ._aggregators import LLMUserAggregatorParams as LLMUserAggregatorParams
from ._aggregators import LLMUserContextAggregator as LLMUserContextAggregator
from ._aggregators import OpenAIContextAggregatorPair as OpenAIContextAggregatorPair
from ._context import ContextSnapshot as ContextSnapshot
from ._context import LLMContext as LLMContext
from ._context import OpenAILLMContext as OpenAILLMContext
from ._frames import FunctionCallCancelFrame as FunctionCallCancelFrame
from ._frames import FunctionCallFromLLM as FunctionCallFromLLM
from ._frames import FunctionCallInProgressFrame as FunctionCallInProgressFrame
from ._frames import FunctionCallResultFrame as FunctionCallResultFrame
from ._frames import FunctionCallResultProperties as FunctionCallResultProperties
from ._frames import FunctionCallsStartedFrame as FunctionCallsStartedFrame
from ._frames import LLMContextFrame as LLMContextFrame
from ._frames import LLMFullResponseEndFrame as LLMFullResponseEndFrame
from ._frames import LLMFullResponseStartFrame as LLMFullResponseStartFrame
from ._frames import LLMMessagesAppendFrame as LLMMessagesAppendFrame
from ._frames import LLMMessagesFrame as LLMMessagesFrame
from ._frames import LLMMessagesUpdateFrame as LLMMessagesUpdateFrame
from ._frames import LLMMetricsData as LLMMetricsData
from ._frames import LLMRunFrame as LLMRunFrame
from ._frames import LLMSetToolChoiceFrame as LLMSetToolChoiceFrame
from ._frames import LLMSetToolsFrame as LLMSetToolsFrame
from ._frames import LLMTextFrame as LLMTextFrame
from ._frames import LLMTokenUsage as LLMTokenUsage
from ._frames import LLMUpdateSettingsFrame as LLMUpdateSettingsFrame
from ._frames import LLMUsageMetricsData as LLMUsageMetricsData
from ._frames import OpenAILLMContextFrame as OpenAILLMContextFrame
from ._frames import ProcessingMetricsData as ProcessingMetricsData
from ._frames import StartInterruptionFrame as StartInterruptionFrame
from ._frames import TextFrame as TextFrame
from ._frames import TranscriptionFrame as TranscriptionFrame
from ._frames import TTFBMetricsData as TTFBMetricsData
from ._frames import UserStartedSpeakingFrame as UserStartedSpeakingFrame
from ._frames import UserStoppedSpeakingFrame as UserStoppedSpeakingFrame
from ._frames import VisionImageRawFrame as VisionImageRawFrame
from ._handlers import FunctionCallParams as FunctionCallParams
from ._handlers import FunctionHandler as FunctionHandler
from ._handlers import FunctionRegistration as FunctionRegistration
from ._metrics import MetricsCollector as MetricsCollector
from ._metrics import MetricsReport as MetricsReport
from ._metrics import ModelMetrics as ModelMetrics
from ._metrics import TimingStats as TimingStats
from ._params import PipelineParams as PipelineParams
from ._schemas import FunctionSchema as FunctionSchema
from ._schemas import ToolsSchema as ToolsSchema
from ._service import OpenAILLMService as OpenAILLMService
from ._settings import LLMSettings as LLMSettings
from ._store import AppendMessagesRequest as AppendMessagesRequest
from ._store import ContextStore as ContextStore
from ._store import ContextStoreRequest as ContextStoreRequest
from ._store import GetContextRequest as GetContextRequest
from ._store import RecordToolCallsRequest as RecordToolCallsRequest
from ._store import RecordToolSettlementRequest as RecordToolSettlementRequest
from ._store import ReplaceMessagesRequest as ReplaceMessagesRequest
from ._store import SetToolChoiceRequest as SetToolChoiceRequest
from ._store import SetToolsRequest as SetToolsRequest
from ._tools import ContextUpdatedRequest as ContextUpdatedRequest
from ._tools import RunFunctionCallsRequest as RunFunctionCallsRequest
from ._tools import ToolExecutor as ToolExecutor
from ._transport import OutputCallback as OutputCallback
from ._transport import OutputTransport as OutputTransport
from ._transport import TextInputTransport as TextInputTransport
from ._transport import TextOutputTransport as TextOutputTransport
from ._transport import TextTransport as TextTransport
from ._window import ContextWindow as ContextWindow
from ._window import TokenCounter as TokenCounter
from .client import ErrorCategory as ErrorCategory
from .client.redaction import PROCESS_REDACTOR as _PROCESS_REDACTOR

__version__ = _runtime.__version__
"""The installed version of trouper (the same as ``runtime.__version__``)."""

__all__ = [
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
]

# Nothing the runtime reports or logs carries a secret once the stages are imported: the
# client's redaction becomes the runtime's scrubber (the client itself knows no runtime).
_runtime.add_scrubber(_PROCESS_REDACTOR)

if not _typing.TYPE_CHECKING:  # (hidden from type checkers: they report the name as missing)

    def __getattr__(name: str) -> object:
        """Names that were removed, with what to use instead."""
        if name == "SQLiteContextStorage":
            raise ImportError(
                "actors.SQLiteContextStorage was removed: conversations are kept by "
                "actors.storage (SQLiteConversationStorage(path) on the same file imports "
                "what SQLiteContextStorage wrote; RedisConversationStorage for several "
                "processes or hosts). Open one with 'async with' and pass it to "
                "create_context_aggregator(context, storage=..., conversation_id=...); "
                "see docs/context.md."
            )
        raise AttributeError(f"module 'actors' has no attribute {name!r}")
