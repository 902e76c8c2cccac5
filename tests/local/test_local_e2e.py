"""End-to-end: the real llama-server on the real local model, checked at the wire level.

These need ``make local`` (llama-server built, model pulled). Without them they skip -- except
under ``CI=true``, where the ``local_llm_server`` fixture makes them fail instead.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from actors.local import (
    BASELINES,
    SYSTEM_INFO_ARGS,
    ServerCommand,
    cached_model,
    check_build,
    choose_baseline,
    find_llama_server,
    open_local_server,
    self_check,
)

from ..conftest import REAL_MODELS_DIR, LocalLLM

pytestmark = pytest.mark.e2e

Chunk = dict[str, Any]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name"}},
            "required": ["city"],
        },
    },
}
# A 1x1 PNG.
PNG = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQ"
    "DwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


async def _stream(server: LocalLLM, body: dict[str, Any]) -> tuple[list[Chunk], bool]:
    """POST a streamed chat completion; return its JSON chunks and whether ``[DONE]`` came."""
    request = {
        "model": server.model,
        "stream": True,
        "temperature": 0,
        "stream_options": {"include_usage": True},
        **body,
    }
    chunks: list[Chunk] = []
    done = False
    with trio.fail_after(120):
        async with (
            httpx.AsyncClient(timeout=60, trust_env=False) as client,
            client.stream("POST", f"{server.base_url}/chat/completions", json=request) as response,
        ):
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line.removeprefix("data: ")
                if data == "[DONE]":
                    done = True  # read on to the end of the stream: nothing may follow
                    continue
                assert not done, "data after [DONE]"
                chunks.append(json.loads(data))
    return chunks, done


def _deltas(chunks: list[Chunk]) -> list[Chunk]:
    return [c["choices"][0]["delta"] for c in chunks if c.get("choices")]


def _finish_reasons(chunks: list[Chunk]) -> list[str]:
    return [
        c["choices"][0]["finish_reason"]
        for c in chunks
        if c.get("choices") and c["choices"][0].get("finish_reason")
    ]


def _usage(chunks: list[Chunk]) -> dict[str, int]:
    usages = [c for c in chunks if c.get("usage") and not c.get("choices")]
    assert len(usages) == 1, "exactly one usage chunk (choices == [])"
    usage: dict[str, int] = usages[0]["usage"]
    return usage


async def test_streamed_text_answer(local_llm_server: LocalLLM) -> None:
    chunks, done = await _stream(
        local_llm_server,
        {"messages": [{"role": "user", "content": "Say hello in one short sentence."}]},
    )
    assert done
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    deltas = _deltas(chunks)
    assert deltas[0]["role"] == "assistant"
    text = "".join(d.get("content") or "" for d in deltas)
    assert text.strip()
    assert sum(1 for d in deltas if d.get("content")) >= 2  # really streamed, token by token
    assert not any(d.get("tool_calls") for d in deltas)
    assert _finish_reasons(chunks) == ["stop"]
    usage = _usage(chunks)
    assert usage["prompt_tokens"] > 0
    assert usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@pytest.mark.parametrize(
    "question", ["What's the weather in Paris?", "Is it raining in Tokyo right now?"]
)
async def test_streamed_tool_call(local_llm_server: LocalLLM, question: str) -> None:
    chunks, done = await _stream(
        local_llm_server,
        {"messages": [{"role": "user", "content": question}], "tools": [WEATHER_TOOL]},
    )
    assert done
    calls = [tc for d in _deltas(chunks) for tc in d.get("tool_calls") or []]
    assert len(calls) >= 2, "the call's arguments arrive in several deltas"
    first = calls[0]
    assert first["index"] == 0
    assert first["id"]
    assert first["type"] == "function"
    assert first["function"]["name"] == "get_weather"
    assert all(tc["index"] == 0 for tc in calls)
    arguments = json.loads("".join(tc["function"].get("arguments") or "" for tc in calls))
    assert isinstance(arguments, dict)
    assert isinstance(arguments.get("city"), str)
    assert _finish_reasons(chunks) == ["tool_calls"]
    assert _usage(chunks)["completion_tokens"] > 0


async def test_tool_result_follow_up_gets_a_text_answer(local_llm_server: LocalLLM) -> None:
    messages = [
        {"role": "user", "content": "What's the weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {
            "role": "tool",
            "tool_call_id": "call_1",
            "content": '{"temperature_c": 18, "condition": "sunny"}',
        },
    ]
    chunks, done = await _stream(local_llm_server, {"messages": messages, "tools": [WEATHER_TOOL]})
    assert done
    deltas = _deltas(chunks)
    assert not any(d.get("tool_calls") for d in deltas)
    assert "".join(d.get("content") or "" for d in deltas).strip()
    assert _finish_reasons(chunks) == ["stop"]


@pytest.mark.parametrize("stream", [False, True])
async def test_image_part_is_refused_with_500(local_llm_server: LocalLLM, stream: bool) -> None:
    body = {
        "model": local_llm_server.model,
        "stream": stream,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {"type": "image_url", "image_url": {"url": PNG}},
                ],
            }
        ],
    }
    with trio.fail_after(60):
        async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
            response = await client.post(f"{local_llm_server.base_url}/chat/completions", json=body)
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == 500
    assert "image input is not supported" in error["message"]


async def test_open_local_server_runs_the_real_model(local_llm_server: LocalLLM) -> None:
    """Our own trio API on the real binary and model: ready, serving our template, then gone."""
    path = cached_model(directory=REAL_MODELS_DIR)
    assert path is not None
    started = time.monotonic()
    with trio.fail_after(120):
        async with open_local_server(path) as server:
            ready = time.monotonic() - started
            async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
                models = (await client.get(f"{server.base_url}/models")).json()
                props = (await client.get(f"{server.root_url}/props")).json()
    assert server.model == "qwen2.5-coder-0.5b-instruct"
    assert [m["id"] for m in models["data"]] == [server.model]
    assert "```json" in props["chat_template"]
    assert server.process.returncode is not None
    assert ready < 60
    print(f"llama-server ready in {ready:.2f} s")


async def test_installed_server_is_a_portable_build_within_its_baseline(
    local_llm_server: LocalLLM,
) -> None:
    """The installed llama-server is trouper's recorded build, and what it reports in its
    system info stays within that baseline: no AMX, no AVX-512, nothing the build host alone
    has (a native build fails here, on any machine: it has no record)."""
    command = find_llama_server()
    status = check_build(Path(command.argv[0]), source=command.source)
    assert status.state == "recorded", (
        f"llama-server at {command.argv[0]} is not trouper's recorded build ({status.state}): "
        "run `trouper model rebuild`"
    )
    assert status.record is not None
    baseline = next(b for b in BASELINES if b.name == status.record.baseline)
    assert baseline == choose_baseline(status.cpu)
    assert "-DGGML_NATIVE=OFF" in status.record.cmake_args
    model = cached_model(directory=REAL_MODELS_DIR)
    assert model is not None
    with trio.fail_after(120):
        check = await self_check(command, model)
    reported = set(check.server_features)
    assert reported, "llama-server printed no system_info line"
    assert not {name for name in reported if "AMX" in name or "AVX512" in name}
    assert baseline.reports is not None
    assert reported <= baseline.reports, f"beyond {baseline.name}: {reported - baseline.reports}"
    assert check.completion_seconds < 30


def test_doctor_on_the_real_build_is_all_well(local_llm_server: LocalLLM) -> None:
    env = {**os.environ, "TROUPER_HOME": str(REAL_MODELS_DIR.parent), "NO_COLOR": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "actors.cli", "model", "doctor"],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "All well" in out
    for name in ("llama-server", "build", "cpu", "model", "smoke run", "server features"):
        assert re.search(rf"^ok\s+{name}\s", out, re.M), out
    assert "sha256 verified" in out


QEMU = shutil.which("qemu-x86_64")


@pytest.mark.skipif(
    platform.machine() != "x86_64" or QEMU is None,
    reason="needs an x86-64 machine and qemu-user (apt-get install qemu-user)",
)
async def test_the_build_runs_on_a_cpu_without_avx512_or_amx() -> None:
    """The installed build on an emulated Haswell CPU (AVX2, no AVX-512, no AMX): it must get
    healthy and answer the start-up self-check's one token. A build for this machine's own
    features (AVX-512 here, AMX on the review's Xeon) dies there by SIGILL."""
    command = find_llama_server()
    model = cached_model(directory=REAL_MODELS_DIR)
    assert model is not None
    assert QEMU is not None
    emulated = ServerCommand((QEMU, "-cpu", "Haswell", *command.argv), command.source)
    with trio.fail_after(300):
        async with open_local_server(
            model,
            command=emulated,
            parallel=1,
            ctx_size=512,
            ready_timeout=240,
            extra_args=SYSTEM_INFO_ARGS,
        ) as server:
            assert server.check_seconds > 0
            features = set(server.reported_features())
    assert "AVX2" in features
    assert not {name for name in features if "AVX512" in name or "AMX" in name}
