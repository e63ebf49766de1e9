"""Schemathesis against the shim's /openapi.json on the real stack: no 5xx, and every answer
matches the documented status codes, content types and schemas.

Each operation gets its own Hypothesis run (schemathesis' pytest plugin does not work with
pytest 9 here, so the operations are driven directly); failures name the operation.
"""

from __future__ import annotations

import uuid

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from deployments.system.stack import Stack
from tasks.core.callers import mint_token

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES_PER_OPERATION = 25


def test_api_honours_its_openapi_document(stack: Stack) -> None:
    assert stack.shim_url and stack.jwt_secret, "the stack did not start the API shim"
    schema = schemathesis.openapi.from_url(f"{stack.shim_url}/openapi.json")
    # A user, not an admin: random pause or clean requests must not disturb other tests.
    token = mint_token(stack.jwt_secret, f"fuzz-{uuid.uuid4().hex[:6]}")
    headers = {"Authorization": f"Bearer {token}"}
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS)

        try:
            check()
        except Exception as exc:
            failures.append(f"{operation.label}: {exc}")
    assert operations >= 22  # /api/backups, /:id and /:id/files among them
    assert not failures, "\n\n".join(failures)
