"""Frames: the immutable messages actors exchange.

Every frame is a frozen, slotted attrs class. A frame carries a unique ``id``, the wall-clock
time it was created (``created_at``), the ``turn`` it belongs to and whether an interruption
may drop it (``interruptible``).

The ``turn`` is filled in automatically: a frame created while an actor handles a frame of turn
*N* belongs to turn *N*; a frame created outside any actor (by the application) gets ``None``
and is stamped with the session's current turn when it enters the session.

Three families decide how the runtime transports a frame:

* :class:`SystemFrame` travels on an actor's **system lane**: never blocks its sender, is served
  before queued data and is never dropped by an interruption.
* :class:`DataFrame` and :class:`ControlFrame` travel on the ordered, bounded **data lane**.
  When interruptible, they are dropped once their turn has been interrupted.

The runtime knows no application domain: a layer built on it defines its own frames by
subclassing these (``DataFrame`` for content, ``ControlFrame`` for ordered signals,
``SystemFrame`` for urgent ones), and :mod:`runtime.serialization` handles them like its own.
"""

from __future__ import annotations

import enum
import itertools
import time
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import attrs

from ._params import PipelineParams
from ._turn import CURRENT_TURN

__all__ = [
    "ActorStoppedFrame",
    "CancelFrame",
    "ControlFrame",
    "DataFrame",
    "EndFrame",
    "ErrorFrame",
    "Frame",
    "FrameDirection",
    "InterruptionFrame",
    "InterruptionMarkerFrame",
    "MetricsData",
    "MetricsFrame",
    "StartFrame",
    "SystemFrame",
]

_ids = itertools.count(1)

#: attrs field metadata marking a field that :mod:`runtime.serialization` leaves out (public
#: there as ``NOT_SERIALIZED``); a deserialized frame gets the field's default instead.
_NOT_SERIALIZED: Mapping[str, object] = MappingProxyType({"trouper.serialize": False})


