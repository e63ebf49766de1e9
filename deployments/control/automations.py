"""Stalled and crashed jobs: two Prefect automations per pool, created by the bootstrap.

Stock Prefect has no zombie detection on a self-hosted server: when a worker dies together with
its flow-run process, the run stays Running forever and keeps its pool slot (docs/DESIGN.md,
"The crash and re-run automations"). Flow
runs emit `prefect.flow-run.heartbeat` every `PREFECT_FLOWS_HEARTBEAT_FREQUENCY` seconds (set by
the stack). Per pool:

- **stalled** (proactive): a run of the pool's deployments that sent a heartbeat and then
  nothing for the queue's lock duration is set Crashed; a Crashed run holds no pool slot. The
  bootstrap starts the same watch for each run it finds Pending or Running (`WATCH_EVENT`), so
  a run whose heartbeats died unprocessed with a killed server is crashed too.
- **re-run** (reactive): a run of the pool that ends Crashed, by the worker (its process died)
  or by the stalled automation, is set Scheduled again, same id, while its run count is below
  the attempts.

And for all pools, **gave up** (reactive): a run that crashes on its last attempt is set Failed
with "Gave up after N attempts", so the job says why it stopped; each crash's own reason stays
in the run's state history.

Prefect's flow `retries` apply to Failed only, never to Crashed (`RetryFailedFlows`), and an
`on_crashed` hook cannot run in a process killed with SIGKILL, hence the second automation.
Both are visible and editable in the Prefect UI (Automations); the bootstrap brings back their
definition, not their enabled switch.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import FlowRun, State, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.events import Event, RelatedResource, Resource
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

from deployments.control.catalogue import ALL_DEPLOYMENTS
from deployments.control.queues import QUEUES, Queue
from tasks.core.settings import SupervisionSettings

#: Runs per read, and events per POST, of `watch_unfinished_runs`.
_PAGE = 200
#: How much longer than one heartbeat interval a lock duration must be, for late events.
HEARTBEAT_SLACK_SECONDS = 15

#: Emitted by the bootstrap for each run it finds Pending or Running (`watch_unfinished_runs`):
#: like a heartbeat, it starts the stalled-run watch of a run whose own heartbeats never reached
#: the stalled automation, e.g. because they died with a killed server, which keeps unprocessed
#: events in memory only. A run that lives sends a heartbeat within the lock duration anyway.
WATCH_EVENT = "medicine-man.flow-run.watched"

#: Emitted by the bootstrap of an embedded server for each run it finds Crashed
#: (`refind_crashed_runs`): the re-run and gave-up automations take it for the run's own
#: `prefect.flow-run.Crashed`, which may have died unprocessed with the last server process
#: (its events are kept in memory), leaving the run Crashed with attempts left, for good.
CRASH_FOUND_EVENT = "medicine-man.flow-run.crash-found"
#: The message of a run an embedded start finds Running without a process (`crash_orphaned_runs`).
ORPHANED_MESSAGE = "Its stack stopped without handing it back (killed or lost power)"
#: What the re-run and gave-up automations react to.
_CRASHED = {"prefect.flow-run.Crashed", CRASH_FOUND_EVENT}

#: Events that show a run is alive or no longer running, so its silence is no stall.
_ALIVE_OR_DONE = {
    f"prefect.flow-run.{name}"
    for name in (
        "heartbeat",
        "Pending",
        "Running",
        "Completed",
        "Failed",
        "Crashed",
        "Cancelled",
        "Cancelling",
        "TimedOut",
        "Scheduled",
        "AwaitingRetry",
        "Paused",
        "Suspended",
    )
}


def lock_duration(settings: SupervisionSettings, queue: Queue) -> timedelta:
    """The queue's lock duration: MM_LOCK_DURATIONS's for it, else the queue table's."""
    seconds = settings.lock_durations.get(queue.name)
    return queue.lock_duration if seconds is None else timedelta(seconds=seconds)


def check_supervision(settings: SupervisionSettings) -> None:
    """Refuse (ValueError) lock durations that the queue table cannot use: for unknown queues,
    or shorter than one heartbeat interval and some slack (a live run would be crashed).

    Here rather than in tasks/core/settings.py, which may not import the queue table."""
    floor = settings.heartbeat_seconds + HEARTBEAT_SLACK_SECONDS
    for queue in QUEUES:
        seconds = lock_duration(settings, queue).total_seconds()
        if seconds < floor:
            raise ValueError(
                f"MM_LOCK_DURATIONS: lock duration of {queue.name} ({seconds:.0f} s) must be at"
                f" least {floor} s: one heartbeat interval (MM_HEARTBEAT_SECONDS) plus"
                f" {HEARTBEAT_SLACK_SECONDS} s"
            )
    unknown = set(settings.lock_durations) - {q.name for q in QUEUES}
    if unknown:
        raise ValueError(
            f"MM_LOCK_DURATIONS: lock durations for unknown queues: {', '.join(sorted(unknown))}"
        )


def stalled_name(queue: Queue) -> str:
    return f"medicine-man: crash stalled {queue.name} runs"


