"""The fork server gives every Prefect client of a run one verified TLS context
(deployments/worker/preload.py, `share_client_tls_context`) instead of one built per client.
Real Prefect client classes, no network: a client opens no connection until it is used."""

from __future__ import annotations

import ssl
from typing import Any

import pytest
from prefect.client.orchestration import PrefectClient, SyncPrefectClient
from prefect.settings import PREFECT_API_TLS_INSECURE_SKIP_VERIFY, temporary_settings

from deployments.worker.preload import share_client_tls_context

API = "https://prefect.internal:4200/api"


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> list[ssl.SSLContext]:
    """Every context `ssl.create_default_context` builds from here on; the clients' own
    constructors are put back after the test."""
    built: list[ssl.SSLContext] = []
    real = ssl.create_default_context

    def counting(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        context = real(*args, **kwargs)
        built.append(context)
        return context

    monkeypatch.setattr(ssl, "create_default_context", counting)
    for client in (PrefectClient, SyncPrefectClient):
        monkeypatch.setattr(client, "__init__", client.__init__)
    return built


def test_every_client_gets_the_one_verified_context(made: list[ssl.SSLContext]) -> None:
    verified = share_client_tls_context()
    assert len(made) == 1, "built once, when shared"
    for _ in range(3):
        PrefectClient(API)
        SyncPrefectClient(API)
    assert len(made) == 1, "a client built a context of its own"
    (context,) = made
    assert verified() is context
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname


def test_skipping_verification_keeps_prefects_own_path(made: list[ssl.SSLContext]) -> None:
    verified = share_client_tls_context()
    with temporary_settings({PREFECT_API_TLS_INSECURE_SKIP_VERIFY: True}):
        assert verified() is None
        PrefectClient(API)
    assert len(made) == 2, "Prefect's unverified context was not built"
    assert made[1].verify_mode is ssl.CERT_NONE
