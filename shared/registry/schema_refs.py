# intent_ref: platform.registry
"""The `$ref`s of tenant-supplied JSON Schemas, bounded, and the one safe way to evaluate such a schema.

A reference is a jump the validator takes without consuming input: `{"$ref": "#"}` recurses until the stack is
exhausted, and `$defs` whose entries each refer twice to the next make a 1.6 KB schema cost 2^22 evaluations.
So a tenant's schema is accepted only when its references are local JSON pointers that form no cycle and cannot
multiply the work of an evaluation beyond a fixed bound (ADR 0016, amended 2026-12-05).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any
from urllib.parse import unquote

from jsonschema import ValidationError as SchemaViolation
from jsonschema.exceptions import SchemaError
from referencing import Registry
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

from shared.accepted_json import path_pointer, unescaped_token
from shared.registry.schemas import (
    MAX_EVALUATION_STEPS,
    MAX_REF_LENGTH,
    MAX_TOTAL_STEPS,
    STEPS_PER_INSTANCE_NODE,
    EvaluationBudget,
    EvaluationBudgetExceeded,
    TenantSchemaValidator,
    current_budget,
    evaluation_budget,
    instance_size,
    short_repr,
)

JsonPath = tuple[str | int, ...]

MAX_SCHEMA_REFS = 64
"""`$ref`s one schema may hold: enough for shared definitions, too few to build a deep chain of them."""
MAX_REFERENCE_VISITS = 10_000
"""Subschema visits the references may add to one evaluation, beyond one visit of each subschema: a schema with no
references costs what its size does, which other limits bound already."""
MAX_EVALUATED_DEPTH = 100
"""Subschemas one inside the other (through keywords and `$ref`s) an evaluation may descend: each level is a few
frames of the validator's recursion, and a chain of references must not reach Python's recursion limit."""
MAX_UNEVALUATED_NESTING = 8
"""Schemas with `unevaluatedProperties`/`unevaluatedItems` one under another's applicators (`if`, `allOf`, ... or a
`$ref`): each evaluates the subschemas under its applicators again, so the work doubles at each of them."""
MAX_VIOLATIONS = 200
"""Violations one evaluation collects at most: the callers report a few dozen, and each holds a message."""
MAX_MESSAGE_LENGTH = 300
# Applicators that apply their subschemas to the same instance: what `unevaluated*` evaluates a second time.
_SAME_INSTANCE = frozenset({"allOf", "anyOf", "oneOf", "if", "then", "else", "dependentSchemas"})

# What a 2020-12 validator evaluates in place, by the shape of the keyword's value.
_ONE_SCHEMA = frozenset(
    {
        "additionalProperties",
        "unevaluatedProperties",
        "items",
        "contains",
        "propertyNames",
        "not",
        "if",
        "then",
        "else",
        "unevaluatedItems",
    }
)
_SCHEMA_LISTS = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "dependentSchemas"})
# Schemas kept for references to use: walked for their own references, evaluated only when referred to.
_DEFINITIONS = frozenset({"$defs", "definitions"})


def _pointer(path: JsonPath) -> str:
    return "#" + path_pointer(path)


def _target(schema: Any, ref: str) -> tuple[JsonPath | None, str | None]:
    """Where a `$ref` leads inside `schema`, read as the evaluator reads it, or why it is refused."""
    if len(ref) > MAX_REF_LENGTH:
        # The resolver decodes the whole of it at every application; quoted in full, the refusal would be as long.
        return None, f"$ref {short_repr(ref)} holds {len(ref):,} characters; at most {MAX_REF_LENGTH:,} are allowed"
    if not ref.startswith("#"):
        # Resolving one would make the platform fetch, or at least look up, a URI a tenant chose.
        return None, f"only local references (starting with '#') are allowed, not {ref!r}"
    fragment = ref[1:]
    if fragment and not fragment.startswith("/"):
        return None, f"$ref {ref!r} names an anchor; only JSON pointers ('#' or '#/...') are allowed"
    node: Any = schema
    path: list[str | int] = []
    # referencing unquotes the whole fragment before splitting it, so the same is done here.
    for segment in unquote(fragment[1:]).split("/") if fragment else ():
        if isinstance(node, list):
            # RFC 6901 indexes only: referencing would also take '-1' or '01' and read something else.
            if not (segment == "0" or (segment.isdigit() and segment.isascii() and segment[0] != "0")):
                return None, f"$ref {ref!r} does not resolve within the schema"
            # Longer than any index of the array: int() of thousands of digits would raise ValueError.
            if len(segment) > len(str(len(node))) or int(segment) >= len(node):
                return None, f"$ref {ref!r} does not resolve within the schema"
            node = node[int(segment)]
            path.append(int(segment))
            continue
        key = unescaped_token(segment)
        if not isinstance(node, dict) or key not in node:
            return None, f"$ref {ref!r} does not resolve within the schema"
        node = node[key]
        path.append(key)
    if not isinstance(node, dict | bool):
        return None, f"$ref {ref!r} leads to a {type(node).__name__}, not to a schema"
    return tuple(path), None


def _at(schema: Any, path: JsonPath) -> Any:
    for part in path:
        schema = schema[part]  # every path here was read out of this document
    return schema


def _children(path: JsonPath, node: dict[str, Any]) -> Iterator[tuple[JsonPath, bool]]:
    """The subschema positions directly inside `node`, each with whether evaluating `node` evaluates it."""
    for key, value in node.items():
        if key in _ONE_SCHEMA and isinstance(value, dict | bool):
            yield (*path, key), True
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            yield from (((*path, key, index), True) for index in range(len(value)))
        elif key in (_SCHEMA_MAPS | _DEFINITIONS) and isinstance(value, dict):
            yield from (((*path, key, name), key in _SCHEMA_MAPS) for name in value)


def reference_problems(schema: Any) -> list[tuple[JsonPath, str]]:
    """Why the references of a tenant's `schema` make it unsafe to evaluate, each at its path; empty when they
    do not. Refused: a reference that is not a local JSON pointer or leads nowhere, `$dynamicRef`, an embedded
    `$id` (it would change what the pointers below it mean), more than MAX_SCHEMA_REFS references, a cycle,
    and references that would add more than MAX_REFERENCE_VISITS subschema visits to one evaluation."""
    if not isinstance(schema, dict):
        return []
    problems: list[tuple[JsonPath, str]] = []
    evaluated: dict[JsonPath, list[JsonPath]] = {}  # each subschema's evaluated children, its reference's target too
    ref_of: dict[JsonPath, JsonPath] = {}
    refs = 0
    stack: list[JsonPath] = [()]
    while stack:  # iterative: a tenant's schema may be deep
        path = stack.pop()
        if path in evaluated:
            continue
        node = _at(schema, path)
        evaluated[path] = []
        if not isinstance(node, dict):
            continue
        for child, in_place in _children(path, node):
            if in_place:
                evaluated[path].append(child)
            stack.append(child)
        if "$id" in node and path:
            problems.append(((*path, "$id"), "an embedded '$id' is not supported in a tenant's schema"))
        if "$dynamicRef" in node:
            problems.append(((*path, "$dynamicRef"), "'$dynamicRef' is not supported; use '$ref'"))
        ref = node.get("$ref")
        if isinstance(ref, str):
            refs += 1
            target, refusal = _target(schema, ref)
            if target is None:
                problems.append(((*path, "$ref"), refusal or "unusable $ref"))
            else:
                evaluated[path].append(target)
                ref_of[path] = target
                stack.append(target)
    if refs > MAX_SCHEMA_REFS:
        problems.append(((), f"the schema holds {refs} $refs; at most {MAX_SCHEMA_REFS} are allowed"))
    if problems:
        return sorted(problems, key=lambda problem: [str(part) for part in problem[0]])
    return _graph_problems(schema, evaluated, ref_of)


def _graph_problems(
    schema: Any, evaluated: dict[JsonPath, list[JsonPath]], ref_of: dict[JsonPath, JsonPath]
) -> list[tuple[JsonPath, str]]:
    """A reference cycle (reported at a `$ref` on it), else too many visits for one evaluation from the root, too
    deep an evaluation, or `unevaluated*` nested too often under applicators."""
    visits: dict[JsonPath, int] = {}
    depth: dict[JsonPath, int] = {}  # the most subschemas one inside the other, from each one down
    nesting: dict[JsonPath, int] = {}  # the most `unevaluated*` schemas one under another's applicators
    on_stack: dict[JsonPath, int] = {}  # the current path of the walk, by position
    trail: list[JsonPath] = []
    # From every subschema, not only the root: a cycle among unused definitions is refused as well, so that
    # a schema's acceptance does not depend on which of its definitions are in use.
    for start in sorted(evaluated, key=lambda path: [str(part) for part in path]):
        if start in visits:
            continue
        work: list[tuple[JsonPath, int]] = [(start, 0)]
        while work:
            path, next_child = work.pop()
            children = evaluated[path]
            if next_child == 0:
                on_stack[path] = len(trail)
                trail.append(path)
            if next_child < len(children):
                work.append((path, next_child + 1))
                child = children[next_child]
                if child in on_stack:
                    return [_cycle_problem(schema, ref_of, trail[on_stack[child] :])]
                if child not in visits:
                    work.append((child, 0))
                continue
            visits[path] = 1 + sum(visits[child] for child in children)
            depth[path] = 1 + max((depth[child] for child in children), default=0)
            node = _at(schema, path)
            doubles = isinstance(node, dict) and ("unevaluatedProperties" in node or "unevaluatedItems" in node)
            nested = [
                nesting[child] + int(doubles and (child == ref_of.get(path) or child[len(path)] in _SAME_INSTANCE))
                for child in children
            ]
            nesting[path] = max([int(doubles), *nested])
            del on_stack[path]
            trail.pop()
    problems: list[tuple[JsonPath, str]] = []
    added = visits[()] - _reachable(evaluated)
    if added > MAX_REFERENCE_VISITS:
        problems.append(
            (
                (),
                f"its $refs would make one evaluation visit {visits[()]:,} subschemas, {added:,} more than the schema"
                f" holds; at most {MAX_REFERENCE_VISITS:,} more are allowed (a reference repeated at each level"
                " multiplies the work)",
            )
        )
    if depth[()] > MAX_EVALUATED_DEPTH:
        problems.append(
            (
                (),
                f"an evaluation would descend through {depth[()]} subschemas one inside the other (counting those its"
                f" $refs lead to); at most {MAX_EVALUATED_DEPTH} are allowed",
            )
        )
    if nesting[()] > MAX_UNEVALUATED_NESTING:
        problems.append(
            (
                (),
                f"{nesting[()]} schemas with 'unevaluatedProperties' or 'unevaluatedItems' lie one under another's"
                f" applicators (if, allOf, anyOf, oneOf, $ref, ...); at most {MAX_UNEVALUATED_NESTING} are allowed"
                " (each doubles the work of an evaluation)",
            )
        )
    return problems


def _reachable(evaluated: dict[JsonPath, list[JsonPath]]) -> int:
    seen: set[JsonPath] = {()}
    stack: list[JsonPath] = [()]
    while stack:
        for child in evaluated[stack.pop()]:
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return len(seen)


def _cycle_problem(schema: Any, ref_of: dict[JsonPath, JsonPath], cycle: list[JsonPath]) -> tuple[JsonPath, str]:
    """The problem of a cycle (each subschema of `cycle` leads to the next, the last to the first), at a `$ref`."""
    # Going into a child only goes deeper into the document, so some hop of a cycle is a reference: the last one
    # on the walk is the one that closes it.
    hops = [*zip(cycle, [*cycle[1:], cycle[0]], strict=True)]
    source = next(at for at, to in reversed(hops) if ref_of.get(at) == to)
    names = " -> ".join(_pointer(path) for path in [*cycle, cycle[0]])
    return (
        (*source, "$ref"),
        f"$ref {_at(schema, source)['$ref']!r} closes a cycle ({names}): a schema that leads back to itself"
        " without end cannot be evaluated",
    )


def short_message(message: str) -> str:
    """A violation's message cut to MAX_MESSAGE_LENGTH characters: it may quote large values of the instance."""
    return message if len(message) <= MAX_MESSAGE_LENGTH else message[: MAX_MESSAGE_LENGTH - 3] + "..."


