"""The retry policy follows openai-python's rules (pure decisions, no I/O)."""

from __future__ import annotations

import email.utils

import pytest

from actors.client import RetryPolicy
from actors.client._retry import parse_retry_after

NOW = 1_760_000_000.0


def decide(
    status: int, headers: dict[str, str] | None = None, retries_taken: int = 0
) -> tuple[bool, float]:
    decision = RetryPolicy().for_status(
        status, headers or {}, retries_taken=retries_taken, random_value=0.0, now=NOW
    )
    return decision.retry, decision.delay


class TestStatuses:
    """408, 409, 429 and 5xx are retried; other statuses are not."""

    @pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 599])
    def test_retried(self, status: int) -> None:
        """Transient statuses are retried with the initial backoff."""
        assert decide(status) == (True, 0.5)

    @pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422])
    def test_not_retried(self, status: int) -> None:
        """Other client errors are final."""
        assert decide(status)[0] is False

    def test_should_retry_header_overrides_both_ways(self) -> None:
        """x-should-retry: true retries a 400; false stops a 500."""
        assert decide(400, {"x-should-retry": "true"})[0] is True
        assert decide(500, {"x-should-retry": "false"})[0] is False

    def test_no_retries_left(self) -> None:
        """After max_retries retries, nothing more is retried."""
        assert decide(500, retries_taken=2)[0] is False
        assert (
            RetryPolicy(max_retries=0)
            .for_failure(retries_taken=0, random_value=0.0, timeout=False)
            .retry
            is False
        )


class TestDelays:
    """Backoff is capped exponential with up to 25 % jitter; server hints win when sane."""

    def test_backoff_sequence(self) -> None:
        """0.5, 1, 2, 4, 8, 8 s without jitter; minus at most 25 % with it."""
        policy = RetryPolicy()
        assert [policy.backoff(n, 0.0) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
        assert policy.backoff(0, 0.999999) == pytest.approx(0.375, abs=1e-6)
        assert policy.backoff(10, 1.0) == 6.0

    def test_retry_after_ms_first(self) -> None:
        """retry-after-ms is used exactly, before retry-after."""
        assert decide(429, {"retry-after-ms": "150", "retry-after": "9"}) == (True, 0.15)

    def test_retry_after_seconds(self) -> None:
        """retry-after in (fractional) seconds is used exactly."""
        assert decide(503, {"retry-after": "0.3"}) == (True, 0.3)

    def test_retry_after_http_date(self) -> None:
        """retry-after as an HTTP date becomes a delay from now."""
        date = email.utils.formatdate(NOW + 30, usegmt=True)
        retry, delay = decide(429, {"retry-after": date})
        assert retry is True
        assert delay == pytest.approx(30.0)

    def test_hint_above_limit_means_no_retry(self) -> None:
        """A server asking for more than 120 s is not retried."""
        retry, _ = decide(429, {"retry-after": "300"})
        assert retry is False
        assert decide(429, {"retry-after": "120"}) == (True, 120.0)

    def test_zero_or_past_hint_falls_back_to_backoff(self) -> None:
        """A non-positive hint is ignored in favour of the backoff."""
        assert decide(429, {"retry-after": "0"}) == (True, 0.5)
        past = email.utils.formatdate(NOW - 30, usegmt=True)
        assert decide(429, {"retry-after": past}) == (True, 0.5)

    def test_unparsable_hints(self) -> None:
        """Garbage hints are ignored."""
        assert parse_retry_after({"retry-after": "soon"}, now=NOW) is None
        assert parse_retry_after({"retry-after-ms": "x", "retry-after": "2"}, now=NOW) == 2.0
        assert parse_retry_after({}, now=NOW) is None


class TestFailures:
    """Connection failures and timeouts before any output are retried by policy."""

    def test_connection_failure(self) -> None:
        """A connection error is retried with backoff."""
        decision = RetryPolicy().for_failure(retries_taken=1, random_value=0.0, timeout=False)
        assert (decision.retry, decision.delay) == (True, 1.0)

    def test_timeouts_can_be_excluded(self) -> None:
        """retry_timeouts=False makes timeouts final."""
        policy = RetryPolicy(retry_timeouts=False)
        assert policy.for_failure(retries_taken=0, random_value=0.0, timeout=True).retry is False

    def test_policy_validation(self) -> None:
        """Negative or nonsensical settings are refused."""
        with pytest.raises(ValueError, match="max_retries"):
            RetryPolicy(max_retries=-1)
        with pytest.raises(ValueError, match="jitter"):
            RetryPolicy(jitter=2)
