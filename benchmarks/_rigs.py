"""Shared pieces of the LLM-service benchmarks: recorders, running pipelines, httpx floors.

Everything is timed with :func:`time.monotonic` (``CLOCK_MONOTONIC`` on Linux, the same clock in
every process, so figures can be compared with the benchmark server's own timestamps).

* :class:`Recorder` records what reaches the end of a pipeline (trouper: the task's
  ``on_downstream`` listener; Pipecat: a direct-mode probe processor, which adds no queue) and
  wakes a waiter once a given number of frames of a given class arrived. It works with trio and
  asyncio events alike.
* :func:`trouper_pipeline` (trio) and :func:`pipecat_pipeline` (asyncio) run a pipeline for the
  block of an ``async with``.
* :func:`floor_stream` and :func:`floor_first_token` read one stream with bare httpx
  (``aiter_lines`` + ``json.loads`` per data line): the least work any httpx-based client can
  do. They run on either event loop.
"""

from __future__ import annotations

import json
import socket
import statistics
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

import httpx
import trio

from . import _pipecat

__all__ = [
    "MESSAGES",
    "PIPECAT_MESSAGES",
    "SYSTEM_PROMPT",
    "ActorChain",
    "DequeChain",
    "DequeLink",
    "Recorder",
    "floor_actor_stages",
    "floor_body",
    "floor_channel_stages",
    "floor_close",
    "floor_deque_stages",
    "floor_first_token",
    "floor_stream",
    "median",
    "pipecat_llm",
    "pipecat_pair",
    "pipecat_pipeline",
    "read_texts",
    "trouper_llm",
    "trouper_pipeline",
]

#: The conversation every benchmark request carries.
MESSAGES: tuple[dict[str, str], ...] = (
    {"role": "system", "content": "You are a helpful benchmark assistant."},
    {"role": "user", "content": "Tell me a long story."},
)

#: The system prompt of :data:`MESSAGES` (Pipecat gets it as ``system_instruction``).
SYSTEM_PROMPT = MESSAGES[0]["content"]
#: :data:`MESSAGES` without the system message, for Pipecat's ``LLMContext``.
PIPECAT_MESSAGES = MESSAGES[1:]

API_KEY = "sk-bench-0000"


class _Event(Protocol):
    def set(self) -> None: ...


def median(values: Sequence[float]) -> float:
    """The median (``nan`` for no values)."""
    return statistics.median(values) if values else float("nan")


class Recorder:
    """What reaches the end of a pipeline, with arrival times (``time.monotonic``).

    Args:
        new_event: ``trio.Event`` or ``asyncio.Event`` (the recorder only calls ``set``).
    """

    def __init__(self, new_event: Callable[[], Any]) -> None:
        self._new_event = new_event
        self.frames: list[tuple[float, Any]] = []
        self.event: Any = new_event()
        self._until: type[Any] | None = None
        self._needed = 0
        self._seen = 0
        self._keep = True
        self.count = 0
        self.done_at = 0.0

    def arm(self, until: type[Any], count: int = 1, *, keep: bool = True) -> Any:
        """Forget what was recorded; return an event set once ``count`` frames of ``until``
        (exactly that class) have arrived (:attr:`done_at` is the last one's arrival).

        Args:
            until: The frame class waited for.
            count: How many of them.
            keep: Keep every frame with its arrival time in :attr:`frames` (else only count
                them in :attr:`count`).
        """
        self.frames = []
        self._until = until
        self._needed = count
        self._seen = 0
        self._keep = keep
        self.count = 0
        self.event = self._new_event()
        return self.event

    def on_frame(self, frame: Any, *_: Any) -> None:
        """Record ``frame`` (the trouper listener signature works too)."""
        now = time.monotonic()
        self.count += 1
        if self._keep:
            self.frames.append((now, frame))
        if type(frame) is self._until:
            self._seen += 1
            if self._seen == self._needed:
                self.done_at = now
                self.event.set()

    def times_of(self, cls: type[Any], after: float = 0.0) -> list[float]:
        """Arrival times of the frames of ``cls`` (subclasses too) that came after ``after``."""
        return [t for t, f in self.frames if isinstance(f, cls) and t > after]


# --------------------------------------------------------------------------- trouper (trio)


