"""Appends made together (SQLite's group commit, Redis' pipeline), idempotent appends, and
the lease keeper shared by every session of a storage.

The Redis tests that lose answers run the storage through a small TCP relay on 127.0.0.1
that forwards everything to the real redis-server, except what a test asks it to hold or
to cut: the connection dropped after the server ran the command, before its answer."""

from __future__ import annotations

import functools
import gc
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import coredis
import pytest
import trio
import trio.testing

from actors import OpenAILLMContext
from actors._storage import ConversationWriter
from actors.storage import (
    AppendMessages,
    ConversationConflictError,
    ConversationCorruptError,
    ConversationStorage,
    Lease,
    LeaseHeldError,
    LeaseLostError,
    RedisConversationStorage,
    SQLiteConversationStorage,
    StorageUnavailableError,
    keep_lease,
)
from actors.storage.testing import RedisServer
from runtime.testing import capture_logs, running_tasks

from .conftest import Backend
from .storage_kit import texts, user


def said(text: str) -> list[AppendMessages]:
    return [AppendMessages([user(text)])]


# --------------------------------------------------------------------------- made together


async def _queued_behind_a_lock(
    path: Any, storage: ConversationStorage, plan: list[tuple[str, int, str]]
) -> dict[int, Any]:
    """Run the appends of ``plan`` queued at one moment, in order; each answer (a version or
    the error). With an SQLite ``path``, they queue behind a lock held by another connection,
    so the storage's thread takes them as one group (Redis pipelines them anyway)."""
    answers: dict[int, Any] = {}
    holder = None
    if path is not None:
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")

    async def append(i: int, cid: str, version: int, text: str) -> None:
        try:
            answers[i] = await storage.append(cid, said(text), expected_version=version)
        except Exception as exc:
            answers[i] = exc

    async with trio.open_nursery() as nursery:
        for i, (cid, version, text) in enumerate(plan):
            nursery.start_soon(append, i, cid, version, text)
            await trio.testing.wait_all_tasks_blocked()  # queued, in this order
        if holder is not None:
            holder.execute("COMMIT")
            holder.close()
    return answers


async def test_appends_made_together_keep_their_order_and_each_get_their_answer(
    backend: Backend,
) -> None:
    """Appends queued at one moment (behind a lock held elsewhere on SQLite, so they are
    committed as one group; one pipeline on Redis): a stale one in the middle fails alone,
    the others are written in the order they were made, and every caller gets its own
    answer."""
    plan: list[tuple[str, int, str]] = [
        ("a", 0, "a1"),
        ("b", 0, "b1"),
        ("b", 5, "stale"),  # conflicts: b is at 0 (then 1)
        ("c", 0, "c1"),
        ("b", 1, "b2"),  # only valid if b1 was written before it
        ("a", 1, "a2"),
    ]
    async with backend.opened() as storage:
        answers = await _queued_behind_a_lock(backend.sqlite_path, storage, plan)
    assert [answers[i] for i in (0, 1, 3, 4, 5)] == [1, 1, 1, 2, 2]
    conflict = answers[2]
    assert isinstance(conflict, ConversationConflictError)
    assert (conflict.expected_version, conflict.actual_version) == (5, 1)
    async with backend.opened() as storage:
        for cid, expected in (("a", ["a1", "a2"]), ("b", ["b1", "b2"]), ("c", ["c1"])):
            stored = await storage.load(cid)
            assert stored is not None
            assert texts(stored.snapshot) == expected


async def test_many_sessions_appending_at_once_are_all_answered(backend: Backend) -> None:
    async with backend.opened() as storage:
        versions: dict[str, int] = {}

        async def session(i: int) -> None:
            cid, version = f"s{i}", 0
            for turn in range(3):
                version = await storage.append(cid, said(f"{i}.{turn}"), expected_version=version)
            versions[cid] = version

        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(session, i)
        assert set(versions.values()) == {3}
        stored = await storage.load("s17")
        assert stored is not None
        assert texts(stored.snapshot) == ["17.0", "17.1", "17.2"]


# --------------------------------------------------------------------------- idempotency


