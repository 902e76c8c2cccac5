"""The ``cluster`` benchmark's conversation scenario: N real conversations on 1 vs 2
:class:`~actors.cluster.ConversationWorker` processes.

Each worker process hosts the README's quick-start pipeline (user aggregator → LLM → text
output → assistant aggregator) against the benchmarks' fake OpenAI server
(:mod:`benchmarks._server`, the same answer as the ``sessions`` benchmark: 50 tokens, one
every 20 ms), every conversation persisted in the run's ``redis-server``. This process is the
client (:class:`~actors.cluster.ConversationClient`):

* **setup** (not part of the turn): every conversation is opened and sent one
  :class:`Placed` frame, which places it on the least-loaded worker, builds its session and
  comes back through the pipeline untouched; the setup time is until every one came back;
* **turn**: every conversation is sent one user line at once; each conversation's turn time
  is from that common start until its answer's ``LLMFullResponseEndFrame`` is read here
  (slowest = the turn wall; median), and sessions/s is N ÷ turn wall;
* **check** (not timed): every conversation's turn is stored in Redis, and every answer
  had its 50 text frames;
* **CPU**: the CPU time (``utime + stime`` from ``/proc/<pid>/stat``) of every process during
  the turn: fake server, redis-server, each worker, this client; in seconds and as a share
  of their total, to show who uses the machine's cores.

Every process started here is stopped by its process id on the way out (SIGTERM, then
SIGKILL after 10 s for the workers; SIGKILL for the fake server), also on an error or
Ctrl-C. A worker process is ``python -m benchmarks._conversations worker REDIS PREFIX
STORAGE_PREFIX BASE_URL``.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import trio

from runtime import DataFrame

from ._registry import Row
from ._rigs import SYSTEM_PROMPT
from ._server import model_spec, server_process_pid

__all__ = [
    "LINE",
    "MODEL",
    "Placed",
    "TurnResult",
    "conversation_rows",
    "factory",
    "quiet_worker_logs",
    "run_sizes",
    "serve_until_sigterm",
    "worker_processes",
]

ROOT = Path(__file__).resolve().parents[1]
#: The answer of every turn: the ``sessions`` benchmark's (50 tokens, 20 ms apart).
TOKENS = 50
MODEL = model_spec(tokens=TOKENS, spacing_ms=20.0)
#: The user line every conversation is sent.
LINE = "Tell me a long story."
#: Placement and storage lease of the workers (generous: the machine is loaded).
LEASE_TTL = 30.0
STOP_SECS = 10.0


@attrs.frozen(slots=True)
class Placed(DataFrame):
    """Sent to a conversation to place it without a turn: every stage passes it on, so it
    comes back to the client once the session runs."""


def factory(base_url: str, hosted: Any) -> Any:
    """The README quick start as a conversation's session, persisted in the worker's
    storage (``hosted`` is an :class:`actors.cluster.HostedConversation`)."""
    from actors import OpenAILLMContext, TextTransport
    from runtime import Pipeline, PipelineTask

    from ._rigs import trouper_llm

    llm = trouper_llm(base_url, MODEL)
    context = OpenAILLMContext(messages=[{"role": "system", "content": SYSTEM_PROMPT}])
    pair = hosted.context_aggregator(llm, context)  # persisted in the worker's storage
    stages = [pair.user(), llm, TextTransport().output(), pair.assistant()]
    return PipelineTask(Pipeline(stages), name=f"conversation-{hosted.conversation_id}")


# --------------------------------------------------------------------------- CPU


def cpu_secs(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the command: state is field 3, utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- processes


@contextmanager
def worker_processes(argv: list[str], count: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``count`` processes running ``argv`` (this checkout first on ``PYTHONPATH``), each
    announced by a ``ready`` line on its standard output; ended with SIGTERM (SIGKILL after
    :data:`STOP_SECS`) when the block is left.

    Their logs (standard error, where :func:`quiet_worker_logs` sends them) go to a temporary
    file each, never to a pipe nobody reads: a worker logging warnings under load would fill
    the pipe and block on its next line, hung, until its leases and placements expired. If
    the block fails, the last lines of each log are printed.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    with ExitStack() as files:
        logs = [files.enter_context(tempfile.TemporaryFile()) for _ in range(count)]
        procs: list[subprocess.Popen[bytes]] = []
        try:
            for log in logs:
                procs.append(
                    subprocess.Popen(
                        argv,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=log,
                        env=env,
                        cwd=str(ROOT),
                    )
                )
            for proc in procs:
                assert proc.stdout is not None
                if not proc.stdout.readline().startswith(b"ready"):
                    raise RuntimeError(f"a worker process did not start: {' '.join(argv[:4])}")
            yield procs
        except BaseException:
            for number, log in enumerate(logs, 1):
                log.seek(0)
                tail = log.read().decode(errors="replace").splitlines()[-20:]
                if tail:
                    print(
                        f"worker {number} of {count}, last log lines:",
                        *tail,
                        sep="\n  ",
                        file=sys.stderr,
                    )
            raise
        finally:
            for proc in procs:
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(STOP_SECS)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
                if proc.stdout is not None:
                    proc.stdout.close()


@contextmanager
def _workers(
    count: int, redis_url: str, prefix: str, storage_prefix: str, base_url: str
) -> Iterator[list[int]]:
    """``count`` conversation worker processes, all announced; their process ids."""
    argv = [sys.executable, "-m", "benchmarks._conversations", "worker"]
    argv += [redis_url, prefix, storage_prefix, base_url]
    with worker_processes(argv, count) as procs:
        yield [proc.pid for proc in procs]


# --------------------------------------------------------------------------- client


@attrs.frozen
class TurnResult:
    """What one run measured (seconds)."""

    sessions: int
    workers: int
    setup_s: float
    turns_s: list[float]
    text_frames: int
    cpu_s: dict[str, float]

    @property
    def wall_s(self) -> float:
        """The turn wall: the slowest conversation's turn."""
        return max(self.turns_s)


