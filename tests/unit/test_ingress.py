# intent_ref: platform.ingress
"""The intent-requests ingress without I/O: the body model, and the token judged at the event's enqueued time."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio.to_thread
import pytest
from pydantic import ValidationError

from devhost.identity import DEFAULT_AUDIENCE, SigningKey, sign_access_token
from shared import telemetry
from shared.accepted_json import MAX_REFUSALS, NotAcceptedJSONError, Refusal
from shared.auth.principal import INTENT_EXECUTOR
from shared.auth.tokens import InvalidTokenError, TokenValidator
from shared.engine.start import InvalidInputError
from shared.ingress import process
from shared.ingress.process import UNATTRIBUTED, is_final_attempt, process_event
from shared.ingress.rejecting import invalid_body, not_accepted, refused_start
from shared.ingress.rejections import MAX_DETAIL_BYTES, bounded_detail
from shared.ingress.request import IngressEvent, IntentRequest, TooManyMembersError, from_trigger
from shared.ingress.verify import MAX_EVENT_AGE, StaleEventError, check_fresh, verify_token
from shared.registry.schema_refs import MAX_MESSAGE_LENGTH
from tests.unit.test_token_validation import BASE_URL, CONTOSO, FakeIdentityProvider

KEY = "order-4711"


# -- the body --------------------------------------------------------------------------------------------------------


def test_a_request_names_its_intent_by_id_or_by_name_and_carries_a_key() -> None:
    intent_id = uuid.uuid4()
    by_id = IntentRequest.parse(
        json.dumps({"intent_id": str(intent_id), "input": {"v": "1"}, "version": 2, "idempotency_key": KEY}).encode()
    )
    assert (by_id.intent_id, by_id.input, by_id.version, by_id.idempotency_key) == (intent_id, {"v": "1"}, 2, KEY)
    by_name = IntentRequest.parse(b'{"intent": "deploy-web-app", "idempotency_key": "k"}')
    assert by_name.intent == "deploy-web-app" and by_name.intent_id is None and by_name.input == {}


@pytest.mark.parametrize(
    "body",
    [
        {"intent": "deploy-web-app"},  # no idempotency key: a redelivery would start a second execution
        {"intent": "deploy-web-app", "idempotency_key": ""},
        {"idempotency_key": KEY},  # no intent
        {"intent": "deploy-web-app", "intent_id": str(uuid.uuid4()), "idempotency_key": KEY},  # both
        {"intent": "deploy-web-app", "idempotency_key": KEY, "tenant_id": str(uuid.uuid4())},  # extra: never trusted
        {"intent": "Deploy Web App", "idempotency_key": KEY},
        {"intent": "deploy-web-app", "idempotency_key": KEY, "version": 0},
        {"intent": "deploy-web-app", "idempotency_key": KEY, "version": True},  # not version 1
        {"intent": "deploy-web-app", "idempotency_key": KEY, "version": "1"},
        {"intent": "deploy-web-app", "idempotency_key": KEY, "version": 1.0},
        {"intent": "deploy-web-app", "idempotency_key": KEY, "plan_hash": "abc"},
        {"intent": "deploy-web-app", "idempotency_key": KEY, "input": [1]},
        {"intent_id": "not-a-uuid", "idempotency_key": KEY},
    ],
)
def test_a_malformed_body_is_refused(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        IntentRequest.parse(json.dumps(body).encode())


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1, 2]", b"\xff\xfe"])
def test_a_body_that_is_not_a_json_object_is_refused(raw: bytes) -> None:
    with pytest.raises(ValueError):
        IntentRequest.parse(raw)


# -- the rejection of a hostile body: bounded to judge and to store ----------------------------------------------------


def unknown_members(size: int = 1_000_000) -> tuple[bytes, int]:
    """A body of about `size` bytes that is mostly members a request does not have, and how many of those it has."""
    members = ['"intent":"x"', '"idempotency_key":"k"']
    length = 40
    while length < size:
        members.append(f'"{len(members):x}":0')
        length += len(members[-1]) + 1
    return ("{" + ",".join(members) + "}").encode(), len(members) - 2


def _text_bytes(document: Any) -> int:
    return len(json.dumps(document, ensure_ascii=False).encode())


def test_a_body_of_a_hundred_thousand_unknown_members_is_judged_and_refused_by_its_first_few() -> None:
    body, unknown = unknown_members()
    assert unknown > 100_000
    with pytest.raises(TooManyMembersError) as caught:
        IntentRequest.parse(body)
    # Pydantic judged only the first few (an error object for each of the others was the second an event took).
    assert caught.value.total == unknown
    assert caught.value.validation.error_count() == MAX_REFUSALS
    document = invalid_body(caught.value).document("intent-requests/0/1")
    assert document["detail"] == f"{unknown} invalid field(s), the first {MAX_REFUSALS} listed"
    assert document["errors"] == [
        {"pointer": f"/{n:x}", "detail": "Extra inputs are not permitted"} for n in range(2, 2 + MAX_REFUSALS)
    ]
    assert _text_bytes(document) < 4096


def test_a_few_unknown_members_are_each_named_as_before() -> None:
    with pytest.raises(ValidationError) as caught:
        IntentRequest.parse(json.dumps({"intent": "x", "idempotency_key": KEY, "a": 1, "b": 2}).encode())
    document = invalid_body(caught.value).document("i")
    assert document["detail"] == "2 invalid field(s)"
    assert [error["pointer"] for error in document["errors"]] == ["/a", "/b"]


def test_a_pointer_or_message_as_long_as_the_event_is_shortened_in_the_rejection() -> None:
    name = "m" * 900_000
    with pytest.raises(ValidationError) as caught:
        IntentRequest.parse(json.dumps({"intent": "x", "idempotency_key": KEY, name: 0}).encode())
    (error,) = invalid_body(caught.value).document("i")["errors"]
    assert len(error["pointer"]) == MAX_MESSAGE_LENGTH and error["pointer"].startswith("/mmm")

    refused = not_accepted(NotAcceptedJSONError([Refusal(f"/{name}", f"NUL {name}", "unstorable_text")] * 3))
    cut = MAX_MESSAGE_LENGTH - 3
    shortened = {"pointer": f"/{name}"[:cut] + "...", "detail": f"NUL {name}"[:cut] + "...", "code": "unstorable_text"}
    assert refused.extensions["errors"] == [shortened] * 3
    invalid = refused_start(InvalidInputError([{"pointer": f"/input/{name}", "detail": "not a string"}]))
    assert invalid is not None
    assert [len(e["pointer"]) for e in invalid.extensions["errors"]] == [MAX_MESSAGE_LENGTH]
    assert _text_bytes(invalid.document("i")) < 4096


def test_a_stored_problem_document_over_the_bound_is_kept_as_its_summary() -> None:
    small = {"type": "t", "title": "Conflict", "status": 409, "instance": "intent-requests/1/2", "reason": "x"}
    assert bounded_detail(small) is small
    large = {
        **small,
        "detail": "2 problems",
        "errors": [{"pointer": f"/{n}", "detail": "é" * 300} for n in range(1000)],
        "violations": ["x"],
    }
    summary = bounded_detail(large)
    assert _text_bytes(summary) <= MAX_DETAIL_BYTES
    assert summary == {
        **small,
        "detail": summary["detail"],
        "truncated": True,
    }
    assert summary["detail"].startswith(f"The problem document was {_text_bytes(large)} bytes")
    assert summary["detail"].endswith(" 2 problems")


# -- the token, judged when the hub accepted the event -----------------------------------------------------------------


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> SigningKey:
    return SigningKey.load_or_create(tmp_path_factory.mktemp("ingress-key"))


@pytest.fixture
def validator(key: SigningKey) -> TokenValidator:
    idp = FakeIdentityProvider([key])
    return TokenValidator(idp.metadata_url, DEFAULT_AUDIENCE, fetch=idp.fetch)


def _token(key: SigningKey, issued: datetime, lifetime: timedelta = timedelta(hours=1)) -> str:
    start = int(issued.timestamp())
    return sign_access_token(
        key,
        tenant="contoso",
        base_url=BASE_URL,
        roles=[INTENT_EXECUTOR],
        extra_claims={"iat": start, "nbf": start, "exp": start + int(lifetime.total_seconds())},
    )


def _event(token: str | None, enqueued: datetime | None, body: bytes = b"{}") -> IngressEvent:
    properties = {} if token is None else {"authorization": f"Bearer {token}"}
    return IngressEvent(body=body, partition_id="0", sequence_number=7, enqueued_time=enqueued, properties=properties)


def test_a_token_expired_now_but_valid_when_enqueued_is_accepted(key: SigningKey, validator: TokenValidator) -> None:
    now = datetime.now(UTC)
    issued = now - timedelta(hours=3)
    token = _token(key, issued)  # expired two hours ago
    with pytest.raises(InvalidTokenError, match="token expired"):
        validator.validate(token)  # judged now, as the API judges it
    verified = verify_token(_event(token, issued + timedelta(minutes=30)), validator, now=now)
    assert verified.entra_tenant_id == CONTOSO
    check_fresh(_event(token, issued + timedelta(minutes=30)), now)  # three hours old: not stale


def test_a_token_already_expired_when_enqueued_is_refused(key: SigningKey, validator: TokenValidator) -> None:
    now = datetime.now(UTC)
    issued = now - timedelta(hours=3)
    with pytest.raises(InvalidTokenError, match="token expired"):
        verify_token(_event(_token(key, issued), issued + timedelta(hours=2)), validator, now=now)


def test_a_token_not_yet_valid_when_enqueued_is_refused(key: SigningKey, validator: TokenValidator) -> None:
    now = datetime.now(UTC)
    token = _token(key, now - timedelta(minutes=10))
    with pytest.raises(InvalidTokenError, match="not yet valid"):
        verify_token(_event(token, now - timedelta(minutes=20)), validator, now=now)


def test_an_enqueued_time_ahead_of_the_clock_gains_nothing(key: SigningKey, validator: TokenValidator) -> None:
    now = datetime.now(UTC)
    token = _token(key, now - timedelta(hours=2))  # expired an hour ago
    with pytest.raises(InvalidTokenError, match="token expired"):
        verify_token(_event(token, now + timedelta(days=1)), validator, now=now)


def test_an_event_enqueued_more_than_a_day_ago_is_stale(key: SigningKey, validator: TokenValidator) -> None:
    now = datetime.now(UTC)
    enqueued = now - MAX_EVENT_AGE - timedelta(minutes=1)
    token = _token(key, enqueued - timedelta(minutes=5))
    verify_token(_event(token, enqueued), validator, now=now)  # the token itself was fine then
    with pytest.raises(StaleEventError):
        check_fresh(_event(token, enqueued), now)
    check_fresh(_event(token, now - MAX_EVENT_AGE + timedelta(minutes=1)), now)


def test_a_forged_signature_is_refused(
    key: SigningKey, validator: TokenValidator, tmp_path_factory: pytest.TempPathFactory
) -> None:
    now = datetime.now(UTC)
    attacker = SigningKey.load_or_create(tmp_path_factory.mktemp("attacker"))
    forged = _token(attacker, now - timedelta(minutes=1))
    header, payload, _ = forged.split(".")
    genuine_signature = _token(key, now - timedelta(minutes=1)).split(".")[2]
    for token in (forged, f"{header}.{payload}.{genuine_signature}"):
        with pytest.raises(InvalidTokenError):
            verify_token(_event(token, now), validator, now=now)


@pytest.mark.parametrize("authorization", [None, "", "Basic abc", "Bearer", "Bearer a b"])
def test_an_event_without_a_bearer_token_is_refused(validator: TokenValidator, authorization: str | None) -> None:
    event = IngressEvent(
        body=b"{}",
        partition_id="0",
        sequence_number=1,
        enqueued_time=datetime.now(UTC),
        properties={} if authorization is None else {"Authorization": authorization},
    )
    with pytest.raises(InvalidTokenError, match="missing bearer token"):
        verify_token(event, validator, now=datetime.now(UTC))


def test_an_unattributed_rejection_is_telemetry_only(
    validator: TokenValidator, caplog: pytest.LogCaptureFixture
) -> None:
    # No client, no database: an event whose sender is unknown touches neither.
    event = _event(None, datetime.now(UTC), b'{"intent": "x", "idempotency_key": "k"}')
    with caplog.at_level(logging.INFO, logger="qp.telemetry"):
        outcome = asyncio.run(process_event(event, client=None, validator=validator))
    assert outcome.reason == "unauthenticated" and outcome.execution_id is None
    lines = [
        json.loads(r.getMessage()[len(telemetry.PREFIX) :])
        for r in caplog.records
        if r.getMessage().startswith(telemetry.PREFIX)
    ]
    assert lines == [
        {
            "event": "ingress.rejected",
            "tenant_id": UNATTRIBUTED,
            "reason": "unauthenticated",
            "event_id": "0/7",
            "detail": "missing bearer token",
        }
    ]


class _TriggerEvent:
    """The shape azure.functions.EventHubEvent has for a `cardinality many` batch."""

    def __init__(self, body: bytes, sequence: int, metadata: dict[str, Any]) -> None:
        self._body, self.sequence_number, self.metadata = body, sequence, metadata
        self.enqueued_time = datetime(2025, 1, 5, 9, 30, tzinfo=UTC)

    def get_body(self) -> bytes:
        return self._body


def test_trigger_events_keep_their_own_properties_and_partition() -> None:
    metadata = {
        "PartitionContext": {"PartitionId": "3"},
        "PropertiesArray": [{"authorization": "Bearer a"}, {"authorization": "Bearer b"}],
    }
    events = from_trigger([_TriggerEvent(b"1", 10, metadata), _TriggerEvent(b"2", 11, metadata)])
    assert [(e.event_id, e.authorization, e.body) for e in events] == [
        ("3/10", "Bearer a", b"1"),
        ("3/11", "Bearer b", b"2"),
    ]


@pytest.mark.parametrize(
    ("retry_count", "max_retry_count", "final"),
    [(0, 8, False), (7, 8, False), (8, 8, True), (0, 0, True), (5, -1, False)],
)
def test_the_last_attempt_is_the_one_the_retry_policy_retries_no_more(
    retry_count: int, max_retry_count: int, final: bool
) -> None:
    assert is_final_attempt(retry_count, max_retry_count) is final


def test_event_loops_on_two_threads_both_finish_their_tenants_parses() -> None:
    # One limiter per tenant shared by every loop: a loop's waiter woken from another loop's thread was never
    # resumed, and process_batch run on a few threads, each with its own loop, hung.
    tenant_id = uuid.uuid4()
    body = json.dumps({"intent": "deploy-web-app", "input": {"a": ["x"] * 2000}, "idempotency_key": KEY}).encode()
    finished: list[int] = []
    failures: list[BaseException] = []

    async def parses() -> int:
        async def one() -> None:
            await anyio.to_thread.run_sync(process._read, body, limiter=process._tenant_parses(tenant_id))

        await asyncio.wait_for(asyncio.gather(*(one() for _ in range(40))), timeout=60)
        return 40

    def run() -> None:
        try:
            finished.append(asyncio.run(parses()))
        except BaseException as exc:  # reported below, not lost on the thread
            failures.append(exc)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures, failures
    assert finished == [40, 40]
