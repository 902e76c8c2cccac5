"""Tuning CPython's cyclic garbage collector for many concurrent sessions: :func:`tune_gc`.

Why the default thresholds cost a busy process so much: the collector examines its youngest
generation every 700 net new container objects, and moves what survives two such
examinations into the oldest generation. With hundreds of sessions streaming, every
examination finds thousands of objects that are merely in flight (frames between
two stages, a request's parts) and promotes them; once the promotions since the last full
collection reach a quarter of the oldest generation, the collector examines *everything*
(every session's actors, tasks and buffers): a pause of 100 ms or more at 500 sessions, a few
times per turn, whatever the code does. A larger youngest generation is examined less often,
so in-flight objects are mostly gone by then and few are promoted: fewer full collections.
"""

from __future__ import annotations

import gc

__all__ = ["DEFAULT_YOUNG_THRESHOLD", "tune_gc"]

#: The youngest generation's threshold :func:`tune_gc` sets by default (CPython's is 700).
DEFAULT_YOUNG_THRESHOLD = 5_000


def tune_gc(young: int = DEFAULT_YOUNG_THRESHOLD) -> tuple[int, int, int]:
    """Raise the threshold of the collector's youngest generation, process-wide; the
    previous thresholds, to give back to :func:`gc.set_threshold` to undo it.

    For a process that runs many sessions at once (a server, a worker): measured with 500
    quick-start sessions streaming a turn each, the collector's time in the turn fell from
    about a fifth of the CPU to under a tenth, and its full collections (pauses of 100 ms or
    more) from two or three per turn to none or one (``docs/benchmarks.md``). Each young
    collection takes longer (a few milliseconds at 5,000). It changes the whole
    interpreter, other libraries included, which is why the runtime never calls it by
    itself; ``trouper worker`` does.

    Args:
        young: The new threshold of the youngest generation (at least 1; not lowered: a
            threshold above it is kept).

    Raises:
        ValueError: ``young`` is not a positive integer.
    """
    if isinstance(young, bool) or not isinstance(young, int) or young < 1:
        raise ValueError(f"young must be a positive integer, got {young!r}")
    previous = gc.get_threshold()
    gc.set_threshold(max(young, previous[0]), previous[1], previous[2])
    return previous
