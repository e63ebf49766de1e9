"""Notifications: Prefect automations and one Apprise block per target, made by the bootstrap.

A target is one list of Apprise URLs and the servers it is told about: MM_NOTIFY_URLS is told
about every server, each distinct per-server `notify:` list about its servers (a server with
both tells both). Per target, in the Prefect UI (Automations; Blocks, type "Medicine Man Apprise
URLs"), all named `medicine-man: notify <target> ...`:

- **failed jobs** (proactive): the first `prefect.flow-run.Failed` of a backup, scan or update
  (failed after all its attempts: retries pass through AwaitingRetry, the gave-up automation
  sets Failed) opens one window of MM_NOTIFY_DIGEST_SECONDS that later failures do not move;
  its end runs `notify/digest` (flows/notify.py), which sends one message listing them all
  (for a per-server target, those of its servers; nothing when there are none).
  The trigger expects an event that never comes (`NEVER`), so it fires at the window's end,
  never early; a reactive trigger would fire at once and swallow the rest uncounted.
- **stale backups** (proactive, one per max age): after a server's `BACKUP_COMPLETED` or the
  bootstrap's `BACKUP_WATCHED`, another completion is expected within `backup_max_age`; none:
  SendNotification "web-1 has not been backed up since ...". Once per incident: the watch is
  not armed again before the next completion.
- **backups resolved** (reactive): a `BACKUP_RECOVERED` (tasks/backup_events.py decides).
- **corrupt archives** (reactive): a check run's one `BACKUPS_CORRUPT` event.
- **work pool without worker** (proactive, MM_NOTIFY_URLS only): `prefect.work-pool.not-ready`
  of our pools, no `ready` within five minutes.

The URLs live only in the block documents (Prefect keeps a block's SecretStr hidden in the UI
and API); automations, run parameters and logs name the block, never a URL.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.events import Event, Resource
from prefect.events.actions import RunDeployment, SendNotification
from prefect.events.filters import (
    EventFilter,
    EventNameFilter,
    EventOccurredFilter,
    EventOrder,
    EventResourceFilter,
)
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.exceptions import ObjectNotFound
from pydantic import SecretStr

from deployments.control.catalogue import BACKUP, NOTIFY, SCAN, UPDATE
from deployments.control.queues import QUEUES
from tasks.core.freshness import backup_max_age
from tasks.core.inventory import Inventory, Server
from tasks.core.settings import NotifySettings
from tasks.notifications import (
    BACKUP_COMPLETED,
    BACKUP_RECOVERED,
    BACKUP_WATCHED,
    BACKUPS_CORRUPT,
    SERVER_RESOURCE,
    AppriseURLs,
    server_resource,
)

#: Every automation of ours here starts so; the bootstrap deletes those it no longer wants.
AUTOMATION_PREFIX = "medicine-man: notify "
#: And every block document.
BLOCK_PREFIX = "medicine-man-notify-"
#: An event nothing emits: the failed-jobs trigger's `expect`, so it waits out its window.
NEVER = "medicine-man.notify.never"
#: How long a pool may be without a live worker before anyone is told.
POOL_GRACE = timedelta(minutes=5)
#: The job deployments whose failures a digest lists. A check's failure is its corrupt
#: archives, which have their own message.
DIGEST_DEPLOYMENTS = (BACKUP, SCAN, UPDATE)
#: How far back the bootstrap looks for a server's last completed backup (Prefect keeps
#: events for PREFECT_EVENTS_RETENTION_PERIOD, seven days by default).
_LOOKBACK = timedelta(days=30)


@dataclass(frozen=True)
class Target:
    """One list of URLs and whom it is told about."""

    #: "all", or "servers-" and a digest of the server ids: stable names across restarts.
    key: str
    urls: SecretStr
    #: None: every server (MM_NOTIFY_URLS).
    servers: tuple[Server, ...] | None

    @property
    def block_name(self) -> str:
        return f"{BLOCK_PREFIX}{self.key}"

    @property
    def label(self) -> str:
        if self.servers is None:
            return "all servers"
        return "servers " + ", ".join(sorted(s.name for s in self.servers))

    def watched(self, inventory: Inventory | None) -> list[Server]:
        """The servers of this target that have a backup schedule."""
        servers = self.servers if self.servers is not None else inventory_servers(inventory)
        return [s for s in servers if s.backup is not None and s.backup.schedule is not None]


def inventory_servers(inventory: Inventory | None) -> list[Server]:
    return list(inventory.servers) if inventory is not None else []


def notify_targets(inventory: Inventory | None, settings: NotifySettings) -> list[Target]:
    """MM_NOTIFY_URLS's target (if set), then one per distinct per-server URL list."""
    targets: list[Target] = []
    urls = settings.url_list()
    if urls:
        targets.append(Target("all", SecretStr(" ".join(urls)), None))
    groups: dict[tuple[str, ...], list[Server]] = defaultdict(list)
    for server in inventory_servers(inventory):
        own = tuple(sorted({u.get_secret_value() for u in server.notify}))
        if own:
            groups[own].append(server)
    for own, servers in groups.items():
        ids = ",".join(sorted(str(s.id) for s in servers))
        key = "servers-" + hashlib.sha256(ids.encode()).hexdigest()[:12]
        targets.append(Target(key, SecretStr(" ".join(own)), tuple(servers)))
    return targets


