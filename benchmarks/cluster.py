"""Sessions across processes (``runtime.cluster``): what crossing a process through Redis costs.

trouper alone (Pipecat has no counterpart): the rows compare the cross-process figures with
the same work in one process. A ``redis-server`` is started for the run (skipped with a note
when there is none); the sessions are a small echo stage (domain-free: the cost measured is
the cluster's, not a model's), hosted by worker processes started from this module
(``python -m benchmarks.cluster worker URL PREFIX``).

* **first output**: a frame sent to a session, until the first frame of its answer reaches
  the reader: in-process (``PipelineTask.queue_frame`` to the output listener) vs
  cross-process (``RemoteSession.send`` to ``async for``), p50 and p99; target: at most
  2 ms added at p50 on localhost;
* **interruption**: ``PipelineTask.interrupt()`` in-process vs ``RemoteSession.interrupt()``
  until the owner's acknowledgement is read, p50 and p99;
* **sessions**: N sessions (500; 100 with ``--quick``) each answering one frame with 20
  frames, all at once, on 1 and then 2 worker processes: wall time and sessions/s. The
  client process and Redis share the machine's cores with the workers;
* **conversations**: N real conversations (500 and 2,000; 100 with ``--quick``) on 1 and
  then 2 ``ConversationWorker`` processes hosting the README quick start against the fake
  OpenAI server, persisted in Redis: setup (placement), turn wall (slowest) and median,
  sessions/s, and every process's CPU time during the turn with its share (see
  :mod:`benchmarks._conversations`).

Run it alone with ``python -m benchmarks cluster [--quick]``; the machine must be quiet for
figures worth comparing.
"""

from __future__ import annotations

import math
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import trio
import trio.lowlevel

from actors.storage.testing import RedisServer, RedisServerError
from runtime import Actor, DataFrame, Frame, FrameDirection, Pipeline, PipelineTask
from runtime.cluster import ClusterClient, ClusterWorker, RemoteInterruptedFrame

from ._conversations import (
    conversation_rows,
    quiet_worker_logs,
    run_sizes,
    serve_until_sigterm,
    worker_processes,
)
from ._registry import Options, Report, Row, Target

__all__ = ["Ask", "Echo", "Piece", "factory", "run"]

MAX_ADDED_P50_MS = 2.0
#: Conversations of the conversation scenario (full run; ``--quick``).
CONVERSATIONS = (500, 2000)
CONVERSATIONS_QUICK = (100,)
ROOT = Path(__file__).resolve().parents[1]


@attrs.frozen(slots=True)
class Ask(DataFrame):
    """Ask for ``pieces`` pieces, ``delay`` seconds apart."""

    pieces: int = 1
    delay: float = 0.0


@attrs.frozen(slots=True)
class Piece(DataFrame):
    """One piece of an answer."""

    index: int


class Echo(Actor[Frame]):
    """Answers each :class:`Ask` with its pieces."""

    accepts = (Ask,)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        assert isinstance(frame, Ask)
        for index in range(frame.pieces):
            if index and frame.delay:
                await trio.sleep(frame.delay)
            await self.push_frame(Piece(index), direction)


async def factory(key: str) -> PipelineTask:
    """One echo stage per key."""
    return PipelineTask(Pipeline([Echo()]), name=f"echo-{key}")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


# --------------------------------------------------------------------------- in-process


async def _in_process(samples: int) -> tuple[list[float], list[float]]:
    """First-output and interruption latencies of one in-process session."""
    arrived = trio.Event()

    def on_output(frame: Frame, _: FrameDirection) -> None:
        if isinstance(frame, Piece):
            arrived.set()

    task = PipelineTask(Pipeline([Echo()]), on_downstream=on_output)
    first: list[float] = []
    interrupts: list[float] = []
    async with task:
        await task.wait_started()
        for _ in range(samples):
            arrived = trio.Event()
            start = time.perf_counter()
            await task.queue_frame(Ask())
            await arrived.wait()
            first.append(time.perf_counter() - start)
        for _ in range(samples):
            arrived = trio.Event()
            await task.queue_frame(Ask(pieces=1000, delay=0.001))
            await arrived.wait()
            start = time.perf_counter()
            task.interrupt()
            interrupts.append(time.perf_counter() - start)
            await trio.lowlevel.checkpoint()
    return first, interrupts


# --------------------------------------------------------------------------- processes


