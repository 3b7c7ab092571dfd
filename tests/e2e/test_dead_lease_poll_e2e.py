# intent_ref: platform.execution
"""A remote worker that goes away while its lease long poll waits (Ctrl-C, a crash, its own timeout) takes no work
with it, on the devhost (ADR 0027, amended 2026-12-06): the item queued after it left stays queued, the wait reason
says so, a live worker gets it and the execution succeeds; a leased item without a heartbeat is not called alive."""

from __future__ import annotations

import json
import socket
import time
import uuid
from typing import Any
from urllib.parse import urlparse

import httpx
import psycopg
import pytest

from devhost.child import PROJECT_ROOT
from devhost.identity import mint_token_cli
from tests.e2e.conftest import DevhostFactory

pytestmark = pytest.mark.e2e

ACTION = "dead-poll"
WAIT_S = 12.0
"""The hung-up poll's `wait_s`: the item is queued within it, and after it the poll can lease nothing any more."""
SETTLE_S = 3.0
"""Beyond `wait_s`, for the poll's last round on a slow machine."""
TERMINAL = ("succeeded", "failed", "cancelled")


class Tenant:
    """A new tenant of its own (its queue holds this test's items only), with a person's and a worker's tokens."""

    def __init__(self, base: str, pg: Any) -> None:
        self.base, self.entra_id = base, str(uuid.uuid4())
        admin = self._headers(pg, "contoso", ["Platform.Admin"])
        created = httpx.post(
            f"{base}/api/v1/tenants",
            headers=admin,
            json={
                "name": f"dead-poll-{uuid.uuid4().hex[:6]}",
                "entra_tenant_id": self.entra_id,
                "allowed_modules": [ACTION],
                "allowed_targets": ["staging"],
            },
            timeout=30,
        )
        assert created.status_code == 201, created.text
        self.id = created.json()["id"]
        self.person = self._headers(
            pg, self.entra_id, ["Tenant.Admin", "Intent.Author", "Intent.Executor", "Intent.Reader"]
        )
        self.worker = self._headers(pg, self.entra_id, ["Module.Worker"], app_only=True)
        module = {"action": ACTION, "params_schema": {"type": "object"}, "timeout_s": 600}
        registered = httpx.post(f"{base}/api/v1/modules", json=module, headers=self.person, timeout=30)
        assert registered.status_code == 201, registered.text

    def _headers(self, pg: Any, tenant: str, roles: list[str], *, app_only: bool = False) -> dict[str, str]:
        token = mint_token_cli(pg.root, self.base, tenant, roles, [], None, 900, app_only)
        return {"Authorization": f"Bearer {token}"}

    def get(self, path: str, headers: dict[str, str], **params: str) -> dict[str, Any]:
        response = httpx.get(f"{self.base}{path}", params=params, headers=headers, timeout=30)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def items(self, execution_id: str) -> list[dict[str, Any]]:
        return list(self.get("/api/v1/work", self.worker, execution_id=execution_id)["items"])


def _open_poll(base: str, headers: dict[str, str], worker: str) -> socket.socket:
    """A lease long poll sent on a socket of its own, whose answer nobody reads."""
    url = urlparse(base)
    body = json.dumps({"actions": [ACTION], "max_items": 1, "lease_s": 60, "wait_s": WAIT_S, "worker": worker}).encode()
    head = (
        f"POST /api/v1/work/lease HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: {headers['Authorization']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    sock = socket.create_connection((url.hostname, url.port), timeout=30)
    sock.sendall(head.encode() + body)
    return sock


def _until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.1)
    raise AssertionError(f"{what} never happened within {timeout} s")


def _polled(pg: Any, tenant_id: str, worker: str) -> bool:
    """Whether the poll has been through its first round (it records the poll in that round's transaction)."""
    with psycopg.connect(pg.admin_url, dbname="quantum") as conn:
        row = conn.execute(
            "SELECT 1 FROM app.work_pollers WHERE tenant_id = %s AND action = %s AND last_polled_by LIKE %s",
            (tenant_id, ACTION, f"{worker} (%"),
        ).fetchone()
    return row is not None


def test_a_poll_whose_worker_went_away_leaves_the_next_item_to_a_live_worker(
    devhost_factory: DevhostFactory, pg: Any
) -> None:
    host = devhost_factory(app_dir=PROJECT_ROOT, extra_args=("--seed-demo",))
    tenant = Tenant(host.base_url, pg)
    intent = httpx.post(
        f"{host.base_url}/api/v1/intents",
        json={"name": "dead-poll", "definition": {"target": "staging", "steps": [{"id": "work", "action": ACTION}]}},
        headers=tenant.person,
        timeout=30,
    )
    assert intent.status_code == 201, intent.text

    poll = _open_poll(host.base_url, tenant.worker, "gone")
    polled_at = time.monotonic()
    _until(lambda: _polled(pg, tenant.id, "gone"), 20, "the poll's first round")
    poll.close()  # the worker is stopped while its poll waits: nothing was answered to it

    started = httpx.post(
        f"{host.base_url}/api/v1/intents/{intent.json()['id']}/execute", headers=tenant.person, timeout=30
    )
    assert started.status_code in (200, 201, 202), started.text
    execution_id = started.json()["execution_id"]
    _until(lambda: tenant.items(execution_id), 30, "the step's item")
    assert time.monotonic() < polled_at + WAIT_S, "the item came after the poll's wait: the test proves nothing"

    # The hung-up poll would lease the item as soon as it was queued (its wait is woken then). Looked at until its
    # wait is over, after which it can lease nothing: it left the item queued.
    _until(
        lambda: tenant.items(execution_id)[0]["status"] != "queued" or time.monotonic() > polled_at + WAIT_S + SETTLE_S,
        WAIT_S + SETTLE_S + 5,
        "the end of the poll's wait",
    )
    (item,) = tenant.items(execution_id)
    assert (item["status"], item["leased_by"]) == ("queued", None), item
    reason = tenant.get(f"/api/v1/executions/{execution_id}", tenant.person)["wait_reason"]
    assert reason.startswith(f"waiting for a worker for {ACTION} (step work): queued"), reason

    live = httpx.post(
        f"{host.base_url}/api/v1/work/lease",
        json={"actions": [ACTION], "max_items": 1, "lease_s": 60, "wait_s": 5, "worker": "alive"},
        headers=tenant.worker,
        timeout=30,
    )
    assert live.status_code == 200, live.text
    (leased,) = live.json()["items"]
    assert (leased["execution_id"], leased["step_id"], leased["attempt"]) == (execution_id, "work", 1)
    # Leased, not yet heard from: the wait reason does not pass the lease off as a heartbeat.
    reason = tenant.get(f"/api/v1/executions/{execution_id}", tenant.person)["wait_reason"]
    assert f"a worker has leased {ACTION} (step work): leased by alive" in reason, reason
    assert reason.endswith("no heartbeat yet") and "last heartbeat" not in reason, reason

    done = httpx.post(
        host.base_url + leased["complete_url"],
        json={"task_token": leased["task_token"], "output": {"done": True}},
        timeout=30,
    )
    assert done.status_code == 200, done.text
    execution = _until(
        lambda: (e := tenant.get(f"/api/v1/executions/{execution_id}", tenant.person))["status"] in TERMINAL and e,
        30,
        "the execution's end",
    )
    assert execution["status"] == "succeeded", execution
    assert [a["attempt"] for a in execution["steps"][0]["attempts"]] == [1]  # no retry was spent
