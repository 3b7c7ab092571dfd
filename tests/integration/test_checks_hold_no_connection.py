# intent_ref: platform.tenant-isolation
"""A tenant's schema is evaluated with no pooled connection held: a start's input check and a validation's check run
between transactions, so another tenant's transaction gets a connection from a pool of one while they run."""

from __future__ import annotations

import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from shared.auth.principal import Requester
from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from shared.engine import start as start_module
from shared.engine.start import (
    STALE_START_S,
    InvalidInputError,
    Started,
    StartForbiddenError,
    StartRequest,
    TenantSuspendedError,
)
from shared.engine.start_service import begin
from shared.policy.authorizer import Decision, Resource
from shared.registry import service as registry_service
from shared.registry.schema_refs import evaluate_tenant_schema
from shared.registry.validation import validate_definition
from shared.tenants.models import Tenant
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.pool_of_one_harness import (  # noqa: F401  # the fixture one_connection
    GATE_WAIT_S,
    INPUT_SCHEMA,
    Gate,
    one_connection,
    other_tenants_transaction_completes,
    tenant_record,
)

pytestmark = pytest.mark.integration

AUTHOR = ["Intent.Author", "Intent.Reader"]
SCHEMA = INPUT_SCHEMA


def _tenant(api: ApiHarness, name: str) -> Tenant:
    """A new tenant, known to the harness by `name`."""
    return tenant_record(api.provision(name, allowed_modules=["wait"]).id)


def _intent(api: ApiHarness, name: str) -> uuid.UUID:
    body = {
        "name": f"checked-{uuid.uuid4().hex[:8]}",
        "definition": {
            "target": "staging",
            "inputs": SCHEMA,
            "steps": [{"id": "w", "action": "wait", "seconds": 1}],
        },
    }
    created = api.client.post("/api/v1/intents", json=body, headers=api.headers(name, AUTHOR))
    assert created.status_code == 201, created.text
    return uuid.UUID(created.json()["id"])


def _allow(_action: str, _resource: Resource) -> Decision:
    return Decision(True, "permit", ())


def _start_while_held(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch, given: dict[str, Any], held: tuple[Any, str] | None = None
) -> tuple[bool, Future[Started], Gate, Tenant]:
    """Start with input `given` while `held` (module, function; default: the input's evaluation) is held, and say
    whether another tenant's transaction completed meanwhile."""
    module, function = held or (start_module, "evaluate_tenant_schema")
    name = f"flood-{uuid.uuid4().hex[:6]}"
    flooding, other = _tenant(api, name), _tenant(api, f"other-{uuid.uuid4().hex[:6]}")
    intent_id = _intent(api, name)
    gate = Gate()
    monkeypatch.setattr(module, function, gate.wrap(getattr(module, function)))
    request = StartRequest(intent_id=intent_id, input=given, requester=Requester("t/o", frozenset(), app_only=False))
    with ThreadPoolExecutor(1) as pool:
        started = pool.submit(begin, flooding, lambda _conn: request, decide=_allow)
        try:
            assert gate.entered.wait(GATE_WAIT_S), f"{function} was never called"
            completed = other_tenants_transaction_completes(other.id)
        finally:
            gate.released.set()
        started.exception()  # waits for the start to end
    return completed, started, gate, flooding


