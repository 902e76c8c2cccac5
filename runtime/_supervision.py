"""Restart policies (what happens when an actor's handler raises) and crash collapsing.

The supervisor that applies a policy to a running actor is :func:`runtime._supervisor.supervise`.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import trio

__all__ = ["RestartPolicy", "collapse_exception_group"]


def _positive(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"RestartPolicy.{attribute.name} must be a positive number, got {value!r}")


@attrs.frozen
class RestartPolicy:
    """Restart a crashed actor, at most ``max_restarts`` times within ``within_secs``.

    Without a policy an actor's crash escalates: the session stops and ``run()`` raises the
    actor's own exception. With one, the actor's loops are restarted (its mailbox and the
    frames queued in it are kept; the frame that crashed it is dropped and logged) after a
    backoff of ``backoff_secs * 2**k`` (capped at ``max_backoff_secs``) for the k-th restart
    in the window, and it receives the ``StartFrame`` it started with again. One restart too
    many escalates with :class:`~runtime.RestartIntensityExceeded` whose ``__cause__`` is the
    last crash.

    Args:
        max_restarts: Restarts allowed inside the sliding window.
        within_secs: Length of the window, in seconds of trio time.
        backoff_secs: First backoff.
        max_backoff_secs: Longest backoff.
    """

    max_restarts: int = 3
    within_secs: float = attrs.field(default=5.0, validator=_positive)
    backoff_secs: float = attrs.field(default=0.1, validator=_positive)
    max_backoff_secs: float = attrs.field(default=5.0, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if self.max_restarts < 0:
            raise ValueError(
                f"RestartPolicy.max_restarts must be 0 or more, got {self.max_restarts}"
            )

    def backoff(self, recent_restarts: int) -> float:
        """The wait before the next restart, given how many restarts the window holds."""
        return float(min(self.backoff_secs * 2.0 ** max(recent_restarts, 0), self.max_backoff_secs))


def collapse_exception_group(
    group: BaseExceptionGroup[Any], prefer: BaseException | None = None
) -> BaseException:
    """Return the single real error of ``group`` (ignoring ``Cancelled``); one of its
    ``Cancelled`` when it holds nothing else (``prefer`` if it is one of them: the exception
    the nursery's own block raised, which then goes on as it came); else the group itself.

    A group of nothing but cancellations becomes one ``Cancelled``, so that nurseries nested
    inside one another (sessions entered in an ``AsyncExitStack``, a level each) cancelled
    from outside do not nest a group per level: trio matches ``Cancelled`` in a group
    recursively, and a few hundred levels overflowed Python's stack. The walk is iterative
    for the same reason.
    """
    errors: list[BaseException] = []
    cancelled: BaseException | None = None
    todo: list[BaseException] = [group]
    while todo:
        exc = todo.pop()
        if isinstance(exc, BaseExceptionGroup):
            todo.extend(reversed(exc.exceptions))
        elif isinstance(exc, trio.Cancelled):
            if cancelled is None or exc is prefer:
                cancelled = exc
        else:
            errors.append(exc)
    if len(errors) == 1:
        return errors[0]
    if not errors and cancelled is not None:
        return cancelled
    return group
