# intent_ref: platform.identity
"""Hostile-token suite: the validator accepts Entra v2-shaped tokens from the dev issuer and refuses every forgery."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from devhost.identity import (
    DEFAULT_AUDIENCE,
    SigningKey,
    dev_tenant_id,
    issuer_for,
    jwks_uri,
    openid_configuration,
    sign_access_token,
)
from shared.auth import tokens as tokens_module
from shared.auth import validator as validator_module
from shared.auth.principal import INTENT_AUTHOR, INTENT_EXECUTOR, INTENT_READER, PLATFORM_ADMIN
from shared.auth.tokens import (
    InvalidTokenError,
    KeysNotCachedError,
    SigningKeysUnavailableError,
    TokenValidator,
    VerifiedToken,
    bearer_token,
)
from shared.config import SettingsError, get_settings

BASE_URL = "http://127.0.0.1:7071"
METADATA_URL = f"{BASE_URL}/devhost/identity/common/v2.0/.well-known/openid-configuration"
JWKS_URL = jwks_uri(BASE_URL)
COOLDOWN_S = 60.0
CONTOSO = dev_tenant_id("contoso")
FABRIKAM = dev_tenant_id("fabrikam")


# -- fixtures -------------------------------------------------------------------------------------------------------


class FakeIdentityProvider:
    """Serves the devhost's metadata and JWKS documents as `fetch` would, counting every request."""

    def __init__(self, keys: list[SigningKey], metadata_segment: str = "common") -> None:
        self.jwks_keys: list[dict[str, Any]] = [key.public_jwk(BASE_URL) for key in keys]
        self.metadata = openid_configuration(BASE_URL, metadata_segment)
        self.metadata_url = f"{BASE_URL}/devhost/identity/{metadata_segment}/v2.0/.well-known/openid-configuration"
        self.requests: list[str] = []
        self.failing = False
        self.delay_s = 0.0
        self._lock = threading.Lock()

    def fetch(self, url: str) -> dict[str, Any]:
        with self._lock:
            self.requests.append(url)
        # A slow provider widens the window in which unsynchronised refreshes would overlap.
        time.sleep(self.delay_s)
        if self.failing:
            raise OSError("identity provider unreachable")
        if url == self.metadata_url:
            return dict(json.loads(json.dumps(self.metadata)))
        if url == JWKS_URL:
            return {"keys": json.loads(json.dumps(self.jwks_keys))}
        raise AssertionError(f"validator fetched an unexpected URL: {url}")

    def count(self, url: str) -> int:
        return self.requests.count(url)

    def add_key(self, key: SigningKey, **overrides: Any) -> None:
        self.jwks_keys.append({**key.public_jwk(BASE_URL), **overrides})


class FakeClock:
    """Monotonic time the test moves by hand, so cooldown windows are exact rather than slept through."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    return SigningKey.load_or_create(tmp_path_factory.mktemp("identity-a"))


@pytest.fixture(scope="module")
def other_key(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    """A second key: an attacker's, or the issuer's next key after rotation."""
    return SigningKey.load_or_create(tmp_path_factory.mktemp("identity-b"))


@pytest.fixture
def idp(key: SigningKey) -> FakeIdentityProvider:
    return FakeIdentityProvider([key])


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_validator(idp: FakeIdentityProvider, clock: FakeClock) -> Callable[..., TokenValidator]:
    def make(**kwargs: Any) -> TokenValidator:
        kwargs.setdefault("audience", DEFAULT_AUDIENCE)
        kwargs.setdefault("jwks_cooldown_s", COOLDOWN_S)
        source: FakeIdentityProvider = kwargs.pop("idp", idp)
        return TokenValidator(source.metadata_url, fetch=source.fetch, clock=clock, **kwargs)

    return make


@pytest.fixture
def validator(make_validator: Callable[..., TokenValidator]) -> TokenValidator:
    return make_validator()


def _token(
    key: SigningKey, *, tenant: str = "contoso", roles: tuple[str, ...] = (INTENT_READER,), **kwargs: Any
) -> str:
    return sign_access_token(key, tenant=tenant, base_url=BASE_URL, roles=roles, **kwargs)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _claims_of(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


def _resign(token: str, key: SigningKey, headers: dict[str, Any]) -> str:
    """The same claims, signed by `key` with extra header fields."""
    return jwt.encode(_claims_of(token), key.private_key, algorithm="RS256", headers=headers)


def _hand_made(header: dict[str, Any], claims: dict[str, Any], signature: bytes) -> str:
    """A token built without PyJWT, for headers PyJWT refuses to produce."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(signature)}"


