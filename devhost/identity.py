# intent_ref: platform.dev-identity
"""A local RS256 issuer shaped like Entra ID v2: persisted key, OpenID metadata, JWKS and token minting."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import re
import secrets
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from devhost.component import HostContext
from devhost.secret_files import read_or_create

logger = logging.getLogger(__name__)

NAMESPACE = uuid.UUID("d888dff0-de52-49e3-ab90-35be6e4fc08c")
"""Fixed namespace for the uuid5 GUIDs of demo tenants, users and the dev client; never change it, or every
minted identity (and every row keyed by it) moves."""

ISSUER_TEMPLATE = "{base_url}/devhost/identity/{tenantid}/v2.0"
"""As Entra's `https://login.microsoftonline.com/{tenantid}/v2.0`; `{tenantid}` stays literal in metadata."""

DEFAULT_AUDIENCE = "api://quantum-platform"
"""The API's app id URI; pass `audience=` to mint for another one."""

DEV_CLIENT_ID = str(uuid.uuid5(NAMESPACE, "client:devhost"))
"""The calling client application (`azp`) of every minted token unless `extra_claims` says otherwise."""

DEFAULT_USER_NAME = "Dev User"

MULTI_TENANT_SEGMENTS = frozenset({"common", "organizations"})
"""Metadata segments that return the issuer template instead of a concrete issuer, as Entra does."""

KEY_FILE_NAME = "signing-key.pem"

_SCOPE_PATTERN = re.compile(r"^\S+$")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_b64url(value: int) -> str:
    return _b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def _parse_guid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def dev_tenant_id(name: str) -> uuid.UUID:
    """The Entra tenant GUID of a demo tenant name (uuid5, case-insensitive); a GUID is returned as-is."""
    guid = _parse_guid(name)
    if guid is not None:
        return guid
    normalized = name.strip().lower()
    if not normalized:
        raise ValueError("tenant name must not be empty")
    # Case-insensitive like Entra tenant domains, so "Contoso" and "contoso" are one tenant.
    return uuid.uuid5(NAMESPACE, f"tenant:{normalized}")


def dev_user_oid(tenant_id: uuid.UUID, user_name: str) -> uuid.UUID:
    """The default `oid` of a user: stable per (tenant, user name), different across tenants as in Entra."""
    return uuid.uuid5(NAMESPACE, f"user:{tenant_id}:{user_name.strip().lower()}")


def dev_app_oid(tenant_id: uuid.UUID, client_id: str) -> uuid.UUID:
    """The default `oid` of a client's service principal in a tenant (what app-only tokens carry)."""
    return uuid.uuid5(NAMESPACE, f"service-principal:{tenant_id}:{client_id.lower()}")


def _origin(base_url: str) -> str:
    return base_url.rstrip("/")


def issuer_template(base_url: str) -> str:
    """The issuer with `{tenantid}` left in place, as `common` metadata and JWKS keys carry it."""
    # str.replace, not format(): the {tenantid} placeholder must survive.
    return ISSUER_TEMPLATE.replace("{base_url}", _origin(base_url))


def issuer_for(base_url: str, tid: uuid.UUID | str) -> str:
    """The concrete issuer of tenant `tid`: what a token's `iss` must equal."""
    return issuer_template(base_url).replace("{tenantid}", str(tid))


def jwks_uri(base_url: str) -> str:
    """Where the devhost serves the signing keys."""
    return f"{_origin(base_url)}/devhost/identity/discovery/v2.0/keys"


def openid_metadata_url(base_url: str, tenant_segment: str = "organizations") -> str:
    """The metadata URL the app is pointed at (`organizations`: any provisioned tenant, issuer template)."""
    return f"{_origin(base_url)}/devhost/identity/{tenant_segment}/v2.0/.well-known/openid-configuration"


