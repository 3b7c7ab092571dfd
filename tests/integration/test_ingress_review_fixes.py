# intent_ref: platform.ingress
"""The ingress on the real database: nothing slow runs on the event loop the HTTP API shares (the token's key fetch,
the body's parse), a body over the API's container bound is refused unparsed, a recorded rejection is final on every
redelivery, and a stale replay of a request that started finds its execution instead of recording a rejection."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import azure.durable_functions as df
import psycopg
import pytest

import shared.check_gate as check_gate
from devhost.eventhubs.binding import EventHubTriggerSpec, trigger_input
from devhost.eventhubs.store import StoredEvent
from devhost.identity import DEFAULT_AUDIENCE, SigningKey, sign_access_token
from devhost.invoker import FunctionInvocationError, Invoker, Retry
from shared import telemetry
from shared.accepted_json import MAX_BODY_CONTAINERS, TOO_MANY_CONTAINERS
from shared.api.durable import get_durable_client
from shared.auth.principal import INTENT_EXECUTOR
from shared.auth.tokens import TokenValidator
from shared.check_gate import CheckGate
from shared.ingress import process
from shared.ingress.process import Outcome, process_batch, process_event
from shared.ingress.request import IngressEvent, IntentRequest
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_ingress_launch import _validator
from tests.integration.test_ingress_rejections import NoOrchestrations, _intent
from tests.integration.test_start_service import TaskHub
from tests.unit.test_token_validation import BASE_URL, FakeIdentityProvider

pytestmark = pytest.mark.integration

EXECUTOR = ["Intent.Executor"]
READER = ["Intent.Reader"]


def _event(api: ApiHarness, tenant: str, body: Any, sequence: int, roles: list[str] = EXECUTOR) -> IngressEvent:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return IngressEvent(
        body=raw,
        partition_id="1",
        sequence_number=sequence,
        enqueued_time=datetime.now(UTC),
        properties={"authorization": f"Bearer {api.token(tenant, roles)}"},
    )


def _sequence() -> int:
    return int(uuid.uuid4().int % 1_000_000_000)


def _state(api: ApiHarness, tenant_id: uuid.UUID) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The tenant's executions (key, id) and rejections (key, reason, detail), read as the admin."""
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        executions = conn.execute(
            "SELECT idempotency_key, id FROM app.executions WHERE tenant_id = %s ORDER BY created_at", (tenant_id,)
        ).fetchall()
        rejections = conn.execute(
            "SELECT idempotency_key, reason, detail FROM app.ingress_rejections WHERE tenant_id = %s"
            " ORDER BY created_at",
            (tenant_id,),
        ).fetchall()
    return executions, rejections


