"""The way back: trio code awaits asyncio code with ``asyncio_call`` when trouper runs as the
guest of an asyncio loop (``AsyncioBridge``), and the bridge's calls that must complete do.

Most tests are synchronous on purpose: each starts its own asyncio loop with ``asyncio.run``,
as an asyncio application would. The tests without a bridge are trio tests.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest
import sniffio
import trio

from runtime import (
    AsyncioBridge,
    EventLoopMismatchError,
    SessionStateError,
    asyncio_call,
    loop_mismatch,
)

_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def test_trio_code_awaits_an_asyncio_coroutine_and_gets_its_result() -> None:
    """It runs as a real asyncio task of the host loop, in the same thread, with the calling
    trio task's context variables; its result crosses back."""

    async def on_asyncio(x: int) -> tuple[int, str, bool, int, str]:
        await asyncio.sleep(0.001)  # a real asyncio timer: this would fail in trio
        return (
            x * 2,
            sniffio.current_async_library(),
            asyncio.current_task() is not None,
            threading.get_ident(),
            _request_id.get(),
        )

    async def trio_side() -> tuple[int, str, bool, int, str]:
        _request_id.set("r-7")
        return await asyncio_call(on_asyncio, 21)

    async def main() -> tuple[int, str, bool, int, str]:
        async with AsyncioBridge() as bridge:
            return await bridge.run(trio_side)

    assert asyncio.run(main()) == (42, "asyncio", True, threading.get_ident(), "r-7")


def test_errors_cross_back_to_trio() -> None:
    async def fails() -> None:
        await asyncio.sleep(0)
        raise KeyError("missing row 3")

    async def trio_side() -> str:
        with pytest.raises(KeyError, match="missing row 3"):
            await asyncio_call(fails)
        return "still usable"

    async def main() -> str:
        async with AsyncioBridge() as bridge:
            return await bridge.run(trio_side)

    assert asyncio.run(main()) == "still usable"


def test_cancelling_the_trio_side_cancels_the_asyncio_task_and_waits_for_it() -> None:
    """The asyncio task sees ``CancelledError``; its cleanup (which awaits asyncio) has
    finished when the trio side goes on."""
    events: list[str] = []

    async def slow_query() -> None:
        events.append("started")
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(0.001)  # cleanup that itself awaits asyncio
            events.append("cleaned up")
            raise

    async def trio_side() -> None:
        with trio.move_on_after(0.05) as scope:
            await asyncio_call(slow_query)
        assert scope.cancelled_caught
        events.append("trio goes on")

    async def main() -> None:
        async with AsyncioBridge() as bridge:
            await bridge.run(trio_side)
            assert asyncio.all_tasks() == {asyncio.current_task()}

    asyncio.run(main())
    assert events == ["started", "cleaned up", "trio goes on"]


def test_leaving_the_bridge_cancels_and_awaits_the_asyncio_tasks_of_trio_code() -> None:
    events: list[str] = []

    async def forever() -> None:
        events.append("started")
        try:
            await asyncio.sleep(3600)
        finally:
            events.append("asyncio task ended")

    async def main() -> None:
        started = asyncio.Event()

        async def trio_side() -> None:
            started.set()
            await asyncio_call(forever)

        async with AsyncioBridge() as bridge:
            caller = asyncio.create_task(bridge.run(trio_side))
            await started.wait()
            await asyncio.sleep(0.001)
        assert events == ["started", "asyncio task ended"]
        with pytest.raises(SessionStateError, match="closed while"):
            await caller
        assert asyncio.all_tasks() == {asyncio.current_task()}

    asyncio.run(main())


def test_an_asyncio_task_cancelled_from_the_asyncio_side_is_a_clear_error() -> None:
    async def main() -> None:
        started = asyncio.Event()
        tasks: list[asyncio.Task[object]] = []

        async def job() -> None:
            task = asyncio.current_task()
            assert task is not None
            tasks.append(task)
            started.set()
            await asyncio.sleep(3600)

        async def trio_side() -> None:
            with pytest.raises(SessionStateError, match=r"job was cancelled on the asyncio side"):
                await asyncio_call(job)

        async with AsyncioBridge() as bridge:
            caller = asyncio.create_task(bridge.run(trio_side))
            await started.wait()
            tasks[0].cancel()
            await caller

    asyncio.run(main())


