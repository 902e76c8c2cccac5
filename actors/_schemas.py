"""Tool schemas: ``FunctionSchema`` and ``ToolsSchema`` in OpenAI's tool format, with the
handlers that may come with them (Pipecat 1.x): ``FunctionSchema(..., handler=fn)``, and plain
``async def fn(params, ...)`` functions among the tools, whose schema is read from their
signature and docstring (see :mod:`actors._direct`)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from ._advertised import AdvertisedHandler, advertise
from ._direct import describe_function, direct_handler

if TYPE_CHECKING:
    from ._handlers import FunctionHandler

__all__ = [
    "FunctionSchema",
    "PreparedTools",
    "ToolsSchema",
    "normalize_tools",
    "prepare_tools",
    "tool_definitions",
]

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
        handler: ``async def handler(params: FunctionCallParams) -> None``, run for the
            calls of this function made while the schema is among the conversation's tools
            (no ``register_function`` needed; a handler registered with it for the same name
            wins). ``None``: the schema only describes the function.

    Raises:
        ValueError: a bad name, or a required argument that is not a property.
        TypeError: ``handler`` is not an ``async def`` function.
    """

    name: str = attrs.field(validator=_check_name)
    description: str = ""
    properties: Mapping[str, Any] = attrs.field(factory=dict, converter=_to_dict)
    required: Sequence[str] = attrs.field(factory=list, converter=_to_list)
    handler: FunctionHandler | None = attrs.field(default=None, eq=False)
    _advertised: AdvertisedHandler | None = attrs.field(
        init=False, default=None, eq=False, repr=False
    )

    def __attrs_post_init__(self) -> None:
        missing = [r for r in self.required if r not in self.properties]
        if missing:
            raise ValueError(
                f"function {self.name!r}: required {missing} not among its properties "
                f"{sorted(self.properties)}"
            )
        if self.handler is not None:
            object.__setattr__(self, "_advertised", advertise(self.name, self.handler))

    @classmethod
    def from_function(cls, function: Any) -> FunctionSchema:
        """The schema of a plain ``async def fn(params, ...)`` function, which becomes its
        handler (see :mod:`actors._direct` for what is read from the signature and
        docstring).

        Raises:
            TypeError: ``function`` is not such a function, or an argument's annotation has
                no JSON-schema equivalent.
        """
        described = describe_function(function)
        return cls(
            name=described.name,
            description=described.description,
            properties=described.properties,
            required=described.required,
            handler=direct_handler(function),
        )

    @property
    def advertised_handler(self) -> AdvertisedHandler | None:
        """The handler with its token, if the schema has one."""
        return self._advertised

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


def _standard_tools(tools: Iterable[Any]) -> list[Any]:
    """Plain functions become their schemas; anything else is checked below."""
    if isinstance(tools, Mapping | str | bytes):
        raise TypeError("ToolsSchema.standard_tools takes a list of tools, not a single value")
    return [
        FunctionSchema.from_function(t)
        if callable(t) and not isinstance(t, FunctionSchema | type)
        else t
        for t in tools
    ]


def _custom_tools(tools: Any) -> list[Any]:
    """A list of OpenAI tool dicts; Pipecat 1.x's ``{AdapterType.OPENAI: [...]}`` gives its
    OpenAI list (the tools of other providers' adapters are not for this service)."""
    if tools is None:
        return []
    if isinstance(tools, Mapping):
        return [
            tool
            for key, listed in tools.items()
            if str(getattr(key, "value", key)).lower() == "openai"
            for tool in listed
        ]
    return list(tools)


