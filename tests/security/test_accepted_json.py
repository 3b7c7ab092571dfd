# intent_ref: platform.hardening
"""Input the database cannot store is refused at the edge: 422/415 problem+json naming the field, nothing changed."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import threading
import tracemalloc
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared import accepted_json
from shared.api.durable import get_durable_client
from shared.api.security import token_validator
from shared.auth.tokens import TokenValidator
from shared.engine import task_tokens
from shared.ingress.process import process_batch, process_event
from shared.ingress.request import IngressEvent
from shared.registry.model import Definition
from tests.integration.api_harness import ApiHarness

pytestmark = pytest.mark.integration

ROLES = ["Tenant.Admin", "Intent.Reader", "Intent.Author", "Intent.Executor", "Intent.Deployer"]
MODULES = ["http", "wait", "event", "artifact", "approval", "intent", "verify-deployment"]
QUOTAS = {"requests_per_minute": 1_000_000, "burst": 100_000}
JSON_HEADERS = {"content-type": "application/json"}
TABLES = ("tenants", "intents", "intent_versions", "modules", "executions", "ingress_rejections")


class NoOrchestrations:
    """A refused request or event never reaches the orchestration client; any use fails the test."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the orchestration client was used: {name}")


@dataclass
class Started:
    """A durable client that only records what it was asked to start."""

    instances: list[str]

    async def start_new(self, _name: str, instance_id: str, _input: Any) -> str:
        self.instances.append(instance_id)
        return instance_id


@pytest.fixture(scope="module")
def tenant(api: ApiHarness) -> str:
    api.provision("hostile", allowed_modules=MODULES, quotas=QUOTAS)
    return "hostile"


@pytest.fixture(scope="module")
def intent_id(api: ApiHarness, tenant: str) -> str:
    response = api.client.post("/api/v1/intents", json=_intent("target-of-execute"), headers=_auth(api, tenant))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


@pytest.fixture()
def unchanged(api: ApiHarness) -> Iterator[None]:
    """Every table a refused request could have written is the same afterwards."""
    before = {table: api.table_snapshot(table) for table in TABLES}
    yield
    assert {table: api.table_snapshot(table) for table in TABLES} == before


def _auth(api: ApiHarness, tenant: str) -> dict[str, str]:
    return api.headers(tenant, ROLES)


def _intent(name: str, seconds: Any = 1) -> dict[str, Any]:
    return {"name": name, "definition": {"target": "staging", "steps": [{"action": "wait", "seconds": seconds}]}}


def _raw(document: Any) -> bytes:
    # allow_nan: the point is to send what a strict client never would.
    return json.dumps(document, allow_nan=True).encode()


def _problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["type"].startswith("https://")
    return body


def _pointers(response: Any, status: int = 422) -> list[str]:
    body = _problem(response, status)
    assert body["type"].endswith("/validation-error")
    return [error["pointer"] for error in body["errors"]]


# --- the named inputs, one per route family -------------------------------------------------------------------------


def test_intent_name_with_nul_is_422_at_name(api: ApiHarness, tenant: str, unchanged: None) -> None:
    body = _raw({**_intent("x"), "name": "bad\u0000name"})
    response = api.client.post("/api/v1/intents", content=body, headers={**JSON_HEADERS, **_auth(api, tenant)})
    assert _pointers(response) == ["/name"]
    assert "NUL" in response.json()["errors"][0]["detail"]


def test_nan_and_infinity_in_a_wait_steps_seconds_are_422(api: ApiHarness, tenant: str, unchanged: None) -> None:
    headers = {**JSON_HEADERS, **_auth(api, tenant)}
    for text in ("NaN", "Infinity", "-Infinity", "1e999"):
        body = _raw(_intent("waits")).replace(b'"seconds": 1', b'"seconds": ' + text.encode())
        assert text.encode() in body
        response = api.client.post("/api/v1/intents", content=body, headers=headers)
        assert _pointers(response) == ["/definition/steps/0/seconds"], text
        assert "finite" in response.json()["errors"][0]["detail"]
        assert response.json()["errors"][0]["code"] == "non_finite_number"


