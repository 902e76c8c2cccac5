"""Remote references: talk to a key's session from any process, wherever it runs."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import attrs
import trio

from .. import serialization
from .._frames import Frame
from ._frames import OwnerLostFrame, RemoteInterruptedFrame
from ._status import ClusterStatus, read_status
from ._wire import (
    DEFAULT_PREFIX,
    ClusterError,
    Connection,
    NoWorkerError,
    Placement,
    check_key,
    connect,
    text,
    translating,
    url_repr,
)

__all__ = ["ClusterClient", "InterruptTimeoutError", "RemoteSession"]

_INBOX_MAXLEN = 100_000


class InterruptTimeoutError(ClusterError, TimeoutError):
    """The owner did not acknowledge an interruption in time."""


@attrs.define(eq=False)
class ClusterClient:
    """A process's way into the cluster: open remote sessions by key, read its status.

    Open it with ``async with`` (it holds a pool of Redis connections)::

        async with ClusterClient("redis://127.0.0.1:6379/0") as cluster:
            async with cluster.open("user-42") as remote:
                await remote.send(SomeFrame(...))
                async for frame in remote:
                    ...

    Args:
        url: The Redis server (the workers' own).
        prefix: Prepended to every Redis key (the workers' own).
        lease_ttl: The placement's lifetime if the chosen worker did not publish its own.
        check_secs: How long a reader waits for output before it checks that the key's
            owner is still alive.
        max_connections: Size of the connection pool (each reader waiting for output holds
            one connection while it waits).
    """

    url: str = attrs.field(repr=url_repr)  # never the password in a repr
    prefix: str = DEFAULT_PREFIX
    lease_ttl: float = 10.0
    check_secs: float = 0.5
    max_connections: int = 1024
    _conn: Connection | None = attrs.field(default=None, init=False)
    _stack: contextlib.AsyncExitStack | None = attrs.field(default=None, init=False)

    async def __aenter__(self) -> ClusterClient:
        """Connect.

        Raises:
            ClusterUnavailableError: Redis cannot be reached.
        """
        stack = contextlib.AsyncExitStack()
        opening = connect(self.url, self.prefix, max_connections=self.max_connections)
        self._conn = await opening.__aenter__()
        stack.push_async_exit(opening.__aexit__)
        self._stack = stack
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        """Close the connections."""
        stack, self._stack, self._conn = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    @property
    def connection(self) -> Connection:
        """The open connection.

        Raises:
            ClusterError: The client is not open.
        """
        if self._conn is None:
            raise ClusterError("the ClusterClient is not open: use it in 'async with'")
        return self._conn

    @contextlib.asynccontextmanager
    async def open(self, key: str) -> AsyncIterator[RemoteSession]:
        """A handle on ``key``'s session, reading its output from now on.

        Nothing is placed until the first :meth:`RemoteSession.send`.
        """
        conn = self.connection
        check_key(key)
        with translating(self.url):
            last = await conn.client.xrevrange(conn.keys.out(key), count=1)
            owner = await conn.client.get(conn.keys.owner(key))
        start = text(last[0].identifier) if last else "0-0"
        remote = RemoteSession(self, key, start)
        if owner is not None:
            remote._live = Placement.parse(owner).epoch
        yield remote

    async def status(self) -> ClusterStatus:
        """The live workers, their load and the keys they own."""
        return await read_status(self.connection)


@attrs.define(eq=False)
class RemoteSession:
    """A reference to the session of one key, usable from any process (see
    :meth:`ClusterClient.open`).

    Iterate it (``async for frame in remote``) to read the key's output in order, each frame
    once (duplicates from retried writes and output of superseded placements are dropped).
    Besides the session's own frames it yields a :class:`RemoteInterruptedFrame` where an
    interruption was acknowledged (no frame of the interrupted turn follows it) and an
    :class:`OwnerLostFrame` when the owner died or the session crashed (what was in flight is
    lost; the next :meth:`send` places the key again).

    Attributes:
        key: The entity key.
        placement: Where the key was last sent to (``None``: nothing sent yet).
    """

    client: ClusterClient
    key: str
    _last_id: str
    placement: Placement | None = attrs.field(default=None, init=False)
    _epoch: int = attrs.field(default=0, init=False)
    _seq: int = attrs.field(default=0, init=False)
    _acked: int = attrs.field(default=0, init=False)
    _live: int | None = attrs.field(default=None, init=False)
    _buffer: deque[Frame] = attrs.field(factory=deque, init=False)

    async def send(self, *frames: Frame) -> Placement:
        """Send ``frames`` (in order, as one command) to the key's session, placing the key
        on the least-loaded live worker if nobody owns it; where it went.

        Raises:
            NoWorkerError: No live worker.
            SerializationError: A frame cannot be serialized.
            ClusterUnavailableError: Redis cannot be reached.
        """
        if not frames:
            raise ValueError("send takes at least one frame")
        data = json.dumps([serialization.frame_to_dict(f) for f in frames])
        conn = self.client.connection
        reply = await conn.script(
            "SEND",
            [conn.keys.owner(self.key), conn.keys.epoch(self.key), conn.keys.workers],
            [
                conn.keys.prefix,
                max(1, round(self.client.lease_ttl * 1000)),
                _INBOX_MAXLEN,
                "kind",
                "frames",
                "key",
                self.key,
                "data",
                data,
            ],
        )
        if text(reply[0]) != "ok":
            raise NoWorkerError(f"no live worker to take {self.key!r}")
        self.placement = Placement.parse(reply[1])
        self._live = self.placement.epoch
        return self.placement

    async def interrupt(self, *, wait_secs: float = 5.0) -> bool:
        """Interrupt the session's current turn and wait until its owner acknowledges it.

        Returns ``False`` when there was nothing to interrupt (the key is not placed, or its
        owner went away meanwhile).

        Raises:
            InterruptTimeoutError: No acknowledgement within ``wait_secs`` seconds.
            ClusterUnavailableError: Redis cannot be reached.
        """
        conn = self.client.connection
        request = uuid.uuid4().hex
        reply = await conn.script(
            "INTERRUPT",
            [conn.keys.owner(self.key), conn.keys.out(self.key)],
            [conn.keys.prefix, _INBOX_MAXLEN, request, self.key],
        )
        if text(reply[0]) != "ok":
            return False
        placement = Placement.parse(reply[1])
        last = text(reply[2])
        out = conn.keys.out(self.key)
        block = max(1, round(self.client.check_secs * 1000))
        with trio.move_on_after(wait_secs):
            while True:
                with translating(self.client.url):
                    got = await conn.client.xread({out: last}, count=256, block=block)
                if not got:
                    if await self._owner() != placement:
                        return False
                    continue
                for entries in got.values():
                    for entry in entries:
                        last = text(entry.identifier)
                        fields = entry.field_values
                        if text(fields.get(b"request", b"")) == request:
                            return True
        raise InterruptTimeoutError(
            f"the owner of {self.key!r} did not acknowledge the interruption in {wait_secs:g} s"
        )

    async def _owner(self) -> Placement | None:
        conn = self.client.connection
        with translating(self.client.url):
            value = await conn.client.get(conn.keys.owner(self.key))
        return None if value is None else Placement.parse(value)

    def __aiter__(self) -> RemoteSession:
        return self

    async def __anext__(self) -> Frame:
        """The next output frame (waits for it)."""
        conn = self.client.connection
        out = conn.keys.out(self.key)
        block = max(1, round(self.client.check_secs * 1000))
        while not self._buffer:
            with translating(self.client.url):
                got = await conn.client.xread({out: self._last_id}, count=256, block=block)
            if not got:
                await self._check_owner()
                continue
            for entries in got.values():
                for entry in entries:
                    self._last_id = text(entry.identifier)
                    self._accept({text(k): text(v) for k, v in entry.field_values.items()})
        return self._buffer.popleft()

    async def _check_owner(self) -> None:
        live = self._live
        if live is None:
            return
        owner = await self._owner()
        if owner is None or owner.epoch != live:
            self._live = None
            self._buffer.append(
                OwnerLostFrame(
                    self.key, live, "the owner's placement expired (its worker died or hung)"
                )
            )

    def _accept(self, fields: dict[str, str]) -> None:
        try:
            epoch, seq, gen = int(fields["epoch"]), int(fields["seq"]), int(fields["gen"])
        except (KeyError, ValueError):
            return
        if epoch < self._epoch:
            return  # output of a superseded placement
        if epoch > self._epoch:
            self._epoch, self._seq, self._acked = epoch, 0, 0
        if seq <= self._seq:
            return  # a duplicate of a retried write
        self._seq = seq
        kind = fields.get("kind")
        if kind == "frame":
            if gen < self._acked:
                return  # of an interrupted turn
            self._live = epoch
            self._buffer.append(serialization.loads(fields.get("data", "")))
        elif kind == "ack":
            self._acked = max(self._acked, gen)
            self._buffer.append(
                RemoteInterruptedFrame(self.key, epoch, gen, fields.get("request", ""))
            )
        elif kind == "lost":
            if self._live == epoch:
                self._live = None
            self._buffer.append(OwnerLostFrame(self.key, epoch, fields.get("data", "")))
        elif kind == "stopped" and self._live == epoch:
            self._live = None
