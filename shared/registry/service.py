# intent_ref: platform.registry
"""Registry operations on intents and blueprints, each inside the caller's tenant transaction."""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
import pydantic
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from shared.config import get_settings
from shared.db import tenant_locks
from shared.events.outbox import enqueue
from shared.pagination import InvalidCursorError, list_cursor, list_position
from shared.policy.authorizer import Decision
from shared.policy.facts import TenantFacts
from shared.policy.gates import module_of_action
from shared.registry.catalog import IntentRunParams, ModuleCatalog
from shared.registry.diff import FieldChange, diff_definitions
from shared.registry.model import Definition, IntentDefinitionIn, ResolvedBlueprint, Step
from shared.registry.modules import tenant_catalog
from shared.registry.plan import canonical_json, plan_hash
from shared.registry.problems import ValidationError, pointer
from shared.registry.repository import (
    BlueprintVersion,
    HeadRow,
    Kind,
    ListedHead,
    NameTakenError,
    NewVersion,
    Status,
    ValueRefusedError,
    VersionRow,
    active_heads,
    advance_head,
    archive_head,
    blueprint_version,
    current_blueprint,
    find_head,
    get_head,
    get_version,
    hold_head,
    insert_head,
    insert_version,
    list_heads,
    list_versions,
    name_taken,
    version_exists,
)
from shared.registry.validation import (
    Limits,
    ValidationResult,
    required_blueprint,
    stored_size_problem,
    unshown_text_problems,
    validate_definition,
)

__all__ = [
    "ArchivedError",
    "CheckStaleError",
    "Checked",
    "DefinitionInvalidError",
    "DescendantWalk",
    "DiffResult",
    "Item",
    "NameConflictError",
    "NotFoundError",
    "OutsideCheck",
    "PendingCheck",
    "Plan",
    "PlannedStep",
    "PreconditionFailedError",
    "QuotaHeadroom",
    "RESPONSE_ONLY_FIELDS",
    "RegistryError",
    "UnknownVersionError",
    "archive",
    "check",
    "check_evaluated",
    "check_finish",
    "check_outside",
    "check_reads",
    "create",
    "diff_versions",
    "etag",
    "get",
    "list_items",
    "pending_create",
    "pending_plan",
    "pending_rollback",
    "pending_update",
    "plan",
    "rollback",
    "update",
    "version",
    "versions",
]

RESPONSE_ONLY_FIELDS = frozenset(
    {"blueprint_ref", "origin", "archived_at", "created_by", "version_created_at", "version_created_by"}
)
"""Fields a GET answers with beyond the model's own read-only ones; a PUT of a GET's body ignores them too."""

Conn = psycopg.Connection[DictRow]


class RegistryError(Exception):
    """A registry operation that cannot be done; each subclass is one API answer."""


class NotFoundError(RegistryError):
    """No such item of this kind in the tenant (another tenant's item is not found either)."""


class UnknownVersionError(RegistryError):
    """The item exists but has no such version."""


class ArchivedError(RegistryError):
    """The item is archived: it takes no new versions."""


class NameConflictError(RegistryError):
    """The name is taken in the tenant (archived items keep theirs)."""


class PreconditionFailedError(RegistryError):
    """The If-Match ETag is not the current version's."""

    def __init__(self, current_etag: str) -> None:
        super().__init__("the item changed since that ETag was issued")
        self.current_etag = current_etag


class DefinitionInvalidError(RegistryError):
    """The definition does not validate; every problem is listed, but for `unlisted` ones only counted (unknown
    members past the first MAX_REPORTED_ERRORS, which sort after every listed problem)."""

    def __init__(self, errors: Collection[ValidationError], detail: str, unlisted: int = 0) -> None:
        super().__init__(detail)
        self.errors = tuple(errors)
        self.detail = detail
        self.unlisted = unlisted


def etag(item_id: UUID, version: int, status: Status) -> str:
    """The strong ETag of an item: the identity of its current version, and `.archived` once it is archived (the
    representation changes with the status, so a strong validator must too); an active item's is `"<id>.v<n>"`."""
    return f'"{item_id}.v{version}"' if status == "active" else f'"{item_id}.v{version}.{status}"'


def definition_sha256(definition: dict[str, Any]) -> str:
    """The digest a version stores of its definition (canonical JSON, so key order does not matter)."""
    return hashlib.sha256(canonical_json(definition)).hexdigest()


@dataclass(frozen=True)
class Item:
    """An intent or blueprint with its current version."""

    head: HeadRow
    version: VersionRow

    @property
    def etag(self) -> str:
        return etag(self.head.id, self.version.version, self.head.status)

    @property
    def target(self) -> str | None:
        target = self.version.definition.get("target")
        return target if isinstance(target, str) else None

    def document(self) -> dict[str, Any]:
        """The current version as a create/update request body (what validation reads)."""
        return _document(self.head.name, self.version)


def _document(name: str, version: VersionRow) -> dict[str, Any]:
    return {
        "name": name,
        "description": version.description,
        "labels": version.labels,
        "definition": version.definition,
    }


def _subject(kind: Kind, item_id: UUID) -> str:
    return f"{kind}s/{item_id}"


# --- validation -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checked:
    """A definition that validated: the request, its normalized definition, steps and plan, and the blueprint."""

    result: ValidationResult
    catalog: ModuleCatalog
    blueprint: BlueprintVersion | None
    normalized: dict[str, Any]
    """The normalized definition exactly as jsonb stores and returns it (see `_as_stored`)."""

    @property
    def request(self) -> IntentDefinitionIn:
        assert self.result.intent is not None  # only a valid result is Checked
        return self.result.intent

    @property
    def levels(self) -> list[list[str]]:
        return self.result.plan or []

    @property
    def pin(self) -> dict[str, Any] | None:
        """What a version stores of the blueprint it was validated against."""
        if self.blueprint is None:
            return None
        return {"id": str(self.blueprint.id), "name": self.blueprint.name, "version": self.blueprint.version}

    @property
    def plan_hash(self) -> str:
        return plan_hash(self.normalized, self.result.blueprint_ref)


def _storage_problems(doc: Any) -> list[ValidationError]:
    """Strings Postgres cannot store (NUL, unpaired surrogates): refused as problems rather than failing the save."""
    problems: list[ValidationError] = []
    # Iterative: the document may be deep (the validator bounds depth, but runs after this). Each node's path is a
    # link to its parent's, turned into a pointer only for a problem: a path tuple per node cost its depth in copies.
    stack: list[tuple[_Path, Any]] = [(None, doc)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, dict):
            for key, child in node.items():
                if isinstance(key, str) and _unstorable(key):
                    problems.append(
                        ValidationError(
                            pointer(*_steps((path, key))),
                            "a key holds a NUL character or an unpaired surrogate, which cannot be stored",
                            "unstorable_text",
                        )
                    )
                stack.append(((path, key), child))
        elif isinstance(node, list):
            stack.extend(((path, index), child) for index, child in enumerate(node))
        elif isinstance(node, str) and _unstorable(node):
            problems.append(
                ValidationError(
                    pointer(*_steps(path)),
                    "the text holds a NUL character or an unpaired surrogate, which cannot be stored",
                    "unstorable_text",
                )
            )
    return sorted(problems, key=lambda problem: problem.pointer)


_Path = tuple[Any, str | int] | None
"""Where a node sits: (its parent's path, its key or index), None at the root."""


def _steps(path: _Path) -> list[str | int]:
    steps: list[str | int] = []
    while path is not None:
        path, step = path
        steps.append(step)
    return steps[::-1]


