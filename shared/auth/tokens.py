# intent_ref: platform.identity
"""Entra ID v2 access-token validation (RS256, JWKS cached with a throttled refresh, multi-tenant issuer)."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
import time
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import Message
from types import MappingProxyType
from typing import IO, Any
from urllib.parse import urlsplit
from uuid import UUID

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from shared.auth.principal import PLATFORM_ADMIN, Principal

logger = logging.getLogger(__name__)

ALGORITHM = "RS256"
"""The only signing algorithm accepted: Entra signs access tokens with RS256, and pinning one algorithm rules
out `alg: none` and HS/RS key confusion."""

TENANT_PLACEHOLDER = "{tenantid}"

_FORBIDDEN_HEADERS = frozenset({"jku", "x5u", "jwk", "x5c", "crit"})
"""Headers that let a token name its own key or extensions; Entra never sends them, so their presence is an attack."""

_REQUIRED_CLAIMS = ("exp", "nbf", "iat", "iss", "aud", "tid", "oid", "ver")

_ACCESS_TOKEN_TYPES = frozenset({"jwt", "at+jwt", "application/at+jwt"})
"""Accepted JOSE `typ` values, compared case-insensitively (RFC 7515 4.1.9, RFC 9068 2.1); the header may be
absent. Anything else (an encrypted `JWE`, a JSON-serialized `JOSE+JSON`, a logout or ID-token-like type) is a
token minted for another purpose."""

DEFAULT_MAX_LIFETIME_S = 2 * 3600
"""Longest accepted lifetime when none is configured (QP_AUTH_MAX_TOKEN_LIFETIME_S); Entra issues 60-90 minutes."""

_MAX_TOKEN_CHARS = 32 * 1024
"""Entra tokens with many roles stay far below this; anything larger is refused before any parsing work."""

_REMEMBERED_TOKENS = 1024
"""Verified tokens kept, most recently used first: a caller sends the same token with every request for as long as
it lives, and its signature and claims say the same each time (only the clock moves, and is judged again)."""

_MAX_REMEMBERED_TOKEN_CHARS = 8 * 1024
"""Longer tokens are verified every time, so the remembered ones stay within a few megabytes."""

_MAX_KID_CHARS = 256
_MAX_DOCUMENT_BYTES = 1024 * 1024
_MIN_RSA_BITS = 2048

_CACHE_TTL_S = 3600.0
"""How long metadata and JWKS are used before a routine refresh (A1 asks for at least daily)."""

_MAX_STALE_S = 24 * 3600.0
"""How long past the TTL cached keys keep serving while the identity provider cannot be reached."""

_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
"""The hyphenated form only: uuid.UUID also takes braces, `urn:uuid:` and bare hex, which Entra never emits."""

_CANONICAL_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
"""The one spelling of a tenant id that Entra emits and the platform stores: a `tid` in any other case would name
the same tenant through a second issuer string and a second token identity, so it is refused, not folded."""

_NIL_GUID = "00000000-0000-0000-0000-000000000000"
"""A GUID in form that names no directory and no object: Entra never issues it as a `tid` or an `oid`, so a token
naming it is malformed (a placeholder a misconfigured or forged issuer left), not one caller among others."""

_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})

Fetch = Callable[[str], dict[str, Any]]


class InvalidTokenError(Exception):
    """The token was refused; `reason` is short and safe to return to the caller (it never contains the token)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SigningKeysUnavailableError(InvalidTokenError):
    """The metadata or JWKS could not be fetched and no usable cached copy exists (a 503, not the caller's fault)."""


class KeysNotCachedError(Exception):
    """`validate(..., offline=True)` would need to fetch metadata or keys (or wait for a refresh): not a verdict on
    the token, which the caller validates again where it may do I/O."""


