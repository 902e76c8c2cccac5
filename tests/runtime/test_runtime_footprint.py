"""What an idle actor keeps alive for the cyclic garbage collector to scan.

A server holds thousands of sessions of a handful of actors each; every object they keep is
scanned by each full collection (the longest pause of the loop with 500 sessions, see
docs/benchmarks.md, "Objects per session"). Most of an actor's objects are trio's own (its
task, the cancel scope of its handler, the wait of its data loop; no nursery); the runtime
adds its cell, mailbox, lifecycle and links, and keeps nothing per actor that it can share or
make on first use (bound methods, caches, empty queues and sets).
"""

from __future__ import annotations

import gc

import trio.testing

from runtime import Actor, Pipeline, PipelineTask

#: Objects tracked by the collector per idle pass-through actor (23 with trio 0.3x: 33 while
#: each actor had a nursery of its own and a supervisor coroutine around its loops; 42 before
#: the runtime stopped keeping bound methods, per-actor caches and empty queues).
MAX_OBJECTS_PER_ACTOR = 25


async def _tracked_objects_with(actors: int) -> int:
    async with PipelineTask(Pipeline([Actor() for _ in range(actors)])):
        await trio.testing.wait_all_tasks_blocked()
        gc.collect()
        return len(gc.get_objects())


async def test_an_idle_actor_keeps_few_objects_for_the_collector() -> None:
    """The difference between two pipelines of 10 and 40 started, idle actors, per actor:
    the cost of one more actor, whatever the rest of the process holds."""
    await _tracked_objects_with(2)  # one-time set-up (caches, interned names) out of the way
    small = await _tracked_objects_with(10)
    large = await _tracked_objects_with(40)
    per_actor = (large - small) / 30
    assert per_actor <= MAX_OBJECTS_PER_ACTOR, (
        f"an idle actor keeps {per_actor:.1f} objects tracked by the garbage collector "
        f"(at most {MAX_OBJECTS_PER_ACTOR}): what it keeps per actor may be shared or made "
        "on first use"
    )


class _Spawns(trio.abc.Instrument):
    """Counts the tasks started while it is installed."""

    def __init__(self) -> None:
        self.count = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.count += 1


async def _tasks_started_by_a_session_of(actors: int) -> int:
    spawns = _Spawns()
    trio.lowlevel.add_instrument(spawns)
    try:
        async with PipelineTask(Pipeline([Actor() for _ in range(actors)])) as task:
            await task.wait_started()
            await trio.testing.wait_all_tasks_blocked()
            started = spawns.count
    finally:
        trio.lowlevel.remove_instrument(spawns)
    return started


async def test_starting_a_session_starts_one_task_per_actor() -> None:
    """A session starts a task per actor (its data loop) and the task's own run, and a short
    one at each of the task's two ends for the StartFrame; nothing more (before, every actor
    started and ended a task for its StartFrame, the task's waits raced two events in a
    nursery of their own, and the ends had a task each): setting up thousands of sessions is
    mostly this."""
    small = await _tasks_started_by_a_session_of(2)
    large = await _tasks_started_by_a_session_of(12)
    assert large - small == 10, f"{large - small} tasks started for 10 more actors"
    # The 2 actors, the task's run, and a short one at each of the task's two ends for the
    # StartFrame (they have no task of their own).
    assert small == 5, f"a session of 2 actors started {small} tasks"