def trouper_llm(base_url: str, model: str, **kwargs: Any) -> Any:
    """A trouper ``OpenAILLMService`` for the benchmark server (generous timeouts)."""
    from actors import OpenAILLMService
    from actors.client import Timeouts

    return OpenAILLMService(
        model=model,
        api_key=API_KEY,
        base_url=base_url,
        timeouts=Timeouts(connect=60.0, first_token=120.0, idle=120.0),
        **kwargs,
    )


@asynccontextmanager
async def trouper_pipeline(
    stages: Sequence[Any], recorder: Recorder, *, mailbox_size: int | None = None
) -> AsyncIterator[Any]:
    """Run ``Pipeline(stages)`` in a ``PipelineTask`` whose downstream end feeds ``recorder``.

    Yields:
        The running task (ended gracefully when the block is left).
    """
    from runtime import Pipeline, PipelineParams, PipelineTask

    params = PipelineParams(mailbox_size=mailbox_size) if mailbox_size else None
    task = PipelineTask(Pipeline(list(stages)), params, on_downstream=recorder.on_frame)
    async with task:
        yield task


# --------------------------------------------------------------------------- Pipecat (asyncio)


def pipecat_llm(base_url: str, model: str, **kwargs: Any) -> Any:
    """A Pipecat 1.14 ``OpenAILLMService`` for the benchmark server.

    The system prompt is the service's ``system_instruction`` (1.14's way; a system message in
    ``LLMContext`` is deprecated since 1.9), so contexts hold :data:`PIPECAT_MESSAGES` and the
    request carries the same messages as trouper's.
    """
    _pipecat.quiet_logs()
    from pipecat.services.openai.llm import OpenAILLMService

    return OpenAILLMService(
        api_key=API_KEY,
        base_url=base_url,
        settings=OpenAILLMService.Settings(model=model, system_instruction=SYSTEM_PROMPT),
        **kwargs,
    )


def pipecat_pair(context: Any) -> Any:
    """A Pipecat ``LLMContextAggregatorPair`` for a text-only pipeline.

    The user aggregator gets ``ExternalUserTurnStrategies`` (turns driven by frames), so it
    does not load the default local smart-turn model (~12 MB and ~150 ms per aggregator):
    trouper's user aggregator has no turn analysis either.
    """
    from pipecat.processors.aggregators.llm_response_universal import (
        LLMContextAggregatorPair,
        LLMUserAggregatorParams,
    )
    from pipecat.turns.user_turn_strategies import ExternalUserTurnStrategies

    params = LLMUserAggregatorParams(user_turn_strategies=ExternalUserTurnStrategies())
    return LLMContextAggregatorPair(context, user_params=params)


def pipecat_probe(recorder: Recorder) -> Any:
    """A direct-mode Pipecat processor (run inline by its caller: no queue, no task) that
    records every downstream frame and forwards everything."""
    from pipecat.frames.frames import Frame
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

    downstream = FrameDirection.DOWNSTREAM

    class BenchProbe(FrameProcessor):
        """Records downstream frames, forwards every frame."""

        def __init__(self) -> None:
            super().__init__(name="BenchProbe", enable_direct_mode=True)

        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            if direction is downstream:
                recorder.on_frame(frame)
            await self.push_frame(frame, direction)

    return BenchProbe()


def pipecat_pipeline(processors: Sequence[Any]) -> AbstractAsyncContextManager[Any]:
    """Run ``Pipeline(processors)`` in a minimal ``PipelineWorker`` for the block of an
    ``async with`` (see :func:`benchmarks._pipecat.run_pipeline`).

    Yields:
        The running worker (``stop_when_done`` when the block is left).
    """
    return _pipecat.run_pipeline(list(processors))


# --------------------------------------------------------------------------- httpx floors