@dataclass(frozen=True)
class VerifiedToken:
    """What a validated access token says about its caller; identity is (`entra_tenant_id`, `object_id`)."""

    entra_tenant_id: UUID
    object_id: UUID
    roles: frozenset[str]
    scopes: frozenset[str]
    app_only: bool
    display_name: str | None
    # Excluded from eq/hash: a read-only mapping is unhashable, and identity lives in the fields above.
    claims: Mapping[str, Any] = field(compare=False, repr=False)

    def principal(self, tenant_id: UUID) -> Principal:
        """The Principal once the caller's Entra tenant is known to be provisioned as platform tenant `tenant_id`."""
        return Principal(
            tenant_id=tenant_id,
            entra_tenant_id=self.entra_tenant_id,
            object_id=self.object_id,
            roles=self.roles,
            scopes=self.scopes,
            app_only=self.app_only,
            display_name=self.display_name,
        )


def bearer_token(authorization_header: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header; InvalidTokenError for anything else."""
    if not isinstance(authorization_header, str):
        raise InvalidTokenError("missing bearer token")
    parts = authorization_header.strip().split()
    # The scheme is case-insensitive (RFC 9110); exactly one token after it, nothing else.
    if len(parts) != 2 or parts[0].lower() != "bearer":
        raise InvalidTokenError("missing bearer token")
    return parts[1]


@dataclass(frozen=True)
class _Key:
    public_key: rsa.RSAPublicKey
    issuer: str | None
    """The JWK's `issuer` (a template or a concrete issuer); None when the JWKS does not say."""


@dataclass(frozen=True)
class _Metadata:
    issuer: str
    jwks_uri: str
    fetched_at: float


@dataclass(frozen=True)
class _KeySet:
    keys: Mapping[str, _Key]
    fetched_at: float


@dataclass(frozen=True)
class _Remembered:
    """A token's verdict and the metadata and keys it was reached with: it holds while both are the current ones."""

    verified: VerifiedToken
    metadata: _Metadata
    key_set: _KeySet


class TokenValidator:
    """Validates Entra v2 access tokens (and the devhost's, which share the shape) against one OpenID metadata URL.

    Thread-safe: validation reads immutable cache snapshots; one request at a time refreshes (a try-lock), and the
    others are answered from what is cached meanwhile (keys past their hourly refresh serve up to `_MAX_STALE_S`),
    only a request with no usable key waiting for the fetch in flight, bounded. An unknown `kid` triggers at most one
    JWKS fetch per `jwks_cooldown_s`, however many requests carry one, and within it is refused at once, offline too.
    The verdicts on the last `_REMEMBERED_TOKENS` tokens are kept with the metadata and keys they were reached with;
    the same token is answered from there (its lifetime judged again) while those are current and fresh, and verified
    from scratch otherwise.
    """

    def __init__(
        self,
        metadata_url: str,
        audience: str | Sequence[str],
        *,
        leeway_s: int = 30,
        max_lifetime_s: int = DEFAULT_MAX_LIFETIME_S,
        jwks_cooldown_s: float = 60.0,
        http_timeout_s: float = 5.0,
        fetch: Fetch | None = None,
        clock: Callable[[], float] = time.monotonic,
        operator_tenant: UUID | None = None,
    ) -> None:
        """`operator_tenant`: the Entra tenant whose tokens' Platform.Admin role counts (None: any tenant's, for
        local development only); from every other tenant the role is dropped from the verified roles."""
        _require_fetchable_url(metadata_url)
        audiences = (audience,) if isinstance(audience, str) else tuple(audience)
        if not audiences or not all(isinstance(a, str) and a for a in audiences):
            raise ValueError("audience must be one or more non-empty strings")
        if leeway_s < 0:
            raise ValueError("leeway_s must be >= 0")
        if jwks_cooldown_s <= 0:
            raise ValueError("jwks_cooldown_s must be > 0")
        if max_lifetime_s <= 0:
            raise ValueError("max_lifetime_s must be > 0")
        self._metadata_url = metadata_url
        self._audiences = frozenset(audiences)
        self._leeway_s = leeway_s
        self._max_lifetime_s = max_lifetime_s
        self._cooldown_s = jwks_cooldown_s
        self._fetch: Fetch = fetch or (lambda url: _fetch_json(url, http_timeout_s))
        # A refresh is a metadata fetch then a key fetch, each bounded by the timeout; a request with no usable key
        # waits for one in flight no longer than that.
        self._refresh_wait_s = 2 * http_timeout_s + 1.0
        self._clock = clock
        self._operator_tenant = operator_tenant
        self._lock = threading.Lock()
        # Snapshots replaced whole under the lock and read without it (attribute reads are atomic).
        self._metadata: _Metadata | None = None
        self._key_set: _KeySet | None = None
        self._last_metadata_attempt: float | None = None
        self._last_jwks_attempt: float | None = None
        self._remembered: OrderedDict[str, _Remembered] = OrderedDict()
        self._remembered_lock = threading.Lock()

    @property
    def audiences(self) -> frozenset[str]:
        """The accepted `aud` values."""
        return self._audiences

    @property
    def max_lifetime_s(self) -> int:
        """The longest accepted token lifetime, in seconds."""
        return self._max_lifetime_s

    def validate(self, token: str, *, at: float | None = None, offline: bool = False) -> VerifiedToken:
        """Verify signature and claims; raise InvalidTokenError (with a safe `reason`) on any failure.

        `at` (a POSIX time) judges `exp` and `nbf` at that moment instead of now: a request that a trusted service
        stamped when it accepted it (an event's enqueued time) is judged when it was made, not when it is read.
        `offline`: from what is cached, never fetching or waiting for a refresh; KeysNotCachedError when a fetch
        is due and allowed (or nothing usable is cached), so an event loop may validate without blocking.
        """
        if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN_CHARS:
            raise InvalidTokenError("malformed token")
        if at is None:
            # The exact token verified before, with the same keys: only its expiry can have changed.
            recalled = self._recall(token)
            if recalled is not None:
                return recalled
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            # `from None`: the library's message and context are not needed and must not reach logs with the token.
            raise InvalidTokenError("malformed token") from None

        # Header checks come before any key is looked up or fetched, so hostile headers cost nothing.
        if header.get("alg") != ALGORITHM:
            raise InvalidTokenError("unsupported algorithm")
        if _FORBIDDEN_HEADERS & header.keys():
            raise InvalidTokenError("forbidden token header")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in _ACCESS_TOKEN_TYPES):
            raise InvalidTokenError("not an access token type")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > _MAX_KID_CHARS:
            raise InvalidTokenError("missing key id")

        key, metadata, key_set = self._signing_key(kid, offline=offline)
        claims = self._decode(token, key.public_key, at)
        verified = self._check_claims(claims, key, metadata.issuer)
        self._check_lifetime(claims, time.time() if at is None else at)
        if at is None:
            self._remember(token, _Remembered(verified, metadata, key_set))
        return verified

    # -- verified tokens ------------------------------------------------------------------------------------------

    def _recall(self, token: str) -> VerifiedToken | None:
        """The verdict on `token` reached with the current, fresh metadata and keys, its lifetime judged again now;
        None when there is none (never seen, evicted, or reached before a refresh or with keys now due for one)."""
        with self._remembered_lock:
            remembered = self._remembered.get(token)
            if remembered is None:
                return None
            self._remembered.move_to_end(token)
        now = self._clock()
        if not (
            remembered.metadata is self._metadata
            and remembered.key_set is self._key_set
            and _fresh(remembered.metadata.fetched_at, now)
            and _fresh(remembered.key_set.fetched_at, now)
        ):
            # A refresh may have retired the key or changed the issuer: the token is verified again from scratch.
            return None
        self._check_time(remembered.verified.claims, time.time())
        return remembered.verified

    def _remember(self, token: str, remembered: _Remembered) -> None:
        if len(token) > _MAX_REMEMBERED_TOKEN_CHARS:
            return
        with self._remembered_lock:
            self._remembered[token] = remembered
            self._remembered.move_to_end(token)
            while len(self._remembered) > _REMEMBERED_TOKENS:
                self._remembered.popitem(last=False)

    # -- claims ---------------------------------------------------------------------------------------------------

    def _decode(self, token: str, public_key: rsa.RSAPublicKey, at: float | None = None) -> dict[str, Any]:
        # PyJWT only judges time against its own clock, so a given moment turns its checks off and _check_time
        # applies the same rules (and reasons) at that moment.
        on_clock = at is None
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                public_key,
                algorithms=[ALGORITHM],
                audience=sorted(self._audiences),
                leeway=self._leeway_s,
                options={
                    "require": list(_REQUIRED_CLAIMS),
                    "verify_iss": False,
                    "verify_exp": on_clock,
                    "verify_nbf": on_clock,
                },
            )
        except jwt.InvalidSignatureError:
            raise InvalidTokenError("invalid signature") from None
        except jwt.ExpiredSignatureError:
            raise InvalidTokenError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidTokenError("token not yet valid") from None
        except jwt.InvalidAudienceError:
            raise InvalidTokenError("wrong audience") from None
        except jwt.MissingRequiredClaimError as exc:
            # exc.claim is one of _REQUIRED_CLAIMS, never token content.
            raise InvalidTokenError(f"missing claim: {exc.claim}") from None
        except jwt.PyJWTError:
            raise InvalidTokenError("invalid token") from None
        if at is not None:
            self._check_time(claims, at)
        return claims

    def _check_time(self, claims: Mapping[str, Any], at: float) -> None:
        exp, nbf = claims["exp"], claims["nbf"]
        for name, value in (("exp", exp), ("nbf", nbf)):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidTokenError(f"malformed claim: {name}")
        if exp <= at - self._leeway_s:
            raise InvalidTokenError("token expired")
        if nbf > at + self._leeway_s:
            raise InvalidTokenError("token not yet valid")

    def _check_lifetime(self, claims: Mapping[str, Any], now: float) -> None:
        # A stolen token is usable until it expires: one minted to live for days (a leaked signing key, a
        # misconfigured lifetime policy) is refused rather than honoured for that long. Measured from the issuer's
        # own start (iat, else nbf), so no clock skew is involved; without either, from now.
        lifetime = _lifetime(claims, now)
        if lifetime is None:
            raise InvalidTokenError("malformed claim: exp")
        if lifetime > self._max_lifetime_s:
            raise InvalidTokenError("token lifetime too long")

    def _check_claims(self, claims: dict[str, Any], key: _Key, metadata_issuer: str) -> VerifiedToken:
        for time_claim in ("exp", "nbf", "iat"):
            # PyJWT accepts numeric strings via int(); JWT NumericDate is a JSON number.
            value = claims[time_claim]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidTokenError(f"malformed claim: {time_claim}")
        if claims["ver"] != "2.0":
            raise InvalidTokenError("unsupported token version")
        aud = claims["aud"]
        # Entra issues one audience per token; a list would mean a token shared with other resources.
        if not isinstance(aud, str) or aud not in self._audiences:
            raise InvalidTokenError("wrong audience")

        tid = claims["tid"]
        if not isinstance(tid, str) or not _GUID.fullmatch(tid):
            raise InvalidTokenError("tid is not a GUID")
        if not _CANONICAL_GUID.fullmatch(tid):
            raise InvalidTokenError("tid is not a lower-case GUID")
        if tid == _NIL_GUID:
            raise InvalidTokenError("tid is the nil GUID")
        iss = claims["iss"]
        if not isinstance(iss, str) or iss != metadata_issuer.replace(TENANT_PLACEHOLDER, tid):
            raise InvalidTokenError("wrong issuer")
        # With a concrete (single-tenant) metadata issuer the substitution is a no-op, so tie iss to tid here.
        if tid not in urlsplit(iss).path.split("/"):
            raise InvalidTokenError("issuer does not match tid")
        if key.issuer is not None and key.issuer.replace(TENANT_PLACEHOLDER, tid) != iss:
            raise InvalidTokenError("signing key not valid for issuer")

        oid = claims["oid"]
        if not isinstance(oid, str) or not _GUID.fullmatch(oid):
            raise InvalidTokenError("oid is not a GUID")
        if oid == _NIL_GUID:
            raise InvalidTokenError("oid is the nil GUID")

        raw_roles = claims.get("roles", [])
        if not isinstance(raw_roles, list) or not all(isinstance(r, str) for r in raw_roles):
            raise InvalidTokenError("malformed claim: roles")
        raw_scp = claims.get("scp", "")
        if not isinstance(raw_scp, str):
            raise InvalidTokenError("malformed claim: scp")
        roles = frozenset(raw_roles)
        scopes = frozenset(raw_scp.split())
        app_only = claims.get("idtyp") == "app"
        if app_only and scopes:
            raise InvalidTokenError("app-only token carries scp")
        if not roles and not scopes:
            # An ID token can pass every check above when the API shares the client's registration (A1).
            raise InvalidTokenError("not an access token")
        if self._operator_tenant is not None and UUID(tid) != self._operator_tenant:
            # Each customer's administrators assign the app's roles in their own directory: this one is the
            # operators' alone, whoever else assigned it.
            roles = roles - {PLATFORM_ADMIN}

        name = claims.get("name")
        return VerifiedToken(
            entra_tenant_id=UUID(tid),
            object_id=UUID(oid),
            roles=roles,
            scopes=scopes,
            app_only=app_only,
            display_name=name if isinstance(name, str) and not app_only else None,
            claims=MappingProxyType(claims),
        )

    # -- keys -----------------------------------------------------------------------------------------------------

    def _signing_key(self, kid: str, *, offline: bool = False) -> tuple[_Key, _Metadata, _KeySet]:
        metadata, key_set = self._metadata, self._key_set
        now = self._clock()
        if (
            metadata is not None
            and key_set is not None
            and _fresh(metadata.fetched_at, now)
            and _fresh(key_set.fetched_at, now)
            and kid in key_set.keys
        ):
            return key_set.keys[kid], metadata, key_set
        if not self._fetch_would_help(kid, metadata, key_set, now):
            # Within the cooldowns, or while another request refreshes, what is cached is the answer: a made-up kid
            # is refused here, on the caller's own thread (the event loop), and holds no worker thread and no lock.
            return _cached_key(kid, metadata, key_set, now)
        if offline:
            raise KeysNotCachedError(kid)
        if self._lock.acquire(blocking=False):
            try:
                return self._refreshed_key(kid)
            finally:
                self._lock.release()
        if _usable(metadata, now) and _usable(key_set, now):
            # Another request is refreshing: this one is answered from the cache rather than queued behind it.
            return _cached_key(kid, metadata, key_set, now)
        # Nothing usable is cached (a cold start, or keys past their stale bound): the refresh in flight is the only
        # way to an answer, so it is awaited, but no longer than its two fetches may take.
        if not self._lock.acquire(timeout=self._refresh_wait_s):
            raise SigningKeysUnavailableError("signing keys unavailable")
        try:
            return self._refreshed_key(kid)
        finally:
            self._lock.release()

    def _fetch_would_help(self, kid: str, metadata: _Metadata | None, key_set: _KeySet | None, now: float) -> bool:
        """Whether `kid` calls for a fetch now: something is due (or missing) and its cooldown is over; while a
        refresh is in flight only when nothing usable is cached, since that refresh is the one fetch allowed."""
        if self._lock.locked():
            return not (_usable(metadata, now) and _usable(key_set, now))
        metadata_due = metadata is None or not _fresh(metadata.fetched_at, now)
        if metadata_due and _cooldown_over(self._last_metadata_attempt, now, self._cooldown_s):
            return True
        keys_due = key_set is None or not _fresh(key_set.fetched_at, now) or kid not in key_set.keys
        return keys_due and self._jwks_cooldown_over(now)

    def _refreshed_key(self, kid: str) -> tuple[_Key, _Metadata, _KeySet]:
        """The key for `kid` once metadata and keys are refreshed as due; called with `_lock` held."""
        # Another thread may have refreshed meanwhile; everything is re-read under the lock.
        now = self._clock()
        metadata = self._current_metadata(now)
        key_set = self._current_key_set(metadata, now)
        key = key_set.keys.get(kid)
        if key is None and self._jwks_cooldown_over(now):
            # Unknown kid: Entra may have rotated. One refetch per cooldown, so a flood of made-up kids
            # cannot turn this service into an amplifier against the identity provider.
            refreshed = self._try_fetch_jwks(metadata, now)
            if refreshed is not None:
                key_set = refreshed
                key = refreshed.keys.get(kid)
        if key is None:
            raise InvalidTokenError("unknown signing key")
        return key, metadata, key_set

    def _jwks_cooldown_over(self, now: float) -> bool:
        return _cooldown_over(self._last_jwks_attempt, now, self._cooldown_s)

    def _current_metadata(self, now: float) -> _Metadata:
        cached = self._metadata
        if cached is not None and _fresh(cached.fetched_at, now):
            return cached
        if _cooldown_over(self._last_metadata_attempt, now, self._cooldown_s):
            self._last_metadata_attempt = now
            try:
                fetched = _parse_metadata(self._fetch(self._metadata_url), now)
            except Exception as exc:
                logger.warning("OpenID metadata refresh failed: %s: %s", type(exc).__name__, exc)
            else:
                if cached is not None and cached.jwks_uri != fetched.jwks_uri:
                    self._key_set = None  # keys from the old location are not vouched for by the new metadata
                self._metadata = fetched
                return fetched
        if cached is not None and _usable(cached, now):
            return cached
        raise SigningKeysUnavailableError("signing keys unavailable")

    def _current_key_set(self, metadata: _Metadata, now: float) -> _KeySet:
        cached = self._key_set
        if cached is not None and _fresh(cached.fetched_at, now):
            return cached
        if self._jwks_cooldown_over(now):
            fetched = self._try_fetch_jwks(metadata, now)
            if fetched is not None:
                return fetched
        if cached is not None and _usable(cached, now):
            return cached
        raise SigningKeysUnavailableError("signing keys unavailable")

    def _try_fetch_jwks(self, metadata: _Metadata, now: float) -> _KeySet | None:
        """Fetch and install the JWKS; None (cache untouched, stale keys keep serving) on failure."""
        self._last_jwks_attempt = now
        try:
            key_set = _parse_jwks(self._fetch(metadata.jwks_uri), now)
        except Exception as exc:
            logger.warning("JWKS refresh failed: %s: %s", type(exc).__name__, exc)
            return None
        self._key_set = key_set
        return key_set


