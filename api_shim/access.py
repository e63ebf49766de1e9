"""What a caller may use: an admin every server, job and backup; a user the servers whose
inventory `owners` name them, the jobs they enqueued on those, and those servers' backups.

The inventory is read on each request (`load_inventory` parses it again only when the file
changed), so an edit of `owners` takes effect at the next request, for jobs enqueued before it
too. A server the caller may not use answers exactly as an unknown one: its existence is
nobody else's business.
"""

from __future__ import annotations

import logging
from typing import Annotated
from uuid import UUID

from fastapi import Depends

from api_shim.auth import CurrentCaller
from api_shim.gateway import Scope
from tasks.core.callers import Caller
from tasks.core.errors import InventoryError
from tasks.core.inventory import Inventory, Server, load_inventory, server_not_found
from tasks.core.settings import get_settings
from tasks.repository import Manifest

log = logging.getLogger("api_shim")


def inventory_for(caller: Caller) -> Inventory:
    """The inventory; when it cannot be read, only an admin is told why.

    The reason can quote the file (a YAML error shows the lines around it), hook commands
    included: a user's answer says only that it is unreadable, and the log has the rest.
    """
    try:
        return load_inventory(get_settings().paths.inventory)
    except InventoryError as exc:
        if caller.is_admin:
            raise
        log.error("the server inventory cannot be read: %s", exc)
        raise InventoryError("an operator must fix it (the shim's log says how)") from None


def usable_servers(caller: Caller, inventory: Inventory) -> list[Server]:
    """The servers the caller may run jobs on, in the inventory's order."""
    return list(inventory.servers) if caller.is_admin else inventory.owned_by(caller.user_id)


def usable_server(caller: Caller, inventory: Inventory, server_id: UUID) -> Server:
    """The server, if the caller may use it; `ServerNotFound` otherwise, as for an unknown id."""
    server = inventory.get(server_id)
    if not caller.is_admin and caller.user_id not in server.owners:
        raise server_not_found(server_id)
    return server


def may_see_backup(caller: Caller, manifest: Manifest) -> bool:
    """Whether the caller may see a backup: an admin any (of a server gone from the inventory
    too), a user those of the servers they own now, whoever started them."""
    if caller.is_admin:
        return True
    return any(s.id == manifest.server_id for s in inventory_for(caller).owned_by(caller.user_id))


def scope_of(caller: Caller, inventory: Inventory) -> Scope | None:
    """The jobs the caller sees: None for all (an admin)."""
    if caller.is_admin:
        return None
    servers = inventory.owned_by(caller.user_id)
    return Scope(user_id=caller.user_id, servers=frozenset(str(s.id) for s in servers))


async def caller_scope(caller: CurrentCaller) -> Scope | None:
    """The caller's `scope_of`; an admin's needs no inventory, so it works while it is broken."""
    if caller.is_admin:
        return None
    return scope_of(caller, inventory_for(caller))


CallerScope = Annotated[Scope | None, Depends(caller_scope)]