async def _check_stored(redis_url: str, storage_prefix: str, count: int) -> None:
    """Every conversation's turn is in Redis (system, user and assistant messages): waits a
    little for the last commits (not timed)."""
    from actors.storage import RedisConversationStorage

    async with RedisConversationStorage(redis_url, prefix=storage_prefix) as storage:
        missing = [f"c{index}" for index in range(count)]
        with trio.move_on_after(30):
            while missing:
                infos = [await storage.info(key) for key in missing]
                missing = [
                    key
                    for key, info in zip(missing, infos, strict=True)
                    if info is None or info.message_count < 3
                ]
                if missing:
                    await trio.sleep(0.2)
    if missing:
        raise RuntimeError(f"{len(missing)} conversations without their stored turn")


async def _drive(
    redis_url: str, prefix: str, storage_prefix: str, count: int, pids: dict[str, int]
) -> TurnResult:
    from actors import LLMFullResponseEndFrame, LLMTextFrame
    from actors.cluster import ConversationClient
    from runtime import ErrorFrame
    from runtime.cluster import OwnerLostFrame

    placed = 0
    all_placed = trio.Event()
    go = trio.Event()
    start = 0.0
    turns: list[float] = []
    texts = 0

    async with ConversationClient(redis_url, prefix=prefix, check_secs=5.0) as client:

        async def one(key: str) -> None:
            nonlocal placed, texts
            async with client.open(key) as conversation:
                await conversation.send(Placed())
                async for frame in conversation:
                    if isinstance(frame, Placed):
                        break
                placed += 1
                if placed == count:
                    all_placed.set()
                await go.wait()
                await conversation.send_text(LINE)
                async for frame in conversation:
                    if type(frame) is LLMTextFrame:
                        texts += 1
                    elif isinstance(frame, LLMFullResponseEndFrame):
                        turns.append(time.perf_counter() - start)
                        return
                    elif isinstance(frame, ErrorFrame | OwnerLostFrame):
                        raise RuntimeError(f"conversation {key}: {frame!r}")

        async with trio.open_nursery() as nursery:
            begun = time.perf_counter()
            for index in range(count):
                nursery.start_soon(one, f"c{index}")
            await all_placed.wait()
            setup_s = time.perf_counter() - begun
            before = {name: cpu_secs(pid) for name, pid in pids.items()}
            start = time.perf_counter()
            go.set()
        after = {name: cpu_secs(pid) for name, pid in pids.items()}
    await _check_stored(redis_url, storage_prefix, count)
    cpu = {name: after[name] - before[name] for name in pids}
    workers = sum(1 for name in pids if name.startswith("worker"))
    return TurnResult(count, workers, setup_s, turns, texts, cpu)


