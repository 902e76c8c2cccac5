"""A context's snapshots: read-only, sharing each message's copy, never seeing later changes."""

from __future__ import annotations

import copy
import json
import pickle

import pytest

from actors import ContextSnapshot, OpenAILLMContext, OpenAILLMContextFrame
from runtime.serialization import dumps, loads


def _context() -> OpenAILLMContext:
    return OpenAILLMContext(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        ],
        tools=[
            {
                "type": "function",
                "function": {
                    "name": "f",
                    "description": "d",
                    "parameters": {"type": "object", "properties": {}, "required": []},
                },
            }
        ],
    )


def test_a_snapshots_messages_and_tools_refuse_every_change() -> None:
    snap = _context().snapshot()
    message, parts, tool = snap.messages[1], snap.messages[1]["content"], snap.tools[0]  # type: ignore[index]
    for change in (
        lambda: message.__setitem__("content", "x"),
        lambda: message.update(content="x"),
        lambda: message.pop("role"),
        lambda: message.setdefault("name", "x"),
        lambda: message.clear(),
        lambda: parts.append({"type": "text", "text": "x"}),
        lambda: parts[0].__setitem__("text", "x"),
        lambda: parts.sort(),
        lambda: tool["function"].__setitem__("name", "g"),
    ):
        with pytest.raises(TypeError, match="read-only"):
            change()
    assert snap == _context().snapshot()


def test_they_read_as_plain_json_and_copy_to_changeable_values() -> None:
    snap = _context().snapshot()
    assert snap.messages[1] == {"role": "user", "content": [{"type": "text", "text": "hi"}]}
    assert isinstance(snap.messages[1], dict)
    assert isinstance(snap.messages[1]["content"], list)
    assert json.loads(json.dumps(snap.messages[1])) == snap.messages[1]
    mine = snap.get_messages()
    mine[1]["content"].append({"type": "text", "text": "more"})
    for changeable in (
        copy.deepcopy(snap.messages[1]),
        pickle.loads(pickle.dumps(snap.messages[1])),
    ):
        changeable["content"].append("x")
        assert type(changeable) is dict
    assert snap.messages[1]["content"] == [{"type": "text", "text": "hi"}]


def test_snapshots_share_each_message_and_keep_the_state_they_were_taken_in() -> None:
    context = _context()
    first = context.snapshot()
    context.add_message({"role": "assistant", "content": "hello"})
    second = context.snapshot()
    # The messages both have are the same objects (copied once), the tools too.
    assert all(a is b for a, b in zip(first.messages, second.messages, strict=False))
    assert first.tools is not None
    assert second.tools is not None
    assert first.tools[0] is second.tools[0]
    assert len(first) == 2
    assert len(second) == 3
    # A message changed in place (a tool result) is copied again; older snapshots keep theirs.
    context.add_tool_calls([("c1", "f", "{}")])
    before = context.snapshot()
    assert context.set_tool_result("c1", '{"ok": true}')
    after = context.snapshot()
    assert before.messages[-1]["content"] == "IN_PROGRESS"
    assert after.messages[-1]["content"] == '{"ok": true}'
    assert before.messages[-2] is after.messages[-2]
    # Replacing the messages or the tools starts afresh.
    context.set_messages([{"role": "user", "content": "new"}])
    context.set_tools(None)
    fresh = context.snapshot()
    assert fresh.messages == ({"role": "user", "content": "new"},)
    assert fresh.tools is None
    assert second.messages[2] == {"role": "assistant", "content": "hello"}


def test_a_snapshot_made_from_plain_values_or_read_back_is_read_only_too() -> None:
    made = ContextSnapshot(messages=({"role": "user", "content": "x"},))
    with pytest.raises(TypeError, match="read-only"):
        made.messages[0]["content"] = "y"
    frame = OpenAILLMContextFrame(_context().snapshot())
    back = loads(dumps(frame))
    assert isinstance(back, OpenAILLMContextFrame)
    assert back.context == frame.context
    with pytest.raises(TypeError, match="read-only"):
        back.context.messages[0]["content"] = "y"


def test_a_context_made_from_a_snapshot_is_changeable_and_independent() -> None:
    snap = _context().snapshot()
    again = OpenAILLMContext.from_snapshot(snap)
    again.add_message({"role": "assistant", "content": "ok"})
    again.set_messages([*again.get_messages()[:1]])
    assert len(snap) == 2
