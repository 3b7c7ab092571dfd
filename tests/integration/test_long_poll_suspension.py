# intent_ref: platform.execution
"""A long poll of an execution's events that is waiting when its tenant is suspended is answered as the tenant's
other requests are, 403 `tenant-suspended` (and recorded as their denial is), within seconds of the suspension, as
an open event stream ends then. Before, it went on waiting, up to its `wait`, and sent the events recorded meanwhile
to the suspended tenant's caller. A poll of an active tenant goes on past the tenant's looks."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from psycopg_pool import ConnectionPool

from shared.api import event_stream
from shared.api.event_stream import TENANT_LOOK_S
from shared.api.problems import TENANT_NOT_PROVISIONED
from shared.db.session import tenant_transaction
from shared.engine import executions as repo
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_executions import _execution

pytestmark = pytest.mark.integration

READER = ["Intent.Reader"]
WAIT_S = 30
"""The longest wait a poll may ask for: far past a look at its tenant, and past when the late event is recorded."""
LATE_S = 3 * TENANT_LOOK_S
"""How long after the suspension an event is recorded: past the poll's look at its tenant (one interval at most),
with room for a slow machine, and well inside the poll's wait."""


class Poll:
    """One long poll of an execution's events, on a thread of its own (the test client waits for its answer)."""

    def __init__(self, api: ApiHarness, execution: repo.Execution, headers: dict[str, str]) -> None:
        self.answers: list[httpx.Response] = []
        url = f"/api/v1/executions/{execution.id}/events"
        params = {"after": execution.last_event_seq, "wait": WAIT_S}
        self._thread = threading.Thread(
            target=lambda: self.answers.append(api.client.get(url, params=params, headers=headers))
        )

    def start(self) -> None:
        self._thread.start()

    def answer(self) -> httpx.Response:
        self._thread.join()
        [answer] = self.answers
        return answer


def _admitted(api: ApiHarness, tenant: str) -> bool:
    """Whether the tenant's poll was let in (its read was decided and recorded as allowed)."""
    return any((row["action"], row["decision"]) == ("execution.read", "allow") for row in api.audit_rows(tenant))


def _sleep_until(reached: Callable[[], bool]) -> None:
    while not reached():
        time.sleep(0.1)


def _append(pool: ConnectionPool[Any], tenant_id: uuid.UUID, execution_id: uuid.UUID) -> None:
    with tenant_transaction(tenant_id, pool=pool) as conn:
        repo.append_event(conn, execution_id, "step_started", "late", {"attempt": 1})


def test_a_waiting_long_poll_is_refused_once_its_tenant_is_suspended(
    api: ApiHarness, app_pool: ConnectionPool[Any]
) -> None:
    api.provision("poll-operators")
    admin = api.headers("poll-operators", ["Platform.Admin"])
    handle = api.provision("poll-suspended")
    execution = _execution(app_pool, handle.id, path=["running"])
    headers = api.headers("poll-suspended", READER)
    poll = Poll(api, execution, headers)

    poll.start()
    # Let in while the tenant is active: the suspension comes while it waits.
    _sleep_until(lambda: _admitted(api, "poll-suspended"))
    etag = api.client.get(f"/api/v1/tenants/{handle.id}", headers=admin).headers["etag"]
    suspended = api.client.patch(
        f"/api/v1/tenants/{handle.id}", json={"status": "suspended"}, headers={**admin, "If-Match": etag}
    )
    assert suspended.status_code == 200 and suspended.json()["status"] == "suspended", suspended.text
    at = time.monotonic()
    # An event recorded once the poll has looked at its tenant: a poll still waiting would be woken by it and send
    # it to the suspended tenant's caller (as it did, until its wait ran out).
    _sleep_until(lambda: time.monotonic() > at + LATE_S)
    _append(app_pool, handle.id, execution.id)
    answer = poll.answer()

    assert answer.status_code == 403, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    # The answer of any request of the suspended tenant, the next poll's included.
    again = api.client.get(f"/api/v1/executions/{execution.id}/events", headers=headers)
    assert again.status_code == 403, again.text
    assert problem["type"] == again.json()["type"] and problem["type"].endswith("/tenant-suspended"), problem
    assert (problem["reason"], problem["detail"]) == ("tenant_suspended", again.json()["detail"]), problem
    # Recorded as the denial of each of the tenant's requests is: the poll's, then the next request's.
    denials = [row for row in api.audit_rows("poll-suspended") if row["decision"] == "deny"]
    assert [row["reason"] for row in denials] == ["tenant_suspended", "tenant_suspended"], denials


def test_an_active_tenants_long_poll_waits_on_past_its_looks(api: ApiHarness, app_pool: ConnectionPool[Any]) -> None:
    handle = api.provision("poll-active")
    execution = _execution(app_pool, handle.id, path=["running"])
    poll = Poll(api, execution, api.headers("poll-active", READER))

    poll.start()
    _sleep_until(lambda: _admitted(api, "poll-active"))
    at = time.monotonic()
    # Recorded after the poll's first look at its tenant, which finds it active: the poll waits on and sends it.
    _sleep_until(lambda: time.monotonic() > at + LATE_S)
    _append(app_pool, handle.id, execution.id)
    answer = poll.answer()

    assert answer.status_code == 200, answer.text
    page = answer.json()
    assert [item["step_id"] for item in page["items"]] == ["late"], page
    assert page["next_after"] == execution.last_event_seq + 1, page
    assert not [row for row in api.audit_rows("poll-active") if row["decision"] == "deny"]


def test_a_waiting_long_poll_whose_tenant_is_erased_is_answered_as_an_unknown_tenants_request(
    api: ApiHarness, app_pool: ConnectionPool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    handle = api.provision("poll-erased")
    execution = _execution(app_pool, handle.id, path=["running"])
    poll = Poll(api, execution, api.headers("poll-erased", READER))
    poll.start()
    _sleep_until(lambda: _admitted(api, "poll-erased"))
    # The directory as it answers once the erasure removed the tenant's row (no tenant for its Entra tenant).
    monkeypatch.setattr(event_stream.tenant_directory, "cached", lambda entra_tenant_id: (True, None))
    answer = poll.answer()
    assert answer.status_code == 401, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["detail"] == TENANT_NOT_PROVISIONED
    assert answer.headers["www-authenticate"] == 'Bearer error="invalid_token"'
