"""Helpers of the storage tests: messages, turns, and the API-validity check."""

from __future__ import annotations

from typing import Any

from actors import ContextSnapshot
from actors.storage import AppendMessages, Change, RecordToolCalls


def user(text: str) -> dict[str, Any]:
    """A user message."""
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, Any]:
    """An assistant message."""
    return {"role": "assistant", "content": text}


def turn(i: int) -> tuple[Change, ...]:
    """The changes of turn ``i``: the user's message and the answer."""
    return (AppendMessages([user(f"turn {i}")]), AppendMessages([assistant(f"answer {i}")]))


def calls(*ids: str) -> RecordToolCalls:
    """A batch of calls of ``lookup`` with the given ids."""
    return RecordToolCalls([(i, "lookup", '{"q": 1}') for i in ids], content=None)


def assert_api_valid(snapshot: ContextSnapshot) -> None:
    """Every assistant tool call has exactly one settled tool message after it, and every
    tool message answers a call: what the OpenAI API requires of a request."""
    pending: set[str] = set()
    for index, message in enumerate(snapshot.messages):
        if message["role"] == "assistant":
            assert not pending, f"message {index}: calls {sorted(pending)} were never answered"
            pending = {c["id"] for c in message.get("tool_calls") or ()}
        elif message["role"] == "tool":
            call_id = message["tool_call_id"]
            assert call_id in pending, f"message {index} answers unknown call {call_id!r}"
            assert message["content"] != "IN_PROGRESS", f"call {call_id!r} is still in progress"
            pending.discard(call_id)
        else:
            assert not pending, f"message {index}: calls {sorted(pending)} were never answered"
    assert not pending, f"calls {sorted(pending)} were never answered"


def texts(snapshot: ContextSnapshot) -> list[Any]:
    """The contents of the messages."""
    return [m.get("content") for m in snapshot.messages]
