"""Which flow runs show as a given job state: the state table turned into Prefect filters.

Most job states are a set of Prefect state types. SCHEDULED is split three ways, as
`deployments.control.states.job_state` does for one run: paused in a paused pool or work queue,
delayed when due later, waiting when due now. So `waiting` and `paused` are unions of slices,
each one filter: a pool with some of its work queues paused is cut by work-queue name.

RUNNING is split two ways: waiting for its server (tagged `WAITING_FOR_SERVER_TAG`), else
active. Prefect filters tags by presence only, so `active` cannot say "without the tag": the
gateway reads the ids of the tagged runs first (`waiting_for_server`, one read), and the two
slices are cut by those ids, which keeps them disjoint even while a tag comes or goes.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterId,
    FlowRunFilterNextScheduledStartTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
    FlowRunFilterWorkQueueName,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort

from deployments.control.catalogue import server_tag, user_tag
from deployments.control.jobs import PAGE, Holds
from deployments.control.states import (
    STATE_TABLE,
    WAITING_FOR_SERVER,
    JobState,
    state_types_for,
)
from tasks.core.jobs import WAITING_FOR_SERVER_TAG


@dataclass(frozen=True)
class Scope:
    """The jobs a user sees: those they enqueued, on servers they own now (an admin has none:
    None stands for everything). A server whose ownership is withdrawn takes its jobs along."""

    user_id: str
    #: Ids of the servers whose inventory `owners` name the user.
    servers: frozenset[str]

    @property
    def empty(self) -> bool:
        """Whether no run can be in it: Prefect is not asked about a user owning no server."""
        return not self.servers

    def tags(self, also: Iterable[str] = ()) -> FlowRunFilterTags:
        """The filter of its runs (with the tags `also`, if any)."""
        # all_ and any_ are ANDed by Prefect: the user's tag and one of their servers' tags.
        return FlowRunFilterTags(
            all_=[user_tag(self.user_id), *also], any_=sorted(server_tag(s) for s in self.servers)
        )

    def allows(self, run: FlowRun) -> bool:
        """Whether `run` is in it: the same rule as `tags`, for a run read by id."""
        tags = set(run.tags)
        return user_tag(self.user_id) in tags and any(server_tag(s) in tags for s in self.servers)


@dataclass(frozen=True)
class Slice:
    """Flow runs in some state types and pools, optionally due before or after a time."""

    types: tuple[StateType, ...] | None
    pools: tuple[str, ...]
    due_before: datetime | None = None
    due_after: datetime | None = None
    #: Only these work queues of the pools (by name); None: all of them.
    work_queues: tuple[str, ...] | None = None
    #: Only runs with all these tags.
    tags: tuple[str, ...] = ()
    #: Only these runs; None: any.
    ids: tuple[UUID, ...] | None = None
    #: Not these runs.
    excluded: tuple[UUID, ...] = ()

    def flow_run_filter(
        self, scope: Scope | None, deployments: Iterable[UUID] | None = None
    ) -> FlowRunFilter:
        """Prefect's filter for this slice, limited to a user's `scope` unless None (an admin).

        With the ids of the pools' `deployments`, the filter stands for the pools by itself: an
        indexed column of the run instead of a join through work queues to pools, which makes
        counts over 100,000 runs several times faster (BENCHMARKS.md).
        """
        if scope is not None:
            tags: FlowRunFilterTags | None = scope.tags(also=self.tags)
        else:
            tags = FlowRunFilterTags(all_=list(self.tags)) if self.tags else None
        return FlowRunFilter(
            id=(
                FlowRunFilterId(
                    any_=list(self.ids) if self.ids is not None else None,
                    not_any_=list(self.excluded) or None,
                )
                if self.ids is not None or self.excluded
                else None
            ),
            deployment_id=(
                FlowRunFilterDeploymentId(any_=list(deployments))
                if deployments is not None
                else None
            ),
            tags=tags,
            work_queue_name=(
                FlowRunFilterWorkQueueName(any_=list(self.work_queues))
                if self.work_queues is not None
                else None
            ),
            state=(
                FlowRunFilterState(type=FlowRunFilterStateType(any_=list(self.types)))
                if self.types is not None
                else None
            ),
            next_scheduled_start_time=(
                FlowRunFilterNextScheduledStartTime(before_=self.due_before, after_=self.due_after)
                if self.due_before is not None or self.due_after is not None
                else None
            ),
        )


#: `after_` is inclusive like `before_`; one tick past `now` keeps the two SCHEDULED slices apart.
_TICK = timedelta(microseconds=1)


def _scheduled_parts(
    pools: tuple[str, ...], holds: Holds
) -> list[tuple[tuple[str, ...], tuple[str, ...] | None, bool]]:
    """The pools' Scheduled runs cut by hold: (pools, work queues or None for all, held).

    Pools cut the same way share a part, so nothing paused costs the one slice it always did.
    Runs of a partly paused pool in a work queue it no longer has show in neither part.
    """
    parts: dict[tuple[tuple[str, ...] | None, bool], list[str]] = defaultdict(list)
    for pool in pools:
        paused = holds.paused_queues(pool)
        if pool in holds.pools:
            parts[(None, True)].append(pool)
        elif not paused:
            parts[(None, False)].append(pool)
        else:
            parts[(tuple(sorted(paused)), True)].append(pool)
            others = holds.queue_names.get(pool, frozenset()) - paused
            if others:
                parts[(tuple(sorted(others)), False)].append(pool)
    return [(tuple(found), queues, held) for (queues, held), found in parts.items()]


#: The most waiting-for-server runs read for one list or count. Running runs are at most the
#: pools' concurrency (8 in the queue table), so one page holds them all; past it, the rest
#: would count as active in lists and counts, while each job still reads `waiting`.
WAITING_FOR_SERVER_READ = 200


def waiting_for_server(pools: Iterable[str]) -> Slice:
    """The pools' Running runs tagged as waiting for their server: read for their ids, which
    `slices_for` takes (at most `WAITING_FOR_SERVER_READ` of them)."""
    return Slice((StateType.RUNNING,), tuple(pools), tags=(WAITING_FOR_SERVER_TAG,))


def needs_waiting_for_server(state: JobState | None) -> bool:
    """Whether the slices of `state` are cut by the ids of the waiting-for-server runs."""
    return state is not None and StateType.RUNNING in state_types_for(state)


def slices_for(
    state: JobState | None,
    pools: Iterable[str],
    holds: Holds,
    now: datetime,
    waiting: Iterable[UUID] = (),
) -> list[Slice]:
    """Disjoint slices whose union is every run in `pools` that shows as `state` (all if None).

    `waiting`: the ids of the pools' runs read through `waiting_for_server`, when
    `needs_waiting_for_server(state)`: they show as waiting, the rest of the Running runs as
    active.
    """
    pools = tuple(pools)
    if state is None:
        return [Slice(None, pools)] if pools else []
    waiting = tuple(waiting)
    slices: list[Slice] = []
    plain = tuple(t for t in state_types_for(state) if t is not StateType.SCHEDULED)
    if state is WAITING_FOR_SERVER:
        plain = tuple(t for t in plain if t is not StateType.RUNNING)
    if plain and pools:
        excluded = waiting if StateType.RUNNING in plain else ()
        slices.append(Slice(plain, pools, excluded=excluded))
    if state is WAITING_FOR_SERVER and waiting and pools:
        # The tag too: a run that got its slot since the read shows in neither list for a
        # moment, rather than listed as waiting while it reads active.
        slices.append(replace(waiting_for_server(pools), ids=waiting))
    scheduled = (StateType.SCHEDULED,)
    for part, queues, held in _scheduled_parts(pools, holds):
        if state is JobState.PAUSED and held:
            slices.append(Slice(scheduled, part, work_queues=queues))
        if state is JobState.DELAYED and not held:
            slices.append(Slice(scheduled, part, due_after=now + _TICK, work_queues=queues))
        if state is STATE_TABLE[StateType.SCHEDULED] and not held:
            slices.append(Slice(scheduled, part, due_before=now, work_queues=queues))
    return slices


#: How a reader sends one Prefect call: as it is (the CLI), or through the shim's gateway,
#: which bounds its time and translates its errors.
Call = Callable[[str, Awaitable[list[FlowRun]]], Awaitable[list[FlowRun]]]


async def _as_it_is(operation: str, awaitable: Awaitable[list[FlowRun]]) -> list[FlowRun]:
    return await awaitable


async def read_slice(
    client: PrefectClient,
    flow_run_filter: FlowRunFilter,
    offset: int,
    limit: int,
    call: Call = _as_it_is,
) -> list[FlowRun]:
    """Up to `limit` runs of a slice's filter from `offset`, newest (by due time) first, in
    pages Prefect accepts."""
    runs: list[FlowRun] = []
    while len(runs) < limit:
        wanted = min(PAGE, limit - len(runs))
        page = await call(
            "read_flow_runs",
            client.read_flow_runs(
                flow_run_filter=flow_run_filter,
                sort=FlowRunSort.EXPECTED_START_TIME_DESC,
                limit=wanted,
                offset=offset + len(runs),
            ),
        )
        runs.extend(page)
        if len(page) < wanted:
            break
    return runs


def due_order(run: FlowRun) -> tuple[datetime, str]:
    """The lists' order, newest first when reversed: by due time, then id."""
    return (run.expected_start_time or run.created or datetime.min.replace(tzinfo=UTC), str(run.id))


async def page_of(
    slices: Sequence[Slice],
    count: Callable[[Slice], Awaitable[int]],
    read: Callable[[Slice, int, int], Awaitable[list[FlowRun]]],
    offset: int,
    limit: int,
) -> tuple[list[FlowRun], int]:
    """A page of the union of disjoint `slices`, newest first, and how many runs they hold:
    each slice's first offset+limit runs, merged in the same order."""
    totals = await asyncio.gather(*(count(s) for s in slices))
    if len(slices) == 1:
        runs = await read(slices[0], offset, limit)
    else:
        wanted = offset + limit
        parts = await asyncio.gather(
            *(read(part, 0, min(wanted, n)) for part, n in zip(slices, totals, strict=True))
        )
        merged = sorted((run for part in parts for run in part), key=due_order, reverse=True)
        runs = merged[offset : offset + limit]
    return runs, sum(totals)
