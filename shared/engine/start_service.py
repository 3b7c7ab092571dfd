# intent_ref: platform.execution
"""The start service of every way in (the execute and retry routes, the intent-requests ingress): a start's checks
and writes in one tenant transaction (its input checked before it, outside any), refused with domain errors, then
the orchestration started."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import UUID

from shared.auth.principal import Principal
from shared.check_gate import costly_check
from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.engine.protocol import ORCHESTRATOR
from shared.engine.start import (
    Admit,
    Conn,
    InputCheck,
    InputCheckStaleError,
    IntentNotFoundError,
    PendingInputCheck,
    QuotaExceededError,
    Started,
    StartForbiddenError,
    StartRequest,
    active_executions,
    authorized_item,
    checked_input,
    concurrent_limit,
    input_to_check,
    release_start,
    start_execution,
)
from shared.observability import metrics
from shared.observability.tracing import current_span_context, execution_attributes, root_span
from shared.policy import decisions
from shared.policy.actions import Action
from shared.policy.authorizer import Decision, Resource
from shared.policy.facts import TenantFacts
from shared.registry import service as registry
from shared.tenants import erased_orchestrations
from shared.tenants.models import Tenant
from shared.tenants.offboarding import ORCHESTRATION_SETTLE_S, purge_orchestrations, tenant_exists

logger = logging.getLogger(__name__)

REQUESTER_UNKNOWN = "requester_unknown"
"""The refusal of a child whose parent's requester is no principal's id (only rows written outside the API)."""

START_SPAN = "execution start"
"""The root span of an execution's trace, linked to the request or event that asked for the start."""

Decide = Callable[[str, Resource], Decision]
"""The caller's policy decision on an action and resource, audited by the edge that supplies it."""


class OrchestrationUnavailableError(Exception):
    """The orchestration client refused the start, so the caller may retry. `pending`: the start had an idempotency
    key, and the execution stays pending for a retry with that key (or the sweeper) to start; else it is failed."""

    def __init__(self, execution_id: UUID, cause: str, *, pending: bool = False) -> None:
        super().__init__(f"the orchestration of execution {execution_id} could not be started: {cause}")
        self.execution_id = execution_id
        self.pending = pending


def execute_resource(item: registry.Item, tenant_id: UUID) -> Resource:
    """The intent as the `intent.execute` decision sees it: its target decides whether a Deployer is needed."""
    return Resource(
        "Intent", str(item.head.id), tenant_id, {"target": item.target or "", "labels": item.version.labels}
    )


def authorize_execute(decide: Decide, tenant_id: UUID) -> Callable[[registry.Item], None]:
    """What start_execution calls on the intent (and on a pinned version): `decide` on `intent.execute`, a refusal
    raised as StartForbiddenError."""

    def authorize(item: registry.Item) -> None:
        decision = decide(Action.INTENT_EXECUTE, execute_resource(item, tenant_id))
        if not decision.allowed:
            raise StartForbiddenError(Action.INTENT_EXECUTE, decision.reason)

    return authorize


@dataclass(frozen=True)
class RequesterCaller:
    """An execution's requester as the caller of its child's start: their recorded authority, in their tenant."""

    principal: Principal
    tenant: Tenant
    request_id: str
    """What the audit record names as the request: the parent execution and the step that starts the child."""


def authorize_child(
    conn: Conn | None, tenant: Tenant, parent: repo.Execution, step_id: str
) -> Callable[[registry.Item], None]:
    """The decision on a child intent's start: the one a direct execute gets, for the parent's requester with the
    roles recorded when the root was requested (ADR 0035), audited in `conn`'s transaction (None: the tenant
    transaction open when it is decided), once per resource however many transactions ask it (a child's start asks
    in the read before its input check and again in its writing transaction). A parent recorded before they were
    kept has none, so the policies refuse its children."""
    try:
        principal = parent.requester.principal(tenant.id)
    except ValueError:

        def refuse(_item: registry.Item) -> None:
            raise StartForbiddenError(Action.INTENT_EXECUTE, REQUESTER_UNKNOWN)

        return refuse
    caller = RequesterCaller(principal, tenant, f"{parent.id}/{step_id}")
    detail = {"parent_execution_id": str(parent.id), "parent_step_id": step_id}
    return authorize_execute(
        _decided_once(lambda action, resource: decisions.decide(caller, action, resource, conn=conn, detail=detail)),
        tenant.id,
    )


