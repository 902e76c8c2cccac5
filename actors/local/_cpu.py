"""This machine's processor: its architecture, its name and the instruction-set features it has.

llama.cpp's CPU code is compiled for a set of instruction-set extensions (AVX2, FMA, ...). A
binary that uses one this processor lacks dies by SIGILL, so trouper compares the features a
build needs (recorded when it was built, see ``_build.py``) with the ones read here before it
starts the server. On Linux they come from ``/proc/cpuinfo`` (``flags`` on x86, ``Features`` on
Arm); elsewhere they are unknown (``None``), and only the self-check can tell.
"""

from __future__ import annotations

import platform
from pathlib import Path

import attrs

__all__ = ["CPUInfo", "cpu_info", "normalize_arch"]

CPUINFO = Path("/proc/cpuinfo")

_ARCH_ALIASES = {
    "amd64": "x86_64",
    "x64": "x86_64",
    "x86-64": "x86_64",
    "arm64": "aarch64",
    "armv8": "aarch64",
}


def normalize_arch(machine: str) -> str:
    """Return the canonical architecture name (``x86_64``, ``aarch64``, ...) for ``machine``."""
    lowered = machine.strip().lower()
    return _ARCH_ALIASES.get(lowered, lowered)


@attrs.frozen
class CPUInfo:
    """What this machine's processor is and can run."""

    arch: str
    """Canonical architecture: ``x86_64``, ``aarch64``, ..."""
    model: str
    """The processor's name as the system reports it (may be empty)."""
    features: frozenset[str] | None
    """Instruction-set features in ``/proc/cpuinfo`` spelling (``avx2``, ``fma``, ``asimd``),
    lower case; ``None`` where they cannot be read (not Linux)."""

    def lacks(self, required: frozenset[str]) -> list[str]:
        """Return the features of ``required`` this processor does not have, sorted.

        Empty when all are there, and also when this machine's features are unknown.
        """
        if self.features is None:
            return []
        return sorted(required - self.features)


def _parse_cpuinfo(text: str) -> tuple[str, frozenset[str] | None]:
    model = ""
    features: set[str] | None = None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
        elif key in ("flags", "features") and features is None:
            features = {token.lower() for token in value.split()}
    return model, frozenset(features) if features is not None else None


def cpu_info(cpuinfo: Path = CPUINFO) -> CPUInfo:
    """Read this machine's processor description (``cpuinfo`` is replaceable for tests)."""
    arch = normalize_arch(platform.machine())
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return CPUInfo(arch=arch, model=platform.processor(), features=None)
    model, features = _parse_cpuinfo(text)
    return CPUInfo(arch=arch, model=model or platform.processor(), features=features)
