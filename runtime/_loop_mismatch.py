"""Code of one event loop awaited on the other: :func:`loop_mismatch` turns the raw errors
that trio and asyncio raise then into an :class:`EventLoopMismatchError` saying what happened
and what to do."""

from __future__ import annotations

import re

__all__ = ["EventLoopMismatchError", "loop_mismatch"]

# What trio throws into a task that awaited an object of another library (an asyncio future).
_FOREIGN_IN_TRIO = re.compile(r"^trio\.run received unrecognized yield message (?P<what>.+?)\.\s")
# What asyncio code raises where no asyncio loop runs (trio on its own).
_NO_ASYNCIO_LOOP = "no running event loop"
# What trio code raises in an asyncio task: trio's calls that need the current trio task, and
# asyncio's answer to a trio trap.
_TRIO_IN_ASYNCIO = ("must be called from async ", "Task got bad yield")


class EventLoopMismatchError(RuntimeError):
    """Code written for one event loop ran on the other: asyncio code awaited in trio, or
    trio code awaited in an asyncio task. The message names the code and what to do; the
    original error is its ``__cause__``."""


def loop_mismatch(
    exc: BaseException, subject: str, *, asyncio_host: bool, remedy: str = ""
) -> EventLoopMismatchError | None:
    """An :class:`EventLoopMismatchError` explaining ``exc`` when it is what trio or asyncio
    raise for code of the other loop, else ``None``.

    Args:
        exc: The error that ``subject`` raised.
        subject: What raised it, for the message (``"handler 'lookup'"``).
        asyncio_host: Whether an :class:`~runtime.AsyncioBridge` is running in this thread
            (then asyncio code can be awaited from trio through :func:`~runtime.asyncio_call`).
        remedy: A sentence appended to the advice (what the caller's API offers).

    Use it where user code is awaited::

        except Exception as exc:
            if (mismatch := loop_mismatch(exc, "job 'x'", asyncio_host=...)) is None:
                raise
            raise mismatch from exc
    """
    text = str(exc)
    extra = f" {remedy}" if remedy else ""
    foreign = _FOREIGN_IN_TRIO.match(text) if isinstance(exc, TypeError) else None
    if foreign is not None or (isinstance(exc, RuntimeError) and text == _NO_ASYNCIO_LOOP):
        what = foreign.group("what") if foreign is not None else text
        if asyncio_host:
            advice = (
                "Await asyncio code from trio through `await runtime.asyncio_call(async_fn, "
                "*args)`, which runs it as a task on the application's asyncio loop."
            )
        else:
            advice = (
                "No asyncio loop runs here: trio runs on its own (trio.run). Use a trio "
                "library instead, or run trouper inside your asyncio application with "
                "`async with runtime.AsyncioBridge() as bridge:` (docs/asyncio.md), where "
                "`runtime.asyncio_call` awaits asyncio code from trio."
            )
        return EventLoopMismatchError(
            f"{subject} awaited asyncio code in trio ({what}). {advice}{extra}"
        )
    if isinstance(exc, RuntimeError) and text.startswith(_TRIO_IN_ASYNCIO):
        return EventLoopMismatchError(
            f"{subject} used trio ({text}) while running as an asyncio task on the "
            f"application's loop: trio calls work only in trio.{extra}"
        )
    return None