async def test_an_append_retried_with_its_id_is_written_once(backend: Backend) -> None:
    """The retry of an append whose answer was lost: same id, same expected version. It
    finds its own append at the head and returns its version; another writer at the
    same version gets a conflict that names the head's append id."""
    async with backend.opened() as storage:
        first = await storage.append("c", said("once"), expected_version=0, append_id="w-1")
        again = await storage.append("c", said("once"), expected_version=0, append_id="w-1")
        assert first == again == 1
        assert len(await backend.entries("c")) == 1
        with pytest.raises(ConversationConflictError) as caught:
            await storage.append("c", said("other"), expected_version=0, append_id="w-2")
        assert caught.value.head_append_id == "w-1"
        assert caught.value.actual_version == 1
        # Once something else was written, the old id no longer counts as the head.
        await storage.append("c", said("next"), expected_version=1, append_id="w-3")
        with pytest.raises(ConversationConflictError) as late:
            await storage.append("c", said("once"), expected_version=0, append_id="w-1")
        assert late.value.head_append_id == "w-3"
        stored = await storage.load("c")
        assert stored is not None
        assert texts(stored.snapshot) == ["once", "next"]
        with pytest.raises(ValueError, match="append_id"):
            await storage.append("c", said("x"), expected_version=2, append_id="")


# --------------------------------------------------------------------------- the relay


@attrs.define
class Relay:
    """Forwards TCP connections from a port of 127.0.0.1 to the redis-server.

    ``cut``: that many of the next ``EVALSHA`` commands reach the server, then their
    connection is dropped before the answer comes back. ``hold``: answers to ``EVALSHA``
    wait until ``released`` is set. ``scripts`` records every chunk the client sent that
    carries ``EVALSHA`` commands (how many in each)."""

    target: int
    port: int = 0
    cut: int = 0
    hold: bool = False
    released: trio.Event = attrs.Factory(trio.Event)
    scripts: list[int] = attrs.Factory(list)

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._relay, listeners)

    async def _relay(self, client: trio.SocketStream) -> None:
        server = await trio.open_tcp_stream("127.0.0.1", self.target)
        state = {"drop": False, "held": False}
        async with client, server, trio.open_nursery() as nursery:

            async def up() -> None:
                while chunk := await client.receive_some():
                    if b"EVALSHA" in chunk:
                        self.scripts.append(chunk.count(b"EVALSHA"))
                        if self.cut > 0:
                            self.cut -= 1
                            state["drop"] = True
                        state["held"] = self.hold
                    await server.send_all(chunk)
                nursery.cancel_scope.cancel()

            async def down() -> None:
                while chunk := await server.receive_some():
                    if state["drop"]:
                        nursery.cancel_scope.cancel()  # ran on the server, answer lost
                        return
                    if state["held"]:
                        await self.released.wait()
                        state["held"] = False
                    await client.send_all(chunk)
                nursery.cancel_scope.cancel()

            nursery.start_soon(up)
            nursery.start_soon(down)


def _prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}:"


@asynccontextmanager
async def relayed(
    server: RedisServer, credentials: str = ""
) -> AsyncIterator[tuple[Relay, RedisConversationStorage]]:
    """A storage that reaches ``server`` through a relay, and the relay (``credentials``:
    ``user:password@`` for the URL)."""
    relay = Relay(server.port)
    async with trio.open_nursery() as nursery:
        await nursery.start(relay.serve)
        url = f"redis://{credentials}127.0.0.1:{relay.port}/0"
        async with RedisConversationStorage(url, prefix=_prefix()) as storage:
            yield relay, storage
        nursery.cancel_scope.cancel()


async def test_appends_made_during_a_round_trip_go_in_the_next_one(
    redis_server: RedisServer,
) -> None:
    async with relayed(redis_server) as (relay, storage):
        relay.hold = True
        done: list[int] = []

        async def append(cid: str) -> None:
            done.append(await storage.append(cid, said(cid), expected_version=0))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(append, "first")
            await trio.testing.wait_all_tasks_blocked()
            assert relay.scripts == [1]  # sent at once, its answer held
            for i in range(10):
                nursery.start_soon(append, f"next-{i}")
            await trio.testing.wait_all_tasks_blocked()
            assert relay.scripts == [1]  # the others wait for that round trip
            relay.hold = False
            relay.released.set()
        assert relay.scripts == [1, 10]  # ... and go together in the next one
        assert done == [1] * 11


