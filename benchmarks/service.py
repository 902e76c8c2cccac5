"""The LLM-service benchmarks (issue 4), trouper against Pipecat 1.14 on the same local server.

Every scenario starts one :mod:`benchmarks._server` process (a fast OpenAI-compatible SSE
server, scripted per request through the ``model`` name) and measures, in the same run and
against that same server, trouper's ``OpenAILLMService`` in a trouper ``Pipeline`` (under
``trio.run``), Pipecat 1.14's ``OpenAILLMService`` in a Pipecat pipeline (a ``PipelineWorker``
under ``asyncio.run``, minimal configuration) and, where it applies, a raw httpx floor on each
event loop. Rounds alternate between the two frameworks so that drift on the machine hits both
alike; each round builds a fresh pipeline, warms it up, then times several turns on it (one
pooled connection, as in a conversation). Medians are reported.

Each scenario is written once, against a :class:`~benchmarks._sides.Side`, and runs the
README's quick-start pipeline (user aggregator → ``OpenAILLMService`` → output → assistant
aggregator) with default settings on both sides; a turn starts as an application starts one
(an ``LLMMessagesUpdateFrame`` with ``run_llm``, queued to the pipeline). No timed section
is preceded by a ``gc.collect()``, the floors' neither.

Scenarios (one registry entry each):

``service_stream``
    A 2,000-token stream (0 ms spacing) from queueing the turn to the
    ``LLMFullResponseEndFrame`` at the end; ratio to the httpx floor of the same loop, measured
    right after each turn. Target: trouper at most 1.3 times the floor. Process CPU per token,
    and over the floor's. Two reference rows (trio only, no target): the floor's reading passed
    through two hops of trio memory channels to a listener, what the same chain of stages
    costs on trio's own link; and through two hops of the barest bounded mailboxes (a deque,
    a parked task) with an ``LLMTextFrame`` per text, what the hops alone cost.
``first_token``
    Queueing the turn → first ``LLMTextFrame`` at the end, minus the floor's time to its first
    content chunk (the server writes the first content chunk with the response head). Target:
    ≤ floor + 0.3 ms.
``parallel_tools``
    A response with 5 tool calls whose handlers each sleep 200 ms, then the follow-up answer:
    turn queued → the follow-up's ``LLMFullResponseEndFrame``, minus 200 ms, which includes
    the two HTTP requests; their bare-httpx floor (200 ms idle between them) is subtracted for
    the framework's own time outside the handlers. Target ≤ 3 ms on that figure.
``interruption``
    A slow stream (a chunk every 5 ms) interrupted mid-way, and a 200-frame backlog in a slow
    output stage (1 ms per frame), with default mailboxes (and once more with 512-frame
    mailboxes, a labelled non-default row): text frames of the interrupted turn that reach the
    end after the interruption (target 0), the time to the last of them, and the time until
    the *server* sees the socket closed (target ≤ 0.2 ms, measured by the server process on
    the shared monotonic clock). trouper is interrupted with ``task.interrupt()``, Pipecat
    with ``broadcast_interruption()`` on its user aggregator. The floor of that close, after
    each interrupted turn on the same loop and server: bare httpx reads as many chunks, leaves
    the rest of a burst unread for as long as the slow stage took, then makes one
    ``shutdown()`` call.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, Self

import attrs
import httpx

from runtime import logging as rlog

from . import _pipecat
from ._registry import TIMES, Options, Report, Row, Target
from ._rigs import (
    MESSAGES,
    Recorder,
    floor_actor_stages,
    floor_body,
    floor_channel_stages,
    floor_close,
    floor_deque_stages,
    floor_first_token,
    floor_stream,
    median,
)
from ._server import fetch_stats, model_spec, reset_stats, server_process
from ._sides import Samples, Side, alternate

__all__ = [
    "run_first_token",
    "run_interruption",
    "run_parallel_tools",
    "run_service_stream",
]

_MS = 1000.0


def _setup() -> None:
    rlog.configure(level="warning")
    _pipecat.quiet_logs()


def _ms(values: Sequence[float]) -> float:
    return median(values) * _MS


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

    def turns(self) -> Iterator[bool]:
        """One item per turn of a round: whether that turn is timed (after the warm-up)."""
        for i in range(self.warmup + self.per_round):
            yield i >= self.warmup


@attrs.frozen
class _Both:
    """Both frameworks' samples of one scenario, and the rows comparing them.

    Attributes:
        ours: trouper's samples.
        theirs: Pipecat's samples.
        pipecat_ran: Whether Pipecat's figures exist (else its column shows nothing).
    """

    ours: Samples
    theirs: Samples
    pipecat_ran: bool

    def row(
        self,
        scenario: str,
        metric: str,
        unit: str,
        figure: Callable[[Samples], float],
        target: Target | None = None,
        note: str = "",
    ) -> Row:
        """A row of ``figure`` (lower is better) computed on each framework's samples."""
        pipecat = figure(self.theirs) if self.pipecat_ran else None
        return Row(scenario, metric, unit, figure(self.ours), pipecat, "lower", target, note)

    def details(self) -> dict[str, Any]:
        """The raw samples, for the JSON output."""
        return {"trouper": attrs.asdict(self.ours), "pipecat": attrs.asdict(self.theirs)}