@contextmanager
def _workers(url: str, prefix: str, count: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    with worker_processes(
        [sys.executable, "-m", "benchmarks.cluster", "worker", url, prefix], count
    ) as procs:
        yield procs


async def _cross_process(url: str, prefix: str, samples: int) -> tuple[list[float], list[float]]:
    first: list[float] = []
    interrupts: list[float] = []
    async with (
        ClusterClient(url, prefix=prefix, check_secs=1.0) as client,
        client.open("latency") as remote,
    ):
        await remote.send(Ask())  # placed and started: not measured
        await remote.__anext__()
        for _ in range(samples):
            start = time.perf_counter()
            await remote.send(Ask())
            await remote.__anext__()
            first.append(time.perf_counter() - start)
        for _ in range(samples):
            await remote.send(Ask(pieces=1000, delay=0.001))
            await remote.__anext__()
            start = time.perf_counter()
            assert await remote.interrupt()
            interrupts.append(time.perf_counter() - start)
            async for frame in remote:  # read up to the acknowledgement
                if isinstance(frame, RemoteInterruptedFrame):
                    break
    return first, interrupts


async def _sessions(url: str, prefix: str, count: int) -> float:
    """Wall time of ``count`` sessions each answering one frame with 20 frames."""
    async with ClusterClient(url, prefix=prefix, check_secs=5.0) as client:

        async def one(key: str) -> None:
            async with client.open(key) as remote:
                await remote.send(Ask(pieces=20))
                async for frame in remote:
                    if isinstance(frame, Piece) and frame.index == 19:
                        return

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for index in range(count):
                nursery.start_soon(one, f"s{index}")
        return time.perf_counter() - start


def run(options: Options) -> Report:
    """Measure in-process vs cross-process, and N sessions and N conversations on 1 vs 2
    worker processes."""
    samples = 50 if options.quick else 300
    count = 100 if options.quick else 500
    try:
        server = RedisServer.start()
    except RedisServerError as exc:
        return Report("cluster", (), notes=(f"skipped: {exc}",))
    rows: list[Row] = []
    details: dict[str, Any] = {}
    with server:
        local_first, local_interrupt = trio.run(_in_process, samples)
        prefix = f"bench-{uuid.uuid4().hex[:8]}:"
        with _workers(server.url, prefix, 1):
            remote_first, remote_interrupt = trio.run(_cross_process, server.url, prefix, samples)
        for name, local, remote in (
            ("first output", local_first, remote_first),
            ("interruption", local_interrupt, remote_interrupt),
        ):
            local_p50, remote_p50 = statistics.median(local) * 1e3, statistics.median(remote) * 1e3
            rows += [
                Row(name, "in-process p50", "ms", local_p50, None, "lower"),
                Row(name, "in-process p99", "ms", _percentile(local, 0.99) * 1e3, None, "lower"),
                Row(name, "cross-process p50", "ms", remote_p50, None, "lower"),
                Row(
                    name, "cross-process p99", "ms", _percentile(remote, 0.99) * 1e3, None, "lower"
                ),
            ]
            if name == "first output":
                rows.append(
                    Row(
                        name,
                        "added p50",
                        "ms",
                        remote_p50 - local_p50,
                        None,
                        "lower",
                        Target("max", MAX_ADDED_P50_MS),
                    )
                )
            details[name] = {"in_process_s": local, "cross_process_s": remote}
        for workers in (1, 2):
            prefix = f"bench-{uuid.uuid4().hex[:8]}:"
            with _workers(server.url, prefix, workers):
                wall = trio.run(_sessions, server.url, prefix, count)
            scenario = f"{count} sessions, {workers} worker process(es)"
            rows += [
                Row(scenario, "wall", "s", wall, None, "lower"),
                Row(scenario, "sessions/s", "1/s", count / wall, None, "higher"),
            ]
        conversations = run_sizes(
            server.url, server.pid, CONVERSATIONS_QUICK if options.quick else CONVERSATIONS
        )
        for result in conversations:
            rows += conversation_rows(result)
        details["conversations"] = [attrs.asdict(result) for result in conversations]
    notes = (
        "trouper alone: Pipecat has no cross-process sessions; the client, Redis and the "
        "workers share the machine's cores",
        "conversations: the README quick start on ConversationWorker processes, persisted in "
        "Redis, against the fake OpenAI server (50 tokens, 20 ms apart: an ideal turn of "
        "0.98 s); every conversation placed first (setup), then sent one line at once (turn); "
        "CPU: utime+stime of each process during the turn (/proc/<pid>/stat)",
    )
    return Report("cluster", tuple(rows), details=details, notes=notes)


# --------------------------------------------------------------------------- worker entry


async def _serve_worker(url: str, prefix: str) -> None:
    await serve_until_sigterm(ClusterWorker(url, factory, prefix=prefix, lease_ttl=10.0))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "worker":
        quiet_worker_logs()
        trio.run(_serve_worker, sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: python -m benchmarks.cluster worker URL PREFIX")
