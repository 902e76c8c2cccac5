"""The timed loops of the frame benchmarks, shared by both frameworks.

They only ``await queue(frame)`` and ``await probe.event.wait()``, so they run the same under
trio (trouper) and asyncio (Pipecat).
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

__all__ = ["FrameProbe", "children_cpu", "timed_burst", "timed_ping"]


class FrameProbe(Protocol):
    """What the loops need of a probe at the end of the pipeline."""

    times: list[float]

    @property
    def event(self) -> Any:
        """Set once every armed frame has arrived (a trio or asyncio event)."""

    def arm(self, frames: list[Any]) -> None:
        """Expect ``frames``, in this order; forget earlier arrivals."""


async def timed_burst(
    frames: list[Any], queue: Callable[[Any], Awaitable[Any]], probe: FrameProbe
) -> tuple[list[float], float]:
    """Queue ``frames`` back to back and wait until all arrived.

    Returns:
        Each frame's injection time (``time.perf_counter``) and the process CPU time spent.
    """
    probe.arm(frames)
    sent = [0.0] * len(frames)
    clock = time.perf_counter
    gc.collect()
    cpu = time.process_time()
    for i, frame in enumerate(frames):
        sent[i] = clock()
        await queue(frame)
    await probe.event.wait()
    return sent, time.process_time() - cpu


async def timed_ping(
    frames: list[Any], queue: Callable[[Any], Awaitable[Any]], probe: FrameProbe
) -> list[float]:
    """Send one frame, wait until it reaches the end, repeat; returns each latency (s)."""
    clock = time.perf_counter
    latencies = [0.0] * len(frames)
    gc.collect()
    for i, frame in enumerate(frames):
        probe.arm([frame])
        t0 = clock()
        await queue(frame)
        await probe.event.wait()
        latencies[i] = probe.times[0] - t0
    return latencies


def children_cpu() -> float:
    """CPU seconds used so far by this process's live child processes (Linux; 0 where
    ``/proc`` is missing)."""
    total = 0
    try:
        tasks = list(Path(f"/proc/{os.getpid()}/task").iterdir())
    except OSError:
        return 0.0
    for task in tasks:
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for pid in children:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    return total / os.sysconf("SC_CLK_TCK")