def _service(samples: Samples) -> float:
    return _ms(samples.service)


def _floor(samples: Samples) -> float:
    return _ms(samples.floor)


def _series(key: str) -> Callable[[Samples], float]:
    """The median of the extra series ``key``, in ms."""
    return lambda samples: _ms(samples.series(key))


_FLOOR_NOTE = "trouper column: under trio; Pipecat column: under asyncio"


# =========================================================================== service_stream


@attrs.frozen
class _StreamSettings(_Rounds):
    tokens: int = 2000


async def _stream_turns(
    side: Side,
    url: str,
    model: str,
    s: _StreamSettings,
    samples: Samples,
    *,
    first_token: bool,
    channels: bool = False,
) -> None:
    """One round of turns on a fresh quick-start pipeline, each followed by its httpx floor on
    the same loop, with the same preparation (none: no collection before either). Timed: to
    the end frame, or to the first ``LLMTextFrame`` with ``first_token``; the process CPU time
    of both is recorded."""
    chat_url = f"{url}/chat/completions"
    body = floor_body(model)
    floor = floor_first_token if first_token else floor_stream
    rec = side.recorder()
    llm = side.llm(url, model)
    async with (
        httpx.AsyncClient(timeout=60.0) as http,
        side.quick_start(llm, side.context(), rec) as running,
    ):
        for timed in s.turns():
            frame = side.update_frame()
            event = rec.arm(side.end_frame, keep=first_token)
            c0, t0 = time.process_time(), time.monotonic()
            await running.queue_frame(frame)
            await event.wait()
            cpu = time.process_time() - c0
            if first_token:
                service = rec.times_of(side.text_frame)[0] - t0
            else:
                _check_count(rec, s.tokens, side.name)
                service = rec.done_at - t0
            c0 = time.process_time()
            floor_secs = await floor(http, chat_url, body)
            floor_cpu = time.process_time() - c0
            if timed:
                samples.service.append(service)
                samples.floor.append(floor_secs)
                samples.cpu.append(cpu)
                samples.add("floor_cpu", floor_cpu)
            if channels and side.name == "trouper":
                # Not a floor: a reference for what the stages would cost on trio's own link.
                secs = await floor_channel_stages(http, chat_url, body)
                bare = await floor_deque_stages(http, chat_url, body)
                minimal = await floor_actor_stages(http, chat_url, body)
                if timed:
                    samples.add("channels", secs)
                    samples.add("deques", bare)
                    samples.add("actors", minimal)


