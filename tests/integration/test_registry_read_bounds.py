# intent_ref: platform.registry
"""Registry reads bounded by what they answer, not by what a tenant stored: a plan reads each child intent's version
once however many steps run it, a page of versions holds about a MiB of definitions whatever its `limit`, and a
definition is held to its byte limit as it is stored, so what saves also plans.

Each bound is proven by counting version reads or answer bytes, never by timing."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import pytest

from shared.db.session import tenant_transaction
from shared.registry import repository, service
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_registry_api import AUTHOR, BLUEPRINTS, INTENTS, READER, ROOMY, problem, registry_tables

pytestmark = pytest.mark.integration

DEPLOYER = ["Intent.Deployer"]
WAIT = {"id": "only", "action": "wait", "seconds": 1}


def _json_headers(api: ApiHarness, tenant: str) -> dict[str, str]:
    return {**api.headers(tenant, AUTHOR), "Content-Type": "application/json"}


def _blueprint(api: ApiHarness, tenant: str) -> None:
    body = {"name": "bp", "definition": {"steps": [WAIT]}}
    response = api.client.post(BLUEPRINTS, json=body, headers=api.headers(tenant, AUTHOR))
    assert response.status_code == 201, response.text


def _large_text(name: str, mark: int = 0) -> bytes:
    """A declaration of about 240 KB (80,000 empty arrays) as a request body: a costly version to read."""
    text = f'{{"name": "{name}", "definition": {{"blueprint": "bp", "target": "staging", "v": {mark}, "junk": ['
    return (text + ",".join(["[]"] * 80_000) + "]}}").encode()


def _large_declaration(api: ApiHarness, tenant: str, name: str) -> str:
    """A new declaration of about 240 KB (`_large_text`)."""
    response = api.client.post(INTENTS, content=_large_text(name), headers=_json_headers(api, tenant))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _intent(api: ApiHarness, tenant: str, name: str, steps: list[dict[str, Any]]) -> str:
    body = {"name": name, "definition": {"target": "staging", "steps": steps}}
    response = api.client.post(INTENTS, json=body, headers=api.headers(tenant, AUTHOR))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _runs(count: int, intent: str, **params: Any) -> list[dict[str, Any]]:
    return [{"id": f"s{k}", "action": "intent.run", "intent": intent, "depends_on": [], **params} for k in range(count)]


@pytest.fixture()
def version_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The numbers of the versions the registry's service reads whole (definition included) from here on."""
    seen: list[int] = []
    original = repository.get_version

    def counting(conn: Any, kind: Any, item_id: Any, number: int) -> Any:
        seen.append(number)
        return original(conn, kind, item_id, number)

    monkeypatch.setattr(service, "get_version", counting)
    return seen


def _plan(api: ApiHarness, tenant: str, item: str, roles: list[str]) -> dict[str, Any]:
    response = api.client.post(f"{INTENTS}/{item}/plan", headers=api.headers(tenant, roles))
    assert response.status_code == 200, response.text
    plan: dict[str, Any] = response.json()
    return plan


def test_a_plan_reads_a_child_once_however_many_steps_run_it(api: ApiHarness, version_reads: list[int]) -> None:
    """200 steps run one 240 KB child: a Reader's plan reads the root twice (its check's read and its plan's) and
    the child once, where it read the child's whole version for every step (202 reads)."""
    tenant = "bounds-plan-child"
    api.provision(tenant, quotas=ROOMY, allowed_modules=["wait", "intent"])
    _blueprint(api, tenant)
    _large_declaration(api, tenant, "g")
    root = _intent(api, tenant, "root", _runs(200, "g"))
    version_reads.clear()

    plan = _plan(api, tenant, root, READER)
    assert {step["authorization"]["reason"] for step in plan["steps"]} == {"role_required"}
    assert len(version_reads) <= 3, len(version_reads)

    version_reads.clear()
    plan = _plan(api, tenant, root, DEPLOYER)
    assert {step["authorization"]["reason"] for step in plan["steps"]} == {"allowed"}
    assert len(version_reads) <= 3, len(version_reads)


