"""The tool choice of a context: the strings and the dict forms the API takes, and a clear
error for anything else (never an unhashable-type ``TypeError``)."""

from __future__ import annotations

from typing import Any

import pytest

from actors import OpenAILLMContext

FORCED = {"type": "function", "function": {"name": "get_weather"}}


@pytest.mark.parametrize("choice", ["none", "auto", "required", None, FORCED])
def test_every_documented_tool_choice_is_accepted(choice: Any) -> None:
    context = OpenAILLMContext(tool_choice=choice)
    assert context.tool_choice == choice
    context.set_tool_choice(choice)
    assert context.snapshot().tool_choice == choice


def test_a_dict_tool_choice_is_copied() -> None:
    choice: dict[str, Any] = {"type": "function", "function": {"name": "f"}}
    context = OpenAILLMContext()
    context.set_tool_choice(choice)
    choice["function"]["name"] = "changed"
    assert context.tool_choice == {"type": "function", "function": {"name": "f"}}


@pytest.mark.parametrize("choice", ["always", {"type": "tool"}, {"function": {}}, ["auto"], 3])
def test_an_invalid_tool_choice_is_a_value_error(choice: Any) -> None:
    with pytest.raises(ValueError, match=r"tool_choice .* is invalid"):
        OpenAILLMContext(tool_choice=choice)
