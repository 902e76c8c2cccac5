"""The conversation harness of the actor tests (against a scripted server) and the end-to-end
tests (against the real llama-server), built on :mod:`runtime.testing`.

A conversation is the LLM service between the context aggregators, run by
:func:`runtime.testing.open_test_task` (its listeners record what leaves the pipeline at both
ends), in one of two shapes:

* ``Pipeline([user, llm, probe, assistant])``: the probe, a
  :class:`~runtime.testing.FrameCollector`, records what the LLM pushed;
* ``Pipeline([input, user, llm, output, assistant])`` with a ``TextTransport`` (the quick
  start, ``quick_start=True``): the output's ``on_output`` records what was shown.

Either way :attr:`Conversation.output` holds the downstream frames that reached that point,
:attr:`Conversation.seen` the same interleaved with the ``ErrorFrame``s that reached the task
(what a user sees, in order), and :meth:`Conversation.wait_for` waits for any condition on what
was recorded, failing with what was. Against a :class:`~actors.testing.ScriptedOpenAIServer`,
leaving the conversation also checks that nothing was left behind (tasks, sockets) and that
every request and the final context are valid for the OpenAI API (:func:`assert_valid`).

The harness is a test helper, not part of ``actors.testing``: that package is the scripted
server, which imports neither the runtime nor the stages.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

import attrs
import pytest
import trio
import trio.testing

from actors import (
    FunctionHandler,
    LLMContextAggregatorPair,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    LLMUsageMetricsData,
    OpenAIContextAggregatorPair,
    OpenAILLMContext,
    OpenAILLMService,
    TextTransport,
    ToolsSchema,
    TranscriptionFrame,
)
from actors.client import GenerationParams
from actors.storage import ConversationStorage
from actors.testing import ScriptedOpenAIServer
from runtime import (
    ErrorFrame,
    Frame,
    FrameDirection,
    MetricsData,
    MetricsFrame,
    Pipeline,
    PipelineParams,
    PipelineTask,
    Stage,
)
from runtime.testing import (
    FrameCollector,
    TaskHarness,
    open_test_task,
    running_tasks,
    tasks_left_running,
)

__all__ = [
    "API_KEY",
    "MODEL",
    "SYSTEM",
    "WAIT_SECS",
    "Conversation",
    "Notifier",
    "OutputProbe",
    "assert_valid",
    "context_problems",
    "metrics_of",
    "of_type",
    "open_conversation",
    "position",
    "tool_answer",
]

API_KEY = "sk-test-actors-9f8e7d6c5b4a"
MODEL = "gpt-test"
SYSTEM = {"role": "system", "content": "You are a test assistant."}

#: How long (seconds; virtual under ``autojump_clock``) a wait lasts before the test fails.
WAIT_SECS = 120.0

F = TypeVar("F", bound=Frame)


def of_type(frames: Sequence[Frame], cls: type[F]) -> list[F]:
    """The frames of ``cls`` (subclasses included), in order."""
    return [f for f in frames if isinstance(f, cls)]


def position(frames: Sequence[Frame], frame: Frame) -> int:
    """Where ``frame`` itself is in ``frames`` (frames compare by value, so not ``index``)."""
    for i, candidate in enumerate(frames):
        if candidate is frame:
            return i
    raise AssertionError(f"{frame!r} is not among the frames")


def metrics_of(frames: Sequence[Frame], cls: type[MetricsData]) -> list[Any]:
    """Every measurement of ``cls`` carried by the ``MetricsFrame``s among ``frames``."""
    return [d for f in of_type(frames, MetricsFrame) for d in f.data if isinstance(d, cls)]


class Notifier:
    """Wakes waiters whenever something was recorded."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def notify(self) -> None:
        """Wake every waiter (each checks its condition again)."""
        self._event.set()
        self._event = trio.Event()

    async def next(self) -> None:
        """Wait for the next :meth:`notify`."""
        await self._event.wait()

    async def wait_for(self, predicate: Callable[[], bool], within: float = WAIT_SECS) -> None:
        """Wait until ``predicate()`` holds; fail (``trio.TooSlowError``) after ``within``
        seconds."""
        with trio.fail_after(within):
            while not predicate():
                await self.next()