def begin(
    tenant: Tenant,
    make_request: Callable[[Conn], StartRequest],
    *,
    decide: Decide,
    check_wait_s: float | None = None,
    admit: Admit | None = None,
) -> Started:
    """`begin_deciding` for a request made without the start's decision (it reads nothing of the intent to answer)."""
    return begin_deciding(
        tenant, lambda conn, _authorize: make_request(conn), decide=decide, check_wait_s=check_wait_s, admit=admit
    )


DecidedRequest = Callable[[Conn, Callable[[registry.Item], None]], StartRequest]
"""A start's request made with the start's decision at hand (its second argument: `intent.execute` on an item, raising
StartForbiddenError), for a request that reads the intent before answering (a retry compares the version it runs with
the one it retries): what it reads it decides on first, with the decision the start then takes, audited once."""


def begin_deciding(
    tenant: Tenant,
    make_request: DecidedRequest,
    *,
    decide: Decide,
    check_wait_s: float | None = None,
    admit: Admit | None = None,
) -> Started:
    """Run a start's checks and writes in one tenant transaction (call it on a worker thread), its input checked
    before it outside any transaction; `make_request` builds the request in each transaction (reading what it needs),
    and `decide` decides `intent.execute` on the intent before anything about it is revealed or its input checked
    (once per intent and version, however many transactions the start takes).

    A refused start raises a StartError (an unknown intent or version as IntentNotFoundError, a refused decision as
    StartForbiddenError); whatever `make_request` raises of its own passes through, and so does CheckBusyError (the
    API's 429 `check-busy`) when a costly input check found no turn within `check_wait_s` (`checked_first`; by
    default the pool's wait; UNBOUNDED for a caller with no client to answer 429 to). `admit`: the caller's last
    word in the start's transaction, under the tenant's start lock (`start_execution`); what it raises passes through.
    """
    # One decision per resource for the whole start, audited once: the read before the check decides, and the
    # start's transaction takes that decision again for the same intent and version (a new current version saved in
    # between, with another target or labels, is decided anew).
    authorize = authorize_execute(_decided_once(decide), tenant.id)

    def request_of(conn: Conn) -> StartRequest:
        return make_request(conn, authorize)

    # The execution's trace is the platform's own, linked to the caller's: a request's (or event's) `traceparent` is
    # the caller's choice, made before it was verified, and continued it would put this execution in any trace.
    with root_span(START_SPAN, current_span_context(), execution_attributes(tenant_id=tenant.id)):

        def start(input_check: InputCheck | None) -> Started:
            with tenant_transaction(tenant.id) as conn:
                return start_execution(
                    conn,
                    tenant.facts(),
                    _request(conn, request_of),
                    authorize=authorize,
                    max_concurrent=concurrent_limit(tenant.quotas),
                    input_check=input_check,
                    admit=admit,
                )

        def read() -> tuple[PendingInputCheck, TenantFacts] | None:
            if tenant.status != "active":  # a suspended tenant's start is refused first, as it always was
                return None
            with tenant_transaction(tenant.id) as conn:
                request = _request(conn, request_of)
                # Decided before the check, with the refusals that come before it in the start's transaction (an
                # unknown intent or version): a caller refused costs no check, and its refusal's timing tells
                # nothing of the schema.
                authorized_item(conn, request, authorize)
                pending = input_to_check(conn, request)
                if pending is not None:
                    # A start the quota refuses is refused here, before its input is checked (up to seconds of CPU,
                    # and a turn at the check gate): the same refusal the start makes under the tenant's lock, which
                    # still makes it (this read holds no lock). A replay (its key finds an execution) is not counted,
                    # nor a child (exempt from the quota); a start with nothing to check pays nothing for it.
                    refuse_over_quota(conn, tenant, request)
            return None if pending is None else (pending, tenant.facts())

        return checked_first(read, start, tenant_id=tenant.id, wait_s=check_wait_s)


