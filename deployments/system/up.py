"""`make up` and `make demo`: the whole stack in the foreground until Ctrl-C.

    python -m deployments.system.up [--demo] [--data-dir var] [--port 4200] [--api-port 3000]

`--demo` also starts a throwaway sshd on loopback with a small data tree, points the inventory at
it, enqueues a quick scan and a backup, and shows their progress.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
import uuid
from pathlib import Path
from types import FrameType
from uuid import UUID

import yaml
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import arun_deployment
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from deployments.control.bootstrap import PROJECT_DIR
from deployments.control.catalogue import CATALOGUE
from deployments.system.credentials import PREFECT_AUTH_FILE
from deployments.system.local_target import LocalTarget
from deployments.system.lock import DataDirLock, StackRunning, end_leftovers
from deployments.system.stack import Stack, StackError
from tasks.atomic import write_atomic
from tasks.core.callers import Role, mint_token
from tasks.core.jobs import JobType
from tasks.core.settings import SettingsError, get_settings
from tasks.progress import read_progress

console = Console(stderr=True)

#: The demo server keeps its id across runs, so its jobs line up in the UI.
DEMO_SERVER_ID = uuid.uuid5(uuid.NAMESPACE_URL, "https://medicine-man.invalid/demo-target")

EXAMPLE_INVENTORY = """\
# The server inventory (MM_INVENTORY). Jobs read it when they run; backup schedules are applied
# by the bootstrap, so restart `make up` (or run `python -m deployments.control.bootstrap`) after
# changing a `schedule`.
servers: []
#  - id: 6f0b7c1e-0000-4000-8000-000000000001  # any UUID, e.g. from uuidgen
#    name: web-1
#    host: 203.0.113.10
#    port: 22
#    username: backup
#    private_key_file: ~/.ssh/id_ed25519
#    known_hosts_file: ~/.ssh/known_hosts
#    backup:
#      paths: [/srv/app/data]
#      schedule: "0 3 * * *"        # cron; each tick runs a backup:scheduled job
#      timezone: UTC
#      pre: docker stop app
#      post: docker start app
#    update:
#      command: sudo apt-get update && sudo apt-get -y upgrade
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.system.up", description=__doc__)
    parser.add_argument("--demo", action="store_true", help="also run a demo server and jobs")
    parser.add_argument("--data-dir", type=Path, default=PROJECT_DIR / "var")
    parser.add_argument("--project-dir", type=Path, default=PROJECT_DIR, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=4200, help="Prefect API and UI")
    try:
        settings = get_settings()
    except SettingsError as exc:
        console.print(f"[red]invalid MM_* setting: {exc}[/]", soft_wrap=True)
        return 2
    parser.add_argument("--api-port", type=int, default=settings.stack.api_port, help="MM_API_PORT")
    parser.add_argument(
        "--stop-grace",
        type=float,
        default=settings.stack.stop_grace,
        help="seconds running jobs get to finish on Ctrl-C before they are handed back"
        " (MM_STOP_GRACE)",
    )
    parser.add_argument(
        "--inventory", type=Path, default=None, help="default: MM_INVENTORY or ./inventory.yaml"
    )
    args = parser.parse_args(argv)
    data_dir: Path = args.data_dir.resolve()
    # Before anything binds a port: a second `make up` here names the first instead of
    # failing on whichever port it reaches first.
    try:
        lock = DataDirLock(data_dir).acquire()
    except StackRunning as exc:
        console.print(f"[red]{exc}[/]", soft_wrap=True)
        return 1
    try:
        ended = end_leftovers(data_dir)
        if ended:
            console.print(
                f"[yellow]ended {len(ended)} processes (pids {', '.join(map(str, ended))}) that"
                " the last stack here left running: its supervisor was killed before it could"
                " stop them[/]",
                soft_wrap=True,
            )
        return run(args, data_dir)
    finally:
        lock.release()


