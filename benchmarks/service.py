"""The LLM-service benchmarks (issue 4), trouper against Pipecat 1.14 on the same local server.

Every scenario starts one :mod:`benchmarks._server` process (a fast OpenAI-compatible SSE
server, scripted per request through the ``model`` name) and measures, in the same run and
against that same server, trouper's ``OpenAILLMService`` in a trouper ``Pipeline`` (under
``trio.run``), Pipecat 1.14's ``OpenAILLMService`` in a Pipecat pipeline (a ``PipelineWorker``
under ``asyncio.run``, minimal configuration) and, where it applies, a raw httpx floor on each
event loop. Rounds alternate between the two frameworks so that drift on the machine hits both
alike; each round builds a fresh pipeline, warms it up, then times several turns on it (one
pooled connection, as in a conversation). Medians are reported.

Where a frame is timed:

* trouper: the ``PipelineTask``'s ``on_downstream`` listener, called by the task's sink edge (an
  actor of its own, so one more mailbox hop than the stages listed);
* Pipecat: a direct-mode probe processor right after the LLM (inline: no queue, no task).

Scenarios (one registry entry each):

``service_stream``
    A 2,000-token stream (0 ms spacing) from pushing the context frame to the
    ``LLMFullResponseEndFrame`` at the end; ratio to the httpx floor of the same loop. Target:
    trouper at most 1.5 times the floor.
``first_token``
    Pushing the context frame → first ``LLMTextFrame`` at the end, minus the floor's time to
    its first content chunk (the server writes the first content chunk with the response
    head). Target: ≤ floor + 0.3 ms. Every timed section (service and floor alike) starts
    right after a ``gc.collect()``.
``parallel_tools``
    A response with 5 tool calls whose handlers each sleep 200 ms, then the follow-up answer:
    frame push → the follow-up's ``LLMFullResponseEndFrame``, minus 200 ms, which includes the
    two HTTP requests; their bare-httpx floor (measured under the same conditions: collected
    heap, 200 ms idle between them) is subtracted for the framework's own time outside the
    handlers. Target ≤ 3 ms on that figure: the requests themselves cost more than 3 ms with
    any httpx client on the reference machine.
``interruption``
    A slow stream (a chunk every 5 ms) interrupted mid-way, and a 200-frame backlog in a slow
    output stage (1 ms per frame): text frames of the interrupted turn that reach the end after
    the interruption (target 0), the time to the last of them, and the time until the *server*
    sees the socket closed (target ≤ 0.5 ms, measured by the server process on the shared
    monotonic clock).
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, Self

import attrs
import httpx
import trio

from runtime import logging as rlog

from . import _pipecat
from ._registry import TIMES, Options, Report, Row, Target
from ._rigs import (
    MESSAGES,
    PIPECAT_MESSAGES,
    Recorder,
    floor_body,
    floor_first_token,
    floor_stream,
    median,
    pipecat_llm,
    pipecat_pair,
    pipecat_pipeline,
    pipecat_probe,
    trouper_llm,
    trouper_pipeline,
)
from ._server import fetch_stats, model_spec, reset_stats, server_process

__all__ = [
    "run_first_token",
    "run_interruption",
    "run_parallel_tools",
    "run_service_stream",
]

_MS = 1000.0


@attrs.define
class _Samples:
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


def _setup() -> None:
    rlog.configure(level="warning")
    _pipecat.quiet_logs()


def _ms(values: Sequence[float]) -> float:
    return median(values) * _MS


def _alternate(
    rounds: int,
    trouper_round: Callable[[], Any],
    pipecat_round: Callable[[], Any],
) -> None:
    """Run ``rounds`` rounds, each a trouper round (``trio.run``) then a Pipecat one."""
    has_pipecat = _pipecat.available()
    for _ in range(rounds):
        trio.run(trouper_round)
        if has_pipecat:
            _pipecat.run(pipecat_round)


@attrs.frozen
class _Rounds:
    """How a scenario is repeated: ``rounds`` interleaved rounds per framework, each of
    ``warmup`` untimed then ``per_round`` timed repetitions (fewer with ``--quick``)."""

    rounds: int = 3
    per_round: int = 5
    warmup: int = 2
    #: ``(rounds, per_round, warmup)`` of a ``--quick`` run.
    QUICK: ClassVar[tuple[int, int, int]] = (1, 4, 1)

    @classmethod
    def for_options(cls, options: Options) -> Self:
        """The settings for this run of the benchmarks."""
        if not options.quick:
            return cls()
        rounds, per_round, warmup = cls.QUICK
        return cls(rounds=rounds, per_round=per_round, warmup=warmup)


# =========================================================================== service_stream


@attrs.frozen
class _StreamSettings(_Rounds):
    tokens: int = 2000


def run_service_stream(options: Options) -> Report:
    """2,000-token stream through the LLM service in a pipeline, against the httpx floor."""
    _setup()
    s = _StreamSettings.for_options(options)
    model = model_spec(tokens=s.tokens)
    ours, theirs = _Samples(), _Samples()

    with server_process() as url:
        chat_url = f"{url}/chat/completions"
        body = floor_body(model)

        async def trouper_round() -> None:
            from actors import LLMFullResponseEndFrame, OpenAILLMContext, OpenAILLMContextFrame

            rec = Recorder(trio.Event)
            context = OpenAILLMContext(messages=list(MESSAGES))
            async with (
                httpx.AsyncClient(timeout=60.0) as http,
                trouper_pipeline([trouper_llm(url, model)], rec) as task,
            ):
                for i in range(s.warmup + s.per_round):
                    frame = OpenAILLMContextFrame(context)
                    event = rec.arm(LLMFullResponseEndFrame, keep=False)
                    gc.collect()
                    c0, t0 = time.process_time(), time.monotonic()
                    await task.queue_frame(frame)
                    await event.wait()
                    cpu = time.process_time() - c0
                    _check_count(rec, s.tokens, "trouper")
                    gc.collect()  # the floor starts from the same state as the service
                    floor = await floor_stream(http, chat_url, body)
                    if i >= s.warmup:
                        ours.service.append(rec.done_at - t0)
                        ours.cpu.append(cpu)
                        ours.floor.append(floor)

        async def pipecat_round() -> None:
            from pipecat.frames.frames import LLMContextFrame, LLMFullResponseEndFrame
            from pipecat.processors.aggregators.llm_context import LLMContext

            rec = Recorder(asyncio.Event)
            context = LLMContext(messages=list(PIPECAT_MESSAGES))  # type: ignore[arg-type]
            llm = pipecat_llm(url, model)
            async with (
                httpx.AsyncClient(timeout=60.0) as http,
                pipecat_pipeline([llm, pipecat_probe(rec)]) as worker,
            ):
                for i in range(s.warmup + s.per_round):
                    frame = LLMContextFrame(context=context)
                    event = rec.arm(LLMFullResponseEndFrame, keep=False)
                    gc.collect()
                    c0, t0 = time.process_time(), time.monotonic()
                    await worker.queue_frame(frame)
                    await event.wait()
                    cpu = time.process_time() - c0
                    _check_count(rec, s.tokens, "Pipecat")
                    gc.collect()  # the floor starts from the same state as the service
                    floor = await floor_stream(http, chat_url, body)
                    if i >= s.warmup:
                        theirs.service.append(rec.done_at - t0)
                        theirs.cpu.append(cpu)
                        theirs.floor.append(floor)

        _alternate(s.rounds, trouper_round, pipecat_round)
        late = fetch_stats(url)["late_max_ms"]

    pc = bool(theirs.service)
    ratio_t = median(ours.service) / median(ours.floor)
    ratio_p = median(theirs.service) / median(theirs.floor) if pc else None
    scenario = f"{s.tokens:,} tokens, 0 ms"
    rows = (
        Row(scenario, "context frame → end frame", "ms", _ms(ours.service),
            _ms(theirs.service) if pc else None, "lower"),
        Row(scenario, "÷ httpx floor (same loop)", f"{TIMES} floor", ratio_t, ratio_p, "lower",
            Target("max", 1.5), note="floor: trio for trouper, asyncio for Pipecat"),
        Row(scenario, "CPU per stream", "ms", _ms(ours.cpu),
            _ms(theirs.cpu) if pc else None, "lower"),
        Row("httpx floor", "whole stream", "ms", _ms(ours.floor),
            _ms(theirs.floor) if pc else None, "lower",
            note="trouper column: under trio; Pipecat column: under asyncio"),
    )  # fmt: skip
    notes = (
        f"{s.rounds} round(s) x {s.per_round} streams per framework after {s.warmup} warm-up; "
        "floor = httpx aiter_lines + json.loads per data line, interleaved with the service",
        f"server's worst chunk lateness {late:.2f} ms",
    )
    details = {"settings": attrs.asdict(s), "trouper": attrs.asdict(ours),
               "pipecat": attrs.asdict(theirs)}  # fmt: skip
    return Report("service_stream", rows, details=details, notes=notes)


def _check_count(rec: Recorder, tokens: int, who: str) -> None:
    # +2: the start and end frames; anything else (metrics) is extra.
    if rec.count < tokens + 2:
        raise RuntimeError(f"{who}: only {rec.count} frames reached the end for {tokens} tokens")


# =========================================================================== first_token


@attrs.frozen
class _FirstSettings(_Rounds):
    tokens: int = 10
    spacing_ms: float = 2.0
    rounds: int = 3
    per_round: int = 20
    warmup: int = 3
    QUICK: ClassVar[tuple[int, int, int]] = (1, 12, 2)


def run_first_token(options: Options) -> Report:
    """Overhead to the first ``LLMTextFrame`` over the floor's first content chunk."""
    _setup()
    s = _FirstSettings.for_options(options)
    model = model_spec(tokens=s.tokens, spacing_ms=s.spacing_ms)
    ours, theirs = _Samples(), _Samples()

    with server_process() as url:
        chat_url = f"{url}/chat/completions"
        body = floor_body(model)

        async def trouper_round() -> None:
            from actors import (
                LLMFullResponseEndFrame,
                LLMTextFrame,
                OpenAILLMContext,
                OpenAILLMContextFrame,
            )

            rec = Recorder(trio.Event)
            context = OpenAILLMContext(messages=list(MESSAGES))
            async with (
                httpx.AsyncClient(timeout=60.0) as http,
                trouper_pipeline([trouper_llm(url, model)], rec) as task,
            ):
                for i in range(s.warmup + s.per_round):
                    frame = OpenAILLMContextFrame(context)
                    event = rec.arm(LLMFullResponseEndFrame)
                    gc.collect()
                    t0 = time.monotonic()
                    await task.queue_frame(frame)
                    await event.wait()
                    first = rec.times_of(LLMTextFrame)[0] - t0
                    gc.collect()  # the floor starts from the same state as the service
                    floor = await floor_first_token(http, chat_url, body)
                    if i >= s.warmup:
                        ours.service.append(first)
                        ours.floor.append(floor)

        async def pipecat_round() -> None:
            from pipecat.frames.frames import LLMContextFrame, LLMFullResponseEndFrame, LLMTextFrame
            from pipecat.processors.aggregators.llm_context import LLMContext

            rec = Recorder(asyncio.Event)
            context = LLMContext(messages=list(PIPECAT_MESSAGES))  # type: ignore[arg-type]
            llm = pipecat_llm(url, model)
            async with (
                httpx.AsyncClient(timeout=60.0) as http,
                pipecat_pipeline([llm, pipecat_probe(rec)]) as worker,
            ):
                for i in range(s.warmup + s.per_round):
                    frame = LLMContextFrame(context=context)
                    event = rec.arm(LLMFullResponseEndFrame)
                    gc.collect()
                    t0 = time.monotonic()
                    await worker.queue_frame(frame)
                    await event.wait()
                    first = rec.times_of(LLMTextFrame)[0] - t0
                    gc.collect()  # the floor starts from the same state as the service
                    floor = await floor_first_token(http, chat_url, body)
                    if i >= s.warmup:
                        theirs.service.append(first)
                        theirs.floor.append(floor)

        _alternate(s.rounds, trouper_round, pipecat_round)

    pc = bool(theirs.service)
    over_t = _ms(ours.service) - _ms(ours.floor)
    over_p = _ms(theirs.service) - _ms(theirs.floor) if pc else None
    scenario = "first token"
    rows = (
        Row(scenario, "context frame → first LLMTextFrame", "ms", _ms(ours.service),
            _ms(theirs.service) if pc else None, "lower"),
        Row(scenario, "overhead over httpx floor", "ms", over_t, over_p, "lower",
            Target("max", 0.3), note="median(service) - median(floor), same loop"),
        Row("httpx floor", "request → first content chunk", "ms", _ms(ours.floor),
            _ms(theirs.floor) if pc else None, "lower",
            note="trouper column: under trio; Pipecat column: under asyncio"),
    )  # fmt: skip
    notes = (
        f"{s.rounds} round(s) x {s.per_round} requests per framework after {s.warmup} warm-up; "
        f"stream of {s.tokens} tokens, first content chunk sent with the response head, "
        f"then one every {s.spacing_ms:g} ms",
        "p10 overhead: trouper "
        f"{_p(ours.service, 10) - _p(ours.floor, 10):.3f} ms"
        + (f", Pipecat {_p(theirs.service, 10) - _p(theirs.floor, 10):.3f} ms" if pc else ""),
    )
    details = {"settings": attrs.asdict(s), "trouper": attrs.asdict(ours),
               "pipecat": attrs.asdict(theirs)}  # fmt: skip
    return Report("first_token", rows, details=details, notes=notes)