def _server_ids(servers: Iterable[Server]) -> list[str]:
    return sorted(f"{SERVER_RESOURCE}{s.id}" for s in servers)


def _servers_match(target: Target, servers: Iterable[Server] | None = None) -> dict[str, Any]:
    chosen = servers if servers is not None else target.servers
    if chosen is None:
        return {"prefect.resource.id": f"{SERVER_RESOURCE}*"}
    return {"prefect.resource.id": _server_ids(chosen)}


def failed_jobs_automation(
    target: Target, digest_id: UUID, job_ids: list[UUID], settings: NotifySettings
) -> AutomationCore:
    """One digest per window of MM_NOTIFY_DIGEST_SECONDS from the first failed job."""
    window = timedelta(seconds=settings.digest_seconds)
    related: list[dict[str, Any]] = [
        {
            "prefect.resource.role": "deployment",
            "prefect.resource.id": [f"prefect.deployment.{i}" for i in job_ids],
        }
    ]
    # A per-server target's trigger sees every job's failure and its digest keeps its own
    # servers' (sending nothing when none): a run's tags cannot tell, since Prefect's server
    # caches a run's related resources, tags included, for its state events
    # (`_flow_run_resource_data_cache`, prefect/server/models/events.py), so the tag a
    # scheduled backup gives itself is missing from its Failed event.
    server_ids = None if target.servers is None else sorted(str(s.id) for s in target.servers)
    return AutomationCore(
        name=f"{AUTOMATION_PREFIX}{target.key}: failed jobs",
        description=(
            f"Jobs of {target.label} that failed after all their attempts: one message per"
            f" {window.total_seconds():.0f} s from the first, through block {target.block_name}."
        ),
        enabled=True,
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related=related,
            after={"prefect.flow-run.Failed"},
            expect={NEVER},
            posture=Posture.Proactive,
            threshold=1,
            within=window,
        ),
        actions=[
            RunDeployment(
                source="selected",
                deployment_id=digest_id,
                parameters={
                    "block": target.block_name,
                    # The window's first failure: the event the bucket was opened by.
                    "since": {"__prefect_kind": "jinja", "template": "{{ event.occurred }}"},
                    "window_seconds": settings.digest_seconds,
                    "deployment_ids": [str(i) for i in job_ids],
                    "server_ids": server_ids,
                },
            )
        ],
    )


def stale_automation(
    target: Target, block_id: UUID, max_age: timedelta, servers: list[Server]
) -> AutomationCore:
    """The dead-man's switch of `servers`, all of this max age."""
    seconds = int(max_age.total_seconds())
    return AutomationCore(
        name=f"{AUTOMATION_PREFIX}{target.key}: stale backups after {seconds} s",
        description=(
            f"A scheduled server of {target.label} whose last completed backup is older than"
            f" {seconds} s (its schedule's longest gap plus MM_NOTIFY_STALE_GRACE_SECONDS)."
        ),
        enabled=True,
        trigger=EventTrigger(
            match=_servers_match(target, servers),
            after={BACKUP_COMPLETED, BACKUP_WATCHED},
            expect={BACKUP_COMPLETED},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=max_age,
        ),
        actions=[
            SendNotification(
                block_document_id=block_id,
                subject="medicine-man: backups of {{ event.resource.name }} are stale",
                body=(
                    "{{ event.resource.name }} has not been backed up since"
                    " {{ event.payload.last_backup }}: its schedule allows " + f"{seconds} s"
                    " between two completed backups (grace included).\n"
                    "Its last backup jobs: Prefect UI, Runs, deployment backup/backup."
                ),
            )
        ],
    )


