"""Text from outside (the model, a server) made safe to print on a terminal.

A terminal executes the control sequences in what it prints: a model's answer (or a tool
call's name, its arguments, an error text from a server) could clear the screen, set the window
title, plant a hyperlink whose target is not what it shows, rewrite what was printed before,
or reorder the line with bidirectional overrides. :func:`printable` removes every control
sequence and control character except newline and tab, so the text is shown as text.
"""

from __future__ import annotations

import re

__all__ = ["printable"]

# Whole sequences first, so that their parameters go with them:
_SEQUENCES = re.compile(
    r"""
    (?:\x1b\[|\x9b) [\x30-\x3f]* [\x20-\x2f]* [\x40-\x7e]     # CSI: colours, cursor, clear
    | (?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])                # OSC (titles, hyperlinks, the
      [^\x07\x1b\x9c]* (?:\x07|\x1b\\|\x9c)                   # clipboard), DCS, SOS, PM, APC,
                                                              # up to BEL or ST
    | \x1b [\x20-\x2f]* [\x30-\x7e]                           # any other escape sequence
    """,
    re.VERBOSE,
)
# ... then every control character left, so that no sequence can start (not even one split
# across two pieces of a stream, or cut short): C0 but tab and newline, DEL, C1; and the
# bidirectional embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069), which make
# a terminal show text in another order than it was written ("Trojan Source").
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` without terminal control sequences and control characters, except ``\\n``
    and ``\\t`` (``\\r\\n`` becomes ``\\n``). What is left is shown by the terminal as
    written."""
    if text.isprintable():  # the common case: nothing to remove (tab and newline are not)
        return text
    text = text.replace("\r\n", "\n")
    return _CONTROLS.sub("", _SEQUENCES.sub("", text))
