"""The proof of #13 on real OS processes: conversations served by worker processes on a real
redis-server, driven from the test process, with the scripted OpenAI server as the model.

- 3 workers, 100 conversations of 3 turns; one worker is SIGKILLed mid-turn: every
  conversation goes on on the others, no output frame is duplicated or reordered at the
  subscriber, no committed turn is lost.
- A client interrupts a conversation that runs in another process: no text of the
  interrupted answer reaches the subscriber after the acknowledgement.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path

import trio

from actors import LLMFullResponseEndFrame, LLMTextFrame
from actors.cluster import ConversationClient
from actors.storage import RedisConversationStorage
from actors.storage.testing import RedisServer
from actors.testing import ScriptedOpenAIServer
from runtime import AsyncioBridge, Frame
from runtime.cluster import Placement, RemoteInterruptedFrame

from .cluster_kit import new_prefix, read_answer
from .conversation_app import SYSTEM, answer_pieces, answer_text, responder
from .process_kit import owned, worker_processes

CONVERSATIONS = 100
TURNS = 3


async def committed(storage: RedisConversationStorage, cid: str, line: str) -> bool:
    """Whether the answer to ``line`` is the last thing stored in the conversation, once
    nobody holds it any more (a dead owner's storage lease has expired: nothing more can
    be committed for it)."""
    for _ in range(300):
        info = await storage.info(cid)
        if info is None or info.lease_owner is None:
            break
        await trio.sleep(0.1)
    else:
        raise AssertionError(f"the lease on {cid} was never released")
    stored = await storage.load(cid)
    if stored is None:
        return False
    tail = [(m["role"], m.get("content")) for m in stored.snapshot.messages[-2:]]
    return tail == [("user", line), ("assistant", answer_text(line))]


async def placements(client: ConversationClient, cids: list[str]) -> dict[str, set[str]]:
    """The conversations of ``cids`` by the worker they are placed on (one round trip)."""
    conn = client.cluster.connection
    owners = await conn.client.mget([conn.keys.owner(cid) for cid in cids])
    placed: dict[str, set[str]] = defaultdict(set)
    for cid, owner in zip(cids, owners, strict=True):
        if owner is not None:
            placed[Placement.parse(owner).worker].add(cid)
    return placed


async def test_a_worker_killed_mid_turn_loses_no_committed_turn(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    prefix, storage_prefix = new_prefix(), new_prefix()
    cids = [f"c{index:03d}" for index in range(CONVERSATIONS)]
    attempts: dict[str, list[tuple[int, list[str], str]]] = defaultdict(list)

    async def drive(client: ConversationClient, cid: str) -> None:
        async with client.open(cid) as conversation:
            for turn in range(TURNS):
                line = f"{cid} turn {turn}"
                expected = answer_pieces(line)
                while True:
                    await conversation.send_text(line)
                    texts, outcome = await read_answer(conversation)
                    attempts[cid].append((turn, texts, outcome))
                    # Each piece once, in order: what arrived is the start of the answer.
                    assert texts == expected[: len(texts)], (cid, turn, texts)
                    if outcome == "done":
                        assert texts == expected
                        break
                    # The owner died (``lost``), or, on a starved machine, lost the
                    # conversation's storage lease. The answer may have been committed just
                    # before: as an application would, look at the storage before sending
                    # the line again.
                    assert outcome == "lost" or outcome.startswith("storage: "), (
                        cid,
                        turn,
                        outcome,
                    )
                    if await committed(storage, cid, line):
                        break

    async with (
        ScriptedOpenAIServer(responder=responder) as server,
        worker_processes(
            3,
            redis_url=redis_server.url,
            prefix=prefix,
            storage_prefix=storage_prefix,
            base_url=server.base_url,
            logs=tmp_path,
            lease_ttl=5.0,  # the machine may be loaded: a heartbeat late by 3 s is no death
        ) as workers,
        ConversationClient(redis_server.url, prefix=prefix, check_secs=0.3) as client,
        RedisConversationStorage(redis_server.url, prefix=storage_prefix) as storage,
    ):
        async with trio.open_nursery() as nursery:
            for cid in cids:
                nursery.start_soon(drive, client, cid)
            # Mid-turn: every conversation has asked for its first answer, half of them
            # for their second.
            await server.wait_requests(CONVERSATIONS + CONVERSATIONS // 2)
            requests_at_kill = len(server.requests)
            placed = await placements(client, cids)
            victim_id = max(placed, key=lambda w: len(placed[w]))
            victim = next(w for w in workers if w.worker_id == victim_id)
            victim.kill()
            killed_at = trio.current_time()
            victims = placed[victim_id]
        survivors = await owned(client.cluster)
        assert victim_id not in survivors, (
            trio.current_time() - killed_at,
            requests_at_kill,
            victim.process.returncode,
            {cid: attempts[cid] for cid in victims},
            victim.log_tail(),
        )
        assert len(survivors) == 2

    lost = {cid for cid, tries in attempts.items() if any(o == "lost" for _, _, o in tries)}
    assert lost  # the kill hit answers in flight ...
    assert lost <= victims  # ... of the killed worker's conversations only
    assert len(attempts) == CONVERSATIONS
    # No committed turn lost: each conversation holds its three turns, in order, whole; a
    # turn cut by the kill left at most its user line behind.
    async with RedisConversationStorage(redis_server.url, prefix=storage_prefix) as storage:
        for index in range(CONVERSATIONS):
            cid = f"c{index:03d}"
            stored = await storage.load(cid)
            assert stored is not None, cid
            messages = [(m["role"], m.get("content")) for m in stored.snapshot.messages]
            assert messages[0] == ("system", SYSTEM)
            answered = [
                (messages[i], messages[i + 1])
                for i in range(1, len(messages) - 1)
                if messages[i][0] == "user" and messages[i + 1][0] == "assistant"
            ]
            assert answered == [
                (
                    ("user", f"{cid} turn {t}"),
                    ("assistant", answer_text(f"{cid} turn {t}")),
                )
                for t in range(TURNS)
            ], (cid, messages, attempts[cid])
            assert all(role in ("user", "assistant") for role, _ in messages[1:])


async def test_an_interrupt_from_another_client_leaves_no_stale_text(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    prefix, storage_prefix = new_prefix(), new_prefix()
    async with (
        ScriptedOpenAIServer(responder=responder) as server,
        worker_processes(
            1,
            redis_url=redis_server.url,
            prefix=prefix,
            storage_prefix=storage_prefix,
            base_url=server.base_url,
            logs=tmp_path,
        ),
        ConversationClient(redis_server.url, prefix=prefix) as reader,
        ConversationClient(redis_server.url, prefix=prefix) as other,
        reader.open("talk") as conversation,
        other.open("talk") as remote,
    ):
        await conversation.send_text("long story")
        frames: list[Frame] = []
        with trio.fail_after(30):
            async for frame in conversation:
                frames.append(frame)
                if sum(isinstance(f, LLMTextFrame) for f in frames) == 5:
                    break
        assert await remote.interrupt() is True
        await conversation.send_text("short")
        with trio.fail_after(30):
            async for frame in conversation:
                frames.append(frame)
                if isinstance(frame, LLMFullResponseEndFrame) and not frame.interrupted:
                    break
    acks = [i for i, f in enumerate(frames) if isinstance(f, RemoteInterruptedFrame)]
    assert len(acks) == 1
    before = [f.text for f in frames[: acks[0]] if isinstance(f, LLMTextFrame)]
    after = [f.text for f in frames[acks[0] :] if isinstance(f, LLMTextFrame)]
    assert before == answer_pieces("long story")[: len(before)]
    assert len(before) < 50  # the long answer was cut short
    assert after == answer_pieces("short")  # 0 stale text frames after the acknowledgement
    async with RedisConversationStorage(redis_server.url, prefix=storage_prefix) as storage:
        stored = await storage.load("talk")
    assert stored is not None
    messages = stored.snapshot.messages
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    # What the answer had produced when it was interrupted, marked as interrupted (the
    # subscriber may have got less of it: what was not yet written went with the turn).
    assert messages[2]["content"].startswith("".join(before).strip())
    assert "".join(answer_pieces("long story")).startswith(messages[2]["content"])
    assert stored.snapshot.interrupted == frozenset({2})
    assert messages[4]["content"] == answer_text("short")


def test_a_conversation_from_asyncio_through_the_bridge(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """An asyncio application talks to a conversation running in a worker process."""
    prefix, storage_prefix = new_prefix(), new_prefix()

    async def converse(base_url: str) -> list[str]:
        async with (
            worker_processes(
                1,
                redis_url=redis_server.url,
                prefix=prefix,
                storage_prefix=storage_prefix,
                base_url=base_url,
                logs=tmp_path,
            ),
            ConversationClient(redis_server.url, prefix=prefix) as client,
            client.open("from-asyncio") as conversation,
        ):
            await conversation.send_text("hello")
            texts, outcome = await read_answer(conversation)
            assert outcome == "done"
            return texts

    async def serve_and_converse() -> list[str]:
        async with ScriptedOpenAIServer(responder=responder) as server:
            return await converse(server.base_url)

    async def app() -> list[str]:
        async with AsyncioBridge() as trio_side:
            return await trio_side.run(serve_and_converse)

    assert asyncio.run(app()) == answer_pieces("hello")
