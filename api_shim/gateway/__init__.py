"""The gateway: the only part of the shim that talks to Prefect.

It answers with the shim's schemas, never Prefect objects, and raises the errors of
`api_shim.gateway.errors` instead of Prefect's or httpx's; routes turn those into HTTP answers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import TypeVar
from uuid import UUID, uuid4

import httpx
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import FlowRun, State
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelled, Cancelling, Scheduled

from api_shim.gateway.changes import JobChanges
from api_shim.gateway.creation import Reaper, find_by_key, settle
from api_shim.gateway.errors import (
    DeploymentMissing,
    GatewayError,
    JobConflict,
    JobNotFound,
    OrchestratorUnavailable,
    OutcomeUnknown,
)
from api_shim.gateway.jobs import api_job
from api_shim.gateway.readiness import PREFECT_API, ReadyMark, look, missing_parts
from api_shim.metrics import PREFECT_SECONDS
from api_shim.schemas import Job, JobList, PrefectStatus, QueueCounts, ServiceHealth
from deployments.control.catalogue import (
    ALL_DEPLOYMENTS,
    CATALOGUE,
    DEPLOYMENTS,
    server_tag,
    user_tag,
)
from deployments.control.jobs import (
    POOLS,
    Enqueued,
    Holds,
    JobReader,
    LogLine,
    enqueue,
    enqueued,
    read_holds,
    read_logs,
    state_of,
)
from deployments.control.queues import Priority
from deployments.control.selection import (
    WAITING_FOR_SERVER_READ,
    Scope,
    Slice,
    needs_waiting_for_server,
    page_of,
    read_slice,
    slices_for,
    waiting_for_server,
)
from deployments.control.states import STARTED, JobState
from tasks.core.jobs import JobType

__all__ = [
    "POOLS",
    "DeploymentMissing",
    "Gateway",
    "GatewayError",
    "JobConflict",
    "JobNotFound",
    "OrchestratorUnavailable",
    "OutcomeUnknown",
    "Scope",
]

T = TypeVar("T")

log = logging.getLogger("api_shim.gateway")

#: Seconds the pool -> deployment ids map is kept.
DEPLOYMENT_CACHE_SECONDS = 60.0

#: Settled jobs kept in memory (a few KiB each), so polling one costs one Prefect read.
SETTLED_JOBS_KEPT = 2048


class Gateway:
    """Jobs, queues and workers, as Prefect knows them, through one long-lived client."""

    def __init__(self, client: PrefectClient, api_url: str, timeout: float) -> None:
        self.client = client
        self.api_url = api_url
        self.timeout = timeout
        self._deployments: dict[str, list[UUID]] = {}
        #: Deployment ids by full name, for creating runs without reading the deployment.
        self._deployment_ids: dict[str, UUID] = {}
        self._reading_ids = asyncio.Lock()
        self.reaper = Reaper(client)
        #: What Prefect's event stream says changed, for the jobs' event streams.
        self.changes = JobChanges()
        self._deployments_read = -DEPLOYMENT_CACHE_SECONDS - 1.0
        self._ready = ReadyMark()
        #: The look at Prefect that /health probes are waiting for, if one is under way.
        self._looking: asyncio.Future[ServiceHealth] | None = None
        self._last_verdict: tuple[str, tuple[str, ...]] | None = None
        #: Settled jobs (see `job`), by (run id, state id, for an admin), least recently read
        #: first.
        self._settled_jobs: OrderedDict[tuple[UUID, UUID | None, bool], Job] = OrderedDict()

    @classmethod
    @asynccontextmanager
    async def open(
        cls, api_url: str, timeout: float, auth_string: str | None = None
    ) -> AsyncIterator[Gateway]:
        async with PrefectClient(api=api_url, auth_string=auth_string) as client:
            gateway = cls(client, api_url, timeout)
            try:
                yield gateway
            finally:
                await gateway.changes.close()
                await gateway.reaper.close()

    async def call(self, operation: str, awaitable: Awaitable[T], *, create: bool = False) -> T:
        """Await one Prefect call with a deadline, translating its errors into ours.

        `create`: the call creates something, so an error answer that does not say the request
        was refused (a 5xx other than 503: Prefect failed mid-request, e.g. with its Redis
        unreachable; or a proxy gave up waiting) leaves the outcome unknown: `OutcomeUnknown`,
        for the caller to settle. A 503 stays a refusal: Prefect's answer to database errors
        that its clients may retry.
        """
        began = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                return await awaitable
        except ObjectNotFound:
            raise JobNotFound() from None
        except TimeoutError:
            if not await self._listening():
                self._ready.forget()
                raise OutcomeUnknown(
                    f"the Prefect API at {self.api_url} cannot be reached (it refuses "
                    "connections); is the stack up (`make up`)?"
                ) from None
            raise OutcomeUnknown(
                f"the Prefect API at {self.api_url} did not answer within {self.timeout:.0f} s"
            ) from None
        except httpx.HTTPStatusError as exc:
            status = exc.response.status_code
            detail = exc.response.text.strip()[:200]
            if status == 404:
                raise JobNotFound() from None
            if status == 409:
                raise JobConflict(detail or None) from None
            if create and status >= 500 and status != 503:
                raise OutcomeUnknown(
                    f"the Prefect API at {self.api_url} failed with {status}: {detail}"
                ) from None
            raise OrchestratorUnavailable(
                f"the Prefect API at {self.api_url} answered {status}: {detail}"
            ) from None
        except (httpx.ConnectError, httpx.ConnectTimeout, OSError) as exc:
            # Nothing was sent: Prefect did nothing. /health must look again before it says
            # ready once more.
            self._ready.forget()
            raise OrchestratorUnavailable(
                f"the Prefect API at {self.api_url} cannot be reached "
                f"({exc or type(exc).__name__}); is the stack up (`make up`)?"
            ) from None
        except httpx.TransportError as exc:
            raise OutcomeUnknown(
                f"the connection to the Prefect API at {self.api_url} broke before it answered "
                f"({exc or type(exc).__name__})"
            ) from None
        finally:
            PREFECT_SECONDS.labels(operation).observe(time.perf_counter() - began)

    async def _listening(self) -> bool:
        """Whether something accepts connections at the API's address (a fraction of a second)."""
        url = httpx.URL(self.api_url)
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            async with asyncio.timeout(1.0):
                _, writer = await asyncio.open_connection(url.host, port)
        except (OSError, TimeoutError):
            return False
        writer.close()
        return True

    # -- the orchestrator ------------------------------------------------------------------

    async def status(self) -> PrefectStatus:
        """Whether Prefect answers, and its version; never raises."""
        try:
            version = await self.call("version", self.client.api_version())
        except GatewayError as exc:
            return PrefectStatus(reachable=False, api_url=self.api_url, message=exc.message)
        return PrefectStatus(
            reachable=True, api_url=self.api_url, version=str(version), message="reachable"
        )

    async def health(self) -> ServiceHealth:
        """Whether an enqueue would be accepted: Prefect answers and has the pools, work queues
        and deployments that jobs need (`api_shim.gateway.readiness`); never raises.

        From memory while the last complete look is fresh (`READY_RECHECK_SECONDS`); probes
        that ask while a look is under way share it instead of starting their own.
        """
        if not self._ready.due(time.monotonic()):
            return ServiceHealth(status="ok")
        if self._looking is None or self._looking.done():
            self._looking = asyncio.ensure_future(self._look())
        # Shielded: a probe that hangs up must not cancel the look the others wait for.
        return await asyncio.shield(self._looking)

    async def _look(self) -> ServiceHealth:
        try:
            pools, found = await look(self.call, self.client)
        except GatewayError as exc:
            # The reason, with Prefect's address, goes to the log only: /health is open to all.
            unavailable = ServiceHealth(status="unavailable", missing=[PREFECT_API])
            self._verdict(unavailable, exc.message)
            return unavailable
        for deployment in ALL_DEPLOYMENTS:  # an id kept for one gone would only cost a 404
            self._deployment_ids.pop(deployment.full_name, None)
        self._deployment_ids.update(found)
        missing = missing_parts(pools, found)
        if not missing:
            self._ready.seen(time.monotonic())
        verdict = ServiceHealth(status="not_ready" if missing else "ok", missing=missing)
        self._verdict(verdict, None)
        return verdict

    def _verdict(self, health: ServiceHealth, reason: str | None) -> None:
        """Log a change of verdict, once: probes repeat the same one every few seconds."""
        said = (health.status, tuple(health.missing))
        if said == self._last_verdict:
            return
        self._last_verdict = said
        if health.status == "ok":
            log.info("ready: Prefect has the pools, work queues and deployments")
        else:
            log.warning("not ready: %s", reason or f"Prefect lacks {', '.join(health.missing)}")

    async def paused_pools(self) -> set[str]:
        return set((await self.holds()).pools)

    async def holds(self) -> Holds:
        """The paused pools and work queues (deployments.control.jobs.read_holds)."""
        return await self.call("read_holds", read_holds(self.client))

    # -- jobs -------------------------------------------------------------------------------

    async def enqueue(
        self,
        job_type: JobType,
        parameters: dict[str, object],
        *,
        user_id: str,
        priority: Priority | None,
        idempotency_key: str | None,
        due: datetime | None = None,
    ) -> Enqueued:
        """Start a job (not before `due`, if given); its parameters are those of the first,
        for a repeat.

        When it raises, no job was created, or (for a caller's `idempotency_key`) repeating
        the request with that key returns the one that was: see `api_shim.gateway.creation`.
        """
        key = idempotency_key or f"api:{user_id}:once:{uuid4()}"
        if not await self._listening():
            raise OrchestratorUnavailable(
                f"the Prefect API at {self.api_url} cannot be reached (it refuses connections); "
                "the job was not created"
            )
        try:
            try:
                run = await self._create(job_type, parameters, user_id, priority, key, due)
            except JobNotFound:
                # Registered again under a new id since we cached it: look it up once more.
                self._deployment_ids.pop(CATALOGUE[job_type].deployment.full_name, None)
                run = await self._create(job_type, parameters, user_id, priority, key, due)
        except JobNotFound:
            # /health must not go on saying ready until it has looked again.
            self._ready.forget()
            raise DeploymentMissing() from None
        except OutcomeUnknown as exc:
            settled = await settle(
                lambda: find_by_key(self.client, key),
                self.reaper,
                key,
                exc.message,
                callers_key=idempotency_key is not None,
                ask=await self._listening(),
            )
            if isinstance(settled, str):
                raise OrchestratorUnavailable(settled) from None
            job = CATALOGUE[job_type]
            return enqueued(settled, job.deployment, priority or job.default_priority)
        return run

    async def _create(
        self,
        job_type: JobType,
        parameters: dict[str, object],
        user_id: str,
        priority: Priority | None,
        key: str,
        due: datetime | None,
    ) -> Enqueued:
        deployment = CATALOGUE[job_type].deployment.full_name
        deployment_id = self._deployment_ids.get(deployment)
        if deployment_id is None:
            # One read for all the requests that find the cache empty, as at the start of a burst.
            async with self._reading_ids:
                deployment_id = self._deployment_ids.get(deployment)
                if deployment_id is None:
                    read = self.client.read_deployment_by_name(deployment)
                    found = await self.call("read_deployment", read)
                    deployment_id = self._deployment_ids[deployment] = found.id
        return await self.call(
            "create_flow_run",
            enqueue(
                self.client,
                job_type,
                dict(parameters),
                deployment_id=deployment_id,
                priority=priority,
                tags=[user_tag(user_id)],
                idempotency_key=key,
                due=due,
            ),
            create=True,
        )

    async def logs(
        self, job_id: UUID, scope: Scope | None, level: int, limit: int, offset: int
    ) -> list[LogLine]:
        """A page of the log of a job the caller may see, oldest first; an operator's
        command's output only for admins (`read_logs`)."""
        await self.find(job_id, scope)
        read = read_logs(
            self.client, job_id, level=level, limit=limit, offset=offset, full=scope is None
        )
        return await self.call("read_logs", read)

    async def find(self, job_id: UUID, scope: Scope | None) -> FlowRun:
        """The flow run of a job the caller may see; others' jobs are as absent as unknown ones."""
        try:
            run = await self.call("read_flow_run", self.client.read_flow_run(job_id))
        except JobNotFound:
            raise JobNotFound(f"no job {job_id}") from None
        if scope is not None and not scope.allows(run):
            raise JobNotFound(f"no job {job_id}")
        return run

    async def job(self, job_id: UUID, scope: Scope | None) -> Job:
        """One job: one Prefect read for a finished job read before, three otherwise (five
        for a scheduled one, whose state depends on what is paused).

        A settled job (deployments.control.jobs.settled: the run is final and so are its task
        runs) changes only when its run gets a new state (a retry), so it is kept by (run id,
        state id) and served again from the one read of the run itself.
        """
        run = await self.find(job_id, scope)
        # An admin's job has the failure in full, a user's not: each is kept apart.
        key = (run.id, run.state.id if run.state is not None else None, scope is None)
        if (cached := self._settled_jobs.get(key)) is not None:
            self._settled_jobs.move_to_end(key)
            return cached
        # An admin sees failures in full, as the operator's CLI does; a user the message alone.
        reader = JobReader(self.client, full_reasons=scope is None)
        job = api_job(await self.call("read_job_details", reader.job(run)))
        if run.id in reader.settled:
            self._settled_jobs[key] = job
            while len(self._settled_jobs) > SETTLED_JOBS_KEPT:
                self._settled_jobs.popitem(last=False)
        return job

    async def jobs(
        self,
        scope: Scope | None,
        queue: str | None,
        state: JobState | None,
        limit: int,
        offset: int,
        server_id: UUID | None = None,
    ) -> JobList:
        """A page of jobs (of one server, if given), newest (by due time) first, and how many
        match in all."""
        pools = (queue,) if queue else POOLS
        holds, waiting = await asyncio.gather(
            self.holds(),
            self._waiting_for_server(pools, scope, needed=needs_waiting_for_server(state)),
        )
        slices = slices_for(state, pools, holds, datetime.now(UTC), [r.id for r in waiting])
        if server_id is not None:
            # A user's scope still applies: another's server gives an empty page, as an unknown one.
            slices = [replace(s, tags=(*s.tags, server_tag(server_id))) for s in slices]
        runs, total = await page_of(
            slices,
            lambda part: self._count(part, scope),
            lambda part, start, n: self._read(part, scope, start, n),
            offset,
            limit,
        )
        reader = JobReader(self.client, full_reasons=scope is None)
        page = [api_job(j) for j in await self.call("read_job_details", reader.jobs(runs, holds))]
        return JobList(jobs=page, count=len(page), total=total, limit=limit, offset=offset)

    async def counts(self, scope: Scope | None) -> dict[str, QueueCounts]:
        """Jobs per queue and state, by count queries run side by side."""
        holds, waiting = await asyncio.gather(
            self.holds(), self._waiting_for_server(POOLS, scope, needed=True)
        )
        now = datetime.now(UTC)
        keys: list[tuple[str, JobState]] = []
        queries: list[Awaitable[int]] = []
        for pool in POOLS:
            # Each pool's own: a pool with none waiting costs no count of them.
            ids = [r.id for r in waiting if r.work_pool_name == pool]
            for state in JobState:
                for part in slices_for(state, (pool,), holds, now, ids):
                    keys.append((pool, state))
                    queries.append(self._count(part, scope))
        found = await asyncio.gather(*queries)
        counts = {pool: QueueCounts() for pool in POOLS}
        for (pool, state), n in zip(keys, found, strict=True):
            entry = counts[pool]
            setattr(entry, state.value, getattr(entry, state.value) + n)
            entry.total += n
        return counts

    async def workers_online(self) -> dict[str, int]:
        """Live (ONLINE) workers per pool."""
        found = await asyncio.gather(
            *(
                self.call("read_workers", self.client.read_workers_for_work_pool(pool))
                for pool in POOLS
            )
        )
        return {
            pool: sum(1 for w in workers if w.status.value == "ONLINE")
            for pool, workers in zip(POOLS, found, strict=True)
        }

    async def retry(self, job_id: UUID, scope: Scope | None) -> None:
        """Run a failed job again under the same id; its attempts go on counting."""
        run, state = await self._run_and_state(job_id, scope)
        if state is not JobState.FAILED:
            raise JobConflict(f"only failed jobs can be retried; job {job_id} is {state}")
        # Forced: Prefect refuses Failed -> Scheduled otherwise; the worker then runs the same
        # flow-run id again with run_count + 1 (docs/DESIGN.md, "Prefect behaviour the code
        # relies on").
        await self.call(
            "set_flow_run_state", self.client.set_flow_run_state(run.id, Scheduled(), force=True)
        )

    async def cancel(self, job_id: UUID, scope: Scope | None) -> JobState:
        """Cancel a job that has not ended; returns the state it is in now."""
        run, state = await self._run_and_state(job_id, scope)
        if state.final:
            raise JobConflict(f"job {job_id} has already ended ({state})")
        started = run.state is not None and run.state.type in STARTED
        # A run with a process must be killed by its worker (Cancelling); one without a process
        # has nothing to kill, and Cancelling would leave it hanging (docs/DESIGN.md, "Prefect
        # behaviour the code relies on").
        new_state: State[None] = Cancelling() if started else Cancelled()
        await self.call("set_flow_run_state", self.client.set_flow_run_state(run.id, new_state))
        return JobState.ACTIVE if started else JobState.CANCELLED

    async def delete(self, job_id: UUID, scope: Scope | None) -> None:
        """Delete a job that is not running (BullMQ refused to remove active jobs too)."""
        run, state = await self._run_and_state(job_id, scope)
        if run.state is not None and run.state.type in STARTED:
            raise JobConflict(f"job {job_id} is {state}; cancel it before removing it")
        await self.call("delete_flow_run", self.client.delete_flow_run(run.id))

    async def _run_and_state(self, job_id: UUID, scope: Scope | None) -> tuple[FlowRun, JobState]:
        run, holds = await asyncio.gather(self.find(job_id, scope), self.holds())
        return run, state_of(run, holds, datetime.now(UTC))

    # -- helpers ----------------------------------------------------------------------------

    async def _waiting_for_server(
        self, pools: tuple[str, ...], scope: Scope | None, *, needed: bool
    ) -> list[FlowRun]:
        """The pools' Running runs that wait for their server (one read), if `needed`."""
        if not needed:
            return []
        return await self._read(waiting_for_server(pools), scope, 0, WAITING_FOR_SERVER_READ)

    async def _count(self, part: Slice, scope: Scope | None) -> int:
        if scope is not None and scope.empty:
            return 0
        deployments = await self.deployments_of(part.pools)
        return await self.call(
            "count_flow_runs",
            self.client.count_flow_runs(
                flow_run_filter=part.flow_run_filter(scope, deployments=deployments)
            ),
        )

    async def deployments_of(self, pools: tuple[str, ...]) -> list[UUID]:
        """The ids of the deployments whose runs go to `pools`, cached for a minute (the
        bootstrap keeps ids when it redeploys; the minute bounds a rebuilt database)."""
        async with self._reading_ids:
            if time.monotonic() - self._deployments_read > DEPLOYMENT_CACHE_SECONDS:
                await self._read_deployments()
        return [i for pool in pools for i in self._deployments.get(pool, [])]

    async def _read_deployments(self) -> None:
        try:
            found = await asyncio.gather(
                *(
                    self.call("read_deployment", self.client.read_deployment_by_name(d.full_name))
                    for d in DEPLOYMENTS
                )
            )
        except JobNotFound:
            raise DeploymentMissing() from None
        self._deployments = {
            pool: [f.id for d, f in zip(DEPLOYMENTS, found, strict=True) if d.queue.name == pool]
            for pool in POOLS
        }
        self._deployment_ids.update(
            {d.full_name: f.id for d, f in zip(DEPLOYMENTS, found, strict=True)}
        )
        self._deployments_read = time.monotonic()

    async def _read(
        self, part: Slice, scope: Scope | None, offset: int, limit: int
    ) -> list[FlowRun]:
        """Up to `limit` runs of a slice from `offset`, in pages Prefect accepts."""
        if scope is not None and scope.empty:
            return []
        deployments = await self.deployments_of(part.pools)
        flow_run_filter = part.flow_run_filter(scope, deployments=deployments)
        return await read_slice(self.client, flow_run_filter, offset, limit, self.call)
