# intent_ref: platform.hardening
"""The devhost asks for its master key where the Functions host asks for a key; the app's own calls still work."""

from __future__ import annotations

import asyncio
import base64
import stat
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import azure.durable_functions as df
import httpx
import pytest

from devhost.child import PROJECT_ROOT
from devhost.keys import load_or_create_master_key, master_key_path
from tests.e2e.conftest import DevhostFactory, devhost_factory  # noqa: F401  # the fixture
from tests.e2e.durable_support import with_client

pytestmark = pytest.mark.e2e

HUB = "ConformanceHub"
ORCHESTRATOR = "durable_sequence_orchestrator"
PREFIXES = ("/runtime/webhooks/durabletask", "/durabletask")


def _basic(password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"anyone:{password}".encode()).decode()}


def _start_through_the_app(base_url: str, secret: str) -> dict[str, Any]:
    """The app's HTTP starter: the SDK's start_new, then the check-status payload built from its binding."""
    response = httpx.post(f"{base_url}/api/durable/start/{ORCHESTRATOR}", json={"name": secret}, timeout=30)
    assert response.status_code == 202, response.text
    payload: dict[str, Any] = response.json()
    return payload


def _guarded_requests(instance_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, httpx keyword arguments) of every route that exposes or changes data."""
    requests: list[tuple[str, str, dict[str, Any]]] = []
    for prefix in PREFIXES:
        requests += [
            ("GET", f"{prefix}/instances/{instance_id}", {"params": {"showHistory": "true"}}),
            ("GET", f"{prefix}/instances/", {}),
            ("GET", f"{prefix}/instances", {"params": {"instanceIdPrefix": instance_id[:4]}}),
            ("POST", f"{prefix}/instances/{instance_id}/raiseEvent/Approval", {"json": {"x": 1}}),
            ("POST", f"{prefix}/instances/{instance_id}/terminate", {"params": {"reason": "r"}}),
            ("POST", f"{prefix}/instances/{instance_id}/restart", {}),
            ("DELETE", f"{prefix}/instances/{instance_id}", {}),
            ("DELETE", f"{prefix}/instances/", {"params": {"createdTimeFrom": "2000-01-01T00:00:00Z"}}),
            ("POST", f"{prefix}/orchestrators/{ORCHESTRATOR}/probe-{uuid.uuid4().hex[:8]}", {"json": {"name": "x"}}),
        ]
    requests += [
        ("GET", "/devhost/eventhubs/durable-starts/consumergroups/spy/events", {}),
        ("POST", "/devhost/eventhubs/durable-starts/events", {"json": {"events": [{"body": {"name": "forged"}}]}}),
    ]
    return requests


def test_management_api_and_hub_routes_answer_401_without_the_master_key(
    devhost_factory: DevhostFactory,
) -> None:
    host = devhost_factory()
    key, secret = host.host_key, f"secret-{uuid.uuid4().hex}"
    started = _start_through_the_app(host.base_url, secret)
    instance_id = started["id"]
    # The host's binding carries the key, as the real host's does: the payload's URLs work for their holder.
    assert f"code={key}" in started["statusQueryGetUri"]
    done = httpx.get(started["statusQueryGetUri"], timeout=30)
    assert done.status_code in (200, 202) and done.json()["instanceId"] == instance_id
    assert secret in done.text

    wrong = ("y" if key.startswith("x") else "x") + key[1:]  # one character off, whatever the key's first is
    refusals = [
        {},
        {"params": {"code": wrong}},
        {"headers": {"x-functions-key": wrong}},
        {"headers": _basic(wrong)},
        {"params": {"code": ""}},
        {"headers": {"x-functions-key": key.upper() if key.upper() != key else key.lower()}},
    ]
    with httpx.Client(base_url=host.base_url, timeout=30) as client:
        for method, path, kwargs in _guarded_requests(instance_id):
            for credentials in refusals:
                merged = {
                    **kwargs,
                    "params": {**kwargs.get("params", {}), **credentials.get("params", {})},
                    "headers": credentials.get("headers", {}),
                }
                response = client.request(method, path, **merged)
                assert response.status_code == 401, (method, path, credentials, response.text)
                assert response.content == b"", (method, path, response.text)

        # Nothing the refused calls asked for happened: the instance is still there, completed, with its input;
        # the probe starts created nothing; the forged event was never published.
        status = client.get(f"/runtime/webhooks/durabletask/instances/{instance_id}", params={"code": key})
        assert status.status_code == 200, status.text
        assert status.json()["runtimeStatus"] == "Completed" and secret in status.text
        listed = client.get("/durabletask/instances/", headers={"x-functions-key": key})
        assert listed.status_code == 200
        assert not [i for i in listed.json() if i["instanceId"].startswith("probe-")]
        spy = client.get(
            "/devhost/eventhubs/durable-starts/consumergroups/spy/events",
            params={"limit": 100},
            headers={"x-functions-key": key},
        )
        assert spy.status_code == 200, spy.text
        assert not [e for e in spy.json()["events"] if e.get("body") == {"name": "forged"}]

        # Each way of presenting the key opens the route.
        for credentials in ({"params": {"code": key}}, {"headers": {"x-functions-key": key}}, {"headers": _basic(key)}):
            for prefix in PREFIXES:
                response = client.get(f"{prefix}/instances/{instance_id}", **credentials)  # type: ignore[arg-type]
                assert response.status_code == 200, (prefix, credentials, response.text)
                assert response.json()["instanceId"] == instance_id

        # The issuer's discovery document and signing keys are public, as Entra's are; the app's routes answer
        # as the app decides.
        assert client.get("/devhost/identity/discovery/v2.0/keys").status_code == 200
        assert client.get("/devhost/identity/common/v2.0/.well-known/openid-configuration").status_code == 200
        assert client.get("/api/plain").status_code == 200


def test_the_sdk_client_works_through_the_binding_and_fails_without_the_key(
    devhost_factory: DevhostFactory,
) -> None:
    host = devhost_factory()
    key = host.host_key
    approval = f"approve-{uuid.uuid4().hex[:8]}"
    doomed = f"doomed-{uuid.uuid4().hex[:8]}"

    async def flows(client: df.DurableOrchestrationClient) -> list[Any]:
        await client.start_new("durable_approval_orchestrator", approval, None)
        await client.start_new("durable_approval_orchestrator", doomed, None)
        for instance in (approval, doomed):
            for _ in range(200):
                status = await client.get_status(instance)
                if status and status.runtime_status == df.OrchestrationRuntimeStatus.Running:
                    break
                await asyncio.sleep(0.05)
        await client.raise_event(approval, "Approval", {"ok": True})
        await client.terminate(doomed, "stop")
        outcomes = []
        for instance in (approval, doomed):
            for _ in range(400):
                status = await client.get_status(instance)
                if status.runtime_status.value in ("Completed", "Terminated", "Failed"):
                    break
                await asyncio.sleep(0.05)
            outcomes.append(status.runtime_status.value)
        purged = await client.purge_instance_history(doomed)
        outcomes.append(purged.instances_deleted)
        outcomes.append(bool(await client.get_status(doomed)))
        return outcomes

    assert with_client(host.base_url, HUB, flows, key) == ["Completed", "Terminated", 1, False]

    async def peek(client: df.DurableOrchestrationClient) -> Any:
        return await client.get_status(approval)

    # The same client without the key is refused (401 is not a status the SDK accepts), so it learns nothing.
    with pytest.raises(Exception, match="401"):
        with_client(host.base_url, HUB, peek, "")
    with pytest.raises(Exception, match="401"):
        with_client(host.base_url, HUB, peek, "not-the-key")


def test_the_master_key_is_private_stable_across_restarts_and_printed_by_the_cli(
    devhost_factory: DevhostFactory,
    tmp_path: Path,
) -> None:
    host = devhost_factory()
    key = host.host_key
    path = master_key_path(host.data_dir.resolve())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0
    printed = subprocess.run(  # our own interpreter and module
        [sys.executable, "-m", "devhost", "key", "--data-dir", str(host.data_dir)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    assert printed == key

    status_uri = _start_through_the_app(host.base_url, "restart")["statusQueryGetUri"]
    host.stop()
    again = devhost_factory(port=host.port)
    assert again.host_key == key
    assert httpx.get(status_uri, timeout=30).status_code in (200, 202)  # a URL handed out before still works

    # A fresh data folder gets a key of its own; a key file others can read is made private again.
    fresh = load_or_create_master_key(tmp_path)
    assert fresh != key and load_or_create_master_key(tmp_path) == fresh and len(fresh) >= 50
    master_key_path(tmp_path).chmod(0o644)
    assert load_or_create_master_key(tmp_path) == fresh
    assert stat.S_IMODE(master_key_path(tmp_path).stat().st_mode) == 0o600
