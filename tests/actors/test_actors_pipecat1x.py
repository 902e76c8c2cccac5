"""Pipecat 1.x's names on trouper (docs/pipecat.md): tools written as plain functions or as
schemas carrying their handler, ``LLMContext``, ``LLMContextAggregatorPair`` bound to no
service, ``LLMRunFrame``, ``OpenAILLMService.Settings``/``retry_timeout_secs``/
``retry_on_timeout``, and both examples -- the seed's (0.0.x names) and the 1.x one -- run
against a scripted server: tool calls run concurrently, one follow-up, a valid context."""

from __future__ import annotations

import ast
import dataclasses
import enum
import gc
import importlib
import json
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict, cast

import pytest
import trio
import trio.testing

import actors
import runtime
from actors import (
    FunctionCallParams,
    FunctionCallResultProperties,
    FunctionCallsStartedFrame,
    FunctionSchema,
    LLMContext,
    LLMContextAggregatorPair,
    LLMContextFrame,
    LLMRunFrame,
    LLMSettings,
    LLMSetToolsFrame,
    LLMUpdateSettingsFrame,
    OpenAILLMContext,
    OpenAILLMContextFrame,
    OpenAILLMService,
    ToolsSchema,
)
from actors.client import FirstTokenTimeoutError, RetryPolicy, Timeouts
from actors.testing import ChunkFactory, Reply, ScriptedOpenAIServer
from runtime.serialization import frame_from_dict, frame_to_dict

from ..conversation_kit import assert_valid, open_conversation, tool_answer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_1X = ROOT / "examples" / "function_calling_1x.py"

Main = Callable[[list[str]], Awaitable[list[str]]]


def _tool(request: dict[str, Any], name: str) -> dict[str, Any]:
    found = [t["function"] for t in request["tools"] if t["function"]["name"] == name]
    assert len(found) == 1, f"{name} offered {len(found)} times"
    return cast("dict[str, Any]", found[0])


def _example(name: str, monkeypatch: pytest.MonkeyPatch, server: ScriptedOpenAIServer) -> Main:
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-example-test")
    monkeypatch.delenv("OPENAI_MODEL", raising=False)
    monkeypatch.syspath_prepend(str(ROOT))
    return cast("Main", importlib.import_module(f"examples.{name}").main)


# --------------------------------------------------------------------------- direct functions


class Unit(enum.Enum):
    CELSIUS = "celsius"
    FAHRENHEIT = "fahrenheit"


class Place(TypedDict, total=False):
    city: str
    country: str


@dataclasses.dataclass
class Window:
    start: int
    days: int = 1


