"""Calling the API shim of a running stack as a given user, for contract tests."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from tasks.core.callers import mint_token


class Api:
    """An HTTP client of the shim whose requests carry a token for `user_id` and `role`."""

    def __init__(self, base_url: str, secret: str, user_id: str, role: str = "user") -> None:
        self.user_id = user_id
        self.token = mint_token(secret, user_id, role, ttl=timedelta(hours=2))
        self.http = httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.get(path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.post(path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.delete(path, **kwargs)

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.get(f"/api/jobs/{job_id}")
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()["data"]
        return data

    def wait_for(
        self, job_id: str, done: Callable[[dict[str, Any]], bool], timeout: float = 120.0
    ) -> dict[str, Any]:
        """Poll the job until `done(job)`; fail the test with the last view on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if done(job):
                return job
            if time.monotonic() > deadline:
                pytest.fail(f"job {job_id} not there after {timeout} s: {job}", pytrace=False)
            time.sleep(0.25)

    def wait_for_state(self, job_id: str, *states: str, timeout: float = 120.0) -> dict[str, Any]:
        return self.wait_for(job_id, lambda job: job["state"] in states, timeout)


def ok(response: httpx.Response, status: int = 200) -> Any:
    """The `data` of a successful answer, after checking the envelope."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is True, body
    assert isinstance(body["message"], str) and body["message"]
    return body["data"]


def error(response: httpx.Response, status: int) -> str:
    """The message of an error answer, after checking the envelope."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False, body
    assert set(body) == {"success", "message", "data"}
    message: str = body["message"]
    assert message
    return message


def sse_events(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event, data) pairs of a Server-Sent Events stream, as they arrive."""
    event, data = "message", ""
    for line in response.iter_lines():
        if line.startswith("event:"):
            event = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            data += line.removeprefix("data:").strip()
        elif line == "" and data:
            yield event, json.loads(data)
            event, data = "message", ""
