# intent_ref: platform.hardening
"""Schema-driven fuzzing of every API operation in-process: no 5xx, no crash, problem+json errors, no leak."""

from __future__ import annotations

import itertools
import json
import math
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation.hypothesis.builder import HypothesisTestConfig, HypothesisTestMode, create_test

from shared.api.durable import get_durable_client
from shared.auth.principal import Requester
from shared.db.session import tenant_transaction
from shared.engine.executions import create_execution
from shared.engine.steps import AttemptKey
from shared.engine.task_tokens import issue
from tests.integration.api_harness import ALL_MODULES, ApiHarness
from tools.export_openapi import ROOT, render_openapi

pytestmark = pytest.mark.integration

# Fixed per operation and derandomized below, so a CI run sends the same requests as the run before it.
MAX_EXAMPLES = 60
TENANT_ROLES = [
    "Tenant.Admin",
    "Intent.Reader",
    "Intent.Author",
    "Intent.Executor",
    "Intent.Deployer",
    "Intent.Approver",
]
QUOTAS = {"requests_per_minute": 1_000_000, "burst": 100_000}
PROBLEM_JSON = "application/problem+json"
# A caller that can reach the operation most of the time, so bodies get past authorization to the validators.
PERSONAS = ["reach"] * 5 + ["reader", "other-tenant", "no-roles", "anonymous", "forged"]


def _live_operations() -> list[tuple[str, str]]:
    """Every (method, path) of the app object's own OpenAPI document (the one docs/openapi.json is written from)."""
    document = json.loads(render_openapi())
    return sorted((method.upper(), path) for path, item in document["paths"].items() for method in item)


OPERATIONS = _live_operations()


class FakeDurableClient:
    """Stands in for the Durable client binding the HTTP function hands over: no orchestration host runs
    in-process, so starts and events are accepted and forgotten."""

    async def start_new(self, _name: str, instance_id: str | None = None, _input: Any = None) -> str:
        return instance_id or str(uuid.uuid4())

    async def raise_event(self, *_args: Any, **_kwargs: Any) -> None:
        return None

    async def terminate(self, *_args: Any, **_kwargs: Any) -> None:
        return None

    async def get_status(self, *_args: Any, **_kwargs: Any) -> None:
        return None

    async def purge_instance_history(self, *_args: Any, **_kwargs: Any) -> Any:
        return type("Purged", (), {"instances_deleted": 0})()


@dataclass
class TenantWorld:
    """The real resources of one tenant, fed into path parameters and bodies."""

    name: str
    intent_id: str
    blueprint_id: str
    policy_id: str
    action: str
    execution_id: str
    task_token: str
    intent_etag: str
    blueprint_etag: str


@dataclass
class World:
    """Two working tenants (alpha is the caller's, beta another's), an operator tenant and spare tenants that
    the control-plane operations may suspend or erase without starving the rest of the run."""

    alpha: TenantWorld
    beta: TenantWorld
    spare_ids: list[str]
    spare_names: list[str]
    sent_foreign: dict[str, set[str]] = field(default_factory=lambda: {"alpha": set(), "beta": set()})
    """The other tenant's ids each tenant's callers sent: their own audit trail may name them back."""