def _unstorable(text: str) -> bool:
    if "\x00" in text:
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _resolved(blueprint: BlueprintVersion) -> ResolvedBlueprint | ValidationError:
    try:
        return ResolvedBlueprint(blueprint.name, blueprint.version, Definition.model_validate(blueprint.definition))
    except pydantic.ValidationError:
        return ValidationError(
            "/definition", f"blueprint {blueprint.name}@{blueprint.version} no longer parses", "blueprint_invalid"
        )


def registry_limits() -> Limits:
    """The definition limits from the app settings (QP_REGISTRY_MAX_*)."""
    settings = get_settings()
    return Limits(
        max_definition_bytes=settings.QP_REGISTRY_MAX_DEFINITION_BYTES,
        max_steps=settings.QP_REGISTRY_MAX_STEPS,
        max_depth=settings.QP_REGISTRY_MAX_DEPTH,
    )


def _sent_name(doc: Any) -> Any:
    return doc.get("name") if isinstance(doc, dict) else None


def check(
    conn: Conn,
    kind: Kind,
    doc: Any,
    *,
    tenant: TenantFacts,
    pin: dict[str, Any] | None = None,
    limits: Limits | None = None,
    saving: bool = False,
    writing: bool = False,
    refused_name: bool = False,
    again: int | None = None,
    outside: OutsideCheck | None = None,
    version: int | None = None,
    sent: bool = False,
) -> Checked:
    """Validate a request body against the tenant's catalog and gates; a declaration against its blueprint (the
    pinned version if `pin`, else the blueprint's current one). Raises DefinitionInvalidError with every problem.

    `outside`: the costly part of this check made before this transaction (`check_outside`), taken without making it
    again if it was made of this very document (a plan's: of the item's current version `version`; a save's, of
    whichever, `_made_for`), against reads that answer now as they did then (read again here, a declaration's
    blueprint held when `writing`); CheckStaleError when any of that changed.

    `saving`: a create, an update, their validation or a rollback, which also refuses an intent that runs itself or
    comes back to itself; a stored version is checked without it (one saved before that refusal still runs and
    plans, and the engine refuses the self-run when it comes).

    `writing`: saving, followed by a write of the version in this transaction (a create, an update or a rollback,
    not a validation). A declaration's blueprint is then held active until the transaction ends, so a blueprint
    archived meanwhile takes no new declaration version; and an intent whose steps run an intent verifies its walk
    of the tenant's intents under their `intent-runs` lock, held until the transaction ends, so that two such saves
    at once cannot both pass and close a cycle together. A validation writes nothing, so it neither holds nor waits
    for either.

    `again`: saving as a rollback whose steps are the current version's, making version `again`: the walk looks
    only for the paths that version's number makes (steps elsewhere that pin it), and the literal self-run check is
    left out (the current version runs the same steps).

    `sent`: the document is a caller's new one (a create's or an update's body), whose free text is also held to
    `unshown_text_problems`; a stored one (a rollback's, a plan's, a start's) is not, so that a version saved before
    that rule still rolls back, plans and runs.

    `refused_name`: the caller refuses the save for its name anyway (a create of a taken name, an update that
    renames), which it answers once the definition is otherwise valid: no cycle walk, whose recursive_intent would
    answer in its place."""
    reads = check_reads(conn, kind, doc, pin=pin, writing=writing)
    if outside is None:
        evaluated = check_evaluated(
            reads, kind, doc, tenant=tenant, limits=limits, saving=saving, again=again, sent=sent
        )
    else:
        pending, evaluated = outside.pending, outside.evaluated
        if (
            _made_for(pending.kind, pending.version, pending.saving, pending.again)
            != _made_for(kind, version, saving, again)
            or pending.sent != sent
            or not (pending.doc is doc or pending.doc == doc)
        ):
            raise CheckStaleError(f"the {kind} was checked at version {pending.version}, not {version}")
        if not _reads_stand(reads, pending.reads):
            raise CheckStaleError(f"the catalog or the blueprint the {kind} was checked against changed")
    return check_finish(conn, kind, evaluated, writing=writing, refused_name=refused_name, again=again)


def _made_for(kind: Kind, version: int | None, saving: bool, again: int | None) -> tuple[Any, ...]:
    """What an evaluation's outcome depends on besides its document and its reads. A save's (an update's body, a
    rollback's target version, with the name, which never changes) does not depend on which version is current: the
    writing transaction judges that apart (If-Match, the rename refusal, the cycle walk with its `again`), so a save
    racing another takes its check still; only whether the literal self-run was looked for (`again` set or not) is
    the evaluation's. A plan's is of the version it plans, and answers for that one alone."""
    return (kind, saving, again is None) if saving else (kind, saving, version)


@dataclass(frozen=True)
class CheckReads:
    """What a check reads before it evaluates anything (`check_reads`): the tenant's catalog and a declaration's
    blueprint version, with the problems found reading them."""

    catalog: ModuleCatalog
    found: BlueprintVersion | None
    resolved: ResolvedBlueprint | None
    problems: list[ValidationError]


@dataclass(frozen=True)
class CheckEvaluated:
    """A definition evaluated against what was read for it (`check_evaluated`), not yet walked or normalized."""

    reads: CheckReads
    doc: Any
    result: ValidationResult
    errors: list[ValidationError]
    runs_as: str | None
    limits: Limits


