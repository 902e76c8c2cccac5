"""Test kit: run a topology, feed it frames, read what comes out; made for virtual time.

Everything here waits through trio, so tests run on pytest-trio's ``autojump_clock`` (or any
``trio.testing.MockClock``): timeouts, backoffs and slow stages take no real time, and a stuck
topology fails fast with a :class:`TimeoutError` whose message holds a session snapshot.

With ``Upper`` and ``Word`` from :class:`~runtime.Actor`'s example. One shot, all frames in,
everything out::

    from runtime.testing import run_frames

    async def test_upper(autojump_clock):
        result = await run_frames([Upper()], [Word("hi")])
        assert [f.text for f in result.of_type(Word)] == ["HI"]

Step by step, with the task running in the background::

    from runtime.testing import open_test_task

    async def test_steps(autojump_clock):
        async with open_test_task([Upper()]) as t:
            await t.push(Word("a"))
            [frame] = await t.next_frames(1)
            t.interrupt()
            assert await t.drain() == [...]

Also here: :class:`FrameCollector` (records what passes a point of a topology),
:func:`wait_idle` (every task blocked: the session has settled), :func:`capture_logs` (the
runtime's structlog events as dicts), :func:`running_tasks` and :func:`tasks_left_running` (to
check nothing is left).
"""

from __future__ import annotations

import contextlib
import logging as _stdlib_logging
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator, MutableMapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

import attrs
import structlog
import trio
import trio.testing

from ._actor import Actor
from ._errors import SessionStateError
from ._frames import (
    CancelFrame,
    EndFrame,
    ErrorFrame,
    Frame,
    FrameDirection,
    InterruptionFrame,
    StartFrame,
)
from ._params import PipelineParams
from ._pipeline import ParallelPipeline, Pipeline, Stage
from ._session import Session
from ._snapshot import SessionSnapshot
from ._supervision import collapse_exception_group
from ._task import PipelineTask
from .logging import add_actor_fields

__all__ = [
    "LIFECYCLE_FRAMES",
    "FrameCollector",
    "FramesResult",
    "TaskHarness",
    "capture_logs",
    "open_test_task",
    "run_frames",
    "running_tasks",
    "tasks_left_running",
    "wait_idle",
]

F = TypeVar("F", bound=Frame)

DOWNSTREAM = FrameDirection.DOWNSTREAM
UPSTREAM = FrameDirection.UPSTREAM

#: Frames left out of the collected output unless ``include_lifecycle=True``.
LIFECYCLE_FRAMES: tuple[type[Frame], ...] = (StartFrame, EndFrame, CancelFrame)

#: Frames the runtime forwards itself (an actor must not push them on).
_FORWARDED_BY_RUNTIME = (StartFrame, EndFrame, CancelFrame, InterruptionFrame)

#: Default bound, in trio seconds, on every wait of the kit.
DEFAULT_TIMEOUT = 30.0

FrameInput = Frame | tuple[Frame, FrameDirection]
"""A frame to feed in: alone (downstream, at the input end) or with its direction (upstream
frames enter at the output end)."""


async def wait_idle(cushion: float = 0.0) -> None:
    """Wait until every trio task is blocked: the frames in flight have been handled.

    A thin wrapper around :func:`trio.testing.wait_all_tasks_blocked` (which takes priority
    over the autojump of a ``MockClock``, so with ``autojump_clock`` it returns *before* the
    clock jumps to the next timer: tasks sleeping or waiting on a timeout count as idle).

    Args:
        cushion: Real seconds every task must have been blocked for.

    Cancellation: a plain checkpoint; cancelling it has no side effect.
    """
    await trio.testing.wait_all_tasks_blocked(cushion)


