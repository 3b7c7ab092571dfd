# intent_ref: platform.execution
"""Remote module results: a worker completes or fails the attempt its task token was issued for, once."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard
from uuid import UUID

import psycopg
from opentelemetry import trace
from psycopg_pool import ConnectionPool

from shared.accepted_json import same_json
from shared.config import get_settings
from shared.db.session import tenant_transaction
from shared.engine import steps as store
from shared.engine import task_tokens, work_queue
from shared.engine.dispatch_results import raised_verdict
from shared.engine.executions import TERMINAL
from shared.engine.payloads import (
    BLOB_REF,
    StoredOutputError,
    TenantErasedError,
    claim_check,
    discard,
    is_blob_ref,
    load,
)
from shared.engine.protocol import EventRaiser, no_one_to_tell
from shared.engine.steps import Attempt, AttemptKey
from shared.observability.tracing import execution_attributes
from shared.ratelimit import RateDecision, limit_for, take_request_token
from shared.storage.blob import request_container
from shared.tenants.repository import get_tenant

logger = logging.getLogger(__name__)


class TokenRefusedError(Exception):
    """The token does not authorise this result: invalid, expired, foreign, or for another step."""


class TokenUsedError(Exception):
    """The token was used already, or its attempt has a result recorded otherwise."""


class LeaseExpiredError(Exception):
    """The token's lease ran out or moved on, or its attempt ended without a result (ADR 0027): a late result
    changes nothing."""


_LEASE_GONE = "the lease of this task token has expired or moved on; the result was not recorded"
EXECUTION_ENDED = "the attempt's execution has ended; nothing was recorded"
"""Why an open attempt of an ended execution takes no result and no heartbeat (409 `lease-expired`)."""
_EXECUTION_STATUS = "SELECT status FROM app.executions WHERE id = %s"
_EXECUTION_STATUS_HELD = "SELECT status FROM app.executions WHERE id = %s FOR NO KEY UPDATE"
_ITEM_EXECUTION_ENDED = (
    "SELECT 1 FROM app.work_items w JOIN app.step_attempts a ON a.tenant_id = w.tenant_id"
    " AND a.execution_id = w.execution_id AND a.step_id = w.step_id AND a.phase = w.phase AND a.attempt = w.attempt"
    " JOIN app.executions e ON e.tenant_id = w.tenant_id AND e.id = w.execution_id"
    " WHERE w.id = %s AND w.lease_id = %s AND a.state = 'dispatched'"
    " AND e.status IN ('succeeded', 'failed', 'cancelled')"
)


@dataclass(frozen=True)
class RemoteResult:
    """What a worker reports for an attempt."""

    ok: bool
    output: Any = None
    error: str | None = None
    retryable: bool = True


def _refusal(attempt: Attempt | None, claims: task_tokens.TaskClaims) -> Exception:
    """Why the token's attempt takes no result: it is unknown, or the token spent or expired (TokenUsedError only for
    a result recorded already), or the attempt ended without one (LeaseExpiredError: timed out or abandoned)."""
    if attempt is None or attempt.key != claims.key:
        return TokenRefusedError("the task token was not issued for any attempt")
    if attempt.token_used_at is not None:
        return TokenUsedError("the task token was used already")
    if attempt.state == "timed_out":
        # Ended by its lease's expiry (a lease poll or the sweeper ends it, ADR 0027), or by its step's timeout, which
        # bounds the lease too: the token was never used, so the answer is a late result's, as before that end.
        return LeaseExpiredError(
            "the lease of this task token has expired: the attempt has ended (timed_out); the result was not recorded"
        )
    if attempt.state == "abandoned":
        # Ended by a cancel or by its execution's end, before any result: nothing is recorded for it.
        why = f" ({attempt.error})" if attempt.error else ""
        return LeaseExpiredError(f"the attempt was abandoned{why}; the result was not recorded")
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


def _spent_on(attempt: Attempt | None, claims: task_tokens.TaskClaims) -> TypeGuard[Attempt]:
    """Whether the token was spent on its own attempt, so the attempt's result is the one reported with it: the spend
    and the result are written in one transaction, and the spend only takes an attempt without a result."""
    return (
        attempt is not None
        and attempt.key == claims.key
        and attempt.token_used_at is not None
        and attempt.state in ("succeeded", "failed")
    )


def _same_output(tenant_id: UUID, recorded: Any, sent: Any) -> bool:
    if is_blob_ref(recorded):
        # The reference names the digest of the bytes claim_check stored: hashing what is sent again finds out
        # without storing anything, so a repeat with another output leaves no blob behind.
        body = json.dumps(sent, separators=(",", ":"), ensure_ascii=False).encode()
        ref = recorded[BLOB_REF]
        if isinstance(ref, dict) and ref.get("sha256") == hashlib.sha256(body).hexdigest():
            return True
        # The same value sent with its members in another order, or 1 for 1.0, has other bytes: compared as JSON
        # values, as an inline output is (read from the tenant's own prefix only, within the size it names).
        try:
            recorded = load(recorded, tenant_id, container=request_container(get_settings()))
        except StoredOutputError:
            # Its digest differs and the bytes it was made from are gone or altered: nothing can show the two are
            # the same, so this is another result for a spent token (a 409), not a failure of the platform's.
            return False
    return same_json(recorded, sent)


def _repeated(tenant_id: UUID, attempt: Attempt, result: RemoteResult) -> Attempt:
    """The recorded attempt, whose verdict is raised again unless a raise of it was accepted already, when `result`
    is the one the token recorded: a worker that got no answer, or a 503 because the verdict could not be raised,
    sends it again, and only a repeat can get the verdict raised again. Any other result for a spent token is
    refused, as before."""
    if result.ok:
        same = attempt.state == "succeeded" and _same_output(tenant_id, attempt.output, result.output)
    else:
        same = attempt.state == "failed" and attempt.error == result.error and attempt.retryable == result.retryable
    if not same:
        raise TokenUsedError("the task token was used already, with another result")
    return attempt


def _verified(claims: task_tokens.TaskClaims) -> Attempt | None:
    """None when the token's attempt may take a result now: unspent, still open, its lease live. The attempt when
    the token was spent on it already, for the caller to compare with what is sent now: its lease may have run out
    since, and that must not keep the recorded result from being raised again. Reads only, so a refusal leaves no
    trace."""
    with tenant_transaction(claims.tenant_id) as conn:
        attempt = store.attempt_by_token(conn, claims.nonce)
        if _spent_on(attempt, claims):
            return attempt
        key = claims.key
        if attempt is None or attempt.key != key or attempt.token_used_at is not None or attempt.finished:
            raise _refusal(attempt, claims)
        if not work_queue.lease_is_live(conn, key, claims.nonce):
            raise LeaseExpiredError(_LEASE_GONE)
        if _execution_ended(conn, key.execution_id):
            raise LeaseExpiredError(EXECUTION_ENDED)
    return None


def _execution_ended(conn: psycopg.Connection[Any], execution_id: UUID, *, hold: bool = False) -> bool:
    """Whether the execution has ended: an attempt of it left open takes no result, as the built-in worker's claim
    of one is refused (`steps.claim`). `hold` locks its row as the result's event will (FOR NO KEY UPDATE: a share
    lock upgraded by two recorders of one execution at once would deadlock them)."""
    held = conn.execute(_EXECUTION_STATUS_HELD if hold else _EXECUTION_STATUS, (execution_id,)).fetchone()
    return held is not None and held["status"] in TERMINAL


def lease_of_an_ended_execution(conn: psycopg.Connection[Any], item_id: UUID, lease_id: UUID) -> bool:
    """Whether the work item is held under `lease_id` for an open attempt whose execution has ended: its heartbeat
    is refused as its result would be (an ended attempt, or another lease, keeps the heartbeat's own answer)."""
    return conn.execute(_ITEM_EXECUTION_ENDED, (item_id, lease_id)).fetchone() is not None


@dataclass(frozen=True)
class Recorded:
    """A result as `record` answers it: the attempt, its verdict, and whether that is still to be raised."""

    key: AttemptKey
    verdict: dict[str, Any]
    to_raise: bool = True
    """False for a repeat of a result whose raise the task hub accepted already (`mark_handed_over`): the event is
    the run's to take, and raising it again only lengthens the orchestration's history."""


def mark_handed_over(tenant_id: UUID, handed: AttemptKey | UUID, *, pool: ConnectionPool[Any] | None = None) -> None:
    """Record that what was raised reached its orchestration (the task hub accepted the raise, or answered that the
    orchestration is gone): an attempt's result (a remote result, an approval decision) for an AttemptKey, the
    execution's cancel for an execution id. A short transaction of its own, after the raise; repeats then raise
    nothing. A mark that fails is logged and dropped: without it a repeat raises the event once more, which the run
    counts for nothing."""
    try:
        with tenant_transaction(tenant_id, pool=pool) as conn:
            # Lost in a crash, the mark costs one more raise of a repeat, as a failed one does.
            conn.execute("SET LOCAL synchronous_commit = off")
            if isinstance(handed, AttemptKey):
                store.mark_handed_over(conn, handed)
            else:
                store.mark_cancel_handed_over(conn, handed)
    except psycopg.Error as exc:
        logger.warning("%s raised but not marked as handed over: %s", handed, exc)


RAISES_AT_ONCE = 16
"""How many verdicts one hand-over raises at once: a poll's round ends up to 150 attempts, and one after another a
slow task hub held the answer for each raise in turn."""
CANCEL_GRACE_S = 1.0
"""How long raises cut off by a hand-over's bound get to unwind (each cancelled, its HTTP call closed)."""


async def _raised(client: EventRaiser, attempt: Attempt, gate: asyncio.Semaphore) -> bool:
    """Raise one verdict: True when the task hub took it, or answered that its orchestration has ended or never
    existed (nobody waits for it, and a retry cannot deliver it); False when it may pass (tried again later)."""
    key = attempt.key
    async with gate:
        try:
            await client.raise_event(str(key.execution_id), key.event_name, attempt.verdict())
        except Exception as exc:
            if no_one_to_tell(exc):
                logger.warning("verdict %s not raised to %s: %s", key.event_name, key.execution_id, exc)
                return True
            logger.warning("could not raise verdict %s to %s: %s", key.event_name, key.execution_id, exc)
            return False
    return True


def mark_verdicts_handed_over(
    tenant_id: UUID, keys: Sequence[AttemptKey], pool: ConnectionPool[Any] | None = None
) -> None:
    """`mark_handed_over` for the attempts a lease expiry, a heartbeat's cancel or a stale item ended (work_queue):
    one short transaction for all of them. A mark that fails is logged and dropped: the sweeper raises those
    verdicts once more, which the run counts for nothing."""
    try:
        with tenant_transaction(tenant_id, pool=pool) as conn:
            conn.execute("SET LOCAL synchronous_commit = off")  # lost in a crash, it costs one more raise
            work_queue.mark_handed_over(conn, keys)
    except psycopg.Error as exc:
        logger.warning("%d verdicts raised but not marked as handed over: %s", len(keys), exc)


async def hand_over_verdicts(
    client: EventRaiser,
    tenant_id: UUID,
    attempts: Sequence[Attempt],
    *,
    within_s: float,
    pool: ConnectionPool[Any] | None = None,
) -> int:
    """Raise the verdicts of attempts that work_queue ended (each marked `raising` as it ended) to their
    orchestrations, RAISES_AT_ONCE at a time and for `within_s` in all, then mark those the task hub took as handed
    over; answers how many. A raise that failed, or that the bound cut off, stays `raising`: the sweeper raises it
    again (`work_queue.raising_verdicts`). The bound keeps a slow task hub from holding the caller's answer: a lease
    poll's leases run from its commit, before these raises. Cancelled (its caller's own bound), it cancels its raises
    before it ends, as the bound does."""
    if not attempts:
        return 0
    gate = asyncio.Semaphore(RAISES_AT_ONCE)
    tasks = [asyncio.ensure_future(_raised(client, attempt, gate)) for attempt in attempts]
    try:
        await asyncio.wait(tasks, timeout=within_s)
    finally:
        # Cut off by the bound, or by its caller's own (the sweeper's tell of a child's cancel cancels this): the
        # raises not done, each holding an HTTP call, are not left running on after it; the sweeper raises them again.
        late = [task for task in tasks if not task.done()]
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=CANCEL_GRACE_S)
    if late:
        logger.warning("%d verdicts not handed over within %s s; the sweeper raises them again", len(late), within_s)
    handed = [
        attempt.key
        for attempt, task in zip(attempts, tasks, strict=True)
        if task.done() and not task.cancelled() and task.result()
    ]
    if handed:
        await asyncio.to_thread(mark_verdicts_handed_over, tenant_id, handed, pool)
    return len(handed)