def run_service_stream(options: Options) -> Report:
    """2,000-token stream through the LLM service in a pipeline, against the httpx floor."""
    _setup()
    s = _StreamSettings.for_options(options)
    model = model_spec(tokens=s.tokens)

    with server_process() as url:

        async def one_round(side: Side, samples: Samples) -> None:
            await _stream_turns(side, url, model, s, samples, first_token=False, channels=True)

        ours, theirs = alternate(s.rounds, one_round)
        late = fetch_stats(url)["late_max_ms"]

    both = _Both(ours, theirs, bool(theirs.service))
    scenario = f"{s.tokens:,} tokens, 0 ms"
    per_token = 1e6 / s.tokens
    rows = (
        both.row(scenario, "update frame → end frame", "ms", _service),
        both.row(scenario, "÷ httpx floor (same loop)", f"{TIMES} floor",
                 lambda x: median(x.service) / median(x.floor), Target("max", 1.3),
                 note="floor: trio for trouper, asyncio for Pipecat"),
        both.row(scenario, "CPU per stream", "ms", lambda x: _ms(x.cpu)),
        both.row(scenario, "CPU per token", "µs", lambda x: median(x.cpu) * per_token),
        both.row(scenario, "CPU per token over the floor's", "µs",
                 lambda x: (median(x.cpu) - median(x.series("floor_cpu"))) * per_token,
                 note="the framework's own CPU per token (process CPU, not wall time)"),
        both.row("httpx floor", "whole stream", "ms", _floor, note=_FLOOR_NOTE),
        both.row("httpx floor", "CPU per token", "µs",
                 lambda x: median(x.series("floor_cpu")) * per_token, note=_FLOOR_NOTE),
        Row("trio channel stages (reference)", "÷ httpx floor (same loop)", f"{TIMES} floor",
            median(ours.series("channels")) / median(ours.floor), None, "lower",
            note="the floor's reading through 2 hops of trio memory channels (capacity 64) "
            "to a listener: trio's own stage link, not a target"),
        Row("bare deque stages (reference)", "÷ httpx floor (same loop)", f"{TIMES} floor",
            median(ours.series("deques")) / median(ours.floor), None, "lower",
            note="the same chain with the barest bounded mailboxes and an LLMTextFrame per "
            "text: the hops alone, no runtime"),
        Row("minimal actor chain (reference)", "÷ httpx floor (same loop)", f"{TIMES} floor",
            median(ours.series("actors")) / median(ours.floor), None, "lower",
            note="the bare deque chain plus what the actor model needs per frame: an "
            "envelope with its turn per hop, a stale check, a handler and a push coroutine "
            "per stage, a listener at the end (none of trouper's other per-frame contracts)"),
    )  # fmt: skip
    notes = (
        f"{s.rounds} round(s) x {s.per_round} streams per framework after {s.warmup} warm-up; "
        "the README's quick-start pipeline (user aggregator, LLM, output, assistant "
        "aggregator), default settings; floor = httpx aiter_lines + json.loads per data line, "
        "interleaved with the service, same preparation (no gc.collect() for either)",
        f"server's worst chunk lateness {late:.2f} ms",
    )
    details = {"settings": attrs.asdict(s), **both.details()}
    return Report("service_stream", rows, details=details, notes=notes)


def _check_count(rec: Recorder, tokens: int, who: str) -> None:
    # +2: the start and end frames; anything else (metrics) is extra.
    if rec.count < tokens + 2:
        raise RuntimeError(f"{who}: only {rec.count} frames reached the end for {tokens} tokens")


# =========================================================================== first_token


