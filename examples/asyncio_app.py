"""trouper in an asyncio web application: a Starlette app, served by uvicorn, that streams the
assistant's answers over server-sent events.

trouper runs on trio; here trio runs as a guest of uvicorn's asyncio loop, in the same thread,
through ``runtime.AsyncioBridge``, opened by the app's lifespan. The app holds one
conversation (the seed pipeline with a ``TextTransport``) and serves:

- ``POST /chat`` with the user's line as the body (plain text, or JSON ``{"text": ...}``):
  a ``text/event-stream`` of the answer: ``event: text`` per piece of text (``data``: the JSON
  string), ``event: tool`` per tool call (``data``: ``{"name", "arguments"}``), ``event:
  error`` per error, and a last ``event: done`` (``data``: ``{"interrupted", "error"}``). A
  line sent while an answer is streaming interrupts that answer. A client that disconnects
  interrupts its answer: the LLM stream is closed and the context keeps what was sent, marked
  as interrupted.
- ``POST /interrupt``: interrupts the answer being streamed (``{"interrupted": true}``, or
  ``false`` when none was).
- ``GET /snapshot``: the session (actors, states, mailboxes) and the conversation, as JSON.

The ``get_weather`` tool handler is plain asyncio code (it could await aiohttp, asyncpg...):
under the bridge, handlers run as asyncio tasks on the app's loop.

Run it (``pip install starlette uvicorn``, or the ``dev`` extra) against the local model::

    trouper model serve --port 8080            # in another terminal
    OPENAI_BASE_URL=http://127.0.0.1:8080/v1 OPENAI_MODEL=qwen2.5-coder-0.5b-instruct \\
        uvicorn examples.asyncio_app:app --port 8000
    curl -N localhost:8000/chat -d "What's the weather in Paris?"
    curl -X POST localhost:8000/interrupt
    curl localhost:8000/snapshot

or against OpenAI with ``OPENAI_API_KEY`` set (``OPENAI_MODEL`` defaults to ``gpt-4o-mini``).
Stopping uvicorn (Ctrl-C) ends the conversation and the bridge cleanly; uvicorn waits for the
streams still open first (bound it with ``--timeout-graceful-shutdown``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import attrs
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from actors import (
    FunctionCallInProgressFrame,
    FunctionCallParams,
    FunctionSchema,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    OpenAILLMContext,
    OpenAILLMService,
    TextTransport,
    ToolsSchema,
)
from runtime import (
    AsyncioBridge,
    ErrorFrame,
    Frame,
    FrameDirection,
    Pipeline,
    PipelineTask,
    SessionStateError,
)

__all__ = ["Chat", "Settings", "app", "create_app"]

SYSTEM_PROMPT = "You are a helpful assistant. Keep responses concise."
WEATHER = FunctionSchema(
    name="get_weather",
    description="Get current weather information",
    properties={"location": {"type": "string", "description": "City name"}},
    required=["location"],
)


@attrs.frozen
class Settings:
    """Where the model is. ``None`` fields fall back to the OpenAI service's defaults
    (``OPENAI_BASE_URL``, ``OPENAI_API_KEY``).

    Args:
        model: The model's name.
        base_url: The API root (``http://127.0.0.1:8080/v1`` for the local model).
        api_key: The API key (none for local servers).
        shutdown_timeout_secs: How long the conversation may take to end at shutdown before
            it is cancelled.
    """

    model: str = "gpt-4o-mini"
    base_url: str | None = None
    api_key: str | None = None
    shutdown_timeout_secs: float = 10.0

    @classmethod
    def from_env(cls) -> Settings:
        """``OPENAI_MODEL``, ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY``."""
        return cls(
            model=os.environ.get("OPENAI_MODEL") or cls.model,
            base_url=os.environ.get("OPENAI_BASE_URL") or None,
            api_key=os.environ.get("OPENAI_API_KEY") or None,
        )


async def get_weather(params: FunctionCallParams) -> None:
    """A tool handler written for asyncio: it runs as an asyncio task on the app's loop."""
    await asyncio.sleep(0.01)  # stands in for an aiohttp / asyncpg call
    location = params.arguments.get("location")
    await params.result_callback({"location": location, "temperature": "75°F", "sky": "sunny"})


@attrs.define(eq=False)
class _Stream:
    """One answer on its way to a client: server-sent events in an asyncio queue. Filled from
    trio (same thread), read by the response."""

    events: asyncio.Queue[bytes | None] = attrs.Factory(asyncio.Queue)
    started: bool = False
    finished: bool = False

    def send(self, event: str, data: Any) -> None:
        self.events.put_nowait(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())

    def finish(self, *, interrupted: bool = False, error: bool = False) -> None:
        if not self.finished:
            self.finished = True
            self.send("done", {"interrupted": interrupted, "error": error})
            self.events.put_nowait(None)


class Chat:
    """One conversation, run by trouper on the bridge's trio side.

    Methods prefixed ``_`` and named ``on_*`` run in trio (through the bridge or as trouper's
    callbacks); the public ones are awaited by the asyncio endpoints.
    """

    def __init__(self, bridge: AsyncioBridge, settings: Settings) -> None:
        self._bridge = bridge
        self._settings = settings
        self._transport = TextTransport(on_output=self.on_output)
        self.llm = OpenAILLMService(
            model=settings.model, api_key=settings.api_key, base_url=settings.base_url
        )
        self.llm.register_function("get_weather", get_weather)
        context = OpenAILLMContext(
            messages=[{"role": "system", "content": SYSTEM_PROMPT}],
            tools=ToolsSchema(standard_tools=[WEATHER]),
        )
        self._pair = self.llm.create_context_aggregator(context)
        pipeline = Pipeline(
            [
                self._transport.input(),
                self._pair.user(),
                self.llm,
                self._transport.output(),
                self._pair.assistant(),
            ]
        )
        self.task = PipelineTask(pipeline, on_upstream=self.on_upstream)
        self._stream: _Stream | None = None
        self._running: asyncio.Task[None] | None = None

    # ----------------------------------------------------------------- asyncio side

    async def start(self) -> None:
        """Start the conversation; returns once it is up."""
        self._running = running = asyncio.create_task(self._bridge.run(self.task.run))
        try:
            await self._bridge.run(self.task.wait_started)
        except SessionStateError:  # it ended before it started: its own error says why
            await running
            raise

    async def stop(self) -> None:
        """End the conversation gracefully (cancel it if that takes too long)."""
        running = self._running
        if running is None:
            return
        if not running.done():
            await self._bridge.run(self.task.end, shield=True)
        try:
            async with asyncio.timeout(self._settings.shutdown_timeout_secs):
                await asyncio.shield(running)
        except TimeoutError:
            await self._bridge.run_sync(self.task.cancel)
        await running

    async def answer(self, text: str) -> AsyncIterator[bytes]:
        """Send ``text`` as the user's line and yield the answer as server-sent events.

        Closing the generator early (the client disconnected) interrupts the answer.
        """
        stream = _Stream()
        try:
            await self._bridge.run(self._say, stream, text)
            while (event := await stream.events.get()) is not None:
                yield event
        finally:
            if not stream.finished:
                # Runs even when the request is being cancelled (a bridge's sync call cannot
                # be taken back); not at all once the bridge has closed (nothing runs).
                with contextlib.suppress(SessionStateError):
                    await self._bridge.run_sync(self._interrupt, stream)

    async def interrupt(self) -> bool:
        """Interrupt the answer being streamed; whether there was one."""
        return await self._bridge.run_sync(self._interrupt, self._stream)

    async def snapshot(self) -> dict[str, Any]:
        """The session and the conversation, as plain data."""
        return await self._bridge.run_sync(self._snapshot)

    # ----------------------------------------------------------------- trio side

    async def _say(self, stream: _Stream, text: str) -> None:
        # One trio call: no frame can reach the output between the switch and the line.
        if self._stream is not None:
            self._interrupt(self._stream)
        self._stream = stream
        await self._transport.send_text(text)

    def _interrupt(self, stream: _Stream | None) -> bool:
        if stream is None or stream is not self._stream or stream.finished:
            return False
        self.task.interrupt()
        self._transport.interrupted()
        stream.finish(interrupted=True)
        return True

    def _snapshot(self) -> dict[str, Any]:
        conversation = self._pair.store.snapshot()
        return {
            "session": self.task.snapshot().as_dict(),
            "conversation": {
                "messages": list(conversation.messages),
                "interrupted": sorted(conversation.interrupted),
            },
            "streaming": self._stream is not None and not self._stream.finished,
        }

    def on_output(self, frame: Frame) -> None:
        """What reaches the output goes to the current stream (``TextTransport``'s callback)."""
        stream = self._stream
        if stream is None or stream.finished:
            return
        if isinstance(frame, LLMFullResponseStartFrame):
            stream.started = True
        if not stream.started:  # the end of an earlier answer, which this line interrupted
            return
        if isinstance(frame, LLMTextFrame):
            stream.send("text", frame.text)
        elif isinstance(frame, FunctionCallInProgressFrame):
            stream.send("tool", {"name": frame.function_name, "arguments": frame.arguments})
        if self._transport.answer_done():
            ended = frame if isinstance(frame, LLMFullResponseEndFrame) else None
            stream.finish(
                interrupted=bool(ended and ended.interrupted), error=bool(ended and ended.error)
            )

    def on_upstream(self, frame: Frame, direction: FrameDirection) -> None:
        """Errors reaching the task go to the current stream."""
        stream = self._stream
        if isinstance(frame, ErrorFrame) and stream is not None and not stream.finished:
            stream.send("error", frame.error)


# --------------------------------------------------------------------- the web application


def _chat(request: Request) -> Chat:
    chat = request.app.state.chat
    assert isinstance(chat, Chat)
    return chat


async def chat_endpoint(request: Request) -> Response:
    """``POST /chat``: the answer to the body's line, as server-sent events."""
    body = (await request.body()).decode("utf-8", errors="replace")
    text = body
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            text = str(json.loads(body)["text"])
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": 'expected a JSON object {"text": "..."}'}, 400)
    if not text.strip():
        return JSONResponse({"error": "the line is empty"}, 400)
    return StreamingResponse(
        _chat(request).answer(text),
        media_type="text/event-stream",
        headers={"cache-control": "no-store"},
    )


async def interrupt_endpoint(request: Request) -> Response:
    """``POST /interrupt``: interrupt the answer being streamed."""
    return JSONResponse({"interrupted": await _chat(request).interrupt()})


async def snapshot_endpoint(request: Request) -> Response:
    """``GET /snapshot``: the session and the conversation."""
    return JSONResponse(await _chat(request).snapshot())


def create_app(settings: Settings | None = None) -> Starlette:
    """The application; ``settings`` default to :meth:`Settings.from_env` (read at startup)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncioBridge() as bridge:
            chat = Chat(bridge, settings or Settings.from_env())
            app.state.chat = chat
            await chat.start()
            try:
                yield
            finally:
                await chat.stop()

    return Starlette(
        routes=[
            Route("/chat", chat_endpoint, methods=["POST"]),
            Route("/interrupt", interrupt_endpoint, methods=["POST"]),
            Route("/snapshot", snapshot_endpoint, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


app = create_app()
