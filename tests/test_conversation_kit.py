"""The suite's own check that a session left nothing running (``tasks_left_running``)."""

from __future__ import annotations

import trio
import trio.testing

from runtime.testing import running_tasks
from tests.conversation_kit import tasks_left_running


async def test_a_task_left_running_is_reported_and_one_that_ends_soon_is_not(
    autojump_clock: trio.testing.MockClock,
) -> None:
    before = set(running_tasks())
    async with trio.open_nursery() as outer:  # a task group that outlives a session

        async def left_behind() -> None:
            await trio.sleep_forever()

        async def in_flight() -> None:  # a storage's round trip, ending on its own
            await trio.sleep(0.05)

        outer.start_soon(left_behind)
        outer.start_soon(in_flight)
        assert await tasks_left_running(before) == [f"{__name__}.{left_behind.__qualname__}"]
        outer.cancel_scope.cancel()
    assert await tasks_left_running(before) == []
