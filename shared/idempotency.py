# intent_ref: platform.idempotency
"""Idempotency-Key handling: the first request with a key does the work, every retry replays its response."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, replace
from typing import Annotated, Any

import psycopg
from psycopg import sql
from psycopg.rows import DictRow
from psycopg.types.json import Json, Jsonb
from pydantic import AfterValidator, Field

KEY_MAX_LENGTH = 255
KEY_PATTERN = r"^[\x21-\x2b\x2d-\x7e]{1,255}$"
"""Visible ASCII without the comma: a proxy may join repeated header fields with commas, so a comma in a key could
not be told apart from two keys."""
RESERVED_PREFIX = "child:"
"""The platform's own keys (an `intent.run` step's child execution) start with this; a caller's never do, so no
caller can claim a child execution's key before the platform does."""
KEY_FORMAT = (
    f"1 to {KEY_MAX_LENGTH} visible ASCII characters (0x21-0x7E) other than the comma, not starting with "
    f"'{RESERVED_PREFIX}'; a UUID is a good key"
)
_KEY = re.compile(KEY_PATTERN)


def key_problem(key: str) -> str | None:
    """Why `key` is not a valid Idempotency-Key (None when it is one); the one format every way in accepts."""
    if not _KEY.fullmatch(key):
        return f"an Idempotency-Key is {KEY_FORMAT}"
    if key.startswith(RESERVED_PREFIX):
        return f"the prefix '{RESERVED_PREFIX}' is reserved for the platform's own keys"
    return None


def _valid_key(key: str) -> str:
    problem = key_problem(key)
    if problem is not None:
        raise ValueError(problem)
    return key


IdempotencyKey = Annotated[
    str,
    Field(
        min_length=1, max_length=KEY_MAX_LENGTH, pattern=KEY_PATTERN, description=f"An idempotency key: {KEY_FORMAT}."
    ),
    AfterValidator(_valid_key),
]
"""A body field holding an idempotency key, validated like the header."""


class IdempotencyKeyError(ValueError):
    """The key is malformed, or was used before for a different request."""


class InvalidIdempotencyKeyError(IdempotencyKeyError):
    """The key is not in the one accepted format (see `KEY_FORMAT`)."""


class IdempotencyKeyReusedError(IdempotencyKeyError):
    """The key was used before for a different request (method, route or body): the draft standard's 422."""


@dataclass(frozen=True)
class StoredResponse:
    """The response a key's first request produced, replayed to its retries."""

    status: int
    body: Any
    headers: dict[str, str]


def fingerprint(method: str, route: str, body: Any, *, caller: str | None = None) -> str:
    """What a key is bound to: the method, the route and the canonical JSON of the body, and with `caller` who sent
    it (a tenant's keys are the tenant's, so one principal could otherwise replay another's stored answer, a webhook's
    signing secret among them)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.sha256(f"{method} {route}\n{canonical}".encode())
    if caller is None:
        return digest.hexdigest()
    digest.update(f"\n{caller}".encode())
    return _BY_CALLER + digest.hexdigest()


_BY_CALLER = "caller:"
"""Marks a fingerprint bound to its caller; one without it was stored before callers were bound (2026-12-05) and is
matched as it was made, until it expires."""


@dataclass(frozen=True)
class _KeyStatements:
    """The statements of one key store, with named parameters `key`, `fingerprint`, `principal` and the response's."""

    forget_expired: sql.Composed
    insert: sql.Composed
    read: sql.Composed
    complete: sql.Composed

    @classmethod
    def of(cls, table: sql.Identifier, owner_column: str, owner: sql.Composable) -> _KeyStatements:
        """The statements of `table`, whose rows belong to `owner_column` = `owner`."""
        column = sql.Identifier(owner_column)
        mine = sql.SQL("{column} = {owner} AND key = %(key)s").format(column=column, owner=owner)
        names = {"table": table, "column": column, "owner": owner, "mine": mine}
        return cls(
            forget_expired=sql.SQL("DELETE FROM {table} WHERE {mine} AND expires_at < now()").format(**names),
            insert=sql.SQL(
                "INSERT INTO {table} ({column}, key, fingerprint) VALUES ({owner}, %(key)s, %(fingerprint)s)"
                " ON CONFLICT DO NOTHING RETURNING key"
            ).format(**names),
            read=sql.SQL(
                "SELECT fingerprint, response_status, response_body, response_headers FROM {table} WHERE {mine}"
            ).format(**names),
            complete=sql.SQL(
                "UPDATE {table} SET response_status = %(status)s, response_body = %(body)s,"
                " response_headers = %(headers)s WHERE {mine}"
            ).format(**names),
        )


