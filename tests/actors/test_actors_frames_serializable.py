"""Every frame any stage sends in the seed example's topology survives serialization.

Stages talk only through frames, so a session whose frames serialize can be recorded,
replayed and, one day, spread over processes. This test runs the seed example's pipeline
(text input, user aggregator, LLM, text output, assistant aggregator) against the scripted
server through a text turn, a turn with two concurrent tool calls (one asking to hear when
its result is in the context), an interruption and a failed completion. It records every
frame any actor sends, however it sends it (``push_frame`` to its neighbours, or ``send``,
``send_nowait``, ``tell`` and ``ask`` straight to another actor, the companions' traffic
included) and every frame that reaches an end of the pipeline, and checks that each one
reads back from its JSON text as the same frame: same class, and every field equal, also the
fields left out of ``==`` (a live object or a callback there would come back as ``None``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from actors import (
    ContextStore,
    ErrorCategory,
    FunctionCallParams,
    FunctionCallResultFrame,
    FunctionCallResultProperties,
    FunctionSchema,
    LLMTextFrame,
    OpenAILLMContext,
    OpenAILLMContextFrame,
    OpenAILLMService,
    RecordToolSettlementRequest,
    RunFunctionCallsRequest,
    TextTransport,
    ToolsSchema,
)
from actors.testing import ChunkFactory, Reply, ScriptedOpenAIServer
from runtime import (
    Actor,
    ActorRef,
    ErrorFrame,
    Frame,
    FrameDirection,
    InterruptionFrame,
    Pipeline,
    PipelineTask,
)
from runtime.serialization import dumps, loads

from ..conversation_kit import open_conversation, tool_answer

#: The one field a frame may keep to itself, by the runtime's documented design: an
#: ``ErrorFrame``'s exception object stays where it was raised (its text travels in ``error``).
_LOCAL_ONLY = {(ErrorFrame, "exception")}

WEATHER = FunctionSchema(
    name="get_weather",
    description="Get current weather information",
    properties={"location": {"type": "string", "description": "City name"}},
    required=["location"],
)
SYSTEM = {"role": "system", "content": "You are a helpful assistant. Keep responses concise."}


@attrs.define(eq=False)
class Recorder:
    """Every frame sent in the session: ``(how, sender or receiver, frame)``."""

    sent: list[tuple[str, str, Frame]] = attrs.Factory(list)

    def hook(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Record at the runtime's sending primitives, for every actor of the process."""
        recorded = self.sent
        push_frame = Actor.push_frame
        send, send_nowait, tell, ask = (
            ActorRef.send,
            ActorRef.send_nowait,
            ActorRef.tell,
            ActorRef.ask,
        )

        async def recording_push(
            actor: Actor[Any], frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM
        ) -> None:
            recorded.append(("push", actor.name, frame))
            await push_frame(actor, frame, direction)

        async def recording_send(ref: ActorRef[Any], frame: Frame) -> None:
            recorded.append(("send", ref.name, frame))
            await send(ref, frame)

        def recording_send_nowait(ref: ActorRef[Any], frame: Frame) -> None:
            recorded.append(("send_nowait", ref.name, frame))
            send_nowait(ref, frame)

        def recording_tell(ref: ActorRef[Any], frame: Frame) -> None:
            recorded.append(("tell", ref.name, frame))
            tell(ref, frame)

        async def recording_ask(
            ref: ActorRef[Any],
            frame: Frame,
            *,
            timeout: float | None = 5.0,  # noqa: ASYNC109 - the signature of ActorRef.ask
        ) -> Any:
            recorded.append(("ask", ref.name, frame))
            return await ask(ref, frame, timeout=timeout)

        monkeypatch.setattr(Actor, "push_frame", recording_push)
        monkeypatch.setattr(ActorRef, "send", recording_send)
        monkeypatch.setattr(ActorRef, "send_nowait", recording_send_nowait)
        monkeypatch.setattr(ActorRef, "tell", recording_tell)
        monkeypatch.setattr(ActorRef, "ask", recording_ask)

    def at_end(self, frame: Frame, direction: FrameDirection) -> None:
        """A task listener: the frames that reach an end (the task's own lifecycle frames)."""
        self.sent.append((f"reached {direction.name.lower()} end", "task", frame))

    def types(self) -> set[str]:
        return {type(frame).__name__ for _, _, frame in self.sent}


