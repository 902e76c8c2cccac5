"""Function calling through the public pipeline: single and parallel calls, every way a call
can settle, and the follow-up inference, each checked on the request the server received next."""

from __future__ import annotations

import functools
import json
from typing import Any

import pytest
import structlog.testing
import trio
import trio.testing

from actors import (
    ErrorCategory,
    FunctionCallFromLLM,
    FunctionCallInProgressFrame,
    FunctionCallParams,
    FunctionCallResultFrame,
    FunctionCallResultProperties,
    FunctionCallsStartedFrame,
    FunctionHandler,
    OpenAILLMService,
)
from actors.testing import ChunkFactory, Reply, ScriptedOpenAIServer

from ..conversation_kit import (
    SYSTEM,
    Conversation,
    assert_valid,
    context_problems,
    of_type,
    open_conversation,
    position,
    tool_answer,
)
from .actors_kit import TOOLS, BlockingTool


def _call(name: str, arguments: dict[str, Any], call_id: str) -> tuple[str, str, str]:
    return (name, json.dumps(arguments), call_id)


#: One call of ``get_weather`` (``call_1``).
WEATHER_CALL = [_call("get_weather", {"location": "x"}, "call_1")]


def _script(
    server: ScriptedOpenAIServer, chunks: ChunkFactory, *answers: list[tuple[str, str, str]] | str
) -> None:
    """Queue one response per answer: a list of tool calls, or a text."""
    server.add(
        *(
            Reply.sse(
                chunks.text_stream([answer])
                if isinstance(answer, str)
                else chunks.tool_call_stream(answer)
            )
            for answer in answers
        )
    )


async def _follow_up(conv: Conversation, line: str, *, answers: int = 2) -> list[dict[str, Any]]:
    """Say ``line``, wait for ``answers`` answers, and return the messages of the last request
    (the follow-up), checked valid for the API."""
    await conv.say(line)
    await conv.wait_ends(answers)
    follow_up = conv.request_messages(answers - 1)
    assert_valid(follow_up)
    return follow_up


