"""What the package says about itself holds: its licence, its version, its changelog, what the
README says the local model installs, and the API reference's view of the attrs classes."""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys
import tomllib
from importlib.metadata import metadata, version
from pathlib import Path

import attrs
import pytest

import actors
import runtime
from actors.local import DEFAULT_MODEL

from .cli.cli_kit import QUICK_TIMEOUT, cli_env, trouper

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]

#: The BSD 2-Clause licence's own sentences (the template on spdx.org/licenses/BSD-2-Clause).
BSD_2_CLAUSE = (
    "Redistribution and use in source and binary forms, with or without modification, are "
    "permitted provided that the following conditions are met:",
    "1. Redistributions of source code must retain the above copyright notice, this list of "
    "conditions and the following disclaimer.",
    "2. Redistributions in binary form must reproduce the above copyright notice, this list of "
    "conditions and the following disclaimer in the documentation and/or other materials "
    "provided with the distribution.",
    'THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS"',
)


def _words(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------- the licence


def test_the_license_file_is_the_declared_bsd_2_clause() -> None:
    assert PROJECT["license"] == "BSD-2-Clause"
    assert PROJECT["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("BSD 2-Clause License\n")
    assert re.search(r"^Copyright \(c\) \d{4}, The trouper authors$", text, re.MULTILINE)
    for sentence in BSD_2_CLAUSE:
        assert _words(sentence) in _words(text)
    assert "3." not in text  # no third clause: that would be BSD-3-Clause


def test_the_installed_metadata_carries_the_spdx_expression() -> None:
    """Built with setuptools >= 77 (the SPDX form): ``License-Expression``, no free-text
    ``License`` field (the deprecated table form gave one)."""
    meta = metadata("trouper")
    assert meta["License-Expression"] == "BSD-2-Clause"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert meta["License"] is None
    requires = PYPROJECT["build-system"]["requires"]
    assert any(re.fullmatch(r"setuptools>=(7[7-9]|[89]\d|\d{3,})(\..*)?", r) for r in requires)


# ---------------------------------------------------------------- the version


def test_version_is_the_package_metadata_and_pyproject() -> None:
    assert runtime.__version__ == version("trouper") == PROJECT["version"]
    assert actors.__version__ == runtime.__version__


def test_trouper_version_prints_it_on_one_line() -> None:
    result = subprocess.run(
        [*trouper(), "--version"],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=QUICK_TIMEOUT,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"trouper {version('trouper')}\n"


def test_the_changelog_has_an_unreleased_section_and_the_current_version() -> None:
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## (.+)$", text, re.MULTILINE)
    assert headings[0] == "Unreleased"
    assert any(h.startswith(f"{PROJECT['version']} - ") for h in headings)


# ---------------------------------------------------------------- the README


def test_the_readme_says_what_the_local_model_installs() -> None:
    """The llama.cpp wrapper and its licence, and the wheels the model comes from (read from
    the code, so the README follows a change of model or of build)."""
    from actors.local._build import LLAMA_CPP_REQUIREMENT

    text = _words((ROOT / "README.md").read_text(encoding="utf-8"))
    name, _, pinned = LLAMA_CPP_REQUIREMENT.partition("==")
    assert f"`{name}`" in text
    assert f"`=={pinned}`" in text
    assert "AGPL-3.0-or-later" in text
    assert "MIT-licensed llama.cpp" in text
    assert "separate process" in text
    first, last = DEFAULT_MODEL.requirements[0], DEFAULT_MODEL.requirements[-1]
    assert f"`{first.partition('==')[0]}` … `{last.partition('==')[0]}`" in text
    assert f"(`=={first.partition('==')[2]}`)" in text
    assert f"the model is {DEFAULT_MODEL.license}" in text
    assert "[LICENSE](LICENSE)" in text
    assert "[CHANGELOG.md](CHANGELOG.md)" in text


# ---------------------------------------------------------------- the API reference


def _reference_modules() -> list[str]:
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    return re.findall(r"^      - ([a-z.]+): reference/\1\.md$", nav, re.MULTILINE)


def test_every_public_package_has_a_reference_page() -> None:
    modules = _reference_modules()
    assert {
        "runtime",
        "runtime.testing",
        "runtime.serialization",
        "runtime.logging",
        "actors",
        "actors.client",
        "actors.testing",
        "actors.local",
        "actors.storage",
    } <= set(modules)
    for module in modules:
        page = (ROOT / "docs" / "reference" / f"{module}.md").read_text(encoding="utf-8")
        assert f"::: {module}\n" in page


def test_every_guide_is_in_the_site_navigation() -> None:
    """A page of docs/ left out of mkdocs.yml's nav is built but linked from no menu."""
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    listed = set(re.findall(r"^ +- (?:[^:\n]+: )?([\w./-]+\.md)$", nav, re.MULTILINE))
    guides = {path.name for path in (ROOT / "docs").glob("*.md")}
    assert guides - listed == set()


def test_the_docs_build_counts_warnings_as_errors() -> None:
    """``make docs`` runs mkdocs in strict mode without ``--quiet``: quiet drops warnings
    before strict mode counts them, and the build then passes with every one of them."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    builds = [line for line in makefile.splitlines() if "mkdocs build" in line]
    assert builds
    for line in builds:
        assert "--strict" in line.split()
        assert not {"--quiet", "-q"} & set(line.split())


def _attrs_classes() -> list[type]:
    found: dict[str, type] = {}
    for module_name in _reference_modules():
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", ()):
            value = getattr(module, name)
            if inspect.isclass(value) and attrs.has(value) and "__init__" in vars(value):
                found[f"{module_name}.{name}"] = value
    return list(found.values())


def test_the_reference_shows_the_signature_attrs_generates() -> None:
    """The docs' griffe extension rebuilds each attrs class's ``__init__`` from the source: its
    parameters (names, order, kinds) are the ones attrs generated."""
    griffe = pytest.importorskip("griffe", reason="the docs extra (make setup installs it)")
    sys.path.insert(0, str(ROOT / "docs" / "reference"))
    try:
        from _griffe_reference import Reference
    finally:
        sys.path.remove(str(ROOT / "docs" / "reference"))
    loader = griffe.GriffeLoader(
        extensions=griffe.Extensions(Reference()), search_paths=[str(ROOT)]
    )
    for package in ("runtime", "actors"):
        loader.load(package)
    classes = _attrs_classes()
    assert len(classes) > 50
    for cls in classes:
        documented = loader.modules_collection[f"{cls.__module__}.{cls.__qualname__}"]
        generated = documented.members["__init__"]
        shown = [(p.name, p.kind.value) for p in generated.parameters][1:]
        real = [
            (p.name, str(p.kind.description)) for p in inspect.signature(cls).parameters.values()
        ]
        assert shown == real, cls


# ---------------------------------------------------------------- what an import costs


def test_importing_the_stages_leaves_the_optional_parts_out() -> None:
    """``import actors`` does not import the Redis client (only a Redis storage needs it) nor
    ``trio.testing`` (which imports pytest where it is installed): every object they would
    leave on the heap is scanned by each full pass of the garbage collector, for as long as
    the process runs."""
    probe = (
        "import sys, actors, actors.storage; "
        "print(sorted(m for m in ('coredis', 'trio.testing', 'pytest') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=QUICK_TIMEOUT,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.strip() == "[]"
    # The name is still there, imported on first use.
    from actors.storage import RedisConversationStorage

    assert RedisConversationStorage.__name__ == "RedisConversationStorage"
    import actors.storage

    with pytest.raises(AttributeError, match="has no attribute 'RedisStorage'"):
        _ = actors.storage.RedisStorage