def _shortened(violation: SchemaViolation) -> SchemaViolation:
    stack = [violation]
    while stack:  # the errors of an anyOf's or oneOf's branches are kept with it, and theirs with them
        error = stack.pop()
        error.message = short_message(error.message)
        stack.extend(error.context)
    return violation


@dataclass(frozen=True)
class SchemaEvaluation:
    """The violations of an instance, or why the schema cannot be evaluated (then there are none)."""

    violations: tuple[SchemaViolation, ...] = ()
    unusable: str | None = None
    too_costly: bool = False
    """Whether it is unusable because the evaluation ran out of its own budget, which grows with the instance: that
    instance is too costly to check, where a smaller one may not be."""


def evaluate_tenant_schema(schema: Any, instance: Any, *, root: Any = None) -> SchemaEvaluation:
    """The violations of `instance` against a tenant-supplied `schema` (the first MAX_VIOLATIONS found, each message
    at most MAX_MESSAGE_LENGTH characters), never raising for the schema's sake.

    The evaluation has a budget of keyword applications (MAX_EVALUATION_STEPS, and STEPS_PER_INSTANCE_NODE for each
    value in `instance`, at most MAX_TOTAL_STEPS; its regex work at most MAX_REGEX_STEPS of them): a schema that
    needs more is reported unusable. The references are checked first, every time: a schema stored before they were
    bounded is refused here rather than evaluated. `root` is the document
    `schema`'s references resolve in, when `schema` is a part of it (a module's parameter schema without its
    whole-object keywords, say).

    Inside an enclosing `evaluation_budget()` (the check of one definition's steps) the steps are drawn from that
    budget too, and when it runs out its EvaluationBudgetExceeded is raised for its owner to answer; within it, each
    schema's references are checked once and an evaluation of the same schema and instance is made once.
    """
    document = schema if root is None else root
    enclosing = current_budget()
    key = _memo_key(schema, root, instance) if enclosing is not None else None
    if enclosing is not None and key is not None:
        remembered = enclosing.results.get(key)
        if remembered is not None:
            enclosing.charge(1)
            return remembered[-1]  # type: ignore[no-any-return]
    refused = _checked_references(document, enclosing)
    if refused:
        where, message = refused[0]
        evaluation = SchemaEvaluation(unusable=f"{_pointer(where)}: {message}")
    else:
        evaluation = _evaluated(schema, instance, root)
    if enclosing is not None and key is not None:
        # Kept with the outcome: the schema, the root and the instance's values, whose ids the key holds.
        enclosing.results[key] = (schema, root, instance, evaluation)
    return evaluation


