"""Transient failures are retried after 5 and 10 s; permanent ones fail once, at once."""

from __future__ import annotations

import itertools

from prefect.client.schemas.objects import StateType

from deployments.system.local_target import keygen
from tests.support.proxy import FaultyProxy
from tests.support.runs import task_run_named


def test_dropped_connections_are_retried_with_backoff_then_succeed(
    stack, target, inventory, run_job, wait_for_final_state
):
    # The first two connections are dropped during the handshake; the third gets through.
    proxy = FaultyProxy(target.port, refuse_first=2).start()
    try:
        server_id = inventory.add_server(target, port=proxy.port)
        _trust(target, proxy.port)

        run = wait_for_final_state(
            run_job("scan/scan", {"server_id": str(server_id), "job_type": "scan:quick"})
        )
    finally:
        proxy.close()

    assert run.state.is_completed(), run.state.message
    with stack.sync_client() as client:
        scan_task = task_run_named(client, run.id, "scan server")
        states = sorted(client.read_task_run_states(scan_task.id), key=lambda s: s.timestamp)
    assert scan_task.run_count == 3
    starts = [s.timestamp for s in states if s.type is StateType.RUNNING]
    assert len(starts) == 3
    waits = [(b - a).total_seconds() for a, b in itertools.pairwise(starts)]
    assert 4.5 <= waits[0] <= 8.0, waits
    assert 9.5 <= waits[1] <= 13.0, waits


def test_changed_host_key_fails_once_without_retries(
    stack, target, inventory, run_job, wait_for_final_state, tmp_path
):
    impostor = tmp_path / "impostor_key"
    keygen(impostor)
    known_hosts = tmp_path / "known_hosts"
    pub = " ".join(impostor.with_suffix(".pub").read_text().split()[:2])
    known_hosts.write_text(f"[127.0.0.1]:{target.port} {pub}\n")
    server_id = inventory.add_server(target, known_hosts_file=str(known_hosts))

    run = wait_for_final_state(
        run_job("scan/scan", {"server_id": str(server_id), "job_type": "scan:quick"}), timeout=60
    )

    assert run.state.is_failed()
    assert "host key" in (run.state.message or "")
    assert "changed" in (run.state.message or "")
    with stack.sync_client() as client:
        assert task_run_named(client, run.id, "scan server").run_count == 1


def test_unknown_host_key_and_refused_key_fail_without_retries(
    stack, target, inventory, run_job, wait_for_final_state, tmp_path
):
    empty_known_hosts = tmp_path / "known_hosts"
    empty_known_hosts.write_text("")
    stranger_key = tmp_path / "stranger"
    keygen(stranger_key)
    unknown_host = inventory.add_server(target, known_hosts_file=str(empty_known_hosts))
    refused_key = inventory.add_server(target, private_key_file=str(stranger_key))

    runs = {
        "is not in": run_job("scan/scan", {"server_id": str(unknown_host)}),
        "refused our key": run_job("scan/scan", {"server_id": str(refused_key)}),
    }

    with stack.sync_client() as client:
        for expected, run_id in runs.items():
            run = wait_for_final_state(run_id, timeout=60)
            assert run.state.is_failed()
            assert expected in (run.state.message or "")
            assert task_run_named(client, run.id, "scan server").run_count == 1
            assert str(stranger_key.read_text()[40:80]) not in (run.state.message or "")


def _trust(target, port: int) -> None:
    """Make the target's host key known under the proxy's address too."""
    with open(target.known_hosts, "a") as known_hosts:
        known_hosts.write(target.known_hosts_line(port))
