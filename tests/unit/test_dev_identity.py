# intent_ref: platform.dev-identity
"""The dev identity issuer: persisted key, Entra v2-shaped tokens, metadata and JWKS served over HTTP."""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
import stat
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import rsa

from devhost.component import HostContext
from devhost.identity import (
    DEFAULT_AUDIENCE,
    DevIdentity,
    SigningKey,
    dev_tenant_id,
    issuer_for,
    jwk_thumbprint,
    mint_token,
    mint_token_cli,
)

BASE_URL = "http://127.0.0.1:7071"


def _context(data_dir: Path, base_url: str = BASE_URL) -> HostContext:
    # The identity component uses only data_dir and base_url; the function index and invoker are irrelevant.
    return HostContext(
        index=cast(Any, None),
        invoker=cast(Any, None),
        database_url="",
        data_dir=data_dir,
        base_url=base_url,
        task_hub="test",
    )


def _verify(token: str, identity: DevIdentity, **kwargs: Any) -> dict[str, Any]:
    """Verify as the app will: key by kid from the JWKS, issuer = the key's template with the token's tid."""
    kid = jwt.get_unverified_header(token)["kid"]
    [jwk] = [key for key in identity.jwks()["keys"] if key["kid"] == kid]
    tid = jwt.decode(token, options={"verify_signature": False})["tid"]
    kwargs.setdefault("issuer", jwk["issuer"].replace("{tenantid}", tid))
    kwargs.setdefault("audience", DEFAULT_AUDIENCE)
    return jwt.decode(
        token,
        jwt.PyJWK(jwk),
        algorithms=["RS256"],
        options={"require": ["exp", "iat", "nbf", "iss", "aud", "tid", "oid"]},
        **kwargs,
    )


@pytest.fixture
def identity(tmp_path: Path) -> DevIdentity:
    component = DevIdentity(_context(tmp_path / "data"))
    asyncio.run(component.start())
    return component


def test_key_is_persisted_and_reused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = DevIdentity(_context(data_dir))
    asyncio.run(first.start())
    key_file = data_dir / "identity" / "signing-key.pem"
    assert key_file.is_file()
    pem = key_file.read_bytes()

    second = DevIdentity(_context(data_dir))
    asyncio.run(second.start())
    assert second.key.kid == first.key.kid
    assert key_file.read_bytes() == pem
    # A token from one instance verifies with the other's keys: same key, not merely the same kid.
    _verify(first.mint_token(tenant="contoso"), second)

    other = DevIdentity(_context(tmp_path / "elsewhere"))
    assert other.key.kid != first.key.kid


def test_concurrent_first_use_settles_on_one_key(tmp_path: Path) -> None:
    # The CLI and the host may both create the key at once; every one of them must end up with the same key.
    directory = tmp_path / "identity"
    barrier = threading.Barrier(6)

    def load() -> str:
        barrier.wait()
        return SigningKey.load_or_create(directory).kid

    with ThreadPoolExecutor(max_workers=6) as pool:
        kids = set(pool.map(lambda _: load(), range(6)))
    assert kids == {SigningKey.load_or_create(directory).kid}
    assert [path.name for path in directory.iterdir()] == ["signing-key.pem"]  # no temporary files left


