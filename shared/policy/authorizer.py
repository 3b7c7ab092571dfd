# intent_ref: platform.access-control
"""The one function every API action is decided through: Cedar over the platform and the tenant's policies."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any
from uuid import UUID

import cedarpy
from cedarpy import pst

from shared.auth.principal import Principal
from shared.policy.actions import PLATFORM_ACTIONS, POLICY_ADMIN_ACTIONS, TENANT_POLICY_ACTIONS, Action
from shared.policy.facts import TenantFacts
from shared.policy.policy_text import (
    MAX_POLICY_CHARS,
    MAX_POLICY_LITERAL_CHARS,
    MAX_TENANT_POLICY_COST,
    MAX_TENANT_POLICY_TOTAL_CHARS,
    policy_text_problems,
    policy_tree_problems,
)
from shared.policy.remembered import Remembered
from shared.registry import model as registry_model

__all__ = [
    "Authorizer",
    "Decision",
    "PolicyLoadError",
    "Reason",
    "Resource",
    "TenantFacts",
    "get_authorizer",
    "refusal_detail",
]

logger = logging.getLogger(__name__)

POLICY_DIR = Path(__file__).parent / "policies"
SCHEMA_PATH = Path(__file__).parent / "schema.cedarschema"
NAMESPACE = "QP"
PLATFORM_ENTITY_ID = "platform"
MAX_TENANT_POLICY_CHARS = MAX_POLICY_CHARS
_LIKE_VARIABLES = frozenset({"principal", "resource", "context"})
TENANT_SLOTS = 256
"""Tenants whose parsed policy set is kept, least recently deciding dropped first (rebuilt on its next decision): a set
of large policies is several MB, and an erased tenant's would otherwise stay for the life of the process."""
DECISION_CACHE_SIZE = 4096
"""Distinct decisions kept: a decision is a pure function of the policy set, the request and the entities, and a
request is decided two or three times (the route's permission check, then the route's own `authorize`), and the
same caller's next request the same way. Keyed by a SHA-256 of the policy set's digest, the request and the entities,
never by what it hashes: a key holding a tenant's texts (up to 50 × 10,000 characters) held a copy of them per entry,
2 GB at this size, and one holding the entities (a resource's labels, the tenant's allowed targets and modules) up to
~100 KB, 392 MiB at this size."""
DECISION_CACHE_PER_TENANT = DECISION_CACHE_SIZE // 4
"""One tenant's decisions kept at most, its least recently used dropped first: with one memory for all, a tenant
making 4,100 distinct decisions (an execution read with each of its labels changed) flushed every other tenant's."""
CHECKED_TEXTS_SIZE = 4096
"""Tenant policy texts whose checks are remembered (by a SHA-256 of the text: what a check finds is the text's alone
under this schema, a few hundred bytes each whatever the text's length: only texts that pass are kept)."""

RESOURCE_TYPES = frozenset({"Platform", "Tenant", "Intent", "Blueprint", "Execution", "Policy", "AuditLog", "Module"})
_ALL_RESOURCE_TYPES = frozenset(f"{NAMESPACE}::{kind}" for kind in RESOURCE_TYPES)

_ANY_OF_ITS_TYPE = "qp:any"
"""The uid Cedar is given for a resource whose type no policy in force names by id (a string no resource id is: not
a UUID, and a module name has no colon), so one remembered decision serves every resource of that type alike."""

_IDENTIFIED_TYPES = frozenset({"Platform", "Tenant"})
"""Resource types whose uid the policies compare with other entities (`resource == principal.tenant`): never
replaced."""


class Reason(StrEnum):
    """The machine code a decision carries; a denied caller sees this, never the policy text."""

    ALLOWED = "allowed"
    ROLE_REQUIRED = "role_required"
    TENANT_SUSPENDED = "tenant_suspended"
    CROSS_TENANT = "cross_tenant"
    SELF_APPROVAL = "self_approval"
    PRODUCTION_REQUIRES_DEPLOYER = "production_requires_deployer"
    DENIED_BY_TENANT_POLICY = "denied_by_tenant_policy"
    POLICY_ERROR = "policy_error"


