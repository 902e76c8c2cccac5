"""What only the Redis backend has: coredis on trio, a server that goes away, keys of the
wrong type, credentials in the URL, ids that look like key patterns."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Awaitable, Callable

import coredis
import pytest
import sniffio
import trio

from actors.storage import (
    ConversationCorruptError,
    LeaseLostError,
    RedisConversationStorage,
    StorageError,
    StorageUnavailableError,
    conversation_storage,
    keep_lease,
)
from actors.storage.testing import RedisServer, free_port

from .storage_kit import turn


def _prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}:"


async def test_coredis_runs_on_trio(redis_server: RedisServer) -> None:
    """coredis >= 6 goes through anyio: on trio's loop, with trio's own sockets."""
    assert sniffio.current_async_library() == "trio"
    async with coredis.Redis.from_url(redis_server.url) as client:
        assert await client.ping() == b"PONG"
    async with RedisConversationStorage(redis_server.url, prefix=_prefix()) as storage:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                for i in range(10):
                    nursery.start_soon(
                        functools.partial(storage.append, expected_version=0), f"c{i}", turn(1)
                    )
        assert len(await storage.list_conversations()) == 10


async def test_an_unreachable_server_is_unavailable() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(StorageUnavailableError, match=r"127\.0\.0\.1"):
        async with RedisConversationStorage(url, connect_timeout=0.5):
            pass


async def test_a_server_that_goes_away_gives_typed_errors() -> None:
    with RedisServer.start() as server:
        async with RedisConversationStorage(server.url, timeout=1) as storage:
            await storage.append("c", turn(1), expected_version=0)
            lease = await storage.acquire_lease("c", "A", 5)
            server.stop()
            calls: list[Callable[[], Awaitable[object]]] = [
                lambda: storage.load("c"),
                lambda: storage.append("c", turn(2), expected_version=1, lease=lease),
                lambda: storage.acquire_lease("d", "A", 5),
                lambda: storage.renew_lease(lease),
                lambda: storage.release_lease(lease),
                storage.list_conversations,
                lambda: storage.info("c"),
                lambda: storage.delete("c", lease=lease),
                lambda: storage.compact("c"),
            ]
            for call in calls:
                with pytest.raises(StorageUnavailableError, match=r"Redis at redis://127\.0\.0\.1"):
                    await call()
        # Leaving the block after the server died raises nothing either.


async def test_keep_lease_reports_a_storage_that_stays_away() -> None:
    with RedisServer.start() as server:
        async with RedisConversationStorage(server.url, timeout=0.5) as storage:
            lease = await storage.acquire_lease("c", "A", 0.3)
            server.stop()
            with trio.fail_after(5), pytest.raises(LeaseLostError, match="unreachable"):
                await keep_lease(storage, lease, every=0.05)


async def test_keys_of_the_wrong_type_are_corrupt(redis_server: RedisServer) -> None:
    prefix = _prefix()
    async with (
        RedisConversationStorage(redis_server.url, prefix=prefix) as storage,
        coredis.Redis.from_url(redis_server.url) as raw,
    ):
        await raw.set(f"{prefix}{{a}}:meta", "not a hash")
        with pytest.raises(ConversationCorruptError, match=r"'a'.*head is a Redis string"):
            await storage.load("a")
        with pytest.raises(ConversationCorruptError, match="'a'"):
            await storage.append("a", turn(1), expected_version=0)
        with pytest.raises(ConversationCorruptError, match="'a'"):
            await storage.info("a")
        await storage.append("b", turn(1), expected_version=0)
        await raw.delete([f"{prefix}{{b}}:log"])
        await raw.hset(f"{prefix}{{b}}:log", {"x": "1"})
        with pytest.raises(ConversationCorruptError, match=r"'b'.*change log is a Redis hash"):
            await storage.load("b")
        await raw.hset(f"{prefix}{{c}}:lease", {"x": "1"})
        with pytest.raises(ConversationCorruptError, match=r"'c'.*wrong Redis type"):
            await storage.acquire_lease("c", "A", 1)
        await raw.set(f"{prefix}{{d}}:fence", "many")
        with pytest.raises(ConversationCorruptError, match=r"'d'.*fencing counter"):
            await storage.acquire_lease("d", "A", 1)


async def test_a_missing_snapshot_is_corrupt(redis_server: RedisServer) -> None:
    prefix = _prefix()
    async with (
        RedisConversationStorage(redis_server.url, prefix=prefix) as storage,
        coredis.Redis.from_url(redis_server.url) as raw,
    ):
        version = await storage.append("c", turn(1), expected_version=0)
        await storage.append("c", turn(2), expected_version=version)
        assert await storage.compact("c")
        await raw.delete([f"{prefix}{{c}}:snapshot"])
        with pytest.raises(ConversationCorruptError, match="snapshot at version 2 is missing"):
            await storage.load("c")


async def test_the_password_never_shows() -> None:
    url = f"redis://user:s3cr3t-pass@127.0.0.1:{free_port()}/0"
    storage = RedisConversationStorage(url, connect_timeout=0.5)
    assert "s3cr3t" not in repr(storage)
    with pytest.raises(StorageError) as caught:
        async with storage:
            pass
    assert "s3cr3t" not in str(caught.value)
    assert "***" in str(caught.value)
    with pytest.raises(ValueError, match="not a Redis URL") as bad:
        RedisConversationStorage("http://user:s3cr3t-pass@host/0")
    assert "s3cr3t" not in str(bad.value)
    with pytest.raises(ValueError, match="unknown conversation store") as unknown:
        conversation_storage("mysql://user:s3cr3t-pass@host/0")
    assert "s3cr3t" not in str(unknown.value)


async def test_ids_that_look_like_patterns_or_tags(redis_server: RedisServer) -> None:
    odd = ["a}b", "{x}", "*", "q?[z]", "with:colons:meta", "ünï cödé", "}:meta"]
    async with RedisConversationStorage(redis_server.url, prefix=_prefix()) as storage:
        for cid in odd:
            await storage.append(cid, turn(1), expected_version=0)
        listed = {i.conversation_id for i in await storage.list_conversations()}
        assert listed == set(odd)
        for cid in odd:
            stored = await storage.load(cid)
            assert stored is not None
            assert stored.conversation_id == cid


def test_specs_pick_redis() -> None:
    assert isinstance(conversation_storage("redis://127.0.0.1:6379/0"), RedisConversationStorage)
    with pytest.raises(ValueError, match="braces"):
        RedisConversationStorage(prefix="a{b}")
