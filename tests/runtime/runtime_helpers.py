"""Frames and small actors shared by the runtime tests.

The runtime has no domain frames (text, speech...): these test-only frames stand in for the
ones a layer built on it defines.
"""

from __future__ import annotations

import enum

import attrs
import trio

from runtime import (
    Actor,
    ControlFrame,
    DataFrame,
    Frame,
    FrameDirection,
    MetricsData,
    SystemFrame,
)


@attrs.frozen
class Text(DataFrame):
    """A chunk of text (interruptible, like any data frame)."""

    text: str


@attrs.frozen
class Said(Text):
    """Text that an interruption never drops (its default ``interruptible`` is False)."""

    interruptible: bool = attrs.field(default=False, kw_only=True, eq=False, repr=False)


@attrs.frozen
class TurnBegins(ControlFrame):
    """An ordered signal that opens a turn; never dropped."""

    interruptible: bool = attrs.field(default=False, kw_only=True, eq=False, repr=False)


@attrs.frozen
class Latency(MetricsData):
    """A measured delay, in seconds."""

    value: float = 0.0
    label: str | None = None


@attrs.frozen
class Count(MetricsData):
    """A counted quantity."""

    value: int = 0


class Kind(enum.StrEnum):
    """Error categories of a test layer (``ErrorFrame.category`` takes any string)."""

    APPLICATION = "application"
    CONNECTIVITY = "connectivity"
    TIMEOUT = "timeout"


@attrs.frozen
class Ping(DataFrame):
    """A numbered data frame."""

    n: int = 0


@attrs.frozen
class Note(SystemFrame):
    """A system frame with a label."""

    text: str = ""


class Upper(Actor[Text]):
    """Upper-cases text; everything else passes through."""

    accepts = (Text,)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        assert isinstance(frame, Text)
        await self.push_frame(Text(frame.text.upper()), direction)


class Incr(Actor[Ping]):
    """Adds one to every ``Ping``."""

    accepts = (Ping,)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        assert isinstance(frame, Ping)
        await self.push_frame(Ping(frame.n + 1), direction)


class Gate(Actor[Ping | Note]):
    """Holds every ``Ping`` until :meth:`open` is called, then pushes a new ``Ping`` with the
    same number (created in the handler, so it carries the handler's turn).

    Records what it started, finished and what was cancelled mid-handler; ``Note`` frames
    (system lane) are recorded and passed on at once.
    """

    accepts = (Ping, Note)

    def __init__(self, *, name: str | None = None, mailbox_size: int | None = None) -> None:
        super().__init__(name=name, mailbox_size=mailbox_size)
        self.opened = trio.Event()
        self.started: list[int] = []
        self.finished: list[int] = []
        self.cancelled: list[int] = []
        self.notes: list[str] = []

    def open(self) -> None:
        self.opened.set()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, Note):
            self.notes.append(frame.text)
            await self.push_frame(frame, direction)
            return
        assert isinstance(frame, Ping)
        self.started.append(frame.n)
        try:
            await self.opened.wait()
        except trio.Cancelled:
            self.cancelled.append(frame.n)
            raise
        self.finished.append(frame.n)
        await self.push_frame(Ping(frame.n), direction)


class Sleeper(Actor[Ping]):
    """Takes ``delay`` trio seconds per ``Ping``, then passes it on."""

    accepts = (Ping,)

    def __init__(self, delay: float, *, name: str | None = None) -> None:
        super().__init__(name=name)
        self.delay = delay
        self.cancelled: list[int] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        assert isinstance(frame, Ping)
        try:
            await trio.sleep(self.delay)
        except trio.Cancelled:
            self.cancelled.append(frame.n)
            raise
        await self.push_frame(frame, direction)


def numbers(frames: list[Frame]) -> list[int]:
    """The numbers of the ``Ping`` frames among ``frames``."""
    return [f.n for f in frames if isinstance(f, Ping)]
