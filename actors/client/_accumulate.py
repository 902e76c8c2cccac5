"""Accumulation of a chunk stream into one :class:`StreamResult`.

Rules (choice 0 only; other choices of an ``n > 1`` request are ignored):

* ``content``, ``refusal`` and reasoning fragments are concatenated in arrival order.
* Tool-call fragments are keyed by their ``index``; every fragment of every chunk counts,
  including several fragments in one ``tool_calls`` array and interleaved indexes. ``id``,
  ``type`` and ``name`` are kept from their *first non-empty* appearance: a server that repeats
  them on later fragments (or sends ``name: null``) cannot corrupt them, and an ``id`` may come
  before the name or without one. A fragment carrying a *different* non-empty ``id`` at an index
  that already has one starts a new, separate call (Ollama sends every parallel call at index 0).
  ``arguments`` fragments are joined verbatim and parsed once, at the end, with
  :func:`json.loads`; invalid JSON, or JSON that is not an object, yields the call with
  ``arguments=None`` and a ``parse_error`` (the raw text is kept in ``arguments_json``); empty
  arguments parse as ``{}``.
* ``usage``: the last non-null snapshot wins (the final ``choices: []`` chunk, or the running
  usage of vLLM's ``continuous_usage_stats``); snapshots are never added up.
* ``finish_reason``, ``model``, ``system_fingerprint``, ``id``, ``created``, ``service_tier``: the
  last non-null value.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

# Runtime imports: cattrs resolves these annotations when (un)structuring results.
from ._chunks import ChatCompletionChunk, TokenLogprob, ToolCallDelta, Usage

__all__ = ["StreamAccumulator", "StreamResult", "ToolCall"]


@attrs.frozen
class ToolCall:
    """A complete tool call requested by the model.

    Attributes:
        index: Position of the call in :attr:`StreamResult.tool_calls` (0, 1, ...). Equal to the
            server's ``index`` for well-behaved servers; calls that a server put at a reused index
            get the next positions.
        id: The call id (``""`` if the server sent none).
        type: The call type, ``"function"`` unless the server said otherwise.
        name: The function name (``""`` if the server sent none).
        arguments_json: The arguments text exactly as streamed (joined fragments).
        arguments: The parsed arguments object, or ``None`` when they could not be parsed.
        parse_error: Why the arguments could not be parsed, or ``None``.
    """

    index: int
    id: str
    type: str
    name: str
    arguments_json: str
    arguments: dict[str, Any] | None
    parse_error: str | None = None


@attrs.frozen
class StreamResult:
    """Everything a stream produced, accumulated (also available partially, mid-stream or after an
    error).

    Attributes:
        text: The content of choice 0.
        refusal: The refusal text, or ``None`` if the model did not refuse.
        reasoning: Reasoning text sent as ``reasoning_content``/``reasoning``, or ``None``.
        tool_calls: The tool calls, in :attr:`ToolCall.index` order.
        finish_reason: Why generation stopped (``None`` if the stream never said).
        usage: The last usage snapshot, or ``None``.
        model: The model that answered.
        system_fingerprint: The backend fingerprint.
        logprobs: Per-token log probabilities of the content, when requested.
        chunk_count: How many chunks were received.
        id: The completion id.
        created: The completion's creation time (Unix seconds).
        service_tier: The service tier actually used.
        done: Whether the ``[DONE]`` sentinel was received.
    """

    text: str = ""
    refusal: str | None = None
    reasoning: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str | None = None
    usage: Usage | None = None
    model: str | None = None
    system_fingerprint: str | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None
    chunk_count: int = 0
    id: str | None = None
    created: int | None = None
    service_tier: str | None = None
    done: bool = False

    @property
    def complete(self) -> bool:
        """Whether the stream ended properly: ``[DONE]`` received or a ``finish_reason`` given."""
        return self.done or self.finish_reason is not None


@attrs.define
class _CallBuilder:
    server_index: int
    order: int
    id: str = ""
    type: str = ""
    name: str = ""
    arguments: list[str] = attrs.field(factory=list)

    def build(self, position: int) -> ToolCall:
        text = "".join(self.arguments)
        parsed: dict[str, Any] | None = None
        error: str | None = None
        if not text.strip():
            parsed = {}
        else:
            try:
                value = json.loads(text)
            except ValueError as exc:
                error = f"tool call arguments are not valid JSON: {exc}"
            else:
                if isinstance(value, dict):
                    parsed = value
                else:
                    error = (
                        "tool call arguments must be a JSON object, "
                        f"got a JSON {type(value).__name__}"
                    )
        return ToolCall(
            index=position,
            id=self.id,
            type=self.type or "function",
            name=self.name,
            arguments_json=text,
            arguments=parsed,
            parse_error=error,
        )


@attrs.define
class StreamAccumulator:
    """Folds chunks into a :class:`StreamResult`.

    Call :meth:`add` for every chunk in order and :meth:`result` whenever a (partial) result is
    needed; :meth:`result` does not consume anything and can be called repeatedly.

    Attributes:
        chunk_count: How many chunks were folded in so far.
        has_output: Whether any content, refusal, reasoning or tool-call fragment was received.

    The two are plain attributes, not properties: the client reads them for every piece of the
    body (a property costs a Python call each time). Only the accumulator sets them.
    """

    _text: list[str] = attrs.field(factory=list, init=False)
    _refusal: list[str] = attrs.field(factory=list, init=False)
    _reasoning: list[str] = attrs.field(factory=list, init=False)
    _calls: list[_CallBuilder] = attrs.field(factory=list, init=False)
    _current: dict[int, _CallBuilder] = attrs.field(factory=dict, init=False)
    _logprobs: list[TokenLogprob] | None = attrs.field(default=None, init=False)
    _finish_reason: str | None = attrs.field(default=None, init=False)
    _usage: Usage | None = attrs.field(default=None, init=False)
    _model: str | None = attrs.field(default=None, init=False)
    _fingerprint: str | None = attrs.field(default=None, init=False)
    _id: str | None = attrs.field(default=None, init=False)
    _created: int | None = attrs.field(default=None, init=False)
    _service_tier: str | None = attrs.field(default=None, init=False)
    chunk_count: int = attrs.field(default=0, init=False)
    has_output: bool = attrs.field(default=False, init=False)
    _done: bool = attrs.field(default=False, init=False)

    @property
    def usage(self) -> Usage | None:
        """The last usage snapshot received so far."""
        return self._usage

    @property
    def finish_reason(self) -> str | None:
        """The finish reason of choice 0 received so far."""
        return self._finish_reason

    def mark_done(self) -> None:
        """Record that the ``[DONE]`` sentinel arrived."""
        self._done = True

    def add(self, chunk: ChatCompletionChunk) -> bool:
        """Fold one chunk in.

        Args:
            chunk: The next chunk of the stream.

        Returns:
            Whether this chunk carried output for choice 0 (content, refusal, reasoning or a
            tool-call fragment).
        """
        self.chunk_count += 1
        if chunk.model:
            self._model = chunk.model
        if chunk.system_fingerprint:
            self._fingerprint = chunk.system_fingerprint
        if chunk.id:
            self._id = chunk.id
        if chunk.created is not None:
            self._created = chunk.created
        if chunk.service_tier:
            self._service_tier = chunk.service_tier
        if chunk.usage is not None:
            self._usage = chunk.usage
        output = False
        for choice in chunk.choices:
            if choice.index != 0:
                continue
            delta = choice.delta
            if delta.content:
                self._text.append(delta.content)
                output = True
            if delta.refusal:
                self._refusal.append(delta.refusal)
                output = True
            if delta.reasoning_content:
                self._reasoning.append(delta.reasoning_content)
                output = True
            if delta.tool_calls:
                self._add_tool_calls(delta.tool_calls)
                output = True
            if choice.finish_reason is not None:
                self._finish_reason = choice.finish_reason
            logprobs = choice.logprobs
            if logprobs is not None and logprobs.content is not None:
                if self._logprobs is None:
                    self._logprobs = []
                self._logprobs.extend(logprobs.content)
        if output:
            self.has_output = True
        return output

    def add_content_payload(self, payload: dict[str, Any]) -> str | None:
        """Fold in a decoded chunk of the commonest shape without building a chunk object.

        The shape is one choice (index 0) whose delta is only ``{"content": "..."}``, with no
        finish reason, logprobs, usage or server extras, and metadata of the expected types.
        The result is exactly what :meth:`add` of the parsed chunk would give.

        Args:
            payload: The JSON object of one ``data:`` event.

        Returns:
            The delta's content (possibly empty) if ``payload`` had that shape and was folded
            in; ``None`` if it did not (nothing was folded in: parse it and call :meth:`add`).
        """
        choices = payload.get("choices")
        if type(choices) is not list or len(choices) != 1:
            return None
        choice = choices[0]
        if type(choice) is not dict:
            return None
        delta = choice.get("delta")
        if type(delta) is not dict or len(delta) != 1:
            return None
        content = delta.get("content")
        if type(content) is not str:
            return None
        get = choice.get
        index = get("index", 0)
        if (
            type(index) is not int
            or index != 0
            or get("finish_reason") is not None
            or get("logprobs") is not None
            or get("stop_reason") is not None
        ):
            return None
        get = payload.get
        model, fingerprint, id_ = get("model"), get("system_fingerprint"), get("id")
        created, tier = get("created"), get("service_tier")
        if (
            get("usage") is not None
            or "x_groq" in payload
            or (model is not None and type(model) is not str)
            or (fingerprint is not None and type(fingerprint) is not str)
            or (id_ is not None and type(id_) is not str)
            or (created is not None and type(created) is not int)
            or (tier is not None and type(tier) is not str)
        ):
            return None
        self.chunk_count += 1
        if model:
            self._model = model
        if fingerprint:
            self._fingerprint = fingerprint
        if id_:
            self._id = id_
        if created is not None:
            self._created = created
        if tier:
            self._service_tier = tier
        if content:
            self._text.append(content)
            self.has_output = True
        return content

    def _add_tool_calls(self, fragments: tuple[ToolCallDelta, ...]) -> None:
        current = self._current
        for position, fragment in enumerate(fragments):
            index = fragment.index if fragment.index is not None else position
            builder = current.get(index)
            call_id = fragment.id
            if builder is None or (call_id and builder.id and call_id != builder.id):
                builder = _CallBuilder(server_index=index, order=len(self._calls))
                self._calls.append(builder)
                current[index] = builder
            if call_id and not builder.id:
                builder.id = call_id
            if fragment.type and not builder.type:
                builder.type = fragment.type
            function = fragment.function
            if function is not None:
                if function.name and not builder.name:
                    builder.name = function.name
                if function.arguments:
                    builder.arguments.append(function.arguments)

    def result(self) -> StreamResult:
        """The result accumulated so far.

        Returns:
            A snapshot; tool-call arguments are parsed at this point.
        """
        ordered = sorted(self._calls, key=lambda b: (b.server_index, b.order))
        return StreamResult(
            text="".join(self._text),
            refusal="".join(self._refusal) if self._refusal else None,
            reasoning="".join(self._reasoning) if self._reasoning else None,
            tool_calls=tuple(b.build(i) for i, b in enumerate(ordered)),
            finish_reason=self._finish_reason,
            usage=self._usage,
            model=self._model,
            system_fingerprint=self._fingerprint,
            logprobs=tuple(self._logprobs) if self._logprobs is not None else None,
            chunk_count=self.chunk_count,
            id=self._id,
            created=self._created,
            service_tier=self._service_tier,
            done=self._done,
        )