async def test_an_answer_lost_with_the_connection_is_retried_without_writing_twice(
    redis_server: RedisServer,
) -> None:
    async with relayed(redis_server) as (relay, storage):
        relay.cut = 1
        assert await storage.append("c", said("hello"), expected_version=0) == 1
        assert relay.scripts == [1, 1]  # sent, cut after it ran; sent again
        assert await storage.append("c", said("again"), expected_version=1) == 2
        stored = await storage.load("c")
        assert stored is not None
        assert texts(stored.snapshot) == ["hello", "again"]


async def test_a_write_after_an_unsure_one_goes_on_from_the_committed_version(
    redis_server: RedisServer,
) -> None:
    """Both attempts of an append lose their answer: the writer reports the error, and its
    next write finds its own append at the head instead of a conflict."""
    async with relayed(redis_server) as (relay, storage):
        writer = ConversationWriter(storage, "w", "host:1:session")
        context = OpenAILLMContext([{"role": "system", "content": "be brief"}])
        assert await writer.open(context) is None
        assert writer.version == 1
        relay.cut = 2
        context.add_message(user("lost answer"))
        error = await writer.write(said("lost answer"), context)
        assert isinstance(error, StorageUnavailableError)
        context.add_message(user("next"))
        assert await writer.write(said("next"), context) is None
        assert writer.stopped is None
        await writer.close(())
        stored = await storage.load("w")
        assert stored is not None
        assert texts(stored.snapshot) == ["be brief", "lost answer", "next"]
        assert stored.version == 3


# --------------------------------------------------------------------------- lease keeper


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
async def test_one_task_renews_the_leases_of_every_session(
    kind: str, request: pytest.FixtureRequest, tmp_path: Any
) -> None:
    if kind == "sqlite":
        storage: Any = SQLiteConversationStorage(tmp_path / "c.db")
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        storage = RedisConversationStorage(server.url, prefix=_prefix())
    async with storage:
        # More leases than the keeper renews at once (it starts the others as places free).
        leases: list[Lease] = []

        async def acquire(i: int) -> None:
            leases.append(await storage.acquire_lease(f"c{i}", f"owner-{i}", 1.0))

        async with trio.open_nursery() as nursery:
            for i in range(300):
                nursery.start_soon(acquire, i)
        leases.sort(key=lambda lease: int(lease.conversation_id[1:]))
        lost: list[LeaseLostError] = []
        reported = trio.Event()

        def on_lost(error: LeaseLostError) -> None:
            lost.append(error)
            reported.set()

        before = set(running_tasks())
        kept = [storage.lease_keeper.keep(lease, on_lost) for lease in leases]
        assert set(running_tasks()) == before  # no task per lease
        await trio.sleep(2.5)  # several ttls
        for lease in leases:
            with pytest.raises(LeaseHeldError):
                await storage.acquire_lease(lease.conversation_id, "intruder", 1)
        assert lost == []
        # Taken away behind its back: reported once, and no longer renewed.
        await storage.release_lease(leases[0])
        other = await storage.acquire_lease("c0", "someone-else", 30)
        with trio.fail_after(5):
            await reported.wait()
        assert len(lost) == 1
        assert lost[0].token == leases[0].token
        assert not kept[0].kept
        for each in kept[1:]:
            each.stop()
        await trio.sleep(1.2)
        await storage.acquire_lease("c1", "intruder", 1)  # stopped: left to expire
        assert len(lost) == 1
        await storage.release_lease(other)
        # An owner that is gone without stopping its lease: the lease is left to expire.
        owner = OpenAILLMContext()
        orphan = await storage.acquire_lease("c2", "orphan", 1.0)
        storage.lease_keeper.keep(orphan, on_lost, owner=owner)
        del owner
        gc.collect()
        await trio.sleep(1.2)
        await storage.acquire_lease("c2", "intruder", 1)


