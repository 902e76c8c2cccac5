"""Typed chat-completion chunks and their decoder, :func:`parse_chunk`.

The classes mirror ``CreateChatCompletionStreamResponse`` and its parts, keeping only what a
consumer uses, and every field has a default: servers omit fields freely (llama.cpp has no
``logprobs``, vLLM no ``system_fingerprint``, Groq moves ``usage`` into ``x_groq``) and a missing
field must never fail a stream. Unknown fields are ignored (the untouched mapping stays available
as ``raw``).

:func:`parse_chunk` is hand-written: it runs on every chunk of every stream, and was measured
about 2.8 times faster than cattrs-generated structuring on real chunks (see ``docs/client.md``).
Its leniency rules: a string field accepts ``None``, a string, or a list of content parts (their
``text`` is joined); an integer field accepts an int or an integral float; anything else of the
wrong type becomes ``None`` rather than an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

__all__ = [
    "ChatCompletionChunk",
    "ChoiceDelta",
    "ChoiceLogprobs",
    "ChunkChoice",
    "CompletionTokensDetails",
    "FunctionCallDelta",
    "PromptTokensDetails",
    "TokenLogprob",
    "ToolCallDelta",
    "TopLogprob",
    "Usage",
    "parse_chunk",
]


@attrs.frozen
class FunctionCallDelta:
    """The ``function`` part of a tool-call fragment.

    Attributes:
        name: The function name; normally only on the first fragment of a call.
        arguments: A fragment of the JSON arguments text, to be concatenated verbatim.
    """

    name: str | None = None
    arguments: str | None = None


@attrs.frozen
class ToolCallDelta:
    """One tool-call fragment (``choices[].delta.tool_calls[]``).

    Attributes:
        index: Which tool call of the choice this fragment belongs to (``None`` if the server
            omitted it, as Ollama did before 0.4.7).
        id: The call id; normally only on the first fragment.
        type: ``"function"``; normally only on the first fragment.
        function: Name and/or an arguments fragment.
    """

    index: int | None = None
    id: str | None = None
    type: str | None = None
    function: FunctionCallDelta | None = None


@attrs.frozen
class ChoiceDelta:
    """What a chunk adds to one choice.

    Attributes:
        role: ``"assistant"`` on the first chunk.
        content: A text fragment.
        refusal: A refusal-text fragment.
        reasoning_content: A reasoning fragment, as sent by vLLM/llama.cpp/DeepSeek
            (``reasoning_content``) or OpenRouter/newer vLLM (``reasoning``).
        tool_calls: Tool-call fragments, possibly for several calls.
    """

    role: str | None = None
    content: str | None = None
    refusal: str | None = None
    reasoning_content: str | None = None
    tool_calls: tuple[ToolCallDelta, ...] = ()


@attrs.frozen
class TopLogprob:
    """An alternative token with its log probability.

    Attributes:
        token: The token text.
        logprob: Its log probability (-9999.0 means "very unlikely").
        bytes: Its UTF-8 bytes, when the server sends them.
    """

    token: str = ""
    logprob: float = 0.0
    bytes: tuple[int, ...] | None = None


@attrs.frozen
class TokenLogprob:
    """The log probability of one generated token.

    Attributes:
        token: The token text.
        logprob: Its log probability.
        bytes: Its UTF-8 bytes, when the server sends them.
        top_logprobs: The most likely alternatives at this position.
    """

    token: str = ""
    logprob: float = 0.0
    bytes: tuple[int, ...] | None = None
    top_logprobs: tuple[TopLogprob, ...] = ()


@attrs.frozen
class ChoiceLogprobs:
    """``choices[].logprobs`` of a chunk.

    Attributes:
        content: Log probabilities of the content tokens in this chunk.
        refusal: Log probabilities of the refusal tokens in this chunk.
    """

    content: tuple[TokenLogprob, ...] | None = None
    refusal: tuple[TokenLogprob, ...] | None = None


@attrs.frozen
class ChunkChoice:
    """One entry of ``choices`` in a chunk.

    Attributes:
        index: Which of the ``n`` choices.
        delta: What this chunk adds.
        finish_reason: ``None`` until the end, then ``stop``, ``length``, ``tool_calls``,
            ``content_filter`` or ``function_call``.
        logprobs: Per-token log probabilities, when requested.
        stop_reason: vLLM's extra: the stop string or token id that ended the choice.
    """

    index: int = 0
    delta: ChoiceDelta = ChoiceDelta()
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None
    stop_reason: str | int | None = None


@attrs.frozen
class PromptTokensDetails:
    """``usage.prompt_tokens_details``.

    Attributes:
        cached_tokens: Prompt tokens served from the prompt cache.
        audio_tokens: Audio input tokens.
    """

    cached_tokens: int | None = None
    audio_tokens: int | None = None


@attrs.frozen
class CompletionTokensDetails:
    """``usage.completion_tokens_details``.

    Attributes:
        reasoning_tokens: Reasoning tokens (included in ``completion_tokens``).
        audio_tokens: Audio output tokens.
        accepted_prediction_tokens: Predicted-output tokens that were used.
        rejected_prediction_tokens: Predicted-output tokens that were not used.
    """

    reasoning_tokens: int | None = None
    audio_tokens: int | None = None
    accepted_prediction_tokens: int | None = None
    rejected_prediction_tokens: int | None = None


@attrs.frozen
class Usage:
    """Token usage of a request.

    Attributes:
        prompt_tokens: Tokens in the prompt.
        completion_tokens: Tokens generated (reasoning included).
        total_tokens: Their sum, as reported by the server.
        prompt_tokens_details: Cached/audio breakdown, when sent.
        completion_tokens_details: Reasoning/audio/prediction breakdown, when sent.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None

    @property
    def cached_tokens(self) -> int | None:
        """``prompt_tokens_details.cached_tokens``, or ``None`` when absent."""
        details = self.prompt_tokens_details
        return None if details is None else details.cached_tokens

    @property
    def reasoning_tokens(self) -> int | None:
        """``completion_tokens_details.reasoning_tokens``, or ``None`` when absent."""
        details = self.completion_tokens_details
        return None if details is None else details.reasoning_tokens