def test_execute_input_with_a_lone_surrogate_is_422(
    api: ApiHarness, tenant: str, intent_id: str, unchanged: None
) -> None:
    body = _raw({"input": {"version": "1.\ud800"}})
    assert b"\\ud800" in body  # sent escaped, the only way JSON can carry it
    response = api.client.post(
        f"/api/v1/intents/{intent_id}/execute", content=body, headers={**JSON_HEADERS, **_auth(api, tenant)}
    )
    assert _pointers(response) == ["/input/version"]
    assert "surrogate" in response.json()["errors"][0]["detail"]


def test_execute_without_a_body_still_starts(api: ApiHarness, tenant: str, intent_id: str) -> None:
    started = Started([])
    api.client.app.dependency_overrides[get_durable_client] = lambda: started  # type: ignore[attr-defined]
    try:
        response = api.client.post(f"/api/v1/intents/{intent_id}/execute", headers=_auth(api, tenant))
    finally:
        api.client.app.dependency_overrides.pop(get_durable_client)  # type: ignore[attr-defined]
    assert response.status_code == 202, response.text
    assert started.instances == [response.json()["execution_id"]]


def test_tenant_settings_with_a_nul_key_or_nan_value_are_422(api: ApiHarness, tenant: str, unchanged: None) -> None:
    headers = {**JSON_HEADERS, **_auth(api, tenant)}
    response = api.client.patch(
        "/api/v1/tenant", content=_raw({"settings": {"feature.\u0000x": True}}), headers=headers
    )
    assert _pointers(response) == ["/settings/feature.\\u0000x"]  # the NUL written out, so the answer is storable
    assert response.json()["errors"][0]["detail"].startswith("member name:")
    response = api.client.patch("/api/v1/tenant", content=_raw({"settings": {"retention": math.nan}}), headers=headers)
    assert _pointers(response) == ["/settings/retention"]


def test_module_description_with_nul_is_422(api: ApiHarness, tenant: str, unchanged: None) -> None:
    registration = {
        "action": "helm-upgrade",
        "description": "Helm\u0000",
        "timeout_s": 60,
        "params_schema": {"type": "object"},
    }
    response = api.client.post(
        "/api/v1/modules", content=_raw(registration), headers={**JSON_HEADERS, **_auth(api, tenant)}
    )
    assert _pointers(response) == ["/description"]


def test_duplicate_member_is_422_at_that_member(api: ApiHarness, tenant: str, unchanged: None) -> None:
    body = (
        b'{"name": "first", "name": "second", "definition": {"target": "staging", "steps": [{"action": "wait", '
        b'"seconds": 1, "seconds": 2}]}}'
    )
    response = api.client.post("/api/v1/intents", content=body, headers={**JSON_HEADERS, **_auth(api, tenant)})
    assert _pointers(response) == ["/name", "/definition/steps/0/seconds"]
    assert all(e["code"] == "duplicate_member" and "more than once" in e["detail"] for e in response.json()["errors"])


@pytest.mark.parametrize("depth", [accepted_json.MAX_DEPTH, 10_000])
def test_deep_nesting_is_a_clean_422(api: ApiHarness, tenant: str, depth: int, unchanged: None) -> None:
    body = b'{"name": "deep", "definition": ' + b'{"a": ' * depth + b"1" + b"}" * depth + b"}"
    response = api.client.post("/api/v1/intents", content=body, headers={**JSON_HEADERS, **_auth(api, tenant)})
    assert _pointers(response) == [""]
    assert response.json()["errors"][0]["code"] == "too_deep"
    assert f"deeper than {accepted_json.MAX_DEPTH}" in response.json()["errors"][0]["detail"]


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ('[["a]"], {"b": "{["}]', 2),
        ('["escaped \\" quote", ["x"]]', 2),
        ('"never closed [[[[', 0),  # brackets after an open quote are in the string: JSON could not parse it anyway
        ('[["a\\\\"]]', 2),
        ('[["a\\', 2),  # a text ending in a backslash inside an open string
        ("[" * 40 + "]" * 40, 40),
    ],
)
def test_nesting_is_counted_outside_strings(text: str, depth: int) -> None:
    assert accepted_json.nesting_depth(text) == depth


