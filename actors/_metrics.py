"""The metrics collector: aggregates the LLM's measurements per session and per model.

It never slows the LLM: reports are offered without waiting, and when its mailbox is full a
report is dropped and counted instead.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import trio

from runtime import Actor, ActorDeadError, DataFrame, Frame, FrameDirection, MetricsData

from ._frames import (
    LLMMetricsData,
    LLMTokenUsage,
    LLMUsageMetricsData,
    ProcessingMetricsData,
    TTFBMetricsData,
    _to_tuple,
)

__all__ = ["MetricsCollector", "MetricsReport", "ModelMetrics", "TimingStats"]


@attrs.frozen(slots=True)
class MetricsReport(DataFrame):
    """Measurements offered to the collector."""

    data: tuple[MetricsData, ...] = attrs.field(converter=_to_tuple)
    interruptible: bool = attrs.field(default=False, kw_only=True, eq=False, repr=False)


@attrs.frozen
class TimingStats:
    """Count, mean, min and max of a timing, in seconds."""

    count: int = 0
    total: float = 0.0
    min: float = math.inf
    max: float = 0.0

    @property
    def mean(self) -> float:
        """Mean value (0 when there is none)."""
        return self.total / self.count if self.count else 0.0

    def add(self, value: float) -> TimingStats:
        """A copy with ``value`` included."""
        return TimingStats(
            self.count + 1, self.total + value, min(self.min, value), max(self.max, value)
        )


@attrs.frozen
class ModelMetrics:
    """Aggregated metrics of one model in one session."""

    model: str
    ttfb: TimingStats = TimingStats()
    processing: TimingStats = TimingStats()
    completions: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    def as_dict(self) -> dict[str, Any]:
        """Plain data for logs and JSON (means instead of sums)."""
        return {
            "model": self.model,
            "ttfb_mean_s": round(self.ttfb.mean, 6),
            "ttfb_count": self.ttfb.count,
            "processing_mean_s": round(self.processing.mean, 6),
            "completions": self.completions,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "cached_tokens": self.cached_tokens,
            "reasoning_tokens": self.reasoning_tokens,
        }


class MetricsCollector(Actor[MetricsReport]):
    """Collects TTFB, processing time and token usage, per model.

    Read it with :meth:`summary` (per model) and :attr:`dropped` (reports lost because the
    collector was behind). The totals are logged when the session ends.

    Args:
        capacity: Reports that may wait before new ones are dropped.
    """

    accepts = (MetricsReport,)
    #: A few frames per turn: no task of its own while idle (see ``Actor.serve_on_demand``).
    serve_on_demand = True

    def __init__(self, *, capacity: int = 256, name: str | None = None) -> None:
        super().__init__(name=name, mailbox_size=capacity)
        self._models: dict[str, dict[str, Any]] = {}
        self.dropped = 0
        self.received = 0

    def offer(self, data: list[MetricsData]) -> bool:
        """Hand measurements over without waiting; False if dropped (counted)."""
        if not data:
            return True
        try:
            self.ref.send_nowait(MetricsReport(tuple(data)))
        except (trio.WouldBlock, ActorDeadError):  # full, or not running: counted as dropped
            self.dropped += 1
            return False
        return True

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Fold one report into the totals."""
        self.process_frame_nowait(frame, direction)

    def process_frame_nowait(self, frame: Frame, direction: FrameDirection) -> bool:
        """Nothing in a report waits: an idle collector folds it in at once, in the task that
        offered it (see ``Actor.process_frame_nowait``)."""
        assert isinstance(frame, MetricsReport)
        self.received += 1
        for item in frame.data:
            self.record(item)
        return True

    def record(self, item: MetricsData) -> None:
        """Fold one measurement into the totals (also usable directly)."""
        model = (item.model if isinstance(item, LLMMetricsData) else None) or "unknown"
        # The running totals of a model are the fields of its ModelMetrics, updated in place
        # (a frozen copy per measurement cost an attrs.evolve each); summary() freezes them.
        totals = self._models.get(model)
        if totals is None:
            totals = self._models[model] = attrs.asdict(ModelMetrics(model), recurse=False)
        if isinstance(item, TTFBMetricsData):
            totals["ttfb"] = totals["ttfb"].add(item.value)
        elif isinstance(item, ProcessingMetricsData):
            totals["processing"] = totals["processing"].add(item.value)
        elif isinstance(item, LLMUsageMetricsData):
            usage: LLMTokenUsage = item.value
            totals["completions"] += 1
            totals["prompt_tokens"] += usage.prompt_tokens
            totals["completion_tokens"] += usage.completion_tokens
            totals["total_tokens"] += usage.total_tokens
            totals["cached_tokens"] += usage.cache_read_input_tokens or 0
            totals["reasoning_tokens"] += usage.reasoning_tokens or 0

    def summary(self) -> dict[str, ModelMetrics]:
        """Aggregated metrics per model."""
        return {model: ModelMetrics(**totals) for model, totals in self._models.items()}

    async def on_stop(self) -> None:
        """Log the session's totals."""
        self.log.info(
            "llm metrics",
            models=[m.as_dict() for m in self.summary().values()],
            dropped_reports=self.dropped,
        )