@attrs.frozen
class _FirstSettings(_StreamSettings):
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

    with server_process() as url:

        async def one_round(side: Side, samples: Samples) -> None:
            await _stream_turns(side, url, model, s, samples, first_token=True)

        ours, theirs = alternate(s.rounds, one_round)

    both = _Both(ours, theirs, bool(theirs.service))
    scenario = "first token"
    rows = (
        both.row(scenario, "update frame → first LLMTextFrame", "ms", _service),
        both.row(scenario, "overhead over httpx floor", "ms",
                 lambda x: _service(x) - _floor(x), Target("max", 0.3),
                 note="median(service) - median(floor), same loop"),
        both.row("httpx floor", "request → first content chunk", "ms", _floor,
                 note=_FLOOR_NOTE),
    )  # fmt: skip
    notes = (
        f"{s.rounds} round(s) x {s.per_round} requests per framework after {s.warmup} warm-up; "
        f"stream of {s.tokens} tokens, first content chunk sent with the response head, "
        f"then one every {s.spacing_ms:g} ms",
        "p10 overhead: trouper "
        f"{_p(ours.service, 10) - _p(ours.floor, 10):.3f} ms"
        + (
            f", Pipecat {_p(theirs.service, 10) - _p(theirs.floor, 10):.3f} ms"
            if both.pipecat_ran
            else ""
        ),
    )
    details = {"settings": attrs.asdict(s), **both.details()}
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

    with server_process() as url:
        chat_url = f"{url}/chat/completions"
        tool_body = floor_body(model)
        answer_body = floor_body(model)
        answer_body["messages"] = [
            *MESSAGES,
            {"role": "tool", "tool_call_id": "call_bench0000", "content": "{}"},
        ]

        async def floors(http: httpx.AsyncClient, side: Side, samples: Samples) -> None:
            # The two requests of a turn, read with bare httpx on the same loop, with the
            # handlers' idle time between them (a process idle for 200 ms wakes up with cold
            # caches; timed apart).
            first = await floor_stream(http, chat_url, tool_body)
            await side.sleep(s.handler_secs)
            samples.floor.append(first + await floor_stream(http, chat_url, answer_body))

        async def one_round(side: Side, samples: Samples) -> None:
            spans: list[tuple[float, float]] = []

            async def lookup(params: Any) -> None:
                start = time.monotonic()
                await side.sleep(s.handler_secs)
                spans.append((start, time.monotonic()))
                await params.result_callback({"key": params.arguments.get("key"), "value": 42})

            llm = side.llm(url, model)
            llm.register_function("lookup", lookup)
            rec = side.recorder()
            async with (
                httpx.AsyncClient(timeout=60.0) as http,
                side.quick_start(llm, side.context(tools=side.tools()), rec) as running,
            ):
                for timed in s.turns():
                    frame = side.update_frame()
                    event = rec.arm(side.end_frame, count=2)
                    spans.clear()
                    t0 = time.monotonic()
                    await running.queue_frame(frame)
                    await event.wait()
                    if len(spans) != s.calls:
                        raise RuntimeError(f"{side.name} ran {len(spans)} of {s.calls} handlers")
                    if timed:
                        _record_tools(samples, rec.done_at - t0, spans, t0)
                        await floors(http, side, samples)

        ours, theirs = alternate(s.rounds, one_round)

    both = _Both(ours, theirs, bool(theirs.service))
    handler_ms = s.handler_secs * _MS
    scenario = f"{s.calls} x {handler_ms:g} ms tools"
    rows = (
        both.row(scenario, "push → follow-up end", "ms", _service),
        both.row(scenario, f"outside the handlers (- {handler_ms:g} ms)", "ms",
                 lambda x: _service(x) - handler_ms,
                 note="includes the 2 HTTP requests (their bare-httpx floor is the row below)"),
        both.row(scenario, "outside the handlers' real span", "ms", _series("outside"),
                 note="total - (last handler end - first handler start): removes sleep overshoot"),
        both.row(scenario, "framework's own time outside the handlers", "ms",
                 lambda x: _series("outside")(x) - _floor(x), Target("max", 3.0),
                 note="real span minus the 2 requests' bare-httpx floor (same conditions)"),
        both.row("httpx floor", "tool request + follow-up request", "ms", _floor,
                 note=_FLOOR_NOTE),
        both.row(scenario, "before the first handler starts", "ms", _series("to_first")),
        both.row(scenario, "last handler end → follow-up end", "ms", _series("after_last")),
    )  # fmt: skip
    notes = (
        f"{s.rounds} round(s) x {s.per_round} turns per framework after {s.warmup} warm-up; "
        "handlers: trio.sleep / asyncio.sleep then result_callback; the turn is an "
        "LLMMessagesUpdateFrame(run_llm=True) through the user aggregator",
        "the README's quick-start pipeline: trouper (user agg, llm, output, assistant agg), "
        "end timed at the task's end (after the assistant aggregator has committed); Pipecat "
        "(user agg, llm, output, probe, assistant agg): its assistant aggregator does not "
        "forward the end frame",
    )
    details = {"settings": attrs.asdict(s), **both.details()}
    return Report("parallel_tools", rows, details=details, notes=notes)