def run_sizes(redis_url: str, redis_pid: int, sizes: tuple[int, ...]) -> list[TurnResult]:
    """Every size on 1 and then 2 worker processes, with a fake server for the run."""
    results: list[TurnResult] = []
    with server_process_pid() as (base_url, server_pid):
        for count in sizes:
            for workers in (1, 2):
                run = uuid.uuid4().hex[:8]
                prefix, storage_prefix = f"bench-conv-{run}:", f"bench-store-{run}:"
                with _workers(workers, redis_url, prefix, storage_prefix, base_url) as worker_pids:
                    pids = {"fake server": server_pid, "redis-server": redis_pid}
                    pids |= {f"worker {i + 1}": pid for i, pid in enumerate(worker_pids)}
                    pids["client"] = os.getpid()
                    result = trio.run(_drive, redis_url, prefix, storage_prefix, count, pids)
                if result.text_frames != count * TOKENS:
                    raise RuntimeError(
                        f"{result.text_frames} text frames read for {count} answers of {TOKENS}"
                    )
                results.append(result)
    return results


def conversation_rows(result: TurnResult) -> list[Row]:
    """The rows of one run."""
    scenario = f"{result.sessions:,} conversations, {result.workers} worker process(es)"
    rows = [
        Row(scenario, "setup (placement)", "s", result.setup_s, None, "lower"),
        Row(scenario, "turn wall (slowest)", "s", result.wall_s, None, "lower"),
        Row(scenario, "turn median", "s", statistics.median(result.turns_s), None, "lower"),
        Row(scenario, "sessions/s", "1/s", result.sessions / result.wall_s, None, "higher"),
    ]
    total = sum(result.cpu_s.values())
    rows.append(Row(scenario, "CPU during the turn, all", "s", total, None, "lower"))
    for name, secs in result.cpu_s.items():
        rows.append(Row(scenario, f"CPU {name}", "s", secs, None, "lower"))
        share = 100.0 * secs / total if total else 0.0
        rows.append(Row(scenario, f"CPU share {name}", "%", share, None, "lower"))
    return rows


# --------------------------------------------------------------------------- worker entry


async def _serve_worker(redis_url: str, prefix: str, storage_prefix: str, base_url: str) -> None:
    from actors.cluster import ConversationWorker

    worker = ConversationWorker(
        redis_url,
        partial(factory, base_url),
        prefix=prefix,
        storage_prefix=storage_prefix,
        lease_ttl=LEASE_TTL,
        stop_timeout_secs=STOP_SECS / 2,
    )
    await serve_until_sigterm(worker)


async def serve_until_sigterm(worker: Any) -> None:
    """Run a worker process's cluster ``worker`` (its ``run`` and ``stop``), print ``ready``
    once it runs, and stop it on SIGTERM (how the benchmark ends its worker processes)."""
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            print("ready", flush=True)
            async for _ in signals:
                worker.stop()
                break


def quiet_worker_logs() -> None:
    """A worker process logs warnings and above only (its info lines would be measured), to
    its standard error (its standard output carries the ``ready`` line to the benchmark)."""
    import structlog

    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(30),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "worker":
        quiet_worker_logs()
        trio.run(_serve_worker, sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5])
    else:
        sys.exit("usage: python -m benchmarks._conversations worker REDIS PREFIX STORAGE BASE_URL")