@attrs.frozen
class ToolsSchema:
    """The tools offered to the LLM.

    Args:
        standard_tools: Function schemas, or plain ``async def fn(params, ...)`` functions
            (each becomes ``FunctionSchema.from_function(fn)``, with itself as the handler).
        custom_tools: Extra OpenAI tool dicts, sent verbatim after the standard tools (a
            Pipecat 1.x mapping ``{AdapterType.OPENAI: [...]}`` gives its OpenAI list).

    Raises:
        TypeError: a tool of another kind, or a function that cannot describe itself.
        ValueError: two tools with the same name.
    """

    standard_tools: Sequence[FunctionSchema] = attrs.field(factory=list, converter=_standard_tools)
    custom_tools: Sequence[Mapping[str, Any]] = attrs.field(factory=list, converter=_custom_tools)

    def __attrs_post_init__(self) -> None:
        names: set[str] = set()
        for tool in self.standard_tools:
            if not isinstance(tool, FunctionSchema):
                raise TypeError(
                    "ToolsSchema.standard_tools takes FunctionSchema objects or async "
                    f"functions, got "
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


@attrs.frozen
class PreparedTools:
    """Tools in the request's format, and the handlers that came with them.

    Attributes:
        api: The request's ``tools`` list (``None``: no tools).
        handlers: The handlers given with the schemas (or as plain functions), by name.
    """

    api: list[dict[str, Any]] | None
    handlers: dict[str, AdvertisedHandler] = attrs.field(factory=dict)


def prepare_tools(tools: object) -> PreparedTools:
    """Turn a ``ToolsSchema``, a list of ``FunctionSchema`` / OpenAI tool dicts / plain
    functions, or None into API tools, keeping the handlers that came with them.

    Raises:
        TypeError: anything else (the message says what is accepted).
        ValueError: two handler-carrying tools with the same name.
    """
    if tools is None:
        return PreparedTools(None)
    if isinstance(tools, ToolsSchema):
        schemas: list[FunctionSchema] = list(tools.standard_tools)
        return PreparedTools(tools.to_openai() or None, _handlers(schemas))
    if isinstance(tools, list | tuple):
        out: list[dict[str, Any]] = []
        schemas = []
        for tool in tools:
            if isinstance(tool, Mapping) and tool.get("type") in ("function", "custom"):
                out.append(dict(tool))
                continue
            schema = _as_schema(tool)
            schemas.append(schema)
            out.append(schema.to_openai())
        return PreparedTools(out or None, _handlers(schemas))
    raise TypeError(
        "tools must be a ToolsSchema, a list of FunctionSchema / async functions / OpenAI tool "
        f"dicts, or None; got {type(tools).__name__}"
    )


def _as_schema(tool: object) -> FunctionSchema:
    if isinstance(tool, FunctionSchema):
        return tool
    if callable(tool) and not isinstance(tool, type):
        return FunctionSchema.from_function(tool)
    raise TypeError(
        "each tool must be a FunctionSchema, an async function or an OpenAI tool dict "
        f"({{'type': 'function', 'function': {{...}}}}); got {tool!r}"
    )


def _handlers(schemas: Iterable[FunctionSchema]) -> dict[str, AdvertisedHandler]:
    handlers: dict[str, AdvertisedHandler] = {}
    for schema in schemas:
        advertised = schema.advertised_handler
        if advertised is None:
            continue
        if schema.name in handlers:
            raise ValueError(f"two tools named {schema.name!r} come with a handler; keep one")
        handlers[schema.name] = advertised
    return handlers


def normalize_tools(tools: object) -> list[dict[str, Any]] | None:
    """The request's ``tools`` list for ``tools`` (see :func:`prepare_tools`)."""
    return prepare_tools(tools).api


def tool_definitions(tools: object) -> list[dict[str, Any]] | None:
    """Like :func:`normalize_tools`, for tools that travel in a frame: those carry no
    handlers.

    Raises:
        TypeError: see :func:`prepare_tools`; also a tool that comes with a handler.
    """
    prepared = prepare_tools(tools)
    if prepared.handlers:
        names = ", ".join(sorted(prepared.handlers))
        raise TypeError(
            f"tools with handlers ({names}) cannot travel in a frame (frames carry data "
            "only): give them to the conversation (LLMContext(tools=...) or "
            "context.set_tools(...)), or register the handlers with "
            "llm.register_function(name, handler) and send schemas without handlers"
        )
    return prepared.api
