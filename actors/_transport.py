"""Output stages, and a text transport: typed user lines in, streamed assistant text out.

:class:`OutputTransport` is the base of every stage that shows frames to the user: it keeps
the conversation true to what was shown (see its docs). :class:`TextTransport` stands in for a
voice transport + STT/TTS: ``transport.input()`` turns lines of text into
``TranscriptionFrame``s, ``transport.output()`` hands every frame that leaves the LLM to a
callback (text deltas, tool-call progress, response boundaries) and keeps track of when the
assistant has finished answering (tool calls and their follow-up answer included).
"""

from __future__ import annotations

import datetime
from collections.abc import Awaitable, Callable

import trio

from runtime import Actor, Frame, FrameDirection

from ._frames import (
    FunctionCallCancelFrame,
    FunctionCallResultFrame,
    FunctionCallsStartedFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)

__all__ = [
    "OutputCallback",
    "OutputTransport",
    "TextInputTransport",
    "TextOutputTransport",
    "TextTransport",
]

#: Receives every frame that reaches the output (sync or async).
OutputCallback = Callable[[Frame], Awaitable[None] | None]

#: What a transport with no answer coming waits on: an event that is set, shared (nothing
#: can clear one), so an idle transport keeps no event of its own.
_IDLE = trio.Event()
_IDLE.set()


class TextInputTransport(Actor[Frame]):
    """The input end: :meth:`TextTransport.send_text` enters the pipeline here."""

    accepts = ()


class OutputTransport(Actor[Frame]):
    """Base class of output stages: whatever it delivers to the user reaches the context.

    Subclass it and override :meth:`deliver`. Put the stage where the output goes (after the
    LLM, before the assistant aggregator). For each downstream frame it first passes the frame
    on with :meth:`~runtime.Actor.push_uninterruptible` (the frame itself, not a copy: no
    interruption drops it on its way from here), and only then delivers it, with nothing
    awaited in between. So
    an interruption either comes before both (the frame is neither shown nor recorded) or
    after both (the frame was shown, and no interruption can drop it on its way to the
    assistant aggregator, which records it). It marks its output at every interruption
    (``marks_interruptions``): the assistant aggregator commits the interrupted answer when
    the marker reaches it, behind everything this stage delivered before the interruption.
    Upstream frames are passed on untouched.
    """

    marks_interruptions = True

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Pass a downstream frame on as delivered, then :meth:`deliver` it."""
        if direction is not FrameDirection.DOWNSTREAM:
            await self.push_frame(frame, direction)
            return
        await self.push_uninterruptible(frame, direction)
        await self.deliver(frame)

    async def deliver(self, frame: Frame) -> None:
        """Show ``frame`` to the user (every downstream frame comes here). Does nothing here.

        Runs in the stage's handler, so an interruption cancels it. A frame this method was
        called with counts as delivered: its text is recorded, even if the interruption
        cancels this method before it has finished showing the frame.
        """


class TextOutputTransport(OutputTransport):
    """The output end: hands each frame to the transport's callback (see OutputTransport).

    With no callback, or one that returns ``None`` (a plain function: it has done so once),
    a frame passes at once, in the stage's synchronous handler (no coroutine per frame), in
    the same order: passed on, then shown. An awaitable the callback returns is awaited
    before the next frame is shown.
    """

    def __init__(self, transport: TextTransport, *, name: str | None = None) -> None:
        super().__init__(name=name)
        self._transport = transport
        # The callback seen to return None: frames pass at once while it is the callback.
        self._plain_callback: OutputCallback | None = None
        # Set while a task awaits what that callback returned after all (see _show_later).
        self._showing: trio.Event | None = None

    def process_frame_nowait(self, frame: Frame, direction: FrameDirection) -> bool:
        """Pass a frame on and show it at once when neither needs waiting (see the class
        docs); else ``False``, and :meth:`process_frame` does it."""
        if direction is not FrameDirection.DOWNSTREAM:
            return self.push_frame_nowait(frame, direction)
        callback = self._transport.on_output
        if (
            (callback is not None and callback is not self._plain_callback)
            or self._showing is not None
            or not self.push_uninterruptible_nowait(frame, direction)
        ):
            return False
        self._transport._observe(frame)
        if callback is not None:
            result = callback(frame)
            if result is not None:
                self._show_later(result)
        return True

    def _show_later(self, result: Awaitable[None]) -> None:
        """The callback, called at once, returned an awaitable after all: await it in a task
        of this stage (an interruption cancels it, as it would the handler), and show the
        frames after it only once it is done."""
        self._plain_callback = None
        showing = self._showing = trio.Event()

        async def show() -> None:
            try:
                await result
            finally:
                self._showing = None
                showing.set()

        # Of the frame's turn: cancelled at once if that turn is over already.
        self.create_task(show, name=f"{self.name}:show", interruptible=True)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """As :class:`OutputTransport`'s, after the showing of the frame before, if a task
        still awaits it."""
        showing = self._showing
        if showing is not None and direction is FrameDirection.DOWNSTREAM:
            await showing.wait()
        await super().process_frame(frame, direction)

    async def deliver(self, frame: Frame) -> None:
        """Track the answer's progress, then show the frame (the ``on_output`` callback)."""
        self._transport._observe(frame)
        callback = self._transport.on_output
        if callback is not None:
            result = callback(frame)
            if result is None:
                self._plain_callback = callback
            else:
                await result


