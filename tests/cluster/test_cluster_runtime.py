"""runtime.cluster on a real redis-server: workers in the test's trio run, handles on keys."""

from __future__ import annotations

import pytest
import trio

from actors.storage.testing import RedisServer
from runtime.cluster import (
    ClusterStatus,
    ClusterWorker,
    NoWorkerError,
    OwnerLostFrame,
    RemoteInterruptedFrame,
    cluster_status,
)
from runtime.testing import capture_logs

from .cluster_kit import SECS, client, collect, new_prefix, wait_until, workers
from .echo_app import Piece, Say, factory


async def test_output_arrives_once_and_in_order(redis_server: RedisServer) -> None:
    prefix = new_prefix()
    async with (
        workers(redis_server.url, prefix) as (worker,),
        client(redis_server.url, prefix) as cluster,
        cluster.open("k1") as remote,
    ):
        placement = await remote.send(Say("hi", pieces=5))
        assert placement.worker == worker.worker_id
        frames = await collect(remote, lambda f: isinstance(f, Piece) and f.index == 4)
        assert [(f.text, f.index) for f in frames if isinstance(f, Piece)] == [
            ("hi", i) for i in range(5)
        ]


async def test_keys_go_to_the_least_loaded_worker_and_status_lists_them(
    redis_server: RedisServer,
) -> None:
    prefix = new_prefix()
    async with (
        workers(redis_server.url, prefix, 2) as (a, b),
        client(redis_server.url, prefix) as cluster,
    ):
        owners = []
        for i in range(6):
            async with cluster.open(f"k{i}") as remote:
                owners.append((await remote.send(Say("x"))).worker)
                await collect(remote, lambda f: isinstance(f, Piece))
        assert sorted(owners.count(w.worker_id) for w in (a, b)) == [3, 3]
        status = await cluster.status()
        assert {w.worker_id for w in status.workers} == {a.worker_id, b.worker_id}
        by_id = {w.worker_id: w for w in status.workers}
        for worker in (a, b):
            assert by_id[worker.worker_id].keys == worker.keys
            assert len(worker.keys) == 3
        assert status.orphans == {}
        # The same key stays where it is.
        async with cluster.open("k0") as remote:
            assert (await remote.send(Say("again"))).worker == owners[0]
    assert await cluster_status(redis_server.url, prefix=prefix) == ClusterStatus((), {})


async def test_no_worker_no_placement(redis_server: RedisServer) -> None:
    async with client(redis_server.url, new_prefix()) as cluster, cluster.open("k") as remote:
        with pytest.raises(NoWorkerError):
            await remote.send(Say("x"))
        assert await remote.interrupt() is False


async def test_an_interrupt_from_another_process_leaves_no_stale_frame_after_the_ack(
    redis_server: RedisServer,
) -> None:
    prefix = new_prefix()
    async with (
        workers(redis_server.url, prefix),
        client(redis_server.url, prefix) as reader,
        client(redis_server.url, prefix) as other,
    ):
        async with reader.open("k") as remote, other.open("k") as interrupter:
            await remote.send(Say("old", pieces=500, delay=0.002))
            head = await collect(remote, lambda f: isinstance(f, Piece) and f.index == 5)
            assert len(head) == 6
            assert await interrupter.interrupt() is True
            await remote.send(Say("new", pieces=3))
            rest = await collect(
                remote, lambda f: isinstance(f, Piece) and f.text == "new" and f.index == 2
            )
        acks = [i for i, f in enumerate(rest) if isinstance(f, RemoteInterruptedFrame)]
        assert len(acks) == 1
        after = rest[acks[0] + 1 :]
        assert [(f.text, f.index) for f in after if isinstance(f, Piece)] == [
            ("new", 0),
            ("new", 1),
            ("new", 2),
        ]
        before = [f for f in rest[: acks[0]] if isinstance(f, Piece)]
        assert all(f.text == "old" for f in before)
        assert len(before) < 494  # the turn was cut short
        indexes = [f.index for f in head + before if isinstance(f, Piece)]
        assert indexes == list(range(len(indexes)))  # once each, in order


async def test_a_dead_worker_s_keys_are_placed_again(redis_server: RedisServer) -> None:
    prefix = new_prefix()
    async with (
        workers(redis_server.url, prefix) as (survivor,),
        client(redis_server.url, prefix) as cluster,
    ):
        # The doomed worker is the least loaded one for a fresh key once the survivor has
        # one.
        async with cluster.open("busy") as remote:
            assert (await remote.send(Say("x"))).worker == survivor.worker_id
        doomed = ClusterWorker(redis_server.url, factory, prefix=prefix, lease_ttl=1.0)
        async with trio.open_nursery() as nursery:
            await nursery.start(doomed.run)
            async with cluster.open("k") as remote:
                first = await remote.send(Say("long", pieces=1000, delay=0.01))
                assert first.worker == doomed.worker_id
                await collect(remote, lambda f: isinstance(f, Piece) and f.index == 2)
                nursery.cancel_scope.cancel()  # dies: no sign-off, no release
        async with cluster.open("k") as remote:
            # Its placement expires; the reader says the owner is lost.
            with trio.fail_after(SECS):
                async for frame in remote:
                    if isinstance(frame, OwnerLostFrame):
                        assert frame.epoch == first.epoch
                        break
                    remote_late = frame  # frames written before it died
                    assert isinstance(remote_late, Piece)
            second = await remote.send(Say("back", pieces=2))
            assert second.worker == survivor.worker_id
            assert second.epoch > first.epoch
            frames = await collect(
                remote, lambda f: isinstance(f, Piece) and f.text == "back" and f.index == 1
            )
            assert [f.text for f in frames if isinstance(f, Piece)][-2:] == ["back", "back"]


