# intent_ref: platform.execution
"""Starting an execution: the pinned version checked again, inputs validated, the quota held, the row created,
and the orchestration's input built from what was recorded (so a stalled start can be rebuilt exactly)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import psycopg
from psycopg.rows import DictRow
from pydantic import ValidationError

from shared import telemetry
from shared.auth.principal import Requester
from shared.config import get_settings
from shared.db import tenant_locks
from shared.engine import executions as repo
from shared.engine.machine_types import RULES
from shared.engine.protocol import ORCHESTRATOR_ACTIONS, StepPlan
from shared.engine.steps import StepSeed, list_steps, seed_steps
from shared.idempotency import RESERVED_PREFIX
from shared.observability import metrics
from shared.observability.tracing import TRACEPARENT, current_traceparent
from shared.policy.authorizer import refusal_detail
from shared.policy.facts import TenantFacts
from shared.policy.gates import GateViolation, check_gates
from shared.registry import service as registry
from shared.registry.catalog import ModuleCatalog
from shared.registry.model import Definition, ResolvedBlueprint, Step
from shared.registry.plan import canonical_json, declaration_inputs, expand_declaration, input_defaults
from shared.registry.repository import VersionRow, blueprint_version
from shared.registry.schema_refs import evaluate_tenant_schema
from shared.tenants.models import TenantQuotas

Conn = psycopg.Connection[DictRow]
MAX_REPORTED_INPUT_ERRORS = 20
# The tenant's active root executions: children are exempt from the quota (ADR 0014), bounded by their roots' and the
# tenant's descendants instead. A root is what has no parent: root_execution_id is NULL for roots and also for children
# written before migration 0036, so it cannot tell them apart. The partial index executions_tenant_active (migration
# 0012) serves the scan, of the tenant's active executions only (at most its quota plus its bound on descendants).
_ACTIVE = (
    "SELECT count(*) AS n FROM app.executions WHERE parent_execution_id IS NULL"
    " AND status IN ('pending', 'running', 'waiting', 'compensating')"
)
# The tenant's active descendants of every root (RLS scopes the rows to the tenant), counted up to a bound: the
# predicate is the partial index executions_tenant_root_active's (migration 0036), so the count is one scan of at most
# the bound, however many children have ended.
_ACTIVE_TENANT_DESCENDANTS = (
    "SELECT count(*) AS n FROM (SELECT 1 FROM app.executions WHERE root_execution_id IS NOT NULL"
    " AND status IN ('pending', 'running', 'waiting', 'compensating') LIMIT %s) AS active"
)
_CLAIM_STALE_START = (
    "UPDATE app.executions SET start_claimed_at = clock_timestamp() WHERE id = %s"
    " AND status = 'pending' AND (start_claimed_at IS NULL"
    " OR start_claimed_at < clock_timestamp() - make_interval(secs => %s)) RETURNING start_claimed_at"
)
# Only the claim this start holds (its timestamp): one taken over meanwhile is another starter's to keep.
_RELEASE_START = (
    "UPDATE app.executions SET start_claimed_at = NULL"
    " WHERE id = %s AND status = 'pending' AND start_claimed_at = %s RETURNING id"
)


class StartError(Exception):
    """An execution that may not start; each subclass is one refusal, which every way in translates at its own edge
    (the API to a problem document, the intent-requests ingress to a rejection reason)."""


class IntentNotFoundError(StartError):
    """No such intent, or no such version of it, in the caller's tenant (another tenant's intent included)."""


class StartForbiddenError(StartError):
    """The caller may not execute this intent (the policy decision's reason says why)."""

    def __init__(self, action: str, reason: str) -> None:
        super().__init__(refusal_detail(action, reason))
        self.action, self.reason = action, reason


class TenantSuspendedError(StartError):
    """A suspended tenant's executions are not started (its child intents included)."""


class IntentArchivedError(StartError):
    """Archived intents are kept for history and never run."""


class GateRefusedError(StartError):
    """The tenant may not use a module or the target the intent names (its allow-lists changed since saving)."""

    def __init__(self, violations: list[GateViolation]) -> None:
        super().__init__("; ".join(f"{v.step}: {v.reason} ({v.value})" for v in violations))
        self.violations = violations


class NoLongerValidError(StartError):
    """The pinned version no longer validates (a module it uses was removed, its blueprint broke)."""


class PlanChangedError(StartError):
    """The request insisted on a plan hash that is not the plan this version would run now."""

    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"the plan hash is {actual}, not {expected}")
        self.actual = actual