class TextTransport:
    """Typed text in, assistant text out.

    Args:
        on_output: Called with every downstream frame reaching the output (``LLMTextFrame``,
            ``LLMFullResponseStartFrame``/``EndFrame``, function-call frames, metrics...).
        user_id: ``user_id`` of the transcriptions.
        speaking_frames: Wrap each line in ``UserStartedSpeakingFrame``/``UserStoppedSpeakingFrame``
            (as a voice transport would; this interrupts a running answer).
    """

    def __init__(
        self,
        *,
        on_output: OutputCallback | None = None,
        user_id: str = "user",
        speaking_frames: bool = False,
    ) -> None:
        self.on_output = on_output
        self.user_id = user_id
        self.speaking_frames = speaking_frames
        self._input = TextInputTransport()
        self._output = TextOutputTransport(self)
        self._answer_done = _IDLE  # (made for each answer expected)
        self._follow_up_expected = False
        self._open_calls: set[str] = set()
        self._wants_llm = False
        # False from a new line until its answer starts: the end (or late tool results) of an
        # answer to an earlier line, e.g. one this line interrupted, does not complete it.
        self._answering = True
        self.last_answer = ""
        self._parts: list[str] = []

    def input(self) -> TextInputTransport:
        """The input stage (first in the pipeline)."""
        return self._input

    def output(self) -> TextOutputTransport:
        """The output stage (after the LLM)."""
        return self._output

    async def send_text(self, text: str) -> None:
        """Enter one line of user text (a user turn).

        Before the task has started, the line is held and delivered once it has (nothing to
        wait for first).

        Raises:
            TypeError: ``text`` is not a string.
            SessionStateError: the task running this transport has finished, or the
                transport is in no task.
        """
        if not isinstance(text, str):
            raise TypeError(f"send_text takes a str, got {type(text).__name__}")
        self.expect_answer()
        stamp = datetime.datetime.now(datetime.UTC).isoformat()
        sent = False
        try:
            if self.speaking_frames:
                await self._input.push_frame(UserStartedSpeakingFrame())
            await self._input.push_frame(
                TranscriptionFrame(text, user_id=self.user_id, timestamp=stamp)
            )
            sent = True
            if self.speaking_frames:
                await self._input.push_frame(UserStoppedSpeakingFrame())
        except BaseException:
            if not sent:  # the line did not go in: no answer is coming, nothing to wait for
                self._answer_done.set()
            raise

    def expect_answer(self) -> None:
        """An answer is coming that no line of text asked for (an ``LLMRunFrame`` queued to
        the task, e.g. for a greeting): :meth:`wait_answer` waits for it. (:meth:`send_text`
        does this itself.)"""
        self._answer_done = trio.Event()
        self._follow_up_expected = False
        self._answering = False

    async def wait_answer(self) -> str:
        """Wait until the assistant has finished answering the last line (follow-up answers
        after tool calls included, or an interruption/error); returns the last answer's text."""
        await self._answer_done.wait()
        return self.last_answer

    def answer_done(self) -> bool:
        """Whether the assistant is idle."""
        return self._answer_done.is_set()

    def _observe(self, frame: Frame) -> None:
        if type(frame) is LLMTextFrame:  # first: one per token
            if self._answering:
                self._parts.append(frame.text)
            return
        if isinstance(frame, LLMFullResponseStartFrame):
            self._parts = []
            self._follow_up_expected = False
            self._answering = True
        elif not self._answering:
            return
        elif isinstance(frame, LLMTextFrame):
            self._parts.append(frame.text)
        elif isinstance(frame, FunctionCallsStartedFrame):
            self._open_calls = {c.tool_call_id for c in frame.function_calls}
            self._wants_llm = False
            self._follow_up_expected = True
        elif isinstance(frame, FunctionCallResultFrame | FunctionCallCancelFrame):
            self._open_calls.discard(frame.tool_call_id)
            if isinstance(frame, FunctionCallCancelFrame):
                wants = frame.run_llm
            else:
                props = frame.properties
                wants = (
                    props.run_llm
                    if props is not None and props.run_llm is not None
                    else frame.run_llm is not False
                )
            self._wants_llm = self._wants_llm or wants
            if not self._open_calls and not self._wants_llm:
                self._answer_done.set()
        elif isinstance(frame, LLMFullResponseEndFrame):
            self.last_answer = "".join(self._parts)
            if frame.interrupted or frame.error or not self._follow_up_expected:
                self._answer_done.set()

    def interrupted(self) -> None:
        """Mark the current answer as over (call after interrupting the task)."""
        self._answer_done.set()
