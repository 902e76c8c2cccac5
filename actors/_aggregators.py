"""User and assistant context aggregators: the pipeline stages that feed the context store."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs
import trio

from runtime import (
    Actor,
    ActorError,
    ActorState,
    CancelFrame,
    EndFrame,
    Frame,
    FrameDirection,
    InterruptionFrame,
    InterruptionMarkerFrame,
    SystemFrame,
)

from ._context import ContextSnapshot, OpenAILLMContext
from ._frames import (
    FunctionCallCancelFrame,
    FunctionCallResultFrame,
    FunctionCallsStartedFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMMessagesAppendFrame,
    LLMMessagesUpdateFrame,
    LLMRunFrame,
    LLMSetToolChoiceFrame,
    LLMSetToolsFrame,
    LLMTextFrame,
    OpenAILLMContextFrame,
    TextFrame,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from ._store import (
    AppendMessagesRequest,
    ContextStore,
    ContextStoreRequest,
    GetContextRequest,
    RecordToolCallsRequest,
    ReplaceMessagesRequest,
    SetToolChoiceRequest,
    SetToolsRequest,
    settlement_request,
)
from .client import ErrorCategory

__all__ = [
    "LLMAssistantContextAggregator",
    "LLMContextAggregatorPair",
    "LLMUserAggregatorParams",
    "LLMUserContextAggregator",
    "OpenAIContextAggregatorPair",
    "concatenate_text",
]

_ASK_TIMEOUT = 30.0

#: States of a store that takes no more requests.
_GONE = frozenset({ActorState.STOPPING, ActorState.STOPPED, ActorState.CRASHED})


@attrs.frozen(slots=True)
class _InterruptionCommitted(SystemFrame):
    """Told to the user aggregator by the assistant aggregator once it has committed what was
    delivered before the interruption that started turn ``through`` (and every earlier one).
    """

    through: int


def concatenate_text(parts: list[str]) -> str:
    """Join user text parts with single spaces (transcription fragments), stripped."""
    return " ".join(p.strip() for p in parts if p and p.strip())


class _StoreClient(Actor[Frame]):
    """Shared plumbing: spawn the store on start, ask it, report its refusals as errors."""

    def __init__(self, store: ContextStore, *, name: str | None) -> None:
        super().__init__(name=name)
        self.store = store

    async def on_start(self) -> None:
        # Both aggregators share the store: the first to start spawns it. (Its state says
        # "created" until its own StartFrame is handled, so it cannot tell.)
        try:
            spawned = self.session.get(self.store.name).actor is self.store
        except KeyError:
            spawned = False
        if not spawned:
            # Errors the store reports (a failing on_context_updated) leave upstream from here;
            # it runs until the session closes (the other aggregator still needs it).
            self.add_companion(self.store, stop_with_owner=False)

    def _store_gone(self) -> bool:
        """Whether the store is stopping or has stopped (the session is ending): then the
        context is written directly. A store that has not started yet (it was spawned a
        moment ago and its ``StartFrame`` is still queued) is asked like a running one, or
        the line would go into the context without an answer."""
        return self.store.state in _GONE

    async def _ask(self, request: ContextStoreRequest) -> ContextSnapshot | None:
        try:
            snapshot: ContextSnapshot = await self.store.ref.ask(request, timeout=_ASK_TIMEOUT)
        except (ValueError, TypeError) as exc:
            await self.push_error(
                f"{self.name}: {exc}", exception=exc, category=ErrorCategory.INVALID_REQUEST
            )
            return None
        except ActorError as exc:
            await self.push_error(
                f"{self.name}: the context store did not answer: {exc}",
                exception=exc,
                category=ErrorCategory.APPLICATION,
            )
            return None
        return snapshot


@attrs.frozen
class LLMUserAggregatorParams:
    """How the user aggregator behaves.

    Args:
        interrupt_on_user_speech: Push an ``InterruptionFrame`` when the user starts speaking
            (``UserStartedSpeakingFrame``), so the assistant stops at once.
    """

    interrupt_on_user_speech: bool = True


#: The parameters of a user aggregator given none (frozen: one instance serves all).
_DEFAULT_USER_PARAMS = LLMUserAggregatorParams()


class LLMUserContextAggregator(_StoreClient):
    """Turns user input into user messages and asks the LLM to answer.

    Text (``TranscriptionFrame``/``TextFrame``) is aggregated between
    ``UserStartedSpeakingFrame`` and ``UserStoppedSpeakingFrame`` when those arrive; without
    them every text frame is a turn of its own. Each turn adds one user message through the
    context store and pushes an :class:`OpenAILLMContextFrame` snapshot downstream. Also
    handles ``LLMMessagesAppendFrame``/``LLMMessagesUpdateFrame`` (inference only with
    ``run_llm``), ``LLMSetToolsFrame`` (applied and forwarded), ``LLMSetToolChoiceFrame`` and
    ``LLMRunFrame``. Pending text is written to the context when the session ends.
    """

    accepts = (
        TextFrame,
        UserStartedSpeakingFrame,
        UserStoppedSpeakingFrame,
        LLMMessagesAppendFrame,
        LLMMessagesUpdateFrame,
        LLMSetToolsFrame,
        LLMSetToolChoiceFrame,
        LLMRunFrame,
        EndFrame,
        CancelFrame,
        _InterruptionCommitted,
    )

    def __init__(
        self,
        store: ContextStore,
        params: LLMUserAggregatorParams | None = None,
        *,
        name: str | None = None,
    ) -> None:
        super().__init__(store, name=name)
        self.params = params or _DEFAULT_USER_PARAMS
        self._speaking = False
        self._parts: list[str] = []
        #: The assistant aggregator of the same conversation (set by the pair).
        self._assistant: LLMAssistantContextAggregator | None = None
        self._turn = 0
        # Up to which turn the assistant aggregator has committed the interrupted answers.
        self._committed_through = 0
        # Made by a wait for the next commit (most sessions never wait for one).
        self._committed: trio.Event | None = None

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Aggregate user text and turn it into inferences (see the class docs)."""
        if isinstance(frame, _InterruptionCommitted):  # system lane: while the data task waits
            if frame.through > self._committed_through:
                self._committed_through = frame.through
                if self._committed is not None:
                    self._committed.set()
                    self._committed = None
            return
        if isinstance(frame, LLMTextFrame) or (
            isinstance(frame, TextFrame) and direction is FrameDirection.UPSTREAM
        ):
            await self.push_frame(frame, direction)
        elif isinstance(frame, TextFrame):
            if frame.text.strip():
                self._parts.append(frame.text)
            if not self._speaking:
                await self._flush(run_llm=True)
        elif isinstance(frame, UserStartedSpeakingFrame):
            self._speaking = True
            await self.push_frame(frame, direction)
            if self.params.interrupt_on_user_speech:
                await self.push_frame(InterruptionFrame(), direction)
        elif isinstance(frame, UserStoppedSpeakingFrame):
            self._speaking = False
            await self.push_frame(frame, direction)
            await self._flush(run_llm=True)
        elif isinstance(frame, LLMMessagesAppendFrame):
            await self._after_interruption()
            snapshot = await self._ask(AppendMessagesRequest(frame.messages))
            if snapshot is not None and frame.run_llm:
                await self.push_frame(OpenAILLMContextFrame(snapshot))
        elif isinstance(frame, LLMMessagesUpdateFrame):
            snapshot = await self._ask(ReplaceMessagesRequest(frame.messages))
            if snapshot is not None and frame.run_llm:
                await self.push_frame(OpenAILLMContextFrame(snapshot))
        elif isinstance(frame, LLMSetToolsFrame):
            await self._ask(SetToolsRequest(frame.tools))
            await self.push_frame(frame, direction)
        elif isinstance(frame, LLMSetToolChoiceFrame):
            await self._ask(SetToolChoiceRequest(frame.tool_choice))
        elif isinstance(frame, LLMRunFrame):
            await self._after_interruption()
            snapshot = await self._ask(GetContextRequest())
            if snapshot is not None:
                await self.push_frame(OpenAILLMContextFrame(snapshot))
        elif isinstance(frame, EndFrame | CancelFrame):
            await self._flush(run_llm=False)

    async def _flush(self, *, run_llm: bool) -> None:
        text = concatenate_text(self._parts)
        self._parts = []
        if not text:
            return
        if self._store_gone():
            self.store.context.add_message({"role": "user", "content": text})
            return
        await self._after_interruption()
        snapshot = await self._ask(AppendMessagesRequest(({"role": "user", "content": text},)))
        if snapshot is not None and run_llm:
            await self.push_frame(OpenAILLMContextFrame(snapshot))

    async def _after_interruption(self) -> None:
        """After an interruption, wait until the assistant aggregator has committed the
        interrupted answer, before anything of the new turn goes into the context.

        It commits when the interruption's marker reaches it, behind the frames the output
        delivered before the interruption, and then tells this aggregator so
        (``_InterruptionCommitted``). The user's next message is only one request away from
        the store: without the wait, it (and the inference it starts) could come before the
        interrupted answer.
        """
        turn = self.session.turn
        if turn == self._turn:
            return
        self._turn = turn
        assistant = self._assistant
        with trio.move_on_after(_ASK_TIMEOUT) as waited:
            while self._committed_through < turn:
                if assistant is None or not assistant.ref.is_alive():
                    return  # not running (the session ends): nothing left to commit
                if self._committed is None:
                    self._committed = trio.Event()
                await self._committed.wait()
        if waited.cancelled_caught:
            await self.push_error(
                f"{self.name}: the assistant aggregator did not commit the interrupted answer "
                f"within {_ASK_TIMEOUT:g} s (every stage between the output and the assistant "
                "aggregator must pass InterruptionMarkerFrame on)",
                category=ErrorCategory.APPLICATION,
            )


