"""Change records, their JSON form, the fold and the recovery changes, without a backend."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import pytest
import trio

import actors.storage as storage_api
from actors import ContextSnapshot, OpenAILLMContext
from actors.storage import (
    INTERRUPTED_TOOL_RESULT,
    AppendMessages,
    Change,
    ConversationCorruptError,
    ConversationStorage,
    LeaseLostError,
    MarkInterrupted,
    RecordToolCalls,
    RedisConversationStorage,
    ReplaceMessages,
    SettleToolCall,
    SetToolChoice,
    SetTools,
    SQLiteConversationStorage,
    change_from_json,
    change_to_json,
    fold,
    keep_lease,
    open_tool_calls,
    recovery_changes,
)

from .storage_kit import assert_api_valid, assistant, calls, user

EVERY_KIND: list[Change] = [
    AppendMessages([user("hi")], interrupted=True),
    ReplaceMessages([user("a"), assistant("b")]),
    SetTools([{"type": "function", "function": {"name": "f", "parameters": {}}}]),
    SetTools(None),
    SetToolChoice("auto"),
    SetToolChoice(None),
    RecordToolCalls([("c1", "f", "{}")], content="let me see"),
    SettleToolCall("c1", "done"),
    MarkInterrupted(3),
]


@pytest.mark.parametrize("change", EVERY_KIND, ids=lambda c: type(c).__name__)
def test_every_change_round_trips_through_json(change: Change) -> None:
    assert change_from_json(change_to_json(change)) == change


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ("text", "must be a JSON object"),
        ({"kind": "nope"}, "unknown change kind 'nope'"),
        ({"kind": "append_messages"}, "has no 'messages'"),
        ({"kind": "append_messages", "messages": [1]}, "item 0 of the 'messages'"),
        ({"kind": "append_messages", "messages": [], "interrupted": 1}, "must be a boolean"),
        ({"kind": "set_tools", "tools": "all"}, "must be list or null"),
        ({"kind": "record_tool_calls", "calls": [{"id": 1}], "content": None}, "string 'id'"),
        ({"kind": "settle_tool_call", "tool_call_id": "x"}, "has no 'content'"),
        ({"kind": "mark_interrupted", "index": True}, "must be int"),
    ],
)
def test_malformed_records_name_the_problem(record: Any, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        change_from_json(record)


def test_the_fold_matches_the_context() -> None:
    context = OpenAILLMContext(messages=[user("q")])
    context.add_tool_calls([("c1", "f", "{}"), ("c2", "g", "[]")])
    context.set_tool_result("c2", "two")
    context.add_message(assistant("partial"), interrupted=True)
    changes: list[Change] = [
        AppendMessages([user("q")]),
        RecordToolCalls([("c1", "f", "{}"), ("c2", "g", "[]")]),
        SettleToolCall("c2", "two"),
        AppendMessages([assistant("partial")], interrupted=True),
    ]
    assert fold(None, changes) == context.snapshot()


def test_the_fold_never_changes_its_inputs() -> None:
    base = ContextSnapshot(
        messages=({"role": "tool", "tool_call_id": "c", "content": "IN_PROGRESS"},)
    )
    message = {"role": "user", "content": "x"}
    change = AppendMessages([message])
    folded = fold(base, [SettleToolCall("c", "ok"), change])
    assert base.messages[0]["content"] == "IN_PROGRESS"
    assert folded.messages[0]["content"] == "ok"
    with pytest.raises(TypeError, match="read-only"):
        folded.messages[1]["content"] = "changed"  # a snapshot's messages are read-only
    folded.get_messages()[1]["content"] = "changed"  # its copies are the caller's
    assert change.messages[0]["content"] == "x"
    assert message["content"] == "x"


def test_a_change_that_does_not_apply_is_corrupt() -> None:
    with pytest.raises(ConversationCorruptError, match="settles tool call 'zz'"):
        fold(None, [SettleToolCall("zz", "x")], conversation_id="c")


def test_recovery_settles_every_open_call_and_marks_each_answer_once() -> None:
    context = OpenAILLMContext(messages=[user("q")])
    context.add_tool_calls([("a", "f", "{}"), ("b", "f", "{}")])
    context.set_tool_result("a", "fine")
    context.add_message(user("more"))
    context.add_tool_calls([("c", "f", "{}")])
    snapshot = context.snapshot()
    assert open_tool_calls(snapshot) == {1: ["b"], 5: ["c"]}
    changes = recovery_changes(snapshot)
    assert changes == (
        SettleToolCall("b", INTERRUPTED_TOOL_RESULT),
        MarkInterrupted(1),
        SettleToolCall("c", INTERRUPTED_TOOL_RESULT),
        MarkInterrupted(5),
    )
    recovered = fold(snapshot, changes)
    assert_api_valid(recovered)
    assert recovery_changes(recovered) == ()


def test_both_backends_satisfy_the_protocol(tmp_path: Path) -> None:
    assert isinstance(SQLiteConversationStorage(tmp_path / "x.db"), ConversationStorage)
    assert isinstance(RedisConversationStorage(), ConversationStorage)


def test_public_names_are_documented() -> None:
    for name in storage_api.__all__:
        value = getattr(storage_api, name)
        if isinstance(value, type) or inspect.isfunction(value):
            assert inspect.getdoc(value), f"{name} has no docstring"


async def test_keep_lease_keeps_it_past_its_ttl_and_reports_its_loss(tmp_path: Path) -> None:
    async with SQLiteConversationStorage(tmp_path / "c.db") as storage:
        lease = await storage.acquire_lease("c", "A", 0.2)
        with trio.move_on_after(0.6):
            await keep_lease(storage, lease, every=0.05)
        version = await storage.append("c", [calls("x")], expected_version=0, lease=lease)
        assert version == 1

        async def release_soon() -> None:
            await trio.sleep(0.1)
            await storage.release_lease(lease)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(release_soon)
            with pytest.raises(LeaseLostError), trio.fail_after(2):
                await keep_lease(storage, lease, every=0.05)
