# intent_ref: platform.execution
"""Task tokens for remote module work: signed per tenant, bound to one step attempt, single use, expiring."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

import psycopg
from psycopg.rows import DictRow

from shared import accepted_json
from shared.engine.steps import AttemptKey
from shared.sealing import SealedFor, Sealer, sealer

Conn = psycopg.Connection[DictRow]
PREFIX = "qpt1"
_KEY_BYTES = 32
KEY_MEMO_S = 5.0
"""How long a process signs and verifies with a tenant's key from memory before it reads the row again: the bound on
how long a key erased with its tenant (or deleted by an operator) still verifies here (ADR 0027, amended)."""
KEY_MEMO_MAX = 10_000
_CREATE_KEY = (
    "INSERT INTO app.task_token_keys (tenant_id, sealed_secret) VALUES (app.current_tenant_id(), %s)"
    " ON CONFLICT DO NOTHING"
)
_READ_KEY = "SELECT secret, sealed_secret FROM app.task_token_keys"  # RLS: the current tenant's row only
# A key kept in plain text (before migration 0031) or sealed with another key than the current one.
_KEY_TO_SEAL = (
    "SELECT secret, sealed_secret FROM app.task_token_keys"
    " WHERE sealed_secret IS NULL OR NOT starts_with(sealed_secret, %s) FOR UPDATE"
)
_SEAL_KEY = "UPDATE app.task_token_keys SET sealed_secret = %s, secret = NULL"


class InvalidTaskTokenError(Exception):
    """The token is malformed, forged, expired, or not for this tenant, execution or step."""


@dataclass(frozen=True)
class TaskClaims:
    """What a token says: the tenant, the attempt it completes, its nonce and expiry."""

    tenant_id: UUID
    key: AttemptKey
    nonce: str
    expires_at: datetime


@dataclass(frozen=True)
class IssuedToken:
    """A new token and what the attempt row stores of it."""

    token: str
    nonce: str
    expires_at: datetime


class _KeyMemo:
    """Tenants' keys as last read, each trusted for `ttl_s`. Only keys that exist are kept: a token naming a tenant
    without one is refused by a read the caller bounds, never by a remembered absence, which would refuse a real
    token for `ttl_s` after another process created the key."""

    def __init__(self, ttl_s: float, max_keys: int) -> None:
        self._ttl_s, self._max_keys = ttl_s, max_keys
        self._lock = threading.Lock()
        self._read: OrderedDict[UUID, tuple[float, bytes]] = OrderedDict()

    def fresh(self, tenant_id: UUID) -> bytes | None:
        """The key while it is trusted, else None (no I/O)."""
        with self._lock:
            hit = self._read.get(tenant_id)
        if hit is None or time.monotonic() - hit[0] >= self._ttl_s:
            return None
        return hit[1]

    def known(self, tenant_id: UUID) -> bool:
        """Whether the tenant had a key when last read, trusted still or not."""
        with self._lock:
            return tenant_id in self._read

    def put(self, tenant_id: UUID, key: bytes, read_at: float) -> None:
        with self._lock:
            self._read[tenant_id] = (read_at, key)
            self._read.move_to_end(tenant_id)
            while len(self._read) > self._max_keys:
                self._read.popitem(last=False)

    def forget(self, tenant_id: UUID) -> None:
        with self._lock:
            self._read.pop(tenant_id, None)

    def clear(self) -> None:
        with self._lock:
            self._read.clear()


_keys = _KeyMemo(KEY_MEMO_S, KEY_MEMO_MAX)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sealed_for(tenant_id: UUID) -> SealedFor:
    return SealedFor("task-token-key", tenant_id, "signing")


def _opened(row: DictRow, tenant_id: UUID, keys: Sealer) -> bytes:
    """The key a row keeps: sealed, or in plain text until the sealing timer gets to it (migration 0031)."""
    if row["sealed_secret"] is not None:
        return keys.open(row["sealed_secret"], _sealed_for(tenant_id))
    return bytes(row["secret"])


def tenant_key(conn: Conn, tenant_id: UUID) -> bytes:
    """The tenant's signing key, created on first use (inside the caller's tenant transaction), kept sealed.

    For signing, which the caller does for its own tenant in that tenant's transaction: the memory answers without
    asking whose the transaction is (a lease signs a token per item). Verifying goes through `existing_key`."""
    key = _keys.fresh(tenant_id) or _read_key(conn, tenant_id)
    if key is not None:
        return key
    keys = sealer()
    read_at = time.monotonic()
    conn.execute(_CREATE_KEY, (keys.seal(secrets.token_bytes(_KEY_BYTES), _sealed_for(tenant_id)),))
    row = conn.execute(_READ_KEY).fetchone()
    assert row is not None  # inserted or already there, and visible to this tenant
    key = _opened(row, tenant_id, keys)
    _keys.put(tenant_id, key, read_at)
    return key


def memoized_key(tenant_id: UUID) -> bytes | None:
    """The tenant's key as this process read it less than KEY_MEMO_S ago; None when it must be read (no I/O)."""
    return _keys.fresh(tenant_id)


def had_key(tenant_id: UUID) -> bool:
    """Whether this process has read a key of the tenant (since expired or not): a read for it is a refresh."""
    return _keys.known(tenant_id)


_PINNED_TO = "SELECT app.current_tenant_id() IS NOT DISTINCT FROM %s AS pinned"


