"""Secret files under the data directory: made once, 0600, refused when others can read them."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from deployments.system.credentials import CredentialsError, keep_secret, private_dir


def test_a_secret_is_made_once_then_read_back(tmp_path: Path) -> None:
    path = tmp_path / "data" / "secret"
    assert keep_secret(path, "first") == "first"
    assert keep_secret(path, "second") == "first"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["secret"]  # no temp file left


def test_a_secret_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    keep_secret(path, "value")
    path.chmod(0o644)
    with pytest.raises(CredentialsError, match=r"readable by other users \(mode 0644\)"):
        keep_secret(path, "other")


def test_an_empty_secret_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.touch(mode=0o600)
    with pytest.raises(CredentialsError, match="is empty"):
        keep_secret(path, "value")


def test_private_dir_closes_an_open_folder(tmp_path: Path) -> None:
    folder = tmp_path / "open"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    assert stat.S_IMODE(private_dir(folder).stat().st_mode) == 0o700
