# intent_ref: platform.execution
"""Step attempts and task tokens on the real database: results applied once, tokens single use and tenant-bound."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from shared.auth.principal import Requester
from shared.db.session import runtime_transaction, tenant_transaction
from shared.engine import steps as store
from shared.engine import task_tokens
from shared.engine.start import StartRequest, TenantSuspendedError, start_execution
from shared.engine.steps import AttemptKey, StepSeed
from shared.policy.facts import TenantFacts
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_executions import _execution

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tenants(api: ApiHarness) -> dict[str, uuid.UUID]:
    return {name: api.provision(name).id for name in ("gamma", "delta")}


def _attempt(
    pool: ConnectionPool[Any], tenant_id: uuid.UUID, *, remote: bool = False, ttl_s: int = 600
) -> tuple[AttemptKey, task_tokens.IssuedToken | None]:
    execution = _execution(pool, tenant_id, path=["running"])
    key = AttemptKey(execution.id, "build", "run", 1)
    with tenant_transaction(tenant_id, pool=pool) as conn:
        store.seed_steps(conn, execution.id, [StepSeed("build", "build-container", 3)])
        token = task_tokens.issue(conn, tenant_id, key, ttl_s) if remote else None
        store.begin_attempt(
            conn,
            key,
            action="build-container",
            remote=remote,
            token_nonce=token.nonce if token else None,
            token_expires_at=token.expires_at if token else None,
        )
    return key, token


def test_a_result_is_applied_once_and_the_first_verdict_stands(
    app_pool: ConnectionPool[Any], tenants: dict[str, uuid.UUID]
) -> None:
    key, _ = _attempt(app_pool, tenants["gamma"])
    with tenant_transaction(tenants["gamma"], pool=app_pool) as conn:
        first, applied = store.finish_attempt(conn, key, ok=True, output={"image": "a"})
        second, again = store.finish_attempt(conn, key, ok=False, error="late timeout", state="timed_out")
        events = conn.execute(
            "SELECT type FROM app.execution_events WHERE execution_id = %s AND step_id = 'build' ORDER BY seq",
            (key.execution_id,),
        ).fetchall()
        step = store.list_steps(conn, key.execution_id)[0]
    assert (applied, again) == (True, False)
    assert second.verdict() == first.verdict() == {"ok": True, "output": {"image": "a"}}
    assert [row["type"] for row in events] == ["step_started", "step_completed"]
    assert (step["state"], step["output"]) == ("succeeded", {"image": "a"})


def test_beginning_an_attempt_twice_records_it_once(
    app_pool: ConnectionPool[Any], tenants: dict[str, uuid.UUID]
) -> None:
    key, _ = _attempt(app_pool, tenants["gamma"])
    with tenant_transaction(tenants["gamma"], pool=app_pool) as conn:
        _, new = store.begin_attempt(conn, key, action="build-container", remote=False)
        started = conn.execute(
            "SELECT count(*) AS n FROM app.execution_events WHERE execution_id = %s AND type = 'step_started'",
            (key.execution_id,),
        ).fetchone()
    assert new is False and started is not None and started["n"] == 1


def test_a_task_token_verifies_once_and_refuses_forgery_expiry_and_another_tenant(
    app_pool: ConnectionPool[Any], tenants: dict[str, uuid.UUID]
) -> None:
    key, token = _attempt(app_pool, tenants["gamma"], remote=True)
    assert token is not None
    payload, signature = token.token.split(".")[1:]
    with tenant_transaction(tenants["gamma"], pool=app_pool) as conn:
        claims = task_tokens.verify(conn, token.token)
        assert (claims.tenant_id, claims.key) == (tenants["gamma"], key)
        # One character of the signature changed, to a different one whatever the signature is (a fixed suffix
        # would match the real signature about once in a thousand tokens).
        forged = f"qpt1.{payload}.{'B' if signature[0] == 'A' else 'A'}{signature[1:]}"
        assert forged != token.token
        with pytest.raises(task_tokens.InvalidTaskTokenError):
            task_tokens.verify(conn, forged)
        with pytest.raises(task_tokens.InvalidTaskTokenError, match="expired"):
            task_tokens.verify(conn, token.token, now=datetime.now(UTC) + timedelta(days=2))
        assert store.use_task_token(conn, token.nonce) is not None
        assert store.use_task_token(conn, token.nonce) is None  # single use
    # Claims rewritten to name another tenant are checked with that tenant's key, and fail; its rows do not hold
    # the nonce either.
    claims_doc = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims_doc["t"] = str(tenants["delta"])
    moved = base64.urlsafe_b64encode(json.dumps(claims_doc).encode()).rstrip(b"=").decode()
    with tenant_transaction(tenants["delta"], pool=app_pool) as conn:
        with pytest.raises(task_tokens.InvalidTaskTokenError, match="signature"):
            task_tokens.verify(conn, f"qpt1.{moved}.{signature}")
        assert store.attempt_by_token(conn, token.nonce) is None


def test_a_task_token_does_not_verify_in_another_tenants_transaction_while_its_key_is_remembered(
    app_pool: ConnectionPool[Any], tenants: dict[str, uuid.UUID], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The key from this process's memory answered before the read row-level security filters: gamma's token verified
    # in delta's transaction for as long as gamma's key was remembered.
    monkeypatch.setattr(task_tokens, "_keys", task_tokens._KeyMemo(3600.0, task_tokens.KEY_MEMO_MAX))
    key, token = _attempt(app_pool, tenants["gamma"], remote=True)  # issuing it remembers gamma's key
    assert token is not None and task_tokens.memoized_key(tenants["gamma"]) is not None
    with tenant_transaction(tenants["delta"], pool=app_pool) as conn:
        with pytest.raises(task_tokens.InvalidTaskTokenError, match="signature"):
            task_tokens.verify(conn, token.token)
    with runtime_transaction(pool=app_pool) as conn:  # no tenant's
        with pytest.raises(task_tokens.InvalidTaskTokenError, match="signature"):
            task_tokens.verify(conn, token.token)
    # Refused there, gamma's key is still remembered, and verifies its token in gamma's own transaction.
    assert task_tokens.memoized_key(tenants["gamma"]) is not None
    with tenant_transaction(tenants["gamma"], pool=app_pool) as conn:
        assert task_tokens.verify(conn, token.token).key == key


def test_the_same_attempt_reissues_the_same_token(app_pool: ConnectionPool[Any], tenants: dict[str, uuid.UUID]) -> None:
    key, token = _attempt(app_pool, tenants["delta"], remote=True)
    assert token is not None
    with tenant_transaction(tenants["delta"], pool=app_pool) as conn:
        again = task_tokens.issue(conn, tenants["delta"], key, 0, nonce=token.nonce, expires_at=token.expires_at)
    assert again.token == token.token


def test_a_suspended_tenant_starts_no_execution(app_pool: ConnectionPool[Any], tenants: dict[str, uuid.UUID]) -> None:
    facts = TenantFacts(
        id=tenants["gamma"],
        status="suspended",
        allowed_targets=frozenset({"staging"}),
        allowed_modules=frozenset({"wait"}),
    )
    with tenant_transaction(tenants["gamma"], pool=app_pool) as conn:
        with pytest.raises(TenantSuspendedError):
            start_execution(
                conn,
                facts,
                StartRequest(intent_id=uuid.uuid4(), requester=Requester("t/o", frozenset(), app_only=False)),
                max_concurrent=10,
                authorize=lambda _item: None,
            )
