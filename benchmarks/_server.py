"""A scriptable OpenAI-compatible SSE server for the service benchmarks, in its own process.

It runs on plain asyncio protocols (``transport.write`` and ``loop.call_at``; no task per
stream), so that hundreds of concurrent streams with chunks every 20 ms cost it little CPU and
it never competes with the client under test inside one event loop.

**What a request gets** is chosen by the request's ``model``, a spec string such as
``"bench:tokens=2000:spacing=0"``; every field is optional:

* ``tokens`` (int, default 50): content chunks of a text answer.
* ``spacing`` (float, ms, default 0): time between content chunks. With 0 every chunk is
  written at once, each as its own HTTP chunk.
* ``first`` (float, ms, default 0): delay before the first content chunk. The role chunk
  goes out with the response head, at once; with 0 the first content chunk follows it
  immediately, in the same callback.
* ``burst`` (int, default 1): the first ``burst`` content chunks go out together, without
  spacing (a backlog in one go), the rest at ``spacing``.
* ``tools`` (int, default 0): answer with ``tools`` tool calls of the function ``lookup`` (all
  at once) instead of text, unless the request's last message is a ``tool`` result: the
  follow-up request gets the text answer.

After the last content chunk the server sends a finish chunk, a usage chunk and ``[DONE]``,
and ends the chunked body (the connection stays open for the next request).

**Side endpoints** (plain JSON, at the root, not under ``/v1``): ``GET /_stats`` returns
``{"disconnects": [...], "late_max_ms": ..., "streams": ...}`` where ``disconnects`` lists,
for every connection the client closed while a stream was still being sent, the
``time.monotonic()`` at which the server saw it closed (``eof_received`` or
``connection_lost``, whichever came first). On Linux ``time.monotonic()`` is the same clock in
every process on the machine, so a benchmark compares it with its own timestamps.
``late_max_ms`` is the largest delay of a scheduled chunk behind its due time (a busy server
would show here), ``streams`` the number of streams served. ``POST /_reset`` clears them.

Start it with :func:`server_process` (blocking; :func:`server_process_pid` also gives its
process id) or :func:`open_server` (trio); both give the base URL
``http://127.0.0.1:PORT/v1``. :func:`model_spec` builds spec strings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import trio

__all__ = [
    "child_env",
    "fetch_stats",
    "model_spec",
    "open_server",
    "reset_stats",
    "server_process",
    "server_process_pid",
]

_ROOT = Path(__file__).resolve().parent.parent
_WORDS = ("the", " quick", " brown", " fox", " jumps", " over", " a", " lazy", " dog", ".")
_ID = "chatcmpl-benchservice000000000001"
_MODEL = "gpt-4o-mini-2024-07-18"


def model_spec(
    *,
    tokens: int = 50,
    spacing_ms: float = 0.0,
    first_ms: float = 0.0,
    burst: int = 1,
    tools: int = 0,
) -> str:
    """The ``model`` string that asks the server for a given stream (see the module docs)."""
    return (
        f"bench:tokens={tokens}:spacing={spacing_ms:g}:first={first_ms:g}"
        f":burst={burst}:tools={tools}"
    )


# --------------------------------------------------------------------------- server side


def _event(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    event = b"data: " + data.encode() + b"\n\n"
    return b"%x\r\n%b\r\n" % (len(event), event)


def _chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": _ID,
        "object": "chat.completion.chunk",
        "created": 1_760_000_000,
        "model": _MODEL,
        "system_fingerprint": "fp_bench",
        "choices": []
        if delta is None
        else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        "usage": None,
    }
    chunk.update(extra)
    return chunk


_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"x-request-id: req_bench\r\ntransfer-encoding: chunked\r\n\r\n"
)
_ROLE = _event(_chunk({"role": "assistant", "content": ""}))
_DONE = _event("[DONE]") + b"0\r\n\r\n"


class _Spec:
    """A parsed model spec, with its pre-encoded pieces."""

    def __init__(self, text: str) -> None:
        fields: dict[str, str] = {}
        for part in text.split(":")[1:]:
            key, _, value = part.partition("=")
            fields[key] = value
        self.tokens = int(fields.get("tokens", "50"))
        self.spacing = float(fields.get("spacing", "0")) / 1000.0
        self.first = float(fields.get("first", "0")) / 1000.0
        self.burst = max(1, int(fields.get("burst", "1")))
        self.tools = int(fields.get("tools", "0"))
        self.texts = [_event(_chunk({"content": _WORDS[i % 10]})) for i in range(self.tokens)]
        self.text_tail = _event(_chunk({}, "stop")) + _event(_usage(25, self.tokens)) + _DONE
        calls = b""
        for i in range(self.tools):
            first = {
                "index": i,
                "id": f"call_bench{i:04d}",
                "type": "function",
                "function": {"name": "lookup", "arguments": ""},
            }
            calls += _event(_chunk({"tool_calls": [first]}))
            args = json.dumps({"key": f"item{i}"})
            for start in range(0, len(args), 8):
                fragment = {"index": i, "function": {"arguments": args[start : start + 8]}}
                calls += _event(_chunk({"tool_calls": [fragment]}))
        self.tool_body = (
            calls + _event(_chunk({}, "tool_calls")) + _event(_usage(25, 10 * self.tools)) + _DONE
        )


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    return _chunk(None, usage=usage)


class _Stats:
    def __init__(self) -> None:
        self.disconnects: list[float] = []
        self.late_max = 0.0
        self.streams = 0

    def as_json(self) -> bytes:
        return json.dumps(
            {
                "disconnects": self.disconnects,
                "late_max_ms": self.late_max * 1000.0,
                "streams": self.streams,
            }
        ).encode()


class _Connection(asyncio.Protocol):
    """One client connection: HTTP/1.1 keep-alive, one request at a time."""

    def __init__(self, server: _Server) -> None:
        self.server = server
        self.loop = server.loop
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.streaming = False
        self.closed = False
        self.handles: list[asyncio.TimerHandle] = []

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._parse()

    def eof_received(self) -> bool:
        self._gone()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone()

    # requests

    def _gone(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.streaming:
            self.server.stats.disconnects.append(time.monotonic())
        for handle in self.handles:
            handle.cancel()
        self.handles = []
        if self.transport is not None:
            self.transport.close()

    def _parse(self) -> None:
        while not self.streaming:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1")
            lines = head.split("\r\n")
            method, path = lines[0].split(" ")[:2]
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            self._handle(method, path, body)

    def _reply_json(self, payload: bytes) -> None:
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%b"
            % (len(payload), payload)
        )

    def _handle(self, method: str, path: str, body: bytes) -> None:
        stats = self.server.stats
        if path == "/_stats":
            self._reply_json(stats.as_json())
            return
        if path == "/_reset":
            self.server.stats = _Stats()
            self._reply_json(b"{}")
            return
        request = json.loads(body) if body else {}
        spec = self.server.spec(str(request.get("model", "bench")))
        messages = request.get("messages") or [{}]
        stats.streams += 1
        assert self.transport is not None
        if spec.tools and messages[-1].get("role") != "tool":
            self.transport.write(_HEAD + _ROLE + spec.tool_body)
            return
        self.transport.write(_HEAD + _ROLE)
        self.streaming = True
        start = self.loop.time() + spec.first
        if spec.first <= 0:
            # The first content chunk (or burst, or the whole answer without spacing) goes
            # out at once, right behind the head; the rest is scheduled from ``start``.
            self._send(spec, 0, spec.tokens if spec.spacing <= 0 else spec.burst, start)
        else:
            self._schedule(spec, 0, start)

    def _schedule(self, spec: _Spec, index: int, due: float) -> None:
        count = spec.burst if index == 0 else 1
        self.handles = [self.loop.call_at(due, self._send, spec, index, count, due)]

    def _send(self, spec: _Spec, index: int, count: int, due: float) -> None:
        if self.closed or self.transport is None:
            return
        late = self.loop.time() - due
        if late > self.server.stats.late_max:
            self.server.stats.late_max = late
        write = self.transport.write
        end = min(index + count, spec.tokens)
        for i in range(index, end):
            write(spec.texts[i])
        if end >= spec.tokens:
            write(spec.text_tail)
            self.streaming = False
            self.handles = []
            if self.buffer:
                self._parse()
            return
        self._schedule(spec, end, due + spec.spacing)


class _Server:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.stats = _Stats()
        self._specs: dict[str, _Spec] = {}

    def spec(self, text: str) -> _Spec:
        spec = self._specs.get(text)
        if spec is None:
            spec = self._specs[text] = _Spec(text)
        return spec


async def _serve() -> None:
    try:
        # The server is the measuring instrument: let it wake up ahead of other load on the
        # machine when a client closes its socket (ignored where not permitted).
        os.nice(-10)
    except OSError:
        pass
    loop = asyncio.get_running_loop()
    state = _Server(loop)
    server = await loop.create_server(
        lambda: _Connection(state), "127.0.0.1", 0, backlog=4096, reuse_address=True
    )
    port = server.sockets[0].getsockname()[1]
    print(f"PORT {port}", flush=True)
    async with server:
        await server.serve_forever()


# --------------------------------------------------------------------------- client side


def _command() -> list[str]:
    return [sys.executable, "-m", "benchmarks._server", "--serve"]


def child_env() -> dict[str, str]:
    """The environment of a child process: this checkout first on ``PYTHONPATH``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH")]))
    return env