def test_a_body_of_escaped_quotes_never_closed_is_answered_without_holding_the_host(api: ApiHarness) -> None:
    # Each escaped quote could begin a string that the pattern then failed to close: quadratic in the body's length,
    # about 11 s for 64 KiB while the interpreter lock was held, so every thread of the host stopped with it. Bounded
    # by a join, not timed: the answer must come at all (it took the better part of an hour at the body limit).
    body = b'"' + b'\\"' * 400_000
    answers: list[Any] = []
    request = threading.Thread(
        target=lambda: answers.append(api.client.post("/api/v1/intents", content=body, headers=JSON_HEADERS)),
        daemon=True,
    )
    request.start()
    request.join(120)
    assert not request.is_alive() and answers
    assert 400 <= answers[0].status_code < 500
    assert answers[0].headers["content-type"] == "application/problem+json"


def test_nesting_at_the_limit_reaches_the_route(api: ApiHarness, tenant: str) -> None:
    # Exactly at the limit the edge lets it through, and the route itself answers (with its own pointer if any).
    inner = accepted_json.MAX_DEPTH - 2
    settings_value = '{"a": ' * inner + "1" + "}" * inner
    body = f'{{"settings": {{"deep": {settings_value}}}}}'.encode()
    assert accepted_json.nesting_depth(body.decode()) == accepted_json.MAX_DEPTH
    response = api.client.patch("/api/v1/tenant", content=body, headers={**JSON_HEADERS, **_auth(api, tenant)})
    assert response.status_code in (200, 422), response.text
    if response.status_code == 422:
        assert response.json()["errors"][0]["pointer"] != ""


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b'{"name": "caf\xe9"}', "not UTF-8"),
        (b'{"name": "\xed\xa0\x80"}', "not UTF-8"),  # a surrogate encoded as if it were a character
        (b'\xef\xbb\xbf{"name": "x"}', "byte order mark"),
        ('{"name": "x"}'.encode("utf-16"), "UTF-8"),
        (b'{"name": 1' + b"0" * 5000 + b"}", "integer is outside"),
        (b'{"name": 9223372036854775808}', "integer is outside"),
        (b'{"name": "x",}', "not JSON"),
    ],
)
def test_bytes_that_are_not_accepted_json_are_422(
    api: ApiHarness, tenant: str, body: bytes, detail: str, unchanged: None
) -> None:
    response = api.client.post("/api/v1/intents", content=body, headers={**JSON_HEADERS, **_auth(api, tenant)})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert detail in response.json()["errors"][0]["detail"]


def test_the_widest_bigint_is_accepted(api: ApiHarness, tenant: str) -> None:
    body = b'{"settings": {"lowest": -9223372036854775808, "highest": 9223372036854775807}}'
    response = api.client.patch("/api/v1/tenant", content=body, headers={**JSON_HEADERS, **_auth(api, tenant)})
    assert response.status_code == 200, response.text
    assert response.json()["settings"]["highest"] == 2**63 - 1


def test_what_the_platform_answers_it_accepts_back(api: ApiHarness, tenant: str) -> None:
    # jsonb stores 1e19 as a 20-digit numeric: read back as an integer it would be refused as one when sent again.
    body = {
        "name": "round-trip-of-a-large-float",
        "definition": {
            "target": "staging",
            "steps": [{"action": "artifact.write", "name": "n.json", "content": {"large": 1e19, "huge": -1.5e300}}],
        },
    }
    created = api.client.post("/api/v1/intents", json=body, headers=_auth(api, tenant))
    assert created.status_code == 201, created.text
    fetched = api.client.get(f"/api/v1/intents/{created.json()['id']}", headers=_auth(api, tenant))
    content = fetched.json()["definition"]["steps"][0]["params"]["content"]
    assert content == {"large": 1e19, "huge": -1.5e300}
    again = api.client.put(
        f"/api/v1/intents/{created.json()['id']}",
        json=fetched.json(),
        headers={**_auth(api, tenant), "If-Match": fetched.headers["etag"]},
    )
    assert again.status_code == 200, again.text


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonp",
        "json",
    ],
)
def test_a_body_that_is_not_json_is_415(
    api: ApiHarness, tenant: str, content_type: str | None, unchanged: None
) -> None:
    headers = _auth(api, tenant) | ({"content-type": content_type} if content_type else {})
    response = api.client.post("/api/v1/intents", content=_raw(_intent("typed")), headers=headers)
    body = _problem(response, 415)
    assert body["type"].endswith("/unsupported-media-type")


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "APPLICATION/JSON", "application/merge-patch+json"]
)
def test_json_media_types_are_accepted(api: ApiHarness, tenant: str, content_type: str) -> None:
    response = api.client.patch(
        "/api/v1/tenant",
        content=_raw({"settings": {"feature.typed": True}}),
        headers={**_auth(api, tenant), "content-type": content_type},
    )
    assert response.status_code == 200, response.text


