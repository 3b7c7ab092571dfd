# intent_ref: platform.ingress
"""Processing intent-requests events: verify the sender, start through the start service the execute route uses, and
record every event that cannot start anything.

Delivery is at least once. The required idempotency key makes a redelivered event find the execution it started
(the start path's idempotency) and a rejection is recorded once per event and answers every later delivery of it
(nothing is started for an event once rejected, and nothing is recorded for one once started, however its deliveries
interleave), so processing an event again is harmless. That is why a transient failure (database, identity keys,
orchestration client) is raised instead of recorded: the batch fails and is retried, and nothing a retry repeats is
done twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from uuid import UUID

import anyio
import anyio.to_thread
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from opentelemetry.trace import SpanKind

from shared import telemetry
from shared.accepted_json import (
    MAX_BODY_CONTAINERS,
    NotAcceptedJSONError,
    containers,
    loads,
    too_many_containers,
)
from shared.auth.principal import Requester
from shared.auth.tokens import InvalidTokenError, SigningKeysUnavailableError, TokenValidator
from shared.auth.validator import get_token_validator
from shared.check_gate import UNBOUNDED
from shared.config import get_settings
from shared.db import tenant_locks
from shared.db.session import tenant_transaction
from shared.engine.executions import find_by_key
from shared.engine.start import Conn, StartError, StartRequest
from shared.engine.start_service import begin, launch
from shared.ingress.rejecting import Rejected, invalid_body, not_accepted, refused_start, stale
from shared.ingress.rejections import NewRejection, record_rejection, recorded_reason
from shared.ingress.request import IngressEvent, IntentRequest, LaxIntentRequest
from shared.ingress.verify import Sender, StaleEventError, check_fresh, sender, verify_token
from shared.loop_limiters import LoopTenantParses
from shared.observability.tracing import TRACEPARENT, root_span, span_context_of
from shared.policy.authorizer import Decision, Resource
from shared.policy.decisions import decide
from shared.registry import service as registry
from shared.sealing import LOCAL_DEVELOPMENT_KEY

logger = logging.getLogger(__name__)

UNATTRIBUTED = "unknown"
"""The telemetry tenant of an event whose sender could not be established (nothing is written to any tenant)."""


DROPPED = "dropped"
"""The telemetry reason of an event that still failed on the trigger's last attempt: checkpointed unprocessed."""


@dataclass(frozen=True)
class Outcome:
    """What became of one event: the execution it started or found, or why it was rejected."""

    event_id: str
    execution_id: UUID | None = None
    created: bool = False
    reason: str | None = None


EventStarted = Callable[[Conn], UUID | None]
"""How the transaction that records an event's rejection finds the execution another delivery of the event started."""


def _record(
    context: Sender,
    event: IngressEvent,
    rejected: Rejected,
    key: str | None,
    ref: UUID,
    started: EventStarted | None = None,
) -> Outcome | None:
    """Record the event's rejection; None when it is new, else the event's answer read in the same transaction: the
    rejection recorded before for it (a recorded rejection is final, whatever this delivery was refused for), or the
    execution `started` finds (a delivery refused after another started the request answers that execution)."""
    rejection = NewRejection(
        hub=event.hub,
        partition_id=event.partition_id,
        sequence_number=event.sequence_number,
        enqueued_time=event.enqueued_time,
        reason=rejected.reason,
        detail=rejected.document(_instance(event, ref)),
        requested_by=context.principal.id,
        idempotency_key=key,
        id=ref,
    )
    with tenant_transaction(context.tenant.id) as conn:
        if started is not None:
            answer = _started_answer(conn, event, started)
            if answer is not None:
                return answer
        if record_rejection(conn, rejection):
            return None
        return Outcome(event.event_id, reason=_recorded_in(conn, event) or rejected.reason)


