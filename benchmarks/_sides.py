"""The two frameworks of the service benchmarks behind one interface: trouper on trio, Pipecat
1.14 on asyncio.

A scenario is written once, against a :class:`Side`; :func:`trouper_side` and
:func:`pipecat_side` (each importing its framework) supply what differs: event and sleep
functions, frame and context classes, how a pipeline is run and recorded, how it is interrupted,
and the output stage. Every service scenario runs the README's quick-start pipeline
(:meth:`Side.quick_start`: user aggregator → ``OpenAILLMService`` → output → assistant
aggregator) with default settings, and starts a turn as an application does (an
``LLMMessagesUpdateFrame`` with ``run_llm`` queued to the pipeline). Where a frame is timed:

* trouper: the ``PipelineTask``'s ``on_downstream`` listener, called inline by the last stage
  (the assistant aggregator, which passes everything on);
* Pipecat: a direct-mode probe processor (inline: no queue, no task) after its output stage
  (its assistant aggregator passes neither the text nor the end frame on).

Interruptions: trouper's ``PipelineTask.interrupt()``; Pipecat's
``FrameProcessor.broadcast_interruption()`` on the user aggregator (what 1.14's own user-turn
processor calls; faster than queueing an ``InterruptionFrame`` to the worker).

:func:`alternate` runs a scenario's rounds, trouper then Pipecat, each in its own event loop.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import attrs
import trio

from . import _pipecat
from ._rigs import (
    MESSAGES,
    PIPECAT_MESSAGES,
    Recorder,
    pipecat_llm,
    pipecat_pair,
    pipecat_pipeline,
    pipecat_probe,
    trouper_llm,
    trouper_pipeline,
)

__all__ = ["Output", "Running", "Samples", "Side", "alternate", "pipecat_side", "trouper_side"]


@attrs.define
class Samples:
    """Raw samples of one framework (seconds unless stated), accumulated over rounds."""

    service: list[float] = attrs.Factory(list)
    floor: list[float] = attrs.Factory(list)
    cpu: list[float] = attrs.Factory(list)
    extra: dict[str, list[float]] = attrs.Factory(dict)

    def add(self, key: str, value: float) -> None:
        """Append ``value`` to the extra series ``key``."""
        self.extra.setdefault(key, []).append(value)

    def series(self, key: str) -> list[float]:
        """The extra series ``key`` (empty if never added)."""
        return self.extra.get(key, [])


@attrs.frozen
class Output:
    """The output stage of the quick-start pipeline (what shows the answer to the user), taking
    a fixed time per ``LLMTextFrame`` (0: none; a TTS, say), and how to read the backlog in
    front of it.

    Attributes:
        stages: What goes between the LLM and the assistant aggregator.
        arm: Called before each turn (Pipecat re-arms the probe that counts frames entering).
        backlog: ``running pipeline`` → frames past the LLM not yet out of the output stage.
    """

    stages: tuple[Any, ...]
    arm: Callable[[], None]
    backlog: Callable[[Any], int]


@attrs.define
class Running:
    """A running quick-start pipeline (see :meth:`Side.quick_start`).

    Attributes:
        side: The framework.
        pipeline: The running task (trouper) or worker (Pipecat); it takes ``queue_frame``.
        user: The user aggregator (Pipecat is interrupted from it).
        output: The output stage and its backlog.
    """

    side: Side
    pipeline: Any
    user: Any
    output: Output

    async def queue_frame(self, frame: Any) -> None:
        """Queue ``frame`` at the head of the pipeline, as an application does."""
        await self.pipeline.queue_frame(frame)

    async def interrupt(self) -> None:
        """Interrupt the turn through the framework's fastest public path."""
        interrupting = self.side.interrupt(self.pipeline, self.user)
        if interrupting is not None:
            await interrupting

    def backlog(self) -> int:
        """Frames past the LLM not yet out of the output stage."""
        return self.output.backlog(self.pipeline)


