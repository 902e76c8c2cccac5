"""A prompt over the model's context is a ``ContextLengthExceededError`` (OpenAI's code,
llama-server's and vLLM's messages), and ``ChatCompletionsClient.tokenize`` asks llama-server's
tokenizer at the server root."""

from __future__ import annotations

import json
from typing import Any

import pytest

from actors.client import (
    APIConnectionError,
    BadRequestError,
    ChatClientError,
    ChatCompletionsClient,
    ContextLengthExceededError,
    NotFoundError,
)
from actors.testing import Reply, ScriptedOpenAIServer

from .client_helpers import API_KEY, NO_RETRY, client_for, make_request


class TestContextLengthExceeded:
    @pytest.mark.parametrize(
        "error",
        [
            {  # OpenAI
                "message": "This model's maximum context length is 8192 tokens. However, your "
                "messages resulted in 9000 tokens.",
                "type": "invalid_request_error",
                "code": "context_length_exceeded",
            },
            {  # llama-server
                "message": "the request (2300 tokens) exceeds the available context size "
                "(2048 tokens), try increasing it",
                "type": "exceed_context_size_error",
                "code": 400,
                "n_prompt_tokens": 2300,
                "n_ctx": 2048,
            },
            {  # older llama-server: the message only
                "message": "the request exceeds the available context size, try increasing it",
                "type": "invalid_request_error",
            },
            {  # vLLM
                "message": "This model's maximum context length is 4096 tokens. However, you "
                "requested 5000 tokens.",
                "type": "BadRequestError",
                "code": 400,
            },
        ],
    )
    async def test_recognised(self, server: ScriptedOpenAIServer, error: dict[str, Any]) -> None:
        server.add(Reply.error(400, body={"error": error}))
        async with client_for(server, retry=NO_RETRY) as client:
            with pytest.raises(ContextLengthExceededError) as caught:
                await client.complete(make_request())
        assert isinstance(caught.value, BadRequestError)
        assert caught.value.status == 400
        assert caught.value.category == "invalid_request"
        assert caught.value.attempts == 1

    async def test_other_400s_are_not(self, server: ScriptedOpenAIServer) -> None:
        server.add(Reply.error(400, "messages[3] has no content", code="invalid_value"))
        async with client_for(server, retry=NO_RETRY) as client:
            with pytest.raises(BadRequestError) as caught:
                await client.complete(make_request())
        assert type(caught.value) is BadRequestError


class TestTokenize:
    async def test_posts_the_text_at_the_server_root(self, server: ScriptedOpenAIServer) -> None:
        server.add(
            Reply.raw(
                json.dumps({"tokens": [1, 2, 3]}).encode(),
                headers={"content-type": "application/json"},
                framing="length",
            )
        )
        async with client_for(server) as client:
            assert client.tokenize_url == f"http://127.0.0.1:{server.port}/tokenize"
            assert await client.tokenize("a b c") == [1, 2, 3]
        (request,) = server.requests
        assert (request.method, request.path) == ("POST", "/tokenize")
        assert request.json == {"content": "a b c"}
        assert request.headers["authorization"] == f"Bearer {API_KEY}"

    async def test_a_server_without_one_answers_404(self, server: ScriptedOpenAIServer) -> None:
        server.add(Reply.error(404, "Not Found"))
        async with client_for(server) as client:
            with pytest.raises(NotFoundError):
                await client.tokenize("a")

    async def test_an_answer_without_tokens_is_an_error(self, server: ScriptedOpenAIServer) -> None:
        server.add(
            Reply.raw(
                b'{"ok": true}', headers={"content-type": "application/json"}, framing="length"
            )
        )
        async with client_for(server) as client:
            with pytest.raises(ChatClientError, match="did not answer"):
                await client.tokenize("a")

    async def test_no_server_is_a_connection_error(self) -> None:
        async with ChatCompletionsClient(
            api_key=API_KEY, base_url="http://127.0.0.1:9/v1"
        ) as client:
            with pytest.raises(APIConnectionError) as caught:
                await client.tokenize("a")
        assert API_KEY not in str(caught.value)

    def test_the_root_keeps_the_query(self) -> None:
        client = ChatCompletionsClient(api_key=API_KEY, base_url="https://h/v1/?api-version=1")
        assert client.tokenize_url == "https://h/tokenize?api-version=1"
