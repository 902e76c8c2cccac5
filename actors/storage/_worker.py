"""A dedicated thread that owns one resource (the SQLite connection) and runs jobs on it in
order, so that none of that work ever runs on the trio thread.

Why one thread rather than ``trio.to_thread`` with a connection per thread: SQLite has one
writer per file anyway, so more connections in one process would only contend for its lock
(and busy-wait against each other); one thread keeps the jobs in submission order, opens,
uses and closes the connection on the same thread, and can run background work
(compaction) between jobs without a task on the loop.

The loop side only enqueues a job and waits for a :class:`trio.Event` that the thread sets
through ``TrioToken.run_sync_soon``: a handful of microseconds on the loop per job.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

import attrs
import outcome
import structlog
import trio

__all__ = ["WorkerClosedError", "WorkerThread"]

T = TypeVar("T")
R = TypeVar("R")

log = structlog.get_logger("trouper.actors.storage")


class WorkerClosedError(Exception):
    """The worker thread is stopped (or was never started): the job did not run."""


@attrs.define(eq=False)
class _Job(Generic[R, T]):
    fn: Callable[[R], T]
    event: trio.Event | None = None
    token: trio.lowlevel.TrioToken | None = None
    result: outcome.Outcome[T] | None = None


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

        Once queued, the job runs to its end even if the caller is cancelled (the wait is
        shielded), so a caller never has to guess whether a write happened. Jobs are
        expected to be bounded (the SQLite backend bounds its lock waits).

        Raises:
            WorkerClosedError: The worker is stopped or was never started.
        """
        if not self._accepting:
            raise WorkerClosedError(f"{self.name} is not running")
        job: _Job[R, T] = _Job(fn, trio.Event(), trio.lowlevel.current_trio_token())
        self._queue.put(job)  # type: ignore[arg-type]
        assert job.event is not None
        with trio.CancelScope(shield=True):
            await job.event.wait()
        assert job.result is not None
        return job.result.unwrap()

    def post(self, fn: Callable[[R], object]) -> bool:
        """Queue ``fn(resource)`` to run in the thread without waiting for it (background
        work: exceptions are logged); whether it was queued."""
        if not self._accepting:
            return False
        self._queue.put(_Job(fn))
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
        if job.event is None:
            try:
                job.fn(resource)
            except Exception as exc:
                log.warning("background storage job failed", worker=self.name, error=repr(exc))
            return
        job.result = outcome.capture(job.fn, resource)
        self._deliver(job)

    def _fail_all(self, exc: BaseException) -> None:
        """Opening failed: every job waiting (the first is the open call) gets the error;
        background jobs are dropped."""
        while (job := self._queue.get()) is not None:
            if job.event is not None:
                job.result = outcome.Error(exc)
                self._deliver(job)

    @classmethod
    def _deliver(cls, job: _Job[R, object]) -> None:
        assert job.token is not None
        assert job.event is not None
        cls._deliver_to(job.token, job.event)

    @staticmethod
    def _deliver_to(token: trio.lowlevel.TrioToken | None, event: trio.Event) -> None:
        if token is None:
            return
        try:
            token.run_sync_soon(event.set)
        except trio.RunFinishedError:
            pass  # nobody is waiting any more
