"""Command line: ``python -m benchmarks <name|all> [--quick] [--json FILE] [--list]``.

Runs the named benchmarks (see :mod:`benchmarks._registry`), prints one table with trouper's
figure, Pipecat's figure from the same run, trouper's advantage, the target and whether it is
met, and optionally writes everything (raw samples included) to a JSON file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from ._registry import TIMES, Options, Report, Row, available, run_benchmark

__all__ = ["main"]


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if math.isinf(value):
        return "∞"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _verdict(row: Row) -> str:
    passed = row.passed
    if passed is None:
        return ""
    return "[green]pass[/green]" if passed else "[red]FAIL[/red]"


def render(reports: Sequence[Report], console: Console) -> None:
    """Print the results of ``reports`` as one table, then their notes."""
    table = Table(title="trouper vs Pipecat (same run, same machine)", show_lines=False)
    table.add_column("benchmark")
    table.add_column("scenario")
    table.add_column("metric")
    table.add_column("unit")
    table.add_column("trouper", justify="right")
    table.add_column("Pipecat", justify="right")
    table.add_column("advantage", justify="right")
    table.add_column("target", justify="right")
    table.add_column("result")
    for report in reports:
        for i, row in enumerate(report.rows):
            adv = row.advantage
            table.add_row(
                report.name if i == 0 else "",
                row.scenario,
                row.metric,
                row.unit,
                _fmt(row.trouper),
                _fmt(row.pipecat),
                "—" if adv is None else f"{_fmt(adv)}{TIMES}",
                row.target.describe(row.unit) if row.target else "",
                _verdict(row),
            )
        if not report.rows:
            table.add_row(report.name, "(no rows)", "", "", "", "", "", "", "")
    console.print(table)
    console.print("advantage = how many times better trouper is (> 1: trouper better)")
    for report in reports:
        for note in report.notes:
            console.print(f"[dim]{report.name}:[/dim] {note}")


def _machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the benchmarks, print the table; exit status 1 if a target failed."""
    benches = available()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="trouper benchmarks, with Pipecat 1.14 measured in the same run.",
    )
    parser.add_argument("names", nargs="*", help=f"'all' or any of: {', '.join(benches)}")
    parser.add_argument("--quick", action="store_true", help="smaller, noisier smoke run")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    # Wide enough for the table when the output is a file or a pipe.
    console = Console(width=None if sys.stdout.isatty() else 150)

    if args.list or not args.names:
        for name, bench in benches.items():
            console.print(f"[bold]{name}[/bold]  {bench.description}")
        return 0 if args.list else 2

    names: list[str] = []
    for name in args.names:
        if name == "all":
            names.extend(n for n in benches if n not in names)
        elif name in benches:
            if name not in names:
                names.append(name)
        else:
            parser.error(f"unknown benchmark {name!r}; choose from: all, {', '.join(benches)}")

    options = Options(quick=args.quick)
    reports: list[Report] = []
    failed: list[str] = []
    for name in names:
        console.print(f"[bold]running {name}[/bold]{' (quick)' if args.quick else ''} ...")
        started = time.perf_counter()
        try:
            report = run_benchmark(benches[name], options)
        except Exception:
            console.print(f"[red]{name} failed:[/red]")
            console.print(traceback.format_exc(), markup=False, highlight=False)
            failed.append(name)
            continue
        console.print(f"  done in {time.perf_counter() - started:.1f} s")
        reports.append(report)

    render(reports, console)
    if args.json:
        payload = {
            "machine": _machine(),
            "quick": args.quick,
            "benchmarks": {
                r.name: {
                    "rows": [row.to_json() for row in r.rows],
                    "notes": list(r.notes),
                    "details": r.details,
                }
                for r in reports
            },
            "errors": failed,
        }
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2, default=repr)
        console.print(f"results written to {args.json}")
    missed = [r.name for r in reports for row in r.rows if row.passed is False]
    return 1 if failed or missed else 0


if __name__ == "__main__":
    sys.exit(main())