def running_tasks() -> list[trio.lowlevel.Task]:
    """Every task of the current trio run, found from the root task.

    Compare it before and after a session to check that nothing was left running::

        before = set(running_tasks())
        await task.run()
        assert set(running_tasks()) <= before

    When the session shares a longer-lived service whose own work may still be in flight as
    it ends, use :func:`tasks_left_running` instead.
    """
    tasks: list[trio.lowlevel.Task] = []
    todo = [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        if task is None:
            continue
        tasks.append(task)
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return tasks


async def tasks_left_running(
    before: set[trio.lowlevel.Task], *, settle: float = 0.5
) -> list[trio.lowlevel.Task]:
    """The tasks started since ``before`` (a set of :func:`running_tasks`) that still run
    ``settle`` seconds on; ``[]`` as soon as none is left.

    A service that outlives the session (a connection pool, a store with a background
    renewal) may have work of its own in flight when the session ends, in its own task group;
    that work ends by itself within a round trip, so it is waited for. A task the session left
    behind is still there when ``settle`` runs out::

        before = set(running_tasks())
        await task.run()
        assert await tasks_left_running(before) == []

    Args:
        before: The tasks that ran before the session.
        settle: Seconds (trio's clock) to wait for tasks that end by themselves.

    Cancellation: a plain wait; cancelling it has no side effect.
    """
    left: list[trio.lowlevel.Task] = []
    with trio.move_on_after(settle):
        while True:
            await trio.testing.wait_all_tasks_blocked()
            left = [task for task in running_tasks() if task not in before]
            if not left:
                break
            await trio.sleep(0.005)
    return left


@contextmanager
def capture_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """Capture structlog events, every level, as dicts (``event``, ``log_level``, bound keys).

    Like :func:`structlog.testing.capture_logs`, but it also lifts level filtering (the
    runtime configures ``warning`` when the application has not configured structlog), so
    ``"actor started"`` and other debug events are captured. Loggers bound before the block
    keep their level filter: open the sessions you want to observe inside it. Lines logged
    while an actor works get ``session``, ``actor`` and ``turn``
    (:func:`runtime.logging.add_actor_fields`). The previous configuration is restored
    afterwards.
    """
    was_configured = structlog.is_configured()
    config = structlog.get_config()
    processors = config["processors"]
    saved = list(processors)
    capture = structlog.testing.LogCapture()
    # Keep the list object: loggers bound while capturing hold a reference to it.
    processors[:] = [structlog.contextvars.merge_contextvars, add_actor_fields, capture]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_stdlib_logging.DEBUG),
    )
    try:
        yield capture.entries
    finally:
        processors[:] = saved
        structlog.configure(processors=processors, wrapper_class=config["wrapper_class"])
        if not was_configured:
            structlog.reset_defaults()


# --------------------------------------------------------------------------- collector


