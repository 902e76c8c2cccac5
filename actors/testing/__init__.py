"""Test kit: pieces that let tests exercise trouper against real sockets, in virtual time.

* :class:`ScriptedOpenAIServer` — a real HTTP/1.1 OpenAI-compatible server on ``127.0.0.1``, run
  inside the test's trio run and scripted reply by reply (SSE streams, errors, stalls,
  disconnects), recording requests and client disconnects (:class:`RecordedRequest`,
  :class:`Exchange`).
* :class:`Reply`, :class:`Piece`, :func:`sse_event`, :func:`sse_body` — the script's replies.
* :class:`ChunkFactory` — realistic ``chat.completion.chunk`` dicts.
"""

from __future__ import annotations

from ._chunk_factory import ChunkFactory as ChunkFactory
from ._script import Ending as Ending
from ._script import Framing as Framing
from ._script import Piece as Piece
from ._script import Reply as Reply
from ._script import sse_body as sse_body
from ._script import sse_event as sse_event
from ._server import Exchange as Exchange
from ._server import RecordedRequest as RecordedRequest
from ._server import Responder as Responder
from ._server import ScriptedOpenAIServer as ScriptedOpenAIServer

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
