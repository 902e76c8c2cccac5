"""Benchmark: the streaming chat client against a raw httpx floor, on a 2,000-token stream.

Run from the repository root::

    python -m benchmarks.stream_client                 # 2,000 tokens, 20 repetitions
    python -m benchmarks.stream_client --tokens 500 --repeat 50

A separate server process (so that it does not compete for the client's CPU inside one trio run)
answers every ``POST /v1/chat/completions`` with an OpenAI-shaped stream of ``--tokens`` content
chunks (0 ms between them, one HTTP chunk each), a finish chunk, a usage chunk and ``[DONE]``; a
request's ``max_tokens`` overrides the token count. Two consumers read it in turn, each with a
pooled connection, after a warm-up:

* ``client``: :class:`actors.client.ChatCompletionsClient` — SSE decoding, typed chunks,
  accumulation, timeouts;
* ``floor``: ``httpx.AsyncClient.stream`` + ``aiter_lines`` + ``json.loads`` per data line —
  the least work any httpx-based client can do.

It prints mean, median and minimum milliseconds per stream and the client/floor ratios (target
<= 1.3). Other load on the machine inflates both sides; the ratio of the minimums is the most
stable figure.

Reuse from other benchmarks: ``async with open_stream_server(tokens) as base_url`` (trio) or
``with stream_server_process(tokens) as base_url`` (blocking) start the same server process and
give its base URL; :func:`consume_with_client` and :func:`consume_floor` time one stream each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import trio

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:  # when run as a script by the server subprocess
    sys.path.insert(0, str(_ROOT))

from actors.client import ChatCompletionsClient, ChatRequest, Timeouts  # noqa: E402
from actors.testing import (  # noqa: E402
    ChunkFactory,
    Piece,
    RecordedRequest,
    Reply,
    ScriptedOpenAIServer,
)
from benchmarks._rigs import floor_stream  # noqa: E402
from benchmarks._server import child_env, open_port_process, port_process  # noqa: E402

__all__ = [
    "DEFAULT_TOKENS",
    "Report",
    "consume_floor",
    "consume_with_client",
    "main",
    "open_stream_server",
    "run",
    "stream_body_chunks",
    "stream_server_process",
]

DEFAULT_TOKENS = 2000
"""Content chunks per benchmark stream."""

Report = Callable[[str, Mapping[str, float]], None]
"""Receives one benchmark line: a name and its figures (milliseconds and ratios)."""

_MESSAGES = [{"role": "user", "content": "Tell me a long story."}]
_WORDS = ("the", " quick", " brown", " fox", " jumps", " over", " a", " lazy", " dog", ".")


def stream_body_chunks(tokens: int) -> list[bytes]:
    """The SSE events of one benchmark stream, OpenAI-shaped (one event per element).

    Args:
        tokens: Number of content chunks.

    Returns:
        Encoded events: role, ``tokens`` content deltas, finish, usage, ``[DONE]``.
    """
    factory = ChunkFactory(id="chatcmpl-benchmark0000000000000001", model="gpt-4o-mini-2024-07-18")
    chunks: list[dict[str, Any]] = [factory.role()]
    chunks += [factory.text(_WORDS[i % len(_WORDS)]) for i in range(tokens)]
    chunks += [factory.finish("stop"), factory.usage(25, tokens)]
    events = [b"data: " + json.dumps(c, separators=(",", ":")).encode() + b"\n\n" for c in chunks]
    return [*events, b"data: [DONE]\n\n"]


def _serve_forever(tokens: int) -> None:
    """The server process: print ``PORT <n>`` once listening, then serve until killed."""
    cache: dict[int, Reply] = {}

    def responder(request: RecordedRequest) -> Reply:
        body = request.json if isinstance(request.json, dict) else {}
        count = body.get("max_tokens") or tokens
        if count not in cache:
            cache[count] = Reply(
                headers={"content-type": "text/event-stream"},
                pieces=[Piece(event) for event in stream_body_chunks(int(count))],
            )
        return cache[count]

    async def serve() -> None:
        async with ScriptedOpenAIServer(responder=responder) as server:
            print(f"PORT {server.port}", flush=True)
            await trio.sleep_forever()

    trio.run(serve)


def _server_command(tokens: int) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--serve", "--tokens", str(tokens)]


@contextmanager
def stream_server_process(tokens: int = DEFAULT_TOKENS) -> Iterator[str]:
    """Start the benchmark server in another process (blocking API).

    Args:
        tokens: Content chunks per stream (a request's ``max_tokens`` overrides it).

    Yields:
        The server's base URL, ``http://127.0.0.1:PORT/v1``. The process is killed on exit.
    """
    with port_process(_server_command(tokens), child_env()) as url:
        yield url


@asynccontextmanager
async def open_stream_server(tokens: int = DEFAULT_TOKENS) -> AsyncIterator[str]:
    """Start the benchmark server in another process (trio API).

    Args:
        tokens: Content chunks per stream (a request's ``max_tokens`` overrides it).

    Yields:
        The server's base URL. The process is killed on exit, also on cancellation.
    """
    async with open_port_process(_server_command(tokens), child_env()) as url:
        yield url


async def consume_with_client(client: ChatCompletionsClient, request: ChatRequest) -> float:
    """Time one stream read chunk by chunk through the client.

    Args:
        client: The client (its pool is reused between calls).
        request: The request.

    Returns:
        Milliseconds from the request to the end of the stream.
    """
    start = time.perf_counter()
    async with client.stream(request) as stream:
        async for _ in stream:
            pass
    elapsed = (time.perf_counter() - start) * 1000.0
    result = stream.result()
    assert result.finish_reason == "stop"
    assert result.usage is not None
    return elapsed


async def consume_floor(http: httpx.AsyncClient, url: str, body: Mapping[str, Any]) -> float:
    """Time one stream read with bare httpx: ``aiter_lines`` and ``json.loads`` per data line.

    Args:
        http: The httpx client (its pool is reused between calls).
        url: The chat-completions URL.
        body: The JSON request body.

    Returns:
        Milliseconds from the request to ``[DONE]``.
    """
    return await floor_stream(http, url, body) * 1000.0


def _figures(samples: list[float]) -> dict[str, float]:
    return {
        "mean_ms": statistics.fmean(samples),
        "median_ms": statistics.median(samples),
        "min_ms": min(samples),
        "stdev_ms": statistics.stdev(samples) if len(samples) > 1 else 0.0,
    }


async def run(report: Report, *, tokens: int = DEFAULT_TOKENS, repeat: int = 20) -> None:
    """Run the benchmark and report its figures.

    Args:
        report: Called once per line: ``client``, ``floor`` (mean/median/min/stdev in ms) and
            ``ratio`` (client/floor of the means, the medians and the minimums; the minimum is
            the least sensitive to other load on the machine).
        tokens: Content chunks per stream.
        repeat: Measured streams per consumer (after 3 warm-up streams each).

    Cancellation: the server process is killed and the connections are closed.
    """
    async with open_stream_server(tokens) as base_url:
        request = ChatRequest(model="bench", messages=_MESSAGES)
        timeouts = Timeouts(connect=10.0, first_token=60.0, idle=60.0)
        async with (
            ChatCompletionsClient(api_key="bench", base_url=base_url, timeouts=timeouts) as client,
            httpx.AsyncClient(timeout=httpx.Timeout(60.0)) as http,
        ):
            url = f"{base_url}/chat/completions"
            body = request.to_body()
            for _ in range(3):
                await consume_with_client(client, request)
                await consume_floor(http, url, body)
            client_ms: list[float] = []
            floor_ms: list[float] = []
            for _ in range(repeat):  # interleaved, so drifts affect both alike
                client_ms.append(await consume_with_client(client, request))
                floor_ms.append(await consume_floor(http, url, body))
    client_figures = _figures(client_ms)
    floor_figures = _figures(floor_ms)
    report("client", client_figures)
    report("floor", floor_figures)
    report(
        "ratio",
        {
            "mean": client_figures["mean_ms"] / floor_figures["mean_ms"],
            "median": client_figures["median_ms"] / floor_figures["median_ms"],
            "min": client_figures["min_ms"] / floor_figures["min_ms"],
        },
    )


def _print_report(name: str, figures: Mapping[str, float]) -> None:
    shown = "  ".join(f"{key}={value:.3f}" for key, value in figures.items())
    print(f"{name:<8} {shown}", flush=True)


def main(argv: list[str] | None = None) -> None:
    """Command line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tokens", type=int, default=DEFAULT_TOKENS)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        _serve_forever(args.tokens)
        return
    print(f"stream_client: {args.tokens} tokens, {args.repeat} repetitions", flush=True)

    async def go() -> None:
        await run(_print_report, tokens=args.tokens, repeat=args.repeat)

    trio.run(go)


if __name__ == "__main__":
    main()
