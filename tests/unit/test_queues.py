"""The queue table says what the original design's three queues said; the catalogue is complete."""

from __future__ import annotations

from datetime import timedelta

import pytest

from deployments.control.catalogue import CATALOGUE, DEPLOYMENTS, job_type_tag
from deployments.control.queues import QUEUES, QUEUES_BY_NAME, Priority, get_queue
from tasks.core.jobs import JobType


@pytest.mark.parametrize(
    ("name", "concurrency", "lock_minutes", "priority"),
    [
        ("backup", 2, 5, Priority.HIGH),
        ("scan", 5, 2, Priority.NORMAL),
        ("update", 1, 10, Priority.CRITICAL),
    ],
)
def test_queue_table_matches_the_design(
    name: str, concurrency: int, lock_minutes: int, priority: Priority
) -> None:
    queue = get_queue(name)
    assert queue.name == name
    assert queue.concurrency == concurrency
    assert queue.lock_duration == timedelta(minutes=lock_minutes)
    assert queue.default_priority is priority


def test_there_are_exactly_three_queues() -> None:
    assert [q.name for q in QUEUES] == ["backup", "scan", "update"]
    assert set(QUEUES_BY_NAME) == {"backup", "scan", "update"}


def test_priorities_are_one_to_four() -> None:
    assert [(p.queue_name, int(p)) for p in Priority] == [
        ("critical", 1),
        ("high", 2),
        ("normal", 3),
        ("low", 4),
    ]


@pytest.mark.parametrize("name", ["critical", "HIGH", "Normal", "low"])
def test_priority_from_name_ignores_case(name: str) -> None:
    assert Priority.from_name(name).queue_name == name.lower()


def test_unknown_priority_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match=r"'urgent'; use one of critical, high, normal, low$"):
        Priority.from_name("urgent")


def test_unknown_queue_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match=r"'cleanup'; use one of backup, scan, update$"):
        get_queue("cleanup")


@pytest.mark.parametrize("job_type", list(JobType))
def test_every_job_type_is_in_the_catalogue(job_type: JobType) -> None:
    job = CATALOGUE[job_type]
    family = job_type.value.split(":")[0]
    assert job.type is job_type
    assert job.deployment in DEPLOYMENTS
    # A job type runs the flow named after its family: "backup:manual" -> backup/backup, in the
    # pool of that name; archive checks (new) in the scan pool's low queue, beside maintenance.
    assert job.deployment.full_name == f"{family}/{family}"
    assert job.queue.name == ("scan" if family == "check" else family)
    assert job.default_priority is job.deployment.priority
    assert job.default_priority is (
        Priority.LOW if family == "check" else job.queue.default_priority
    )
    assert job_type_tag(job_type) == f"job:{job_type.value}"


def test_each_deployment_serves_one_pool() -> None:
    assert {d.full_name: d.queue.name for d in DEPLOYMENTS} == {
        "backup/backup": "backup",
        "scan/scan": "scan",
        "update/update": "update",
        "check/check": "scan",
    }
    # Module paths: a forked run finds the flow the fork server imported, instead of executing
    # its file again as a fresh module (as a `path.py:name` entrypoint would, every run).
    assert {d.entrypoint for d in DEPLOYMENTS} == {
        "flows.backup:backup",
        "flows.scan:scan",
        "flows.update:update",
        "flows.check:check",
    }
