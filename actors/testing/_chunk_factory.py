"""Realistic ``chat.completion.chunk`` dicts for scripted streams: :class:`ChunkFactory`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

__all__ = ["ChunkFactory"]


@attrs.frozen
class ChunkFactory:
    """Builds realistic ``chat.completion.chunk`` dicts (OpenAI's shape) for scripted streams.

    Attributes:
        id: The completion id put on every chunk.
        model: The model name.
        created: The creation time.
        system_fingerprint: The fingerprint (``None`` to leave it out).

    Examples:
        >>> chunks = ChunkFactory().text_stream(["Hel", "lo"], usage=(12, 2))
        >>> [c["choices"][0]["delta"] for c in chunks[:3]]
        [{'role': 'assistant', 'content': ''}, {'content': 'Hel'}, {'content': 'lo'}]
    """

    id: str = "chatcmpl-scripted0001"
    model: str = "scripted-model"
    created: int = 1_760_000_000
    system_fingerprint: str | None = "fp_scripted"

    def chunk(
        self,
        delta: Mapping[str, Any] | None = None,
        *,
        finish_reason: str | None = None,
        usage: Mapping[str, Any] | None = None,
        choices: Sequence[Mapping[str, Any]] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """A chunk with one choice (index 0) carrying ``delta``, or with the given ``choices``.

        Args:
            delta: The delta of choice 0.
            finish_reason: The finish reason of choice 0.
            usage: The ``usage`` member (``None`` is sent as ``null``).
            choices: Replaces the choices list entirely (e.g. ``[]`` for a usage chunk).
            extra: More top-level members.

        Returns:
            The chunk dict.
        """
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
        }
        if self.system_fingerprint is not None:
            chunk["system_fingerprint"] = self.system_fingerprint
        chunk["choices"] = (
            list(choices)
            if choices is not None
            else [
                {
                    "index": 0,
                    "delta": dict(delta or {}),
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ]
        )
        chunk["usage"] = dict(usage) if usage is not None else None
        chunk.update(extra)
        return chunk

    def role(self) -> dict[str, Any]:
        """The first chunk: ``{"role": "assistant", "content": ""}``."""
        return self.chunk({"role": "assistant", "content": ""})

    def text(self, content: str) -> dict[str, Any]:
        """A content delta."""
        return self.chunk({"content": content})

    def tool_call(
        self,
        index: int = 0,
        *,
        id: str | None = None,
        name: str | None = None,
        arguments: str | None = None,
        type: str | None = None,
    ) -> dict[str, Any]:
        """A tool-call fragment (only the given members are present).

        Args:
            index: The tool-call index.
            id: The call id (first fragment).
            name: The function name (first fragment).
            arguments: An arguments text fragment.
            type: The call type (``"function"`` is added automatically when ``id`` is given).

        Returns:
            The chunk dict.
        """
        call: dict[str, Any] = {"index": index}
        if id is not None:
            call["id"] = id
            call["type"] = type or "function"
        elif type is not None:
            call["type"] = type
        function: dict[str, Any] = {}
        if name is not None:
            function["name"] = name
        if arguments is not None:
            function["arguments"] = arguments
        if function:
            call["function"] = function
        return self.chunk({"tool_calls": [call]})

    def finish(self, reason: str = "stop") -> dict[str, Any]:
        """The finish chunk: empty delta and ``finish_reason``."""
        return self.chunk({}, finish_reason=reason)

    def usage(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        *,
        cached_tokens: int | None = None,
        reasoning_tokens: int | None = None,
    ) -> dict[str, Any]:
        """The final ``choices: []`` chunk carrying usage.

        Args:
            prompt_tokens: Prompt tokens.
            completion_tokens: Completion tokens.
            cached_tokens: ``prompt_tokens_details.cached_tokens`` (omitted if ``None``).
            reasoning_tokens: ``completion_tokens_details.reasoning_tokens`` (omitted if ``None``).

        Returns:
            The chunk dict.
        """
        usage: dict[str, Any] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        if cached_tokens is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
        if reasoning_tokens is not None:
            usage["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
        return self.chunk(choices=[], usage=usage)

    def error(
        self,
        message: str = "The server had an error while processing your request.",
        *,
        type: str = "server_error",
        code: str | int | None = None,
        param: str | None = None,
    ) -> dict[str, Any]:
        """An in-stream error event payload: ``{"error": {...}}``."""
        return {"error": {"message": message, "type": type, "param": param, "code": code}}

    def text_stream(
        self,
        pieces: Iterable[str],
        *,
        finish_reason: str = "stop",
        usage: tuple[int, int] | None = None,
    ) -> list[dict[str, Any]]:
        """A whole text answer: role chunk, one chunk per piece, finish chunk, optional usage.

        Args:
            pieces: The content deltas.
            finish_reason: The finish reason.
            usage: ``(prompt_tokens, completion_tokens)`` for a final usage chunk, or ``None``.

        Returns:
            The chunk dicts (without ``[DONE]``; :meth:`Reply.sse` adds it).
        """
        chunks = [self.role(), *(self.text(p) for p in pieces), self.finish(finish_reason)]
        if usage is not None:
            chunks.append(self.usage(*usage))
        return chunks

    def tool_call_stream(
        self,
        calls: Sequence[tuple[str, str] | tuple[str, str, str]],
        *,
        fragment_size: int = 8,
        text: Iterable[str] = (),
        finish_reason: str = "tool_calls",
        usage: tuple[int, int] | None = None,
    ) -> list[dict[str, Any]]:
        """A tool-calling answer: optional text, then each call (name first, then its arguments
        in fragments), finish chunk, optional usage.

        Args:
            calls: ``(name, arguments_json)`` or ``(name, arguments_json, call_id)`` per call.
            fragment_size: Characters per arguments fragment.
            text: Content deltas sent before the calls.
            finish_reason: The finish reason.
            usage: ``(prompt_tokens, completion_tokens)`` for a final usage chunk, or ``None``.

        Returns:
            The chunk dicts (without ``[DONE]``).
        """
        chunks = [self.role(), *(self.text(t) for t in text)]
        for index, call in enumerate(calls):
            name, arguments = call[0], call[1]
            call_id = call[2] if len(call) > 2 else f"call_scripted{index:04d}"
            chunks.append(self.tool_call(index, id=call_id, name=name, arguments=""))
            for start in range(0, len(arguments), max(fragment_size, 1)):
                fragment = arguments[start : start + fragment_size]
                chunks.append(self.tool_call(index, arguments=fragment))
        chunks.append(self.finish(finish_reason))
        if usage is not None:
            chunks.append(self.usage(*usage))
        return chunks