def refuse_over_quota(conn: Conn, tenant: Tenant, request: StartRequest) -> None:
    """QuotaExceededError when the tenant is at its concurrent-execution quota and `request` would start a new root
    execution (no parent, and its key, if any, finds no execution)."""
    if request.parent_execution_id is not None:
        return
    if request.idempotency_key is not None and repo.find_by_key(conn, request.idempotency_key) is not None:
        return
    limit = concurrent_limit(tenant.quotas)
    if active_executions(conn) >= limit:
        metrics.request_refused(tenant.id, "execution-quota")
        raise QuotaExceededError(limit)


_T = TypeVar("_T")


def checked_first(
    read: Callable[[], tuple[PendingInputCheck, TenantFacts] | None],
    start: Callable[[InputCheck | None], _T],
    *,
    tenant_id: UUID,
    wait_s: float | None = None,
) -> _T:
    """A start's input checked between two transactions: `read` reads what the check needs in a short transaction of
    its own (None: nothing to check before), then `start` runs the start's transaction with the check's outcome.
    Checked for another version than the one to run (InputCheckStaleError), it is read and checked again, up to
    INPUT_CHECK_ATTEMPTS times; then `start` checks it in its transaction, as every start once did, holding the
    gate's slot (taken before the transaction opens).

    A costly check waits for its tenant's turn at the process's check gate (`costly_check`, the one a definition's
    check takes: one at a time per tenant, two per process), holding no connection: costly is the input as checked
    (given and defaulted) and the version's definition, together at least COSTLY_BYTES as JSON, as a definition is
    costly at that size. A smaller pair costs milliseconds and runs at once; a large one costs up to seconds of CPU on
    a thread sharing the interpreter with every other request. Past `wait_s` (default: the pool's wait) the start is
    refused (CheckBusyError, the API's 429 `check-busy`) before anything is written."""
    # The last attempt's check runs in `start`'s transaction: its slot is taken before the transaction opens (the wait
    # holds no connection) and kept across it, weighed as the pair last read was (none read: costly).
    last: tuple[PendingInputCheck, TenantFacts] | None = None
    read_once = False
    for _ in range(INPUT_CHECK_ATTEMPTS):
        # Checking the input against the tenant's schema costs up to seconds of CPU for a MiB of input: it is made
        # with no transaction open, holding none of the pool's connections (a tenant's requests in flight, admitted
        # up to half the pool, would otherwise hold them all that while, and every tenant waits). The start's own
        # transaction then decides, locks and writes as before, taking the check's outcome only for the version it
        # was made for (versions never change).
        pending = last = read()
        read_once = True
        if pending is None:
            check = None
        else:
            with costly_check(tenant_id, document=_checked_document(pending[0]), wait_s=wait_s):
                check = checked_input(*pending)
        try:
            return start(check)
        except InputCheckStaleError:
            continue  # a new current version was saved in between: its check is made again
    if read_once and last is None:  # nothing to check before: nothing costly in the transaction either
        return start(None)
    with costly_check(tenant_id, document=None if last is None else _checked_document(last[0]), wait_s=wait_s):
        return start(None)


def _checked_document(pending: PendingInputCheck) -> dict[str, Any]:
    """What a start's check reads, for the gate to weigh: the input against the schema, the definition against the
    catalog."""
    return {"input": pending.inputs, "definition": pending.document}


def _decided_once(decide: Decide) -> Decide:
    """`decide`, made once per action and resource: asked again, the first decision stands, neither made nor audited
    again."""
    made: list[tuple[str, Resource, Decision]] = []

    def decide_once(action: str, resource: Resource) -> Decision:
        for asked, on, decision in made:
            if asked == action and on == resource:
                return decision
        decision = decide(action, resource)
        made.append((action, resource, decision))
        return decision

    return decide_once


