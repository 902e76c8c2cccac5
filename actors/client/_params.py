"""Request building: generation parameters with validation, the request object and its JSON body.

Every range documented for ``POST /chat/completions`` is checked when a
:class:`GenerationParams` or a :class:`ChatRequest` is built, so a bad value fails at construction
with :class:`~actors.client.InvalidParameterError` naming the field, the value and the allowed
range, before anything is sent. Unset parameters (``None``) are left out of the body, so each
server applies its own defaults; ``extra`` mappings are merged last, so they can add
server-specific parameters (``min_p``, ``repetition_penalty``, ``chat_template_kwargs``...) or
override anything.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import attrs

from ._errors import InvalidParameterError

__all__ = ["ChatRequest", "GenerationParams"]

_INT64 = 2**63


#: The ``extra`` of every parameter set that has none: one read-only mapping shared by all
#: (not one more object per service and per request for the garbage collector to scan).
_NO_EXTRA: Mapping[str, Any] = MappingProxyType({})


def _freeze_mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if value is None:
        return _NO_EXTRA
    if not isinstance(value, Mapping):
        raise InvalidParameterError(f"extra={value!r}: expected a mapping of body fields")
    return MappingProxyType(dict(value)) if value else _NO_EXTRA


def _number(owner: str, lo: float, hi: float) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidParameterError(
                f"{owner}.{attribute.name}={value!r}: expected a number between {lo:g} and {hi:g}"
            )
        if math.isnan(value) or not lo <= value <= hi:
            raise InvalidParameterError(
                f"{owner}.{attribute.name}={value!r} is out of range: "
                f"allowed {lo:g} <= {attribute.name} <= {hi:g}"
            )

    return check


def _integer(owner: str, lo: int | None, hi: int | None) -> Any:
    if lo is not None and hi is not None:
        allowed = f"{lo} <= {{name}} <= {hi}"
    elif lo is not None:
        allowed = f"{{name}} >= {lo}"
    else:
        allowed = "any integer"

    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None:
            return
        rule = allowed.format(name=attribute.name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidParameterError(
                f"{owner}.{attribute.name}={value!r}: expected an integer ({rule})"
            )
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise InvalidParameterError(
                f"{owner}.{attribute.name}={value!r} is out of range: allowed {rule}"
            )

    return check


def _optional_type(owner: str, kind: type | tuple[type, ...], what: str) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None and not isinstance(value, kind):
            raise InvalidParameterError(f"{owner}.{attribute.name}={value!r}: expected {what}")

    return check


def _stop(value: str | Sequence[str] | None) -> str | tuple[str, ...] | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Sequence):
        return tuple(value)
    raise InvalidParameterError(
        f"GenerationParams.stop={value!r}: expected a string or a list of up to 4 strings"
    )


def _check_stop(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    items = (value,) if isinstance(value, str) else value
    if not 1 <= len(items) <= 4 or not all(isinstance(s, str) and s for s in items):
        raise InvalidParameterError(
            f"GenerationParams.stop={value!r}: expected a non-empty string or a list of 1 to 4 "
            "non-empty strings"
        )


def _check_response_format(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, Mapping) or not isinstance(value.get("type"), str):
        raise InvalidParameterError(
            f"GenerationParams.response_format={value!r}: expected a mapping with a string "
            "'type' (text, json_object or json_schema)"
        )


_G = "GenerationParams"


@attrs.frozen
class GenerationParams:
    """Sampling and output parameters of a chat completion. ``None`` means "not sent".

    Attributes:
        temperature: 0 to 2.
        top_p: 0 to 1.
        top_k: >= 0; not an OpenAI parameter (vLLM, llama.cpp, Ollama honour it; OpenAI rejects it).
        max_tokens: >= 1; deprecated by OpenAI and refused by its reasoning models.
        max_completion_tokens: >= 1; ignored by Ollama.
        seed: Any 64-bit integer; best-effort determinism.
        frequency_penalty: -2 to 2.
        presence_penalty: -2 to 2.
        stop: A string or 1 to 4 strings.
        logprobs: Return per-token log probabilities.
        top_logprobs: 0 to 20 alternatives per token; requires ``logprobs=True``.
        response_format: ``{"type": "text" | "json_object" | "json_schema", ...}``.
        service_tier: ``auto``, ``default``, ``flex``, ``priority``...
        user: End-user identifier (deprecated by OpenAI, ignored by most other servers).
        extra: More body fields, merged after the parameters above.

    Raises:
        InvalidParameterError: A value is of the wrong type or out of range (at construction and in
            :meth:`with_updates`).
    """

    temperature: float | None = attrs.field(default=None, validator=_number(_G, 0, 2))
    top_p: float | None = attrs.field(default=None, validator=_number(_G, 0, 1))
    top_k: int | None = attrs.field(default=None, validator=_integer(_G, 0, None))
    max_tokens: int | None = attrs.field(default=None, validator=_integer(_G, 1, None))
    max_completion_tokens: int | None = attrs.field(default=None, validator=_integer(_G, 1, None))
    seed: int | None = attrs.field(default=None, validator=_integer(_G, -_INT64, _INT64 - 1))
    frequency_penalty: float | None = attrs.field(default=None, validator=_number(_G, -2, 2))
    presence_penalty: float | None = attrs.field(default=None, validator=_number(_G, -2, 2))
    stop: str | tuple[str, ...] | None = attrs.field(
        default=None, converter=_stop, validator=_check_stop
    )
    logprobs: bool | None = attrs.field(default=None, validator=_optional_type(_G, bool, "a bool"))
    top_logprobs: int | None = attrs.field(default=None, validator=_integer(_G, 0, 20))
    response_format: Mapping[str, Any] | None = attrs.field(
        default=None, validator=_check_response_format
    )
    service_tier: str | None = attrs.field(
        default=None, validator=_optional_type(_G, str, "a string")
    )
    user: str | None = attrs.field(default=None, validator=_optional_type(_G, str, "a string"))
    extra: Mapping[str, Any] = attrs.field(factory=dict, converter=_freeze_mapping)

    def __attrs_post_init__(self) -> None:
        if self.top_logprobs is not None and self.logprobs is not True:
            raise InvalidParameterError(
                f"GenerationParams.top_logprobs={self.top_logprobs!r} requires logprobs=True "
                f"(logprobs={self.logprobs!r})"
            )

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The names accepted by :meth:`with_updates` (every field, ``extra`` included)."""
        return tuple(a.name for a in attrs.fields(cls))

    def with_updates(
        self, changes: Mapping[str, Any], *, unknown_to_extra: bool = False
    ) -> GenerationParams:
        """A copy with some parameters changed (``None`` unsets one), validated like a new instance.

        Args:
            changes: Field name -> new value. ``extra`` replaces the whole extra mapping.
            unknown_to_extra: Put keys that are not fields into ``extra`` (merged into the existing
                one) instead of refusing them.

        Returns:
            The new parameters; ``self`` is unchanged.

        Raises:
            InvalidParameterError: An unknown key (the message lists the valid ones) or an invalid
                value.
        """
        names = self.field_names()
        known = {k: v for k, v in changes.items() if k in names}
        unknown = {k: v for k, v in changes.items() if k not in names}
        if unknown:
            if not unknown_to_extra:
                raise InvalidParameterError(
                    f"unknown generation parameter(s) {sorted(unknown)}; valid: {', '.join(names)}"
                )
            known["extra"] = {**known.get("extra", self.extra), **unknown}
        return attrs.evolve(self, **known)

    def to_body(self) -> dict[str, Any]:
        """The parameters as request-body fields: set ones only, then ``extra``.

        Returns:
            A new dict.
        """
        body: dict[str, Any] = {}
        for attribute in attrs.fields(GenerationParams):
            name = attribute.name
            if name == "extra":
                continue
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            body[name] = value
        body.update(self.extra)
        return body