def test_private_key_file_is_created_owner_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="devhost.identity"):
        DevIdentity(_context(tmp_path / "data")).key  # noqa: B018 - loading creates the file
    # Created 0600 from the start, not tightened afterwards (which would log a warning).
    assert caplog.records == []
    key_file = tmp_path / "data" / "identity" / "signing-key.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_loose_key_file_permissions_are_tightened(identity: DevIdentity, tmp_path: Path) -> None:
    key_file = tmp_path / "data" / "identity" / "signing-key.pem"
    key_file.chmod(0o644)
    again = DevIdentity(_context(tmp_path / "data"))
    assert again.key.kid == identity.key.kid
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_kid_is_the_rfc7638_thumbprint() -> None:
    # The worked example of RFC 7638 §3.1.
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3"
        "oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdA"
        "ZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-"
        "kEgU8awapJzKnqDKgw"
    )
    modulus = int.from_bytes(base64.urlsafe_b64decode(n + "=" * (-len(n) % 4)), "big")
    public_key = rsa.RSAPublicNumbers(65537, modulus).public_key()
    assert jwk_thumbprint(public_key) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_user_token_is_shaped_like_entra_v2(identity: DevIdentity) -> None:
    token = identity.mint_token(
        tenant="contoso",
        roles=["Intent.Author", "Intent.Reader"],
        scopes=["access_as_user", "Intent.Read"],
        name="Ada Lovelace",
    )
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "RS256", "typ": "JWT", "kid": identity.key.kid}

    claims = _verify(token, identity)
    tid = dev_tenant_id("contoso")
    assert claims["tid"] == str(tid) and uuid.UUID(claims["tid"]).version == 5
    assert claims["iss"] == issuer_for(BASE_URL, tid) == f"{BASE_URL}/devhost/identity/{tid}/v2.0"
    assert claims["aud"] == DEFAULT_AUDIENCE
    assert claims["ver"] == "2.0"
    assert claims["idtyp"] == "user"
    assert claims["roles"] == ["Intent.Author", "Intent.Reader"]
    assert claims["scp"] == "access_as_user Intent.Read"
    assert claims["name"] == "Ada Lovelace"
    assert "@" in claims["preferred_username"]
    uuid.UUID(claims["oid"])
    uuid.UUID(claims["azp"])
    assert claims["sub"] != claims["oid"]  # pairwise subject for users
    assert claims["nbf"] <= time.time() < claims["exp"]
    assert 3590 <= claims["exp"] - claims["iat"] <= 3600
    for claim in ("azpacr", "uti"):
        assert claims[claim]


def test_default_oid_is_stable_per_tenant_and_user(identity: DevIdentity) -> None:
    def oid(tenant: str, name: str | None = None) -> str:
        return str(_verify(identity.mint_token(tenant=tenant, name=name), identity)["oid"])

    assert oid("contoso") == oid("Contoso")
    assert oid("contoso", "alice") == oid("contoso", "alice")
    assert oid("contoso", "alice") != oid("contoso", "bob")
    # The same person has a different oid in each tenant, as in Entra.
    assert oid("contoso", "alice") != oid("fabrikam", "alice")
    explicit = str(uuid.uuid4())
    assert _verify(identity.mint_token(tenant="contoso", oid=explicit), identity)["oid"] == explicit


def test_tenant_guid_is_used_as_is_and_metadata_segments_are_refused(identity: DevIdentity) -> None:
    tid = uuid.uuid4()
    claims = _verify(identity.mint_token(tenant=str(tid)), identity)
    assert claims["tid"] == str(tid)
    assert claims["iss"] == issuer_for(BASE_URL, tid)
    assert dev_tenant_id("contoso") != dev_tenant_id("fabrikam")
    for segment in ("common", "organizations", "consumers"):
        with pytest.raises(ValueError, match="tenant"):
            identity.mint_token(tenant=segment)


def test_app_only_token_has_roles_and_no_scopes(identity: DevIdentity) -> None:
    token = identity.mint_token(tenant="contoso", roles=["Intent.Executor"], app_only=True)
    claims = _verify(token, identity)
    assert claims["idtyp"] == "app"
    assert claims["roles"] == ["Intent.Executor"]
    assert "scp" not in claims
    assert "name" not in claims and "preferred_username" not in claims
    assert claims["sub"] == claims["oid"]
    user = _verify(identity.mint_token(tenant="contoso"), identity)
    assert claims["oid"] != user["oid"]
    assert "roles" not in user and "scp" not in user
    with pytest.raises(ValueError, match="scp"):
        identity.mint_token(tenant="contoso", scopes=["Intent.Read"], app_only=True)


def test_scopes_with_whitespace_are_refused(identity: DevIdentity) -> None:
    with pytest.raises(ValueError, match="whitespace"):
        identity.mint_token(tenant="contoso", scopes=["a b"])


def test_expired_token_is_rejected(identity: DevIdentity) -> None:
    token = identity.mint_token(tenant="contoso", expires_in=-120)
    with pytest.raises(jwt.ExpiredSignatureError):
        _verify(token, identity)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["iat"] < claims["exp"] < time.time() - 100


def test_wrong_audience_and_foreign_key_are_rejected(identity: DevIdentity, tmp_path: Path) -> None:
    token = identity.mint_token(tenant="contoso", audience="api://someone-else")
    with pytest.raises(jwt.InvalidAudienceError):
        _verify(token, identity)
    assert _verify(token, identity, audience="api://someone-else")["aud"] == "api://someone-else"

    # Same kid forged onto a token signed by another key: the signature check must catch it.
    stranger = DevIdentity(_context(tmp_path / "stranger"))
    forged = stranger.mint_token(tenant="contoso")
    _, payload, signature = forged.split(".")
    genuine_header = identity.mint_token(tenant="contoso").split(".")[0]
    with pytest.raises(jwt.InvalidSignatureError):
        _verify(f"{genuine_header}.{payload}.{signature}", identity)


