"""The other process of the two-process tests: a session that writes a conversation under a
lease, renewing it, and reports what it committed on stdout, one line per event.

``python -m tests.storage.child_writer MODE STORE CONVERSATION TTL [TURNS]``

- ``kill``: commits ``TURNS`` turns (``committed VERSION TURN``), then records a batch of
  tool calls and reports ``in-flight VERSION CALL_ID...``, and waits (for SIGKILL) with its
  lease renewed.
- ``pause``: commits one turn, reports ``ready VERSION``, and waits for a line on stdin
  while renewing its lease (the parent stops it with SIGSTOP meanwhile); then writes once:
  ``written VERSION`` (exit 0), ``lease-lost`` (exit 3) or ``error ...`` (exit 4).

STORE is an SQLite path or a ``redis://`` URL; Redis keys use the prefix ``TROUPER_PREFIX``.
"""

from __future__ import annotations

import os
import sys

import trio

from actors.storage import (
    AppendMessages,
    ConversationStorage,
    Lease,
    LeaseLostError,
    RecordToolCalls,
    RedisConversationStorage,
    SQLiteConversationStorage,
    StorageError,
    keep_lease,
)


def say(*words: object) -> None:
    """One line on stdout, flushed."""
    print(*words, flush=True)


def _storage(store: str) -> ConversationStorage:
    if store.startswith("redis://"):
        return RedisConversationStorage(store, prefix=os.environ.get("TROUPER_PREFIX", ""))
    return SQLiteConversationStorage(store)


async def _renew(storage: ConversationStorage, lease: Lease) -> None:
    try:
        await keep_lease(storage, lease, every=lease.ttl / 4)
    except LeaseLostError:
        say("renewal-lost")


async def _kill_mode(storage: ConversationStorage, cid: str, lease: Lease, turns: int) -> None:
    version = 0
    for i in range(turns):
        version = await storage.append(
            cid,
            [AppendMessages([{"role": "user", "content": f"turn {i}"}])],
            expected_version=version,
            lease=lease,
        )
        version = await storage.append(
            cid,
            [AppendMessages([{"role": "assistant", "content": f"answer {i}"}])],
            expected_version=version,
            lease=lease,
        )
        say("committed", version, i)
    ids = [f"call-{os.getpid()}-a", f"call-{os.getpid()}-b"]
    version = await storage.append(
        cid,
        [
            AppendMessages([{"role": "user", "content": "use the tools"}]),
            RecordToolCalls([(c, "lookup", "{}") for c in ids], content=None),
        ],
        expected_version=version,
        lease=lease,
    )
    say("in-flight", version, *ids)
    await trio.sleep_forever()


async def _pause_mode(storage: ConversationStorage, cid: str, lease: Lease) -> int:
    version = await storage.append(
        cid,
        [AppendMessages([{"role": "user", "content": "before the pause"}])],
        expected_version=0,
        lease=lease,
    )
    say("ready", version)
    await trio.to_thread.run_sync(sys.stdin.readline)
    try:
        version = await storage.append(
            cid,
            [AppendMessages([{"role": "user", "content": "after the pause"}])],
            expected_version=version,
            lease=lease,
        )
    except LeaseLostError as exc:
        say("lease-lost", exc)
        return 3
    except StorageError as exc:
        say("error", type(exc).__name__, exc)
        return 4
    say("written", version)
    return 0


async def main(argv: list[str]) -> int:
    """Run one mode; the exit status."""
    mode, store, cid, ttl = argv[0], argv[1], argv[2], float(argv[3])
    turns = int(argv[4]) if len(argv) > 4 else 3
    async with _storage(store) as storage:
        lease = await storage.acquire_lease(cid, f"child-{os.getpid()}", ttl)
        say("leased", lease.token)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_renew, storage, lease)
            if mode == "kill":
                await _kill_mode(storage, cid, lease, turns)
            status = await _pause_mode(storage, cid, lease)
            nursery.cancel_scope.cancel()
    return status


if __name__ == "__main__":
    sys.exit(trio.run(main, sys.argv[1:]))