@contextmanager
def server_process(*, cpu: int | None = None) -> Iterator[str]:
    """Start the server in another process (blocking API).

    Args:
        cpu: Pin the server to this CPU (Linux), e.g. to keep it off the CPUs the client
            under test is pinned to.

    Yields:
        Its base URL, ``http://127.0.0.1:PORT/v1``. The process is killed on exit.
    """
    with port_process(_command(), child_env(), cpu=cpu) as url:
        yield url


@contextmanager
def server_process_pid() -> Iterator[tuple[str, int]]:
    """:func:`server_process`, also giving the server's process id (to read its CPU time).

    Yields:
        Its base URL and its process id. The process is killed on exit.
    """
    with _port_process(_command(), child_env(), cpu=None) as started:
        yield started


@contextmanager
def port_process(
    command: list[str], env: dict[str, str], *, cpu: int | None = None
) -> Iterator[str]:
    """Run a benchmark server process that prints ``PORT <n>`` once it listens (blocking
    API; :func:`open_port_process` is the trio one).

    Args:
        command: The server's command line.
        env: Its environment.
        cpu: Pin it to this CPU (Linux).

    Yields:
        ``http://127.0.0.1:<n>/v1``. The process is killed on exit.
    """
    with _port_process(command, env, cpu=cpu) as (url, _):
        yield url


