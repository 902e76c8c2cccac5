"""The shared backend: :class:`RedisConversationStorage`, conversations in Redis through
``coredis`` (which runs on trio through anyio), for applications on several processes or
hosts. The layout and the atomic scripts are described in
:mod:`actors.storage._redis_scripts`.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import urlsplit

import anyio
import coredis
import coredis.exceptions
import structlog
import trio

from .._context import ContextSnapshot
from . import _redis_scripts as scripts
from ._background import Background
from ._changes import Change
from ._contract import (
    CompactionPolicy,
    ConversationInfo,
    Lease,
    StoredConversation,
    check_append_id,
    check_lease,
    check_positive,
    check_version,
)
from ._errors import (
    ConversationConflictError,
    ConversationCorruptError,
    LeaseHeldError,
    LeaseLostError,
    StorageError,
    StorageUnavailableError,
    check_id,
    check_owner,
    check_ttl,
)
from ._fold import (
    EMPTY,
    OFF_LOOP_BYTES,
    decode_entry,
    decode_snapshot,
    encode_snapshot,
    heavier_than,
    prepare_append,
)
from ._fold import fold_entries as _fold_entries
from ._keeper import LeaseKeeper
from ._phase import Phase
from ._redis_pipe import AppendPipeline
from ._urls import mask_url

__all__ = ["RedisConversationStorage", "mask_url"]

T = TypeVar("T")
log = structlog.get_logger("trouper.actors.storage")


_SCHEMES = ("redis", "rediss", "unix")
_GLOB = re.compile(r"([*?\[\]\\])")
_DISCONNECTED = (
    coredis.exceptions.ConnectionError,
    TimeoutError,
    OSError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
)


async def _maybe_off_loop(heavy: bool, fn: Callable[[], T]) -> T:
    if heavy:
        return await trio.to_thread.run_sync(fn)
    return fn()


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _split_lease(value: object) -> tuple[int, str]:
    token, _, owner = _text(value).partition("|")
    try:
        return int(token), owner
    except ValueError:
        return 0, _text(value)


def _lease_value(lease: Lease | None) -> str:
    return "" if lease is None else f"{lease.token}|{lease.owner}"


def _ttl_ms(ttl: float) -> int:
    return max(1, math.ceil(ttl * 1000))


class RedisConversationStorage:
    """Conversations in Redis: for applications that run on several processes or hosts.

    The same contract as :class:`SQLiteConversationStorage`: per conversation an
    append-only list of JSON entries plus a small hash (version, counters, times), a
    snapshot written by compaction, and a lease key whose expiry is kept by the server
    (``PX``), so the clocks of the hosts do not matter. Every check-and-write (version,
    lease and fencing token, append) is one Lua script, atomic on the server.

    Open it with ``async with`` (``coredis`` clients live in a task group)::

        async with RedisConversationStorage("redis://127.0.0.1:6379/0") as storage:
            stored = await storage.load("user-42")

    Compaction runs in a background task of the storage (started when an append crosses
    the threshold): it reads the log, folds it off the loop, and swaps it for a snapshot in
    one script that keeps appends made in the meantime. Large payloads are encoded and
    decoded off the trio thread.

    Works with a standalone or replicated Redis >= 6.2 (and with Redis Cluster: a
    conversation's keys share one hash slot). See ``docs/storage.md`` for production
    settings.

    Args:
        url: ``redis://[user:password@]host:port/db``, ``rediss://...`` or
            ``unix:///path.sock`` (the password never appears in errors or reprs).
        prefix: Prepended to every key.
        connect_timeout: Seconds to connect before the server counts as unreachable.
        timeout: Seconds to wait for an answer.
        compact_after_entries: Log entries that trigger a compaction.
        compact_min_bytes: Log bytes below which size alone never triggers one.
        max_connections: Size of the connection pool.

    Raises:
        ValueError: Not a Redis URL, or a bad prefix, timeout or threshold.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "trouper:",
        connect_timeout: float = 2.0,
        timeout: float = 5.0,
        compact_after_entries: int = 256,
        compact_min_bytes: int = 1 << 20,
        max_connections: int = 64,
    ) -> None:
        if not isinstance(url, str) or urlsplit(url).scheme not in _SCHEMES:
            raise ValueError(
                f"not a Redis URL: {mask_url(str(url))!r} "
                "(use redis://host:port/db, rediss://... or unix:///path.sock)"
            )
        if not isinstance(prefix, str) or "{" in prefix or "}" in prefix:
            raise ValueError(f"prefix must be a string without braces, got {prefix!r}")
        check_positive(
            connect_timeout=connect_timeout,
            timeout=timeout,
            compact_after_entries=compact_after_entries,
            compact_min_bytes=compact_min_bytes,
            max_connections=max_connections,
        )
        self.url = url
        self.prefix = prefix
        self.connect_timeout = float(connect_timeout)
        self.timeout = float(timeout)
        self.compaction = CompactionPolicy(int(compact_after_entries), int(compact_min_bytes))
        self.max_connections = int(max_connections)
        self._client: coredis.Redis[bytes] | None = None
        self._stack: AsyncExitStack | None = None
        self._background: Background | None = None
        self._state = Phase.NEW
        self._compacting: set[str] = set()
        self._compact_again: set[str] = set()
        self._scripts: dict[str, Any] = {}
        self._pipeline: AppendPipeline | None = None
        # The lease renewals, pipelined the same way on a connection of their own: the keeper
        # renews every session's lease each third of its ttl, thousands at once on a busy
        # worker, and a coredis command each would cost the loop more than the renewals.
        self._renewals: AppendPipeline | None = None
        #: Renews the leases of the sessions writing through this storage, in one task.
        self.lease_keeper = LeaseKeeper(self)
        # Append ids made for appends that come without one: unique across processes (a
        # random part) and cheap (a counter).
        self._ids = map(f"{uuid.uuid4().hex[:16]}-{{}}".format, itertools.count(1))

    def __repr__(self) -> str:
        return f"RedisConversationStorage({mask_url(self.url)!r}, prefix={self.prefix!r})"

    # ----------------------------------------------------------------- lifetime

    async def __aenter__(self) -> Self:
        """Connect and check that the server answers.

        Raises:
            StorageUnavailableError: The server cannot be reached or refuses the
                credentials.
        """
        if self._state is not Phase.NEW:
            raise StorageUnavailableError(f"{self!r} was opened already (open it once)")
        self._state = Phase.OPEN
        stack = AsyncExitStack()
        try:
            with self._translating(None):
                client: coredis.Redis[bytes] = coredis.Redis.from_url(
                    self.url,
                    connect_timeout=self.connect_timeout,
                    stream_timeout=self.timeout,
                    max_connections=self.max_connections,
                )
                await stack.enter_async_context(client)
                self._background = await Background.open(stack)
                self._scripts = {
                    name: client.register_script(getattr(scripts, name)) for name in scripts.__all__
                }
                pipeline = self._script_pipeline(client, "APPEND")
                renewals = self._script_pipeline(client, "RENEW")
                with trio.fail_after(self.connect_timeout + self.timeout):
                    # A connection each, then one for the rest.
                    await pipeline.connect()
                    await renewals.connect()
                    await client.ping()
        except BaseException:
            self._state = Phase.CLOSED
            if self._background is not None:
                self._background.cancel()
            await self._close_stack(stack)
            raise
        self._client, self._stack = client, stack
        self._pipeline, self._renewals = pipeline, renewals
        assert self._background is not None
        self._background.start_soon(pipeline.run, name=f"{self!r}: appends")
        self._background.start_soon(renewals.run, name=f"{self!r}: lease renewals")
        self._background.start_soon(self.lease_keeper.run, name=f"{self!r}: leases")
        return self

    def _script_pipeline(self, client: coredis.Redis[bytes], name: str) -> AppendPipeline:
        """A pipeline for the calls of the registered script ``name`` (``scripts.<name>``)."""
        return AppendPipeline(
            client.connection_pool.get_connection,
            getattr(scripts, name),
            self._scripts[name].sha,
            self.timeout,
            mask_url(self.url),
        )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop background compactions and close the connections."""
        await self.aclose()
        stack, self._stack = self._stack, None
        if stack is not None:
            await self._close_stack(stack)

    async def aclose(self) -> None:
        """Refuse further calls and cancel background compactions. Idempotent.

        The connections themselves close when the ``async with`` block exits: ``coredis``
        keeps them in a task group of the task that opened the storage, which only that
        block may close.
        """
        self._state = Phase.CLOSED
        self._client = None
        self._pipeline = None
        self._renewals = None
        if self._background is not None:
            self._background.cancel()  # its tasks only: never the caller's block

    async def _close_stack(self, stack: AsyncExitStack) -> None:
        try:
            await stack.aclose()
        except (*_DISCONNECTED, coredis.exceptions.RedisError) as exc:
            log.info("closing the Redis connections failed", error=str(exc))
        except BaseExceptionGroup as group:
            rest = group.split((*_DISCONNECTED, coredis.exceptions.RedisError))[1]
            if rest is not None:
                raise rest from None
            log.info("closing the Redis connections failed", error=str(group))

    # ----------------------------------------------------------------- plumbing

    def _keys(self, cid: str) -> tuple[str, str, str, str, str]:
        """meta, log, snapshot, lease, fence."""
        base = f"{self.prefix}{{{cid}}}"
        return f"{base}:meta", f"{base}:log", f"{base}:snapshot", f"{base}:lease", f"{base}:fence"

    def _live_client(self) -> coredis.Redis[bytes]:
        if self._client is None:
            if self._state is Phase.NEW:
                raise StorageUnavailableError(f"{self!r} is not open: use it in 'async with'")
            raise StorageUnavailableError(f"{self!r} is closed")
        return self._client

    @contextlib.contextmanager
    def _translating(self, cid: str | None) -> Iterator[None]:
        """Turn driver errors into storage errors (never let one escape)."""
        where = mask_url(self.url)
        try:
            yield
        except StorageError:
            raise
        except coredis.exceptions.ResponseError as exc:
            text = _text(exc).replace(self.url, where)
            if "WRONGTYPE" in text and cid is not None:
                raise ConversationCorruptError(
                    cid, f"a key has the wrong Redis type ({text})"
                ) from None
            if any(code in text for code in ("NOAUTH", "WRONGPASS", "OOM", "READONLY", "LOADING")):
                raise StorageUnavailableError(f"Redis at {where} refused: {text}") from None
            raise StorageError(f"Redis at {where} answered with an error: {text}") from None
        except coredis.exceptions.RedisError as exc:
            text = _text(exc).replace(self.url, where)
            raise StorageUnavailableError(f"Redis at {where} is unavailable: {text}") from None
        except _DISCONNECTED as exc:
            text = f"{type(exc).__name__}: {exc}".replace(self.url, where)
            raise StorageUnavailableError(f"Redis at {where} is unreachable ({text})") from None
        except trio.TooSlowError:
            raise StorageUnavailableError(
                f"Redis at {where} did not answer within {self.connect_timeout + self.timeout:g} s"
            ) from None
        except BaseExceptionGroup as group:
            matched, rest = group.split((coredis.exceptions.RedisError, *_DISCONNECTED))
            if rest is not None or matched is None:
                raise
            first = matched.exceptions[0]
            raise StorageUnavailableError(
                f"Redis at {where} is unreachable ({type(first).__name__}: {first})"
            ) from None

    async def _script(
        self, cid: str | None, name: str, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        client = self._live_client()
        with self._translating(cid):
            return await self._scripts[name](keys=list(keys), args=list(args), client=client)

    @staticmethod
    def _answer(cid: str, reply: Any) -> tuple[str, list[Any]]:
        """``(status, values)`` of a script's reply, checked."""
        if not isinstance(reply, list) or not reply:
            raise StorageError(
                f"unexpected answer from Redis for conversation {cid!r}: {reply!r:.200}"
            )
        status = _text(reply[0])
        if status == "corrupt":
            raise ConversationCorruptError(cid, _text(reply[1]))
        return status, reply[1:]

    @staticmethod
    def _lease_refusal(cid: str, lease: Lease | None, status: str, values: list[Any]) -> None:
        if status == "lease_held":
            token, holder = _split_lease(values[0])
            raise LeaseHeldError(cid, holder, max(int(values[1]), 0) / 1000)
        if status == "lease_lost":
            assert lease is not None
            if values[0] in (None, b"", ""):
                detail = "it expired or was released"
            else:
                token, holder = _split_lease(values[0])
                detail = f"taken over by {holder!r} with lease {token}"
            raise LeaseLostError(cid, lease.owner, lease.token, detail)

    # ----------------------------------------------------------------- reading

    async def load(self, conversation_id: str) -> StoredConversation | None:
        """The conversation and its version, or ``None`` (see
        :meth:`ConversationStorage.load`)."""
        cid = check_id(conversation_id)
        read = await self._read(cid)
        if read is None:
            return None
        version, snapshot_version, _, data, rows = read
        heavy = sum(len(r) for r in rows) + len(data or b"") > OFF_LOOP_BYTES
        snapshot = await _maybe_off_loop(
            heavy, lambda: self._fold(cid, version, snapshot_version, data, rows)
        )
        return StoredConversation(cid, version, snapshot)

    async def _read(self, cid: str) -> tuple[int, int, str, bytes | None, list[bytes]] | None:
        """``(version, snapshot_version, epoch, snapshot data, log entries)``."""
        meta, log_key, snapshot_key, _, _ = self._keys(cid)
        status, values = self._answer(
            cid, await self._script(cid, "LOAD", [meta, log_key, snapshot_key], [])
        )
        if status == "none":
            return None
        raw_version, raw_snapshot_version, epoch, data, rows = values
        version = self._int(cid, raw_version, "version")
        snapshot_version = self._int(cid, raw_snapshot_version, "snapshot version")
        if not isinstance(rows, list) or not all(isinstance(r, bytes) for r in rows):
            raise ConversationCorruptError(cid, "its change log holds non-text items")
        if snapshot_version > 0 and not isinstance(data, bytes):
            raise ConversationCorruptError(
                cid, f"its snapshot at version {snapshot_version} is missing"
            )
        return version, snapshot_version, _text(epoch), data if snapshot_version else None, rows

    @staticmethod
    def _int(cid: str, value: object, what: str) -> int:
        try:
            return int(_text(value)) if value is not None else _missing(cid, what)
        except ValueError:
            raise ConversationCorruptError(
                cid, f"its {what} is {value!r}, not an integer"
            ) from None

    @staticmethod
    def _fold(
        cid: str, version: int, snapshot_version: int, data: bytes | None, rows: list[bytes]
    ) -> ContextSnapshot:
        base = EMPTY if data is None else decode_snapshot(cid, data)
        if snapshot_version + len(rows) != version:
            raise ConversationCorruptError(
                cid,
                f"its version is {version} but its snapshot ({snapshot_version}) and change "
                f"log ({len(rows)} entries) end at {snapshot_version + len(rows)}",
            )
        entries = [decode_entry(cid, snapshot_version + 1 + i, row) for i, row in enumerate(rows)]
        return _fold_entries(cid, base, entries)

    async def info(self, conversation_id: str) -> ConversationInfo | None:
        """What is known about the conversation, or ``None``."""
        cid = check_id(conversation_id)
        meta, _, _, lease_key, _ = self._keys(cid)
        status, values = self._answer(cid, await self._script(cid, "INFO", [meta, lease_key], []))
        if status == "none":
            return None
        version, created, updated, messages, entries, log_bytes, snapshot_bytes = values[:7]
        held, pttl = values[7], values[8]
        owner = expires = None
        if held is not None:
            owner, expires = _split_lease(held)[1], max(int(pttl), 0) / 1000
        return ConversationInfo(
            conversation_id=cid,
            version=self._int(cid, version, "version"),
            created_at=self._float(cid, created, "creation time"),
            updated_at=self._float(cid, updated, "update time"),
            message_count=self._int(cid, messages, "message count"),
            stored_bytes=self._int(cid, log_bytes, "log size")
            + self._int(cid, snapshot_bytes, "snapshot size"),
            log_entries=self._int(cid, entries, "log length"),
            lease_owner=owner,
            lease_expires_in=expires,
        )

    @staticmethod
    def _float(cid: str, value: object, what: str) -> float:
        try:
            return float(_text(value)) if value is not None else float(_missing(cid, what))
        except ValueError:
            raise ConversationCorruptError(cid, f"its {what} is {value!r}, not a number") from None

    async def list_conversations(self) -> list[ConversationInfo]:
        """Every stored conversation, most recently updated first (found with ``SCAN``:
        it walks the database's keys, a command for administration, not for hot paths)."""
        client = self._live_client()
        head = f"{self.prefix}{{"
        pattern = _GLOB.sub(r"\\\1", head) + "*}:meta"
        ids: list[str] = []
        with self._translating(None):
            async for key in client.scan_iter(match=pattern, count=1000):
                text = _text(key)
                if text.startswith(head) and text.endswith("}:meta"):
                    ids.append(text[len(head) : -len("}:meta")])
        out = []
        for cid in ids:
            found = await self.info(cid)
            if found is not None:
                out.append(found)
        out.sort(key=lambda i: (-i.updated_at, i.conversation_id))
        return out

    # ----------------------------------------------------------------- writing

    async def append(
        self,
        conversation_id: str,
        changes: Sequence[Change],
        *,
        expected_version: int,
        lease: Lease | None = None,
        append_id: str | None = None,
    ) -> int:
        """Append ``changes`` as one entry at ``expected_version``; the new version (see
        :meth:`ConversationStorage.append`).

        Appends are pipelined: those made while a round trip is in flight go together in
        the next one, on a connection of their own. An append without ``append_id`` gets
        one, so that an answer lost with the connection can be retried safely."""
        cid = check_id(conversation_id)
        expected = check_version(expected_version)
        check_lease(cid, lease)
        own_id = check_append_id(append_id) or next(self._ids)
        self._live_client()
        pipeline = self._pipeline
        if pipeline is None:
            raise StorageUnavailableError(f"{self!r} is closed")
        heavy = heavier_than(changes, OFF_LOOP_BYTES)
        record, reset, count = await _maybe_off_loop(heavy, lambda: prepare_append(changes))
        meta, log_key, snapshot_key, lease_key, _ = self._keys(cid)
        arguments = (
            4,
            meta,
            log_key,
            snapshot_key,
            lease_key,
            _lease_value(lease),
            expected,
            record,
            "1" if reset else "0",
            count,
            own_id,
            own_id,
        )
        with self._translating(cid):
            reply = await pipeline.call(arguments)
        status, values = self._answer(cid, reply)
        self._lease_refusal(cid, lease, status, values)
        if status == "conflict":
            head_id = _text(values[1]) if len(values) > 1 and values[1] else None
            raise ConversationConflictError(cid, expected, int(values[0]), head_append_id=head_id)
        if status != "ok":
            raise StorageError(f"unexpected answer from Redis for conversation {cid!r}: {status}")
        version, entries, log_bytes, snapshot_bytes = (int(v) for v in values[:4])
        if self.compaction.due(entries, log_bytes, snapshot_bytes):
            self._compact_soon(cid)
        return version

    async def delete(self, conversation_id: str, *, lease: Lease | None = None) -> bool:
        """Forget the conversation; whether it existed (see
        :meth:`ConversationStorage.delete`)."""
        cid = check_id(conversation_id)
        check_lease(cid, lease)
        meta, log_key, snapshot_key, lease_key, _ = self._keys(cid)
        reply = await self._script(
            cid, "DELETE", [meta, log_key, snapshot_key, lease_key], [_lease_value(lease)]
        )
        status, values = self._answer(cid, reply)
        self._lease_refusal(cid, lease, status, values)
        return bool(int(values[0]))

    # ----------------------------------------------------------------- compaction

    def _compact_soon(self, cid: str) -> None:
        """Start a background compaction of ``cid``; if one runs already, have it run once
        more when it ends (it may have read the log before the append that asked)."""
        if self._background is None or not self._background.running:
            return
        if cid in self._compacting:
            self._compact_again.add(cid)
            return
        self._compacting.add(cid)
        self._background.start_soon(self._compact_quietly, cid)

    async def _compact_quietly(self, cid: str) -> None:
        try:
            while True:
                self._compact_again.discard(cid)
                try:
                    await self.compact(cid)
                except StorageError as exc:
                    log.warning("compaction failed", conversation_id=cid, error=str(exc))
                    return
                if cid not in self._compact_again:
                    return
        finally:
            self._compacting.discard(cid)
            self._compact_again.discard(cid)

    async def compact(self, conversation_id: str) -> bool:
        """Fold the log into the snapshot now; whether there was anything to fold (``False``
        too when the conversation was compacted or deleted meanwhile)."""
        cid = check_id(conversation_id)
        read = await self._read(cid)
        if read is None or not read[4]:
            return False
        version, snapshot_version, epoch, data, rows = read

        def fold() -> bytes:
            return encode_snapshot(self._fold(cid, version, snapshot_version, data, rows))

        snapshot = await trio.to_thread.run_sync(fold)
        meta, log_key, snapshot_key, _, _ = self._keys(cid)
        done = await self._script(
            cid,
            "COMPACT",
            [meta, log_key, snapshot_key],
            [epoch, snapshot_version, version, snapshot, len(rows), sum(len(r) for r in rows)],
        )
        return bool(done)

    # ----------------------------------------------------------------- leases

    async def acquire_lease(self, conversation_id: str, owner: str, ttl: float) -> Lease:
        """Lease the conversation to ``owner`` for ``ttl`` seconds (see
        :meth:`ConversationStorage.acquire_lease`)."""
        cid, who, seconds = check_id(conversation_id), check_owner(owner), check_ttl(ttl)
        _, _, _, lease_key, fence_key = self._keys(cid)
        reply = await self._script(cid, "ACQUIRE", [lease_key, fence_key], [who, _ttl_ms(seconds)])
        status, values = self._answer(cid, reply)
        self._lease_refusal(cid, None, status, values)
        return Lease(cid, who, int(values[0]), seconds)

    async def renew_lease(self, lease: Lease, ttl: float | None = None) -> Lease:
        """Extend a live lease (see :meth:`ConversationStorage.renew_lease`)."""
        cid = check_lease(None, lease)
        seconds = lease.ttl if ttl is None else check_ttl(ttl)
        self._live_client()
        renewals = self._renewals
        if renewals is None:
            raise StorageUnavailableError(f"{self!r} is closed")
        lease_key = self._keys(cid)[3]
        # Pipelined (see _renewals): sent again on a new connection if its answer is lost,
        # which is safe, as a renewal of a live lease can be made twice.
        with self._translating(cid):
            reply = await renewals.call((1, lease_key, _lease_value(lease), _ttl_ms(seconds)))
        status, values = self._answer(cid, reply)
        self._lease_refusal(cid, lease, status, values)
        return Lease(cid, lease.owner, lease.token, seconds)

    async def release_lease(self, lease: Lease) -> bool:
        """End the lease now; whether it was still live."""
        cid = check_lease(None, lease)
        reply = await self._script(cid, "RELEASE", [self._keys(cid)[3]], [_lease_value(lease)])
        return bool(reply)


def _missing(cid: str, what: str) -> int:
    raise ConversationCorruptError(cid, f"its {what} is missing")