def _messages(value: Sequence[Mapping[str, Any]]) -> tuple[Mapping[str, Any], ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise InvalidParameterError(
            f"ChatRequest.messages: expected a list of message objects, got {type(value).__name__}"
        )
    return tuple(value)


def _check_messages(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not value:
        raise InvalidParameterError("ChatRequest.messages: at least one message is required")
    for position, message in enumerate(value):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise InvalidParameterError(
                f"ChatRequest.messages[{position}]: expected a mapping with a string 'role'"
            )


def _check_model(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidParameterError(f"ChatRequest.model={value!r}: expected a non-empty string")


def _tools(value: Sequence[Mapping[str, Any]] | None) -> tuple[Mapping[str, Any], ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise InvalidParameterError(f"ChatRequest.tools={value!r}: expected a list of tools")
    return tuple(value)


def _check_tools(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    for position, tool in enumerate(value):
        if not isinstance(tool, Mapping) or not isinstance(tool.get("type"), str):
            raise InvalidParameterError(
                f"ChatRequest.tools[{position}]: expected a mapping with a string 'type' "
                "(e.g. {'type': 'function', 'function': {...}})"
            )


_TOOL_CHOICES = ("none", "auto", "required")


def _check_tool_choice(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None or isinstance(value, Mapping):
        return
    if value not in _TOOL_CHOICES:
        raise InvalidParameterError(
            f"ChatRequest.tool_choice={value!r}: expected one of {', '.join(_TOOL_CHOICES)} or a "
            "mapping such as {'type': 'function', 'function': {'name': ...}}"
        )


@attrs.frozen
class ChatRequest:
    """One streaming chat-completion request.

    Attributes:
        model: The model name.
        messages: The conversation (message objects as in the API; not copied).
        tools: Tool definitions, or ``None``.
        tool_choice: ``"none"``, ``"auto"``, ``"required"``, a mapping naming a tool, or ``None``.
        parallel_tool_calls: Allow several tool calls in one answer (``None``: server default).
        params: Generation parameters.
        extra: Body fields merged last, after ``params.extra`` (wins over everything).
        include_usage: Ask for the final usage chunk (``stream_options.include_usage``).

    Raises:
        InvalidParameterError: The model, messages, tools or tool choice are malformed.
    """

    model: str = attrs.field(validator=_check_model)
    messages: tuple[Mapping[str, Any], ...] = attrs.field(
        converter=_messages, validator=_check_messages
    )
    tools: tuple[Mapping[str, Any], ...] | None = attrs.field(
        default=None, converter=_tools, validator=_check_tools
    )
    tool_choice: str | Mapping[str, Any] | None = attrs.field(
        default=None, validator=_check_tool_choice
    )
    parallel_tool_calls: bool | None = attrs.field(
        default=None, validator=_optional_type("ChatRequest", bool, "a bool")
    )
    params: GenerationParams = attrs.field(
        factory=GenerationParams,
        validator=_optional_type("ChatRequest", GenerationParams, "a GenerationParams"),
    )
    extra: Mapping[str, Any] = attrs.field(factory=dict, converter=_freeze_mapping)
    include_usage: bool = attrs.field(
        default=True, validator=_optional_type("ChatRequest", bool, "a bool")
    )

    def to_body(self) -> dict[str, Any]:
        """The JSON body of ``POST /chat/completions`` for this request (``stream: true``).

        Returns:
            A new dict; unset parameters are absent; ``extra`` is merged last.
        """
        body: dict[str, Any] = {
            "model": self.model,
            "messages": list(self.messages),
            "stream": True,
        }
        if self.include_usage:
            body["stream_options"] = {"include_usage": True}
        if self.tools is not None:
            body["tools"] = list(self.tools)
        if self.tool_choice is not None:
            body["tool_choice"] = self.tool_choice
        if self.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = self.parallel_tool_calls
        body.update(self.params.to_body())
        body.update(self.extra)
        return body
