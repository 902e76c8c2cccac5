"""Real servers in threads for the example app's tests: the scripted OpenAI server in a trio
run of its own, the app under a real uvicorn on a free port of 127.0.0.1 in an asyncio loop of
its own, and the server-sent events a real HTTP client reads.

Each server runs in its thread until the block is left; leaving checks what it left behind.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from types import TracebackType
from typing import Any, TypeVar

import attrs
import httpx
import trio
import uvicorn
from starlette.applications import Starlette

from actors.testing import ScriptedOpenAIServer
from runtime import AsyncioBridge

__all__ = ["SECS", "Event", "ScriptedServerThread", "UvicornThread", "read_events"]

T = TypeVar("T")

#: The bound of every wait (real seconds).
SECS = 5.0


class ScriptedServerThread:
    """A :class:`ScriptedOpenAIServer` serving from a thread with its own trio run.

    Args:
        server: The server (script it before or while it runs).
    """

    def __init__(self, server: ScriptedOpenAIServer) -> None:
        self.server = server
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="scripted-openai", daemon=True)

    def __enter__(self) -> ScriptedServerThread:
        self._thread.start()
        assert self._ready.wait(SECS), "the scripted server did not start"
        if self._error is not None:
            raise self._error
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._token is not None
        assert self._stop is not None
        trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(SECS)
        assert not self._thread.is_alive(), "the scripted server did not stop"
        if self._error is not None and exc is None:
            raise self._error

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        async with self.server:
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            self._ready.set()
            await self._stop.wait()

    def call(self, async_fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Await ``async_fn(*args)`` in the server's trio run (bounded by :data:`SECS`)."""

        async def bounded() -> T:
            with trio.fail_after(SECS):
                return await async_fn(*args)

        assert self._token is not None
        return trio.from_thread.run(bounded, trio_token=self._token)


class _Server(uvicorn.Server):
    """uvicorn's server, saying when its startup (the app's lifespan included) is over."""

    def __init__(self, config: uvicorn.Config, started: threading.Event) -> None:
        super().__init__(config)
        self._started_event = started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets)
        finally:
            self._started_event.set()


@attrs.define(eq=False)
class UvicornThread:
    """``app`` under a real uvicorn (h11, asyncio loop) on a free port of 127.0.0.1, in a
    thread of its own, until the block is left.

    Leaving it shuts uvicorn down as Ctrl-C would (the app's lifespan ends) and checks that
    the thread's asyncio loop has no task left but its main one and that no trio guest run
    (``AsyncioBridge``) is still open in it.

    Args:
        app: The ASGI application.
        graceful_secs: uvicorn's ``timeout_graceful_shutdown``: how long open requests may
            run on at shutdown before they are cancelled.
    """

    app: Starlette
    graceful_secs: int | None = None
    #: Tasks of the loop still running after uvicorn's ``serve`` returned (their names).
    leftover_tasks: list[str] | None = attrs.field(default=None, init=False)
    #: Whether a bridge was still open in the thread then.
    bridge_left_open: bool | None = attrs.field(default=None, init=False)
    _socket: socket.socket = attrs.field(factory=socket.socket, init=False)
    _started: threading.Event = attrs.field(factory=threading.Event, init=False)
    _server: _Server | None = attrs.field(default=None, init=False)
    _thread: threading.Thread | None = attrs.field(default=None, init=False)
    _error: BaseException | None = attrs.field(default=None, init=False)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        host, port = self._socket.getsockname()
        return f"http://{host}:{port}"

    def __enter__(self) -> UvicornThread:
        self._socket.bind(("127.0.0.1", 0))
        config = uvicorn.Config(
            self.app,
            loop="asyncio",
            http="h11",
            ws="none",
            lifespan="on",
            log_config=None,
            timeout_graceful_shutdown=self.graceful_secs,
        )
        self._server = _Server(config, self._started)
        self._thread = threading.Thread(target=self._main, name="uvicorn", daemon=True)
        self._thread.start()
        assert self._started.wait(SECS), "uvicorn did not start"
        if not self._server.started:
            self.stop()
            raise AssertionError(f"uvicorn did not start: {self._error!r}")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if exc is None:
            assert self._error is None, f"uvicorn failed: {self._error!r}"
            assert self.leftover_tasks == [], f"still running after shutdown: {self.leftover_tasks}"
            assert self.bridge_left_open is False

    def stop(self) -> None:
        """Shut uvicorn down and wait for its thread (once)."""
        assert self._server is not None
        assert self._thread is not None
        self._server.should_exit = True
        self._thread.join(SECS + (self.graceful_secs or 0))
        assert not self._thread.is_alive(), "uvicorn did not stop"

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # SystemExit when the lifespan's startup failed
            self._error = exc
        finally:
            self._started.set()

    async def _serve(self) -> None:
        assert self._server is not None
        await self._server.serve(sockets=[self._socket])
        this = asyncio.current_task()
        self.leftover_tasks = [t.get_name() for t in asyncio.all_tasks() if t is not this]
        self.bridge_left_open = AsyncioBridge.current() is not None


@attrs.frozen
class Event:
    """One server-sent event: its ``event`` field and its ``data`` parsed as JSON."""

    name: str
    data: Any


def read_events(response: httpx.Response) -> Iterator[Event]:
    """The server-sent events of a streamed response, as they arrive."""
    name = "message"
    data: list[str] = []
    for line in response.iter_lines():
        if not line:
            if data:
                yield Event(name, json.loads("\n".join(data)))
            name, data = "message", []
        elif line.startswith("event:"):
            name = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            data.append(line.removeprefix("data:").strip())
