# intent_ref: platform.registry
"""Save-time validation of an intent (or blueprint) request: every problem at once, each at a JSON pointer."""

from __future__ import annotations

import heapq
import json
from dataclasses import dataclass
from typing import Any

import pydantic

from shared.free_text import UNSHOWN_CHARACTER, unshown_problem
from shared.policy.facts import TenantFacts
from shared.registry.catalog import ModuleCatalog
from shared.registry.model import (
    DEFINITION_FIELDS,
    READ_ONLY_FIELDS,
    STEP_FIELDS,
    IntentDefinitionIn,
    ResolvedBlueprint,
    Step,
    merged_params,
)
from shared.registry.plan import execution_levels, expand_declaration, input_defaults
from shared.registry.problems import (
    MAX_REPORTED_ERRORS,
    ValidationError,
    document_order,
    from_pydantic,
    from_schema,
    pointer,
    schema_document_problems,
)
from shared.registry.references import scan_references
from shared.registry.step_checks import check_steps, declared_url_problems, gate_problems
from shared.registry.when import when_references

__all__ = [
    "DEFAULT_LIMITS",
    "Limits",
    "ValidationError",
    "ValidationResult",
    "required_blueprint",
    "stored_size_problem",
    "unshown_text_problems",
    "validate_definition",
]


@dataclass(frozen=True)
class Limits:
    """Bounds on one definition; exceeding one stops the deeper checks, since they exist to bound that work."""

    max_definition_bytes: int = 256 * 1024
    max_steps: int = 200
    max_depth: int = 32


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class ValidationResult:
    """The problems, or on success the parsed request, the normalized definition, its steps and their plan."""

    errors: tuple[ValidationError, ...]
    intent: IntentDefinitionIn | None = None
    normalized: dict[str, Any] | None = None
    steps: tuple[Step, ...] = ()
    plan: list[list[str]] | None = None
    blueprint_ref: str | None = None
    unlisted: int = 0
    """Problems counted but not built, all after the first MAX_REPORTED_ERRORS of `errors` (unknown members)."""

    @property
    def ok(self) -> bool:
        return not self.errors


def required_blueprint(doc: Any) -> str | None:
    """The blueprint a request needs to be validated against: None unless its definition is a declaration."""
    if not isinstance(doc, dict) or not isinstance(definition := doc.get("definition"), dict):
        return None
    if definition.get("steps") is not None:
        return None
    named = definition.get("blueprint", doc.get("name"))
    return named if isinstance(named, str) else None


def _depth_problem(definition: dict[str, Any], max_depth: int) -> ValidationError | None:
    # Iterative, so that a hostile document cannot exhaust the stack before it is refused.
    stack: list[tuple[Any, int, tuple[str | int, ...]]] = [(definition, 1, ("definition",))]
    while stack:
        node, depth, path = stack.pop()
        if depth > max_depth:
            return ValidationError(pointer(*path), f"nested deeper than {max_depth} levels", "too_deep")
        children = node.items() if isinstance(node, dict) else enumerate(node)
        stack.extend((child, depth + 1, (*path, key)) for key, child in children if isinstance(child, dict | list))
    return None


def _limit_problems(definition: dict[str, Any], limits: Limits) -> list[ValidationError]:
    too_deep = _depth_problem(definition, limits.max_depth)
    if too_deep is not None:
        return [too_deep]
    problems = []
    size = _size(definition)
    if size > limits.max_definition_bytes:
        problems.append(_too_large(f"{size} bytes", limits))
    steps = definition.get("steps")
    if isinstance(steps, list) and len(steps) > limits.max_steps:
        problems.append(
            ValidationError(
                "/definition/steps", f"{len(steps)} steps; at most {limits.max_steps} are allowed", "too_many_steps"
            )
        )
    return problems


def _size(definition: dict[str, Any]) -> int:
    """A definition's size as the limit measures it: compact JSON, UTF-8."""
    return len(json.dumps(definition, separators=(",", ":"), ensure_ascii=False, default=str).encode())


