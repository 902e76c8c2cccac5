"""The tool executor: owns the function registry and runs the tool calls of one LLM response
concurrently.

Each call settles exactly once: with the handler's result, an error result (the handler
raised, unknown function, unparseable arguments), a timeout or a cancellation. A
``result_callback`` that comes after the call settled is rejected with a warning. Calls
registered with ``cancel_on_interruption=True`` (the default) run in a scope tied to the turn
of the response that asked for them, so an interruption cancels them at once (the handler
sees ``trio.Cancelled``); the others keep running and their result lands in the conversation
later.

A call runs the handler registered for its function, else the handler that came with the
tool in the conversation (``FunctionSchema(handler=...)``, a plain function: the snapshot the
call carries names it by token), else the catch-all registered for ``None``.

Everything the executor exchanges with the other stages is a serializable frame: the calls
come in a :class:`RunFunctionCallsRequest`, their progress and settlement leave as
``FunctionCall*Frame``s, and an ``on_context_updated`` callback stays here, keyed by its call:
the context store asks for it to run with a :class:`ContextUpdatedRequest` once the call's
batch is in the context.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from functools import partial
from typing import Any

import attrs
import trio

from runtime import (
    Actor,
    AsyncioBridge,
    DataFrame,
    Frame,
    FrameDirection,
    SystemFrame,
    asyncio_call,
    loop_mismatch,
)

from ._context import ContextSnapshot
from ._frames import (
    FunctionCallCancelFrame,
    FunctionCallFromLLM,
    FunctionCallInProgressFrame,
    FunctionCallResultFrame,
    FunctionCallResultProperties,
    _to_tuple,
)
from ._handlers import FunctionCallParams, FunctionRegistration
from ._observe import CANCELLED, ERROR, OK, watch_tool
from .client import ErrorCategory

__all__ = [
    "ContextUpdatedRequest",
    "RunFunctionCallsRequest",
    "ToolExecutor",
]


@attrs.frozen(slots=True)
class RunFunctionCallsRequest(DataFrame):
    """Run this batch of calls (sent by the LLM service to its tool executor).

    Args:
        calls: The calls of one response.
        context: The conversation snapshot the calls see.
        batch_turn: The turn of the response; interruptible calls belong to it.
    """

    calls: tuple[FunctionCallFromLLM, ...] = attrs.field(converter=_to_tuple)
    context: ContextSnapshot
    batch_turn: int = 0
    interruptible: bool = attrs.field(default=False, kw_only=True, eq=False, repr=False)


@attrs.frozen(slots=True)
class ContextUpdatedRequest(SystemFrame):
    """The results of these calls are in the context: run their ``on_context_updated``
    callbacks, in this order, and answer once they have run (asked by the context store when
    the last call of a batch has settled, before it starts the follow-up inference).

    A system frame: the callbacks run in the executor's system task, so a slow one never
    holds up the next batch of calls.

    Args:
        tool_call_ids: The calls of the batch, in the order they settled.
    """

    tool_call_ids: tuple[str, ...] = attrs.field(converter=_to_tuple)


def _from_asyncio(params: FunctionCallParams, bridge: AsyncioBridge) -> FunctionCallParams:
    """``params`` for a handler running on asyncio: its ``result_callback`` hands the result
    to trio, and an ``on_context_updated`` callback will run on asyncio."""
    settle = params.result_callback

    async def result_callback(
        result: Any, *, properties: FunctionCallResultProperties | None = None
    ) -> None:
        if properties is not None and properties.on_context_updated is not None:
            on_updated = partial(asyncio_call, properties.on_context_updated)
            properties = attrs.evolve(properties, on_context_updated=on_updated)
        await bridge.run(partial(settle, result, properties=properties))

    return attrs.evolve(params, result_callback=result_callback)


@attrs.define(eq=False)
class _Call:
    call: FunctionCallFromLLM
    settled: bool = False
    has_result: bool = False
    result: Any = None
    properties: FunctionCallResultProperties | None = None
    done: trio.Event = attrs.Factory(trio.Event)


class ToolExecutor(Actor[RunFunctionCallsRequest | ContextUpdatedRequest]):
    """Owns the function registry and runs function calls concurrently under its own nursery
    (see the module docs).

    Its frames (``FunctionCallInProgressFrame``, ``FunctionCallResultFrame``,
    ``FunctionCallCancelFrame``) go out as if the LLM service had pushed them: the service
    makes the executor its companion (:meth:`runtime.Actor.add_companion`), so they reach the
    service's neighbours. A result's ``on_context_updated``
    callback does not travel with it: the executor keeps it until the context store's
    :class:`ContextUpdatedRequest` for the call's batch.

    Args:
        llm: The LLM service the calls come from (what handlers see as ``params.llm``).
        default_timeout_secs: Timeout for calls whose registration has none.
    """

    accepts = (RunFunctionCallsRequest, ContextUpdatedRequest)
    #: A few frames per turn: no task of its own while idle (see ``Actor.serve_on_demand``).
    serve_on_demand = True

    def __init__(
        self,
        llm: Actor[Any] | None = None,
        *,
        default_timeout_secs: float | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        self.llm = llm
        self.default_timeout_secs = default_timeout_secs
        self._registrations: dict[str | None, FunctionRegistration] = {}
        self._running: dict[str, _Call] = {}
        #: ``on_context_updated`` callbacks of settled calls, until the store asks for them.
        self._context_updated: dict[str, Callable[[], Awaitable[None]]] = {}

    # ----------------------------------------------------------------- registry

    def register(self, registration: FunctionRegistration) -> None:
        """Add a handler (replacing the one registered under the same name)."""
        self._registrations[registration.name] = registration

    def unregister(self, function_name: str | None) -> None:
        """Remove a handler (no error if there is none)."""
        self._registrations.pop(function_name, None)

    def has_function(self, function_name: str) -> bool:
        """Whether calls of ``function_name`` have a handler (its own or the catch-all)."""
        return function_name in self._registrations or None in self._registrations

    def running_calls(self) -> list[str]:
        """Ids of calls that have not settled yet."""
        return list(self._running)

    # ----------------------------------------------------------------- frames

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Start every call of a batch at once; run the callbacks of a settled batch."""
        if isinstance(frame, ContextUpdatedRequest):
            await self.on_ask(frame)
            return
        assert isinstance(frame, RunFunctionCallsRequest)
        for call in frame.calls:
            self.create_task(self._run, call, frame, name=f"tool:{call.function_name}")

    async def on_ask(self, frame: Frame) -> object:
        """Answer a :class:`ContextUpdatedRequest` once the batch's ``on_context_updated``
        callbacks have run, one after another. One that raises is reported as an
        ``ErrorFrame``; the others still run."""
        if not isinstance(frame, ContextUpdatedRequest):
            raise TypeError(f"{self.name} answers ContextUpdatedRequest, not {frame.name}")
        for tool_call_id in frame.tool_call_ids:
            callback = self._context_updated.pop(tool_call_id, None)
            if callback is None:
                continue
            try:
                await callback()
            except Exception as exc:
                self.log.warning(
                    "on_context_updated raised",
                    tool_call_id=tool_call_id,
                    error=f"{type(exc).__name__}: {exc}",
                )
                await self.push_error(
                    f"on_context_updated raised {type(exc).__name__}: {exc}", exception=exc
                )
        return None

    def _resolve(self, name: str, context: ContextSnapshot) -> FunctionRegistration | None:
        """The handler registered for ``name``, else the one that came with the tool (see
        :meth:`ContextSnapshot.handler_for`), else the catch-all."""
        return (
            self._registrations.get(name)
            or context.handler_for(name)
            or self._registrations.get(None)
        )

    async def _run(self, call: FunctionCallFromLLM, request: RunFunctionCallsRequest) -> None:
        state = _Call(call)
        self._running[call.tool_call_id] = state
        watch = watch_tool(self, call)
        outcome: tuple[str, str | None] = (CANCELLED, None)  # unless it returns
        try:
            outcome = await self._execute(state, request)
        finally:
            self._running.pop(call.tool_call_id, None)
            watch.settled(*outcome)

    async def _execute(
        self, state: _Call, request: RunFunctionCallsRequest
    ) -> tuple[str, str | None]:
        """Run the call until it settles; returns its outcome (``ok``, ``error`` or
        ``cancelled``) and, unless ok, the kind of error."""
        call = state.call
        log = self.log.bind(tool_call_id=call.tool_call_id, function=call.function_name)
        registration = self._resolve(call.function_name, request.context)
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
            return ERROR, "invalid_arguments"
        if registration is None:
            state.settled = True
            advertised = {name for name, _ in request.context.handlers}
            available = sorted({k for k in self._registrations if k} | advertised)
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
            return ERROR, "function_not_available"

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
            llm=self.llm,
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
                    await self.invoke(registration, params)
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
            properties = state.properties
            if properties is not None and properties.on_context_updated is not None:
                # The callback stays here, the frame carries data only: the store asks for it
                # (ContextUpdatedRequest) once the call's batch is in the context.
                self._context_updated[call.tool_call_id] = properties.on_context_updated
                properties = attrs.evolve(properties, on_context_updated=None)
            await self._push_result(
                call,
                state.result,
                properties=properties,
                run_llm=properties.run_llm if properties else None,
                cancel_on_interruption=cancel_on_interruption,
            )
            return (OK, None) if failure is None else (ERROR, type(failure).__name__)
        state.settled = True
        if interrupted:
            log.info("function call cancelled by interruption")
            await self.push_frame(FunctionCallCancelFrame(call.function_name, call.tool_call_id))
            return CANCELLED, None
        if timed_out:
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
            return ERROR, "timeout"
        if failure is not None:
            await self._report_failure(call, failure)
            await self._push_result(
                call,
                f"The function `{call.function_name}` failed and returned no result.",
                error=f"{type(failure).__name__}: {failure}",
                cancel_on_interruption=cancel_on_interruption,
            )
            return ERROR, type(failure).__name__
        return CANCELLED, None  # settled without a result: by the executor's stop

    async def invoke(self, registration: FunctionRegistration, params: FunctionCallParams) -> None:
        """Await the handler on the application's event loop.

        In a trio application (``trio.run``) it runs in trio. When trouper runs inside an
        asyncio application (a :class:`runtime.AsyncioBridge` is open), it runs as an asyncio
        task on that loop (:func:`runtime.asyncio_call`), so it can await asyncio libraries;
        its ``result_callback`` and ``on_context_updated`` are awaited there too. A handler
        registered with ``trio_native=True`` runs in trio either way. Code of the other loop
        awaited in a handler fails with an :class:`runtime.EventLoopMismatchError` saying
        what to do, instead of trio's or asyncio's raw error.
        """
        bridge = AsyncioBridge.current()
        on_asyncio = bridge is not None and not registration.trio_native
        try:
            if bridge is not None and on_asyncio:
                await asyncio_call(registration.handler, _from_asyncio(params, bridge))
            else:
                await registration.handler(params)
        except Exception as exc:
            if on_asyncio:
                remedy = "Register it with trio_native=True to run it in trio."
            elif bridge is not None:
                remedy = "Or register it without trio_native=True: it then runs on asyncio."
            else:
                remedy = ""
            subject = f"the handler of {params.function_name!r}"
            mismatch = loop_mismatch(exc, subject, asyncio_host=bridge is not None, remedy=remedy)
            if mismatch is None:
                raise
            raise mismatch from exc

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
        context store writes ``"CANCELLED"`` into their tool messages when it stops. The
        ``on_context_updated`` callbacks still waiting for their batch are dropped."""
        self._context_updated.clear()
        for state in list(self._running.values()):
            if not state.settled:
                state.settled = True
                self.log.info(
                    "function call cancelled by shutdown", tool_call_id=state.call.tool_call_id
                )
