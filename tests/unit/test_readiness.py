"""What /health counts as missing, when it looks again, and that it says nothing else."""

from __future__ import annotations

from uuid import uuid4

from api_shim.gateway.readiness import WORK_QUEUES, ReadyMark, full_names, missing_parts
from api_shim.schemas import Envelope, Liveness, ServiceHealth
from deployments.control.catalogue import ALL_DEPLOYMENTS
from deployments.control.queues import QUEUES

EVERY_POOL = {queue.name: set(WORK_QUEUES) for queue in QUEUES}
EVERY_DEPLOYMENT = {d.full_name for d in ALL_DEPLOYMENTS}


def test_nothing_is_missing_when_everything_is_there() -> None:
    assert missing_parts(EVERY_POOL, EVERY_DEPLOYMENT) == []


def test_a_fresh_server_lacks_every_pool_and_deployment() -> None:
    assert missing_parts({}, set()) == [
        "work pool backup",
        "work pool scan",
        "work pool update",
        "deployment backup/backup",
        "deployment scan/scan",
        "deployment update/update",
        "deployment check/check",
        "deployment maintenance/maintenance",
        "deployment notify/digest",
    ]


def test_pools_without_their_deployments_are_not_ready() -> None:
    # What the shim sees while the bootstrap runs `prefect deploy`: the pools come first.
    assert missing_parts(EVERY_POOL, {"backup/backup"}) == [
        "deployment scan/scan",
        "deployment update/update",
        "deployment check/check",
        "deployment maintenance/maintenance",
        "deployment notify/digest",
    ]


def test_a_missing_work_queue_is_named_with_its_pool() -> None:
    pools = {**EVERY_POOL, "scan": set(WORK_QUEUES) - {"low"}}
    assert missing_parts(pools, EVERY_DEPLOYMENT) == ["work queue scan/low"]


def test_the_mark_is_checked_again_only_when_old_or_forgotten() -> None:
    mark = ReadyMark(recheck_seconds=30)
    assert mark.due(100.0)
    mark.seen(100.0)
    assert not mark.due(129.9)
    assert mark.due(130.0)
    mark.seen(130.0)
    mark.forget()
    assert mark.due(130.1)


def test_full_names_join_each_deployment_to_its_own_flow() -> None:
    backup_flow, scan_flow, foreign_flow = uuid4(), uuid4(), uuid4()
    ours, misplaced, foreign = uuid4(), uuid4(), uuid4()
    found = full_names(
        [
            ("backup", backup_flow, ours),
            # Same deployment name, other flow: `scan/backup`, which the catalogue lacks.
            ("backup", scan_flow, misplaced),
            # A flow the read of our flows did not return: not one of ours.
            ("scan", foreign_flow, foreign),
        ],
        {backup_flow: "backup", scan_flow: "scan"},
    )
    assert found == {"backup/backup": ours, "scan/backup": misplaced}
    assert "deployment scan/scan" in missing_parts(EVERY_POOL, found)


def test_the_probes_say_what_is_missing_and_nothing_else() -> None:
    # Both answer without a token: no Prefect address, version or uptime for a stranger.
    ready = Envelope[ServiceHealth](message="m", data=ServiceHealth(status="ok"))
    assert ready.model_dump(mode="json", by_alias=True)["data"] == {"status": "ok", "missing": []}
    alive = Envelope[Liveness](message="m", data=Liveness())
    assert alive.model_dump(mode="json", by_alias=True)["data"] == {"status": "alive"}
