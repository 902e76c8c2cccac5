"""Frame throughput and latency through 10 pass-through stages, trouper against Pipecat 1.14.

Both sides run the same work in the same process, one after the other, repetition after
repetition (trouper in ``trio.run``, Pipecat in ``asyncio.run``), and the median of the
repetitions is reported.

* trouper: ``Pipeline([PassThrough() x 10])`` run by a ``PipelineTask``; each stage accepts
  every frame and pushes it on from ``process_frame`` (user code, like a Pipecat processor).
  Frames enter with ``task.queue_frame`` and are timed by the task's ``on_downstream``
  listener, called by the task's sink edge when a frame leaves the pipeline.
* Pipecat: ``Pipeline([PassThrough() x 10, probe])`` run by a ``PipelineWorker`` and a
  ``WorkerRunner`` (see :mod:`benchmarks._pipecat`). Frames enter with
  ``worker.queue_frame``; the probe is a direct-mode processor, so it adds no queue.

Scenarios:

(a) **burst**: 20,000 frames queued back to back; throughput is frames / (last arrival - first
    injection), and µs per hop is the time per frame divided by the hops a frame makes
    (:data:`TROUPER_HOPS`, :data:`PIPECAT_HOPS`).
(b) **ping**: one frame in flight: queue a frame, wait until it reaches the end, repeat ~2,000
    times; mean, p50 and p99 of those latencies.
(c) **burst span**: the time from the burst's first push to its last frame at the sink, the
    pushes included (trouper's bounded mailboxes make the pusher wait; Pipecat's unbounded
    queues take the whole burst at once). It replaces a per-frame mean latency, which
    measured buffering (how long a frame sat in a queue), not speed.

An extra informational burst uses trouper's *runtime* pass-through (stages whose ``accepts``
is empty: frames are forwarded by the runtime without reaching user code).
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import attrs
import trio

from actors import TextFrame
from runtime import Actor, DataFrame, Frame, FrameDirection, Pipeline, PipelineTask
from runtime import logging as rlog

from . import _pipecat
from ._registry import Options, Report, Row, Target
from ._timing import timed_burst, timed_ping

__all__ = ["PIPECAT_HOPS", "STAGES", "TROUPER_HOPS", "Sample", "Settings", "run"]

#: Pass-through stages in the pipeline.
STAGES = 10
#: Hops a frame makes in trouper: the 10 actors' mailboxes. ``queue_frame`` delivers straight
#: into the first actor's mailbox (the source edge is not a hop for injected frames), and the
#: last actor hands data frames to the task's listeners itself (the sink edge is inline).
TROUPER_HOPS = STAGES
#: Hops a frame makes in Pipecat: the worker's push queue (its own task) + the 10 processors
#: (each of which passes a data frame through two queues and two tasks: input, then process).
#: The pipeline's source and sink and the probe are direct-mode (inline) and not counted.
PIPECAT_HOPS = STAGES + 1


@attrs.frozen
class Settings:
    """Sizes of one run.

    Args:
        burst: Frames in the burst.
        ping: One-in-flight round trips.
        warmup: Frames sent through each pipeline before anything is timed.
        repetitions: Fresh pipelines per framework; the median is reported.
    """

    burst: int = 20_000
    ping: int = 2_000
    warmup: int = 1_000
    repetitions: int = 5

    @classmethod
    def for_options(cls, options: Options) -> Settings:
        """Full size, or a quick smoke run."""
        if options.quick:
            return cls(burst=5_000, ping=500, warmup=500, repetitions=2)
        return cls()


@attrs.frozen
class Sample:
    """What one repetition measured on one framework (seconds unless stated)."""

    throughput: float  # frames/s
    per_frame: float
    cpu_per_frame: float
    burst_span: float
    ping_mean: float
    ping_p50: float
    ping_p99: float
    out_of_order: int
    peak_in_flight: int

    @classmethod
    def measure(
        cls,
        sent: Sequence[float],
        arrived: Sequence[float],
        out_of_order: int,
        cpu: float,
        ping: list[float],
    ) -> Sample:
        """Reduce raw burst timestamps and ping latencies to the figures."""
        n = len(sent)
        if len(arrived) != n:
            raise RuntimeError(f"{len(arrived)} of {n} burst frames arrived")
        elapsed = arrived[-1] - sent[0]
        return cls(
            throughput=n / elapsed,
            per_frame=elapsed / n,
            cpu_per_frame=cpu / n,
            burst_span=elapsed,
            ping_mean=statistics.fmean(ping),
            ping_p50=_percentile(ping, 50),
            ping_p99=_percentile(ping, 99),
            out_of_order=out_of_order,
            peak_in_flight=_peak_in_flight(sent, arrived),
        )


def _percentile(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(pct / 100 * len(ordered)) - 1))
    return ordered[k]


def _peak_in_flight(sent: Sequence[float], arrived: Sequence[float]) -> int:
    """Most frames injected but not yet arrived at any instant (frames stay in order)."""
    peak = 0
    j = 0
    for i, t in enumerate(sent):
        while j < len(arrived) and arrived[j] <= t:
            j += 1
        peak = max(peak, i + 1 - j)
    return peak


# --------------------------------------------------------------------------- trouper side


class PassThrough(Actor[Frame]):
    """Pushes every data frame on from user code (the Pipecat-equivalent stage).

    Lifecycle frames (start, end) are forwarded by the runtime: a stage must not push those
    itself, so it does not accept them.
    """

    accepts = (DataFrame,)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Forward ``frame`` unchanged."""
        await self.push_frame(frame, direction)


