# intent_ref: platform.hardening
"""Access tokens: only JWT access-token types are accepted, and none that lives longer than the configured bound."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from devhost.identity import SigningKey, key_directory, openid_configuration, openid_metadata_url
from shared.auth import tokens as tokens_module
from shared.auth import validator as validator_module
from shared.auth.tokens import DEFAULT_MAX_LIFETIME_S, InvalidTokenError, TokenValidator
from shared.config import get_settings
from tests.integration.api_harness import ISSUER_BASE, ApiHarness

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
READER = ["Intent.Reader"]
ME = "/api/v1/me"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _signed(header: dict[str, Any], claims: dict[str, Any], key: SigningKey) -> str:
    """An RS256 token with exactly `header` (PyJWT's encoder would add or normalise `typ`)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = key.private_key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64(signature)}"


def _claims(api: ApiHarness, tenant: str, **times: int | None) -> dict[str, Any]:
    claims = dict(jwt.decode(api.token(tenant, READER), options={"verify_signature": False}))
    for name, value in times.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def _header(key: SigningKey, **fields: Any) -> dict[str, Any]:
    return {"alg": "RS256", "kid": key.kid, **fields}


def _refused(response: Any) -> dict[str, Any]:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    body: dict[str, Any] = response.json()
    return body


def _call(api: ApiHarness, token: str) -> Any:
    return api.client.get(ME, headers={"Authorization": f"Bearer {token}"})


@pytest.fixture(scope="module")
def tenant(api: ApiHarness) -> str:
    api.provision("token-rules")
    return "token-rules"


# -- typ -------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("typ", [None, "JWT", "jwt", "at+jwt", "AT+JWT", "application/at+jwt", "Application/AT+JWT"])
def test_access_token_types_are_accepted(api: ApiHarness, tenant: str, typ: str | None) -> None:
    fields = {} if typ is None else {"typ": typ}
    response = _call(api, _signed(_header(api.key, **fields), _claims(api, tenant), api.key))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("typ", ["JWE", "JOSE+JSON", "JOSE", "logout+jwt", "secevent+jwt", "", "JWT ", 1, ["JWT"]])
def test_other_token_types_are_refused_with_401(api: ApiHarness, tenant: str, typ: Any) -> None:
    body = _refused(_call(api, _signed(_header(api.key, typ=typ), _claims(api, tenant), api.key)))
    assert body["status"] == 401


def test_a_refused_typ_costs_no_key_lookup(api: ApiHarness, tenant: str) -> None:
    header = _header(api.key, typ="JWE")
    header["kid"] = "never-seen-kid"  # would trigger a JWKS refetch if the header passed
    fetched = len(api.fetches)
    _refused(_call(api, _signed(header, _claims(api, tenant), api.key)))
    assert len(api.fetches) == fetched


# -- lifetime --------------------------------------------------------------------------------------------------------


def test_lifetime_at_the_bound_is_accepted_and_one_second_more_is_refused(api: ApiHarness, tenant: str) -> None:
    now = int(time.time())
    at_bound = _claims(api, tenant, iat=now, nbf=now, exp=now + DEFAULT_MAX_LIFETIME_S)
    assert _call(api, _signed(_header(api.key, typ="JWT"), at_bound, api.key)).status_code == 200
    over = _claims(api, tenant, iat=now, nbf=now, exp=now + DEFAULT_MAX_LIFETIME_S + 1)
    _refused(_call(api, _signed(_header(api.key, typ="JWT"), over, api.key)))


def test_a_long_lived_token_is_refused_even_near_its_expiry(api: ApiHarness, tenant: str) -> None:
    now = int(time.time())
    # Issued long ago for a long life: it expires in five minutes, but it was never a token Entra would issue.
    claims = _claims(api, tenant, iat=now - DEFAULT_MAX_LIFETIME_S, nbf=now - DEFAULT_MAX_LIFETIME_S, exp=now + 300)
    _refused(_call(api, _signed(_header(api.key, typ="JWT"), claims, api.key)))
    days = _claims(api, tenant, iat=now, nbf=now, exp=now + 30 * 24 * 3600)
    _refused(_call(api, _signed(_header(api.key, typ="JWT"), days, api.key)))


def test_lifetime_counts_from_iat_then_nbf_then_now() -> None:
    assert tokens_module._lifetime({"exp": 5000, "iat": 1000, "nbf": 4000}, now=4500) == 4000
    assert tokens_module._lifetime({"exp": 5000, "nbf": 2000}, now=4500) == 3000
    assert tokens_module._lifetime({"exp": 5000}, now=4500) == 500
    assert tokens_module._lifetime({"exp": 5000, "iat": "1000", "nbf": True}, now=4500) == 500
    assert tokens_module._lifetime({"exp": "5000", "iat": 1000}, now=4500) is None


# -- settings and the devhost -----------------------------------------------------------------------------------------


@pytest.fixture
def auth_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    monkeypatch.delenv("QP_BLOB_ACCOUNT_URL", raising=False)
    monkeypatch.delenv("QP_AUTH_MAX_TOKEN_LIFETIME_S", raising=False)
    monkeypatch.setenv("QP_DATABASE_URL", "host=/tmp dbname=quantum")
    monkeypatch.setenv("QP_DATABASE_CONTROL_URL", "host=/tmp dbname=quantum")
    monkeypatch.setenv("QP_BLOB_CONNECTION_STRING", "UseDevelopmentStorage=true")
    monkeypatch.setenv("QP_AUTH_METADATA_URL", openid_metadata_url(ISSUER_BASE))
    get_settings.cache_clear()
    validator_module.get_token_validator.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()
    validator_module.get_token_validator.cache_clear()


def test_the_setting_reaches_the_process_validator(auth_env: pytest.MonkeyPatch) -> None:
    assert validator_module.get_token_validator().max_lifetime_s == DEFAULT_MAX_LIFETIME_S == 7200
    auth_env.setenv("QP_AUTH_MAX_TOKEN_LIFETIME_S", "900")
    get_settings.cache_clear()
    validator_module.get_token_validator.cache_clear()
    assert validator_module.get_token_validator().max_lifetime_s == 900


def _mint_with_the_cli(data_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(data_dir)}
    command = [
        sys.executable,
        "-m",
        "devhost",
        "token",
        "--tenant",
        "contoso",
        "--roles",
        "Intent.Reader",
        "--data-dir",
        str(data_dir),
        *extra,
    ]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120, check=True)


def test_devhost_tokens_are_usable_at_the_default_and_a_longer_one_is_flagged(tmp_path: Path) -> None:
    default = _mint_with_the_cli(tmp_path)
    key = SigningKey.load_or_create(key_directory(tmp_path))
    metadata_url = openid_metadata_url(ISSUER_BASE)

    def fetch(url: str) -> dict[str, Any]:
        return openid_configuration(ISSUER_BASE, "organizations") if url == metadata_url else key.jwks(ISSUER_BASE)

    validator = TokenValidator(metadata_url, "api://quantum-platform", fetch=fetch)  # the default bound
    assert validator.validate(default.stdout.strip()).roles == frozenset(READER)
    assert "QP_AUTH_MAX_TOKEN_LIFETIME_S" not in default.stderr

    longer = _mint_with_the_cli(tmp_path, "--expires-in", str(DEFAULT_MAX_LIFETIME_S + 1))
    assert f"is {DEFAULT_MAX_LIFETIME_S} s" in longer.stderr and "QP_AUTH_MAX_TOKEN_LIFETIME_S" in longer.stderr
    with pytest.raises(InvalidTokenError) as refused:
        validator.validate(longer.stdout.strip())
    assert refused.value.reason == "token lifetime too long"