class LLMAssistantContextAggregator(_StoreClient):
    """Records what the assistant said and did, through the context store.

    ``LLMTextFrame``s between ``LLMFullResponseStartFrame`` and ``LLMFullResponseEndFrame``
    become one assistant message. On an interruption, the text of the open answer that reached
    this stage before the interruption is committed, marked as interrupted: with an
    :class:`~actors.OutputTransport` before it, exactly the text the output delivered (see
    ``docs/context.md``). Tool-call frames are handed to the store as they come, which
    decides what they write (see :func:`~actors._store.settlement_request`): one assistant
    ``tool_calls`` message per batch (with the answer's text, if any) and a ``tool`` message
    per call, a placeholder while it runs, then the JSON result, ``"CANCELLED"`` or an error
    text, so the conversation is always valid for the next request. Every frame is passed
    on, except the runtime's ``InterruptionMarkerFrame``.
    """

    accepts = (
        LLMFullResponseStartFrame,
        LLMFullResponseEndFrame,
        TextFrame,
        FunctionCallsStartedFrame,
        FunctionCallResultFrame,
        FunctionCallCancelFrame,
        InterruptionMarkerFrame,
        EndFrame,
        CancelFrame,
    )

    def __init__(self, store: ContextStore, *, name: str | None = None) -> None:
        super().__init__(store, name=name)
        self._open = False
        self._open_turn = 0
        self._parts: list[str] = []
        #: The user aggregator of the same conversation (set by the pair).
        self._user: LLMUserContextAggregator | None = None

    def _take(self) -> str:
        text = "".join(self._parts).strip()
        self._parts = []
        return text

    def process_frame_nowait(self, frame: Frame, direction: FrameDirection) -> bool:
        """A streamed text passes at once (see ``Actor.process_frame_nowait``): recorded if
        it belongs to the open answer, and passed on, if that needs no waiting."""
        if type(frame) is not LLMTextFrame or not self.push_frame_nowait(frame, direction):
            return False
        if self._open and frame.append_to_context and direction is FrameDirection.DOWNSTREAM:
            self._parts.append(frame.text)
        return True

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Record the assistant's turn (see the class docs), then pass the frame on."""
        if type(frame) is LLMTextFrame:  # a streamed text the next stage had no room for
            if self._open and frame.append_to_context and direction is FrameDirection.DOWNSTREAM:
                self._parts.append(frame.text)
            await self.push_frame(frame, direction)
            return
        if isinstance(frame, TextFrame):
            if (
                direction is FrameDirection.DOWNSTREAM
                and self._open
                and frame.append_to_context
                and not isinstance(frame, TranscriptionFrame)
            ):
                self._parts.append(frame.text)
            await self.push_frame(frame, direction)
            return
        if isinstance(frame, InterruptionMarkerFrame):
            # Where the interruption fell in what the output delivered: the text before the
            # marker is all that was shown of the interrupted answer (the output passed it on
            # before showing it, uninterruptible), and none comes after it.
            turn = frame.turn if frame.turn is not None else self.session.turn
            if self._open and self._open_turn < turn:
                await self._commit(interrupted=True)
                self._open = False
            user = self._user
            if user is not None and user.ref.is_alive():
                user.ref.tell(_InterruptionCommitted(turn))
            return  # the runtime's own frame: not passed on
        if isinstance(frame, EndFrame | CancelFrame):
            # Lifecycle frames are forwarded by the runtime.
            await self._commit(interrupted=isinstance(frame, CancelFrame))
            self._open = False
            return
        if isinstance(frame, LLMFullResponseStartFrame):
            self._open = True
            self._open_turn = frame.turn if frame.turn is not None else self.session.turn
            self._parts = []
        elif isinstance(frame, LLMFullResponseEndFrame):
            await self._commit(interrupted=frame.interrupted)
            self._open = False
        elif isinstance(frame, FunctionCallsStartedFrame):
            content = self._take() or None
            await self._ask(
                RecordToolCallsRequest(
                    frame.function_calls,
                    content,
                    batch_turn=frame.turn,
                    llm=frame.llm,
                    tools=frame.tools,
                )
            )
        elif isinstance(frame, FunctionCallResultFrame | FunctionCallCancelFrame):
            await self._ask(settlement_request(frame))
        await self.push_frame(frame, direction)

    async def _commit(self, *, interrupted: bool) -> None:
        text = self._take()
        if not text:
            return
        message = {"role": "assistant", "content": text}
        if self._store_gone():
            self.store.context.add_message(message, interrupted=interrupted)
            return
        await self._ask(AppendMessagesRequest((message,), interrupted=interrupted))


