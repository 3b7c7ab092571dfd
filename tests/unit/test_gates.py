# intent_ref: platform.access-control
"""Tenant gates: an intent's target and step modules must be on the tenant's allow-lists."""

from __future__ import annotations

import uuid

from shared.policy.facts import TenantFacts
from shared.policy.gates import GateViolation, check_gates, module_of_action


def facts(targets: set[str], modules: set[str]) -> TenantFacts:
    return TenantFacts(uuid.uuid4(), "active", frozenset(targets), frozenset(modules))


def test_everything_allowed_passes() -> None:
    tenant = facts({"staging", "production"}, {"http", "build-container"})
    assert check_gates(tenant, "production", {"build": "build-container", "notify": "http.request"}) == []


def test_target_not_allowed() -> None:
    tenant = facts({"staging"}, {"http"})
    assert check_gates(tenant, "production", {"notify": "http.request"}) == [
        GateViolation("target", "target_not_allowed", "production")
    ]


def test_every_offending_step_is_named_in_order() -> None:
    tenant = facts({"staging"}, {"http"})
    violations = check_gates(
        tenant, "production", {"build": "build-container", "notify": "http.request", "deploy": "kubernetes.apply"}
    )
    assert violations == [
        GateViolation("target", "target_not_allowed", "production"),
        GateViolation("build", "module_not_allowed", "build-container"),
        GateViolation("deploy", "module_not_allowed", "kubernetes"),
    ]


def test_empty_allow_lists_allow_nothing() -> None:
    tenant = facts(set(), set())
    assert [v.reason for v in check_gates(tenant, "staging", {"a": "http.request"})] == [
        "target_not_allowed",
        "module_not_allowed",
    ]


def test_no_target_has_no_target_gate() -> None:
    assert check_gates(facts(set(), {"http"}), None, {"a": "http.request"}) == []


def test_a_single_action_can_be_allowed_without_its_module() -> None:
    tenant = facts({"staging"}, {"http.request"})
    assert check_gates(tenant, "staging", {"get": "http.request"}) == []
    assert check_gates(tenant, "staging", {"put": "http.put"}) == [GateViolation("put", "module_not_allowed", "http")]


def test_custom_module_resolver() -> None:
    tenant = facts({"staging"}, {"k8s"})
    resolve = {"deploy-to-kubernetes": "k8s"}.get
    violations = check_gates(
        tenant,
        "staging",
        {"deploy": "deploy-to-kubernetes", "x": "verify"},
        module_of=lambda action: resolve(action) or module_of_action(action),
    )
    assert violations == [GateViolation("x", "module_not_allowed", "verify")]


def test_module_of_action() -> None:
    assert module_of_action("http.request") == "http"
    assert module_of_action("build-container") == "build-container"