def rerun_name(queue: Queue) -> str:
    return f"medicine-man: re-run crashed {queue.name} runs"


GAVE_UP_NAME = "medicine-man: fail runs that crashed on their last attempt"


def stalled_automation(
    queue: Queue, deployment_ids: list[UUID], settings: SupervisionSettings
) -> AutomationCore:
    """Crash a run of `deployment_ids` silent for the queue's lock duration after a heartbeat
    (or after the bootstrap's `WATCH_EVENT`)."""
    seconds = int(lock_duration(settings, queue).total_seconds())
    return AutomationCore(
        name=stalled_name(queue),
        description=(
            f"A {queue.name} run without a heartbeat for {seconds} s (the queue's lock duration)"
            " has lost its worker or process: mark it Crashed, which frees its pool slot."
        ),
        enabled=True,
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={
                "prefect.resource.role": "deployment",
                "prefect.resource.id": [f"prefect.deployment.{i}" for i in deployment_ids],
            },
            after={"prefect.flow-run.heartbeat", WATCH_EVENT},
            expect=_ALIVE_OR_DONE,
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=seconds),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=(
                    f"Stalled: no heartbeat for {seconds} s (lock duration of the {queue.name}"
                    " queue); its worker or flow-run process died"
                ),
            )
        ],
    )


def rerun_automation(queue: Queue, settings: SupervisionSettings) -> AutomationCore:
    """Schedule a crashed run of the pool again while its run count is below the attempts."""
    attempts = settings.crash_attempts
    return AutomationCore(
        name=rerun_name(queue),
        description=(
            f"A {queue.name} run that crashed is run again, same job id, up to {attempts}"
            " runs in all; after that it is failed (see the gave-up automation)."
        ),
        enabled=True,
        trigger=EventTrigger(
            match={
                "prefect.resource.id": "prefect.flow-run.*",
                # Crashed before it ever ran (run count 0) counts as an attempt as well.
                "prefect.run-count": [str(n) for n in range(attempts)],
            },
            match_related={
                "prefect.resource.role": "work-pool",
                "prefect.resource.name": queue.name,
            },
            expect=_CRASHED,
            for_each={"prefect.resource.id"},
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.SCHEDULED,
                name="AwaitingRetry",
                message=f"Crashed; run again (at most {attempts} runs in all)",
            )
        ],
    )


#: Run counts the gave-up automation covers: from the last attempt on (a job retried by hand
#: may run more often); a label match takes a list of values, not a range.
_MORE_RUNS = 100


def gave_up_message(attempts: int) -> str:
    return (
        f"Gave up after {attempts} attempts: the job crashed each time"
        " (each crash's reason is in its state history)"
    )