def _started_answer(conn: Conn, event: IngressEvent, started: EventStarted) -> Outcome | None:
    """Before a rejection of an event that may have started is recorded: its recorded rejection, else the execution
    another delivery of it started, found under the tenant's start lock. Every delivery's start looks for the event's
    record again once it holds that lock (`admit`, asked by the start before it writes), so of two deliveries at once
    either this record commits first and the other finds it, or the other's execution has committed and is found
    here: never both."""
    tenant_locks.hold(conn, "executions")
    recorded = _recorded_in(conn, event)
    if recorded is not None:
        return Outcome(event.event_id, reason=recorded)
    execution_id = started(conn)
    if execution_id is None:
        return None
    # Accepted by an earlier delivery (its launch failed, or it is under way): what this delivery was refused for
    # (a grant revoked, the tenant suspended since) stops new starts, not one already accepted, whose launch is its
    # starter's or the sweeper's (ADR 0019).
    logger.info("intent-requests: event %s is answered by execution %s, which it started", event.event_id, execution_id)
    return Outcome(event.event_id, execution_id)


def _started_by(context: Sender, key: str, request: IntentRequest | None) -> EventStarted:
    """The lookup of the execution the sender started with `key`: a tenant's keys are bound to their requester, so
    another principal's execution under it is not this event's; with the event's request read, it must be the same
    request too (its fingerprint), as a replay of the start requires."""

    def find(conn: Conn) -> UUID | None:
        found = find_by_key(conn, key)
        if found is None or found.requested_by != context.principal.id:
            return None
        if request is None or found.request_sha256 is None:  # recorded before requests were fingerprinted
            return found.id
        try:
            asked = request.start_request(conn, Requester.of(context.principal))
        except registry.NotFoundError:  # named by a name no intent has now: not the request that started it
            return None
        return found.id if asked.fingerprint() == found.request_sha256 else None

    return find


_REFERENCE_KDF_INFO = b"quantum-platform ingress reference v1"


@lru_cache(maxsize=1)
def _reference_key() -> bytes:
    """The key that turns an event's place on the hub into its reference: derived from the sealing key material under
    a label of its own (the sealing key itself is never used for two purposes), so only the server can compute it and
    a tenant cannot work back from a reference to a sequence number. A local run without a sealing key uses the same
    fixed development material the sealer does (the settings refuse to run without a key elsewhere)."""
    current = get_settings().QP_SEALING_KEY
    material = current.get_secret_value() if current is not None else LOCAL_DEVELOPMENT_KEY
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_REFERENCE_KDF_INFO).derive(material.encode())


def _stamp(enqueued_time: datetime | None) -> str:
    """The hub's stamp of an event as one text for one instant, whatever zone it was given in (none: UTC)."""
    if enqueued_time is None:
        return ""
    aware = enqueued_time if enqueued_time.tzinfo is not None else enqueued_time.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat()