class FrameCollector(Actor[Frame]):
    """An actor that records every frame passing it, then passes it on unchanged.

    Put it anywhere in a topology to see what reaches that point. System frames and data
    frames are handled by different tasks (see the runtime's lanes), so the recorded order is
    exact within each lane, not across them.

    Args:
        name: Actor name.
        forward: Pass frames on (default); ``False`` makes it a sink that swallows data and
            system frames (lifecycle frames are always forwarded by the runtime).
        mailbox_size: Data-lane capacity.
    """

    accepts = (Frame,)

    def __init__(
        self, *, name: str | None = None, forward: bool = True, mailbox_size: int | None = None
    ) -> None:
        super().__init__(name=name, mailbox_size=mailbox_size)
        self.forward = forward
        self.frames: list[tuple[Frame, FrameDirection]] = []
        self._arrived = trio.lowlevel.ParkingLot()

    @property
    def downstream(self) -> list[Frame]:
        """Frames seen travelling downstream, in arrival order."""
        return [f for f, d in self.frames if d is DOWNSTREAM]

    @property
    def upstream(self) -> list[Frame]:
        """Frames seen travelling upstream, in arrival order."""
        return [f for f, d in self.frames if d is UPSTREAM]

    def of_type(self, cls: type[F]) -> list[F]:
        """The recorded frames of type ``cls`` (either direction)."""
        return [f for f, _ in self.frames if isinstance(f, cls)]

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Record, then forward (lifecycle frames are forwarded by the runtime)."""
        self.frames.append((frame, direction))
        self._arrived.unpark_all()
        if self.forward and not isinstance(frame, _FORWARDED_BY_RUNTIME):
            await self.push_frame(frame, direction)

    async def wait_for(
        self,
        count: int,
        cls: type[Frame] = Frame,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,  # noqa: ASYNC109
    ) -> list[Frame]:
        """Wait until at least ``count`` frames of type ``cls`` were recorded; returns them.

        Raises:
            TimeoutError: fewer arrived within ``timeout`` trio seconds (the message lists
                what did).

        Cancellation: leaves the collector unchanged.
        """
        with trio.move_on_after(_inf(timeout)):
            while len(self.of_type(cls)) < count:
                await self._arrived.park()
            return list(self.of_type(cls))
        raise TimeoutError(
            f"{self.name} saw {len(self.of_type(cls))} of the {count} {cls.__name__} frames "
            f"awaited within {timeout} s; it saw: {[f.name for f, _ in self.frames]}"
        )


# --------------------------------------------------------------------------- harness


@attrs.frozen
class FramesResult:
    """What came out of a topology run by :func:`run_frames`.

    Args:
        downstream: Frames that left the output end, in order.
        upstream: Frames that reached the input end going upstream, in order.
    """

    downstream: list[Frame]
    upstream: list[Frame]

    @property
    def errors(self) -> list[ErrorFrame]:
        """The :class:`~runtime.ErrorFrame` s among :attr:`upstream`."""
        return [f for f in self.upstream if isinstance(f, ErrorFrame)]

    def of_type(self, cls: type[F], direction: FrameDirection = DOWNSTREAM) -> list[F]:
        """The frames of type ``cls`` that came out in ``direction``."""
        frames = self.downstream if direction is DOWNSTREAM else self.upstream
        return [f for f in frames if isinstance(f, cls)]


class TaskHarness:
    """A :class:`~runtime.PipelineTask` running in the background of a test (see
    :func:`open_test_task`): push frames in, read what comes out, interrupt, end.

    Reads are incremental: :meth:`next_frames` and :meth:`drain` return frames not returned
    before; :attr:`downstream` / :attr:`upstream` keep everything.
    """

    def __init__(
        self,
        topology: Stage,
        params: PipelineParams | None,
        *,
        name: str | None,
        include_lifecycle: bool,
        timeout: float | None,
    ) -> None:
        self.include_lifecycle = include_lifecycle
        self.timeout = timeout
        self.task = PipelineTask(
            topology,
            params,
            name=name,
            on_downstream=self._on_downstream,
            on_upstream=self._on_upstream,
        )
        self.downstream: list[Frame] = []
        """Every frame that left the output end (lifecycle frames per ``include_lifecycle``)."""
        self.upstream: list[Frame] = []
        """Every frame that reached the input end going upstream."""
        self._unread: dict[FrameDirection, deque[Frame]] = {DOWNSTREAM: deque(), UPSTREAM: deque()}
        self._arrived = trio.lowlevel.ParkingLot()
        self._started = trio.Event()
        self._finished = trio.Event()
        self._ending = False

    # ----------------------------------------------------------------- listeners

    def _on_downstream(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, StartFrame):
            self._started.set()
            self._arrived.unpark_all()
        self._record(frame, DOWNSTREAM, self.downstream)

    def _on_upstream(self, frame: Frame, direction: FrameDirection) -> None:
        self._record(frame, UPSTREAM, self.upstream)

    def _record(self, frame: Frame, direction: FrameDirection, into: list[Frame]) -> None:
        if not self.include_lifecycle and isinstance(frame, LIFECYCLE_FRAMES):
            return
        into.append(frame)
        self._unread[direction].append(frame)
        self._arrived.unpark_all()

    async def _run(self) -> None:
        try:
            await self.task.run()
        finally:
            self._finished.set()
            self._arrived.unpark_all()

    # ----------------------------------------------------------------- inspection

    @property
    def session(self) -> Session:
        """The running session (graph API)."""
        return self.task.session

    def snapshot(self) -> SessionSnapshot:
        """The session's snapshot (see :meth:`~runtime.Session.snapshot`)."""
        return self.task.snapshot()

    def has_finished(self) -> bool:
        """Whether the task's ``run()`` has returned."""
        return self._finished.is_set()

    # ----------------------------------------------------------------- input

    async def push(self, *frames: Frame, direction: FrameDirection = DOWNSTREAM) -> None:
        """Queue ``frames`` in order (downstream at the input end, upstream at the output end).

        Waits while the first stage's data lane is full (backpressure).

        Cancellation: frames already queued stay queued; the rest are not sent.
        """
        for frame in frames:
            await self.task.queue_frame(frame, direction)

    def interrupt(self, reason: str | None = None) -> InterruptionFrame:
        """Interrupt the current turn (see :meth:`~runtime.PipelineTask.interrupt`)."""
        return self.task.interrupt(reason)

    def cancel(self, reason: str | None = None) -> None:
        """Cancel the task (see :meth:`~runtime.PipelineTask.cancel`); returns at once."""
        self.task.cancel(reason)

    async def end(self, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """End gracefully (an ``EndFrame`` behind the queued frames) and wait until the task
        has finished. Does nothing more when it has finished already.

        Raises:
            TimeoutError: not finished within ``timeout`` (default: the harness timeout).

        Cancellation: the ``EndFrame`` may already be queued; the task keeps running.
        """
        if not (self._finished.is_set() or self._ending or self.task.was_cancelled()):
            self._ending = True
            await self.task.end()
        await self.wait_finished(timeout=timeout)

    async def wait_finished(self, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Wait until the task's ``run()`` has returned.

        Raises:
            TimeoutError: not finished within ``timeout`` (default: the harness timeout).

        Cancellation: no side effect.
        """
        with trio.move_on_after(self._timeout(timeout)):
            await self._finished.wait()
            return
        raise TimeoutError(self._stuck("the task to finish", timeout))

    # ----------------------------------------------------------------- output

    async def next_frame(
        self,
        direction: FrameDirection = DOWNSTREAM,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Frame:
        """The next unread frame that came out in ``direction`` (waits for it).

        Raises:
            TimeoutError: none within ``timeout`` (default: the harness timeout).

        Cancellation: no frame is consumed.
        """
        [frame] = await self.next_frames(1, direction, timeout=timeout)
        return frame

    async def next_frames(
        self,
        n: int,
        direction: FrameDirection = DOWNSTREAM,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> list[Frame]:
        """The next ``n`` unread frames that came out in ``direction`` (waits for them).

        Raises:
            TimeoutError: fewer than ``n`` within ``timeout`` (default: the harness timeout);
                the message lists the frames that did come and a session snapshot.

        Cancellation: no frame is consumed.
        """
        unread = self._unread[direction]
        with trio.move_on_after(self._timeout(timeout)):
            while len(unread) < n:
                if self._finished.is_set():
                    break
                await self._arrived.park()
        if len(unread) < n:
            got = [f.name for f in unread]
            why = "the task finished" if self._finished.is_set() else "timed out"
            raise TimeoutError(
                self._stuck(f"{n} {direction.name.lower()} frames ({why}; got {got})", timeout)
            )
        return [unread.popleft() for _ in range(n)]

    async def drain(self, direction: FrameDirection = DOWNSTREAM) -> list[Frame]:
        """Wait until the session is idle (:func:`wait_idle`), then return every unread frame
        that came out in ``direction``.

        Cancellation: no frame is consumed.
        """
        await wait_idle()
        unread = self._unread[direction]
        frames = list(unread)
        unread.clear()
        return frames

    # ----------------------------------------------------------------- helpers

    def _timeout(self, timeout: float | None) -> float:
        return _inf(self.timeout if timeout is None else timeout)

    def _stuck(self, what: str, timeout: float | None) -> str:
        seconds = self.timeout if timeout is None else timeout
        try:
            snapshot: object = self.task.snapshot().as_dict()
        except Exception:
            snapshot = "(session not running)"
        return f"waited {seconds} s for {what}; snapshot: {snapshot}"


def _inf(timeout: float | None) -> float:
    return float("inf") if timeout is None else timeout


def _as_stage(topology: Stage | Sequence[Stage]) -> Stage:
    if isinstance(topology, Actor | Pipeline | ParallelPipeline):
        return topology
    return Pipeline(list(topology))


@asynccontextmanager
async def open_test_task(
    topology: Stage | Sequence[Stage],
    *,
    params: PipelineParams | None = None,
    name: str | None = None,
    include_lifecycle: bool = False,
    timeout: float | None = DEFAULT_TIMEOUT,  # noqa: ASYNC109
) -> AsyncIterator[TaskHarness]:
    """Run ``topology`` in a :class:`~runtime.PipelineTask` in the background of the block.

    The block starts once the ``StartFrame`` has crossed the topology. Leaving the block
    normally ends the task gracefully (``EndFrame``, queued frames drained) and waits for it;
    leaving it with an exception cancels the task. An actor's escalated crash is raised here
    as itself (like ``run()``), cancelling the block.

    Args:
        topology: A stage, or a list of stages (made into a ``Pipeline``).
        params: Task parameters.
        name: Session name.
        include_lifecycle: Also collect ``StartFrame``/``EndFrame``/``CancelFrame``.
        timeout: Default bound, in trio seconds, of every wait (start, reads, end);
            ``None``: wait forever.

    Raises:
        TimeoutError: the topology did not start, or end, in time (with a snapshot).

    Cancellation: cancelling the block cancels the task and waits until its session is torn
    down.
    """
    harness = TaskHarness(
        _as_stage(topology),
        params,
        name=name,
        include_lifecycle=include_lifecycle,
        timeout=timeout,
    )
    error: BaseException | None = None
    raised: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(harness._run)
            with trio.move_on_after(harness._timeout(None)):
                while not (harness._started.is_set() or harness._finished.is_set()):
                    await harness._arrived.park()
            if not (harness._started.is_set() or harness._finished.is_set()):
                harness.cancel("start timed out")
                raise TimeoutError(harness._stuck("the StartFrame to cross the topology", None))
            if not harness._finished.is_set():
                # The input held for the start is sent on before the block begins, so what the
                # test pushes next is not held behind it.
                with (
                    trio.move_on_after(harness._timeout(None)),
                    contextlib.suppress(SessionStateError),
                ):
                    await harness.task.wait_started()
            try:
                yield harness
            except BaseException as exc:
                raised = exc
                harness.cancel("test block raised")
                raise
            await harness.end()
    except BaseExceptionGroup as group:
        # A cancellation from outside goes on as the block's own Cancelled.
        error = collapse_exception_group(group, raised)
        raised = None
        if error is group:
            error = None
            raise
    if error is not None:
        try:
            raise error
        finally:  # no cycle through this frame (the traceback holds it)
            error = None


async def run_frames(
    topology: Stage | Sequence[Stage],
    frames: Iterable[FrameInput] = (),
    *,
    params: PipelineParams | None = None,
    send_end: bool = True,
    include_lifecycle: bool = False,
    timeout: float | None = DEFAULT_TIMEOUT,  # noqa: ASYNC109
) -> FramesResult:
    """Run ``topology`` with ``frames`` as input and return everything that came out.

    Args:
        topology: A stage, or a list of stages (made into a ``Pipeline``).
        frames: Input frames, in order; a ``(frame, FrameDirection.UPSTREAM)`` pair enters at
            the output end going upstream.
        params: Task parameters.
        send_end: End with an ``EndFrame`` after the frames and wait for the drain (default).
            ``False``: wait until the session is idle (:func:`wait_idle`), then cancel it.
        include_lifecycle: Also return ``StartFrame``/``EndFrame``/``CancelFrame``.
        timeout: Bound in trio seconds on each wait (start, end); ``None``: none.

    Raises:
        TimeoutError: the topology did not start or finish in time (message with snapshot).
        Exception: an actor's escalated crash, as itself.

    Cancellation: the task is cancelled and torn down; nothing is returned.
    """
    async with open_test_task(
        topology, params=params, include_lifecycle=include_lifecycle, timeout=timeout
    ) as harness:
        upstream = False
        for item in frames:
            if isinstance(item, tuple):
                await harness.push(item[0], direction=item[1])
                upstream = upstream or item[1] is UPSTREAM
            else:
                await harness.push(item)
        if upstream:
            # Upstream input travels against the EndFrame: let it arrive first.
            await wait_idle()
        if send_end:
            await harness.end()
        else:
            await wait_idle()
            harness.cancel("run_frames: idle")
            await harness.wait_finished()
    return FramesResult(list(harness.downstream), list(harness.upstream))