class TestSingleToolCall:
    """A tool call runs its handler and the follow-up inference sees the call and its result."""

    async def test_round_trip(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        _script(
            server,
            chunks,
            [_call("get_weather", {"location": "Paris"}, "call_1")],
            "Sunny in Paris.",
        )
        seen: list[FunctionCallParams] = []

        async def get_weather(params: FunctionCallParams) -> None:
            seen.append(params)
            await params.result_callback({"location": params.arguments["location"], "sky": "sunny"})

        functions: dict[str | None, FunctionHandler] = {"get_weather": get_weather}
        async with open_conversation(server, tools=TOOLS, functions=functions) as conv:
            follow_up = await _follow_up(conv, "Weather in Paris?")

            (params,) = seen
            assert params.function_name == "get_weather"
            assert params.tool_call_id == "call_1"
            assert dict(params.arguments) == {"location": "Paris"}
            assert params.llm is conv.llm
            assert params.context.get_messages()[-1] == {
                "role": "user",
                "content": "Weather in Paris?",
            }

            assert conv.request(0)["tools"] == TOOLS.to_openai()
            assert follow_up == [
                SYSTEM,
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {
                                "name": "get_weather",
                                "arguments": '{"location": "Paris"}',
                            },
                        }
                    ],
                },
                {
                    "role": "tool",
                    "tool_call_id": "call_1",
                    "content": '{"location": "Paris", "sky": "sunny"}',
                },
            ]
            assert conv.messages() == [
                *follow_up,
                {"role": "assistant", "content": "Sunny in Paris."},
            ]

            frames = conv.output
            (started,) = of_type(frames, FunctionCallsStartedFrame)
            assert started.function_calls == (
                FunctionCallFromLLM(
                    "get_weather", "call_1", {"location": "Paris"}, '{"location": "Paris"}'
                ),
            )
            (progress,) = of_type(frames, FunctionCallInProgressFrame)
            (result,) = of_type(frames, FunctionCallResultFrame)
            assert (progress.tool_call_id, result.tool_call_id) == ("call_1", "call_1")
            assert result.error is None
            at = functools.partial(position, frames)
            assert at(started) < at(progress) < at(result)
            first_start, second_start = conv.starts()
            first_end, _ = conv.ends()
            # The batch belongs to the first answer, and the follow-up starts after the result.
            assert at(first_start) < at(started) < at(first_end)
            assert at(result) < at(second_start)
            assert len(conv.starts()) == 2
            assert len(conv.ends()) == 2
            assert conv.errors == []

    async def test_text_before_the_call_is_kept_with_it(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        call = [_call("get_time", {"timezone": "UTC"}, "call_t")]
        first = chunks.tool_call_stream(call, text=["Let me ", "check."])
        server.add(Reply.sse(first), Reply.sse(chunks.text_stream(["Noon."])))

        async def get_time(params: FunctionCallParams) -> None:
            await params.result_callback("12:00")

        async with open_conversation(server, tools=TOOLS, functions={"get_time": get_time}) as conv:
            follow_up = await _follow_up(conv, "Time?")
            assert follow_up[2]["content"] == "Let me check."
            assert [c["id"] for c in follow_up[2]["tool_calls"]] == ["call_t"]
            assert tool_answer(follow_up, "call_t") == '"12:00"'
            # The text went into the tool-call message, not into a message of its own.
            assert [m["role"] for m in conv.messages()] == [
                "system",
                "user",
                "assistant",
                "tool",
                "assistant",
            ]


class TestParallelCalls:
    """The calls of one response run concurrently, and the follow-up inference runs once,
    after the last of them settled, with every result in its request."""

    async def test_five_200ms_calls_take_200ms(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        calls = [_call("get_weather", {"location": f"city{i}"}, f"call_{i}") for i in range(5)]
        _script(server, chunks, calls, "Done.")
        spans: dict[str, tuple[float, float]] = {}

        async def slow_weather(params: FunctionCallParams) -> None:
            start = trio.current_time()
            await trio.sleep(0.2)
            spans[params.tool_call_id] = (start, trio.current_time())
            await params.result_callback({"city": params.arguments["location"]})

        functions: dict[str | None, FunctionHandler] = {"get_weather": slow_weather}
        async with open_conversation(server, tools=TOOLS, functions=functions) as conv:
            follow_up = await _follow_up(conv, "Weather in five cities?")

            assert len(spans) == 5
            first_start = min(s for s, _ in spans.values())
            last_end = max(e for _, e in spans.values())
            assert last_end - first_start < 0.21  # sequential would take 1.0 s
            assert len(server.requests) == 2
            assert server.requests[1].received_at >= last_end
            for i in range(5):
                assert json.loads(tool_answer(follow_up, f"call_{i}")) == {"city": f"city{i}"}

    async def test_handlers_that_wait_for_each_other_complete(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        calls = [_call("get_weather", {"location": "a"}, "call_a"), _call("get_time", {}, "call_b")]
        _script(server, chunks, calls, "ok")
        arrived: dict[str, trio.Event] = {"get_weather": trio.Event(), "get_time": trio.Event()}

        async def rendezvous(params: FunctionCallParams) -> None:
            arrived[params.function_name].set()
            other = "get_time" if params.function_name == "get_weather" else "get_weather"
            with trio.fail_after(5):  # run one after the other, this would time out
                await arrived[other].wait()
            await params.result_callback("met")

        async with open_conversation(server, tools=TOOLS, functions={None: rendezvous}) as conv:
            follow_up = await _follow_up(conv, "Both?")
            assert tool_answer(follow_up, "call_a") == tool_answer(follow_up, "call_b") == '"met"'
            assert conv.errors == []

    async def test_interleaved_deltas_are_accumulated_per_index(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        both = chunks.chunk(
            {
                "tool_calls": [
                    {"index": 0, "function": {"arguments": 'on": "Ro'}},
                    {"index": 1, "function": {"arguments": 'zone": '}},
                ]
            }
        )
        stream = [
            chunks.role(),
            chunks.tool_call(0, id="call_w"),  # the id comes before the name
            chunks.tool_call(1, id="call_t", name="get_time", arguments=""),
            chunks.tool_call(0, name="get_weather", arguments='{"locati'),
            chunks.tool_call(1, arguments='{"time'),
            both,
            chunks.tool_call(0, arguments='me"}'),
            chunks.tool_call(1, arguments='"CET"}'),
            chunks.finish("tool_calls"),
        ]
        server.add(Reply.sse(stream), Reply.sse(chunks.text_stream(["Rome: sunny, 10:00."])))
        got: dict[str, dict[str, Any]] = {}

        async def record(params: FunctionCallParams) -> None:
            got[params.function_name] = dict(params.arguments)
            await params.result_callback("ok")

        async with open_conversation(server, tools=TOOLS, functions={None: record}) as conv:
            follow_up = await _follow_up(conv, "Weather and time in Rome?")
            assert got == {"get_weather": {"location": "Rome"}, "get_time": {"timezone": "CET"}}
            assert [
                (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
                for c in follow_up[2]["tool_calls"]
            ] == [
                ("call_w", "get_weather", {"location": "Rome"}),
                ("call_t", "get_time", {"timezone": "CET"}),
            ]

    async def test_follow_up_runs_once_after_the_last_call_settles(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        durations = {"call_fast": 0.1, "call_slow": 0.9, "call_mid": 0.4}
        calls = [_call("get_weather", {"location": cid}, cid) for cid in durations]
        _script(server, chunks, calls, "All.")
        settled: dict[str, float] = {}

        async def timed(params: FunctionCallParams) -> None:
            await trio.sleep(durations[params.tool_call_id])
            settled[params.tool_call_id] = trio.current_time()
            await params.result_callback(params.tool_call_id)

        async with open_conversation(server, tools=TOOLS, functions={"get_weather": timed}) as conv:
            follow_up = await _follow_up(conv, "Three cities")
            await trio.sleep(10)  # plenty of time for a stray second follow-up
            await trio.testing.wait_all_tasks_blocked()

            assert len(server.requests) == 2
            assert server.requests[1].received_at >= max(settled.values())
            for cid in durations:
                assert tool_answer(follow_up, cid) == json.dumps(cid)
            assert len(conv.starts()) == 2
            assert len(conv.ends()) == 2


class TestCallSettlement:
    """Every call settles exactly once with something the LLM can read (a result, an error
    text, a timeout text), and the context stays valid for the next request."""

    async def test_handler_that_raises(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        _script(server, chunks, WEATHER_CALL, "Sorry, the weather service failed.")

        async def broken(params: FunctionCallParams) -> None:
            raise RuntimeError("db password is hunter2")

        async with open_conversation(
            server, tools=TOOLS, functions={"get_weather": broken}
        ) as conv:
            answer = tool_answer(await _follow_up(conv, "Weather?"), "call_1")
            assert answer == "The function `get_weather` failed and returned no result."
            assert "hunter2" not in json.dumps(conv.messages())
            (error,) = conv.errors
            assert error.category == ErrorCategory.APPLICATION
            assert "get_weather" in error.error
            assert "RuntimeError" in error.error
            assert isinstance(error.exception, RuntimeError)
            assert not error.fatal
            (result,) = of_type(conv.output, FunctionCallResultFrame)
            assert result.error is not None
            assert "RuntimeError" in result.error

    async def test_timeout_runs_the_llm_again(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        _script(server, chunks, WEATHER_CALL, "It took too long.")
        cancelled = trio.Event()
        async with open_conversation(server, tools=TOOLS) as conv:

            async def hangs(params: FunctionCallParams) -> None:
                try:
                    await trio.sleep_forever()
                finally:
                    cancelled.set()

            conv.llm.register_function("get_weather", hangs, timeout_secs=1.5)
            follow_up = await _follow_up(conv, "Weather?")

            assert cancelled.is_set()
            assert "timed out" in tool_answer(follow_up, "call_1")
            started = server.requests[0].received_at
            assert 1.5 <= server.requests[1].received_at - started < 1.6
            assert conv.texts()[-1] == "It took too long."

    async def test_service_wide_timeout_applies_to_calls_without_their_own(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        _script(server, chunks, WEATHER_CALL, "Too slow.")

        async def hangs(params: FunctionCallParams) -> None:
            await trio.sleep_forever()

        async with open_conversation(
            server, tools=TOOLS, functions={"get_weather": hangs}, function_call_timeout_secs=3
        ) as conv:
            assert "timed out" in tool_answer(await _follow_up(conv, "Weather?"), "call_1")
            assert 3 <= server.requests[1].received_at - server.requests[0].received_at < 3.1

    async def test_unknown_function(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        _script(server, chunks, [_call("launch_rocket", {}, "call_1")], "I cannot do that.")
        async with open_conversation(server, tools=TOOLS) as conv:
            follow_up = await _follow_up(conv, "Launch!")
            assert (
                tool_answer(follow_up, "call_1")
                == "The function `launch_rocket` is not currently available."
            )

    async def test_invalid_argument_json(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        _script(server, chunks, [("get_weather", '{"location": "Par', "call_1")], "Let me retry.")
        called: list[FunctionCallParams] = []

        async def get_weather(params: FunctionCallParams) -> None:
            called.append(params)
            await params.result_callback("never")

        functions: dict[str | None, FunctionHandler] = {"get_weather": get_weather}
        async with open_conversation(server, tools=TOOLS, functions=functions) as conv:
            follow_up = await _follow_up(conv, "Weather?")
            assert called == []
            answer = tool_answer(follow_up, "call_1")
            assert answer.startswith("Invalid arguments for `get_weather`")
            assert "JSON object" in answer
            (result,) = of_type(conv.output, FunctionCallResultFrame)
            assert result.error is not None

    async def test_catch_all_handler(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        calls = [_call("get_time", {"timezone": "UTC"}, "call_1"), _call("anything", {}, "call_2")]
        _script(server, chunks, calls, "Handled.")
        handled: list[str] = []

        async def get_time(params: FunctionCallParams) -> None:
            handled.append("own:" + params.function_name)
            await params.result_callback("12:00")

        async def fallback(params: FunctionCallParams) -> None:
            handled.append("catch-all:" + params.function_name)
            await params.result_callback({"handled_by": "catch-all"})

        functions: dict[str | None, FunctionHandler] = {"get_time": get_time, None: fallback}
        async with open_conversation(server, tools=TOOLS, functions=functions) as conv:
            assert conv.llm.has_function("no_such_function")
            follow_up = await _follow_up(conv, "Go")
            assert sorted(handled) == ["catch-all:anything", "own:get_time"]
            assert json.loads(tool_answer(follow_up, "call_2")) == {"handled_by": "catch-all"}

    async def test_run_llm_false_suppresses_the_follow_up(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        _script(server, chunks, WEATHER_CALL, "Next turn.")

        async def quiet(params: FunctionCallParams) -> None:
            await params.result_callback(
                {"stored": True}, properties=FunctionCallResultProperties(run_llm=False)
            )

        async with open_conversation(server, tools=TOOLS, functions={"get_weather": quiet}) as conv:
            await conv.say("Store it")
            await conv.wait_ends(1)
            await conv.wait_for(lambda: bool(of_type(conv.sink, FunctionCallResultFrame)))
            await trio.sleep(10)
            await trio.testing.wait_all_tasks_blocked()
            assert len(server.requests) == 1
            assert len(conv.starts()) == 1
            assert_valid(conv.messages())
            assert json.loads(tool_answer(conv.messages(), "call_1")) == {"stored": True}

            # The result is part of the next turn's request.
            second = await _follow_up(conv, "And now?")
            assert second[-1] == {"role": "user", "content": "And now?"}
            assert json.loads(tool_answer(second, "call_1")) == {"stored": True}

    async def test_late_result_callback_is_rejected_with_a_warning(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        _script(server, chunks, [*WEATHER_CALL, _call("get_time", {}, "call_2")], "ok")
        stash: list[FunctionCallParams] = []
        with structlog.testing.capture_logs() as logs:
            async with open_conversation(server, tools=TOOLS) as conv:

                async def twice(params: FunctionCallParams) -> None:
                    await params.result_callback("first")
                    await params.result_callback("second")

                async def too_slow(params: FunctionCallParams) -> None:
                    stash.append(params)
                    await trio.sleep_forever()

                conv.llm.register_function("get_weather", twice)
                conv.llm.register_function("get_time", too_slow, timeout_secs=1)
                follow_up = await _follow_up(conv, "Go")
                (late,) = stash
                await late.result_callback("after the timeout")
                await trio.testing.wait_all_tasks_blocked()

                assert tool_answer(follow_up, "call_1") == '"first"'
                assert "timed out" in tool_answer(follow_up, "call_2")
                assert tool_answer(conv.messages(), "call_2") == tool_answer(follow_up, "call_2")
                assert len(of_type(conv.output, FunctionCallResultFrame)) == 1
                assert len(server.requests) == 2
        rejected = [e for e in logs if "late function result rejected" in e["event"]]
        assert [(e["log_level"], e["tool_call_id"]) for e in rejected] == [
            ("warning", "call_1"),
            ("warning", "call_2"),
        ]

    async def test_on_context_updated_runs_between_the_result_and_the_follow_up(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        _script(server, chunks, WEATHER_CALL, "ok")
        observed: dict[str, Any] = {}
        async with open_conversation(server, tools=TOOLS) as conv:

            async def updated() -> None:
                observed["answer"] = tool_answer(conv.messages(), "call_1")
                observed["requests_before"] = len(server.requests)
                await trio.sleep(2)  # the follow-up must wait for this
                observed["requests_after"] = len(server.requests)
                observed["done_at"] = trio.current_time()

            async def get_weather(params: FunctionCallParams) -> None:
                await params.result_callback(
                    "rainy", properties=FunctionCallResultProperties(on_context_updated=updated)
                )

            conv.llm.register_function("get_weather", get_weather)
            follow_up = await _follow_up(conv, "Weather?")
            assert observed["answer"] == '"rainy"'
            assert observed["requests_before"] == observed["requests_after"] == 1
            assert server.requests[1].received_at >= observed["done_at"]
            assert tool_answer(follow_up, "call_1") == '"rainy"'


class TestChainsAndServerQuirks:
    """A follow-up that asks for more tools runs another batch, and a server that reuses index
    0 for every call (Ollama) still gives one call each."""

    async def test_chained_batches(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        time_call = _call("get_time", {"timezone": "UTC"}, "call_a")
        weather_call = _call("get_weather", {"location": "Oslo"}, "call_b")
        _script(server, chunks, [time_call], [weather_call], "Noon and snowing.")

        async def answer(params: FunctionCallParams) -> None:
            await params.result_callback(params.function_name + " done")

        async with open_conversation(server, tools=TOOLS, functions={None: answer}) as conv:
            last = await _follow_up(conv, "Time, then weather", answers=3)
            assert len(server.requests) == 3
            assert [m["role"] for m in last] == [
                "system",
                "user",
                "assistant",
                "tool",
                "assistant",
                "tool",
            ]
            assert tool_answer(last, "call_a") == '"get_time done"'
            assert tool_answer(last, "call_b") == '"get_weather done"'
            assert conv.pair.store.pending_tool_calls() == []

    async def test_index_zero_reused_for_two_calls(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        stream = [
            chunks.role(),
            chunks.tool_call(0, id="call_x", name="get_time", arguments='{"timezone": "UTC"}'),
            chunks.tool_call(0, id="call_y", name="get_weather", arguments='{"location": "Rome"}'),
            chunks.finish("tool_calls"),
        ]
        server.add(Reply.sse(stream), Reply.sse(chunks.text_stream(["Both."])))
        seen: list[tuple[str, dict[str, Any]]] = []

        async def record(params: FunctionCallParams) -> None:
            seen.append((params.tool_call_id, dict(params.arguments)))
            await params.result_callback("ok")

        async with open_conversation(server, tools=TOOLS, functions={None: record}) as conv:
            follow_up = await _follow_up(conv, "Both")
            assert sorted(seen) == [
                ("call_x", {"timezone": "UTC"}),
                ("call_y", {"location": "Rome"}),
            ]
            assert [c["id"] for c in follow_up[2]["tool_calls"]] == ["call_x", "call_y"]


class TestRegistration:
    """``register_function`` refuses, at once, a handler that could only fail later, when the
    model calls it."""

    async def test_a_plain_def_handler_is_refused_at_registration(self) -> None:
        llm = OpenAILLMService(model="m", api_key="k")

        def get_weather(params: FunctionCallParams) -> None:
            del params

        for handler in (get_weather, lambda params: None):
            with pytest.raises(TypeError) as raised:
                llm.register_function("get_weather", handler)  # type: ignore[arg-type]
            message = str(raised.value)
            assert message.startswith(
                "handler for 'get_weather' must be an `async def` function "
                "(`async def handler(params: FunctionCallParams) -> None`); got '"
            )
            assert message.endswith(
                "', which is not async (a plain `def` would fail when the model calls it)"
            )
            assert handler.__qualname__ in message
        assert not llm.has_function("get_weather")

    async def test_a_value_that_is_not_callable_is_named_by_its_type_only(self) -> None:
        llm = OpenAILLMService(model="m", api_key="k")
        with pytest.raises(TypeError) as raised:
            llm.register_function(None, "sk-live-secret")  # type: ignore[arg-type]
        assert str(raised.value).endswith("got a value of type str, which is not callable")
        assert "sk-live" not in str(raised.value)

    async def test_every_kind_of_async_callable_is_accepted(self) -> None:
        llm = OpenAILLMService(model="m", api_key="k")

        async def lookup(params: FunctionCallParams, *, source: str) -> None:
            await params.result_callback(source)

        class Service:
            async def lookup(self, params: FunctionCallParams) -> None:
                await params.result_callback("method")

        handlers: dict[str, FunctionHandler] = {
            "function": get_weather_handler,
            "method": Service().lookup,
            "callable object": BlockingTool(),
            "callable object of a subclass": type("Sub", (BlockingTool,), {})(),
            "partial": functools.partial(lookup, source="partial"),
        }
        for name, handler in handlers.items():
            llm.register_function(name, handler)
        assert all(llm.has_function(name) for name in handlers)


async def get_weather_handler(params: FunctionCallParams) -> None:
    await params.result_callback({"conditions": "sunny"})


class TestValidityCheck:
    """The suite's validity check finds every tool-bookkeeping problem the API refuses."""

    def test_it_accepts_a_valid_conversation_and_names_each_problem(self) -> None:
        call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        asked = {"role": "assistant", "content": None, "tool_calls": [call]}
        answer = {"role": "tool", "tool_call_id": "c1", "content": '"ok"'}
        user = {"role": "user", "content": "hi"}
        assert context_problems([SYSTEM, user, asked, answer]) == []
        assert context_problems([user, asked, user]) == ["message 1: calls ['c1'] answered by []"]
        assert context_problems([user, answer]) == ["message 1: tool message 'c1' answers no call"]
        pending = {**answer, "content": "IN_PROGRESS"}
        assert context_problems([user, asked, pending]) == ["tool answer c1: still IN_PROGRESS"]
        assert context_problems([user, asked, pending], allow_in_progress=True) == []
        assert context_problems([user, {"role": "assistant", "content": ""}]) == [
            "message 1: empty assistant message"
        ]
