"""Servers have owners: the inventory's `owners`, which servers a caller may use, and the scope
of the jobs a user sees (their user tag AND the tag of a server they own)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.client.schemas.objects import FlowRun

from api_shim.access import scope_of, usable_server, usable_servers
from api_shim.routes.servers import _info
from deployments.control.catalogue import server_tag, user_tag
from deployments.control.selection import Scope, Slice
from tasks.core.callers import Caller, Role
from tasks.core.errors import InventoryError, ServerNotFound
from tasks.core.inventory import Inventory, load_inventory

A, B, C = (str(uuid.UUID(int=n)) for n in (1, 2, 3))
ALICE = Caller("alice", Role.USER)
BOB = Caller("bob", Role.USER)
ADMIN = Caller("root", Role.ADMIN)


def entry(server_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": server_id,
        "name": f"srv-{server_id[-1]}",
        "host": "10.9.8.7",
        "username": "root",
        "private_key_file": "/keys/secret_key",
        "known_hosts_file": "/keys/known_hosts",
        **extra,
    }


def inventory() -> Inventory:
    return Inventory.model_validate(
        {
            "servers": [
                entry(A, owners=["alice"], backup={"paths": ["/srv"], "pre": "echo tok-123"}),
                entry(B, owners=["alice", "bob"], update={"command": "apt-get upgrade tok-456"}),
                entry(C),
            ]
        }
    )


def test_owners_default_to_none_so_only_admins_use_the_server() -> None:
    servers = inventory().servers
    assert [s.owners for s in servers] == [["alice"], ["alice", "bob"], []]
    assert [s.id for s in usable_servers(ALICE, inventory())] == [uuid.UUID(A), uuid.UUID(B)]
    assert [str(s.id) for s in usable_servers(BOB, inventory())] == [B]
    assert len(usable_servers(ADMIN, inventory())) == 3
    assert usable_servers(Caller("carol", Role.USER), inventory()) == []


@pytest.mark.parametrize(
    ("owners", "says"),
    [("alice", "list"), ([""], "non-empty"), (["  "], "non-empty"), (["a\nb"], "control")],
)
def test_invalid_owners_name_the_server_and_field(tmp_path: Path, owners: Any, says: str) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump({"servers": [entry(A, owners=owners)]}))
    with pytest.raises(InventoryError) as caught:
        load_inventory(path)
    assert "server #1 (srv-1): owners" in str(caught.value)
    assert says in str(caught.value)


def test_another_users_server_is_as_unknown_as_a_missing_one() -> None:
    with pytest.raises(ServerNotFound) as foreign:
        usable_server(BOB, inventory(), uuid.UUID(A))
    with pytest.raises(ServerNotFound) as unowned:
        usable_server(ALICE, inventory(), uuid.UUID(C))
    missing_id = uuid.uuid4()
    with pytest.raises(ServerNotFound) as missing:
        usable_server(ALICE, inventory(), missing_id)
    assert str(foreign.value) == str(missing.value).replace(str(missing_id), A)
    assert str(unowned.value) == str(missing.value).replace(str(missing_id), C)
    assert str(usable_server(ALICE, inventory(), uuid.UUID(B)).id) == B
    assert str(usable_server(ADMIN, inventory(), uuid.UUID(C)).id) == C


def test_ownership_follows_an_edit_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump({"servers": [entry(A, owners=["alice"])]}))
    assert scope_of(ALICE, load_inventory(path)) == Scope("alice", frozenset({A}))
    time.sleep(0.01)  # a new modification time even on coarse clocks
    path.write_text(yaml.safe_dump({"servers": [entry(A, owners=["bob"])]}))
    assert scope_of(ALICE, load_inventory(path)) == Scope("alice", frozenset())
    assert scope_of(ADMIN, load_inventory(path)) is None


def run(*tags: str) -> FlowRun:
    return FlowRun(flow_id=uuid.uuid4(), tags=list(tags))


def test_a_scope_holds_the_users_runs_on_their_servers_only() -> None:
    scope = scope_of(ALICE, inventory())
    assert scope is not None and not scope.empty
    assert scope.allows(run("job:scan:full", user_tag("alice"), server_tag(A)))
    assert scope.allows(run(user_tag("alice"), server_tag(B)))
    assert not scope.allows(run(user_tag("alice"), server_tag(C)))  # not (or no longer) hers
    assert not scope.allows(run(user_tag("bob"), server_tag(A)))  # another's job
    assert not scope.allows(run(user_tag("alice")))  # no server tag: fail closed
    assert Scope("carol", frozenset()).empty


def test_the_filter_asks_prefect_for_the_user_tag_and_any_owned_server_tag() -> None:
    scope = Scope("alice", frozenset({B, A}))
    tags = Slice(None, ("scan",)).flow_run_filter(scope).tags
    assert tags is not None
    assert tags.all_ == [user_tag("alice")]
    assert tags.any_ == [server_tag(A), server_tag(B)]
    assert tags.operator.value == "and_"
    assert Slice(None, ("scan",)).flow_run_filter(None).tags is None


def test_a_users_server_list_has_no_host_key_or_command() -> None:
    alices = [_info(s, admin=False) for s in usable_servers(ALICE, inventory())]
    assert [(s.id, s.actions) for s in alices] == [(A, ["backup", "scan"]), (B, ["scan", "update"])]
    text = "".join(s.model_dump_json(by_alias=True) for s in alices)
    for secret in ("10.9.8.7", "secret_key", "known_hosts", "tok-123", "tok-456", "root", "bob"):
        assert secret not in text
    admins = [_info(s, admin=True) for s in usable_servers(ADMIN, inventory())]
    assert [s.access.owners for s in admins if s.access] == [["alice"], ["alice", "bob"], []]
    text = "".join(s.model_dump_json(by_alias=True) for s in admins)
    assert "10.9.8.7" in text
    for secret in ("secret_key", "known_hosts", "tok-123", "tok-456"):
        assert secret not in text


def test_a_broken_inventory_is_explained_to_admins_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from api_shim import access

    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump({"servers": [entry(A, backup={"pre": "curl tok-789"})]}))
    monkeypatch.setenv("MM_INVENTORY", str(path))
    with pytest.raises(InventoryError) as admins:
        access.inventory_for(ADMIN)
    assert "backup.paths" in str(admins.value)
    with pytest.raises(InventoryError) as users:
        access.inventory_for(ALICE)
    assert "backup" not in str(users.value) and "operator" in str(users.value)