@contextmanager
def _heap_frozen() -> Iterator[None]:
    """The test process's own heap out of the collector's way: a full collection of it holds every thread for as long
    as it takes, wherever the parse runs, and would be measured as the parse's."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _longest_stall(work: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    """The longest the event loop went without running a 10 ms ticker while `work` ran, and what `work` gave."""

    async def main() -> tuple[float, Any]:
        gaps: list[float] = []
        done = False

        async def ticker() -> None:
            last = time.monotonic()
            while not done:
                await asyncio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0.05)
        try:
            result = await work()
        finally:
            done = True
            await tick
        return max(gaps), result

    with _heap_frozen():
        return asyncio.run(main())


def _many_containers(intent_id: str, count: int, key: str, empty: str = "[]") -> bytes:
    """A request whose input holds `count` empty containers (3 bytes each, the costliest JSON to parse)."""
    head = json.dumps({"intent_id": intent_id, "idempotency_key": key})[:-1] + ', "input": {"a": ['
    return (head + ",".join([empty] * count) + "]}}").encode()


def test_a_slow_key_fetch_does_not_hold_the_event_loop(tmp_path: Path) -> None:
    key = SigningKey.load_or_create(tmp_path)
    provider = FakeIdentityProvider([key])

    def slow_fetch(url: str) -> Any:
        time.sleep(1.0)  # an identity provider slow to answer (a real fetch waits up to 5 s)
        return provider.fetch(url)

    validator = TokenValidator(provider.metadata_url, DEFAULT_AUDIENCE, fetch=slow_fetch)
    token = sign_access_token(key, tenant="contoso", base_url=BASE_URL, roles=[INTENT_EXECUTOR])
    event = IngressEvent(
        body=b"{}",
        partition_id="0",
        sequence_number=1,
        enqueued_time=datetime.now(UTC),
        properties={"authorization": f"Bearer {token}"},
    )

    async def verified_only() -> None:
        # Its tenant is not provisioned (or there is no database): only the token check's time on the loop counts.
        with suppress(Exception):
            await process_event(event, NoOrchestrations(), validator)

    stall, _ = _longest_stall(verified_only)
    assert stall < 0.3, f"the event loop was held {stall:.2f} s by the token's key fetch"


def test_a_hostile_body_is_parsed_off_the_event_loop(api: ApiHarness) -> None:
    # A Reader's event (refused forbidden after the parse) of the most objects the bound allows: read on the loop, it
    # held every request of the worker for as long as its parse took. (Objects: the parser calls back into Python for
    # each, where the loop gets its turn; an array is parsed in C holding the interpreter's lock, a few tenths of a
    # second for the most the bound allows, on a thread as anywhere.)
    api.provision("parse")
    body = _many_containers(_intent(api, "parse"), MAX_BODY_CONTAINERS - 10, "k", '{"a": 0}')
    with _heap_frozen():
        started = time.monotonic()
        process._read(body)
        parse_s = time.monotonic() - started
    event = _event(api, "parse", body, _sequence(), READER)
    validator = _validator(api)
    stall, outcome = _longest_stall(lambda: process_event(event, NoOrchestrations(), validator))
    assert outcome.reason == "forbidden"
    assert stall < parse_s / 2, f"the loop was held {stall:.2f} s by a {parse_s:.2f} s parse"


def test_a_body_over_the_container_bound_is_invalid_and_never_parsed(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = api.provision("containers")
    body = _many_containers(_intent(api, "containers"), MAX_BODY_CONTAINERS + 10, "many")

    def no_parse(*_: Any) -> Any:
        raise AssertionError("the body was parsed")

    monkeypatch.setattr(process, "loads", no_parse)
    for name in ("parse", "of_document", "key_of", "key_in"):
        monkeypatch.setattr(IntentRequest, name, no_parse)
    event = _event(api, "containers", body, _sequence())
    outcome = asyncio.run(process_event(event, NoOrchestrations(), _validator(api)))
    assert outcome.reason == "invalid"
    executions, rejections = _state(api, tenant.id)
    assert executions == []
    [(key, reason, detail)] = rejections
    assert key is None and reason == "invalid"
    assert [error["code"] for error in detail["errors"]] == [TOO_MANY_CONTAINERS]


def test_rejected_then_started_on_batch_retry(api: ApiHarness) -> None:
    # The second event is refused its quota; the batch fails on another tenant's outage and is run again after the
    # first execution ended: the second was started while its rejection record stayed.
    tenant = api.provision("final", quotas={"max_concurrent_executions": 1})
    intent_id = _intent(api, "final")
    api.provision("outage")
    other_intent = _intent(api, "outage")
    base = _sequence()
    batch = [
        _event(api, "final", {"intent_id": intent_id, "input": {}, "idempotency_key": "first"}, base),
        _event(api, "final", {"intent_id": intent_id, "input": {}, "idempotency_key": "second"}, base + 1),
        _event(api, "outage", {"intent_id": other_intent, "input": {}, "idempotency_key": "o"}, base + 2),
    ]
    hub = TaskHub(fail_call=2)
    with pytest.raises(RuntimeError):
        asyncio.run(process_batch(batch, hub, _validator(api)))
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        conn.execute(
            "UPDATE app.executions SET status = 'succeeded' WHERE tenant_id = %s AND idempotency_key = 'first'",
            (tenant.id,),
        )
    outcomes = asyncio.run(process_batch(batch, hub, _validator(api)))
    assert outcomes[1] == Outcome(batch[1].event_id, reason="quota_exceeded")
    executions, rejections = _state(api, tenant.id)
    assert [key for key, _ in executions] == ["first"]
    assert [(key, reason) for key, reason, _ in rejections] == [("second", "quota_exceeded")]


def test_a_new_event_at_an_old_rejections_place_is_started(api: ApiHarness) -> None:
    # A hub recreated numbers its events from the start again: matched by its place alone, a valid request at an old
    # rejection's place was answered with that rejection, never started nor recorded.
    tenant = api.provision("reused-place")
    intent_id = _intent(api, "reused-place")
    place = _sequence()
    old = _event(api, "reused-place", {"intent_id": intent_id, "idempotency_key": "old", "nope": 1}, place)
    assert asyncio.run(process_event(old, TaskHub(), _validator(api))).reason == "invalid"
    new = replace(
        _event(api, "reused-place", {"intent_id": intent_id, "input": {}, "idempotency_key": "new"}, place),
        enqueued_time=old.enqueued_time + timedelta(days=1) if old.enqueued_time else None,
    )
    outcome = asyncio.run(process_event(new, TaskHub(), _validator(api)))
    assert outcome.created and outcome.execution_id is not None, outcome
    assert [key for key, _ in _state(api, tenant.id)[0]] == ["new"]
    # The same event delivered again is still answered by its rejection.
    assert asyncio.run(process_event(old, TaskHub(), _validator(api))).reason == "invalid"


def test_a_stale_replay_of_a_started_request_finds_its_execution(api: ApiHarness) -> None:
    # Replayed past a day (its checkpoints lost while the hub still held it), it recorded `stale` without its key
    # for a request that had run.
    tenant = api.provision("replayed")
    intent_id = _intent(api, "replayed")
    event = _event(api, "replayed", {"intent_id": intent_id, "input": {}, "idempotency_key": "done"}, _sequence())
    first = asyncio.run(process_event(event, TaskHub(), _validator(api)))
    assert first.created and first.execution_id is not None
    later = datetime.now(UTC) + timedelta(hours=25)
    replay = asyncio.run(process_event(event, NoOrchestrations(), _validator(api), now=later))
    assert replay == Outcome(event.event_id, first.execution_id)
    assert _state(api, tenant.id)[1] == []


def test_a_stale_request_that_never_started_is_recorded_with_its_key(api: ApiHarness) -> None:
    tenant = api.provision("late")
    intent_id = _intent(api, "late")
    event = _event(api, "late", {"intent_id": intent_id, "input": {}, "idempotency_key": "late-1"}, _sequence())
    later = datetime.now(UTC) + timedelta(hours=25)
    outcome = asyncio.run(process_event(event, NoOrchestrations(), _validator(api), now=later))
    assert outcome.reason == "stale"
    executions, rejections = _state(api, tenant.id)
    assert executions == [] and [(key, reason) for key, reason, _ in rejections] == [("late-1", "stale")]


def test_a_stale_body_nested_too_deep_is_recorded_stale_not_retried(api: ApiHarness) -> None:
    # Its key is read as any body is, the nesting bound first: a plain parse of it raises, and the event would fail
    # its batch on every delivery.
    tenant = api.provision("deep")
    body = b'{"idempotency_key": "deep-1", "input": {"a": ' + b"[" * 5_000 + b"]" * 5_000 + b"}}"
    event = _event(api, "deep", body, _sequence())
    later = datetime.now(UTC) + timedelta(hours=25)
    outcome = asyncio.run(process_event(event, NoOrchestrations(), _validator(api), now=later))
    assert outcome.reason == "stale"
    assert [(key, reason) for key, reason, _ in _state(api, tenant.id)[1]] == [(None, "stale")]


def test_a_rejection_trimmed_by_its_senders_flood_is_still_final(api: ApiHarness) -> None:
    # Refused its quota, then 1,000 newer rejections of its sender (a burst on other partitions while this
    # partition's batch is retried in place): the trim deleted its row, and the redelivery, once the quota had freed,
    # started it.
    tenant = api.provision("flooded", quotas={"max_concurrent_executions": 1})
    intent_id = _intent(api, "flooded")
    base = _sequence()
    first = _event(api, "flooded", {"intent_id": intent_id, "input": {}, "idempotency_key": "k1"}, base)
    second = _event(api, "flooded", {"intent_id": intent_id, "input": {}, "idempotency_key": "k2"}, base + 1)
    assert asyncio.run(process_event(first, TaskHub(), _validator(api))).created
    assert asyncio.run(process_event(second, TaskHub(), _validator(api))).reason == "quota_exceeded"
    with psycopg.connect(api.admin_url, dbname="quantum", autocommit=True) as conn:
        row = conn.execute(
            "SELECT requested_by FROM app.ingress_rejections WHERE tenant_id = %s", (tenant.id,)
        ).fetchone()
        assert row is not None
        conn.execute(
            "INSERT INTO app.ingress_rejections (tenant_id, hub, partition_id, sequence_number, reason, detail,"
            " requested_by, created_at)"
            " SELECT %s, 'intent-requests', '7', n, 'invalid', '{}'::jsonb, %s, clock_timestamp()"
            " FROM generate_series(1, 1000) AS n",
            (tenant.id, row[0]),
        )
    # The sender's next rejection trims its rows to its newest 1,000.
    flood = _event(api, "flooded", {"intent_id": intent_id, "idempotency_key": "x", "nope": 1}, base + 2)
    assert asyncio.run(process_event(flood, TaskHub(), _validator(api))).reason == "invalid"
    with psycopg.connect(api.admin_url, dbname="quantum") as conn:
        conn.execute(
            "UPDATE app.executions SET status = 'succeeded' WHERE tenant_id = %s AND idempotency_key = 'k1'",
            (tenant.id,),
        )
    again = asyncio.run(process_event(second, TaskHub(), _validator(api)))
    assert again == Outcome(second.event_id, reason="quota_exceeded")
    assert [key for key, _ in _state(api, tenant.id)[0]] == ["k1"]


def test_a_stale_event_of_another_request_under_a_used_key_is_recorded_stale(api: ApiHarness) -> None:
    # Matched by its key alone, a stale event naming another intent under a key that had started one was answered by
    # that execution, and nothing was recorded for it.
    tenant = api.provision("stale-other")
    first_intent, second_intent = _intent(api, "stale-other"), _intent(api, "stale-other")
    base = _sequence()
    fresh = _event(api, "stale-other", {"intent_id": first_intent, "input": {}, "idempotency_key": "K"}, base)
    assert asyncio.run(process_event(fresh, TaskHub(), _validator(api))).created
    other = _event(api, "stale-other", {"intent_id": second_intent, "input": {}, "idempotency_key": "K"}, base + 1)
    later = datetime.now(UTC) + timedelta(hours=25)
    outcome = asyncio.run(process_event(other, NoOrchestrations(), _validator(api), now=later))
    assert outcome == Outcome(other.event_id, reason="stale")
    executions, rejections = _state(api, tenant.id)
    assert [key for key, _ in executions] == ["K"]
    assert [(key, reason) for key, reason, _ in rejections] == [("K", "stale")]


def test_a_boolean_version_is_refused_by_the_ingress_and_the_execute_route(api: ApiHarness) -> None:
    # `true` was taken as version 1 by both.
    tenant = api.provision("bool-version")
    intent_id = _intent(api, "bool-version")
    event = _event(api, "bool-version", {"intent_id": intent_id, "version": True, "idempotency_key": "b"}, _sequence())
    assert asyncio.run(process_event(event, TaskHub(), _validator(api))).reason == "invalid"
    api.client.app.dependency_overrides[get_durable_client] = TaskHub  # type: ignore[attr-defined]
    try:
        refused = api.client.post(
            f"/api/v1/intents/{intent_id}/execute",
            json={"input": {}, "version": True},
            headers=api.headers("bool-version", ["Intent.Executor"]),
        )
    finally:
        api.client.app.dependency_overrides.pop(get_durable_client, None)  # type: ignore[attr-defined]
    assert refused.status_code == 422, refused.text
    assert "version" in refused.text
    assert _state(api, tenant.id)[0] == []


def test_an_event_failing_on_the_last_retry_is_logged_dropped(
    api: ApiHarness, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    # Once the retry policy was spent, a still-failing event was checkpointed with no record, and its last line said
    # it would be retried. Here it fails before anything of it commits: the identity provider cannot be reached.
    provider = FakeIdentityProvider([SigningKey.load_or_create(tmp_path)])
    provider.failing = True
    unreachable = TokenValidator(provider.metadata_url, DEFAULT_AUDIENCE, fetch=provider.fetch)
    tenant = api.provision("dropped")
    intent_id = _intent(api, "dropped")
    event = _event(api, "dropped", {"intent_id": intent_id, "input": {}, "idempotency_key": "d"}, _sequence())
    with caplog.at_level(logging.INFO, logger="shared.ingress.process"), caplog.at_level(logging.INFO, "qp.telemetry"):
        with pytest.raises(RuntimeError):
            asyncio.run(process_batch([event], TaskHub(), unreachable))
        retried = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert [("will be retried" in r.getMessage(), "dropped" in r.getMessage()) for r in retried] == [(True, False)]
        caplog.clear()
        with pytest.raises(RuntimeError):
            asyncio.run(process_batch([event], TaskHub(), unreachable, final_attempt=True))
    lines = [
        r for r in caplog.records if r.levelno >= logging.INFO and r.name in ("shared.ingress.process", "qp.telemetry")
    ]
    dropped = [r.getMessage() for r in lines if r.levelno == logging.ERROR]
    assert len(dropped) == 1 and "dropped" in dropped[0] and "will be retried" not in dropped[0], dropped
    assert event.event_id in dropped[0] and str(event.sequence_number) in dropped[0]
    assert process.UNATTRIBUTED in dropped[0] and str(process.reference_of(event)) in dropped[0]
    # Logged first, then counted (a failing count must not hide the line).
    counted = [i for i, r in enumerate(lines) if r.getMessage().startswith(telemetry.PREFIX)]
    assert len(counted) == 1 and lines.index(next(r for r in lines if r.levelno == logging.ERROR)) < counted[0]
    assert '"reason":"dropped"' in lines[counted[0]].getMessage()
    assert _state(api, tenant.id) == ([], [])


def test_an_event_whose_launch_fails_on_the_last_retry_is_left_to_the_sweeper_not_dropped(
    api: ApiHarness, caplog: pytest.LogCaptureFixture
) -> None:
    # Its start committed (a pending execution the sweeper launches) and only its launch failed: it was logged and
    # counted dropped, and an operator told its producer to resend an event that was not lost.
    tenant = api.provision("to-sweeper")
    intent_id = _intent(api, "to-sweeper")
    event = _event(api, "to-sweeper", {"intent_id": intent_id, "input": {}, "idempotency_key": "s"}, _sequence())
    with caplog.at_level(logging.INFO, logger="shared.ingress.process"), caplog.at_level(logging.INFO, "qp.telemetry"):
        with pytest.raises(RuntimeError):
            asyncio.run(process_batch([event], TaskHub(fail_call=1), _validator(api), final_attempt=True))
    executions, rejections = _state(api, tenant.id)
    assert [key for key, _ in executions] == ["s"] and rejections == []
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(lines) == 1 and "dropped" not in lines[0], lines
    assert f"left to the sweeper: execution {executions[0][1]}" in lines[0] and str(tenant.id) in lines[0]
    assert not [
        r for r in caplog.records if r.getMessage().startswith(telemetry.PREFIX) and "dropped" in r.getMessage()
    ]


def test_a_redelivery_of_an_event_the_lax_release_started_is_answered_by_its_execution(api: ApiHarness) -> None:
    # `"version": "1"` was version 1 before the strict model: an event that release started, delivered again after
    # the deploy, was recorded rejected `invalid` while its execution ran (and stale, past a day).
    tenant = api.provision("lax-version")
    intent_id = _intent(api, "lax-version")
    place = _sequence()
    started = _event(api, "lax-version", {"intent_id": intent_id, "version": 1, "idempotency_key": "v"}, place)
    first = asyncio.run(process_event(started, TaskHub(), _validator(api)))
    assert first.created and first.execution_id is not None
    # The same event (its place and stamp) as it was sent: read now, its body is refused by the strict model.
    sent = replace(started, body=json.dumps({"intent_id": intent_id, "version": "1", "idempotency_key": "v"}).encode())
    assert asyncio.run(process_event(sent, NoOrchestrations(), _validator(api))) == Outcome(
        sent.event_id, first.execution_id
    )
    later = datetime.now(UTC) + timedelta(hours=25)
    assert asyncio.run(process_event(sent, NoOrchestrations(), _validator(api), now=later)) == Outcome(
        sent.event_id, first.execution_id
    )
    assert _state(api, tenant.id)[1] == []
    # Another request under the key is not that execution's: refused, as the strict model says.
    other = _event(api, "lax-version", {"intent_id": intent_id, "version": "2", "idempotency_key": "v"}, place + 1)
    assert asyncio.run(process_event(other, NoOrchestrations(), _validator(api))).reason == "invalid"


class _CountedGate(CheckGate):
    """The process's check gate, counting the turns taken at it."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = 0

    def enter(self, tenant_id: uuid.UUID, wait_s: float) -> bool:
        self.entered += 1
        return super().enter(tenant_id, wait_s)


