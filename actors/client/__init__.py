"""OpenAI-compatible streaming chat-completions client on trio and httpx.

Independent of the runtime and of the actor layer: it only needs trio, httpx, attrs, cattrs,
orjson and structlog. It hides the credentials it holds with its own redaction (its
:class:`Redactor`, re-exported here; the whole public module is
:mod:`actors.client.redaction`), and its
errors carry an :class:`ErrorCategory`, the one the stages put in their ``ErrorFrame``s.

Usage::

    from actors.client import ChatCompletionsClient, ChatRequest, GenerationParams

    async with ChatCompletionsClient() as client:          # OPENAI_API_KEY / OPENAI_BASE_URL
        request = ChatRequest(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Hello"}],
            params=GenerationParams(temperature=0.2),
        )
        async with client.stream(request) as stream:
            async for chunk in stream:
                print(chunk.content, end="")
        result = stream.result()                            # text, tool_calls, usage...

See ``docs/client.md`` for errors, retries and timeouts.

The package exports what a caller uses: the client and its stream, requests, results and chunk
types, errors, timeouts and the retry policy. The machinery behind the stream (the SSE decoder,
the chunk parser and accumulator) stays in its private modules.
"""

from __future__ import annotations

from ._accumulate import StreamResult as StreamResult
from ._accumulate import ToolCall as ToolCall
from ._chunks import ChatCompletionChunk as ChatCompletionChunk
from ._chunks import ChoiceDelta as ChoiceDelta
from ._chunks import ChoiceLogprobs as ChoiceLogprobs
from ._chunks import ChunkChoice as ChunkChoice
from ._chunks import CompletionTokensDetails as CompletionTokensDetails
from ._chunks import FunctionCallDelta as FunctionCallDelta
from ._chunks import PromptTokensDetails as PromptTokensDetails
from ._chunks import TokenLogprob as TokenLogprob
from ._chunks import ToolCallDelta as ToolCallDelta
from ._chunks import TopLogprob as TopLogprob
from ._chunks import Usage as Usage
from ._client import DEFAULT_BASE_URL as DEFAULT_BASE_URL
from ._client import ChatCompletionsClient as ChatCompletionsClient
from ._client import ChatStream as ChatStream
from ._errors import APIConnectionError as APIConnectionError
from ._errors import APIStatusError as APIStatusError
from ._errors import APITimeoutError as APITimeoutError
from ._errors import AuthenticationError as AuthenticationError
from ._errors import BadRequestError as BadRequestError
from ._errors import ChatClientError as ChatClientError
from ._errors import ConflictError as ConflictError
from ._errors import ConnectTimeoutError as ConnectTimeoutError
from ._errors import ContextLengthExceededError as ContextLengthExceededError
from ._errors import ErrorCategory as ErrorCategory
from ._errors import EventTooLargeError as EventTooLargeError
from ._errors import FirstTokenTimeoutError as FirstTokenTimeoutError
from ._errors import IncompleteStreamError as IncompleteStreamError
from ._errors import InternalServerError as InternalServerError
from ._errors import InvalidParameterError as InvalidParameterError
from ._errors import MalformedChunkError as MalformedChunkError
from ._errors import NotEventStreamError as NotEventStreamError
from ._errors import NotFoundError as NotFoundError
from ._errors import PermissionDeniedError as PermissionDeniedError
from ._errors import RateLimitError as RateLimitError
from ._errors import ServerDisconnectedError as ServerDisconnectedError
from ._errors import StreamError as StreamError
from ._errors import StreamIdleTimeoutError as StreamIdleTimeoutError
from ._errors import TotalTimeoutError as TotalTimeoutError
from ._errors import UnprocessableEntityError as UnprocessableEntityError
from ._params import ChatRequest as ChatRequest
from ._params import GenerationParams as GenerationParams
from ._retry import RetryDecision as RetryDecision
from ._retry import RetryPolicy as RetryPolicy
from ._sse import DEFAULT_MAX_EVENT_BYTES as DEFAULT_MAX_EVENT_BYTES
from ._timeouts import Timeouts as Timeouts
from .redaction import Redactor as Redactor

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_EVENT_BYTES",
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ChatClientError",
    "ChatCompletionChunk",
    "ChatCompletionsClient",
    "ChatRequest",
    "ChatStream",
    "ChoiceDelta",
    "ChoiceLogprobs",
    "ChunkChoice",
    "CompletionTokensDetails",
    "ConflictError",
    "ConnectTimeoutError",
    "ContextLengthExceededError",
    "ErrorCategory",
    "EventTooLargeError",
    "FirstTokenTimeoutError",
    "FunctionCallDelta",
    "GenerationParams",
    "IncompleteStreamError",
    "InternalServerError",
    "InvalidParameterError",
    "MalformedChunkError",
    "NotEventStreamError",
    "NotFoundError",
    "PermissionDeniedError",
    "PromptTokensDetails",
    "RateLimitError",
    "Redactor",
    "RetryDecision",
    "RetryPolicy",
    "ServerDisconnectedError",
    "StreamError",
    "StreamIdleTimeoutError",
    "StreamResult",
    "Timeouts",
    "TokenLogprob",
    "ToolCall",
    "ToolCallDelta",
    "TopLogprob",
    "TotalTimeoutError",
    "UnprocessableEntityError",
    "Usage",
]
