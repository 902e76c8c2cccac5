"""Embedding in asyncio applications: :class:`AsyncioBridge` runs trio as a *guest* on the
running asyncio loop (``trio.lowlevel.start_guest_run``), in the same thread.

trio code (sessions, pipeline tasks, actors) runs in the guest; asyncio code starts it and
waits for its results with :meth:`AsyncioBridge.run`. The way back is :func:`asyncio_call`:
trio code awaits an asyncio coroutine function, which runs as a task on the host loop. Both
sides share one thread, so a frame listener running in trio may hand frames to asyncio
objects directly (``asyncio.Queue.put_nowait``, ``Future.set_result``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar

import attrs
import outcome
import structlog
import trio

from ._errors import SessionStateError

__all__ = ["AsyncioBridge", "asyncio_call"]

T = TypeVar("T")

_logger = structlog.get_logger("trouper.runtime")


class _ThreadBridge(threading.local):
    """The bridge open in this thread (trio runs at most once per thread, so one at most)."""

    bridge: AsyncioBridge | None = None


_open_bridge = _ThreadBridge()


@attrs.define(eq=False)
class AsyncioBridge:
    """Runs trouper (trio) inside an asyncio application, on the same loop and thread.

    Use it as an async context manager in asyncio code; inside the block, await
    :meth:`run` to run any trio coroutine function (``task.run``, ``task.queue_frame``,
    ``task.end``, your own) and get its result, and :meth:`run_sync` for trio's synchronous
    calls (``task.interrupt()``, ``task.cancel()``)::

        async def main() -> None:  # an asyncio application
            results: asyncio.Queue[Frame] = asyncio.Queue()

            def on_frame(frame: Frame, direction: FrameDirection) -> None:  # runs in trio
                if isinstance(frame, Resized):  # a DataFrame subclass of the application
                    results.put_nowait(frame)

            async with AsyncioBridge() as trio_side:
                task = PipelineTask(Pipeline([...]), on_downstream=on_frame)
                running = asyncio.create_task(trio_side.run(task.run))
                await trio_side.run(task.queue_frame, ResizeRequest("photo.png"))
                print(await results.get())
                await trio_side.run(task.end)
                await running

        asyncio.run(main())

    The other way, trio code awaits asyncio code with :func:`asyncio_call`, which runs it as a
    task on this loop.

    Cancelling the asyncio task that awaits :meth:`run` cancels the trio call (its handlers
    see ``trio.Cancelled`` and unwind), unless it was made with ``shield=True``. A
    :meth:`run_sync` call cannot be taken back: once made, it runs even if its caller is
    cancelled, so ``await bridge.run_sync(task.interrupt)`` in the ``finally`` block of a
    cancelled request still interrupts. Leaving the block cancels whatever trio work is still
    running, waits until the guest run has finished, and raises an error of the guest run
    itself (not of a :meth:`run` call, whose errors go to its caller).

    One bridge at a time per thread: trio runs at most once per thread.
    """

    _loop: asyncio.AbstractEventLoop | None = attrs.field(default=None, init=False)
    _trio_token: trio.lowlevel.TrioToken | None = attrs.field(default=None, init=False)
    _nursery: trio.Nursery | None = attrs.field(default=None, init=False)
    _done: asyncio.Future[outcome.Outcome[None]] | None = attrs.field(default=None, init=False)
    _closing: bool = attrs.field(default=False, init=False)

    @classmethod
    def current(cls) -> AsyncioBridge | None:
        """The bridge whose guest run is running in this thread, or ``None`` (trio runs on its
        own with ``trio.run``, or no trio runs here). Callable from both sides."""
        bridge = _open_bridge.bridge
        if bridge is None or bridge._done is None or bridge._done.done():
            return None
        return bridge

    async def __aenter__(self) -> AsyncioBridge:
        if self._loop is not None:
            raise SessionStateError("this AsyncioBridge was already entered; make a new one")
        loop = asyncio.get_running_loop()
        self._loop = loop
        ready: asyncio.Future[None] = loop.create_future()
        done: asyncio.Future[outcome.Outcome[None]] = loop.create_future()
        self._done = done

        async def guest_main() -> None:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._trio_token = trio.lowlevel.current_trio_token()
                ready.set_result(None)
                if not self._closing:  # the entering task may have been cancelled meanwhile
                    await trio.sleep_forever()

        def finished(result: outcome.Outcome[None]) -> None:
            if _open_bridge.bridge is self:
                _open_bridge.bridge = None
            if not done.done():
                done.set_result(result)

        try:
            trio.lowlevel.start_guest_run(
                guest_main,
                run_sync_soon_threadsafe=loop.call_soon_threadsafe,
                run_sync_soon_not_threadsafe=loop.call_soon,
                done_callback=finished,
                # asyncio may own the signal wakeup fd (loop.add_signal_handler): leave it be.
                host_uses_signal_set_wakeup_fd=True,
            )
        except RuntimeError as exc:
            raise SessionStateError(
                "cannot start trio inside this asyncio loop: trio is already running in this "
                f"thread (one AsyncioBridge at a time per thread): {exc}"
            ) from exc
        _open_bridge.bridge = self
        try:
            await asyncio.wait((ready, done), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # cancelled while entering: the guest must not outlive us
            await self._close()
            raise
        if not ready.done():  # the guest ended before it was ready: report why
            done.result().unwrap()
            raise SessionStateError("the trio guest run ended before it started")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        result = await self._close()
        result.unwrap()

    async def _close(self) -> outcome.Outcome[None]:
        """Cancel the guest's work and wait until the guest run has finished."""
        done = self._done
        assert done is not None
        self._closing = True
        trio_token, nursery = self._trio_token, self._nursery
        if not done.done() and trio_token is not None and nursery is not None:
            trio_token.run_sync_soon(nursery.cancel_scope.cancel)
        # The guest must finish before the loop may go on without it: wait even when the
        # caller was cancelled.
        return await asyncio.shield(done)

    # ----------------------------------------------------------------- asyncio -> trio

    async def run(
        self, async_fn: Callable[..., Awaitable[T]], *args: Any, shield: bool = False
    ) -> T:
        """Run ``async_fn(*args)`` in trio and return its result (or raise its error) here.

        Args:
            async_fn: A trio coroutine function.
            args: Its positional arguments.
            shield: Run the call to its end even if the awaiting asyncio task is cancelled
                (that task still gets its ``CancelledError`` at once). For calls that must
                complete, such as ``task.end`` in a ``finally`` block; leaving the bridge's
                block still cancels them.

        Raises:
            SessionStateError: The bridge is not open, or it closed while the call ran.
        """
        loop, trio_token, nursery = self._open()
        result: asyncio.Future[T] = loop.create_future()
        scope = trio.CancelScope()

        async def call() -> None:
            with scope:
                try:
                    value = await async_fn(*args)
                except Exception as exc:
                    if not result.done():
                        result.set_exception(exc)
                    elif shield:  # the caller has gone: nobody else will see the error
                        _logger.warning(
                            "shielded call failed after its caller was cancelled",
                            call=_name(async_fn),
                            error=f"{type(exc).__name__}: {exc}",
                        )
                    return
                except trio.Cancelled:
                    if not result.done():
                        result.set_exception(self._closed_error(async_fn))
                    raise
                if not result.done():
                    result.set_result(value)
            if not result.done():  # cancelled from the asyncio side
                result.cancel()

        def spawn() -> None:  # runs in trio's run loop: must not raise
            try:
                nursery.start_soon(call)
            except RuntimeError:  # the nursery is closing
                if not result.done():
                    result.set_exception(self._closed_error(async_fn))

        trio_token.run_sync_soon(spawn)
        try:
            return await result
        except asyncio.CancelledError:
            if not shield:
                with contextlib.suppress(trio.RunFinishedError):  # nothing left to cancel
                    trio_token.run_sync_soon(scope.cancel)
            raise

    async def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Call the synchronous ``fn(*args)`` inside trio's run loop (between its tasks) and
        return its result here. For trio's sync calls such as ``task.interrupt()``.

        The call cannot be taken back: ``fn`` runs even if the awaiting asyncio task is
        cancelled before it has (the task gets its ``CancelledError``; an error of ``fn`` is
        then logged). So an interruption asked for while a request is being cancelled, as
        when its client disconnected, still happens.

        Raises:
            SessionStateError: The bridge is not open.
        """
        loop, trio_token, _ = self._open()
        result: asyncio.Future[T] = loop.create_future()

        def call() -> None:  # runs in trio's run loop: must not raise
            try:
                value = fn(*args)
            except Exception as exc:
                if not result.done():
                    result.set_exception(exc)
                else:
                    _logger.warning(
                        "sync call failed after its caller was cancelled",
                        call=_name(fn),
                        error=f"{type(exc).__name__}: {exc}",
                    )
            else:
                if not result.done():
                    result.set_result(value)

        trio_token.run_sync_soon(call)
        return await result

    # ----------------------------------------------------------------- trio -> asyncio

    async def _call_on_host(self, async_fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``async_fn(*args)`` as an asyncio task on the host loop; wait for it in trio
        (see :func:`asyncio_call`)."""
        loop, trio_token = self._loop, self._trio_token
        if loop is None or trio_token is None or self._done is None or self._done.done():
            raise SessionStateError("the AsyncioBridge is not running")
        awaitable = async_fn(*args)
        if not inspect.isawaitable(awaitable):
            raise TypeError(
                f"asyncio_call runs async functions; {_name(async_fn)} returned "
                f"{type(awaitable).__name__}, which is not awaitable"
            )
        # A task of the host loop, created in the calling trio task's context variables.
        host_task = asyncio.ensure_future(awaitable, loop=loop)
        settled = trio.Event()

        def wake(_: asyncio.Future[T]) -> None:  # an asyncio callback: trio is between ticks
            with contextlib.suppress(trio.RunFinishedError):
                trio_token.run_sync_soon(settled.set)

        host_task.add_done_callback(wake)
        try:
            await settled.wait()
        finally:
            if not host_task.done():  # cancelled in trio: cancel the task and wait for it
                host_task.cancel()
                with trio.CancelScope(shield=True):
                    await settled.wait()
        if host_task.cancelled():
            raise SessionStateError(
                f"{_name(async_fn)} was cancelled on the asyncio side (is the application's "
                "loop shutting down?)"
            )
        return host_task.result()

    # ----------------------------------------------------------------- helpers

    def _open(self) -> tuple[asyncio.AbstractEventLoop, trio.lowlevel.TrioToken, trio.Nursery]:
        loop, trio_token, nursery = self._loop, self._trio_token, self._nursery
        if loop is None or trio_token is None or nursery is None or self._closing:
            raise SessionStateError(
                "the AsyncioBridge is not open: call run() inside "
                "`async with AsyncioBridge() as bridge:`"
            )
        if self._done is not None and self._done.done():
            raise SessionStateError("the AsyncioBridge's trio guest run has ended")
        return loop, trio_token, nursery

    @staticmethod
    def _closed_error(async_fn: Callable[..., object]) -> SessionStateError:
        return SessionStateError(
            f"the AsyncioBridge closed while {_name(async_fn)} was still running in trio (it "
            "was cancelled); await your calls before leaving the block"
        )


