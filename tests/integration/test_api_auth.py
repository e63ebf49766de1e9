"""Who may call what: every 401 case, the admin-only rule and the ownership rule."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import jwt
import pytest

from deployments.system.local_target import LocalTarget
from deployments.system.stack import Stack
from tasks.core.callers import mint_token
from tests.integration.conftest import InventoryFile
from tests.support.api import Api, error, ok


@pytest.fixture(scope="module")
def shim(stack: Stack) -> Iterator[httpx.Client]:
    assert stack.shim_url
    with httpx.Client(base_url=stack.shim_url, timeout=30) as client:
        yield client


def claims(**overrides: object) -> dict[str, object]:
    exp = datetime.now(UTC) + timedelta(minutes=5)
    return {"sub": "mallory", "role": "admin", "exp": exp, **overrides}


def bad_tokens(secret: str) -> dict[str, str]:
    with warnings.catch_warnings():
        # HS512 wants a longer key than the shim's; it is refused whatever its length.
        warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
        return _bad_tokens(secret)


def _bad_tokens(secret: str) -> dict[str, str]:
    unsigned = jwt.encode(claims(), key=None, algorithm="none")  # type: ignore[arg-type]
    return {
        "forged signature": jwt.encode(
            claims(), "not-the-secret-but-just-as-long-as-it", algorithm="HS256"
        ),
        "expired": jwt.encode(
            claims(exp=datetime.now(UTC) - timedelta(seconds=5)), secret, algorithm="HS256"
        ),
        "other algorithm": jwt.encode(claims(), secret, algorithm="HS512"),
        "alg none": unsigned,
        "signature stripped": mint_token(secret, "mallory", "admin").rsplit(".", 1)[0] + ".",
        "no exp": jwt.encode({"sub": "mallory", "role": "admin"}, secret, algorithm="HS256"),
        "no sub": jwt.encode(claims(sub=None) | {}, secret, algorithm="HS256"),
        "unknown role": jwt.encode(claims(role="root"), secret, algorithm="HS256"),
        "garbage": "not.a.jwt",
    }


PROTECTED = [
    ("GET", "/api/jobs"),
    ("GET", "/api/jobs/stats/all"),
    ("GET", f"/api/jobs/{uuid.uuid4()}"),
    ("DELETE", f"/api/jobs/{uuid.uuid4()}"),
    ("POST", f"/api/jobs/{uuid.uuid4()}/retry"),
    ("POST", f"/api/jobs/{uuid.uuid4()}/cancel"),
    ("GET", f"/api/jobs/{uuid.uuid4()}/events"),
    ("POST", f"/api/servers/{uuid.uuid4()}/backup"),
    ("POST", f"/api/servers/{uuid.uuid4()}/scan"),
    ("POST", f"/api/servers/{uuid.uuid4()}/update"),
    ("POST", "/api/jobs/clean"),
    ("POST", "/api/queues/pause"),
    ("POST", "/api/queues/resume"),
    ("GET", "/api/metrics/queues"),
    ("GET", "/api/metrics/system"),
    ("GET", "/api/servers"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED, ids=[f"{m} {p}" for m, p in PROTECTED])
def test_every_protected_endpoint_wants_a_token(shim: httpx.Client, method: str, path: str):
    response = shim.request(method, path)
    assert "Authorization" in error(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Token abc", "bearer"])
def test_a_header_without_a_bearer_token_is_401(shim: httpx.Client, header: str):
    message = error(shim.get("/api/jobs", headers={"Authorization": header}), 401)
    assert "Bearer" in message


@pytest.mark.parametrize(
    "case",
    [
        "forged signature", "expired", "other algorithm", "alg none", "signature stripped",
        "no exp", "no sub", "unknown role", "garbage",
    ],
)  # fmt: skip
def test_a_bad_token_is_401(stack: Stack, shim: httpx.Client, case: str):
    assert stack.jwt_secret
    token = bad_tokens(stack.jwt_secret)[case]
    message = error(shim.get("/api/jobs", headers={"Authorization": f"Bearer {token}"}), 401)
    if case == "expired":
        assert "expired" in message


def test_health_and_metrics_need_no_token(shim: httpx.Client):
    assert ok(shim.get("/health")) == {"status": "ok", "missing": []}
    assert ok(shim.get("/health/live")) == {"status": "alive"}
    exposition = shim.get("/metrics")
    assert exposition.status_code == 200
    assert exposition.headers["content-type"].startswith("text/plain")
    assert 'mm_queue_jobs{queue="backup",state="completed"}' in exposition.text


@pytest.mark.parametrize(
    ("path", "body"),
    [("/api/queues/pause", {}), ("/api/queues/resume", {"queue": "scan"}), ("/api/jobs/clean", {})],
)
def test_admin_operations_are_403_for_users(stack: Stack, path: str, body: dict[str, str]):
    assert stack.shim_url and stack.jwt_secret
    with Api(stack.shim_url, stack.jwt_secret, "plain-user") as user:
        assert "admin" in error(user.post(path, json=body), 403)


def test_a_user_sees_and_touches_only_their_own_jobs(
    stack: Stack, target: LocalTarget, inventory: InventoryFile
):
    assert stack.shim_url and stack.jwt_secret
    owner = Api(stack.shim_url, stack.jwt_secret, f"owner-{uuid.uuid4().hex[:6]}")
    other = Api(stack.shim_url, stack.jwt_secret, f"other-{uuid.uuid4().hex[:6]}")
    admin = Api(stack.shim_url, stack.jwt_secret, "root", role="admin")
    with owner, other, admin:
        check_ownership(owner, other, admin, target, inventory)


def check_ownership(
    owner: Api, other: Api, admin: Api, target: LocalTarget, inventory: InventoryFile
) -> None:
    server_id = inventory.add_server(target, owners=[owner.user_id, other.user_id])
    job_id = ok(owner.post(f"/api/servers/{server_id}/scan", json={"scan_type": "quick"}), 202)[
        "jobId"
    ]
    owner.wait_for_state(job_id, "completed", "failed")

    for response in (
        other.get(f"/api/jobs/{job_id}"),
        other.get(f"/api/jobs/{job_id}/events"),
        other.post(f"/api/jobs/{job_id}/retry"),
        other.post(f"/api/jobs/{job_id}/cancel"),
        other.delete(f"/api/jobs/{job_id}"),
    ):
        error(response, 404)  # as absent as an unknown id: no probing for others' job ids
    assert ok(other.get("/api/jobs"))["total"] == 0
    assert all(c["total"] == 0 for c in ok(other.get("/api/jobs/stats/all")).values())

    assert admin.job(job_id)["data"]["userId"] == owner.user_id
    assert job_id in [j["id"] for j in ok(admin.get("/api/jobs", params={"limit": 200}))["jobs"]]
    assert owner.job(job_id)["state"] == "completed"
    ok(owner.delete(f"/api/jobs/{job_id}"))
    error(admin.get(f"/api/jobs/{job_id}"), 404)