def test_extra_claims_override_and_remove(identity: DevIdentity) -> None:
    token = identity.mint_token(tenant="contoso", extra_claims={"ver": "1.0", "tid": None, "custom": 7})
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["ver"] == "1.0"
    assert "tid" not in claims
    assert claims["custom"] == 7


def test_module_functions_mint_with_the_persisted_key(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    token = mint_token_cli(
        data_dir,
        BASE_URL,
        "contoso",
        ["Tenant.Admin"],
        ["Intent.Read"],
        None,
        600,
        False,
    )
    # The host started afterwards reuses the key the CLI created, so the CLI's token verifies.
    identity = DevIdentity(_context(data_dir))
    claims = _verify(token, identity)
    assert claims["roles"] == ["Tenant.Admin"] and claims["scp"] == "Intent.Read"
    assert 590 <= claims["exp"] - claims["iat"] <= 600
    app_token = mint_token(data_dir=data_dir, base_url=BASE_URL, tenant="contoso", app_only=True)
    assert _verify(app_token, identity)["idtyp"] == "app"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_routes_serve_metadata_and_jwks(tmp_path: Path) -> None:
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    identity = DevIdentity(_context(tmp_path / "data", base_url))

    async def scenario() -> None:
        await identity.start()
        app = web.Application()
        identity.add_routes(app)
        tid = dev_tenant_id("contoso")
        async with TestServer(app, host="127.0.0.1", port=port), aiohttp.ClientSession() as http:

            async def get(path: str, expected_status: int = 200) -> dict[str, Any]:
                async with http.get(f"{base_url}{path}") as response:
                    assert response.status == expected_status
                    assert response.content_type == "application/json"
                    return cast(dict[str, Any], await response.json())

            common = await get("/devhost/identity/common/v2.0/.well-known/openid-configuration")
            assert common["issuer"] == f"{base_url}/devhost/identity/{{tenantid}}/v2.0"
            assert common["id_token_signing_alg_values_supported"] == ["RS256"]
            assert common["token_endpoint"] and common["authorization_endpoint"]
            organizations = await get("/devhost/identity/organizations/v2.0/.well-known/openid-configuration")
            assert organizations["issuer"] == common["issuer"]
            concrete = await get(f"/devhost/identity/{tid}/v2.0/.well-known/openid-configuration")
            assert concrete["issuer"] == issuer_for(base_url, tid)
            by_name = await get("/devhost/identity/contoso/v2.0/.well-known/openid-configuration")
            assert by_name["issuer"] == concrete["issuer"]
            await get("/devhost/identity/consumers/v2.0/.well-known/openid-configuration", 400)

            # Follow the metadata's jwks_uri, as the app's validator will.
            async with http.get(common["jwks_uri"]) as response:
                assert response.status == 200
                jwks = await response.json()
            [key] = jwks["keys"]
            assert key["kid"] == identity.key.kid
            assert {key["kty"], key["use"], key["alg"]} == {"RSA", "sig", "RS256"}
            assert key["issuer"] == common["issuer"]
            assert not {"d", "p", "q", "dp", "dq", "qi"} & key.keys()  # never the private parts

            token = identity.mint_token(tenant="contoso", roles=["Intent.Reader"])
            unverified = jwt.decode(token, options={"verify_signature": False})
            expected_issuer = common["issuer"].replace("{tenantid}", unverified["tid"])
            assert expected_issuer == concrete["issuer"]
            claims = jwt.decode(
                token,
                jwt.PyJWK(key),
                algorithms=["RS256"],
                audience=DEFAULT_AUDIENCE,
                issuer=expected_issuer,
            )
            assert claims["tid"] == str(tid)
            with pytest.raises(jwt.InvalidIssuerError):
                jwt.decode(
                    identity.mint_token(tenant="fabrikam"),
                    jwt.PyJWK(key),
                    algorithms=["RS256"],
                    audience=DEFAULT_AUDIENCE,
                    issuer=expected_issuer,
                )
        await identity.stop()

    asyncio.run(scenario())