class InvalidInputError(StartError):
    """The input does not match the intent's input schema."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__(f"the input has {len(errors)} problem{'' if len(errors) == 1 else 's'}")
        self.errors = errors


class QuotaExceededError(StartError):
    """The tenant already runs as many executions as its quota allows."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the tenant already runs {limit} executions, its limit")
        self.limit = limit


class InputTooLargeError(StartError):
    """The orchestration input the start would hand the task hub (the expanded definition, the resolved inputs, the
    plan and the reused outputs, as the Durable client serializes it) is larger than the platform's bound: the
    backend refuses a message that large, every time it is sent (ADR 0014)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"the execution's orchestration input would be {size} bytes as JSON, more than the {limit} bytes allowed"
        )
        self.size, self.limit = size, limit


MAX_CHILD_DEPTH = 8
"""How deep child executions nest at most: a root is depth 0, the children its intent.run steps start depth 1. A
child deeper fails its step (ADR 0014): children are exempt from the concurrent-execution quota, so only a bound
of their own keeps a tree of intents that run each other from growing without end."""
DESCENDANTS_PER_QUOTA = 10
"""One root may have this many active descendants per execution of the tenant's concurrent-execution quota."""
MIN_DESCENDANTS = 100
"""The bound on a root's active descendants, at least: a tenant with a small quota still runs ordinary trees."""
MAX_DESCENDANTS = 10_000
"""The bound on a root's active descendants, at most: what one root holds of the shared task hub, pool and module
threads, and what the count under the start lock scans, stay bounded whatever a tenant's quota."""


class ChildRefusedError(Exception):
    """A child execution refused for its place in its tree: its intent already runs above it, it would nest deeper
    than MAX_CHILD_DEPTH, or its root already has as many active descendants as it may. Not a StartError: only an
    intent.run step's start raises it, failing that step, and no edge (API, ingress) ever has it to answer."""


class IdempotencyConflictError(StartError):
    """The idempotency key was used for a different request (another intent, input, version, plan hash or retried
    execution), or by another principal of the tenant."""


KEY_REUSED = "the idempotency key was already used for a different request"
"""The refusal of a used key, whichever way the request differs: another principal learns no more of the first
request than that its key is taken."""


