"""``runtime.tune_gc``: the collector's youngest threshold raised, the old ones returned."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from runtime import tune_gc


@pytest.fixture(autouse=True)
def _thresholds_restored() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


def test_it_raises_the_young_threshold_and_returns_the_previous_ones() -> None:
    gc.set_threshold(700, 10, 10)
    assert tune_gc() == (700, 10, 10)
    assert gc.get_threshold() == (5_000, 10, 10)
    previous = tune_gc(20_000)
    assert previous == (5_000, 10, 10)
    assert gc.get_threshold() == (20_000, 10, 10)
    gc.set_threshold(*previous)
    assert gc.get_threshold() == (5_000, 10, 10)


def test_it_never_lowers_a_higher_threshold() -> None:
    gc.set_threshold(50_000, 20, 30)
    assert tune_gc(5_000) == (50_000, 20, 30)
    assert gc.get_threshold() == (50_000, 20, 30)


@pytest.mark.parametrize("young", [0, -5, 2.5, True, "5000"])
def test_a_threshold_that_is_not_a_positive_integer_is_refused(young: object) -> None:
    before = gc.get_threshold()
    with pytest.raises(ValueError, match="young must be a positive integer"):
        tune_gc(young)  # type: ignore[arg-type]
    assert gc.get_threshold() == before
