# intent_ref: platform.devhost
"""`--seed-demo` through the devhost: the demo tenants get the seed tutorial's remote modules, once."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from devhost.child import PROJECT_ROOT
from devhost.identity import mint_token_cli
from devhost.seed import seed_demo_blueprints, seed_demo_modules
from shared.registry.catalog import seed_remote_modules
from tests.e2e.conftest import DevhostFactory

pytestmark = pytest.mark.e2e


def test_seeded_demo_tenants_list_the_seed_modules(devhost_factory: DevhostFactory, pg: Any) -> None:
    host = devhost_factory(app_dir=PROJECT_ROOT, extra_args=("--seed-demo",))
    seed_actions = {spec.action for spec in seed_remote_modules()}

    for tenant in ("contoso", "fabrikam", "tenant-123"):
        token = mint_token_cli(pg.root, host.base_url, tenant, ["Intent.Reader"], [], None, 600, False)
        response = httpx.get(f"{host.base_url}/api/v1/modules", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text
        items = {item["action"]: item for item in response.json()["items"]}
        assert seed_actions <= set(items), tenant
        for action in seed_actions:
            assert items[action]["remote"] and items[action]["allowed"], (tenant, action)
            assert items[action]["created_by"] == "devhost:seed-demo"
        assert items["build-docker-image"]["defaults"] == {"context": "."}
        assert "http.request" in items and not items["http.request"]["remote"]

    # Seeding again (every `make run` does) adds nothing and fails on nothing.
    assert seed_demo_modules(pg.app_url) == []


SEED_DECLARATION = {
    "name": "deploy-application",
    "definition": {"target": "production", "version": "1.2.3", "environment": "azure-westus"},
}
SEED_WEB_APP = {
    "name": "deploy-web-app",
    "definition": {
        "target": "production",
        "steps": [
            {"action": "build-docker-image", "image": "myapp:latest", "context": "./app"},
            {"action": "push-to-registry", "registry": "azurecr.io", "image": "myapp:latest"},
            {"action": "deploy-to-kubernetes", "namespace": "production", "replicas": 3},
        ],
    },
}


def test_seed_tutorial_payloads_validate_and_plan_as_written(devhost_factory: DevhostFactory, pg: Any) -> None:
    host = devhost_factory(app_dir=PROJECT_ROOT, extra_args=("--seed-demo",))
    token = mint_token_cli(
        pg.root, host.base_url, "fabrikam", ["Intent.Author", "Intent.Deployer"], [], None, 600, False
    )
    headers = {"Authorization": f"Bearer {token}"}
    for body, levels in (
        (SEED_DECLARATION, [["build"], ["deploy"], ["verify"]]),
        (SEED_WEB_APP, [["build-docker-image"], ["push-to-registry"], ["deploy-to-kubernetes"]]),
    ):
        created = httpx.post(f"{host.base_url}/api/v1/intents", json=body, headers=headers)
        assert created.status_code == 201, created.text
        intent_id = created.json()["id"]
        plan = httpx.post(f"{host.base_url}/api/v1/intents/{intent_id}/plan", headers=headers)
        assert plan.status_code == 200, plan.text
        assert plan.json()["levels"] == levels
    assert seed_demo_blueprints(pg.app_url) == []  # already there: seeding twice adds nothing


def test_the_seed_declaration_runs_to_success_with_the_example_worker(devhost_factory: DevhostFactory, pg: Any) -> None:
    import threading

    from examples.workers import remote_worker

    host = devhost_factory(app_dir=PROJECT_ROOT, extra_args=("--seed-demo",))
    tenant = "tenant-123"  # its own `deploy-application` declaration: the name is the blueprint's, once per tenant
    person = mint_token_cli(pg.root, host.base_url, tenant, ["Intent.Author", "Intent.Deployer"], [], None, 600, False)
    worker = mint_token_cli(pg.root, host.base_url, tenant, ["Module.Worker"], [], None, 600, True)
    headers = {"Authorization": f"Bearer {person}"}
    existing = httpx.get(
        f"{host.base_url}/api/v1/intents", params={"name_prefix": "deploy-application"}, headers=headers
    ).json()["items"]
    intent_id = next((i["id"] for i in existing if i["name"] == "deploy-application"), None)
    if intent_id is None:
        created = httpx.post(f"{host.base_url}/api/v1/intents", json=SEED_DECLARATION, headers=headers)
        assert created.status_code == 201, created.text
        intent_id = created.json()["id"]
    stop = threading.Event()
    options = remote_worker.parse_args(["--api", host.base_url, "--token", worker])
    thread = threading.Thread(target=remote_worker.run, args=(options, stop), daemon=True)
    thread.start()
    try:
        started = httpx.post(f"{host.base_url}/api/v1/intents/{intent_id}/execute", headers=headers, timeout=30)
        assert started.status_code == 202, started.text
        execution_id = started.json()["execution_id"]
        after, status = 0, "pending"
        for _ in range(40):
            page = httpx.get(
                f"{host.base_url}/api/v1/executions/{execution_id}/events",
                params={"after": after, "wait": 5},
                headers=headers,
                timeout=30,
            ).json()
            after, status = page["next_after"], page["status"]
            if status in ("succeeded", "failed", "cancelled"):
                break
    finally:
        stop.set()
        thread.join(40)
    execution = httpx.get(f"{host.base_url}/api/v1/executions/{execution_id}", headers=headers).json()
    assert status == "succeeded", execution
    steps = {step["step_id"]: step for step in execution["steps"]}
    assert [steps[s]["state"] for s in ("build", "deploy", "verify")] == ["succeeded"] * 3
    # verify-deployment checked the demo tenant's base_url: the devhost's stand-in for the deployed app.
    assert steps["verify"]["output"]["status"] == 200, steps["verify"]["output"]
    assert steps["verify"]["output"]["url"] == f"{host.base_url}/devhost/demo/deployment/health"