@attrs.define
class _Gate:
    """Holds the renewals of one conversation until ``opened`` is set."""

    conversation_id: str
    opened: trio.Event = attrs.Factory(trio.Event)


class _SlowRenewals(SQLiteConversationStorage):
    """A real SQLite storage whose renewals of one conversation wait at a gate."""

    def __init__(self, path: Any, gate: _Gate) -> None:
        super().__init__(path)
        self.gate = gate

    async def renew_lease(self, lease: Lease, ttl: float | None = None) -> Lease:
        if lease.conversation_id == self.gate.conversation_id:
            await self.gate.opened.wait()
        return await super().renew_lease(lease, ttl)


async def test_a_renewal_that_hangs_holds_up_no_other_lease(tmp_path: Any) -> None:
    ttl = 1.0
    gate = _Gate("slow")
    async with _SlowRenewals(tmp_path / "c.db", gate) as storage:
        slow = await storage.acquire_lease("slow", "me", ttl)
        fast = await storage.acquire_lease("fast", "me", ttl)
        lost: list[LeaseLostError] = []
        storage.lease_keeper.keep(slow, lost.append)
        storage.lease_keeper.keep(fast, lost.append)
        await trio.sleep(3 * ttl)  # due together; the slow one's first renewal hangs
        with pytest.raises(LeaseHeldError):
            await storage.acquire_lease("fast", "intruder", 1)
        assert lost == []
        gate.opened.set()
        await trio.sleep(ttl)
        # The slow renewal reached the storage after its lease expired: lost, and reported.
        assert [error.conversation_id for error in lost] == ["slow"]
        with pytest.raises(LeaseHeldError):
            await storage.acquire_lease("fast", "intruder", 1)


async def _keep_by_task(storage: Any, lease: Lease, on_lost: Any) -> None:
    """keep_lease in a task of its own, its LeaseLostError handed to ``on_lost``."""
    try:
        await keep_lease(storage, lease)
    except LeaseLostError as exc:
        on_lost(exc)


@attrs.define
class _Kept:
    """A lease kept by the lease keeper or by keep_lease, and what it reported lost."""

    lost: list[LeaseLostError] = attrs.Factory(list)
    reported: trio.Event = attrs.Factory(trio.Event)
    kept: Any = None  # the lease keeper's record of it (None with keep_lease)

    def on_lost(self, error: LeaseLostError) -> None:
        self.lost.append(error)
        self.reported.set()


def _keep(keeper: str, storage: Any, lease: Lease, nursery: trio.Nursery) -> _Kept:
    """Keep ``lease`` the way ``keeper`` names ("lease keeper" or "keep_lease")."""
    watched = _Kept()
    if keeper == "lease keeper":
        watched.kept = storage.lease_keeper.keep(lease, watched.on_lost)
    else:
        nursery.start_soon(_keep_by_task, storage, lease, watched.on_lost)
    return watched


