"""Parking a task until another wakes it, without the objects trio makes for each wait.

``trio.lowlevel.wait_task_rescheduled(abort)`` makes, for every wait, a coroutine, the trap it
yields to trio's run loop (with its ``__dict__``), and the waker's
``trio.lowlevel.reschedule(task)`` an ``outcome.Value`` to send back. An actor waits once per
frame that reaches it when idle: a frame crossing three idle stages made twelve objects
just for that (more work for the allocator, and young collections that come sooner). Here
a waiter makes its trap once (:func:`make_trap`) and yields it again at each wait
(:func:`park`: one generator per wait), and its waker sends one shared outcome
(:func:`wake`), which the waiter never unwraps: only a cancellation's outcome is unwrapped
(it raises ``Cancelled``, as trio's own wait would).

The trap is trio's own ``WaitTaskRescheduled`` (the run loop knows it by its type): a
private name, which is why trio is pinned below its next minor version in
``pyproject.toml`` and why ``tests/runtime/test_runtime_park.py`` checks that it is still
the class trio's run loop looks for.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Generator
from typing import Any

import outcome
import trio
from trio._core._traps import WaitTaskRescheduled

__all__ = ["WOKEN", "Trap", "make_trap", "park", "settle", "wake"]

#: What a trap is (opaque to its users: made by :func:`make_trap`, yielded by :func:`park`).
Trap = WaitTaskRescheduled

#: The outcome every wake sends (one for the whole process: never unwrapped).
WOKEN: outcome.Value[None] = outcome.Value(None)


def make_trap(abort: Callable[[Any], trio.lowlevel.Abort]) -> Trap:
    """A trap whose waits trio cancels by calling ``abort`` (as
    ``wait_task_rescheduled``'s ``abort_func``)."""
    return WaitTaskRescheduled(abort)


@types.coroutine
def park(trap: Trap) -> Generator[Trap, outcome.Outcome[Any], outcome.Outcome[Any]]:
    """Wait until :func:`wake` (or a cancellation, through the trap's abort function);
    returns the outcome to give to :func:`settle`. The caller registers its task with its
    waker first, as for ``wait_task_rescheduled``."""
    return (yield trap)  # the outcome trio's run loop sends back


def settle(result: outcome.Outcome[Any]) -> None:
    """Finish a wait: nothing to do after a wake; raise what a cancellation (or a wake by
    other means than :func:`wake`) carries."""
    if result is not WOKEN:
        result.unwrap()


def wake(task: trio.lowlevel.Task) -> None:
    """Wake ``task``, parked in :func:`park` (``trio.lowlevel.reschedule`` with the shared
    outcome)."""
    trio.lowlevel.reschedule(task, WOKEN)