def _too_large(size: str, limits: Limits) -> ValidationError:
    """The `too_large` problem of a definition of `size` (its bytes, said as measured)."""
    at_most = limits.max_definition_bytes
    return ValidationError("/definition", f"the definition is {size}; at most {at_most} are allowed", "too_large")


def stored_size_problem(stored: dict[str, Any], limits: Limits) -> ValidationError | None:
    """`too_large` when a normalized definition, as jsonb gives it back (`stored`), passes the byte limit: the limit
    is the stored definition's, which every later check of it (a plan, a start, a rollback) measures. A request's
    text can be far shorter: jsonb writes a number out in full (`1e16` as 17 digits), so 200 KB of them saved as
    720 KB, and the version saved could then never be planned or started."""
    size = _size(stored)
    return _too_large(f"{size} bytes as stored", limits) if size > limits.max_definition_bytes else None


def _definition_problems(definition: dict[str, Any]) -> list[ValidationError]:
    """The fields of a definition with steps: nothing beyond its own, no blueprint, a usable input schema."""
    problems = [
        ValidationError(
            pointer("definition", key),
            f"'{key}' is not a definition field; only a declaration (a definition without steps) carries other fields",
            "unknown_field",
        )
        for key in definition
        if key not in DEFINITION_FIELDS
    ]
    if definition.get("blueprint") is not None:
        problems.append(
            ValidationError(
                "/definition/blueprint", "a definition with steps does not use a blueprint", "blueprint_with_steps"
            )
        )
    inputs = definition.get("inputs")
    if isinstance(inputs, dict):
        problems.extend(schema_document_problems(inputs, "/definition/inputs", code="invalid_inputs_schema"))
        if inputs.get("type", "object") != "object":
            problems.append(
                ValidationError(
                    "/definition/inputs/type", "execution inputs are a JSON object", "invalid_inputs_schema"
                )
            )
    return problems


@dataclass
class _Declaration:
    problems: list[ValidationError]
    plan: list[list[str]] | None = None


def _input_readers(steps: list[Step]) -> dict[str, str]:
    """Each input the steps read, with the first step that reads it."""
    readers: dict[str, str] = {}
    for step in steps:
        refs = [ref for _, ref in scan_references(step.params).found]
        if step.compensate is not None:
            refs += [ref for _, ref in scan_references(step.compensate.params).found]
        condition = step.condition()
        refs += when_references(condition) if condition is not None else []
        for ref in refs:
            if ref.source == "inputs":
                readers.setdefault(ref.name, step.step_id)
    return readers


