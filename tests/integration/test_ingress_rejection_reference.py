# intent_ref: platform.ingress
"""What the tenant reads of a rejected intent-requests event (the problem document, its audit records) names the
request by a reference of its own, never by the event's Event Hubs sequence number, whose gaps count the other
producers' events on the partition; the log still ties the two together for operators."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from shared.ingress.process import reference_of
from shared.ingress.request import INTENT_REQUESTS_HUB, IngressEvent
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_ingress_rejections import _intent, _list, _send

pytestmark = pytest.mark.integration

READER = ["Intent.Reader"]
EXECUTOR = ["Intent.Executor"]


def _sequence() -> int:
    # Distinctive digits, so finding them anywhere in a record means the sequence number is there.
    return 7_300_000_000 + int(uuid.uuid4().int % 1_000_000)


def test_a_rejection_names_the_request_by_its_own_id(api: ApiHarness, caplog: pytest.LogCaptureFixture) -> None:
    api.provision("seq-hidden")
    sequence = _sequence()
    with caplog.at_level(logging.INFO, logger="shared.ingress.process"):
        outcome = _send(api, "seq-hidden", EXECUTOR, {"intent": "nope", "idempotency_key": "k"}, sequence)
    assert outcome.reason == "not_found"
    [item] = _list(api, "seq-hidden")["items"]
    detail = item["detail"]
    assert detail["instance"] == f"intent-requests/{item['id']}"
    assert str(sequence) not in json.dumps(detail)
    # Operators find the event's place on the hub from the request's reference in the log.
    assert any(str(sequence) in r.getMessage() and item["id"] in r.getMessage() for r in caplog.records)


def test_the_audit_records_of_an_event_name_no_sequence_number(api: ApiHarness) -> None:
    api.provision("seq-audit")
    intent_id = _intent(api, "seq-audit")
    sequence = _sequence()
    # A Reader may not execute: the decision is audited, and the event rejected as forbidden.
    outcome = _send(api, "seq-audit", READER, {"intent_id": intent_id, "idempotency_key": "k"}, sequence)
    assert outcome.reason == "forbidden"
    [item] = _list(api, "seq-audit")["items"]
    decisions = [row for row in api.audit_rows("seq-audit") if row["decision"] == "deny"]
    assert decisions
    for row in decisions:
        assert str(sequence) not in f"{row['request_id']} {json.dumps(row['detail'])}"
        assert row["request_id"] == item["detail"]["instance"]


def test_a_redelivered_event_keeps_one_reference_across_its_rejection_and_audit_records(api: ApiHarness) -> None:
    # Delivery is at least once: the rejection is recorded once (the first delivery's), so every delivery's audit
    # records must name that same reference, or they point at a rejection that does not exist.
    api.provision("seq-again")
    intent_id = _intent(api, "seq-again")
    sequence, enqueued = _sequence(), datetime.now(UTC)  # a redelivery is the same event: its place and its stamp
    for _ in range(2):
        outcome = _send(api, "seq-again", READER, {"intent_id": intent_id, "idempotency_key": "k"}, sequence, enqueued)
        assert outcome.reason == "forbidden"
    [item] = _list(api, "seq-again")["items"]
    assert item["detail"]["instance"] == f"intent-requests/{item['id']}"
    decisions = [row for row in api.audit_rows("seq-again") if row["decision"] == "deny"]
    # A recorded rejection is final: the redelivery answers it without deciding again, so nothing is audited twice.
    assert len(decisions) == 1
    assert {row["request_id"] for row in decisions} == {item["detail"]["instance"]}


_STAMP = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def _event(partition: str, sequence: int, enqueued_time: datetime | None = _STAMP) -> IngressEvent:
    return IngressEvent(
        body=b"{}", partition_id=partition, sequence_number=sequence, enqueued_time=enqueued_time, properties={}
    )


def test_the_reference_is_a_keyed_hash_of_the_events_place() -> None:
    sequence = _sequence()
    first = reference_of(_event("1", sequence))
    # Every delivery of one event (its place and the hub's stamp, in whatever zone it is given) has one reference.
    assert reference_of(_event("1", sequence, _STAMP.astimezone(timezone(timedelta(hours=2))))) == first
    assert len({first, reference_of(_event("1", sequence + 1)), reference_of(_event("2", sequence))}) == 3
    # A new event at an old one's place (a hub recreated numbers its events from the start again) has its own: with
    # the old one's, its rejection would be recorded under the old event's id.
    later = {
        reference_of(_event("1", sequence, _STAMP + timedelta(microseconds=1))),
        reference_of(_event("1", sequence, None)),
    }
    assert len(later | {first}) == 3
    assert first.version == 4 and first.variant == uuid.RFC_4122
    # Not a public function of the place: without the server's key, nobody can recompute it from a sequence number.
    place = f"{INTENT_REQUESTS_HUB}/1/{sequence}"
    assert first not in {uuid.uuid5(namespace, place) for namespace in (uuid.NAMESPACE_URL, uuid.NAMESPACE_OID)}
