# intent_ref: platform.modules
"""Remote modules a Tenant.Admin registers, and a tenant's catalog: the built-ins plus its registrations."""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import psycopg
from jsonschema import Draft202012Validator
from jsonschema.validators import validator_for
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from shared.db import tenant_locks
from shared.free_text import SHOWN_AS_WRITTEN_IN_LINES, SHOWN_IN_LINES
from shared.policy.facts import TenantFacts
from shared.policy.gates import check_gates, module_of_action
from shared.registry.catalog import ModuleCatalog, ModuleSpec, builtin_catalog
from shared.registry.problems import MAX_REPORTED_ERRORS, MAX_SUBSCHEMAS, too_many_subschemas
from shared.registry.schema_refs import evaluate_tenant_schema, reference_problems, short_message
from shared.registry.schemas import pattern_problems

logger = logging.getLogger(__name__)

REMOTE_ACTION_PATTERN = r"^[a-z][a-z0-9-]*(\.[a-z0-9-]+)*$"
MAX_ACTION_LENGTH = 128
MAX_DESCRIPTION_LENGTH = 2000
MAX_TIMEOUT_S = 24 * 3600
DEFAULT_TIMEOUT_S = 300
MAX_SCHEMA_BYTES = 32 * 1024
MAX_DEFAULTS_BYTES = 16 * 1024
MAX_SCHEMA_DEPTH = 32
"""Checked before the meta-schema, whose validator recurses: a deeply nested body cannot exhaust the stack."""
JSON_SCHEMA_2020_12 = "https://json-schema.org/draft/2020-12/schema"

_META_VALIDATOR = validator_for(Draft202012Validator.META_SCHEMA, default=Draft202012Validator)(
    Draft202012Validator.META_SCHEMA
)
# What a partial parameter object (the defaults) need not satisfy: presence and cross-field rules.
_WHOLE_OBJECT_KEYWORDS = frozenset(
    {
        "required",
        "anyOf",
        "oneOf",
        "allOf",
        "not",
        "if",
        "then",
        "else",
        "dependentRequired",
        "dependentSchemas",
        "minProperties",
        "unevaluatedProperties",
    }
)
_EXAMPLE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "chart": {"type": "string", "minLength": 1},
        "namespace": {"type": "string"},
        "wait": {"type": "boolean"},
    },
    "required": ["chart", "namespace"],
    "additionalProperties": False,
}

MODULE_EXAMPLE: dict[str, Any] = {
    "action": "helm-upgrade",
    "module": "helm-upgrade",
    "description": "Upgrade a Helm release.",
    "params_schema": _EXAMPLE_SCHEMA,
    "defaults": {"wait": True},
    "timeout_s": 1800,
    "remote": True,
    "alias_of": None,
    "allowed": True,
    "created_by": "72f988bf-86f1-41af-91ab-2d7cd011db47/1b2c3d4e",
    "created_at": "2025-01-04T10:00:00Z",
}


class ModuleConflictError(Exception):
    """The action is a built-in (or in a built-in module's family), the tenant registered it already, or the tenant
    registered as many modules as it may."""

    def __init__(self, action: str, kind: Literal["builtin", "registered", "quota"], message: str) -> None:
        super().__init__(message)
        self.action, self.kind, self.message = action, kind, message


def _error(loc: tuple[str | int, ...], message: str) -> InitErrorDetails:
    # The message goes in as context: jsonschema messages may hold braces, which a template would interpret.
    return InitErrorDetails(
        type=PydanticCustomError("invalid_module", "{reason}", {"reason": message[:500]}), loc=loc, input=None
    )


def _depth(document: Any) -> int:
    """The nesting depth of a JSON document, without recursion."""
    deepest, stack = 0, [(document, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_SCHEMA_DEPTH:
            break
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, depth + 1) for child in children)
    return deepest


