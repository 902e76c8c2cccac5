"""Sessions entered one inside another: an ``AsyncExitStack`` of a thousand pipeline tasks.

A server holding many conversations may keep each one's task open in an exit stack. Every
task holds a nursery open in the caller's task, so trio's cancel scopes nest one level per
session, a thousand deep for a thousand sessions. Nothing in the runtime may depend on that
depth: no walk over the enclosing scopes (a recursion that overflowed Python's stack at
about a thousand), and no exception group per level when they are cancelled together (trio
matches ``Cancelled`` in a group recursively, which overflowed at a few hundred).
"""

from __future__ import annotations

from contextlib import AsyncExitStack

import pytest
import trio

from runtime import Pipeline, PipelineParams, PipelineTask
from runtime.testing import open_test_task, wait_idle

from .runtime_helpers import Gate, Incr, Ping, numbers

DEPTH = 1_000


async def _enter_sessions(stack: AsyncExitStack, n: int = DEPTH) -> list[PipelineTask]:
    return [await stack.enter_async_context(PipelineTask(Pipeline([Incr()]))) for _ in range(n)]


async def test_a_blocked_sender_resumes_in_the_innermost_session() -> None:
    """A sender blocked on a full mailbox of the last session waits and resumes like any
    other (its check for a cancellation does not walk the scopes around it)."""
    gate = Gate(name="gate", mailbox_size=1)
    async with AsyncExitStack() as stack:
        await _enter_sessions(stack)
        params = PipelineParams(mailbox_size=1)
        async with open_test_task([Incr(name="incr"), gate], params=params) as t:
            async with trio.open_nursery() as nursery:

                async def feed() -> None:
                    await t.push(*[Ping(n) for n in range(6)])

                nursery.start_soon(feed)
                await wait_idle()
                snapshot = {a.name: a for a in t.snapshot().actors}
                gate_box = snapshot["gate"].mailbox
                assert gate_box is not None
                assert gate_box.waiting_senders == 1  # incr waits in push_frame
                gate.open()
            assert numbers(await t.drain()) == list(range(1, 7))


async def test_every_session_ends_when_the_scope_around_them_is_cancelled(
    autojump_clock: object,
) -> None:
    """A deadline around the whole stack ends every session; the cancellation reaches its
    own scope as the innermost block's own ``Cancelled``, not a group nested a thousand deep
    (nor a chain of a thousand others)."""
    inner: list[BaseException] = []
    arrived: list[BaseException] = []
    tasks: list[PipelineTask] = []

    async def sessions() -> None:
        async with AsyncExitStack() as stack:
            tasks.extend(await _enter_sessions(stack))
            for task in tasks:
                await task.queue_frame(Ping(1))
            try:
                await trio.sleep_forever()
            except BaseException as exc:
                inner.append(exc)
                raise

    with trio.move_on_after(5) as scope:
        try:
            await sessions()
        except BaseException as exc:
            arrived.append(exc)
            raise
    assert scope.cancelled_caught
    assert all(task.has_finished() for task in tasks)
    assert len(inner) == 1
    assert isinstance(inner[0], trio.Cancelled)
    assert len(arrived) == 1
    assert arrived[0] is inner[0]
    assert arrived[0].__context__ is None


async def test_an_error_in_the_innermost_block_leaves_every_session_as_itself() -> None:
    """An error raised inside the stack stops every session and reaches the caller as
    itself."""

    class Boom(Exception):
        pass

    async def fail_inside() -> None:
        async with AsyncExitStack() as stack:
            await _enter_sessions(stack)
            raise Boom("inner")

    with pytest.raises(Boom, match="inner"):
        await fail_inside()
