# intent_ref: platform.hardening
"""Tenant text reaches the native parsers (Cedar, RE2) only within bounds that cannot overflow a thread's stack."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from shared.policy.policy_text import MAX_POLICY_CHARS, MAX_POLICY_NESTING, nesting_depth
from tests.integration.api_harness import ApiHarness

pytestmark = pytest.mark.integration

ADMIN, AUTHOR = ["Tenant.Admin"], ["Intent.Author"]
POLICIES = "/api/v1/policies"
ROOT = Path(__file__).resolve().parents[2]
_SCOPE = 'forbid (principal, action == QP::Action::"intent.execute", resource) when { '


def _policy(condition: str) -> str:
    return _SCOPE + condition + " };"


# Each construct the Cedar grammar nests through, as a condition `n` levels deep; with cedarpy 4.12 each of them
# overflowed a 512 KiB thread stack (killing the process) between 20 and 83 levels, an 8 MiB one between 332 and
# 1367.
CONSTRUCTS: dict[str, Callable[[int], str]] = {
    "parentheses": lambda n: "(" * n + "true" + ")" * n,
    "sets": lambda n: "[" * n + "1" + "]" * n + " == []",
    "records": lambda n: "{a: " * n + "1" + "}" * n + " == {}",
    "sets of parentheses": lambda n: "[(" * (n // 2) + "1" + ")]" * (n // 2) + " == []",
    "if-then-else": lambda n: "if 1 then " * n + "1" + " else 1" * n + " == 1",
    "and chain": lambda n: " && ".join(["true"] * (n + 1)),
    "or chain": lambda n: "||".join(["true"] * (n + 1)),
    "sum": lambda n: "+".join(["1"] * (n + 1)) + " == 1",
    "member chain": lambda n: "principal" + ".a" * n + " == 1",
    "method chain": lambda n: "principal" + ".contains(1)" * n,
    "index chain": lambda n: "principal" + '["a"]' * n + " == 1",
    "function calls": lambda n: "ip(" * n + '"1.1.1.1"' + ")" * n + " == 1",
}


def _problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    return body


def _deepest(build: Callable[[int], str], wanted: int = 1000) -> str:
    """The construct `wanted` levels deep, or as deep as fits in the size limit."""
    depth = wanted
    while len(_policy(build(depth))) > MAX_POLICY_CHARS:
        depth = depth * 9 // 10
    assert depth > 10 * MAX_POLICY_NESTING
    return _policy(build(depth))


def _still_answers(api: ApiHarness, tenant: str) -> None:
    assert api.client.get(POLICIES, headers=api.headers(tenant, ADMIN)).status_code == 200


def test_every_construct_is_refused_at_crash_depth_with_422_on_policy(api: ApiHarness) -> None:
    api.provision("deep-policies")
    headers = api.headers("deep-policies", ADMIN)
    before = api.table_snapshot("tenant_policies")
    for name, build in CONSTRUCTS.items():
        text = _deepest(build)  # refused for its depth, not for its size
        body = _problem(api.client.post(POLICIES, headers=headers, json={"name": "deep", "policy": text}), 422)
        assert [e["pointer"] for e in body["errors"]] == ["/policy"], name
        assert f"deeper than {MAX_POLICY_NESTING} levels" in body["errors"][0]["detail"], name
    _still_answers(api, "deep-policies")
    assert api.table_snapshot("tenant_policies") == before


def test_depth_10000_is_refused_and_the_host_keeps_answering(api: ApiHarness) -> None:
    api.provision("deepest-policy")
    headers = api.headers("deepest-policy", ADMIN)
    for text in (
        _policy("(" * 10_000 + "true" + ")" * 10_000),  # over the size limit as well
        _policy("(" * 4_900 + "true" + ")" * 4_900),  # within the size limit
        _policy("(" * 9_000),  # never closed, within the size limit
    ):
        body = _problem(api.client.post(POLICIES, headers=headers, json={"name": "deep", "policy": text}), 422)
        assert [e["pointer"] for e in body["errors"]] == ["/policy"]
    _still_answers(api, "deepest-policy")


def test_nesting_at_the_bound_is_accepted_and_one_more_is_refused(api: ApiHarness) -> None:
    api.provision("bounded-policy")
    headers = api.headers("bounded-policy", ADMIN)
    at_bound = _policy("(" * (MAX_POLICY_NESTING - 1) + "true" + ")" * (MAX_POLICY_NESTING - 1))
    over = _policy("(" * MAX_POLICY_NESTING + "true" + ")" * MAX_POLICY_NESTING)
    assert nesting_depth(at_bound) == MAX_POLICY_NESTING  # the condition's braces are the last level
    created = api.client.post(POLICIES, headers=headers, json={"name": "at-bound", "policy": at_bound})
    assert created.status_code == 201, created.text
    body = _problem(api.client.post(POLICIES, headers=headers, json={"name": "over", "policy": over}), 422)
    assert body["errors"][0]["pointer"] == "/policy"


def test_a_policy_of_exactly_the_size_limit_is_accepted_and_one_character_more_is_not(api: ApiHarness) -> None:
    api.provision("large-policy")
    headers = api.headers("large-policy", ADMIN)
    base = _policy('resource.labels.contains("freeze=true")') + "\n// "
    at_limit = base + "x" * (MAX_POLICY_CHARS - len(base))
    assert len(at_limit) == MAX_POLICY_CHARS
    created = api.client.post(POLICIES, headers=headers, json={"name": "at-limit", "policy": at_limit})
    assert created.status_code == 201, created.text
    body = _problem(api.client.post(POLICIES, headers=headers, json={"name": "over", "policy": at_limit + "x"}), 422)
    assert [e["pointer"] for e in body["errors"]] == ["/policy"]


def test_strings_and_comments_neither_hide_nor_add_nesting(api: ApiHarness) -> None:
    api.provision("lexed-policy")
    headers = api.headers("lexed-policy", ADMIN)
    # Brackets inside strings and comments are not nesting: this policy is shallow and valid.
    shallow = _policy('resource.labels.contains("((((((((((((((((((((((((((((((((((((((((")') + " // " + ")" * 50
    created = api.client.post(POLICIES, headers=headers, json={"name": "shallow", "policy": shallow})
    assert created.status_code == 201, created.text
    # A closing bracket in a comment does not close real ones: the depth is counted as Cedar will parse it.
    hidden = _SCOPE + "(" * 600 + "// " + ")" * 600 + "\ntrue" + ")" * 600 + " };"
    body = _problem(api.client.post(POLICIES, headers=headers, json={"name": "hidden", "policy": hidden}), 422)
    assert body["errors"][0]["pointer"] == "/policy"
    # A string left open cannot be lexed the way Cedar would, so nothing after it is trusted.
    unclosed = _policy('"\\\n' + "(" * 600)
    _problem(api.client.post(POLICIES, headers=headers, json={"name": "unclosed", "policy": unclosed}), 422)
    _still_answers(api, "lexed-policy")


def test_a_deep_stored_policy_fails_closed_instead_of_reaching_cedar(api: ApiHarness) -> None:
    handle = api.provision("stored-deep")
    headers = api.headers("stored-deep", ADMIN)
    # Written behind the API (as a restore or a manual fix could): every decision re-validates stored text.
    with psycopg.connect(api.admin_url, dbname="quantum", autocommit=True) as conn:
        policy_id = conn.execute(
            "INSERT INTO app.tenant_policies (tenant_id, name, description, policy, created_by)"
            " VALUES (%s, 'planted', '', %s, 'test') RETURNING id",
            (handle.id, _policy("(" * 2000 + "true" + ")" * 2000)),
        ).fetchone()[0]  # type: ignore[index]
    denied = _problem(api.client.get("/api/v1/tenant", headers=headers), 403)
    assert denied["reason"] == "policy_error"
    # The policy endpoints are outside tenant policies, so the admin can still remove it.
    assert api.client.delete(f"{POLICIES}/{policy_id}", headers=headers).status_code == 204
    assert api.client.get("/api/v1/tenant", headers=headers).status_code == 200


def test_regex_patterns_are_bounded_before_re2(api: ApiHarness) -> None:
    api.provision("deep-patterns", allowed_modules=["wait"])
    headers = api.headers("deep-patterns", AUTHOR)
    deepest = "(" * 10_000 + "a" + ")" * 10_000
    body = _problem(api.client.post("/api/v1/intents", headers=headers, json=_intent("deep", deepest)), 422)
    assert body["errors"][0]["pointer"] == "/definition/inputs/properties/name/pattern"
    fits = "(" * 499 + "a" + ")" * 499  # 999 characters: within the length bound, so RE2 compiles it
    created = api.client.post("/api/v1/intents", headers=headers, json=_intent("deep-ok", fits))
    assert created.status_code == 201, created.text


def _intent(name: str, pattern: str) -> dict[str, Any]:
    return {
        "name": name,
        "definition": {
            "inputs": {"type": "object", "properties": {"name": {"type": "string", "pattern": pattern}}},
            "steps": [{"id": "pause", "action": "wait", "seconds": 1}],
        },
    }


# The in-process tests above would take pytest down with them if a bound were missing; this one runs the same
# checks in a child process, on a thread with a 512 KiB stack (far below the usual 8 MiB), and proves the child
# survived: a native crash shows up as a signal exit code, a failed test rather than a lost run.
_PROBE = textwrap.dedent("""
    import json, sys, threading, uuid
    from shared.auth.principal import Principal
    from shared.policy.actions import Action
    from shared.policy.authorizer import Authorizer, Reason, Resource, TenantFacts
    from shared.registry.schemas import matches, pattern_problem

    texts = json.loads(sys.stdin.read())
    authorizer = Authorizer()
    tenant = uuid.uuid4()
    principal = Principal(tenant_id=tenant, entra_tenant_id=uuid.uuid4(), object_id=uuid.uuid4(),
                          roles=frozenset({"Tenant.Admin"}), scopes=frozenset(), app_only=False, display_name=None)
    facts = TenantFacts(id=tenant, status="active", allowed_targets=frozenset(), allowed_modules=frozenset())
    out = {}

    def run():
        out["save"] = [bool(authorizer.validate_tenant_policy(text)) for text in texts["policies"]]
        out["decide"] = [authorizer.decide(principal, Action.TENANT_SETTINGS_READ, Resource.tenant(tenant),
                                           tenant=facts, tenant_policies=(text,)).reason == Reason.POLICY_ERROR
                         for text in texts["policies"]]
        out["patterns"] = [pattern_problem(p) is None and matches(p, "a") for p in texts["patterns"]]

    threading.stack_size(512 * 1024)
    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    print(json.dumps(out))
