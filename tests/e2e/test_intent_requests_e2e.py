# intent_ref: platform.ingress
"""The intent-requests ingress on a devhost: events published to the hub start executions (once per idempotency key,
requested by the token's principal), and every event that starts nothing is listed for its sender's tenant, or, with
no token, only logged."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import psycopg
import pytest

from devhost.identity import dev_tenant_id
from tests.e2e.test_executions_e2e import (  # noqa: F401  # fixtures by import
    AUTHOR,
    REQUESTER,
    Platform,
    SideEffects,
    create_intent,
    follow,
    http,
    platform,
    side_effects,
)

pytestmark = pytest.mark.e2e

HUB = "intent-requests"
EXECUTOR = ["Intent.Executor"]
READER = ["Intent.Reader"]


def publish(platform: Platform, body: Any, *, token: str | None, partition_key: str = "contoso") -> None:
    """Send one event through the devhost's hub, as a producer would."""
    properties = {} if token is None else {"authorization": f"Bearer {token}"}
    event: dict[str, Any] = {"partition_key": partition_key, "properties": properties}
    if isinstance(body, bytes):
        event["body"] = body.decode()
    else:
        event["body"] = body
    sent = httpx.post(
        f"{platform.base}/devhost/eventhubs/{HUB}/events",
        json={"events": [event]},
        headers=platform.host.key_header,
        timeout=30,
    )
    assert sent.status_code == 200, sent.text


def token(platform: Platform, roles: list[str], tenant: str = "contoso") -> str:
    return platform.headers(roles, tenant)["Authorization"].removeprefix("Bearer ")


def rejections(platform: Platform, tenant: str = "contoso") -> list[dict[str, Any]]:
    """Every rejection of the tenant, newest first, across pages."""
    items: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 200}
    while True:
        page = httpx.get(
            f"{platform.base}/api/v1/ingress/rejections",
            params=params,
            headers=platform.headers(READER, tenant),
            timeout=30,
        )
        assert page.status_code == 200, page.text
        items += page.json()["items"]
        if page.json()["next_cursor"] is None:
            return items
        params["cursor"] = page.json()["next_cursor"]


