"""Concurrent sessions: N one-turn conversations at once, trouper against Pipecat 1.14.

Each session is a full conversation pipeline with its own LLM service (its own HTTP client and
connection), as a server hosting many calls would run them:

* trouper: the README's quick start, ``Pipeline([user aggregator, OpenAILLMService, output,
  assistant aggregator])`` (plus the context store the pair shares; the output is a
  ``TextTransport``'s) in its own ``PipelineTask``, default settings;
* Pipecat: ``Pipeline([user aggregator, OpenAILLMService, output, probe, assistant
  aggregator])`` in its own ``PipelineWorker`` and ``WorkerRunner`` (minimal configuration;
  the output passes frames on, the probe is direct-mode, so it adds no queue).

All sessions are started first (untimed), then every session gets an ``LLMRunFrame`` (one
after the other, as fast as the loop allows) and answers with a 50-token stream, one chunk
every 20 ms (first chunk at once, so ~1 s per turn), from the shared benchmark server process.

Measured, in a fresh worker process per framework and size (so that memory figures are not
polluted by the other framework or an earlier size):

* **turn wall time**: per session, from its ``LLMRunFrame`` push to its
  ``LLMFullResponseEndFrame`` at the end; the slowest session is the figure (median in the notes);
* **CPU**: the worker's process time (user + system) from the first push to the last end;
* **memory per session**: RSS with every session alive after its turn, minus the RSS before the
  sessions were built (after one warm-up session had run, so imports and one-time set-up are
  not counted), divided by N.

For context, the same N streams are also read by a raw httpx floor (an ``httpx.AsyncClient``
per stream, like the sessions, ``aiter_lines`` + ``json.loads``, under trio, in its own
process), and by a reference with no target, the same streams each through a relay task and
a listener task joined by the barest bounded mailboxes (``--worker stages``: the quick start's
shape with nothing of a runtime) and by a second one, the minimal actor chain (``--worker
actors``: the same links, plus an envelope per hop, a stale check and a handler and a push
coroutine per stage), and both frameworks are measured twice more at 500
sessions, with ``gc.freeze()``
called after the set-up and with ``runtime.tune_gc()`` called before it (the collector's
youngest threshold raised), which shows the share of the cyclic garbage collector in the
turn's CPU.

Sizes: 50, 200, 500 and, unless ``--quick``, 2,000. The sizes the targets apply to run three
times, interleaved, unless ``--quick``: at 500 sessions every worker, at 2,000 trouper and the
references (Pipecat's worker, which takes minutes there, once). The run of median CPU is
reported and the notes list every run's figure (single runs move by about ±10 %, and the
machine's speed drifts between runs a minute apart). Run one size by hand with
``python -m benchmarks.sessions --sessions 500`` (both frameworks), or one worker with
``python -m benchmarks.sessions --worker trouper --sessions 500 --url URL [--gc-freeze]
[--tune-gc] [--store PATH_OR_URL] [--steps]``.

The longest step of the loop (:class:`~benchmarks._steps.StepTimer`, a trio instrument called
at every step of every task) is timed only in the runs whose rows report it, the storage
rounds: the instrument costs the turn CPU (about 4 % of the floor's, more of a pipeline's), and
Pipecat's runs have nothing like it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import attrs
import httpx

from . import _pipecat
from ._registry import TIMES, Options, Report, Row, Target
from ._rigs import (
    MESSAGES,
    PIPECAT_MESSAGES,
    ActorChain,
    DequeChain,
    Recorder,
    floor_body,
    floor_stream,
    pipecat_llm,
    pipecat_pair,
    pipecat_pipeline,
    pipecat_probe,
    trouper_llm,
)
from ._server import child_env, fetch_stats, model_spec, reset_stats, server_process
from ._sides import pipecat_side, trouper_side
from ._timing import children_cpu

__all__ = ["SIZES", "WorkerResult", "run", "run_worker"]

#: Session counts measured (2,000 only without ``--quick``).
SIZES = (50, 200, 500)
FULL_SIZE = 2000
#: Size measured again with ``gc.freeze()`` after set-up.
FREEZE_SIZE = 500
#: The size the targets apply to, and how many runs of it (without ``--quick``).
TARGET_SIZE = 500
#: Issue #16's targets: turn wall (and, at 500 sessions, CPU) at most this many times the
#: httpx floor's in the same run; 2,000 sessions set up within :data:`SETUP_MAX_S`.
FLOOR_RATIO_MAX = {TARGET_SIZE: 1.15, FULL_SIZE: 1.2}
SETUP_MAX_S = 1.5
TARGET_REPEATS = 3
TOKENS = 50
SPACING_MS = 20.0
MODEL = model_spec(tokens=TOKENS, spacing_ms=SPACING_MS)


@attrs.frozen
class WorkerResult:
    """What one worker process measured (seconds, bytes)."""

    framework: str
    sessions: int
    start_s: float
    turn_max_s: float
    turn_median_s: float
    turn_all_s: float
    cpu_turn_s: float
    rss_base: int
    rss_after: int
    rss_peak: int
    stop_s: float
    gc_s: float = 0.0
    #: The conversation store the sessions wrote to ("": none).
    store: str = ""
    #: Longest step of any trio task during the turn, ms (and the same without a GC pass);
    #: 0 unless the worker ran with ``steps``.
    step_max_ms: float = 0.0
    step_max_no_gc_ms: float = 0.0
    #: The same by the loop thread's CPU time (without GC passes): what the step's code
    #: cost, without the time the OS gave the CPU to other processes.
    step_max_cpu_ms: float = 0.0
    #: Sessions whose answer did not arrive whole (an error, a timeout): the turn's times
    #: are those of the others. A framework that fails under load is reported, not dropped.
    failed: int = 0

    @property
    def kb_per_session(self) -> float:
        """RSS growth per live session, KiB."""
        return (self.rss_after - self.rss_base) / self.sessions / 1024.0


def _rss() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * 4096


class _PeakRss:
    """Samples RSS every 20 ms while :meth:`sample` runs (trio or asyncio sleep)."""

    def __init__(self) -> None:
        self.peak = _rss()
        self.running = True

    async def sample(self, sleep: Callable[[float], Awaitable[Any]]) -> None:
        while self.running:
            self.peak = max(self.peak, _rss())
            await sleep(0.02)


class _GcTimer:
    """Time spent in the cyclic garbage collector while :meth:`running` is on."""

    def __init__(self) -> None:
        self.total = 0.0
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.total += time.perf_counter() - self._started

    def __enter__(self) -> _GcTimer:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)


async def _timed_turn(
    tasks: list[Any], events: list[Any], run_frame: Callable[[], Any], *, freeze: bool
) -> tuple[list[float], float, float]:
    """The measured turn, the same for both frameworks: from a clean collector state, push a
    ``run_frame()`` into every task, wait for every event; returns the push times, the
    process CPU time and the time spent in the cyclic GC."""
    gc.collect()
    if freeze:
        gc.freeze()
    pushed = [0.0] * len(tasks)
    with _GcTimer() as gc_timer:
        c0, k0 = time.process_time(), children_cpu()
        for i, task in enumerate(tasks):
            pushed[i] = time.monotonic()
            await task.queue_frame(run_frame())
        for event in events:
            await event.wait()
        cpu = time.process_time() - c0 + children_cpu() - k0
    return pushed, cpu, gc_timer.total


# --------------------------------------------------------------------------- trouper worker


async def _trouper_worker(
    n: int, url: str, freeze: bool = False, store: str = "", steps: bool = False
) -> WorkerResult:

    from actors import LLMFullResponseEndFrame, LLMRunFrame, OpenAILLMContext
    from actors.storage import ConversationStorage, conversation_storage
    from runtime import Pipeline, PipelineTask

    from ._steps import StepTimer

    side = trouper_side()
    run_id = uuid.uuid4().hex[:8]
    storage: ConversationStorage | None = None
    built = 0
    stores: list[Any] = []

    def build(rec: Recorder) -> PipelineTask:
        nonlocal built
        built += 1
        llm = trouper_llm(url, MODEL)
        context = OpenAILLMContext(messages=list(MESSAGES))
        if storage is None:
            pair = llm.create_context_aggregator(context)
        else:
            pair = llm.create_context_aggregator(
                context, storage=storage, conversation_id=f"bench-{run_id}-{built}"
            )
            stores.append(pair.store)
        output = side.output(0.0).stages  # the README's quick start: an output stage too
        return PipelineTask(
            Pipeline([pair.user(), llm, *output, pair.assistant()]), on_downstream=rec.on_frame
        )

    async with AsyncExitStack() as storage_stack:
        if store:
            storage = await storage_stack.enter_async_context(conversation_storage(store))

        async def ready() -> None:
            # A session with a storage is ready once its store has taken its conversation
            # over (as ``trouper chat`` waits): part of the start, not of the turn.
            for opened in stores:
                await opened.wait_opened()

        return await _trouper_sessions(
            n,
            build,
            freeze,
            store,
            StepTimer(enabled=steps),
            LLMFullResponseEndFrame,
            LLMRunFrame,
            ready,
        )
    raise AssertionError("unreachable")  # pragma: no cover (mypy: the block may swallow)


async def _trouper_sessions(
    n: int,
    build: Callable[[Recorder], Any],
    freeze: bool,
    store: str,
    step_timer: Any,
    end_frame: Any,
    run_frame: Any,
    ready: Callable[[], Awaitable[None]],
) -> WorkerResult:
    import trio

    LLMFullResponseEndFrame, LLMRunFrame = end_frame, run_frame

    # Warm-up: one session, one turn (imports, lazy set-up), then the baseline.
    rec = Recorder(trio.Event)
    async with build(rec) as task:
        event = rec.arm(LLMFullResponseEndFrame, keep=False)
        await task.queue_frame(LLMRunFrame())
        await event.wait()
    del task, rec
    gc.collect()
    rss_base = _rss()

    recs = [Recorder(trio.Event) for _ in range(n)]
    t_start = time.monotonic()
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        tasks = [await stack.enter_async_context(build(r)) for r in recs]
        await ready()
        start_s = time.monotonic() - t_start
        events = [r.arm(LLMFullResponseEndFrame, keep=False) for r in recs]
        peak = _PeakRss()
        nursery.start_soon(peak.sample, trio.sleep)
        with step_timer as steps:
            pushed, cpu, gc_s = await _timed_turn(tasks, events, LLMRunFrame, freeze=freeze)
        peak.running = False
        rss_after = _rss()
        t_stop = time.monotonic()
    stop_s = time.monotonic() - t_stop
    result = _result("trouper", recs, pushed, start_s, cpu, rss_base, rss_after, peak, stop_s, gc_s)
    return attrs.evolve(
        result,
        store=store,
        step_max_ms=steps.longest * 1000,
        step_max_no_gc_ms=steps.longest_without_gc * 1000,
        step_max_cpu_ms=steps.longest_cpu * 1000,
    )


# --------------------------------------------------------------------------- Pipecat worker


async def _pipecat_worker(n: int, url: str, freeze: bool = False) -> WorkerResult:
    from pipecat.frames.frames import LLMFullResponseEndFrame, LLMRunFrame
    from pipecat.processors.aggregators.llm_context import LLMContext

    side = pipecat_side()

    def build(rec: Recorder) -> Any:
        llm = pipecat_llm(url, MODEL)
        pair = pipecat_pair(LLMContext(messages=list(PIPECAT_MESSAGES)))  # type: ignore[arg-type]
        output = side.output(0.0).stages
        return pipecat_pipeline([pair.user(), llm, *output, pipecat_probe(rec), pair.assistant()])

    rec = Recorder(asyncio.Event)
    async with build(rec) as worker:
        event = rec.arm(LLMFullResponseEndFrame, keep=False)
        await worker.queue_frame(LLMRunFrame())
        await event.wait()
    del worker, rec
    gc.collect()
    rss_base = _rss()

    recs = [Recorder(asyncio.Event) for _ in range(n)]
    t_start = time.monotonic()
    async with AsyncExitStack() as stack:
        workers = [await stack.enter_async_context(build(r)) for r in recs]
        start_s = time.monotonic() - t_start
        events = [r.arm(LLMFullResponseEndFrame, keep=False) for r in recs]
        peak = _PeakRss()
        sampler = asyncio.create_task(peak.sample(asyncio.sleep))
        pushed, cpu, gc_s = await _timed_turn(workers, events, LLMRunFrame, freeze=freeze)
        peak.running = False
        await sampler
        rss_after = _rss()
        t_stop = time.monotonic()
    stop_s = time.monotonic() - t_stop
    return _result("pipecat", recs, pushed, start_s, cpu, rss_base, rss_after, peak, stop_s, gc_s)


async def _floor_worker(n: int, url: str, steps: bool = False) -> WorkerResult:
    """The same ``n`` streams read with bare httpx (``aiter_lines`` and ``json.loads`` per
    data line): what any httpx-based stack needs at least.

    One ``httpx.AsyncClient`` per stream, made before the clock starts, as each session of
    either framework has its own: with one client shared by hundreds of concurrent streams,
    httpcore's pool spends time proportional to its number of connections on every request
    and release (measured here: 200 streams read to the end, 1.66 s of CPU shared against
    0.85 s with a client each), which would make the floor slower than it needs to be.
    """
    import trio

    from ._steps import StepTimer

    chat_url = f"{url}/chat/completions"
    body = floor_body(MODEL)
    tls = httpx.create_ssl_context()  # one CA bundle load, as trouper's services share one
    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(httpx.AsyncClient(verify=tls, timeout=120.0))
            for _ in range(n)
        ]
        await floor_stream(clients[0], chat_url, body)
        gc.collect()
        rss_base = _rss()
        walls = [0.0] * n
        ends = [0.0] * n

        async def one(i: int) -> None:
            walls[i] = await floor_stream(clients[i], chat_url, body)
            ends[i] = time.monotonic()

        peak = _PeakRss()
        c0, t0 = time.process_time(), time.monotonic()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peak.sample, trio.sleep)
            with _GcTimer() as gc_timer, StepTimer(enabled=steps) as timer:
                async with trio.open_nursery() as streams:
                    for i in range(n):
                        streams.start_soon(one, i)
                cpu = time.process_time() - c0
            peak.running = False
        rss_after = _rss()
    return WorkerResult(
        framework="floor",
        sessions=n,
        start_s=0.0,
        turn_max_s=max(walls),
        turn_median_s=statistics.median(walls),
        turn_all_s=max(ends) - t0,
        cpu_turn_s=cpu,
        rss_base=rss_base,
        rss_after=rss_after,
        rss_peak=max(peak.peak, rss_after),
        stop_s=0.0,
        gc_s=gc_timer.total,
        step_max_ms=timer.longest * 1000,
        step_max_no_gc_ms=timer.longest_without_gc * 1000,
        step_max_cpu_ms=timer.longest_cpu * 1000,
    )


async def _stages_worker(n: int, url: str, kind: str = "stages") -> WorkerResult:
    """A reference, not a floor trouper must beat: the httpx floor's ``n`` streams, each
    through a chain of the quick start's shape built with nothing of a runtime. Per session,
    a reader and two stage tasks joined by the barest bounded mailboxes (64 frames per link),
    an ``LLMTextFrame`` per text: with ``kind="stages"``, a relay and a listener
    (:class:`~benchmarks._rigs.DequeChain`); with ``kind="actors"``, the minimal actor chain
    (:class:`~benchmarks._rigs.ActorChain`: an envelope per hop, a stale check and a handler
    and a push coroutine per stage). Its start (the HTTP client and the two tasks of every
    session) and its turn are measured as trouper's are."""
    import trio
    import trio.testing

    chain_class: type[DequeChain | ActorChain] = ActorChain if kind == "actors" else DequeChain

    chat_url = f"{url}/chat/completions"
    body = floor_body(MODEL)
    tls = httpx.create_ssl_context()

    async with AsyncExitStack() as stack, trio.open_nursery() as stages:
        # Warm-up, untimed: one stream through one chain (imports, lazy set-up).
        warm = await stack.enter_async_context(httpx.AsyncClient(verify=tls, timeout=120.0))
        warm_chain = chain_class()
        warm_chain.start(stages)
        await warm_chain.feed(warm, chat_url, body)
        await warm_chain.done.wait()
        del warm_chain
        gc.collect()
        rss_base = _rss()
        t_start = time.monotonic()
        sessions: list[tuple[httpx.AsyncClient, DequeChain | ActorChain]] = []
        for _ in range(n):
            http = await stack.enter_async_context(httpx.AsyncClient(verify=tls, timeout=120.0))
            chain = chain_class()
            chain.start(stages)
            sessions.append((http, chain))
        await trio.testing.wait_all_tasks_blocked()
        start_s = time.monotonic() - t_start
        walls = [0.0] * n

        async def one(i: int) -> None:
            http, chain = sessions[i]
            t0 = time.monotonic()
            await chain.feed(http, chat_url, body)
            await chain.done.wait()
            walls[i] = time.monotonic() - t0

        peak = _PeakRss()
        c0, t0 = time.process_time(), time.monotonic()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peak.sample, trio.sleep)
            with _GcTimer() as gc_timer:
                async with trio.open_nursery() as streams:
                    for i in range(n):
                        streams.start_soon(one, i)
                cpu = time.process_time() - c0
            peak.running = False
        turn_all = time.monotonic() - t0
        rss_after = _rss()
        if any(not chain.texts for _, chain in sessions):
            raise RuntimeError(f"{kind} reference: a session received no text")
    return WorkerResult(
        framework=kind,
        sessions=n,
        start_s=start_s,
        turn_max_s=max(walls),
        turn_median_s=statistics.median(walls),
        turn_all_s=turn_all,
        cpu_turn_s=cpu,
        rss_base=rss_base,
        rss_after=rss_after,
        rss_peak=max(peak.peak, rss_after),
        stop_s=0.0,
        gc_s=gc_timer.total,
    )


