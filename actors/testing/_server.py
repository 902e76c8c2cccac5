"""A scripted OpenAI-compatible HTTP/1.1 server on trio, for tests.

:class:`ScriptedOpenAIServer` listens on a real socket (``127.0.0.1``, a free port) inside the
test's trio run, so a client under test talks real HTTP over TCP, and every ``delay`` in a script
is a ``trio.sleep``: under ``autojump_clock`` a test of 30-second timeouts runs in milliseconds.

Each request is answered with a :class:`Reply`, taken from a queue
(:meth:`ScriptedOpenAIServer.add`) or, when the queue is empty, from a *responder* callback that
sees the request (so a test can answer according to the messages or tools it received). A reply can
be an SSE stream (from chunk dicts or raw bytes such as a fixture file, each piece with an optional
delay), an error status with a JSON body and headers, a stall (never answers, trickles its head
byte by byte, or stops sending mid-body), or a disconnect (the connection is closed without the
end of the body). The server can also stop reading request bodies, so that a client stays blocked
in the middle of sending one. The server records every request (method, path, headers, parsed JSON
body) and every exchange's outcome, and notices when the *client* closes the connection while a
reply is being sent or stalled, so a test can prove that a cancelled client really closed its
socket.

The script itself (:class:`Reply`, :class:`Piece`) lives in :mod:`._script`; realistic chunk dicts
come from :class:`~actors.testing.ChunkFactory`.
"""

from __future__ import annotations

import inspect
import json
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ._script import Reply

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["Exchange", "RecordedRequest", "Responder", "ScriptedOpenAIServer"]

_MAX_HEAD = 64 * 1024
_MAX_BODY = 32 * 1024 * 1024


@attrs.frozen
class RecordedRequest:
    """A request the server received.

    Attributes:
        method: ``POST``, ``GET``...
        path: The request target, e.g. ``/v1/chat/completions``.
        headers: Header names in lower case (repeated headers joined with ``", "``).
        body: The raw body.
        json: The body parsed as JSON, or ``None`` if it is not JSON.
        received_at: Trio time when the whole request had been received.
    """

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    json: Any = None
    received_at: float = 0.0


@attrs.define
class Exchange:
    """One request and what became of its reply.

    Attributes:
        request: The request.
        reply: The reply that was sent (or was being sent).
        outcome: ``None`` while in progress, then ``completed``, ``server_disconnected`` (the
            script closed the connection), ``client_disconnected`` (the client closed it first)
            or ``aborted`` (the server shut down).
    """

    request: RecordedRequest
    reply: Reply
    outcome: str | None = None


Responder = Callable[[RecordedRequest], "Reply | Awaitable[Reply]"]
"""Answers a request when the queue is empty: returns a :class:`Reply` (or an awaitable of one)."""


class _BadRequest(Exception):
    pass


@attrs.define
class _Reader:
    stream: trio.SocketStream
    buffer: bytearray = attrs.field(factory=bytearray)
    #: Called once each request head has been read (before its body).
    on_head: Callable[[], None] | None = None
    #: Never read request bodies: the request stays incomplete until the server stops.
    stall_bodies: bool = False

    async def _more(self) -> bool:
        data = await self.stream.receive_some(65536)
        if not data:
            return False
        self.buffer += data
        return True

    async def _read_until(self, marker: bytes, limit: int) -> bytes | None:
        while True:
            end = self.buffer.find(marker)
            if end >= 0:
                head = bytes(self.buffer[:end])
                del self.buffer[: end + len(marker)]
                return head
            if len(self.buffer) > limit:
                raise _BadRequest("head too large")
            if not await self._more():
                if self.buffer:
                    raise _BadRequest("connection closed mid-request")
                return None

    async def _read_exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not await self._more():
                raise _BadRequest("connection closed mid-body")
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def read_request(self) -> RecordedRequest | None:
        head = await self._read_until(b"\r\n\r\n", _MAX_HEAD)
        if head is None:
            return None
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, _version = lines[0].split(" ", 2)
        except ValueError:
            raise _BadRequest(f"bad request line {lines[0]!r}") from None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        if self.on_head is not None:
            self.on_head()
        if self.stall_bodies and (chunked or int(headers.get("content-length", "0") or 0)):
            await trio.sleep_forever()
        if chunked:
            parts = []
            while True:
                size_line = await self._read_until(b"\r\n", _MAX_HEAD)
                if size_line is None:
                    raise _BadRequest("connection closed mid-body")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    while (await self._read_until(b"\r\n", _MAX_HEAD)) not in (b"", None):
                        pass
                    break
                parts.append(await self._read_exactly(size))
                await self._read_exactly(2)
            body = b"".join(parts)
        else:
            length = int(headers.get("content-length", "0") or 0)
            if length > _MAX_BODY:
                raise _BadRequest("body too large")
            body = await self._read_exactly(length)
        parsed: Any = None
        if body:
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
        return RecordedRequest(
            method=method,
            path=target,
            headers=headers,
            body=body,
            json=parsed,
            received_at=trio.current_time(),
        )


