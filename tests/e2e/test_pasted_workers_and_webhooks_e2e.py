# intent_ref: platform.devhost
"""What the README, the client's README and docs/webhooks.md give to paste beside `make run`, run as pasted against
one devhost seeded like `make run`'s: every example worker command serves its tenant's remote steps until stopped
with Ctrl-C, the webhook subscription's receiver gets the execution's end, the verification snippet accepts a signed
delivery and refuses a tampered one, and the client's example lists the tenant's intents."""

from __future__ import annotations

import ast
import contextlib
import json
import shlex
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from devhost.child import PROJECT_ROOT, free_port
from devhost.identity import mint_token_cli
from tests.e2e.conftest import DevhostFactory
from tests.e2e.test_readme_e2e import README, as_pasted_here, blocks, own_database, running_as_pasted  # noqa: F401

pytestmark = pytest.mark.e2e

WEBHOOKS = PROJECT_ROOT / "docs" / "webhooks.md"
CLIENT_README = PROJECT_ROOT / "clients" / "python" / "README.md"
WORKER = ".venv/bin/python -m examples.workers.remote_worker "
RECEIVER_PORT = "8085"
INTENT = "pasted-workers"  # a name of the test's own: the README's walkthrough creates deploy-web-app
PERSON = ["Intent.Author", "Intent.Reader", "Intent.Deployer"]
ENDED = ("succeeded", "failed", "cancelled")


def readme_worker_commands() -> dict[str, str]:
    """Each distinct example worker command the README gives (in a block or in its text), by the tenant it serves."""
    commands: dict[str, str] = {}
    for line in README.read_text(encoding="utf-8").splitlines():
        start = line.find(WORKER)
        if start < 0:
            continue
        command = line[start:].split("`", 1)[0].strip()
        words = shlex.split(command, comments=True)
        tenant = words[words.index("--devhost-tenant") + 1]
        assert commands.setdefault(tenant, command) == command, (tenant, commands[tenant], command)
    return commands


def _started(base_url: str, token: str) -> str:
    """The test's intent (the README's deploy-web-app, all remote steps, under its own name) created in the token's
    tenant and executed: the execution's id."""
    headers = {"Authorization": f"Bearer {token}"}
    intent = json.loads((PROJECT_ROOT / "examples/intents/deploy-web-app.json").read_text())
    created = httpx.post(f"{base_url}/api/v1/intents", json={**intent, "name": INTENT}, headers=headers, timeout=30)
    assert created.status_code == 201, created.text
    started = httpx.post(f"{base_url}/api/v1/intents/{created.json()['id']}/execute", headers=headers, timeout=30)
    assert started.status_code == 202, started.text
    return str(started.json()["execution_id"])


def _ended(base_url: str, token: str, execution_id: str, deadline: float) -> dict[str, Any]:
    """The execution once it has ended (or as it is at `deadline`)."""
    while True:
        answer = httpx.get(
            f"{base_url}/api/v1/executions/{execution_id}", headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        execution: dict[str, Any] = answer.json()
        if execution.get("status") in ENDED or time.monotonic() > deadline:
            return execution
        time.sleep(0.3)


def _listening(port: int, deadline: float) -> None:
    """Wait until something accepts connections on `port` (the receiver started as pasted)."""
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


def _received(log: Path, execution_id: str, deadline: float) -> dict[str, Any]:
    """The verified `execution.completed` event of `execution_id` the receiver printed."""
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict) and event.get("type") == "execution.completed" and execution_id in line:
                    return event
        time.sleep(0.2)
    raise AssertionError(log.read_text(errors="replace")[-3000:])


def _verified(snippet: str, secret: str, body: bytes, headers: dict[str, str]) -> Any:
    """What docs/webhooks.md's verification snippet, run as written, leaves in `event` (None: it refused)."""
    namespace: dict[str, Any] = {"secret": secret, "body": body, "headers": headers}
    exec(compile(snippet, "<docs/webhooks.md>", "exec"), namespace)  # noqa: S102  # the repository's own guide
    return namespace.get("event")


def test_the_readme_names_a_worker_command_for_each_demo_tenant() -> None:
    assert sorted(readme_worker_commands()) == ["contoso", "fabrikam", "tenant-123"]


def test_the_worker_commands_and_the_webhook_guide_run_as_pasted(
    devhost_factory: DevhostFactory, pg: Any, own_database: str, tmp_path: Path
) -> None:
    host = devhost_factory(app_dir=PROJECT_ROOT, env={"QP_DATABASE_URL": own_database}, extra_args=("--seed-demo",))
    receiver_port = free_port()
    guide = WEBHOOKS.read_text(encoding="utf-8")
    subscribe, receive = (
        as_pasted_here(block, host.base_url, pg.root).replace(RECEIVER_PORT, str(receiver_port))
        for block in blocks(guide)
    )
    (verify,) = blocks(guide, "python")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", subscribe], cwd=PROJECT_ROOT, capture_output=True)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr)
    secret = json.loads(done.stdout)["secret"]
    tokens = {
        tenant: mint_token_cli(pg.root, host.base_url, tenant, PERSON, [], None, 600, False)
        for tenant in readme_worker_commands()
    }
    with contextlib.ExitStack() as running:
        received = tmp_path / "receiver.log"
        running.enter_context(running_as_pasted(receive, received, stdin=secret + "\n"))
        logs = {tenant: tmp_path / f"worker-{tenant}.log" for tenant in tokens}
        for tenant, command in readme_worker_commands().items():
            running.enter_context(running_as_pasted(as_pasted_here(command, host.base_url, pg.root), logs[tenant]))
        _listening(receiver_port, time.monotonic() + 20)
        started = {tenant: _started(host.base_url, token) for tenant, token in tokens.items()}
        deadline = time.monotonic() + 90
        for tenant, execution_id in started.items():
            execution = _ended(host.base_url, tokens[tenant], execution_id, deadline)
            assert execution["status"] == "succeeded", (tenant, execution, logs[tenant].read_text()[-2000:])
            assert [step["state"] for step in execution["steps"]] == ["succeeded"] * 3, execution
        event = _received(received, started["contoso"], time.monotonic() + 30)
    for log in logs.values():  # each worker took its tenant's steps, then stopped on Ctrl-C
        assert "-> succeeded" in log.read_text() and log.read_text().rstrip().endswith("stopped"), log.read_text()

    body = json.dumps(event).encode()
    message_id = str(event["id"])
    now = datetime.now(UTC).replace(microsecond=0)
    signature = Webhook(secret).sign(message_id, now, body.decode())
    headers = {"webhook-id": message_id, "webhook-timestamp": str(int(now.timestamp())), "webhook-signature": signature}
    assert _verified(verify, secret, body, headers) == event
    assert _verified(verify, secret, body.replace(b"completed", b"cancelled"), headers) is None

    (example,) = blocks(CLIENT_README.read_text(encoding="utf-8"), "python")
    listed = subprocess.run(
        [sys.executable, "-c", as_pasted_here(example, host.base_url, pg.root)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, (listed.stdout, listed.stderr)
    assert INTENT in ast.literal_eval(listed.stdout.strip()), listed.stdout
