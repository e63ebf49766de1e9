"""The failed-jobs digest's two steps: read the runs that failed in the window from Prefect,
and send them as one message through the target's block (flows/notify.py)."""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterEndTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.utilities.urls import url_for

from tasks.core.inventory import load_inventory
from tasks.core.settings import get_settings
from tasks.notifications import AppriseURLs, Failure, failure_of, render_digest, server_names

#: Runs per read.
_PAGE = 200


@task(name="read failed jobs", cache_policy=NO_CACHE)
async def read_failures(
    since: datetime,
    window_seconds: float,
    deployment_ids: list[UUID],
    server_ids: list[UUID] | None,
) -> list[Failure]:
    """The runs of `deployment_ids` that ended Failed in [since, since + window], of the
    servers `server_ids` (None: of any server)."""
    until = since + timedelta(seconds=window_seconds) + timedelta(seconds=15)
    wanted = FlowRunFilter(
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.FAILED])),
        end_time=FlowRunFilterEndTime(after_=since, before_=until),
    )
    runs: list[FlowRun] = []
    async with get_client() as client:
        while True:
            page = await client.read_flow_runs(
                flow_run_filter=wanted,
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=deployment_ids)),
                sort=FlowRunSort.END_TIME_DESC,
                offset=len(runs),
                limit=_PAGE,
            )
            runs += page
            if len(page) < _PAGE:
                break
    keep = None if server_ids is None else {str(s) for s in server_ids}
    names = server_names(load_inventory(get_settings().paths.inventory).servers)
    return [
        failure_of(
            run.id,
            run.parameters,
            run.state.message if run.state else None,
            names,
            url_for(run, url_type="ui"),
            run.end_time,
            run.name,
        )
        for run in runs
        if keep is None or str(run.parameters.get("server_id")) in keep
    ]


@task(name="send the digest", cache_policy=NO_CACHE)
async def send_digest(block: str, failures: list[Failure], window_seconds: float) -> int:
    """One message for all `failures` through the block named `block`; none when empty."""
    if not failures:
        get_run_logger().info("no failed job of this target in the window: nothing sent")
        return 0
    subject, body = render_digest(failures, window_seconds)
    notifier: AppriseURLs = await AppriseURLs.aload(block)
    # Failure raised: a digest that reached no one fails its run, visible in the UI.
    with notifier.raise_on_failure():
        await notifier.anotify(body=body, subject=subject)
    get_run_logger().info("sent one digest of %d failed jobs through %s", len(failures), block)
    return len(failures)