def _head(reply: Reply, body_length: int) -> bytes:
    try:
        reason = HTTPStatus(reply.status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [f"HTTP/1.1 {reply.status} {reason}"]
    names = set()
    for name, value in reply.headers:
        lines.append(f"{name}: {value}")
        names.add(name.lower())
    if reply.framing == "chunked":
        lines.append("transfer-encoding: chunked")
    elif reply.framing == "length":
        lines.append(f"content-length: {body_length}")
    else:
        lines.append("connection: close")
    if "server" not in names:
        lines.append("server: ScriptedOpenAIServer")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _to_deque(replies: Iterable[Reply]) -> deque[Reply]:
    return deque(replies)


@attrs.define(eq=False)
class ScriptedOpenAIServer:
    """A real HTTP/1.1 server on ``127.0.0.1`` answering requests from a script.

    Use it as an async context manager inside a trio test (it runs in its own nursery), or start
    it in a nursery you own with ``await nursery.start(server.run)``::

        async with ScriptedOpenAIServer() as server:
            chunks = ChunkFactory().text_stream(["Hi"])
            server.add(Reply.error(429, retry_after=1), Reply.sse(chunks))
            client = ChatCompletionsClient(api_key="k", base_url=server.base_url)
            ...
            assert len(server.requests) == 2

    Requests are answered in order from the queue filled by :meth:`add` (or the ``replies``
    argument); when it is empty, ``responder(request)`` is asked; without a responder the server
    answers 500 ``no reply scripted`` (and counts it in :attr:`unexpected_requests`). Keep-alive
    connections are supported, so a pooled client reuses its connection between replies.

    Args:
        replies: Initial queue of replies.
        responder: Answers requests once the queue is empty.
        host: Address to listen on (loopback only).
        stall_request_bodies: Read each request's head but never its body, as a server that
            stopped reading would: a client sending a body larger than the socket buffers stays
            blocked in the middle of it (the request is never recorded in :attr:`requests`).

    Attributes:
        request_heads: Request heads received (a request counts here before its body is read).
        requests: Every request received, in order.
        exchanges: Every request with its reply and outcome.
        client_disconnects: Replies during which the client closed the connection.
        connections_opened: Connections accepted.
        connections_closed: Connections finished (by either side).
        unexpected_requests: Requests that found no scripted reply.
    """

    _queue: deque[Reply] = attrs.field(factory=deque, converter=_to_deque, alias="replies")
    responder: Responder | None = None
    host: str = "127.0.0.1"
    stall_request_bodies: bool = False
    request_heads: int = attrs.field(default=0, init=False)
    requests: list[RecordedRequest] = attrs.field(factory=list, init=False)
    exchanges: list[Exchange] = attrs.field(factory=list, init=False)
    client_disconnects: int = attrs.field(default=0, init=False)
    connections_opened: int = attrs.field(default=0, init=False)
    connections_closed: int = attrs.field(default=0, init=False)
    unexpected_requests: int = attrs.field(default=0, init=False)
    _port: int | None = attrs.field(default=None, init=False)
    _changed: trio.Event = attrs.field(factory=trio.Event, init=False, repr=False)
    _lifespan: Any = attrs.field(default=None, init=False, repr=False)

    # ----------------------------------------------------------------------------------------
    # script and observations

    def add(self, *replies: Reply) -> None:
        """Queue replies for the next requests, in order.

        Args:
            replies: The replies.
        """
        self._queue.extend(replies)

    @property
    def pending_replies(self) -> int:
        """Replies still queued."""
        return len(self._queue)

    @property
    def port(self) -> int:
        """The listening port.

        Raises:
            RuntimeError: The server is not running.
        """
        if self._port is None:
            raise RuntimeError("ScriptedOpenAIServer is not running")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``, the base URL to give an OpenAI-compatible client."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def open_connections(self) -> int:
        """Connections currently open."""
        return self.connections_opened - self.connections_closed

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _wait_for(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._changed.wait()

    async def wait_requests(self, count: int = 1) -> None:
        """Wait until at least ``count`` requests were received.

        Args:
            count: The number of requests.

        Cancellation: plain wait; cancel it (or use ``trio.fail_after``) to bound it.
        """
        await self._wait_for(lambda: len(self.requests) >= count)

    async def wait_request_heads(self, count: int = 1) -> None:
        """Wait until the heads of at least ``count`` requests were received (their bodies may
        still be on the way).

        Args:
            count: The number of request heads.

        Cancellation: plain wait; cancel it (or use ``trio.fail_after``) to bound it.
        """
        await self._wait_for(lambda: self.request_heads >= count)

    async def wait_client_disconnects(self, count: int = 1) -> None:
        """Wait until the client closed the connection during at least ``count`` replies.

        Args:
            count: The number of client disconnects.

        Cancellation: plain wait; cancel it (or use ``trio.fail_after``) to bound it.
        """
        await self._wait_for(lambda: self.client_disconnects >= count)

    async def wait_disconnected(self) -> None:
        """Wait until the client closed the connection during a reply at least once.

        Cancellation: plain wait; cancel it (or use ``trio.fail_after``) to bound it.
        """
        await self.wait_client_disconnects(1)

    async def wait_connections_closed(self) -> None:
        """Wait until no connection is open (every socket the client opened was closed).

        Cancellation: plain wait; cancel it (or use ``trio.fail_after``) to bound it.
        """
        await self._wait_for(lambda: self.open_connections == 0)

    # ----------------------------------------------------------------------------------------
    # running

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled; for ``await nursery.start(server.run)``.

        Args:
            task_status: Started once the port is known (:attr:`base_url` is then valid).

        Cancellation: cancelling stops the server and closes every connection.
        """
        listeners = await trio.open_tcp_listeners(0, host=self.host)
        try:
            sock = listeners[0].socket
            self._port = sock.getsockname()[1]
            async with trio.open_nursery() as nursery:
                for listener in listeners:
                    nursery.start_soon(self._accept_loop, listener, nursery)
                task_status.started()
        finally:
            self._port = None
            with trio.CancelScope(shield=True):
                for listener in listeners:
                    await listener.aclose()

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            stream = await listener.accept()
            nursery.start_soon(self._handle, stream)

    @asynccontextmanager
    async def _running(self) -> AsyncIterator[ScriptedOpenAIServer]:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.run)
                try:
                    yield self
                finally:
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The server's own tasks only ever end by cancellation, so a lone exception is the
            # body's: re-raise it as is (so `pytest.raises` around the block works).
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise

    async def __aenter__(self) -> ScriptedOpenAIServer:
        """Start listening (in a nursery of its own); :attr:`base_url` is valid afterwards.

        Returns:
            The server.

        Raises:
            RuntimeError: It is already running.
        """
        if self._lifespan is not None:
            raise RuntimeError("ScriptedOpenAIServer is already running")
        self._lifespan = self._running()
        return await self._lifespan.__aenter__()  # type: ignore[no-any-return]

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        """Stop the server and close every connection; an exception from the block propagates
        as itself (not wrapped in an exception group).

        Cancellation: the shutdown completes even when the block is cancelled.
        """
        lifespan, self._lifespan = self._lifespan, None
        return await lifespan.__aexit__(exc_type, exc, tb)  # type: ignore[no-any-return]

    # ----------------------------------------------------------------------------------------
    # serving

    async def _reply_for(self, request: RecordedRequest) -> Reply:
        if self._queue:
            return self._queue.popleft()
        if self.responder is not None:
            answer = self.responder(request)
            if inspect.isawaitable(answer):
                answer = await answer
            assert isinstance(answer, Reply), f"responder returned {answer!r}, not a Reply"
            return answer
        self.unexpected_requests += 1
        return Reply.error(
            500,
            f"ScriptedOpenAIServer: no reply scripted for {request.method} {request.path} "
            f"(request #{len(self.requests)})",
        )

    def _head_received(self) -> None:
        self.request_heads += 1
        self._notify()

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections_opened += 1
        self._notify()
        reader = _Reader(
            stream, on_head=self._head_received, stall_bodies=self.stall_request_bodies
        )
        try:
            while True:
                request = await reader.read_request()
                if request is None:
                    break
                self.requests.append(request)
                self._notify()
                reply = await self._reply_for(request)
                keep_alive = await self._exchange(reader, request, reply)
                if not keep_alive or request.headers.get("connection", "").lower() == "close":
                    break
        except (trio.BrokenResourceError, trio.ClosedResourceError, _BadRequest):
            pass
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            self.connections_closed += 1
            self._notify()

    async def _exchange(self, reader: _Reader, request: RecordedRequest, reply: Reply) -> bool:
        exchange = Exchange(request=request, reply=reply)
        self.exchanges.append(exchange)
        client_gone = False

        async def watch_client(cancel_scope: trio.CancelScope) -> None:
            nonlocal client_gone
            try:
                while await reader._more():
                    pass  # bytes sent during a reply are kept for the next request
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            client_gone = True
            cancel_scope.cancel()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_client, nursery.cancel_scope)
                try:
                    await self._send(reader.stream, reply)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    client_gone = True
                nursery.cancel_scope.cancel()
        finally:
            if exchange.outcome is None:
                exchange.outcome = "aborted"
        if client_gone:
            exchange.outcome = "client_disconnected"
            self.client_disconnects += 1
            self._notify()
            return False
        if reply.ending == "disconnect":
            exchange.outcome = "server_disconnected"
            self._notify()
            return False
        exchange.outcome = "completed"
        self._notify()
        return reply.framing != "close"

    async def _send(self, stream: trio.SocketStream, reply: Reply) -> None:
        if reply.headers_delay:
            await trio.sleep(reply.headers_delay)
        if not reply.send_headers:
            if reply.ending == "stall":
                await trio.sleep_forever()
            return
        body_length = sum(len(p.data) for p in reply.pieces)
        head = _head(reply, body_length)
        if reply.head_byte_delay:
            for index in range(len(head)):
                await trio.sleep(reply.head_byte_delay)
                await stream.send_all(head[index : index + 1])
        else:
            await stream.send_all(head)
        chunked = reply.framing == "chunked"
        for piece in reply.pieces:
            if piece.delay:
                await trio.sleep(piece.delay)
            if not piece.data:
                continue
            if chunked:
                await stream.send_all(b"%x\r\n%b\r\n" % (len(piece.data), piece.data))
            else:
                await stream.send_all(piece.data)
        if reply.ending == "stall":
            await trio.sleep_forever()
        if reply.ending == "complete" and chunked:
            await stream.send_all(b"0\r\n\r\n")
