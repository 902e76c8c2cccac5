"""The griffe extension of the API reference (``mkdocs.yml``): what griffe, reading the source,
does not know about trouper's docstrings and classes.

- **attrs classes get the ``__init__`` attrs generates**, so their signature is shown and their
  ``Args:`` section is checked against the real parameters (griffe knows dataclasses, not
  attrs). The parameters are the class's annotated attributes in attrs' order (a base's
  first), less those with ``init=False`` and the ``ClassVar``s; a private attribute's parameter
  has no leading underscore, as attrs names it; ``kw_only`` (on the class or the field) makes
  it keyword-only.
- **Sphinx roles become links**: ``:class:`~runtime.Frame```, ``:meth:`send```... are written as
  code that links to the object when the reference documents it (an optional cross-reference
  of mkdocs-autorefs: never a warning), instead of showing the role's markup. The name is
  resolved from the docstring's object (a short name through its module's imports). A
  paragraph that ends with reStructuredText's ``::`` (an indented code block follows, which
  Markdown reads as code too) ends with one colon.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

_DECORATORS = {
    f"{module}.{name}"
    for module in ("attrs", "attr")
    for name in ("define", "frozen", "mutable", "s", "attrs", "dataclass")
}
_FIELD_CALLS = {"attrs.field", "attr.field", "attr.ib", "attr.attrib"}
_FACTORY_CALLS = {"attrs.Factory", "attr.Factory"}


def _keywords(call: griffe.Expr | str | None) -> dict[str, str]:
    """The keyword arguments of a call expression, as source text."""
    if not isinstance(call, griffe.ExprCall):
        return {}
    return {
        argument.name: str(argument.value)
        for argument in call.arguments
        if isinstance(argument, griffe.ExprKeyword)
    }


def _attrs_options(cls: griffe.Class) -> dict[str, str] | None:
    """The keyword arguments of the class's attrs decorator; ``None`` if it has none."""
    for decorator in cls.decorators:
        value = decorator.value
        path = value.canonical_path if isinstance(value, griffe.Expr) else str(value)
        if path in _DECORATORS:
            return _keywords(value)
    return None


def _is_field(member: griffe.Object | griffe.Alias) -> bool:
    if member.is_alias or not isinstance(member, griffe.Attribute) or "property" in member.labels:
        return False
    # griffe unwraps ``ClassVar[X]`` to ``X`` and labels it a class attribute only.
    annotation = str(member.annotation or "")
    class_var = annotation.startswith(("ClassVar", "typing.ClassVar")) or (
        "instance-attribute" not in member.labels
    )
    return bool(annotation) and not class_var


def _parameter(attribute: griffe.Attribute, kw_only: bool) -> griffe.Parameter | None:
    value = attribute.value
    path = value.canonical_path if isinstance(value, griffe.ExprCall) else ""
    options = _keywords(value) if path in _FIELD_CALLS else {}
    if options.get("init") == "False":
        return None
    default: str | griffe.Expr | None
    if path in _FIELD_CALLS:
        default = options.get("default")
        if "factory" in options or (default or "").startswith(tuple(_FACTORY_CALLS)):
            default = "<factory>"
    else:
        default = value
    kind = (
        griffe.ParameterKind.keyword_only
        if kw_only or options.get("kw_only") == "True"
        else griffe.ParameterKind.positional_or_keyword
    )
    name = options.get("alias", "").strip("'\"") or attribute.name.lstrip("_")
    return griffe.Parameter(name, annotation=attribute.annotation, kind=kind, default=default)


def _fields(cls: griffe.Class, seen: set[str]) -> dict[str, griffe.Parameter]:
    """The ``__init__`` parameters of an attrs class, by attribute name, bases first."""
    options = _attrs_options(cls)
    if options is None or cls.path in seen:
        return {}
    seen.add(cls.path)
    fields: dict[str, griffe.Parameter] = {}
    for base in cls.resolved_bases:
        if isinstance(base, griffe.Class):
            fields.update(_fields(base, seen))
    own = sorted((m for m in cls.members.values() if _is_field(m)), key=lambda m: m.lineno or 0)
    for attribute in own:
        assert isinstance(attribute, griffe.Attribute)
        parameter = _parameter(attribute, options.get("kw_only") == "True")
        fields.pop(attribute.name, None)
        if parameter is not None:
            fields[attribute.name] = parameter
    return fields


def _add_init(cls: griffe.Class) -> None:
    options = _attrs_options(cls)
    if options is None or options.get("init") == "False" or "__init__" in cls.members:
        return
    try:
        fields = list(_fields(cls, set()).values())
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return  # a base outside the loaded packages: no signature rather than a wrong one
    keyword = griffe.ParameterKind.keyword_only
    ordered = [p for p in fields if p.kind is not keyword]
    ordered += [p for p in fields if p.kind is keyword]
    init = griffe.Function(
        "__init__",
        lineno=cls.lineno,
        endlineno=cls.lineno,
        parent=cls,
        parameters=griffe.Parameters(
            griffe.Parameter("self", kind=griffe.ParameterKind.positional_or_keyword), *ordered
        ),
        returns="None",
    )
    cls.set_member("__init__", init)
    init.labels.add("generated")


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


class Reference(griffe.Extension):
    """Adds attrs' ``__init__`` and rewrites the roles, in every object of a loaded package."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        """Visit the package's modules and classes, recursively."""
        _visit(pkg, set())


def _visit(obj: griffe.Object, seen: set[str]) -> None:
    if obj.path in seen:
        return
    seen.add(obj.path)
    if isinstance(obj, griffe.Class):
        _add_init(obj)
    _rewrite(obj)
    for member in list(obj.members.values()):
        if not member.is_alias and isinstance(member, griffe.Object):
            _visit(member, seen)