def test_a_plan_reads_a_grandchild_once_through_many_intermediates(api: ApiHarness, version_reads: list[int]) -> None:
    """A root runs 8 intermediates, each of whose 200 steps runs one 240 KB child (100 of them pinning its version 1,
    the current one): the plan reads each intent it follows once (root twice, 8 intermediates, the child), where it
    read the child's whole version for every step of every intermediate (1,610 reads)."""
    tenant = "bounds-plan-grand"
    api.provision(tenant, quotas=ROOMY, allowed_modules=["wait", "intent"])
    _blueprint(api, tenant)
    _large_declaration(api, tenant, "g")
    pinned = [{**step, "id": f"p{k}", "version": 1} for k, step in enumerate(_runs(100, "g"))]
    for index in range(8):
        _intent(api, tenant, f"mid-{index}", [*_runs(100, "g"), *pinned])
    root = _intent(api, tenant, "root", [{**_runs(1, f"mid-{index}")[0], "id": f"m{index}"} for index in range(8)])
    version_reads.clear()

    plan = _plan(api, tenant, root, DEPLOYER)
    assert {step["authorization"]["reason"] for step in plan["steps"]} == {"allowed"}
    assert len(version_reads) <= 2 + 8 + 1, len(version_reads)


def test_a_child_past_the_plan_budget_is_not_read(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch, version_reads: list[int]
) -> None:
    """A plan's budget of 2 intents below its steps, and 5 steps each running another large child: the two followed
    are read, the three refused `too_many_descendants` are only looked up (their definitions never read)."""
    tenant = "bounds-plan-budget"
    api.provision(tenant, quotas=ROOMY, allowed_modules=["wait", "intent"])
    _blueprint(api, tenant)
    for index in range(5):
        _large_declaration(api, tenant, f"g{index}")
    steps = [{**_runs(1, f"g{index}")[0], "id": f"s{index}"} for index in range(5)]
    root = _intent(api, tenant, "root", steps)
    monkeypatch.setattr(service, "MAX_PLANNED_DESCENDANTS", 2)
    version_reads.clear()

    plan = _plan(api, tenant, root, DEPLOYER)
    reasons = [step["authorization"]["reason"] for step in plan["steps"]]
    assert reasons == ["allowed", "allowed", *["too_many_descendants"] * 3]
    assert len(version_reads) == 2 + 2, version_reads


def _versions(api: ApiHarness, tenant: str, item: str, limit: int) -> list[dict[str, Any]]:
    """Every page of `item`'s versions, following the cursor; each page's answer and its size in bytes."""
    pages: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        response = api.client.get(f"{INTENTS}/{item}/versions", params=params, headers=api.headers(tenant, READER))
        assert response.status_code == 200, response.text
        page = response.json()
        pages.append({"numbers": [row["version"] for row in page["items"]], "bytes": len(response.content)})
        cursor = page["next_cursor"]
        if cursor is None:
            return pages


def test_a_page_of_versions_holds_about_its_byte_budget(api: ApiHarness) -> None:
    """Six versions of about 240 KB: a page asked for 200 holds at most a MiB of them, and the cursor after the last
    one returned brings the rest; every version once, in order. It answered all six at once (1.4 MB; 50 MB for 200
    versions)."""
    tenant = "bounds-versions"
    api.provision(tenant, quotas=ROOMY, allowed_modules=["wait", "intent"])
    _blueprint(api, tenant)
    item = _large_declaration(api, tenant, "g")
    for version in range(2, 7):
        etag = api.client.get(f"{INTENTS}/{item}", headers=api.headers(tenant, READER)).headers["etag"]
        headers = {**_json_headers(api, tenant), "If-Match": etag}
        response = api.client.put(f"{INTENTS}/{item}", content=_large_text("g", version), headers=headers)
        assert response.status_code == 200, response.text

    pages = _versions(api, tenant, item, 200)
    assert [number for page in pages for number in page["numbers"]] == [1, 2, 3, 4, 5, 6]
    assert len(pages) > 1
    assert all(page["bytes"] <= service.VERSIONS_PAGE_BYTES for page in pages), pages


