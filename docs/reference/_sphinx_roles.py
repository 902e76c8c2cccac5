"""A griffe extension for the API reference (``mkdocs.yml``): the docstrings' Sphinx roles
(``:class:`~runtime.Frame```, ``:meth:`send```...) become code that links to the object when
the reference documents it, instead of showing the role's markup; a paragraph that ends with
reStructuredText's ``::`` (an indented code block follows, which Markdown reads as code too)
ends with one colon.

The name is resolved from the docstring's object (a short name through its module's
imports), and written as an optional cross-reference of mkdocs-autorefs: a link when the
target is rendered somewhere in the site, plain code otherwise (never a warning).
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

_LITERAL_BLOCK = re.compile(r"(?<=\S)::\n\n")
_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|data|exc|mod|obj|const):`(?P<target>[^`]+)`")


def _link(obj: griffe.Object, target: str) -> str:
    short = target.startswith("~")
    name = target.lstrip("~").lstrip(".").removesuffix("()")
    shown = name.rsplit(".", 1)[-1] if short else name
    head, _, rest = name.partition(".")
    try:
        path = obj.resolve(head) + (f".{rest}" if rest else "")
    except (griffe.NameResolutionError, ValueError):
        path = name
    code = f"<code>{html.escape(shown)}</code>"
    return f'<autoref identifier="{html.escape(path)}" optional>{code}</autoref>'


def _rewrite(obj: griffe.Object) -> None:
    docstring = obj.docstring
    if docstring is not None and ":" in docstring.value:
        text = _ROLE.sub(lambda m: _link(obj, m.group("target")), docstring.value)
        docstring.value = _LITERAL_BLOCK.sub(":\n\n", text)


class SphinxRoles(griffe.Extension):
    """Rewrites the roles of every docstring of a loaded package."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        """Rewrite the package's docstrings (its members', recursively)."""
        _visit(pkg, set())


def _visit(obj: griffe.Object, seen: set[str]) -> None:
    if obj.path in seen:
        return
    seen.add(obj.path)
    _rewrite(obj)
    for member in obj.members.values():
        if not member.is_alias:
            _visit(member, seen)  # type: ignore[arg-type]
