"""The two frameworks of the service benchmarks behind one interface: trouper on trio, Pipecat
1.14 on asyncio.

A scenario is written once, against a :class:`Side`; :func:`trouper_side` and
:func:`pipecat_side` (each importing its framework) supply what differs: event and sleep
functions, frame and context classes, how a pipeline is run and recorded, how it is interrupted,
and a slow output stage. Where a frame is timed:

* trouper: the ``PipelineTask``'s ``on_downstream`` listener, called by the task's sink edge;
* Pipecat: a direct-mode probe processor (inline: no queue, no task) at the end, or where the
  scenario puts it (``probe_at``).

:func:`alternate` runs a scenario's rounds, trouper then Pipecat, each in its own event loop.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
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

__all__ = ["Samples", "Side", "SlowOutput", "alternate", "pipecat_side", "trouper_side"]


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
class SlowOutput:
    """An output stage taking a fixed time per ``LLMTextFrame`` (a TTS, say), and how to read
    the backlog in front of it.

    Attributes:
        stages: What to put after the LLM.
        arm: Called before each turn (Pipecat re-arms the probe that counts frames entering).
        backlog: ``(running pipeline, recorder at the end)`` → frames past the LLM not yet out
            of the slow stage.
    """

    stages: tuple[Any, ...]
    arm: Callable[[], None]
    backlog: Callable[[Any, Recorder], int]


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
        context_frame: ``context`` → a frame asking the LLM to run on it.
        update_frame: ``()`` → an ``LLMMessagesUpdateFrame`` of the same messages, ``run_llm``.
        tools: ``()`` → a ``ToolsSchema`` with the ``lookup`` function.
        aggregators: ``(llm, context)`` → a context aggregator pair (``user()``,
            ``assistant()``).
        probe: ``recorder`` → a stage recording what passes it (Pipecat's direct-mode probe);
            ``None`` when the pipeline records what reaches its end itself (trouper's task).
        run: ``(stages, recorder, mailbox_size)`` → an async context manager running the
            pipeline (see :meth:`pipeline`).
        interrupt: ``running pipeline`` → interrupts it (an awaitable to await, or ``None``
            when done at once).
        slow_output: ``(seconds per text frame, recorder at the end)`` → a :class:`SlowOutput`.
    """

    name: str
    new_event: Callable[[], Any]
    sleep: Callable[[float], Awaitable[Any]]
    text_frame: type[Any]
    end_frame: type[Any]
    llm: Callable[[str, str], Any]
    context: Callable[..., Any]
    context_frame: Callable[[Any], Any]
    update_frame: Callable[[], Any]
    tools: Callable[[], Any]
    aggregators: Callable[[Any, Any], Any]
    probe: Callable[[Recorder], Any] | None
    run: Callable[[list[Any], Recorder, int | None], AbstractAsyncContextManager[Any]]
    interrupt: Callable[[Any], Awaitable[Any] | None]
    slow_output: Callable[[float, Recorder], SlowOutput]

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
        OpenAILLMContextFrame,
        ToolsSchema,
    )
    from runtime import Actor, Frame, FrameDirection

    def interrupt(task: Any) -> None:
        task.interrupt()

    def slow_output(secs: float, recorder: Recorder) -> SlowOutput:
        del recorder  # the backlog is read from the stage's mailbox

        class SlowStage(Actor[Frame]):
            """An output stage taking ``secs`` per text frame (a TTS, say)."""

            accepts = (LLMTextFrame,)

            async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
                await trio.sleep(secs)
                await self.push_frame(frame, direction)

        def backlog(task: Any, _recorder: Recorder) -> int:
            for actor in task.snapshot().actors:
                if actor.name == "SlowStage" and actor.mailbox is not None:
                    return int(actor.mailbox.data_depth + (1 if actor.busy_with else 0))
            return 0

        return SlowOutput((SlowStage(name="SlowStage"),), lambda: None, backlog)

    return Side(
        name="trouper",
        new_event=trio.Event,
        sleep=trio.sleep,
        text_frame=LLMTextFrame,
        end_frame=LLMFullResponseEndFrame,
        llm=trouper_llm,
        context=lambda **kwargs: OpenAILLMContext(messages=list(MESSAGES), **kwargs),
        context_frame=OpenAILLMContextFrame,
        update_frame=lambda: LLMMessagesUpdateFrame(messages=list(MESSAGES), run_llm=True),
        tools=lambda: _lookup_tools(FunctionSchema, ToolsSchema),
        aggregators=lambda llm, context: llm.create_context_aggregator(context),
        probe=None,  # the task's sink records what reaches the end
        run=lambda stages, recorder, size: trouper_pipeline(stages, recorder, mailbox_size=size),
        interrupt=interrupt,
        slow_output=slow_output,
    )


def pipecat_side() -> Side:
    """Pipecat 1.14's side (run it under ``asyncio.run``; Pipecat must be installed)."""
    from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
    from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
    from pipecat.frames.frames import (
        Frame,
        InterruptionFrame,
        LLMContextFrame,
        LLMFullResponseEndFrame,
        LLMMessagesUpdateFrame,
        LLMTextFrame,
    )
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

    def interrupt(worker: Any) -> Awaitable[Any]:
        return worker.queue_frame(InterruptionFrame())  # type: ignore[no-any-return]

    def slow_output(secs: float, recorder: Recorder) -> SlowOutput:
        class SlowStage(FrameProcessor):
            """An output stage taking ``secs`` per text frame (a TTS, say)."""

            async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
                await super().process_frame(frame, direction)
                if isinstance(frame, LLMTextFrame):
                    await asyncio.sleep(secs)
                await self.push_frame(frame, direction)

        entering = Recorder(asyncio.Event)  # what the LLM pushed (inline, before the slow stage)

        def backlog(_worker: Any, at_end: Recorder) -> int:
            return len(entering.times_of(LLMTextFrame)) - len(at_end.times_of(LLMTextFrame))

        return SlowOutput(
            (pipecat_probe(entering), SlowStage(name="SlowStage")),
            lambda: entering.arm(LLMTextFrame, count=10**9),
            backlog,
        )

    return Side(
        name="Pipecat",
        new_event=asyncio.Event,
        sleep=asyncio.sleep,
        text_frame=LLMTextFrame,
        end_frame=LLMFullResponseEndFrame,
        llm=pipecat_llm,
        context=lambda **kwargs: LLMContext(messages=list(PIPECAT_MESSAGES), **kwargs),
        context_frame=lambda context: LLMContextFrame(context=context),
        update_frame=lambda: LLMMessagesUpdateFrame(
            messages=list(PIPECAT_MESSAGES),  # type: ignore[arg-type]
            run_llm=True,
        ),
        tools=lambda: _lookup_tools(FunctionSchema, ToolsSchema),
        aggregators=lambda _llm, context: pipecat_pair(context),
        probe=pipecat_probe,
        run=lambda stages, _recorder, _size: pipecat_pipeline(stages),  # unbounded queues
        interrupt=interrupt,
        slow_output=slow_output,
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
