"""``trouper model doctor``: is the local model able to run on this machine, and if not, why.

:func:`diagnose` checks, in order: which ``llama-server`` binary would run and how it was built
(its build record), this machine's processor, the model file (its sha256, hashed now), and a
smoke run (the server started on the model, ``/health``, a one-token completion, timed), then
compares the CPU features the server reports in its system info with the build's baseline.
Each check is one line; the report is all well only when none failed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import attrs
import trio

from ._baseline import BASELINES
from ._cpu import CPUInfo, cpu_info
from ._errors import LocalModelError, ServerStartError
from ._model import model_path, verify_model
from ._record import BuildStatus, check_build
from ._server import (
    SYSTEM_INFO_ARGS,
    ServerCommand,
    find_llama_server,
    open_local_server,
    parse_system_info,
)
from ._spec import DEFAULT_MODEL, ModelSpec

__all__ = ["DoctorCheck", "DoctorReport", "diagnose"]

INTERESTING_FEATURES = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "bmi2",
    "avx_vnni",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "sve",
    "sve2",
    "i8mm",
)
"""The processor features worth showing (those llama.cpp's CPU code can use)."""


@attrs.frozen
class DoctorCheck:
    """One line of the doctor's report."""

    name: str
    """What was checked: ``llama-server``, ``build``, ``cpu``, ``model``, ``smoke run``,
    ``server features``."""
    status: Literal["ok", "warning", "failed"]
    """``warning`` is shown but does not make the report fail."""
    detail: str
    """One line: what was found, and for a failure what to do."""


@attrs.frozen
class DoctorReport:
    """All the doctor's checks, in the order they ran."""

    checks: tuple[DoctorCheck, ...]
    """The checks; later ones are left out when an earlier failure makes them meaningless."""

    @property
    def ok(self) -> bool:
        """True when no check failed."""
        return all(check.status != "failed" for check in self.checks)


def _cpu_line(cpu: CPUInfo) -> str:
    if cpu.features is None:
        return f"{cpu.arch} {cpu.model}: its features cannot be read on this system".strip()
    shown = [name for name in INTERESTING_FEATURES if name in cpu.features]
    return f"{cpu.arch}, {cpu.model or 'unknown model'}: {' '.join(shown) or 'no SIMD features'}"


def _build_check(command: ServerCommand, cpu: CPUInfo) -> tuple[DoctorCheck, BuildStatus | None]:
    try:
        status = check_build(Path(command.argv[0]), source=command.source, cpu=cpu)
    except ServerStartError as exc:
        return DoctorCheck("build", "failed", str(exc)), None
    record = status.record
    if status.state == "recorded" and record is not None:
        detail = (
            f"trouper's portable build for {record.baseline} ({record.package}), needs "
            f"{' '.join(record.required_features) or 'nothing beyond the architecture'}; built "
            f"{record.built_at} on {record.built_on or 'an unknown CPU'} in {record.seconds:.0f} s"
        )
        return DoctorCheck("build", "ok", detail), status
    if status.state == "stale":
        return (
            DoctorCheck(
                "build",
                "failed",
                "the binary changed since trouper built it (another install replaced it, perhaps "
                "from pip's wheel cache), so how it was built is unknown; run `trouper model "
                "rebuild`",
            ),
            status,
        )
    return (
        DoctorCheck(
            "build",
            "warning",
            f"no trouper build record (the binary from {command.source} was built elsewhere): "
            "its CPU features are known only once it runs; `trouper model rebuild` makes a "
            "portable build",
        ),
        status,
    )


async def _model_check(spec: ModelSpec, model: Path | None) -> tuple[DoctorCheck, Path | None]:
    path = model if model is not None else model_path(spec)
    if not path.is_file():
        return DoctorCheck("model", "failed", f"{path} is missing; run `trouper model pull`"), None
    if model is not None and path.name != spec.filename:
        size = path.stat().st_size
        return DoctorCheck("model", "ok", f"{path} ({size / 1e6:.0f} MB; not checked)"), path
    started = time.monotonic()
    good = await trio.to_thread.run_sync(verify_model, path, spec)
    seconds = time.monotonic() - started
    if not good:
        return (
            DoctorCheck(
                "model",
                "failed",
                f"{path} fails its sha256 check ({spec.sha256[:12]}...); run `trouper model pull "
                "--force`",
            ),
            None,
        )
    detail = f"{path} ({spec.size / 1e6:.0f} MB), sha256 verified in {seconds:.1f} s"
    return DoctorCheck("model", "ok", detail), path


def _features_check(reported: tuple[str, ...], status: BuildStatus | None) -> DoctorCheck:
    if not reported:
        return DoctorCheck("server features", "warning", "llama-server printed no system info line")
    shown = " ".join(reported)
    record = status.record if status is not None and status.state == "recorded" else None
    if record is None:
        return DoctorCheck("server features", "ok", f"compiled for {shown}")
    baseline = next((b for b in BASELINES if b.name == record.baseline), None)
    if baseline is None or baseline.reports is None:
        return DoctorCheck("server features", "ok", f"compiled for {shown}")
    beyond = [name for name in reported if name not in baseline.reports]
    if beyond:
        return DoctorCheck(
            "server features",
            "failed",
            f"compiled for {shown}: {' '.join(beyond)} beyond the {record.baseline} baseline; "
            "run `trouper model rebuild`",
        )
    return DoctorCheck("server features", "ok", f"compiled for {shown} (within {record.baseline})")


async def diagnose(
    *,
    spec: ModelSpec = DEFAULT_MODEL,
    command: ServerCommand | None = None,
    model: Path | None = None,
    smoke: bool = True,
) -> DoctorReport:
    """Check the local model's server, build, CPU, model file and a smoke run; never raises
    for what it checks (each problem is a failed line of the report)."""
    checks: list[DoctorCheck] = []
    cpu = cpu_info()
    try:
        command = command if command is not None else find_llama_server()
    except LocalModelError as exc:
        checks.append(DoctorCheck("llama-server", "failed", str(exc)))
    else:
        where = " ".join(command.argv)
        checks.append(DoctorCheck("llama-server", "ok", f"{where} (from {command.source})"))
    status: BuildStatus | None = None
    if command is not None:
        build, status = _build_check(command, cpu)
        checks.append(build)
    checks.append(
        DoctorCheck("cpu", "ok" if cpu.features is not None else "warning", _cpu_line(cpu))
    )
    model_line, good_model = await _model_check(spec, model)
    checks.append(model_line)
    if not smoke or command is None or good_model is None:
        return DoctorReport(tuple(checks))
    if any(check.status == "failed" for check in checks):
        return DoctorReport(tuple(checks))
    reported: tuple[str, ...] = ()
    try:
        async with open_local_server(
            good_model,
            command=command,
            spec=spec,
            pull=False,
            progress=False,
            parallel=1,
            extra_args=SYSTEM_INFO_ARGS,
            ctx_size=512,
        ) as server:
            checks.append(
                DoctorCheck(
                    "smoke run",
                    "ok",
                    f"ready in {server.ready_seconds:.1f} s, one-token completion in "
                    f"{server.check_seconds * 1000:.0f} ms",
                )
            )
            reported = server.reported_features()
    except ServerStartError as exc:
        checks.append(DoctorCheck("smoke run", "failed", str(exc)))
        reported = parse_system_info(exc.log_tail)
    checks.append(_features_check(reported, status))
    return DoctorReport(tuple(checks))