def test_an_oversized_body_is_413_before_it_is_parsed(api: ApiHarness, tenant: str, unchanged: None) -> None:
    body = b"[" * (2 * 1024 * 1024) + b"]" * (2 * 1024 * 1024)
    response = api.client.post("/api/v1/intents", content=body, headers={**JSON_HEADERS, **_auth(api, tenant)})
    assert _problem(response, 413)["type"].endswith("/payload-too-large")


def test_a_streamed_oversized_body_is_413_too(api: ApiHarness, tenant: str, unchanged: None) -> None:
    chunk = b"[" * (256 * 1024)
    response = api.client.post(
        "/api/v1/intents", content=iter([chunk] * 8), headers={**JSON_HEADERS, **_auth(api, tenant)}
    )
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert _problem(response, 413)["type"].endswith("/payload-too-large")


# --- query, path and header text --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "pointer"),
    [
        ("/api/v1/intents?name_prefix=%00", "/query/name_prefix"),
        ("/api/v1/intents?name_prefix=%ED%A0%80", "/query/name_prefix"),
        ("/api/v1/intents?name_prefix=%FF", "/query/name_prefix"),
        ("/api/v1/intents?label=env:%00", "/query/label"),
        ("/api/v1/audit?action=%00", "/query/action"),
        ("/api/v1/modules?include_disallowed=%00", "/query/include_disallowed"),
        ("/api/v1/modules/%00", "/path/action"),
        ("/api/v1/modules/a%ED%A0%80", "/path/action"),
        ("/api/v1/intents/%00/versions", "/path/item_id"),
        ("/api/v1/intents?%00=1", "/query/\\u0000"),
    ],
)
def test_query_and_path_text_that_cannot_be_stored_is_422(api: ApiHarness, tenant: str, url: str, pointer: str) -> None:
    response = api.client.get(url, headers=_auth(api, tenant))
    assert _pointers(response) == [pointer]
    assert "\x00" not in response.json()["instance"]  # the path is echoed percent-encoded, never raw


def test_a_header_value_with_nul_is_422(api: ApiHarness, tenant: str, intent_id: str, unchanged: None) -> None:
    api.client.app.dependency_overrides[get_durable_client] = NoOrchestrations  # type: ignore[attr-defined]
    try:
        response = api.client.post(
            f"/api/v1/intents/{intent_id}/execute", headers={**_auth(api, tenant), "Idempotency-Key": "key\x00"}
        )
    finally:
        api.client.app.dependency_overrides.pop(get_durable_client)  # type: ignore[attr-defined]
    assert _pointers(response) == ["/header/idempotency-key"]


# --- task tokens ------------------------------------------------------------------------------------------------------


def _token(**claims: Any) -> str:
    base = {
        "t": str(uuid.uuid4()),
        "e": str(uuid.uuid4()),
        "s": "build",
        "p": "run",
        "a": 1,
        "n": "nonce",
        "x": 4_000_000_000,
    }
    payload = base64.urlsafe_b64encode(_raw({**base, **claims})).rstrip(b"=").decode()
    return f"{task_tokens.PREFIX}.{payload}.c2ln"


