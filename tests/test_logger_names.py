"""One convention for logger names: ``trouper.`` and the package that writes the line.

Every ``structlog.get_logger(...)`` in ``runtime/`` and ``actors/`` names its logger
``trouper.<package>``, where ``<package>`` is the package of the module that asks for it
(``runtime/_cell.py`` logs as ``trouper.runtime``, ``actors/storage/_sqlite.py`` as
``trouper.actors.storage``), never ``__name__`` (which would show private module names).
The name is a string, written in the call or in a module-level constant. See
docs/architecture.md, "Logger names".
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(p for top in ("runtime", "actors") for p in (ROOT / top).rglob("*.py"))

#: ``runtime.logging.get_logger(name="trouper")`` hands the caller's name on.
_PASSED_ON = {("runtime/logging.py", "name")}


def _is_get_logger(call: ast.Call) -> bool:
    func = call.func
    return (
        isinstance(func, ast.Attribute)
        and func.attr == "get_logger"
        and isinstance(func.value, ast.Name)
        and func.value.id == "structlog"
    )


def logger_names(path: Path) -> list[tuple[int, str]]:
    """``(line, name)`` for every structlog logger the module asks for; an argument that is
    not a string (nor a module constant holding one) gives its source text."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    constants = {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    rel = path.relative_to(ROOT).as_posix()
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and _is_get_logger(node)):
            continue
        if not node.args:
            found.append((node.lineno, "<no name>"))
            continue
        arg = node.args[0]
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            found.append((node.lineno, arg.value))
        elif isinstance(arg, ast.Name) and arg.id in constants:
            found.append((node.lineno, constants[arg.id]))
        elif not (isinstance(arg, ast.Name) and (rel, arg.id) in _PASSED_ON):
            found.append((node.lineno, ast.unparse(arg)))
    return found


def expected_name(path: Path) -> str:
    """``trouper.`` and the dotted package of the module."""
    package = path.relative_to(ROOT).parent.as_posix().replace("/", ".")
    return f"trouper.{package}"


def test_the_modules_that_log_are_found() -> None:
    named = {
        path.relative_to(ROOT).as_posix(): [n for _, n in logger_names(path)] for path in MODULES
    }
    assert named["runtime/_actor.py"] == ["trouper.runtime"]
    assert named["actors/client/_client.py"] == ["trouper.actors.client"] * 2
    assert named["runtime/logging.py"] == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_logger_names_follow_the_convention(path: Path) -> None:
    wanted = expected_name(path)
    wrong = [f"line {line}: {name!r}" for line, name in logger_names(path) if name != wanted]
    assert wrong == [], f"{path.relative_to(ROOT)} must log as {wanted!r}"
