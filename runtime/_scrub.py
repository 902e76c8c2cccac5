"""Scrubbers: a process-wide hook that hides sensitive text before it leaves the runtime.

The runtime does not know what is sensitive for an application; the layer that does (the
stages hide credentials, say) registers a :class:`Scrubber` with :func:`add_scrubber`. From
then on every :class:`~runtime.ErrorFrame` an actor reports with ``push_error`` (its text and
its exception) and every log line written through :func:`runtime.logging.configure` pass
through every registered scrubber, in the order they were added.

With no scrubber registered, everything passes unchanged.
"""

from __future__ import annotations

import threading
from typing import Protocol, TypeVar

__all__ = ["Scrubber", "add_scrubber", "remove_scrubber", "scrub", "scrub_exception"]

T = TypeVar("T")
E = TypeVar("E", bound=BaseException)


class Scrubber(Protocol):
    """What :func:`add_scrubber` takes: an object that hides sensitive parts of values."""

    def value(self, value: T) -> T:
        """Return ``value`` with its sensitive parts hidden.

        ``value`` is a string or a JSON-like structure (a log event dict, say): a scrubber
        returns a copy of the same kind and leaves values it does not understand as they are.
        """
        ...

    def exception(self, error: E) -> E:
        """Hide the sensitive parts of an exception (and its chain); return it, or the copy
        that replaces it when it cannot be changed in place."""
        ...


_scrubbers: tuple[Scrubber, ...] = ()
_lock = threading.Lock()


def add_scrubber(scrubber: Scrubber) -> None:
    """Register ``scrubber`` for the whole process; adding the same object again does nothing.

    Args:
        scrubber: The scrubber, applied after those registered before it.
    """
    global _scrubbers
    with _lock:
        if not any(s is scrubber for s in _scrubbers):
            _scrubbers = (*_scrubbers, scrubber)


def remove_scrubber(scrubber: Scrubber) -> None:
    """Unregister ``scrubber``; does nothing if it is not registered.

    Args:
        scrubber: A scrubber given to :func:`add_scrubber`.
    """
    global _scrubbers
    with _lock:
        _scrubbers = tuple(s for s in _scrubbers if s is not scrubber)


def scrub(value: T) -> T:
    """Pass a string (or a JSON-like structure) through every registered scrubber.

    Args:
        value: The value.

    Returns:
        The scrubbed value (``value`` itself when no scrubber is registered).
    """
    for scrubber in _scrubbers:
        value = scrubber.value(value)
    return value


def scrub_exception(error: E) -> E:
    """Pass an exception (with its chain) through every registered scrubber.

    Args:
        error: The exception.

    Returns:
        The exception, or the copy a scrubber replaced it with.
    """
    for scrubber in _scrubbers:
        error = scrubber.exception(error)
    return error