def _check_declaration(
    doc: dict[str, Any],
    definition: dict[str, Any],
    catalog: ModuleCatalog,
    tenant: TenantFacts | None,
    blueprint: ResolvedBlueprint | None,
    allow_private: bool | None,
    runs_as: str | None = None,
) -> _Declaration:
    """A declaration: its fields against the blueprint's input schema, and the blueprint's steps for this tenant;
    none of them may run `runs_as`, the intent being saved (the blueprint often has its name)."""
    at = "/definition/blueprint" if "blueprint" in definition else "/definition"
    problems = []
    if "inputs" in definition:
        problems.append(
            ValidationError(
                "/definition/inputs",
                "a declaration's fields are its inputs (checked against the blueprint's input "
                "schema); an input schema belongs in the blueprint",
                "unexpected_field",
            )
        )
    wanted = required_blueprint(doc)
    if blueprint is None:
        problems.append(
            ValidationError(
                at,
                f"a definition without steps is a declaration: blueprint '{wanted}' is needed to validate and plan it",
                "blueprint_required",
            )
        )
        return _Declaration(problems)
    if wanted is not None and blueprint.name != wanted:
        problems.append(
            ValidationError(
                at, f"the declaration names blueprint '{wanted}', not '{blueprint.name}'", "blueprint_mismatch"
            )
        )
        return _Declaration(problems)
    steps = blueprint.definition.steps
    if steps is None:
        problems.append(ValidationError(at, f"blueprint {blueprint.ref} has no steps", "blueprint_invalid"))
        return _Declaration(problems)
    state = {key: value for key, value in definition.items() if key not in DEFINITION_FIELDS - {"target"}}
    schema = blueprint.definition.inputs
    if schema is not None:
        problems.extend(
            from_schema(
                schema,
                state,
                lambda path: pointer("definition", *path),
                code="invalid_declaration",
                subject=f"blueprint {blueprint.ref}",
            )
        )
    defaults = input_defaults(schema)
    for name, step_id in _input_readers(steps).items():
        if name not in state and name not in defaults:
            problems.append(
                ValidationError(
                    "/definition",
                    f"blueprint step '{step_id}' reads input '{name}', which the declaration does not set",
                    "missing_input",
                )
            )
    actions: dict[str, tuple[str, str]] = {}
    for step in steps:
        if runs_as is not None and step.action == "intent.run" and step.params.get("intent") == runs_as:
            problems.append(
                ValidationError(
                    at,
                    f"blueprint step '{step.step_id}' runs intent '{runs_as}', the intent being saved: an intent"
                    " cannot run itself",
                    "recursive_intent",
                )
            )
        for key, action in (
            (step.step_id, step.action),
            (f"{step.step_id}/compensate", step.compensate.action if step.compensate else None),
        ):
            if action is None:
                continue
            if action in catalog:
                actions[key] = (action, at)
            else:
                problems.append(
                    ValidationError(
                        at, f"blueprint step '{step.step_id}' uses unknown action '{action}'", "unknown_action"
                    )
                )
    problems.extend(gate_problems(tenant, definition.get("target"), actions))
    problems.extend(declared_url_problems(steps, {**defaults, **state}, state.keys(), at, allow_private))
    try:
        return _Declaration(problems, execution_levels(steps))
    except ValueError as exc:
        problems.append(ValidationError(at, f"blueprint {blueprint.ref}: {exc}", "blueprint_invalid"))
        return _Declaration(problems)


_REQUEST_MEMBERS = frozenset(IntentDefinitionIn.model_fields) | READ_ONLY_FIELDS


