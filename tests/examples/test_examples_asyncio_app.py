"""The asyncio example app (``examples/asyncio_app.py``, Starlette) under a real uvicorn, with a
real HTTP client, talking to the scripted OpenAI server.

Each test starts the scripted server (in a trio run of its own) and uvicorn (in an asyncio loop
of its own), each in a thread, and stops them at the end: leaving checks that uvicorn's loop
has no task left, that no trio guest run is left open, that the conversation's task has
finished and that the LLM closed every socket it opened.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import attrs
import httpx
import pytest

from actors.testing import ChunkFactory, Reply, ScriptedOpenAIServer
from examples.asyncio_app import Chat, Settings, create_app

from ..conversation_kit import API_KEY, MODEL, assert_valid, tool_answer
from .app_kit import SECS, Event, ScriptedServerThread, UvicornThread, read_events


@attrs.define
class App:
    """The running app, its scripted model and a client."""

    scripted: ScriptedServerThread
    web: UvicornThread
    client: httpx.Client
    chunks: ChunkFactory = attrs.Factory(ChunkFactory)

    @property
    def server(self) -> ScriptedOpenAIServer:
        return self.scripted.server

    @property
    def chat(self) -> Chat:
        chat = self.web.app.state.chat
        assert isinstance(chat, Chat)
        return chat

    def snapshot(self) -> dict[str, Any]:
        response = self.client.get("/snapshot")
        assert response.status_code == 200
        data: dict[str, Any] = response.json()
        return data

    def messages(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = self.snapshot()["conversation"]["messages"]
        return messages

    def ask(self, line: str) -> list[Event]:
        """POST ``line``; every event of the streamed answer."""
        with self.client.stream("POST", "/chat", content=line) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            return list(read_events(response))

    def wait_until(self, condition: Callable[[], bool]) -> None:
        """Poll ``condition`` (it asks the app over HTTP) until it holds, for :data:`SECS`."""
        deadline = time.monotonic() + SECS
        while not condition():
            assert time.monotonic() < deadline, "condition not met in time"
            time.sleep(0.01)


@contextmanager
def running_app(*replies: Reply, graceful_secs: int | None = None) -> Iterator[App]:
    """The app pointed at a scripted server answering ``replies``, under uvicorn."""
    server = ScriptedOpenAIServer(replies=replies)
    with ScriptedServerThread(server) as scripted:
        settings = Settings(model=MODEL, base_url=server.base_url, api_key=API_KEY)
        web = UvicornThread(create_app(settings), graceful_secs=graceful_secs)
        with web, httpx.Client(base_url=web.url, timeout=SECS) as client:
            app = App(scripted, web, client)
            yield app
        # uvicorn has shut down: the lifespan ended the conversation and closed the bridge.
        assert app.chat.task.has_finished()
        scripted.call(server.wait_connections_closed)
        assert server.unexpected_requests == 0
        for request in server.requests:
            assert_valid(request.json["messages"], allow_in_progress=True)


def _stalling(chunks: ChunkFactory, first: str) -> Reply:
    """An answer that sends ``first`` at once, then nothing for a minute."""
    return Reply.sse(
        [
            chunks.chunk({"role": "assistant", "content": first}),
            chunks.text(" never"),
            chunks.finish(),
        ],
        first_delay=0.0,
        delay=60.0,
    )


def _texts(events: list[Event]) -> str:
    return "".join(e.data for e in events if e.name == "text")


def test_an_answer_streams_over_sse_and_the_snapshot_shows_it() -> None:
    chunks = ChunkFactory()
    with running_app(Reply.sse(chunks.text_stream(["Hello", " from", " trio"]))) as app:
        events = app.ask("Hi")
        assert [e.name for e in events] == ["text", "text", "text", "done"]
        assert _texts(events) == "Hello from trio"
        assert events[-1].data == {"interrupted": False, "error": False}

        snapshot = app.snapshot()
        assert snapshot["streaming"] is False
        assert snapshot["session"]["running"] is True
        kinds = {actor["kind"] for actor in snapshot["session"]["actors"]}
        assert {"OpenAILLMService", "ToolExecutor", "ContextStore"} <= kinds
        conversation = snapshot["conversation"]
        assert [m["role"] for m in conversation["messages"]] == ["system", "user", "assistant"]
        assert conversation["messages"][2]["content"] == "Hello from trio"
        assert conversation["interrupted"] == []
        json.dumps(snapshot)  # plain data


def test_a_tool_call_runs_its_asyncio_handler_and_the_answer_goes_on() -> None:
    chunks = ChunkFactory()
    call = ("get_weather", json.dumps({"location": "Paris"}), "call_1")
    with running_app(
        Reply.sse(chunks.tool_call_stream([call])),
        Reply.sse(chunks.text_stream(["Sunny in Paris."])),
    ) as app:
        events = app.ask("Weather in Paris?")
        assert [e.name for e in events] == ["tool", "text", "done"]
        assert events[0].data == {"name": "get_weather", "arguments": {"location": "Paris"}}
        assert _texts(events) == "Sunny in Paris."
        result = json.loads(tool_answer(app.messages(), "call_1"))
        assert result == {"location": "Paris", "temperature": "75°F", "sky": "sunny"}


def test_the_interrupt_endpoint_ends_the_answer_being_streamed() -> None:
    chunks = ChunkFactory()
    with running_app(_stalling(chunks, "One"), Reply.sse(chunks.text_stream(["Sure."]))) as app:
        with app.client.stream("POST", "/chat", content="Count") as response:
            events = read_events(response)
            assert next(events) == Event("text", "One")
            interrupted = app.client.post("/interrupt")
            assert interrupted.json() == {"interrupted": True}
            assert list(events) == [Event("done", {"interrupted": True, "error": False})]
        app.scripted.call(app.server.wait_client_disconnects, 1)  # the LLM stream was closed
        assert app.client.post("/interrupt").json() == {"interrupted": False}
        app.wait_until(lambda: len(app.messages()) == 3)
        snapshot = app.snapshot()["conversation"]
        assert snapshot["messages"][2] == {"role": "assistant", "content": "One"}
        assert snapshot["interrupted"] == [2]

        assert _texts(app.ask("Stop?")) == "Sure."  # the conversation goes on


def test_a_client_that_disconnects_mid_stream_interrupts_the_answer() -> None:
    chunks = ChunkFactory()
    with running_app(_stalling(chunks, "One"), Reply.sse(chunks.text_stream(["Sure."]))) as app:
        with app.client.stream("POST", "/chat", content="Count") as response:
            assert next(read_events(response)) == Event("text", "One")
        # The client closed its connection: the app interrupted the turn, which closed the
        # LLM's stream (the scripted server sees its client go) ...
        app.scripted.call(app.server.wait_client_disconnects, 1)
        # ... and the context keeps what was sent, marked as interrupted.
        app.wait_until(lambda: len(app.messages()) == 3)
        snapshot = app.snapshot()
        assert snapshot["conversation"]["messages"][2] == {"role": "assistant", "content": "One"}
        assert snapshot["conversation"]["interrupted"] == [2]
        assert snapshot["streaming"] is False

        assert _texts(app.ask("Stop?")) == "Sure."
        assert len(app.server.requests) == 2


def test_a_new_line_interrupts_the_answer_still_streaming() -> None:
    chunks = ChunkFactory()
    with running_app(_stalling(chunks, "One"), Reply.sse(chunks.text_stream(["Sure."]))) as app:
        with app.client.stream("POST", "/chat", content="Count") as first:
            events = read_events(first)
            assert next(events) == Event("text", "One")
            assert _texts(app.ask("Stop?")) == "Sure."
            assert list(events) == [Event("done", {"interrupted": True, "error": False})]
        messages = app.messages()
        assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
        assert messages[4]["content"] == "Sure."


@pytest.mark.parametrize("line", ["", "   ", '{"text": 3'])
def test_a_bad_line_is_refused(line: str) -> None:
    with running_app() as app:
        headers = {"content-type": "application/json"} if line.startswith("{") else {}
        response = app.client.post("/chat", content=line, headers=headers)
        assert response.status_code == 400
        assert "error" in response.json()


def test_shutdown_while_an_answer_streams_ends_everything_cleanly() -> None:
    """uvicorn cancels the request still streaming after its graceful timeout: the answer is
    interrupted, then the lifespan ends the conversation and closes the bridge (checked when
    the block is left)."""
    chunks = ChunkFactory()
    with running_app(_stalling(chunks, "One"), graceful_secs=1) as app:
        with app.client.stream("POST", "/chat", content="Count") as response:
            events = read_events(response)
            assert next(events) == Event("text", "One")
            app.web.stop()
            with pytest.raises(httpx.RemoteProtocolError):
                list(events)
        app.scripted.call(app.server.wait_client_disconnects, 1)
