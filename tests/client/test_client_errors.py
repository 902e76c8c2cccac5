"""Errors are typed, categorised, carry the server's details, and never reveal the API key."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from actors.client import (
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ChatClientError,
    ChatCompletionsClient,
    ChatStream,
    InternalServerError,
    MalformedChunkError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    Redactor,
    RetryPolicy,
    StreamError,
    UnprocessableEntityError,
)
from actors.client._parser import ChunkStreamParser
from actors.testing import Reply, ScriptedOpenAIServer, sse_body

from .client_helpers import API_KEY, NO_RETRY, F, client_for, make_request


def parse_body(body: bytes) -> ChatClientError | None:
    parser = ChunkStreamParser(redactor=Redactor((API_KEY,)))
    parser.feed(body)
    parser.end_of_body()
    return parser.failure


async def collect(stream: ChatStream, into: list[str]) -> None:
    async for chunk in stream:
        into.append(chunk.content)


def assert_secret_free(*values: Any) -> None:
    for value in values:
        text = value if isinstance(value, str) else repr(value)
        assert API_KEY not in text
        assert API_KEY[8:] not in text


class TestStatusErrors:
    """Each HTTP error status maps to its class and category."""

    @pytest.mark.parametrize(
        ("status", "cls", "category"),
        [
            (400, BadRequestError, "invalid_request"),
            (401, AuthenticationError, "auth"),
            (403, PermissionDeniedError, "auth"),
            (404, NotFoundError, "invalid_request"),
            (422, UnprocessableEntityError, "invalid_request"),
            (429, RateLimitError, "rate_limit"),
            (500, InternalServerError, "server"),
            (503, InternalServerError, "server"),
            (408, APIStatusError, "timeout"),
            (418, APIStatusError, "invalid_request"),
        ],
    )
    async def test_status_mapping(
        self,
        server: ScriptedOpenAIServer,
        status: int,
        cls: type[APIStatusError],
        category: str,
    ) -> None:
        """The exception class, category, status and request id follow the response."""
        server.add(Reply.error(status, "nope", request_id="req_42"))
        async with client_for(server, retry=NO_RETRY) as client:
            with pytest.raises(cls) as caught:
                await client.complete(make_request())
        error = caught.value
        assert type(error) is cls
        assert (error.status, error.category, error.request_id) == (status, category, "req_42")
        assert error.message.startswith(f"HTTP {status}")
        assert "nope" in error.message

    async def test_vllm_style_integer_code(
        self, server: ScriptedOpenAIServer, client: ChatCompletionsClient
    ) -> None:
        """An integer code (vLLM, llama.cpp) is kept as an int."""
        server.add(
            Reply.error(
                400,
                body={"error": {"message": "bad", "type": "BadRequestError", "code": 400}},
            )
        )
        with pytest.raises(BadRequestError) as caught:
            await client.complete(make_request())
        assert caught.value.code == 400
        assert caught.value.error_type == "BadRequestError"

    async def test_flat_error_body(
        self, server: ScriptedOpenAIServer, client: ChatCompletionsClient
    ) -> None:
        """Old vLLM's flat {"object": "error", "message": ...} body is understood."""
        server.add(
            Reply.error(404, body={"object": "error", "message": "no such model", "code": 404})
        )
        with pytest.raises(NotFoundError, match="no such model"):
            await client.complete(make_request())

    async def test_html_gateway_error(
        self, autojump_clock: trio.testing.MockClock, server: ScriptedOpenAIServer
    ) -> None:
        """A proxy's HTML page becomes a short message."""
        page = "<html><body>" + "Bad Gateway " * 100 + "</body></html>"
        server.add(Reply.error(502, body=page))
        async with client_for(server, retry=NO_RETRY) as client:
            with pytest.raises(InternalServerError) as caught:
                await client.complete(make_request())
        assert "Bad Gateway" in caught.value.message
        assert len(caught.value.message) < 400


