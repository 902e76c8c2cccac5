"""The fold: a snapshot plus the changes after it give the conversation
(:class:`~actors.ContextSnapshot`), and the JSON form of a snapshot and of a log entry.

Everything read from a backend goes through here: a record that does not fit raises
:class:`ConversationCorruptError` naming the conversation and, when it is a log entry, its
version.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
import orjson

from .._context import ContextSnapshot, OpenAILLMContext, validate_messages
from ._changes import (
    AppendMessages,
    Change,
    MarkInterrupted,
    RecordToolCalls,
    ReplaceMessages,
    SettleToolCall,
    SetToolChoice,
    SetTools,
    change_from_json,
    change_to_json,
    check_changes,
    message_count_effect,
)
from ._errors import ConversationCorruptError

__all__ = [
    "EMPTY",
    "OFF_LOOP_BYTES",
    "Entry",
    "decode_entry",
    "decode_snapshot",
    "encode_entry",
    "encode_snapshot",
    "fold",
    "fold_entries",
    "heavier_than",
    "prepare_append",
]

#: Payloads above this many bytes are encoded, decoded and folded off the trio thread.
OFF_LOOP_BYTES = 64 * 1024

#: The conversation before its first change.
EMPTY = ContextSnapshot(messages=())


@attrs.frozen(slots=True)
class Entry:
    """One log entry: the changes of one append, at one version."""

    version: int
    changes: tuple[Change, ...]
    at: float = 0.0


def _dumps(value: Any, what: str) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError as exc:
        raise ValueError(f"{what} cannot be stored as JSON: {exc}") from None


def encode_entry(changes: Sequence[Change], at: float | None = None) -> bytes:
    """The stored form of one append: ``{"at": unix time, "changes": [...]}``.

    Raises:
        ValueError: Content that is not JSON (a non-string key, a set, an object...).
    """
    record = {
        "at": time.time() if at is None else at,
        "changes": [change_to_json(c) for c in changes],
    }
    return _dumps(record, "the change")


def decode_entry(conversation_id: str, version: int, data: bytes | str) -> Entry:
    """A stored log entry, checked.

    Raises:
        ConversationCorruptError: Not JSON, not an entry, or a change that is not valid.
    """
    where = f"change log entry {version}"
    try:
        record = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ConversationCorruptError(conversation_id, f"{where} is not JSON: {exc}") from None
    if not isinstance(record, dict) or not isinstance(record.get("changes"), list):
        raise ConversationCorruptError(
            conversation_id, f"{where} is not an object with a 'changes' list"
        )
    at = record.get("at", 0.0)
    if isinstance(at, bool) or not isinstance(at, int | float):
        raise ConversationCorruptError(conversation_id, f"{where} has a non-numeric 'at'")
    if not record["changes"]:
        raise ConversationCorruptError(conversation_id, f"{where} holds no change")
    try:
        changes = tuple(change_from_json(c) for c in record["changes"])
    except ValueError as exc:
        raise ConversationCorruptError(conversation_id, f"{where}: {exc}") from None
    return Entry(version, changes, float(at))


def encode_snapshot(snapshot: ContextSnapshot) -> bytes:
    """The stored form of a snapshot: messages, tools, tool choice and the indices of the
    interrupted answers."""
    record = {
        "messages": list(snapshot.messages),
        "tools": None if snapshot.tools is None else list(snapshot.tools),
        "tool_choice": snapshot.tool_choice,
        "interrupted": sorted(snapshot.interrupted),
    }
    return _dumps(record, "the conversation")


def decode_snapshot(conversation_id: str, data: bytes | str) -> ContextSnapshot:
    """A stored snapshot, checked like a fold.

    Raises:
        ConversationCorruptError: Not JSON, not a snapshot, or not a valid conversation.
    """
    try:
        record = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ConversationCorruptError(
            conversation_id, f"the snapshot is not JSON: {exc}"
        ) from None
    if not isinstance(record, dict):
        raise ConversationCorruptError(conversation_id, "the snapshot is not a JSON object")
    messages, tools = record.get("messages"), record.get("tools")
    interrupted = record.get("interrupted", [])
    if not isinstance(messages, list):
        raise ConversationCorruptError(conversation_id, "the snapshot has no 'messages' list")
    if tools is not None and not isinstance(tools, list):
        raise ConversationCorruptError(conversation_id, "the snapshot's 'tools' is not a list")
    if not isinstance(interrupted, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in interrupted
    ):
        raise ConversationCorruptError(
            conversation_id, "the snapshot's 'interrupted' is not a list of integers"
        )
    try:
        checked = validate_messages(messages)
    except (TypeError, ValueError) as exc:
        raise ConversationCorruptError(conversation_id, f"the snapshot: {exc}") from None
    snapshot = ContextSnapshot(
        messages=tuple(checked),
        tools=tuple(tools) if tools else None,
        tool_choice=record.get("tool_choice"),
        interrupted=frozenset(interrupted),
    )
    _check_settings(conversation_id, snapshot, "the snapshot")
    return snapshot


def _check_settings(conversation_id: str, snapshot: ContextSnapshot, where: str) -> None:
    """Tools, tool choice and interrupted indices valid (messages are checked already)."""
    try:
        OpenAILLMContext(
            tools=list(snapshot.tools) if snapshot.tools else None,
            tool_choice=snapshot.tool_choice,
        )
    except (TypeError, ValueError) as exc:
        raise ConversationCorruptError(conversation_id, f"{where}: {exc}") from None
    count = len(snapshot.messages)
    for index in snapshot.interrupted:
        if not 0 <= index < count:
            raise ConversationCorruptError(
                conversation_id,
                f"{where} marks message {index} as interrupted, but there are {count} messages",
            )


class _State:
    """The conversation being folded (owns its message dicts)."""

    def __init__(self, base: ContextSnapshot) -> None:
        self.messages: list[dict[str, Any]] = [dict(m) for m in base.messages]
        self.interrupted: set[int] = set(base.interrupted)
        self.tools: tuple[dict[str, Any], ...] | None = base.tools
        self.tool_choice: Any = base.tool_choice

    def apply(self, change: Change) -> None:
        if isinstance(change, AppendMessages):
            start = len(self.messages)
            self.messages.extend(validate_messages(change.messages))
            if change.interrupted:
                self.interrupted.update(range(start, len(self.messages)))
        elif isinstance(change, ReplaceMessages):
            self.messages = validate_messages(change.messages)
            self.interrupted.clear()
        elif isinstance(change, SetTools):
            self.tools = change.tools
        elif isinstance(change, SetToolChoice):
            self.tool_choice = change.tool_choice
        elif isinstance(change, RecordToolCalls):
            self.messages.append(
                {
                    "role": "assistant",
                    "content": change.content or None,
                    "tool_calls": [
                        {"id": c, "type": "function", "function": {"name": n, "arguments": a}}
                        for c, n, a in change.calls
                    ],
                }
            )
            self.messages.extend(
                {"role": "tool", "tool_call_id": c, "content": "IN_PROGRESS"}
                for c, _, _ in change.calls
            )
        elif isinstance(change, SettleToolCall):
            for message in reversed(self.messages):
                if message.get("role") == "tool" and message.get("tool_call_id") == (
                    change.tool_call_id
                ):
                    message["content"] = change.content
                    break
            else:
                raise ValueError(
                    f"it settles tool call {change.tool_call_id!r}, which has no tool message"
                )
        elif isinstance(change, MarkInterrupted):
            if not 0 <= change.index < len(self.messages):
                raise ValueError(
                    f"it marks message {change.index} as interrupted, but there are "
                    f"{len(self.messages)} messages"
                )
            self.interrupted.add(change.index)
        else:  # pragma: no cover - change_from_json and the type only allow the above
            raise TypeError(f"not a change record: {type(change).__name__}")

    def snapshot(self) -> ContextSnapshot:
        return ContextSnapshot(
            messages=tuple(self.messages),
            tools=self.tools,
            tool_choice=self.tool_choice,
            interrupted=frozenset(self.interrupted),
        )


def fold_entries(
    conversation_id: str, base: ContextSnapshot, entries: Iterable[Entry]
) -> ContextSnapshot:
    """``base`` with the changes of ``entries`` applied in order, checked.

    Raises:
        ConversationCorruptError: A change that does not apply (it names the entry's
            version), or a result with invalid tools, tool choice or interrupted indices.
    """
    state = _State(base)
    for entry in entries:
        for change in entry.changes:
            try:
                state.apply(change)
            except (TypeError, ValueError) as exc:
                raise ConversationCorruptError(
                    conversation_id, f"change log entry {entry.version}: {exc}"
                ) from None
    snapshot = state.snapshot()
    _check_settings(conversation_id, snapshot, "the folded conversation")
    return snapshot


def fold(
    base: ContextSnapshot | None,
    changes: Iterable[Change],
    *,
    conversation_id: str = "<in memory>",
) -> ContextSnapshot:
    """``base`` (``None``: an empty conversation) with ``changes`` applied in order: what a
    storage holds after appending them.

    Raises:
        ConversationCorruptError: A change that does not apply to the conversation.
    """
    entry = Entry(version=0, changes=tuple(changes))
    return fold_entries(conversation_id, EMPTY if base is None else base, [entry])


def prepare_append(changes: object) -> tuple[bytes, bool, int]:
    """What a backend stores for an append: ``(entry, reset, count)`` -- the encoded entry,
    and the effect on the message count (see :func:`message_count_effect`).

    Raises:
        ValueError: No change, an invalid change, or content that is not JSON.
    """
    batch = check_changes(changes)
    reset, count = message_count_effect(batch)
    return encode_entry(batch), reset, count


def heavier_than(value: object, limit: int) -> bool:
    """Whether ``value`` holds more than ``limit`` bytes of text (stops counting at the
    limit, so the walk costs at most that much)."""
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str | bytes):
            total += len(item)
        elif isinstance(item, dict):
            total += 8 * len(item)
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            total += 8 * len(item)
            stack.extend(item)
        elif hasattr(item, "__slots__"):
            stack.extend(getattr(item, name) for name in item.__slots__ if hasattr(item, name))
        else:
            total += 8
        if total > limit:
            return True
    return False
