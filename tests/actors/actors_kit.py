"""Helpers of the conversation-stage tests beyond the shared harness
(:mod:`tests.conversation_kit`): a tool handler that blocks until cancelled."""

from __future__ import annotations

import attrs
import trio

from actors import FunctionCallParams

__all__ = ["BlockingTool"]


@attrs.define(eq=False)
class BlockingTool:
    """A tool handler that runs until it is cancelled: :attr:`running` is set when a call
    starts, :attr:`cancelled` lists the ids of the calls that saw ``trio.Cancelled``."""

    running: trio.Event = attrs.Factory(trio.Event)
    cancelled: list[str] = attrs.Factory(list)

    async def __call__(self, params: FunctionCallParams) -> None:
        self.running.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            self.cancelled.append(params.tool_call_id)
            raise

    async def wait_running(self, within: float = 5.0) -> None:
        """Wait (virtual time) until a call has started; fail after ``within`` seconds."""
        with trio.fail_after(within):
            await self.running.wait()