@pytest.mark.parametrize(
    "claims",
    [
        {"x": 10**30},
        {"x": 2**63},
        {"x": -1},
        {"x": True},
        {"x": 1.5},
        {"x": math.nan},
        {"x": math.inf},
        {"x": "1"},
        {"a": math.inf},
        {"a": 0},
        {"a": 2**40},
        {"a": False},
        {"e": 7},
        {"t": ["x"]},
        {"p": {"run": 1}},
    ],
)
def test_a_task_token_with_insane_claims_is_refused(claims: dict[str, Any]) -> None:
    with pytest.raises(task_tokens.InvalidTaskTokenError):
        task_tokens.read_claims(_token(**claims))


def test_a_deeply_nested_task_token_is_refused() -> None:
    payload = base64.urlsafe_b64encode(b"[" * 1400 + b"]" * 1400).rstrip(b"=").decode()
    with pytest.raises(task_tokens.InvalidTaskTokenError):
        task_tokens.read_claims(f"{task_tokens.PREFIX}.{payload}.c2ln")


@pytest.mark.parametrize("tail", ["\u202e\ufffe\uffff", "\u00e9"])
def test_a_task_token_with_text_beyond_ascii_is_refused_before_its_signature_is_compared(tail: str) -> None:
    # A non-ASCII signature reached hmac.compare_digest, which raises TypeError for it: a 500, not a 401.
    with pytest.raises(task_tokens.InvalidTaskTokenError):
        task_tokens.read_claims(_token() + tail)


def test_sane_claims_still_read() -> None:
    claims = task_tokens.read_claims(_token())
    assert claims.expires_at == datetime.fromtimestamp(4_000_000_000, UTC) and claims.key.attempt == 1


@pytest.mark.parametrize("claims", [{"x": 10**30}, {"x": math.nan}, {"a": math.inf}])
def test_an_overflowing_task_token_is_401_at_the_completion_route(
    api: ApiHarness, claims: dict[str, Any], unchanged: None
) -> None:
    api.client.app.dependency_overrides[get_durable_client] = NoOrchestrations  # type: ignore[attr-defined]
    try:
        response = api.client.post(
            f"/api/v1/executions/{uuid.uuid4()}/steps/build/complete",
            json={"task_token": _token(**claims), "output": {}},
        )
    finally:
        api.client.app.dependency_overrides.pop(get_durable_client)  # type: ignore[attr-defined]
    assert _problem(response, 401)["type"].endswith("/invalid-task-token")


# --- the intent-requests ingress --------------------------------------------------------------------------------------


def _event(api: ApiHarness, tenant: str, body: bytes, sequence: int) -> IngressEvent:
    return IngressEvent(
        body=body,
        partition_id="9",
        sequence_number=sequence,
        enqueued_time=datetime.now(UTC),
        properties={"authorization": f"Bearer {api.token(tenant, ROLES)}"},
    )


