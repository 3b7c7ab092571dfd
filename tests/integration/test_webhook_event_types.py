# intent_ref: platform.events
"""A webhook subscription names only event types the platform emits (a typo subscribed to nothing and never fired),
the list of those types matches what the emitters publish, and an erasure's refusal says which condition failed."""

from __future__ import annotations

import ast
import typing
import uuid
from pathlib import Path
from typing import Any

import pytest

from shared.api.durable import get_durable_client
from shared.db.session import tenant_transaction
from shared.engine import executions, steps
from shared.events import webhook_store
from shared.events.event_types import DOMAIN_EVENT_TYPES
from shared.registry.repository import Kind
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_webhooks import Receiver, emit, local, tenant  # noqa: F401  # local: fixture

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PUBLISHERS = {"enqueue": 1, "enqueue_event": 1, "_publish_step": 1, "_publish_move": 4}
"""The outbox's writers and the helpers that call them, with the position of their event-type argument."""


# ------------------------------------------------------------------------------------------ refused when unknown
def test_an_unknown_event_type_is_refused_naming_its_entry_and_nothing_is_subscribed(
    api: ApiHarness, local: None
) -> None:
    _, headers = tenant(api, "hooks-types")
    body = {"url": Receiver().url, "event_types": ["execution.completed", "bogus.event", "execution.complete"]}
    refused = api.client.post("/api/v1/webhooks", json=body, headers=headers)
    assert refused.status_code == 422, refused.text
    errors = refused.json()["errors"]
    assert [e["pointer"] for e in errors] == ["/event_types/1", "/event_types/2"]
    assert "'bogus.event' is not an event type the platform emits" in errors[0]["detail"]
    assert "did you mean 'execution.completed'?" in errors[1]["detail"]
    assert api.client.get("/api/v1/webhooks", headers=headers).json()["items"] == []


def test_known_types_and_star_are_taken_and_a_change_checks_only_the_types_it_sends(
    api: ApiHarness, local: None
) -> None:
    handle, headers = tenant(api, "hooks-types-ok")
    receiver = Receiver()
    every = sorted(DOMAIN_EVENT_TYPES)
    created = api.client.post("/api/v1/webhooks", json={"url": receiver.url, "event_types": every}, headers=headers)
    assert created.status_code == 201, created.text
    star = api.client.post("/api/v1/webhooks", json={"url": receiver.url, "event_types": ["*"]}, headers=headers)
    assert star.status_code == 201, star.text
    subscription = created.json()["id"]

    typo = api.client.patch(f"/api/v1/webhooks/{subscription}", json={"event_types": ["step.fail"]}, headers=headers)
    assert typo.status_code == 422, typo.text
    assert [e["pointer"] for e in typo.json()["errors"]] == ["/event_types/0"]
    assert api.client.get(f"/api/v1/webhooks/{subscription}", headers=headers).json()["event_types"] == every

    # A subscription stored before the check, with a type nobody emits, is left as it is and still changes.
    with tenant_transaction(handle.id) as conn:
        legacy, _ = webhook_store.create(
            conn,
            tenant_id=handle.id,
            url=receiver.url,
            event_types=["bogus.event"],
            description="",
            max_subscriptions=25,
        )
    renamed = api.client.patch(f"/api/v1/webhooks/{legacy.id}", json={"description": "old"}, headers=headers)
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["event_types"] == ["bogus.event"]


def test_a_subscribed_type_from_the_list_is_delivered(api: ApiHarness, local: None) -> None:
    from shared.events import webhooks

    handle, headers = tenant(api, "hooks-types-sent")
    receiver = Receiver()
    body = {"url": receiver.url, "event_types": ["execution.completed"]}
    assert api.client.post("/api/v1/webhooks", json=body, headers=headers).status_code == 201
    ids = emit(handle.id, "execution.completed", "execution.failed")
    assert webhooks.deliver_tenant(handle.id).delivered == 1
    assert [e["id"] for e in receiver.events()] == ids[:1]