def _memo_key(schema: Any, root: Any, instance: Any) -> tuple[Any, ...] | None:
    """What identifies an evaluation of `schema` against an object `instance` within one budget: the schemas by
    identity, each member's scalars by type and value (1, 1.0 and true apart) and its arrays and objects by identity
    (a module's defaults, shared by every step). None for an instance that is not an object."""
    if not isinstance(instance, dict):
        return None
    members = frozenset(
        (name, type(value), value) if value is None or isinstance(value, str | int | float) else (name, "id", id(value))
        for name, value in instance.items()
    )
    return ("evaluation", id(schema), id(root), members)


def _checked_references(document: Any, enclosing: EvaluationBudget | None) -> list[tuple[JsonPath, str]]:
    """`reference_problems(document)`, walked once per enclosing budget."""
    if enclosing is None:
        return reference_problems(document)
    key = ("references", id(document))
    remembered = enclosing.results.get(key)
    if remembered is None:
        remembered = enclosing.results[key] = (document, reference_problems(document))
    return remembered[1]


def _steps_for(instance: Any) -> int:
    """The steps an evaluation of `instance` may spend: more for a larger instance, never past MAX_TOTAL_STEPS."""
    return min(MAX_EVALUATION_STEPS + STEPS_PER_INSTANCE_NODE * instance_size(instance), MAX_TOTAL_STEPS)


