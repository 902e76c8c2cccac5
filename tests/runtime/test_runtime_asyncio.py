"""Embedding in asyncio: ``AsyncioBridge`` runs trio as a guest on the running asyncio loop.

These tests are synchronous on purpose: each one starts its own asyncio loop with
``asyncio.run`` and drives trouper from asyncio code, as an asyncio application would.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
import trio

from runtime import (
    AsyncioBridge,
    EndFrame,
    Frame,
    FrameDirection,
    Pipeline,
    PipelineTask,
    SessionStateError,
)

from .runtime_helpers import Incr, Ping


def test_an_asyncio_app_runs_a_pipeline_and_gets_its_frames() -> None:
    """Frames queued from asyncio go through the actors; the listener (in trio, same thread)
    hands them to an asyncio queue; ``end`` and ``run`` finish cleanly."""
    threads: set[int] = set()

    async def main() -> list[int]:
        replies: asyncio.Queue[Frame] = asyncio.Queue()

        def listener(frame: Frame, direction: FrameDirection) -> None:
            threads.add(threading.get_ident())
            replies.put_nowait(frame)

        async with AsyncioBridge() as trio_side:
            task = PipelineTask(Pipeline([Incr(), Incr()]), on_downstream=listener)
            running = asyncio.create_task(trio_side.run(task.run))
            seen: list[int] = []
            for n in range(3):
                await trio_side.run(task.queue_frame, Ping(n))
                frame = await replies.get()
                while not isinstance(frame, Ping):  # the StartFrame comes first
                    frame = await replies.get()
                seen.append(frame.n)
            await trio_side.run(task.end)
            await running
            assert task.has_finished()
            assert any(isinstance(f, EndFrame) for f in _drain(replies))
            return seen

    assert asyncio.run(main()) == [2, 3, 4]
    assert threads == {threading.get_ident()}


def _drain(queue: asyncio.Queue[Frame]) -> list[Frame]:
    frames = []
    while not queue.empty():
        frames.append(queue.get_nowait())
    return frames


def test_results_and_errors_cross_back_to_asyncio() -> None:
    async def answer(x: int) -> int:
        await trio.lowlevel.checkpoint()
        return x * 2

    async def fail() -> None:
        await trio.lowlevel.checkpoint()
        raise ValueError("bad input 7")

    def current_time_is_trio() -> float:
        return trio.current_time()

    def boom() -> None:
        raise KeyError("nope")

    async def main() -> None:
        async with AsyncioBridge() as trio_side:
            assert await trio_side.run(answer, 21) == 42
            with pytest.raises(ValueError, match="bad input 7"):
                await trio_side.run(fail)
            assert isinstance(await trio_side.run_sync(current_time_is_trio), float)
            with pytest.raises(KeyError, match="nope"):
                await trio_side.run_sync(boom)
            assert await trio_side.run(answer, 1) == 2  # still usable after the errors

    asyncio.run(main())


def test_cancelling_the_asyncio_caller_cancels_the_trio_call() -> None:
    """The trio side sees ``trio.Cancelled`` and unwinds (its ``finally`` runs)."""

    async def main() -> list[str]:
        events: list[str] = []
        started = asyncio.Event()
        unwound = asyncio.Event()

        async def forever() -> None:
            events.append("started")
            started.set()
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                events.append("cancelled")
                raise
            finally:
                unwound.set()

        async with AsyncioBridge() as trio_side:
            caller = asyncio.create_task(trio_side.run(forever))
            await started.wait()
            caller.cancel()
            with pytest.raises(asyncio.CancelledError):
                await caller
            await unwound.wait()
            assert await trio_side.run_sync(lambda: "still open") == "still open"
        return events

    assert asyncio.run(main()) == ["started", "cancelled"]


def test_leaving_the_block_cancels_running_calls_with_a_clear_error() -> None:
    async def main() -> None:
        started = asyncio.Event()

        async def slow_job() -> None:
            started.set()
            await trio.sleep_forever()

        async with AsyncioBridge() as trio_side:
            caller = asyncio.create_task(trio_side.run(slow_job))
            await started.wait()
        with pytest.raises(SessionStateError, match=r"closed while .*slow_job"):
            await caller
        with pytest.raises(SessionStateError, match="not open"):
            await trio_side.run(slow_job)

    asyncio.run(main())


def test_misuse_is_reported_clearly() -> None:
    async def nothing() -> None:
        await trio.lowlevel.checkpoint()

    async def main() -> None:
        bridge = AsyncioBridge()
        with pytest.raises(SessionStateError, match="not open"):
            await bridge.run(nothing)
        async with bridge:
            with pytest.raises(SessionStateError, match="one AsyncioBridge at a time"):
                async with AsyncioBridge():
                    pass
        with pytest.raises(SessionStateError, match="already entered"):
            async with bridge:
                pass

    asyncio.run(main())


def test_cancelled_while_entering_leaves_no_guest_behind() -> None:
    """An asyncio task cancelled while it enters the bridge stops the guest run it started:
    a new bridge can start in the same thread afterwards."""

    async def main() -> None:
        entered = asyncio.Event()

        async def enter() -> None:
            async with AsyncioBridge():
                entered.set()
                await asyncio.sleep(3600)

        attempt = asyncio.create_task(enter())
        await asyncio.sleep(0)  # the task is now inside __aenter__, waiting for the guest
        attempt.cancel()
        with pytest.raises(asyncio.CancelledError):
            await attempt
        assert not entered.is_set()
        async with AsyncioBridge() as trio_side:
            assert await trio_side.run_sync(lambda: 1) == 1

    asyncio.run(main())
