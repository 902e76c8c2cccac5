"""Where the local model and the server logs live."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.local import DEFAULT_MODEL, logs_dir, model_path, models_dir, trouper_home


def test_trouper_home_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TROUPER_HOME", str(tmp_path / "th"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert trouper_home() == tmp_path / "th"
    assert models_dir() == tmp_path / "th" / "models"
    assert logs_dir() == tmp_path / "th" / "logs"
    assert model_path() == tmp_path / "th" / "models" / DEFAULT_MODEL.filename


def test_trouper_home_expands_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("TROUPER_HOME", "~/trouper-data")
    assert models_dir() == tmp_path / "trouper-data" / "models"


def test_default_is_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TROUPER_HOME")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert models_dir() == tmp_path / ".cache" / "trouper" / "models"


def test_empty_trouper_home_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TROUPER_HOME", "  ")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models_dir() == tmp_path / "xdg" / "trouper" / "models"


def test_explicit_directory(tmp_path: Path) -> None:
    assert model_path(directory=tmp_path) == tmp_path / DEFAULT_MODEL.filename