def schema_problems(schema: dict[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
    """Why `schema` cannot be a module's parameter schema, each at its path; empty when it can."""
    if len(json.dumps(schema, separators=(",", ":"))) > MAX_SCHEMA_BYTES:
        return [((), f"the parameter schema exceeds {MAX_SCHEMA_BYTES} bytes")]
    if _depth(schema) > MAX_SCHEMA_DEPTH:
        return [((), f"the parameter schema nests deeper than {MAX_SCHEMA_DEPTH} levels")]
    crowded = too_many_subschemas(schema)
    if crowded is not None:
        return [((), crowded)]  # before the meta-schema, whose work grows with the subschemas (ADR 0016)
    problems: list[tuple[tuple[str | int, ...], str]] = [
        (tuple(error.absolute_path), error.message) for error in _META_VALIDATOR.iter_errors(schema)
    ]
    if "$schema" in schema and schema["$schema"] != JSON_SCHEMA_2020_12:
        problems.append((("$schema",), f"parameter schemas are JSON Schema 2020-12 ({JSON_SCHEMA_2020_12})"))
    if schema.get("type") != "object" and not any(where[:1] == ("type",) for where, _ in problems):
        problems.append((("type",), "a parameter schema must have type 'object' (parameters are an object)"))
    # Remote, dangling or cyclic references, and ones that multiply an evaluation's work (ADR 0016).
    problems.extend(reference_problems(schema))
    # Only what can be enforced in linear time is accepted (see shared/registry/schemas.py).
    problems.extend(pattern_problems(schema))
    return sorted(problems, key=lambda problem: [str(part) for part in problem[0]])[:MAX_REPORTED_ERRORS]


def defaults_problems(schema: dict[str, Any], defaults: dict[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
    """Defaults that their (valid) schema refuses, checked as a partial parameter object."""
    if len(json.dumps(defaults, separators=(",", ":"))) > MAX_DEFAULTS_BYTES:
        return [((), f"defaults exceed {MAX_DEFAULTS_BYTES} bytes")]
    partial = {key: value for key, value in schema.items() if key not in _WHOLE_OBJECT_KEYWORDS}
    # References resolve in the whole schema: one to a keyword the partial schema leaves out must still resolve.
    evaluation = evaluate_tenant_schema(partial, defaults, root=schema)
    if evaluation.unusable is not None:
        return [((), f"the defaults cannot be checked: the schema cannot be evaluated ({evaluation.unusable})")]
    return [
        (tuple(error.absolute_path), short_message(error.message))
        for error in evaluation.violations[:MAX_REPORTED_ERRORS]
    ]


class ModuleRegistration(BaseModel):
    """A remote module: an action the tenant's own workers handle, and the JSON Schema of its parameters."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "action": "helm-upgrade",
                    "description": "Upgrade a Helm release (handled by our own worker).",
                    "params_schema": _EXAMPLE_SCHEMA,
                    "defaults": {"wait": True},
                    "timeout_s": 1800,
                }
            ]
        },
    )

    action: str = Field(
        pattern=REMOTE_ACTION_PATTERN,
        max_length=MAX_ACTION_LENGTH,
        description="The action steps name; lowercase, dot-separated segments.",
    )
    description: Annotated[
        str,
        Field(
            max_length=MAX_DESCRIPTION_LENGTH,
            description=f"What the action does, for people to read: {SHOWN_AS_WRITTEN_IN_LINES}",
        ),
        SHOWN_IN_LINES,
    ] = ""
    params_schema: dict[str, Any] = Field(
        description=f"A JSON Schema 2020-12 of type object, at most {MAX_SCHEMA_BYTES} bytes and {MAX_SUBSCHEMAS:,}"
        " subschemas (itself included), local $refs only."
    )
    defaults: dict[str, Any] = Field(default_factory=dict, description="Parameter values used when a step omits them.")
    timeout_s: int = Field(DEFAULT_TIMEOUT_S, ge=1, le=MAX_TIMEOUT_S, description="A step's default timeout.")

    @model_validator(mode="after")
    def _schema_is_usable(self) -> ModuleRegistration:
        # Raised as a ValidationError so every problem keeps its own location (a JSON pointer in the 422).
        problems = [
            _error(("params_schema", *where), message) for where, message in schema_problems(self.params_schema)
        ]
        if not problems:
            problems = [
                _error(("defaults", *where), message)
                for where, message in defaults_problems(self.params_schema, self.defaults)
            ]
        if problems:
            raise ValidationError.from_exception_data(type(self).__name__, problems)
        return self

    @classmethod
    def from_spec(cls, spec: ModuleSpec) -> ModuleRegistration:
        """The registration of a spec (the seed's remote modules are specs)."""
        return cls(
            action=spec.action,
            description=spec.description,
            params_schema=spec.params_schema,
            defaults=spec.defaults,
            timeout_s=spec.timeout_s,
        )

    def to_spec(self) -> ModuleSpec:
        return ModuleSpec(self.action, self.description, self.params_schema, self.defaults, self.timeout_s, remote=True)


class ModuleInfo(BaseModel):
    """One action of the tenant's catalog as the API shows it."""

    model_config = ConfigDict(json_schema_extra={"examples": [MODULE_EXAMPLE]})

    action: str
    module: str = Field(description="What an allow-list names to permit this action (the part before the first dot).")
    description: str
    params_schema: dict[str, Any]
    defaults: dict[str, Any]
    timeout_s: int
    remote: bool = Field(
        description="Handled by the tenant's own worker, which leases it from the tenant's work queue."
    )
    alias_of: str | None = None
    allowed: bool = Field(description="On the tenant's allow-list: steps may use it.")
    created_by: str | None = Field(None, description="Who registered it; null for a built-in.")
    created_at: datetime | None = None


class ModuleList(BaseModel):
    """The tenant's catalog: built-ins first, then its registered modules, each by action."""

    items: list[ModuleInfo]


def reserved_by_builtin(action: str) -> str | None:
    """Why `action` is not a tenant's to register, or None. Allow-lists name a module by its family (the part
    before the first dot), so a tenant action in a built-in's family would be allowed by that built-in's entry."""
    builtins = builtin_catalog()
    if action in builtins:
        return f"{action!r} is a built-in module"
    families = {module_of_action(name) for name in builtins}
    family = module_of_action(action)
    if family in families or family in builtins:
        return f"{action!r} is in the family of the built-in module {family!r}"
    return None


_SPEC_CACHE_SIZE = 1024
_spec_cache: OrderedDict[UUID, ModuleSpec] = OrderedDict()
_spec_cache_lock = threading.Lock()


def _spec_of(row: Mapping[str, Any]) -> ModuleSpec:
    # Registrations are never updated (no UPDATE grant), so a spec built once per row id stays right. Its schema
    # passed the meta-schema at registration and is not checked again: that check costs up to seconds for a large
    # schema, and one stored before the subschema bound would make the whole catalog unreadable (ADR 0016).
    with _spec_cache_lock:
        spec = _spec_cache.get(row["id"])
        if spec is not None:
            _spec_cache.move_to_end(row["id"])
            return spec
    spec = ModuleSpec(
        row["action"],
        row["description"],
        row["params_schema"],
        row["defaults"],
        row["timeout_s"],
        remote=True,
        stored=True,
    )
    with _spec_cache_lock:
        _spec_cache[row["id"]] = spec
        while len(_spec_cache) > _SPEC_CACHE_SIZE:
            _spec_cache.popitem(last=False)
    return spec


_SELECT = "SELECT id, action, description, params_schema, defaults, timeout_s, created_by, created_at FROM app.modules"


def _registered(conn: psycopg.Connection[DictRow], action: str | None = None) -> list[DictRow]:
    # RLS: the tenant transaction's rows only.
    if action is None:
        return conn.execute(_SELECT + " ORDER BY action").fetchall()
    return conn.execute(_SELECT + " WHERE action = %s", (action,)).fetchall()


def _catalog(rows: list[DictRow]) -> ModuleCatalog:
    builtins = builtin_catalog()
    remote = []
    for row in rows:
        if row["action"] in builtins:
            # Only if a later release adds a built-in of that name: the built-in wins, the catalog stays usable.
            logger.warning("tenant module %r is shadowed by a built-in and ignored", row["action"])
            continue
        remote.append(_spec_of(row))
    return builtins.with_modules(remote)


def tenant_catalog(conn: psycopg.Connection[DictRow]) -> ModuleCatalog:
    """Every action the current tenant's steps may name: the built-ins and its remote modules.

    Read in the caller's tenant transaction. Allow-lists are not applied here; validation applies them as gates.
    """
    return _catalog(_registered(conn))


MAX_TENANT_MODULES = 100
"""Remote modules one tenant may register: every validation of its definitions builds a catalog of all of them."""


def register_module(
    conn: psycopg.Connection[DictRow], tenant_id: UUID, registration: ModuleRegistration, created_by: str
) -> ModuleSpec:
    """Register a remote module for `tenant_id` in the caller's tenant transaction; conflicts raise, and so does a
    tenant that has MAX_TENANT_MODULES already (kind `quota`)."""
    reserved = reserved_by_builtin(registration.action)
    if reserved is not None:
        raise ModuleConflictError(registration.action, "builtin", reserved)
    # Counted under the tenant's lock: registrations sent at once would otherwise pass the bound together.
    tenant_locks.hold(conn, "tenant-modules")
    registered = conn.execute("SELECT count(*) AS n FROM app.modules").fetchone()
    if registered is not None and registered["n"] >= MAX_TENANT_MODULES:
        raise ModuleConflictError(
            registration.action,
            "quota",
            f"this tenant has {MAX_TENANT_MODULES} registered modules, the most it may have; delete one first",
        )
    # ON CONFLICT: a concurrent registration of the same action loses without aborting the transaction.
    row = conn.execute(
        "INSERT INTO app.modules (tenant_id, action, description, params_schema, defaults, timeout_s, created_by)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (tenant_id, action) DO NOTHING RETURNING id",
        (
            tenant_id,
            registration.action,
            registration.description,
            Jsonb(registration.params_schema),
            Jsonb(registration.defaults),
            registration.timeout_s,
            created_by,
        ),
    ).fetchone()
    if row is None:
        raise ModuleConflictError(
            registration.action, "registered", f"{registration.action!r} is already registered for this tenant"
        )
    return registration.to_spec()


def _info(spec: ModuleSpec, tenant: TenantFacts, row: Mapping[str, Any] | None = None) -> ModuleInfo:
    return ModuleInfo(
        action=spec.action,
        module=module_of_action(spec.action),
        description=spec.description,
        params_schema=spec.params_schema,
        defaults=spec.defaults,
        timeout_s=spec.timeout_s,
        remote=spec.remote,
        alias_of=spec.alias_of,
        # The gates' own check, so the list shows exactly what validation would let a step use.
        allowed=not check_gates(tenant, None, {spec.action: spec.action}),
        created_by=row["created_by"] if row else None,
        created_at=row["created_at"] if row else None,
    )


def list_modules(
    conn: psycopg.Connection[DictRow], tenant: TenantFacts, *, include_disallowed: bool = False
) -> list[ModuleInfo]:
    """The tenant's catalog, built-ins first; only allowed actions unless `include_disallowed`."""
    registered = _registered(conn)
    rows = {row["action"]: row for row in registered}
    catalog = _catalog(registered)
    items = [_info(spec, tenant, rows.get(action) if spec.remote else None) for action, spec in catalog.items()]
    items.sort(key=lambda item: (item.remote, item.action))
    return [item for item in items if include_disallowed or item.allowed]


def get_module(conn: psycopg.Connection[DictRow], tenant: TenantFacts, action: str) -> ModuleInfo | None:
    """One action of the tenant's catalog (allowed or not), or None."""
    builtins = builtin_catalog()
    if action in builtins:
        return _info(builtins[action], tenant)
    rows = _registered(conn, action)
    return _info(_spec_of(rows[0]), tenant, rows[0]) if rows else None