def openid_configuration(base_url: str, tenant_segment: str) -> dict[str, Any]:
    """The OpenID metadata for a tenant segment: `common`/`organizations` give the issuer template, a GUID
    or demo tenant name the concrete issuer of that tenant (as Entra does for a tenant id or domain).

    The token and authorization endpoints are listed for shape only: the devhost mints tokens from its CLI.
    """
    origin = _origin(base_url)
    if tenant_segment in MULTI_TENANT_SEGMENTS:
        issuer = issuer_template(base_url)
    elif tenant_segment == "consumers":
        # Personal Microsoft accounts have no counterpart here; refusing beats inventing a tenant for them.
        raise ValueError("the dev issuer has no consumers (personal account) tenant")
    else:
        issuer = issuer_for(base_url, dev_tenant_id(tenant_segment))
    prefix = f"{origin}/devhost/identity/{tenant_segment}"
    return {
        "issuer": issuer,
        "jwks_uri": jwks_uri(base_url),
        "authorization_endpoint": f"{prefix}/oauth2/v2.0/authorize",
        "token_endpoint": f"{prefix}/oauth2/v2.0/token",
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "subject_types_supported": ["pairwise"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "token_endpoint_auth_methods_supported": [
            "client_secret_post",
            "private_key_jwt",
            "client_secret_basic",
        ],
        "claims_supported": [
            "sub",
            "iss",
            "aud",
            "exp",
            "iat",
            "nbf",
            "tid",
            "oid",
            "roles",
            "scp",
            "azp",
            "azpacr",
            "idtyp",
            "ver",
            "uti",
            "name",
            "preferred_username",
        ],
        "tenant_region_scope": None,
    }


def jwk_thumbprint(public_key: rsa.RSAPublicKey) -> str:
    """The RFC 7638 JWK SHA-256 thumbprint of an RSA public key: stable for the key, so usable as kid."""
    numbers = public_key.public_numbers()
    # RFC 7638: required members only, lexicographic order, no whitespace.
    canonical = json.dumps(
        {"e": _int_b64url(numbers.e), "kty": "RSA", "n": _int_b64url(numbers.n)},
        separators=(",", ":"),
        sort_keys=True,
    )
    return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())


@dataclass(frozen=True)
class SigningKey:
    """The issuer's RSA key pair and its RFC 7638 thumbprint, used as `kid`."""

    private_key: rsa.RSAPrivateKey
    kid: str

    @classmethod
    def from_private_key(cls, private_key: rsa.RSAPrivateKey) -> SigningKey:
        """Wrap a key, deriving its kid."""
        return cls(private_key, jwk_thumbprint(private_key.public_key()))

    @classmethod
    def load_or_create(cls, directory: Path) -> SigningKey:
        """Load `<directory>/signing-key.pem`, creating it (mode 0600) on first use."""
        path = directory / KEY_FILE_NAME
        loaded = serialization.load_pem_private_key(read_or_create(path, _new_pem, "dev identity key"), password=None)
        if not isinstance(loaded, rsa.RSAPrivateKey):
            raise ValueError(f"{path} is not an RSA private key")
        return cls.from_private_key(loaded)

    def public_jwk(self, base_url: str) -> dict[str, str]:
        """The public key as a JWK, with the `issuer` Entra puts on each key (the template)."""
        numbers = self.private_key.public_key().public_numbers()
        return {
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "n": _int_b64url(numbers.n),
            "e": _int_b64url(numbers.e),
            "alg": "RS256",
            "issuer": issuer_template(base_url),
        }

    def jwks(self, base_url: str) -> dict[str, list[dict[str, str]]]:
        """The JWK set served at the JWKS URI."""
        return {"keys": [self.public_jwk(base_url)]}


def _new_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def key_directory(data_dir: Path) -> Path:
    """Where the issuer keeps its key under the host's data folder."""
    return data_dir / "identity"