def _minimal(instance: Any) -> Any:
    """The least instance of `instance`'s JSON type: what the schema alone costs to evaluate."""
    return type(instance)() if isinstance(instance, dict | list | str) else instance


def _costly_alone(schema: Any, instance: Any, root: Any, *, alone: bool, steps: int) -> bool:
    """Whether `schema`, whose evaluation of `instance` ran out of its budget of `steps`, runs out of as many on the
    least instance of the same type too; evaluated again only with no enclosing budget (`alone`), so that nothing
    past an enclosing budget is spent. With the least instance's own (smaller) budget, a schema that let smaller
    inputs pass was blamed for a large one."""
    least = _minimal(instance)
    return bool(least == instance or (alone and _evaluated(schema, least, root, probe=False, steps=steps).too_costly))


def _evaluated(
    schema: Any, instance: Any, root: Any, *, probe: bool = True, steps: int | None = None
) -> SchemaEvaluation:
    """The evaluation proper, within its own budget (`steps`, else `_steps_for(instance)`; drawn from an enclosing
    one, whose exhaustion is raised). When that budget runs out, the schema is evaluated again against the least
    instance of the same type with the same steps (`probe`): if that runs out too, the schema costs too much even for
    it (`too_costly` is left false), else the instance is too costly to check. Within an enclosing budget no second
    evaluation is made (nothing past that budget is spent): the instance is held too costly."""
    budget: EvaluationBudget | None = None
    try:
        if root is None:
            validator = TenantSchemaValidator(schema)
        else:
            resolver = Registry().resolver_with_root(DRAFT202012.create_resource(root))
            validator = TenantSchemaValidator(schema, _resolver=resolver)  # type: ignore[call-arg]
        with evaluation_budget(_steps_for(instance) if steps is None else steps) as budget:
            violations = tuple(map(_shortened, islice(validator.iter_errors(instance), MAX_VIOLATIONS)))
        return SchemaEvaluation(violations=violations)
    except (SchemaError, Unresolvable) as exc:
        return SchemaEvaluation(unusable=short_message(str(exc)))
    except EvaluationBudgetExceeded as exc:
        if exc.budget is not budget:
            raise  # an enclosing budget ran out: the whole check it bounds is refused, not this schema
        if probe and _costly_alone(schema, instance, root, alone=budget.enclosing is None, steps=budget.limit):
            # A schema of references (22 KB) spent its budget on `{}`: the input was blamed, though none could pass.
            return SchemaEvaluation(unusable=f"{exc} even for {short_repr(_minimal(instance))}")
        return SchemaEvaluation(unusable=str(exc), too_costly=True)
    except (ValueError, TypeError, OverflowError) as exc:
        # A value the validator cannot handle (an index of thousands of digits, an integer past a float's range under
        # a fractional `multipleOf`): the schema's fault, not a 500.
        return SchemaEvaluation(unusable=short_message(f"evaluating it failed ({exc})"))
    except RecursionError:
        # The bounds above should make this unreachable; a 500 for a tenant's schema would not be better.
        return SchemaEvaluation(unusable="evaluating it nests too deeply")
