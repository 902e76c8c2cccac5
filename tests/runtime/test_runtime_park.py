"""Parking a task on a trap made once (``runtime._park``): the trap is still the one trio's run
loop knows, a wake resumes the task, a cancellation goes through the abort function."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from runtime._park import WOKEN, Trap, make_trap, park, settle, wake


def test_the_trap_is_the_one_trios_run_loop_looks_for() -> None:
    """``WaitTaskRescheduled`` is private to trio: if a trio release moves or renames it, this
    fails (and ``pyproject.toml`` pins trio below its next minor version for that reason)."""
    from trio._core import _run

    assert getattr(_run, "WaitTaskRescheduled") is Trap  # noqa: B009 (not exported)


class _Waiter:
    def __init__(self) -> None:
        self.task: trio.lowlevel.Task | None = None
        self.aborts = 0
        self.trap = make_trap(self)
        self.waits = 0

    def __call__(self, _: object) -> trio.lowlevel.Abort:
        self.aborts += 1
        self.task = None
        return trio.lowlevel.Abort.SUCCEEDED

    async def wait(self) -> None:
        self.task = trio.lowlevel.current_task()
        settle(await park(self.trap))
        self.waits += 1


async def test_the_same_trap_parks_a_task_again_and_again() -> None:
    waiter = _Waiter()
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(waiter.wait)
            await trio.testing.wait_all_tasks_blocked()
            assert waiter.task is not None
            wake(waiter.task)
            await trio.testing.wait_all_tasks_blocked()
    assert waiter.waits == 3
    assert waiter.aborts == 0


async def test_a_cancelled_wait_calls_the_abort_function_and_raises_cancelled() -> None:
    waiter = _Waiter()
    with trio.move_on_after(0.01) as scope:
        await waiter.wait()
    assert scope.cancelled_caught
    assert waiter.aborts == 1
    assert waiter.task is None
    assert waiter.waits == 0


async def test_a_wake_by_other_means_is_unwrapped() -> None:
    """A task woken with trio's own ``reschedule`` (an outcome of its own) gets what it
    carries: here an error, raised by ``settle``."""
    import outcome

    waiter = _Waiter()
    failure = outcome.Error(RuntimeError("woken with an error"))

    async def wake_with_error() -> None:
        await trio.testing.wait_all_tasks_blocked()
        assert waiter.task is not None
        trio.lowlevel.reschedule(waiter.task, failure)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wake_with_error)
        with pytest.raises(RuntimeError, match="woken with an error"):
            await waiter.wait()
    settle(WOKEN)  # the shared outcome: nothing to do, and never used up
    settle(WOKEN)
