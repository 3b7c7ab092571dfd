# intent_ref: platform.access-control
"""Tenant gates: the modules and target an intent uses must be on its tenant's allow-lists (ADR 0011)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from shared.policy.facts import TenantFacts

TARGET_STEP = "target"
"""The `step` of a violation about the intent's target rather than one of its steps."""
MODULE_NOT_ALLOWED = "module_not_allowed"
TARGET_NOT_ALLOWED = "target_not_allowed"


@dataclass(frozen=True)
class GateViolation:
    """One refusal: the offending step id (or "target"), the reason code, and the module or target refused."""

    step: str
    reason: str
    value: str


def module_of_action(action: str) -> str:
    """The module that handles a step action: the part before the first "." (`http.request` → `http`)."""
    return action.split(".", 1)[0]


def check_gates(
    tenant: TenantFacts,
    target: str | None,
    actions_by_step: Mapping[str, str],
    *,
    module_of: Callable[[str], str] = module_of_action,
) -> list[GateViolation]:
    """Every gate the intent fails, target first, then steps in order; empty means it may be saved and executed.

    An allow-list is explicit: an empty one allows nothing (the platform fills defaults when it provisions a
    tenant). A step passes when its action or the action's module is listed. A `target` of None (an intent
    that deploys nowhere) has no target gate.
    """
    violations: list[GateViolation] = []
    if target is not None and target not in tenant.allowed_targets:
        violations.append(GateViolation(TARGET_STEP, TARGET_NOT_ALLOWED, target))
    for step, action in actions_by_step.items():
        if action not in tenant.allowed_modules and module_of(action) not in tenant.allowed_modules:
            violations.append(GateViolation(step, MODULE_NOT_ALLOWED, module_of(action)))
    return violations