def _record_tools(
    samples: Samples, total: float, spans: Sequence[tuple[float, float]], t0: float
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
            "200-frame backlog, 1 ms/frame output",
            model_spec(tokens=4000, burst=s.backlog_burst, spacing_ms=1000.0),
            s.backlog_after,
            slow_stage=True,
            settle=0.5,
        ),
        _Case(  # a non-default setting: a labelled extra row
            "200-frame backlog, 1 ms/frame output, 512-frame mailboxes (non-default)",
            model_spec(tokens=4000, burst=s.backlog_burst, spacing_ms=1000.0),
            s.backlog_after,
            slow_stage=True,
            settle=0.5,
            mailbox_size=512,
        ),
    ]
    results: dict[str, tuple[Samples, Samples]] = {}

    with _separate_cpus() as server_cpu, server_process(cpu=server_cpu) as url:
        for case in cases:

            async def one_round(side: Side, samples: Samples, case: _Case = case) -> None:
                await _interrupt_round(side, url, case, s, samples)

            results[case.name] = alternate(s.rounds, one_round)

    rows: list[Row] = []
    for case in cases:
        ours, theirs = results[case.name]
        both = _Both(ours, theirs, bool(theirs.series("close")))
        rows += [
            both.row(case.name, "LLMTextFrames at the end after interrupt (worst)", "frames",
                     lambda x: max(x.series("stale")), Target("max", 0)),
            both.row(case.name, "time to the last stale frame", "ms", _series("last_stale"),
                     note="0 when none arrived"),
            both.row(case.name, "server sees the socket closed", "ms", _series("close"),
                     Target("max", 0.2) if case.mailbox_size is None else None,
                     note="server's time.monotonic() - client's, same machine"),
            both.row(case.name, "httpx floor: server sees the socket closed", "ms",
                     _series("floor_close"),
                     note="bare httpx, same loop and server state: one shutdown() call"),
        ]  # fmt: skip
        if ours.series("end"):
            missing = len(theirs.series("end_missing"))
            with_end = _Both(ours, theirs, bool(theirs.series("end")))
            rows.append(
                with_end.row(case.name, "interrupted response's end frame at the end", "ms",
                             _series("end"), note=f"Pipecat: missing after {missing} "
                             "interruption(s)" if missing else "")
            )  # fmt: skip
        if case.slow_stage:
            rows.append(
                both.row(case.name, "backlog at the interruption", "frames",
                         lambda x: median(x.series("backlog")),
                         note="frames past the LLM not yet out of the slow stage")
            )  # fmt: skip
    notes = (
        f"{s.rounds} round(s) x {s.per_round} interruptions per framework and case, after "
        f"{s.warmup} warm-up; the README's quick-start pipeline, default settings (one labelled "
        "row with 512-frame mailboxes); trouper: task.interrupt(); Pipecat: "
        "broadcast_interruption() on the user aggregator (its fastest public path)",
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


async def _interrupt_round(
    side: Side, url: str, case: _Case, s: _InterruptSettings, samples: Samples
) -> None:
    """One round of interrupted turns on a fresh quick-start pipeline (for the backlog cases,
    with a slow output stage)."""
    rec = side.recorder()
    llm = side.llm(url, case.model)
    secs = s.stage_secs if case.slow_stage else 0.0
    chat_url = f"{url}/chat/completions"
    async with (
        httpx.AsyncClient(timeout=60.0) as http,
        side.quick_start(
            llm, side.context(), rec, output_secs=secs, mailbox_size=case.mailbox_size
        ) as running,
    ):
        for timed in s.turns():
            reset_stats(url)
            frame = side.update_frame()
            event = rec.arm(side.text_frame, count=case.after)
            running.output.arm()
            await running.queue_frame(frame)
            await event.wait()
            backlog = running.backlog()
            t_int = time.monotonic()
            await running.interrupt()
            await side.sleep(case.settle)
            stats = fetch_stats(url)
            if timed:
                _record_interrupt(samples, rec, t_int, stats, side)
                if case.slow_stage:
                    samples.add("backlog", float(backlog))
            # The floor, on the same loop, with the same server state: as many chunks read,
            # the rest of a burst left unread for as long as the slow stage took, then one
            # shutdown call.
            reset_stats(url)
            wait = case.after * s.stage_secs if case.slow_stage else 0.0
            t_shut = await floor_close(
                http, chat_url, floor_body(case.model), after=case.after, wait=wait,
                sleep=side.sleep,
            )  # fmt: skip
            await side.sleep(case.settle)
            disconnects = fetch_stats(url)["disconnects"]
            if not disconnects:
                raise RuntimeError("floor: the server never saw the socket close")
            if timed:
                samples.add("floor_close", disconnects[0] - t_shut)


def _record_interrupt(
    samples: Samples, rec: Recorder, t_int: float, stats: dict[str, Any], side: Side
) -> None:
    stale = rec.times_of(side.text_frame, after=t_int)
    ends = rec.times_of(side.end_frame, after=t_int)
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
