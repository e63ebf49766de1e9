"""The inventory loads when valid; when not, the error names the file, the server and the field."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
import yaml

from tasks.core.errors import InventoryError, ServerNotFound
from tasks.core.inventory import load_inventory

WEB = "5b1f8a0e-3c52-4a51-9d0e-2d6a9f0c1a01"
DB = "5b1f8a0e-3c52-4a51-9d0e-2d6a9f0c1a02"


def valid() -> dict[str, Any]:
    return {
        "servers": [
            {
                "id": WEB,
                "name": "web1",
                "host": "10.0.0.5",
                "username": "root",
                "private_key_file": "/keys/web1",
                "backup": {
                    "paths": ["/srv/data", "/etc/nginx"],
                    "schedule": "0 3 * * *",
                    "pre": "docker stop web",
                    "post": "docker start web",
                },
            },
            {
                "id": DB,
                "name": "db1",
                "host": "db.example.org",
                "port": 2222,
                "username": "ops",
                "private_key_file": "/keys/db1",
                "known_hosts_file": "/keys/known_hosts",
                "update": {"command": "apt-get -y upgrade", "timeout": 600},
            },
        ]
    }


def write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_a_valid_inventory_loads(tmp_path: Path) -> None:
    inventory = load_inventory(write(tmp_path, valid()))

    assert [s.name for s in inventory.servers] == ["web1", "db1"]
    web, db = inventory.servers
    assert web.id == UUID(WEB)
    assert web.port == 22
    assert web.backup is not None
    assert web.backup.paths == ["/srv/data", "/etc/nginx"]
    assert web.backup.schedule == "0 3 * * *"
    assert web.backup.timezone == "UTC"
    assert web.private_key_file == Path("/keys/web1")
    assert db.port == 2222
    assert db.backup is None
    assert db.update is not None and db.update.timeout == 600
    assert inventory.get(DB) is db
    assert inventory.get(UUID(WEB)) is web


def test_an_empty_file_is_an_empty_inventory(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text("", encoding="utf-8")
    assert load_inventory(path).servers == []


def _second_server(change: Any) -> dict[str, Any]:
    data = copy.deepcopy(valid())
    change(data["servers"][1])
    return data


def _set(*keys: str, value: Any) -> Any:
    def change(server: dict[str, Any]) -> None:
        target = server
        for key in keys[:-1]:
            target = target.setdefault(key, {})
        target[keys[-1]] = value

    return change


def _drop(key: str) -> Any:
    return lambda server: server.pop(key)


INVALID = {
    "relative path": (_set("backup", "paths", value=["srv/data"]), "backup.paths.0"),
    "dot-dot path": (_set("backup", "paths", value=["/srv/../etc"]), "backup.paths.0"),
    "bad cron": (
        _set("backup", value={"paths": ["/srv"], "schedule": "61 * * *"}),
        "backup.schedule",
    ),
    "bad timezone": (
        _set("backup", value={"paths": ["/srv"], "schedule": "0 3 * * *", "timezone": "Mars/Base"}),
        "backup.timezone",
    ),
    "missing field": (_drop("username"), "username"),
    "unknown field": (_set("colour", value="blue"), "colour"),
    "control character in host": (_set("host", value="db\x1b[31m.example"), "host"),
    "control character in a path": (_set("backup", "paths", value=["/srv/a\nb"]), "backup.paths.0"),
    "port out of range": (_set("port", value=70000), "port"),
    "id not a uuid": (_set("id", value="db1"), "id"),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_an_invalid_server_is_named_with_its_field(tmp_path: Path, case: str) -> None:
    change, field = INVALID[case]
    data = _second_server(change)
    path = write(tmp_path, data)

    with pytest.raises(InventoryError) as raised:
        load_inventory(path)

    message = str(raised.value)
    assert message.startswith(f"{path}: server #2 (db1): {field}: "), message
    assert len(message.splitlines()) == 1, message


def test_a_duplicate_id_names_the_second_server(tmp_path: Path) -> None:
    data = valid()
    data["servers"][1]["id"] = WEB
    path = write(tmp_path, data)

    with pytest.raises(InventoryError) as raised:
        load_inventory(path)

    message = str(raised.value)
    assert str(path) in message
    assert "server #2 (db1)" in message, message
    assert "id" in message
    assert WEB in message


def test_a_control_character_in_a_name_is_not_echoed(tmp_path: Path) -> None:
    """An error message must not carry the terminal escape or newline it complains about."""
    data = _second_server(_set("name", value="db1\x1b[2J\nforged line"))
    path = write(tmp_path, data)

    with pytest.raises(InventoryError) as raised:
        load_inventory(path)

    message = str(raised.value)
    assert f"{path}: server #2 " in message
    assert ": name: " in message
    assert not re.search(r"[\x00-\x1f\x7f]", message), repr(message)


def test_every_problem_gets_its_own_line(tmp_path: Path) -> None:
    data = valid()
    data["servers"][0]["port"] = 0
    data["servers"][1].pop("host")
    path = write(tmp_path, data)

    with pytest.raises(InventoryError) as raised:
        load_inventory(path)

    assert str(raised.value).splitlines() == [
        f"{path}: server #1 (web1): port: Input should be greater than or equal to 1",
        f"{path}: server #2 (db1): host: Field required",
    ]


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(InventoryError, match=re.escape(f"{path}: inventory file not found")):
        load_inventory(path)


def test_broken_yaml_is_named(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text("servers: [\n", encoding="utf-8")
    with pytest.raises(InventoryError, match=re.escape(f"{path}: cannot read the inventory")):
        load_inventory(path)


def test_an_unknown_id_is_server_not_found(tmp_path: Path) -> None:
    inventory = load_inventory(write(tmp_path, valid()))
    missing = uuid4()
    with pytest.raises(ServerNotFound, match=str(missing)):
        inventory.get(missing)
    with pytest.raises(ServerNotFound):
        inventory.get("../etc/passwd")


def test_an_unchanged_inventory_is_not_parsed_again(tmp_path: Path) -> None:
    path = write(tmp_path, valid())

    assert load_inventory(path) is load_inventory(path)


def test_an_edited_inventory_is_read_again(tmp_path: Path) -> None:
    path = write(tmp_path, valid())
    before = load_inventory(path)
    data = valid()
    data["servers"][0]["name"] = "web2"  # the same size: only the times tell
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))

    assert before.servers[0].name == "web1"
    assert load_inventory(path).servers[0].name == "web2"


def test_an_inventory_replaced_by_a_rename_is_read_again(tmp_path: Path) -> None:
    path = write(tmp_path, valid())
    load_inventory(path)
    data = valid()
    del data["servers"][1]
    other = tmp_path / "new.yaml"
    other.write_text(yaml.safe_dump(data), encoding="utf-8")
    other.replace(path)

    assert [s.name for s in load_inventory(path).servers] == ["web1"]


def test_an_inventory_broken_after_a_good_read_fails_every_time(tmp_path: Path) -> None:
    path = write(tmp_path, valid())
    load_inventory(path)
    path.write_text("servers: [", encoding="utf-8")

    for _ in range(2):
        with pytest.raises(InventoryError, match="cannot read the inventory"):
            load_inventory(path)


def test_the_fork_server_parses_the_inventory_of_its_settings_for_its_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deployments.worker.preload import read_inventory
    from tasks.core import inventory as module

    path = write(tmp_path, valid())
    monkeypatch.setenv("MM_INVENTORY", str(path))
    monkeypatch.setattr(module, "_read", {})

    read_inventory()

    ((key, (_, inventory)),) = module._read.items()
    assert key == path.absolute()
    assert load_inventory(path) is inventory


def test_the_fork_server_starts_without_a_readable_inventory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deployments.worker.preload import read_inventory
    from tasks.core import inventory as module

    monkeypatch.setattr(module, "_read", {})
    for content in (None, "servers: ["):
        path = tmp_path / "inventory.yaml"
        if content is not None:
            path.write_text(content, encoding="utf-8")
        monkeypatch.setenv("MM_INVENTORY", str(path))
        read_inventory()
    assert module._read == {}