def reference_of(event: IngressEvent) -> UUID:
    """The request's reference: the same for every delivery of one event (its hub, partition, sequence number and
    enqueued time), so a redelivery's audit records name the rejection recorded by the first, and another for a new
    event at an old one's place (a hub recreated numbers its events from the start again); a keyed hash, so it
    reveals nothing of the sequence number."""
    place = f"{event.hub}/{event.partition_id}/{event.sequence_number}/{_stamp(event.enqueued_time)}".encode()
    digest = bytearray(hmac.new(_reference_key(), place, hashlib.sha256).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x40  # version 4: it reads as the random reference it stands for
    digest[8] = (digest[8] & 0x3F) | 0x80  # the RFC 4122 variant
    return UUID(bytes=bytes(digest))


def _instance(event: IngressEvent, ref: UUID) -> str:
    """How the tenant's records name the event: the hub and the request's own reference, never its place on the hub
    (a sequence number's gaps count the other producers' events on that partition)."""
    return f"{event.hub}/{ref}"


async def _reject(
    context: Sender,
    event: IngressEvent,
    rejected: Rejected,
    key: str | None,
    ref: UUID,
    started: EventStarted | None = None,
) -> Outcome:
    """Record the rejection and answer it; a redelivery answers the rejection recorded first, and a delivery of an
    event another delivery started (`started` finds it) answers that execution; neither records nor emits anything."""
    answer = await asyncio.to_thread(_record, context, event, rejected, key, ref, started)
    if answer is not None:
        return answer
    telemetry.emit(
        "ingress.rejected",
        tenant_id=context.tenant.id,
        reason=rejected.reason,
        event_id=event.event_id,
        principal=context.principal.id,
        detail=str(rejected),
    )
    return Outcome(event.event_id, reason=rejected.reason)


def _unattributed(event: IngressEvent, why: str) -> Outcome:
    # No tenant is established, so no tenant's table may be written: the log and telemetry are the record.
    logger.warning("intent-requests: event %s rejected, sender not established: %s", event.event_id, why)
    telemetry.emit(
        "ingress.rejected", tenant_id=UNATTRIBUTED, reason="unauthenticated", event_id=event.event_id, detail=why
    )
    return Outcome(event.event_id, reason="unauthenticated")


TENANT_PARSE_THREADS = 1
"""Bodies of one sender's tenant read at once, per process (the same bound as the API's, shared.api.permissions): a
hostile body the container bound allows holds the interpreter's lock for most of the tenths of a second it takes,
so a tenant whose events arrive on many partitions at once would otherwise take a thread per partition and crowd out
the event loop the HTTP API shares; its reads queue on the loop instead, holding no thread, and never behind another
tenant's."""
_TENANT_PARSES = LoopTenantParses(TENANT_PARSE_THREADS)
"""Per event loop (shared.loop_limiters: one limiter shared by every loop, a process_batch per thread each with its
own loop, hung the loops after the first)."""


def _tenant_parses(tenant_id: UUID) -> anyio.CapacityLimiter:
    """The tenant's parse limiter on the running event loop."""
    return _TENANT_PARSES.of(tenant_id)


def _document(body: bytes) -> Any:
    """The accepted JSON document of a body within the API's container bound (ADR 0023): one over it is refused
    without being parsed at all, in the time a count of its brackets takes."""
    found = containers(body)
    if found > MAX_BODY_CONTAINERS:
        raise too_many_containers(found)
    return loads(body)


def _read(body: bytes) -> tuple[IntentRequest | Rejected, str | None, IntentRequest | None]:
    """The request in a body, or why it is rejected, with the key it names when it has a usable one, and the request
    the release before the strict model read in a body it refuses (`_lax`). CPU only, up to seconds for a hostile
    MiB: run on a worker thread, never on the event loop."""
    try:
        document = _document(body)
    except NotAcceptedJSONError as exc:  # before its key is read: such a body may not even parse safely
        return not_accepted(exc), None, None
    try:
        return IntentRequest.of_document(document), None, None
    except ValueError as exc:
        return invalid_body(exc), IntentRequest.key_in(document), _lax(document)


def _lax(document: Any) -> IntentRequest | None:
    """The request the release before the strict `version` read in a body the strict model refuses (`"version": "1"`
    was version 1): only to find the execution it may have started then, by its fingerprint. A redelivery across the
    deploy of an event that release started is answered by that execution, never recorded rejected while it runs."""
    return LaxIntentRequest.of_lax_document(document)


def _read_stale(body: bytes) -> tuple[IntentRequest | None, str | None]:
    """The request a stale event names, when its body is one (as the release before the strict `version` read it,
    when only that one did: `_lax`), and the key it names, for the producer to match its rejection by; neither for a
    body that is not accepted JSON within the container bound (read as any body is: a plain parse of one nested too
    deep raises, and would be retried for ever). CPU only: run on a worker thread."""
    try:
        document = _document(body)
    except NotAcceptedJSONError:
        return None, None
    try:
        return IntentRequest.of_document(document), None
    except ValueError:
        lax = _lax(document)
        return lax, IntentRequest.key_in(document) if lax is None else lax.idempotency_key


def _recorded_in(conn: Conn, event: IngressEvent) -> str | None:
    """The reason the caller's tenant recorded for this event, when it was rejected before."""
    return recorded_reason(conn, event.hub, event.partition_id, event.sequence_number, event.enqueued_time)


class AlreadyRejectedError(Exception):
    """The event has a recorded rejection: raised from within the start's transaction, before anything is written."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def _stale(context: Sender, event: IngressEvent, exc: StaleEventError, ref: UUID) -> Outcome:
    """A stale event's answer: its recorded rejection, the execution its request started when it did start (the same
    key and request: a replay of a request that ran records nothing), else its stale rejection, recorded with its
    key."""
    request, key = await anyio.to_thread.run_sync(_read_stale, event.body, limiter=_tenant_parses(context.tenant.id))
    # Matched by its key and its request, as a replay of the start is: another request under a key it names is not
    # this event's, and a body that is not a request never started anything.
    started = None if request is None else _started_by(context, request.idempotency_key, request)
    if request is not None:
        key = request.idempotency_key
    return await _reject(context, event, stale(exc), key, ref, started)


async def process_event(
    event: IngressEvent, client: Any, validator: TokenValidator, *, now: datetime | None = None
) -> Outcome:
    """Verify the sender, then start the requested execution (or find the one this key started) and launch it.

    Rejections are recorded and returned; transient failures are raised. Nothing that can take long (the token's
    key fetch, the body's parse, the database) runs on the event loop: the HTTP API's requests share it.
    """
    moment = now or datetime.now(UTC)
    try:
        verified = await asyncio.to_thread(verify_token, event, validator, now=moment)
    except SigningKeysUnavailableError:
        raise
    except InvalidTokenError as exc:
        return _unattributed(event, exc.reason)
    # The request's reference in what the tenant reads (its audit records' request id, a rejection's id and
    # instance); the log ties it to the event's place on the hub for operators.
    ref = reference_of(event)
    context = await asyncio.to_thread(sender, verified, _instance(event, ref))
    if context is None:
        return _unattributed(event, "the token's tenant is not provisioned on this platform")
    logger.info("intent-requests: event %s is request %s of tenant %s", event.event_id, ref, context.tenant.id)
    _EVENT_TENANT.set(context.tenant.id)
    # A rejection is final: a batch run again after its cause went away (quota freed, grant given) would otherwise
    # start the request while its record still says rejected, and a producer that resent it would run it twice. It is
    # looked up in the transaction each path takes anyway (the start's, the record's), not in one of its own: the
    # checks made before them write nothing and start nothing (ADR 0019).
    try:
        check_fresh(event, moment)
    except StaleEventError as exc:
        return await _stale(context, event, exc, ref)
    read, key, lax = await anyio.to_thread.run_sync(_read, event.body, limiter=_tenant_parses(context.tenant.id))
    if isinstance(read, Rejected):
        # A body only the release before the strict model accepted may have started an execution then: that
        # execution is its answer (matched by key and fingerprint), not a rejection recorded while it runs.
        started_then = None if lax is None else _started_by(context, lax.idempotency_key, lax)
        return await _reject(context, event, read, key, ref, started_then)
    request = read
    audited = {"via": event.hub}

    def decide_for_sender(action: str, resource: Resource) -> Decision:
        return decide(context, action, resource, detail=audited)

    def unless_recorded(conn: Conn) -> None:
        """Refuse the start of an event with a recorded rejection (AlreadyRejectedError)."""
        recorded = _recorded_in(conn, event)
        if recorded is not None:
            raise AlreadyRejectedError(recorded)

    def unless_rejected(conn: Conn) -> StartRequest:
        # First in each of the start's transactions: an event recorded before is answered before anything is decided,
        # audited or checked. Without the tenant's start lock: this one finds what committed before it, and the
        # start asks again under the lock (`admit`), which a record being written holds. Held here, the lock was
        # held across the input's check when the start makes it in its transaction, and the tenant's every start
        # waited for it.
        unless_recorded(conn)
        return request.start_request(conn, Requester.of(context.principal))

    try:
        # A costly input check waits for its tenant's turn however long it takes, as a child's start does: refused
        # busy, the event failed its whole batch, whose retries held the partition, and every other tenant's
        # events on it, for a quarter of an hour (the turn is the sender's own to keep taken).
        started = await asyncio.to_thread(
            begin,
            context.tenant,
            unless_rejected,
            decide=decide_for_sender,
            check_wait_s=UNBOUNDED,
            admit=unless_recorded,
        )
    except AlreadyRejectedError as exc:
        return Outcome(event.event_id, reason=exc.reason)
    except StartError as exc:
        rejected = refused_start(exc)
        if rejected is None:
            raise
        key = request.idempotency_key
        return await _reject(context, event, rejected, key, ref, _started_by(context, key, request))
    # Not recorded, raised: a failed launch gives its start claim back, so the batch's retry (in place) starts it;
    # after the last retry, the sweeper does (the execution has committed: the event is not dropped).
    _EVENT_STARTED.set(started.execution.id)
    await launch(client, started, context.tenant.id, record_failure=False)
    return Outcome(event.event_id, started.execution.id, started.created)


_EVENT_TENANT: ContextVar[UUID | None] = ContextVar("intent_requests_event_tenant", default=None)
"""The tenant of the event being processed, once its sender is known: named in the line of an event dropped."""
_EVENT_STARTED: ContextVar[UUID | None] = ContextVar("intent_requests_event_started", default=None)
"""The execution the event being processed started or found, once its start has committed (`begin` returned): an
event failing after it (its launch) is left to the sweeper, not dropped."""


async def process_batch(
    events: Sequence[IngressEvent],
    client: Any,
    validator: TokenValidator | None = None,
    *,
    final_attempt: bool = False,
) -> list[Outcome]:
    """Process a batch in order; if any event failed transiently, raise after the others were processed, so the
    batch is retried (the ones that were done are found again, not repeated). On the trigger's last attempt
    (`final_attempt`: its retry policy is spent, and the host checkpoints the batch whatever it raises) an event that
    fails is dropped: it is logged at error level as dropped, with its place on the hub, its tenant when known and its
    reference, for an operator to tell its producer to resend it with the same key."""
    checker = validator or get_token_validator()
    outcomes: list[Outcome] = []
    failures: list[BaseException] = []
    for event in events:
        traceparent = event.properties.get(TRACEPARENT)
        known = _EVENT_TENANT.set(None)
        committed = _EVENT_STARTED.set(None)
        try:
            # The producer's trace, when it sent one, is linked, not continued: any producer names it, and before its
            # sender is verified (the execution this event starts gets a root of its own, linked to this one).
            with root_span(
                "intent-requests process",
                span_context_of(traceparent),
                {"messaging.message.id": event.event_id},
                kind=SpanKind.CONSUMER,
            ):
                outcomes.append(await process_event(event, client, checker))
        except Exception as exc:  # one event's outage must not keep the batch's other requests back
            if final_attempt:
                _failed_on_last_attempt(event, exc, _EVENT_TENANT.get(), _EVENT_STARTED.get())
            else:
                logger.error("intent-requests: event %s failed and will be retried: %s", event.event_id, exc)
            failures.append(exc)
        finally:
            _EVENT_STARTED.reset(committed)
            _EVENT_TENANT.reset(known)
    if failures:
        raise RuntimeError(f"{len(failures)} of {len(events)} intent requests did not complete") from failures[0]
    return outcomes


def _failed_on_last_attempt(
    event: IngressEvent, exc: Exception, tenant_id: UUID | None, execution_id: UUID | None
) -> None:
    """The line (and count) of an event that failed on the retry policy's last attempt. One whose start committed
    (its launch failed) is not lost: its execution is pending, and the sweeper launches it. One that failed before
    is dropped: logged at error level first, then counted as the telemetry-only rejections are, the count guarded
    (a failing exporter must not hide the line, nor the batch's other events)."""
    tenant = tenant_id or UNATTRIBUTED
    if execution_id is not None:
        logger.error(
            "intent-requests: event %s (hub %s, partition %s, sequence number %s) of tenant %s, request %s, failed on"
            " the last retry after its start committed: left to the sweeper: execution %s: %s",
            event.event_id,
            event.hub,
            event.partition_id,
            event.sequence_number,
            tenant,
            reference_of(event),
            execution_id,
            exc,
        )
        return
    logger.error(
        "intent-requests: event %s (hub %s, partition %s, sequence number %s) of tenant %s, request %s,"
        " dropped: it failed on the last retry and is checkpointed unprocessed: %s",
        event.event_id,
        event.hub,
        event.partition_id,
        event.sequence_number,
        tenant,
        reference_of(event),
        exc,
    )
    try:
        # Counted as the telemetry-only rejections are (`qp.ingress.rejected`, reason `dropped`): the
        # ingress-rejections alert and the workbook's panel show it; the tenant's record has nothing of it.
        telemetry.emit(
            "ingress.rejected",
            tenant_id=tenant,
            reason=DROPPED,
            event_id=event.event_id,
            detail=f"dropped after the retry policy's last attempt: {type(exc).__name__}",
        )
    except Exception:
        logger.warning("intent-requests: the drop of event %s could not be counted", event.event_id, exc_info=True)


def is_final_attempt(retry_count: int, max_retry_count: int) -> bool:
    """Whether the run the trigger's retry context describes is its last: its retry policy retries no more after it
    (-1: retried without end)."""
    return max_retry_count >= 0 and retry_count >= max_retry_count
