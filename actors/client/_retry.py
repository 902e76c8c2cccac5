"""Retry policy: which failures are retried and how long to wait, after openai-python's rules.

* At most ``max_retries`` retries (2 by default, so 3 requests).
* Retried: connection failures and timeouts (connect, first token) that happen before any output was
  delivered, and HTTP 408, 409, 429 and >= 500.
* ``x-should-retry: true|false`` on an error response overrides the status rule, both ways.
* A ``retry-after-ms`` / ``retry-after`` (seconds or HTTP date) hint is used as the delay, exactly,
  when ``0 < hint <= max_retry_after`` (120 s); a larger hint means "do not retry"; otherwise the
  delay is ``min(initial_delay * 2**n, max_delay)`` minus a random jitter of up to 25 % (n = retries
  already made).
* Nothing is ever retried once a chunk with output (content, refusal, reasoning or a tool call) was
  delivered to the consumer; that rule lives in the client, which knows what was delivered.

The policy is pure (no I/O, no clock, no randomness of its own), so it is tested directly.
"""

from __future__ import annotations

import email.utils
import math
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["RetryDecision", "RetryPolicy", "parse_retry_after"]


def _non_negative(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
        raise ValueError(f"RetryPolicy.{attribute.name}={value!r}: must be a number >= 0")


def _jitter(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"RetryPolicy.{attribute.name}={value!r}: must be between 0 and 1")


def _max_retries(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"RetryPolicy.max_retries={value!r}: must be an integer >= 0")


def parse_retry_after(headers: Mapping[str, str], *, now: float) -> float | None:
    """The server's retry hint in seconds.

    ``retry-after-ms`` (milliseconds) is read first, then ``retry-after`` as (possibly fractional)
    seconds, then ``retry-after`` as an HTTP date.

    Args:
        headers: Response headers (case-insensitive mapping, or lower-case keys).
        now: The current Unix time (wall clock), to turn an HTTP date into a delay.

    Returns:
        The delay in seconds (may be negative or infinite), or ``None`` without a usable hint.
    """
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            return float(raw_ms) / 1000.0
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        pass
    parsed = email.utils.parsedate_tz(raw)
    if parsed is None:
        return None
    return float(email.utils.mktime_tz(parsed)) - now


@attrs.frozen
class RetryDecision:
    """Whether to retry a failed attempt and after how long.

    Attributes:
        retry: Retry or give up.
        delay: Seconds to wait before the next attempt (0 when not retrying).
        reason: A short explanation for logs.
    """

    retry: bool
    delay: float = 0.0
    reason: str = ""


@attrs.frozen
class RetryPolicy:
    """When and how the client retries a failed request.

    Attributes:
        max_retries: Retries after the first attempt (0 disables retrying).
        initial_delay: Backoff before the first retry, in seconds.
        max_delay: Cap of the exponential backoff, in seconds.
        jitter: Fraction of the backoff randomly taken off (0.25: wait 75-100 % of it).
        max_retry_after: Largest server hint honoured; a larger one stops retrying.
        retry_statuses: Statuses retried besides every status >= 500.
        retry_timeouts: Retry connect and first-token timeouts (before any output).
    """

    max_retries: int = attrs.field(default=2, validator=_max_retries)
    initial_delay: float = attrs.field(default=0.5, validator=_non_negative)
    max_delay: float = attrs.field(default=8.0, validator=_non_negative)
    jitter: float = attrs.field(default=0.25, validator=_jitter)
    max_retry_after: float = attrs.field(default=120.0, validator=_non_negative)
    retry_statuses: frozenset[int] = attrs.field(
        default=frozenset({408, 409, 429}), converter=frozenset
    )
    retry_timeouts: bool = True

    def backoff(self, retries_taken: int, random_value: float) -> float:
        """The exponential backoff before the next retry.

        Args:
            retries_taken: Retries already made (0 before the first retry).
            random_value: A number in [0, 1) drawn by the caller.

        Returns:
            ``min(initial_delay * 2**retries_taken, max_delay) * (1 - jitter * random_value)``.
        """
        base = min(self.initial_delay * 2.0 ** min(retries_taken, 1000), self.max_delay)
        return base * (1.0 - self.jitter * random_value)

    def for_status(
        self,
        status: int,
        headers: Mapping[str, str],
        *,
        retries_taken: int,
        random_value: float,
        now: float,
    ) -> RetryDecision:
        """Decide about an HTTP error response.

        Args:
            status: The response status.
            headers: The response headers.
            retries_taken: Retries already made for this call.
            random_value: A number in [0, 1) for the jitter.
            now: The current Unix time, for HTTP-date hints.

        Returns:
            The decision, with the delay to wait when retrying.
        """
        if retries_taken >= self.max_retries:
            return RetryDecision(False, reason="no retries left")
        hint = parse_retry_after(headers, now=now)
        if hint is not None and (math.isnan(hint) or hint > self.max_retry_after):
            return RetryDecision(
                False, reason=f"server asked to wait {hint:g} s (> {self.max_retry_after:g} s)"
            )
        override = headers.get("x-should-retry", "").strip().lower()
        if override == "false":
            return RetryDecision(False, reason="server sent x-should-retry: false")
        if override != "true" and not (status >= 500 or status in self.retry_statuses):
            return RetryDecision(False, reason=f"status {status} is not retried")
        if hint is not None and 0 < hint <= self.max_retry_after:
            return RetryDecision(True, hint, reason=f"status {status}, server hint {hint:g} s")
        delay = self.backoff(retries_taken, random_value)
        return RetryDecision(True, delay, reason=f"status {status}")

    def for_failure(
        self, *, retries_taken: int, random_value: float, timeout: bool
    ) -> RetryDecision:
        """Decide about a connection failure or timeout that happened before any output.

        Args:
            retries_taken: Retries already made for this call.
            random_value: A number in [0, 1) for the jitter.
            timeout: Whether the failure is a (connect or first-token) timeout.

        Returns:
            The decision, with the backoff to wait when retrying.
        """
        if retries_taken >= self.max_retries:
            return RetryDecision(False, reason="no retries left")
        if timeout and not self.retry_timeouts:
            return RetryDecision(False, reason="timeouts are not retried")
        return RetryDecision(
            True,
            self.backoff(retries_taken, random_value),
            reason="timeout" if timeout else "connection error",
        )
