"""Which of the chat's tools to offer with a line of the user's.

Offered a tool list, the embedded 0.5B model answers nearly every question with a call, those
that need no tool too ("Tell me a joke." comes back as ``{"name": "Joke", ...}``; see
docs/local-model.md, "Limits"). On that model the chat therefore offers, with each line, only
the tools the line is about (:attr:`~actors.cli._tools.BuiltinTool.about`), plus, for a short
line (a follow-up such as "And in Paris?" after a time question), the tools called during the
previous answer; a line that names the tools gets them all, and a line about none of them gets
none: the model answers it in words. A remote model (``--base-url``) and ``--all-tools`` get
every tool with every line.
"""

from __future__ import annotations

import re
from collections.abc import Collection

import attrs

from .._frames import LLMSetToolsFrame
from .._schemas import ToolsSchema
from ._tools import BuiltinTool

__all__ = ["FOLLOW_UP_WORDS", "ToolOffer"]

#: A line that asks for the tools by that word gets them all.
_NAMES_TOOLS = re.compile(r"\btools?\b", re.IGNORECASE)
#: A line of at most this many words may be a follow-up of the previous answer.
FOLLOW_UP_WORDS = 6


@attrs.define
class ToolOffer:
    """The tools the chat offers the model, line by line.

    Args:
        tools: Every tool the chat has (their handlers are registered whatever is offered).
        every_line: Offer all of them with every line (a remote model, ``--all-tools``).
    """

    tools: tuple[BuiltinTool, ...]
    every_line: bool
    #: The names offered now (what the conversation's context holds); before the first
    #: line, every tool's with ``every_line``, else none.
    offered: tuple[str, ...] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.offered = tuple(t.schema.name for t in self.tools) if self.every_line else ()

    def schema(self, names: Collection[str]) -> ToolsSchema | None:
        """The tools named, as the context takes them (``None``: no tools)."""
        chosen = [t.schema for t in self.tools if t.schema.name in names]
        return ToolsSchema(standard_tools=chosen) if chosen else None

    def for_line(self, line: str, called: Collection[str] = ()) -> tuple[str, ...]:
        """The names to offer with ``line``, given the functions ``called`` during the
        previous answer (they stay offered with a line of at most :data:`FOLLOW_UP_WORDS`
        words)."""
        if self.every_line or _NAMES_TOOLS.search(line):
            return tuple(t.schema.name for t in self.tools)
        follow_up = len(line.split()) <= FOLLOW_UP_WORDS
        return tuple(
            t.schema.name
            for t in self.tools
            if t.about(line) or (follow_up and t.schema.name in called)
        )

    def change_for(self, line: str, called: Collection[str] = ()) -> LLMSetToolsFrame | None:
        """The frame that sets the offer for ``line``, or ``None`` when it stays as it is."""
        names = self.for_line(line, called)
        if names == self.offered:
            return None
        self.offered = names
        return LLMSetToolsFrame(tools=self.schema(names))