def differences(original: Any, copy: Any, where: str) -> list[str]:
    """Where ``copy`` differs from ``original``: class, every attrs field (those left out of
    ``==`` too), and recursively every item of collections."""
    if type(copy) is not type(original):
        return [f"{where}: a {type(original).__name__} came back as a {type(copy).__name__}"]
    if attrs.has(type(original)):
        found: list[str] = []
        for field in attrs.fields(type(original)):
            if any(isinstance(original, cls) and field.name == name for cls, name in _LOCAL_ONLY):
                continue
            found += differences(
                getattr(original, field.name), getattr(copy, field.name), f"{where}.{field.name}"
            )
        return found
    if isinstance(original, Mapping):
        if set(original) != set(copy):
            return [f"{where}: keys {sorted(original)} came back as {sorted(copy)}"]
        return [e for k in original for e in differences(original[k], copy[k], f"{where}[{k!r}]")]
    if isinstance(original, list | tuple):
        if len(original) != len(copy):
            return [f"{where}: {len(original)} items came back as {len(copy)}"]
        return [
            e
            for i, (a, b) in enumerate(zip(original, copy, strict=True))
            for e in differences(a, b, f"{where}[{i}]")
        ]
    if original != copy:
        return [f"{where}: {original!r} came back as {copy!r}"]
    return []


async def test_every_frame_of_the_seed_example_round_trips(
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    server: ScriptedOpenAIServer,
    chunks: ChunkFactory,
) -> None:
    server.add(
        # 1. a text turn
        Reply.sse(chunks.text_stream(["Hello", " there!"], usage=(12, 3))),
        # 2. two concurrent tool calls, then the follow-up answer
        Reply.sse(
            chunks.tool_call_stream(
                [
                    ("get_weather", json.dumps({"location": "Paris"}), "call_paris"),
                    ("get_weather", json.dumps({"location": "Oslo"}), "call_oslo"),
                ],
                text=["Let me check."],
                usage=(30, 20),
            )
        ),
        Reply.sse(chunks.text_stream(["Sunny in Paris, snow in Oslo."])),
        # 3. an answer interrupted while it streams, then the answer to the new line
        Reply.sse(chunks.text_stream(["Once", " upon", " a", " time"] * 5), delay=1.0),
        Reply.sse(chunks.text_stream(["Sure."])),
        # 4. a failed completion
        Reply.error(400, "scripted bad request"),
    )
    recorder = Recorder()
    recorder.hook(monkeypatch)

    started: list[str] = []
    both_running = trio.Event()
    context_updated: list[str] = []

    async def get_weather_handler(params: FunctionCallParams) -> None:
        started.append(params.tool_call_id)
        if len(started) == 2:
            both_running.set()
        with trio.fail_after(5):  # the two calls of the response run at the same time
            await both_running.wait()
        location = params.arguments.get("location")
        if location == "Paris":

            async def updated() -> None:
                context_updated.append(params.tool_call_id)

            await params.result_callback(
                {"location": location, "conditions": "sunny"},
                properties=FunctionCallResultProperties(on_context_updated=updated),
            )
        else:
            await params.result_callback({"location": location, "conditions": "snow"})

    shown = trio.Event()

    def show(frame: Frame) -> None:
        if isinstance(frame, LLMTextFrame) and frame.text == "Once":
            shown.set()

    # The seed example (examples/function_calling.py), pointed at the scripted server.
    transport = TextTransport(on_output=show, speaking_frames=True)
    llm = OpenAILLMService(
        model="gpt-4o",
        api_key="sk-test-serializable-1a2b3c4d",
        base_url=server.base_url,
        params=OpenAILLMService.InputParams(temperature=0.7),
    )
    context = OpenAILLMContext(messages=[SYSTEM], tools=ToolsSchema(standard_tools=[WEATHER]))
    llm.register_function("get_weather", get_weather_handler)
    context_aggregator = llm.create_context_aggregator(context)
    pipeline = Pipeline(
        [
            transport.input(),
            context_aggregator.user(),
            llm,
            transport.output(),
            context_aggregator.assistant(),
        ]
    )
    task = PipelineTask(pipeline, on_downstream=recorder.at_end, on_upstream=recorder.at_end)
    answers: list[str] = []
    async with task:
        for line in ("Hello", "Weather in Paris and Oslo?"):
            await transport.send_text(line)
            answers.append(await transport.wait_answer())
        await transport.send_text("Tell me a story")
        with trio.fail_after(60):
            await shown.wait()
        await transport.send_text("Stop, just say sure")  # speaking: interrupts the story
        answers.append(await transport.wait_answer())
        await transport.send_text("Fail please")
        await transport.wait_answer()
        await trio.testing.wait_all_tasks_blocked()

    # The four parts of the conversation happened as scripted.
    assert answers == ["Hello there!", "Sunny in Paris, snow in Oslo.", "Sure."]
    assert sorted(started) == ["call_oslo", "call_paris"]
    assert context_updated == ["call_paris"]
    messages = context.get_messages()
    story = [i for i, m in enumerate(messages) if str(m.get("content", "")).startswith("Once")]
    assert len(story) == 1
    assert context.is_interrupted(story[0])
    assert [e.error for e in task.errors if "scripted bad request" in e.error]
    # The recording saw the traffic between the stages, not only what left the pipeline.
    kinds = recorder.types()
    for frame_type in (
        InterruptionFrame,
        ErrorFrame,
        OpenAILLMContextFrame,
        FunctionCallResultFrame,
        RunFunctionCallsRequest,
        RecordToolSettlementRequest,
    ):
        assert frame_type.__name__ in kinds
    assert {"AppendMessagesRequest", "RecordToolCallsRequest", "MetricsReport"} <= kinds

    problems: list[str] = []
    for how, actor, frame in recorder.sent:
        where = f"{type(frame).__name__} ({how} {actor})"
        copy = loads(dumps(frame))
        problems += differences(frame, copy, where)
        if copy != frame:
            problems.append(f"{where}: the copy is not == to the original")
    assert not problems, "frames that do not survive serialization:\n" + "\n".join(
        dict.fromkeys(problems)
    )


