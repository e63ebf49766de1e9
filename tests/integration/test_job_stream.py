"""A job's event stream (`GET /api/jobs/:id/events`) follows Prefect's event stream: it reads
the job when it changes, not every half second (api_shim/gateway/changes.py). In both modes:
in scaled mode the events come through Redis, from either Prefect API process."""

from __future__ import annotations

import time
import uuid

import httpx
from prometheus_client.parser import text_string_to_metric_families

from api_shim.routes.jobs import SAFETY_READ_SECONDS
from deployments.system.local_target import LocalTarget
from deployments.system.stack import Stack
from tests.integration.conftest import InventoryFile
from tests.support.api import Api, ok, sse_events

#: Seconds the stream of a job that does not change is held open.
QUIET = 8.0


def _job_reads(stack: Stack) -> float:
    """The shim's reads of a flow run so far (its `read_flow_run` calls to Prefect)."""
    text = httpx.get(f"{stack.shim_url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == "mm_prefect_call_seconds_count"
                and sample.labels.get("operation") == "read_flow_run"
            ):
                return sample.value
    return 0.0


def test_a_quiet_job_is_read_once_and_its_end_arrives_as_it_happens(
    stack: Stack, target: LocalTarget, inventory: InventoryFile
) -> None:
    assert stack.shim_url and stack.jwt_secret
    with Api(stack.shim_url, stack.jwt_secret, f"eve-{uuid.uuid4().hex[:6]}") as eve:
        server_id = inventory.add_server(
            target, update={"command": "sleep 60"}, owners=[eve.user_id]
        )
        job_id = ok(eve.post(f"/api/servers/{server_id}/update"), 202)["jobId"]
        eve.wait_for(job_id, lambda j: j["state"] == "active" and j["progress"] >= 40)
        with eve.http.stream("GET", f"/api/jobs/{job_id}/events") as stream:
            events = sse_events(stream)
            name, first = next(events)
            assert (name, first["state"]) == ("job", "active")
            before = _job_reads(stack)
            time.sleep(QUIET)
            # Polling read it every 0.5 s: 16 times; the event stream reads it at changes.
            quiet_reads = _job_reads(stack) - before
            assert quiet_reads <= 2, quiet_reads
            ok(eve.post(f"/api/jobs/{job_id}/cancel"))
            cancelled_at = time.monotonic()
            rest = list(events)
            took = time.monotonic() - cancelled_at
        assert rest[-1][0] == "end" and rest[-1][1]["state"] == "cancelled", rest
        # Told by an event, not found by the safety net's read (or there were no events).
        assert took < SAFETY_READ_SECONDS / 2, took
