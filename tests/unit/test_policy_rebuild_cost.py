# intent_ref: platform.access-control
"""What a change of one tenant's policies costs the process, counted (ADR 0011): a rebuilt set checks only texts not
checked before, a `like` pattern is one node of every walk however long, and one tenant's distinct decisions never
flush another tenant's remembered ones."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import cedarpy
import pytest

from shared.auth.principal import INTENT_READER, Principal
from shared.policy import authorizer as authorizer_module
from shared.policy import policy_text
from shared.policy.actions import Action
from shared.policy.authorizer import (
    DECISION_CACHE_PER_TENANT,
    DECISION_CACHE_SIZE,
    Authorizer,
    Resource,
    TenantFacts,
)
from shared.policy.policy_text import LIKE_COST, policy_cost
from shared.policy.remembered import Remembered
from tests.unit.test_authorizer import FACTS, OTHER_REQUESTER, OTHER_TENANT, TENANT, principal


def _forbid(label: str) -> str:
    """A valid tenant forbid of reading executions labelled `label`, with a long `like` as the reproduction had."""
    return (
        '@id("no-' + label + '")\n'
        'forbid (principal, action == QP::Action::"execution.read", resource) '
        f'when {{ resource.labels.contains("{label}=1") }} unless {{ resource.target like "{"a" * 255}*" }};'
    )


def _counting(monkeypatch: pytest.MonkeyPatch, name: str) -> list[str]:
    """The texts each later call of `cedarpy.<name>` is given (the real function still runs)."""
    seen: list[str] = []
    real: Callable[..., Any] = getattr(cedarpy, name)

    def counted(text: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(text)
        return real(text, *args, **kwargs)

    monkeypatch.setattr(cedarpy, name, counted)
    return seen


def _execution(label: str) -> Resource:
    return Resource(
        "Execution", "e-1", TENANT, {"target": "staging", "requested_by": OTHER_REQUESTER, "labels": {label: "1"}}
    )


def test_a_rebuilt_set_checks_only_the_texts_not_checked_before(monkeypatch: pytest.MonkeyPatch) -> None:
    authz = Authorizer()  # its own remembered checks, empty
    reader = principal(INTENT_READER)
    texts = [_forbid(f"k{index}") for index in range(4)]
    for text in texts:
        assert authz.validate_tenant_policy(text) == [], text
    authz = Authorizer()  # nothing checked yet
    parsed, validated, read = (
        _counting(monkeypatch, name) for name in ("policies_to_pst", "validate_policies", "policies_to_json_str")
    )

    def denied(label: str, stored: list[str]) -> bool:
        decision = authz.decide(reader, Action.EXECUTION_READ, _execution(label), tenant=FACTS, tenant_policies=stored)
        return decision.reason == "denied_by_tenant_policy"

    # Three stored policies, decided for the first time: each text is checked once.
    assert denied("k0", texts[:3])
    assert sorted(parsed) == sorted(validated) == sorted(read) == sorted(texts[:3])
    # One added (its create checks it, then the next decision builds the set): only the new text is checked.
    parsed.clear(), validated.clear(), read.clear()
    assert authz.validate_tenant_policy(texts[3]) == []
    assert denied("k3", texts)
    assert parsed == validated == read == [texts[3]]
    # One deleted, then the same one added back, again and again: nothing is parsed or validated.
    parsed.clear(), validated.clear(), read.clear()
    for _ in range(3):
        assert not denied("k0", texts[1:])
        assert denied("k0", texts)
    assert parsed == validated == read == []


def test_a_stored_text_that_fails_its_check_still_fails_its_set_closed_when_remembered() -> None:
    authz = Authorizer()
    reader = principal(INTENT_READER)
    broken = 'permit (principal, action == QP::Action::"execution.read", resource);'
    for _ in range(2):  # checked, then remembered: refused alike
        decision = authz.decide(
            reader, Action.EXECUTION_READ, _execution("k0"), tenant=FACTS, tenant_policies=[_forbid("k0"), broken]
        )
        assert (decision.allowed, decision.reason) == (False, "policy_error")
        assert authz.validate_tenant_policy(broken)


def test_a_refused_text_is_not_remembered_however_many_errors_it_has() -> None:
    # A refused text's errors grow with it (one per attribute it names, each repeating the name): remembered, 4,096 of
    # them held ~445 MB. Only texts that pass are remembered; a refused one is checked again, refused alike.
    authz = Authorizer()
    refused = (
        'forbid (principal, action == QP::Action::"execution.read", resource) when { ['
        + ",".join(["resource.z0"] * 825)
        + "].contains(1) };"
    )
    for _ in range(2):
        assert authz.validate_tenant_policy(refused)
        assert authz._checked.get(authorizer_module.hashlib.sha256(refused.encode()).digest()) is None
    assert not authz.validate_tenant_policy(_forbid("k0"))
    assert authz._checked.get(authorizer_module.hashlib.sha256(_forbid("k0").encode()).digest()) is not None


def _walked_nodes(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The nodes whose parts policy_text's walk asks for from now on."""
    walked: list[object] = []
    real = policy_text._children

    def counted(node: object) -> list[Any]:
        walked.append(node)
        return real(node)

    monkeypatch.setattr(policy_text, "_children", counted)
    return walked


