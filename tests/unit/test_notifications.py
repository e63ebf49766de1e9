"""The pure parts of the notifications: targets, automation definitions, messages, and when a
backup ends an incident."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

from prefect.client.schemas.objects import FlowRun, State, StateType
from prefect.events.actions import RunDeployment, SendNotification
from prefect.events.schemas.automations import Posture
from pydantic import SecretStr

from deployments.control.notifications import (
    AUTOMATION_PREFIX,
    NEVER,
    failed_jobs_automation,
    notify_targets,
    stale_automation,
    wanted_for,
)
from tasks.backup_events import recovery_reason
from tasks.core.inventory import Inventory
from tasks.core.settings import NotifySettings
from tasks.notifications import Failure, render_digest


def _server(name: str, notify: list[str] | None = None, schedule: str | None = None) -> dict:
    entry: dict = {
        "id": str(uuid4()),
        "name": name,
        "host": "192.0.2.1",
        "username": "backup",
        "private_key_file": "/k",
        "notify": notify or [],
    }
    if schedule:
        entry["backup"] = {"paths": ["/srv"], "schedule": schedule}
    return entry


def _inventory(*servers: dict) -> Inventory:
    return Inventory.model_validate({"servers": list(servers)})


def test_one_target_per_url_list_and_the_global_one() -> None:
    inv = _inventory(
        _server("a", ["ntfy://x"]),
        _server("b", ["ntfy://x"]),
        _server("c", ["json://y", "ntfy://x"]),
        _server("d"),
    )
    targets = notify_targets(inv, NotifySettings(urls=SecretStr("mailto://m, json://j")))
    assert targets[0].key == "all"
    assert targets[0].servers is None
    assert targets[0].urls.get_secret_value() == "mailto://m json://j"
    groups = {tuple(sorted(s.name for s in t.servers or ())) for t in targets[1:]}
    assert groups == {("a", "b"), ("c",)}
    # Stable names, and none holds a URL.
    again = notify_targets(inv, NotifySettings(urls=SecretStr("mailto://m, json://j")))
    assert [t.block_name for t in targets] == [t.block_name for t in again]
    assert not any("ntfy" in t.block_name or "json" in t.block_name for t in targets)


def test_no_url_no_target() -> None:
    assert notify_targets(_inventory(_server("a")), NotifySettings()) == []


def test_the_failed_jobs_trigger_waits_out_its_window_once() -> None:
    (target,) = notify_targets(None, NotifySettings(urls=SecretStr("json://h")))
    digest, job = uuid4(), uuid4()
    automation = failed_jobs_automation(target, digest, [job], NotifySettings(digest_seconds=42))
    trigger = automation.trigger
    assert automation.name.startswith(AUTOMATION_PREFIX)
    assert trigger.posture is Posture.Proactive  # type: ignore[union-attr]
    assert trigger.after == {"prefect.flow-run.Failed"}  # type: ignore[union-attr]
    assert trigger.expect == {NEVER}  # type: ignore[union-attr]
    assert trigger.for_each == set()  # type: ignore[union-attr]
    assert trigger.within == timedelta(seconds=42)  # type: ignore[union-attr]
    (action,) = automation.actions
    assert isinstance(action, RunDeployment) and action.deployment_id == digest
    assert action.parameters is not None
    assert action.parameters["since"]["template"] == "{{ event.occurred }}"
    assert action.parameters["server_ids"] is None
    assert "json://" not in automation.model_dump_json()


def test_a_per_server_targets_digest_keeps_its_servers() -> None:
    inv = _inventory(_server("a", ["ntfy://x"]))
    (target,) = notify_targets(inv, NotifySettings())
    automation = failed_jobs_automation(target, uuid4(), [uuid4()], NotifySettings())
    (action,) = automation.actions
    assert isinstance(action, RunDeployment) and action.parameters is not None
    assert action.parameters["server_ids"] == [str(inv.servers[0].id)]
    assert "ntfy://" not in automation.model_dump_json()


def test_stale_is_a_per_server_dead_mans_switch() -> None:
    inv = _inventory(_server("a", schedule="0 * * * *"))
    (target,) = notify_targets(inv, NotifySettings(urls=SecretStr("json://h")))
    automation = stale_automation(target, uuid4(), timedelta(seconds=3900), list(inv.servers))
    trigger = automation.trigger
    assert trigger.for_each == {"prefect.resource.id"}  # type: ignore[union-attr]
    assert trigger.within == timedelta(seconds=3900)  # type: ignore[union-attr]
    assert trigger.expect == {"medicine-man.backup.completed"}  # type: ignore[union-attr]
    (action,) = automation.actions
    assert isinstance(action, SendNotification)
    assert "{{ event.resource.name }} has not been backed up since" in action.body


def test_every_target_gets_its_automations_and_only_the_global_one_the_pools() -> None:
    inv = _inventory(
        _server("a", ["ntfy://x"], schedule="0 * * * *"), _server("b", schedule="0 3 * * *")
    )
    settings = NotifySettings(urls=SecretStr("json://h"), stale_grace_seconds=0)
    everyone, own = notify_targets(inv, settings)

    def names(target: object) -> list[str]:
        wanted = asyncio.run(wanted_for(target, uuid4(), uuid4(), [uuid4()], inv, settings))  # type: ignore[arg-type]
        return [w.name.removeprefix(AUTOMATION_PREFIX) for w in wanted]

    assert names(everyone) == [
        "all: failed jobs",
        "all: backups resolved",
        "all: corrupt archives",
        "all: stale backups after 3600 s",
        "all: stale backups after 86400 s",
        "all: work pool without worker",
    ]
    assert [n.split(": ", 1)[1] for n in names(own)] == [
        "failed jobs",
        "backups resolved",
        "corrupt archives",
        "stale backups after 3600 s",
    ]


def _failure(server: str, n: int) -> Failure:
    return Failure(
        UUID(int=n), "scan:full", server, f"auth refused {n}", f"http://ui/runs/{n}", None
    )


def test_a_digest_counts_and_lists_each_job() -> None:
    subject, body = render_digest([_failure("web-1", i) for i in range(3)], 300)
    assert subject == "medicine-man: 3 jobs failed on web-1"
    assert body.startswith("3 jobs failed after all their attempts within 5 min:")
    assert body.count("- scan:full on web-1: auth refused") == 3
    assert "http://ui/runs/2" in body
    subject, _ = render_digest([_failure("a", 1), _failure("b", 2)], 60)
    assert subject == "medicine-man: 2 jobs failed on 2 servers"


def test_a_long_digest_lists_fifty_and_counts_the_rest() -> None:
    _, body = render_digest([_failure("w", i) for i in range(70)], 60)
    assert body.count("- scan:full") == 50
    assert "... and 20 more" in body


def _run(state: StateType, ended: datetime, message: str = "") -> FlowRun:
    return FlowRun(flow_id=uuid4(), state=State(type=state, message=message), end_time=ended)


def test_a_backup_after_a_failed_one_resolves() -> None:
    now = datetime.now(UTC)
    reason = recovery_reason(_run(StateType.FAILED, now, "connection refused"), now, None)
    assert reason == "its last backup had failed (connection refused)"


def test_a_backup_after_a_stale_spell_resolves_and_a_fresh_one_does_not() -> None:
    now = datetime.now(UTC)
    old = _run(StateType.COMPLETED, now - timedelta(hours=3))
    assert "older than its schedule allows" in recovery_reason(old, now, timedelta(hours=2))
    assert recovery_reason(old, now, timedelta(hours=4)) == ""
    assert recovery_reason(None, now, timedelta(hours=4)) == ""


def test_a_job_type_left_at_its_default_comes_from_the_run_name() -> None:
    from tasks.notifications import failure_of

    run_id = uuid4()
    failure = failure_of(
        run_id, {"server_id": "s1"}, "boom\nmore", {"s1": "web-1"}, None, None, "backup:manual s1"
    )
    assert (failure.job_type, failure.server, failure.reason) == ("backup:manual", "web-1", "boom")


def test_a_digest_window_starts_at_its_first_failure_or_counts_back() -> None:
    from flows.notify import FIRING_SLACK, window_start

    created = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    first = "2026-01-01T11:55:00.123000+00:00"
    assert window_start(first, created, 300) == datetime.fromisoformat(first)
    assert window_start("", created, 300) == created - timedelta(seconds=300) - FIRING_SLACK