_NO_DELTA = ChoiceDelta()


@attrs.frozen
class ChatCompletionChunk:
    """One ``chat.completion.chunk`` of a stream.

    Attributes:
        id: The completion id (same on every chunk).
        object: ``"chat.completion.chunk"``.
        created: Unix time in seconds.
        model: The model that answered.
        system_fingerprint: Backend configuration fingerprint (llama.cpp: its build id).
        service_tier: The tier actually used (OpenAI).
        choices: The choices this chunk adds to; empty on the final usage chunk.
        usage: Token usage: on the final chunk with ``include_usage``, on every chunk with vLLM's
            ``continuous_usage_stats``, or taken from Groq's ``x_groq.usage``.
        timings: llama.cpp's non-standard ``timings`` object, when present.
        raw: The decoded JSON object, untouched (for server-specific fields). Not compared.
    """

    id: str | None = None
    object: str | None = None
    created: int | None = None
    model: str | None = None
    system_fingerprint: str | None = None
    service_tier: str | None = None
    choices: tuple[ChunkChoice, ...] = ()
    usage: Usage | None = None
    timings: Mapping[str, Any] | None = None
    raw: Mapping[str, Any] = attrs.field(factory=dict, eq=False, repr=False)

    @property
    def delta(self) -> ChoiceDelta:
        """The delta of choice 0 (an empty delta when this chunk has none)."""
        for choice in self.choices:
            if choice.index == 0:
                return choice.delta
        return _NO_DELTA

    @property
    def content(self) -> str:
        """The content fragment of choice 0, ``""`` if none."""
        return self.delta.content or ""

    @property
    def finish_reason(self) -> str | None:
        """The finish reason of choice 0 in this chunk, if any."""
        for choice in self.choices:
            if choice.index == 0:
                return choice.finish_reason
        return None

    @property
    def has_output(self) -> bool:
        """Whether choice 0 carries model output: content, refusal, reasoning or a tool call."""
        delta = self.delta
        return bool(delta.content or delta.refusal or delta.reasoning_content or delta.tool_calls)


# --------------------------------------------------------------------------------------------
# Lenient primitives


def _text(value: object) -> str | None:
    if value is None or type(value) is str:
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, list):  # content parts: [{"type": "text", "text": "..."}]
        return "".join(
            part["text"]
            for part in value
            if isinstance(part, Mapping) and isinstance(part.get("text"), str)
        )
    return None


def _int(value: object) -> int | None:
    if type(value) is int:
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _float(value: object) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return 0.0


def _byte_list(value: object) -> tuple[int, ...] | None:
    if isinstance(value, list):
        return tuple(b for b in value if type(b) is int)
    return None


def _stop_reason(value: object) -> str | int | None:
    if type(value) is str or type(value) is int:
        return value
    return None


def _mapping(value: object) -> Mapping[str, Any] | None:
    return value if isinstance(value, Mapping) else None


# --------------------------------------------------------------------------------------------
# The decoder


def _usage(value: object) -> Usage | None:
    if not isinstance(value, Mapping):
        return None
    prompt = value.get("prompt_tokens_details")
    completion = value.get("completion_tokens_details")
    return Usage(
        prompt_tokens=_int(value.get("prompt_tokens")) or 0,
        completion_tokens=_int(value.get("completion_tokens")) or 0,
        total_tokens=_int(value.get("total_tokens")) or 0,
        prompt_tokens_details=(
            PromptTokensDetails(
                cached_tokens=_int(prompt.get("cached_tokens")),
                audio_tokens=_int(prompt.get("audio_tokens")),
            )
            if isinstance(prompt, Mapping)
            else None
        ),
        completion_tokens_details=(
            CompletionTokensDetails(
                reasoning_tokens=_int(completion.get("reasoning_tokens")),
                audio_tokens=_int(completion.get("audio_tokens")),
                accepted_prediction_tokens=_int(completion.get("accepted_prediction_tokens")),
                rejected_prediction_tokens=_int(completion.get("rejected_prediction_tokens")),
            )
            if isinstance(completion, Mapping)
            else None
        ),
    )


