"""Tools written as plain functions (Pipecat 1.x's "direct functions").

A direct function is an ``async def`` whose first parameter is named ``params`` (it receives
the :class:`~actors.FunctionCallParams`) and whose other parameters are the tool's arguments::

    async def get_weather(params: FunctionCallParams, location: str, unit: str = "celsius"):
        \"\"\"Get the current weather.

        Args:
            location: The city, e.g. "Paris".
            unit: "celsius" or "fahrenheit".
        \"\"\"
        await params.result_callback({"temperature": 21})

Its schema comes from the function: the name from ``__name__``, the description from the
docstring's text before its first section, each argument's JSON schema from its annotation
and its description from the docstring (Google ``Args:``, NumPy ``Parameters`` or Sphinx
``:param x:`` style); an argument without a default is required. The handler that runs a call
passes the call's arguments as keyword arguments. Everything is checked when the tool is
built, so a mistake is reported where the function is listed, not when the model calls it.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import re
import types
import typing
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import attrs

__all__ = ["DirectFunction", "FunctionDescription", "describe_function", "direct_handler"]

#: ``async def fn(params, ...)``: a tool that is its own schema.
DirectFunction = Callable[..., Awaitable[Any]]

_FIRST = "params"

_GOOGLE_ARGS = re.compile(
    r"^(Args|Arguments|Parameters|Params|Keyword Args|Keyword Arguments)\s*:\s*$"
)
_GOOGLE_SECTION = re.compile(r"^[A-Z][A-Za-z ]*:\s*$")
_GOOGLE_ENTRY = re.compile(r"^\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_NUMPY_RULE = re.compile(r"^-{3,}\s*$")
_NUMPY_ENTRY = re.compile(r"^(\w+)\s*(?::.*)?$")
_SPHINX_FIELD = re.compile(r"^:(\w+)([^:]*):\s*(.*)$")

_SIMPLE: dict[Any, dict[str, Any]] = {
    str: {"type": "string"},
    bool: {"type": "boolean"},
    int: {"type": "integer"},
    float: {"type": "number"},
    dict: {"type": "object"},
    list: {"type": "array"},
    tuple: {"type": "array"},
    set: {"type": "array"},
    frozenset: {"type": "array"},
    type(None): {"type": "null"},
}
_ARRAYS = (list, tuple, set, frozenset, Sequence)
_OBJECTS = (dict, Mapping)


@attrs.frozen
class FunctionDescription:
    """What a direct function tells about itself: the parts of its ``FunctionSchema``."""

    name: str
    description: str
    properties: dict[str, Any]
    required: list[str]


def _is_async(function: object) -> bool:
    call = inspect.getattr_static(type(function), "__call__", None)
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(call)


def _label(function: object) -> str:
    return str(getattr(function, "__qualname__", None) or type(function).__qualname__)


def describe_function(function: object) -> FunctionDescription:
    """The schema parts of a direct function (see the module docs).

    Raises:
        TypeError: ``function`` is not an ``async def`` function whose first parameter is
            ``params``, has ``*args``/``**kwargs``, or an argument whose annotation has no
            JSON-schema equivalent (the message names it and says what to do).
    """
    if not callable(function):
        raise TypeError(
            f"a tool must be a FunctionSchema, an OpenAI tool dict or an async function; "
            f"got a value of type {type(function).__name__}"
        )
    label = _label(function)
    name = getattr(function, "__name__", None)
    if not _is_async(function):
        raise TypeError(
            f"tool function {label!r} must be `async def {name or 'fn'}(params, ...)`: "
            "a plain `def` cannot be awaited when the model calls it"
        )
    if not isinstance(name, str):
        raise TypeError(
            f"tool function {label!r} has no __name__ to call it by; wrap it in a "
            "FunctionSchema(name=..., handler=...)"
        )
    parameters = list(inspect.signature(function).parameters.values())
    if not parameters or parameters[0].name != _FIRST:
        raise TypeError(
            f"tool function {name!r}: its first parameter must be `params` (it receives the "
            f"FunctionCallParams), e.g. `async def {name}(params, location: str)`"
        )
    try:
        hints = typing.get_type_hints(function, include_extras=True)
    except Exception as exc:  # a forward reference that does not resolve, a bad annotation
        raise TypeError(
            f"tool function {name!r}: its annotations cannot be resolved "
            f"({type(exc).__name__}: {exc})"
        ) from None
    description, documented = parse_docstring(inspect.getdoc(function) or "")
    properties: dict[str, Any] = {}
    required: list[str] = []
    for parameter in parameters[1:]:
        if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise TypeError(
                f"tool function {name!r}: *{parameter.name} cannot be described to the model; "
                "name every argument"
            )
        if parameter.kind is inspect.Parameter.POSITIONAL_ONLY:
            raise TypeError(
                f"tool function {name!r}: argument {parameter.name!r} is positional-only; "
                "the arguments are passed by name"
            )
        annotation = hints.get(parameter.name, Any)
        try:
            schema = json_schema(annotation)
        except TypeError as exc:
            raise TypeError(
                f"tool function {name!r}, argument {parameter.name!r}: {exc}; describe it "
                "with a FunctionSchema(..., handler=...) instead"
            ) from None
        if parameter.name in documented:
            schema["description"] = documented[parameter.name]
        properties[parameter.name] = schema
        if parameter.default is inspect.Parameter.empty:
            required.append(parameter.name)
    return FunctionDescription(name, description, properties, required)


def direct_handler(function: DirectFunction) -> Callable[[Any], Awaitable[None]]:
    """The ``handler(params)`` that runs a direct function: the call's arguments become its
    keyword arguments (an argument it does not take fails the call like any raising
    handler, and the model is told)."""

    async def handler(params: Any) -> None:
        await function(params, **params.arguments)

    handler.__name__ = getattr(function, "__name__", handler.__name__)
    handler.__qualname__ = _label(function)
    return handler


# ----------------------------------------------------------------- annotations


def json_schema(annotation: Any) -> dict[str, Any]:
    """The JSON schema of a Python annotation.

    ``Any`` (or no annotation) gives ``{}`` (any value); ``str``, ``int``, ``float``,
    ``bool``, ``None``; lists, tuples, sets and sequences (of an item type); dicts and mappings
    (of a value type); ``Optional``/unions (``anyOf``); ``Literal`` and ``Enum`` (``enum``);
    ``TypedDict`` and dataclasses (objects); ``Annotated`` (its first argument).

    Raises:
        TypeError: any other annotation.
    """
    if annotation is Any:
        return {}
    simple = _SIMPLE.get(annotation)
    if simple is not None:
        return dict(simple)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return json_schema(args[0])
    if origin is typing.Union or origin is types.UnionType:
        return {"anyOf": [json_schema(arg) for arg in args]}
    if origin is typing.Literal:
        return _enum_schema(list(args))
    if origin in _ARRAYS:
        items = [a for a in args if a is not Ellipsis]
        schema: dict[str, Any] = {"type": "array"}
        if len(items) == 1 or (items and origin is not tuple):
            schema["items"] = json_schema(items[0])
        elif items:  # a fixed tuple: each position may differ
            schema["prefixItems"] = [json_schema(a) for a in items]
        return schema
    if origin in _OBJECTS:
        schema = {"type": "object"}
        if len(args) == 2:
            schema["additionalProperties"] = json_schema(args[1])
        return schema
    if isinstance(annotation, type):
        if issubclass(annotation, enum.Enum):
            return _enum_schema([member.value for member in annotation])
        if typing.is_typeddict(annotation):
            return _object_schema(annotation, getattr(annotation, "__required_keys__", None))
        if dataclasses.is_dataclass(annotation):
            required = {
                f.name
                for f in dataclasses.fields(annotation)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            }
            return _object_schema(annotation, required)
    raise TypeError(f"the annotation {annotation!r} has no JSON-schema equivalent here")


def _enum_schema(values: list[Any]) -> dict[str, Any]:
    schema: dict[str, Any] = {"enum": values}
    kinds = {_SIMPLE.get(type(v), {}).get("type") for v in values}
    if len(kinds) == 1 and None not in kinds:
        schema["type"] = kinds.pop()
    return schema


def _object_schema(cls: type, required: Any) -> dict[str, Any]:
    hints = typing.get_type_hints(cls, include_extras=True)
    properties = {name: json_schema(hint) for name, hint in hints.items()}
    names = [n for n in hints if required is None or n in required]
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if names:
        schema["required"] = names
    return schema


# ----------------------------------------------------------------- docstrings


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """The description (the text before the first section) and the documented arguments of a
    cleaned docstring (``inspect.getdoc``), in Google, NumPy or Sphinx style."""
    lines = doc.splitlines()
    description: list[str] = []
    arguments: dict[str, str] = {}
    i = 0
    in_description = True
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if _GOOGLE_ARGS.match(stripped) and not line.startswith(" "):
            in_description = False
            i = _google_arguments(lines, i + 1, arguments)
            continue
        if i + 1 < len(lines) and _NUMPY_RULE.match(lines[i + 1].strip()) and stripped:
            in_description = False
            if stripped in ("Parameters", "Other Parameters", "Arguments"):
                i = _numpy_arguments(lines, i + 2, arguments)
            else:
                i += 2
            continue
        field = _SPHINX_FIELD.match(stripped)
        if field is not None:
            in_description = False
            i = _sphinx_field(lines, i, field, arguments)
            continue
        if _GOOGLE_SECTION.match(stripped) and not line.startswith(" "):
            in_description = False
        elif in_description:
            description.append(line)
        i += 1
    return "\n".join(description).strip(), arguments


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _google_arguments(lines: list[str], i: int, out: dict[str, str]) -> int:
    base: int | None = None
    current: str | None = None
    while i < len(lines):
        line = lines[i]
        if line.strip() and _indent(line) == 0:
            break
        if not line.strip():
            i += 1
            continue
        base = _indent(line) if base is None else base
        entry = _GOOGLE_ENTRY.match(line.strip()) if _indent(line) <= base else None
        if entry is not None:
            current = entry.group(1)
            out[current] = entry.group(2).strip()
        elif current is not None:
            out[current] = f"{out[current]} {line.strip()}".strip()
        i += 1
    return i


def _numpy_arguments(lines: list[str], i: int, out: dict[str, str]) -> int:
    current: str | None = None
    while i < len(lines):
        line = lines[i]
        if i + 1 < len(lines) and _NUMPY_RULE.match(lines[i + 1].strip()):
            break  # the next section
        if line.strip() and _indent(line) == 0:
            entry = _NUMPY_ENTRY.match(line.strip())
            current = entry.group(1) if entry else None
            if current is not None:
                out[current] = ""
        elif line.strip() and current is not None:
            out[current] = f"{out[current]} {line.strip()}".strip()
        i += 1
    return i


def _sphinx_field(lines: list[str], i: int, field: re.Match[str], out: dict[str, str]) -> int:
    kind, words, text = field.group(1), field.group(2).split(), field.group(3).strip()
    name = words[-1] if words else None
    i += 1
    while i < len(lines) and lines[i].strip() and _indent(lines[i]) > 0:
        text = f"{text} {lines[i].strip()}"
        i += 1
    if kind in ("param", "parameter", "arg", "argument", "key", "keyword") and name:
        out[name] = text
    return i