def gave_up_automation(settings: SupervisionSettings) -> AutomationCore:
    """Fail a run of any pool that crashed on its last attempt, saying so."""
    attempts = settings.crash_attempts
    return AutomationCore(
        name=GAVE_UP_NAME,
        description=f"A run that crashed {attempts} times is not run again: mark it Failed.",
        enabled=True,
        trigger=EventTrigger(
            match={
                "prefect.resource.id": "prefect.flow-run.*",
                "prefect.run-count": [str(n) for n in range(attempts, attempts + _MORE_RUNS)],
            },
            match_related={
                "prefect.resource.role": "work-pool",
                "prefect.resource.name": [queue.name for queue in QUEUES],
            },
            expect=_CRASHED,
            for_each={"prefect.resource.id"},
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        # Crashed -> Failed is terminal to terminal, which orchestration refuses unless forced.
        actions=[
            ChangeFlowRunState(
                state=StateType.FAILED, message=gave_up_message(attempts), force=True
            )
        ],
    )


def wanted_automations(
    deployment_ids: dict[str, list[UUID]], settings: SupervisionSettings
) -> list[AutomationCore]:
    """Both automations of every pool, and the gave-up one; `deployment_ids` by pool name."""
    check_supervision(settings)
    wanted = []
    for queue in QUEUES:
        ids = deployment_ids.get(queue.name, [])
        if ids:
            wanted.append(stalled_automation(queue, ids, settings))
        wanted.append(rerun_automation(queue, settings))
    wanted.append(gave_up_automation(settings))
    return wanted


async def ensure_automations(client: PrefectClient, settings: SupervisionSettings) -> list[str]:
    """Create or update the automations by name (duplicates go); returns what it changed."""
    changes: list[str] = []
    ids: dict[str, list[UUID]] = {}
    # Maintenance too: a stalled run of it would hold its one slot, and no maintenance run again.
    for deployment in ALL_DEPLOYMENTS:
        found = await client.read_deployment_by_name(deployment.full_name)
        ids.setdefault(deployment.queue.name, []).append(found.id)
    for want in wanted_automations(ids, settings):
        existing = await client.read_automations_by_name(want.name)
        if not existing:
            changes.append(f"created automation {want.name!r}")
            await client.create_automation(want)
            continue
        first, *extra = existing
        for duplicate in extra:
            await client.delete_automation(duplicate.id)
            changes.append(f"deleted a duplicate of automation {want.name!r}")
        # An operator's off switch in the UI stays off.
        want = want.model_copy(update={"enabled": first.enabled})
        if AutomationCore.model_validate(first.model_dump(exclude={"id"})) != want:
            changes.append(f"updated automation {want.name!r}")
            await client.update_automation(first.id, want)
    return changes


def watch_events(runs: Iterable[FlowRun]) -> list[Event]:
    """One `WATCH_EVENT` per run of a deployment, related to it as its heartbeats are."""
    return [
        Event(
            event=WATCH_EVENT,
            resource=Resource(
                {
                    "prefect.resource.id": f"prefect.flow-run.{run.id}",
                    "prefect.resource.name": run.name,
                }
            ),
            related=[
                RelatedResource(
                    {
                        "prefect.resource.id": f"prefect.deployment.{run.deployment_id}",
                        "prefect.resource.role": "deployment",
                    }
                )
            ],
            payload={"state": run.state_name},
        )
        for run in runs
        if run.deployment_id is not None
    ]


async def watch_unfinished_runs(client: PrefectClient) -> int:
    """Start the stalled-run watch of every Pending or Running run of our pools.

    After the whole system was killed, a run whose heartbeat had not been processed yet has no
    watch, so nothing would ever crash it: it would stay Running and hold its pool slot forever.
    The bootstrap runs at every start, so this covers a restart; returns how many runs it saw.
    """
    runs = await _runs_in(client, [StateType.PENDING, StateType.RUNNING])
    await _emit(client, watch_events(runs))
    return len(runs)


def crash_found_events(runs: Iterable[FlowRun]) -> list[Event]:
    """One `CRASH_FOUND_EVENT` per run of a work pool, labelled as Prefect labels the run's own
    state events: the automations match its run count and its work pool's name."""
    return [
        Event(
            event=CRASH_FOUND_EVENT,
            resource=Resource(
                {
                    "prefect.resource.id": f"prefect.flow-run.{run.id}",
                    "prefect.resource.name": run.name,
                    "prefect.run-count": str(run.run_count),
                }
            ),
            related=[
                RelatedResource(
                    {
                        "prefect.resource.id": f"prefect.work-pool.{run.work_pool_id}",
                        "prefect.resource.name": run.work_pool_name,
                        "prefect.resource.role": "work-pool",
                    }
                )
            ],
            payload={"state": run.state_name},
        )
        for run in runs
        if run.work_pool_name is not None
    ]


async def crash_orphaned_runs(client: PrefectClient) -> int:
    """Crash every Pending or Running run of our pools (and cancel every Cancelling one),
    for an embedded stack starting before its workers: the last stack's processes are all gone
    (each died with its parent, and `make up` ended the leftovers of a killed supervisor), so
    none of these runs has a process, and waiting a lock duration for the stalled-run
    automation to find that out would only delay their re-runs. Returns how many it ended.
    """
    runs = await _runs_in(client, [StateType.PENDING, StateType.RUNNING, StateType.CANCELLING])
    for run in runs:
        if run.state_type is StateType.CANCELLING:
            end = State(type=StateType.CANCELLED, message="Cancelled while its stack was down")
        else:
            end = State(type=StateType.CRASHED, message=ORPHANED_MESSAGE)
        await client.set_flow_run_state(run.id, end)
    return len(runs)


async def refind_crashed_runs(client: PrefectClient, crashed_before: datetime) -> int:
    """Hand every run of our pools that crashed before `crashed_before` (when this
    server started) to the re-run or gave-up automation again.

    Only for a server that has just started with its events in memory (embedded mode): a run
    handed back Crashed by a stop sends its Crashed event as the server is being stopped, and
    the event may die with it. A run that crashed before this server started and is still
    Crashed is one whose event was lost (the automations move every other one on at once), or
    one whose automations an operator switched off, which this changes nothing for. Later
    crashes are this server's own: their events are on their way, and a second hand-on could
    schedule a run that is running again. Returns how many runs it handed on.
    """
    runs = [
        run
        for run in await _runs_in(client, [StateType.CRASHED])
        if run.state is not None and run.state.timestamp < crashed_before
    ]
    await _emit(client, crash_found_events(runs))
    return len(runs)


async def _runs_in(client: PrefectClient, types: list[StateType]) -> list[FlowRun]:
    """Every run of our work pools in one of the state `types`."""
    wanted = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=types)))
    pools = WorkPoolFilter(name=WorkPoolFilterName(any_=[queue.name for queue in QUEUES]))
    runs: list[FlowRun] = []
    while True:
        page = await client.read_flow_runs(
            flow_run_filter=wanted,
            work_pool_filter=pools,
            sort=FlowRunSort.ID_DESC,
            offset=len(runs),
            limit=_PAGE,
        )
        runs += page
        if len(page) < _PAGE:
            return runs


async def _emit(client: PrefectClient, events: list[Event]) -> None:
    for start in range(0, len(events), _PAGE):
        batch = [e.model_dump(mode="json") for e in events[start : start + _PAGE]]
        response = await client.request("POST", "/events", json=batch)
        response.raise_for_status()