class OutputProbe(FrameCollector):
    """The stage right after the LLM: a :class:`~runtime.testing.FrameCollector` that also
    hands each downstream frame to ``on_frame`` (before passing it on), optionally spending
    ``text_delay`` seconds on each ``LLMTextFrame`` first (a slow output stage, such as a TTS).
    """

    def __init__(
        self, on_frame: Callable[[Frame], None], *, text_delay: float = 0.0, name: str = "Probe"
    ) -> None:
        super().__init__(name=name)
        self._on_frame = on_frame
        self.text_delay = text_delay

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Delay text if asked, report downstream frames, then record and pass on."""
        if direction is FrameDirection.DOWNSTREAM:
            if self.text_delay and isinstance(frame, LLMTextFrame):
                await trio.sleep(self.text_delay)
            self._on_frame(frame)
        await super().process_frame(frame, direction)


@attrs.define(eq=False)
class Conversation:
    """A running conversation and what it recorded (see the module docstring).

    Attributes:
        llm: The LLM service.
        pair: Its context aggregators.
        server: The scripted server, when the conversation talks to one.
        within: The default bound of every wait.
        output: Downstream frames that reached the probe, or the output's ``on_output``.
        seen: :attr:`output` and the ``ErrorFrame``s reaching the task, in arrival order.
    """

    llm: OpenAILLMService
    pair: OpenAIContextAggregatorPair
    _probe: OutputProbe | None = None
    _transport: TextTransport | None = None
    server: ScriptedOpenAIServer | None = None
    within: float = WAIT_SECS
    output: list[Frame] = attrs.Factory(list)
    seen: list[Frame] = attrs.Factory(list)
    _notifier: Notifier = attrs.Factory(Notifier)
    _harness: TaskHarness | None = None
    _on_output: Callable[[Frame], None] | None = None

    # ------------------------------------------------------------------ recording

    def shown(self, frame: Frame) -> None:
        """Record ``frame`` as having reached the output point (then hand it to the
        ``on_output`` given to :func:`open_conversation`)."""
        self.output.append(frame)
        self.seen.append(frame)
        self._notifier.notify()
        if self._on_output is not None:
            self._on_output(frame)

    def _left_downstream(self, frame: Frame, direction: FrameDirection) -> None:
        self._notifier.notify()

    def _left_upstream(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, ErrorFrame):
            self.seen.append(frame)
        self._notifier.notify()

    def _running(self, harness: TaskHarness) -> None:
        self._harness = harness
        harness.task.add_listener(self._left_downstream, FrameDirection.DOWNSTREAM)
        harness.task.add_listener(self._left_upstream, FrameDirection.UPSTREAM)

    # ------------------------------------------------------------------ driving

    @property
    def probe(self) -> OutputProbe:
        """The stage after the LLM (not in the quick-start shape)."""
        assert self._probe is not None, "a quick-start conversation has no probe"
        return self._probe

    @property
    def transport(self) -> TextTransport:
        """The quick start's transport."""
        assert self._transport is not None, "only a quick-start conversation has a transport"
        return self._transport

    @property
    def harness(self) -> TaskHarness:
        """The running task's harness (``runtime.testing``): :attr:`sink` and :attr:`upstream`
        are its records."""
        assert self._harness is not None, "the conversation is not running"
        return self._harness

    @property
    def task(self) -> PipelineTask:
        """The running task."""
        return self.harness.task

    async def say(self, text: str) -> None:
        """One user turn: a line typed into the transport, or a transcription (as a
        speech-to-text stage would send it)."""
        if self._transport is not None:
            await self._transport.send_text(text)
        else:
            await self.queue(TranscriptionFrame(text, user_id="user", timestamp=""))

    async def queue(self, frame: Frame) -> None:
        """Queue ``frame`` at the input end."""
        await self.task.queue_frame(frame)

    # ------------------------------------------------------------------ waiting

    async def wait_for(
        self, predicate: Callable[[], bool], what: str = "", within: float | None = None
    ) -> None:
        """Wait until ``predicate()`` holds (checked whenever a frame was recorded); fail after
        ``within`` seconds (default :attr:`within`) saying ``what`` was awaited and what was
        recorded."""
        bound = self.within if within is None else within
        with trio.move_on_after(bound):
            while not predicate():
                await self._notifier.next()
            return
        kinds = [type(f).__name__ for f in self.seen if not isinstance(f, LLMTextFrame)]
        pytest.fail(
            f"{what or 'the condition'}: not seen within {bound:g} s. Seen (text left out): "
            f"{kinds}; errors: {[e.error for e in self.errors]}"
        )

    async def wait_ends(self, count: int) -> None:
        """Wait until ``count`` inferences have ended and their end left the pipeline."""
        await self.wait_for(lambda: len(self.ends(self.sink)) >= count, f"{count} end frame(s)")
        await trio.testing.wait_all_tasks_blocked()

    async def wait_errors(self, count: int) -> None:
        """Wait until ``count`` ``ErrorFrame``s reached the task."""
        await self.wait_for(lambda: len(self.errors) >= count, f"{count} error(s)")
        await trio.testing.wait_all_tasks_blocked()

    # ------------------------------------------------------------------ reading

    @property
    def sink(self) -> list[Frame]:
        """Every frame that left the pipeline downstream (lifecycle frames included)."""
        return self.harness.downstream

    @property
    def upstream(self) -> list[Frame]:
        """Every frame that reached the input end going upstream."""
        return self.harness.upstream

    @property
    def errors(self) -> list[ErrorFrame]:
        """The ``ErrorFrame``s that reached the task."""
        return of_type(self.upstream, ErrorFrame)

    @property
    def context(self) -> OpenAILLMContext:
        """The conversation's context."""
        return self.pair.context

    def messages(self) -> list[dict[str, Any]]:
        """The conversation as the context store holds it now."""
        return self.context.get_messages()

    def request(self, index: int) -> dict[str, Any]:
        """The JSON body of the ``index``-th request the scripted server received."""
        assert self.server is not None, "not a conversation with a scripted server"
        body = self.server.requests[index].json
        assert isinstance(body, dict), f"request {index} has no JSON body"
        return body

    def request_messages(self, index: int) -> list[dict[str, Any]]:
        """The messages of the ``index``-th request."""
        messages = self.request(index)["messages"]
        assert isinstance(messages, list)
        return messages

    def of_type(self, cls: type[F], frames: Sequence[Frame] | None = None) -> list[F]:
        """The frames of ``cls`` in ``frames`` (default :attr:`output`)."""
        return of_type(self.output if frames is None else frames, cls)

    def position(self, frame: Frame) -> int:
        """Where ``frame`` (this very object) is in :attr:`output`."""
        return position(self.output, frame)

    def texts(self, frames: Sequence[Frame] | None = None) -> list[str]:
        """The texts of the ``LLMTextFrame``s in ``frames`` (default :attr:`output`)."""
        return [f.text for f in self.of_type(LLMTextFrame, frames)]

    def text(self, frames: Sequence[Frame] | None = None) -> str:
        """:meth:`texts`, joined."""
        return "".join(self.texts(frames))

    def starts(self, frames: Sequence[Frame] | None = None) -> list[LLMFullResponseStartFrame]:
        """The response start frames in ``frames`` (default :attr:`output`)."""
        return self.of_type(LLMFullResponseStartFrame, frames)

    def ends(self, frames: Sequence[Frame] | None = None) -> list[LLMFullResponseEndFrame]:
        """The response end frames in ``frames`` (default :attr:`output`)."""
        return self.of_type(LLMFullResponseEndFrame, frames)

    def usage(self) -> list[LLMUsageMetricsData]:
        """The usage measurements that left the pipeline."""
        return metrics_of(self.sink, LLMUsageMetricsData)