@attrs.frozen
class Side:
    """What one framework builds and does in the service benchmarks.

    Attributes:
        name: ``"trouper"`` or ``"Pipecat"`` (for messages).
        new_event: ``trio.Event`` or ``asyncio.Event``.
        sleep: ``trio.sleep`` or ``asyncio.sleep``.
        text_frame: The framework's ``LLMTextFrame``.
        end_frame: Its ``LLMFullResponseEndFrame``.
        llm: ``(base_url, model)`` → its ``OpenAILLMService`` for the benchmark server.
        context: ``(**kwargs)`` → a context holding :data:`~benchmarks._rigs.MESSAGES` (Pipecat:
            without the system message, which its service carries), ``kwargs`` such as
            ``tools`` passed on.
        update_frame: ``()`` → an ``LLMMessagesUpdateFrame`` of the same messages, ``run_llm``:
            how every benchmark turn starts (through the user aggregator).
        tools: ``()`` → a ``ToolsSchema`` with the ``lookup`` function.
        aggregators: ``(llm, context)`` → a context aggregator pair (``user()``,
            ``assistant()``).
        probe: ``recorder`` → a stage recording what passes it (Pipecat's direct-mode probe);
            ``None`` when the pipeline records what reaches its end itself (trouper's task).
        run: ``(stages, recorder, mailbox_size)`` → an async context manager running the
            pipeline (see :meth:`pipeline`).
        interrupt: ``(running pipeline, user aggregator)`` → interrupts the turn (an awaitable
            to await, or ``None`` when done at once).
        output: ``seconds per text frame`` → the :class:`Output` stage of the quick start.
    """

    name: str
    new_event: Callable[[], Any]
    sleep: Callable[[float], Awaitable[Any]]
    text_frame: type[Any]
    end_frame: type[Any]
    llm: Callable[[str, str], Any]
    context: Callable[..., Any]
    update_frame: Callable[[], Any]
    tools: Callable[[], Any]
    aggregators: Callable[[Any, Any], Any]
    probe: Callable[[Recorder], Any] | None
    run: Callable[[list[Any], Recorder, int | None], AbstractAsyncContextManager[Any]]
    interrupt: Callable[[Any, Any], Awaitable[Any] | None]
    output: Callable[[float], Output]

    def recorder(self) -> Recorder:
        """A recorder whose events belong to this side's event loop."""
        return Recorder(self.new_event)

    def pipeline(
        self,
        stages: Sequence[Any],
        recorder: Recorder,
        *,
        probe_at: int | None = None,
        mailbox_size: int | None = None,
    ) -> AbstractAsyncContextManager[Any]:
        """Run ``stages`` for the block of an ``async with``, recording in ``recorder`` what
        reaches the end (with a :attr:`probe`: what reaches the probe, put at ``probe_at``,
        by default last).

        Args:
            stages: The pipeline's stages.
            recorder: Where frames are recorded.
            probe_at: Where the probe goes among ``stages`` (ignored without a probe).
            mailbox_size: Mailbox capacity, where the framework has one.

        Returns:
            An async context manager yielding the running pipeline (it takes ``queue_frame``).
        """
        processors = list(stages)
        if self.probe is not None:
            at = len(processors) if probe_at is None else probe_at
            processors.insert(at, self.probe(recorder))
        return self.run(processors, recorder, mailbox_size)

    @asynccontextmanager
    async def quick_start(
        self,
        llm: Any,
        context: Any,
        recorder: Recorder,
        *,
        output_secs: float = 0.0,
        mailbox_size: int | None = None,
    ) -> AsyncIterator[Running]:
        """Run the README's quick-start pipeline, the one every service benchmark measures:
        user aggregator → ``llm`` → output → assistant aggregator, default settings unless
        ``mailbox_size`` is given.

        Where frames are recorded: trouper, what reaches the task's end (after the assistant
        aggregator, which passes everything on); Pipecat, a direct-mode probe after its output
        stage (its assistant aggregator passes neither text nor the end frame on).

        Args:
            llm: The side's ``OpenAILLMService``.
            context: The side's context.
            recorder: Where frames are recorded.
            output_secs: Time the output stage takes per ``LLMTextFrame``.
            mailbox_size: A non-default mailbox capacity (trouper only; for a labelled row).

        Yields:
            The :class:`Running` pipeline.
        """
        pair = self.aggregators(llm, context)
        user = pair.user()
        output = self.output(output_secs)
        stages = [user, llm, *output.stages, pair.assistant()]
        async with self.pipeline(
            stages, recorder, probe_at=len(stages) - 1, mailbox_size=mailbox_size
        ) as running:
            yield Running(self, running, user, output)


def _lookup_tools(function_schema: type[Any], tools_schema: type[Any]) -> Any:
    """The one tool of the benchmarks (both frameworks' schema classes take the same
    arguments)."""
    lookup = function_schema(
        name="lookup",
        description="Look an item up",
        properties={"key": {"type": "string"}},
        required=["key"],
    )
    return tools_schema(standard_tools=[lookup])