def _to_tuple(value: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(value)


def _tag(value: object) -> str:
    """An open category tag as a plain string (an enum member gives its value)."""
    if isinstance(value, enum.Enum):
        value = value.value
    return value if type(value) is str else str(value)


class FrameDirection(enum.IntEnum):
    """Which way a frame travels through a topology."""

    DOWNSTREAM = 1
    """From the input end towards the output end (the default)."""
    UPSTREAM = 2
    """Back towards the input end (errors, feedback for earlier stages)."""


@attrs.frozen(slots=True)
class Frame:
    """Base class of every frame.

    Args:
        id: Unique, increasing identifier (assigned automatically).
        created_at: Wall-clock creation time in seconds since the epoch (automatic).
        turn: The turn the frame belongs to (automatic, see the module docs).
        interruptible: Whether an interruption of its turn drops the frame while it is queued.
            Subclasses change the default; an instance may override it.
    """

    id: int = attrs.field(factory=_ids.__next__, kw_only=True, eq=False)
    created_at: float = attrs.field(factory=time.time, kw_only=True, eq=False, repr=False)
    turn: int | None = attrs.field(factory=CURRENT_TURN.get, kw_only=True, eq=False)
    interruptible: bool = attrs.field(default=True, kw_only=True, eq=False, repr=False)

    @property
    def name(self) -> str:
        """A readable name, ``ClassName#id``."""
        return f"{type(self).__name__}#{self.id}"


@attrs.frozen(slots=True)
class SystemFrame(Frame):
    """High-priority frame: system lane, overtakes data, survives interruptions."""


@attrs.frozen(slots=True)
class DataFrame(Frame):
    """Ordered content frame on the bounded data lane; dropped by interruptions."""


@attrs.frozen(slots=True)
class ControlFrame(Frame):
    """Ordered control frame on the bounded data lane; dropped by interruptions by default."""


# --------------------------------------------------------------------------- lifecycle


@attrs.frozen(slots=True)
class StartFrame(SystemFrame):
    """First frame through every actor: the runtime calls ``on_start`` when it arrives.

    An actor keeps the ``StartFrame`` it started with (:attr:`~runtime.Actor.start_frame`);
    a restarted actor receives that same frame again.

    Args:
        params: The settings of the session, opaque to the runtime: the task's
            :class:`~runtime.PipelineParams` (or a subclass of it carrying settings of the
            stages).
    """

    params: PipelineParams = attrs.field(factory=PipelineParams)


@attrs.frozen(slots=True)
class EndFrame(ControlFrame):
    """Graceful end: travels behind queued data, then every actor stops (drain then stop).

    An actor stops as soon as the frame has passed it; frames still travelling upstream
    after that (an error reported by a later stage) pass the stopped actor and reach the
    input end, but are not handled by it.
    """

    reason: str | None = None
    interruptible: bool = attrs.field(default=False, kw_only=True, eq=False, repr=False)


@attrs.frozen(slots=True)
class CancelFrame(SystemFrame):
    """Immediate stop: overtakes queued data; queued frames are abandoned."""

    reason: str | None = None


@attrs.frozen(slots=True)
class InterruptionFrame(SystemFrame):
    """An interruption: the current turn's work is cancelled and its queued frames dropped.

    The runtime does the cancelling itself the moment the frame enters the session (or
    :meth:`~runtime.PipelineTask.interrupt` is called); the frame then still travels the
    topology so stages can react (keep partial results, cancel pending work, ...).
    """


@attrs.frozen(slots=True)
class InterruptionMarkerFrame(ControlFrame):
    """Where an interruption fell in a stream of ordered data.

    At every interruption, once the stale frames are purged, the runtime queues one marker
    (data lane, uninterruptible; its ``turn`` is the turn the interruption started):

    * to the downstream neighbours of every actor with ``marks_interruptions = True``, behind
      what that actor pushed downstream before the interruption and ahead of what it pushes
      after. From there it travels downstream in order, like any data frame;
    * directly to an actor that names this class in its ``accepts`` and has a path upstream
      without a marking actor, behind what is queued for it.

    So an actor that names it knows, in the order of its data, which frames left the marking
    stage before the interruption and which after. It reaches ``process_frame`` only in
    actors that name it (not in those that take every frame): the others pass it on, and the
    task's sink drops it.
    """

    interruptible: bool = attrs.field(default=False, kw_only=True, eq=False, repr=False)


@attrs.frozen(slots=True)
class ActorStoppedFrame(SystemFrame):
    """Tells a watcher that an actor it watches has stopped.

    Args:
        actor: Name of the actor that stopped.
        reason: ``"stopped"`` for a normal stop, ``"crashed"`` when it failed for good.
        error: ``"ExceptionType: message"`` of the failure, if any.
    """

    actor: str
    reason: str
    error: str | None = None


# --------------------------------------------------------------------------- errors


@attrs.frozen(slots=True)
class ErrorFrame(SystemFrame):
    """A recoverable (or, with ``fatal=True``, session-ending) error, pushed upstream.

    Args:
        error: Human-readable message. Never contains secrets.
        fatal: When true the session is cancelled once the frame reaches the input end.
        exception: The exception behind it, if any. Not serialized: a deserialized
            ``ErrorFrame`` has ``exception=None``; ``error`` keeps the text.
        category: What kind of failure it was: an open tag (``"unknown"`` by default) whose
            values the reporting layer defines. An enum member is stored as its value, a
            plain string, so a frame reads the same before and after serialization and
            still compares equal to a ``str`` enum member (``frame.category == Kind.X``).
        source: Name of the actor that reported it.
    """

    error: str
    fatal: bool = False
    exception: BaseException | None = attrs.field(
        default=None, eq=False, repr=False, metadata=_NOT_SERIALIZED
    )
    category: str = attrs.field(default="unknown", converter=_tag)
    source: str | None = None


# --------------------------------------------------------------------------- metrics


@attrs.frozen(slots=True)
class MetricsData:
    """One measurement: the base of the values a :class:`MetricsFrame` carries.

    Subclass it (an attrs class) for each kind of measurement; the subclasses are serialized
    with their type (:func:`runtime.serialization.register_tagged_base`).

    Args:
        processor: Name of the actor that measured it.
    """

    processor: str


@attrs.frozen(slots=True)
class MetricsFrame(SystemFrame):
    """Carries measurements (see :class:`MetricsData` subclasses)."""

    data: Sequence[MetricsData] = attrs.field(factory=tuple, converter=_to_tuple)