# ------------------------------------------------------------------------------------------ the list cannot drift
def _emitted_types_in_source() -> tuple[set[str], list[str]]:
    """The event types the code passes to the outbox: literal ones, and `f"{kind}.<change>"` for each registry kind.
    Also where a type is computed (a variable): those sites must be among the tables checked below."""
    literal: set[str] = set()
    computed: list[str] = []
    kinds = typing.get_args(Kind)
    for path in sorted((ROOT / "shared").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            # Bare names only: the outbox's functions are imported by name (a work queue's `enqueue` is not one).
            position = PUBLISHERS.get(node.func.id) if isinstance(node.func, ast.Name) else None
            if position is None or len(node.args) <= position:
                continue
            argument = node.args[position]
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                literal.add(argument.value)
            elif isinstance(argument, ast.JoinedStr) and ast.unparse(argument).startswith("f'{kind}."):
                suffix = ast.unparse(argument).removeprefix("f'{kind}").removesuffix("'")
                literal.update(f"{kind}{suffix}" for kind in kinds)
            else:
                computed.append(f"{where} {ast.unparse(argument)}")
    return literal, computed


def test_every_event_type_the_platform_emits_is_subscribable() -> None:
    literal, computed = _emitted_types_in_source()
    from_tables = {executions.domain_event_type(event) for event in executions.TRANSITIONS.values()}
    from_tables |= set(steps._OUTCOME_EVENTS.values()) | set(steps._MOVE_EVENTS.values())
    emitted = literal | from_tables
    assert emitted - DOMAIN_EVENT_TYPES == set(), "emitted but refused by POST /api/v1/webhooks"
    assert DOMAIN_EVENT_TYPES - emitted == set(), "listed but never emitted: a subscription to it never fires"
    # A computed type is passed on by a publishing helper or drawn from the tables above; one computed elsewhere must
    # be added to this test (and its types to the list).
    assert {(site.split(":")[0], site.split(" ", 1)[1]) for site in computed} == {
        ("shared/events/outbox.py", "event_type"),  # enqueue -> enqueue_event
        ("shared/engine/executions.py", "event_type"),  # _publish_move -> enqueue_event
        ("shared/engine/executions.py", "domain_event_type(event_type)"),  # TRANSITIONS
        ("shared/engine/steps.py", "event_type"),  # _OUTCOME_EVENTS, _MOVE_EVENTS; _publish_step -> enqueue_event
    }, computed


# ------------------------------------------------------------------------------------------ erase refusals
def test_an_erasure_refusal_says_whether_the_tenant_is_not_suspended_or_the_name_does_not_match(
    api: ApiHarness, request: pytest.FixtureRequest
) -> None:
    api.provision("operator")
    admin = api.headers("operator", ["Platform.Admin"])
    active = api.provision("erase-active")
    suspended = api.provision("erase-suspended", status="suspended")
    api.client.app.dependency_overrides[get_durable_client] = object  # type: ignore[attr-defined]
    request.addfinalizer(lambda: api.client.app.dependency_overrides.pop(get_durable_client))  # type: ignore

    def erase(tenant_id: uuid.UUID, name: str) -> Any:
        return api.client.post(f"/api/v1/tenants/{tenant_id}/erase", json={"confirm_name": name}, headers=admin)

    not_suspended = erase(active.id, active.name)
    assert not_suspended.status_code == 409, not_suspended.text
    assert "suspend it first" in not_suspended.json()["detail"]
    assert "active" in not_suspended.json()["detail"]

    wrong_name = erase(suspended.id, suspended.name.upper())
    assert wrong_name.status_code == 409, wrong_name.text
    assert "does not match" in wrong_name.json()["detail"]
    assert "suspend" not in wrong_name.json()["detail"].lower()
    assert api.client.get(f"/api/v1/tenants/{suspended.id}", headers=admin).status_code == 200  # not erased
