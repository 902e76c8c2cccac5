"""Conversations across processes: a Starlette app served by uvicorn with several worker
processes, each of them a worker of a trouper cluster on Redis.

Whichever process the load balancer (here: uvicorn's shared socket) hands a request to, the
request reaches its conversation wherever it runs: each process hosts the conversations the
cluster places on it (``actors.cluster.ConversationWorker``) and talks to any conversation
by id (``actors.cluster.ConversationClient``). Conversations are stored in Redis, so when a
process dies its conversations move to the others and resume from what was committed.

trio runs as a guest of uvicorn's asyncio loop (``runtime.AsyncioBridge``), opened by the
app's lifespan. Endpoints:

- ``POST /conversations/{id}/messages`` with the user's line as the body: a
  ``text/event-stream`` of the answer: ``event: text`` per piece (``data``: the JSON string),
  ``event: error`` per error, and a last ``event: done`` (``data``: ``{"interrupted",
  "lost"}``; ``lost``: the conversation's process died mid-answer, send the line again).
  A client that disconnects interrupts its answer.
- ``POST /conversations/{id}/interrupt``: interrupts the answer being produced, wherever it
  runs (``{"interrupted": true}``, or ``false`` when none was).
- ``GET /cluster``: the live workers, their load and conversations, and the pid of the
  process that answered.

Run it (``pip install starlette uvicorn``) with a Redis server and a model::

    redis-server --port 6379 &
    trouper model serve --port 8080 &
    TROUPER_REDIS_URL=redis://127.0.0.1:6379/0 OPENAI_BASE_URL=http://127.0.0.1:8080/v1 \\
        OPENAI_MODEL=qwen2.5-coder-0.5b-instruct \\
        uvicorn examples.cluster_app:app --workers 2 --port 8000
    curl -N localhost:8000/conversations/ann/messages -d "Hello, I am Ann."
    curl -X POST localhost:8000/conversations/ann/interrupt
    curl localhost:8000/cluster
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import attrs
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from actors import (
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    OpenAILLMContext,
    OpenAILLMService,
)
from actors.cluster import ConversationClient, ConversationWorker, HostedConversation
from runtime import AsyncioBridge, ErrorFrame, Pipeline, PipelineTask, tune_gc
from runtime.cluster import OwnerLostFrame, RemoteInterruptedFrame

__all__ = ["Cluster", "Settings", "app", "conversation_pipeline", "create_app"]

SYSTEM_PROMPT = "You are a helpful assistant. Keep responses concise."


@attrs.frozen
class Settings:
    """Where Redis and the model are.

    Args:
        redis_url: The cluster's (and the conversations') Redis.
        prefix: The cluster's key prefix.
        storage_prefix: The conversations' key prefix.
        lease_ttl: Seconds a dead process's conversations wait before moving.
    """

    redis_url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "trouper:cluster:"
    storage_prefix: str = "trouper:"
    lease_ttl: float = 10.0

    @classmethod
    def from_env(cls) -> Settings:
        """``TROUPER_REDIS_URL``, ``TROUPER_CLUSTER_PREFIX``, ``TROUPER_STORAGE_PREFIX``,
        ``TROUPER_LEASE_TTL``."""
        return cls(
            redis_url=os.environ.get("TROUPER_REDIS_URL") or cls.redis_url,
            prefix=os.environ.get("TROUPER_CLUSTER_PREFIX") or cls.prefix,
            storage_prefix=os.environ.get("TROUPER_STORAGE_PREFIX") or cls.storage_prefix,
            lease_ttl=float(os.environ.get("TROUPER_LEASE_TTL") or cls.lease_ttl),
        )


def conversation_pipeline(hosted: HostedConversation) -> PipelineTask:
    """A conversation's session (the model from ``OPENAI_MODEL``, ``OPENAI_BASE_URL``,
    ``OPENAI_API_KEY``), persisted in the worker's storage."""
    llm = OpenAILLMService(
        model=os.environ.get("OPENAI_MODEL") or "gpt-4o-mini",
        base_url=os.environ.get("OPENAI_BASE_URL") or None,
        api_key=os.environ.get("OPENAI_API_KEY") or None,
    )
    context = OpenAILLMContext(messages=[{"role": "system", "content": SYSTEM_PROMPT}])
    pair = hosted.context_aggregator(llm, context)  # persisted in the worker's storage
    return PipelineTask(
        Pipeline([pair.user(), llm, pair.assistant()]),
        name=f"conversation-{hosted.conversation_id}",
    )