def run(args: argparse.Namespace, data_dir: Path) -> int:
    """The stack of `main`'s arguments, in the foreground until Ctrl-C or SIGTERM."""

    target: LocalTarget | None = None
    stack: Stack | None = None
    signals = 0

    # SIGTERM ends the stack like Ctrl-C does. Only the first signal interrupts: the ones that
    # follow, during the stop, hurry it (jobs are handed back at once) but never cut its
    # cleanup short, which would leave the server and workers running.
    def interrupt(signum: int, frame: FrameType | None) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            raise KeyboardInterrupt
        if stack is not None:
            stack.hurry()

    # SIGINT too, by name: a shell that starts us in the background leaves SIGINT ignored, and
    # the workers would inherit that, and with it a stop that never ends (Prefect's CLI turns
    # the worker's SIGTERM into a SIGINT to itself).
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        if args.demo:
            target = LocalTarget(home=data_dir / "demo" / "target").start()
            inventory = write_demo_inventory(data_dir / "demo", target)
            console.print(
                f"demo server: sshd on 127.0.0.1:{target.port}, inventory {inventory}",
                soft_wrap=True,
            )
        else:
            inventory = (args.inventory or get_settings().paths.inventory).resolve()
            if not inventory.exists():
                inventory.parent.mkdir(parents=True, exist_ok=True)
                inventory.write_text(EXAMPLE_INVENTORY)
                console.print(f"[yellow]{inventory} did not exist: wrote an empty example[/]")
        stack = Stack(
            data_dir,
            port=args.port,
            inventory=inventory,
            api_port=args.api_port,
            project_dir=args.project_dir,
            stop_grace=args.stop_grace,
        )
        console.print(f"starting the stack under {data_dir} (logs in {stack.logs_dir}) ...")
        stack.start()
        console.print(
            f"[green]ready[/] in {stack.timings['total']:.1f} s\n"
            f"  Prefect UI   {stack.url}\n"
            f"  Prefect API  {stack.api_url}\n"
            + (f"  Jobs API     {stack.shim_url}\n" if stack.shim_url else "")
            + (f"  dev token    {dev_token(stack)}\n" if stack.shim_url else "")
            + f"  inventory    {inventory}\n"
            + login_help(stack)
            + "Ctrl-C stops everything.",
            # A wrapped token could not be pasted back whole.
            soft_wrap=True,
        )
        if args.demo:
            asyncio.run(run_demo(stack))
        supervise(stack)
    except KeyboardInterrupt:
        console.print("stopping ... (another Ctrl-C hands running jobs back at once)")
    except StackError as exc:
        console.print(f"[red]{exc}[/]")
        return 1
    finally:
        # From here on no signal interrupts: the stop below runs to its end, whatever comes.
        signals = max(signals, 1)
        if stack is not None:
            stack.stop()
            if "stop" in stack.timings:
                took = stack.timings
                console.print(
                    f"stopped in {took['stop']:.1f} s (runs and shim {took['stop runs']:.1f} s,"
                    f" workers {took['stop workers'] - took['stop runs']:.1f} s, server side"
                    f" {took['stop'] - took['stop workers']:.1f} s)"
                )
        if target is not None:
            target.stop()
    return 0


def dev_token(stack: Stack) -> str:
    """An admin token for the shim, valid 12 hours: `curl -H "Authorization: Bearer $TOKEN"`."""
    assert stack.jwt_secret is not None
    # The shim's own settings, so the token carries the claims it checks (MM_JWT_ISSUER and
    # MM_JWT_AUDIENCE, when set).
    shim = stack.settings.api
    return mint_token(
        stack.jwt_secret,
        "dev-admin",
        Role.ADMIN,
        issuer=shim.jwt_issuer,
        audience=shim.jwt_audience,
    )