def _numeric_date(value: object) -> float | None:
    return None if isinstance(value, bool) or not isinstance(value, int | float) else float(value)


def _lifetime(claims: Mapping[str, Any], now: float) -> float | None:
    """How long a token is valid for, in seconds: exp - iat, else exp - nbf, else exp - now; None without an exp
    that is a number. A start that is not a number counts as absent (the claim checks refuse it anyway)."""
    expires = _numeric_date(claims.get("exp"))
    if expires is None:
        return None
    start = _numeric_date(claims.get("iat"))
    if start is None:
        start = _numeric_date(claims.get("nbf"))
    return expires - (now if start is None else start)


def _fresh(fetched_at: float, now: float) -> bool:
    return now - fetched_at < _CACHE_TTL_S


def _usable(cached: _Metadata | _KeySet | None, now: float) -> bool:
    """Whether a cached document may still answer: fresh, or past its refresh but within the stale bound."""
    return cached is not None and now - cached.fetched_at < _CACHE_TTL_S + _MAX_STALE_S


def _cooldown_over(last_attempt: float | None, now: float, cooldown_s: float) -> bool:
    """Whether a fetch may be tried again: never tried, or the last try at least `cooldown_s` ago."""
    return last_attempt is None or now - last_attempt >= cooldown_s