def _hand_signed(header: dict[str, Any], claims: dict[str, Any], key: SigningKey) -> str:
    """A genuinely RS256-signed token with exactly `header`, which PyJWT's encoder would normalise."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = key.private_key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64(signature)}"


def _reason(validator: TokenValidator, token: str) -> str:
    with pytest.raises(InvalidTokenError) as caught:
        validator.validate(token)
    return caught.value.reason


# -- accepted tokens ------------------------------------------------------------------------------------------------


def test_valid_user_token_gives_the_callers_identity(validator: TokenValidator, key: SigningKey) -> None:
    token = _token(key, roles=(INTENT_READER, INTENT_AUTHOR), scopes=("access_as_user",), name="Ada Lovelace")
    verified = validator.validate(token)

    claims = _claims_of(token)
    assert verified.entra_tenant_id == CONTOSO
    assert verified.object_id == uuid.UUID(claims["oid"])
    assert verified.roles == frozenset({INTENT_READER, INTENT_AUTHOR})
    assert verified.scopes == frozenset({"access_as_user"})
    assert verified.app_only is False
    assert verified.display_name == "Ada Lovelace"
    assert verified.claims["tid"] == str(CONTOSO)
    with pytest.raises(TypeError):
        verified.claims["roles"] = [PLATFORM_ADMIN]  # type: ignore[index]

    platform_tenant = uuid.uuid4()
    principal = verified.principal(platform_tenant)
    assert principal.tenant_id == platform_tenant
    assert (principal.entra_tenant_id, principal.object_id) == (CONTOSO, uuid.UUID(claims["oid"]))
    assert principal.id == f"{CONTOSO}/{claims['oid']}"
    assert principal.has_role(INTENT_AUTHOR) and not principal.has_role(PLATFORM_ADMIN)
    assert principal.scopes == frozenset({"access_as_user"}) and principal.app_only is False
    assert principal.display_name == "Ada Lovelace"


def test_valid_app_only_token_is_marked_app_only(validator: TokenValidator, key: SigningKey) -> None:
    token = _token(key, tenant="fabrikam", roles=(INTENT_EXECUTOR,), app_only=True)
    verified = validator.validate(token)

    assert verified.app_only is True
    assert verified.entra_tenant_id == FABRIKAM
    assert verified.object_id == uuid.UUID(_claims_of(token)["oid"])
    assert verified.roles == frozenset({INTENT_EXECUTOR})
    assert verified.scopes == frozenset()
    assert verified.display_name is None
    principal = verified.principal(uuid.uuid4())
    assert principal.app_only is True and principal.has_role(INTENT_EXECUTOR)


def test_token_without_idtyp_is_not_app_only(validator: TokenValidator, key: SigningKey) -> None:
    # idtyp is optional in Entra; its absence must never grant app-only treatment.
    token = _token(key, app_only=True, extra_claims={"idtyp": None})
    assert validator.validate(token).app_only is False


def test_any_configured_audience_is_accepted(make_validator: Callable[..., TokenValidator], key: SigningKey) -> None:
    client_id = str(uuid.uuid4())
    validator = make_validator(audience=[DEFAULT_AUDIENCE, client_id])
    assert validator.validate(_token(key, audience=client_id)).entra_tenant_id == CONTOSO
    assert validator.validate(_token(key)).entra_tenant_id == CONTOSO
    assert validator.audiences == frozenset({DEFAULT_AUDIENCE, client_id})


def test_metadata_and_keys_are_fetched_once_and_cached(
    validator: TokenValidator, idp: FakeIdentityProvider, key: SigningKey
) -> None:
    for _ in range(5):
        validator.validate(_token(key))
    assert idp.requests == [METADATA_URL, JWKS_URL]


def test_offline_validation_never_fetches_and_agrees_with_online_validation(
    validator: TokenValidator, idp: FakeIdentityProvider, clock: FakeClock, key: SigningKey, other_key: SigningKey
) -> None:
    # Cold: nothing cached, so an offline validation asks for the online one and fetches nothing itself.
    with pytest.raises(KeysNotCachedError):
        validator.validate(_token(key), offline=True)
    assert idp.requests == []
    online = validator.validate(_token(key))
    assert idp.requests == [METADATA_URL, JWKS_URL]
    # Warm: the same verdict, with no fetch; a bad token is still refused offline, for the same reason.
    assert validator.validate(_token(key), offline=True) == online
    tampered = _resign(_token(key), other_key, {"kid": key.kid})
    with pytest.raises(InvalidTokenError, match="invalid signature") as refused:
        validator.validate(tampered, offline=True)
    assert refused.type is InvalidTokenError
    # An unknown key id within the JWKS cooldown is refused offline at once: no fetch could be made for it.
    with pytest.raises(InvalidTokenError, match="unknown signing key") as unknown:
        validator.validate(_token(other_key), offline=True)
    assert unknown.type is InvalidTokenError
    # Once the cooldown is over, or with keys gone stale, it would need a fetch: offline it asks for the online one.
    clock.now += COOLDOWN_S + 1
    with pytest.raises(KeysNotCachedError):
        validator.validate(_token(other_key), offline=True)
    clock.now += 10 * 86400
    with pytest.raises(KeysNotCachedError):
        validator.validate(_token(key), offline=True)
    assert idp.requests == [METADATA_URL, JWKS_URL]


class _Decodes:
    """Counts the signature verifications the validator asks the JWT library for."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = jwt.decode

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(jwt, "decode", counted)