def sign_access_token(
    key: SigningKey,
    *,
    tenant: str,
    base_url: str,
    roles: Sequence[str] = (),
    scopes: Sequence[str] = (),
    oid: str | None = None,
    app_only: bool = False,
    expires_in: int = 3600,
    audience: str = DEFAULT_AUDIENCE,
    name: str | None = None,
    extra_claims: Mapping[str, Any] | None = None,
) -> str:
    """Mint an Entra v2-shaped access token with `key`; see `mint_token` for the parameters."""
    if tenant in MULTI_TENANT_SEGMENTS or tenant == "consumers":
        raise ValueError(f"{tenant!r} is a metadata segment, not a tenant: tokens carry a concrete tid")
    if app_only and scopes:
        raise ValueError("app-only tokens carry roles, never delegated scopes (scp)")
    if app_only and name is not None:
        raise ValueError("name applies to user tokens; app-only tokens carry no user name")
    for scope in scopes:
        if not _SCOPE_PATTERN.match(scope):
            raise ValueError(f"scope {scope!r} must be non-empty without whitespace (scp is space-separated)")
    for role in roles:
        if not role.strip():
            raise ValueError("roles must be non-empty")

    tid = dev_tenant_id(tenant)
    client_id = DEV_CLIENT_ID
    user_name = name or DEFAULT_USER_NAME
    if oid is None:
        oid = str(dev_app_oid(tid, client_id) if app_only else dev_user_oid(tid, user_name))

    now = int(time.time())
    if expires_in >= 0:
        issued_at = now
    else:
        # An expired token looks like a real one that lived its hour and ran out |expires_in| seconds ago,
        # so a validator rejects it for `exp`, not for an odd exp-before-iat.
        issued_at = now + expires_in - 3600
    expires_at = now + expires_in

    claims: dict[str, Any] = {
        "aud": audience,
        "iss": issuer_for(base_url, tid),
        "iat": issued_at,
        "nbf": issued_at,
        "exp": expires_at,
        "tid": str(tid),
        "oid": oid,
        # Entra's sub is pairwise (per app) for users and equals oid for app-only tokens.
        "sub": oid if app_only else _b64url(hashlib.sha256(f"{tid}:{oid}:{client_id}".encode()).digest()),
        "azp": client_id,
        # 0 = public client (a user's CLI), 1 = client secret (a daemon).
        "azpacr": "1" if app_only else "0",
        "idtyp": "app" if app_only else "user",
        "ver": "2.0",
        "uti": _b64url(secrets.token_bytes(16)),
    }
    if roles:
        claims["roles"] = list(roles)
    if scopes:
        claims["scp"] = " ".join(scopes)
    if not app_only:
        claims["name"] = user_name
        claims["preferred_username"] = _preferred_username(user_name, tenant)
    for claim, value in (extra_claims or {}).items():
        # Overrides let hostile tests forge exactly one thing (a foreign iss, ver 1.0); None removes a claim.
        if value is None:
            claims.pop(claim, None)
        else:
            claims[claim] = value

    return jwt.encode(claims, key.private_key, algorithm="RS256", headers={"typ": "JWT", "kid": key.kid})


def _preferred_username(user_name: str, tenant: str) -> str:
    local = re.sub(r"[^a-z0-9]+", ".", user_name.lower()).strip(".") or "user"
    domain = re.sub(r"[^a-z0-9-]+", "-", tenant.lower()).strip("-") or "tenant"
    # Display only: identity is (tid, oid), never a username (nOAuth).
    return f"{local}@{domain}.devhost.localhost"


def mint_token(
    *,
    data_dir: Path,
    base_url: str,
    tenant: str,
    roles: Sequence[str] = (),
    scopes: Sequence[str] = (),
    oid: str | None = None,
    app_only: bool = False,
    expires_in: int = 3600,
    audience: str = DEFAULT_AUDIENCE,
    name: str | None = None,
    extra_claims: Mapping[str, Any] | None = None,
) -> str:
    """Mint an Entra v2-shaped access token with the key under `data_dir` (created if missing).

    tenant: a demo tenant name (mapped by `dev_tenant_id`) or a tenant GUID; roles: app roles; scopes:
    delegated scopes (user tokens only); oid: defaults to a stable GUID per (tenant, user name) or, app-only,
    per (tenant, client); expires_in: seconds, negative for an already expired token; extra_claims: added
    last, overriding, a None value removing that claim.
    """
    return sign_access_token(
        SigningKey.load_or_create(key_directory(data_dir)),
        tenant=tenant,
        base_url=base_url,
        roles=roles,
        scopes=scopes,
        oid=oid,
        app_only=app_only,
        expires_in=expires_in,
        audience=audience,
        name=name,
        extra_claims=extra_claims,
    )


