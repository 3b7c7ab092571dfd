# intent_ref: platform.execution
"""Remote module results: a worker completes or fails the attempt its task token was issued for, once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from shared.db.session import tenant_transaction
from shared.engine import steps as store
from shared.engine import task_tokens
from shared.engine.payloads import claim_check
from shared.engine.steps import AttemptKey
from shared.tenants.repository import get_tenant


class TokenRefusedError(Exception):
    """The token does not authorise this result: invalid, expired, foreign, or for another step."""


class TokenUsedError(Exception):
    """The token was used already (its attempt's result is recorded)."""


@dataclass(frozen=True)
class RemoteResult:
    """What a worker reports for an attempt."""

    ok: bool
    output: Any = None
    error: str | None = None
    retryable: bool = True


def complete(token: str, execution_id: UUID, step_id: str, phase: str, result: RemoteResult
             ) -> tuple[AttemptKey, dict[str, Any]]:
    """Verify the token for this execution and step, spend it, and record the result; returns the attempt and the
    verdict to raise. The token's tenant is the only tenant touched."""
    try:
        claims = task_tokens.read_claims(token)
    except task_tokens.InvalidTaskTokenError as exc:
        raise TokenRefusedError(str(exc)) from None
    key = claims.key
    if key.execution_id != execution_id or key.step_id != step_id or key.phase != phase:
        raise TokenRefusedError("the task token is for another execution or step")
    output = claim_check(claims.tenant_id, key, result.output) if result.ok else None
    with tenant_transaction(claims.tenant_id) as conn:
        tenant = get_tenant(conn, claims.tenant_id)
        if tenant is None:
            raise TokenRefusedError("the task token's tenant is not provisioned")
        try:
            task_tokens.verify(conn, token)
        except task_tokens.InvalidTaskTokenError as exc:
            raise TokenRefusedError(str(exc)) from None
        if store.use_task_token(conn, claims.nonce) is None:
            spent = store.attempt_by_token(conn, claims.nonce)
            if spent is None:
                raise TokenRefusedError("the task token was not issued for any attempt")
            raise TokenUsedError("the task token was used already")
        attempt, _ = store.finish_attempt(conn, key, ok=result.ok, output=output, error=result.error,
                                          retryable=result.retryable)
    return key, attempt.verdict()
