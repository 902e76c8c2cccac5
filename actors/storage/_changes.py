"""Change records: what the context store does to a conversation, one record per change,
and their JSON form (the form stored in every backend's log).

Every record is a JSON object with a ``"kind"``; :func:`change_to_json` and
:func:`change_from_json` convert both ways. :func:`change_from_json` checks the shape and
raises ``ValueError`` naming what is wrong; the storage turns that into a
:class:`~actors.storage.ConversationCorruptError` naming the conversation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, TypeAlias

import attrs

from .._context import ContextSnapshot, OpenAILLMContext, check_messages

__all__ = [
    "AppendMessages",
    "Change",
    "MarkInterrupted",
    "RecordToolCalls",
    "ReplaceMessages",
    "SetToolChoice",
    "SetTools",
    "SettleToolCall",
    "change_from_json",
    "change_to_json",
    "changes_from_snapshot",
    "check_changes",
    "message_count_effect",
]


def _dict_tuple(value: Iterable[Mapping[str, Any]]) -> tuple[dict[str, Any], ...]:
    if isinstance(value, Mapping | str | bytes):
        raise TypeError("expected a sequence of dicts, not a single value")
    return tuple(dict(item) for item in value)


def _optional_dict_tuple(
    value: Iterable[Mapping[str, Any]] | None,
) -> tuple[dict[str, Any], ...] | None:
    if value is None:
        return None
    out = _dict_tuple(value)
    return out or None


def _calls(value: Iterable[Sequence[str]]) -> tuple[tuple[str, str, str], ...]:
    out = []
    for call in value:
        cid, name, arguments = call
        out.append((str(cid), str(name), str(arguments)))
    return tuple(out)


@attrs.frozen(slots=True)
class AppendMessages:
    """Messages appended at the end; ``interrupted`` marks them as an assistant answer cut
    short by an interruption (the context store appends such an answer alone)."""

    kind: ClassVar[str] = "append_messages"
    messages: tuple[dict[str, Any], ...] = attrs.field(converter=_dict_tuple)
    interrupted: bool = False


@attrs.frozen(slots=True)
class ReplaceMessages:
    """Every message replaced (no message is marked interrupted afterwards)."""

    kind: ClassVar[str] = "replace_messages"
    messages: tuple[dict[str, Any], ...] = attrs.field(converter=_dict_tuple)


@attrs.frozen(slots=True)
class SetTools:
    """The tools replaced, in OpenAI format as ``OpenAILLMContext.tools`` holds them
    (``None``: no tools)."""

    kind: ClassVar[str] = "set_tools"
    tools: tuple[dict[str, Any], ...] | None = attrs.field(converter=_optional_dict_tuple)


@attrs.frozen(slots=True)
class SetToolChoice:
    """The tool choice set (``None``: the server's default)."""

    kind: ClassVar[str] = "set_tool_choice"
    tool_choice: Any


@attrs.frozen(slots=True)
class RecordToolCalls:
    """A batch of tool calls asked for by the LLM: one assistant message with the calls
    (and the answer's text, if any) and one ``IN_PROGRESS`` tool message per call.

    ``calls`` are ``(tool_call_id, function_name, arguments_json)``.
    """

    kind: ClassVar[str] = "record_tool_calls"
    calls: tuple[tuple[str, str, str], ...] = attrs.field(converter=_calls)
    content: str | None = None


@attrs.frozen(slots=True)
class SettleToolCall:
    """A tool call settled: ``content`` goes into its tool message (the latest one)."""

    kind: ClassVar[str] = "settle_tool_call"
    tool_call_id: str
    content: str


@attrs.frozen(slots=True)
class MarkInterrupted:
    """Message ``index`` (an assistant answer) is marked as cut short by an interruption."""

    kind: ClassVar[str] = "mark_interrupted"
    index: int


#: Any change record.
Change: TypeAlias = (
    AppendMessages
    | ReplaceMessages
    | SetTools
    | SetToolChoice
    | RecordToolCalls
    | SettleToolCall
    | MarkInterrupted
)

_KINDS: tuple[type[Any], ...] = (
    AppendMessages,
    ReplaceMessages,
    SetTools,
    SetToolChoice,
    RecordToolCalls,
    SettleToolCall,
    MarkInterrupted,
)


def change_to_json(change: Change) -> dict[str, Any]:
    """The JSON object of ``change`` (sharing its message dicts: encode it, don't keep it).

    Raises:
        TypeError: ``change`` is not a change record.
    """
    if isinstance(change, AppendMessages):
        return {
            "kind": change.kind,
            "messages": list(change.messages),
            "interrupted": change.interrupted,
        }
    if isinstance(change, ReplaceMessages):
        return {"kind": change.kind, "messages": list(change.messages)}
    if isinstance(change, SetTools):
        return {"kind": change.kind, "tools": None if change.tools is None else list(change.tools)}
    if isinstance(change, SetToolChoice):
        return {"kind": change.kind, "tool_choice": change.tool_choice}
    if isinstance(change, RecordToolCalls):
        return {
            "kind": change.kind,
            "calls": [{"id": c, "name": n, "arguments": a} for c, n, a in change.calls],
            "content": change.content,
        }
    if isinstance(change, SettleToolCall):
        return {"kind": change.kind, "tool_call_id": change.tool_call_id, "content": change.content}
    if isinstance(change, MarkInterrupted):
        return {"kind": change.kind, "index": change.index}
    raise TypeError(f"not a change record: {type(change).__name__}")


def _field(record: Mapping[str, Any], kind: str, name: str, *types: type[Any]) -> Any:
    if name not in record:
        raise ValueError(f"a {kind!r} change has no {name!r}")
    value = record[name]
    if types and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
        expected = " or ".join("null" if t is type(None) else t.__name__ for t in types)
        raise ValueError(
            f"the {name!r} of a {kind!r} change must be {expected}, got {type(value).__name__}"
        )
    return value


def _dicts(record: Mapping[str, Any], kind: str, name: str) -> list[dict[str, Any]]:
    items = _field(record, kind, name, list)
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(
                f"item {i} of the {name!r} of a {kind!r} change must be an object, "
                f"got {type(item).__name__}"
            )
    return list(items)


def change_from_json(record: object) -> Change:
    """The change record of a JSON object made by :func:`change_to_json`.

    Raises:
        ValueError: Not an object, an unknown ``kind``, a missing field or one of the wrong
            type (the message says which).
    """
    if not isinstance(record, dict):
        raise ValueError(f"a change must be a JSON object, got {type(record).__name__}")
    kind = record.get("kind")
    if kind == AppendMessages.kind:
        interrupted = record.get("interrupted", False)
        if not isinstance(interrupted, bool):
            raise ValueError("the 'interrupted' of an 'append_messages' change must be a boolean")
        return AppendMessages(_dicts(record, kind, "messages"), interrupted)
    if kind == ReplaceMessages.kind:
        return ReplaceMessages(_dicts(record, kind, "messages"))
    if kind == SetTools.kind:
        tools = _field(record, kind, "tools", list, type(None))
        return SetTools(None if tools is None else _dicts(record, kind, "tools"))
    if kind == SetToolChoice.kind:
        return SetToolChoice(_field(record, kind, "tool_choice"))
    if kind == RecordToolCalls.kind:
        calls: list[tuple[str, str, str]] = []
        for i, call in enumerate(_dicts(record, kind, "calls")):
            cid, name, arguments = (call.get(k) for k in ("id", "name", "arguments"))
            if not (isinstance(cid, str) and isinstance(name, str) and isinstance(arguments, str)):
                raise ValueError(
                    f"call {i} of a 'record_tool_calls' change needs string 'id', 'name' "
                    "and 'arguments'"
                )
            calls.append((cid, name, arguments))
        return RecordToolCalls(calls, _field(record, kind, "content", str, type(None)))
    if kind == SettleToolCall.kind:
        return SettleToolCall(
            _field(record, kind, "tool_call_id", str), _field(record, kind, "content", str)
        )
    if kind == MarkInterrupted.kind:
        return MarkInterrupted(_field(record, kind, "index", int))
    known = ", ".join(k.kind for k in _KINDS)
    raise ValueError(f"unknown change kind {kind!r} (known: {known})")


def changes_from_snapshot(snapshot: ContextSnapshot) -> tuple[Change, ...]:
    """The changes that rebuild ``snapshot`` from an empty conversation: its messages, tools,
    tool choice and interrupted answers. Append them (at version 0) to store a conversation
    that exists only in memory, or one kept by ``SQLiteContextStorage``."""
    changes: list[Change] = [ReplaceMessages(snapshot.messages)]
    if snapshot.tools:
        changes.append(SetTools(snapshot.tools))
    if snapshot.tool_choice is not None:
        changes.append(SetToolChoice(snapshot.tool_choice))
    changes.extend(MarkInterrupted(i) for i in sorted(snapshot.interrupted))
    return tuple(changes)


def message_count_effect(changes: Iterable[Change]) -> tuple[bool, int]:
    """What ``changes`` do to the number of messages: ``(reset, n)`` -- with ``reset`` the
    count becomes ``n``, else it grows by ``n``. Backends keep the count without folding."""
    reset, count = False, 0
    for change in changes:
        if isinstance(change, ReplaceMessages):
            reset, count = True, len(change.messages)
        elif isinstance(change, AppendMessages):
            count += len(change.messages)
        elif isinstance(change, RecordToolCalls):
            count += 1 + len(change.calls)
    return reset, count


def check_changes(changes: object) -> tuple[Change, ...]:
    """``changes`` as a tuple if it is a non-empty sequence of valid change records (what can
    be checked without the conversation: messages, tools, tool choice, indices).

    Raises:
        ValueError: Empty, not change records, or one that is not valid (the message says
            which).
    """
    if isinstance(changes, Mapping | str | bytes) or not isinstance(changes, Sequence):
        raise ValueError(f"changes must be a sequence of change records, got {changes!r:.80}")
    out = tuple(changes)
    if not out:
        raise ValueError("an append needs at least one change")
    for i, change in enumerate(out):
        if not isinstance(change, _KINDS):
            raise ValueError(f"change {i} is not a change record: {type(change).__name__}")
        try:
            _check_one(change)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"change {i} ({change.kind}) is not valid: {exc}") from None
    return out


def _check_one(change: Change) -> None:
    if isinstance(change, AppendMessages | ReplaceMessages):
        check_messages(change.messages)
    elif isinstance(change, SetTools):
        OpenAILLMContext(tools=list(change.tools) if change.tools else None)
    elif isinstance(change, SetToolChoice):
        OpenAILLMContext(tool_choice=change.tool_choice)
    elif isinstance(change, MarkInterrupted):
        if isinstance(change.index, bool) or not isinstance(change.index, int) or change.index < 0:
            raise ValueError(f"index must be an integer >= 0, got {change.index!r}")
    elif isinstance(change, SettleToolCall):
        if not isinstance(change.tool_call_id, str) or not change.tool_call_id:
            raise ValueError("tool_call_id must be a non-empty string")
        if not isinstance(change.content, str):
            raise ValueError("content must be a string")
    elif isinstance(change, RecordToolCalls):
        if not change.calls:
            raise ValueError("a batch of tool calls needs at least one call")
        if change.content is not None and not isinstance(change.content, str):
            raise ValueError("content must be a string or None")