def existing_key(conn: Conn, tenant_id: UUID) -> bytes | None:
    """The tenant's signing key if it has one: verifying writes nothing, and a tenant without one issued no token.

    Only in a transaction of `tenant_id`: in another tenant's (or none's), None, so nothing verifies there. The key
    from memory is the process's, not the transaction's, so it answers only once the transaction is known to be the
    tenant's (one short statement, where the read it saves would have been one as well, and unsealing)."""
    cached = _keys.fresh(tenant_id)
    if cached is not None:
        row = conn.execute(_PINNED_TO, (tenant_id,)).fetchone()
        return cached if row is not None and row["pinned"] else None
    return _read_key(conn, tenant_id)


def _read_key(conn: Conn, tenant_id: UUID) -> bytes | None:
    """The tenant's key as its row holds it, remembered for KEY_MEMO_S; None when the row is not there, or not
    visible in this transaction."""
    # Taken before the read: a row deleted while it runs is trusted no longer than KEY_MEMO_S after the read began.
    read_at = time.monotonic()
    # Named as well as filtered by RLS: a transaction of another tenant finds no key, so nothing verifies there.
    row = conn.execute(_READ_KEY + " WHERE tenant_id = %s", (tenant_id,)).fetchone()
    if row is None:
        _keys.forget(tenant_id)
        return None
    key = _opened(row, tenant_id, sealer())
    _keys.put(tenant_id, key, read_at)
    return key


def seal_key(conn: Conn, tenant_id: UUID, keys: Sealer) -> int:
    """Seal the tenant's key with the current sealing key if it is not yet (inside its tenant transaction); 1 when
    it was sealed now. The key itself stays the same, so every token it signed still verifies."""
    row = conn.execute(_KEY_TO_SEAL, (keys.current_prefix,)).fetchone()
    if row is None:
        return 0
    conn.execute(_SEAL_KEY, (keys.seal(_opened(row, tenant_id, keys), _sealed_for(tenant_id)),))
    return 1


def _signature(key: bytes, payload: str) -> str:
    return _b64(hmac.new(key, f"{PREFIX}.{payload}".encode("ascii"), hashlib.sha256).digest())


def issue(
    conn: Conn,
    tenant_id: UUID,
    key: AttemptKey,
    ttl_s: int,
    *,
    now: datetime | None = None,
    nonce: str | None = None,
    expires_at: datetime | None = None,
) -> IssuedToken:
    """A token for one attempt, valid `ttl_s` seconds; its nonce goes on the attempt row (single use).

    Given the `nonce` and `expires_at` of a token issued before, it is that same token again (the signature is
    deterministic), so work published twice carries one token.
    """
    nonce = nonce or secrets.token_urlsafe(18)
    expires_at = expires_at or (now or datetime.now(UTC)) + timedelta(seconds=ttl_s)
    claims = {
        "t": str(tenant_id),
        "e": str(key.execution_id),
        "s": key.step_id,
        "p": key.phase,
        "a": key.attempt,
        "n": nonce,
        "x": int(expires_at.timestamp()),
    }
    payload = _b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    return IssuedToken(f"{PREFIX}.{payload}.{_signature(tenant_key(conn, tenant_id), payload)}", nonce, expires_at)


_LAST_EXPIRY = int(datetime(9999, 1, 1, tzinfo=UTC).timestamp())
_LAST_ATTEMPT = 2**31 - 1  # the attempt columns are Postgres integers


def _whole(value: object, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high  # bool, float and NaN are not claims issue() writes


def read_claims(token: str) -> TaskClaims:
    """The token's claims, NOT yet verified: only to find the tenant whose key verifies it."""
    parts = token.split(".")
    # Tokens are ASCII by construction; anything else would reach the signature comparison, which refuses non-ASCII.
    if not token.isascii() or len(parts) != 3 or parts[0] != PREFIX or len(token) > 2048:
        raise InvalidTaskTokenError("not a task token")
    try:
        raw = accepted_json.loads(_unb64(parts[1]))
        phase, attempt, expiry = raw["p"], raw["a"], raw["x"]
        if (
            phase not in ("run", "compensate")
            or not _whole(attempt, 1, _LAST_ATTEMPT)
            or not _whole(expiry, 0, _LAST_EXPIRY)
        ):
            raise ValueError("claims out of range")
        key = AttemptKey(UUID(raw["e"]), str(raw["s"]), phase, attempt)
        return TaskClaims(UUID(raw["t"]), key, str(raw["n"]), datetime.fromtimestamp(expiry, UTC))
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError, binascii.Error):
        raise InvalidTaskTokenError("not a task token") from None


def verify(conn: Conn, token: str, *, now: datetime | None = None) -> TaskClaims:
    """Claims of a token signed with the current tenant's key and not expired; InvalidTaskTokenError otherwise.

    Single use is the caller's part: it spends the nonce in the same transaction as the result it records.
    """
    return verify_with(token, existing_key(conn, read_claims(token).tenant_id), now=now)


def verify_with(token: str, key: bytes | None, *, now: datetime | None = None) -> TaskClaims:
    """As `verify`, with the key of the tenant the token names already at hand (None: it has none); no I/O."""
    claims = read_claims(token)
    payload, signature = token.split(".")[1:]
    if key is None or not hmac.compare_digest(signature, _signature(key, payload)):
        raise InvalidTaskTokenError("the task token's signature does not verify")
    if claims.expires_at <= (now or datetime.now(UTC)):
        raise InvalidTaskTokenError("the task token has expired")
    return claims
