"""The tool executor: runs the tool calls of one LLM response concurrently.

Each call settles exactly once: with the handler's result, an error result (the handler
raised, unknown function, unparseable arguments), a timeout or a cancellation. A
``result_callback`` that comes after the call settled is rejected with a warning. Calls
registered with ``cancel_on_interruption=True`` (the default) run in a scope tied to the turn
of the response that asked for them, so an interruption cancels them at once (the handler
sees ``trio.Cancelled``); the others keep running and their result lands in the conversation
later.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import nullcontext
from typing import Any

import attrs
import trio

from runtime import Actor, DataFrame, Frame, FrameDirection
from runtime.serialization import NOT_SERIALIZED

from ._context import ContextSnapshot
from ._frames import (
    FunctionCallCancelFrame,
    FunctionCallFromLLM,
    FunctionCallInProgressFrame,
    FunctionCallResultFrame,
    FunctionCallResultProperties,
)
from .client import ErrorCategory

__all__ = [
    "FunctionCallParams",
    "FunctionHandler",
    "FunctionRegistration",
    "RunFunctionCallsRequest",
    "ToolExecutor",
    "check_handler",
]


def _to_tuple(value: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(value)


@attrs.frozen
class FunctionCallParams:
    """What a function handler receives.

    Args:
        function_name: The function the LLM called.
        tool_call_id: The call's id.
        arguments: The parsed arguments.
        llm: The LLM service that asked for the call.
        context: A snapshot of the conversation when the call was made.
        result_callback: ``await params.result_callback(result, properties=...)`` settles the
            call with ``result`` (JSON-serializable). Later calls are rejected with a warning.
    """

    function_name: str
    tool_call_id: str
    arguments: Mapping[str, Any]
    llm: Any
    context: ContextSnapshot
    result_callback: Callable[..., Awaitable[None]] = attrs.field(repr=False)


#: ``async def handler(params: FunctionCallParams) -> None``
FunctionHandler = Callable[[FunctionCallParams], Awaitable[None]]


def check_handler(function_name: str | None, handler: object) -> None:
    """Refuse a handler that is not a coroutine function, at registration rather than when
    the model first calls it: an ``async def`` function or method, an object whose
    ``__call__`` is one, or a ``functools.partial`` of one.

    Raises:
        TypeError: anything else, with what it got.
    """
    call = inspect.getattr_static(type(handler), "__call__", None)
    if inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call):
        return
    if not callable(handler):  # its type only: the value could be anything, even a secret
        got = f"a value of type {type(handler).__name__}, which is not callable"
    else:
        name = getattr(handler, "__qualname__", None) or type(handler).__qualname__
        got = f"{name!r}, which is not async (a plain `def` would fail when the model calls it)"
    raise TypeError(
        f"handler for {function_name!r} must be an `async def` function "
        f"(`async def handler(params: FunctionCallParams) -> None`); got {got}"
    )


@attrs.frozen
class FunctionRegistration:
    """A registered handler and how its calls run."""

    name: str | None
    handler: FunctionHandler
    cancel_on_interruption: bool = True
    timeout_secs: float | None = None


@attrs.frozen(slots=True)
class RunFunctionCallsRequest(DataFrame):
    """Run this batch of calls (sent by the LLM service to its tool executor).

    Args:
        calls: The calls of one response.
        context: The conversation snapshot the calls see.
        llm: The LLM service (``params.llm``).
        batch_turn: The turn of the response; interruptible calls belong to it.
    """

    calls: tuple[FunctionCallFromLLM, ...] = attrs.field(converter=_to_tuple)
    context: ContextSnapshot
    llm: Any = attrs.field(default=None, eq=False, repr=False, metadata=NOT_SERIALIZED)
    batch_turn: int = 0
    interruptible: bool = attrs.field(default=False, kw_only=True, eq=False, repr=False)


@attrs.define(eq=False)
class _Call:
    call: FunctionCallFromLLM
    settled: bool = False
    has_result: bool = False
    result: Any = None
    properties: FunctionCallResultProperties | None = None
    done: trio.Event = attrs.Factory(trio.Event)


class ToolExecutor(Actor[RunFunctionCallsRequest]):
    """Runs function calls concurrently under its own nursery (see the module docs).

    Its frames (``FunctionCallInProgressFrame``, ``FunctionCallResultFrame``,
    ``FunctionCallCancelFrame``) go out as if the LLM service had pushed them: the LLM links
    the executor to its own neighbours when it starts.

    Args:
        registrations: The live registry (name → registration, ``None`` = catch-all), shared
            with the LLM service so later registrations count.
        default_timeout_secs: Timeout for calls whose registration has none.
    """

    accepts = (RunFunctionCallsRequest,)

    def __init__(
        self,
        registrations: dict[str | None, FunctionRegistration],
        *,
        default_timeout_secs: float | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        self.registrations = registrations
        self.default_timeout_secs = default_timeout_secs
        self._running: dict[str, _Call] = {}

    def running_calls(self) -> list[str]:
        """Ids of calls that have not settled yet."""
        return list(self._running)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Start every call of the batch at once."""
        assert isinstance(frame, RunFunctionCallsRequest)
        for call in frame.calls:
            self.create_task(self._run, call, frame, name=f"tool:{call.function_name}")

    def _resolve(self, name: str) -> FunctionRegistration | None:
        return self.registrations.get(name) or self.registrations.get(None)

    async def _run(self, call: FunctionCallFromLLM, request: RunFunctionCallsRequest) -> None:
        state = _Call(call)
        self._running[call.tool_call_id] = state
        try:
            await self._execute(state, request)
        finally:
            self._running.pop(call.tool_call_id, None)

    async def _execute(self, state: _Call, request: RunFunctionCallsRequest) -> None:
        call = state.call
        log = self.log.bind(tool_call_id=call.tool_call_id, function=call.function_name)
        registration = self._resolve(call.function_name)
        cancel_on_interruption = registration.cancel_on_interruption if registration else True
        await self.push_frame(
            FunctionCallInProgressFrame(
                call.function_name,
                call.tool_call_id,
                call.arguments,
                cancel_on_interruption=cancel_on_interruption,
            )
        )
        if call.arguments_error is not None:
            state.settled = True
            await self.push_error(
                f"Invalid arguments for function call [{call.function_name}] "
                f"({call.tool_call_id}): {call.arguments_error}",
                category=ErrorCategory.INVALID_REQUEST,
            )
            await self._push_result(
                call,
                f"Invalid arguments for `{call.function_name}`: {call.arguments_error}. "
                "Arguments must be a JSON object matching the function's parameters.",
                error=call.arguments_error,
                cancel_on_interruption=cancel_on_interruption,
            )
            return
        if registration is None:
            state.settled = True
            available = sorted(k for k in self.registrations if k)
            log.warning("function not registered", available=available)
            await self.push_error(
                f"The LLM called function [{call.function_name}], which has no handler "
                f"(registered: {', '.join(available) or 'none'})",
                category=ErrorCategory.APPLICATION,
            )
            await self._push_result(
                call,
                f"The function `{call.function_name}` is not currently available.",
                error="function not available",
                cancel_on_interruption=cancel_on_interruption,
            )
            return

        async def result_callback(
            result: Any, *, properties: FunctionCallResultProperties | None = None
        ) -> None:
            if state.settled:
                log.warning("late function result rejected: the call already settled")
                return
            state.settled = True
            state.has_result = True
            state.result = result
            state.properties = properties
            state.done.set()

        params = FunctionCallParams(
            function_name=call.function_name,
            tool_call_id=call.tool_call_id,
            arguments=call.arguments,
            llm=request.llm,
            context=request.context,
            result_callback=result_callback,
        )
        timeout = registration.timeout_secs
        if timeout is None:
            timeout = self.default_timeout_secs
        failure: Exception | None = None
        interrupted = timed_out = False
        turn_cm = self.turn_scope(request.batch_turn) if cancel_on_interruption else nullcontext()
        with turn_cm as turn_scope:
            with trio.move_on_after(math.inf if timeout is None else timeout) as deadline:
                try:
                    # A call of a turn that is already over never starts.
                    await trio.lowlevel.checkpoint()
                    await registration.handler(params)
                    if not state.settled:
                        await state.done.wait()
                except Exception as exc:
                    failure = exc
            timed_out = deadline.cancelled_caught
        if turn_scope is not None and turn_scope.cancelled_caught:
            interrupted = True
        if state.has_result:
            if failure is not None:  # the error first: the result may end the answer
                await self._report_failure(call, failure)
            await self._push_result(
                call,
                state.result,
                properties=state.properties,
                run_llm=state.properties.run_llm if state.properties else None,
                cancel_on_interruption=cancel_on_interruption,
            )
            return
        state.settled = True
        if interrupted:
            log.info("function call cancelled by interruption")
            await self.push_frame(FunctionCallCancelFrame(call.function_name, call.tool_call_id))
        elif timed_out:
            log.warning("function call timed out", timeout_secs=timeout)
            await self.push_frame(
                FunctionCallCancelFrame(
                    call.function_name,
                    call.tool_call_id,
                    reason="timeout",
                    run_llm=True,
                    cancel_on_interruption=cancel_on_interruption,
                )
            )
        elif failure is not None:
            await self._report_failure(call, failure)
            await self._push_result(
                call,
                f"The function `{call.function_name}` failed and returned no result.",
                error=f"{type(failure).__name__}: {failure}",
                cancel_on_interruption=cancel_on_interruption,
            )

    async def _report_failure(self, call: FunctionCallFromLLM, failure: Exception) -> None:
        # Returns once the task has the error (push_error), so it is reported before the
        # call's result frame (which may end the answer) leaves.
        await self.push_error(
            f"Error executing function call [{call.function_name}]: "
            f"{type(failure).__name__}: {failure}",
            exception=failure,
            category=ErrorCategory.APPLICATION,
        )

    async def _push_result(
        self,
        call: FunctionCallFromLLM,
        result: Any,
        *,
        error: str | None = None,
        properties: FunctionCallResultProperties | None = None,
        run_llm: bool | None = None,
        cancel_on_interruption: bool = True,
    ) -> None:
        await self.push_frame(
            FunctionCallResultFrame(
                call.function_name,
                call.tool_call_id,
                call.arguments,
                result,
                run_llm=run_llm,
                properties=properties,
                error=error,
                cancel_on_interruption=cancel_on_interruption,
            )
        )

    async def on_stop(self) -> None:
        """Calls still running when the session ends are settled (late results rejected); the
        context store writes ``"CANCELLED"`` into their tool messages when it stops."""
        for state in list(self._running.values()):
            if not state.settled:
                state.settled = True
                self.log.info(
                    "function call cancelled by shutdown", tool_call_id=state.call.tool_call_id
                )