# The pinned tenant's keys (row-level security scopes them too), and the control plane's, where no tenant is pinned:
# each principal's own (migration 0024).
# A tenant's expired key is forgotten through the pinned tenant's function (migration 0046): DELETE on the table would
# let a tenant's transaction LOCK it against every tenant.
_TENANT_KEYS = replace(
    _KeyStatements.of(sql.Identifier("app", "idempotency_keys"), "tenant_id", sql.SQL("app.current_tenant_id()")),
    forget_expired=sql.SQL("SELECT app.forget_expired_idempotency_key(%(key)s)").format(),
)
_PRINCIPAL_KEYS = _KeyStatements.of(
    sql.Identifier("control", "idempotency_keys"), "principal_id", sql.Placeholder("principal")
)


def _statements(principal: str | None) -> _KeyStatements:
    return _TENANT_KEYS if principal is None else _PRINCIPAL_KEYS


def claim(
    conn: psycopg.Connection[DictRow],
    key: str,
    request_fingerprint: str,
    *,
    principal: str | None = None,
    legacy_fingerprint: str | None = None,
) -> StoredResponse | None:
    """Claim `key` inside the caller's transaction; None means "do the work", else replay this response.

    The key is the pinned tenant's, or with `principal` that principal's (a control-plane transaction, which pins
    no tenant). The insert holds the key's row until the transaction ends, so a concurrent duplicate waits here and
    then sees the completed response: the work runs once. `legacy_fingerprint`: what the same request's key was
    bound to before callers were, accepted for a key stored then.
    """
    statements, params = _unexpired(conn, key, request_fingerprint, principal)
    if conn.execute(statements.insert, params).fetchone() is not None:
        return None
    row = conn.execute(statements.read, params).fetchone()
    assert row is not None  # the conflicting row is committed and visible to this owner
    answer = _kept_answer(row, request_fingerprint, legacy_fingerprint)
    if answer is None:
        # Only possible if the first request's transaction committed without completing the key: a bug.
        raise RuntimeError("idempotency key claimed but never completed")
    return answer


def kept(
    conn: psycopg.Connection[DictRow],
    key: str,
    request_fingerprint: str,
    *,
    principal: str | None = None,
    legacy_fingerprint: str | None = None,
) -> StoredResponse | None:
    """The answer kept for `key`, read without claiming it (None when none is kept): for a route that must know
    whether a request is a retry before work it does outside its transaction (a webhook URL's lookup). The same key
    with another request is IdempotencyKeyReusedError, as `claim` answers it."""
    statements, params = _unexpired(conn, key, request_fingerprint, principal)
    row = conn.execute(statements.read, params).fetchone()
    return None if row is None else _kept_answer(row, request_fingerprint, legacy_fingerprint)


def _unexpired(
    conn: psycopg.Connection[DictRow], key: str, request_fingerprint: str, principal: str | None
) -> tuple[_KeyStatements, dict[str, Any]]:
    """The key's statements and parameters, once the key is checked (InvalidIdempotencyKeyError) and forgotten if it
    has expired, so that it may be used again."""
    problem = key_problem(key)
    if problem is not None:
        raise InvalidIdempotencyKeyError(problem)
    statements = _statements(principal)
    params: dict[str, Any] = {"key": key, "fingerprint": request_fingerprint, "principal": principal}
    conn.execute(statements.forget_expired, params)
    return statements, params


def _kept_answer(row: DictRow, request_fingerprint: str, legacy_fingerprint: str | None) -> StoredResponse | None:
    """A key's row as its answer (None while its first request has not completed it); IdempotencyKeyReusedError when
    the row was made for another request."""
    if row["fingerprint"] not in (request_fingerprint, legacy_fingerprint):
        raise IdempotencyKeyReusedError("this Idempotency-Key was used for a different request")
    if row["response_status"] is None:
        return None
    return StoredResponse(int(row["response_status"]), row["response_body"], dict(row["response_headers"]))


def complete(
    conn: psycopg.Connection[DictRow], key: str, response: StoredResponse, *, principal: str | None = None
) -> None:
    """Store the response of the work `key` guarded, in the same transaction as that work."""
    conn.execute(
        _statements(principal).complete,
        {
            "key": key,
            "principal": principal,
            "status": response.status,
            # `json`, not `jsonb` (migration 0059): the body is replayed with its keys in the order first answered.
            "body": Json(response.body),
            "headers": Jsonb(response.headers),
        },
    )