def test_from_asyncio_code_it_simply_awaits() -> None:
    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    async def main() -> tuple[int, int]:
        without_bridge = await asyncio_call(double, 2)
        async with AsyncioBridge():
            return without_bridge, await asyncio_call(double, 3)

    assert asyncio.run(main()) == (4, 6)


def test_current_names_the_open_bridge_on_both_sides() -> None:
    async def main() -> None:
        assert AsyncioBridge.current() is None
        async with AsyncioBridge() as bridge:
            assert AsyncioBridge.current() is bridge
            assert await bridge.run_sync(AsyncioBridge.current) is bridge
        assert AsyncioBridge.current() is None

    asyncio.run(main())


async def test_without_a_bridge_asyncio_call_says_what_to_do() -> None:
    async def query() -> None:
        await asyncio.sleep(0)

    assert AsyncioBridge.current() is None
    with pytest.raises(SessionStateError, match=r"asyncio_call\(.*query\) needs an asyncio loop"):
        await asyncio_call(query)


async def test_an_asyncio_await_in_plain_trio_is_explained() -> None:
    """trio's raw ``TypeError`` for an awaited asyncio future becomes an error that says what
    happened and what to do (``loop_mismatch``)."""
    loop = asyncio.new_event_loop()
    try:
        future: asyncio.Future[None] = loop.create_future()

        async def handler() -> None:
            await future

        with pytest.raises(TypeError) as raw:
            await handler()
    finally:
        loop.close()
    assert "unrecognized yield message" in str(raw.value)
    mismatch = loop_mismatch(raw.value, "job 'x'", asyncio_host=False, remedy="Or else.")
    assert isinstance(mismatch, EventLoopMismatchError)
    text = str(mismatch)
    assert text.startswith("job 'x' awaited asyncio code in trio (<Future pending>).")
    assert "AsyncioBridge" in text
    assert text.endswith("Or else.")
    bridged = loop_mismatch(raw.value, "job 'x'", asyncio_host=True)
    assert bridged is not None
    assert "runtime.asyncio_call" in str(bridged)
    with pytest.raises(RuntimeError) as no_loop:
        await asyncio.sleep(0.01)
    explained = loop_mismatch(no_loop.value, "job 'x'", asyncio_host=False)
    assert explained is not None
    assert str(explained).startswith("job 'x' awaited asyncio code in trio (no running event loop)")
    assert loop_mismatch(ValueError("bad"), "job 'x'", asyncio_host=False) is None
    assert loop_mismatch(TypeError("bad"), "job 'x'", asyncio_host=False) is None


# ----------------------------------------------------------------- calls that must complete


def test_a_sync_call_runs_even_when_its_caller_is_cancelled() -> None:
    """An asyncio request cancelled while it asks for an interruption (its client went away)
    still interrupts: the call cannot be taken back."""
    calls: list[str] = []

    async def main() -> None:
        async with AsyncioBridge() as bridge:
            caller = asyncio.create_task(bridge.run_sync(calls.append, "interrupt"))
            await asyncio.sleep(0)  # the caller now waits for the call
            caller.cancel()
            with pytest.raises(asyncio.CancelledError):
                await caller
            assert await bridge.run_sync(len, calls) == 1

    asyncio.run(main())
    assert calls == ["interrupt"]


def test_a_shielded_call_runs_to_its_end_when_its_caller_is_cancelled() -> None:
    events: list[str] = []

    async def main() -> None:
        started = asyncio.Event()
        finished = asyncio.Event()

        async def flush(marker: str) -> None:
            started.set()
            await trio.sleep(0.01)
            events.append(marker)
            finished.set()

        async with AsyncioBridge() as bridge:
            caller = asyncio.create_task(bridge.run(flush, "flushed", shield=True))
            await started.wait()
            caller.cancel()
            with pytest.raises(asyncio.CancelledError):
                await caller
            await finished.wait()

    asyncio.run(main())
    assert events == ["flushed"]