async def asyncio_call(async_fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Await the asyncio coroutine function ``async_fn(*args)`` from trio code, when trouper
    runs inside an asyncio application (an :class:`AsyncioBridge` is open in this thread).

    It runs as a task on the application's asyncio loop (seeing the context variables of
    the calling trio task); the trio side waits. Its result is returned and its exception
    raised here.
    Cancelling the trio side (an interruption, a timeout, the bridge closing) cancels the
    asyncio task and waits until it has finished. Awaited from asyncio code, it simply awaits
    ``async_fn(*args)``, so code that uses it runs on both sides::

        async def lookup(key: str) -> str | None:  # trio code
            return await asyncio_call(redis_client.get, key)  # an asyncio library

    Raises:
        SessionStateError: Called in trio without an :class:`AsyncioBridge` (a plain
            ``trio.run``), or the asyncio task was cancelled from the asyncio side.
        TypeError: ``async_fn(*args)`` is not awaitable.
    """
    try:
        trio.lowlevel.current_task()
    except RuntimeError:  # not in a trio task: asyncio code
        return await async_fn(*args)
    bridge = AsyncioBridge.current()
    if bridge is None:
        raise SessionStateError(
            f"asyncio_call({_name(async_fn)}) needs an asyncio loop to run it on, and trio runs "
            "on its own here (trio.run). Run trouper inside your asyncio application with "
            "`async with runtime.AsyncioBridge() as bridge: await bridge.run(...)` "
            "(docs/asyncio.md), or use a trio library instead."
        )
    return await bridge._call_on_host(async_fn, *args)


def _name(fn: object) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)