def record(
    token: str,
    execution_id: UUID,
    step_id: str,
    phase: str,
    result: RemoteResult,
    *,
    claims: task_tokens.TaskClaims | None = None,
) -> Recorded:
    """Verify the token for this execution and step (unless `claims` are what `signed_claims` answered for it), then
    store the output, then spend the token and record the result in one transaction; returns the attempt and the
    verdict to raise. The token's tenant is the only tenant touched, and nothing is written for a token that does
    not verify.

    A repeat of the result the token recorded (the same outcome and output, or error and retryable) writes nothing
    and returns the recorded verdict, to be raised again only while no raise of it was accepted (`to_raise`): a
    worker whose hand-over was lost gets it raised, and one that repeats a result the run has gets its 200 and
    nothing more. Another result for a spent token is TokenUsedError. An open attempt of an execution that has ended
    takes no result (LeaseExpiredError). A stored output that no record names (the spend refused, or a repeat in
    other bytes) is removed again."""
    if claims is None:
        claims = signed_claims(token, signing_key(claims_of(token).tenant_id), execution_id, step_id, phase)
    recorded = _verified(claims)
    key = claims.key
    trace.get_current_span().set_attributes(
        execution_attributes(
            tenant_id=claims.tenant_id, execution_id=key.execution_id, step_id=key.step_id, attempt=key.attempt
        )
    )
    if recorded is not None:
        repeated = _repeated(claims.tenant_id, recorded, result)  # outside a transaction: it may read the blob store
        if repeated.state == "succeeded" or not repeated.raised_by_recorder:
            return Recorded(key, repeated.verdict(), repeated.raised_by_recorder)
        with tenant_transaction(claims.tenant_id) as conn:  # a failure says whether a cancel was recorded (rules 7)
            return Recorded(key, raised_verdict(conn, repeated))
    # Stored between the two transactions so no connection waits on the blob store, in the lease's own folder: a
    # blob of a request that then loses the spend is content-addressed, so it can never replace the winner's output,
    # and no other request's output can be named so, so the loser removes it.
    try:
        output = (
            claim_check(
                claims.tenant_id,
                claims.key,
                result.output,
                for_request=True,
                folder=lease_folder(claims.key, claims.nonce),
            )
            if result.ok
            else None
        )
    except TenantErasedError:
        raise LeaseExpiredError(_LEASE_GONE) from None  # erased since the token verified: its lease went with it
    try:
        done = _spend(claims, result, output)
    except (TokenRefusedError, TokenUsedError, LeaseExpiredError):
        _discard_refused(claims, output)
        raise
    if is_blob_ref(output) and done.verdict.get("output") != output:
        _discard_refused(claims, output)  # a repeat of the result a copy recorded, in other bytes (members reordered)
    return done