def login_help(stack: Stack) -> str:
    """Where Prefect's auth string is kept, for the UI's login and for the CLIs' environment."""
    if os.environ.get("PREFECT_API_AUTH_STRING"):
        return "  Prefect login the PREFECT_API_AUTH_STRING you set\n"
    kept = stack.data_dir / PREFECT_AUTH_FILE
    return (
        f"  Prefect login {kept} (the UI asks for its contents)\n"
        "  for the CLIs  "
        f'export PREFECT_API_URL={stack.api_url} PREFECT_API_AUTH_STRING="$(cat {kept})"\n'
    )


def supervise(stack: Stack) -> None:
    """Until interrupted: restart a worker that died; give up if the server died."""
    while True:
        time.sleep(1)
        if stack.server is None or not stack.server.alive():
            raise StackError(f"the Prefect server exited; see {stack.logs_dir / 'server.log'}")
        for worker in stack.worker_processes():
            # A restart of one pool's fork-server worker serves every pool its process served.
            if not worker.alive() and not stack.served(worker.pools[0], worker.host):
                pools = ", ".join(worker.pools)
                console.print(f"[yellow]the worker of {pools} exited; restarting it[/]")
                stack.start_worker(worker.pools[0], host=worker.host)


def write_demo_inventory(demo_dir: Path, target: LocalTarget) -> Path:
    """A sample data tree served by `target` and an inventory with one server for it."""
    data = demo_dir / "data"
    (data / "app" / "uploads").mkdir(parents=True, exist_ok=True)
    (data / "app" / "config.yml").write_text("name: demo\nreplicas: 2\n")
    for i in range(20):
        (data / "app" / "uploads" / f"note-{i:02d}.txt").write_text(f"note {i}\n" * 200)
    blob = data / "app" / "blob.bin"
    if not blob.exists():
        blob.write_bytes(os.urandom(8 << 20))
    entry = target.server_entry(
        str(DEMO_SERVER_ID),
        "demo-target",
        backup={"paths": [str(data / "app")]},
        update={"command": "echo nothing to update"},
    )
    inventory = demo_dir / "inventory.yaml"
    write_atomic(inventory, yaml.safe_dump({"servers": [entry]}, sort_keys=False).encode())
    return inventory


async def run_demo(stack: Stack) -> None:
    """Enqueue a quick scan and a backup of the demo server and show their progress."""
    jobs = [JobType.SCAN_QUICK, JobType.BACKUP_MANUAL]
    runs: list[tuple[JobType, FlowRun]] = []
    with stack.prefect_settings():
        for job_type in jobs:
            deployment = CATALOGUE[job_type].deployment
            flow_run = await arun_deployment(
                name=deployment.full_name,
                parameters={"server_id": str(DEMO_SERVER_ID), "job_type": job_type.value},
                timeout=0,
            )
            runs.append((job_type, flow_run))
            console.print(
                f"enqueued {job_type.value}: {stack.url}/runs/flow-run/{flow_run.id}",
                soft_wrap=True,
            )
    columns = (
        TextColumn("{task.fields[job]:<14}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f} %"),
        TextColumn("{task.fields[state]:<10} {task.description}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as bars:
        ids: dict[UUID, TaskID] = {
            run.id: bars.add_task("queued", total=100, job=job.value, state="Scheduled")
            for job, run in runs
        }
        pending = set(ids)
        async with stack.client() as client:
            while pending:
                for run_id in list(pending):
                    run = await client.read_flow_run(run_id)
                    reading = await read_progress(client, run_id)
                    state = run.state
                    bars.update(
                        ids[run_id],
                        completed=reading.percent if reading else 0,
                        description=(reading.message if reading else None) or "",
                        state=state.name if state else "?",
                    )
                    if state is not None and state.is_final():
                        pending.discard(run_id)
                        if state.is_completed():
                            bars.update(ids[run_id], completed=100)
                        elif state.message:
                            bars.update(ids[run_id], description=state.message[:80])
                await asyncio.sleep(0.5)
    console.print(f"demo jobs done; backups are under {stack.environment()['MM_BACKUP_ROOT']}")


if __name__ == "__main__":
    raise SystemExit(main())