class TestDirectFunctions:
    """A plain ``async def fn(params, ...)`` describes itself: name, docstring, annotations."""

    def test_google_style_docstring_and_simple_types(self) -> None:
        async def get_weather(
            params: FunctionCallParams, location: str, days: int, verbose: bool = False
        ) -> None:
            """Get the weather forecast.

            More detail that the model also reads.

            Args:
                location: The city, e.g. "Paris".
                days: How many days,
                    counted from today.
                verbose: Whether to explain.

            Returns:
                Nothing; the result goes to result_callback.
            """

        schema = FunctionSchema.from_function(get_weather)
        assert schema.name == "get_weather"
        assert schema.description == (
            "Get the weather forecast.\n\nMore detail that the model also reads."
        )
        assert schema.properties == {
            "location": {"type": "string", "description": 'The city, e.g. "Paris".'},
            "days": {"type": "integer", "description": "How many days, counted from today."},
            "verbose": {"type": "boolean", "description": "Whether to explain."},
        }
        assert schema.required == ["location", "days"]
        assert schema.handler is not None

    def test_numpy_and_sphinx_docstrings(self) -> None:
        async def numpy_style(params: FunctionCallParams, city: str, limit: float = 1.0) -> None:
            """Find things.

            Parameters
            ----------
            city : str
                Where to look.
            limit : float
                At most this much.

            Returns
            -------
            None
            """

        async def sphinx_style(params: FunctionCallParams, city: str) -> None:
            """Find other things.

            :param city: Where to look,
                in detail.
            :returns: nothing.
            """

        numpy = FunctionSchema.from_function(numpy_style)
        assert numpy.description == "Find things."
        assert numpy.properties["city"]["description"] == "Where to look."
        assert numpy.properties["limit"] == {"type": "number", "description": "At most this much."}
        sphinx = FunctionSchema.from_function(sphinx_style)
        assert sphinx.description == "Find other things."
        assert sphinx.properties["city"]["description"] == "Where to look, in detail."

    def test_annotations_become_json_schemas(self) -> None:
        async def book(  # type: ignore[no-untyped-def]
            params: FunctionCallParams,
            tags: list[str],
            scores: dict[str, float],
            unit: Unit,
            mode: Literal["fast", "slow"],
            note: str | None,
            place: Place,
            window: Window,
            pair: tuple[int, str],
            size: Annotated[int, "rooms"],
            anything: Any,
            untyped,
        ) -> None:
            """Book."""

        properties = FunctionSchema.from_function(book).properties
        assert properties["tags"] == {"type": "array", "items": {"type": "string"}}
        assert properties["scores"] == {
            "type": "object",
            "additionalProperties": {"type": "number"},
        }
        assert properties["unit"] == {"enum": ["celsius", "fahrenheit"], "type": "string"}
        assert properties["mode"] == {"enum": ["fast", "slow"], "type": "string"}
        assert properties["note"] == {"anyOf": [{"type": "string"}, {"type": "null"}]}
        assert properties["place"] == {
            "type": "object",
            "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        }
        assert properties["window"] == {
            "type": "object",
            "properties": {"start": {"type": "integer"}, "days": {"type": "integer"}},
            "required": ["start"],
        }
        assert properties["pair"] == {
            "type": "array",
            "prefixItems": [{"type": "integer"}, {"type": "string"}],
        }
        assert properties["size"] == {"type": "integer"}
        assert properties["anything"] == {}
        assert properties["untyped"] == {}

    def test_what_cannot_describe_itself_is_refused_where_it_is_listed(self) -> None:
        def not_async(params: FunctionCallParams, city: str) -> None:
            """Sync."""

        async def wrong_first(city: str) -> None:
            """No params."""

        async def star_args(params: FunctionCallParams, *cities: str) -> None:
            """Varargs."""

        async def odd_type(params: FunctionCallParams, value: complex) -> None:
            """Complex."""

        with pytest.raises(TypeError, match=r"must be `async def not_async\(params, \.\.\.\)`"):
            ToolsSchema(standard_tools=[not_async])
        with pytest.raises(TypeError, match="first parameter must be `params`"):
            LLMContext(tools=[wrong_first])
        with pytest.raises(TypeError, match=r"\*cities cannot be described"):
            FunctionSchema.from_function(star_args)
        with pytest.raises(TypeError, match=r"argument 'value'.*complex.*FunctionSchema"):
            FunctionSchema.from_function(odd_type)
        with pytest.raises(TypeError, match="OpenAI tool dict"):
            LLMContext(tools=[42])


# --------------------------------------------------------------------------- schemas, context


async def _noop(params: FunctionCallParams) -> None:
    await params.result_callback(None)


class TestSchemasAndContext:
    def test_the_1x_names_are_the_seed_classes(self) -> None:
        assert LLMContext is OpenAILLMContext
        assert LLMContextFrame is OpenAILLMContextFrame
        assert runtime.PipelineWorker is runtime.PipelineTask
        assert runtime.WorkerRunner is runtime.PipelineRunner
        assert OpenAILLMService.Settings is LLMSettings
        assert issubclass(LLMContextAggregatorPair, actors.OpenAIContextAggregatorPair)

    def test_a_schema_handler_must_be_async(self) -> None:
        def sync_handler(params: FunctionCallParams) -> None:
            """Not awaitable."""

        with pytest.raises(TypeError, match="must be an `async def` function"):
            FunctionSchema(name="f", handler=sync_handler)  # type: ignore[arg-type]

    def test_tools_schema_takes_functions_and_pipecats_custom_tools_mapping(self) -> None:
        async def lookup(params: FunctionCallParams, key: str) -> None:
            """Look a key up."""

        described = FunctionSchema(name="described", handler=_noop)
        search = {"type": "function", "function": {"name": "search", "parameters": {}}}
        tools = ToolsSchema(
            standard_tools=[lookup, described],
            custom_tools={"openai": [search], "gemini": [{"google_search": {}}]},
        )
        assert [type(t) for t in tools.standard_tools] == [FunctionSchema, FunctionSchema]
        assert tools.names == ["lookup", "described"]
        assert [t["function"]["name"] for t in tools.to_openai()] == [
            "lookup",
            "described",
            "search",
        ]
        context = LLMContext(tools=tools)
        assert context.tool_handlers == ["described", "lookup"]

    def test_handler_carrying_tools_do_not_travel_in_frames(self) -> None:
        with pytest.raises(TypeError, match=r"cannot travel in a frame.*register_function"):
            LLMSetToolsFrame(tools=[FunctionSchema(name="f", handler=_noop)])
        frame = LLMSetToolsFrame(tools=[FunctionSchema(name="f")])
        assert frame.tools == [FunctionSchema(name="f").to_openai()]

    def test_two_handlers_for_one_name_are_refused(self) -> None:
        async def f(params: FunctionCallParams) -> None:
            """First."""

        with pytest.raises(ValueError, match="two tools named 'f' come with a handler"):
            LLMContext(tools=[f, FunctionSchema(name="f", handler=_noop)])

    def test_snapshots_name_handlers_by_token_and_hold_no_callable(self) -> None:
        context = LLMContext(
            [{"role": "user", "content": "hi"}],
            tools=[FunctionSchema(name="lookup", description="Look up.", handler=_noop)],
        )
        frame = LLMContextFrame(context)
        names = [name for name, _ in frame.context.handlers]
        assert names == ["lookup"]
        registration = frame.context.handler_for("lookup")
        assert registration is not None
        assert registration.handler is _noop
        back = frame_from_dict(json.loads(json.dumps(frame_to_dict(frame))))
        assert back == frame
        assert isinstance(back, OpenAILLMContextFrame)
        assert back.context.handlers == frame.context.handlers
        assert back.context.handler_for("lookup") is registration
        assert frame.context.handler_for("other") is None
        # A context rebuilt from the snapshot (a resumed conversation) keeps the handlers.
        assert OpenAILLMContext.from_snapshot(frame.context).tool_handlers == ["lookup"]

    def test_the_table_does_not_keep_a_conversations_handlers_alive(self) -> None:
        async def temporary(params: FunctionCallParams) -> None:
            await params.result_callback(None)

        context = LLMContext(tools=[temporary])
        snapshot = context.snapshot()
        assert snapshot.handler_for("temporary") is not None
        del context, temporary
        gc.collect()
        assert snapshot.handler_for("temporary") is None


# --------------------------------------------------------------------------- the service


class TestServiceSettings:
    async def test_settings_map_onto_the_request(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        server.add(
            Reply.sse(chunks.text_stream(["One."])),
            Reply.sse(chunks.text_stream(["Two."])),
        )
        settings = OpenAILLMService.Settings(
            model="gpt-settings",
            system_instruction="Answer briefly.",
            temperature=0.2,
            max_completion_tokens=50,
            seed=7,
            extra={"metadata": {"app": "test"}},
        )
        async with open_conversation(
            server,
            messages=[],
            settings=settings,
            llm_params=OpenAILLMService.InputParams(top_p=0.5, temperature=1.0),
        ) as conversation:
            await conversation.say("Hi")
            await conversation.wait_ends(1)
            await conversation.queue(
                LLMUpdateSettingsFrame(
                    OpenAILLMService.Settings(system_instruction="Answer in French.", seed=8)
                )
            )
            await conversation.say("Again")
            await conversation.wait_ends(2)
        first, second = conversation.request(0), conversation.request(1)
        assert first["model"] == "gpt-settings"  # settings win over model=
        assert first["temperature"] == 0.2  # ... and over params=
        assert first["top_p"] == 0.5
        assert first["max_completion_tokens"] == 50
        assert first["seed"] == 7
        assert first["metadata"] == {"app": "test"}
        assert first["messages"] == [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Hi"},
        ]
        # The instruction goes with every request, never into the conversation.
        assert conversation.messages()[0] == {"role": "user", "content": "Hi"}
        assert second["messages"][0] == {"role": "system", "content": "Answer in French."}
        assert second["seed"] == 8

    def test_bad_settings_and_unsupported_options_say_what_to_do(self) -> None:
        with pytest.raises(ValueError, match="temperature"):
            OpenAILLMService.Settings(temperature=5)
        with pytest.raises(ValueError, match="system_instruction"):
            OpenAILLMService.Settings(system_instruction="  ")
        with pytest.raises(TypeError, match=r"settings must be OpenAILLMService.Settings"):
            OpenAILLMService(settings={"model": "x"})  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"retry_timeout_secs is Timeouts.first_token"):
            OpenAILLMService(timeouts=Timeouts(), retry_timeout_secs=3.0)
        with pytest.raises(ValueError, match=r"retry_on_timeout is RetryPolicy.retry_timeouts"):
            OpenAILLMService(retry=RetryPolicy(), retry_on_timeout=True)
        with pytest.raises(ValueError, match=r"run_in_parallel=False.*concurrently"):
            OpenAILLMService(run_in_parallel=False)
        with pytest.raises(TypeError, match="unexpected keyword argument 'file_resolver'"):
            OpenAILLMService(file_resolver=object())
        llm = OpenAILLMService(run_in_parallel=True, group_parallel_tools=True)
        with pytest.raises(ValueError, match=r"cancellable_by_llm=True.*not supported"):
            llm.register_function("f", _noop, cancellable_by_llm=True)
        llm.register_function("f", _noop, cancellable_by_llm=False)
        assert llm.has_function("f")

    async def test_retry_on_timeout_retries_an_attempt_without_output(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        server.add(
            Reply.sse(chunks.text_stream(["late"]), first_delay=10.0),
            Reply.sse(chunks.text_stream(["On time."])),
        )
        async with open_conversation(
            server, retry_timeout_secs=2.0, retry_on_timeout=True
        ) as conversation:
            await conversation.say("Hi")
            await conversation.wait_ends(1)
        assert conversation.errors == []
        assert conversation.text() == "On time."
        assert len(server.requests) == 2

    async def test_without_retry_on_timeout_the_timeout_ends_the_turn(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        server.add(Reply.sse(chunks.text_stream(["late"]), first_delay=10.0))
        async with open_conversation(
            server, retry_timeout_secs=2.0, retry_on_timeout=False
        ) as conversation:
            await conversation.say("Hi")
            await conversation.wait_ends(1)
        assert len(server.requests) == 1
        [error] = conversation.errors
        assert isinstance(error.exception, FirstTokenTimeoutError)


# --------------------------------------------------------------------------- the standalone pair


def _call_stream(chunks: ChunkFactory, *calls: tuple[str, dict[str, Any], str]) -> Reply:
    return Reply.sse(
        chunks.tool_call_stream([(name, json.dumps(args), cid) for name, args, cid in calls])
    )


class TestStandalonePair:
    """``LLMContextAggregatorPair(context)`` knows no service: the store sends the follow-up
    to the LLM that the batch's ``FunctionCallsStartedFrame`` names."""

    def test_it_unpacks_into_the_two_aggregators_and_checks_its_context(self) -> None:
        pair = LLMContextAggregatorPair(LLMContext(), name="chat")
        user, assistant = pair
        assert user is pair.user()
        assert assistant is pair.assistant()
        assert (user.name, assistant.name, pair.store.name) == (
            "chat:user",
            "chat:assistant",
            "chat:context",
        )
        assert pair.store.llm is None
        with pytest.raises(TypeError, match="needs an LLMContext"):
            LLMContextAggregatorPair([])  # type: ignore[arg-type]

    async def test_concurrent_calls_one_follow_up_and_a_valid_context(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        # Each handler waits for the other to have started: only concurrent calls finish.
        started = {"a": trio.Event(), "b": trio.Event()}
        updated: list[str] = []

        async def first(params: FunctionCallParams, key: str) -> None:
            """Look up in A.

            Args:
                key: The key.
            """
            started["a"].set()
            await started["b"].wait()
            await params.result_callback({"a": key})

        async def on_updated() -> None:
            updated.append("b")

        async def second_handler(params: FunctionCallParams) -> None:
            started["b"].set()
            await started["a"].wait()
            await params.result_callback(
                {"b": params.arguments["key"]},
                properties=FunctionCallResultProperties(on_context_updated=on_updated),
            )

        second = FunctionSchema(
            name="second",
            description="Look up in B.",
            properties={"key": {"type": "string"}},
            required=["key"],
            handler=second_handler,
        )
        context = LLMContext(
            [{"role": "system", "content": "Use both."}], tools=ToolsSchema([first, second])
        )
        server.add(
            _call_stream(
                chunks, ("first", {"key": "x"}, "call_a"), ("second", {"key": "y"}, "c_b")
            ),
            Reply.sse(chunks.text_stream(["Both done."])),
        )
        async with open_conversation(
            server, context=context, standalone=True, quick_start=True
        ) as conversation:
            await conversation.say("Look both up")
            with trio.fail_after(60):
                answer = await conversation.transport.wait_answer()
        assert answer == "Both done."
        assert conversation.errors == []
        assert len(server.requests) == 2
        started_frame = conversation.of_type(FunctionCallsStartedFrame)[0]
        assert started_frame.llm == conversation.llm.name
        assert started_frame.tools == conversation.llm.executor.name
        assert updated == ["b"]  # the store found the executor by the frame's name too
        messages = conversation.request_messages(1)
        assert_valid(messages)
        assert json.loads(tool_answer(messages, "call_a")) == {"a": "x"}
        assert json.loads(tool_answer(messages, "c_b")) == {"b": "y"}
        first_request = conversation.request(0)
        assert _tool(first_request, "first")["parameters"]["properties"] == {
            "key": {"type": "string", "description": "The key."}
        }

    async def test_a_registered_handler_wins_and_the_catch_all_comes_last(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        async def advertised(params: FunctionCallParams) -> None:
            await params.result_callback("advertised")

        async def registered(params: FunctionCallParams) -> None:
            await params.result_callback("registered")

        async def catch_all(params: FunctionCallParams) -> None:
            await params.result_callback("catch-all")

        context = LLMContext(
            tools=[
                FunctionSchema(name="mine", handler=advertised),
                FunctionSchema(name="schema_only", handler=advertised),
            ]
        )
        server.add(
            _call_stream(
                chunks,
                ("mine", {}, "c1"),
                ("schema_only", {}, "c2"),
                ("unknown", {}, "c3"),
            ),
            Reply.sse(chunks.text_stream(["ok"])),
        )
        async with open_conversation(
            server,
            context=context,
            standalone=True,
            quick_start=True,
            functions={"mine": registered, None: catch_all},
        ) as conversation:
            await conversation.say("go")
            with trio.fail_after(60):
                await conversation.transport.wait_answer()
        messages = conversation.request_messages(1)
        assert json.loads(tool_answer(messages, "c1")) == "registered"
        assert json.loads(tool_answer(messages, "c2")) == "advertised"
        assert json.loads(tool_answer(messages, "c3")) == "catch-all"

    async def test_llm_run_frame_answers_the_conversation_as_it_is(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        server.add(Reply.sse(chunks.text_stream(["Hello there."])))
        context = LLMContext([{"role": "system", "content": "Greet the user."}])
        async with open_conversation(
            server, context=context, standalone=True, quick_start=True
        ) as conversation:
            conversation.transport.expect_answer()
            await conversation.queue(LLMRunFrame())
            with trio.fail_after(60):
                greeting = await conversation.transport.wait_answer()
        assert greeting == "Hello there."
        assert conversation.request_messages(0) == [
            {"role": "system", "content": "Greet the user."}
        ]
        assert conversation.messages()[-1] == {"role": "assistant", "content": "Hello there."}


# --------------------------------------------------------------------------- the two examples


class TestExamples:
    """The seed-era example (0.0.x names) and the 1.x-era one, each with two tool calls in
    one response: the calls run, one follow-up answers them, every request is valid."""

    def test_the_1x_example_imports_only_public_trouper_names(self) -> None:
        tree = ast.parse(EXAMPLE_1X.read_text())
        modules: dict[str, list[str]] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.module is not None
                modules.setdefault(node.module, []).extend(a.name for a in node.names)
        assert set(modules) == {"__future__", "actors", "runtime"}
        assert set(modules["actors"]) <= set(actors.__all__)
        assert set(modules["runtime"]) <= set(runtime.__all__)
        used = set(modules["actors"]) | set(modules["runtime"])
        for name in (
            "LLMContext",
            "LLMContextAggregatorPair",
            "LLMRunFrame",
            "FunctionSchema",
            "PipelineWorker",
            "WorkerRunner",
        ):
            assert name in used

    async def test_the_1x_example(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        main = _example("function_calling_1x", monkeypatch, server)
        server.add(
            Reply.sse(chunks.text_stream(["Hi! ", "Ask me about a trip."], usage=(30, 6))),
            _call_stream(
                chunks,
                ("get_current_weather", {"location": "Paris, France"}, "call_weather"),
                ("get_restaurant_recommendation", {"location": "Paris"}, "call_food"),
            ),
            Reply.sse(chunks.text_stream(["Sunny, 24 °C; ", "eat at Chez Trouper."])),
        )
        with trio.fail_after(60):
            answers = await main(["Weather in Paris, and where should I eat?"])

        assert answers == ["Hi! Ask me about a trip.", "Sunny, 24 °C; eat at Chez Trouper."]
        assert len(server.requests) == 3
        greeting, question, follow_up = (r.json for r in server.requests)
        instruction = {"role": "system", "content": greeting["messages"][0]["content"]}
        assert "travel assistant" in instruction["content"]
        kick_off = {"role": "developer", "content": greeting["messages"][1]["content"]}
        # LLMRunFrame: an inference on the conversation as it was.
        assert greeting["messages"] == [instruction, kick_off]
        assert greeting["model"] == "gpt-4.1"
        assert greeting["temperature"] == 0.7
        weather = _tool(greeting, "get_current_weather")
        assert weather["description"] == "Look up the weather at a place right now."
        assert weather["parameters"]["required"] == ["location"]
        assert weather["parameters"]["properties"]["unit"]["type"] == "string"
        food = _tool(greeting, "get_restaurant_recommendation")
        assert food["parameters"]["properties"]["cuisine"]["enum"] == [
            "local",
            "italian",
            "vegetarian",
        ]
        assert question["messages"] == [
            instruction,
            kick_off,
            {"role": "assistant", "content": "Hi! Ask me about a trip."},
            {"role": "user", "content": "Weather in Paris, and where should I eat?"},
        ]
        messages = follow_up["messages"]
        assert_valid(messages)
        assert json.loads(tool_answer(messages, "call_weather")) == {
            "location": "Paris, France",
            "conditions": "sunny",
            "temperature": 24,
            "unit": "celsius",
        }
        assert json.loads(tool_answer(messages, "call_food")) == {
            "name": "Chez Trouper",
            "cuisine": "local",
            "city": "Paris",
        }
        with trio.fail_after(5):
            await server.wait_connections_closed()

    async def test_the_seed_example(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        main = _example("function_calling", monkeypatch, server)
        server.add(
            _call_stream(
                chunks,
                ("get_weather", {"location": "Paris"}, "call_paris"),
                ("get_weather", {"location": "Rome"}, "call_rome"),
            ),
            Reply.sse(chunks.text_stream(["Both sunny."])),
        )
        with trio.fail_after(60):
            answers = await main(["Weather in Paris and Rome?"])

        assert answers == ["Both sunny."]
        assert len(server.requests) == 2
        messages = server.requests[1].json["messages"]
        assert_valid(messages)
        results: Sequence[dict[str, Any]] = [
            json.loads(tool_answer(messages, cid)) for cid in ("call_paris", "call_rome")
        ]
        assert [r["location"] for r in results] == ["Paris", "Rome"]
        with trio.fail_after(5):
            await server.wait_connections_closed()
