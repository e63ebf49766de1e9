"""Token checks: signature, expiry, `exp` required, the optional issuer and audience; and the
shim's refusal of a short secret."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import jwt
import pytest

from tasks.core.callers import AuthError, Role, mint_token, verify_token
from tasks.core.settings import MIN_SECRET_BYTES, ApiSettings, InsecureSettings, WeakSecret

SECRET = "s" * MIN_SECRET_BYTES


def test_a_minted_token_names_its_caller() -> None:
    caller = verify_token(mint_token(SECRET, "alice"), SECRET)
    assert (caller.user_id, caller.role) == ("alice", Role.USER)


def test_a_token_without_exp_is_refused() -> None:
    token = jwt.encode({"sub": "alice", "role": "admin"}, SECRET, algorithm="HS256")
    with pytest.raises(AuthError, match="'exp'"):
        verify_token(token, SECRET)


def test_an_expired_token_is_refused() -> None:
    with pytest.raises(AuthError, match="expired"):
        verify_token(mint_token(SECRET, "alice", ttl=timedelta(seconds=-5)), SECRET)


def test_issuer_and_audience_when_configured_must_be_there_and_match() -> None:
    want = {"issuer": "mm", "audience": "mm-api"}
    good = mint_token(SECRET, "alice", **want)
    assert verify_token(good, SECRET, **want).user_id == "alice"
    with pytest.raises(AuthError, match="'iss'"):
        verify_token(mint_token(SECRET, "alice", audience="mm-api"), SECRET, **want)
    with pytest.raises(AuthError, match="'aud'"):
        verify_token(mint_token(SECRET, "alice", issuer="mm"), SECRET, **want)
    with pytest.raises(AuthError, match="issuer"):
        verify_token(mint_token(SECRET, "alice", issuer="other", audience="mm-api"), SECRET, **want)
    with pytest.raises(AuthError, match="audience"):
        verify_token(mint_token(SECRET, "alice", issuer="mm", audience="other"), SECRET, **want)


def test_without_configuration_a_token_for_some_audience_is_refused() -> None:
    # PyJWT's rule: an `aud` nobody here expects means the token was made for someone else.
    claims = {"sub": "a", "role": "user", "aud": "x", "exp": datetime.now(UTC) + timedelta(1)}
    with pytest.raises(AuthError):
        verify_token(jwt.encode(claims, SECRET, algorithm="HS256"), SECRET)


def test_a_short_secret_is_refused_naming_the_variable_and_the_length(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MM_JWT_SECRET", "change-me")
    with pytest.raises(WeakSecret) as caught:
        ApiSettings().secret  # noqa: B018 (the property refuses)
    assert "MM_JWT_SECRET" in str(caught.value)
    assert "9 bytes" in str(caught.value) and f"at least {MIN_SECRET_BYTES}" in str(caught.value)
    monkeypatch.setenv("MM_API_DEV", "1")
    with pytest.raises(WeakSecret):
        ApiSettings().secret  # noqa: B018
    # Bytes, not characters: 11 three-byte characters are 33 bytes.
    monkeypatch.setenv("MM_JWT_SECRET", "\u20ac" * 11)
    assert ApiSettings().secret == "\u20ac" * 11


def test_dev_mode_generates_a_long_enough_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InsecureSettings):
        ApiSettings().secret  # noqa: B018
    monkeypatch.setenv("MM_API_DEV", "1")
    settings = ApiSettings()
    assert len(settings.secret.encode()) >= MIN_SECRET_BYTES
    assert settings.generated_secret
    assert settings.secret == settings.secret, "one secret for the process's life"
    monkeypatch.setenv("MM_JWT_ISSUER", "mm")
    monkeypatch.setenv("MM_JWT_AUDIENCE", "mm-api")
    settings = ApiSettings()
    assert (settings.jwt_issuer, settings.jwt_audience) == ("mm", "mm-api")