def _event(name: str, data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


class Cluster:
    """This process's part of the cluster: a worker hosting conversations and a client
    reaching any of them, run on the bridge's trio side.

    Methods prefixed ``_`` run in trio; the public ones are awaited by asyncio code.
    """

    def __init__(self, bridge: AsyncioBridge, settings: Settings) -> None:
        self._bridge = bridge
        self._settings = settings
        self.worker = ConversationWorker(
            settings.redis_url,
            conversation_pipeline,
            prefix=settings.prefix,
            storage_prefix=settings.storage_prefix,
            lease_ttl=settings.lease_ttl,
        )
        self._client: ConversationClient | None = None
        self._ready = trio.Event()
        self._stop = trio.Event()
        self._service: asyncio.Task[None] | None = None

    # ----------------------------------------------------------------- asyncio side

    async def start(self) -> None:
        """Start the worker and the client; returns once both are up."""
        self._service = service = asyncio.create_task(self._bridge.run(self._serve))
        ready = asyncio.create_task(self._bridge.run(self._ready.wait))
        await asyncio.wait([service, ready], return_when=asyncio.FIRST_COMPLETED)
        if service.done():
            ready.cancel()
            await service  # it failed: its error says why
        await ready

    async def stop(self) -> None:
        """Stop the worker gracefully (its conversations end and are released)."""
        if self._service is not None:
            await self._bridge.run_sync(self._stop.set)
            await self._service

    async def answer(self, conversation_id: str, text: str) -> AsyncIterator[bytes]:
        """Send ``text`` to the conversation and yield its answer as server-sent events.
        Closing the generator early (the client disconnected) interrupts the answer."""
        events: asyncio.Queue[bytes | None] = asyncio.Queue()
        streaming = asyncio.create_task(
            self._bridge.run(self._stream, conversation_id, text, events)
        )
        finished = False
        try:
            while (event := await events.get()) is not None:
                yield event
            finished = True
            await streaming
        finally:
            if not finished:
                streaming.cancel()
                with contextlib.suppress(asyncio.CancelledError, trio.RunFinishedError):
                    await streaming
                with contextlib.suppress(Exception):
                    await self._bridge.run(self._interrupt, conversation_id, shield=True)

    async def interrupt(self, conversation_id: str) -> bool:
        """Interrupt the conversation's answer, wherever it runs; whether there was one."""
        return await self._bridge.run(self._interrupt, conversation_id)

    async def status(self) -> dict[str, Any]:
        """The cluster's status as plain data."""
        return await self._bridge.run(self._status)

    # ----------------------------------------------------------------- trio side

    async def _serve(self) -> None:
        s = self._settings
        async with (
            ConversationClient(s.redis_url, prefix=s.prefix) as client,
            trio.open_nursery() as nursery,
        ):
            await nursery.start(self.worker.run)
            self._client = client
            self._ready.set()
            await self._stop.wait()
            self._client = None
            self.worker.stop()

    def _live_client(self) -> ConversationClient:
        if self._client is None:
            raise RuntimeError("the cluster is not running")
        return self._client

    async def _stream(
        self, conversation_id: str, text: str, events: asyncio.Queue[bytes | None]
    ) -> None:
        interrupted = lost = started = False
        try:
            async with self._live_client().open(conversation_id) as conversation:
                await conversation.send_text(text)
                async for frame in conversation:
                    if isinstance(frame, LLMFullResponseStartFrame):
                        started = True
                    elif not started and isinstance(frame, LLMFullResponseEndFrame):
                        # The end of an answer interrupted just before this message: it can
                        # reach a reader opened after the interruption. Ours starts first.
                        continue
                    elif isinstance(frame, LLMTextFrame):
                        events.put_nowait(_event("text", frame.text))
                    elif isinstance(frame, ErrorFrame):
                        events.put_nowait(_event("error", frame.error))
                    elif isinstance(frame, RemoteInterruptedFrame):
                        interrupted = True
                        break
                    elif isinstance(frame, OwnerLostFrame):
                        lost = True
                        break
                    elif isinstance(frame, LLMFullResponseEndFrame):
                        interrupted = frame.interrupted
                        break
            events.put_nowait(_event("done", {"interrupted": interrupted, "lost": lost}))
        finally:
            events.put_nowait(None)

    async def _interrupt(self, conversation_id: str) -> bool:
        async with self._live_client().open(conversation_id) as conversation:
            return await conversation.interrupt()

    async def _status(self) -> dict[str, Any]:
        status = await self._live_client().status()
        return {**status.as_dict(), "served_by": os.getpid()}


# --------------------------------------------------------------------- the web application


def _cluster(request: Request) -> Cluster:
    cluster = request.app.state.cluster
    assert isinstance(cluster, Cluster)
    return cluster


async def messages_endpoint(request: Request) -> Response:
    """``POST /conversations/{id}/messages``: the answer to the body's line, as SSE."""
    text = (await request.body()).decode("utf-8", errors="replace")
    if not text.strip():
        return JSONResponse({"error": "the line is empty"}, 400)
    return StreamingResponse(
        _cluster(request).answer(request.path_params["conversation_id"], text),
        media_type="text/event-stream",
        headers={"cache-control": "no-store"},
    )


async def interrupt_endpoint(request: Request) -> Response:
    """``POST /conversations/{id}/interrupt``: interrupt its answer, wherever it runs."""
    cid = request.path_params["conversation_id"]
    return JSONResponse({"interrupted": await _cluster(request).interrupt(cid)})


async def cluster_endpoint(request: Request) -> Response:
    """``GET /cluster``: the live workers, their load and conversations."""
    return JSONResponse(await _cluster(request).status())


def create_app(settings: Settings | None = None) -> Starlette:
    """The application; ``settings`` default to :meth:`Settings.from_env` (read at startup)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tune_gc()  # this process hosts many conversations: fewer full GC collections
        async with AsyncioBridge() as bridge:
            cluster = Cluster(bridge, settings or Settings.from_env())
            app.state.cluster = cluster
            await cluster.start()
            try:
                yield
            finally:
                await cluster.stop()

    return Starlette(
        routes=[
            Route("/conversations/{conversation_id}/messages", messages_endpoint, methods=["POST"]),
            Route(
                "/conversations/{conversation_id}/interrupt", interrupt_endpoint, methods=["POST"]
            ),
            Route("/cluster", cluster_endpoint, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


app = create_app()
