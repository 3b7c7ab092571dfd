# intent_ref: platform.execution
"""What a client sees of an execution on a devhost is what happened (ADR 0014, ADR 0015): a step a cancel stops ends
once, cancelled, on the stream, in its view and in its domain events; a compensation with an attempt left reads
compensating with its retry recorded; a child its cancelled parent stopped ends the parent's step cancelled; a cancel
that could not change the end of a failing run is refused."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.e2e.test_executions_e2e import (  # noqa: F401  # platform and side_effects are fixtures
    AUTHOR,
    Platform,
    SideEffects,
    _child_of,
    create_intent,
    detail,
    follow,
    http,
    platform,
    side_effects,
    started,
    steps_of,
)

pytestmark = pytest.mark.e2e

_ENDS = ("step_failed", "step_cancelled", "step_completed")


def _cancel(platform: Platform, execution_id: str) -> httpx.Response:
    return httpx.post(
        f"{platform.base}/api/v1/executions/{execution_id}/cancel", headers=platform.headers(AUTHOR), timeout=30
    )


def _domain(pg: Any, execution_id: str, step_id: str) -> list[str]:
    """The step's domain events (platform-events, the webhooks' source), read from the outbox."""
    database = conninfo_to_dict(pg.owner_url)["dbname"]
    with psycopg.connect(make_conninfo(pg.admin_url, dbname=database)) as conn:
        rows = conn.execute(
            "SELECT event_type FROM app.outbox WHERE subject = %s ORDER BY position",
            (f"executions/{execution_id}/steps/{step_id}",),
        ).fetchall()
    return [row[0] for row in rows]


def _step_events(events: list[dict[str, Any]], step_id: str) -> list[str]:
    return [event["type"] for event in events if event["step"] == step_id]


def _until(read: Any, timeout: float = 30) -> Any:
    """Poll `read` until it answers something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = read()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError("never happened")


@pytest.mark.parametrize("kind", ["approval", "wait", "remote"])
def test_a_cancelled_waiting_step_ends_once_as_cancelled(
    platform: Platform, side_effects: SideEffects, pg: Any, kind: str
) -> None:
    step = {
        "approval": {"action": "approval"},
        "wait": {"action": "wait", "seconds": 60},
        "remote": {"action": "build-container", "image": "x:1"},
    }[kind]
    execution_id = started(platform, create_intent(platform, [{"id": "s", **step}]))
    if kind == "wait":
        _until(lambda: steps_of(detail(platform, execution_id))["s"]["state"] == "running")
    else:
        follow(platform, execution_id, until=("waiting",))
    assert _cancel(platform, execution_id).status_code == 202
    status, events = follow(platform, execution_id)
    assert status == "cancelled"
    # Before: step_failed {"error": "cancelled", "reason": "abandoned"}, then step_cancelled.
    assert [t for t in _step_events(events, "s") if t in _ENDS] == ["step_cancelled"]
    assert steps_of(detail(platform, execution_id))["s"]["state"] == "cancelled"
    assert _domain(pg, execution_id, "s") == ["step.cancelled"]


def test_a_compensation_that_will_be_retried_reads_compensating_and_its_retry_is_on_the_stream(
    platform: Platform, side_effects: SideEffects, pg: Any
) -> None:
    tag = uuid.uuid4().hex[:6]
    undo = http(side_effects, f"unda-{tag}", fail_times=1)
    execution_id = started(
        platform,
        create_intent(
            platform,
            [
                {
                    "id": "a",
                    **http(side_effects, f"a-{tag}"),
                    "compensate": undo,
                    "retry": {"max_attempts": 2, "initial_interval_s": 5, "backoff": 1},
                },
                {"id": "b", **http(side_effects, f"b-{tag}", fail_times=99)},
            ],
        ),
    )
    # Once the retry is recorded, while its pause lasts: what the execution reads.
    headers = platform.headers(["Intent.Reader"])

    def retrying() -> list[dict[str, Any]]:
        page = httpx.get(
            f"{platform.base}/api/v1/executions/{execution_id}/events", params={"after": 0}, headers=headers
        ).json()
        return [e for e in page["items"] if e["type"] == "compensation_retrying"]

    (retry,) = _until(retrying)
    during = detail(platform, execution_id)
    a = steps_of(during)["a"]
    assert a["state"] == "compensating" and a["finished_at"] is None
    assert {k: retry["data"][k] for k in ("attempt", "next_attempt", "max_attempts")} == {
        "attempt": 1,
        "next_attempt": 2,
        "max_attempts": 2,
    }
    assert retry["data"]["retry_at"] and retry["data"]["error"]
    if not any(x["phase"] == "compensate" and x["attempt"] == 2 for x in a["attempts"]):  # still in the pause
        assert "retrying the compensation of step a in" in (during["wait_reason"] or "")
    status, events = follow(platform, execution_id)
    assert status == "failed" and steps_of(detail(platform, execution_id))["a"]["state"] == "compensated"
    assert "compensation_failed" not in _step_events(events, "a")
    assert _domain(pg, execution_id, "a") == ["step.completed", "step.compensated"]


def test_a_parents_cancel_ends_its_child_step_cancelled_not_failed(
    platform: Platform, side_effects: SideEffects, pg: Any
) -> None:
    tag = uuid.uuid4().hex[:6]
    create_intent(platform, [{"id": "gate", "action": "approval"}], name=f"truthful-child-{tag}")
    parent = started(
        platform,
        create_intent(platform, [{"id": "run-child", "action": "intent.run", "intent": f"truthful-child-{tag}"}]),
    )
    follow(platform, _child_of(platform, parent, "run-child"), until=("waiting",))
    assert _cancel(platform, parent).status_code == 202
    status, events = follow(platform, parent)
    assert status == "cancelled"
    step = steps_of(detail(platform, parent))["run-child"]
    assert (step["state"], step["error"]) == ("cancelled", "cancelled")
    assert [t for t in _step_events(events, "run-child") if t in _ENDS] == ["step_cancelled"]
    assert _domain(pg, parent, "run-child") == ["step.cancelled"]


def test_a_cancel_during_a_failures_compensation_is_refused_and_changes_nothing(
    platform: Platform, side_effects: SideEffects
) -> None:
    tag = uuid.uuid4().hex[:6]
    execution_id = started(
        platform,
        create_intent(
            platform,
            [
                {"id": "a", **http(side_effects, f"a-{tag}"), "compensate": http(side_effects, f"unda-{tag}", sleep=3)},
                {"id": "b", **http(side_effects, f"b-{tag}", fail_times=99)},
            ],
        ),
    )
    follow(platform, execution_id, until=("compensating",))
    answer = _cancel(platform, execution_id)
    assert answer.status_code == 409, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.json()["type"].endswith("/already-failing")
    status, events = follow(platform, execution_id)
    assert status == "failed" and "cancel_requested" not in [e["type"] for e in events]
