"""Notifications end to end: the session's Prefect server, its automations and blocks, its
workers, a real sshd, and two receivers started here, a JSON webhook (apprise `json://`) and an
SMTP server (aiosmtpd, apprise `mailto://`). What must arrive, once each: a digest for a backup
that failed after its retries, a stale-backup message for a server of a `* * * * *` schedule
whose backups fail, one digest for 50 scans failing at once, and "resolved" when the failing
server's backup completes."""

from __future__ import annotations

import asyncio
import email
import re
import socket
import time
from collections.abc import Callable, Iterator
from email.message import Message
from typing import Any
from uuid import UUID

import pytest
from aiosmtpd.controller import Controller
from pydantic import SecretStr

from deployments.control.catalogue import server_tag
from deployments.control.notifications import AUTOMATION_PREFIX, ensure_notifications
from deployments.system.local_target import LocalTarget, free_port
from deployments.system.stack import Stack
from tasks.core.inventory import load_inventory
from tasks.core.jobs import JobType
from tasks.core.settings import NotifySettings
from tests.support.receivers import Webhook, wait_until
from tests.support.session import InventoryFile
from tests.support.trees import make_tree

#: Short windows so that the whole file takes about two minutes; the digest's is long enough
#: for 50 scans through the scan pool (5 at once) on a loaded 2-core machine (45 s was not).
DIGEST_SECONDS = 60
GRACE_SECONDS = 5
SCANS = 50


class Mailbox:
    """aiosmtpd's handler: every mail, parsed."""

    def __init__(self) -> None:
        self.mails: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mails.append(email.message_from_bytes(envelope.content))
        return "250 OK"

    def subjects(self, text: str) -> list[Message]:
        return [m for m in self.mails if text in str(m["Subject"])]


def text_of(mail: Message) -> str:
    for part in mail.walk():
        if part.get_content_type() == "text/plain":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            return payload.decode()
    return ""