_REFUSAL_TEXTS: dict[str, str] = {
    Reason.ROLE_REQUIRED: "none of the caller's roles allows it",
    Reason.TENANT_SUSPENDED: "the caller's tenant is suspended",
    Reason.SELF_APPROVAL: "an approver may not approve an execution they requested",
    Reason.PRODUCTION_REQUIRES_DEPLOYER: "production targets need the Intent.Deployer role",
    Reason.DENIED_BY_TENANT_POLICY: "a policy of the caller's tenant forbids it",
    Reason.POLICY_ERROR: "the policies could not be evaluated for this request, and that refuses it",
}
"""Why, in words, for the problem detail of a refusal. Each text speaks of the caller's own roles, tenant and
request, never of the resource: a refusal must not describe what the caller may not see. `cross_tenant` has none,
so nothing beyond its code is said about another tenant's resource (the API answers those 404 anyway)."""


def refusal_detail(action: str, reason: str, *, needs: Iterable[str] = ()) -> str:
    """The problem detail of a refused `action`: what was refused and, for a reason the platform knows, why;
    `needs` (role_required only) names the roles any one of which would allow it."""
    why = _REFUSAL_TEXTS.get(reason)
    if why is None:
        return f"Not allowed to {action}."
    roles = sorted(needs)
    if reason == Reason.ROLE_REQUIRED and len(roles) == 1:
        why += f" (it needs the {roles[0]} role)"
    elif reason == Reason.ROLE_REQUIRED and roles:
        why += f" (it needs one of the roles {', '.join(roles)})"
    return f"Not allowed to {action}: {why}."


# When several forbids hold, the first of these names the denial: the broadest cause first, so a suspended tenant
# hears "suspended" rather than a detail of the request it could not make anyway.
_FORBID_REASON_PRIORITY = (
    Reason.TENANT_SUSPENDED,
    Reason.CROSS_TENANT,
    Reason.SELF_APPROVAL,
    Reason.PRODUCTION_REQUIRES_DEPLOYER,
)
_PERMIT_PREFIX = "permit."
_FORBID_PREFIX = "forbid."
_TENANT_POLICY_PREFIX = "tenant:"
_SCHEMA_ACTION = re.compile(r'^\s*action\s+"([^"]+)"', re.MULTILINE)


class PolicyLoadError(RuntimeError):
    """The schema or the platform policies are invalid; the app must not start with them."""


@dataclass(frozen=True)
class Resource:
    """What an action is applied to. `tenant_id` is None only for the Platform.

    `attributes` by type: Intent `target` (str, required), `labels`; Blueprint `labels`; Execution `target`,
    `requested_by` (the requester's `<tid>/<oid>`), `labels`; Module `name` (defaults to `id`). `labels` is a
    mapping (sent to Cedar as "key=value" strings) or an iterable of such strings. Other keys are ignored.
    """

    type: str
    id: str
    tenant_id: UUID | None
    attributes: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def platform(cls) -> Resource:
        """The control plane, the resource of the tenant-management actions."""
        return cls("Platform", PLATFORM_ENTITY_ID, None)

    @classmethod
    def tenant(cls, tenant_id: UUID) -> Resource:
        """A tenant: its settings, and the collections that `*.list` actions read."""
        return cls("Tenant", str(tenant_id), tenant_id)


@dataclass(frozen=True)
class Decision:
    """The outcome of one authorization; `policies` are the @ids of the determining policies."""

    allowed: bool
    reason: str
    policies: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class _PolicySlot:
    """One policy set in force, parsed once: its texts, their digest (what decisions are remembered by), the parsed
    set (None when a text is invalid: every decision on it fails closed) and the resource types no policy names."""

    texts: tuple[str, ...]
    digest: str
    policy_set: cedarpy.PolicySet | None
    anonymous_types: frozenset[str]


@dataclass(frozen=True)
class _TextCheck:
    """What checking one tenant policy text found: why it cannot be in force (empty = it can), what evaluating it
    costs (`policy_cost`) and the entity types it names by id (every resource type when it cannot be read)."""

    errors: tuple[str, ...]
    cost: int
    named: frozenset[str]