def lease_folder(key: AttemptKey, nonce: str) -> str:
    """The folder, under its execution's outputs, of what results sent under one lease (its token's nonce) store:
    only copies of a request with that very token name a blob there."""
    return f"{key.step_id}/{key.phase}-{key.attempt}/lease-{nonce}"


def _discard_refused(claims: task_tokens.TaskClaims, output: Any) -> None:
    """Remove the blob of a result whose spend was refused, unless a copy of the request (the same token, the same
    bytes, so the same name) recorded it. Read after the refusal, which is final: the lease ended or the token was
    spent, so no later request can record the name. Left to the tenant's erasure when the read fails."""
    if not is_blob_ref(output):
        return
    try:
        with tenant_transaction(claims.tenant_id) as conn:
            attempt = store.attempt_by_token(conn, claims.nonce)
    except psycopg.Error as exc:
        logger.warning("the output of a refused result was kept: its attempt could not be read: %s", exc)
        return
    if attempt is not None and is_blob_ref(attempt.output) and attempt.output[BLOB_REF] == output[BLOB_REF]:
        return
    discard(claims.tenant_id, output, request_container(get_settings()))


def _spend(claims: task_tokens.TaskClaims, result: RemoteResult, output: Any) -> Recorded:
    """Spend the token and record the result with its stored `output`, in one transaction: a copy of the request
    that spent it first is answered as the repeat it is; anything else that took the token or ended the lease
    meanwhile refuses it."""
    key = claims.key
    with tenant_transaction(claims.tenant_id) as conn:
        if not work_queue.lease_is_live(conn, claims.key, claims.nonce):  # locks the item: no expiry overtakes us
            raise LeaseExpiredError(_LEASE_GONE)
        spent = store.use_task_token(conn, claims.nonce)
        if spent is None or spent.key != claims.key:
            # A copy of this request spent it since our check (a worker's retry racing its first try): the same
            # result is answered as the repeat it is, whether or not the run has ended since.
            found = store.attempt_by_token(conn, claims.nonce)
            if _spent_on(found, claims):
                repeated = _repeated(claims.tenant_id, found, result)
                return Recorded(key, raised_verdict(conn, repeated), repeated.raised_by_recorder)
            raise _refusal(found, claims)
        # Spent here: the execution is held until the result is recorded (after the item and the attempt, ADR 0014's
        # order, and as the result's event would hold it), so an end cannot commit between this look and the
        # result, which would then follow the run's terminal event. The raise rolls the spend back.
        if _execution_ended(conn, key.execution_id, hold=True):
            raise LeaseExpiredError(EXECUTION_ENDED)
        attempt, _ = store.finish_attempt(
            conn, claims.key, ok=result.ok, output=output, error=result.error, retryable=result.retryable
        )
        return Recorded(claims.key, raised_verdict(conn, attempt))
