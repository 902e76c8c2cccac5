"""The context window: how many tokens a request to the model may hold, and how they are
counted.

:class:`ContextWindow` is the configuration (off unless given: ``OpenAILLMService(...,
context_window=ContextWindow(2048))``), :class:`TokenCounter` counts messages with the
server's tokenizer when it has one and estimates otherwise. :class:`WindowKeeper` is the
context store's per-conversation state: where the requests begin and the summary of what they
leave out. The whole conversation always stays in the context (and in the storage); only the
requests are windowed (see ``docs/long-conversations.md``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal

import attrs
import structlog
import trio

from ._planner import PROTECTED_ROLES, SUMMARY_PREFIX, plan_start

__all__ = ["ContextWindow", "Summarizer", "TokenCounter", "Tokenizer", "WindowKeeper"]

_log = structlog.get_logger("trouper.actors")

#: A tokenizer: the tokens of a text (a list of ids, or their number).
Tokenizer = Callable[[str], Awaitable[Sequence[int] | int]]

#: Makes the summary of left-out messages: ``(messages, previous summary, max_tokens)`` to
#: the new summary's text.
Summarizer = Callable[[Sequence[Mapping[str, Any]], str | None, int], Awaitable[str]]

_STRATEGIES = ("drop", "summarize")


def _positive_int(_: object, attribute: attrs.Attribute[int], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"ContextWindow {attribute.name} must be a positive int, got {value!r}")


@attrs.frozen
class ContextWindow:
    """How many tokens the requests of a conversation may hold, and what to do past that.

    When a request would exceed ``max_tokens - reserve``, the oldest whole turns (a user
    message and everything up to the next one) are left out of it until it holds at most
    ``target`` of that budget, so the following turns fit without trimming again (and a
    server's prompt cache keeps its prefix). ``system``/``developer`` messages and the
    latest user turn are always sent; an assistant ``tool_calls`` message is never separated
    from its ``tool`` results. The conversation itself keeps every message.

    If the server still refuses a request as too long (``ContextLengthExceededError``), the
    request is trimmed harder (at least half of its turns' tokens) and sent once more.

    Args:
        max_tokens: The model's context size for this conversation, in tokens (for
            llama-server: its per-slot ``n_ctx``).
        strategy: ``"drop"`` leaves the old turns out; ``"summarize"`` also sends a summary of
            them, made by the model with one extra request each time turns are left out.
        target: The share of the budget a request holds right after a trim (0 < target <= 1).
        reserve: Tokens kept free for the answer (default: a quarter of ``max_tokens``).
        summary_max_tokens: The longest summary asked for (``"summarize"``).
        summary_timeout: Seconds the summary request may take; past them (or on an error)
            the turns are dropped without a new summary. The store makes it while it answers
            the aggregators, whose requests wait at most 30 s: keep it well below.

    Raises:
        ValueError: a value out of range, or an unknown strategy.
    """

    max_tokens: int = attrs.field(validator=_positive_int)
    strategy: Literal["drop", "summarize"] = "drop"
    target: float = 0.7
    reserve: int | None = None
    summary_max_tokens: int = attrs.field(default=256, validator=_positive_int)
    summary_timeout: float = 20.0

    def __attrs_post_init__(self) -> None:
        if self.strategy not in _STRATEGIES:
            raise ValueError(
                f"ContextWindow strategy must be 'drop' or 'summarize', got {self.strategy!r}"
            )
        if isinstance(self.target, bool) or not isinstance(self.target, int | float):
            raise ValueError(f"ContextWindow target must be a number, got {self.target!r}")
        if not 0 < self.target <= 1:
            raise ValueError(f"ContextWindow target must be in (0, 1], got {self.target!r}")
        reserve = self.reserve
        if reserve is not None and (
            isinstance(reserve, bool) or not isinstance(reserve, int) or reserve < 0
        ):
            raise ValueError(f"ContextWindow reserve must be an int >= 0, got {reserve!r}")
        if self.answer_reserve >= self.max_tokens:
            raise ValueError(
                f"ContextWindow reserve ({self.answer_reserve}) leaves nothing of max_tokens "
                f"({self.max_tokens}) for the request"
            )
        if not 0 < self.summary_timeout < math.inf:
            raise ValueError(
                f"ContextWindow summary_timeout must be a positive number of seconds, got "
                f"{self.summary_timeout!r}"
            )

    @property
    def answer_reserve(self) -> int:
        """The tokens kept free for the answer (``reserve``, or its default)."""
        return self.max_tokens // 4 if self.reserve is None else self.reserve

    @property
    def budget(self) -> int:
        """The tokens a request may hold: ``max_tokens`` minus the reserve."""
        return self.max_tokens - self.answer_reserve

    @property
    def goal(self) -> int:
        """The tokens a request holds at most right after a trim."""
        return int(self.budget * self.target)


def message_text(message: Mapping[str, Any]) -> tuple[str, int]:
    """The text of a message that the model reads (content, tool calls, names) and its number
    of images."""
    parts: list[str] = []
    images = 0
    content = message.get("content")
    if isinstance(content, str):
        parts.append(content)
    elif isinstance(content, Sequence):
        for part in content:
            if not isinstance(part, Mapping):
                continue
            if part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif part.get("type") in ("image_url", "input_image", "image"):
                images += 1
            else:
                parts.append(json.dumps(part, ensure_ascii=False, default=str))
    for call in message.get("tool_calls") or ():
        if isinstance(call, Mapping):
            function = call.get("function")
            if isinstance(function, Mapping):
                parts.append(f"{function.get('name', '')}({function.get('arguments', '')})")
    for key in ("name", "tool_call_id"):
        value = message.get(key)
        if isinstance(value, str):
            parts.append(value)
    return "\n".join(parts), images


class TokenCounter:
    """Counts the tokens of texts and messages: with the server's tokenizer when it has one,
    else with a conservative estimate.

    The first count probes ``tokenize``; if that fails (llama-server has ``POST /tokenize``,
    OpenAI has none) every later count is an estimate. Counts are cached per text, so a
    conversation's messages are tokenized once each.

    The estimate is ``ceil(characters / chars_per_token)``; a message adds
    ``message_overhead`` tokens (its role and the chat template's markers) and
    ``image_tokens`` per image.

    Args:
        tokenize: The server's tokenizer (``ChatCompletionsClient.tokenize``, or any async
            function from text to token ids or their number); ``None``: always estimate.
        chars_per_token: Characters per token of the estimate (3 overestimates English text).
        message_overhead: Tokens added per message.
        image_tokens: Tokens counted per image.
        cache_size: Texts whose count is kept.
    """

    def __init__(
        self,
        tokenize: Tokenizer | None = None,
        *,
        chars_per_token: float = 3.0,
        message_overhead: int = 8,
        image_tokens: int = 768,
        cache_size: int = 4096,
    ) -> None:
        if not chars_per_token > 0:
            raise ValueError(f"chars_per_token must be positive, got {chars_per_token!r}")
        self._tokenize = tokenize
        self._usable: bool | None = None if tokenize is not None else False
        self.chars_per_token = float(chars_per_token)
        self.message_overhead = int(message_overhead)
        self.image_tokens = int(image_tokens)
        self._cache: dict[str, int] = {}
        self._cache_size = max(0, int(cache_size))

    @property
    def uses_tokenizer(self) -> bool | None:
        """``True``: counts with the tokenizer; ``False``: estimates; ``None``: not probed
        yet."""
        return self._usable

    def estimate(self, text: str) -> int:
        """The estimated tokens of ``text``."""
        return math.ceil(len(text) / self.chars_per_token)

    def estimate_message(self, message: Mapping[str, Any]) -> int:
        """The estimated tokens of ``message``."""
        text, images = message_text(message)
        return self.estimate(text) + self.message_overhead + images * self.image_tokens

    async def count(self, text: str) -> int:
        """The tokens of ``text``: counted by the tokenizer if it works, else estimated."""
        if not text:
            return 0
        cached = self._cache.get(text)
        if cached is not None:
            return cached
        if self._tokenize is None or self._usable is False:
            return self.estimate(text)  # cheap: not cached
        try:
            tokens = await self._tokenize(text)
            value = tokens if isinstance(tokens, int) else len(tokens)
        except Exception as exc:  # any failure: estimate (and, on the probe, from now on)
            if self._usable is None:
                self._usable = False
                _log.info(
                    "no tokenizer endpoint: token counts are estimated",
                    reason=f"{type(exc).__name__}: {exc}",
                )
            return self.estimate(text)
        self._usable = True
        if len(self._cache) >= self._cache_size > 0:
            del self._cache[next(iter(self._cache))]
        if self._cache_size:
            self._cache[text] = value
        return value

    async def count_message(self, message: Mapping[str, Any]) -> int:
        """The tokens of ``message`` (text, overhead, images)."""
        text, images = message_text(message)
        return await self.count(text) + self.message_overhead + images * self.image_tokens


@attrs.define
class WindowKeeper:
    """The context store's window over one conversation: where its requests begin
    (``start``, only ever moving forward) and the summary of what they leave out.

    Args:
        window: The configuration.
        counter: Counts the messages.
        summarizer: Makes summaries (the ``"summarize"`` strategy; without one it drops).
        instruction: The system instruction the LLM sends before the conversation (counted).
    """

    window: ContextWindow
    counter: TokenCounter
    summarizer: Summarizer | None = None
    instruction: str | None = None
    #: Index of the first message requests hold (before it: only system/developer ones).
    start: int = 0
    #: The summary of the messages left out (``"summarize"``), if one was made.
    summary: str | None = None
    #: System/developer messages before ``start`` (always sent).
    _protected: list[int] = attrs.Factory(list)
    _lock: trio.Lock = attrs.Factory(trio.Lock)

    def reset(self) -> None:
        """Forget the window (the messages were replaced)."""
        self.start = 0
        self.summary = None
        self._protected.clear()

    async def plan(
        self, messages: Sequence[Mapping[str, Any]], tools: Any, log: Any = _log
    ) -> None:
        """Move ``start`` forward if the request would not fit (see :class:`ContextWindow`),
        and make the summary of what it leaves out (``"summarize"``); ``log`` is the
        caller's logger."""
        async with self._lock:
            await self._plan(messages, tools, log)

    async def _plan(self, messages: Sequence[Mapping[str, Any]], tools: Any, log: Any) -> None:
        if self.start > len(messages):
            self.reset()
        window = self.window
        summarize = window.strategy == "summarize" and self.summarizer is not None
        counter = self.counter
        fixed = 0
        if tools:
            fixed += await counter.count(json.dumps(tools, ensure_ascii=False, default=str))
        if self.instruction:
            fixed += await counter.count(self.instruction) + counter.message_overhead
        if summarize:
            fixed += window.summary_max_tokens + counter.message_overhead
        elif self.summary is not None:
            fixed += await counter.count(SUMMARY_PREFIX + self.summary)
        counts: dict[int, int] = {}
        for i in self._protected:
            counts[i] = await counter.count_message(messages[i])
        for i in range(self.start, len(messages)):
            counts[i] = await counter.count_message(messages[i])
        new = plan_start(
            messages,
            counts,
            start=self.start,
            fixed=fixed,
            budget=window.budget,
            goal=window.goal,
        )
        if new == self.start:
            return
        old = self.start
        left_out = [m for m in messages[old:new] if m.get("role") not in PROTECTED_ROLES]
        self._protected.extend(
            i for i in range(old, new) if messages[i].get("role") in PROTECTED_ROLES
        )
        self.start = new
        log.info(
            "context window: oldest turns left out of the requests",
            left_out=len(left_out),
            start=new,
            messages=len(messages),
            budget=window.budget,
        )
        if summarize:
            assert self.summarizer is not None
            await self._summarize(left_out, log)

    async def _summarize(self, left_out: Sequence[Mapping[str, Any]], log: Any) -> None:
        assert self.summarizer is not None
        summary: str | None = None
        with trio.move_on_after(self.window.summary_timeout):
            try:
                summary = await self.summarizer(
                    left_out, self.summary, self.window.summary_max_tokens
                )
            except Exception as exc:
                log.warning(
                    "context window: the summary failed; the turns are dropped",
                    error=f"{type(exc).__name__}: {exc}",
                )
                return
        if summary is None:
            log.warning(
                "context window: the summary took too long; the turns are dropped",
                timeout=self.window.summary_timeout,
            )
        elif summary.strip():
            self.summary = summary.strip()