@contextmanager
def _port_process(
    command: list[str], env: dict[str, str], *, cpu: int | None
) -> Iterator[tuple[str, int]]:
    process = subprocess.Popen(command, stdout=subprocess.PIPE, env=env, text=True)
    try:
        if cpu is not None:
            os.sched_setaffinity(process.pid, {cpu})
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"benchmark server did not start: {line!r}")
        yield f"http://127.0.0.1:{int(line.split()[1])}/v1", process.pid
    finally:
        process.kill()
        process.wait(timeout=10)


@asynccontextmanager
async def open_server() -> AsyncIterator[str]:
    """Start the server in another process (trio API).

    Yields:
        Its base URL. The process is killed on exit, also on cancellation.
    """
    async with open_port_process(_command(), child_env()) as url:
        yield url


@asynccontextmanager
async def open_port_process(command: list[str], env: dict[str, str]) -> AsyncIterator[str]:
    """Run a benchmark server process that prints ``PORT <n>`` once it listens.

    Shared by every benchmark server started from trio.

    Yields:
        ``http://127.0.0.1:<n>/v1``. The process is killed on exit, also on cancellation.
    """
    process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE, env=env)
    try:
        assert process.stdout is not None
        received = b""
        with trio.fail_after(30):
            while b"\n" not in received:
                data = await process.stdout.receive_some(256)
                if not data:
                    raise RuntimeError("benchmark server exited before listening")
                received += data
        line = received.decode().splitlines()[0]
        if not line.startswith("PORT "):
            raise RuntimeError(f"benchmark server did not start: {line!r}")
        yield f"http://127.0.0.1:{int(line.split()[1])}/v1"
    finally:
        process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()
            if process.stdout is not None:
                await process.stdout.aclose()


def _root(base_url: str) -> str:
    return base_url.removesuffix("/v1")


def fetch_stats(base_url: str) -> dict[str, Any]:
    """The server's stats (blocking; call it outside any timed section).

    Args:
        base_url: The URL :func:`server_process` or :func:`open_server` gave.

    Returns:
        ``{"disconnects": [monotonic seconds...], "late_max_ms": float, "streams": int}``.
    """
    import httpx

    response = httpx.get(_root(base_url) + "/_stats", timeout=10.0)
    response.raise_for_status()
    stats: dict[str, Any] = response.json()
    return stats


def reset_stats(base_url: str) -> None:
    """Clear the server's stats (blocking; call it outside any timed section)."""
    import httpx

    httpx.post(_root(base_url) + "/_reset", timeout=10.0).raise_for_status()


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks._server --serve``: serve until killed."""
    parser = argparse.ArgumentParser(description="benchmark OpenAI-compatible SSE server")
    parser.add_argument("--serve", action="store_true", required=True)
    parser.parse_args(argv)
    asyncio.run(_serve())


if __name__ == "__main__":
    main()