class _Server(Protocol):
    @property
    def base_url(self) -> str: ...


@asynccontextmanager
async def open_conversation(
    server: ScriptedOpenAIServer | _Server,
    *,
    model: str = MODEL,
    api_key: str = API_KEY,
    quick_start: bool = False,
    on_output: Callable[[Frame], None] | None = None,
    messages: Sequence[Mapping[str, Any]] | None = None,
    tools: ToolsSchema | None = None,
    context: OpenAILLMContext | None = None,
    functions: Mapping[str | None, FunctionHandler] | None = None,
    params: PipelineParams | None = None,
    name: str | None = None,
    probe_delay: float = 0.0,
    storage: ConversationStorage | None = None,
    conversation_id: str | None = None,
    lease_ttl: float | None = None,
    llm_params: GenerationParams | None = None,
    within: float = WAIT_SECS,
    check_on_exit: bool = True,
    standalone: bool = False,
    **llm_options: Any,
) -> AsyncIterator[Conversation]:
    """Run a conversation against ``server`` for the block.

    Args:
        server: A :class:`~actors.testing.ScriptedOpenAIServer` (checked on the way out, see
            below) or any server with a ``base_url``.
        model: The model asked for.
        api_key: The API key sent.
        quick_start: The ``TextTransport`` shape instead of the probe's.
        on_output: Also called with each frame reaching the output point, once recorded (the
            application's output callback, say).
        messages: The first messages of the context (default: :data:`SYSTEM`).
        tools: The context's tools.
        context: The context itself (``messages`` and ``tools`` are then ignored).
        functions: Tool handlers to register, by name (``None``: the catch-all).
        params: Task parameters.
        name: The session's name.
        probe_delay: Seconds the probe spends on each text frame (a slow output stage).
        storage: Context storage for the aggregators.
        conversation_id: The conversation's id in ``storage``.
        lease_ttl: The ttl of the session's lease on it (default: the store's).
        llm_params: The LLM's generation parameters.
        within: The bound of every wait, and of the task's start and end.
        check_on_exit: Check, with a scripted server, what the session left behind (below).
        standalone: Pipecat 1.x's ``LLMContextAggregatorPair(context)``, bound to no service,
            instead of ``llm.create_context_aggregator(context)`` (no ``storage`` then).
        llm_options: More ``OpenAILLMService`` arguments (``retry``, ``timeouts``,
            ``max_image_bytes``...).

    Leaving the block ends the task gracefully. With a scripted server (and ``check_on_exit``)
    it then checks that no task of the session is left running, that the LLM closed every
    socket, that every request the server received was valid for the OpenAI API, and that the
    conversation left behind is valid for the next one.
    """
    llm = OpenAILLMService(
        model=model, api_key=api_key, base_url=server.base_url, params=llm_params, **llm_options
    )
    for function_name, handler in (functions or {}).items():
        llm.register_function(function_name, handler)
    if context is None:
        context = OpenAILLMContext(messages=[SYSTEM] if messages is None else messages, tools=tools)
    pair: OpenAIContextAggregatorPair
    if standalone:
        assert storage is None, "the standalone pair takes no storage"
        pair = LLMContextAggregatorPair(context)
    elif lease_ttl is None:
        pair = llm.create_context_aggregator(
            context, storage=storage, conversation_id=conversation_id
        )
    else:
        pair = llm.create_context_aggregator(
            context, storage=storage, conversation_id=conversation_id, lease_ttl=lease_ttl
        )
    scripted = server if isinstance(server, ScriptedOpenAIServer) else None
    conversation = Conversation(llm, pair, server=scripted, within=within, on_output=on_output)
    stages: list[Stage]
    if quick_start:
        conversation._transport = transport = TextTransport(on_output=conversation.shown)
        stages = [transport.input(), pair.user(), llm, transport.output(), pair.assistant()]
    else:
        conversation._probe = probe = OutputProbe(conversation.shown, text_delay=probe_delay)
        stages = [pair.user(), llm, probe, pair.assistant()]
    before = set(running_tasks())
    async with open_test_task(
        Pipeline(stages), params=params, name=name, include_lifecycle=True, timeout=within
    ) as harness:
        conversation._running(harness)
        yield conversation
    if scripted is None or not check_on_exit:
        return
    assert harness.has_finished()
    with trio.fail_after(within):
        await scripted.wait_connections_closed()
    left = [t.name for t in await tasks_left_running(before)]
    assert left == [], f"still running after the session: {left}"
    for request in scripted.requests:
        if request.path.endswith("/chat/completions"):  # not /tokenize (a context window's)
            assert_valid(request.json["messages"], allow_in_progress=True)
    assert_valid(conversation.messages())


