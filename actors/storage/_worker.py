"""A dedicated thread that owns one resource (the SQLite connection) and runs jobs on it in
order, so that none of that work ever runs on the trio thread.

Why one thread rather than ``trio.to_thread`` with a connection per thread: SQLite has one
writer per file anyway, so more connections in one process would only contend for its lock
(and busy-wait against each other); one thread keeps the jobs in submission order, opens,
uses and closes the connection on the same thread, and can run background work
(compaction) between jobs without a task on the loop.

The loop side only enqueues a job and parks its task; the thread wakes it through
``TrioToken.run_sync_soon`` with the job's outcome: a handful of microseconds on the loop
per job. :class:`Batcher` groups the calls made while the thread is busy into one job (one
hand-off to the thread and one wake-up of the loop for the whole group), which is how the
SQLite backend commits many appends in one transaction.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import attrs
import outcome
import structlog
import trio

__all__ = ["Batcher", "WorkerClosedError", "WorkerThread"]

T = TypeVar("T")
R = TypeVar("R")
I = TypeVar("I")  # noqa: E741

log = structlog.get_logger("trouper.actors.storage")


class WorkerClosedError(Exception):
    """The worker thread is stopped (or was never started): the job did not run."""


@attrs.define(eq=False, slots=True)
class _Job(Generic[R, T]):
    fn: Callable[[R], T]
    #: The task waiting for the result (``None``: background work).
    task: trio.lowlevel.Task | None = None
    token: trio.lowlevel.TrioToken | None = None
    #: Background work only: called with the error if the job is dropped unrun.
    on_drop: Callable[[BaseException], None] | None = None


def _cannot_abort(_: object) -> trio.lowlevel.Abort:
    """A queued job runs to its end: its caller waits for it even when cancelled."""
    return trio.lowlevel.Abort.FAILED


def _wake(tasks: Sequence[trio.lowlevel.Task], results: Sequence[outcome.Outcome[object]]) -> None:
    """On the loop: wake every waiting task with its result (one callback per job or batch)."""
    for task, result in zip(tasks, results, strict=True):
        trio.lowlevel.reschedule(task, result)


class WorkerThread(Generic[R]):
    """One thread, one resource: :meth:`call` runs a function on the resource in the thread
    and waits for its result without blocking the loop.

    Args:
        name: The thread's name.
        open_resource: Called in the thread when it starts; its exception, if any, is raised
            by :meth:`start`.
        close_resource: Called in the thread when it stops.
    """

    def __init__(
        self,
        name: str,
        open_resource: Callable[[], R],
        close_resource: Callable[[R], None],
    ) -> None:
        self.name = name
        self._open = open_resource
        self._close = close_resource
        self._queue: queue.SimpleQueue[_Job[R, object] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._accepting = False
        self._resource: R | None = None
        self._stopped = trio.Event()
        self._token: trio.lowlevel.TrioToken | None = None

    @property
    def running(self) -> bool:
        """Whether jobs are accepted."""
        return self._accepting

    async def start(self) -> None:
        """Start the thread and open the resource in it.

        Raises:
            Exception: Whatever opening the resource raised (the thread is then stopped).
        """
        if self._thread is not None:
            raise RuntimeError(f"{self.name} was started already")
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
        self._accepting = True
        self._thread.start()
        try:
            await self.call(self._opened)
        except BaseException:
            await self.stop()
            raise

    def _opened(self, resource: R) -> None:
        """The first job: nothing to do, opening happened before it."""

    async def call(self, fn: Callable[[R], T]) -> T:
        """Run ``fn(resource)`` in the thread after the jobs queued before it; its result or
        its exception.

        Once queued, the job runs to its end even if the caller is cancelled (the caller
        waits for it, and sees the cancellation at its next checkpoint), so a caller never
        has to guess whether a write happened. Jobs are
        expected to be bounded (the SQLite backend bounds its lock waits).

        Raises:
            WorkerClosedError: The worker is stopped or was never started.
        """
        if not self._accepting:
            raise WorkerClosedError(f"{self.name} is not running")
        assert self._token is not None
        job: _Job[R, T] = _Job(fn, trio.lowlevel.current_task(), self._token)
        self._queue.put(job)  # type: ignore[arg-type]
        result: T = await trio.lowlevel.wait_task_rescheduled(_cannot_abort)
        return result

    def post(
        self,
        fn: Callable[[R], object],
        on_drop: Callable[[BaseException], None] | None = None,
    ) -> bool:
        """Queue ``fn(resource)`` to run in the thread without waiting for it (background
        work: exceptions are logged); whether it was queued. ``on_drop(error)`` is called
        instead if the resource could not be opened."""
        if not self._accepting:
            return False
        self._queue.put(_Job(fn, on_drop=on_drop))
        return True

    async def stop(self) -> None:
        """Run the jobs already queued, close the resource and end the thread. Idempotent."""
        if self._thread is None:
            return
        if self._accepting:
            self._accepting = False
            self._queue.put(None)
        with trio.CancelScope(shield=True):
            await self._stopped.wait()

    def _main(self) -> None:
        try:
            try:
                resource = self._open()
            except BaseException as exc:
                self._fail_all(exc)
                return
            try:
                while (job := self._queue.get()) is not None:
                    self._run(job, resource)
            finally:
                try:
                    self._close(resource)
                except Exception as exc:
                    log.warning("closing the storage failed", worker=self.name, error=repr(exc))
        finally:
            self._deliver_to(self._token, self._stopped)

    def _run(self, job: _Job[R, object], resource: R) -> None:
        if job.task is None:
            try:
                job.fn(resource)
            except Exception as exc:
                log.warning("background storage job failed", worker=self.name, error=repr(exc))
            return
        self._deliver(job, outcome.capture(job.fn, resource))

    def _fail_all(self, exc: BaseException) -> None:
        """Opening failed: every job waiting (the first is the open call) gets the error;
        background jobs are dropped."""
        while (job := self._queue.get()) is not None:
            if job.task is not None:
                self._deliver(job, outcome.Error(exc))
            elif job.on_drop is not None:
                job.on_drop(exc)

    @staticmethod
    def _deliver(job: _Job[R, object], result: outcome.Outcome[object]) -> None:
        assert job.token is not None
        assert job.task is not None
        try:
            job.token.run_sync_soon(trio.lowlevel.reschedule, job.task, result)
        except trio.RunFinishedError:
            pass  # nobody is waiting any more

    @staticmethod
    def _deliver_to(token: trio.lowlevel.TrioToken | None, event: trio.Event) -> None:
        if token is None:
            return
        try:
            token.run_sync_soon(event.set)
        except trio.RunFinishedError:
            pass  # nobody is waiting any more


class Batcher(Generic[R, I, T]):
    """Runs the calls made while the worker is busy as one job: group commit.

    The first :meth:`call` queues one job at once (nothing waits for a tick); every call
    made before the thread picks that job up joins it. The thread runs ``run(resource,
    items)`` on all of them and wakes all their callers with one ``run_sync_soon``, so a
    group of any size costs one hand-off to the thread and one wake-up of the loop. Calls
    keep their order, and each gets its own answer.

    Args:
        worker: The worker thread (started before the first call).
        run: Called in the thread with the items, in call order; returns one outcome per
            item, in the same order.
    """

    def __init__(
        self,
        worker: WorkerThread[R],
        run: Callable[[R, list[I]], Sequence[outcome.Outcome[T]]],
    ) -> None:
        self._worker = worker
        self._run_items = run
        self._lock = threading.Lock()
        self._items: list[I] = []
        self._tasks: list[trio.lowlevel.Task] = []
        self._queued = False

    async def call(self, item: I) -> T:
        """Run ``item`` with the others queued meanwhile; its own result or exception. Once
        queued it runs to its end even if the caller is cancelled.

        Raises:
            WorkerClosedError: The worker is stopped or was never started.
        """
        if not self._worker.running:
            raise WorkerClosedError(f"{self._worker.name} is not running")
        with self._lock:
            self._items.append(item)
            self._tasks.append(trio.lowlevel.current_task())
            post, self._queued = not self._queued, True
        if post:
            self._worker.post(self._drain, self._drop)
        result: T = await trio.lowlevel.wait_task_rescheduled(_cannot_abort)
        return result

    def _take(self) -> tuple[list[I], list[trio.lowlevel.Task]]:
        with self._lock:
            items, tasks = self._items, self._tasks
            self._items, self._tasks, self._queued = [], [], False
        return items, tasks

    def _drain(self, resource: R) -> None:
        """In the thread: run every item queued so far, answer them all at once."""
        items, tasks = self._take()
        if not items:
            return
        try:
            results = list(self._run_items(resource, items))
            if len(results) != len(items):
                raise RuntimeError(f"{len(results)} results for {len(items)} calls")
        except BaseException as exc:  # a bug: every caller gets it rather than hanging
            results = [outcome.Error(exc) for _ in items]
        self._answer(tasks, results)

    def _drop(self, error: BaseException) -> None:
        items, tasks = self._take()
        self._answer(tasks, [outcome.Error(error) for _ in items])

    def _answer(
        self, tasks: list[trio.lowlevel.Task], results: Sequence[outcome.Outcome[object]]
    ) -> None:
        token = self._worker._token
        if token is None or not tasks:
            return
        try:
            token.run_sync_soon(_wake, tasks, results)
        except trio.RunFinishedError:
            pass  # nobody is waiting any more
