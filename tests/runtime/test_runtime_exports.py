"""The public surface: ``runtime.__all__`` is exactly what the package exports, documented."""

from __future__ import annotations

import inspect
import types

import pytest

import runtime
import runtime.logging
import runtime.serialization
import runtime.testing


def _exported(module: types.ModuleType) -> list[str]:
    """Public names bound in ``module``: not private, not submodules, not ``__future__``."""
    return [
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name != "annotations"
    ]


def _isort_order(name: str) -> tuple[int, str]:
    """The order ruff keeps ``__all__`` in (RUF022): constants, then classes, then the rest."""
    if name.isupper():
        return (0, name)
    return (1, name) if name[:1].isupper() else (2, name)


class TestExports:
    def test_all_is_exactly_the_public_names_of_the_package(self) -> None:
        """``runtime.__all__`` lists every public name the package binds, sorted, and only
        those."""
        assert runtime.__all__ == sorted(runtime.__all__, key=_isort_order)
        assert sorted(_exported(runtime), key=_isort_order) == runtime.__all__

    @pytest.mark.parametrize(
        "module",
        [runtime.serialization, runtime.testing, runtime.logging],
        ids=lambda m: m.__name__,
    )
    def test_public_modules_list_what_they_define(self, module: types.ModuleType) -> None:
        """Each public module's ``__all__`` names exist and cover every public class and
        function it defines."""
        for name in module.__all__:
            assert hasattr(module, name), name
        defined = {
            name
            for name, value in vars(module).items()
            if not name.startswith("_")
            and (inspect.isclass(value) or inspect.isfunction(value))
            and value.__module__ == module.__name__
        }
        assert defined <= set(module.__all__)

    @pytest.mark.parametrize(
        "module",
        [runtime, runtime.serialization, runtime.testing, runtime.logging],
        ids=lambda m: m.__name__,
    )
    def test_every_public_class_and_function_is_documented(self, module: types.ModuleType) -> None:
        """Every exported class and function has its own docstring, and so do the public
        methods of exported classes."""
        missing: list[str] = []
        for name in module.__all__:
            value = getattr(module, name)
            if not (inspect.isclass(value) or inspect.isfunction(value)):
                continue
            if not (value.__doc__ or "").strip():
                missing.append(name)
            if inspect.isclass(value):
                for attr, member in vars(value).items():
                    if attr.startswith("_") or not callable(member):
                        continue
                    if not (getattr(member, "__doc__", "") or "").strip():
                        missing.append(f"{name}.{attr}")
        assert missing == []

    def test_errors_form_one_documented_tree(self) -> None:
        """Every runtime error derives from ``ActorError``; ``FrameTypeError`` is a
        ``TypeError`` and ``AskTimeoutError`` a ``TimeoutError``."""
        for name in (
            "ActorDeadError",
            "AskTimeoutError",
            "SelfAskError",
            "RestartIntensityExceeded",
            "SessionStateError",
        ):
            assert issubclass(getattr(runtime, name), runtime.ActorError), name
        assert issubclass(runtime.FrameTypeError, TypeError)
        assert issubclass(runtime.AskTimeoutError, TimeoutError)
        assert issubclass(runtime.SessionStateError, RuntimeError)
