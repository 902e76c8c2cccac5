"""Test kit: pieces that let tests exercise trouper against real sockets, in virtual time.

* :class:`ScriptedOpenAIServer` — a real HTTP/1.1 OpenAI-compatible server on ``127.0.0.1``, run
  inside the test's trio run and scripted reply by reply (SSE streams, errors, stalls,
  disconnects), recording requests and client disconnects.
* :class:`Reply`, :class:`Piece` — the script's replies.
* :class:`ChunkFactory` — realistic ``chat.completion.chunk`` dicts.
"""

from __future__ import annotations

from ._openai_server import ChunkFactory as ChunkFactory
from ._openai_server import Ending as Ending
from ._openai_server import Exchange as Exchange
from ._openai_server import Framing as Framing
from ._openai_server import Piece as Piece
from ._openai_server import RecordedRequest as RecordedRequest
from ._openai_server import Reply as Reply
from ._openai_server import Responder as Responder
from ._openai_server import ScriptedOpenAIServer as ScriptedOpenAIServer
from ._openai_server import sse_body as sse_body
from ._openai_server import sse_event as sse_event

__all__ = [
    "ChunkFactory",
    "Ending",
    "Exchange",
    "Framing",
    "Piece",
    "RecordedRequest",
    "Reply",
    "Responder",
    "ScriptedOpenAIServer",
    "sse_body",
    "sse_event",
]
