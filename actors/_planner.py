"""The pure planning of the context window: which oldest whole turns a request leaves out.

Nothing here counts tokens or talks to a server: the functions take the messages and their
token counts and return indices. A request is the conversation from a *start* index on (a
user message: turns are dropped whole), preceded by every ``system``/``developer`` message
before it and, with the summarize strategy, by the summary of what was left out. A start is
*safe* when no ``tool`` message at or after it answers an assistant ``tool_calls`` message
before it, so a request never splits calls from their results.

The cost is one pass over the messages the request would hold (the window), never over the
whole conversation's text, and nothing per token.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = [
    "PROTECTED_ROLES",
    "SUMMARY_PREFIX",
    "harder_start",
    "plan_start",
    "request_messages",
    "safe_starts",
]

#: Roles never left out of a request.
PROTECTED_ROLES = frozenset({"system", "developer"})

#: How the summary of the left-out turns is introduced to the model.
SUMMARY_PREFIX = "Summary of the earlier part of this conversation (no longer shown): "


def _role(message: Mapping[str, Any]) -> object:
    return message.get("role")


def safe_starts(messages: Sequence[Mapping[str, Any]], start: int) -> list[int]:
    """The indices after ``start`` where a request may begin: user messages up to the latest
    one (which is always kept), at which no tool call is split from its result."""
    last_user = -1
    for i in range(len(messages) - 1, start, -1):
        if _role(messages[i]) == "user":
            last_user = i
            break
    if last_user < 0:
        return []
    declared: dict[str, int] = {}
    # The earliest start each later tool message forbids: every u in (call, result].
    unsafe_from: list[tuple[int, int]] = []
    for i in range(start, len(messages)):
        message = messages[i]
        role = _role(message)
        if role == "assistant":
            for call in message.get("tool_calls") or ():
                if isinstance(call, Mapping) and isinstance(call.get("id"), str):
                    declared[call["id"]] = i
        elif role == "tool":
            call_at = declared.get(str(message.get("tool_call_id")))
            if call_at is not None:
                unsafe_from.append((call_at + 1, i))
    unsafe: set[int] = set()
    for low, high in unsafe_from:
        unsafe.update(range(low, min(high, last_user) + 1))
    return [
        i
        for i in range(start + 1, last_user + 1)
        if _role(messages[i]) == "user" and i not in unsafe
    ]


def _dropped(
    messages: Sequence[Mapping[str, Any]], counts: Mapping[int, int], low: int, high: int
) -> int:
    """Tokens of the messages in ``[low, high)`` that a start at ``high`` leaves out."""
    return sum(counts[i] for i in range(low, high) if _role(messages[i]) not in PROTECTED_ROLES)


def plan_start(
    messages: Sequence[Mapping[str, Any]],
    counts: Mapping[int, int],
    *,
    start: int,
    fixed: int,
    budget: int,
    goal: int,
) -> int:
    """Where the request begins: ``start`` while the request fits ``budget``; otherwise the
    first safe start whose request fits ``goal`` (below ``budget``, so the next turns do not
    trim again), or the latest user turn when none does.

    Args:
        messages: The whole conversation.
        counts: Tokens per message, for exactly the messages a request beginning at
            ``start`` holds: every index from ``start`` on and every ``system``/``developer``
            message before it.
        start: The current start (the window only moves forward).
        fixed: Tokens of the request outside the messages (tools, instruction, summary).
        budget: Tokens the request may hold.
        goal: Tokens the request should hold after a trim.
    """
    total = fixed + sum(counts.values())
    if total <= budget:
        return start
    previous = start
    best = start
    for cut in safe_starts(messages, start):
        total -= _dropped(messages, counts, previous, cut)
        previous = best = cut
        if total <= goal:
            break
    return best


def harder_start(
    messages: Sequence[Mapping[str, Any]], start: int, estimate: Callable[[Mapping[str, Any]], int]
) -> int | None:
    """A start that leaves out at least half of the tokens of the request that began at
    ``start`` (by ``estimate``), or as much as possible; ``None`` when no whole turn can be
    left out. Used after the server refused a request as too long for its context."""
    counts = {
        i: estimate(messages[i])
        for i in range(len(messages))
        if i >= start or _role(messages[i]) in PROTECTED_ROLES
    }
    total = sum(counts.values())
    new = plan_start(messages, counts, start=start, fixed=0, budget=total - 1, goal=total // 2)
    return None if new == start else new


def request_messages(
    messages: Sequence[dict[str, Any]], start: int, summary: str | None
) -> tuple[dict[str, Any], ...]:
    """The messages of a request that begins at ``start``: the ``system``/``developer``
    messages before it, the summary (as a system message) if any, then the rest."""
    if start <= 0 and summary is None:
        return tuple(messages)
    kept = [m for m in messages[:start] if _role(m) in PROTECTED_ROLES]
    if summary is not None:
        kept.append({"role": "system", "content": SUMMARY_PREFIX + summary})
    kept.extend(messages[start:])
    return tuple(kept)
