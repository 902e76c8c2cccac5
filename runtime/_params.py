"""Per-session settings: :class:`PipelineParams`, carried to every actor by the ``StartFrame``."""

from __future__ import annotations

import attrs

__all__ = ["PipelineParams"]


@attrs.frozen
class PipelineParams:
    """How a :class:`~runtime.PipelineTask` runs its topology.

    The task hands this object to every actor in the ``StartFrame`` it sends (and again to an
    actor its restart policy restarts): read it in a stage with
    ``self.start_frame.params``. The runtime uses only the fields below; subclass it (an attrs
    class) to carry settings of your own stages, e.g. ``actors.PipelineParams``.

    Args:
        mailbox_size: Default data-lane capacity of every actor (backpressure bound).
        idle_timeout_secs: Cancel the session when no frame reached either end (and none was
            queued) for this long. ``None`` (default): never.
        start_timeout_secs: How long the ``StartFrame`` may take to cross the topology.
        cancel_timeout_secs: How long a ``CancelFrame`` may take before the rest is torn down.
        stop_timeout_secs: Bound on each actor's ``on_stop``.
    """

    mailbox_size: int = attrs.field(default=64)
    idle_timeout_secs: float | None = None
    start_timeout_secs: float = 20.0
    cancel_timeout_secs: float = 5.0
    stop_timeout_secs: float = 5.0

    @mailbox_size.validator
    def _check_mailbox(self, _: object, value: int) -> None:
        if value < 1:
            raise ValueError(f"PipelineParams.mailbox_size must be at least 1, got {value}")
