"""A service without an ``http_client`` of its own honours the proxy named in the
environment (httpx's ``trust_env``), although it skips httpx's environment walk when no
proxy variable is set."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator

import attrs
import pytest
import trio

from tests.conversation_kit import open_conversation


@attrs.define
class _Proxy:
    """A forward proxy that refuses everything: it records each request line it receives
    and answers 400 (an error the service does not retry)."""

    lines: list[str] = attrs.Factory(list)
    port: int = 0

    async def serve(self, stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            data += chunk
        self.lines.append(data.split(b"\r\n", 1)[0].decode())
        body = b'{"error": {"message": "refused by the test proxy", "type": "invalid"}}'
        await stream.send_all(
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
        )
        await stream.aclose()


@attrs.frozen
class _Unreachable:
    base_url: str = "http://llm.invalid/v1"


@contextlib.asynccontextmanager
async def _serving_proxy(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[_Proxy, str]]:
    """A running :class:`_Proxy` and its URL, with no proxy variable left in the environment."""
    proxy = _Proxy()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, proxy.serve, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY"):
            monkeypatch.delenv(name, raising=False)
        yield proxy, f"http://127.0.0.1:{port}"
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "all_proxy"])
async def test_the_proxy_of_the_environment_is_used(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    async with _serving_proxy(monkeypatch) as (proxy, url):
        monkeypatch.setenv(variable, url)
        async with open_conversation(_Unreachable(), check_on_exit=False) as conversation:
            await conversation.say("hello")
            await conversation.wait_errors(1)
    assert proxy.lines == ["POST http://llm.invalid/v1/chat/completions HTTP/1.1"]


async def test_a_proxy_named_after_the_service_was_made_is_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A service makes its connection pool at its first request, not when it is made (a
    session that never asks anything keeps none): the environment counts as it is then."""
    async with (
        _serving_proxy(monkeypatch) as (proxy, url),
        open_conversation(_Unreachable(), check_on_exit=False) as conversation,
    ):
        monkeypatch.setenv("HTTP_PROXY", url)
        await conversation.say("hello")
        await conversation.wait_errors(1)
    assert proxy.lines == ["POST http://llm.invalid/v1/chat/completions HTTP/1.1"]