def floor_body(model: str) -> dict[str, Any]:
    """The request body the floors send (what both services send, give or take a field)."""
    return {
        "model": model,
        "messages": list(MESSAGES),
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def floor_stream(http: httpx.AsyncClient, url: str, body: Mapping[str, Any]) -> float:
    """Read one whole stream with bare httpx (``aiter_lines`` and ``json.loads`` per data
    line); seconds from the request to ``[DONE]``."""
    start = time.perf_counter()
    count = 0
    async with http.stream("POST", url, json=body, headers={"Accept": "text/event-stream"}) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                data = line[6:]
                if data == "[DONE]":
                    break
                json.loads(data)
                count += 1
    elapsed = time.perf_counter() - start
    if count == 0:
        raise RuntimeError("floor: empty stream")
    return elapsed


async def read_texts(
    http: httpx.AsyncClient, url: str, body: Mapping[str, Any], put: Callable[[str], Awaitable[Any]]
) -> None:
    """Read one stream as :func:`floor_stream` does (``aiter_lines`` and ``json.loads`` per data
    line) and await ``put`` with each non-empty content text, in order (the references' reader).
    """
    async with http.stream("POST", url, json=body, headers={"Accept": "text/event-stream"}) as r:
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                return
            choices = json.loads(data).get("choices")
            content = choices[0].get("delta", {}).get("content") if choices else None
            if content:
                await put(content)


async def floor_channel_stages(
    http: httpx.AsyncClient, url: str, body: Mapping[str, Any], *, capacity: int = 64
) -> float:
    """A reference for the stream (trio only, not a floor trouper must beat): the httpx floor's
    reading, with each content text passed through a chain of trio's own stage link. The
    reader sends each text on a memory channel (``capacity``: trouper's default mailbox size)
    to a second task, which sends it on to a third, which hands it to a listener: two task
    hops, as from trouper's LLM stage through the output stage to the assistant aggregator.
    Seconds from the request to the ``[DONE]`` line's end at the listener."""
    texts: list[str] = []
    first_send, first_receive = trio.open_memory_channel[str | None](capacity)
    second_send, second_receive = trio.open_memory_channel[str | None](capacity)

    async def relay() -> None:
        async with second_send:
            async for text in first_receive:
                await second_send.send(text)

    async def listen() -> None:
        async for text in second_receive:
            if text is None:
                return
            texts.append(text)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(relay)
        nursery.start_soon(listen)
        async with first_send:
            await read_texts(http, url, body, first_send.send)
            await first_send.send(None)
    elapsed = time.perf_counter() - start
    if not texts:
        raise RuntimeError("channel stages: empty stream")
    return elapsed


class DequeLink:
    """The least a bounded mailbox between two trio tasks can be (for :class:`DequeChain`): a
    deque of at most ``capacity`` items, the one consumer parked while it is empty and the one
    producer while it is full, no checkpoint when neither waits. No turns, no envelopes, no
    interruption, no lifecycle; a parked task can be cancelled (and leaves its slot free)."""

    __slots__ = ("_capacity", "_consumer", "_items", "_producer")

    def __init__(self, capacity: int) -> None:
        self._items: deque[Any] = deque()
        self._capacity = capacity
        self._consumer: trio.lowlevel.Task | None = None
        self._producer: trio.lowlevel.Task | None = None

    async def put(self, item: Any) -> None:
        """Append ``item``, waiting while the link is full."""
        while len(self._items) >= self._capacity:
            self._producer = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(self._abort_put)
        self._items.append(item)
        if self._consumer is not None:
            task, self._consumer = self._consumer, None
            trio.lowlevel.reschedule(task)

    async def get(self) -> Any:
        """Take the next item, waiting while the link is empty."""
        while not self._items:
            self._consumer = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(self._abort_get)
        item = self._items.popleft()
        if self._producer is not None:
            task, self._producer = self._producer, None
            trio.lowlevel.reschedule(task)
        return item

    def _abort_put(self, _: Any) -> trio.lowlevel.Abort:
        self._producer = None
        return trio.lowlevel.Abort.SUCCEEDED

    def _abort_get(self, _: Any) -> trio.lowlevel.Abort:
        self._consumer = None
        return trio.lowlevel.Abort.SUCCEEDED


class DequeChain:
    """The quick start's shape with nothing of a runtime (a reference, trio only): a reader
    puts an ``LLMTextFrame`` per content text into a :class:`DequeLink`, a relay task passes
    each on through a second one, a listener task keeps the texts. Two hops, as from trouper's
    LLM stage through the output stage to the assistant aggregator.

    Attributes:
        texts: What reached the listener.
        done: Set once the listener has taken the end of the stream.
    """

    __slots__ = ("_first", "_frame", "_second", "done", "texts")

    def __init__(self, capacity: int = 64) -> None:
        # Imported here, not in feed: a first import of actors inside a timed turn would be
        # timed with it.
        from actors import LLMTextFrame

        self._frame = LLMTextFrame
        self._first = DequeLink(capacity)
        self._second = DequeLink(capacity)
        self.texts: list[str] = []
        self.done = trio.Event()

    def start(self, nursery: trio.Nursery) -> None:
        """Start the relay and the listener in ``nursery``."""
        nursery.start_soon(self._relay)
        nursery.start_soon(self._listen)

    async def feed(self, http: httpx.AsyncClient, url: str, body: Mapping[str, Any]) -> None:
        """Read one stream (:func:`read_texts`) into the chain, then its end."""
        first, frame = self._first, self._frame
        await read_texts(http, url, body, lambda text: first.put(frame(text)))
        await first.put(None)

    async def _relay(self) -> None:
        while True:
            frame = await self._first.get()
            await self._second.put(frame)
            if frame is None:
                return

    async def _listen(self) -> None:
        while True:
            frame = await self._second.get()
            if frame is None:
                self.done.set()
                return
            self.texts.append(frame.text)


class _Envelope:
    """What :class:`ActorChain` passes between its stages: the frame and its turn."""

    __slots__ = ("frame", "turn")

    def __init__(self, frame: Any, turn: int) -> None:
        self.frame = frame
        self.turn = turn


class _MinimalStage:
    """One stage of :class:`ActorChain`: a task that takes envelopes from its link, drops those
    of an older turn, and awaits its handler with each frame; the handler pushes on through a
    push coroutine that makes a new envelope."""

    __slots__ = ("_link", "_next", "turn")

    def __init__(self, link: DequeLink, push_next: Callable[[Any], Awaitable[None]]) -> None:
        self._link = link
        self._next = push_next
        self.turn = 0

    async def run(self) -> None:
        link = self._link
        while True:
            envelope = await link.get()
            if envelope is None:
                await self._next(None)
                return
            if envelope.turn < self.turn:
                continue  # the stale check of an interruption
            await self.process_frame(envelope.frame)

    async def process_frame(self, frame: Any) -> None:
        await self.push(frame)

    async def push(self, frame: Any) -> None:
        await self._next(_Envelope(frame, self.turn))


class _MinimalAggregator(_MinimalStage):
    """The assistant aggregator's part: keep the text, then hand the frame to the end's
    listener, called inline (as trouper's task end calls its listeners)."""

    __slots__ = ("_listener", "parts")

    def __init__(
        self,
        link: DequeLink,
        listener: Callable[[Any], None],
        finish: Callable[[Any], Awaitable[None]],
    ) -> None:
        super().__init__(link, finish)
        self._listener = listener
        self.parts: list[str] = []

    async def process_frame(self, frame: Any) -> None:
        self.parts.append(frame.text)
        self._listener(_Envelope(frame, self.turn))


class ActorChain:
    """A reference for the stream (trio only, not a floor trouper must beat): the least an
    actor pipeline of the quick start's shape does per frame. :class:`DequeChain`'s links,
    plus what the actor model itself needs: an envelope (the frame and its turn) per hop, a
    stale-turn check at each stage, one handler coroutine and one push coroutine per stage,
    and a listener called inline at the end. Reader → output stage → aggregator stage → listener;
    none of trouper's other per-frame contracts (the uninterruptible mark, the busy tracking,
    accepted types, the output's bookkeeping, lifecycles).

    Attributes:
        texts: What reached the listener.
        done: Set once the last stage has taken the end of the stream.
    """

    __slots__ = ("_first", "_frame", "_stages", "done", "texts")

    def __init__(self, capacity: int = 64) -> None:
        from actors import LLMTextFrame  # (see DequeChain)

        self._frame = LLMTextFrame
        self._first = DequeLink(capacity)
        second = DequeLink(capacity)
        self.texts: list[str] = []
        self.done = trio.Event()
        self._stages = (
            _MinimalStage(self._first, second.put),
            _MinimalAggregator(second, self._listen, self._finish),
        )

    def start(self, nursery: trio.Nursery) -> None:
        """Start the two stages in ``nursery``."""
        for stage in self._stages:
            nursery.start_soon(stage.run)

    async def feed(self, http: httpx.AsyncClient, url: str, body: Mapping[str, Any]) -> None:
        """Read one stream (:func:`read_texts`) into the chain, then its end."""
        first, frame = self._first, self._frame

        async def put(text: str) -> None:
            await first.put(_Envelope(frame(text), 0))

        await read_texts(http, url, body, put)
        await first.put(None)

    def _listen(self, envelope: _Envelope) -> None:
        self.texts.append(envelope.frame.text)

    async def _finish(self, _: None) -> None:
        self.done.set()


async def floor_actor_stages(
    http: httpx.AsyncClient, url: str, body: Mapping[str, Any], *, capacity: int = 64
) -> float:
    """A reference for the stream (trio only): :class:`ActorChain`, the quick start's shape
    with the barest actor mechanics. Seconds from the request to the end of the stream at the
    listener."""
    return await _time_chain(ActorChain(capacity), http, url, body, "actor stages")


async def floor_deque_stages(
    http: httpx.AsyncClient, url: str, body: Mapping[str, Any], *, capacity: int = 64
) -> float:
    """A reference for the stream (trio only): :func:`floor_channel_stages`' chain with the
    barest mailboxes instead (:class:`DequeChain`), and each text in an ``LLMTextFrame``: what
    the same stages cost with nothing of a runtime but the hops. Seconds from the request to
    the end of the stream at the listener."""
    return await _time_chain(DequeChain(capacity), http, url, body, "deque stages")


class _Chain(Protocol):
    texts: list[str]
    done: trio.Event

    def start(self, nursery: trio.Nursery) -> None: ...

    async def feed(self, http: httpx.AsyncClient, url: str, body: Mapping[str, Any]) -> None: ...


async def _time_chain(
    chain: _Chain, http: httpx.AsyncClient, url: str, body: Mapping[str, Any], what: str
) -> float:
    """Seconds for ``chain`` to take one stream from the request to the end at its listener."""
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        chain.start(nursery)
        await chain.feed(http, url, body)
    elapsed = time.perf_counter() - start
    if not chain.texts:
        raise RuntimeError(f"{what}: empty stream")
    return elapsed


async def floor_close(
    http: httpx.AsyncClient,
    url: str,
    body: Mapping[str, Any],
    *,
    after: int,
    wait: float,
    sleep: Callable[[float], Awaitable[None]],
) -> float:
    """The bare-httpx floor of closing an interrupted stream: read ``after`` data lines, stop
    reading for ``wait`` seconds (what the server sent meanwhile stays buffered, as behind a
    full output stage), then shut the socket down in both directions, the least a client can
    do for the server to see the close. Returns ``time.monotonic()`` just before the shutdown
    (the server records when it saw it on the same clock)."""
    async with http.stream("POST", url, json=body, headers={"Accept": "text/event-stream"}) as r:
        lines = r.aiter_lines()
        count = 0
        async for line in lines:
            if line.startswith("data: "):
                count += 1
                if count >= after:
                    break
        if count < after:
            raise RuntimeError(f"floor: the stream ended after {count} of {after} data lines")
        if wait > 0:
            await sleep(wait)
        sock = r.extensions["network_stream"].get_extra_info("socket")
        started = time.monotonic()
        sock.shutdown(socket.SHUT_RDWR)
        await lines.aclose()  # type: ignore[attr-defined]
    return started


async def floor_first_token(http: httpx.AsyncClient, url: str, body: Mapping[str, Any]) -> float:
    """Seconds from the request to the first parsed chunk with content (the rest of the stream
    is read afterwards, untimed, so that the connection goes back to the pool)."""
    start = time.monotonic()
    first = 0.0
    async with http.stream("POST", url, json=body, headers={"Accept": "text/event-stream"}) as r:
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                break
            if not first:
                chunk = json.loads(data)
                choices = chunk.get("choices") or ()
                if choices and choices[0].get("delta", {}).get("content"):
                    first = time.monotonic()
    if not first:
        raise RuntimeError("floor: no content in the stream")
    return first - start
