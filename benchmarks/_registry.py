"""The benchmark registry and the result types every benchmark reports.

A benchmark is a callable taking :class:`Options` and returning a :class:`Report` (or a list
of :class:`Row`). A synchronous callable is called as is (it runs its own event loops: trio
for trouper, ``asyncio.run`` for Pipecat); a coroutine function is run with ``trio.run``.

Benchmarks are registered lazily, by ``"module:function"`` path, so that ``python -m
benchmarks frame_throughput`` imports neither Pipecat nor the other scenarios' modules until
they are needed. A module may also register itself at import time::

    from benchmarks._registry import register

    register("my_scenario", "benchmarks.my_module:run", "what it measures")
    # or, once imported, with the callable itself:
    register("my_scenario", run, "what it measures")

An optional module (one that may not exist yet, such as ``benchmarks.stream_client``) is
registered with ``optional=True``: it is listed only if the module can be found, and a
failure to import it is reported instead of aborting the whole run.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, TypeAlias

import attrs

__all__ = [
    "REGISTRY",
    "TIMES",
    "Benchmark",
    "Options",
    "Report",
    "Row",
    "Target",
    "available",
    "register",
    "run_benchmark",
    "run_stream_client",
]

#: The multiplication sign used in ratios.
TIMES = "\N{MULTIPLICATION SIGN}"


@attrs.frozen
class Options:
    """What the command line asked for.

    Args:
        quick: Fewer frames and repetitions (a smoke run; figures are noisier).
    """

    quick: bool = False


@attrs.frozen
class Target:
    """The goal a row is judged against.

    ``kind`` is ``"advantage"`` (trouper must be at least ``value`` times better than Pipecat,
    in the row's ``better`` direction), ``"max"`` (trouper's figure at most ``value``) or
    ``"min"`` (trouper's figure at least ``value``).
    """

    kind: Literal["advantage", "max", "min"]
    value: float

    def describe(self, unit: str) -> str:
        """Human-readable form, e.g. ``≥ 5x`` (with a multiplication sign) or ``≤ 2 µs``."""
        if self.kind == "advantage":
            return f"≥ {self.value:g}{TIMES}"
        sign = "≤" if self.kind == "max" else "≥"
        return f"{sign} {self.value:g} {unit}".rstrip()


@attrs.frozen
class Row:
    """One measured figure, trouper against Pipecat.

    Args:
        scenario: Which benchmark scenario (``"burst"``, ``"ping"`` ...).
        metric: What is measured (``"throughput"``, ``"p99 latency"`` ...).
        unit: Unit of both figures.
        trouper: trouper's figure (median over repetitions).
        pipecat: Pipecat's figure measured in the same run (``None``: not applicable).
        better: Whether a higher or a lower figure is better.
        target: The goal, if this row has one.
        note: Anything worth knowing when reading the figure.
    """

    scenario: str
    metric: str
    unit: str
    trouper: float
    pipecat: float | None
    better: Literal["higher", "lower"]
    target: Target | None = None
    note: str = ""

    @property
    def advantage(self) -> float | None:
        """How many times better trouper is than Pipecat (> 1: trouper is better)."""
        if self.pipecat is None:
            return None
        num, den = (
            (self.trouper, self.pipecat)
            if self.better == "higher"
            else (self.pipecat, self.trouper)
        )
        if den <= 0:
            return math.inf if num > 0 else None
        return num / den

    @property
    def passed(self) -> bool | None:
        """Whether the target is met (``None`` when the row has no target)."""
        target = self.target
        if target is None:
            return None
        if target.kind == "advantage":
            adv = self.advantage
            return adv is not None and adv >= target.value
        if target.kind == "max":
            return self.trouper <= target.value
        return self.trouper >= target.value

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (figures, ratio, target and verdict)."""
        return {
            "scenario": self.scenario,
            "metric": self.metric,
            "unit": self.unit,
            "trouper": self.trouper,
            "pipecat": self.pipecat,
            "better": self.better,
            "advantage": self.advantage,
            "target": None if self.target is None else self.target.describe(self.unit),
            "passed": self.passed,
            "note": self.note,
        }


@attrs.frozen
class Report:
    """What one benchmark returns: its rows, plus free-form details for the JSON output."""

    name: str
    rows: tuple[Row, ...]
    details: dict[str, Any] = attrs.Factory(dict)
    notes: tuple[str, ...] = ()


BenchmarkFn: TypeAlias = Callable[[Options], "Report | Sequence[Row] | Awaitable[Any]"]


@attrs.define
class Benchmark:
    """A registry entry: a callable, or the ``"module:function"`` path that provides it."""

    name: str
    target: str | Callable[..., Any]
    description: str = ""
    optional: bool = False
    requires: str | None = None

    def is_available(self) -> bool:
        """Whether the benchmark can be loaded (its module, or ``requires``, exists)."""
        if self.requires is not None:
            module = self.requires
        elif callable(self.target):
            return True
        else:
            module = self.target.partition(":")[0]
        try:
            return importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            return False

    def load(self) -> Callable[..., Any]:
        """Import the module (first use only) and return the callable."""
        if callable(self.target):
            return self.target
        module_name, _, attr = self.target.partition(":")
        module = importlib.import_module(module_name)
        # The module may have registered itself under this name with the real callable.
        entry = REGISTRY.get(self.name)
        if entry is not None and entry is not self and callable(entry.target):
            return entry.target
        if entry is self and callable(self.target):
            return self.target
        fn: object = getattr(module, attr or "run", None)
        if not callable(fn):
            raise LookupError(f"benchmark {self.name!r}: {self.target!r} is not a callable")
        self.target = fn
        return fn


#: name → entry. Modules add to it with :func:`register`.
REGISTRY: dict[str, Benchmark] = {}


def register(
    name: str,
    target: str | Callable[..., Any],
    description: str = "",
    *,
    optional: bool = False,
    requires: str | None = None,
) -> None:
    """Add (or replace) a benchmark.

    Args:
        name: What to type after ``python -m benchmarks``.
        target: The callable, or ``"package.module:function"`` to import lazily.
        description: One line for ``python -m benchmarks --list``.
        optional: The module may be missing; list it only when it exists.
        requires: For an adapter: the module whose presence makes the benchmark available
            (default: the target's module).
    """
    previous = REGISTRY.get(name)
    if previous is not None and not description:
        description = previous.description
    REGISTRY[name] = Benchmark(name, target, description, optional, requires)


def available() -> dict[str, Benchmark]:
    """The registered benchmarks that can be loaded, in registration order."""
    return {n: b for n, b in REGISTRY.items() if not b.optional or b.is_available()}


def run_benchmark(bench: Benchmark, options: Options) -> Report:
    """Load and run one benchmark; normalise what it returns into a :class:`Report`."""
    fn = bench.load()
    params = _positional_params(fn)
    args: tuple[Any, ...] = (options,) if params else ()
    if inspect.iscoroutinefunction(fn):
        import trio

        async def main() -> Any:
            return await fn(*args)

        result: Any = trio.run(main)
    else:
        result = fn(*args)
    return _as_report(bench.name, result)


def _positional_params(fn: Callable[..., Any]) -> int:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return 1
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(
        1
        for p in sig.parameters.values()
        if p.kind in kinds or p.kind is inspect.Parameter.VAR_POSITIONAL
    )


async def run_stream_client(options: Options) -> Report:
    """Adapter for :mod:`benchmarks.stream_client`, which reports through a callback.

    Its ``run(report, *, tokens, repeat)`` calls ``report(name, figures)`` for the ``client``,
    ``floor`` and ``ratio`` lines; they become rows (the comparison there is trouper's
    client against a raw httpx floor, not Pipecat, so the Pipecat column stays empty and
    the floor is in the notes). If the module registers a callable of its own under
    ``"stream_client"`` when imported, that one is run instead.
    """
    module = importlib.import_module("benchmarks.stream_client")
    entry = REGISTRY.get("stream_client")
    if entry is not None and callable(entry.target) and entry.target is not run_stream_client:
        own = entry.target
        result = own(options)
        if inspect.isawaitable(result):
            result = await result
        return _as_report("stream_client", result)
    lines: dict[str, dict[str, float]] = {}

    def collect(name: str, figures: Any) -> None:
        lines[name] = {str(k): float(v) for k, v in dict(figures).items()}

    tokens: int = getattr(module, "DEFAULT_TOKENS", 2000)
    await module.run(collect, repeat=5 if options.quick else 20)
    client, floor, ratio = lines["client"], lines["floor"], lines["ratio"]
    scenario = f"stream {tokens:,} tokens"
    rows = (
        Row(scenario, "client median", "ms", client["median_ms"], None, "lower"),
        Row(scenario, "client min", "ms", client["min_ms"], None, "lower"),
        Row(
            scenario,
            "client / httpx floor (min)",
            "ratio",
            ratio["min"],
            None,
            "lower",
            Target("max", 1.3),
            note="the ratio of the minimums is the least sensitive to other load",
        ),
        Row(scenario, "client / httpx floor (median)", "ratio", ratio["median"], None, "lower"),
    )
    notes = (
        f"httpx floor: median {floor['median_ms']:.2f} ms, min {floor['min_ms']:.2f} ms "
        "(raw httpx stream + json.loads per line, same server process)",
    )
    return Report("stream_client", rows, details=lines, notes=notes)


def _as_report(name: str, result: Any) -> Report:
    if isinstance(result, Report):
        return result
    if isinstance(result, Row):
        return Report(name, (result,))
    if isinstance(result, list | tuple) and all(isinstance(r, Row) for r in result):
        return Report(name, tuple(result))
    # Unknown shape (a benchmark written to another contract): keep it for the JSON output.
    return Report(name, (), details={"result": result}, notes=(repr(result)[:2000],))


# --------------------------------------------------------------------------- built-ins

register(
    "frame_throughput",
    "benchmarks.frame_throughput:run",
    "10 pass-through stages: burst frames/s, µs per hop, one-in-flight and burst latency",
)
register(
    "stream_client",
    "benchmarks._registry:run_stream_client",
    "LLM client stream against raw httpx on a local OpenAI-compatible SSE server",
    optional=True,
    requires="benchmarks.stream_client",
)
register(
    "service_stream",
    "benchmarks.service:run_service_stream",
    "2,000-token stream through OpenAILLMService in a pipeline vs the httpx floor and Pipecat",
    optional=True,
)
register(
    "first_token",
    "benchmarks.service:run_first_token",
    "context frame to first LLMTextFrame, overhead over the httpx floor, vs Pipecat",
    optional=True,
)
register(
    "parallel_tools",
    "benchmarks.service:run_parallel_tools",
    "5 tool calls of 200 ms each and the follow-up answer: time outside the handlers",
    optional=True,
)
register(
    "interruption",
    "benchmarks.service:run_interruption",
    "interrupting a slow stream and a 200-frame backlog: stale frames, socket close at server",
    optional=True,
)
register(
    "sessions",
    "benchmarks.sessions:run",
    "50/200/500(/2,000) concurrent one-turn sessions: wall time, CPU, memory per session",
    optional=True,
)
register(
    "storage",
    "benchmarks.storage:run",
    "conversation storage (SQLite, Redis): append p50/p99, longest loop step with 500 sessions",
)
register(
    "cluster",
    "benchmarks.cluster:run",
    "sessions across processes on Redis: first output and interruption vs in-process, "
    "N sessions on 1 vs 2 worker processes",
)
