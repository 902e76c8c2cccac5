"""The conversation pipeline the cluster tests run on their workers (importable by the worker
processes: ``tests.cluster.conversation_app:factory``), and the scripted model's answers.

The pipeline is the cluster example's (:func:`examples.cluster_app.conversation_pipeline`),
so the tests prove it too; its model is the scripted OpenAI server, found through
``OPENAI_BASE_URL`` (the worker's environment). Its :func:`responder` answers each request
from the last user line: :func:`answer_pieces` of it, :data:`PIECE_DELAY` seconds apart; a
line starting with ``long`` gets :data:`LONG_PIECES` pieces.
"""

from __future__ import annotations

from actors.testing import ChunkFactory, RecordedRequest, Reply
from examples.cluster_app import SYSTEM_PROMPT
from examples.cluster_app import conversation_pipeline as factory

__all__ = [
    "LONG_PIECES",
    "PIECE_DELAY",
    "SYSTEM",
    "answer_pieces",
    "answer_text",
    "factory",
    "responder",
]

#: The system prompt of every conversation (the example's).
SYSTEM = SYSTEM_PROMPT
PIECE_DELAY = 0.1
LONG_PIECES = 400


def answer_pieces(line: str) -> list[str]:
    """The pieces of the scripted answer to ``line``."""
    count = LONG_PIECES if line.startswith("long") else 9
    return [f"[{line}] "] + [f"{i} " for i in range(count)]


def answer_text(line: str) -> str:
    """The scripted answer to ``line`` as the conversation stores it (stripped)."""
    return "".join(answer_pieces(line)).strip()


def responder(request: RecordedRequest) -> Reply:
    """The scripted answer to a chat completions request (see the module documentation)."""
    messages = request.json["messages"]
    line = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    chunks = ChunkFactory()
    return Reply.sse(chunks.text_stream(answer_pieces(line)), delay=PIECE_DELAY, first_delay=0)