def _cached_key(
    kid: str, metadata: _Metadata | None, key_set: _KeySet | None, now: float
) -> tuple[_Key, _Metadata, _KeySet]:
    """The key for `kid` from what is cached, fresh or within the stale bound; 503 with nothing usable, 401 for a
    kid the cached set lacks."""
    if metadata is None or key_set is None or not (_usable(metadata, now) and _usable(key_set, now)):
        raise SigningKeysUnavailableError("signing keys unavailable")
    key = key_set.keys.get(kid)
    if key is None:
        raise InvalidTokenError("unknown signing key")
    return key, metadata, key_set


def _require_fetchable_url(url: str) -> None:
    """https, or http to a loopback host (the devhost): never file:, and never plain http across a network."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS:
        return
    raise ValueError(f"identity URL must be https (or http to localhost): {url!r}")


def _parse_metadata(document: dict[str, Any], now: float) -> _Metadata:
    issuer, jwks_uri = document.get("issuer"), document.get("jwks_uri")
    if not isinstance(issuer, str) or not issuer or not isinstance(jwks_uri, str):
        raise ValueError("OpenID metadata lacks issuer or jwks_uri")
    _require_fetchable_url(jwks_uri)
    return _Metadata(issuer=issuer, jwks_uri=jwks_uri, fetched_at=now)


def _parse_jwks(document: dict[str, Any], now: float) -> _KeySet:
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise ValueError("JWKS lacks a keys list")
    keys: dict[str, _Key] = {}
    for entry in entries:
        parsed = _parse_jwk(entry)
        if parsed is not None and parsed[0] not in keys:
            keys[parsed[0]] = parsed[1]
    if not keys:
        raise ValueError("JWKS has no usable RS256 signing key")
    return _KeySet(keys=MappingProxyType(keys), fetched_at=now)


def _parse_jwk(entry: object) -> tuple[str, _Key] | None:
    """An RSA signing key from a JWK, or None for anything else (other key types are skipped, not fatal)."""
    if not isinstance(entry, dict):
        return None
    kid, issuer = entry.get("kid"), entry.get("issuer")
    if not isinstance(kid, str) or not kid or entry.get("kty") != "RSA":
        return None
    if entry.get("use", "sig") != "sig" or entry.get("alg", ALGORITHM) != ALGORITHM:
        return None
    if issuer is not None and not isinstance(issuer, str):
        return None
    n, e = entry.get("n"), entry.get("e")
    if not isinstance(n, str) or not isinstance(e, str):
        return None
    try:
        # Built from n/e only: x5c certificates on Entra's keys carry the same key and are not needed.
        public_key = rsa.RSAPublicNumbers(_b64url_int(e), _b64url_int(n)).public_key()
    except ValueError:
        return None
    if public_key.key_size < _MIN_RSA_BITS:
        return None
    return kid, _Key(public_key=public_key, issuer=issuer)


def _b64url_int(value: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("bad base64url integer") from exc
    return int.from_bytes(raw, "big")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Metadata and JWKS are never redirected; following one could downgrade to http or leave the provider."""

    # The base class's signature; no argument matters when the answer is always "no".
    def redirect_request(
        self,
        req: urllib.request.Request,  # noqa: ARG002
        fp: IO[bytes],  # noqa: ARG002
        code: int,  # noqa: ARG002
        msg: str,  # noqa: ARG002
        headers: Message,  # noqa: ARG002
        newurl: str,  # noqa: ARG002
    ) -> urllib.request.Request | None:
        return None


_FETCH_PIECE_BYTES = 64 * 1024


def _fetch_json(url: str, timeout_s: float) -> dict[str, Any]:
    """GET a JSON object with the stdlib (the runtime needs no HTTP client dependency), bounded in time and size."""
    _require_fetchable_url(url)
    opener = urllib.request.build_opener(_NoRedirect())
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310 - scheme checked
    # The socket's timeout bounds each read, not the whole answer: one trickling in a byte at a time would hold the
    # refresh (and its lock) for as long as the issuer likes, so the body is read in pieces against a deadline.
    deadline = time.monotonic() + timeout_s
    pieces: list[bytes] = []
    read = 0
    with opener.open(request, timeout=timeout_s) as response:
        while read <= _MAX_DOCUMENT_BYTES and (piece := response.read1(_FETCH_PIECE_BYTES)):
            pieces.append(piece)
            read += len(piece)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} took more than {timeout_s} s to answer")
    body = b"".join(pieces)
    if len(body) > _MAX_DOCUMENT_BYTES:
        raise ValueError(f"{url} returned more than {_MAX_DOCUMENT_BYTES} bytes")
    document = json.loads(body)
    if not isinstance(document, dict):
        raise ValueError(f"{url} did not return a JSON object")
    return document