def longest_token_lifetime_s() -> int:
    """The longest token lifetime the app accepts here: QP_AUTH_MAX_TOKEN_LIFETIME_S, or the app's default."""
    from shared.auth.tokens import DEFAULT_MAX_LIFETIME_S

    value = os.environ.get("QP_AUTH_MAX_TOKEN_LIFETIME_S", "").strip()
    return int(value) if value.isdigit() else DEFAULT_MAX_LIFETIME_S


def mint_token_cli(
    data_dir: Path,
    base_url: str,
    tenant: str,
    roles: list[str],
    scopes: list[str],
    oid: str | None,
    expires_in: int,
    app_only: bool,
    name: str | None = None,
    audience: str = DEFAULT_AUDIENCE,
) -> str:
    """What `python -m devhost token` calls: mint without a running server (same key, same issuer)."""
    longest = longest_token_lifetime_s()
    if expires_in > longest:
        # Still minted: the app may run with a larger setting than this shell sees.
        logger.warning(
            "a token that lives %d s is refused by an app whose QP_AUTH_MAX_TOKEN_LIFETIME_S is %d s; "
            "raise that setting (local.settings.json) to use it",
            expires_in,
            longest,
        )
    return mint_token(
        data_dir=data_dir,
        base_url=base_url,
        tenant=tenant,
        roles=roles,
        scopes=scopes,
        oid=oid,
        app_only=app_only,
        expires_in=expires_in,
        audience=audience,
        name=name,
    )


class DevIdentity:
    """The host component: serves OpenID metadata and JWKS, and mints tokens with the persisted key."""

    def __init__(self, ctx: HostContext, *, audience: str = DEFAULT_AUDIENCE) -> None:
        self._ctx = ctx
        self._audience = audience
        self._key: SigningKey | None = None

    @property
    def key(self) -> SigningKey:
        """The signing key, loaded (or created) on first use."""
        if self._key is None:
            self._key = SigningKey.load_or_create(key_directory(self._ctx.data_dir))
        return self._key

    def add_routes(self, app: web.Application) -> None:
        """Register the metadata and JWKS routes."""
        # The literal JWKS route first, so "discovery" is never taken for a tenant segment.
        app.router.add_get("/devhost/identity/discovery/v2.0/keys", self._handle_jwks)
        app.router.add_get("/devhost/identity/{tenant}/v2.0/.well-known/openid-configuration", self._handle_metadata)

    async def start(self) -> None:
        """Load or create the key (off the loop: generating an RSA key takes a moment)."""
        await asyncio.to_thread(lambda: self.key)

    async def stop(self) -> None:
        """Nothing to release: the key stays on disk for the next start."""

    def mint_token(
        self,
        *,
        tenant: str,
        roles: Sequence[str] = (),
        scopes: Sequence[str] = (),
        oid: str | None = None,
        app_only: bool = False,
        expires_in: int = 3600,
        audience: str | None = None,
        name: str | None = None,
        extra_claims: Mapping[str, Any] | None = None,
    ) -> str:
        """Mint a token for this host's issuer; parameters as the module's `mint_token`."""
        return sign_access_token(
            self.key,
            tenant=tenant,
            base_url=self._ctx.base_url,
            roles=roles,
            scopes=scopes,
            oid=oid,
            app_only=app_only,
            expires_in=expires_in,
            audience=audience or self._audience,
            name=name,
            extra_claims=extra_claims,
        )

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The JWK set this host serves."""
        return self.key.jwks(self._ctx.base_url)

    async def _handle_jwks(self, _request: web.Request) -> web.Response:
        return web.json_response(self.jwks(), headers={"Cache-Control": "public, max-age=300"})

    async def _handle_metadata(self, request: web.Request) -> web.Response:
        segment = request.match_info["tenant"]
        try:
            document = openid_configuration(self._ctx.base_url, segment)
        except ValueError as exc:
            return web.json_response({"error": "invalid_tenant", "error_description": str(exc)}, status=400)
        return web.json_response(document, headers={"Cache-Control": "public, max-age=300"})