def rejection(platform: Platform, key: str, timeout: float = 60) -> dict[str, Any]:
    """The rejection of the event sent with idempotency key `key`, once the ingress has recorded it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [item for item in rejections(platform) if item["idempotency_key"] == key]
        if found:
            assert len(found) == 1, found
            return found[0]
        time.sleep(0.3)
    raise AssertionError(f"no rejection with key {key}")


def executions_of(platform: Platform, intent_id: str, tenant: str = "contoso") -> list[dict[str, Any]]:
    listed = httpx.get(
        f"{platform.base}/api/v1/executions",
        params={"intent_id": intent_id},
        headers=platform.headers(READER, tenant),
        timeout=30,
    )
    assert listed.status_code == 200, listed.text
    items: list[dict[str, Any]] = listed.json()["items"]
    return items


def marker(platform: Platform) -> str:
    """Send a request that is refused, and wait for its rejection: the events sent before it on the same partition
    have been processed by then (a partition is processed in order)."""
    key = f"marker-{uuid.uuid4().hex[:8]}"
    publish(platform, {"idempotency_key": key}, token=token(platform, EXECUTOR))
    return str(rejection(platform, key)["id"])


def test_an_event_starts_the_intent_once_however_often_it_is_delivered(
    platform: Platform,
    side_effects: SideEffects,
) -> None:
    intent_id = create_intent(platform, [http(side_effects, "ingress-once")])
    body = {"intent_id": intent_id, "input": {}, "idempotency_key": f"order-{uuid.uuid4().hex[:8]}"}
    sender = token(platform, AUTHOR)
    publish(platform, body, token=sender)
    publish(platform, body, token=sender)  # the producer's retry, or the hub's redelivery: the same request

    deadline = time.monotonic() + 60
    while not (found := executions_of(platform, intent_id)) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert found, "the event started no execution"
    status, events = follow(platform, found[0]["id"])
    assert status == "succeeded", [e["type"] for e in events]
    marker(platform)

    executions = executions_of(platform, intent_id)
    assert len(executions) == 1, executions
    assert executions[0]["requested_by"] == f"{dev_tenant_id('contoso')}/{REQUESTER}"
    assert len(side_effects.named("ingress-once")) == 1


def test_requests_that_start_nothing_are_listed_for_the_sender(
    platform: Platform,
    side_effects: SideEffects,
) -> None:
    own = create_intent(platform, [http(side_effects, "ingress-refused")])
    fabrikam_author = platform.headers(AUTHOR, "fabrikam")
    foreign = httpx.post(
        f"{platform.base}/api/v1/intents",
        headers=fabrikam_author,
        json={
            "name": f"e2e-{uuid.uuid4().hex[:10]}",
            "definition": {
                "target": "staging",
                "steps": [{"action": "http.request", "method": "GET", "url": "https://example.com/health"}],
            },
        },
    )
    assert foreign.status_code == 201, foreign.text
    foreign_id = foreign.json()["id"]
    suffix = uuid.uuid4().hex[:8]

    publish(platform, {"intent_id": foreign_id, "idempotency_key": f"foreign-{suffix}"}, token=token(platform, AUTHOR))
    publish(platform, {"intent_id": own, "idempotency_key": f"reader-{suffix}"}, token=token(platform, READER))
    publish(
        platform,
        {"intent_id": own, "idempotency_key": f"bad-{suffix}", "tenant_id": str(uuid.uuid4())},
        token=token(platform, AUTHOR),
    )

    not_found = rejection(platform, f"foreign-{suffix}")
    assert (not_found["reason"], not_found["detail"]["status"]) == ("not_found", 404)
    assert not_found["event"]["hub"] == HUB and not_found["event"]["enqueued_time"]
    assert not_found["requested_by"] == f"{dev_tenant_id('contoso')}/{REQUESTER}"
    forbidden = rejection(platform, f"reader-{suffix}")
    assert (forbidden["reason"], forbidden["detail"]["status"]) == ("forbidden", 403)
    invalid = rejection(platform, f"bad-{suffix}")
    assert (invalid["reason"], invalid["detail"]["errors"][0]["pointer"]) == ("invalid", "/tenant_id")

    # Nothing started, in either tenant; the other tenant has no rejection of contoso's.
    assert executions_of(platform, own) == []
    assert executions_of(platform, foreign_id, "fabrikam") == []
    assert not [item for item in rejections(platform, "fabrikam") if item["idempotency_key"].endswith(suffix)]
    assert side_effects.named("ingress-refused") == []


def test_an_event_without_a_token_is_only_logged(platform: Platform, pg: Any) -> None:
    def all_rejections() -> int:
        with psycopg.connect(pg.admin_url, dbname="quantum") as conn:
            row = conn.execute("SELECT count(*) FROM app.ingress_rejections").fetchone()
        assert row is not None
        return int(row[0])

    marker(platform)  # anything sent before is processed
    before = all_rejections()
    publish(platform, {"intent": "anything", "idempotency_key": "no-token"}, token=None)
    publish(platform, {"intent": "anything", "idempotency_key": "forged"}, token=token(platform, AUTHOR)[:-4] + "AAAA")
    marker(platform)
    assert all_rejections() == before + 1  # the marker's own row, nothing for the two events without a sender

    deadline = time.monotonic() + 30
    lines: list[dict[str, Any]] = []
    while time.monotonic() < deadline and len(lines) < 2:
        lines = [
            json.loads(line.split("qp.telemetry ", 1)[1])
            for line in platform.host.log().splitlines()
            if "qp.telemetry " in line and '"unauthenticated"' in line
        ]
        time.sleep(0.3)
    reasons = {line["detail"] for line in lines[-2:]}
    assert {line["tenant_id"] for line in lines[-2:]} == {"unknown"}
    assert reasons == {"missing bearer token", "invalid signature"}, lines