class SyncPassThrough(PassThrough):
    """The same stage with a synchronous handler as well (``process_frame_nowait``): a
    frame the next stage has room for passes without a coroutine; the others go through
    ``process_frame``, with waiting."""

    def process_frame_nowait(self, frame: Frame, direction: FrameDirection) -> bool:
        """Forward ``frame`` unchanged if that needs no waiting."""
        return self.push_frame_nowait(frame, direction)


class RuntimePassThrough(Actor[Frame]):
    """Accepts nothing: the runtime forwards every frame without calling user code."""

    accepts = ()


class _TrioProbe:
    """Arrival times of the benchmark frames at the task's output end, in order."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.expected: list[Frame] = []
        self.out_of_order = 0
        self.wanted = 0
        self.event = trio.Event()

    def arm(self, frames: list[Frame]) -> None:
        self.times = []
        self.expected = frames
        self.out_of_order = 0
        self.wanted = len(frames)
        self.event = trio.Event()

    def listener(self, frame: Frame, direction: FrameDirection) -> None:
        if type(frame) is not TextFrame:
            return
        times = self.times
        n = len(times)
        times.append(time.perf_counter())
        if n >= len(self.expected) or self.expected[n] is not frame:
            self.out_of_order += 1
        if n + 1 >= self.wanted:
            self.event.set()


async def _trouper_burst(
    task: PipelineTask, probe: _TrioProbe, n: int
) -> tuple[list[float], float]:
    return await timed_burst([TextFrame("x") for _ in range(n)], task.queue_frame, probe)


async def _trouper_ping(task: PipelineTask, probe: _TrioProbe, n: int) -> list[float]:
    return await timed_ping([TextFrame("x") for _ in range(n)], task.queue_frame, probe)


def trouper_sample(settings: Settings, stage: type[Actor[Frame]] = PassThrough) -> Sample:
    """One repetition on trouper: a fresh task, warm-up, burst, then ping."""

    async def main() -> Sample:
        probe = _TrioProbe()
        task = PipelineTask(
            Pipeline([stage() for _ in range(STAGES)]),
            name="bench",
            on_downstream=probe.listener,
        )
        async with task:
            await _trouper_burst(task, probe, settings.warmup)
            sent, cpu = await _trouper_burst(task, probe, settings.burst)
            arrived, out_of_order = probe.times, probe.out_of_order
            ping = await _trouper_ping(task, probe, settings.ping)
        return Sample.measure(sent, arrived, out_of_order, cpu, ping)

    return trio.run(main)


def pipecat_sample(settings: Settings) -> Sample:
    """One repetition on Pipecat: a fresh worker, warm-up, burst, then ping."""

    async def main() -> Sample:
        async with _pipecat.PipecatPipeline.open(STAGES) as pipeline:
            await pipeline.burst(settings.warmup)
            sent, arrived, out_of_order, cpu = await pipeline.burst(settings.burst)
            ping = await pipeline.ping(settings.ping)
        return Sample.measure(sent, arrived, out_of_order, cpu, ping)

    return _pipecat.run(main)


# --------------------------------------------------------------------------- report


def _median(samples: Sequence[Sample], field: Callable[[Sample], float]) -> float:
    return statistics.median(field(s) for s in samples)


def machine_info() -> dict[str, Any]:
    """CPU count, processor, Python and library versions (for the report)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "trio": trio.__version__,
        "pipecat": _pipecat.pipecat_version(),
    }


