"""Tool schemas: ``FunctionSchema`` and ``ToolsSchema`` in OpenAI's tool format."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

__all__ = ["FunctionSchema", "ToolsSchema", "normalize_tools"]

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _to_dict(value: Mapping[str, Any]) -> dict[str, Any]:
    return dict(value)


def _to_list(value: Iterable[Any]) -> list[Any]:
    return list(value)


def _check_name(_: object, __: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(
            f"function name {value!r} is invalid: use 1 to 64 letters, digits, '_' or '-'"
        )


@attrs.frozen
class FunctionSchema:
    """One function the LLM may call.

    Args:
        name: 1-64 characters of ``[A-Za-z0-9_-]``.
        description: What it does (the model reads this).
        properties: JSON-schema properties of its arguments.
        required: Names of the required arguments (each must be in ``properties``).
    """

    name: str = attrs.field(validator=_check_name)
    description: str = ""
    properties: Mapping[str, Any] = attrs.field(factory=dict, converter=_to_dict)
    required: Sequence[str] = attrs.field(factory=list, converter=_to_list)

    def __attrs_post_init__(self) -> None:
        missing = [r for r in self.required if r not in self.properties]
        if missing:
            raise ValueError(
                f"function {self.name!r}: required {missing} not among its properties "
                f"{sorted(self.properties)}"
            )

    def to_default_dict(self) -> dict[str, Any]:
        """``{"name", "description", "parameters": {"type": "object", ...}}``."""
        return {
            "name": self.name,
            "description": self.description,
            "parameters": {
                "type": "object",
                "properties": dict(self.properties),
                "required": list(self.required),
            },
        }

    def to_openai(self) -> dict[str, Any]:
        """The entry for the request's ``tools`` list."""
        return {"type": "function", "function": self.to_default_dict()}


@attrs.frozen
class ToolsSchema:
    """The tools offered to the LLM.

    Args:
        standard_tools: Function schemas.
        custom_tools: Extra OpenAI tool dicts, sent verbatim after the standard tools.
    """

    standard_tools: Sequence[FunctionSchema] = attrs.field(factory=list, converter=_to_list)
    custom_tools: Sequence[Mapping[str, Any]] = attrs.field(factory=list, converter=_to_list)

    def __attrs_post_init__(self) -> None:
        names: set[str] = set()
        for tool in self.standard_tools:
            if not isinstance(tool, FunctionSchema):
                raise TypeError(
                    f"ToolsSchema.standard_tools takes FunctionSchema objects, got "
                    f"{type(tool).__name__}"
                )
            if tool.name in names:
                raise ValueError(f"ToolsSchema: function {tool.name!r} is listed twice")
            names.add(tool.name)

    def to_openai(self) -> list[dict[str, Any]]:
        """The request's ``tools`` list."""
        return [t.to_openai() for t in self.standard_tools] + [dict(t) for t in self.custom_tools]

    @property
    def names(self) -> list[str]:
        """Names of the standard functions."""
        return [t.name for t in self.standard_tools]


def normalize_tools(tools: object) -> list[dict[str, Any]] | None:
    """Turn a ``ToolsSchema``, a list of schemas/OpenAI tool dicts, or None into API tools.

    Raises:
        TypeError: anything else (the message says what is accepted).
    """
    if tools is None:
        return None
    if isinstance(tools, ToolsSchema):
        out = tools.to_openai()
        return out or None
    if isinstance(tools, list | tuple):
        out = []
        for tool in tools:
            if isinstance(tool, FunctionSchema):
                out.append(tool.to_openai())
            elif isinstance(tool, Mapping) and tool.get("type") in ("function", "custom"):
                out.append(dict(tool))
            else:
                raise TypeError(
                    "each tool must be a FunctionSchema or an OpenAI tool dict "
                    f"({{'type': 'function', 'function': {{...}}}}); got {tool!r}"
                )
        return out or None
    raise TypeError(
        "tools must be a ToolsSchema, a list of FunctionSchema / OpenAI tool dicts, or None; "
        f"got {type(tools).__name__}"
    )