INPUT_CHECK_ATTEMPTS = 2
"""Checks of a start's input made outside its transaction before one is made inside: only a new current version
saved between each check and its start takes a start past them."""


def _request(conn: Conn, make_request: Callable[[Conn], StartRequest]) -> StartRequest:
    try:
        return make_request(conn)  # a producer's request names its intent, which may not exist
    except (registry.NotFoundError, registry.UnknownVersionError) as exc:
        raise IntentNotFoundError(str(exc)) from None


class StatusUnknownError(Exception):
    """The task hub's store could not say whether an orchestration instance exists (its status read failed)."""


def status_unknown(status: Any) -> bool:
    """Whether the status read failed rather than answered: the host's error body (a 500 whose `Message` and
    `ExceptionMessage` the SDK keeps as attributes of an otherwise empty status) says nothing of the instance."""
    return bool(getattr(status, "Message", None) or getattr(status, "ExceptionMessage", None))


async def existing_instance(client: Any, instance_id: str) -> Any | None:
    """The status of orchestration instance `instance_id` when it exists (running or ended), None when it does not;
    StatusUnknownError when the store could not say. What a taken-over start asks before it starts anything."""
    status = await client.get_status(instance_id)
    if status_unknown(status):
        raise StatusUnknownError(f"the status of orchestration instance {instance_id} could not be read")
    return status if status and getattr(status, "runtime_status", None) is not None else None


def already_exists(exc: BaseException) -> bool:
    """Whether the orchestration client refused a start because an instance with its id exists: the host answers
    409 (the SDK raises its body, the extension's OrchestrationAlreadyExistsException message), host.json's
    overridableExistingInstanceStates being NonRunningStates."""
    return "already exists" in str(exc).lower()


async def launch(client: Any, started: Started, tenant_id: UUID, *, record_failure: bool = True) -> None:
    """Start the orchestration (instance id = execution id) when this start holds the start claim.

    A replay that took the start over (`created` false: the first starter died, or its launch failed or is slow)
    asks the task hub first: an instance that exists was started by that starter and records the start itself (an
    ended one is the sweeper's to end), so nothing is started again; a start_new refused because the instance
    exists means the same.

    When the orchestration client fails, `record_failure` records the failure and raises
    OrchestrationUnavailableError (a caller that waits for an answer retries): a start with an idempotency key
    stays pending with its claim released, for the retry with that key (or the sweeper) to start at once; one
    without is recorded failed. Otherwise the client's error is raised as is and the execution stays pending with
    its claim released, for the caller's own retry (the ingress's batch, run again in place) or the sweeper to
    start at once. A claim another starter took over meanwhile is never released.

    Started, an orchestration whose tenant was erased meanwhile is terminated and purged (`unless_erased`); a start
    that failed, which the task hub may have applied all the same, is recorded for the sweeper to purge should its
    tenant be gone once a late start could have landed (`erased_orchestrations.LATE_START_S`).
    """
    if started.orchestration_input is None:
        return
    execution = started.execution
    instance_id = str(execution.id)
    asked = False
    try:
        if not started.created and await existing_instance(client, instance_id) is not None:
            # Its starter got as far as starting it and its orchestration has not recorded `running` yet (a
            # backlog): started again, it would be refused (or, by a backend that replaces instances, restarted).
            logger.info("the orchestration of execution %s exists already; not started again", instance_id)
            return
        asked = True
        await client.start_new(ORCHESTRATOR, instance_id, started.orchestration_input)
    except Exception as exc:
        if already_exists(exc):
            logger.info("the orchestration of execution %s was started meanwhile: %s", instance_id, exc)
            return
        if asked:
            # A start that failed may have been applied (a connection reset after the instance was created, a 500,
            # the client's own timeout) and is never looked at for an erased tenant here: first of all (the tenant's
            # rows may be gone already) recorded for the sweeper, which purges it once a late start could have
            # landed if its tenant is gone then, and drops the record otherwise (ADR 0046, amended 2026-12-07).
            await asyncio.to_thread(
                erased_orchestrations.note_erased_orchestration,
                tenant_id,
                instance_id,
                after_s=erased_orchestrations.LATE_START_S,
            )
        if not record_failure:
            # The caller's retry replays this start seconds later: with the claim still held (fresh), it found the
            # execution started and counted it done, leaving it to the sweeper.
            await asyncio.to_thread(release_claim, tenant_id, execution)
            raise
        logger.exception("could not start the orchestration of execution %s", execution.id)
        if execution.idempotency_key is not None:
            # The retry the answer asks for finds this execution by its key: failed, it would be replayed as
            # accepted and never run; pending and unclaimed, that retry (or the sweeper) starts it.
            await asyncio.to_thread(release_claim, tenant_id, execution)
            raise OrchestrationUnavailableError(execution.id, str(exc), pending=True) from None
        # Without a key the retry is a new execution, so this one must neither run beside it nor look pending forever.
        await asyncio.to_thread(fail_start, tenant_id, execution.id, str(exc))
        raise OrchestrationUnavailableError(execution.id, str(exc)) from None
    await unless_erased(client, tenant_id, instance_id)