@pytest.mark.parametrize("keeper", ["lease keeper", "keep_lease"])
async def test_a_failed_renewal_is_retried_soon_and_a_storage_that_stays_away_is_reported(
    keeper: str, redis_server: RedisServer
) -> None:
    """Two renewals in a row that the storage does not carry out cost no lease (a retry at
    the next period would find the lease expired); a storage that stays away is reported
    once the lease would have expired, after several tries."""
    ttl = 1.5
    async with relayed(redis_server) as (relay, storage), trio.open_nursery() as nursery:
        lease = await storage.acquire_lease("c", "owner", ttl)
        watched = _keep(keeper, storage, lease, nursery)
        lost = watched.lost
        # Each renewal is sent twice (again on a new connection when its answer is lost):
        # the next two renewals fail.
        relay.cut = 4
        await trio.sleep(2 * ttl)
        assert lost == []
        assert relay.cut == 0
        with pytest.raises(LeaseHeldError):
            await storage.acquire_lease("c", "intruder", 1)
        # Away for good: reported once the lease would have expired, after more tries than
        # a renewal each third of the ttl would make.
        relay.cut = 10**6
        sent = sum(relay.scripts)
        with trio.fail_after(2 * ttl):
            await watched.reported.wait()
        assert len(lost) == 1
        assert "unreachable until it expired" in str(lost[0])
        assert lost[0].token == lease.token
        assert sum(relay.scripts) - sent >= 2 * 4  # four tries at least, each sent twice
        if keeper == "lease keeper":
            assert not watched.kept.kept
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("keeper", ["lease keeper", "keep_lease"])
async def test_renewal_failures_and_the_lost_lease_never_show_the_password(keeper: str) -> None:
    """The lines a failing renewal logs (the first as a warning, the retries at debug level)
    and the error that reports the lost lease name the storage without its password."""
    password = "s3cr3t-pass"
    with RedisServer.start() as server:
        async with coredis.Redis.from_url(server.url) as admin:
            await admin.config_set({"requirepass": password})
        with capture_logs() as logs:
            async with (
                relayed(server, f"default:{password}@") as (relay, storage),
                trio.open_nursery() as nursery,
            ):
                lease = await storage.acquire_lease("c", "owner", 1.0)
                watched = _keep(keeper, storage, lease, nursery)
                relay.cut = 10**6
                with trio.fail_after(3):
                    await watched.reported.wait()
                nursery.cancel_scope.cancel()
    failures = [entry for entry in logs if entry["event"] == "lease renewal failed; retrying"]
    assert [entry["log_level"] for entry in failures[:2]] == ["warning", "debug"]
    assert "***" in failures[0]["error"]
    assert password not in str(logs)
    assert password not in str(watched.lost[0])
    assert "unreachable until it expired" in str(watched.lost[0])


async def test_appends_go_on_after_the_server_forgot_the_script(
    redis_server: RedisServer,
) -> None:
    async with RedisConversationStorage(redis_server.url, prefix=_prefix()) as storage:
        assert await storage.append("c", said("before"), expected_version=0) == 1
        async with coredis.Redis.from_url(redis_server.url) as client:
            await client.script_flush()
        assert await storage.append("c", said("after"), expected_version=1) == 2
        stored = await storage.load("c")
        assert stored is not None
        assert texts(stored.snapshot) == ["before", "after"]


async def test_a_writer_dropped_without_closing_lets_its_lease_expire(tmp_path: Any) -> None:
    async with SQLiteConversationStorage(tmp_path / "c.db") as storage:
        writer = ConversationWriter(storage, "d", "host:1:session", lease_ttl=1.0)
        assert await writer.open(OpenAILLMContext([user("hi")])) is None
        assert writer.keep_in_background(lambda error: None)
        await trio.sleep(1.2)  # renewed past its ttl
        with pytest.raises(LeaseHeldError):
            await storage.acquire_lease("d", "next", 1)
        del writer
        gc.collect()
        await trio.sleep(1.2)
        await storage.acquire_lease("d", "next", 1)


# --------------------------------------------------------------------------- SQLite groups


async def test_a_group_costs_a_few_statements_whatever_its_size(tmp_path: Any) -> None:
    """Python's sqlite3 gives up the GIL at every statement step and may wait up to 5 ms
    to get it back while the loop is busy: a group of 300 appends (new and existing
    conversations, two to the same one) runs in a handful of statements, not five per
    append."""
    from actors.storage._contract import CompactionPolicy
    from actors.storage._sqlite_group import Head, apply_append, read_heads, write_group

    path = tmp_path / "g.db"
    async with SQLiteConversationStorage(path) as storage:
        await storage.append("old", said("x"), expected_version=0)
    conn = sqlite3.connect(path, isolation_level=None)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    policy = CompactionPolicy(256, 1 << 20)
    cids = ["old", *(f"n{i}" for i in range(299))]
    conn.execute("BEGIN IMMEDIATE")
    heads = read_heads(conn, cids)
    assert heads["old"].version == 1
    assert heads["old"].stored
    assert heads["n0"].version == 0
    assert not heads["n0"].stored
    rows = []
    for cid in [*cids, "old"]:
        version, _, write = apply_append(
            heads[cid], expected=heads[cid].version, lease=None, append_id=None,
            record_bytes=2, reset=False, count=1, now=1.0, policy=policy,
        )  # fmt: skip
        assert write
        rows.append((cid, version, b"{}"))
    write_group(conn, rows, list(heads.values()), 1.0)
    conn.execute("COMMIT")
    assert len(statements) <= 8, statements
    assert conn.execute(
        "SELECT version, message_count FROM trouper_heads WHERE id = 'old'"
    ).fetchone() == (3, 3)
    assert conn.execute("SELECT count(*) FROM trouper_changes").fetchone() == (302,)
    conn.close()
    assert isinstance(Head.from_row("x", (None,) * 9), Head)