@dataclass(frozen=True)
class StartRequest:
    """What an execute call asks for."""

    intent_id: UUID
    input: dict[str, Any] = field(default_factory=dict)
    version: int | None = None
    plan_hash: str | None = None
    idempotency_key: str | None = None
    requester: Requester = field(kw_only=True)
    """Who asks, with their authority then (recorded; what the execution's child intents start with)."""
    parent_execution_id: UUID | None = None
    parent_step_id: str | None = None
    retry_of: UUID | None = None
    reused: Mapping[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """What makes two requests with one idempotency key the same request."""
        return hashlib.sha256(
            canonical_json(
                {
                    "intent": str(self.intent_id),
                    "input": self.input,
                    "version": self.version,
                    "plan_hash": self.plan_hash,
                    "retry_of": str(self.retry_of) if self.retry_of else None,
                }
            )
        ).hexdigest()


@dataclass(frozen=True)
class Runnable:
    """A pinned version ready to run: its expanded steps, inputs, target and per-step plan."""

    item: registry.Item
    version: VersionRow
    definition: Definition
    steps: list[Step]
    inputs: dict[str, Any]
    target: str
    plan: dict[str, StepPlan]
    plan_hash: str


@dataclass(frozen=True)
class Started:
    """The execution a start produced or found, and the orchestration input when the caller must start it."""

    execution: repo.Execution
    created: bool
    orchestration_input: dict[str, Any] | None


def _violations(tenant: TenantFacts, target: str | None, steps: list[Step]) -> list[GateViolation]:
    actions: dict[str, str] = {}
    for step in steps:
        actions[step.step_id] = step.action
        if step.compensate is not None:
            actions[f"{step.step_id}/compensate"] = step.compensate.action
    return check_gates(tenant, target, actions)


def step_plans(steps: list[Step], catalog: ModuleCatalog) -> dict[str, StepPlan]:
    """Each step's kind, effective timeout (its own, else its module's) and whether a remote worker runs it."""
    plans: dict[str, StepPlan] = {}
    for step in steps:
        spec = catalog[step.action]
        compensation = catalog.get(step.compensate.action) if step.compensate else None
        plans[step.step_id] = StepPlan(
            kind=ORCHESTRATOR_ACTIONS.get(step.action, "module"),
            timeout_s=step.timeout_s or spec.timeout_s,
            remote=spec.remote,
            compensate_remote=bool(compensation and compensation.remote),
            compensate_timeout_s=step.timeout_s or (compensation.timeout_s if compensation else None),
        )
    return plans


@dataclass(frozen=True)
class RunShape:
    """What a version runs as: its steps (a declaration's are its blueprint version's), the schema its input is
    checked against, and the inputs its steps read (declared values and input defaults under the given input)."""

    definition: Definition
    steps: list[Step]
    schema: dict[str, Any] | None
    inputs: dict[str, Any]


def run_shape(conn: Conn, pinned: VersionRow, given_input: dict[str, Any]) -> RunShape:
    """The version's run shape; NoLongerValidError when a declaration's blueprint version is gone."""
    definition = Definition.model_validate(pinned.definition)
    if not definition.is_declaration:
        assert definition.steps is not None  # not a declaration
        inputs = {**input_defaults(definition.inputs), **given_input}
        return RunShape(definition, list(definition.steps), definition.inputs, inputs)
    ref = pinned.blueprint_ref or {}
    found = blueprint_version(conn, UUID(str(ref["id"])), int(ref["version"])) if ref else None
    if found is None:
        raise NoLongerValidError("the blueprint this version was saved against is gone")
    blueprint = ResolvedBlueprint(found.name, found.version, Definition.model_validate(found.definition))
    inputs = {**declaration_inputs(definition, blueprint), **given_input}
    return RunShape(definition, expand_declaration(definition, blueprint), blueprint.definition.inputs, inputs)


@dataclass(frozen=True)
class InputCheck:
    """A start's checks made before its transaction opened (`checked_input`): which version, name and given input
    they were made for; the input's outcome against the version's input schema (the problems, or why the schema is
    unusable); and the version's definition evaluated against the tenant's catalog as read then."""

    intent_id: UUID
    version: int
    name: str
    given_input: dict[str, Any]
    """The request's input itself: the check stands only for that very object."""
    problems: list[dict[str, str]]
    unusable: str | None
    definition: registry.CheckEvaluated
    execution_id: UUID | None = None
    """The recorded execution whose start a replay takes over (its input, recorded, never changes), if any."""

    def stands_for(self, item: registry.Item, given_input: dict[str, Any]) -> bool:
        """Whether these are the checks `runnable` would make of `item`'s version: versions never change, and a run
        shape is made of its version (a declaration's of its pinned blueprint version, which never changes either)
        and the input; the definition's check reads the name too."""
        return (
            self.intent_id == item.head.id
            and self.version == item.version.version
            and self.name == item.head.name
            and self.given_input is given_input
        )


class InputCheckStaleError(Exception):
    """The version to run is not the one the input was checked against before the transaction (a new current
    version was saved meanwhile): the start's transaction is given up and the input checked again outside it."""


def checked_input(pending: PendingInputCheck, tenant: TenantFacts) -> InputCheck:
    """Check an input against its version's schema, and the version's definition against the tenant's catalog: the
    costly part of a start (a tenant's schema on an input of up to a MiB, seconds of CPU; a definition's schemas
    against the meta-schema), made with no transaction open so that it holds none of the shared pool's connections."""
    definition = registry.check_evaluated(pending.reads, "intent", pending.document, tenant=tenant)
    item = pending.item
    try:
        problems, unusable = _input_problems(pending.schema, pending.inputs), None
    except NoLongerValidError as exc:
        problems, unusable = [], str(exc)
    return InputCheck(
        item.head.id,
        item.version.version,
        item.head.name,
        pending.given_input,
        problems,
        unusable,
        definition,
        pending.execution_id,
    )


@dataclass(frozen=True)
class PendingInputCheck:
    """What a start's checks need, read in a short transaction of their own (`input_to_check`)."""

    item: registry.Item
    """The intent with the version to run."""
    given_input: dict[str, Any]
    schema: dict[str, Any] | None
    inputs: dict[str, Any]
    document: dict[str, Any]
    reads: registry.CheckReads
    execution_id: UUID | None = None
    """A replay's: the recorded execution whose input is checked."""


def _claim_stale(execution: repo.Execution) -> bool:
    """Whether a pending execution's start claim is free or stale, so that a replay would take its start over (the
    start path's own claim statement decides; this only says whether a check is worth making first)."""
    claimed = execution.start_claimed_at
    return claimed is None or (datetime.now(UTC) - claimed).total_seconds() >= STALE_START_S


def input_to_check(conn: Conn, request: StartRequest, *, rebuilt: bool = False) -> PendingInputCheck | None:
    """What the start of `request` would check its input against, read without deciding or writing anything; None
    when the start needs no check or will be refused before it (no such intent or version, an archived intent, a
    declaration whose blueprint is gone, a used idempotency key whose execution is past pending): the start's own
    transaction answers those. A used key's pending execution is what a replay rebuilds when it takes over the
    start's stale claim: its recorded version and input are checked. `rebuilt`: the caller rebuilds a used key's
    execution's orchestration input whatever its status and claim (a child's start answers it on every replay), so
    that execution's recorded version and input are checked."""
    found = _by_key(conn, request.idempotency_key)
    if found is not None and _foreign(found, request):
        return None  # refused by the start's transaction, with no check of another principal's input first
    if found is not None and not rebuilt and (found.status != "pending" or not _claim_stale(found)):
        # Past pending, or its start still claimed by the request that made it: a replay answers without a check.
        return None
    intent_id, version, given = request.intent_id, request.version, request.input
    if found is not None:
        intent_id, version, given = found.intent_id, found.intent_version, found.input
    try:
        item = registry.get(conn, "intent", intent_id)
        if item.head.status == "archived":
            return None
        if version is not None and version != item.version.version:
            item = replace(item, version=registry.version(conn, "intent", item.head.id, version))
        shape = run_shape(conn, item.version, given)
    except (registry.NotFoundError, registry.UnknownVersionError, NoLongerValidError, ValidationError):
        # A stored definition the current model refuses (ValidationError) is the start's own transaction's to answer,
        # after the refusals that come first (the tenant's status, the decision, a replay).
        return None
    document = item.document()
    reads = registry.check_reads(conn, "intent", document, pin=item.version.blueprint_ref)
    execution_id = None if found is None else found.id
    return PendingInputCheck(item, given, shape.schema, shape.inputs, document, reads, execution_id)


def _input_problems(schema: dict[str, Any] | None, values: dict[str, Any]) -> list[dict[str, str]]:
    if schema is None:
        return []
    evaluated = evaluate_tenant_schema(schema, values)
    if evaluated.too_costly:
        # The input is what a smaller request would change: refused as invalid input (422), not as a version that
        # no longer validates (409).
        detail = f"the input is too costly to check against the input schema ({evaluated.unusable}); send a smaller one"
        return [{"pointer": "/input", "detail": detail}]
    if evaluated.unusable is not None:
        # A schema saved before its references were bounded: evaluated, it raised RecursionError (a 500) or ran
        # for minutes; or one that runs out of its budget on an empty input too, whatever a tenant sends. The intent
        # must be saved again with a usable one.
        raise NoLongerValidError(f"its input schema cannot be evaluated ({evaluated.unusable})")
    # The evaluation collects a bounded number of violations (schema_refs.MAX_VIOLATIONS); the first found are sorted.
    problems = []
    for error in sorted(evaluated.violations, key=lambda e: list(map(str, e.path)))[:MAX_REPORTED_INPUT_ERRORS]:
        location = "/input" + "".join(f"/{part}" for part in error.absolute_path)
        detail = error.message if len(error.message) <= 300 else error.message[:297] + "..."
        problems.append({"pointer": location, "detail": detail})
    return problems


def runnable(
    conn: Conn,
    tenant: TenantFacts,
    item: registry.Item,
    version: int | None,
    given_input: dict[str, Any],
    *,
    input_check: InputCheck | None = None,
) -> Runnable:
    """The version of `item` to run with its steps, checked against the tenant's gates and catalog as they are now.

    `input_check`: the input's check, made before the transaction; InputCheckStaleError when it was made for another
    version than the one to run (the input is then not checked here, where it would hold the connection)."""
    if item.head.status == "archived":
        raise IntentArchivedError(f"intent {item.head.id} is archived")
    pinned = item.version if version is None else registry.version(conn, "intent", item.head.id, version)
    shape = run_shape(conn, pinned, given_input)
    definition, steps, schema, inputs = shape.definition, shape.steps, shape.schema, shape.inputs
    target = definition.target or ""
    violations = _violations(tenant, definition.target, steps)
    if violations:
        raise GateRefusedError(violations)
    to_run = registry.Item(item.head, pinned)
    if input_check is None:
        problems = _input_problems(schema, inputs)
    elif not input_check.stands_for(to_run, given_input):
        raise InputCheckStaleError(f"the start was checked against version {input_check.version}, not {pinned.version}")
    elif input_check.unusable is not None:
        raise NoLongerValidError(input_check.unusable)
    else:
        problems = input_check.problems
    if problems:
        raise InvalidInputError(problems)
    try:
        if input_check is None:
            checked = registry.check(conn, "intent", to_run.document(), tenant=tenant, pin=pinned.blueprint_ref)
        else:
            checked = registry.check_finish(conn, "intent", input_check.definition)
    except registry.DefinitionInvalidError as exc:
        raise NoLongerValidError(str(exc) + " " + "; ".join(f"{e.pointer}: {e.message}" for e in exc.errors)) from None
    plans = step_plans(steps, checked.catalog)
    return Runnable(item, pinned, definition, steps, inputs, target, plans, checked.plan_hash)


def orchestration_input(
    tenant_id: UUID, execution: repo.Execution, run: Runnable, reused: Mapping[str, Any]
) -> dict[str, Any]:
    """The orchestrator's input: the expanded definition, resolved inputs, per-step plan and reused outputs, and the
    trace the execution's spans continue (its start's own root span, linked to the caller's; when traced)."""
    return _input_of(tenant_id, execution.id, execution.intent_id, execution.intent_version, run, reused)


def _input_of(
    tenant_id: UUID,
    execution_id: UUID,
    intent_id: UUID,
    intent_version: int,
    run: Runnable,
    reused: Mapping[str, Any],
) -> dict[str, Any]:
    """`orchestration_input` of an execution named by its id, intent and version (its row not yet written)."""
    definition = {
        "target": run.definition.target,
        "steps": [step.model_dump(mode="json", exclude_none=True) for step in run.steps],
    }
    start: dict[str, Any] = {
        "execution_id": str(execution_id),
        "tenant_id": str(tenant_id),
        "intent_id": str(intent_id),
        "intent_version": intent_version,
        "definition": definition,
        "inputs": run.inputs,
        "plan": {key: plan.model_dump() for key, plan in run.plan.items()},
        "reused": dict(reused),
        "rules": RULES,
    }
    traceparent = current_traceparent()
    if traceparent is not None:
        start[TRACEPARENT] = traceparent
    return start


def input_size(start_input: dict[str, Any]) -> int:
    """The orchestration input's size as the Durable client sends it: its start_new serializes the input with
    json.dumps and its defaults (ensure_ascii: a non-ASCII character takes up to 12 bytes, a surrogate pair's two
    escapes; most take 6), then posts that string as a JSON body, which escapes every quote and backslash in it once
    more. Measured once, as the first serialization, it was about a fifth smaller than what the host received (twice
    as small for text of quotes), and an input under the bound could still pass the backend's ceiling."""
    return len(json.dumps(json.dumps(start_input)))


def bounded_input(start_input: dict[str, Any]) -> dict[str, Any]:
    """`start_input`, when it is within QP_MAX_ORCHESTRATION_INPUT_BYTES; else InputTooLargeError. The Durable Task
    Scheduler refuses a message past its ceiling (about 1 MiB) and offloads no large payload for Python: started, such
    an input failed every launch the same way, and its execution was retried for ever (ADR 0014)."""
    limit = get_settings().QP_MAX_ORCHESTRATION_INPUT_BYTES
    size = input_size(start_input)
    if size > limit:
        raise InputTooLargeError(size, limit)
    return start_input


def concurrent_limit(quotas: TenantQuotas) -> int:
    """The tenant's concurrent-execution quota (the platform default when it sets none)."""
    quota = quotas.max_concurrent_executions
    return quota if quota is not None else get_settings().QP_DEFAULT_MAX_CONCURRENT_EXECUTIONS


def descendant_limit(quotas: TenantQuotas) -> int:
    """How many active descendants one root execution may have, and all the tenant's roots together:
    DESCENDANTS_PER_QUOTA times the tenant's concurrent-execution quota, within MIN_DESCENDANTS and MAX_DESCENDANTS."""
    return min(max(concurrent_limit(quotas) * DESCENDANTS_PER_QUOTA, MIN_DESCENDANTS), MAX_DESCENDANTS)


def _child_root(conn: Conn, intent_id: UUID, parent_id: UUID) -> UUID:
    """The root of the tree a child of `parent_id` running `intent_id` joins; ChildRefusedError when its intent
    already runs above it (an intent running itself, directly or through others, would start children for ever)
    or it would nest deeper than MAX_CHILD_DEPTH."""
    # One row more than a child at the deepest allowed place has above it: a full answer means too deep.
    chain = repo.ancestors(conn, parent_id, MAX_CHILD_DEPTH + 1)
    if not chain:
        raise repo.ExecutionNotFoundError(f"No execution {parent_id}.")
    for above in chain:
        if above.intent_id == intent_id:
            raise ChildRefusedError(f"it is already running above this step (execution {above.id})")
    if len(chain) > MAX_CHILD_DEPTH:
        raise ChildRefusedError(f"it would nest deeper than {MAX_CHILD_DEPTH} levels below its root execution")
    return chain[-1].id


def active_executions(conn: Conn) -> int:
    """The tenant's root executions that have not ended (what the concurrent-execution quota counts: their child
    executions are not, ADR 0014)."""
    row = conn.execute(_ACTIVE).fetchone()
    return 0 if row is None else int(row["n"])


def active_tenant_descendants(conn: Conn, limit: int) -> int:
    """The tenant's child executions, below all its roots, that have not ended, counted up to `limit` (what the
    tenant-wide bound on descendants counts; children from before migration 0036, with no root recorded, are not)."""
    row = conn.execute(_ACTIVE_TENANT_DESCENDANTS, (limit,)).fetchone()
    return 0 if row is None else int(row["n"])


def authorized_item(conn: Conn, request: StartRequest, authorize: Callable[[registry.Item], None]) -> registry.Item:
    """The intent `request` names, with the version to run, once `authorize` has allowed it: the first of a start's
    refusals after the tenant's status (IntentNotFoundError, then what `authorize` raises), in this order wherever it
    is asked. The start service asks it before the input's costly check too, so that a caller refused pays for none."""
    try:
        item = registry.get(conn, "intent", request.intent_id)
        authorize(item)
        if request.version is not None and request.version != item.version.version:
            # A pinned version runs with its own target and labels, so it is decided on them too, not only on the
            # current version's (ADR 0035): an older version may be production's while the current one is staging's.
            item = replace(item, version=registry.version(conn, "intent", item.head.id, request.version))
            authorize(item)
    except (registry.NotFoundError, registry.UnknownVersionError) as exc:
        # A start error like any other: an intent.run step pinning a version that does not exist fails its step,
        # where this escaped the dispatch and failed its whole level's batch.
        raise IntentNotFoundError(str(exc)) from None
    return item


Admit = Callable[[Conn], None]
"""A caller's last word on a start, in its transaction: raises to refuse it. `start_execution` asks it before it
creates or hands back an execution: right after it takes the tenant's start lock (before the key's second lookup, the
quota and the insert) and, for a replay of an execution the key's first lookup found, before that replay's claim. What
it reads so sees every row committed by a transaction that held the lock before this start, and on a replay every
row committed before the replayed execution (whose insert held the lock). The input's check, when made in the
transaction, comes before the lock: nothing waits for the lock across it."""


def start_execution(
    conn: Conn,
    tenant: TenantFacts,
    request: StartRequest,
    *,
    max_concurrent: int,
    authorize: Callable[[registry.Item], None],
    max_descendants: int = MIN_DESCENDANTS,
    input_check: InputCheck | None = None,
    admit: Admit | None = None,
) -> Started:
    """In the caller's tenant transaction: check, hold the quota, and create the execution with its steps.

    With an idempotency key already used, the execution it created is returned (and its start only handed
    back if that start stalled or its launch failed). `authorize` decides on the intent (its target) before
    anything is revealed.
    A child (`parent_execution_id`) is placed in its tree first: ChildRefusedError when its intent runs above it,
    it would nest deeper than MAX_CHILD_DEPTH, or its root, or the tenant's roots together, already have
    `max_descendants` active descendants.
    `input_check`: the input's check made before this transaction (`checked_input`), used in place of checking it here;
    InputCheckStaleError when the version to run is another one.
    `admit`: called before the start creates or hands back an execution, under the tenant's start lock (or, for a
    replay found before it, after the key's lookup), to refuse it by raising; see Admit.
    """
    if tenant.status != "active":
        raise TenantSuspendedError(f"tenant {tenant.id} is {tenant.status}")
    item = authorized_item(conn, request, authorize)
    fingerprint = request.fingerprint()
    found = _by_key(conn, request.idempotency_key)
    if found is not None:
        _admitted(conn, admit)
        return _replayed(conn, tenant, found, request, fingerprint, input_check)
    # After the key's lookup, so that a re-executed activity finds the child it started whatever its tree holds now.
    root = None
    if request.parent_execution_id is not None:
        root = _child_root(conn, request.intent_id, request.parent_execution_id)
    # `item` holds the version to run, read once
    run = runnable(conn, tenant, item, None, request.input, input_check=input_check)
    if request.plan_hash is not None and request.plan_hash != run.plan_hash:
        raise PlanChangedError(request.plan_hash, run.plan_hash)
    execution_id = uuid4()
    # Measured before anything is written, and before the tenant's lock (a refusal every retry would meet again, not
    # one of headroom): the input is the one this start hands the task hub, built for the row about to be inserted
    # (its id, intent and version are all it takes of the row).
    start_input = bounded_input(
        _input_of(tenant.id, execution_id, request.intent_id, run.version.version, run, request.reused)
    )
    # Serializes the quota check and the insert per tenant: two concurrent starts cannot both see headroom.
    tenant_locks.hold(conn, "executions")
    _admitted(conn, admit)
    # Again under the lock: a request with the same key that held it before us has committed its execution by now,
    # and this one is its replay, not a start the quota (or the tree's bound) may refuse.
    found = _by_key(conn, request.idempotency_key)
    if found is not None:
        return _replayed(conn, tenant, found, request, fingerprint, input_check)
    if active_executions(conn) >= max_concurrent:
        metrics.request_refused(tenant.id, "execution-quota")
        raise QuotaExceededError(max_concurrent)
    # Under the same lock: two children of one root cannot both take the last place. Children are exempt from the
    # quota above (a parent must not wait on its own quota), and this is what bounds them instead.
    if root is not None and repo.active_descendants(conn, root, max_descendants) >= max_descendants:
        raise ChildRefusedError(
            f"its root execution {root} already has {max_descendants} active descendants, the most one root may have"
        )
    # The bound per root alone let every root the quota admits hold its own `max_descendants`: a tenant whose quota
    # is q held q × (1 + max_descendants) executions. Counted over all the tenant's roots as well, its active
    # executions stay within q + max_descendants, and a parent still never waits: a refusal is at once.
    if root is not None and active_tenant_descendants(conn, max_descendants) >= max_descendants:
        raise ChildRefusedError(
            f"the tenant's executions already have {max_descendants} active descendants, the most all its roots"
            " may have together"
        )
    execution, created = repo.create_execution(
        conn,
        execution_id=execution_id,
        intent_id=request.intent_id,
        intent_version=run.version.version,
        target=run.target,
        input=run.inputs,
        requester=request.requester,
        idempotency_key=request.idempotency_key,
        plan_hash=run.plan_hash,
        parent_execution_id=request.parent_execution_id,
        parent_step_id=request.parent_step_id,
        retry_of=request.retry_of,
        request_sha256=fingerprint,
        root_execution_id=root,
    )
    if not created:  # a concurrent request with the same key won the insert
        return _replayed(conn, tenant, execution, request, fingerprint, input_check)
    seed_steps(
        conn,
        execution.id,
        [
            StepSeed(
                step.step_id,
                step.action,
                (step.retry.max_attempts if step.retry else 1),
                reused_output=request.reused.get(step.step_id),
                reused=step.step_id in request.reused,
            )
            for step in run.steps
        ],
    )
    telemetry.emit_on_commit(
        conn,
        "execution.started",
        tenant_id=tenant.id,
        execution_id=execution.id,
        intent_id=execution.intent_id,
        intent_version=execution.intent_version,
    )
    return Started(execution, True, start_input)


def _admitted(conn: Conn, admit: Admit | None) -> None:
    """Ask the caller's `admit`, if any, whether the start may go on (it raises when not)."""
    if admit is not None:
        admit(conn)


STALE_START_S = 30.0
"""A start claimed longer ago than this and still pending is taken over (its starter died in between)."""


def claim_stale_start(conn: Conn, execution_id: UUID, stale_after_s: float = STALE_START_S) -> bool:
    """Take over the start of a pending execution whose claim is older than `stale_after_s`; True when taken.

    The conditional update is the one arbiter: of concurrent takers (a repeated request, the sweeper) the row lock
    lets one through, and the others then see a fresh claim.
    """
    return _claim_stale_start(conn, execution_id, stale_after_s) is not None


def _claim_stale_start(conn: Conn, execution_id: UUID, stale_after_s: float) -> datetime | None:
    row = conn.execute(_CLAIM_STALE_START, (execution_id, stale_after_s)).fetchone()
    return None if row is None else row["start_claimed_at"]


def release_start(conn: Conn, execution: repo.Execution) -> bool:
    """Give up the start claim `execution` holds (its orchestration could not be started), so that a repeated
    request, or the sweeper, takes the start over at once; False when the claim is no longer this start's."""
    released = conn.execute(_RELEASE_START, (execution.id, execution.start_claimed_at)).fetchone()
    return released is not None


def _by_key(conn: Conn, idempotency_key: str | None) -> repo.Execution | None:
    return None if idempotency_key is None else repo.find_by_key(conn, idempotency_key)


def _foreign(execution: repo.Execution, request: StartRequest) -> bool:
    """Whether a caller's key names an execution another principal requested: a tenant's keys are bound to their
    caller (ADR 0012), else a replay hands one principal another's execution. Every execution has recorded its
    requester from the first, so keys used before this binding are bound alike. A child's key is the platform's own,
    replayed by each dispatch of its step whoever requested its root."""
    key = execution.idempotency_key
    return key is not None and not key.startswith(RESERVED_PREFIX) and execution.requested_by != request.requester.id


def _replayed(
    conn: Conn,
    tenant: TenantFacts,
    execution: repo.Execution,
    request: StartRequest,
    fingerprint: str,
    input_check: InputCheck | None,
) -> Started:
    if _foreign(execution, request):
        raise IdempotencyConflictError(KEY_REUSED)
    if execution.request_sha256 is not None and execution.request_sha256 != fingerprint:
        raise IdempotencyConflictError(KEY_REUSED)
    claimed_at = _claim_stale_start(conn, execution.id, STALE_START_S)
    if claimed_at is None:
        return Started(execution, False, None)
    # The claim this start now holds, so that a launch that fails can give back exactly this one.
    execution = replace(execution, start_claimed_at=claimed_at)
    # Measured again: a row recorded before the bound, or under a larger one, is refused as a new start would be.
    if input_check is None:
        return Started(execution, False, bounded_input(rebuild_input(conn, tenant, execution)))
    return Started(execution, False, bounded_input(rebuild_input(conn, tenant, execution, input_check=input_check)))


def rebuild_to_check(conn: Conn, execution: repo.Execution) -> PendingInputCheck | None:
    """What `rebuild_input` checks of a recorded execution (its recorded version and input, the version's definition
    against the tenant's catalog), read without deciding or writing anything, for the check to be made with no
    transaction open (`start_service.checked_first`); None when the rebuild is refused before any check (see
    `input_to_check`), which the rebuild's own transaction then answers."""
    recorded = StartRequest(
        intent_id=execution.intent_id,
        input=execution.input,
        version=execution.intent_version,
        requester=execution.requester,
    )
    pending = input_to_check(conn, recorded)
    return None if pending is None else replace(pending, execution_id=execution.id)


def rebuild_input(
    conn: Conn, tenant: TenantFacts, execution: repo.Execution, *, input_check: InputCheck | None = None
) -> dict[str, Any]:
    """The orchestration input of a recorded execution, from its pinned version and reused steps; `input_check`: a
    replay's checks made before its transaction (InputCheckStaleError when they are not this execution's)."""
    item = registry.get(conn, "intent", execution.intent_id)
    if input_check is not None:
        if input_check.execution_id != execution.id:
            raise InputCheckStaleError(f"the start was checked for execution {input_check.execution_id}")
        # The recorded input never changes: the one read before this transaction stands for this one.
        input_check = replace(input_check, given_input=execution.input)
    run = runnable(conn, tenant, item, execution.intent_version, execution.input, input_check=input_check)
    reused = {row["step_id"]: row["output"] for row in list_steps(conn, execution.id) if row["reused"]}
    return orchestration_input(tenant.id, execution, run, reused)


def plan_to_check(conn: Conn, execution: repo.Execution) -> PendingInputCheck | None:
    """What a recorded execution's per-step plan needs checked (`rebuild_plan`): its version's definition against the
    tenant's catalog, which gives the steps' modules and their timeouts; not its recorded input against its schema,
    which the plan does not read (checked at its start; neither the input nor its version changes). None as
    `rebuild_to_check` answers it."""
    pending = rebuild_to_check(conn, execution)
    # No schema: the input's check finds nothing and costs nothing. No inputs: the gate weighs the definition alone.
    return None if pending is None else replace(pending, schema=None, inputs={})


def rebuild_plan(
    conn: Conn, tenant: TenantFacts, execution: repo.Execution, *, input_check: InputCheck | None = None
) -> dict[str, Any]:
    """The per-step plan `rebuild_input` builds of a recorded execution, with no check of its input: `input_check` is
    `plan_to_check`'s, made before this transaction; without one, the definition is checked here (the input is not)."""
    if input_check is None:
        pending = plan_to_check(conn, execution)
        if pending is not None:
            input_check = checked_input(pending, tenant)
    plan: dict[str, Any] = rebuild_input(conn, tenant, execution, input_check=input_check)["plan"]
    return plan
