# intent_ref: platform.execution
"""Remote module results: a worker completes or fails the attempt its task token was issued for, once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from opentelemetry import trace

from shared.db.session import tenant_transaction
from shared.engine import steps as store
from shared.engine import task_tokens, work_queue
from shared.engine.payloads import claim_check
from shared.engine.steps import Attempt, AttemptKey
from shared.observability.tracing import execution_attributes
from shared.ratelimit import RateDecision, limit_for, take_request_token
from shared.tenants.repository import get_tenant


class TokenRefusedError(Exception):
    """The token does not authorise this result: invalid, expired, foreign, or for another step."""


class TokenUsedError(Exception):
    """The token was used already, or its attempt has ended otherwise (its result is recorded)."""


class LeaseExpiredError(Exception):
    """The token's lease ran out or moved on (ADR 0027): a late result changes nothing."""


_LEASE_GONE = "the lease of this task token has expired or moved on; the result was not recorded"


@dataclass(frozen=True)
class RemoteResult:
    """What a worker reports for an attempt."""

    ok: bool
    output: Any = None
    error: str | None = None
    retryable: bool = True


def _refusal(attempt: Attempt | None, claims: task_tokens.TaskClaims) -> Exception:
    """Why the token's attempt takes no result (it is unknown, spent, expired or ended)."""
    if attempt is None or attempt.key != claims.key:
        return TokenRefusedError("the task token was not issued for any attempt")
    if attempt.token_used_at is not None:
        return TokenUsedError("the task token was used already")
    if attempt.finished:
        return TokenUsedError(f"the attempt has ended ({attempt.state}); its result is recorded already")
    return TokenRefusedError("the task token has expired")


def claims_of(token: str) -> task_tokens.TaskClaims:
    """What the token says, NOT yet verified: only which tenant's key would verify it (no I/O)."""
    try:
        return task_tokens.read_claims(token)
    except task_tokens.InvalidTaskTokenError as exc:
        raise TokenRefusedError(str(exc)) from None


def signing_key(tenant_id: UUID) -> bytes | None:
    """The key that verifies the tenant's tokens: from memory, else read in one short transaction of the tenant.

    Called for a token nobody has verified yet, so the caller bounds how many of these reads run at once."""
    key = task_tokens.memoized_key(tenant_id)
    if key is not None:
        return key
    with tenant_transaction(tenant_id) as conn:
        return task_tokens.existing_key(conn, tenant_id)


def signed_claims(
    token: str, key: bytes | None, execution_id: UUID, step_id: str, phase: str
) -> task_tokens.TaskClaims:
    """The claims of a token signed with `key` (its tenant's), unexpired, and for this execution, step and phase; no
    I/O, so a forged token is refused before it costs its tenant anything."""
    try:
        claims = task_tokens.verify_with(token, key)
    except task_tokens.InvalidTaskTokenError as exc:
        raise TokenRefusedError(str(exc)) from None
    key_of = claims.key
    if key_of.execution_id != execution_id or key_of.step_id != step_id or key_of.phase != phase:
        raise TokenRefusedError("the task token is for another execution or step")
    return claims


def take_rate_token(tenant_id: UUID) -> RateDecision | None:
    """One token of the tenant's request rate, as every request of the tenant takes (in a transaction of its own,
    committed whatever the request does next); None when the tenant is not provisioned (erased since its key was
    read)."""
    with tenant_transaction(tenant_id) as conn:
        tenant = get_tenant(conn, tenant_id)
        if tenant is None:
            return None
        # As shared.ratelimit.take_tenant_token: the bucket is UNLOGGED, so its commit needs no WAL flush.
        conn.execute("SET LOCAL synchronous_commit = off")
        return take_request_token(conn, limit_for(tenant.quotas.model_dump(exclude_none=True)))


def _verified(claims: task_tokens.TaskClaims) -> None:
    """The token's attempt may take a result now: unspent, still open, its lease live. Reads only, so a refusal
    leaves no trace."""
    with tenant_transaction(claims.tenant_id) as conn:
        attempt = store.attempt_by_token(conn, claims.nonce)
        key = claims.key
        if attempt is None or attempt.key != key or attempt.token_used_at is not None or attempt.finished:
            raise _refusal(attempt, claims)
        if not work_queue.lease_is_live(conn, key, claims.nonce):
            raise LeaseExpiredError(_LEASE_GONE)


def complete(
    token: str,
    execution_id: UUID,
    step_id: str,
    phase: str,
    result: RemoteResult,
    *,
    claims: task_tokens.TaskClaims | None = None,
) -> tuple[AttemptKey, dict[str, Any]]:
    """Verify the token for this execution and step (unless `claims` are what `signed_claims` answered for it), then
    store the output, then spend the token and record the result in one transaction; returns the attempt and the
    verdict to raise. The token's tenant is the only tenant touched, and nothing is written for a token that does
    not verify."""
    if claims is None:
        claims = signed_claims(token, signing_key(claims_of(token).tenant_id), execution_id, step_id, phase)
    _verified(claims)
    key = claims.key
    trace.get_current_span().set_attributes(
        execution_attributes(
            tenant_id=claims.tenant_id, execution_id=key.execution_id, step_id=key.step_id, attempt=key.attempt
        )
    )
    # Stored between the two transactions so no connection waits on the blob store. A blob of a request that then
    # loses the spend is content-addressed, so it can never replace the winner's output.
    output = claim_check(claims.tenant_id, claims.key, result.output, for_request=True) if result.ok else None
    with tenant_transaction(claims.tenant_id) as conn:
        if not work_queue.lease_is_live(conn, claims.key, claims.nonce):  # locks the item: no expiry overtakes us
            raise LeaseExpiredError(_LEASE_GONE)
        spent = store.use_task_token(conn, claims.nonce)
        if spent is None or spent.key != claims.key:
            raise _refusal(store.attempt_by_token(conn, claims.nonce), claims)
        attempt, _ = store.finish_attempt(
            conn, claims.key, ok=result.ok, output=output, error=result.error, retryable=result.retryable
        )
    return claims.key, attempt.verdict()
