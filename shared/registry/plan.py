# intent_ref: platform.registry
"""Execution plans: dependency levels, declarations expanded through their blueprint, and the plan hash."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from shared.registry.model import Definition, ResolvedBlueprint, Step


def dependencies(steps: Sequence[Step]) -> dict[str, list[str]]:
    """Each step's dependencies by id; an absent `depends_on` means the previous step (as Definition normalises)."""
    graph: dict[str, list[str]] = {}
    for index, step in enumerate(steps):
        if step.step_id in graph:
            raise ValueError(f"duplicate step id {step.step_id!r}")
        if step.depends_on is not None:
            graph[step.step_id] = list(step.depends_on)
        else:
            graph[step.step_id] = [steps[index - 1].step_id] if index else []
    return graph


def execution_levels(steps: Sequence[Step]) -> list[list[str]]:
    """Step ids in levels: a step sits one level after its deepest dependency, so each level can run in parallel
    once the previous ones are done; within a level, definition order. Raises ValueError on a bad graph."""
    graph = dependencies(steps)
    for step_id, deps in graph.items():
        unknown = [dep for dep in deps if dep not in graph]
        if unknown:
            raise ValueError(f"step {step_id!r} depends on unknown step {unknown[0]!r}")
    level: dict[str, int] = {}
    pending = list(graph)
    while pending:
        ready = [step_id for step_id in pending if all(dep in level for dep in graph[step_id])]
        if not ready:
            raise ValueError(f"dependency cycle among {sorted(pending)}")
        for step_id in ready:
            level[step_id] = 1 + max((level[dep] for dep in graph[step_id]), default=-1)
        pending = [step_id for step_id in pending if step_id not in level]
    levels: list[list[str]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for step_id in graph:
        levels[level[step_id]].append(step_id)
    return levels


def expand_declaration(declaration: Definition, blueprint: ResolvedBlueprint) -> list[Step]:
    """The steps a declaration runs: its blueprint's, with `${inputs.x}` left as references that the execution
    resolves against `declaration_inputs` (so a plan shows the template, and the values stay in one place)."""
    if not declaration.is_declaration:
        raise ValueError("only a definition without steps is a declaration")
    if blueprint.definition.steps is None:
        raise ValueError(f"blueprint {blueprint.ref} has no steps")
    return [step.model_copy(deep=True) for step in blueprint.definition.steps]


def input_defaults(schema: Any) -> dict[str, Any]:
    """The `default` of each property of an input schema that declares one."""
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(properties, dict):
        return {}
    return {name: spec["default"] for name, spec in properties.items() if isinstance(spec, dict) and "default" in spec}


def declaration_inputs(declaration: Definition, blueprint: ResolvedBlueprint) -> dict[str, Any]:
    """The inputs a declaration's steps run with: its declared state over the blueprint's input defaults."""
    return {**input_defaults(blueprint.definition.inputs), **declaration.declared_state()}


def canonical_json(value: Any) -> bytes:
    """One byte sequence per JSON value: sorted keys, no insignificant whitespace, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def plan_hash(normalized_definition: dict[str, Any], blueprint_ref: str | None) -> str:
    """The sha256 (hex) that an execute request may carry to insist on exactly this plan."""
    document = {"definition": normalized_definition, "blueprint": blueprint_ref}
    return hashlib.sha256(canonical_json(document)).hexdigest()
