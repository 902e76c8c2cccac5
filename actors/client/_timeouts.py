"""The four deadlines of a streaming call."""

from __future__ import annotations

import math
from typing import Any

import attrs

__all__ = ["Timeouts"]


def _seconds(optional: bool) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None and optional:
            return
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or math.isnan(value)
            or value <= 0
        ):
            allowed = "a number of seconds > 0" + (" or None" if optional else "")
            raise ValueError(f"Timeouts.{attribute.name}={value!r}: expected {allowed}")

    return check


@attrs.frozen
class Timeouts:
    """Deadlines of one call, in seconds (trio time). Each raises its own exception class.

    Attributes:
        connect: Opening the connection (TCP + TLS) or waiting for a pooled one
            (:class:`~actors.client.ConnectTimeoutError`). Also bounds sending the request body.
        first_token: From the start of an attempt to the first chunk carrying output: content,
            refusal, reasoning or a tool-call fragment
            (:class:`~actors.client.FirstTokenTimeoutError`). ``None`` disables it.
        idle: Longest wait for the next chunk once output has started
            (:class:`~actors.client.StreamIdleTimeoutError`); keep-alive comments and bytes
            that complete no chunk do not count. Before the first output only ``first_token``
            applies, unless it is ``None``: then ``idle`` bounds every wait from the start of
            the attempt, the response head included. ``None`` disables it.
        total: The whole call, retries and backoff included
            (:class:`~actors.client.TotalTimeoutError`). ``None`` (the default) disables it.
    """

    connect: float = attrs.field(default=5.0, validator=_seconds(optional=False))
    first_token: float | None = attrs.field(default=30.0, validator=_seconds(optional=True))
    idle: float | None = attrs.field(default=30.0, validator=_seconds(optional=True))
    total: float | None = attrs.field(default=None, validator=_seconds(optional=True))