class TestStreamErrors:
    """Errors inside a 200 stream are StreamErrors after the earlier chunks were delivered."""

    def test_error_object(self) -> None:
        """data: {"error": {...}} with its type and code."""
        error = parse_body(sse_body([F.text("a"), F.error("overloaded", code="busy")]))
        assert isinstance(error, StreamError)
        assert (error.error_type, error.code, error.category) == ("server_error", "busy", "server")
        assert "overloaded" in error.message

    def test_error_string(self) -> None:
        """data: {"error": "overloaded"} (a bare string)."""
        error = parse_body(b'data: {"error":"overloaded"}\n\n')
        assert isinstance(error, StreamError)
        assert error.message == "error in stream: overloaded"

    def test_vllm_error_with_http_code(self) -> None:
        """vLLM's in-stream error with code 400 is an invalid request."""
        body = (
            b'data: {"error": {"message": "too long", "type": "BadRequestError", "code": 400}}\n\n'
        )
        error = parse_body(body + b"data: [DONE]\n\n")
        assert isinstance(error, StreamError)
        assert (error.code, error.category) == (400, "invalid_request")

    def test_legacy_llamacpp_error_field(self) -> None:
        """llama.cpp's old 'error:' line is an error, not an empty success."""
        body = b'error: {"code":500,"message":"failed to decode","type":"server_error"}\n\n'
        error = parse_body(body + b"data: [DONE]\n\n")
        assert isinstance(error, StreamError)
        assert "failed to decode" in error.message
        assert error.code == 500

    def test_event_error(self) -> None:
        """event: error with a JSON payload."""
        error = parse_body(b'event: error\ndata: {"message":"quota","type":"rate_limit_error"}\n\n')
        assert isinstance(error, StreamError)
        assert error.category == "rate_limit"

    def test_malformed_line_is_named_and_truncated(self) -> None:
        """A non-JSON data line is reported, shown truncated."""
        error = parse_body(b"data: {not json" + b"x" * 1000 + b"\n\n")
        assert isinstance(error, MalformedChunkError)
        assert "{not json" in error.message
        assert "not valid JSON" in error.message
        assert len(error.message) < 300

    @pytest.mark.parametrize("payload", [b"42", b'"text"', b"[1, 2]", b"ping"])
    def test_not_an_object(self, payload: bytes) -> None:
        """Any non-object payload is malformed."""
        assert isinstance(parse_body(b"data: " + payload + b"\n\n"), MalformedChunkError)

    def test_keep_alive_payloads_are_ignored(self) -> None:
        """Empty data lines and ping events are keep-alives, not errors."""
        body = b"data: \n\nevent: ping\ndata: {}\n\n" + sse_body(F.text_stream(["x"]))
        assert parse_body(body) is None

    async def test_stream_error_after_content(
        self, server: ScriptedOpenAIServer, client: ChatCompletionsClient
    ) -> None:
        """Through the client: content first, then the error, never retried."""
        server.add(Reply.sse([F.role(), F.text("partial"), F.error()]))
        seen: list[str] = []
        async with client.stream(make_request()) as stream:
            with pytest.raises(StreamError) as caught:
                await collect(stream, seen)
        assert "".join(seen) == "partial"
        assert caught.value.partial_result is not None
        assert caught.value.partial_result.text == "partial"
        assert len(server.requests) == 1


