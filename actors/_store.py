"""The context store: the one owner of the conversation while a session runs, and the one
place that decides what lands in it.

The aggregators and the LLM never touch the ``OpenAILLMContext`` themselves: they ask the
store, which applies the change and answers with an immutable :class:`ContextSnapshot`.
What a tool call's settlement writes into its ``tool`` message, and whether it asks for the
follow-up inference, is decided here too (:func:`settlement_request`). The store also decides
when a batch of tool calls is complete and triggers the follow-up inference (once per batch,
after its last call settled and the tool executor ran the batch's ``on_context_updated``
callbacks, and only while the turn of the calls is still on: see
:meth:`ContextStore._follow_up_turn`). It addresses the LLM service and the tool executor by
name, through the session, and talks to them with frames only: the names it was given, or
else the names the LLM announced with the batch (``FunctionCallsStartedFrame.llm``/``tools``),
so a store bound to no service (``LLMContextAggregatorPair``) finds the one that asked.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import trio

from runtime import NOT_NOW, Actor, ActorError, DataFrame, Frame, SessionStateError

from ._context import ContextSnapshot, OpenAILLMContext
from ._frames import (
    FunctionCallCancelFrame,
    FunctionCallFromLLM,
    FunctionCallResultFrame,
    OpenAILLMContextFrame,
    _to_tuple,
)
from ._storage import DEFAULT_LEASE_TTL, ConversationWriter, check_storage, session_owner
from ._tools import ContextUpdatedRequest
from ._window import ContextWindow, Summarizer, TokenCounter, WindowKeeper
from .storage import (
    AppendMessages,
    Change,
    ConversationStorage,
    LeaseLostError,
    RecordToolCalls,
    ReplaceMessages,
    SettleToolCall,
    SetToolChoice,
    SetTools,
    StorageError,
)

__all__ = [
    "AppendMessagesRequest",
    "ContextStore",
    "ContextStoreRequest",
    "GetContextRequest",
    "RecordToolCallsRequest",
    "RecordToolSettlementRequest",
    "ReplaceMessagesRequest",
    "SetToolChoiceRequest",
    "SetToolsRequest",
    "settlement_request",
]


@attrs.frozen(slots=True)
class ContextStoreRequest(DataFrame):
    """Base of the requests the context store answers (its mailbox takes only these)."""

    interruptible: bool = attrs.field(default=False, kw_only=True, eq=False, repr=False)


@attrs.frozen(slots=True)
class GetContextRequest(ContextStoreRequest):
    """Answer with a snapshot of the conversation."""


@attrs.frozen(slots=True)
class AppendMessagesRequest(ContextStoreRequest):
    """Append messages; ``interrupted`` marks an assistant answer cut short."""

    messages: tuple[dict[str, Any], ...] = attrs.field(converter=_to_tuple)
    interrupted: bool = False


@attrs.frozen(slots=True)
class ReplaceMessagesRequest(ContextStoreRequest):
    """Replace every message."""

    messages: tuple[dict[str, Any], ...] = attrs.field(converter=_to_tuple)


@attrs.frozen(slots=True)
class SetToolsRequest(ContextStoreRequest):
    """Replace the tools."""

    tools: Any


@attrs.frozen(slots=True)
class SetToolChoiceRequest(ContextStoreRequest):
    """Set the tool choice."""

    tool_choice: Any


@attrs.frozen(slots=True)
class RecordToolCallsRequest(ContextStoreRequest):
    """Record a batch of tool calls: one assistant message (with the answer's text, if any)
    and an ``IN_PROGRESS`` tool message per call.

    ``batch_turn`` is the turn of the response that asked for the calls (default: the
    session's turn when the request is handled); their follow-up belongs to it. ``llm`` and
    ``tools`` are the names of the LLM service that asked for the calls and of the actor
    that runs them, as the ``FunctionCallsStartedFrame`` announced them (used when the store
    was given none)."""

    calls: tuple[FunctionCallFromLLM, ...] = attrs.field(converter=_to_tuple)
    content: str | None = None
    batch_turn: int | None = None
    llm: str | None = attrs.field(default=None, kw_only=True)
    tools: str | None = attrs.field(default=None, kw_only=True)


@attrs.frozen(slots=True)
class RecordToolSettlementRequest(ContextStoreRequest):
    """A call settled: write ``content`` into its tool message (see :func:`settlement_request`,
    which makes this request from the executor's frame).

    Args:
        tool_call_id: The call.
        content: What the LLM will read as the call's result.
        run_llm: Whether this settlement asks for the follow-up inference.
        survives_interruption: The call was registered with ``cancel_on_interruption=False``:
            its ``run_llm`` still counts once the turn of its batch has been interrupted.
    """

    tool_call_id: str
    content: str
    run_llm: bool = True
    survives_interruption: bool = False


def settlement_request(
    frame: FunctionCallResultFrame | FunctionCallCancelFrame,
) -> RecordToolSettlementRequest:
    """What a settled call writes into the context, from the executor's frame.

    A result is written as JSON (``"COMPLETED"`` for ``None``; an error result's text as it
    is) and asks for the follow-up unless its properties (or the frame) say ``run_llm=False``.
    A timeout writes that the function timed out and asks for the follow-up; a cancellation
    writes ``"CANCELLED"`` and does not.
    """
    if isinstance(frame, FunctionCallCancelFrame):
        if frame.reason == "timeout":
            content = f"The function `{frame.function_name}` timed out and returned no result."
        else:
            content = "CANCELLED"
        return RecordToolSettlementRequest(
            frame.tool_call_id,
            content,
            run_llm=frame.run_llm,
            survives_interruption=not frame.cancel_on_interruption,
        )
    props = frame.properties
    if props is not None and props.run_llm is not None:
        run_llm = props.run_llm
    elif frame.run_llm is not None:
        run_llm = frame.run_llm
    else:
        run_llm = True
    result = frame.result
    if isinstance(result, str) and frame.error is not None:
        content = result
    elif result is None:
        content = "COMPLETED"
    else:
        content = json.dumps(result, ensure_ascii=False, default=str)
    return RecordToolSettlementRequest(
        frame.tool_call_id,
        content,
        run_llm=run_llm,
        survives_interruption=not frame.cancel_on_interruption,
    )


@attrs.define
class _Batch:
    pending: set[str]
    #: The turn of the response that asked for the calls.
    turn: int
    #: The calls settled so far, in order.
    settled: list[str] = attrs.Factory(list)
    run_llm: bool = False
    #: Asked for by a call that survives an interruption (``cancel_on_interruption=False``).
    run_llm_surviving: bool = False
    #: Where the follow-up goes, and who runs the ``on_context_updated`` callbacks.
    llm: str | None = None
    tools: str | None = None


class ContextStore(Actor[ContextStoreRequest]):
    """Owns an :class:`OpenAILLMContext` and serialises every change to it.

    Answers :meth:`runtime.ActorRef.ask` requests (subclasses of
    :class:`ContextStoreRequest`) with a :class:`ContextSnapshot`. When the last call of a
    tool batch settles it asks the tool executor to run the batch's ``on_context_updated``
    callbacks (:class:`ContextUpdatedRequest`) and then, if any settlement asked for it, sends
    the follow-up :class:`OpenAILLMContextFrame` to the LLM without waiting (this edge closes
    the LLM → aggregator → store → LLM cycle). The follow-up belongs to the turn of the calls:
    once that turn is interrupted it is not sent, unless a call registered with
    ``cancel_on_interruption=False`` asked for it.

    With ``storage`` and ``conversation_id`` the conversation is persisted (see
    ``docs/context.md``). At start the store takes the conversation over: it leases it (one
    live owner across every process sharing the storage), loads it, and settles the tool
    calls a crashed owner left open. A stored conversation's messages replace those of
    ``context`` (its tools and tool choice are yours and are kept); a new one is stored
    from ``context``. Then every change is appended to the storage before the request
    that made it is answered, the lease is renewed while the session runs, calls still
    open when the store stops are stored as ``"CANCELLED"``, and the lease is released.
    A storage error is reported as an ``ErrorFrame`` and the conversation goes on in
    memory; after a conflict or a lost lease (another owner took the conversation over)
    the store stops writing, so it never overwrites the new owner's work.

    Args:
        context: The conversation; the store changes this object in place, so after the
            session it holds the whole conversation.
        llm: The name of the actor follow-up inferences go to (the LLM service), looked up
            in the session when one is sent; ``None``: the LLM that asked for the batch (as
            its ``FunctionCallsStartedFrame`` names it), else none is sent.
        tools: The name of the tool executor whose ``on_context_updated`` callbacks run once
            a batch is in the context; ``None``: the one the batch's frame names, else none.
        storage: Where to persist the conversation: an open
            :class:`~actors.storage.ConversationStorage`.
        conversation_id: Its id in ``storage`` (required with ``storage``).
        lease_ttl: Seconds the session's lease lives unless renewed (renewed every third of
            it): how long a crashed process keeps the conversation from others.
        owner: The lease owner (default: host, process, store name and a random part;
            must be unique per session).
        window: The context window of the requests (``None``: every request holds the
            whole conversation). With one, every snapshot the store answers with says where
            the request begins (``ContextSnapshot.window_start``, ``.summary``; see
            ``docs/long-conversations.md``); the conversation keeps every message.
        counter: Counts the tokens (default: an estimating :class:`~actors.TokenCounter`).
        summarizer: Makes the summaries of the ``"summarize"`` strategy (the LLM service
            gives its own; without one, turns are dropped).
        system_instruction: The instruction the LLM sends before the conversation, counted
            in the window.

    Raises:
        TypeError: ``context`` is not an ``OpenAILLMContext``, ``llm``/``tools`` not a name,
            ``storage`` not a ``ConversationStorage`` or ``window`` not a ``ContextWindow``.
        ValueError: ``storage`` without a ``conversation_id`` (or the reverse), or a bad
            ``lease_ttl``.
    """

    accepts = (ContextStoreRequest,)
    #: A few frames per turn: no task of its own while idle (see ``Actor.serve_on_demand``).
    serve_on_demand = True

    def __init__(
        self,
        context: OpenAILLMContext,
        llm: str | None = None,
        *,
        tools: str | None = None,
        name: str | None = None,
        storage: ConversationStorage | None = None,
        conversation_id: str | None = None,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        owner: str | None = None,
        window: ContextWindow | None = None,
        counter: TokenCounter | None = None,
        summarizer: Summarizer | None = None,
        system_instruction: str | None = None,
    ) -> None:
        super().__init__(name=name)
        if window is not None and not isinstance(window, ContextWindow):
            raise TypeError(f"window must be a ContextWindow, got {type(window).__name__}")
        if not isinstance(context, OpenAILLMContext):
            raise TypeError(f"ContextStore needs an OpenAILLMContext, got {type(context).__name__}")
        for role, address in (("llm", llm), ("tools", tools)):
            if address is not None and not isinstance(address, str):
                raise TypeError(
                    f"ContextStore {role}= takes the actor's name, got {type(address).__name__}"
                )
        if (storage is None) != (conversation_id is None):
            raise ValueError(
                "give both storage= and conversation_id= to persist a conversation, or neither"
            )
        if conversation_id is not None and (
            not isinstance(conversation_id, str) or not conversation_id.strip()
        ):
            raise ValueError(f"conversation_id must be a non-empty string, got {conversation_id!r}")
        if isinstance(lease_ttl, bool) or not isinstance(lease_ttl, int | float):
            raise ValueError(f"lease_ttl must be a number of seconds, got {lease_ttl!r}")
        if not 0.001 <= lease_ttl < float("inf"):
            raise ValueError(
                f"lease_ttl must be a finite number of seconds >= 0.001, got {lease_ttl!r}"
            )
        self.context = context
        self.llm = llm
        self.tools = tools
        self.storage = None if storage is None else check_storage(storage)
        self.conversation_id = conversation_id
        #: Writes the conversation (``None``: not persisted).
        self.writer: ConversationWriter | None = None
        if self.storage is not None:
            assert conversation_id is not None
            self.writer = ConversationWriter(
                self.storage,
                conversation_id,
                owner or session_owner(self.name),
                float(lease_ttl),
            )
        # Set once the stored conversation is taken over (only with a storage).
        self._opened = trio.Event() if self.writer is not None else None
        self._lease_scope: trio.CancelScope | None = None
        self._batches: dict[str, _Batch] = {}
        self._batch_of: dict[str, _Batch] = {}
        #: The window of the requests (``None``: off).
        self._window: WindowKeeper | None = None
        if window is not None:
            self._window = WindowKeeper(
                window,
                counter if counter is not None else TokenCounter(),
                summarizer,
                system_instruction,
            )

    @property
    def context_window(self) -> ContextWindow | None:
        """The context window of the requests (``None``: they hold the whole conversation)."""
        return None if self._window is None else self._window.window

    def snapshot(self) -> ContextSnapshot:
        """A snapshot of the conversation (safe to call from outside the session, too)."""
        return self.context.snapshot()

    async def on_start(self) -> None:
        """With a storage: take the conversation over (see the class documentation) and
        renew the lease in the background. A failure is reported as an ``ErrorFrame``; the
        conversation then runs in memory only."""
        writer = self.writer
        try:
            if writer is None or writer.lease is not None or writer.stopped is not None:
                return  # nothing to persist, or a restart: the lease is still held
            error = await writer.open(self.context)
            if error is not None:
                await self._report(
                    error, "was not opened; this session does not persist it", final=False
                )
            elif writer.writing:
                if writer.resumed:
                    self.log.info(
                        "conversation resumed",
                        conversation_id=writer.conversation_id,
                        version=writer.version,
                        messages=len(self.context),
                    )
                if not writer.keep_in_background(self._lease_lost):
                    self._lease_scope = self.create_task(
                        self._keep_lease, name=f"{self.name}:lease"
                    )
        finally:
            if self._opened is not None:
                self._opened.set()

    async def wait_opened(self) -> None:
        """Wait until the store has taken its stored conversation over at start (loaded it
        into the context, or stored it as new, or reported why not); returns at once
        without a storage. Requests sent meanwhile wait for it too."""
        if self._opened is not None:
            await self._opened.wait()

    def _lease_lost(self, lost: LeaseLostError) -> None:
        """The storage's lease keeper lost the lease: report it from a task of the store."""
        try:
            self.create_task(self._report, lost, "is no longer written by this session")
        except SessionStateError:
            pass  # the session ended meanwhile

    async def _keep_lease(self) -> None:
        assert self.writer is not None
        lost = await self.writer.keep_lease()
        if lost is not None:
            await self._report(lost, "is no longer written by this session")

    async def on_ask(self, frame: Frame) -> object:
        """Apply one request, write its change to the storage (if any), and answer with a
        snapshot."""
        if self._opened is not None and not self._opened.is_set():
            await self._opened.wait()  # requests wait until the conversation is loaded
        change = self._apply(frame)
        if change is not None and self.writer is not None:
            await self._persist([change])
        snapshot = self.context.snapshot()
        window = self._window
        if window is None:
            return snapshot
        await window.plan(snapshot.messages, snapshot.tools, self.log)
        return snapshot.with_window(window.start, window.summary)

    def on_ask_nowait(self, frame: Frame) -> object:
        """Without a storage or a window, nothing in a request waits: an idle store answers
        it at once, in the asker's task (see ``Actor.on_ask_nowait``)."""
        if self.writer is not None or self._window is not None:
            return NOT_NOW
        self._apply(frame)
        return self.context.snapshot()

    def _apply(self, frame: Frame) -> Change | None:
        """Apply one request to the context; the change to write (``None``: nothing)."""
        ctx = self.context
        if isinstance(frame, GetContextRequest):
            return None
        if isinstance(frame, AppendMessagesRequest):
            if len(frame.messages) == 1:
                ctx.add_message(frame.messages[0], interrupted=frame.interrupted)
                return AppendMessages(frame.messages, frame.interrupted)
            ctx.add_messages(frame.messages)
            return AppendMessages(frame.messages)
        if isinstance(frame, ReplaceMessagesRequest):
            ctx.set_messages(frame.messages)
            self._batches.clear()
            self._batch_of.clear()
            if self._window is not None:
                self._window.reset()
            return ReplaceMessages(frame.messages)
        if isinstance(frame, SetToolsRequest):
            ctx.set_tools(frame.tools)
            return SetTools(ctx.tools)
        if isinstance(frame, SetToolChoiceRequest):
            ctx.set_tool_choice(frame.tool_choice)
            return SetToolChoice(ctx.tool_choice)
        if isinstance(frame, RecordToolCallsRequest):
            turn = frame.batch_turn if frame.batch_turn is not None else self.session.turn
            batch = _Batch(
                pending=set(),
                turn=turn,
                llm=self.llm if self.llm is not None else frame.llm,
                tools=self.tools if self.tools is not None else frame.tools,
            )
            self._record_calls(frame.calls, frame.content, batch)
            return RecordToolCalls(
                [(c.tool_call_id, c.function_name, c.arguments_json) for c in frame.calls],
                frame.content,
            )
        if isinstance(frame, RecordToolSettlementRequest):
            if self._settle(frame):
                return SettleToolCall(frame.tool_call_id, frame.content)
            return None
        # The mailbox only takes the types above.
        raise TypeError(f"ContextStore cannot handle {type(frame).__name__}")  # pragma: no cover

    async def _persist(self, changes: Sequence[Change]) -> None:
        """Append ``changes``; a failure is reported, not raised (the session goes on)."""
        assert self.writer is not None
        error = await self.writer.write(changes, self.context)
        if error is not None:
            await self._report(error, "was not saved")

    async def _report(
        self, error: StorageError | ValueError, what: str, *, final: bool = True
    ) -> None:
        assert self.writer is not None
        stop = " (this session stops writing it)" if final and self.writer.stopped else ""
        await self.push_error(
            f"context store: conversation {self.writer.conversation_id!r} {what}{stop}: "
            f"{type(error).__name__}: {error}",
            exception=error,
            category="storage",
        )

    async def process_frame(self, frame: Frame, direction: Any) -> None:
        """Requests sent without ``ask`` are applied the same way (the answer is dropped)."""
        try:
            await self.on_ask(frame)
        except (ValueError, TypeError) as exc:
            await self.push_error(f"context store: {exc}", exception=exc)

    def _record_calls(
        self, calls: Sequence[FunctionCallFromLLM], content: str | None, batch: _Batch
    ) -> None:
        ids = [c.tool_call_id for c in calls]
        self.context.add_tool_calls(
            [(c.tool_call_id, c.function_name, c.arguments_json) for c in calls], content=content
        )
        batch.pending = set(ids)
        key = ids[0] if ids else ""
        self._batches[key] = batch
        for cid in ids:
            self._batch_of[cid] = batch

    def _settle(self, frame: RecordToolSettlementRequest) -> bool:
        """Apply a settlement; whether it changed the context."""
        batch = self._batch_of.pop(frame.tool_call_id, None)
        if batch is None or frame.tool_call_id not in batch.pending:
            self.log.warning(
                "settlement for an unknown or already settled tool call ignored",
                tool_call_id=frame.tool_call_id,
            )
            return False
        self.context.set_tool_result(frame.tool_call_id, frame.content)
        batch.pending.discard(frame.tool_call_id)
        batch.settled.append(frame.tool_call_id)
        batch.run_llm = batch.run_llm or frame.run_llm
        if frame.run_llm and frame.survives_interruption:
            batch.run_llm_surviving = True
        if batch.pending:
            return True
        for key, value in list(self._batches.items()):
            if value is batch:
                del self._batches[key]
        if batch.tools is not None or (batch.run_llm and batch.llm is not None):
            self.create_task(self._after_batch, batch, name=f"{self.name}:after-batch")
        return True

    async def _after_batch(self, batch: _Batch) -> None:
        if batch.tools is not None:
            try:
                # Returns once the executor has run the batch's on_context_updated callbacks.
                await self.session.get(batch.tools).ask(
                    ContextUpdatedRequest(batch.settled), timeout=None
                )
            except (KeyError, ActorError) as exc:  # the executor is gone: the session ends
                self.log.info("on_context_updated callbacks not run", reason=str(exc))
        if not batch.run_llm or batch.llm is None:
            return
        try:
            llm = self.session.get(batch.llm)
        except KeyError:
            self.log.warning("follow-up inference not started: no such actor", llm=batch.llm)
            return
        if not llm.is_alive():
            return
        window = self._window
        if window is not None:
            current = self.context.snapshot()
            await window.plan(current.messages, current.tools, self.log)
        # Decided here, after the callbacks, with no checkpoint before the tell: an
        # interruption after it drops the queued frame or cancels its inference.
        turn = self._follow_up_turn(batch)
        if turn is None:
            self.log.info(
                "follow-up inference not started: its turn was interrupted",
                batch_turn=batch.turn,
            )
            return
        snapshot = self.context.snapshot()
        if window is not None:
            snapshot = snapshot.with_window(window.start, window.summary)
        llm.tell(OpenAILLMContextFrame(snapshot, turn=turn))

    def _follow_up_turn(self, batch: _Batch) -> int | None:
        """The turn the follow-up of ``batch`` runs in, or ``None`` if none may start.

        It belongs to the turn of the calls it answers. Once that turn is interrupted, the
        results stay in the context (the next request carries them) but no answer to them
        starts, however close to the interruption they settled; only a call registered with
        ``cancel_on_interruption=False`` (made to outlive the interruption) still asks for
        one, which then runs in the current turn.
        """
        current = self.session.turn
        if batch.turn >= current:
            return batch.turn
        return current if batch.run_llm_surviving else None

    async def on_stop(self) -> None:
        """Calls still open when the session ends settle as ``"CANCELLED"``, so the
        conversation the application keeps is valid for a later request; with a storage
        they are written in one append, and the lease is released."""
        cancelled = sorted(self._batch_of)
        for tool_call_id in cancelled:
            self.context.set_tool_result(tool_call_id, "CANCELLED")
            self.log.info("tool call cancelled by shutdown", tool_call_id=tool_call_id)
        self._batch_of.clear()
        self._batches.clear()
        if self._lease_scope is not None:
            self._lease_scope.cancel()
        writer = self.writer
        if writer is None or writer.lease is None:
            return
        changes = [SettleToolCall(cid, "CANCELLED") for cid in cancelled]
        error = await writer.close(changes, self.context)
        if error is not None:
            await self._report(error, "was not saved")

    def pending_tool_calls(self) -> list[str]:
        """Ids of tool calls recorded but not settled yet."""
        return sorted(self._batch_of)


def copy_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Deep copies of messages."""
    return [copy.deepcopy(dict(m)) for m in messages]