@pytest.mark.parametrize(
    "damage",
    [
        "UPDATE trouper_heads SET version = 'seven' WHERE id = 'bad'",  # not an integer
        "UPDATE trouper_heads SET append_id = X'00ff' WHERE id = 'bad'",  # JSON cannot hold it
        "INSERT INTO trouper_changes VALUES ('bad', 2, '{}')",  # the next row exists already
    ],
)
async def test_one_damaged_conversation_does_not_fail_its_group(tmp_path: Any, damage: str) -> None:
    """A group that meets a damaged conversation is written one append at a time: the
    others are committed, the damaged one gets its own typed error (or, if only its
    append id is odd, is written too)."""
    path = tmp_path / "d.db"
    async with SQLiteConversationStorage(path) as storage:
        for cid in ("a", "bad", "c"):
            await storage.append(cid, said(f"{cid}0"), expected_version=0)
    with sqlite3.connect(path) as conn:
        conn.execute(damage)
    conn.close()
    async with SQLiteConversationStorage(path) as storage:
        answers = await _queued_behind_a_lock(
            path, storage, [("a", 1, "a1"), ("bad", 1, "bad1"), ("c", 1, "c1")]
        )
        assert answers[0] == 2
        assert answers[2] == 2
        if "append_id" in damage:
            assert answers[1] == 2
        else:
            assert isinstance(answers[1], ConversationCorruptError), answers[1]
            assert "bad" in str(answers[1])
        for cid in ("a", "c"):
            stored = await storage.load(cid)
            assert stored is not None
            assert texts(stored.snapshot) == [f"{cid}0", f"{cid}1"]


async def test_a_group_checks_every_lease(tmp_path: Any) -> None:
    """In one group: an append without the live lease of its conversation is refused, an
    append with it goes through, and so do the appends of other conversations."""
    path = tmp_path / "l.db"
    async with SQLiteConversationStorage(path) as storage:
        lease = await storage.acquire_lease("leased", "me", ttl=60)
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        answers: dict[str, Any] = {}

        async def append(key: str, cid: str, held: Any) -> None:
            try:
                answers[key] = await storage.append(cid, said(key), expected_version=0, lease=held)
            except Exception as exc:
                answers[key] = exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(append, "stranger", "leased", None)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(append, "owner", "leased", lease)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(append, "other", "free", None)
            await trio.testing.wait_all_tasks_blocked()
            holder.execute("COMMIT")
            holder.close()
        assert isinstance(answers["stranger"], LeaseHeldError)
        assert answers["owner"] == 1
        assert answers["other"] == 1


async def _renew_into(storage: Any, answers: dict[str, Any], key: str, lease: Any) -> None:
    """Renew ``lease`` for 120 s; its answer (the lease, or the error) into ``answers[key]``."""
    try:
        answers[key] = await storage.renew_lease(lease, ttl=120)
    except Exception as exc:
        answers[key] = exc


