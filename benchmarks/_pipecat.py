"""Pipecat 1.14 side of the benchmarks: a pipeline of pass-through processors, timed.

The pipeline is ``N`` pass-through ``FrameProcessor`` subclasses (each forwards every frame
it gets, the way the Pipecat docs tell processors to) followed by a *probe*: a direct-mode
processor (processed inline by the caller, so it adds no queue of its own) that records when
each benchmark frame reaches the end and forwards every other frame to the worker's sink.

It is run by a ``PipelineWorker`` (1.14's name for ``PipelineTask``) added to a
``WorkerRunner`` (formerly ``PipelineRunner``), in the *minimal* configuration: no RTVI, no
turn tracking, no idle timeout, so no observer is attached and Pipecat is measured at its
fastest. Frames enter with ``worker.queue_frame`` (the worker's push queue, then its task) as
an application would feed them.

Everything here runs on asyncio: call it through :func:`run` (``asyncio.run``), never from
trio. Pipecat is imported lazily so that the module can be imported without it.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from ._timing import timed_burst, timed_ping

__all__ = [
    "PipecatPipeline",
    "available",
    "pipecat_version",
    "quiet_logs",
    "run",
    "run_pipeline",
]

R = TypeVar("R")

_quieted = False


def available() -> bool:
    """Whether Pipecat is installed (checked without importing it)."""
    import importlib.util

    return importlib.util.find_spec("pipecat") is not None


def pipecat_version() -> str:
    """The installed ``pipecat-ai`` version (``"missing"`` when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pipecat-ai")
    except PackageNotFoundError:
        return "missing"


def quiet_logs() -> None:
    """Keep Pipecat's loguru output to warnings (its debug lines would cost time and noise)."""
    global _quieted
    if _quieted:
        return
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    _quieted = True


def run(main: Callable[[], Awaitable[R]]) -> R:
    """Run ``main()`` in a fresh asyncio event loop (Pipecat's logs quietened)."""
    quiet_logs()

    async def wrapper() -> R:
        return await main()

    return asyncio.run(wrapper())


class _Probe:
    """Arrival times of the benchmark frames at the end of the pipeline, in order."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.expected: list[Any] = []
        self.out_of_order = 0
        self.wanted = 0
        self.event = asyncio.Event()

    def arm(self, frames: list[Any], wanted: int | None = None) -> None:
        """Expect ``frames`` (in order); set :attr:`event` once ``wanted`` of them arrived."""
        self.times = []
        self.expected = frames
        self.out_of_order = 0
        self.wanted = len(frames) if wanted is None else wanted
        self.event = asyncio.Event()

    def arrived(self, frame: Any) -> None:
        times = self.times
        n = len(times)
        times.append(time.perf_counter())
        if n >= len(self.expected) or self.expected[n] is not frame:
            self.out_of_order += 1
        if n + 1 >= self.wanted:
            self.event.set()


@asynccontextmanager
async def run_pipeline(processors: list[Any]) -> AsyncIterator[Any]:
    """Run ``Pipeline(processors)`` with a ``PipelineWorker`` and a ``WorkerRunner``.

    Minimal worker configuration (no RTVI, no turn tracking, no idle timeout): Pipecat
    measured at its fastest. Yields once the ``StartFrame`` has crossed the pipeline.

    Yields:
        The running worker (``stop_when_done`` when the block is left).
    """
    quiet_logs()
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineWorker
    from pipecat.workers.runner import WorkerRunner

    worker = PipelineWorker(
        Pipeline(list(processors)),
        enable_rtvi=False,
        enable_turn_tracking=False,
        idle_timeout_secs=None,
        check_dangling_tasks=False,
        cancel_on_idle_timeout=False,
    )
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")  # type: ignore[untyped-decorator]
    async def _started(_worker: Any, _frame: Any) -> None:
        started.set()

    runner = WorkerRunner(handle_sigint=False, check_dangling_tasks=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(started.wait(), timeout=60)
        yield worker
        await worker.stop_when_done()  # type: ignore[no-untyped-call]
        await asyncio.wait_for(asyncio.shield(running), timeout=60)
    finally:
        if not running.done():
            running.cancel()
            try:
                await running
            except asyncio.CancelledError:
                pass


class PipecatPipeline:
    """A running Pipecat pipeline of ``stages`` pass-throughs and a probe at the end.

    Use :meth:`open` (an async context manager); feed frames with :meth:`queue` and wait for
    them with :meth:`wait`.
    """

    def __init__(self, worker: Any, probe: _Probe, text_frame: type[Any]) -> None:
        self._worker = worker
        self._probe = probe
        self._text_frame = text_frame

    @classmethod
    @asynccontextmanager
    async def open(cls, stages: int) -> AsyncIterator[PipecatPipeline]:
        """Build, start (``StartFrame`` through every stage) and, on exit, end the pipeline."""
        quiet_logs()
        from pipecat.frames.frames import Frame, TextFrame
        from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

        class PassThrough(FrameProcessor):
            """Forwards every frame, as a Pipecat processor that does nothing must."""

            async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
                await super().process_frame(frame, direction)
                await self.push_frame(frame, direction)

        probe = _Probe()
        downstream = FrameDirection.DOWNSTREAM

        class ProbeSink(FrameProcessor):
            """Direct-mode end: records benchmark frames, forwards the rest."""

            def __init__(self) -> None:
                super().__init__(name="ProbeSink", enable_direct_mode=True)

            async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
                await super().process_frame(frame, direction)
                if type(frame) is TextFrame and direction is downstream:
                    probe.arrived(frame)
                else:
                    await self.push_frame(frame, direction)

        processors = [PassThrough(name=f"pass{i}") for i in range(stages)]
        async with run_pipeline([*processors, ProbeSink()]) as worker:
            yield cls(worker, probe, TextFrame)

    def make_frames(self, n: int) -> list[Any]:
        """``n`` fresh Pipecat ``TextFrame`` objects (made before any timing starts)."""
        cls = self._text_frame
        return [cls(text="x") for _ in range(n)]

    async def burst(self, n: int) -> tuple[list[float], list[float], int, float]:
        """Queue ``n`` frames back to back; wait for all of them at the end.

        Returns:
            Injection times, arrival times (``time.perf_counter`` seconds, same order), how
            many frames arrived out of order (should be 0) and the process CPU time spent.
        """
        probe = self._probe
        sent, cpu = await timed_burst(self.make_frames(n), self._worker.queue_frame, probe)
        return sent, probe.times, probe.out_of_order, cpu

    async def ping(self, n: int) -> list[float]:
        """Send one frame, wait until it reaches the end, repeat ``n`` times.

        Returns:
            Each frame's latency in seconds.
        """
        return await timed_ping(self.make_frames(n), self._worker.queue_frame, self._probe)