def _p(values: Sequence[float], pct: float) -> float:
    """Percentile in ms (nearest rank)."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1))))
    return ordered[k] * _MS


# =========================================================================== parallel_tools


@attrs.frozen
class _ToolSettings(_Rounds):
    calls: int = 5
    handler_secs: float = 0.2
    answer_tokens: int = 10
    rounds: int = 2
    per_round: int = 5
    warmup: int = 1
    QUICK: ClassVar[tuple[int, int, int]] = (1, 3, 1)


def run_parallel_tools(options: Options) -> Report:
    """Five 200 ms tool calls and the follow-up answer: time spent outside the handlers."""
    _setup()
    s = _ToolSettings.for_options(options)
    model = model_spec(tokens=s.answer_tokens, tools=s.calls)
    ours, theirs = _Samples(), _Samples()

    with server_process() as url:
        chat_url = f"{url}/chat/completions"
        tool_body = floor_body(model)
        answer_body = floor_body(model)
        answer_body["messages"] = [
            *MESSAGES,
            {"role": "tool", "tool_call_id": "call_bench0000", "content": "{}"},
        ]

        async def floors(
            http: httpx.AsyncClient, samples: _Samples, sleep: Callable[[float], Any]
        ) -> None:
            # The two requests of a turn, read with bare httpx on the same loop, from the same
            # state as the service's: a collected heap, and the handlers' idle time between
            # them (a process idle for 200 ms wakes up with cold caches; timed apart).
            gc.collect()
            first = await floor_stream(http, chat_url, tool_body)
            await sleep(s.handler_secs)
            samples.floor.append(first + await floor_stream(http, chat_url, answer_body))

        async def trouper_round() -> None:
            from actors import (
                FunctionCallParams,
                FunctionSchema,
                LLMFullResponseEndFrame,
                LLMMessagesUpdateFrame,
                OpenAILLMContext,
                ToolsSchema,
            )

            spans: list[tuple[float, float]] = []

            async def lookup(params: FunctionCallParams) -> None:
                start = time.monotonic()
                await trio.sleep(s.handler_secs)
                spans.append((start, time.monotonic()))
                await params.result_callback({"key": params.arguments.get("key"), "value": 42})

            tools = ToolsSchema(standard_tools=[_trouper_schema(FunctionSchema)])
            llm = trouper_llm(url, model)
            llm.register_function("lookup", lookup)
            pair = llm.create_context_aggregator(
                OpenAILLMContext(messages=list(MESSAGES), tools=tools)
            )
            rec = Recorder(trio.Event)
            async with (
                httpx.AsyncClient(timeout=60.0) as http,
                trouper_pipeline([pair.user(), llm, pair.assistant()], rec) as task,
            ):
                for i in range(s.warmup + s.per_round):
                    frame = LLMMessagesUpdateFrame(messages=list(MESSAGES), run_llm=True)
                    event = rec.arm(LLMFullResponseEndFrame, count=2)
                    spans.clear()
                    gc.collect()
                    t0 = time.monotonic()
                    await task.queue_frame(frame)
                    await event.wait()
                    if len(spans) != s.calls:
                        raise RuntimeError(f"trouper ran {len(spans)} of {s.calls} handlers")
                    if i >= s.warmup:
                        _record_tools(ours, rec.done_at - t0, spans, t0)
                        await floors(http, ours, trio.sleep)

        async def pipecat_round() -> None:
            from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
            from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
            from pipecat.frames.frames import LLMFullResponseEndFrame, LLMMessagesUpdateFrame
            from pipecat.processors.aggregators.llm_context import LLMContext
            from pipecat.services.llm_service import FunctionCallParams

            spans: list[tuple[float, float]] = []

            async def lookup(params: FunctionCallParams) -> None:
                start = time.monotonic()
                await asyncio.sleep(s.handler_secs)
                spans.append((start, time.monotonic()))
                await params.result_callback({"key": params.arguments.get("key"), "value": 42})

            tools = ToolsSchema(standard_tools=[_pipecat_schema(FunctionSchema)])
            llm = pipecat_llm(url, model)
            llm.register_function("lookup", lookup)
            context = LLMContext(messages=list(PIPECAT_MESSAGES), tools=tools)  # type: ignore[arg-type]
            pair = pipecat_pair(context)
            rec = Recorder(asyncio.Event)
            stages = [pair.user(), llm, pipecat_probe(rec), pair.assistant()]
            async with (
                httpx.AsyncClient(timeout=60.0) as http,
                pipecat_pipeline(stages) as worker,
            ):
                for i in range(s.warmup + s.per_round):
                    frame = LLMMessagesUpdateFrame(messages=list(PIPECAT_MESSAGES), run_llm=True)  # type: ignore[arg-type]
                    event = rec.arm(LLMFullResponseEndFrame, count=2)
                    spans.clear()
                    gc.collect()
                    t0 = time.monotonic()
                    await worker.queue_frame(frame)
                    await event.wait()
                    if len(spans) != s.calls:
                        raise RuntimeError(f"Pipecat ran {len(spans)} of {s.calls} handlers")
                    if i >= s.warmup:
                        _record_tools(theirs, rec.done_at - t0, spans, t0)
                        await floors(http, theirs, asyncio.sleep)

        _alternate(s.rounds, trouper_round, pipecat_round)

    pc = bool(theirs.service)
    handler_ms = s.handler_secs * _MS
    scenario = f"{s.calls} x {handler_ms:g} ms tools"
    rows = (
        Row(scenario, "push → follow-up end", "ms", _ms(ours.service),
            _ms(theirs.service) if pc else None, "lower"),
        Row(scenario, f"outside the handlers (- {handler_ms:g} ms)", "ms",
            _ms(ours.service) - handler_ms,
            _ms(theirs.service) - handler_ms if pc else None, "lower",
            note="includes the 2 HTTP requests (their bare-httpx floor is the row below)"),
        Row(scenario, "outside the handlers' real span", "ms", _ms(ours.series("outside")),
            _ms(theirs.series("outside")) if pc else None, "lower",
            note="total - (last handler end - first handler start): removes sleep overshoot"),
        Row(scenario, "framework's own time outside the handlers", "ms",
            _ms(ours.series("outside")) - _ms(ours.floor),
            _ms(theirs.series("outside")) - _ms(theirs.floor) if pc else None, "lower",
            Target("max", 3.0),
            note="real span minus the 2 requests' bare-httpx floor (same conditions)"),
        Row("httpx floor", "tool request + follow-up request", "ms", _ms(ours.floor),
            _ms(theirs.floor) if pc else None, "lower",
            note="trouper column: under trio; Pipecat column: under asyncio"),
        Row(scenario, "before the first handler starts", "ms", _ms(ours.series("to_first")),
            _ms(theirs.series("to_first")) if pc else None, "lower"),
        Row(scenario, "last handler end → follow-up end", "ms", _ms(ours.series("after_last")),
            _ms(theirs.series("after_last")) if pc else None, "lower"),
    )  # fmt: skip
    notes = (
        f"{s.rounds} round(s) x {s.per_round} turns per framework after {s.warmup} warm-up; "
        "handlers: trio.sleep / asyncio.sleep then result_callback; the turn is an "
        "LLMMessagesUpdateFrame(run_llm=True) through the user aggregator",
        "trouper: (user agg, llm, assistant agg), end timed at the task's sink (after the "
        "assistant aggregator has committed); Pipecat: (user agg, llm, probe, assistant agg), "
        "its assistant aggregator does not forward the end frame",
    )
    details = {"settings": attrs.asdict(s), "trouper": attrs.asdict(ours),
               "pipecat": attrs.asdict(theirs)}  # fmt: skip
    return Report("parallel_tools", rows, details=details, notes=notes)


def _trouper_schema(cls: Any) -> Any:
    return cls(
        name="lookup",
        description="Look an item up",
        properties={"key": {"type": "string"}},
        required=["key"],
    )


_pipecat_schema = _trouper_schema


def _record_tools(
    samples: _Samples, total: float, spans: Sequence[tuple[float, float]], t0: float
) -> None:
    first_start = min(a for a, _ in spans)
    last_end = max(b for _, b in spans)
    samples.service.append(total)
    samples.add("outside", total - (last_end - first_start))
    samples.add("to_first", first_start - t0)
    samples.add("after_last", t0 + total - last_end)


# =========================================================================== interruption


@attrs.frozen
class _InterruptSettings(_Rounds):
    spacing_ms: float = 5.0
    slow_stream_after: int = 20  # text frames at the end before interrupting
    backlog_burst: int = 260
    backlog_after: int = 60
    stage_secs: float = 0.001
    rounds: int = 2
    per_round: int = 5
    warmup: int = 1
    QUICK: ClassVar[tuple[int, int, int]] = (1, 3, 1)


@attrs.define
class _Case:
    """One interruption scenario: the stream asked for, when to interrupt, how long to wait."""

    name: str
    model: str
    after: int
    slow_stage: bool
    settle: float
    mailbox_size: int | None = None


def run_interruption(options: Options) -> Report:
    """Interrupt a slow stream, and a 200-frame backlog in a slow output stage."""
    _setup()
    s = _InterruptSettings.for_options(options)
    cases = [
        _Case(
            "slow stream (5 ms/chunk)",
            model_spec(tokens=4000, spacing_ms=s.spacing_ms),
            s.slow_stream_after,
            slow_stage=False,
            settle=0.15,
        ),
        _Case(
            "200-frame backlog, 1 ms/frame stage",
            model_spec(tokens=4000, burst=s.backlog_burst, spacing_ms=1000.0),
            s.backlog_after,
            slow_stage=True,
            settle=0.5,
            mailbox_size=512,
        ),
    ]
    results: dict[str, tuple[_Samples, _Samples]] = {
        c.name: (_Samples(), _Samples()) for c in cases
    }

    with _separate_cpus() as server_cpu, server_process(cpu=server_cpu) as url:
        for case in cases:
            ours, theirs = results[case.name]

            async def trouper_round(case: _Case = case, ours: _Samples = ours) -> None:
                await _trouper_interrupt_round(url, case, s, ours)

            async def pipecat_round(case: _Case = case, theirs: _Samples = theirs) -> None:
                await _pipecat_interrupt_round(url, case, s, theirs)

            _alternate(s.rounds, trouper_round, pipecat_round)

    rows: list[Row] = []
    for case in cases:
        ours, theirs = results[case.name]
        pc = bool(theirs.series("close"))

        def worst(samples: _Samples, key: str) -> float:
            return max(samples.series(key))

        def med(samples: _Samples, key: str) -> float:
            return _ms(samples.series(key))

        rows += [
            Row(case.name, "LLMTextFrames at the end after interrupt (worst)", "frames",
                worst(ours, "stale"), worst(theirs, "stale") if pc else None, "lower",
                Target("max", 0)),
            Row(case.name, "time to the last stale frame", "ms", med(ours, "last_stale"),
                med(theirs, "last_stale") if pc else None, "lower",
                note="0 when none arrived"),
            Row(case.name, "server sees the socket closed", "ms", med(ours, "close"),
                med(theirs, "close") if pc else None, "lower", Target("max", 0.5),
                note="server's time.monotonic() - client's, same machine"),
        ]  # fmt: skip
        if ours.series("end"):
            missing = len(theirs.series("end_missing"))
            rows.append(
                Row(case.name, "interrupted response's end frame at the end", "ms",
                    med(ours, "end"), med(theirs, "end") if theirs.series("end") else None,
                    "lower", note=f"Pipecat: missing after {missing} interruption(s)"
                    if missing else "")
            )  # fmt: skip
        if case.slow_stage:
            rows.append(
                Row(
                    case.name,
                    "backlog at the interruption",
                    "frames",
                    median(ours.series("backlog")),
                    median(theirs.series("backlog")) if pc else None,
                    "lower",
                    note="frames past the LLM not yet out of the slow stage",
                )
            )
    notes = (
        f"{s.rounds} round(s) x {s.per_round} interruptions per framework and case, after "
        f"{s.warmup} warm-up; trouper: task.interrupt(); Pipecat: "
        "worker.queue_frame(InterruptionFrame()) (as 1.14's own workers do)",
        f"slow stream: interrupted once {s.slow_stream_after} LLMTextFrames reached the end; "
        f"backlog: {s.backlog_burst} chunks sent at once, then 1 per second, interrupted once "
        f"{s.backlog_after} had left the 1 ms/frame stage",
        "stale = LLMTextFrame of the interrupted turn; the interrupted response's "
        "LLMFullResponseEndFrame is expected (both frameworks send it) and reported apart",
        "the server process is pinned to the last CPU and the benchmark to the others, so "
        "the server does not wait for the interrupting client's CPU to see the close",
    )
    details = {
        "settings": attrs.asdict(s),
        "cases": {n: {"trouper": attrs.asdict(o), "pipecat": attrs.asdict(p)}
                  for n, (o, p) in results.items()},
    }  # fmt: skip
    return Report("interruption", tuple(rows), details=details, notes=notes)


@contextmanager
def _separate_cpus() -> Iterator[int | None]:
    """Keep this process (the clients under test) off the last CPU and give that CPU to the
    server (Linux, 2+ CPUs), restoring the affinity afterwards.

    Measured in the server, the time until it sees the socket close would otherwise include
    waiting for the client's own CPU: Linux tends to wake the server on the CPU of the task
    that closed the socket, which is still busy handling the interruption.
    """
    cpus = os.cpu_count() or 1
    if cpus < 2 or not hasattr(os, "sched_setaffinity"):
        yield None
        return
    before = os.sched_getaffinity(0)
    server = cpus - 1
    clients = before - {server}
    if not clients:
        yield None
        return
    os.sched_setaffinity(0, clients)
    try:
        yield server
    finally:
        os.sched_setaffinity(0, before)


def _record_interrupt(
    samples: _Samples, rec: Recorder, t_int: float, stats: dict[str, Any], text: type, end: type
) -> None:
    stale = rec.times_of(text, after=t_int)
    ends = rec.times_of(end, after=t_int)
    disconnects = stats["disconnects"]
    if not disconnects:
        raise RuntimeError("the server never saw the interrupted stream's socket close")
    samples.add("stale", float(len(stale)))
    samples.add("last_stale", (stale[-1] - t_int) if stale else 0.0)
    if ends:
        samples.add("end", ends[0] - t_int)
    else:
        samples.add("end_missing", 1.0)
    samples.add("close", disconnects[0] - t_int)


async def _trouper_interrupt_round(
    url: str, case: _Case, s: _InterruptSettings, samples: _Samples
) -> None:
    from actors import (
        LLMFullResponseEndFrame,
        LLMTextFrame,
        OpenAILLMContext,
        OpenAILLMContextFrame,
    )
    from runtime import Actor, Frame, FrameDirection

    class SlowStage(Actor[Frame]):
        """An output stage taking ``stage_secs`` per text frame (a TTS, say)."""

        accepts = (LLMTextFrame,)

        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await trio.sleep(s.stage_secs)
            await self.push_frame(frame, direction)

    rec = Recorder(trio.Event)
    llm = trouper_llm(url, case.model)
    stages: list[Any] = [llm, SlowStage(name="SlowStage")] if case.slow_stage else [llm]
    context = OpenAILLMContext(messages=list(MESSAGES))
    async with trouper_pipeline(stages, rec, mailbox_size=case.mailbox_size) as task:
        for i in range(s.warmup + s.per_round):
            reset_stats(url)
            frame = OpenAILLMContextFrame(context)
            event = rec.arm(LLMTextFrame, count=case.after)
            gc.collect()
            await task.queue_frame(frame)
            await event.wait()
            backlog = 0
            if case.slow_stage:
                for actor in task.snapshot().actors:
                    if actor.name == "SlowStage" and actor.mailbox is not None:
                        backlog = actor.mailbox.data_depth + (1 if actor.busy_with else 0)
            t_int = time.monotonic()
            task.interrupt()
            await trio.sleep(case.settle)
            stats = fetch_stats(url)
            if i >= s.warmup:
                _record_interrupt(samples, rec, t_int, stats, LLMTextFrame, LLMFullResponseEndFrame)
                if case.slow_stage:
                    samples.add("backlog", float(backlog))


async def _pipecat_interrupt_round(
    url: str, case: _Case, s: _InterruptSettings, samples: _Samples
) -> None:
    from pipecat.frames.frames import (
        Frame,
        InterruptionFrame,
        LLMContextFrame,
        LLMFullResponseEndFrame,
        LLMTextFrame,
    )
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

    class SlowStage(FrameProcessor):
        """An output stage taking ``stage_secs`` per text frame (a TTS, say)."""

        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            if isinstance(frame, LLMTextFrame):
                await asyncio.sleep(s.stage_secs)
            await self.push_frame(frame, direction)

    rec = Recorder(asyncio.Event)
    entering = Recorder(asyncio.Event)  # what the LLM pushed (inline, before the slow stage)
    llm = pipecat_llm(url, case.model)
    stages: list[Any] = [llm]
    if case.slow_stage:
        stages += [pipecat_probe(entering), SlowStage(name="SlowStage")]
    stages.append(pipecat_probe(rec))
    context = LLMContext(messages=list(PIPECAT_MESSAGES))  # type: ignore[arg-type]
    async with pipecat_pipeline(stages) as worker:
        for i in range(s.warmup + s.per_round):
            reset_stats(url)
            frame = LLMContextFrame(context=context)
            event = rec.arm(LLMTextFrame, count=case.after)
            entering.arm(LLMTextFrame, count=10**9)
            gc.collect()
            await worker.queue_frame(frame)
            await event.wait()
            backlog = len(entering.times_of(LLMTextFrame)) - len(rec.times_of(LLMTextFrame))
            t_int = time.monotonic()
            await worker.queue_frame(InterruptionFrame())
            await asyncio.sleep(case.settle)
            stats = fetch_stats(url)
            if i >= s.warmup:
                _record_interrupt(samples, rec, t_int, stats, LLMTextFrame, LLMFullResponseEndFrame)
                if case.slow_stage:
                    samples.add("backlog", float(backlog))
