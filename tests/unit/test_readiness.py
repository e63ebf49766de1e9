"""What /health counts as missing, and when it looks again."""

from __future__ import annotations

from api_shim.gateway.readiness import WORK_QUEUES, ReadyMark, missing_parts
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
        "deployment maintenance/maintenance",
    ]


def test_pools_without_their_deployments_are_not_ready() -> None:
    # What the shim sees while the bootstrap runs `prefect deploy`: the pools come first.
    assert missing_parts(EVERY_POOL, {"backup/backup"}) == [
        "deployment scan/scan",
        "deployment update/update",
        "deployment maintenance/maintenance",
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
