"""Secret redaction for everything the client shows: error messages, bodies, reprs and log fields.

A server may echo the credentials it received (a proxy's "invalid key sk-..." message, a debug
body). Every string the client builds from a response goes through a :class:`Redactor` that knows
the configured API key; as a second line of defence it also masks ``Bearer`` credentials and
anything shaped like an OpenAI key (``sk-`` followed by 16 or more key characters).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs

__all__ = ["REDACTED", "Redactor"]

REDACTED = "[REDACTED]"
"""What a secret is replaced with."""

_PATTERNS = re.compile(r"(?i)\bbearer\s+[^\s\"',;]+|\bsk-[A-Za-z0-9_\-]{16,}")


def _usable_secrets(values: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    # Longest first, so that a secret containing another one is replaced whole.
    return tuple(sorted({v for v in values if v and len(v) >= 4}, key=len, reverse=True))


@attrs.frozen
class Redactor:
    """Replaces known secrets and credential-shaped strings with :data:`REDACTED`.

    Args:
        secrets: Exact strings to hide (e.g. the API key). Strings shorter than 4 characters are
            ignored, as hiding them would mangle ordinary text.
    """

    secrets: tuple[str, ...] = attrs.field(default=(), converter=_usable_secrets, repr=False)

    def text(self, value: str) -> str:
        """Redact a string.

        Args:
            value: Any text that may contain a secret.

        Returns:
            The text with every secret replaced.
        """
        for secret in self.secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return _PATTERNS.sub(REDACTED, value)

    def value(self, value: Any) -> Any:
        """Redact every string inside a decoded JSON value (mappings and lists are copied).

        Args:
            value: A JSON-like value.

        Returns:
            The same structure with every string redacted.
        """
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {self.text(str(k)): self.value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.value(v) for v in value]
        return value