def _top_logprobs(value: object) -> tuple[TopLogprob, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(
        TopLogprob(
            token=_text(item.get("token")) or "",
            logprob=_float(item.get("logprob")),
            bytes=_byte_list(item.get("bytes")),
        )
        for item in value
        if isinstance(item, Mapping)
    )


def _token_logprobs(value: object) -> tuple[TokenLogprob, ...] | None:
    if not isinstance(value, list):
        return None
    return tuple(
        TokenLogprob(
            token=_text(item.get("token")) or "",
            logprob=_float(item.get("logprob")),
            bytes=_byte_list(item.get("bytes")),
            top_logprobs=_top_logprobs(item.get("top_logprobs")),
        )
        for item in value
        if isinstance(item, Mapping)
    )


def _tool_calls(value: object) -> tuple[ToolCallDelta, ...]:
    if not isinstance(value, list):
        return ()
    calls = []
    for item in value:
        if not isinstance(item, Mapping):
            continue
        function = item.get("function")
        calls.append(
            ToolCallDelta(
                index=_int(item.get("index")),
                id=_text(item.get("id")),
                type=_text(item.get("type")),
                function=(
                    FunctionCallDelta(
                        name=_text(function.get("name")),
                        arguments=_text(function.get("arguments")),
                    )
                    if isinstance(function, Mapping)
                    else None
                ),
            )
        )
    return tuple(calls)


def _delta(value: object) -> ChoiceDelta:
    if type(value) is not dict:
        if not isinstance(value, Mapping):
            return _NO_DELTA
        value = dict(value)
    get = value.get
    content = get("content")
    if len(value) == 1 and type(content) is str:  # the hot case: {"content": "..."}
        return ChoiceDelta(None, content)
    reasoning = get("reasoning_content")
    if reasoning is None:
        reasoning = get("reasoning")
    role = get("role")
    refusal = get("refusal")
    tool_calls = get("tool_calls")
    return ChoiceDelta(
        role if role is None or type(role) is str else _text(role),
        content if content is None or type(content) is str else _text(content),
        refusal if refusal is None or type(refusal) is str else _text(refusal),
        reasoning if reasoning is None or type(reasoning) is str else _text(reasoning),
        _tool_calls(tool_calls) if tool_calls else (),
    )


def _choice(value: Mapping[str, Any]) -> ChunkChoice:
    get = value.get
    index = get("index", 0)
    logprobs = get("logprobs")
    finish_reason = get("finish_reason")
    stop_reason = get("stop_reason")
    return ChunkChoice(
        index if type(index) is int else (_int(index) or 0),
        _delta(get("delta")),
        finish_reason
        if finish_reason is None or type(finish_reason) is str
        else _text(finish_reason),
        None
        if logprobs is None
        else ChoiceLogprobs(
            _token_logprobs(logprobs.get("content")), _token_logprobs(logprobs.get("refusal"))
        )
        if isinstance(logprobs, Mapping)
        else None,
        None if stop_reason is None else _stop_reason(stop_reason),
    )


def parse_chunk(value: Mapping[str, Any]) -> ChatCompletionChunk:
    """Build a :class:`ChatCompletionChunk` from a decoded JSON object.

    Args:
        value: The JSON object of one ``data:`` event.

    Returns:
        The typed chunk; unknown fields are ignored and wrong-typed ones become ``None``.

    Raises:
        TypeError: ``value`` is not a mapping.
    """
    if type(value) is not dict and not isinstance(value, Mapping):
        raise TypeError(f"a chunk must be a JSON object, not {type(value).__name__}")
    get = value.get
    choices = get("choices")
    usage = get("usage")
    if usage is None and "x_groq" in value:
        groq = value["x_groq"]
        if isinstance(groq, Mapping):
            usage = groq.get("usage")
    if type(choices) is list:
        if len(choices) == 1 and type(choices[0]) is dict:
            parsed_choices: tuple[ChunkChoice, ...] = (_choice(choices[0]),)
        else:
            parsed_choices = tuple(_choice(c) for c in choices if isinstance(c, Mapping))
    else:
        parsed_choices = ()
    id_, object_, created, model = get("id"), get("object"), get("created"), get("model")
    fingerprint, tier, timings = get("system_fingerprint"), get("service_tier"), get("timings")
    return ChatCompletionChunk(
        id_ if id_ is None or type(id_) is str else _text(id_),
        object_ if object_ is None or type(object_) is str else _text(object_),
        created if created is None or type(created) is int else _int(created),
        model if model is None or type(model) is str else _text(model),
        fingerprint if fingerprint is None or type(fingerprint) is str else _text(fingerprint),
        tier if tier is None or type(tier) is str else _text(tier),
        parsed_choices,
        None if usage is None else _usage(usage),
        None if timings is None else _mapping(timings),
        value,
    )