def _rejections(api: ApiHarness, tenant: str) -> list[dict[str, Any]]:
    with psycopg.connect(api.admin_url, dbname="quantum", row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute(
            "SELECT * FROM app.ingress_rejections WHERE tenant_id = %s ORDER BY sequence_number",
            (api.tenants[tenant].id,),
        ).fetchall()


INGRESS_CASES: list[tuple[bytes, str]] = [
    (b'{"intent": "target-of-execute", "input": {"seconds": NaN}, "idempotency_key": "k1"}', "/input/seconds"),
    (b'{"intent": "target-of-execute", "input": {"s": 1e999}, "idempotency_key": "k2"}', "/input/s"),
    (b'{"intent": "target-of-execute", "input": {}, "idempotency_key": "k\\u0000"}', "/idempotency_key"),
    (b'{"intent": "target-of-execute", "input": {"\\ud800": 1}, "idempotency_key": "k4"}', "/input/\\ud800"),
    (b'{"intent": "a", "intent": "b", "idempotency_key": "k5"}', "/intent"),
    (b'{"input": ' + b"[" * 10_000 + b"]" * 10_000 + b', "idempotency_key": "k6"}', ""),
    (b'{"intent": "\xff", "idempotency_key": "k7"}', ""),
]


def test_ingress_rejects_and_records_what_is_not_accepted_json(api: ApiHarness, tenant: str, intent_id: str) -> None:
    validator: TokenValidator = api.client.app.dependency_overrides[token_validator]()  # type: ignore[attr-defined]
    first = int(uuid.uuid4().int % 1_000_000) * 100
    events = [_event(api, tenant, body, first + index) for index, (body, _) in enumerate(INGRESS_CASES)]
    before = len(_rejections(api, tenant))
    # One batch: no bad event may fail the others (a raised batch would be redelivered forever).
    outcomes = asyncio.run(process_batch(events, NoOrchestrations(), validator))
    assert [outcome.reason for outcome in outcomes] == ["invalid"] * len(INGRESS_CASES)
    recorded = _rejections(api, tenant)[before:]
    assert [row["sequence_number"] for row in recorded] == [event.sequence_number for event in events]
    for row, (_, pointer) in zip(recorded, INGRESS_CASES, strict=True):
        assert row["reason"] == "invalid" and row["detail"]["status"] == 422
        assert row["detail"]["errors"][0]["pointer"] == pointer
    again = asyncio.run(process_event(events[0], NoOrchestrations(), validator))
    assert again.reason == "invalid" and len(_rejections(api, tenant)) == before + len(INGRESS_CASES)


# --- the registry model, whatever built it ----------------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [math.nan, math.inf, -math.inf])
def test_the_definition_model_refuses_non_finite_seconds(seconds: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        Definition.model_validate({"target": "staging", "steps": [{"action": "wait", "seconds": seconds}]})
    with pytest.raises(ValueError, match="finite"):
        Definition.model_validate(
            {
                "target": "staging",
                "steps": [
                    {"action": "wait", "seconds": 1, "compensate": {"action": "wait", "params": {"seconds": [seconds]}}}
                ],
            }
        )


# --- generated documents ----------------------------------------------------------------------------------------------


class _Raw:
    """Text written into a generated document as is: what json.dumps cannot produce."""

    def __init__(self, text: str) -> None:
        self.text = text


FORBIDDEN_VALUES = [
    _Raw("NaN"),
    _Raw("Infinity"),
    _Raw("-Infinity"),
    _Raw("1e999"),
    _Raw("-2e400"),
    _Raw("9" * 25),
    _Raw("-9223372036854775809"),
    "\u0000",
    "a\u0000b",
    "\ud800",
    "x\udfff",
    _Raw('"\\u0000"'),
    _Raw('"\\udbff"'),
]
FORBIDDEN_KEYS = ["\u0000", "k\ud800", "\udc00"]


def _dump(value: Any, duplicate: tuple[int, str] | None = None) -> str:
    """JSON text of `value`; the object whose id is `duplicate[0]` names its member `duplicate[1]` a second time."""
    if isinstance(value, _Raw):
        return value.text
    if isinstance(value, dict):
        members = [f"{json.dumps(k)}: {_dump(v, duplicate)}" for k, v in value.items()]
        if duplicate is not None and id(value) == duplicate[0]:
            members.append(f"{json.dumps(duplicate[1])}: 2")
        return "{" + ", ".join(members) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_dump(v, duplicate) for v in value) + "]"
    return json.dumps(value)


_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=6)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text
)
_documents = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_text, children, max_size=4),
    max_leaves=20,
)


@st.composite
def _hostile(draw: st.DrawFn) -> tuple[str, str]:
    """A JSON text with one forbidden element somewhere, and the pointer of where it is."""
    document: Any = {"settings": draw(st.dictionaries(_text, _documents, max_size=4))}
    at: Any = document
    pointer = ""
    while True:  # down to a random container, where the bad element goes
        children = [k for k, v in (at.items() if isinstance(at, dict) else enumerate(at)) if isinstance(v, dict | list)]
        if not children or draw(st.booleans()):
            break
        key = draw(st.sampled_from(children))
        pointer += "/" + accepted_json.pointer_token(str(key))
        at = at[key]
    if isinstance(at, list):
        at.append(draw(st.sampled_from(FORBIDDEN_VALUES)))
        return _dump(document), f"{pointer}/{len(at) - 1}"
    kind = draw(st.sampled_from(["value", "key", "duplicate"]))
    if kind == "key":
        name = draw(st.sampled_from(FORBIDDEN_KEYS))
        at[name] = draw(_scalars)
        return _dump(document), f"{pointer}/{accepted_json.pointer_token(name)}"
    name = draw(_text.filter(lambda n: n not in at))
    if kind == "value":
        at[name] = draw(st.sampled_from(FORBIDDEN_VALUES))
        return _dump(document), f"{pointer}/{accepted_json.pointer_token(name)}"
    at[name] = draw(_scalars)
    return _dump(document, (id(at), name)), f"{pointer}/{accepted_json.pointer_token(name)}"