@pytest.fixture(scope="module")
def receivers() -> Iterator[tuple[Webhook, Mailbox]]:
    webhook = Webhook()
    mailbox = Mailbox()
    smtp = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    try:
        yield webhook, mailbox, smtp.port  # type: ignore[misc]
    finally:
        smtp.stop()
        webhook.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_failed_stale_digest_and_resolved_each_make_one_message(
    stack: Stack,
    target: LocalTarget,
    inventory: InventoryFile,
    receivers: Any,
    run_job: Callable[..., UUID],
    wait_for_final_state: Callable[..., Any],
    tmp_path: Any,
) -> None:
    webhook, mailbox, smtp_port = receivers
    hook = f"json://127.0.0.1:{webhook.port}"
    # Everything by mail (MM_NOTIFY_URLS); each server's own webhook (`notify:`) besides.
    settings = NotifySettings(
        urls=SecretStr(f"mailto://127.0.0.1:{smtp_port}?from=mm@example.com&to=ops@example.com"),
        digest_seconds=DIGEST_SECONDS,
        stale_grace_seconds=GRACE_SECONDS,
    )
    source = make_tree(tmp_path / "source", big_bytes=10_000)
    # Backed up every minute (max age 60 + 5 s), but its sshd port is closed: every backup
    # fails after its retries (connection refused is transient), so it goes stale.
    flaky = inventory.add_server(
        target,
        name="web-flaky",
        port=closed_port(),
        notify=[f"{hook}/flaky"],
        backup={"paths": [str(source)], "schedule": "* * * * *"},
    )
    # Refuses our key: each scan fails at once (permanent).
    locked = inventory.add_server(
        target, name="web-locked", username="nobody-here", notify=[f"{hook}/locked"]
    )

    async def ensure(notify: NotifySettings) -> list[str]:
        async with stack.client() as client:
            return await ensure_notifications(client, load_inventory(inventory.path), notify)

    def ours_in(subject: str) -> list[Message]:
        """The mails about this test's servers whose subject holds `subject`."""
        return [
            m
            for m in mailbox.subjects(subject)
            if "web-flaky" in f"{m['Subject']} {text_of(m)}"
            or "web-locked" in f"{m['Subject']} {text_of(m)}"
        ]

    started = time.monotonic()
    changes = asyncio.run(ensure(settings))
    try:
        assert any("armed" in c for c in changes), changes
        assert not any("127.0.0.1" in c for c in changes), "a URL in the bootstrap's lines"

        # 1. One backup that fails after its three retries, and fifty scans failing at once
        # (tagged with their server, as deployments/control/jobs.py enqueues them).
        backup = run_job("backup/backup", {"server_id": str(flaky)})
        # The scans a little later: their burst and the backup's retries (35 s) then end
        # within one window of the mail's digest.
        time.sleep(10)
        with stack.sync_client() as client:
            scan = client.read_deployment_by_name("scan/scan")
            scans = [
                client.create_flow_run_from_deployment(
                    scan.id,
                    parameters={"server_id": str(locked), "job_type": JobType.SCAN_FULL.value},
                    tags=[server_tag(locked)],
                ).id
                for _ in range(SCANS)
            ]
        failed = wait_for_final_state(backup, timeout=120)
        assert failed.state.is_failed()
        for run in scans:
            assert wait_for_final_state(run, timeout=150).state.is_failed()

        # Each server's own webhook: one digest of its own jobs.
        wait_until(lambda: webhook.titled("failed", "/flaky"), 60, "web-flaky's digest")
        wait_until(
            lambda: webhook.titled("failed", "/locked"), DIGEST_SECONDS, "web-locked's digest"
        )
        (digest,) = webhook.titled("failed", "/flaky")
        assert digest["title"] == "medicine-man: 1 job failed on web-flaky"
        assert "backup:manual on web-flaky: " in digest["message"]
        assert "Unable to connect" in digest["message"]
        assert f"/runs/flow-run/{failed.id}" in digest["message"], "no link to the run"
        (burst,) = webhook.titled("failed", "/locked")
        assert burst["title"] == f"medicine-man: {SCANS} jobs failed on web-locked"
        assert burst["message"].count("- scan:full on web-locked: ") == SCANS
        # The mail (every server's target): one digest of all 51, the first 50 listed. Other
        # tests' jobs that fail in the same window are in it too, so it counts at least those.
        wait_until(lambda: ours_in("jobs failed"), 30, "the digest by mail")
        (mail,) = ours_in("jobs failed")
        counted = re.fullmatch(r"medicine-man: (\d+) jobs failed on (\d+) servers", mail["Subject"])
        assert counted, mail["Subject"]
        jobs, servers = int(counted[1]), int(counted[2])
        assert jobs >= SCANS + 1 and servers >= 2
        assert f"... and {jobs - 50} more" in text_of(mail)

        # 2. Stale: no backup of web-flaky completed within 65 s of the watch.
        wait_until(lambda: webhook.titled("are stale", "/flaky"), 90, "the stale message")
        (stale,) = webhook.titled("are stale", "/flaky")
        assert stale["title"] == "medicine-man: backups of web-flaky are stale"
        assert "web-flaky has not been backed up since it was first watched" in stale["message"]
        wait_until(lambda: ours_in("are stale"), 10, "the stale mail")
        (stale_mail,) = ours_in("are stale")
        assert "web-flaky has not been backed up" in text_of(stale_mail)

        # 3. The server answers again: its backup completes, and that resolves the incident.
        inventory.remove(flaky)
        inventory.add_server(
            target,
            server_id=flaky,
            name="web-flaky",
            notify=[f"{hook}/flaky"],
            backup={"paths": [str(source)], "schedule": "* * * * *"},
        )
        good = wait_for_final_state(
            run_job("backup/backup", {"server_id": str(flaky)}), timeout=120
        )
        assert good.state.is_completed()
        wait_until(lambda: webhook.titled("resolved", "/flaky"), 30, "the resolved message")
        (resolved,) = webhook.titled("resolved", "/flaky")
        assert resolved["title"] == "medicine-man: resolved: web-flaky is backed up again"
        assert "its last backup had failed" in resolved["message"]
        wait_until(lambda: ours_in("resolved"), 10, "the resolved mail")
        time.sleep(2)
        # Nothing more than these, on any channel (the mail's other messages are of other
        # tests' servers: it is every server's target).
        assert len(webhook.at("/flaky")) == 3, webhook.at("/flaky")
        assert len(webhook.at("/locked")) == 1, webhook.at("/locked")
        assert len(ours_in("")) == 3, [m["Subject"] for m in mailbox.mails]
        print(f"notifications shown in {time.monotonic() - started:.0f} s")
    finally:
        inventory.remove(locked)
        inventory.remove(flaky)
        # No URL: every automation and block of ours goes, for the tests after this one.
        left = asyncio.run(ensure(NotifySettings(urls=None)))
        assert any(c.startswith("deleted automation") for c in left)

    async def ours() -> list[str]:
        async with stack.client() as client:
            return [
                a.name
                for a in await client.read_automations()
                if a.name.startswith(AUTOMATION_PREFIX)
            ]

    assert asyncio.run(ours()) == []
