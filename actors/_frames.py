"""The conversation frames: text and the user's turns, what goes into the OpenAI LLM service
and what comes out of it, and the LLM's measurements. The runtime's generic frames
(``Frame``, ``InterruptionFrame``, ``ErrorFrame``, ``MetricsFrame``...) are in :mod:`runtime`.

Ordering decisions that differ from Pipecat, on purpose (see docs/frames.md):

* ``LLMFullResponseStartFrame``/``LLMFullResponseEndFrame`` are uninterruptible, so every
  stage sees exactly one pair per inference, also when the inference was interrupted (the
  text between them is what an interruption drops).
* ``FunctionCallsStartedFrame``, ``FunctionCallInProgressFrame``, ``FunctionCallResultFrame``
  and ``FunctionCallCancelFrame`` are ordered (data lane) and uninterruptible: the tool-call
  bookkeeping can neither be overtaken nor lost, so a call can never stay "in progress" in the
  context (Pipecat issues #3661, #3548, #4420).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from runtime import ControlFrame, DataFrame, InterruptionFrame, MetricsData
from runtime.serialization import NOT_SERIALIZED

from ._context import ContextSnapshot
from ._schemas import tool_definitions
from ._settings import LLMSettings

__all__ = [
    "FunctionCallCancelFrame",
    "FunctionCallFromLLM",
    "FunctionCallInProgressFrame",
    "FunctionCallResultFrame",
    "FunctionCallResultProperties",
    "FunctionCallsStartedFrame",
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
    "LLMTextFrame",
    "LLMTokenUsage",
    "LLMUpdateSettingsFrame",
    "LLMUsageMetricsData",
    "OpenAILLMContextFrame",
    "ProcessingMetricsData",
    "StartInterruptionFrame",
    "TTFBMetricsData",
    "TextFrame",
    "TranscriptionFrame",
    "UserStartedSpeakingFrame",
    "UserStoppedSpeakingFrame",
    "VisionImageRawFrame",
]


def _to_dict(value: Mapping[str, Any]) -> dict[str, Any]:
    return dict(value)


def _settings(value: Mapping[str, Any] | LLMSettings) -> dict[str, Any]:
    return value.as_updates() if isinstance(value, LLMSettings) else dict(value)


def _to_tuple(value: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(value)


def _snapshot(value: object) -> ContextSnapshot:
    from ._context import ContextSnapshot, OpenAILLMContext

    if isinstance(value, ContextSnapshot):
        return value
    if isinstance(value, OpenAILLMContext):
        return value.snapshot()
    raise TypeError(
        f"OpenAILLMContextFrame needs an OpenAILLMContext or a ContextSnapshot, got "
        f"{type(value).__name__}"
    )


def _messages(value: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], ...]:
    from ._context import validate_messages

    return tuple(validate_messages(value))


# --------------------------------------------------------------------------- text and turns


@attrs.frozen(slots=True)
class TextFrame(DataFrame):
    """A chunk of text.

    Args:
        text: The text.
        append_to_context: Whether an assistant aggregator should record it.
    """

    text: str
    append_to_context: bool = attrs.field(default=True, kw_only=True)


@attrs.frozen(slots=True)
class TranscriptionFrame(TextFrame):
    """Text the user said (or typed): the input of a user turn.

    Args:
        user_id: Who said it.
        timestamp: When (ISO 8601), as reported by the transcriber.

    User input is never dropped by an interruption (``interruptible=False``): an interruption
    cancels the assistant's work, not what the user said.
    """

    user_id: str = ""
    timestamp: str = ""
    interruptible: bool = attrs.field(default=False, kw_only=True, eq=False, repr=False)


@attrs.frozen(slots=True)
class UserStartedSpeakingFrame(ControlFrame):
    """The user started a turn (voice activity or typing began).

    Ordered with the user's text (data lane) and never dropped, unlike Pipecat's system frame:
    a turn's boundaries must not overtake its transcriptions. The interruption it may cause
    is a separate :class:`~runtime.InterruptionFrame`, which does overtake everything.
    """

    interruptible: bool = attrs.field(default=False, kw_only=True, eq=False, repr=False)


@attrs.frozen(slots=True)
class UserStoppedSpeakingFrame(ControlFrame):
    """The user finished a turn (ordered with the user's text, never dropped)."""

    interruptible: bool = attrs.field(default=False, kw_only=True, eq=False, repr=False)


#: Pipecat's older name for :class:`runtime.InterruptionFrame` (the user interrupted the
#: assistant).
StartInterruptionFrame = InterruptionFrame


# --------------------------------------------------------------------------- inputs


@attrs.frozen(slots=True)
class OpenAILLMContextFrame(DataFrame):
    """Run an inference on this conversation. ``LLMContextFrame`` (Pipecat 1.x's name) is
    this class.

    Args:
        context: An immutable snapshot of the conversation (an ``OpenAILLMContext`` passed
            here is snapshotted at once, so later changes to it do not leak into the frame).
    """

    context: ContextSnapshot = attrs.field(converter=_snapshot)


#: Pipecat 1.x's name for the context frame.
LLMContextFrame = OpenAILLMContextFrame


@attrs.frozen(slots=True)
class LLMMessagesFrame(DataFrame):
    """Run an inference on exactly these messages (Pipecat's legacy input frame).

    Args:
        messages: OpenAI-format messages (``{"role": ..., "content": ...}``).
    """

    messages: tuple[dict[str, Any], ...] = attrs.field(converter=_messages)


@attrs.frozen(slots=True)
class VisionImageRawFrame(DataFrame):
    """Ask the LLM about an image (one user message: the optional text and the image).

    Args:
        image: Raw pixels (``format`` a Pillow mode such as ``"RGB"``), or encoded image bytes
            (``format`` a MIME type such as ``"image/jpeg"``, passed through as is).
        size: ``(width, height)`` in pixels (needed for raw pixels).
        format: Pillow mode or ``image/*`` MIME type.
        text: The question about the image.
    """

    image: bytes
    size: tuple[int, int]
    format: str | None = "RGB"
    text: str | None = None


@attrs.frozen(slots=True)
class LLMUpdateSettingsFrame(ControlFrame):
    """Change the LLM's settings from the next request on.

    Args:
        settings: ``model``, ``system_instruction`` and/or any
            ``OpenAILLMService.InputParams`` field, e.g. ``{"model": "gpt-4o-mini",
            "temperature": 0.2}``, or an ``OpenAILLMService.Settings`` (its fields that are
            set). Validated; a bad key or value becomes an ``ErrorFrame`` and changes nothing.
    """

    settings: Mapping[str, Any] = attrs.field(factory=dict, converter=_settings)
    interruptible: bool = attrs.field(default=False, kw_only=True, eq=False, repr=False)


@attrs.frozen(slots=True)
class LLMMessagesAppendFrame(DataFrame):
    """Append messages to the conversation (user aggregator), optionally running the LLM."""

    messages: tuple[dict[str, Any], ...] = attrs.field(converter=_messages)
    run_llm: bool | None = None


@attrs.frozen(slots=True)
class LLMMessagesUpdateFrame(DataFrame):
    """Replace all messages of the conversation, optionally running the LLM."""

    messages: tuple[dict[str, Any], ...] = attrs.field(converter=_messages)
    run_llm: bool | None = None


@attrs.frozen(slots=True)
class LLMSetToolsFrame(DataFrame):
    """Replace the tools offered to the LLM (a ``ToolsSchema``, a list of ``FunctionSchema`` /
    OpenAI tool dicts, or None; kept as OpenAI tool dicts).

    A frame carries data only: tools that come with a handler (``FunctionSchema(handler=...)``,
    plain functions) are refused with a ``TypeError`` saying what to do instead.
    """

    tools: list[dict[str, Any]] | None = attrs.field(converter=tool_definitions)


@attrs.frozen(slots=True)
class LLMSetToolChoiceFrame(DataFrame):
    """Set ``tool_choice``: ``"none"``, ``"auto"``, ``"required"`` or a function choice dict."""

    tool_choice: Any


@attrs.frozen(slots=True)
class LLMRunFrame(DataFrame):
    """Run an inference on the conversation as it is: the user aggregator (queue the frame at
    the pipeline's input) asks the context store for a snapshot and sends it to the LLM, e.g.
    for a greeting no user line asked for (Pipecat 1.x's way to start an inference)."""


# --------------------------------------------------------------------------- outputs


@attrs.frozen(slots=True)
class LLMFullResponseStartFrame(ControlFrame):
    """An inference starts; exactly one per inference, never dropped."""

    interruptible: bool = attrs.field(default=False, kw_only=True, eq=False, repr=False)


@attrs.frozen(slots=True)
class LLMFullResponseEndFrame(ControlFrame):
    """An inference ended (success, error or interruption); exactly one per start.

    Args:
        interrupted: The inference was cut short by an interruption.
        error: It ended with an error (reported separately as an ``ErrorFrame``).
    """

    interrupted: bool = False
    error: bool = False
    interruptible: bool = attrs.field(default=False, kw_only=True, eq=False, repr=False)


@attrs.frozen(slots=True)
class LLMTextFrame(TextFrame):
    """One streamed content delta of the LLM's answer."""


def _fast_constructor(cls: type[Any], positional: str) -> Callable[[Any], Any]:
    """``cls(value)`` (``value`` for the field ``positional``, every other field its default)
    without attrs' generic ``__init__``: each slot is set through its member descriptor,
    unrolled once per class. A frozen class's ``__init__`` sets every slot through
    ``object.__setattr__``; the LLM makes one frame per streamed token (0.43 µs instead of
    0.65 µs; see docs/benchmarks.md). Only for classes whose fields have no converter or
    validator."""
    lines = ["def make(value):", "    new = _new(cls)"]
    namespace: dict[str, Any] = {"_new": object.__new__, "cls": cls}
    for field in attrs.fields(cls):
        if field.converter is not None or field.validator is not None:
            raise TypeError(f"{cls.__name__}.{field.name} converts or validates its value")
        owner = next(k for k in cls.__mro__ if field.name in vars(k))
        namespace[f"_set_{field.name}"] = vars(owner)[field.name].__set__
        if field.name == positional:
            value = "value"
        elif isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
            if field.default.takes_self:
                raise TypeError(f"{cls.__name__}.{field.name}'s factory takes self")
            namespace[f"_make_{field.name}"] = field.default.factory
            value = f"_make_{field.name}()"
        elif field.default is attrs.NOTHING:
            raise TypeError(f"{cls.__name__}.{field.name} has no default")
        else:
            namespace[f"_default_{field.name}"] = field.default
            value = f"_default_{field.name}"
        lines.append(f"    _set_{field.name}(new, {value})")
    lines.append("    return new")
    exec("\n".join(lines), namespace)  # the text is made of attrs field names only
    make: Callable[[Any], Any] = namespace["make"]
    return make


#: ``LLMTextFrame(text)``, faster (the LLM's per-token frame; see :func:`_fast_constructor`).
new_llm_text: Callable[[str], LLMTextFrame] = _fast_constructor(LLMTextFrame, "text")


@attrs.frozen(slots=True)
class FunctionCallFromLLM:
    """A tool call the LLM asked for.

    Args:
        function_name: The function.
        tool_call_id: The call's id (matches the ``tool`` message that answers it).
        arguments: Parsed arguments (empty when they could not be parsed).
        arguments_json: The raw argument text as streamed.
        arguments_error: Why the arguments could not be parsed, if they could not.
    """

    function_name: str
    tool_call_id: str
    arguments: Mapping[str, Any] = attrs.field(factory=dict)
    arguments_json: str = "{}"
    arguments_error: str | None = None


@attrs.frozen(slots=True)
class FunctionCallsStartedFrame(ControlFrame):
    """The LLM asked for these calls; they are about to run (one batch per response).

    Args:
        function_calls: The calls.
        llm: The name of the LLM service that asked for them: the context store sends the
            follow-up inference there (how an ``LLMContextAggregatorPair``, which is bound to
            no service, finds it).
        tools: The name of the actor that runs them (the service's tool executor), which the
            store asks to run the batch's ``on_context_updated`` callbacks.
    """

    function_calls: tuple[FunctionCallFromLLM, ...] = attrs.field(converter=_to_tuple)
    llm: str | None = attrs.field(default=None, kw_only=True)
    tools: str | None = attrs.field(default=None, kw_only=True)
    interruptible: bool = attrs.field(default=False, kw_only=True, eq=False, repr=False)


@attrs.frozen(slots=True)
class FunctionCallInProgressFrame(ControlFrame):
    """A call's handler is running."""

    function_name: str
    tool_call_id: str
    arguments: Mapping[str, Any] = attrs.field(factory=dict)
    cancel_on_interruption: bool = True
    interruptible: bool = attrs.field(default=False, kw_only=True, eq=False, repr=False)


@attrs.frozen(slots=True)
class FunctionCallResultProperties:
    """How a result is handled.

    Args:
        run_llm: ``True``/``False`` forces/suppresses the follow-up inference; ``None`` lets
            the batch decide (it runs once the last call of the batch has settled).
        on_context_updated: Awaited once the result is in the conversation (before the
            follow-up inference starts).
    """

    run_llm: bool | None = None
    on_context_updated: Callable[[], Awaitable[None]] | None = attrs.field(
        default=None, eq=False, metadata=NOT_SERIALIZED
    )


@attrs.frozen(slots=True)
class FunctionCallResultFrame(DataFrame):
    """A call settled with a result (or an error result).

    Args:
        function_name: The function.
        tool_call_id: The call's id.
        arguments: The arguments it ran with.
        result: The JSON-serializable result (what goes into the ``tool`` message).
        run_llm: See :class:`FunctionCallResultProperties`.
        properties: The properties given to ``result_callback``.
        error: Set when the call failed (the handler raised, bad arguments, unknown function);
            ``result`` then holds the text the LLM sees.
        cancel_on_interruption: How the call was registered; ``False``: it survives an
            interruption of its turn, and so may still ask for the follow-up after one.
    """

    function_name: str
    tool_call_id: str
    arguments: Mapping[str, Any] = attrs.field(factory=dict)
    result: Any = None
    run_llm: bool | None = None
    properties: FunctionCallResultProperties | None = attrs.field(default=None, eq=False)
    error: str | None = None
    cancel_on_interruption: bool = True
    interruptible: bool = attrs.field(default=False, kw_only=True, eq=False, repr=False)


@attrs.frozen(slots=True)
class FunctionCallCancelFrame(ControlFrame):
    """A call was cancelled before it settled.

    Args:
        function_name: The function.
        tool_call_id: The call's id.
        reason: ``"interruption"``, ``"timeout"`` or ``"shutdown"``.
        run_llm: Whether this settlement asks for the follow-up inference (timeouts do).
        cancel_on_interruption: How the call was registered (see
            :class:`FunctionCallResultFrame`).
    """

    function_name: str
    tool_call_id: str
    reason: str = "interruption"
    run_llm: bool = False
    cancel_on_interruption: bool = True
    interruptible: bool = attrs.field(default=False, kw_only=True, eq=False, repr=False)


# --------------------------------------------------------------------------- metrics


@attrs.frozen(slots=True)
class LLMTokenUsage:
    """Token usage of one completion (the last snapshot the server sent)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cache_read_input_tokens: int | None = None
    reasoning_tokens: int | None = None


@attrs.frozen(slots=True)
class LLMMetricsData(MetricsData):
    """A measurement of the LLM's requests (the base of the LLM service's metrics).

    Args:
        processor: Name of the actor that measured it.
        model: The model the measurement is about, if any.
    """

    model: str | None = None


@attrs.frozen(slots=True)
class TTFBMetricsData(LLMMetricsData):
    """Time to first byte (first content or tool-call chunk), in seconds."""

    value: float = 0.0


@attrs.frozen(slots=True)
class ProcessingMetricsData(LLMMetricsData):
    """Processing time of one request, in seconds."""

    value: float = 0.0


@attrs.frozen(slots=True)
class LLMUsageMetricsData(LLMMetricsData):
    """Token usage of one completion, reported once, also when it was interrupted."""

    value: LLMTokenUsage = attrs.field(factory=LLMTokenUsage)
