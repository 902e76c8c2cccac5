"""The longest step of the trio loop while a benchmark runs: :class:`StepTimer`.

A module of its own, importing only trio: the sessions workers use it, and importing it
from the storage benchmark would put that benchmark's imports (the Redis client) on the
measured process's heap, which every full pass of the garbage collector scans.
"""

from __future__ import annotations

import gc
import time

import trio

__all__ = ["StepTimer"]


class StepTimer(trio.abc.Instrument):
    """The longest single step of any trio task while installed, split by whether Python's
    cyclic garbage collector ran during the step (a pause of the whole interpreter, whatever
    the code; its own longest pass is kept too), and the longest step by the loop thread's
    CPU time (``longest_cpu``, GC passes excluded): the wall-clock figures include the time
    the OS took the CPU away from the loop thread, which a shared machine does often; the
    CPU figure is what the step's code itself cost.

    The instrument runs at every step of every task, so it costs the measured process CPU:
    about 4 % of the httpx floor's 500-session turn and more of a pipeline's, which takes more
    steps. The benchmarks therefore time their CPU and wall-clock rows without it, and install
    it only in the runs that report the longest step (with ``enabled=False`` it installs
    nothing and its figures stay zero).

    Args:
        enabled: Whether entering it installs the instrument.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.longest = 0.0
        self.longest_without_gc = 0.0
        self.longest_cpu = 0.0
        self.longest_gc = 0.0
        self._started = 0.0
        self._cpu_started = 0.0
        self._gc_started = 0.0
        self._gc_in_step = False

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        """Note the step's start."""
        self._started = time.perf_counter()
        self._cpu_started = time.thread_time()
        self._gc_in_step = False

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        """Keep the longest step (of the steps that started while installed)."""
        if self._started:
            step = time.perf_counter() - self._started
            self.longest = max(self.longest, step)
            if not self._gc_in_step:
                self.longest_without_gc = max(self.longest_without_gc, step)
                cpu = time.thread_time() - self._cpu_started
                self.longest_cpu = max(self.longest_cpu, cpu)
            self._started = 0.0

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
            self._gc_in_step = True
        elif self._gc_started:
            self.longest_gc = max(self.longest_gc, time.perf_counter() - self._gc_started)

    def __enter__(self) -> StepTimer:
        if self.enabled:
            trio.lowlevel.add_instrument(self)
            gc.callbacks.append(self._on_gc)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            gc.callbacks.remove(self._on_gc)
            trio.lowlevel.remove_instrument(self)