def run(options: Options) -> Report:
    """Run the frame-throughput benchmark and report trouper against Pipecat."""
    rlog.configure(level="warning")
    settings = Settings.for_options(options)
    has_pipecat = _pipecat.available()
    ours: list[Sample] = []
    runtime_fwd: list[Sample] = []
    sync: list[Sample] = []
    theirs: list[Sample] = []
    for _ in range(settings.repetitions):
        # Interleaved, so that drift on the machine hits both sides alike.
        ours.append(trouper_sample(settings))
        if has_pipecat:
            theirs.append(pipecat_sample(settings))
        runtime_fwd.append(trouper_sample(settings, RuntimePassThrough))
        sync.append(trouper_sample(settings, SyncPassThrough))

    def pc(field: Callable[[Sample], float]) -> float | None:
        return _median(theirs, field) if theirs else None

    def row(
        scenario: str,
        metric: str,
        unit: str,
        field: Callable[[Sample], float],
        scale: float,
        better: Literal["higher", "lower"],
        target: Target | None = None,
        note: str = "",
        ours_samples: Sequence[Sample] = ours,
    ) -> Row:
        theirs_value = pc(field)
        return Row(
            scenario=scenario,
            metric=metric,
            unit=unit,
            trouper=_median(ours_samples, field) * scale,
            pipecat=None if theirs_value is None else theirs_value * scale,
            better=better,
            target=target,
            note=note,
        )

    burst = f"burst {settings.burst:,}"
    ping = f"ping x{settings.ping:,}"
    rows = (
        row(
            burst,
            "throughput",
            "frames/s",
            lambda s: s.throughput,
            1.0,
            "higher",
            Target("advantage", 5),
        ),
        row(
            burst,
            "time per hop",
            "µs",
            lambda s: s.per_frame / TROUPER_HOPS,
            1e6,
            "lower",
            Target("max", 2.0),
            note=f"frame time / {TROUPER_HOPS} hops (both sides)",
        ),
        row(
            burst,
            "first push → last frame at the sink",
            "ms",
            lambda s: s.burst_span,
            1e3,
            "lower",
            note="the whole burst, pushes included (a full mailbox makes the pusher wait)",
        ),
        row(burst, "peak frames in flight", "frames", lambda s: s.peak_in_flight, 1.0, "lower"),
        row(ping, "mean latency", "µs", lambda s: s.ping_mean, 1e6, "lower"),
        row(ping, "p50 latency", "µs", lambda s: s.ping_p50, 1e6, "lower"),
        row(ping, "p99 latency", "µs", lambda s: s.ping_p99, 1e6, "lower"),
        row(
            f"{burst}, runtime fwd",
            "throughput",
            "frames/s",
            lambda s: s.throughput,
            1.0,
            "higher",
            note="trouper stages with accepts=() (no user code)",
            ours_samples=runtime_fwd,
        ),
        row(
            f"{burst}, synchronous handler",
            "throughput",
            "frames/s",
            lambda s: s.throughput,
            1.0,
            "higher",
            note="the stages also have process_frame_nowait (push_frame_nowait when there is room)",
            ours_samples=sync,
        ),
    )
    notes = [
        f"{STAGES} pass-through stages; hops per frame: trouper {TROUPER_HOPS} "
        f"(10 actor mailboxes; the task's sink is inline), Pipecat {PIPECAT_HOPS} "
        "(worker push queue + 10 processors, each with an input and a process queue)",
        f"median of {settings.repetitions} repetitions per framework, interleaved",
        "Pipecat worker in its minimal configuration (no RTVI, turn tracking, idle observer)",
    ]
    bad = sum(s.out_of_order for s in (*ours, *theirs, *runtime_fwd, *sync))
    if bad:
        notes.append(f"WARNING: {bad} frames arrived out of order")
    if not has_pipecat:
        notes.append("Pipecat is not installed: pip install 'pipecat-ai[openai]==1.14.0'")
    details = {
        "settings": attrs.asdict(settings),
        "machine": machine_info(),
        "samples": {
            "trouper": [attrs.asdict(s) for s in ours],
            "trouper_runtime_forward": [attrs.asdict(s) for s in runtime_fwd],
            "trouper_synchronous_handler": [attrs.asdict(s) for s in sync],
            "pipecat": [attrs.asdict(s) for s in theirs],
        },
    }
    return Report("frame_throughput", rows, details=details, notes=tuple(notes))