async def test_renewals_made_together_each_get_their_answer(tmp_path: Any) -> None:
    """Renewals queued at one moment (the lease keeper renews many at once) are carried
    out in one transaction: a live lease is extended, a lease taken over and a lease on a
    conversation without one are each refused on their own."""
    path = tmp_path / "r.db"
    async with SQLiteConversationStorage(path) as storage:
        live = await storage.acquire_lease("live", "me", ttl=0.5)
        taken = await storage.acquire_lease("taken", "me", ttl=0.5)
        await storage.release_lease(taken)
        await storage.acquire_lease("taken", "someone-else", ttl=60)
        ghost = attrs.evolve(live, conversation_id="ghost")
        answers: dict[str, Any] = {}
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")

        renew = functools.partial(_renew_into, storage, answers)

        async with trio.open_nursery() as nursery:
            for key, lease in (("live", live), ("taken", taken), ("ghost", ghost)):
                nursery.start_soon(renew, key, lease)
                await trio.testing.wait_all_tasks_blocked()
            holder.execute("COMMIT")
            holder.close()
        assert answers["live"].ttl == 120
        assert isinstance(answers["taken"], LeaseLostError)
        assert "someone-else" in str(answers["taken"])
        assert isinstance(answers["ghost"], LeaseLostError)
        info = await storage.info("live")
        assert info is None  # nothing was appended; the lease is what lives
        with sqlite3.connect(path) as conn:
            (expires,) = conn.execute(
                "SELECT expires_at FROM trouper_leases WHERE conversation_id = 'live'"
            ).fetchone()
        conn.close()
        assert expires - time.time() > 100


async def test_many_renewals_made_together_are_all_extended(tmp_path: Any) -> None:
    """More renewals at once than one statement extends (64): every lease is extended."""
    path = tmp_path / "many.db"
    async with SQLiteConversationStorage(path) as storage:
        leases = [await storage.acquire_lease(f"c{i}", "me", ttl=1) for i in range(150)]
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        renewed: list[Any] = []

        async def renew(lease: Any) -> None:
            renewed.append(await storage.renew_lease(lease, ttl=300))

        async with trio.open_nursery() as nursery:
            for lease in leases:
                nursery.start_soon(renew, lease)
            await trio.testing.wait_all_tasks_blocked()
            holder.execute("COMMIT")
            holder.close()
        assert len(renewed) == 150
    with sqlite3.connect(path) as conn:
        expiries = [e for (e,) in conn.execute("SELECT expires_at FROM trouper_leases")]
    conn.close()
    assert len(expiries) == 150
    assert min(expiries) - time.time() > 250


async def test_redis_renewals_made_together_each_get_their_answer(
    redis_server: RedisServer,
) -> None:
    """Renewals made at one moment (the lease keeper renews thousands at once on a busy
    worker) go pipelined on a connection of their own, more than one round trip takes
    (128): each gets its own answer, a live lease extended, a lease taken over and a lease
    on a conversation without one refused; appends go on meanwhile."""
    async with RedisConversationStorage(redis_server.url, prefix=_prefix()) as storage:
        leases = [await storage.acquire_lease(f"c{i}", "me", ttl=1) for i in range(300)]
        taken = await storage.acquire_lease("taken", "me", ttl=1)
        await storage.release_lease(taken)
        await storage.acquire_lease("taken", "someone-else", ttl=60)
        ghost = attrs.evolve(leases[0], conversation_id="ghost")
        answers: dict[str, Any] = {}

        renew = functools.partial(_renew_into, storage, answers)

        async with trio.open_nursery() as nursery:
            for lease in leases:
                nursery.start_soon(renew, lease.conversation_id, lease)
            nursery.start_soon(renew, "taken", taken)
            nursery.start_soon(renew, "ghost", ghost)
            appended = await storage.append(
                "c1", said("meanwhile"), expected_version=0, lease=leases[1]
            )
            assert appended == 1
        assert all(answers[lease.conversation_id].ttl == 120 for lease in leases)
        assert isinstance(answers["taken"], LeaseLostError)
        assert "someone-else" in str(answers["taken"])
        assert isinstance(answers["ghost"], LeaseLostError)
        await trio.sleep(1.5)  # past the first ttl: still held, by the renewal
        with pytest.raises(LeaseHeldError):
            await storage.acquire_lease("c299", "intruder", 1)