def test_a_verified_token_is_remembered_and_its_expiry_judged_again(
    validator: TokenValidator, key: SigningKey, other_key: SigningKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = _token(key, expires_in=120)
    tampered = _resign(token, other_key, {"kid": key.kid})
    decodes = _Decodes(monkeypatch)
    first = validator.validate(token)
    assert decodes.count == 1
    # The same token again, online or offline: the same verdict, without verifying the signature again.
    assert validator.validate(token) == first
    assert validator.validate(token, offline=True) == first
    assert decodes.count == 1
    # Only the exact token is remembered: one re-signed with another key under the same kid is verified, and refused.
    with pytest.raises(InvalidTokenError, match="invalid signature"):
        validator.validate(tampered)
    assert decodes.count == 2
    # Its lifetime is judged on every use: once past exp (and the leeway), the remembered token is refused too.
    later = time.time() + 120 + 30 + 1
    monkeypatch.setattr(tokens_module, "time", _Clock(later))
    assert _reason(validator, token) == "token expired"
    assert decodes.count == 2


def test_a_remembered_token_is_verified_again_after_its_keys_are_refreshed(
    validator: TokenValidator,
    idp: FakeIdentityProvider,
    clock: FakeClock,
    key: SigningKey,
    other_key: SigningKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = _token(key)
    validator.validate(token)
    decodes = _Decodes(monkeypatch)
    # The identity provider retires the key; once the cached keys are due for a refresh, the token is verified
    # from scratch against the new set, which no longer has its key.
    idp.jwks_keys = [other_key.public_jwk(BASE_URL)]
    clock.now += 3600 + 1
    with pytest.raises(KeysNotCachedError):
        validator.validate(token, offline=True)
    assert _reason(validator, token) == "unknown signing key"
    assert decodes.count == 0  # refused at the key lookup, before any signature check


def test_remembered_tokens_are_bounded(
    validator: TokenValidator, key: SigningKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tokens_module, "_REMEMBERED_TOKENS", 2)
    first, second, third = (_token(key, oid=str(uuid.uuid4())) for _ in range(3))
    for token in (first, second, third):
        validator.validate(token)
    decodes = _Decodes(monkeypatch)
    validator.validate(third)
    validator.validate(second)
    assert decodes.count == 0
    validator.validate(first)  # the least recently used, evicted by the third
    assert decodes.count == 1
    # A token longer than the remembered limit is verified every time.
    monkeypatch.setattr(tokens_module, "_MAX_REMEMBERED_TOKEN_CHARS", len(first) - 1)
    long_one = _token(key, oid=str(uuid.uuid4()))
    validator.validate(long_one)
    validator.validate(long_one)
    assert decodes.count == 3


class _Clock:
    """`time` as the validator module sees it, stopped at one POSIX moment."""

    def __init__(self, now: float) -> None:
        self._now = now

    def time(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return time.monotonic()


# -- algorithm and header attacks -----------------------------------------------------------------------------------


def test_alg_none_is_refused_before_any_key_is_fetched(
    validator: TokenValidator, idp: FakeIdentityProvider, key: SigningKey
) -> None:
    claims = _claims_of(_token(key))
    token = _hand_made({"alg": "none", "typ": "JWT", "kid": key.kid}, claims, b"")
    assert _reason(validator, token) == "unsupported algorithm"
    # Also the variant with no signature segment content and a trailing dot only.
    assert _reason(validator, token.rsplit(".", 1)[0] + ".") == "unsupported algorithm"
    assert idp.requests == []


def test_hs256_signed_with_the_rsa_public_key_is_refused(
    validator: TokenValidator, idp: FakeIdentityProvider, key: SigningKey
) -> None:
    public_pem = key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": key.kid}
    claims = _claims_of(_token(key))
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{_b64(signature)}"

    assert _reason(validator, token) == "unsupported algorithm"
    assert idp.requests == []


@pytest.mark.parametrize("alg", ["HS256", "HS512", "RS384", "RS512", "PS256", "ES256", "EdDSA", "rs256", None])
def test_every_algorithm_but_rs256_is_refused(
    validator: TokenValidator, idp: FakeIdentityProvider, key: SigningKey, alg: str | None
) -> None:
    header: dict[str, Any] = {"typ": "JWT", "kid": key.kid}
    if alg is not None:
        header["alg"] = alg
    token = _hand_made(header, _claims_of(_token(key)), b"\x00" * 256)
    assert _reason(validator, token) == "unsupported algorithm"
    assert idp.requests == []


@pytest.mark.parametrize(
    "extra_header",
    [
        {"jku": "https://attacker.example/keys"},
        {"x5u": "https://attacker.example/cert.pem"},
        {"x5c": ["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"]},
        {"crit": ["b64"], "b64": True},
    ],
    ids=["jku", "x5u", "x5c", "crit"],
)
def test_headers_pointing_at_other_keys_are_refused(
    validator: TokenValidator, idp: FakeIdentityProvider, key: SigningKey, extra_header: dict[str, Any]
) -> None:
    # Signed with the genuine key: the header alone must be enough to refuse, and nothing is dereferenced.
    header = {"alg": "RS256", "typ": "JWT", "kid": key.kid, **extra_header}
    token = _hand_signed(header, _claims_of(_token(key)), key)
    assert _reason(validator, token) == "forbidden token header"
    assert idp.requests == []


def test_crit_naming_an_unknown_extension_is_refused(
    validator: TokenValidator, idp: FakeIdentityProvider, key: SigningKey
) -> None:
    # PyJWT itself refuses crit entries it does not implement, while parsing the header.
    token = _resign(_token(key), key, {"kid": key.kid, "crit": ["exp"]})
    assert _reason(validator, token) == "malformed token"
    assert idp.requests == []


def test_embedded_jwk_of_an_attacker_key_is_refused(
    validator: TokenValidator, idp: FakeIdentityProvider, key: SigningKey, other_key: SigningKey
) -> None:
    attacker_jwk = other_key.public_jwk("https://attacker.example")
    token = _resign(_token(key), other_key, {"kid": other_key.kid, "jwk": attacker_jwk})
    assert _reason(validator, token) == "forbidden token header"
    assert idp.requests == []


@pytest.mark.parametrize(
    "kid",
    ["https://attacker.example/keys#1", "../../../../etc/passwd", "' OR 1=1 --", "k" * 5000],
    ids=["url", "path", "sql", "huge"],
)
def test_injected_kid_only_ever_looks_in_the_jwks(
    validator: TokenValidator, idp: FakeIdentityProvider, key: SigningKey, other_key: SigningKey, kid: str
) -> None:
    validator.validate(_token(key))  # warm the cache
    token = _resign(_token(key), other_key, {"kid": kid})
    assert _reason(validator, token) in {"unknown signing key", "missing key id"}
    assert set(idp.requests) <= {METADATA_URL, JWKS_URL}


def test_missing_kid_is_refused(validator: TokenValidator, idp: FakeIdentityProvider, key: SigningKey) -> None:
    token = jwt.encode(_claims_of(_token(key)), key.private_key, algorithm="RS256")
    assert "kid" not in jwt.get_unverified_header(token)
    assert _reason(validator, token) == "missing key id"
    assert idp.requests == []


def test_genuine_kid_on_a_token_signed_by_another_key_is_refused(
    validator: TokenValidator, key: SigningKey, other_key: SigningKey
) -> None:
    token = _resign(_token(key), other_key, {"kid": key.kid})
    assert _reason(validator, token) == "invalid signature"


def test_tampered_payload_is_refused(validator: TokenValidator, key: SigningKey) -> None:
    header_segment, payload_segment, signature_segment = _token(key).split(".")
    claims = json.loads(_unb64(payload_segment))
    claims["roles"] = [PLATFORM_ADMIN]
    forged = f"{header_segment}.{_b64(json.dumps(claims).encode())}.{signature_segment}"
    assert _reason(validator, forged) == "invalid signature"


@pytest.mark.parametrize("garbage", ["", "abc", "a.b", "a.b.c", "....", "x" * 40_000])
def test_malformed_tokens_are_refused(validator: TokenValidator, idp: FakeIdentityProvider, garbage: str) -> None:
    assert _reason(validator, garbage) == "malformed token"
    assert idp.requests == []


# -- claim attacks --------------------------------------------------------------------------------------------------


def test_wrong_audience_is_refused(validator: TokenValidator, key: SigningKey) -> None:
    assert _reason(validator, _token(key, audience="api://some-other-api")) == "wrong audience"


def test_audience_list_is_refused_even_when_it_contains_ours(validator: TokenValidator, key: SigningKey) -> None:
    token = _token(key, extra_claims={"aud": [DEFAULT_AUDIENCE, "api://some-other-api"]})
    assert _reason(validator, token) == "wrong audience"


@pytest.mark.parametrize(
    "issuer",
    [
        f"https://attacker.example/devhost/identity/{CONTOSO}/v2.0",
        f"{BASE_URL}/devhost/identity/{CONTOSO}/v2.0/",
        f"{BASE_URL}/devhost/identity/{CONTOSO}",
        f"https://login.microsoftonline.com/{CONTOSO}/v2.0",
        f"{BASE_URL}/devhost/identity/{{tenantid}}/v2.0",
    ],
    ids=["other-host", "trailing-slash", "no-version", "entra", "template"],
)
def test_wrong_issuer_is_refused(validator: TokenValidator, key: SigningKey, issuer: str) -> None:
    assert _reason(validator, _token(key, extra_claims={"iss": issuer})) == "wrong issuer"


def test_issuer_of_another_tenant_than_tid_is_refused(validator: TokenValidator, key: SigningKey) -> None:
    # tid says fabrikam, iss says contoso: each is a valid value, but not together.
    token = _token(key, extra_claims={"tid": str(FABRIKAM)})
    assert _claims_of(token)["iss"] == issuer_for(BASE_URL, CONTOSO)
    assert _reason(validator, token) == "wrong issuer"


@pytest.mark.parametrize(
    "tid",
    ["contoso", "", f"{{{CONTOSO}}}", f"urn:uuid:{CONTOSO}", CONTOSO.hex, "common", 42, f"{CONTOSO}\n"],
    ids=["name", "empty", "braces", "urn", "bare-hex", "common", "number", "line-end"],
)
def test_tid_that_is_not_a_guid_is_refused(validator: TokenValidator, key: SigningKey, tid: Any) -> None:
    # iss is forged to match, so only the tid format check can refuse it.
    token = _token(key, extra_claims={"tid": tid, "iss": f"{BASE_URL}/devhost/identity/{tid}/v2.0"})
    assert _reason(validator, token) == "tid is not a GUID"


def test_missing_tid_is_refused(validator: TokenValidator, key: SigningKey) -> None:
    assert _reason(validator, _token(key, extra_claims={"tid": None})) == "missing claim: tid"


def test_missing_oid_is_refused(validator: TokenValidator, key: SigningKey) -> None:
    assert _reason(validator, _token(key, extra_claims={"oid": None})) == "missing claim: oid"


# A GUID with a line end after it passed a check that allowed one, then failed UUID() unhandled: a 500 at the API and
# a retried batch at the ingress, instead of a refused token.
@pytest.mark.parametrize("oid", ["ada@contoso.example", "", "123", "0b6f3c1e-5d2a-4c1f-9e7b-2a8d4f6c9e10\n"])
def test_oid_that_is_not_a_guid_is_refused(validator: TokenValidator, key: SigningKey, oid: str) -> None:
    assert _reason(validator, _token(key, oid=oid)) == "oid is not a GUID"


def test_v1_token_is_refused(validator: TokenValidator, key: SigningKey) -> None:
    assert _reason(validator, _token(key, extra_claims={"ver": "1.0"})) == "unsupported token version"


def test_token_without_version_is_refused(validator: TokenValidator, key: SigningKey) -> None:
    assert _reason(validator, _token(key, extra_claims={"ver": None})) == "missing claim: ver"


def test_expired_token_is_refused(validator: TokenValidator, key: SigningKey) -> None:
    assert _reason(validator, _token(key, expires_in=-120)) == "token expired"


def test_expiry_within_leeway_is_tolerated(validator: TokenValidator, key: SigningKey) -> None:
    assert validator.validate(_token(key, expires_in=-10)).entra_tenant_id == CONTOSO


def test_expiry_within_leeway_is_refused_without_leeway(
    make_validator: Callable[..., TokenValidator], key: SigningKey
) -> None:
    assert _reason(make_validator(leeway_s=0), _token(key, expires_in=-10)) == "token expired"


def test_not_before_in_the_future_beyond_leeway_is_refused(validator: TokenValidator, key: SigningKey) -> None:
    token = _token(key, extra_claims={"nbf": int(time.time()) + 120})
    assert _reason(validator, token) == "token not yet valid"


def test_not_before_within_leeway_is_accepted(validator: TokenValidator, key: SigningKey) -> None:
    token = _token(key, extra_claims={"nbf": int(time.time()) + 10})
    assert validator.validate(token).entra_tenant_id == CONTOSO


def test_issued_in_the_future_is_refused(validator: TokenValidator, key: SigningKey) -> None:
    token = _token(key, extra_claims={"iat": int(time.time()) + 600})
    assert _reason(validator, token) == "token not yet valid"


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
def test_missing_time_claims_are_refused(validator: TokenValidator, key: SigningKey, claim: str) -> None:
    assert _reason(validator, _token(key, extra_claims={claim: None})) == f"missing claim: {claim}"


def test_time_claim_as_a_string_is_refused(validator: TokenValidator, key: SigningKey) -> None:
    # PyJWT would take "9999999999" through int(); a JWT NumericDate is a number.
    token = _token(key, extra_claims={"exp": str(int(time.time()) + 3600)})
    assert _reason(validator, token) == "malformed claim: exp"


def test_roles_that_are_not_a_list_of_strings_are_refused(validator: TokenValidator, key: SigningKey) -> None:
    assert _reason(validator, _token(key, extra_claims={"roles": PLATFORM_ADMIN})) == "malformed claim: roles"
    assert _reason(validator, _token(key, extra_claims={"roles": [1]})) == "malformed claim: roles"


def test_app_only_token_with_scopes_is_refused(validator: TokenValidator, key: SigningKey) -> None:
    token = _token(key, app_only=True, extra_claims={"scp": "access_as_user"})
    assert _reason(validator, token) == "app-only token carries scp"


def test_token_with_neither_roles_nor_scopes_is_refused(validator: TokenValidator, key: SigningKey) -> None:
    # The shape of an ID token presented as an access token.
    assert _reason(validator, _token(key, roles=())) == "not an access token"


# -- signing-key issuer ---------------------------------------------------------------------------------------------


def test_key_bound_to_another_tenant_cannot_sign_for_this_one(
    make_validator: Callable[..., TokenValidator], key: SigningKey, other_key: SigningKey
) -> None:
    idp = FakeIdentityProvider([key])
    idp.add_key(other_key, issuer=issuer_for(BASE_URL, FABRIKAM))
    validator = make_validator(idp=idp)

    assert _reason(validator, _token(other_key, tenant="contoso")) == "signing key not valid for issuer"
    # The same key is fine for the tenant it is bound to, so the refusal above is about the issuer alone.
    assert validator.validate(_token(other_key, tenant="fabrikam")).entra_tenant_id == FABRIKAM
    assert validator.validate(_token(key, tenant="contoso")).entra_tenant_id == CONTOSO


def test_single_tenant_metadata_accepts_only_that_tenant(
    make_validator: Callable[..., TokenValidator], key: SigningKey
) -> None:
    validator = make_validator(idp=FakeIdentityProvider([key], metadata_segment="contoso"))
    assert validator.validate(_token(key, tenant="contoso")).entra_tenant_id == CONTOSO
    assert _reason(validator, _token(key, tenant="fabrikam")) == "wrong issuer"
    # tid swapped while iss stays contoso's: the concrete issuer matches, the tid does not.
    assert _reason(validator, _token(key, extra_claims={"tid": str(FABRIKAM)})) == "issuer does not match tid"


# -- JWKS refresh, rotation and throttling --------------------------------------------------------------------------


def test_unknown_kid_is_refused_after_exactly_one_refetch(
    validator: TokenValidator, idp: FakeIdentityProvider, clock: FakeClock, key: SigningKey, other_key: SigningKey
) -> None:
    validator.validate(_token(key))
    clock.now += COOLDOWN_S + 1

    assert _reason(validator, _token(other_key)) == "unknown signing key"
    assert idp.count(JWKS_URL) == 2
    assert idp.count(METADATA_URL) == 1


def test_unknown_kid_right_after_a_fetch_does_not_refetch(
    validator: TokenValidator, idp: FakeIdentityProvider, key: SigningKey, other_key: SigningKey
) -> None:
    # A cold validator fetches the JWKS for this very token; fetching again at once could not help.
    assert _reason(validator, _token(other_key)) == "unknown signing key"
    assert idp.count(JWKS_URL) == 1


def test_rotated_key_is_picked_up_with_one_refetch(
    validator: TokenValidator, idp: FakeIdentityProvider, clock: FakeClock, key: SigningKey, other_key: SigningKey
) -> None:
    validator.validate(_token(key))
    clock.now += COOLDOWN_S + 1
    idp.add_key(other_key)

    assert validator.validate(_token(other_key)).entra_tenant_id == CONTOSO
    assert idp.count(JWKS_URL) == 2
    # Both keys are now cached: neither needs another fetch.
    validator.validate(_token(other_key))
    validator.validate(_token(key))
    assert idp.count(JWKS_URL) == 2


def test_retired_key_stops_verifying_after_refresh(
    validator: TokenValidator, idp: FakeIdentityProvider, clock: FakeClock, key: SigningKey, other_key: SigningKey
) -> None:
    validator.validate(_token(key))
    idp.jwks_keys = [other_key.public_jwk(BASE_URL)]
    clock.now += 3600 + 1  # past the cache lifetime: the routine refresh drops the retired key

    assert _reason(validator, _token(key)) == "unknown signing key"
    assert validator.validate(_token(other_key)).entra_tenant_id == CONTOSO


def test_flood_of_unknown_kids_causes_one_refetch_per_cooldown(
    validator: TokenValidator, idp: FakeIdentityProvider, clock: FakeClock, key: SigningKey, other_key: SigningKey
) -> None:
    validator.validate(_token(key))
    clock.now += COOLDOWN_S + 1
    base = _token(key)
    flood = [_resign(base, other_key, {"kid": f"made-up-{i}"}) for i in range(50)]
    idp.delay_s = 0.02

    def attempt(token: str) -> str:
        try:
            validator.validate(token)
        except InvalidTokenError as exc:
            return exc.reason
        return "accepted"

    with ThreadPoolExecutor(max_workers=16) as pool:
        reasons = list(pool.map(attempt, flood))

    assert reasons == ["unknown signing key"] * 50
    assert idp.count(JWKS_URL) == 2  # the initial fetch plus exactly one refetch
    # Genuine tokens keep working throughout the flood, from the cache.
    assert validator.validate(_token(key)).entra_tenant_id == CONTOSO
    assert idp.count(JWKS_URL) == 2
    # Throttled, not disabled: once the window has passed, one more refetch is allowed.
    clock.now += COOLDOWN_S + 1
    for token in flood[:10]:
        assert attempt(token) == "unknown signing key"
    assert idp.count(JWKS_URL) == 3


def test_concurrent_cold_start_fetches_once_and_accepts_every_request(
    validator: TokenValidator, idp: FakeIdentityProvider, key: SigningKey
) -> None:
    # Requests arriving while the first fetch is in flight must wait for it, not fail or fetch again.
    idp.delay_s = 0.05
    tokens = [_token(key) for _ in range(16)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        verified = list(pool.map(validator.validate, tokens))
    assert [v.entra_tenant_id for v in verified] == [CONTOSO] * 16
    assert idp.requests == [METADATA_URL, JWKS_URL]


# -- identity provider outages --------------------------------------------------------------------------------------


def test_unreachable_identity_provider_fails_closed_and_is_not_hammered(
    validator: TokenValidator, idp: FakeIdentityProvider, clock: FakeClock, key: SigningKey
) -> None:
    idp.failing = True
    for _ in range(20):
        with pytest.raises(SigningKeysUnavailableError) as caught:
            validator.validate(_token(key))
        assert caught.value.reason == "signing keys unavailable"
    assert len(idp.requests) == 1

    idp.failing = False
    clock.now += COOLDOWN_S + 1
    assert validator.validate(_token(key)).entra_tenant_id == CONTOSO


def test_cached_keys_keep_serving_while_the_provider_is_down(
    validator: TokenValidator, idp: FakeIdentityProvider, clock: FakeClock, key: SigningKey
) -> None:
    validator.validate(_token(key))
    idp.failing = True
    clock.now += 3600 + 1  # the cache is due for a refresh, which fails

    assert validator.validate(_token(key)).entra_tenant_id == CONTOSO
    clock.now += 48 * 3600  # far past any stale allowance: fail closed
    with pytest.raises(SigningKeysUnavailableError):
        validator.validate(_token(key))


def test_jwks_uri_that_is_not_https_or_loopback_is_never_fetched(
    make_validator: Callable[..., TokenValidator], key: SigningKey
) -> None:
    idp = FakeIdentityProvider([key])
    idp.metadata["jwks_uri"] = "file:///etc/passwd"
    validator = make_validator(idp=idp)
    with pytest.raises(SigningKeysUnavailableError):
        validator.validate(_token(key))
    assert idp.requests == [METADATA_URL]


@pytest.mark.parametrize(
    "url", ["http://login.example.com/.well-known/openid-configuration", "file:///etc/passwd", "", "https://"]
)
def test_metadata_url_must_be_https_or_loopback(url: str) -> None:
    with pytest.raises(ValueError, match="https"):
        TokenValidator(url, DEFAULT_AUDIENCE)


def test_audience_is_required() -> None:
    with pytest.raises(ValueError, match="audience"):
        TokenValidator(METADATA_URL, [])


# -- error hygiene --------------------------------------------------------------------------------------------------


def test_reasons_never_contain_the_token(
    validator: TokenValidator, key: SigningKey, other_key: SigningKey, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    good = _token(key)
    header_segment, payload_segment, signature_segment = good.split(".")
    hostile = [
        _token(key, audience="api://other"),
        _token(key, expires_in=-600),
        _token(key, extra_claims={"ver": "1.0"}),
        _token(key, extra_claims={"tid": "not-a-guid"}),
        _token(key, oid="ada@contoso.example"),
        _token(other_key),
        f"{header_segment}.{payload_segment}.{signature_segment[::-1]}",
        _hand_made({"alg": "none", "kid": key.kid}, _claims_of(good), b""),
        good + "garbage",
    ]
    for token in hostile:
        with pytest.raises(InvalidTokenError) as caught:
            validator.validate(token)
        exc = caught.value
        segments = [part for part in token.split(".") if len(part) > 8]
        for text in (exc.reason, str(exc), repr(exc)):
            assert token not in text
            assert not any(segment in text for segment in segments)
        # No chained library exception carrying token details into tracebacks.
        assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)
        assert not any(segment in caplog.text for segment in segments)


# -- bearer header --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["Bearer abc.def.ghi", "bearer abc.def.ghi", "  BEARER   abc.def.ghi  "])
def test_bearer_token_is_extracted(header: str) -> None:
    assert bearer_token(header) == "abc.def.ghi"


@pytest.mark.parametrize(
    "header", [None, "", "   ", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "abc.def.ghi", "Bearer a b", "Bearerabc"]
)
def test_malformed_authorization_headers_are_refused(header: str | None) -> None:
    with pytest.raises(InvalidTokenError) as caught:
        bearer_token(header)
    assert caught.value.reason == "missing bearer token"


# -- settings wiring ------------------------------------------------------------------------------------------------


@pytest.fixture
def auth_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in (
        "QP_BLOB_ACCOUNT_URL",
        "QP_EVENTHUB_BACKEND",
        "QP_AUTH_METADATA_URL",
        "QP_AUTH_AUDIENCE",
        "QP_AUTH_LEEWAY_S",
        "QP_AUTH_JWKS_COOLDOWN_S",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("QP_DATABASE_URL", "host=/tmp dbname=quantum")
    monkeypatch.setenv("QP_DATABASE_CONTROL_URL", "host=/tmp dbname=quantum")
    monkeypatch.setenv("QP_BLOB_CONNECTION_STRING", "UseDevelopmentStorage=true")
    get_settings.cache_clear()
    validator_module.get_token_validator.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()
    validator_module.get_token_validator.cache_clear()


def test_validator_from_settings_requires_a_metadata_url(auth_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingsError, match="QP_AUTH_METADATA_URL"):
        validator_module.get_token_validator()


def test_validator_from_settings_is_built_once_with_every_audience(auth_env: pytest.MonkeyPatch) -> None:
    auth_env.setenv("QP_AUTH_METADATA_URL", METADATA_URL)
    auth_env.setenv("QP_AUTH_AUDIENCE", "api://quantum-platform, 11111111-2222-3333-4444-555555555555")
    validator = validator_module.get_token_validator()
    assert isinstance(validator, TokenValidator)
    assert validator.audiences == frozenset({"api://quantum-platform", "11111111-2222-3333-4444-555555555555"})
    assert validator_module.get_token_validator() is validator


def test_plain_http_metadata_url_to_a_remote_host_is_a_settings_error(auth_env: pytest.MonkeyPatch) -> None:
    auth_env.setenv("QP_AUTH_METADATA_URL", "http://login.example.com/.well-known/openid-configuration")
    with pytest.raises(SettingsError, match="QP_AUTH_METADATA_URL"):
        validator_module.get_token_validator()


def test_verified_token_is_immutable(validator: TokenValidator, key: SigningKey) -> None:
    verified = validator.validate(_token(key))
    assert isinstance(verified, VerifiedToken)
    with pytest.raises(AttributeError):
        verified.roles = frozenset({PLATFORM_ADMIN})  # type: ignore[misc]
    assert hash(verified) == hash(validator.validate(_token(key)))


def test_platform_admin_counts_only_in_tokens_of_the_operators_tenant(
    make_validator: Callable[..., TokenValidator], key: SigningKey
) -> None:
    # The API is multi-tenant: fabrikam's administrators can assign any of its app roles in their own directory.
    validator = make_validator(operator_tenant=CONTOSO)
    roles = (PLATFORM_ADMIN, INTENT_READER)
    assert validator.validate(_token(key, tenant="contoso", roles=roles)).roles == frozenset(roles)
    customer = validator.validate(_token(key, tenant="fabrikam", roles=roles))
    assert customer.entra_tenant_id == FABRIKAM and customer.roles == frozenset({INTENT_READER})
    # A token whose only role was that one is still a token of its tenant, with no role.
    assert validator.validate(_token(key, tenant="fabrikam", roles=(PLATFORM_ADMIN,))).roles == frozenset()
    # Unset (local development only), every tenant's counts.
    assert PLATFORM_ADMIN in make_validator().validate(_token(key, tenant="fabrikam", roles=roles)).roles
