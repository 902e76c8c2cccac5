"""Function handlers: what a handler receives (:class:`FunctionCallParams`), its type
(:data:`FunctionHandler`) and a handler registered with its options
(:class:`FunctionRegistration`).

Below the conversation, the tool schemas and the tool executor, which all use them: this
module imports none of them at run time (the conversation snapshot a handler receives is
named for the type checker only).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from ._context import ContextSnapshot

__all__ = ["FunctionCallParams", "FunctionHandler", "FunctionRegistration", "check_handler"]


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
    """A registered handler and how its calls run, checked when it is made.

    Args:
        name: The function's name, or ``None`` for the catch-all.
        handler: ``async def handler(params: FunctionCallParams) -> None``.
        cancel_on_interruption: Cancel running calls when the user interrupts.
        timeout_secs: Cancel a call after this long (``None``: the executor's default).
        trio_native: Run the handler in trio even when trouper runs inside an asyncio
            application (see :meth:`~actors.ToolExecutor.invoke`).

    Raises:
        TypeError: ``handler`` is not an ``async def`` function (see :func:`check_handler`).
        ValueError: a bad name or timeout.
    """

    name: str | None
    handler: FunctionHandler
    cancel_on_interruption: bool = True
    timeout_secs: float | None = None
    trio_native: bool = False

    def __attrs_post_init__(self) -> None:
        check_handler(self.name, self.handler)
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise ValueError("function_name must be a non-empty string or None (catch-all)")
        if self.timeout_secs is not None and not self.timeout_secs > 0:
            raise ValueError(f"timeout_secs must be positive, got {self.timeout_secs!r}")