@dataclass
class _Building:
    """A tenant's set being built: the lock its builder holds, and how many decisions hold or wait for it."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    waiting: int = 0


def _digest(texts: tuple[str, ...]) -> str:
    """A short name of a policy set's texts: equal texts, equal digest, however and whenever they were read."""
    sha = hashlib.sha256()
    for text in texts:
        encoded = text.encode("utf-8", "surrogatepass")
        sha.update(len(encoded).to_bytes(8, "big"))  # length-prefixed, so no two different tuples join alike
        sha.update(encoded)
    return sha.hexdigest()[:32]


def _decision_key(digest: str, request: str, entities: str) -> bytes:
    """The decision cache's key for a request under the policy set of `digest`: a SHA-256 of all three, length-prefixed
    so no two different triples join alike (the tenant's id is in the entities, so tenants never share a key)."""
    sha = hashlib.sha256()
    for part in (digest, request, entities):
        encoded = part.encode("utf-8", "surrogatepass")
        sha.update(len(encoded).to_bytes(8, "big"))
        sha.update(encoded)
    return sha.digest()


def _read_platform_files() -> tuple[str, dict[str, str]]:
    schema = SCHEMA_PATH.read_text(encoding="utf-8")
    policies = {path.name: path.read_text(encoding="utf-8") for path in sorted(POLICY_DIR.glob("*.cedar"))}
    return schema, policies


def _uid(entity_type: str, entity_id: str) -> dict[str, str]:
    return {"type": f"{NAMESPACE}::{entity_type}", "id": entity_id}


def _ref(entity_type: str, entity_id: str) -> dict[str, dict[str, str]]:
    return {"__entity": _uid(entity_type, entity_id)}


MAX_TEXT_ATTRIBUTE_CHARS = 256
"""A resource's string attribute (a target, a module name, a requester) is at most this long, as the models that
store them bound it (128, 128, 73 characters): what a tenant policy may cost assumes it (a `like` against a target of a
million characters, taken from a request body before its validation, cost 2 s a decision). A longer one fails the
decision closed instead of reaching the engine (ADR 0011)."""
MAX_LABELS = registry_model.MAX_LABELS
"""A resource's labels, at most (the registry model's bound)."""
MAX_LABEL_CHARS = 320
"""One label as Cedar sees it, `key=value`, at most (a 63-character key and a 256-character value)."""


def _text(attributes: Mapping[str, Any], key: str) -> str:
    value = attributes[key]
    if not isinstance(value, str):
        raise TypeError(f"resource attribute {key!r} must be a string")
    if len(value) > MAX_TEXT_ATTRIBUTE_CHARS:
        raise ValueError(f"resource attribute {key!r} is longer than {MAX_TEXT_ATTRIBUTE_CHARS} characters")
    return value


def _labels(attributes: Mapping[str, Any]) -> list[str]:
    labels = attributes.get("labels", ())
    if isinstance(labels, Mapping):
        items = [f"{key}={value}" for key, value in labels.items()]
    elif isinstance(labels, str) or not isinstance(labels, Iterable):
        raise TypeError("resource attribute 'labels' must be a mapping or an iterable of 'key=value' strings")
    else:
        items = list(labels)
    if not all(isinstance(item, str) for item in items):
        raise TypeError("resource attribute 'labels' must hold strings")
    if len(items) > MAX_LABELS or any(len(item) > MAX_LABEL_CHARS for item in items):
        raise ValueError(
            f"resource attribute 'labels' holds more than {MAX_LABELS} or one past {MAX_LABEL_CHARS} chars"
        )
    return sorted(items)


def _resource_attrs(resource: Resource) -> dict[str, Any]:
    if resource.tenant_id is None:
        raise ValueError(f"a {resource.type} resource needs a tenant_id")
    attrs = resource.attributes
    tenant = _ref("Tenant", str(resource.tenant_id))
    match resource.type:
        case "Intent":
            return {"tenant": tenant, "target": _text(attrs, "target"), "labels": _labels(attrs)}
        case "Blueprint":
            return {"tenant": tenant, "labels": _labels(attrs)}
        case "Execution":
            return {
                "tenant": tenant,
                "target": _text(attrs, "target"),
                "requested_by": _text(attrs, "requested_by"),
                "labels": _labels(attrs),
            }
        case "Module":
            return {"tenant": tenant, "name": _text(attrs if "name" in attrs else {"name": resource.id}, "name")}
        case "Policy" | "AuditLog":
            return {"tenant": tenant}
        case _:
            raise ValueError(f"unknown resource type {resource.type!r}")