ROUTES = [
    ("PATCH", "/api/v1/tenant"),
    ("POST", "/api/v1/intents"),
    ("POST", "/api/v1/modules"),
    ("POST", "/api/v1/intents/validate"),
    ("PUT", f"/api/v1/intents/{uuid.UUID(int=1)}"),
]


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=_hostile(), route=st.sampled_from(ROUTES))
def test_generated_documents_with_a_forbidden_element_are_422_there(
    api: ApiHarness, tenant: str, case: tuple[str, str], route: tuple[str, str]
) -> None:
    text, pointer = case
    body = text.encode("utf-8", "surrogatepass")
    response = api.client.request(route[0], route[1], content=body, headers={**JSON_HEADERS, **_auth(api, tenant)})
    assert response.status_code < 500
    assert pointer in _pointers(response), (text, pointer)


def test_a_long_member_name_over_many_members_costs_its_own_size_once_and_refusals_still_name_it() -> None:
    # Each member's pointer was built as it was pushed, so a 40,000-character name above 5,000 members was held
    # 5,000 times at once (200 MB for a 200 KB body); pointers are now built only for what is refused.
    name = "k/~" * 13_334
    document = {"junk": {name: {f"a{index}": 0 for index in range(5_000)} | {"bad": "x\x00"}}}
    tracemalloc.start()
    try:
        found = accepted_json.refusals(document)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [(refusal.pointer, refusal.code) for refusal in found] == [
        ("/junk/" + name.replace("~", "~0").replace("/", "~1") + "/bad", accepted_json.UNSTORABLE_TEXT)
    ]
    assert peak < 20 * len(name) * 4  # a few copies of the name at most, not one per member below it


# --- numbers that Postgres writes out longer than they were sent ----------------------------------------------------

_FLOATS = [
    *(1e300, -1.5e300, 1.5e-300, 2.5e-7, 6.02e23, 1e16, 1e22),
    *(0.5, 123.45, 100.0, -0.001, 5e-324, 1.7976931348623157e308),
]


def test_the_stored_length_of_a_number_is_what_postgres_writes_out(pg: Any) -> None:
    with psycopg.connect(pg.admin_url) as conn:
        for value in _FLOATS:
            # What the app sends (json.dumps writes a float as its repr), then what jsonb gives back.
            (written,) = conn.execute("SELECT (%s::jsonb)::text", (json.dumps(value),)).fetchone()  # type: ignore[misc]
            assert accepted_json.stored_number_length(value) == len(written), (value, written[:40])


def test_a_body_of_numbers_written_out_in_full_is_refused_before_anything_is_stored(
    api: ApiHarness, tenant: str, intent_id: str, unchanged: None
) -> None:
    # 30 KB sent; 2.4 MB read back on every read of the execution's input, and 60 MB of a 1 MiB body.
    body = json.dumps({"input": {"values": [1e300] * 6000}}).encode()
    response = api.client.post(
        f"/api/v1/intents/{intent_id}/execute", content=body, headers={**JSON_HEADERS, **_auth(api, tenant)}
    )
    problem = _problem(response, 422)
    [error] = problem["errors"]
    assert error["code"] == accepted_json.NUMBERS_TOO_LONG and error["pointer"] == ""
    assert "1e300 as 301 digits" in error["detail"]


def test_a_few_large_exponents_and_ordinary_measurements_are_accepted() -> None:
    # A handful of extreme values fit the slack; a long list of small measurements grows less than 4 times.
    assert accepted_json.loads(json.dumps({"limits": [1e300, -1.5e-300, 1e-30]}).encode())["limits"][0] == 1e300
    measurements = [round(i * 1.234e-9, 15) for i in range(1, 50_000)]
    assert len(accepted_json.loads(json.dumps(measurements).encode())) == len(measurements)
