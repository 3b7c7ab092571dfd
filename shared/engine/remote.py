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


def _verified(token: str, execution_id: UUID, step_id: str, phase: str) -> task_tokens.TaskClaims:
    """The claims of a token that may record a result now: signed with its tenant's key, unexpired, for this
    execution, step and phase, unspent, and its attempt still open. Reads only, so a refusal leaves no trace."""
    try:
        claims = task_tokens.read_claims(token)
    except task_tokens.InvalidTaskTokenError as exc:
        raise TokenRefusedError(str(exc)) from None
    with tenant_transaction(claims.tenant_id) as conn:
        if get_tenant(conn, claims.tenant_id) is None:
            raise TokenRefusedError("the task token's tenant is not provisioned")
        try:
            task_tokens.verify(conn, token)
        except task_tokens.InvalidTaskTokenError as exc:
            raise TokenRefusedError(str(exc)) from None
        key = claims.key
        if key.execution_id != execution_id or key.step_id != step_id or key.phase != phase:
            raise TokenRefusedError("the task token is for another execution or step")
        attempt = store.attempt_by_token(conn, claims.nonce)
        if attempt is None or attempt.key != key or attempt.token_used_at is not None or attempt.finished:
            raise _refusal(attempt, claims)
        if not work_queue.lease_is_live(conn, key, claims.nonce):
            raise LeaseExpiredError(_LEASE_GONE)
    return claims


def complete(
    token: str, execution_id: UUID, step_id: str, phase: str, result: RemoteResult
) -> tuple[AttemptKey, dict[str, Any]]:
    """Verify the token for this execution and step, then store the output, then spend the token and record the
    result in one transaction; returns the attempt and the verdict to raise. The token's tenant is the only tenant
    touched, and nothing is written for a token that does not verify."""
    claims = _verified(token, execution_id, step_id, phase)
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