def _without_response_fields(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {key: value for key, value in doc.items() if key not in RESPONSE_ONLY_FIELDS}
    return doc


def check_reads(
    conn: Conn, kind: Kind, doc: Any, *, pin: dict[str, Any] | None = None, writing: bool = False
) -> CheckReads:
    """The first part of `check`, in a tenant transaction: what its evaluation needs read."""
    doc = _without_response_fields(doc)
    catalog = tenant_catalog(conn)
    wanted = required_blueprint(doc)
    found: BlueprintVersion | None = None
    resolved: ResolvedBlueprint | None = None
    problems: list[ValidationError] = []
    if wanted is not None and kind == "blueprint":
        problems.append(
            ValidationError(
                "/definition/steps", "a blueprint defines steps; only an intent can be a declaration", "steps_required"
            )
        )
    elif wanted is not None:
        found = (
            blueprint_version(conn, UUID(str(pin["id"])), int(pin["version"]))
            if pin is not None
            else current_blueprint(conn, wanted, hold=writing)
        )
        if found is not None:
            outcome = _resolved(found)
            if isinstance(outcome, ValidationError):
                problems.append(outcome)
            else:
                resolved = outcome
    return CheckReads(catalog, found, resolved, problems)


def check_evaluated(
    reads: CheckReads,
    kind: Kind,
    doc: Any,
    *,
    tenant: TenantFacts,
    limits: Limits | None = None,
    saving: bool = False,
    again: int | None = None,
    sent: bool = False,
) -> CheckEvaluated:
    """The costly part of `check`, needing no transaction: the definition validated against what was read (its
    schemas against the meta-schema, its module parameters against theirs; up to seconds of CPU for a large one).
    A route calls it between two transactions, so that it holds none of the shared pool's connections."""
    doc = _without_response_fields(doc)
    problems = [*_storage_problems(doc), *reads.problems, *(unshown_text_problems(doc) if sent else ())]
    # A blueprint is no intent: an intent it runs may share its name.
    # The name as sent: a malformed one is reported by the model, and matches no step's intent anyway.
    runs_as = name if saving and kind == "intent" and isinstance(name := _sent_name(doc), str) else None
    limits = limits or registry_limits()
    result = validate_definition(
        doc,
        catalog=reads.catalog,
        tenant=tenant,
        blueprint=reads.resolved,
        limits=limits,
        runs_as=runs_as if again is None else None,
    )
    errors = [
        *problems,
        *(error for error in result.errors if not (kind == "blueprint" and error.code == "blueprint_required")),
    ]
    return CheckEvaluated(reads, doc, result, errors, runs_as, limits)


def check_finish(
    conn: Conn,
    kind: Kind,
    evaluated: CheckEvaluated,
    *,
    writing: bool = False,
    refused_name: bool = False,
    again: int | None = None,
) -> Checked:
    """The last part of `check`, in a tenant transaction: the normalized definition as it is stored, held to the byte
    limit as such, and an intent's walk of the intents it runs (saving); DefinitionInvalidError with every problem
    found."""
    result, doc, runs_as, found = evaluated.result, evaluated.doc, evaluated.runs_as, evaluated.reads.found
    errors = list(evaluated.errors)
    stored: dict[str, Any] | None = None
    if not errors and result.normalized is not None:
        stored = _as_stored(conn, result.normalized)
        if (too_large := stored_size_problem(stored, evaluated.limits)) is not None:
            errors.append(too_large)
    if runs_as is not None and not refused_name and not errors and result.ok:
        # Only a definition that is otherwise valid is walked: its steps are parsed, and a save it refuses anyway
        # costs no reads of the tenant's other intents.
        declared = found is not None
        looked: dict[_Wanted, _Reached | None] = {}
        read: dict[_Key, tuple[Step, ...]] = {}
        steps, saved = result.steps, runs_as

        def walk(looked: dict[_Wanted, _Reached | None]) -> list[ValidationError]:
            return _cycle_problems(conn, saved, doc, steps, declaration=declared, looked=looked, again=again, read=read)

        cycles = walk(looked)
        if writing and any(step.action == "intent.run" for step in result.steps):
            # The walk's reads (definitions, seconds' worth on a tenant of large intents) were made before the
            # turn; under it, one statement tells whether a save that had the turn meanwhile moved any head the
            # walk looked up, and only then is the walk made again, now seeing that save: with the answers of the
            # names that did not move and the definitions already read (versions never change), so it reads only
            # what moved.
            _hold_intent_runs(conn)
            if moved := _heads_moved(conn, looked):
                cycles = walk({wanted: answer for wanted, answer in looked.items() if wanted[0] not in moved})
        errors.extend(cycles)
    if errors or not result.ok:
        count = len(errors) + result.unlisted
        raise DefinitionInvalidError(
            list(dict.fromkeys(errors)), f"The {kind} has {count} problem{'' if count == 1 else 's'}.", result.unlisted
        )
    assert stored is not None  # a result without errors is normalized
    return Checked(result, evaluated.reads.catalog, found, stored)


class CheckStaleError(Exception):
    """What a check made outside the writing transaction was made of has changed since it was read (a module
    registered or removed, a blueprint's new current version or its archive, the item's new current version): the
    writing transaction is given up, and the check made again. Not a RegistryError: no answer is ever made of it."""


@dataclass(frozen=True)
class PendingCheck:
    """What a save's or a plan's definition check needs, read in a short transaction of its own (`pending_create`,
    `pending_update`, `pending_rollback`, `pending_plan`), so that the check itself (`check_outside`) is made with no
    transaction open."""

    kind: Kind
    doc: Any
    """The document checked: a create's or an update's request body itself, a rollback's or a plan's stored one."""
    reads: CheckReads
    version: int | None
    """The item's current version it was read with (None: a create, which has none)."""
    saving: bool
    again: int | None = None
    item_id: UUID | None = None
    """A plan's item: its check is kept (`cached_outside`), a stored version never changing."""
    sent: bool = False
    """A caller's new document (a create's or an update's body): its free text is checked too (`check`)."""


@dataclass(frozen=True)
class OutsideCheck:
    """A definition evaluated with no transaction open, and what it was evaluated from; the writing transaction takes
    its outcome only while all of that still stands (`check`), else raises CheckStaleError."""

    pending: PendingCheck
    evaluated: CheckEvaluated


PLAN_CHECKS_KEPT = 32
"""Plans' checks kept per process: each holds a definition and its evaluation (up to a MiB or so for a large one)."""


@dataclass(frozen=True)
class _KeptCheck:
    tenant: TenantFacts
    limits: Limits
    check: OutsideCheck


_kept: OrderedDict[tuple[UUID, Kind, UUID, int], _KeptCheck] = OrderedDict()
_kept_lock = threading.Lock()


def _kept_key(pending: PendingCheck, tenant: TenantFacts) -> tuple[UUID, Kind, UUID, int] | None:
    if pending.saving or pending.item_id is None or pending.version is None:
        return None
    return (tenant.id, pending.kind, pending.item_id, pending.version)


def cached_outside(pending: PendingCheck, *, tenant: TenantFacts, limits: Limits | None = None) -> OutsideCheck | None:
    """A plan's check of this stored version made before, when it answers for `pending` still: a version never
    changes, so the evaluation depends only on the tenant's facts (its gates), the limits and what was read (the
    catalog, a pinned blueprint version), each compared here. Without it every plan, a Reader's alone, made the
    costly check again. None for a save (its body is new every time) or when nothing kept answers."""
    key = _kept_key(pending, tenant)
    if key is None:
        return None
    with _kept_lock:
        kept = _kept.get(key)
        if kept is not None:
            _kept.move_to_end(key)
    if kept is None or kept.tenant != tenant or kept.limits != (limits or registry_limits()):
        return None
    if not _reads_stand(pending.reads, kept.check.pending.reads) or kept.check.pending.doc != pending.doc:
        return None
    return OutsideCheck(pending, kept.check.evaluated)


def check_outside(pending: PendingCheck, *, tenant: TenantFacts, limits: Limits | None = None) -> OutsideCheck:
    """`check_evaluated` of what `pending` read: the costly part of a save or a plan (a definition's schemas against
    the meta-schema, seconds of CPU for a large one), called by a route between its transactions, holding none of the
    shared pool's connections (a tenant's requests in flight would otherwise hold them all, and every tenant waits).
    A plan's is kept for `cached_outside`."""
    limits = limits or registry_limits()
    evaluated = check_evaluated(
        pending.reads,
        pending.kind,
        pending.doc,
        tenant=tenant,
        limits=limits,
        saving=pending.saving,
        again=pending.again,
        sent=pending.sent,
    )
    made = OutsideCheck(pending, evaluated)
    key = _kept_key(pending, tenant)
    if key is not None and not _depends_on_clock(evaluated):
        with _kept_lock:
            _kept[key] = _KeptCheck(tenant, limits, made)
            _kept.move_to_end(key)
            while len(_kept) > PLAN_CHECKS_KEPT:
                _kept.popitem(last=False)
    return made


CLOCK_PROBLEMS = frozenset({"wait_past_timeout"})
"""Problem codes whose finding depends on when the check ran, not only on what it read: a literal `until` measured
from the check is refused while it is more than the step's timeout away, and accepted once it has come near enough."""


def _depends_on_clock(evaluated: CheckEvaluated) -> bool:
    """Whether a check's refusal may not answer for a later check of the same version (kept only if not)."""
    return any(error.code in CLOCK_PROBLEMS for error in evaluated.errors)


def _reads_stand(now: CheckReads, then: CheckReads) -> bool:
    """Whether a check's reads answer now as they did: versions never change, so a blueprint version is its id and
    number, and a catalog its specs (registrations are never updated; a removal or a new one changes it)."""

    def pinned(found: BlueprintVersion | None) -> tuple[UUID, int] | None:
        return None if found is None else (found.id, found.version)

    return pinned(now.found) == pinned(then.found) and now.catalog == then.catalog


def _as_stored(conn: Conn, value: dict[str, Any]) -> dict[str, Any]:
    """`value` after a trip through jsonb, which keeps every JSON number's decimal value but not Python's types:
    1e16 comes back as the int 10000000000000000, -0.0 as 0.0. Saving, answering and hashing this form makes a
    create's response, every later read and the plan hash agree (a hash of the request's floats would not)."""
    row = conn.execute("SELECT %s::jsonb AS value", (Jsonb(value),)).fetchone()
    assert row is not None  # SELECT of one value
    stored: dict[str, Any] = row["value"]
    return stored


# --- reads ------------------------------------------------------------------------------------------------------


def _head_or_404(conn: Conn, kind: Kind, item_id: UUID, *, lock: bool = False) -> HeadRow:
    head = get_head(conn, kind, item_id, lock=lock)
    if head is None:
        raise NotFoundError(f"No {kind} {item_id}.")
    return head


def _item(conn: Conn, head: HeadRow) -> Item:
    current = get_version(conn, head.kind, head.id, head.current_version)
    assert current is not None  # the head's version is inserted in the head's transaction
    return Item(head, current)


def get(conn: Conn, kind: Kind, item_id: UUID) -> Item:
    """An item with its current version."""
    return _item(conn, _head_or_404(conn, kind, item_id))


def list_items(
    conn: Conn,
    kind: Kind,
    *,
    name_prefix: str | None,
    labels: dict[str, str],
    status: Status | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[ListedHead], str | None]:
    """One page of items by name (each with its current version's target), and the cursor of the next page (None on
    the last)."""
    after = list_position(cursor, f"{kind}s", "name")
    if not isinstance(after, str | None):
        raise InvalidCursorError("the cursor is not one this list issued")
    rows = list_heads(
        conn, kind, name_prefix=name_prefix, labels=labels, status=status, after_name=after, limit=limit + 1
    )
    page = rows[:limit]
    return page, list_cursor(f"{kind}s", {"name": page[-1].name}) if len(rows) > limit else None


VERSIONS_PAGE_BYTES = 1024 * 1024
"""The definitions (and descriptions) a page of versions holds, in bytes as Postgres writes them out, at most (a
page always holds one version): a page of 200 versions of a 256 KB definition was a 50 MB answer, costing seconds of
CPU, for a Reader. A smaller page than `limit` says so by its `next_cursor`."""


def versions(
    conn: Conn, kind: Kind, item_id: UUID, *, cursor: str | None, limit: int
) -> tuple[list[VersionRow], str | None]:
    """One page of an item's versions, oldest first: at most `limit`, and no more than fit VERSIONS_PAGE_BYTES (at
    least one); the next page's cursor follows the last version answered. Its cursors serve this item's versions
    list only."""
    _head_or_404(conn, kind, item_id)
    list_name = f"{kind}s/{item_id}/versions"
    after = list_position(cursor, list_name, "version")
    if after is None:
        after = 0
    elif not isinstance(after, int) or isinstance(after, bool):
        raise InvalidCursorError("the cursor is not one this list issued")
    page, more = list_versions(conn, kind, item_id, after=after, limit=limit, budget=VERSIONS_PAGE_BYTES)
    return page, list_cursor(list_name, {"version": page[-1].version}) if more else None


def version(conn: Conn, kind: Kind, item_id: UUID, number: int) -> VersionRow:
    """One version of an item."""
    _head_or_404(conn, kind, item_id)
    found = get_version(conn, kind, item_id, number)
    if found is None:
        raise UnknownVersionError(f"The {kind} has no version {number}.")
    return found


def stored_steps(conn: Conn, item: Item) -> tuple[Step, ...]:
    """The steps `item`'s version runs (a declaration's: its pinned blueprint version's), parsed from the stored
    definition as an execution's start reads them, without validating it again; none when they cannot be read.

    A stored version was validated when it was saved; validating it again against the catalog and gates as they
    are now costs as much as a save (seconds for a large input schema), and only its start needs that verdict: a
    version that no longer validates is refused there, as a failure of the step that starts it."""
    return _steps_of(conn, item)


def _steps_of(conn: Conn, item: Item) -> tuple[Step, ...]:
    """`stored_steps`, as a save's cycle check reads them (a plan's reads are `stored_steps`' own)."""
    try:
        definition = Definition.model_validate(item.version.definition)
        if not definition.is_declaration:
            return tuple(definition.steps or ())
        pin = item.version.blueprint_ref
        found = blueprint_version(conn, UUID(str(pin["id"])), int(pin["version"])) if pin else None
        if found is None:
            return ()
        return tuple(Definition.model_validate(found.definition).steps or ())
    except (pydantic.ValidationError, KeyError, TypeError, ValueError):
        return ()


MAX_CYCLE_INTENTS = 64
"""Intent versions a save's cycle check reads the steps of, at most."""
MAX_CYCLE_LOOKUPS = 256
"""Intents a save's cycle check looks up by name (and pinned version), at most: an intent may run hundreds of
names, each a query. Past either bound the save is not refused for a cycle it did not find; the engine's run-time
bounds (an intent already running above, the nesting depth) still refuse one when it runs."""


def _cycle_problems(
    conn: Conn,
    name: str,
    doc: dict[str, Any],
    steps: tuple[Step, ...],
    *,
    declaration: bool,
    looked: dict[_Wanted, _Reached | None] | None = None,
    again: int | None = None,
    read: dict[_Key, tuple[Step, ...]] | None = None,
) -> list[ValidationError]:
    """`recursive_intent` when an `intent.run` step of the intent being saved (`name`, with `steps`) starts an
    intent that, through the tenant's intents as they are stored now, runs `name` again; at most one problem (the
    first cycle found, breadth first, so the shortest), naming its path.

    Each intent reached is read as a run would start it: the version its step pins, else its current one, and a
    declaration through its pinned blueprint version. The walk reads only the tenant's own intents (row-level
    security), each version once, within MAX_CYCLE_INTENTS and MAX_CYCLE_LOOKUPS. Stored versions are never refused
    for this: a cycle saved before the check still runs until the engine refuses it.

    `again`: the version a rollback makes whose steps are the current version's (`again` - 1). The only paths it
    makes are through steps that pin `again`, which started nothing before: only those come back (the intent's own
    first steps included); a step starting the current version leads where the walk starts, and one pinning another
    of its versions is followed as any intent is. Without it any step naming `name` comes back, whatever it pins.

    `looked` (if given) receives every look-up made and its answer: the walk's outcome depends on nothing else that
    can change (versions are immutable), so a walk made again while those answers hold would find the same; given
    filled, its answers are taken as they are. `read` (if given) keeps the steps of every version read, and a walk
    made again takes them from there: within MAX_CYCLE_INTENTS definitions for both walks together, unless the
    second reaches versions the first did not."""
    # A look-up reads heads only: of up to MAX_CYCLE_LOOKUPS intents, only those followed (MAX_CYCLE_INTENTS at
    # most) have their definitions read, one at a time.
    lookups: dict[_Wanted, _Reached | None] = {} if looked is None else looked
    steps_read: dict[_Key, tuple[Step, ...]] = {} if read is None else read
    past_bound: set[_Wanted] = set()

    def back(params: IntentRunParams | None) -> bool:
        """Whether a step with `params` starts the intent being saved in the version the save makes."""
        return params is not None and params.intent == name and (again is None or params.version == again)

    def child(params: IntentRunParams | None) -> tuple[str, _Reached | None] | None:
        """The name a step runs and the version that name starts (None: nothing, or past the lookup bound)."""
        if params is None:
            return None
        wanted = (params.intent, params.version)
        if params.intent == name and (again is None or params.version in (None, again, again - 1)):
            return None  # the walk's start, or `back`
        if wanted not in lookups and wanted not in past_bound:
            if len(lookups) < MAX_CYCLE_LOOKUPS:
                lookups[wanted] = _cycle_lookup(conn, params)
            else:
                past_bound.add(wanted)
        return params.intent, lookups.get(wanted)

    seen: set[_Key] = set()
    # (the intent version reached, the names from the saved intent's step to it, that step's index)
    waiting: deque[tuple[_Reached, tuple[str, ...], int]] = deque()

    def follow(found: tuple[str, _Reached | None] | None, path: tuple[str, ...], index: int) -> None:
        if found is None or found[1] is None or _reached_key(found[1]) in seen or len(seen) >= MAX_CYCLE_INTENTS:
            return
        seen.add(_reached_key(found[1]))
        waiting.append((found[1], (*path, found[0]), index))

    for index, step in enumerate(steps):
        params = _run_params(step)
        if again is not None and back(params):  # a save's own literal self-run is validation's to refuse
            return [_cycle_problem(doc, step, index, (name, name), declaration=declaration)]
        follow(child(params), (), index)
    while waiting:
        reached, path, index = waiting.popleft()
        key = _reached_key(reached)
        if key not in steps_read:
            steps_read[key] = _reached_steps(conn, reached)
        for below in steps_read[key]:
            params = _run_params(below)
            if back(params):
                return [_cycle_problem(doc, steps[index], index, (name, *path, name), declaration=declaration)]
            follow(child(params), path, index)
    return []


_Reached = tuple[HeadRow, int]
"""An intent version a save's cycle walk reaches: its head and the version a run would start, without its
definition."""
_Wanted = tuple[str, int | None]
"""What an `intent.run` step of the walk starts: the intent's name and the version it pins (None: the current one)."""


def _heads_moved(conn: Conn, looked: dict[_Wanted, _Reached | None]) -> set[str]:
    """The names whose look-ups by a cycle walk might answer otherwise now: the active head of the name was made,
    archived or moved to another version since (a version once made never changes; a head's current version is its
    newest, so a pinned version past it does not exist). One statement, whatever the number of look-ups; when in
    doubt a name is in, which costs a look-up made again, never a cycle missed."""
    if not looked:
        return set()
    now = active_heads(conn, "intent", sorted({name for name, _ in looked}))
    moved: set[str] = set()
    for (name, pinned), answer in looked.items():
        head = now.get(name)
        if answer is not None:
            if head is None or (head.id, head.current_version) != (answer[0].id, answer[0].current_version):
                moved.add(name)
        elif head is not None and (pinned is None or pinned <= head.current_version):
            moved.add(name)
    return moved


def _reached_key(reached: _Reached) -> _Key:
    return reached[0].id, reached[1]


def _cycle_lookup(conn: Conn, params: IntentRunParams) -> _Reached | None:
    """The intent version an `intent.run` step with `params` starts, for a save's cycle walk: the active intent it
    names, at the version it pins (if that version exists), else its current one; without reading a definition."""
    return _pinned(conn, find_head(conn, "intent", params.intent), params.version)


def _pinned(conn: Conn, head: HeadRow | None, version: int | None) -> _Reached | None:
    """`head` at `version` (None: its current one) when it has that version; None when it does not, or no head."""
    if head is None:
        return None
    if version is None or version == head.current_version:
        return head, head.current_version
    return (head, version) if version_exists(conn, "intent", head.id, version) else None


def _reached_steps(conn: Conn, reached: _Reached) -> tuple[Step, ...]:
    """The steps of an intent version the walk follows, its definition read here and dropped once parsed."""
    head, number = reached
    found = get_version(conn, "intent", head.id, number)
    return () if found is None else _steps_of(conn, Item(head, found))


def _hold_intent_runs(conn: Conn) -> None:
    """Take the tenant's `intent-runs` lock after a save's cycle walk, until its commit: saves of intents that run
    intents take turns, and each verifies (in statements after the wait, so in later snapshots) that its walk still
    holds against what the one before committed, or walks again. Saving A (runs B) and B (runs A) at once each read
    the other's old version without it, and both committed a cycle. The walk's own reads are made before the wait:
    they took the turn for up to seconds on a tenant of many large intents, and a walk is a function of its
    look-ups' answers alone (versions never change), which one statement checks under the lock (`_heads_moved`).

    Only those saves: a version whose steps (a declaration's: its blueprint's) run no intent leads nowhere, so it is
    on no cycle and its save closes none; it can only cut paths that others' walks followed, never join one (a
    declaration reads the blueprint version it pins, so a blueprint's save joins none either). Other saves go on
    side by side. A rollback is such a save too: it walks, and takes its turn when its steps run an intent.

    Lock order: before this lock an update or a rollback holds its intent's row, a declaration's save its
    blueprint's head (shared; a rollback's, the pinned one's), a create its idempotency key. After it the save only
    reads (the check of the walk, the walk again if a head moved) and writes its own rows: its head (an update's or
    a rollback's, locked already; a create's, new: a waiter for this lock inserts its head only once it holds the
    lock, and a create running no intent, which may make the insert wait on its name, never waits for it), its
    version and its event. A holder never waits for a row a waiter holds, so the order cannot deadlock."""
    tenant_locks.hold(conn, "intent-runs")


def _run_params(step: Step) -> IntentRunParams | None:
    if step.action != "intent.run":
        return None
    try:
        return IntentRunParams.model_validate(step.params)
    except pydantic.ValidationError:
        return None  # a name built from references: only the run knows it


def _cycle_problem(
    doc: dict[str, Any], step: Step, index: int, path: tuple[str, ...], *, declaration: bool
) -> ValidationError:
    cycle = " → ".join(f"'{one}'" for one in path)
    if len(path) == 2:  # a step pinning the version being made (the walk's `again`)
        reason = f"runs intent '{path[0]}' in the version being made ({cycle}): an intent cannot run itself"
    else:
        reason = f"runs intent '{path[1]}', which comes back to '{path[0]}', the intent being saved ({cycle})"
        reason += ": intents cannot run each other"
    if declaration:  # where the self check of a declaration points
        return ValidationError(
            "/definition/blueprint" if "blueprint" in doc["definition"] else "/definition",
            f"blueprint step '{step.step_id}' {reason}",
            "recursive_intent",
        )
    raw = doc["definition"]["steps"][index]  # a valid definition's steps are its request's, in order
    inside = isinstance(raw.get("params"), dict) and "intent" in raw["params"]
    at = pointer("definition", "steps", index, *(("params", "intent") if inside else ("intent",)))
    return ValidationError(at, f"the step {reason}", "recursive_intent")


MAX_PLANNED_DESCENDANTS = 64
"""Intents a plan follows from its `intent.run` steps (their children, theirs, ...), in all for the whole plan, each
once: the work of one plan request stays bounded whatever a tenant's intents run or pin."""

_Key = tuple[UUID, int]


def _key(item: Item) -> _Key:
    """An intent version's identity in a plan's walk."""
    return item.head.id, item.version.version


class DescendantWalk:
    """One plan request's walk below its `intent.run` steps: each intent's stored steps are read once and each
    child walked once, and the children and the intents followed below them share one budget
    (`MAX_PLANNED_DESCENDANTS`). Without this, every step walked its child's intents afresh: steps x 64 reads in
    one request and one transaction; and with children outside it, steps pinning distinct versions cost one each.
    Only the planned intent itself is validated: a descendant's steps are read, not validated again (ADR 0035).

    A step's child is looked up once per plan by the name and version it names, reading heads only; an intent's
    version (its definition, up to the definition limit) is read once, and only when the walk follows that intent
    within the budget. Each step read its child's whole version: 200 steps running one 240 KB child read it 200
    times, and a child's steps, for every intent followed, as many again."""

    def __init__(self, conn: Conn, *, may_execute: Callable[[Item], Decision]) -> None:
        self._conn = conn
        self._may_execute = may_execute
        self._decisions: dict[_Key, Decision] = {}
        self._heads: dict[str, HeadRow | None] = {}
        self._lookups: dict[_Wanted, _Reached | None] = {}
        self._items: dict[_Key, Item | None] = {}
        self._children: dict[_Key, list[_Reached]] = {}
        self._verdicts: dict[_Key, Decision | None] = {}
        self._followed: set[_Key] = set()
        """The intents counted against the plan's budget: some step's child, or reached below one."""

    def step_decision(self, planned: Item, step: Step) -> Decision:
        """The caller's decision on executing `step` of `planned`: for an `intent.run` step, on the child intent it
        starts and every intent below it (`verdict`); for any other, or one whose child finds nothing (running it
        fails the step instead), on `planned` itself."""
        params = _run_params(step)
        child = None if params is None else self._lookup(params)
        verdict = None if child is None else self.verdict(child)
        return self.decision(planned) if verdict is None else verdict

    def decision(self, item: Item) -> Decision:
        """The caller's decision on executing `item` (this version), decided once per plan."""
        key = _key(item)
        if key not in self._decisions:
            self._decisions[key] = self._may_execute(item)
        return self._decisions[key]

    def verdict(self, child: _Reached) -> Decision | None:
        """The decision on starting `child` and every intent below it (ADR 0035): the first refusal met breadth
        first, else the child's own; `too_many_descendants` when reaching them would spend more than the plan's
        budget; None when the child's version cannot be read (as if its step found nothing). Remembered per child
        version, so a step running a child already walked costs nothing."""
        key = _reached_key(child)
        if key not in self._verdicts:
            self._verdicts[key] = self._walk(child)
        return self._verdicts[key]

    def _walk(self, child: _Reached) -> Decision | None:
        """`verdict`'s walk of one child, breadth first, spending the plan's budget on intents not followed yet."""
        if not self._spend(_reached_key(child)):
            return Decision(False, "too_many_descendants", ())
        item = self._item(child)
        if item is None:
            return None
        decision = self.decision(item)
        if not decision.allowed:
            return decision
        seen = {_key(item)}
        waiting = deque([item])
        while waiting:
            for found in self._children_of(waiting.popleft()):
                key = _reached_key(found)
                if key in seen:
                    continue
                seen.add(key)
                if not self._spend(key):
                    return Decision(False, "too_many_descendants", ())
                below = self._item(found)
                if below is None:
                    continue
                refused = self.decision(below)
                if not refused.allowed:
                    return refused
                waiting.append(below)
        return decision

    def _spend(self, key: _Key) -> bool:
        """Whether the intent `key` may be followed: already counted, or counted now while the budget lasts."""
        if key not in self._followed:
            if len(self._followed) >= MAX_PLANNED_DESCENDANTS:
                return False
            self._followed.add(key)
        return True

    def _lookup(self, params: IntentRunParams) -> _Reached | None:
        """The intent version a step with `params` starts, looked up once per plan by name and pinned version, its
        head read once per name; no definition read."""
        wanted = (params.intent, params.version)
        if wanted not in self._lookups:
            if params.intent not in self._heads:
                self._heads[params.intent] = find_head(self._conn, "intent", params.intent)
            self._lookups[wanted] = _pinned(self._conn, self._heads[params.intent], params.version)
        return self._lookups[wanted]

    def _item(self, reached: _Reached) -> Item | None:
        """The intent version `reached`, its definition read once per plan; None if it cannot be read (the tenant's
        erasure alone removes versions)."""
        key = _reached_key(reached)
        if key not in self._items:
            head, number = reached
            found = get_version(self._conn, "intent", head.id, number)
            self._items[key] = None if found is None else Item(head, found)
        return self._items[key]

    def _children_of(self, item: Item) -> list[_Reached]:
        """The intent versions `item`'s `intent.run` steps start, each once, in step order, looked up without reading
        them; none when its steps cannot be read (its start fails before any of its children could). Read once per
        plan."""
        key = _key(item)
        if key not in self._children:
            found: dict[_Key, _Reached] = {}
            for step in stored_steps(self._conn, item):
                params = _run_params(step)
                reached = None if params is None else self._lookup(params)
                if reached is not None:
                    found.setdefault(_reached_key(reached), reached)
            self._children[key] = list(found.values())
        return self._children[key]


@dataclass(frozen=True)
class DiffResult:
    """What changed between two versions: the definition (steps and fields) and the metadata, with a summary."""

    from_version: int
    to_version: int
    definition: dict[str, Any]
    metadata_changed: tuple[FieldChange, ...]
    summary: str


def _metadata(row: VersionRow) -> dict[str, Any]:
    pin = row.blueprint_ref
    return {
        "description": row.description,
        "labels": row.labels,
        "blueprint": None if pin is None else f"{pin.get('name')}@{pin.get('version')}",
    }


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 40 else text[:37] + "…"


def diff_versions(old: VersionRow, new: VersionRow) -> DiffResult:
    """The structured difference between two versions already read (and authorized) by the caller."""
    from_version, to_version = old.version, new.version
    changes = diff_definitions(old.definition, new.definition)
    # The metadata is compared with the same machinery: a definition without steps differs only in its fields.
    metadata = diff_definitions(_metadata(old), _metadata(new)).fields_changed
    summary = changes.summary
    if metadata:
        described = "; ".join(
            f"{change.path.lstrip('/')} {change.kind}"
            + (f" ({_short(change.old)} → {_short(change.new)})" if change.kind == "changed" else "")
            for change in metadata
        )
        summary = (f"{summary} " if not changes.is_empty else "") + f"Metadata: {described}."
    return DiffResult(from_version, to_version, changes.to_dict(), metadata, summary)


# --- changes ----------------------------------------------------------------------------------------------------


def _new_version(checked: Checked, origin: dict[str, Any]) -> NewVersion:
    request = checked.request
    return NewVersion(
        request.description,
        dict(request.labels),
        checked.normalized,
        definition_sha256(checked.normalized),
        origin,
        checked.pin,
    )


def _event(item: Item, **extra: Any) -> dict[str, Any]:
    return {
        "id": str(item.head.id),
        "name": item.head.name,
        "version": item.version.version,
        "definition_sha256": item.version.definition_sha256,
        **extra,
    }


_CONSTRAINT_POINTERS = {"intents_name_check": "/name"}
"""Where in a request body the value a table's CHECK constraint refused sits (others: the body as a whole)."""


def _refused(kind: Kind, exc: ValueRefusedError) -> DefinitionInvalidError:
    """A value the tables refuse as the 422 of a definition problem: validation should have caught it (the model and
    a migration disagree), and a 500 would blame the platform for the caller's input."""
    at = _CONSTRAINT_POINTERS.get(exc.constraint or "", "")
    problem = ValidationError(at, "the value cannot be stored (it breaks a constraint of the registry)", "not_storable")
    return DefinitionInvalidError([problem], f"The {kind} has 1 problem.")


def pending_create(conn: Conn, kind: Kind, doc: Any) -> PendingCheck:
    """What a create's check of `doc` needs, read without holding anything (the create's transaction reads it again)."""
    return PendingCheck(kind, doc, check_reads(conn, kind, doc), None, saving=True, sent=True)


def create(
    conn: Conn,
    kind: Kind,
    doc: Any,
    *,
    item_id: UUID,
    tenant: TenantFacts,
    created_by: str,
    outside: OutsideCheck | None = None,
) -> Item:
    """Validate and store version 1, with its `<kind>.created` event; `outside`: the definition's check made before
    this transaction (`pending_create`, `check_outside`), taken if it still stands, else CheckStaleError."""
    sent = _sent_name(doc)
    taken = isinstance(sent, str) and name_taken(conn, kind, sent)
    checked = check(
        conn,
        kind,
        doc,
        tenant=tenant,
        saving=True,
        writing=True,
        refused_name=taken,
        outside=outside,
        version=None,
        sent=True,
    )
    request = checked.request
    try:
        head = insert_head(conn, kind, item_id, request.name, request.description, dict(request.labels), created_by)
        first = insert_version(conn, item_id, 1, _new_version(checked, {"kind": "create"}), created_by)
    except NameTakenError:
        raise NameConflictError(
            f"{'An' if kind == 'intent' else 'A'} {kind} named {request.name!r} exists (archived ones keep their name)."
        ) from None
    except ValueRefusedError as exc:
        raise _refused(kind, exc) from exc
    item = Item(head, first)
    enqueue(conn, f"{kind}.created", _subject(kind, item_id), _event(item))
    return item


Authorize = Callable[["Item"], None]
"""The caller's permission on the item a change or a plan is made of, decided on it as this transaction holds it
(raising the refusal): the version written on or planned is the one decided on."""


def _locked_active(
    conn: Conn, kind: Kind, item_id: UUID, if_match: frozenset[str] | None, authorize: Authorize | None = None
) -> Item:
    """The item under its row lock, once `authorize` allows it, refused if archived or if `if_match` (None: any)
    misses its ETag."""
    head = _head_or_404(conn, kind, item_id, lock=True)
    item = _item(conn, head)
    if authorize is not None:  # before the other refusals, as a request's permission comes first
        authorize(item)
    _refuse_inactive(head, if_match)
    return item


def _refuse_inactive(head: HeadRow, if_match: frozenset[str] | None) -> None:
    """ArchivedError for an archived item, PreconditionFailedError when `if_match` (None: any) misses its ETag."""
    if head.status != "active":
        raise ArchivedError(f"The {head.kind} is archived; it takes no new versions.")
    current = etag(head.id, head.current_version, head.status)
    if if_match is not None and current not in if_match:
        raise PreconditionFailedError(current)


def _append(conn: Conn, item: Item, new: NewVersion, created_by: str) -> Item:
    head, number = item.head, item.head.current_version + 1
    try:
        row = insert_version(conn, head.id, number, new, created_by)
    except ValueRefusedError as exc:
        raise _refused(head.kind, exc) from exc
    advanced = advance_head(
        conn,
        head.kind,
        head.id,
        from_version=head.current_version,
        to_version=number,
        description=new.description,
        labels=new.labels,
    )
    if advanced is None:  # unreachable under the row lock; refusing keeps a lost update impossible regardless
        raise PreconditionFailedError(etag(head.id, head.current_version, head.status))
    return Item(advanced, row)


def pending_update(conn: Conn, kind: Kind, item: Item, doc: Any, *, if_match: frozenset[str] | None) -> PendingCheck:
    """What an update of `item` (as read, not locked) to `doc` checks, read without holding anything; the refusals an
    update answers before its check (archived, a stale `if_match`) are answered here already, costing no check."""
    _refuse_inactive(item.head, if_match)
    return PendingCheck(kind, doc, check_reads(conn, kind, doc), item.version.version, saving=True, sent=True)


def update(
    conn: Conn,
    kind: Kind,
    item_id: UUID,
    doc: Any,
    *,
    if_match: frozenset[str] | None,
    tenant: TenantFacts,
    created_by: str,
    outside: OutsideCheck | None = None,
    authorize: Authorize | None = None,
) -> Item:
    """Validate and store the next version if `if_match` holds the current ETag, with `<kind>.version_created`;
    `outside`: the check made before this transaction (`pending_update`), taken if it still stands (whichever version
    was current then: the body's check does not depend on it), else CheckStaleError. `authorize`: the caller's
    permission, decided on the locked item."""
    item = _locked_active(conn, kind, item_id, if_match, authorize)
    renamed = _sent_name(doc) != item.head.name
    checked = check(
        conn,
        kind,
        doc,
        tenant=tenant,
        saving=True,
        writing=True,
        refused_name=renamed,
        outside=outside,
        version=item.version.version,
        sent=True,
    )
    if checked.request.name != item.head.name:
        # Declarations find blueprints by name, and clients by name: a rename would silently repoint both.
        raise DefinitionInvalidError(
            [ValidationError("/name", f"the name cannot change (it is '{item.head.name}')", "name_immutable")],
            f"The {kind} has 1 problem.",
        )
    origin = {"kind": "update", "from_version": item.version.version}
    updated = _append(conn, item, _new_version(checked, origin), created_by)
    enqueue(
        conn, f"{kind}.version_created", _subject(kind, item_id), _event(updated, previous_version=item.version.version)
    )
    return updated


def _rollback_target(conn: Conn, item: Item, to_version: int) -> VersionRow:
    """The version a rollback of `item` makes again; UnknownVersionError, or DefinitionInvalidError when its pinned
    blueprint is archived (the pin held until the transaction ends)."""
    target = get_version(conn, item.head.kind, item.head.id, to_version)
    if target is None:
        raise UnknownVersionError(f"The {item.head.kind} has no version {to_version}.")
    _refuse_archived_pin(conn, item.head.kind, to_version, target.blueprint_ref)
    return target


def _again(item: Item, target: VersionRow) -> int | None:
    """The version a rollback of `item` onto `target` makes when it changes no step (its cycle check's `again`)."""
    same_steps = (target.definition_sha256, target.blueprint_ref) == (
        item.version.definition_sha256,
        item.version.blueprint_ref,
    )
    return item.version.version + 1 if same_steps else None


def pending_rollback(
    conn: Conn, kind: Kind, item: Item, to_version: int, *, if_match: frozenset[str] | None
) -> PendingCheck:
    """What a rollback of `item` (as read, not locked) onto `to_version` checks, read in a short transaction; the
    refusals a rollback answers before its check (archived, a stale `if_match`, no such version, an archived
    blueprint pin) are answered here already."""
    _refuse_inactive(item.head, if_match)
    target = _rollback_target(conn, item, to_version)
    doc = _document(item.head.name, target)
    reads = check_reads(conn, kind, doc, pin=target.blueprint_ref)
    return PendingCheck(kind, doc, reads, item.version.version, saving=True, again=_again(item, target))


def rollback(
    conn: Conn,
    kind: Kind,
    item_id: UUID,
    to_version: int,
    *,
    if_match: frozenset[str] | None,
    tenant: TenantFacts,
    created_by: str,
    outside: OutsideCheck | None = None,
    authorize: Authorize | None = None,
) -> Item:
    """A new version equal to `to_version` (its definition, metadata and blueprint pin), with `<kind>.rolled_back`.

    The old version is validated again first: the catalog or the tenant's gates may have changed since, and a
    rollback must not bring back what the tenant may no longer run. A declaration's pinned blueprint must still be
    active: a rollback makes a new version, which an archived blueprint takes no more of (as a PUT of the same
    document is refused); plans, stored steps and executions of existing versions still read archived pins.

    An intent's rollback is checked for cycles as a save is: one that runs itself, or comes back to itself through
    the tenant's intents, is refused (`recursive_intent`), its walk verified under the tenant's `intent-runs` lock
    when its steps run an intent; unchecked, a rollback closed a cycle that only the run refused. One onto a version
    whose definition and blueprint pin are the current one's changes no step: it closes a cycle only through a step
    that pins the version number it makes (which started nothing before), and is refused for those alone, so a
    cycle stored before the save-time check still rolls back onto itself.

    `outside`: the check made before this transaction (`pending_rollback`), taken if it still stands (whichever
    version was current then, as long as the literal self-run was looked for alike), else CheckStaleError.
    `authorize`: the caller's permission, decided on the locked item.
    """
    item = _locked_active(conn, kind, item_id, if_match, authorize)
    target = _rollback_target(conn, item, to_version)
    try:
        check(
            conn,
            kind,
            _document(item.head.name, target),
            tenant=tenant,
            pin=target.blueprint_ref,
            saving=True,
            writing=True,
            again=_again(item, target),
            outside=outside,
            version=item.version.version,
        )
    except DefinitionInvalidError as exc:
        raise DefinitionInvalidError(
            exc.errors, f"Version {to_version} no longer validates: {exc.detail}", exc.unlisted
        ) from None
    new = NewVersion(
        target.description,
        target.labels,
        target.definition,
        target.definition_sha256,
        {"kind": "rollback", "from_version": to_version},
        target.blueprint_ref,
    )
    rolled = _append(conn, item, new, created_by)
    enqueue(
        conn,
        f"{kind}.rolled_back",
        _subject(kind, item_id),
        _event(rolled, from_version=to_version, previous_version=item.version.version),
    )
    return rolled


def _refuse_archived_pin(conn: Conn, kind: Kind, to_version: int, pin: dict[str, Any] | None) -> None:
    """DefinitionInvalidError (`blueprint_archived` at /definition) when `pin` names a blueprint that is archived."""
    if pin is None:
        return
    # Held until the commit: an archive committing between this check and the new version's commit would leave a
    # version made after the blueprint was archived.
    blueprint = hold_head(conn, "blueprint", UUID(str(pin["id"])))  # a pin is written by `Checked.pin`, never sent
    if blueprint is not None and blueprint.status == "archived":
        problem = ValidationError(
            "/definition",
            f"blueprint '{blueprint.name}' is archived; it takes no new declarations (nor new versions of them)",
            "blueprint_archived",
        )
        raise DefinitionInvalidError([problem], f"Version {to_version} no longer validates: The {kind} has 1 problem.")


def archive(
    conn: Conn, kind: Kind, item_id: UUID, *, if_match: frozenset[str] | None, authorize: Authorize | None = None
) -> tuple[Item, bool]:
    """Archive the item (versions kept, reads still work), with `<kind>.archived`; whether it changed anything
    (archiving an archived item is a no-op, so DELETE stays idempotent). `if_match` (None: any) must hold the
    current ETag; for an archived item, the archived one or the active one of its current version (the one the
    archive was made with, so a repeat of that request is answered as done). Any other is refused whatever the
    status, as for any other change. `authorize` decides on the item under its row lock, before the other refusals
    (as `_locked_active`): the version archived is the one decided on, not one an update replaced since it was read."""
    head = _head_or_404(conn, kind, item_id, lock=True)
    item = _item(conn, head)
    if authorize is not None:  # before the other refusals, as a request's permission comes first
        authorize(item)
    current = etag(head.id, head.current_version, head.status)
    # The active ETag of the version the archive left current is what the request that archived it sent: its
    # repeat (a client that lost the first answer) finds the change made and is answered as done, not 412.
    archived_by = etag(head.id, head.current_version, "active") if head.status == "archived" else None
    if if_match is not None and current not in if_match and archived_by not in if_match:
        raise PreconditionFailedError(current)
    if head.status == "archived":
        return item, False
    archived = archive_head(conn, kind, item_id)
    assert archived is not None  # active and locked by this transaction
    item = Item(archived, item.version)  # its current version is the one locked and decided on
    enqueue(conn, f"{kind}.archived", _subject(kind, item_id), _event(item))
    return item, True


# --- plan -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedStep:
    """One step of a plan: what runs, where in the graph, and whether the caller may execute it."""

    id: str
    action: str
    module: str
    remote: bool
    timeout_s: int
    depends_on: list[str]
    level: int
    when: str | None
    compensate: str | None
    decision: Decision | None


@dataclass(frozen=True)
class QuotaHeadroom:
    """The tenant's concurrent-execution quota, the executions that count against it, and the room left."""

    max_concurrent_executions: int
    running_executions: int
    headroom: int

    @classmethod
    def of(cls, limit: int, running: int) -> QuotaHeadroom:
        return cls(limit, running, max(limit - running, 0))


@dataclass(frozen=True)
class Plan:
    """A dry run of executing the current version."""

    item: Item
    levels: list[list[str]]
    steps: list[PlannedStep]
    blueprint_ref: str | None
    quota: QuotaHeadroom
    plan_hash: str


StepDecider = Callable[[Conn, Item, Step], Decision]
"""The caller's decision on executing one step of a planned item, in the plan's transaction."""


def pending_plan(conn: Conn, kind: Kind, item: Item) -> PendingCheck:
    """What a plan of `item`'s current version checks, read in a short transaction."""
    doc = item.document()
    reads = check_reads(conn, kind, doc, pin=item.version.blueprint_ref)
    return PendingCheck(kind, doc, reads, item.version.version, saving=False, item_id=item.head.id)


def plan(
    conn: Conn,
    kind: Kind,
    item_id: UUID,
    *,
    tenant: TenantFacts,
    decide: StepDecider | None,
    quota: QuotaHeadroom,
    outside: OutsideCheck | None = None,
    authorize: Authorize | None = None,
) -> Plan:
    """The current version validated again (catalog and gates may have changed) and laid out in levels, each
    step with its module and `decide(conn, item, step)` (None: no decisions, as for a blueprint, which is never
    executed). `outside`: the check made before this transaction (`pending_plan`), taken if it was made of the
    current version and still stands, else CheckStaleError. `authorize`: the caller's permission, decided on the
    version planned."""
    item = get(conn, kind, item_id)
    if authorize is not None:
        authorize(item)
    checked = check(
        conn,
        kind,
        item.document(),
        tenant=tenant,
        pin=item.version.blueprint_ref,
        outside=outside,
        version=item.version.version,
    )
    level_of = {step_id: index for index, level in enumerate(checked.levels) for step_id in level}
    planned = []
    for step in checked.result.steps:
        spec = checked.catalog[step.action]
        planned.append(
            PlannedStep(
                id=step.step_id,
                action=step.action,
                module=module_of_action(step.action),
                remote=spec.remote,
                timeout_s=step.timeout_s or spec.timeout_s,
                depends_on=list(step.depends_on or []),
                level=level_of[step.step_id],
                when=step.when,
                compensate=step.compensate.action if step.compensate else None,
                decision=decide(conn, item, step) if decide is not None else None,
            )
        )
    return Plan(item, checked.levels, planned, checked.result.blueprint_ref, quota, checked.plan_hash)
