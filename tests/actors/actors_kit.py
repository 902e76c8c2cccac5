"""Helpers of the conversation-stage tests beyond the shared harness
(:mod:`tests.conversation_kit`): a tool handler that blocks until cancelled, and the two-tool
turn (weather and time) several tests script."""

from __future__ import annotations

import json

import attrs
import trio

from actors import FunctionCallParams, FunctionHandler, FunctionSchema, ToolsSchema

__all__ = ["TIME", "TOOLS", "TWO_CALLS", "TWO_TOOL_FUNCTIONS", "WEATHER", "BlockingTool"]

WEATHER = FunctionSchema(
    name="get_weather",
    description="Current weather",
    properties={"location": {"type": "string"}},
    required=["location"],
)
TIME = FunctionSchema(
    name="get_time", description="Local time", properties={"timezone": {"type": "string"}}
)
#: The two tools, weather and time.
TOOLS = ToolsSchema(standard_tools=[WEATHER, TIME])
#: One response's two tool calls: ``get_weather`` (``call_w``) and ``get_time`` (``call_t``).
TWO_CALLS = [
    ("get_weather", json.dumps({"location": "Paris"}), "call_w"),
    ("get_time", json.dumps({"timezone": "CET"}), "call_t"),
]


async def _sunny_after_a_while(params: FunctionCallParams) -> None:
    await trio.sleep(0.25)
    await params.result_callback({"sky": "sunny"})


async def _broken_clock(params: FunctionCallParams) -> None:
    await trio.sleep(0.5)
    raise RuntimeError("clock broken")


#: Handlers of :data:`TWO_CALLS`: ``get_weather`` answers after 0.25 s, ``get_time`` fails
#: with ``RuntimeError`` after 0.5 s.
TWO_TOOL_FUNCTIONS: dict[str | None, FunctionHandler] = {
    "get_weather": _sunny_after_a_while,
    "get_time": _broken_clock,
}


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