def _result(
    framework: str,
    recs: list[Recorder],
    pushed: list[float],
    start_s: float,
    cpu: float,
    rss_base: int,
    rss_after: int,
    peak: _PeakRss,
    stop_s: float,
    gc_s: float,
) -> WorkerResult:
    served = [(rec, t) for rec, t in zip(recs, pushed, strict=True) if rec.count >= TOKENS + 2]
    if not served:
        least = min(rec.count for rec in recs)
        raise RuntimeError(
            f"{framework}: no session got its whole answer ({least} frames at least, "
            f"{TOKENS + 2} expected): see the worker's log above"
        )
    walls = [rec.done_at - t for rec, t in served]
    return WorkerResult(
        framework=framework,
        sessions=len(recs),
        start_s=start_s,
        turn_max_s=max(walls),
        turn_median_s=statistics.median(walls),
        turn_all_s=max(rec.done_at for rec, _ in served) - pushed[0],
        cpu_turn_s=cpu,
        rss_base=rss_base,
        rss_after=rss_after,
        rss_peak=max(peak.peak, rss_after),
        stop_s=stop_s,
        gc_s=gc_s,
        failed=len(recs) - len(served),
    )


def run_worker(
    framework: str,
    n: int,
    url: str,
    *,
    freeze: bool = False,
    store: str = "",
    steps: bool = False,
) -> WorkerResult:
    """Measure ``n`` sessions of ``framework`` (``"trouper"`` or ``"pipecat"``) in this process.

    Args:
        framework: ``"trouper"`` or ``"pipecat"``.
        n: Concurrent sessions.
        url: The benchmark server's base URL.
        freeze: ``gc.freeze()`` once the sessions are built (their objects are then never
            scanned by the cyclic garbage collector during the turn).
        store: trouper only: every session persists its conversation there (an SQLite path
            or a ``redis://`` URL; its answer is written before the turn ends).
        steps: trouper and the floor: time the loop's longest step (the instrument costs
            the turn CPU, so only the runs that report the step use it).
    """
    if framework in ("trouper", "floor", "stages", "actors"):
        import trio

        from runtime import logging as rlog

        rlog.configure(level="warning")

        async def go() -> WorkerResult:
            if framework == "floor":
                return await _floor_worker(n, url, steps)
            if framework in ("stages", "actors"):
                return await _stages_worker(n, url, framework)
            return await _trouper_worker(n, url, freeze, store, steps)

        return trio.run(go)
    return _pipecat.run(lambda: _pipecat_worker(n, url, freeze))