def test_a_start_refused_for_its_input_holds_no_connection_while_the_input_is_checked(
    api: ApiHarness, one_connection: ConnectionPool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    completed, started, gate, _ = _start_while_held(api, monkeypatch, {"a": ["p"] * 1000})
    assert completed, "another tenant's transaction found no connection while the input was checked"
    # The check's outcome is the start's answer: 422-bound, as before.
    with pytest.raises(InvalidInputError) as refused:
        started.result()
    assert refused.value.errors[0]["pointer"] == "/input/a"
    assert gate.calls == 1  # checked once, outside the transaction, and not again inside it


def test_a_start_whose_input_is_valid_creates_its_execution_after_a_check_that_held_no_connection(
    api: ApiHarness, one_connection: ConnectionPool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    completed, started, gate, tenant = _start_while_held(api, monkeypatch, {"a": ["p", "q", "q"]})
    assert completed, "another tenant's transaction found no connection while the input was checked"
    execution = started.result().execution
    assert started.result().created and gate.calls == 1
    with tenant_transaction(tenant.id) as conn:
        assert repo.get_execution(conn, execution.id).input == {"a": ["p", "q", "q"]}


def test_a_start_holds_no_connection_while_its_versions_definition_is_checked_again(
    api: ApiHarness, one_connection: ConnectionPool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stored definition is validated again at every start (its schemas against the meta-schema, a module's
    # parameters against theirs): outside the transaction too, once.
    held = (registry_service, "validate_definition")
    completed, started, gate, _ = _start_while_held(api, monkeypatch, {"a": ["q", "q"]}, held)
    assert completed, "another tenant's transaction found no connection while the definition was checked"
    assert started.result().created and gate.calls == 1


def test_a_new_version_saved_while_the_input_is_checked_is_the_one_checked_and_run(
    api: ApiHarness, one_connection: ConnectionPool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"saves-{uuid.uuid4().hex[:6]}"
    tenant = _tenant(api, name)
    intent_id = _intent(api, name)
    real = evaluate_tenant_schema
    calls: list[Any] = []

    def save_meanwhile(schema: Any, instance: Any, **kwargs: Any) -> Any:
        calls.append(schema)
        if len(calls) == 1:  # the first check: a version that accepts nothing but objects with `b` is saved now
            item = api.client.get(f"/api/v1/intents/{intent_id}", headers=api.headers(name, AUTHOR))
            body = {
                "name": item.json()["name"],
                "definition": {
                    "target": "staging",
                    "inputs": {"type": "object", "required": ["b"]},
                    "steps": [{"id": "w", "action": "wait", "seconds": 1}],
                },
            }
            headers = {**api.headers(name, AUTHOR), "If-Match": item.headers["ETag"]}
            saved = api.client.put(f"/api/v1/intents/{intent_id}", json=body, headers=headers)
            assert saved.status_code == 200, saved.text
        return real(schema, instance, **kwargs)

    monkeypatch.setattr(start_module, "evaluate_tenant_schema", save_meanwhile)
    request = StartRequest(
        intent_id=intent_id, input={"a": ["q", "q"]}, requester=Requester("t/o", frozenset(), app_only=False)
    )
    # Valid for the version checked first, not for the one saved meanwhile, which is the version that would run.
    with pytest.raises(InvalidInputError) as refused:
        begin(tenant, lambda _conn: request, decide=_allow)
    assert refused.value.errors == [{"pointer": "/input", "detail": "'b' is a required property"}]
    assert [schema.get("required") for schema in calls] == [None, ["b"]]


def test_a_validation_holds_no_connection_while_its_definition_is_checked(
    api: ApiHarness, one_connection: ConnectionPool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"validates-{uuid.uuid4().hex[:6]}"
    _tenant(api, name)
    other = _tenant(api, f"other-{uuid.uuid4().hex[:6]}")
    gate = Gate()
    monkeypatch.setattr(registry_service, "validate_definition", gate.wrap(validate_definition))
    body = {
        "name": "checked",
        "definition": {
            "target": "staging",
            "inputs": SCHEMA,
            "steps": [{"id": "w", "action": "wait", "seconds": 1}],
        },
    }
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(api.client.post, "/api/v1/intents/validate", json=body, headers=api.headers(name, AUTHOR))
        try:
            assert gate.entered.wait(GATE_WAIT_S), "the definition was never checked"
            completed = other_tenants_transaction_completes(other.id)
        finally:
            gate.released.set()
        validated = answer.result()
    assert completed, "another tenant's transaction found no connection while the definition was checked"
    assert validated.status_code == 200, validated.text
    assert validated.json()["definition"]["inputs"] == SCHEMA and gate.calls == 1


def test_a_replay_that_takes_over_a_stale_start_holds_no_connection_while_its_input_is_checked(
    api: ApiHarness, one_connection: ConnectionPool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A start whose launch never came (its starter died): the same request with its key takes it over and rebuilds
    # its orchestration input, checking the recorded input again.
    name = f"replays-{uuid.uuid4().hex[:6]}"
    tenant, other = _tenant(api, name), _tenant(api, f"other-{uuid.uuid4().hex[:6]}")
    request = StartRequest(
        intent_id=_intent(api, name),
        input={"a": ["q", "q"]},
        idempotency_key="replayed",
        requester=Requester("t/o", frozenset(), app_only=False),
    )
    first = begin(tenant, lambda _conn: request, decide=_allow)
    with psycopg.connect(api.admin_url, dbname="quantum", autocommit=True) as conn:
        conn.execute(
            "UPDATE app.executions SET start_claimed_at = start_claimed_at - make_interval(secs => %s) WHERE id = %s",
            (STALE_START_S * 2, first.execution.id),
        )
    gate = Gate()
    monkeypatch.setattr(start_module, "evaluate_tenant_schema", gate.wrap(evaluate_tenant_schema))
    with ThreadPoolExecutor(1) as pool:
        replay = pool.submit(begin, tenant, lambda _conn: request, decide=_allow)
        try:
            assert gate.entered.wait(GATE_WAIT_S), "the recorded input was never checked"
            completed = other_tenants_transaction_completes(other.id)
        finally:
            gate.released.set()
        replayed = replay.result()
    assert completed, "another tenant's transaction found no connection while the recorded input was checked"
    assert replayed.execution.id == first.execution.id and not replayed.created
    assert replayed.orchestration_input is not None and replayed.orchestration_input["inputs"] == {"a": ["q", "q"]}
    assert gate.calls == 1


def _deny(_action: str, _resource: Resource) -> Decision:
    return Decision(False, "forbid", ())


def _refused_by_the_model(api: ApiHarness, intent_id: uuid.UUID) -> None:
    """Its stored version made one the current model refuses (written before a rule it breaks)."""
    with psycopg.connect(api.admin_url, dbname="quantum", autocommit=True) as conn:
        conn.execute(
            'UPDATE app.intent_versions SET definition = \'{"target": "staging", "steps": []}\' WHERE intent_id = %s',
            (intent_id,),
        )


@pytest.mark.parametrize("stored", ["valid", "refused by the model"])
def test_a_replay_of_a_start_still_claimed_is_answered_without_a_check(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch, stored: str
) -> None:
    # Its start is its first request's (claimed just now): the replay answers 202 as before, checking nothing, even
    # when the stored version is one the current model refuses (its check answered 500).
    name = f"claimed-{uuid.uuid4().hex[:6]}"
    tenant = _tenant(api, name)
    intent_id = _intent(api, name)
    request = StartRequest(
        intent_id=intent_id,
        input={"a": ["q", "q"]},
        idempotency_key="claimed",
        requester=Requester("t/o", frozenset(), app_only=False),
    )
    first = begin(tenant, lambda _conn: request, decide=_allow)
    if stored != "valid":
        _refused_by_the_model(api, intent_id)
    gate = Gate()
    gate.released.set()
    monkeypatch.setattr(start_module, "evaluate_tenant_schema", gate.wrap(evaluate_tenant_schema))
    replayed = begin(tenant, lambda _conn: request, decide=_allow)
    assert replayed.execution.id == first.execution.id and not replayed.created
    assert gate.calls == 0


@pytest.mark.parametrize("refusal", ["denied", "suspended"])
def test_a_refusal_that_comes_first_still_comes_first_for_a_version_the_model_refuses(
    api: ApiHarness, refusal: str
) -> None:
    name = f"first-{uuid.uuid4().hex[:6]}"
    tenant = _tenant(api, name)
    intent_id = _intent(api, name)
    _refused_by_the_model(api, intent_id)
    request = StartRequest(intent_id=intent_id, input={}, requester=Requester("t/o", frozenset(), app_only=False))
    if refusal == "denied":
        with pytest.raises(StartForbiddenError):
            begin(tenant, lambda _conn: request, decide=_deny)
    else:
        with pytest.raises(TenantSuspendedError):
            begin(tenant.model_copy(update={"status": "suspended"}), lambda _conn: request, decide=_allow)