""")


def test_a_child_process_on_a_small_stack_survives_every_hostile_text() -> None:
    policies = [_policy(build(depth)) for build in CONSTRUCTS.values() for depth in (1000, 10_000)]
    policies.append(_policy("(" * 10_000))
    patterns = ["(" * 499 + "a" + ")" * 499, "(?:" * 249 + "a" + ")" * 249]
    child = subprocess.run(
        [sys.executable, "-c", _PROBE],
        input=json.dumps({"policies": policies, "patterns": patterns}),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert child.returncode == 0, f"the child died (exit {child.returncode}): {child.stderr[-2000:]}"
    out = json.loads(child.stdout)
    assert out["save"] == [True] * len(policies)  # every one refused
    assert out["decide"] == [True] * len(policies)  # and, stored, every decision fails closed
    assert out["patterns"] == [True, True]


def test_the_depth_bound_follows_the_grammar() -> None:
    assert nesting_depth('forbid (principal, action, resource) when { principal.a.b.contains("x") };') == 5
    assert nesting_depth('forbid (principal, action, resource) when { "((((" == "x" } // ))))') == 2
    assert nesting_depth("a && b && c") == 2
    with pytest.raises(ValueError, match="closes no bracket"):
        nesting_depth("(]")
    with pytest.raises(ValueError, match="not closed"):
        nesting_depth('"abc')
    assert nesting_depth(_policy("(" * 10_000), limit=MAX_POLICY_NESTING) == MAX_POLICY_NESTING + 1