# --------------------------------------------------------------------------- driver


def _spawn(
    framework: str,
    n: int,
    url: str,
    *,
    freeze: bool = False,
    store: str = "",
    tune_gc: bool = False,
    steps: bool = False,
) -> WorkerResult:
    command = [sys.executable, "-m", "benchmarks.sessions", "--worker", framework]
    command += ["--sessions", str(n), "--url", url] + (["--gc-freeze"] if freeze else [])
    command += ["--tune-gc"] if tune_gc else []
    command += ["--store", store] if store else []
    command += ["--steps"] if steps else []
    done = subprocess.run(
        command, capture_output=True, text=True, env=child_env(), timeout=1800, check=False
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"{framework} worker ({n} sessions) failed ({done.returncode}):\n{done.stderr[-3000:]}"
        )
    return WorkerResult(**json.loads(lines[-1]))


def run(options: Options) -> Report:
    """Run every size for both frameworks and the httpx floor (a fresh process each), plus
    both frameworks with ``gc.freeze()`` at 500 sessions, and report."""
    sizes = SIZES if options.quick else (*SIZES, FULL_SIZE)
    frameworks = ("trouper", "pipecat") if _pipecat.available() else ("trouper",)
    results: dict[str, WorkerResult] = {}
    lateness: dict[str, float] = {}
    repeats = 1 if options.quick else TARGET_REPEATS
    runs: dict[str, list[WorkerResult]] = {}
    # Pipecat's workers that failed as a whole (the comparison is reported without them; a
    # failure of trouper's or a reference's worker fails the benchmark).
    pipecat_failures: dict[str, str] = {}
    with server_process() as url:
        plan = []
        for n in sizes:
            # The sizes with targets run several times, interleaved, and report the run of
            # median CPU: single runs move by +-10 % (mostly the collector's full
            # collections), and the machine's speed drifts between runs a minute apart.
            # At 2,000 sessions Pipecat runs once (its workers take minutes there).
            for round_ in range(repeats if n in FLOOR_RATIO_MAX else 1):
                sides = frameworks if n == TARGET_SIZE or round_ == 0 else ("trouper",)
                plan += [(f, n, "") for f in (*sides, "floor", "stages", "actors")]
        plan += [(f, FREEZE_SIZE, v) for v in ("freeze", "tuned") for f in frameworks]
        for framework, n, variant in plan:
            key = _key(framework, n, variant)
            reset_stats(url)
            try:
                worker = _spawn(
                    framework, n, url, freeze=variant == "freeze", tune_gc=variant == "tuned"
                )
            except RuntimeError as exc:
                if framework != "pipecat":
                    raise
                pipecat_failures[key] = str(exc).splitlines()[0]
                continue
            runs.setdefault(key, []).append(worker)
            lateness[key] = max(lateness.get(key, 0.0), fetch_stats(url)["late_max_ms"])
        stored = _storage_runs(url, repeats)
        # The floor's own longest step, for the storage rows' notes (timed in a run of its
        # own: the instrument would cost the floor's timed runs above CPU).
        reset_stats(url)
        floor_steps = _spawn("floor", STORAGE_SIZE, url, steps=True)
    for key, measured in runs.items():
        results[key] = sorted(measured, key=lambda r: r.cpu_turn_s)[len(measured) // 2]

    rows: list[Row] = []
    for n in sizes:
        rows += _rows(f"{n:,} sessions", n, results)
    rows += _rows(f"{FREEZE_SIZE:,} sessions, gc.freeze()", FREEZE_SIZE, results, variant="freeze")
    rows += _rows(
        f"{FREEZE_SIZE:,} sessions, runtime.tune_gc()", FREEZE_SIZE, results, variant="tuned"
    )
    backends = list(stored[0].backends) if stored else []
    for backend in backends:
        rows += _storage_rows(backend, stored, floor_steps)
    spread = {
        f: [round(r.cpu_turn_s, 2) for r in runs.get(_key(f, TARGET_SIZE), [])]
        for f in (*frameworks, "floor", "stages", "actors")
    }
    full_spread = {
        f: [round(r.turn_max_s, 2) for r in runs.get(_key(f, FULL_SIZE), [])]
        for f in ("trouper", "floor", "stages", "actors")
    }
    notes = (
        f"each session: one {TOKENS}-token turn, a chunk every {SPACING_MS:g} ms (ideal turn "
        f"≈ {(TOKENS - 1) * SPACING_MS / 1000:.2f} s); a fresh worker process per framework "
        f"and size; {TARGET_SIZE:,} sessions: "
        + (
            f"{repeats} interleaved runs per framework, the run of median CPU reported; "
            if repeats > 1
            else "one run (--quick); "
        )
        + f"{', '.join(f'{n:,}' for n in sizes if n not in FLOOR_RATIO_MAX)}: one run",
        f"CPU during the turn at {TARGET_SIZE:,} sessions, every run (s): "
        + "; ".join(f"{f} {v}" for f, v in spread.items()),
        *(
            [
                f"{FULL_SIZE:,} sessions: {repeats} interleaved runs of trouper and the "
                "references (Pipecat's once), the run of median CPU reported; slowest "
                "session's turn, every run (s): "
                + "; ".join(f"{f} {v}" for f, v in full_spread.items())
            ]
            if FULL_SIZE in sizes
            else []
        ),
        f"CPU target: Pipecat's CPU ÷ trouper's ≥ 4{TIMES} at 500 sessions",
        "httpx floor: the same streams read with bare httpx (a client per stream, like the "
        "sessions; aiter_lines + json.loads), under trio, in its own process",
        "gc.freeze(): called once the sessions are built (informational)",
        "runtime.tune_gc(): the collector's youngest threshold raised (700 -> 5,000) in the "
        "worker process before anything is built, both frameworks (informational; "
        "trouper worker does it by default)",
        *(f"Pipecat's worker failed, no figures: {why}" for why in pipecat_failures.values()),
        "server's worst chunk lateness (ms): "
        + ", ".join(f"{k} {v:.1f}" for k, v in lateness.items()),
        f"writing every turn: {STORAGE_SIZE} sessions each persisting its conversation "
        "(opened at start, untimed; the answer appended before the turn ends), against a "
        "run without storage in the same round; backends: "
        + (", ".join(backends) or "none")
        + ("" if "Redis" in backends else " (no redis-server could be started)"),
    )
    details = {
        "results": {k: attrs.asdict(r) for k, r in results.items()},
        "runs": {k: [attrs.asdict(r) for r in measured] for k, measured in runs.items()},
        "storage": [attrs.asdict(r) for r in stored],
        "server_lateness_ms": lateness,
    }
    return Report("sessions", tuple(rows), details=details, notes=notes)


#: Sessions of the "writing every turn" rows.
STORAGE_SIZE = 500


@attrs.frozen
class StoredRound:
    """One round of the "writing every turn" runs: the same sessions without storage, then
    with each backend, back to back (so that the comparison shares the machine's state)."""

    baseline: WorkerResult
    backends: dict[str, WorkerResult]


def _storage_runs(url: str, rounds: int) -> list[StoredRound]:
    """``rounds`` interleaved rounds of the trouper worker at :data:`STORAGE_SIZE`
    sessions: without storage, persisting to SQLite (a fresh file each round) and, when a
    redis-server can be started, to Redis."""
    import tempfile

    from actors.storage.testing import RedisServer, RedisServerError

    try:
        server: RedisServer | None = RedisServer.start()
    except RedisServerError:
        server = None
    out: list[StoredRound] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(rounds):
                stores = {"SQLite": f"{tmp}/sessions-{i}.db"}
                if server is not None:
                    stores["Redis"] = server.url
                reset_stats(url)
                baseline = _spawn("trouper", STORAGE_SIZE, url, steps=True)
                backends = {}
                for backend, store in stores.items():
                    reset_stats(url)
                    backends[backend] = _spawn(
                        "trouper", STORAGE_SIZE, url, store=store, steps=True
                    )
                out.append(StoredRound(baseline, backends))
    finally:
        if server is not None:
            server.stop()
    return out


def _median_round(rounds: list[StoredRound], backend: str) -> StoredRound:
    """The round whose turn wall time with ``backend`` over its own baseline is the median."""
    ordered = sorted(rounds, key=lambda r: r.backends[backend].turn_max_s / r.baseline.turn_max_s)
    return ordered[len(ordered) // 2]


def _storage_rows(backend: str, rounds: list[StoredRound], floor: WorkerResult | None) -> list[Row]:
    scenario = f"{STORAGE_SIZE:,} sessions writing every turn ({backend})"
    chosen = _median_round(rounds, backend)
    result, baseline = chosen.backends[backend], chosen.baseline
    extra = (result.turn_max_s / baseline.turn_max_s - 1) * 100
    every = ", ".join(
        f"{(r.backends[backend].turn_max_s / r.baseline.turn_max_s - 1) * 100:+.0f} %"
        for r in rounds
    )
    floor_step = (
        "" if floor is None else f"; the httpx floor's own longest step {floor.step_max_ms:.1f} ms"
    )
    return [
        Row(scenario, "turn wall time, slowest session", "s", result.turn_max_s, None, "lower",
            note=f"without storage, same round {baseline.turn_max_s:.3f} s"),
        Row(scenario, "turn wall time vs no storage", "%", extra, None, "lower",
            Target("max", 10),
            note=f"median of {len(rounds)} interleaved rounds (each: {every}); "
            f"median session {result.turn_median_s:.3f} s"),
        Row(scenario, "longest trio task step", "ms", result.step_max_ms, None, "lower",
            note=f"GC passes included (they pause the interpreter, storage or not): no "
            f"storage {baseline.step_max_ms:.2f} ms{floor_step}"),
        Row(scenario, "longest step without a GC pass", "ms", result.step_max_no_gc_ms, None,
            "lower", Target("max", 2),
            note=f"the loop's own work, storage included, wall clock; by the loop thread's "
            f"CPU {result.step_max_cpu_ms:.2f} ms; no storage "
            f"{baseline.step_max_no_gc_ms:.2f} ms"),
        Row(scenario, "CPU during the turn", "s", result.cpu_turn_s, None, "lower",
            note=f"without storage, same round {baseline.cpu_turn_s:.2f} s"),
    ]  # fmt: skip


def _key(framework: str, n: int, variant: str = "") -> str:
    return f"{framework}/{n}" + (f"/{variant}" if variant else "")


def _rows(
    scenario: str, n: int, results: dict[str, WorkerResult], *, variant: str = ""
) -> list[Row]:
    frozen = bool(variant)  # a non-default collector setting: informational rows
    ours = results[_key("trouper", n, variant)]
    theirs = results.get(_key("pipecat", n, variant))
    floor = None if frozen else results.get(_key("floor", n))
    targets = n == TARGET_SIZE and not frozen

    def pc(value: Callable[[WorkerResult], float]) -> float | None:
        return None if theirs is None else value(theirs)

    median_note = f"median session: trouper {ours.turn_median_s:.3f} s" + (
        f", Pipecat {theirs.turn_median_s:.3f} s" if theirs else ""
    )
    # The advantage a framework adding nothing to httpx would show: the most trouper's can be.
    cpu_note = (
        ""
        if theirs is None or floor is None
        else f"Pipecat's CPU ÷ the httpx floor's: {theirs.cpu_turn_s / floor.cpu_turn_s:.2f}"
        f"{TIMES}, the advantage a framework adding no CPU to httpx would show"
    )
    rows = [
        Row(scenario, "sessions that got their whole answer", "sessions",
            ours.sessions - ours.failed, pc(lambda r: r.sessions - r.failed), "higher",
            Target("min", n) if not frozen else None,
            note="a session whose answer failed (an error, a timeout) is counted here; the "
            "times below are those of the sessions that got it"),
        Row(scenario, "turn wall time, slowest session", "s", ours.turn_max_s,
            pc(lambda r: r.turn_max_s), "lower", note=median_note),
        Row(scenario, "CPU during the turn", "s", ours.cpu_turn_s, pc(lambda r: r.cpu_turn_s),
            "lower", Target("advantage", 4) if targets else None, note=cpu_note),
        Row(scenario, "of which cyclic GC", "s", ours.gc_s, pc(lambda r: r.gc_s), "lower",
            note="gc.callbacks timing"),
    ]  # fmt: skip
    if not frozen:
        rows += [
            Row(scenario, "memory per session (RSS)", "KiB", ours.kb_per_session,
                pc(lambda r: r.kb_per_session), "lower",
                Target("max", 250) if targets else None),
            Row(scenario, "start all sessions", "s", ours.start_s, pc(lambda r: r.start_s),
                "lower", Target("max", SETUP_MAX_S) if n == FULL_SIZE else None),
        ]  # fmt: skip
    if floor is not None:
        rows += [
            Row(scenario, "httpx floor: slowest stream", "s", floor.turn_max_s, None, "lower",
                note="trouper column: the floor"),
            Row(scenario, "httpx floor: CPU", "s", floor.cpu_turn_s, None, "lower",
                note="trouper column: the floor"),
            Row(scenario, "turn wall time ÷ floor's", f"{TIMES} floor",
                ours.turn_max_s / floor.turn_max_s, None, "lower",
                Target("max", FLOOR_RATIO_MAX[n]) if n in FLOOR_RATIO_MAX else None),
            Row(scenario, "CPU ÷ floor's CPU", f"{TIMES} floor", ours.cpu_turn_s / floor.cpu_turn_s,
                None, "lower", Target("max", FLOOR_RATIO_MAX[n]) if targets else None),
        ]  # fmt: skip
        stages = results.get(_key("stages", n))
        if stages is not None:
            rows += [
                Row(scenario, "bare deque stages (reference): start", "s", stages.start_s,
                    None, "lower", note="an HTTP client and two stage tasks per session"),
                Row(scenario, "bare deque stages (reference): turn ÷ floor's", f"{TIMES} floor",
                    stages.turn_max_s / floor.turn_max_s, None, "lower",
                    note="the floor's streams through 2 hops of the barest mailboxes"),
                Row(scenario, "bare deque stages (reference): CPU ÷ floor's", f"{TIMES} floor",
                    stages.cpu_turn_s / floor.cpu_turn_s, None, "lower",
                    note=f"of which cyclic GC {stages.gc_s:.2f} s (floor {floor.gc_s:.2f} s)"),
            ]  # fmt: skip
        actors = results.get(_key("actors", n))
        if actors is not None:
            rows += [
                Row(scenario, "minimal actor chain (reference): turn ÷ floor's",
                    f"{TIMES} floor", actors.turn_max_s / floor.turn_max_s, None, "lower",
                    note="the bare stages plus an envelope per hop, a stale check, a handler "
                    "and a push coroutine per stage"),
                Row(scenario, "minimal actor chain (reference): CPU ÷ floor's",
                    f"{TIMES} floor", actors.cpu_turn_s / floor.cpu_turn_s, None, "lower",
                    note=f"of which cyclic GC {actors.gc_s:.2f} s (floor {floor.gc_s:.2f} s)"),
            ]  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    """Command line: a worker (``--worker``), or one size for both frameworks."""
    parser = argparse.ArgumentParser(description="concurrent sessions benchmark")
    parser.add_argument("--worker", choices=("trouper", "pipecat", "floor", "stages", "actors"))
    parser.add_argument("--sessions", type=int, default=500)
    parser.add_argument("--url")
    parser.add_argument("--gc-freeze", action="store_true", help="gc.freeze() before the turn")
    parser.add_argument(
        "--tune-gc", action="store_true", help="runtime.tune_gc() before anything is built"
    )
    parser.add_argument("--store", default="", help="trouper: persist to this path or URL")
    parser.add_argument(
        "--steps", action="store_true", help="trouper, floor: time the loop's longest step"
    )
    args = parser.parse_args(argv)
    if args.worker:
        if args.tune_gc:
            from runtime import tune_gc

            tune_gc()
        result = run_worker(
            args.worker,
            args.sessions,
            args.url,
            freeze=args.gc_freeze,
            store=args.store,
            steps=args.steps,
        )
        print(json.dumps(attrs.asdict(result)), flush=True)
        return
    with server_process() as url:
        for framework in ("trouper", "pipecat"):
            result = _spawn(framework, args.sessions, url)
            print(json.dumps(attrs.asdict(result)), flush=True)


if __name__ == "__main__":
    main()