@pytest.mark.parametrize("limit", [1, 2, 3, 200])
def test_following_the_cursor_returns_every_version_once(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    """Versions of growing sizes under a small byte budget: whatever the `limit`, each page holds at most the budget
    (or one version alone, larger than it) and `limit` versions, and the pages hold every version once, in order."""
    tenant = f"bounds-cursor-{limit}"
    api.provision(tenant, quotas=ROOMY, allowed_modules=["wait", "intent"])
    first: dict[str, Any] = {"name": "grow", "definition": {"target": "staging", "steps": [WAIT]}}
    response = api.client.post(INTENTS, json=first, headers=api.headers(tenant, AUTHOR))
    assert response.status_code == 201, response.text
    item = response.json()["id"]
    sizes = [0, 10, 400, 900, 3_000, 50, 50, 50, 2_500, 10]
    for padding in sizes:
        inputs = {"type": "object", "description": "p" * padding}
        body = {**first, "definition": {**first["definition"], "inputs": inputs}}
        etag = api.client.get(f"{INTENTS}/{item}", headers=api.headers(tenant, READER)).headers["etag"]
        headers = {**api.headers(tenant, AUTHOR), "If-Match": etag}
        response = api.client.put(f"{INTENTS}/{item}", json=body, headers=headers)
        assert response.status_code == 200, response.text
    budget = 2_000
    monkeypatch.setattr(service, "VERSIONS_PAGE_BYTES", budget)
    with tenant_transaction(api.tenants[tenant].id) as conn:
        rows = conn.execute(
            "SELECT version, octet_length(definition::text) AS bytes FROM app.intent_versions WHERE intent_id = %s",
            (UUID(item),),
        ).fetchall()
    stored = {row["version"]: row["bytes"] for row in rows}

    pages = _versions(api, tenant, item, limit)
    numbers = [number for page in pages for number in page["numbers"]]
    assert numbers == list(range(1, len(sizes) + 2))
    for page in pages:
        assert 1 <= len(page["numbers"]) <= limit
        held = sum(stored[number] for number in page["numbers"])
        assert held <= budget or len(page["numbers"]) == 1, (page, stored)


def test_a_definition_is_held_to_its_limit_as_stored(api: ApiHarness) -> None:
    """40,000 × `1e16` is a 200 KB body, but jsonb writes each as 17 digits: stored, 720 KB, which every plan, start
    and rollback refused `too_large`. The limit is the stored definition's: the save is refused with that problem
    and writes nothing (validate answers alike), and a body that fits as stored saves and plans."""
    tenant = "bounds-stored"
    api.provision(tenant, quotas=ROOMY, allowed_modules=["wait", "intent"])
    _blueprint(api, tenant)
    text = '{"name": "decl", "definition": {"blueprint": "bp", "target": "staging", "junk": ['
    text += ",".join(["1e16"] * 40_000) + "]}}"
    before = registry_tables(api)
    for path in (INTENTS, f"{INTENTS}/validate"):
        refused = problem(api.client.post(path, content=text.encode(), headers=_json_headers(api, tenant)), 422)
        assert [(error["pointer"], error["code"]) for error in refused["errors"]] == [("/definition", "too_large")]
        assert "as stored" in refused["errors"][0]["detail"]
    assert registry_tables(api) == before

    text = text.replace(",".join(["1e16"] * 40_000), ",".join(["1e16"] * 10_000))
    response = api.client.post(INTENTS, content=text.encode(), headers=_json_headers(api, tenant))
    assert response.status_code == 201, response.text
    _plan(api, tenant, response.json()["id"], DEPLOYER)