class TestRedaction:
    """The API key never appears in messages, reprs, bodies or log lines."""

    async def test_status_error_echoing_the_key(
        self, server: ScriptedOpenAIServer, client: ChatCompletionsClient
    ) -> None:
        """A 401 whose body repeats the key is redacted everywhere."""
        server.add(
            Reply.error(
                401,
                f"Incorrect API key provided: {API_KEY}. Header was 'Bearer {API_KEY}'",
                code=API_KEY,
                body=None,
            )
        )
        with pytest.raises(AuthenticationError) as caught:
            await client.complete(make_request())
        error = caught.value
        assert "[REDACTED]" in error.message
        assert_secret_free(
            str(error), repr(error), error.message, error.args, json.dumps(error.body), error.code
        )

    async def test_retry_logs_are_redacted(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        client: ChatCompletionsClient,
    ) -> None:
        """The structlog warning for a retry carries the redacted message only."""
        server.add(
            Reply.error(429, f"key {API_KEY} is over its limit", retry_after_ms=10),
            Reply.sse(F.text_stream(["ok"])),
        )
        with capture_logs() as logs:
            result = await client.complete(make_request())
        assert result.text == "ok"
        (entry,) = logs
        assert entry["log_level"] == "warning"
        assert entry["status"] == 429
        assert entry["attempt"] == 1
        assert "[REDACTED]" in entry["error"]
        assert_secret_free(logs)

    def test_in_stream_and_malformed_errors(self) -> None:
        """Errors built from stream content are redacted too."""
        error = parse_body(sse_body([F.error(f"leaked {API_KEY}")]))
        assert error is not None
        assert_secret_free(str(error), repr(error), error.body)
        malformed = parse_body(f"data: oops {API_KEY}\n\n".encode())
        assert malformed is not None
        assert_secret_free(str(malformed), repr(malformed))

    def test_client_and_stream_reprs(self) -> None:
        """Neither the client nor a stream shows the key or secret headers."""
        client = ChatCompletionsClient(
            api_key=API_KEY,
            base_url="http://127.0.0.1:9/v1",
            default_headers={"api-key": "azure-secret-value"},
        )
        stream = client.stream(make_request())
        assert_secret_free(repr(client), repr(stream), str(client))
        assert "azure-secret-value" not in repr(client) + repr(stream)
        assert client.redactor.text("x azure-secret-value y") == "x [REDACTED] y"

    async def test_param_and_request_id_echoing_the_key(
        self, server: ScriptedOpenAIServer, client: ChatCompletionsClient
    ) -> None:
        """A server that names the key in ``param`` (and in ``x-request-id``): both redacted,
        in the attributes and in ``str(error)``."""
        server.add(Reply.error(401, "Incorrect API key", param=API_KEY, request_id=API_KEY))
        with pytest.raises(AuthenticationError) as caught:
            await client.complete(make_request())
        error = caught.value
        assert (error.param, error.request_id) == ("[REDACTED]", "[REDACTED]")
        assert_secret_free(str(error), repr(error), error.args)

    async def test_a_key_cut_by_the_message_limit_is_still_hidden(
        self, server: ScriptedOpenAIServer
    ) -> None:
        """The message is redacted before it is cut to length: a key cut in two is no longer
        the key, and a key of no known shape (an Azure key) would show its first half."""
        key = "9f3c7e1a5b2d4f6081a3c5e7d9b1f2a4"
        server.add(Reply.error(401, "x" * (299 - 24) + key))  # the limit falls 24 chars in
        async with ChatCompletionsClient(base_url=server.base_url, api_key=key) as client:
            with pytest.raises(AuthenticationError) as caught:
                await client.complete(make_request())
        assert key[: len(key) // 2] not in str(caught.value)
        assert str(caught.value).endswith("[REDACTED] (status 401, type authentication_error)")

    async def test_credentials_in_the_base_url_are_never_shown(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """``http://user:pass@host/v1?key=K``: not in the client's ``base_url``, ``url`` or repr,
        nor in the connection error (whose ``__cause__`` is a copy of httpx's error without the
        request that holds the URL), nor in the retry log."""
        sock = trio.socket.socket()
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        password, key = "pass-word-0123456789", "query-key-0123456789"
        url = f"http://bob:{password}@127.0.0.1:{port}/v1?key={key}"
        async with ChatCompletionsClient(base_url=url, retry=RetryPolicy(max_retries=1)) as client:
            assert client.base_url == f"http://[REDACTED]@127.0.0.1:{port}/v1?key=[REDACTED]"
            shown = [client.base_url, client.url, repr(client), repr(client.stream(make_request()))]
            with capture_logs() as logs, pytest.raises(APIConnectionError) as caught:
                await client.complete(make_request())
        error = caught.value
        assert f"connection to http://[REDACTED]@127.0.0.1:{port}/v1/chat/completions" in str(error)
        cause = error.__cause__
        assert isinstance(cause, httpx.ConnectError)
        assert cause.__traceback__ is None
        with pytest.raises(RuntimeError):
            cause.request  # noqa: B018 -- the copy has no request
        texts = [*shown, str(error), repr(error), repr(cause), repr(logs)]
        assert logs, "the retry was logged"
        for text in texts:
            assert password not in text
            assert key not in text

    async def test_httpx_request_log_hides_url_credentials(
        self, server: ScriptedOpenAIServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        """httpx logs ``HTTP Request: POST <url>`` at INFO, URL credentials and all; an
        application showing INFO logs sees them masked."""
        password, key = "pass-word-0123456789", "query-key-0123456789"
        url = server.base_url.replace("://", f"://bob:{password}@") + f"?key={key}"
        server.add(Reply.sse(F.text_stream(["ok"])))
        with caplog.at_level(logging.INFO, logger="httpx"):
            async with ChatCompletionsClient(base_url=url) as client:
                await client.complete(make_request())
        assert "HTTP Request: POST http://[REDACTED]@127.0.0.1" in caplog.text
        assert password not in caplog.text
        assert key not in caplog.text

    def test_redactor_patterns(self) -> None:
        """Bearer credentials and key-shaped strings are masked even if not configured."""
        redactor = Redactor()
        assert redactor.text("Authorization: Bearer abc.def") == "Authorization: [REDACTED]"
        assert redactor.text("key sk-proj-abcdefghijklmnopqrstu end") == "key [REDACTED] end"
        assert redactor.value({"a": [f"{API_KEY}"]}) == {"a": ["[REDACTED]"]}