@attrs.frozen
class OpenAIContextAggregatorPair:
    """The user and assistant aggregators of one conversation, sharing one context store.

    Returned by ``OpenAILLMService.create_context_aggregator(context)``. Put ``.user()`` before
    the LLM and ``.assistant()`` after the output transport.
    """

    _user: LLMUserContextAggregator
    _assistant: LLMAssistantContextAggregator
    store: ContextStore

    def __attrs_post_init__(self) -> None:
        self._user._assistant = self._assistant
        self._assistant._user = self._user

    def user(self) -> LLMUserContextAggregator:
        """The user-side aggregator (before the LLM)."""
        return self._user

    def assistant(self) -> LLMAssistantContextAggregator:
        """The assistant-side aggregator (after the output)."""
        return self._assistant

    @property
    def context(self) -> OpenAILLMContext:
        """The conversation (owned by the store while the session runs)."""
        return self.store.context

    def __iter__(self) -> Iterator[Actor[Any]]:
        yield self._user
        yield self._assistant


@attrs.frozen(init=False)
class LLMContextAggregatorPair(OpenAIContextAggregatorPair):
    """The user and assistant aggregators of one conversation, bound to no LLM service
    (Pipecat 1.x): ``user, assistant = LLMContextAggregatorPair(context)``.

    They share a new context store, like the pair ``create_context_aggregator`` returns. That
    store sends the follow-up inference after a batch of tool calls to the LLM service that
    asked for the calls, whose ``FunctionCallsStartedFrame`` names it (and its tool executor):
    the stages still meet only through frames and names. Put ``.user()`` before the LLM and
    ``.assistant()`` after the output, as with the bound pair.

    Args:
        context: The conversation (``LLMContext``/``OpenAILLMContext``).
        user_params: How the user aggregator behaves.
        name: Prefix of the three actors' names (``<name>:user``, ``<name>:assistant``,
            ``<name>:context``); default: each class's unique default name.

    Raises:
        TypeError: ``context`` is not an ``OpenAILLMContext``.
    """

    def __init__(
        self,
        context: OpenAILLMContext,
        *,
        user_params: LLMUserAggregatorParams | None = None,
        name: str | None = None,
    ) -> None:
        if not isinstance(context, OpenAILLMContext):
            raise TypeError(
                f"LLMContextAggregatorPair needs an LLMContext, got {type(context).__name__}"
            )

        def named(part: str) -> str | None:
            return None if name is None else f"{name}:{part}"

        store = ContextStore(context, name=named("context"))
        self.__attrs_init__(
            LLMUserContextAggregator(store, user_params, name=named("user")),
            LLMAssistantContextAggregator(store, name=named("assistant")),
            store,
        )