def _like(pattern: str) -> str:
    return (
        'forbid (principal, action == QP::Action::"execution.read", resource) '
        f'unless {{ resource.target like "{pattern}" && resource == QP::Execution::"x" }};'
    )


def test_a_like_pattern_is_one_node_of_the_cost_walk_however_long(monkeypatch: pytest.MonkeyPatch) -> None:
    short, long = _like("a"), _like("a" * 256)
    trees = {text: cedarpy.policies_to_pst(text) for text in (short, long)}
    cost = policy_cost(short)
    walked = _walked_nodes(monkeypatch)
    visits = {}
    for text, tree in trees.items():
        walked.clear()
        assert policy_text.policy_tree_problems(tree) == ([], cost)
        visits[text] = len(walked)
    assert visits[long] == visits[short] < 40, visits
    assert policy_cost(long) == policy_cost(short) >= LIKE_COST


def test_a_like_pattern_is_one_node_of_the_authorizers_walks_however_long(monkeypatch: pytest.MonkeyPatch) -> None:
    short, long = _like("a"), _like("a" * 256)
    # The walk for a `like` of something but an attribute: each node whose fields it reads is counted.
    trees = {text: cedarpy.policies_to_pst(text) for text in (short, long)}
    read_fields: list[object] = []
    real_fields = authorizer_module.fields

    def counted_fields(node: Any) -> Any:
        read_fields.append(node)
        return real_fields(node)

    monkeypatch.setattr(authorizer_module, "fields", counted_fields)
    fields_read = {}
    for text, tree in trees.items():
        read_fields.clear()
        assert authorizer_module._literal_like_errors(tree) == []
        fields_read[text] = len(read_fields)
    assert fields_read[long] == fields_read[short] < 40, fields_read
    # The walk for the entity types a text names: each JSON object whose values it walks is counted.
    walked: list[object] = []

    class CountedDict(dict[str, Any]):
        def values(self) -> Any:
            walked.append(self)
            return super().values()

    real_loads = json.loads
    monkeypatch.setattr(
        authorizer_module.json, "loads", lambda text, **kw: real_loads(text, object_hook=CountedDict, **kw)
    )
    objects_walked = {}
    for text in (short, long):
        walked.clear()
        assert authorizer_module._named_entity_types(text) == {"QP::Action", "QP::Execution"}
        objects_walked[text] = len(walked)
    assert objects_walked[long] == objects_walked[short] < 40, objects_walked


def test_one_tenants_distinct_decisions_leave_another_tenants_remembered() -> None:
    authz = Authorizer()
    other_facts = TenantFacts(OTHER_TENANT, "active", FACTS.allowed_targets, FACTS.allowed_modules)
    bystander = principal(INTENT_READER, tenant_id=OTHER_TENANT)
    theirs = Resource("Intent", "i-1", OTHER_TENANT, {"target": "staging"})
    assert authz.decide(bystander, Action.INTENT_READ, theirs, tenant=other_facts).allowed
    reader: Principal = principal(INTENT_READER)
    for index in range(DECISION_CACHE_SIZE + 4):  # each a distinct decision: another label value
        intent = Resource("Intent", "i-1", TENANT, {"target": "staging", "labels": {"n": str(index)}})
        assert authz.decide(reader, Action.INTENT_READ, intent, tenant=FACTS).allowed
    assert authz._decisions.cache_info().currsize == DECISION_CACHE_PER_TENANT + 1
    hits = authz._decisions.cache_info().hits
    assert authz.decide(bystander, Action.INTENT_READ, theirs, tenant=other_facts).allowed
    assert authz._decisions.cache_info().hits == hits + 1  # still remembered


def test_an_owner_past_its_bound_drops_its_own_least_recently_used_first() -> None:
    memory: Remembered[str] = Remembered(4, per_owner=2)
    memory.put(b"b1", "b1", "b")
    for key in (b"a1", b"a2", b"a3"):
        memory.put(key, key.decode(), "a")
    assert memory.keys() == [b"b1", b"a2", b"a3"]
    assert memory.get(b"a2") == "a2"  # used: a3 is now a's least recently used
    memory.put(b"a4", "a4", "a")
    assert memory.keys() == [b"b1", b"a2", b"a4"]
    for key in (b"c1", b"c2"):  # past the size: the least recently used of all goes
        memory.put(key, key.decode(), "c")
    assert memory.keys() == [b"a2", b"a4", b"c1", b"c2"]
    memory.put(b"a2", "again", "a")  # put again: one entry, not two
    assert memory.get(b"a2") == "again"
    assert memory.keys() == [b"a4", b"c1", b"c2", b"a2"]
