"""Helpers for the conversation-stage tests: a recording stage, a running conversation built
with the public API, and the check that a conversation is valid for the OpenAI API.

Every conversation is ``Pipeline([user aggregator, llm, probe, assistant aggregator])`` run by a
``PipelineTask`` against a :class:`~actors.testing.ScriptedOpenAIServer`; the probe records
what reaches the stage right after the LLM, the task's listeners record what leaves the
pipeline at both ends.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import attrs
import trio

from actors import (
    FunctionCallParams,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    LLMUsageMetricsData,
    OpenAIContextAggregatorPair,
    OpenAILLMContext,
    OpenAILLMService,
    SQLiteContextStorage,
    ToolsSchema,
    TranscriptionFrame,
)
from actors.client import GenerationParams, RetryPolicy, Timeouts
from actors.testing import ScriptedOpenAIServer
from runtime import (
    Actor,
    CancelFrame,
    EndFrame,
    ErrorFrame,
    Frame,
    FrameDirection,
    InterruptionFrame,
    MetricsData,
    MetricsFrame,
    Pipeline,
    PipelineParams,
    PipelineTask,
    StartFrame,
)
from runtime.testing import running_tasks

API_KEY = "sk-test-actors-9f8e7d6c5b4a"
MODEL = "gpt-test"
SYSTEM = {"role": "system", "content": "You are a test assistant."}

#: How long (virtual seconds) a test waits for something before it fails.
WAIT_SECS = 120.0

_LIFECYCLE = (StartFrame, EndFrame, CancelFrame, InterruptionFrame)

F = TypeVar("F", bound=Frame)


@attrs.define(eq=False)
class BlockingTool:
    """A tool handler that runs until it is cancelled: :attr:`running` is set when a call
    starts, :attr:`cancelled` lists the ids of the calls that saw ``trio.Cancelled``."""

    running: trio.Event = attrs.Factory(trio.Event)
    cancelled: list[str] = attrs.Factory(list)

    async def __call__(self, params: FunctionCallParams) -> None:
        self.running.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            self.cancelled.append(params.tool_call_id)
            raise

    async def wait_running(self, within: float = 5.0) -> None:
        """Wait (virtual time) until a call has started; fail after ``within`` seconds."""
        with trio.fail_after(within):
            await self.running.wait()


class Notifier:
    """Wakes waiters whenever something was recorded."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait_for(self, predicate: Callable[[], bool], within: float = WAIT_SECS) -> None:
        """Wait (virtual time) until ``predicate()`` holds; fail after ``within`` seconds."""
        with trio.fail_after(within):
            while not predicate():
                await self._event.wait()


class Probe(Actor[Frame]):
    """A pass-through stage that records every downstream frame reaching it.

    Args:
        notifier: Told about every recorded frame.
        text_delay: Seconds to spend on each ``LLMTextFrame`` before passing it on (a slow
            output stage such as a TTS).
    """

    def __init__(self, notifier: Notifier, *, text_delay: float = 0.0, name: str = "Probe"):
        super().__init__(name=name)
        self.notifier = notifier
        self.text_delay = text_delay
        self.frames: list[Frame] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if direction is FrameDirection.DOWNSTREAM:
            if self.text_delay and isinstance(frame, LLMTextFrame):
                await trio.sleep(self.text_delay)
            self.frames.append(frame)
            self.notifier.notify()
        if not isinstance(frame, _LIFECYCLE):
            await self.push_frame(frame, direction)


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