async def test_an_idle_session_is_stopped_and_its_placement_given_up(
    redis_server: RedisServer,
) -> None:
    prefix = new_prefix()
    async with (
        workers(redis_server.url, prefix, idle_timeout_secs=0.3) as (worker,),
        client(redis_server.url, prefix) as cluster,
        cluster.open("k") as remote,
    ):
        first = await remote.send(Say("x"))
        await collect(remote, lambda f: isinstance(f, Piece))
        await wait_until(lambda: not worker.keys)
        status = await cluster.status()
        assert status.workers[0].keys == {}
        second = await remote.send(Say("y"))
        assert second.epoch == first.epoch + 1
        frames = await collect(remote, lambda f: isinstance(f, Piece))
        assert [type(f) for f in frames] == [Piece]  # the stop is not an event


async def test_a_worker_whose_placement_was_taken_cannot_write(
    redis_server: RedisServer,
) -> None:
    prefix = new_prefix()
    async with (
        workers(redis_server.url, prefix) as (worker,),
        client(redis_server.url, prefix) as cluster,
    ):
        conn = cluster.connection
        async with cluster.open("k") as remote:
            placement = await remote.send(Say("long", pieces=1000, delay=0.01))
            await collect(remote, lambda f: isinstance(f, Piece) and f.index == 1)
            # Someone else owns it now (a newer placement): from that moment on, not one
            # more entry of the old owner is accepted, although its session runs on until
            # it learns of the loss (at its next write or heartbeat).
            await conn.client.set(conn.keys.owner("k"), f"{placement.epoch + 1}|elsewhere")
            length = await conn.client.xlen(conn.keys.out("k"))
            await wait_until(lambda: not worker.keys)
            await trio.sleep(0.1)
            assert await conn.client.xlen(conn.keys.out("k")) == length


async def test_duplicated_entries_reach_the_reader_once(redis_server: RedisServer) -> None:
    prefix = new_prefix()
    async with workers(redis_server.url, prefix), client(redis_server.url, prefix) as cluster:
        conn = cluster.connection
        async with cluster.open("k") as remote:
            await remote.send(Say("x", pieces=2))
            frames = await collect(remote, lambda f: isinstance(f, Piece) and f.index == 1)
            out = conn.keys.out("k")
            entries = await conn.client.xrange(out)
            # A retried write lands again, and a superseded owner's entry arrives late.
            for entry in entries:
                await conn.client.xadd(out, dict(entry.field_values))
            stale = dict(entries[0].field_values)
            stale[b"epoch"] = b"0"
            await conn.client.xadd(out, stale)
            await remote.send(Say("y"))
            more = await collect(remote, lambda f: isinstance(f, Piece) and f.text == "y")
        assert [(f.text, f.index) for f in frames + more if isinstance(f, Piece)] == [
            ("x", 0),
            ("x", 1),
            ("y", 0),
        ]


async def test_every_line_of_a_hosted_session_names_its_key_worker_and_session(
    redis_server: RedisServer,
) -> None:
    prefix = new_prefix()
    with capture_logs() as logs:
        async with (
            workers(redis_server.url, prefix, key_field="conversation") as (worker,),
            client(redis_server.url, prefix) as cluster,
            cluster.open("k") as remote,
        ):
            await remote.send(Say("x", pieces=2))
            await collect(remote, lambda f: isinstance(f, Piece) and f.index == 1)
    session_lines = [e for e in logs if e.get("session") == "echo-k"]
    events = {e["event"] for e in session_lines}
    assert {"session started", "pipeline started", "frames queued", "session stopped"} <= events
    for entry in session_lines:
        assert entry["conversation"] == "k", entry
        assert entry["worker"] == worker.worker_id, entry
        assert entry["epoch"] == 1, entry
    # The runtime's own lines of the session's actors carry them too.
    assert any("actor" in e for e in session_lines)
    # The session's turn (None while the frames wait for the session's start).
    assert next(e for e in session_lines if e["event"] == "frames queued")["turn"] in (0, None)


async def test_a_worker_runs_in_the_background_of_a_block(redis_server: RedisServer) -> None:
    prefix = new_prefix()
    async with client(redis_server.url, prefix) as cluster:
        async with ClusterWorker(redis_server.url, factory, prefix=prefix) as worker:
            async with cluster.open("k") as remote:
                await remote.send(Say("x"))
                await collect(remote, lambda f: isinstance(f, Piece))
            [status] = (await cluster.status()).workers
            assert status.worker_id == worker.worker_id
            assert status.keys == {"k": 1}
            # What the worker has handled is no longer in its inbox.
            conn = cluster.connection
            assert await conn.client.xlen(conn.keys.inbox(worker.worker_id)) == 0
        # Left: its session ended, its placement was given up, it signed off.
        assert worker.keys == {}
        assert await cluster.status() == ClusterStatus((), {})
