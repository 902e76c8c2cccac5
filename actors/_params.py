"""``PipelineParams`` with the conversation stages' settings, and how a stage reads them.

The runtime carries the task's :class:`runtime.PipelineParams` to every actor in its
``StartFrame`` without looking inside; this subclass adds the metrics switches of the
conversation stages. Pass it to the task exactly like Pipecat's::

    task = PipelineTask(pipeline, PipelineParams(enable_metrics=True, enable_usage_metrics=True))

and read it in a stage with :func:`metrics_settings`.
"""

from __future__ import annotations

from typing import Any

import attrs

import runtime

__all__ = ["PipelineParams", "metrics_settings"]


@attrs.frozen
class PipelineParams(runtime.PipelineParams):
    """How a :class:`~runtime.PipelineTask` runs a conversation: the runtime's settings
    (:class:`runtime.PipelineParams`) plus the stages' metrics switches.

    Args:
        enable_metrics: Stages emit timing metrics (TTFB, processing time).
        enable_usage_metrics: Stages emit token usage metrics.
        report_only_initial_ttfb: Only the first TTFB of the session is reported.
    """

    enable_metrics: bool = False
    enable_usage_metrics: bool = False
    report_only_initial_ttfb: bool = False


_DEFAULTS = PipelineParams()


def metrics_settings(actor: runtime.Actor[Any]) -> PipelineParams:
    """The metrics switches ``actor`` started with: the task's params when they are a
    :class:`PipelineParams`, else (a plain :class:`runtime.PipelineParams`, or the actor has
    not started) the defaults, everything off."""
    start = actor.start_frame
    params = start.params if start is not None else None
    return params if isinstance(params, PipelineParams) else _DEFAULTS
