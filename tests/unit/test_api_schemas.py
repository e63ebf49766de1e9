"""The API's request schemas take their names from the queue table, and OpenAPI lists them."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from api_shim.schemas import PauseRequest, PriorityName, PriorityValue, QueueName
from deployments.control.queues import QUEUES, Priority


def _enum(schema: dict[str, Any]) -> list[Any]:
    return schema["enum"]  # type: ignore[no-any-return]


def test_priority_names_are_the_work_queues_of_the_table() -> None:
    assert _enum(TypeAdapter(PriorityName).json_schema()) == [p.queue_name for p in Priority]


def test_queue_names_are_the_pools_of_the_table() -> None:
    assert _enum(TypeAdapter(QueueName).json_schema()) == [q.name for q in QUEUES]
    queue = PauseRequest.model_json_schema()["properties"]["queue"]
    assert [q.name for q in QUEUES] in [part.get("enum") for part in queue["anyOf"]]


def test_a_priority_is_a_name_or_number_of_the_table() -> None:
    adapter = TypeAdapter(PriorityValue)
    assert adapter.validate_python(min(Priority)) == 1
    assert adapter.validate_python("low") == "low"


@pytest.mark.parametrize("bad", [min(Priority) - 1, max(Priority) + 1, "urgent"])
def test_a_priority_outside_the_table_is_refused(bad: object) -> None:
    with pytest.raises(ValidationError):
        TypeAdapter(PriorityValue).validate_python(bad)


def test_every_operation_with_a_body_documents_the_400_of_an_unparseable_one() -> None:
    # A body that is not UTF-8 is a 400 (api_shim/body_guard.py), whatever the operation.
    from api_shim.app import app

    operations = [
        (path, method, operation)
        for path, item in app.openapi()["paths"].items()
        for method, operation in item.items()
        if "requestBody" in operation
    ]
    assert len(operations) >= 7
    undocumented = [f"{m.upper()} {p}" for p, m, op in operations if "400" not in op["responses"]]
    assert not undocumented


def test_a_body_that_is_not_utf8_is_the_documented_400_in_the_envelope() -> None:
    import asyncio

    import httpx

    from api_shim.app import app

    async def post() -> httpx.Response:
        # No lifespan: the body is read before the caller is checked or Prefect is asked.
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shim") as client:
            return await client.post(
                "/api/queues/pause",
                content=b'{"queue": "\xe9"}',
                headers={"content-type": "application/json"},
            )

    response = asyncio.run(post())
    assert response.status_code == 400
    assert response.json() == {
        "success": False,
        "message": "request body is not UTF-8 (byte 11): send UTF-8 JSON",
        "data": None,
    }


def test_a_method_the_document_does_not_list_is_a_405_with_the_listed_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`GET /api/jobs/cancel` is not `GET /api/jobs/{job_id}` with a bad id (a 422), and
    `Allow` names every method of the path, not the first route's (the fuzzer's finds)."""
    import asyncio
    import uuid

    import httpx

    from api_shim.app import app
    from tasks.core.callers import mint_token

    secret = "s" * 32
    monkeypatch.setenv("MM_JWT_SECRET", secret)
    headers = {"Authorization": f"Bearer {mint_token(secret, 'someone')}"}

    async def ask(method: str, path: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shim") as client:
            return await client.request(method, path, headers=headers)

    for method, path, allowed in [
        ("GET", "/api/jobs/cancel", "POST"),
        ("PUT", "/api/backups/check", "POST"),
        ("OPTIONS", f"/api/jobs/{uuid.uuid4()}", "DELETE, GET"),
        ("TRACE", "/api/jobs", "GET"),
    ]:
        response = asyncio.run(ask(method, path))
        assert response.status_code == 405, (method, path, response.text)
        assert response.headers["allow"] == allowed, (method, path)
        assert response.json()["message"] == f"method {method} not allowed on {path}"
    # The methods a path takes go on to the route (here to the inventory, which is missing).
    for method, path in [("POST", "/api/jobs/cancel"), ("GET", "/api/jobs/web-1")]:
        response = asyncio.run(ask(method, path))
        assert response.status_code == 503 and "inventory" in response.text, (method, path)