def _split_unknown(doc: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The request without its unknown members when it has more than a few, and their names (else none: pydantic
    names them, as it always did). A hundred thousand of them made pydantic build an error for each, and sorting
    those by document order took another 0.6 s, to list the first few; each is only "Extra inputs are not permitted"
    at its own pointer, so the first MAX_REPORTED_ERRORS are built and the others counted (`unlisted`)."""
    if len(doc) <= len(_REQUEST_MEMBERS) + MAX_REPORTED_ERRORS:
        return doc, []
    unknown = [name for name in doc if name not in _REQUEST_MEMBERS]
    return {name: value for name, value in doc.items() if name in _REQUEST_MEMBERS}, unknown


def _with_unknown(
    doc: dict[str, Any], ordered: tuple[ValidationError, ...], unknown: list[str]
) -> tuple[ValidationError, ...]:
    """`ordered` with an extra_forbidden problem for each unknown member, each at its place in document order as
    `_ordered` would sort it (a top-level member's key is its position; no other problem points at it)."""
    if not unknown:
        return ordered
    key = document_order(doc)
    places = {name: place for place, name in enumerate(doc)}
    extra = [
        ((places[name],), ValidationError(pointer(name), "Extra inputs are not permitted", "extra_forbidden"))
        for name in unknown
    ]
    merged = heapq.merge(((key(problem.pointer), problem) for problem in ordered), extra, key=lambda pair: pair[0])
    return tuple(problem for _, problem in merged)


def _ordered(doc: dict[str, Any], problems: list[ValidationError]) -> tuple[ValidationError, ...]:
    """Problems once each, in document order (stable, so each location keeps the order its checks found)."""
    if not problems:
        return ()  # the usual case, every start included: no walk of the whole document for nothing to sort
    key = document_order(doc)
    return tuple(sorted(dict.fromkeys(problems), key=lambda problem: key(problem.pointer)))


def validate_definition(
    doc: dict[str, Any],
    *,
    catalog: ModuleCatalog,
    tenant: TenantFacts | None = None,
    blueprint: ResolvedBlueprint | None = None,
    limits: Limits = DEFAULT_LIMITS,
    allow_private: bool | None = None,
    runs_as: str | None = None,
) -> ValidationResult:
    """Validate a create/update request body (`{"name", "description", "labels", "definition"}`).

    `runs_as`: the name the definition runs under as an intent (its `name`; None for a blueprint), which none of
    its `intent.run` steps may name.

    `catalog` holds the actions the tenant may use; `tenant` adds its gates; `blueprint` is the version a
    declaration (a definition without steps) expands through — `required_blueprint(doc)` names it.
    `allow_private` stands for QP_ALLOW_PRIVATE_NETWORK_HOSTS (None reads it): without it a step URL whose
    host is a literal private, loopback or metadata address, or a private-only name, is refused.
    """
    if not isinstance(doc, dict):
        return ValidationResult((ValidationError("", "the request body must be a JSON object", "model_type"),))
    raw = doc.get("definition")
    if isinstance(raw, dict) and (limited := _limit_problems(raw, limits)):
        return ValidationResult(tuple(limited))
    problems: list[ValidationError] = []
    intent: IntentDefinitionIn | None = None
    known, unknown = _split_unknown(doc)
    try:
        intent = IntentDefinitionIn.model_validate(known)
    except pydantic.ValidationError as exc:
        problems.extend(from_pydantic(exc))
    declaration: _Declaration | None = None
    if isinstance(raw, dict) and raw.get("steps") is not None:
        problems.extend(_definition_problems(raw))
        if isinstance(raw["steps"], list):
            problems.extend(check_steps(raw, catalog, tenant, allow_private=allow_private, name=runs_as))
    elif isinstance(raw, dict):
        declaration = _check_declaration(doc, raw, catalog, tenant, blueprint, allow_private, runs_as)
        problems.extend(declaration.problems)
    errors = _with_unknown(doc, _ordered(doc, problems), unknown[:MAX_REPORTED_ERRORS])
    if errors or intent is None:
        return ValidationResult(errors, unlisted=len(unknown[MAX_REPORTED_ERRORS:]))
    definition = intent.definition
    normalized = definition.to_document()
    if declaration is not None and blueprint is not None:
        steps = tuple(expand_declaration(definition, blueprint))
        return ValidationResult((), intent, normalized, steps, declaration.plan, blueprint.ref)
    steps = tuple(definition.steps or ())
    return ValidationResult((), intent, normalized, steps, execution_levels(steps))


def unshown_text_problems(doc: Any) -> list[ValidationError]:
    """The free text of a create or update request that would act where it is shown (shared.free_text): the
    description, the labels' values and each approval step's literal `message`, which approvers read in consoles and
    logs. For the text a caller sends, never for a stored version: `validate_definition` also checks a version read
    back for a start, a plan or a rollback, and one saved before this rule must still load and run, so this check is
    apart from it, for create and update alone."""
    if not isinstance(doc, dict):
        return []
    found: list[tuple[tuple[str | int, ...], Any]] = [(("description",), doc.get("description"))]
    labels = doc.get("labels")
    if isinstance(labels, dict):
        found.extend((("labels", key), value) for key, value in labels.items())
    definition = doc.get("definition")
    steps = definition.get("steps") if isinstance(definition, dict) else None
    for index, step in enumerate(steps if isinstance(steps, list) else []):
        if not isinstance(step, dict) or step.get("action") != "approval":
            continue
        params = merged_params(step, STEP_FIELDS)
        if params is not None and "message" in params:
            inside = isinstance(step.get("params"), dict) and "message" in step["params"]
            at = ("definition", "steps", index, *(("params",) if inside else ()), "message")
            found.append((at, params["message"]))
    problems = []
    for at, text in found:
        # A description and an approval's message may run to several lines; a label's value is one.
        lines = at[0] != "labels"
        problem = unshown_problem(text, lines=lines) if isinstance(text, str) else None
        if problem is not None:
            problems.append(ValidationError(pointer(*at), problem, UNSHOWN_CHARACTER))
    return problems[:MAX_REPORTED_ERRORS]