async def unless_erased(
    client: Any, tenant_id: UUID, instance_id: str, *, settle_s: float = ORCHESTRATION_SETTLE_S
) -> None:
    """After the orchestration's start: terminate and purge it when its tenant was erased meanwhile, waiting
    `settle_s` at most for it to end after its terminate.

    A start committed before its tenant's erasure and launched after the erasure's last purge left an orchestration,
    its history holding the tenant's input, that outlived the tenant. Looked at after the start (an erasure holding
    the row is waited for), the tenant row tells which: there, the erasure's row deletion, which lists this execution
    (committed before), and its last purge are still to come; gone, the instance is its starter's to remove. What this
    purge cannot finish (the task hub slow, the orchestration not ended within `settle_s`), or a look that cannot
    tell, is recorded for the sweeper to purge until gone (ADR 0046, amended 2026-12-07)."""
    try:
        if await asyncio.to_thread(tenant_exists, tenant_id):
            return
    except Exception:
        # The start itself succeeded, so it is not failed for this; only an erasure meanwhile would leave the instance.
        # Recorded, the sweeper looks at the tenant again, and purges the instance only if it is gone.
        logger.exception(
            "could not tell whether tenant %s still exists after starting the orchestration of execution %s",
            tenant_id,
            instance_id,
        )
        await asyncio.to_thread(erased_orchestrations.note_erased_orchestration, tenant_id, instance_id)
        return
    try:
        # Terminated when it still runs, purged when it has ended already (or is already gone: nothing to purge).
        purged = await purge_orchestrations([instance_id], client, settle_s=settle_s)
    except Exception as exc:
        noted = await asyncio.to_thread(erased_orchestrations.note_erased_orchestration, tenant_id, instance_id)
        logger.warning(
            "the orchestration of execution %s of erased tenant %s could not be purged now (%s: %s); %s",
            instance_id,
            tenant_id,
            type(exc).__name__,
            exc,
            "the sweeper purges it" if noted else "purge it",
        )
        return
    logger.warning(
        "tenant %s was erased while the orchestration of execution %s started; %s purged",
        tenant_id,
        instance_id,
        "it was" if purged else "nothing was left to be",
    )


def release_claim(tenant_id: UUID, execution: repo.Execution) -> None:
    """Give up the start claim of an execution whose orchestration could not be started, in its own transaction."""
    with tenant_transaction(tenant_id) as conn:
        release_start(conn, execution)


def fail_start(tenant_id: UUID, execution_id: UUID, reason: str) -> None:
    """Record a start that could not be launched as failed, unless something moved it on meanwhile."""
    with tenant_transaction(tenant_id) as conn:
        if repo.get_execution(conn, execution_id).status == "pending":
            repo.transition(conn, execution_id, "failed", error=f"the orchestration could not be started: {reason}")