def _named_entity_types(text: str) -> set[str]:
    """Every entity type that `text` names an entity of, by type and id (a scope's `==` or `in`, a literal in a
    condition); a text that cannot be read names every resource type, so nothing is decided without its id. A
    `like`'s pattern is not walked: one object per character, none of them an entity."""
    try:
        tree = json.loads(cedarpy.policies_to_json_str(text))
    except Exception:  # an unreadable policy is refused where it is built; here it only must not widen anything
        return set(_ALL_RESOURCE_TYPES)
    named: set[str] = set()
    pending: list[Any] = [tree]
    while pending:  # iterative: a policy's nesting is bounded on save, but no walk here should depend on that
        node = pending.pop()
        if isinstance(node, dict):
            if isinstance(node.get("type"), str) and "id" in node:
                named.add(node["type"])
            like = node.get("like")
            if isinstance(like, dict) and "pattern" in like:
                # An expression node has one key, its operator: `{"like": {"left": …, "pattern": [chars]}}`.
                pending.append(like.get("left"))
                pending.extend(value for key, value in node.items() if key != "like")
                continue
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return named


class Authorizer:
    """Cedar decisions over the platform policies plus a tenant's own forbids; deny by default, fail closed."""

    def __init__(self, schema: str | None = None, policies: Mapping[str, str] | None = None) -> None:
        """Load and validate the schema and platform policies (the checked-in files unless given); raise if invalid."""
        if schema is None or policies is None:
            file_schema, file_policies = _read_platform_files()
            schema = file_schema if schema is None else schema
            policies = file_policies if policies is None else policies
        try:
            self._schema = cedarpy.Schema.from_str(schema)
        except ValueError as exc:
            raise PolicyLoadError(f"invalid Cedar schema: {exc}") from exc
        self._check_actions_match_schema()
        text = "\n".join(policies.values())
        result = cedarpy.validate_policies(text, self._schema)
        if not result.validation_passed:
            raise PolicyLoadError("invalid platform policies: " + "; ".join(str(e) for e in result.errors))
        self._platform_ids = self._platform_policy_ids(cedarpy.policies_to_pst(text))
        self._policies = cedarpy.PolicySet.from_str(text)
        self._platform_named_types = _named_entity_types(text)
        self._platform_slot = _PolicySlot((), _digest(()), self._policies, self._anonymous_types(()))
        # One parsed set per tenant, replaced when its texts change: a shared cache of sets let one tenant's edits
        # evict every other tenant's, and kept a parsed set (up to ~2 MB) per edit.
        self._slots_lock = threading.Lock()
        self._tenant_slots: OrderedDict[UUID, _PolicySlot] = OrderedDict()
        self._building: dict[UUID, _Building] = {}  # tenants whose set is being built, and who waits for it
        self._decisions: Remembered[Decision] = Remembered(DECISION_CACHE_SIZE, per_owner=DECISION_CACHE_PER_TENANT)
        # What each tenant text's check found: a set is built again after every change of its tenant's texts, and
        # checking all of them again (their parse, validation and walks) cost up to ~250 ms with the GIL held.
        self._checked: Remembered[_TextCheck] = Remembered(CHECKED_TEXTS_SIZE)

    def _check_actions_match_schema(self) -> None:
        # The enum is what callers type against; a drift from the schema would turn into policy_error at runtime.
        in_schema = set(_SCHEMA_ACTION.findall(str(self._schema)))
        in_enum = {action.value for action in Action}
        if in_schema != in_enum:
            raise PolicyLoadError(
                f"Action enum and schema differ: only in schema {sorted(in_schema - in_enum)}, "
                f"only in enum {sorted(in_enum - in_schema)}"
            )

    @staticmethod
    def _platform_policy_ids(tree: pst.PolicySet) -> dict[str, str]:
        if tree.templates:
            raise PolicyLoadError("platform policies must not be templates")
        known_reasons = {reason.value for reason in _FORBID_REASON_PRIORITY}
        ids: dict[str, str] = {}
        for positional, policy in tree.static_policies.items():
            policy_id = policy.annotations.get("id")
            if not policy_id:
                raise PolicyLoadError(f"platform policy {positional} has no @id")
            if policy_id in ids.values():
                raise PolicyLoadError(f"duplicate platform policy @id {policy_id!r}")
            prefix = _FORBID_PREFIX if policy.effect == "forbid" else _PERMIT_PREFIX
            if not policy_id.startswith(prefix):
                raise PolicyLoadError(f"platform {policy.effect} @id {policy_id!r} must start with {prefix!r}")
            if policy.effect == "forbid" and policy_id.removeprefix(_FORBID_PREFIX) not in known_reasons:
                raise PolicyLoadError(f"forbid @id {policy_id!r} names no known reason")
            ids[positional] = policy_id
        return ids

    def validate_tenant_policy(self, text: str) -> list[str]:
        """Why a tenant policy cannot be saved (empty = valid): one `forbid` naming tenant actions, schema-valid,
        cheap enough to evaluate."""
        return self._tenant_policy_problems(text)[0]

    def _tenant_policy_problems(self, text: str) -> tuple[list[str], int]:
        """Why a tenant policy cannot be saved (empty = valid), and what evaluating it costs (`policy_cost`)."""
        check = self._checked_text(text)
        return list(check.errors), check.cost

    def _checked_text(self, text: str) -> _TextCheck:
        """What checking `text` finds, remembered by a SHA-256 of it: a set is rebuilt after each change of its
        tenant's texts, and only a text not seen before is parsed, validated and walked."""
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
        check = self._checked.get(digest)
        if check is not None:
            return check
        # First, and for stored rows too (through _build_policy_set): text too deep for the parser would overflow
        # the thread's stack inside cedarpy and kill the process rather than raise. Such a text fails its set closed,
        # and naming every type keeps any id in a decision's key.
        bounds = policy_text_problems(text)
        if bounds:
            check = _TextCheck(tuple(bounds), MAX_TENANT_POLICY_COST + 1, _ALL_RESOURCE_TYPES)
        else:
            errors, cost = self._parsed_text_problems(text)
            check = _TextCheck(tuple(errors), cost, frozenset(_named_entity_types(text)))
        if not check.errors:
            # Only a text that passes: a refused one's errors grow with its text (one per attribute it names, each
            # repeating the name: ~100 KB for a 10,000-character text, ~445 MB in all the places), and it is refused
            # at its save, rarely stored and checked again.
            self._checked.put(digest, check)
        return check

    def _parsed_text_problems(self, text: str) -> tuple[list[str], int]:
        """`_tenant_policy_problems` of a text within the bounds the parser may be given."""
        try:
            tree = cedarpy.policies_to_pst(text)
        except ValueError as exc:
            return [f"syntax error: {exc}"], MAX_TENANT_POLICY_COST + 1
        errors, cost = policy_tree_problems(tree)
        errors.extend(_literal_like_errors(tree))
        if tree.templates or tree.template_links:
            errors.append("templates (?principal / ?resource slots) are not accepted")
        if len(tree.static_policies) != 1:
            errors.append(f"exactly one policy is expected, found {len(tree.static_policies)}")
        for policy in tree.static_policies.values():
            if policy.effect != "forbid":
                errors.append(
                    "only `forbid` policies are accepted: a tenant policy narrows the platform's "
                    "permits, it never widens them"
                )
            errors.extend(_action_scope_errors(policy.action))
        result = cedarpy.validate_policies(text, self._schema)
        errors.extend(error.error for error in result.errors)
        return errors, cost

    def _build_policy_set(self, tenant_policies: tuple[str, ...]) -> cedarpy.PolicySet | None:
        """The platform's policies plus these; None (logged) when one of them fails today's checks."""
        total = sum(len(text) for text in tenant_policies)
        if total > MAX_TENANT_POLICY_TOTAL_CHARS:
            # Saved before the bound, or behind the API: each decision would evaluate all of it (see the bound).
            logger.warning(
                "a tenant's stored policies hold %d characters, more than %d; its decisions fail closed",
                total,
                MAX_TENANT_POLICY_TOTAL_CHARS,
            )
            return None
        cost = 0
        for text in tenant_policies:
            # Stored policies were validated on save; checking again (once per distinct text, remembered) keeps a
            # row edited behind the API, or saved before a check was added, from widening anything or from reaching
            # the engine: every decision of the tenant fails closed until a Tenant.Admin deletes the row.
            errors, text_cost = self._tenant_policy_problems(text)
            if errors:
                logger.warning("a stored tenant policy is invalid, its tenant's decisions fail closed: %s", errors)
                return None
            cost += text_cost
        if cost > MAX_TENANT_POLICY_COST:
            # Saved before the bound, or behind the API: each decision would evaluate all of it (see the bound).
            logger.warning(
                "a tenant's stored policies cost %d expression nodes, more than %d; its decisions fail closed",
                cost,
                MAX_TENANT_POLICY_COST,
            )
            return None
        policy_set = self._policies
        for text in tenant_policies:
            policy_set = policy_set.with_added_str(text)
        return policy_set

    def _slot_for(self, tenant_id: UUID, texts: tuple[str, ...]) -> _PolicySlot:
        """The tenant's parsed policy set for `texts`, built when they differ from the tenant's slot."""
        if not texts:
            return self._platform_slot
        slot = self._kept_slot(tenant_id, texts)
        if slot is not None:
            return slot
        # One build per tenant at a time: the decisions arriving right after a change would otherwise each build
        # the same set (up to ~1 s each with the GIL held); they wait for the first and take its slot.
        with self._slots_lock:
            building = self._building.setdefault(tenant_id, _Building())
            building.waiting += 1
        try:
            with building.lock:
                slot = self._kept_slot(tenant_id, texts)
                if slot is None:
                    policy_set = self._build_policy_set(texts)
                    # A set that fails closed never reaches the engine: which resources it names does not matter.
                    anonymous = self._anonymous_types(texts) if policy_set is not None else frozenset()
                    slot = _PolicySlot(texts, _digest(texts), policy_set, anonymous)
                    self._keep_slot(tenant_id, slot)
                return slot
        finally:
            with self._slots_lock:
                building.waiting -= 1
                if building.waiting == 0:
                    del self._building[tenant_id]

    def _kept_slot(self, tenant_id: UUID, texts: tuple[str, ...]) -> _PolicySlot | None:
        """The tenant's kept slot when it is for `texts` (marked recently used), else None."""
        with self._slots_lock:
            slot = self._tenant_slots.get(tenant_id)
            if slot is not None:
                self._tenant_slots.move_to_end(tenant_id)
        # Identity first: the tenant's texts are read as one tuple that is reused while they stay equal.
        if slot is not None and (slot.texts is texts or slot.texts == texts):
            return slot
        return None

    def _keep_slot(self, tenant_id: UUID, slot: _PolicySlot) -> None:
        """Keep `slot` as the tenant's, dropping the least recently used tenant's past TENANT_SLOTS."""
        with self._slots_lock:
            self._tenant_slots[tenant_id] = slot
            self._tenant_slots.move_to_end(tenant_id)
            while len(self._tenant_slots) > TENANT_SLOTS:
                self._tenant_slots.popitem(last=False)

    def decide(
        self,
        principal: Principal,
        action: Action | str,
        resource: Resource,
        *,
        tenant: TenantFacts,
        tenant_policies: Sequence[str] = (),
    ) -> Decision:
        """Decide one request; `tenant` is the principal's tenant, `tenant_policies` its stored extra policies."""
        try:
            action = Action(action)
            if principal.tenant_id != tenant.id:
                raise ValueError("the tenant facts are not the principal's tenant")
            # Tenant policies cannot name these actions, and skipping them means a broken stored policy can never
            # stop a Tenant.Admin from deleting it.
            untouchable = action in PLATFORM_ACTIONS or action in POLICY_ADMIN_ACTIONS
            request = {
                "principal": _uid("Principal", principal.id),
                "action": {"type": f"{NAMESPACE}::Action", "id": action.value},
                "resource": _uid(resource.type, resource.id),
                "context": {},
            }
            # Everything the evaluation reads, as the keys of the decision cache (the entities as Cedar takes them).
            slot = self._slot_for(tenant.id, () if untouchable else tuple(tenant_policies))
            if resource.type in slot.anonymous_types:
                # No policy in force names a resource of this type by id, so which one it is cannot change the
                # decision: the key (and what Cedar sees) keeps the resource's attributes and drops its id.
                request["resource"] = _uid(resource.type, _ANY_OF_ITS_TYPE)
                uid_id = _ANY_OF_ITS_TYPE
            else:
                uid_id = resource.id
            entities = json.dumps(
                self._entities(principal, resource, tenant, uid_id), sort_keys=True, separators=(",", ":")
            )
            return self._decide_once(tenant.id, slot, json.dumps(request, sort_keys=True), entities)
        except Exception:  # any engine or input error denies: failing open is never an option
            logger.warning("authorization failed closed for action %s on %s", action, resource.type, exc_info=True)
            return Decision(False, Reason.POLICY_ERROR, ())

    def _decide_once(self, tenant_id: UUID, slot: _PolicySlot, request: str, entities: str) -> Decision:
        """The remembered decision of this request under `slot`'s policies, evaluated when there is none (an error
        is raised, so never remembered; neither is a broken set's refusal); remembered as the tenant's."""
        key = _decision_key(slot.digest, request, entities)
        decision = self._decisions.get(key)
        if decision is None:
            if slot.policy_set is None:
                # Logged once, when the slot was built: a traceback on every decision of the tenant says nothing more.
                return Decision(False, Reason.POLICY_ERROR, ())
            decision = self._decision(
                cedarpy.is_authorized(json.loads(request), slot.policy_set, entities, self._schema)
            )
            self._decisions.put(key, decision, tenant_id)
        return decision

    def _anonymous_types(self, tenant_policies: tuple[str, ...]) -> frozenset[str]:
        """Resource types that neither the platform's policies nor these tenant policies name by id."""
        named = set(self._platform_named_types)
        for text in tenant_policies:
            named |= self._checked_text(text).named
        return frozenset(kind for kind in RESOURCE_TYPES - _IDENTIFIED_TYPES if f"{NAMESPACE}::{kind}" not in named)

    def _entities(
        self, principal: Principal, resource: Resource, tenant: TenantFacts, uid_id: str
    ) -> list[dict[str, Any]]:
        tenant_id = str(tenant.id)
        entities: list[dict[str, Any]] = [
            {
                "uid": _uid("Tenant", tenant_id),
                "parents": [],
                "attrs": {
                    "status": tenant.status,
                    "allowed_targets": sorted(tenant.allowed_targets),
                    "allowed_modules": sorted(tenant.allowed_modules),
                },
            },
            {
                "uid": _uid("Principal", principal.id),
                "parents": [],
                "attrs": {
                    "id": principal.id,
                    "roles": sorted(principal.roles),
                    "tenant": _ref("Tenant", tenant_id),
                    "app_only": principal.app_only,
                },
            },
        ]
        if resource.type not in RESOURCE_TYPES:
            raise ValueError(f"unknown resource type {resource.type!r}")
        # The Platform has no attributes, and another tenant's row is not ours to describe: both are left out
        # of the entity set, which Cedar treats as entities without attributes.
        if resource.type not in ("Platform", "Tenant"):
            entities.append({"uid": _uid(resource.type, uid_id), "parents": [], "attrs": _resource_attrs(resource)})
        return entities

    def _decision(self, result: cedarpy.AuthzResult) -> Decision:
        diagnostics = result.diagnostics
        names = tuple(self._policy_name(pid, diagnostics.id_annotations_by_reason) for pid in diagnostics.reasons)
        if result.decision == cedarpy.Decision.Allow:
            # A policy that failed to evaluate is skipped by Cedar; if it was a forbid, allowing would fail open.
            if diagnostics.errors:
                logger.warning("authorization failed closed: %s", json.dumps(diagnostics.errors))
                return Decision(False, Reason.POLICY_ERROR, names)
            return Decision(True, Reason.ALLOWED, names)
        if result.decision != cedarpy.Decision.Deny:
            logger.warning("authorization failed closed: %s", json.dumps(diagnostics.errors))
            return Decision(False, Reason.POLICY_ERROR, ())
        if names:
            return Decision(False, self._deny_reason(names), names)
        if diagnostics.errors:
            logger.warning("authorization failed closed: %s", json.dumps(diagnostics.errors))
            return Decision(False, Reason.POLICY_ERROR, ())
        return Decision(False, Reason.ROLE_REQUIRED, ())

    def _policy_name(self, positional: str, annotations: Mapping[str, str]) -> str:
        # Classified by position, not by @id: a tenant cannot pass its policy off as a platform one by its @id.
        if positional in self._platform_ids:
            return self._platform_ids[positional]
        return _TENANT_POLICY_PREFIX + (annotations.get(positional) or positional)

    @staticmethod
    def _deny_reason(names: tuple[str, ...]) -> Reason:
        platform_reasons = {name.removeprefix(_FORBID_PREFIX) for name in names if name.startswith(_FORBID_PREFIX)}
        for reason in _FORBID_REASON_PRIORITY:
            if reason.value in platform_reasons:
                return reason
        return Reason.DENIED_BY_TENANT_POLICY


