"""Which CPU features trouper compiles llama.cpp for: a portable baseline, never ``-march=native``.

llama.cpp builds for the build machine's own processor by default (``GGML_NATIVE``). A binary
built that way on a machine with AVX-512 or AMX dies by SIGILL on one without (and on some
machines that list AMX but do not let programs use it). trouper therefore always compiles for
an explicit baseline, picked from what this machine has:

=========== ======================================= ==========================================
baseline    compiled for                            runs on
=========== ======================================= ==========================================
x86-64-v3   SSE4.2, AVX, AVX2, FMA, F16C, BMI2      x86-64 processors since 2013-2015
x86-64-v2   SSE4.2 (and SSE3, SSSE3)                older x86-64 processors
x86-64      the architecture's minimum (SSE2)       any x86-64 processor
armv8-a     the compiler's generic Arm 64 (NEON)    any 64-bit Arm processor
generic     the compiler's default for the arch     other architectures
=========== ======================================= ==========================================

AVX-512, AVX-VNNI and AMX are always off: measured on the local model, they bring little for
a 0.5B model on 2 cores (see ``docs/local-model.md``) and are exactly what breaks moved builds.
``TROUPER_LLAMA_BASELINE`` forces a lower baseline, e.g. to build an image for older hosts.
"""

from __future__ import annotations

import os

import attrs

from ._cpu import CPUInfo

__all__ = ["BASELINES", "BASELINE_ENV", "Baseline", "choose_baseline"]

BASELINE_ENV = "TROUPER_LLAMA_BASELINE"
"""Environment variable naming the baseline to build for instead of the best one that fits."""

COMMON_CMAKE_ARGS = ("-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF")
_X86_OFF = (
    "-DGGML_AVX_VNNI=OFF",
    "-DGGML_AVX512=OFF",
    "-DGGML_AVX512_VBMI=OFF",
    "-DGGML_AVX512_VNNI=OFF",
    "-DGGML_AVX512_BF16=OFF",
    "-DGGML_AMX_TILE=OFF",
    "-DGGML_AMX_INT8=OFF",
    "-DGGML_AMX_BF16=OFF",
)


def _switches(on: tuple[str, ...], off: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"-DGGML_{name}=ON" for name in on) + tuple(f"-DGGML_{name}=OFF" for name in off)


@attrs.frozen
class Baseline:
    """One portable build target: its CMake switches and the CPU features it needs."""

    name: str
    """``x86-64-v3``, ``x86-64-v2``, ``x86-64``, ``armv8-a`` or ``generic``."""
    arch: str
    """The architecture it is for (``x86_64``, ``aarch64``; ``*`` for any)."""
    cmake_args: tuple[str, ...]
    """The CMake switches (``-DGGML_NATIVE=OFF`` and the instruction sets), without the common
    ones that turn off llama.cpp's tests and examples."""
    required: frozenset[str]
    """The features (``/proc/cpuinfo`` spelling) a processor needs to run this build."""
    reports: frozenset[str] | None
    """The CPU features llama-server may report in its system info for this build
    (``AVX2``, ``NEON``, ...); ``None`` where not known (generic builds)."""

    def all_cmake_args(self) -> tuple[str, ...]:
        """The complete ``CMAKE_ARGS`` of this build."""
        return (*COMMON_CMAKE_ARGS, *self.cmake_args)


BASELINES: tuple[Baseline, ...] = (
    Baseline(
        name="x86-64-v3",
        arch="x86_64",
        cmake_args=(
            "-DGGML_NATIVE=OFF",
            *_switches(("SSE42", "AVX", "AVX2", "FMA", "F16C", "BMI2"), ()),
            *_X86_OFF,
        ),
        required=frozenset({"pni", "ssse3", "sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"}),
        reports=frozenset({"SSE3", "SSSE3", "AVX", "AVX2", "F16C", "FMA", "BMI2"}),
    ),
    Baseline(
        name="x86-64-v2",
        arch="x86_64",
        cmake_args=(
            "-DGGML_NATIVE=OFF",
            *_switches(("SSE42",), ("AVX", "AVX2", "FMA", "F16C", "BMI2")),
            *_X86_OFF,
        ),
        required=frozenset({"pni", "ssse3", "sse4_2"}),
        reports=frozenset({"SSE3", "SSSE3"}),
    ),
    Baseline(
        name="x86-64",
        arch="x86_64",
        cmake_args=(
            "-DGGML_NATIVE=OFF",
            *_switches((), ("SSE42", "AVX", "AVX2", "FMA", "F16C", "BMI2")),
            *_X86_OFF,
        ),
        required=frozenset(),
        reports=frozenset(),
    ),
    Baseline(
        name="armv8-a",
        arch="aarch64",
        cmake_args=("-DGGML_NATIVE=OFF",),
        required=frozenset(),
        reports=frozenset({"NEON", "ARM_FMA"}),
    ),
    Baseline(
        name="generic",
        arch="*",
        cmake_args=("-DGGML_NATIVE=OFF",),
        required=frozenset(),
        reports=None,
    ),
)

NON_ISA_REPORTS = frozenset({"LLAMAFILE", "OPENMP", "REPACK", "ACCELERATE", "KLEIDIAI", "CPU_HBM"})
"""Entries of llama-server's system info that are build options, not instruction sets."""


def _by_name(name: str) -> Baseline:
    for baseline in BASELINES:
        if baseline.name == name:
            return baseline
    known = ", ".join(b.name for b in BASELINES)
    raise ValueError(f"unknown llama.cpp build baseline {name!r}: choose one of {known}")


def choose_baseline(cpu: CPUInfo, *, forced: str | None = None) -> Baseline:
    """Return the baseline to build for on ``cpu``: the highest one it can run.

    ``forced`` (default: ``$TROUPER_LLAMA_BASELINE``) names one explicitly; it must be for this
    architecture (or ``generic``). Where the features cannot be read, x86-64 gets ``x86-64-v3``.
    """
    if forced is None:
        forced = os.environ.get(BASELINE_ENV, "").strip() or None
    if forced is not None:
        baseline = _by_name(forced)
        if baseline.arch not in ("*", cpu.arch):
            raise ValueError(
                f"{BASELINE_ENV}={forced} is for {baseline.arch}, but this machine is "
                f"{cpu.arch}: unset it or choose a baseline for {cpu.arch}"
            )
        return baseline
    for baseline in BASELINES:
        if baseline.arch == cpu.arch and not cpu.lacks(baseline.required):
            return baseline
    return BASELINES[-1]
