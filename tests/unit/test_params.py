"""Backup options as the original API takes them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tasks.core.jobs import BackupOptions


def test_defaults() -> None:
    options = BackupOptions()
    assert options.backup_type == "full"
    assert options.compression is False
    assert options.wanted_compression == "none"
    assert options.encryption is False


@pytest.mark.parametrize(
    ("given", "wanted"),
    [(True, "auto"), (False, "none"), ("zstd", "zstd"), ("gzip", "gzip"), ("none", "none")],
)
def test_compression(given: bool | str, wanted: str) -> None:
    assert BackupOptions.model_validate({"compression": given}).wanted_compression == wanted


def test_the_json_of_the_original_api_is_accepted() -> None:
    options = BackupOptions.model_validate_json(
        '{"backup_type": "full", "compression": true, "encryption": false}'
    )
    assert options.wanted_compression == "auto"


@pytest.mark.parametrize("value", ["brotli", "ZSTD", 3, None])
def test_unknown_compression_is_rejected(value: object) -> None:
    with pytest.raises(ValidationError) as raised:
        BackupOptions.model_validate({"compression": value})
    assert {e["loc"][0] for e in raised.value.errors()} == {"compression"}


def test_encryption_is_a_switch() -> None:
    assert BackupOptions(encryption=True).encryption is True
    with pytest.raises(ValidationError):
        BackupOptions.model_validate({"encryption": "age"})


def test_an_unknown_field_is_rejected() -> None:
    with pytest.raises(ValidationError) as raised:
        BackupOptions.model_validate({"compresion": "zstd"})
    errors = raised.value.errors()
    assert [(e["loc"], e["type"]) for e in errors] == [(("compresion",), "extra_forbidden")]


def test_only_full_backups() -> None:
    with pytest.raises(ValidationError):
        BackupOptions.model_validate({"backup_type": "incremental"})
