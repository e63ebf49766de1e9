"""Find a job's server in the inventory, and check that we can reach it (a task)."""

from __future__ import annotations

from uuid import UUID

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from tasks.core.errors import InventoryError, ServerNotFound
from tasks.core.inventory import Server, load_inventory
from tasks.core.settings import get_settings
from tasks.remote import Connection, session_for
from tasks.retry import RETRY_POLICY
from tasks.ssh import open_session


def find_server(server_id: UUID) -> Server:
    """The server of this job from the inventory (read afresh: edits apply to the next job).

    A plain function, not a task: it reads a local file, an unknown server is no reason to retry,
    and a task's three state events cost Prefect's server more than the read itself.
    """
    return load_inventory(get_settings().paths.inventory).get(server_id)


def run_name() -> str:
    """A job's flow-run name, as the Prefect UI lists it: its type and its server's name
    (`backup:manual web-1`); the server's id stays in the parameters and the tags. A server the
    inventory does not have (or an unreadable inventory) keeps the id: the run fails on it
    anyway, with the reason."""
    parameters = flow_run.parameters
    server_id = str(parameters.get("server_id"))
    try:
        server = load_inventory(get_settings().paths.inventory).get(server_id).name
    except (InventoryError, ServerNotFound):
        server = server_id
    return f"{parameters.get('job_type')} {server}"


@task(name="verify server", cache_policy=NO_CACHE, **RETRY_POLICY)
def verify_server(server: Server, connection: Connection | None = None) -> str:
    """Connect (host key checked, key accepted) and return the server's `uname -srm`."""
    with session_for(server, connection, open_session) as ssh:
        return ssh.run(["uname", "-srm"]).text.strip()
