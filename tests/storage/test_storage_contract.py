"""The storage contract, on both backends (SQLite file, real redis-server): round trip,
append-only growth, conflicts, corrupt data, leases and fencing, compaction, crash recovery."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import trio
import trio.lowlevel

from actors import OpenAILLMContext
from actors.storage import (
    INTERRUPTED_TOOL_RESULT,
    AppendMessages,
    Change,
    ConversationConflictError,
    ConversationCorruptError,
    LeaseHeldError,
    LeaseLostError,
    RecordToolCalls,
    ReplaceMessages,
    SettleToolCall,
    SetToolChoice,
    SetTools,
    StorageUnavailableError,
    changes_from_snapshot,
    open_conversation,
)

from .conftest import Backend
from .storage_kit import assert_api_valid, assistant, calls, texts, turn, user

TOOL = {
    "type": "function",
    "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}},
}
TTL = 0.2


# --------------------------------------------------------------------------- round trip


async def test_missing_conversation_loads_as_none(backend: Backend) -> None:
    async with backend.opened() as storage:
        assert await storage.load("nobody") is None
        assert await storage.info("nobody") is None
        assert await storage.delete("nobody") is False
        assert await storage.compact("nobody") is False


async def test_round_trip_matches_the_context_it_mirrors(backend: Backend) -> None:
    """Every change kind, applied to an OpenAILLMContext and appended to the storage: the
    loaded conversation equals the context, in another storage instance too."""
    context = OpenAILLMContext()
    steps: list[Change] = []

    context.set_messages([{"role": "system", "content": "be brief"}])
    steps.append(ReplaceMessages([{"role": "system", "content": "be brief"}]))
    context.set_tools([TOOL])
    steps.append(SetTools(context.tools))
    context.set_tool_choice("auto")
    steps.append(SetToolChoice("auto"))
    context.add_message(user("look it up"))
    steps.append(AppendMessages([user("look it up")]))
    context.add_tool_calls([("c1", "lookup", "{}"), ("c2", "lookup", "{}")], content="hm")
    steps.append(RecordToolCalls([("c1", "lookup", "{}"), ("c2", "lookup", "{}")], "hm"))
    context.set_tool_result("c1", '{"found": true}')
    steps.append(SettleToolCall("c1", '{"found": true}'))
    context.set_tool_result("c2", "CANCELLED")
    steps.append(SettleToolCall("c2", "CANCELLED"))
    context.add_message(assistant("It is th"), interrupted=True)
    steps.append(AppendMessages([assistant("It is th")], interrupted=True))
    context.add_messages([user("again"), assistant("done")])
    steps.append(AppendMessages([user("again"), assistant("done")]))
    context.set_tool_choice("required")
    steps.append(SetToolChoice("required"))

    async with backend.opened() as storage:
        version = 0
        for step in steps[:3]:
            version = await storage.append("c", [step], expected_version=version)
        version = await storage.append("c", steps[3:], expected_version=version)
        assert version == 4
        stored = await storage.load("c")
        assert stored is not None
        assert stored.version == 4
        assert stored.snapshot == context.snapshot()
        assert OpenAILLMContext.from_snapshot(stored.snapshot).is_interrupted(5)
    async with backend.opened() as other:
        again = await other.load("c")
        assert again == stored


async def test_big_content_round_trips(backend: Backend) -> None:
    """A 1 MB message (encoded, decoded and folded off the loop on Redis)."""
    big = "x" * (1 << 20)
    async with backend.opened() as storage:
        await storage.append("big", [AppendMessages([user(big)])], expected_version=0)
        stored = await storage.load("big")
        assert stored is not None
        assert stored.snapshot.messages[0]["content"] == big


async def test_changes_from_snapshot_rebuild_it(backend: Backend) -> None:
    context = OpenAILLMContext(messages=[user("a")], tools=[TOOL], tool_choice="required")
    context.add_message(assistant("b"), interrupted=True)
    snapshot = context.snapshot()
    async with backend.opened() as storage:
        await storage.append("copy", changes_from_snapshot(snapshot), expected_version=0)
        stored = await storage.load("copy")
        assert stored is not None
        assert stored.snapshot == snapshot


async def test_info_list_and_delete(backend: Backend) -> None:
    async with backend.opened() as storage:
        await storage.append("first", turn(1), expected_version=0)
        await trio.sleep(0.01)
        version = await storage.append("second", turn(1), expected_version=0)
        await storage.append("second", turn(2), expected_version=version)
        info = await storage.info("second")
        assert info is not None
        assert (info.version, info.message_count, info.log_entries) == (2, 4, 2)
        assert info.stored_bytes > 0
        assert info.updated_at >= info.created_at
        assert info.lease_owner is None
        listed = await storage.list_conversations()
        assert [i.conversation_id for i in listed] == ["second", "first"]
        assert listed[0] == info
        lease = await storage.acquire_lease("first", "owner-1", 5)
        info = await storage.info("first")
        assert info is not None
        assert info.lease_owner == "owner-1"
        assert info.lease_expires_in is not None
        assert 0 < info.lease_expires_in <= 5
        assert await storage.delete("first", lease=lease) is True
        assert await storage.load("first") is None
        assert [i.conversation_id for i in await storage.list_conversations()] == ["second"]


async def test_replace_resets_the_message_count(backend: Backend) -> None:
    async with backend.opened() as storage:
        version = await storage.append("c", turn(1), expected_version=0)
        version = await storage.append("c", [calls("a", "b")], expected_version=version)
        info = await storage.info("c")
        assert info is not None
        assert info.message_count == 5
        await storage.append("c", [ReplaceMessages([user("only")])], expected_version=version)
        info = await storage.info("c")
        assert info is not None
        assert info.message_count == 1


@pytest.mark.parametrize("bad", ["", "   ", 7, None, "a\nb", "x" * 513])
async def test_bad_ids_are_refused(backend: Backend, bad: Any) -> None:
    async with backend.opened() as storage:
        with pytest.raises(ValueError, match="conversation id"):
            await storage.load(bad)
        with pytest.raises(ValueError, match="conversation id"):
            await storage.append(bad, turn(1), expected_version=0)
        with pytest.raises(ValueError, match="conversation id"):
            await storage.acquire_lease(bad, "me", 1)


async def test_bad_appends_are_refused_and_write_nothing(backend: Backend) -> None:
    async with backend.opened() as storage:
        with pytest.raises(ValueError, match="at least one change"):
            await storage.append("c", [], expected_version=0)
        with pytest.raises(ValueError, match="role"):
            await storage.append("c", [AppendMessages([{"role": "bot"}])], expected_version=0)
        not_json = {"role": "user", "content": {1, 2}}
        with pytest.raises(ValueError, match="JSON"):
            await storage.append("c", [AppendMessages([not_json])], expected_version=0)
        with pytest.raises(ValueError, match="expected_version"):
            await storage.append("c", turn(1), expected_version=-1)
        with pytest.raises(ValueError, match="lease"):
            await storage.append("c", turn(1), expected_version=0, lease="mine")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="ttl"):
            await storage.acquire_lease("c", "me", 0)
        assert await storage.load("c") is None


async def test_closed_and_unopened_storages_refuse_calls(backend: Backend) -> None:
    storage = backend.storage()
    with pytest.raises(StorageUnavailableError, match="not open"):
        await storage.load("c")
    async with storage:
        await storage.append("c", turn(1), expected_version=0)
    with pytest.raises(StorageUnavailableError, match="closed"):
        await storage.load("c")
    with pytest.raises(StorageUnavailableError, match="closed"):
        await storage.append("c", turn(2), expected_version=1)
    with pytest.raises(StorageUnavailableError, match="opened already"):  # opened once only
        async with storage:
            pass


# --------------------------------------------------------------------------- versions


async def test_a_stale_version_conflicts_and_writes_nothing(backend: Backend) -> None:
    async with backend.opened() as first, backend.opened() as second:
        version = await first.append("c", turn(1), expected_version=0)
        seen = await second.load("c")
        assert seen is not None
        await first.append("c", turn(2), expected_version=version)
        with pytest.raises(ConversationConflictError) as caught:
            await second.append("c", turn(99), expected_version=seen.version)
        assert (caught.value.conversation_id, caught.value.expected_version) == ("c", 1)
        assert caught.value.actual_version == 2
        with pytest.raises(ConversationConflictError, match="stored version is 2"):
            await second.append("c", turn(99), expected_version=0)
        stored = await first.load("c")
        assert stored is not None
        assert stored.version == 2
        assert "turn 99" not in texts(stored.snapshot)


async def test_concurrent_writers_never_overwrite_each_other(backend: Backend) -> None:
    """20 tasks on two storage instances race to append at the version they read; each
    append either lands or conflicts, and every one that landed is in the log."""
    landed: list[int] = []

    async def writer(storage: Any, i: int) -> None:
        while True:
            stored = await storage.load("race")
            version = 0 if stored is None else stored.version
            try:
                await storage.append(
                    "race", [AppendMessages([user(f"w{i}")])], expected_version=version
                )
            except ConversationConflictError:
                continue
            landed.append(i)
            return

    async with backend.opened() as first, backend.opened() as second:
        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(writer, first if i % 2 else second, i)
        stored = await first.load("race")
        assert stored is not None
        assert stored.version == 20
        assert sorted(texts(stored.snapshot)) == sorted(f"w{i}" for i in range(20))
        assert sorted(landed) == list(range(20))


async def test_appends_only_add_a_log_entry(backend: Backend) -> None:
    """Earlier entries stay byte for byte; each append adds exactly one."""
    async with backend.opened() as storage:
        version = await storage.append("c", turn(1), expected_version=0)
        first = await backend.entries("c")
        await storage.append("c", turn(2), expected_version=version)
        second = await backend.entries("c")
        assert len(first) == 1
        assert len(second) == 2
        assert second[0] == first[0]
        assert orjson.loads(second[1])["changes"][0]["messages"][0]["content"] == "turn 2"


async def test_a_write_costs_the_change_not_the_conversation(backend: Backend) -> None:
    """With 1 MB already in the conversation, a small append writes a few hundred bytes,
    about as much as on an empty conversation (compaction, which rewrites the snapshot,
    is kept out of the measure)."""
    async with backend.opened(compact_min_bytes=1 << 30) as storage:
        await storage.append("warm-up", turn(1), expected_version=0)  # loads Redis scripts
        small = await backend.bytes_written_by(
            lambda: storage.append("small", turn(1), expected_version=0)
        )
        version = await storage.append(
            "big", [AppendMessages([user("y" * (1 << 20))])], expected_version=0
        )
        version = await storage.append("big", turn(1), expected_version=version)
        after_big = await backend.bytes_written_by(
            lambda: storage.append("big", turn(2), expected_version=version)
        )
    assert after_big < 2048, after_big
    assert small < 2048, small
    assert abs(after_big - small) < 512, (small, after_big)


# --------------------------------------------------------------------------- corrupt data

GOOD_ENTRY = orjson.dumps({"at": 1.0, "changes": [{"kind": "append_messages", "messages": []}]})


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        (b"{not json", "change log entry 2 is not JSON"),
        (b"[1, 2]", "change log entry 2 is not an object with a 'changes' list"),
        (
            orjson.dumps({"changes": [{"kind": "teleport"}]}),
            "change log entry 2: unknown change kind 'teleport'",
        ),
        (
            orjson.dumps({"changes": [{"kind": "append_messages", "messages": "hi"}]}),
            "the 'messages' of a 'append_messages' change must be list",
        ),
        (
            orjson.dumps(
                {"changes": [{"kind": "append_messages", "messages": [{"role": "robot"}]}]}
            ),
            "change log entry 2: message 0 has role 'robot'",
        ),
        (
            orjson.dumps(
                {"changes": [{"kind": "settle_tool_call", "tool_call_id": "x", "content": "1"}]}
            ),
            "change log entry 2: it settles tool call 'x', which has no tool message",
        ),
        (
            orjson.dumps({"changes": [{"kind": "mark_interrupted", "index": 40}]}),
            "change log entry 2: it marks message 40 as interrupted, but there are 2 messages",
        ),
    ],
)
async def test_a_corrupt_entry_is_a_typed_error_naming_the_conversation(
    backend: Backend, entry: bytes, problem: str
) -> None:
    async with backend.opened() as storage:
        version = await storage.append("damaged", turn(1), expected_version=0)
        await storage.append("damaged", turn(2), expected_version=version)
        await backend.set_entry("damaged", 2, entry)
        with pytest.raises(ConversationCorruptError) as caught:
            await storage.load("damaged")
        assert caught.value.conversation_id == "damaged"
        assert problem in str(caught.value)
        assert "'damaged'" in str(caught.value)
        # Other conversations stay readable.
        await storage.append("fine", turn(1), expected_version=0)
        assert await storage.load("fine") is not None


async def test_a_head_of_the_wrong_shape_is_a_typed_error(backend: Backend) -> None:
    async with backend.opened() as storage:
        await storage.append("odd", turn(1), expected_version=0)
        await backend.set_head_version("odd", "seven")
        with pytest.raises(ConversationCorruptError, match=r"'odd'.*version.*seven"):
            await storage.load("odd")
        with pytest.raises(ConversationCorruptError, match="'odd'"):
            await storage.append("odd", turn(2), expected_version=1)
        with pytest.raises(ConversationCorruptError, match="'odd'"):
            await storage.info("odd")


# --------------------------------------------------------------------------- leases


async def test_a_live_lease_is_exclusive_and_tokens_increase(backend: Backend) -> None:
    async with backend.opened() as storage:
        first = await storage.acquire_lease("c", "A", 5)
        with pytest.raises(LeaseHeldError) as caught:
            await storage.acquire_lease("c", "B", 5)
        assert caught.value.holder == "A"
        assert 0 < caught.value.expires_in <= 5
        with pytest.raises(LeaseHeldError):
            await storage.acquire_lease("c", "A", 5)
        assert await storage.release_lease(first) is True
        assert await storage.release_lease(first) is False
        second = await storage.acquire_lease("c", "B", 5)
        assert second.token > first.token
        await storage.append("c", turn(1), expected_version=0, lease=second)
        await storage.delete("c", lease=second)
        await storage.release_lease(second)
        third = await storage.acquire_lease("c", "C", 5)
        assert third.token > second.token


async def test_with_a_live_lease_every_write_must_carry_it(backend: Backend) -> None:
    async with backend.opened() as storage:
        version = await storage.append("c", turn(1), expected_version=0)
        lease = await storage.acquire_lease("c", "A", 5)
        with pytest.raises(LeaseHeldError, match="'A'"):
            await storage.append("c", turn(2), expected_version=version)
        with pytest.raises(LeaseHeldError):
            await storage.delete("c")
        version = await storage.append("c", turn(2), expected_version=version, lease=lease)
        await storage.release_lease(lease)
        await storage.append("c", turn(3), expected_version=version)
        stored = await storage.load("c")
        assert stored is not None
        assert stored.version == 3


async def test_a_lease_lives_while_renewed_and_expires_after(backend: Backend) -> None:
    async with backend.opened() as storage:
        lease = await storage.acquire_lease("c", "A", TTL)
        version = 0
        for _ in range(5):  # 0.5 s, more than twice the ttl
            await trio.sleep(TTL / 2)
            lease = await storage.renew_lease(lease)
            version = await storage.append(
                "c", turn(version), expected_version=version, lease=lease
            )
        await trio.sleep(TTL * 1.5)
        with pytest.raises(LeaseLostError, match="expired"):
            await storage.append("c", turn(9), expected_version=version, lease=lease)
        with pytest.raises(LeaseLostError):
            await storage.renew_lease(lease)
        assert await storage.release_lease(lease) is False
        # Expired: anyone may take it.
        taken = await storage.acquire_lease("c", "B", 5)
        assert taken.token == lease.token + 1


async def test_a_stale_writer_is_fenced_and_the_new_owner_keeps_its_data(
    backend: Backend,
) -> None:
    async with backend.opened() as old_process, backend.opened() as new_process:
        old = await old_process.acquire_lease("c", "A", TTL)
        version = await old_process.append("c", turn(1), expected_version=0, lease=old)
        await trio.sleep(TTL * 1.5)  # A is paused past its ttl
        new = await new_process.acquire_lease("c", "B", 5)
        assert new.token > old.token
        new_version = await new_process.append("c", turn(2), expected_version=version, lease=new)
        # A wakes up and writes, at the version it knows and at the current one.
        for based_on in (version, new_version):
            with pytest.raises(LeaseLostError, match="taken over by 'B'") as caught:
                await old_process.append("c", turn(66), expected_version=based_on, lease=old)
            assert (caught.value.owner, caught.value.token) == ("A", old.token)
        with pytest.raises(LeaseLostError):
            await old_process.delete("c", lease=old)
        with pytest.raises(LeaseLostError):
            await old_process.renew_lease(old)
        assert await old_process.release_lease(old) is False
        stored = await new_process.load("c")
        assert stored is not None
        assert stored.version == new_version == 2
        assert texts(stored.snapshot) == ["turn 1", "answer 1", "turn 2", "answer 2"]
        await new_process.append("c", turn(3), expected_version=new_version, lease=new)


async def test_a_lease_from_another_conversation_is_refused(backend: Backend) -> None:
    async with backend.opened() as storage:
        lease = await storage.acquire_lease("a", "A", 5)
        with pytest.raises(ValueError, match="for conversation 'a', not 'b'"):
            await storage.append("b", turn(1), expected_version=0, lease=lease)


# --------------------------------------------------------------------------- compaction


async def test_compaction_keeps_content_and_versions(backend: Backend) -> None:
    async with backend.opened(compact_after_entries=10_000) as storage:
        version = 0
        for i in range(6):
            version = await storage.append("c", turn(i), expected_version=version)
        before = await storage.load("c")
        assert await storage.compact("c") is True
        assert await storage.compact("c") is False
        after = await storage.load("c")
        assert after == before
        info = await storage.info("c")
        assert info is not None
        assert (info.version, info.log_entries, info.message_count) == (6, 0, 12)
        assert await backend.entries("c") == []
        version = await storage.append("c", turn(6), expected_version=version)
        assert version == 7
        with pytest.raises(ConversationConflictError):
            await storage.append("c", turn(99), expected_version=6)
        final = await storage.load("c")
        assert final is not None
        assert final.version == 7
        assert texts(final.snapshot)[-2:] == ["turn 6", "answer 6"]


async def test_compaction_runs_by_itself_past_the_threshold(backend: Backend) -> None:
    async with backend.opened(compact_after_entries=4) as storage:
        version = 0
        for i in range(9):
            version = await storage.append("c", turn(i), expected_version=version)
        with trio.fail_after(5):
            while True:
                info = await storage.info("c")
                assert info is not None
                if info.log_entries < 4:
                    break
                await trio.sleep(0.01)
        stored = await storage.load("c")
        assert stored is not None
        assert stored.version == 9
        assert texts(stored.snapshot) == [t for i in range(9) for t in (f"turn {i}", f"answer {i}")]
        assert len(await backend.entries("c")) < 4  # (a last compaction may still be running)


# --------------------------------------------------------------------------- crash recovery


async def test_recovery_settles_a_dead_owners_calls_once(backend: Backend) -> None:
    async with backend.opened() as dead, backend.opened() as storage:
        lease = await dead.acquire_lease("c", "dead", TTL)
        version = await dead.append("c", turn(1), expected_version=0, lease=lease)
        version = await dead.append(
            "c",
            [AppendMessages([user("look")]), calls("t1", "t2")],
            expected_version=version,
            lease=lease,
        )
        version = await dead.append(
            "c", [SettleToolCall("t1", "42")], expected_version=version, lease=lease
        )
        # The owner dies here: t2 stays IN_PROGRESS, and its lease runs out.
        with pytest.raises(LeaseHeldError):
            await open_conversation(storage, "c", owner="next", ttl=5)
        await trio.sleep(TTL * 1.5)

        opened = await open_conversation(storage, "c", owner="next", ttl=5)
        assert opened.recovered == ("t2",)
        assert opened.version == version + 1
        assert opened.snapshot is not None
        assert_api_valid(opened.snapshot)
        assert texts(opened.snapshot)[-2:] == ["42", INTERRUPTED_TOOL_RESULT]
        assert opened.snapshot.interrupted == {3}
        stored = await storage.load("c")
        assert stored is not None
        assert stored.snapshot == opened.snapshot
        assert stored.version == opened.version
        await storage.release_lease(opened.lease)

        # Nothing left to settle: no second marker, no new version, however often it opens.
        for owner in ("third", "fourth"):
            again = await open_conversation(storage, "c", owner=owner, ttl=5)
            assert again.recovered == ()
            assert again.version == opened.version
            assert again.snapshot == opened.snapshot
            await storage.release_lease(again.lease)


async def test_recovery_across_repeated_crashes_does_not_pile_up(backend: Backend) -> None:
    async with backend.opened() as storage:
        for crash in range(4):
            opened = await open_conversation(storage, "c", owner=f"run-{crash}", ttl=TTL)
            await storage.append(
                "c",
                [AppendMessages([user(f"q{crash}")]), calls(f"a{crash}", f"b{crash}")],
                expected_version=opened.version,
                lease=opened.lease,
            )
            await trio.sleep(TTL * 1.5)  # crash: never settled, never released
        final = await open_conversation(storage, "c", owner="last", ttl=5)
        assert final.snapshot is not None
        assert_api_valid(final.snapshot)
        contents = texts(final.snapshot)
        assert contents.count("IN_PROGRESS") == 0
        assert contents.count(INTERRUPTED_TOOL_RESULT) == 8
        assert len(final.snapshot.interrupted) == 4
        assert len(final.snapshot.messages) == 4 * 4


async def test_a_new_conversation_opens_empty_with_its_lease(backend: Backend) -> None:
    async with backend.opened() as storage:
        opened = await open_conversation(storage, "fresh", owner="me", ttl=5)
        assert (opened.version, opened.snapshot, opened.recovered) == (0, None, ())
        await storage.append("fresh", turn(1), expected_version=0, lease=opened.lease)
        with pytest.raises(LeaseHeldError):
            await storage.append("fresh", turn(2), expected_version=1)


async def test_closing_inside_the_block_cancels_nothing_of_the_block(backend: Backend) -> None:
    """``aclose()`` inside ``async with storage`` stops the storage (its calls are refused),
    not the code of the block: it used to cancel the nursery the block ran in, which
    silently skipped the rest of the block."""
    reached = False
    try:
        async with backend.storage() as storage:
            await storage.append("c", [AppendMessages([user("hi")])], expected_version=0)
            await storage.aclose()
            await trio.lowlevel.checkpoint()  # a cancelled block would stop here
            with pytest.raises(StorageUnavailableError):
                await storage.load("c")
            reached = True
    except trio.Cancelled:  # it escapes the block, and the test runner would swallow it
        pytest.fail("closing the storage cancelled the code of its block")
    assert reached
