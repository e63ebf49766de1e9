"""Command text only for admins: an error about an operator's command names the step and its
exit status; the command and its output are in its detail, which only admins' view shows."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from tasks import outcome
from tasks.core.errors import RemoteCommandFailed, SSHTimeout
from tasks.core.inventory import Server
from tasks.outcome import FAILURE, failure_published, full_reason
from tasks.remote import command_failed

TOKEN = "tok-9f8e7d6c5b4a"
SERVER = Server.model_validate(
    {
        "id": str(uuid.uuid4()),
        "name": "web1",
        "host": "10.0.0.5",
        "username": "root",
        "private_key_file": "/keys/web1",
    }
)


def test_an_operators_command_fails_without_its_text_or_output_in_the_message() -> None:
    command = f"curl -fsS -H 'Authorization: Bearer {TOKEN}' http://hook/stop"
    exc = command_failed(
        SERVER, command, 22, f"+ curl ... {TOKEN}\nfailed\n".encode(), "the pre command"
    )
    assert str(exc) == "web1: the pre command exited with status 22"
    assert repr(exc) == "RemoteCommandFailed('web1: the pre command exited with status 22')"
    assert exc.exit_status == 22
    assert exc.detail is not None and command in exc.detail and "failed" in exc.detail
    assert TOKEN in exc.stderr_tail  # the update record's, on the worker


def test_our_own_commands_keep_their_text_in_the_message() -> None:
    exc = command_failed(SERVER, "tar --create -- srv", 2, b"tar: srv: Cannot stat", None)
    assert "'tar --create -- srv' exited with status 2: tar: srv: Cannot stat" in str(exc)
    assert exc.detail is None


def published(summary: str, detail: str) -> str:
    return json.dumps({"summary": summary, "detail": detail})


def test_an_admin_sees_the_summary_replaced_by_the_detail() -> None:
    summary = "web1: the pre command exited with status 22"
    message = f"Flow run encountered an exception: RemoteCommandFailed: {summary}"
    detail = f"web1: 'curl {TOKEN}' exited with status 22: failed"
    full = full_reason(message, [published(summary, detail)])
    assert full == f"Flow run encountered an exception: RemoteCommandFailed: {detail}"


def test_the_newest_failure_whose_summary_is_in_the_message_counts() -> None:
    pre = "web1: the pre command exited with status 4"
    post = "web1: the post command exited with status 5"
    message = f"RemoteCommandFailed: {pre}"
    failures = [published(post, "post detail"), published(pre, "pre detail"), {"bad": 1}]
    assert full_reason(message, failures) == "RemoteCommandFailed: pre detail"
    # Retried since, and failed otherwise: nothing to add.
    assert full_reason("SSHConnectError: refused", failures) == "SSHConnectError: refused"
    assert full_reason(message, ["not json", None, {"summary": "", "detail": "x"}]) == message


def test_failure_published_publishes_the_detail_and_reraises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    created: list[Any] = []
    monkeypatch.setattr(outcome.Artifact, "create", lambda self: created.append(self))
    with pytest.raises(SSHTimeout), failure_published():
        raise SSHTimeout("web1: no exit status for the pre command", detail=f"... {TOKEN}")
    with pytest.raises(RemoteCommandFailed), failure_published():
        raise RemoteCommandFailed("tar exited 2", exit_status=2)  # no detail: nothing published
    with pytest.raises(ValueError), failure_published():
        raise ValueError("not ours")
    (artifact,) = created
    assert artifact.type == FAILURE
    assert artifact.data == {
        "summary": "web1: no exit status for the pre command",
        "detail": f"... {TOKEN}",
    }
