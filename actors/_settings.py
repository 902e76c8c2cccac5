"""``LLMSettings`` (``OpenAILLMService.Settings``): Pipecat 1.x's way of configuring the LLM
service, mapped onto trouper's model name, :class:`~actors.client.GenerationParams` and the
system instruction."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from .client import GenerationParams

__all__ = ["LLMSettings"]

#: The settings that are generation parameters (the others: ``model``, ``system_instruction``).
_GENERATION = (
    "temperature",
    "max_tokens",
    "max_completion_tokens",
    "top_p",
    "top_k",
    "frequency_penalty",
    "presence_penalty",
    "seed",
)


def _optional_text(what: str) -> Any:
    def check(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ValueError(f"LLMSettings.{attribute.name} must be {what}, got {value!r}")

    return check


def _freeze(value: Mapping[str, Any] | None) -> dict[str, Any]:
    return dict(value or {})


@attrs.frozen
class LLMSettings:
    """The LLM service's settings, Pipecat 1.x style (``OpenAILLMService.Settings(...)``).

    A field left at ``None`` is not set: the service keeps its default (or the value from
    ``model=``/``params=``). Values are validated at once, with the ranges of
    :class:`~actors.client.GenerationParams`.

    Args:
        model: The model name.
        system_instruction: Sent as a ``system`` message before the conversation's messages
            in every request (it is not written into the conversation).
        temperature: 0 to 2.
        max_tokens: At least 1 (deprecated by OpenAI, refused by its reasoning models).
        max_completion_tokens: At least 1.
        top_p: 0 to 1.
        top_k: At least 0; not an OpenAI parameter (vLLM, llama.cpp and Ollama honour it).
        frequency_penalty: -2 to 2.
        presence_penalty: -2 to 2.
        seed: Any 64-bit integer; best-effort determinism.
        extra: More request body fields (``GenerationParams.extra``).

    Raises:
        ValueError: an empty model or instruction, or a parameter out of its range
            (``InvalidParameterError``, which is a ``ValueError``).
    """

    model: str | None = attrs.field(default=None, validator=_optional_text("a model name"))
    system_instruction: str | None = attrs.field(
        default=None, validator=_optional_text("a non-empty string")
    )
    temperature: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    top_p: float | None = None
    top_k: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = None
    extra: Mapping[str, Any] = attrs.field(factory=dict, converter=_freeze)

    def __attrs_post_init__(self) -> None:
        GenerationParams().with_updates(self.generation_updates())  # validates

    def generation_updates(self) -> dict[str, Any]:
        """The generation parameters this sets, for ``GenerationParams.with_updates``."""
        updates = {name: getattr(self, name) for name in _GENERATION}
        out: dict[str, Any] = {k: v for k, v in updates.items() if v is not None}
        if self.extra:
            out["extra"] = dict(self.extra)
        return out

    def as_updates(self) -> dict[str, Any]:
        """Every setting this sets, as the mapping an ``LLMUpdateSettingsFrame`` carries."""
        out = self.generation_updates()
        if self.model is not None:
            out["model"] = self.model
        if self.system_instruction is not None:
            out["system_instruction"] = self.system_instruction
        return out