def _ok(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


def _populate(api: ApiHarness, name: str) -> TenantWorld:
    """Create through the API what a tenant has: an intent, a blueprint, a policy, a remote module, an execution."""
    handle = api.provision(name, quotas=QUOTAS, allowed_modules=[*ALL_MODULES, "wait", f"{name}-worker.run"])
    headers = api.headers(name, TENANT_ROLES)
    intent = _ok(
        api.client.post(
            "/api/v1/intents",
            headers=headers,
            json={
                "name": f"{name}-fuzzed",
                "labels": {"team": name},
                "definition": {
                    "target": "staging",
                    "inputs": {"type": "object", "properties": {"version": {"type": "string"}}},
                    "steps": [{"id": "pause", "action": "wait", "seconds": 1}],
                },
            },
        ),
        201,
    )
    blueprint = _ok(
        api.client.post(
            "/api/v1/blueprints",
            headers=headers,
            json={
                "name": f"{name}-blueprint",
                "definition": {
                    "inputs": {"type": "object", "properties": {"version": {"type": "string"}}},
                    "steps": [{"id": "pause", "action": "wait", "seconds": 1}],
                },
            },
        ),
        201,
    )
    policy = _ok(
        api.client.post(
            "/api/v1/policies",
            headers=headers,
            json={
                "name": f"{name}-freeze",
                "policy": 'forbid (principal, action == QP::Action::"intent.execute", resource)'
                ' when { resource.labels.contains("freeze=true") };',
            },
        ),
        201,
    )
    action = f"{name}-worker.run"
    _ok(
        api.client.post(
            "/api/v1/modules",
            headers=headers,
            json={"action": action, "params_schema": {"type": "object", "properties": {"chart": {"type": "string"}}}},
        ),
        201,
    )
    started = api.client.post(
        f"/api/v1/intents/{intent['id']}/execute", headers=headers, json={"input": {"version": "1.2.3"}}
    )
    if started.status_code == 202:
        execution_id = started.json()["execution_id"]
    else:
        # The execute operation's own fuzzing reports why it failed; every other operation still gets a real
        # execution, written as the start path writes it.
        with tenant_transaction(handle.id) as conn:
            execution_id = str(
                create_execution(
                    conn,
                    execution_id=uuid.uuid4(),
                    intent_id=uuid.UUID(intent["id"]),
                    intent_version=1,
                    target="staging",
                    input={"version": "1.2.3"},
                    requester=Requester("fuzz", frozenset(), app_only=False),
                )[0].id
            )
    # A correctly signed token of an attempt that was never leased: it passes the signature check and meets the
    # attempt lookup, the deepest path a worker's report can take without an orchestration host.
    with tenant_transaction(handle.id) as conn:
        token = issue(conn, handle.id, AttemptKey(uuid.UUID(execution_id), "pause", "run", 1), 3600).token
    intent_etag = api.client.get(f"/api/v1/intents/{intent['id']}", headers=headers).headers.get("etag", "")
    blueprint_etag = api.client.get(f"/api/v1/blueprints/{blueprint['id']}", headers=headers).headers.get("etag", "")
    return TenantWorld(
        name, intent["id"], blueprint["id"], policy["id"], action, execution_id, token, intent_etag, blueprint_etag
    )


@pytest.fixture(scope="module")
def world(api: ApiHarness) -> Iterator[World]:
    app: Any = api.client.app
    app.dependency_overrides[get_durable_client] = FakeDurableClient
    api.provision("operator", quotas=QUOTAS)
    alpha, beta = _populate(api, "alpha"), _populate(api, "beta")
    spares = [api.provision(f"spare{n}", quotas=QUOTAS) for n in range(2)]
    yield World(alpha, beta, [str(s.id) for s in spares], [s.name for s in spares])
    app.dependency_overrides.pop(get_durable_client, None)


@pytest.fixture(scope="module")
def schema(api: ApiHarness, world: World) -> schemathesis.schemas.BaseSchema:
    """The OpenAPI document as the app under test serves it, bound to that app for in-process calls."""
    return schemathesis.openapi.from_asgi("/api/openapi.json", api.client.app)


def _real_path_values(world: World, path: str) -> dict[str, list[Any]]:
    """Real identifiers for each path parameter of `path`: alpha's (the caller's), beta's and the spares'."""
    tenants = [world.alpha, world.beta]
    item_ids = (
        [t.blueprint_id for t in tenants] if path.startswith("/api/v1/blueprints") else [t.intent_id for t in tenants]
    )
    return {
        "item_id": item_ids,
        "intent_id": [t.intent_id for t in tenants],
        "execution_id": [t.execution_id for t in tenants],
        "policy_id": [t.policy_id for t in tenants],
        "action": [t.action for t in tenants] + ["wait", "http.request"],
        "step_id": ["pause"],
        "number": [1, 2],
        "tenant_id": world.spare_ids,
    }


# Values a schema allows in spirit but a store, a parser or a regex engine may not: NUL, unpaired surrogates,
# bidi and non-characters, a long run, numbers past 64 bits, template and path syntax.
HOSTILE_TEXT = [
    "\x00",
    "a\x00b",
    "\ud800",
    "x\udfff",
    "\u202e\ufffe\uffff",
    "\U0010ffff" * 3,
    "z" * 70_000,
    "${steps.x.output}",
    "../../%2e%2e/",
    "\\u0000",
    "\r\n\t\x1b[0m",
]
HOSTILE_NUMBERS: list[Any] = [2**63, -(2**63) - 1, 2**128, 1e308, -0.0, 10**-400]


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], str]]:
    """Every place in a JSON value a hostile value can go: ("key", path) for object keys, ("value", path) else."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*path, key), "key"
            yield from _leaves(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, (*path, index))
    elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
        yield path, "value"


def _planted(value: Any, where: tuple[Any, ...], kind: str, k: int) -> Any:
    """`value` with the leaf or key at `where` replaced by the k-th hostile value of its kind."""
    if not where:
        if isinstance(value, str) or kind == "key":
            return str(value) + HOSTILE_TEXT[k % len(HOSTILE_TEXT)]
        return HOSTILE_NUMBERS[k % len(HOSTILE_NUMBERS)]
    head, rest = where[0], where[1:]
    if isinstance(value, dict):
        if not rest and kind == "key":
            return {(_planted(key, (), "key", k) if key == head else key): item for key, item in value.items()}
        return {key: (_planted(item, rest, kind, k) if key == head else item) for key, item in value.items()}
    return [_planted(item, rest, kind, k) if index == head else item for index, item in enumerate(value)]


def _plant(case: Any, k: int) -> None:
    """Put one hostile value (chosen by k, so the run is reproducible) into the body or the query of `case`."""
    spots = [("body", where, kind) for where, kind in _leaves(case.body)] if isinstance(case.body, (dict, list)) else []
    spots += [("query", (name,), "value") for name in (case.query or {})]
    if not spots:
        return
    container, where, kind = spots[k % len(spots)]
    if container == "body":
        case.body = _planted(case.body, where, kind, k // len(spots))
    else:
        # A URL cannot carry an unpaired surrogate at all, so the query gets the other values.
        sendable = [i for i, text in enumerate(HOSTILE_TEXT) if not any("\ud800" <= c <= "\udfff" for c in text)]
        case.query = _planted(case.query, where, kind, sendable[k // len(spots) % len(sendable)])


def _escaped_the_app(exc: BaseException) -> bool:
    """Whether an exception of a call came out of the app (a bare 500) rather than from the client refusing to
    send what it was given."""
    app_code = ("/starlette/", "/fastapi/", f"{ROOT}/shared/", f"{ROOT}/functions/")
    frames = traceback.extract_tb(exc.__traceback__)
    return any(any(part in frame.filename for part in app_code) for frame in frames)


def _seconds(value: Any) -> float | None:
    """A query value the long poll would read as seconds, whether generated as a number or as text."""
    if isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if math.isfinite(seconds) else None


def _authorization(api: ApiHarness, persona: str, path: str) -> dict[str, str]:
    control_plane = path.startswith("/api/v1/tenants")
    if persona == "reach":
        return api.headers("operator", ["Platform.Admin"]) if control_plane else api.headers("alpha", TENANT_ROLES)
    if persona == "reader":
        return api.headers("alpha", ["Intent.Reader"])
    if persona == "other-tenant":
        return api.headers("beta", TENANT_ROLES)
    if persona == "no-roles":
        return api.headers("alpha", [])
    if persona == "forged":
        return {"Authorization": "Bearer eyJhbGciOiJub25lIn0.eyJ0aWQiOiJ4In0."}
    return {}


@dataclass
class Finding:
    """One request that broke a rule, kept to report every class at the end instead of the first only."""

    rule: str
    status: int | None
    detail: str
    reproducer: str


def _reproducer(case: Any, headers: dict[str, str], persona: str) -> str:
    try:
        return f"as {persona}: {case.as_curl_command(headers=headers)}"
    except Exception as exc:  # a reproducer that cannot be rendered still names the case
        return f"{case!r} ({exc})"


def _caller_tenant(persona: str, path: str) -> str | None:
    if persona in ("anonymous", "forged") or path.startswith("/api/v1/tenants"):
        return None
    return "beta" if persona == "other-tenant" else "alpha"


def _leaks(world: World, tenant: str, case: Any, answer: str) -> list[str]:
    """Ids of the other tenant in an answer to `tenant` that none of its callers ever sent."""
    other = world.beta if tenant == "alpha" else world.alpha
    sent = f"{case.formatted_path} {case.query} {case.body!r}"
    foreign = [other.intent_id, other.blueprint_id, other.policy_id, other.execution_id, other.action]
    world.sent_foreign[tenant].update(i for i in foreign if i in sent)
    return [i for i in foreign if i in answer and i not in world.sent_foreign[tenant]]


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_hostile_input_gets_no_5xx_and_a_problem_for_every_error(
    api: ApiHarness, world: World, schema: Any, method: str, path: str
) -> None:
    operation = schema[path][method]
    real = _real_path_values(world, path)
    findings: list[Finding] = []
    # Which caller and which real ids a case gets is a function of its position in the (deterministic) sequence:
    # the coverage phase's cases cannot take extra Hypothesis draws.
    sequence = itertools.count()

    def probe(case: Any) -> None:
        n = next(sequence)
        # Every other case as generated, the others with one hostile value planted in an otherwise valid request.
        k, hostile = divmod(n, 2)
        persona = PERSONAS[k % len(PERSONAS)]
        for offset, name in enumerate(case.path_parameters or {}):
            if name in real and (k + offset) % 3 != 0:
                case.path_parameters[name] = real[name][(k // 3 + offset) % len(real[name])]
        if isinstance(case.body, dict):
            if "task_token" in case.body and k % 2 == 0:
                case.body["task_token"] = [world.alpha.task_token, world.beta.task_token][k // 2 % 2]
            if "confirm_name" in case.body and k % 2 == 0:
                case.body["confirm_name"] = world.spare_names[k // 2 % len(world.spare_names)]
        if case.headers and "if-match" in {h.lower() for h in case.headers} and k % 2 == 0:
            case.headers = {h: v for h, v in case.headers.items() if h.lower() != "if-match"}
            case.headers["If-Match"] = world.alpha.blueprint_etag if "blueprints" in path else world.alpha.intent_etag
        if hostile:
            _plant(case, k)
        wait = _seconds((case.query or {}).get("wait"))
        if wait is not None and 0 < wait <= 30:
            # A long poll's length is not input the server can mishandle, only time this bounded stage lacks.
            case.query["wait"] = wait / 30
        headers = _authorization(api, persona, path)
        try:
            response = case.call(headers=headers, timeout=60)
        except Exception as exc:  # escaped every handler: the server answers a bare 500
            if not _escaped_the_app(exc):
                return  # the client refused to send it, so no server ever sees such a request
            findings.append(
                Finding(
                    "unhandled exception (500)",
                    None,
                    f"{type(exc).__name__}: {exc}"[:500],
                    _reproducer(case, headers, persona),
                )
            )
            return
        status = response.status_code
        try:
            case.validate_response(response, checks=[not_a_server_error], headers=headers)
        except Exception as exc:  # recorded; the test fails on any finding after the run
            findings.append(
                Finding(
                    "not_a_server_error",
                    status,
                    f"{str(exc)[:300]} | {response.text[:300]}",
                    _reproducer(case, headers, persona),
                )
            )
        if status >= 400:
            content_type = response.headers.get("content-type", [""])[0]
            if content_type.split(";")[0].strip() != PROBLEM_JSON:
                findings.append(
                    Finding(
                        "problem+json",
                        status,
                        f"content-type {content_type!r}: {response.text[:300]}",
                        _reproducer(case, headers, persona),
                    )
                )
        tenant = _caller_tenant(persona, path)
        if tenant is not None:
            leaked = _leaks(world, tenant, case, response.text)
            if leaked:
                findings.append(
                    Finding("cross-tenant", status, f"answer names {leaked}", _reproducer(case, headers, persona))
                )

    run = create_test(
        operation=operation,
        test_func=probe,
        config=HypothesisTestConfig(
            project=schema.config,
            modes=[HypothesisTestMode.EXAMPLES, HypothesisTestMode.COVERAGE, HypothesisTestMode.FUZZING],
            settings=settings(
                max_examples=MAX_EXAMPLES,
                derandomize=True,
                database=None,
                deadline=None,
                phases=(Phase.explicit, Phase.generate),
                suppress_health_check=list(HealthCheck),
            ),
        ),
    )
    run()
    assert not findings, _summary(method, path, findings)


def _summary(method: str, path: str, findings: list[Finding]) -> str:
    """One line per class (rule, status, first words of the detail) with its first reproducer."""
    classes: dict[tuple[str, int | None, str], tuple[int, Finding]] = {}
    for finding in findings:
        key = (finding.rule, finding.status, finding.detail[:80])
        count, first = classes.get(key, (0, finding))
        classes[key] = (count + 1, first)
    lines = [f"{method} {path}: {len(findings)} finding(s) in {len(classes)} class(es)"]
    for (rule, status, _), (count, first) in classes.items():
        lines.append(f"- {rule} {status} x{count}: {first.detail}\n  {first.reproducer}")
    return "\n".join(lines)


def test_every_operation_of_the_live_app_is_fuzzed(schema: Any) -> None:
    served = sorted(
        (operation.method.upper(), operation.path)
        for operation in (result.ok() for result in schema.get_all_operations())
    )
    assert served == OPERATIONS