def _is_attribute_chain(expr: pst.Expr) -> bool:
    """Whether `expr` reads an attribute of the request (`resource.target`, `principal.tenant.status`)."""
    if not isinstance(expr, pst.GetAttr):
        return False
    while isinstance(expr, pst.GetAttr):
        expr = expr.base
    return isinstance(expr, pst.Var) and str(expr.name) in _LIKE_VARIABLES


def _literal_like_errors(tree: pst.PolicySet) -> list[str]:
    """A `like` whose left side is not an attribute of the request: any other expression (a literal, `if true then
    "…"`, `{a: "…"}.a`) is a string whose length, so cost, would be the policy's to choose (see
    MAX_POLICY_LITERAL_CHARS), and matching it decides nothing about a request."""
    pending: list[Any] = [*tree.static_policies.values(), *tree.templates.values()]
    while pending:  # iterative: nesting is bounded before parsing, but the walk should not depend on it
        node = pending.pop()
        if isinstance(node, pst.Like):
            if not _is_attribute_chain(node.base):
                return [
                    'a `like` must match an attribute of the request (`resource.name like "legacy-*"`), not a string '
                    "literal or another expression; "
                    f"patterns are at most {MAX_POLICY_LITERAL_CHARS} characters"
                ]
            # Its pattern is one node per character, none of them an expression: only its left side is walked.
            pending.append(node.base)
        elif is_dataclass(node):
            pending.extend(getattr(node, item.name) for item in fields(node))
        elif isinstance(node, tuple | list):
            pending.extend(node)
        elif isinstance(node, Mapping):
            pending.extend(node.values())
    return []


def _action_scope_errors(scope: pst.ActionConstraint) -> list[str]:
    # A tenant policy names its actions, so it can never reach the control plane or lock its admins out of
    # the policy endpoints that would undo it.
    if isinstance(scope, pst.ActionEq):
        uids: tuple[pst.EntityUid, ...] = (scope.entity,)
    elif isinstance(scope, pst.ActionIn):
        uids = scope.entities
    else:
        return ['name the actions the policy forbids (`action == QP::Action::"..."` or `action in [...]`)']
    allowed = {action.value for action in TENANT_POLICY_ACTIONS}
    errors = []
    for uid in uids:
        if uid.type.namespace != (NAMESPACE,) or uid.type.basename != "Action" or uid.id not in allowed:
            errors.append(f"action {uid.id!r} cannot be restricted by a tenant policy")
    return errors


@functools.cache
def get_authorizer() -> Authorizer:
    """The process-wide Authorizer over the checked-in schema and platform policies (loaded once)."""
    return Authorizer()