async def test_acquisitions_made_together_each_get_their_answer(tmp_path: Any) -> None:
    """Acquisitions queued at one moment (many sessions opening at once) are carried out
    in one transaction, in order: a new conversation gets token 1, an expired lease the
    next token, a live lease is refused, and a second acquisition of a conversation in the
    same group finds the first one's lease."""
    path = tmp_path / "a.db"
    async with SQLiteConversationStorage(path) as storage:
        await storage.acquire_lease("held", "other", ttl=60)
        old = await storage.acquire_lease("expired", "other", ttl=60)
        await storage.release_lease(old)
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        answers: dict[str, Any] = {}

        async def acquire(key: str, cid: str) -> None:
            try:
                answers[key] = await storage.acquire_lease(cid, f"me-{key}", ttl=30)
            except Exception as exc:
                answers[key] = exc

        async with trio.open_nursery() as nursery:
            for key, cid in (("new", "new"), ("held", "held"), ("expired", "expired"),
                             ("twice", "new")):  # fmt: skip
                nursery.start_soon(acquire, key, cid)
                await trio.testing.wait_all_tasks_blocked()
            holder.execute("COMMIT")
            holder.close()
        assert answers["new"].token == 1
        assert answers["expired"].token == old.token + 1
        assert isinstance(answers["held"], LeaseHeldError)
        assert isinstance(answers["twice"], LeaseHeldError)
        assert answers["twice"].holder == "me-new"
        info = await storage.info("new")
        assert info is None
        renewed = await storage.renew_lease(answers["expired"])
        assert renewed.owner == "me-expired"


async def test_releases_made_together_each_get_their_answer(tmp_path: Any) -> None:
    """Sessions ending together release their leases in one transaction: each live lease
    is released, and a lease taken over meanwhile is not (its new owner keeps it)."""
    path = tmp_path / "r.db"
    async with SQLiteConversationStorage(path) as storage:
        leases = [await storage.acquire_lease(f"c{i}", "me", ttl=30) for i in range(20)]
        old = await storage.acquire_lease("taken", "me", ttl=30)
        await storage.release_lease(old)
        await storage.acquire_lease("taken", "other", ttl=30)
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        answers: dict[str, bool] = {}

        async def release(lease: Lease) -> None:
            answers[lease.conversation_id] = await storage.release_lease(lease)

        async with trio.open_nursery() as nursery:
            for lease in [*leases, old]:
                nursery.start_soon(release, lease)
            await trio.testing.wait_all_tasks_blocked()
            holder.execute("COMMIT")
            holder.close()
        assert answers == {**{f"c{i}": True for i in range(20)}, "taken": False}
        again = await storage.acquire_lease("c3", "next", ttl=30)
        assert again.token == leases[3].token + 1
        with pytest.raises(LeaseHeldError) as held:
            await storage.acquire_lease("taken", "next", ttl=30)
        assert held.value.holder == "other"


async def test_loads_made_together_each_get_their_conversation(tmp_path: Any) -> None:
    """Loads at one moment (many sessions opening at once) are read together: missing,
    new, compacted (a snapshot and a log after it) and damaged conversations each get
    their own answer, the damaged one a typed error naming it."""
    path = tmp_path / "loads.db"
    async with SQLiteConversationStorage(path, compact_after_entries=3) as storage:
        for i in range(40):
            version = 0
            for turn in range(i % 6):
                version = await storage.append(
                    f"c{i}", said(f"{i}.{turn}"), expected_version=version
                )
        await storage.compact("c5")
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE trouper_changes SET record = 7 WHERE conversation_id = 'c4'")
    conn.close()
    async with SQLiteConversationStorage(path) as storage:
        answers: dict[int, Any] = {}
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")

        async def load(i: int) -> None:
            try:
                answers[i] = await storage.load(f"c{i}")
            except Exception as exc:
                answers[i] = exc

        async with trio.open_nursery() as nursery:
            # An append waits for the lock in the storage's thread, so the loads made
            # meanwhile are taken as one group.
            nursery.start_soon(
                functools.partial(storage.append, expected_version=0), "o", said("x")
            )
            await trio.testing.wait_all_tasks_blocked()
            for i in range(41):
                nursery.start_soon(load, i)
            await trio.testing.wait_all_tasks_blocked()
            holder.execute("COMMIT")
            holder.close()
    for i in range(41):
        if i == 4:
            assert isinstance(answers[i], ConversationCorruptError)
            assert "c4" in str(answers[i])
        elif i % 6 == 0 or i == 40:
            assert answers[i] is None
        else:
            assert texts(answers[i].snapshot) == [f"{i}.{t}" for t in range(i % 6)]
            assert answers[i].version == i % 6
