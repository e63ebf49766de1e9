"""Starting a job: a flow run of its deployment, in the work queue of its priority.

Shared by the CLI and the API shim, so both tag and route jobs the same way. Prefect's
`ObjectNotFound` (the deployment is not registered) is left to each caller to translate.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import FlowRun

from deployments.control.catalogue import CATALOGUE, job_type_tag, server_tag
from deployments.control.queues import Priority
from tasks.core.jobs import JobType


async def create_job_run(
    client: PrefectClient,
    job_type: JobType,
    parameters: dict[str, Any],
    *,
    priority: Priority | None = None,
    tags: Iterable[str] = (),
    idempotency_key: str | None = None,
    deployment_id: UUID | None = None,
) -> FlowRun:
    """Create the flow run of a job; with an `idempotency_key` seen before, return that run.

    `deployment_id`: the job's deployment, if the caller knows it (saves a read).
    The run is tagged with its job type and its server (`parameters["server_id"]`).
    """
    job = CATALOGUE[job_type]
    if deployment_id is None:
        deployment_id = (await client.read_deployment_by_name(job.deployment.full_name)).id
    return await client.create_flow_run_from_deployment(
        deployment_id,
        parameters=parameters,
        work_queue_name=(priority or job.default_priority).queue_name,
        tags=[job_type_tag(job_type), server_tag(parameters["server_id"]), *tags],
        idempotency_key=idempotency_key,
    )
