"""What the cluster's processes share: the Redis keys, the connection, the errors and the
encoding of stream entries."""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import attrs
import coredis
import coredis.exceptions
import trio

from . import _scripts

__all__ = [
    "DEFAULT_PREFIX",
    "ClusterError",
    "ClusterUnavailableError",
    "Keys",
    "NoWorkerError",
    "Placement",
    "connect",
    "mask_url",
    "new_worker_id",
    "text",
    "url_repr",
]

#: Prepended to every key of the cluster.
DEFAULT_PREFIX = "trouper:cluster:"

_DISCONNECTED: tuple[type[BaseException], ...] = (
    coredis.exceptions.RedisError,
    TimeoutError,
    OSError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
)


class ClusterError(Exception):
    """Base of the errors of :mod:`runtime.cluster`."""


class ClusterUnavailableError(ClusterError):
    """Redis cannot be reached, or answered with an error."""


class NoWorkerError(ClusterError):
    """No live worker can take a key (none has announced itself, or all are dead)."""


def url_repr(url: str) -> str:
    """``url`` as a repr shows it: quoted, its password masked."""
    return repr(mask_url(url))


def mask_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def new_worker_id() -> str:
    """A worker id unique across hosts and restarts: host, process id and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def text(value: object) -> str:
    """A Redis reply as text."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


@attrs.frozen(slots=True)
class Placement:
    """Where a key runs: its owner and the placement's epoch (the fencing number: a new,
    larger one for every placement of the key).

    Attributes:
        epoch: The placement's number.
        worker: The owning worker's id.
    """

    epoch: int
    worker: str

    @classmethod
    def parse(cls, value: object) -> Placement:
        """From the owner key's ``EPOCH|WORKER`` value."""
        epoch, _, worker = text(value).partition("|")
        return cls(int(epoch), worker)

    def __str__(self) -> str:
        return f"{self.epoch}|{self.worker}"


@attrs.frozen(slots=True)
class Keys:
    """The Redis keys of one cluster (see :mod:`runtime.cluster._scripts`)."""

    prefix: str = DEFAULT_PREFIX

    @property
    def workers(self) -> str:
        """The set of announced worker ids."""
        return f"{self.prefix}workers"

    def worker(self, worker_id: str) -> str:
        """A live worker's hash."""
        return f"{self.prefix}worker:{worker_id}"

    def inbox(self, worker_id: str) -> str:
        """A worker's command stream."""
        return f"{self.prefix}inbox:{worker_id}"

    def owner(self, key: str) -> str:
        """A key's placement."""
        return f"{self.prefix}owner:{key}"

    def epoch(self, key: str) -> str:
        """A key's fencing counter."""
        return f"{self.prefix}epoch:{key}"

    def out(self, key: str) -> str:
        """A key's output stream."""
        return f"{self.prefix}out:{key}"


def check_key(key: object) -> str:
    """``key`` if it is a usable entity key (non-empty text, no control characters, at most
    512 characters).

    Raises:
        ValueError: Anything else.
    """
    if (
        not isinstance(key, str)
        or not key
        or len(key) > 512
        or any(ord(c) < 32 or ord(c) == 127 for c in key)
    ):
        raise ValueError(f"a key is 1-512 characters without control characters, got {key!r}")
    return key


@contextlib.contextmanager
def translating(url: str) -> Any:
    """Turn the driver's errors into :class:`ClusterUnavailableError`."""
    try:
        yield
    except ClusterError:
        raise
    except _DISCONNECTED as exc:
        raise ClusterUnavailableError(
            f"Redis at {mask_url(url)} failed: {type(exc).__name__}: {exc}".replace(
                url, mask_url(url)
            )
        ) from None
    except BaseExceptionGroup as group:
        matched, rest = group.split(_DISCONNECTED)
        if rest is not None or matched is None:
            raise
        first = matched.exceptions[0]
        raise ClusterUnavailableError(
            f"Redis at {mask_url(url)} failed: {type(first).__name__}: {first}"
        ) from None


@attrs.define(eq=False)
class Connection:
    """An open client with the cluster's scripts registered."""

    url: str = attrs.field(repr=url_repr)
    client: coredis.Redis[bytes]
    keys: Keys
    scripts: Mapping[str, Any]

    async def script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run one of :mod:`runtime.cluster._scripts`."""
        with translating(self.url):
            return await self.scripts[name](keys=keys, args=args, client=self.client)


@contextlib.asynccontextmanager
async def connect(
    url: str, prefix: str, *, connect_secs: float = 5.0, max_connections: int = 64
) -> AsyncIterator[Connection]:
    """A client on ``url`` (checked with a ``PING``), closed when the block is left.

    Raises:
        ValueError: Not a Redis URL, or a prefix with braces.
        ClusterUnavailableError: The server cannot be reached.
    """
    if not isinstance(url, str) or urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"not a Redis URL: {mask_url(str(url))!r}")
    if not isinstance(prefix, str) or "{" in prefix or "}" in prefix:
        raise ValueError(f"prefix must be a string without braces, got {prefix!r}")
    stack = contextlib.AsyncExitStack()
    try:
        with translating(url):
            client: coredis.Redis[bytes] = coredis.Redis.from_url(
                url,
                connect_timeout=connect_secs,
                stream_timeout=None,
                max_connections=max_connections,
            )
            await client.__aenter__()
            stack.push_async_exit(client.__aexit__)
            try:
                with trio.fail_after(2 * connect_secs):
                    await client.ping()
            except trio.TooSlowError:
                raise ClusterUnavailableError(
                    f"Redis at {mask_url(url)} did not answer within {2 * connect_secs:g} s"
                ) from None
        scripts = {
            name: client.register_script(getattr(_scripts, name)) for name in _scripts.__all__
        }
        yield Connection(url, client, Keys(prefix), scripts)
    finally:
        # Not in a cancel scope of its own: the client's task group was entered outside it.
        try:
            with translating(url):
                await stack.aclose()
        except ClusterUnavailableError:
            pass  # closing a connection to a server that went away