def resolved_automation(target: Target, block_id: UUID) -> AutomationCore:
    return AutomationCore(
        name=f"{AUTOMATION_PREFIX}{target.key}: backups resolved",
        description=f"A backup of {target.label} completed after a failure or a stale spell.",
        enabled=True,
        trigger=EventTrigger(
            expect={BACKUP_RECOVERED},
            match=_servers_match(target),
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[
            SendNotification(
                block_document_id=block_id,
                subject="medicine-man: resolved: {{ event.resource.name }} is backed up again",
                body=(
                    "Resolved: a backup of {{ event.resource.name }} completed at"
                    " {{ event.payload.completed }}; {{ event.payload.reason }}."
                ),
            )
        ],
    )


def corrupt_automation(target: Target, block_id: UUID) -> AutomationCore:
    trigger: dict[str, Any] = {}
    if target.servers is not None:
        trigger["match_related"] = {
            "prefect.resource.role": "server",
            "prefect.resource.id": _server_ids(target.servers),
        }
    return AutomationCore(
        name=f"{AUTOMATION_PREFIX}{target.key}: corrupt archives",
        description=f"An archive check found corrupt or unreadable backups of {target.label}.",
        enabled=True,
        trigger=EventTrigger(
            expect={BACKUPS_CORRUPT},
            match={"prefect.resource.id": "medicine-man.check.*"},
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
            **trigger,
        ),
        actions=[
            SendNotification(
                block_document_id=block_id,
                subject=(
                    "medicine-man: {{ event.payload.count }} corrupt backups"
                    " of {{ event.payload.servers }}"
                ),
                body=(
                    "The archive check found {{ event.payload.count }} backups that do not match"
                    " their manifests (marked corrupt; retention keeps them, never counting them"
                    " as the good one):\n{{ event.payload.text }}"
                ),
            )
        ],
    )


def pool_automation(target: Target, block_id: UUID) -> AutomationCore:
    minutes = int(POOL_GRACE.total_seconds() // 60)
    return AutomationCore(
        name=f"{AUTOMATION_PREFIX}{target.key}: work pool without worker",
        description=f"A work pool of ours without a live worker for {minutes} minutes.",
        enabled=True,
        trigger=EventTrigger(
            match={
                "prefect.resource.id": "prefect.work-pool.*",
                "prefect.resource.name": [q.name for q in QUEUES],
            },
            after={"prefect.work-pool.not-ready"},
            expect={"prefect.work-pool.ready"},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=POOL_GRACE,
        ),
        actions=[
            SendNotification(
                block_document_id=block_id,
                subject="medicine-man: work pool {{ event.resource.name }} has no worker",
                body=(
                    "Work pool {{ event.resource.name }} has had no live worker since"
                    " {{ event.occurred }} (" + f"{minutes} minutes or more): its jobs wait."
                ),
            )
        ],
    )


async def max_age_groups(servers: list[Server], grace: timedelta) -> dict[timedelta, list[Server]]:
    groups: dict[timedelta, list[Server]] = defaultdict(list)
    for server in servers:
        age = await backup_max_age(server, grace)
        if age is not None:
            groups[age].append(server)
    return dict(groups)


async def wanted_for(
    target: Target,
    block_id: UUID,
    digest_id: UUID,
    job_ids: list[UUID],
    inventory: Inventory | None,
    settings: NotifySettings,
) -> list[AutomationCore]:
    """Every automation of one target."""
    grace = timedelta(seconds=settings.stale_grace_seconds)
    wanted = [
        failed_jobs_automation(target, digest_id, job_ids, settings),
        resolved_automation(target, block_id),
        corrupt_automation(target, block_id),
    ]
    for age, servers in sorted((await max_age_groups(target.watched(inventory), grace)).items()):
        wanted.append(stale_automation(target, block_id, age, servers))
    if target.servers is None:
        wanted.append(pool_automation(target, block_id))
    return wanted


async def ensure_notifications(
    client: PrefectClient, inventory: Inventory | None, settings: NotifySettings
) -> list[str]:
    """Blocks and automations of every target, by name; ours no longer wanted go. Returns what
    changed (names only: never a URL)."""
    changes: list[str] = []
    targets = notify_targets(inventory, settings)
    wanted: list[AutomationCore] = []
    if targets:
        await AppriseURLs.aregister_type_and_schema(client=client)
        digest_id = (await client.read_deployment_by_name(NOTIFY.full_name)).id
        job_ids = [
            (await client.read_deployment_by_name(d.full_name)).id for d in DIGEST_DEPLOYMENTS
        ]
    for target in targets:
        block_id = await _save_block(client, target)
        wanted += await wanted_for(target, block_id, digest_id, job_ids, inventory, settings)
    changes += await _sync_automations(client, wanted)
    changes += await _delete_blocks(client, {t.block_name for t in targets})
    if targets:
        armed = await arm_switches(client, inventory, settings)
        if armed:
            changes.append(f"armed the stale-backup watch of {armed} servers")
    return changes


async def _save_block(client: PrefectClient, target: Target) -> UUID:
    block = AppriseURLs(url=target.urls)
    block_id = await block.asave(target.block_name, overwrite=True, client=client)
    return block_id


async def _sync_automations(client: PrefectClient, wanted: list[AutomationCore]) -> list[str]:
    changes: list[str] = []
    names = {w.name for w in wanted}
    for want in wanted:
        existing = await client.read_automations_by_name(want.name)
        if not existing:
            await client.create_automation(want)
            changes.append(f"created automation {want.name!r}")
            continue
        first, *extra = existing
        for duplicate in extra:
            await client.delete_automation(duplicate.id)
        # An operator's off switch in the UI stays off.
        want = want.model_copy(update={"enabled": first.enabled})
        if AutomationCore.model_validate(first.model_dump(exclude={"id"})) != want:
            await client.update_automation(first.id, want)
            changes.append(f"updated automation {want.name!r}")
    for automation in await client.read_automations():
        if automation.name.startswith(AUTOMATION_PREFIX) and automation.name not in names:
            await client.delete_automation(automation.id)
            changes.append(f"deleted automation {automation.name!r}")
    return changes


async def _delete_blocks(client: PrefectClient, keep: set[str]) -> list[str]:
    try:
        documents = await client.read_block_documents_by_type(
            AppriseURLs.get_block_type_slug(), include_secrets=False
        )
    except ObjectNotFound:  # the block type was never registered: nothing of ours
        return []
    changes = []
    for document in documents:
        name = document.name or ""
        if name.startswith(BLOCK_PREFIX) and name not in keep:
            await client.delete_block_document(document.id)
            changes.append(f"deleted block {name!r}")
    return changes


async def last_completed(client: PrefectClient, server: Server) -> datetime | None:
    """When the server's last `BACKUP_COMPLETED` event occurred, if Prefect still has it."""
    now = datetime.now(UTC)
    page = await client.read_events(
        filter=EventFilter(
            occurred=EventOccurredFilter(since=now - _LOOKBACK, until=now),
            event=EventNameFilter(name=[BACKUP_COMPLETED]),
            resource=EventResourceFilter(id=[f"{SERVER_RESOURCE}{server.id}"]),
            order=EventOrder.DESC,
        ),
        limit=1,
    )
    return page.events[0].occurred if page.events else None


def watched_event(server: Server, occurred: datetime, last: datetime | None) -> Event:
    return Event(
        event=BACKUP_WATCHED,
        occurred=occurred,
        resource=Resource(server_resource(server)),
        payload={
            "last_backup": (
                f"{last:%Y-%m-%d %H:%M:%S} UTC"
                if last
                else f"it was first watched, at {occurred:%Y-%m-%d %H:%M:%S} UTC"
                " (no completed backup known)"
            )
        },
    )


async def arm_switches(
    client: PrefectClient, inventory: Inventory | None, settings: NotifySettings
) -> int:
    """Start the dead-man's switch of every scheduled server: a `BACKUP_WATCHED` event that
    occurred at its last completed backup while that is fresh, else now.

    A watch already running is not moved (Prefect keeps an open window as it is), so a restart
    neither resets a timer nor, for a server already reported stale, repeats its message at
    once: that one is told again only after another max age without a backup.
    """
    grace = timedelta(seconds=settings.stale_grace_seconds)
    now = datetime.now(UTC)
    events = []
    for server in inventory_servers(inventory):
        max_age = await backup_max_age(server, grace)
        if max_age is None:
            continue
        last = await last_completed(client, server)
        fresh = last is not None and now - last < max_age
        events.append(watched_event(server, last if fresh and last else now, last))
    for start in range(0, len(events), 200):
        batch = [e.model_dump(mode="json") for e in events[start : start + 200]]
        response = await client.request("POST", "/events", json=batch)
        response.raise_for_status()
    return len(events)