# ---------------------------------------------------------------------- validity


def context_problems(
    messages: Sequence[Mapping[str, Any]], *, allow_in_progress: bool = False
) -> list[str]:
    """What would make the OpenAI API refuse ``messages`` because of tool bookkeeping.

    Every assistant ``tool_calls`` entry must be answered, right after its message, by one
    ``tool`` message with its id (and a real result, unless ``allow_in_progress``); no ``tool``
    message may answer a call that was not made just before it.
    """
    problems: list[str] = []
    i = 0
    while i < len(messages):
        message = messages[i]
        role = message.get("role")
        if role == "tool":
            problems.append(
                f"message {i}: tool message {message.get('tool_call_id')!r} answers no call"
            )
            i += 1
            continue
        if role in ("system", "user") and "content" not in message:
            problems.append(f"message {i}: {role} message without content")
        calls = message.get("tool_calls") if role == "assistant" else None
        if not calls:
            if role == "assistant" and not message.get("content"):
                problems.append(f"message {i}: empty assistant message")
            i += 1
            continue
        ids = [c.get("id") for c in calls]
        if len(set(ids)) != len(ids) or not all(isinstance(x, str) and x for x in ids):
            problems.append(f"message {i}: bad or repeated tool call ids {ids}")
        for call in calls:
            function = call.get("function", {})
            if call.get("type") != "function" or not function.get("name"):
                problems.append(f"message {i}: malformed tool call {call}")
            if not isinstance(function.get("arguments"), str):
                problems.append(f"message {i}: arguments of {call.get('id')} are not a string")
        answers = messages[i + 1 : i + 1 + len(ids)]
        answered = [a.get("tool_call_id") for a in answers if a.get("role") == "tool"]
        if sorted(answered, key=str) != sorted(ids, key=str):
            problems.append(f"message {i}: calls {ids} answered by {answered}")
        for answer in answers:
            content = answer.get("content")
            if not isinstance(content, str) or not content:
                problems.append(f"tool answer {answer.get('tool_call_id')}: no content")
            elif content == "IN_PROGRESS" and not allow_in_progress:
                problems.append(f"tool answer {answer.get('tool_call_id')}: still IN_PROGRESS")
        i += 1 + len(ids)
    return problems


def assert_valid(messages: Sequence[Mapping[str, Any]], *, allow_in_progress: bool = False) -> None:
    """Fail with the problems :func:`context_problems` finds."""
    problems = context_problems(messages, allow_in_progress=allow_in_progress)
    assert not problems, (
        "invalid context:\n"
        + "\n".join(problems)
        + "\n"
        + json.dumps(list(messages), indent=1, default=str)
    )


def tool_answer(messages: Sequence[Mapping[str, Any]], tool_call_id: str) -> str:
    """The content of the ``tool`` message answering ``tool_call_id``."""
    found = [
        m for m in messages if m.get("role") == "tool" and m.get("tool_call_id") == tool_call_id
    ]
    assert len(found) == 1, f"{len(found)} tool messages answer {tool_call_id}"
    content = found[0]["content"]
    assert isinstance(content, str)
    return content