def test_an_event_refused_for_quota_never_takes_the_check_gate(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its costly input was checked, a turn at the gate taken, and only then was it refused its quota.
    gate = _CountedGate()
    monkeypatch.setattr(check_gate, "get_check_gate", lambda: gate)
    tenant = api.provision("quota-first", quotas={"max_concurrent_executions": 1})
    intent_id = _intent(api, "quota-first")
    base = _sequence()
    busy = _event(api, "quota-first", {"intent_id": intent_id, "input": {}, "idempotency_key": "busy"}, base)
    assert asyncio.run(process_event(busy, TaskHub(), _validator(api))).created
    large = {"n": "v" * (check_gate.COSTLY_BYTES + 1)}
    refused = _event(api, "quota-first", {"intent_id": intent_id, "input": large, "idempotency_key": "l"}, base + 1)
    outcome = asyncio.run(process_event(refused, NoOrchestrations(), _validator(api)))
    assert outcome == Outcome(refused.event_id, reason="quota_exceeded")
    assert gate.entered == 0
    assert [(key, reason) for key, reason, _ in _state(api, tenant.id)[1]] == [("l", "quota_exceeded")]


def _execute(api: ApiHarness, tenant: str, intent_id: str, body: dict[str, Any], roles: list[str]) -> Any:
    api.client.app.dependency_overrides[get_durable_client] = TaskHub  # type: ignore[attr-defined]
    try:
        return api.client.post(f"/api/v1/intents/{intent_id}/execute", json=body, headers=api.headers(tenant, roles))
    finally:
        api.client.app.dependency_overrides.pop(get_durable_client, None)  # type: ignore[attr-defined]


def test_an_over_quota_caller_without_the_right_to_execute_is_refused_403_not_429(api: ApiHarness) -> None:
    # The quota is refused before the input's check, never before the decision: a caller refused learns nothing of
    # the tenant's load.
    tenant = api.provision("quota-reader", quotas={"max_concurrent_executions": 1})
    intent_id = _intent(api, "quota-reader")
    assert _execute(api, "quota-reader", intent_id, {"input": {}}, EXECUTOR).status_code == 202
    large = {"n": "v" * (check_gate.COSTLY_BYTES + 1)}
    for body in ({"input": {}}, {"input": large}):
        refused = _execute(api, "quota-reader", intent_id, body, READER)
        assert refused.status_code == 403, refused.text
    assert len(_state(api, tenant.id)[0]) == 1


def test_an_over_quota_executor_with_a_costly_input_is_refused_429_before_the_check_gate(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = _CountedGate()
    monkeypatch.setattr(check_gate, "get_check_gate", lambda: gate)
    tenant = api.provision("quota-api", quotas={"max_concurrent_executions": 1})
    intent_id = _intent(api, "quota-api")
    large = {"n": "v" * (check_gate.COSTLY_BYTES + 1)}
    # Within the quota, such an input takes its turn at the gate.
    assert _execute(api, "quota-api", intent_id, {"input": large}, EXECUTOR).status_code == 202
    assert gate.entered == 1
    refused = _execute(api, "quota-api", intent_id, {"input": large}, EXECUTOR)
    assert refused.status_code == 429, refused.text
    assert refused.json()["type"].endswith("/execution-quota"), refused.text
    assert gate.entered == 1
    assert len(_state(api, tenant.id)[0]) == 1


_UNREACHABLE_TASK_HUB = json.dumps(
    {
        "taskHubName": "unreachable",
        "creationUrls": {},
        "managementUrls": {},
        "baseUrl": "http://127.0.0.1:9/runtime/webhooks/durabletask",
        "requiredQueryStringParameters": "",
        "rpcBaseUrl": "http://127.0.0.1:9/",
        "httpBaseUrl": "http://127.0.0.1:9/",
        "maxGrpcMessageSizeInBytes": 0,
        "grpcHttpClientTimeout": "00:01:00",
    }
)


@pytest.mark.parametrize(
    ("retry", "said"), [(Retry(7, 8), "will be retried"), (Retry(8, 8), "left to the sweeper: execution")]
)
def test_the_trigger_reads_its_retry_policys_last_attempt(
    api: ApiHarness, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, retry: Retry, said: str
) -> None:
    # The function as the app registers it, run by the devhost with the retry context the host gives it; the task
    # hub cannot be reached, so the event's launch fails on every attempt. Its start committed: on the last attempt
    # it is left to the sweeper, neither dropped nor counted.
    from functions.eventhub_intent_requests import bp  # the functions package builds the gateway: needs settings

    monkeypatch.setattr(process, "get_token_validator", lambda: _validator(api))
    name = f"trigger-{uuid.uuid4().hex[:6]}"
    tenant = api.provision(name)
    intent_id = _intent(api, name)
    app = df.DFApp()
    app.register_functions(bp)
    (function,) = [f for f in app.get_functions() if f.get_function_name() == "intent_requests"]
    spec = EventHubTriggerSpec.from_function(function)
    body = json.dumps({"intent_id": intent_id, "input": {}, "idempotency_key": "t"}).encode()
    properties = {"authorization": f"Bearer {api.token(name, EXECUTOR)}"}
    sequence = _sequence()
    inputs, metadata = trigger_input(spec, 3, [StoredEvent(0, sequence, 0, None, body, properties, datetime.now(UTC))])
    invoker = Invoker(".")
    invoker.durable_binding = lambda: _UNREACHABLE_TASK_HUB
    with caplog.at_level(logging.INFO, logger="shared.ingress.process"), caplog.at_level(logging.INFO, "qp.telemetry"):
        with pytest.raises(FunctionInvocationError):
            asyncio.run(invoker.invoke(function, inputs, metadata, retry=retry))
    lines = [
        r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and r.name == "shared.ingress.process"
    ]
    assert len(lines) == 1, lines
    assert said in lines[0] and "dropped" not in lines[0], lines
    assert f"3/{sequence}" in lines[0]
    if retry.retry_count == retry.max_retry_count:
        assert str(tenant.id) in lines[0]
    counted = [
        r.getMessage()
        for r in caplog.records
        if r.getMessage().startswith(telemetry.PREFIX) and '"ingress.rejected"' in r.getMessage()
    ]
    assert counted == []