# ---------------------------------------------------------------------- what stays home
# What used to travel in frames stays with the actor it belongs to: the store knows the
# other actors by name, and a callback runs where it was given.


def test_the_store_takes_names_not_actors() -> None:
    llm = OpenAILLMService(api_key="sk-test-serializable-1a2b3c4d")
    with pytest.raises(TypeError, match="llm= takes the actor's name"):
        ContextStore(OpenAILLMContext(), llm)  # type: ignore[arg-type]
    pair = llm.create_context_aggregator(OpenAILLMContext())
    assert (pair.store.llm, pair.store.tools) == (llm.name, llm.executor.name)


async def test_a_failing_on_context_updated_is_reported_by_the_executor(
    autojump_clock: trio.testing.MockClock, server: ScriptedOpenAIServer, chunks: ChunkFactory
) -> None:
    call = ("get_weather", json.dumps({"location": "Oslo"}), "c1")
    server.add(Reply.sse(chunks.tool_call_stream([call])), Reply.sse(chunks.text_stream(["Snow."])))

    async def broken() -> None:
        raise RuntimeError("callback boom")

    async def get_weather(params: FunctionCallParams) -> None:
        await params.result_callback(
            "snow", properties=FunctionCallResultProperties(on_context_updated=broken)
        )

    async with open_conversation(server, tools=ToolsSchema(standard_tools=[WEATHER])) as conv:
        conv.llm.register_function("get_weather", get_weather)
        await conv.say("Weather?")
        await conv.wait_ends(2)  # the follow-up still ran
        [error] = conv.errors
        assert error.error == "on_context_updated raised RuntimeError: callback boom"
        assert error.source == conv.llm.executor.name
        assert error.category == ErrorCategory.UNKNOWN
        assert tool_answer(conv.request_messages(1), "c1") == '"snow"'