def trouper_side() -> Side:
    """trouper's side (run it under ``trio.run``)."""
    from actors import (
        FunctionSchema,
        LLMFullResponseEndFrame,
        LLMMessagesUpdateFrame,
        LLMTextFrame,
        OpenAILLMContext,
        TextTransport,
        ToolsSchema,
    )

    def interrupt(task: Any, _user: Any) -> None:
        task.interrupt()

    def output(secs: float) -> Output:
        async def slow(frame: Any) -> None:
            if type(frame) is LLMTextFrame:
                await trio.sleep(secs)

        # The README's output: a TextTransport's output stage (no callback unless it is slow).
        stage = TextTransport(on_output=slow if secs else None).output()

        def backlog(task: Any) -> int:
            for actor in task.snapshot().actors:
                if actor.name == stage.name and actor.mailbox is not None:
                    return int(actor.mailbox.data_depth + (1 if actor.busy_with else 0))
            return 0

        return Output((stage,), lambda: None, backlog)

    return Side(
        name="trouper",
        new_event=trio.Event,
        sleep=trio.sleep,
        text_frame=LLMTextFrame,
        end_frame=LLMFullResponseEndFrame,
        llm=trouper_llm,
        context=lambda **kwargs: OpenAILLMContext(messages=list(MESSAGES), **kwargs),
        update_frame=lambda: LLMMessagesUpdateFrame(messages=list(MESSAGES), run_llm=True),
        tools=lambda: _lookup_tools(FunctionSchema, ToolsSchema),
        aggregators=lambda llm, context: llm.create_context_aggregator(context),
        probe=None,  # the task's end records what reaches it
        run=lambda stages, recorder, size: trouper_pipeline(stages, recorder, mailbox_size=size),
        interrupt=interrupt,
        output=output,
    )


def pipecat_side() -> Side:
    """Pipecat 1.14's side (run it under ``asyncio.run``; Pipecat must be installed)."""
    from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
    from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
    from pipecat.frames.frames import (
        Frame,
        LLMFullResponseEndFrame,
        LLMMessagesUpdateFrame,
        LLMTextFrame,
    )
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

    def interrupt(_worker: Any, user: Any) -> Awaitable[Any]:
        # 1.14's fastest public path: what its own user-turn processor calls.
        return user.broadcast_interruption()  # type: ignore[no-any-return]

    def output(secs: float) -> Output:
        class TextOutput(FrameProcessor):
            """The output stage: passes every frame on (Pipecat has no text transport),
            taking ``secs`` per text frame."""

            async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
                await super().process_frame(frame, direction)
                if secs and isinstance(frame, LLMTextFrame):
                    await asyncio.sleep(secs)
                await self.push_frame(frame, direction)

        entering = Recorder(asyncio.Event)  # what the LLM pushed (inline, before the output)
        after = Recorder(asyncio.Event)  # what left the output

        def backlog(_worker: Any) -> int:
            return len(entering.times_of(LLMTextFrame)) - len(after.times_of(LLMTextFrame))

        def arm() -> None:
            entering.arm(LLMTextFrame, count=10**9)
            after.arm(LLMTextFrame, count=10**9)

        stages: tuple[Any, ...] = (TextOutput(name="TextOutput"),)
        if secs:
            stages = (pipecat_probe(entering), *stages, pipecat_probe(after))
        return Output(stages, arm, backlog)

    return Side(
        name="Pipecat",
        new_event=asyncio.Event,
        sleep=asyncio.sleep,
        text_frame=LLMTextFrame,
        end_frame=LLMFullResponseEndFrame,
        llm=pipecat_llm,
        context=lambda **kwargs: LLMContext(messages=list(PIPECAT_MESSAGES), **kwargs),
        update_frame=lambda: LLMMessagesUpdateFrame(
            messages=list(PIPECAT_MESSAGES),  # type: ignore[arg-type]
            run_llm=True,
        ),
        tools=lambda: _lookup_tools(FunctionSchema, ToolsSchema),
        aggregators=lambda _llm, context: pipecat_pair(context),
        probe=pipecat_probe,
        run=lambda stages, _recorder, _size: pipecat_pipeline(stages),  # unbounded queues
        interrupt=interrupt,
        output=output,
    )


def alternate(
    rounds: int, run_round: Callable[[Side, Samples], Awaitable[None]]
) -> tuple[Samples, Samples]:
    """Run ``rounds`` rounds, each trouper's (``trio.run``) then Pipecat's (``asyncio.run``,
    skipped when Pipecat is not installed), so that drift on the machine hits both alike.

    Returns:
        trouper's samples and Pipecat's (empty without Pipecat).
    """
    ours, theirs = Samples(), Samples()
    has_pipecat = _pipecat.available()
    for _ in range(rounds):
        trio.run(run_round, trouper_side(), ours)
        if has_pipecat:
            _pipecat.run(functools.partial(run_round, pipecat_side(), theirs))
    return ours, theirs
