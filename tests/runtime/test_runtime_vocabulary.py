"""The runtime knows no conversation: no conversation word in its names, strings or comments.

Every module of ``runtime/`` is scanned: its identifiers (names, attributes, functions,
classes, arguments, keywords, imports) with :mod:`ast`, and its strings (docstrings included)
and comments with :mod:`tokenize`. Each is split into words (``snake_case`` and
``CamelCase`` parts) and no word may be conversation vocabulary (:data:`FORBIDDEN`). Python's
and trio's own terms that contain such a word are not vocabulary (:data:`ALLOWED_TERMS`):
a context manager, ``ContextVar``, an exception's ``__context__``, ``TrioToken``, a context
variable's reset token.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

import pytest

RUNTIME = Path(__file__).resolve().parents[2] / "runtime"

#: Conversation, LLM (its tools) and speech words (singular and plural forms).
FORBIDDEN = frozenset(
    {
        "aggregator",
        "aggregators",
        "assistant",
        "assistants",
        "chat",
        "chats",
        "completion",
        "completions",
        "context",
        "contexts",
        "conversation",
        "conversational",
        "conversations",
        "gpt",
        "llm",
        "llms",
        "openai",
        "prompt",
        "prompts",
        "speaking",
        "speech",
        "stt",
        "token",
        "tokens",
        "tool",
        "tools",
        "transcriber",
        "transcript",
        "transcription",
        "transcriptions",
        "transcripts",
        "ttfb",
        "tts",
        "usage",
        "utterance",
        "utterances",
    }
)

#: Terms of Python and trio that contain a forbidden word but are not conversation vocabulary;
#: they are removed before a text or an identifier is split into words.
ALLOWED_TERMS = re.compile(
    r"(?<![a-z])(?:"
    r"__context__|(?:__)?suppress_context(?:__)?|copy_context|contextvars\.context|contextvars?"
    r"|contextlib"
    r"|(?:abstract)?(?:async)?[ _-]?context[ _-]?managers?|context[ _-]?variables?"
    r"|(?:current_)?trio[ _]?tokens?|reset[ _]tokens?"
    r")(?![a-z])",
    re.IGNORECASE,
)

_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")


def words(text: str) -> list[str]:
    """The lower-case words of a text or an identifier, allowed terms left out."""
    return [w.lower() for w in _WORD.findall(ALLOWED_TERMS.sub(" ", text))]


def identifiers(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """``(line, identifier)`` for every name the module binds or uses."""
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Name):
            yield line, node.id
        elif isinstance(node, ast.Attribute):
            yield line, node.attr
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield line, node.name
        elif isinstance(node, (ast.arg, ast.keyword)) and node.arg is not None:
            yield line, node.arg
        elif isinstance(node, ast.alias):
            yield line, node.name
            if node.asname:
                yield line, node.asname
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield line, node.module


def texts(source: str) -> Iterator[tuple[int, str]]:
    """``(line, text)`` for every string literal (docstrings included) and comment."""
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in (tokenize.STRING, tokenize.COMMENT):
            for offset, text in enumerate(token.string.splitlines()):
                yield token.start[0] + offset, text


def findings(path: Path) -> list[tuple[int, str]]:
    """``(line, word)`` for every forbidden word in the module."""
    source = path.read_text(encoding="utf-8")
    found: set[tuple[int, str]] = set()
    for line, text in [*identifiers(ast.parse(source)), *texts(source)]:
        found.update((line, w) for w in words(text) if w in FORBIDDEN)
    return sorted(found)


MODULES = sorted(RUNTIME.rglob("*.py"))


class TestTheScanner:
    """The scan finds what it must and ignores Python's and trio's own terms."""

    def test_words_split_identifiers_and_text(self) -> None:
        assert words("TTFBMetricsData") == ["ttfb", "metrics", "data"]
        assert words("enable_usage_metrics") == ["enable", "usage", "metrics"]
        assert words("the LLM's prompt tokens") == ["the", "llm", "s", "prompt", "tokens"]

    @pytest.mark.parametrize(
        "term",
        [
            "ContextVar",
            "contextvars",
            "contextvars.Context",
            "copy_context",
            "exc.__context__",
            "exc.__suppress_context__",
            "contextlib",
            "asynccontextmanager",
            "an async context manager",
            "this task's context variables",
            "trio.lowlevel.TrioToken",
            "current_trio_token",
            "self._trio_token",
            "reset_token",
        ],
    )
    def test_python_and_trio_terms_are_not_vocabulary(self, term: str) -> None:
        assert FORBIDDEN.isdisjoint(words(term))

    @pytest.mark.parametrize(
        "text",
        [
            "the conversation context",
            "TranscriptionFrame",
            "OpenAILLMContext",
            "append_to_context",
            "max_tokens",
            "token = current_turn.set(turn)",
            "a chat completion",
            "a tool call",
            "the assistant aggregator",
        ],
    )
    def test_conversation_words_are_found(self, text: str) -> None:
        assert not FORBIDDEN.isdisjoint(words(text))

    def test_findings_name_the_line_of_names_strings_and_comments(self, tmp_path: Path) -> None:
        module = tmp_path / "m.py"
        module.write_text(
            '"""Docs.\n\nOf a chat."""\n'
            "def f(prompt: str) -> str:  # ok\n"
            '    return "an assistant"  # the usage\n'
            "x = obj.llm_model\n"
        )
        assert findings(module) == [
            (3, "chat"),
            (4, "prompt"),
            (5, "assistant"),
            (5, "usage"),
            (6, "llm"),
        ]


class TestRuntimeVocabulary:
    def test_every_module_is_scanned(self) -> None:
        names = {p.name for p in MODULES}
        assert {"__init__.py", "_actor.py", "_frames.py", "logging.py"} <= names

    @pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
    def test_no_conversation_vocabulary(self, path: Path) -> None:
        rel = path.relative_to(RUNTIME.parent)
        assert [f"{rel}:{line}: {word}" for line, word in findings(path)] == []