@attrs.define(eq=False)
class Conversation:
    """A running conversation pipeline and what it recorded."""

    server: ScriptedOpenAIServer
    llm: OpenAILLMService
    pair: OpenAIContextAggregatorPair
    probe: Probe
    notifier: Notifier
    task: PipelineTask | None = None
    sink: list[Frame] = attrs.Factory(list)
    upstream: list[Frame] = attrs.Factory(list)

    # ------------------------------------------------------------------ recording

    def on_downstream(self, frame: Frame, direction: FrameDirection) -> None:
        self.sink.append(frame)
        self.notifier.notify()

    def on_upstream(self, frame: Frame, direction: FrameDirection) -> None:
        self.upstream.append(frame)
        self.notifier.notify()

    # ------------------------------------------------------------------ driving

    @property
    def running(self) -> PipelineTask:
        assert self.task is not None, "the conversation is not running"
        return self.task

    async def say(self, text: str) -> None:
        """One user turn (a transcription, as a speech-to-text stage would send it)."""
        await self.running.queue_frame(TranscriptionFrame(text, user_id="user", timestamp=""))

    async def queue(self, frame: Frame) -> None:
        await self.running.queue_frame(frame)

    async def wait_for(self, predicate: Callable[[], bool], within: float = WAIT_SECS) -> None:
        await self.notifier.wait_for(predicate, within)

    async def wait_ends(self, count: int) -> None:
        """Wait until ``count`` inferences have ended and their end left the pipeline."""
        await self.wait_for(lambda: len(of_type(self.sink, LLMFullResponseEndFrame)) >= count)
        await trio.testing.wait_all_tasks_blocked()

    async def wait_errors(self, count: int) -> None:
        await self.wait_for(lambda: len(self.errors) >= count)
        await trio.testing.wait_all_tasks_blocked()

    # ------------------------------------------------------------------ reading

    @property
    def context(self) -> OpenAILLMContext:
        return self.pair.context

    def messages(self) -> list[dict[str, Any]]:
        """The conversation as the context store holds it now."""
        return self.context.get_messages()

    @property
    def errors(self) -> list[ErrorFrame]:
        return of_type(self.upstream, ErrorFrame)

    def request(self, index: int) -> dict[str, Any]:
        """The JSON body of the ``index``-th request the server received."""
        body = self.server.requests[index].json
        assert isinstance(body, dict), f"request {index} has no JSON body"
        return body

    def request_messages(self, index: int) -> list[dict[str, Any]]:
        messages = self.request(index)["messages"]
        assert isinstance(messages, list)
        return messages

    def texts(self, frames: Sequence[Frame] | None = None) -> list[str]:
        return [
            f.text for f in of_type(self.probe.frames if frames is None else frames, LLMTextFrame)
        ]

    def starts(self, frames: Sequence[Frame] | None = None) -> list[LLMFullResponseStartFrame]:
        return of_type(self.probe.frames if frames is None else frames, LLMFullResponseStartFrame)

    def ends(self, frames: Sequence[Frame] | None = None) -> list[LLMFullResponseEndFrame]:
        return of_type(self.probe.frames if frames is None else frames, LLMFullResponseEndFrame)

    def usage(self) -> list[LLMUsageMetricsData]:
        return metrics_of(self.sink, LLMUsageMetricsData)


@asynccontextmanager
async def open_conversation(
    server: ScriptedOpenAIServer,
    *,
    messages: Sequence[Mapping[str, Any]] | None = None,
    tools: ToolsSchema | None = None,
    params: PipelineParams | None = None,
    probe_delay: float = 0.0,
    model: str = MODEL,
    retry: RetryPolicy | None = None,
    timeouts: Timeouts | None = None,
    function_call_timeout_secs: float | None = None,
    max_image_bytes: int | None = None,
    max_event_bytes: int | None = None,
    llm_params: GenerationParams | None = None,
    context: OpenAILLMContext | None = None,
    storage: SQLiteContextStorage | None = None,
    conversation_id: str | None = None,
) -> AsyncIterator[Conversation]:
    """Run ``Pipeline([user, llm, probe, assistant])`` against ``server`` for the block.

    Leaving the block ends the task gracefully, then checks that no task of the session is
    left running, that the LLM closed every socket, that every request the server received
    was valid for the OpenAI API, and that the conversation left behind is valid for the next
    one.
    """
    extra: dict[str, Any] = {}
    if max_image_bytes is not None:
        extra["max_image_bytes"] = max_image_bytes
    if max_event_bytes is not None:
        extra["max_event_bytes"] = max_event_bytes
    llm = OpenAILLMService(
        model=model,
        api_key=API_KEY,
        base_url=server.base_url,
        params=llm_params,
        retry=retry,
        timeouts=timeouts,
        function_call_timeout_secs=function_call_timeout_secs,
        **extra,
    )
    if context is None:
        context = OpenAILLMContext(messages=[SYSTEM] if messages is None else messages, tools=tools)
    pair = llm.create_context_aggregator(context, storage=storage, conversation_id=conversation_id)
    notifier = Notifier()
    probe = Probe(notifier, text_delay=probe_delay)
    conv = Conversation(server=server, llm=llm, pair=pair, probe=probe, notifier=notifier)
    task = PipelineTask(
        Pipeline([pair.user(), llm, probe, pair.assistant()]),
        params,
        on_downstream=conv.on_downstream,
        on_upstream=conv.on_upstream,
    )
    conv.task = task
    before = set(running_tasks())
    async with task:
        yield conv
    assert task.has_finished()
    with trio.fail_after(WAIT_SECS):
        await server.wait_connections_closed()
    await trio.testing.wait_all_tasks_blocked()
    left = [t.name for t in running_tasks() if t not in before]
    assert left == [], f"still running after the session: {left}"
    for request in server.requests:
        assert_valid(request.json["messages"], allow_in_progress=True)
    assert_valid(conv.messages())


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
