# intent_ref: platform.gateway
"""`qp` against a devhost: sign-in, the intent commands, runs followed to their outcome (the exit code), executions,
events, and each refusal as one line with exit code 3."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from devhost.child import PROJECT_ROOT
from tests.e2e.conftest import DevhostFactory

pytestmark = pytest.mark.e2e


class Qp:
    """Runs `qp` as a user would, with its own profile file."""

    def __init__(self, base_url: str, profile: Path) -> None:
        self.env = {**os.environ, "QP_URL": base_url, "QP_PROFILE": str(profile), "COLUMNS": "200"}
        self.env.pop("QP_TOKEN", None)

    def __call__(self, *args: str, check: int | None = 0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "quantum_platform.cli", *args],
            cwd=PROJECT_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        if check is not None:
            assert done.returncode == check, (args, done.returncode, done.stdout, done.stderr)
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--output", "json").stdout)


@pytest.fixture
def qp(devhost_factory: DevhostFactory, pg: Any, tmp_path: Path) -> Qp:
    host = devhost_factory(app_dir=PROJECT_ROOT, extra_args=("--seed-demo",))
    cli = Qp(host.base_url, tmp_path / "profile.json")
    signed_in = cli("login", "--url", host.base_url, "--tenant", "fabrikam", "--data-dir", str(pg.root))
    assert "(fabrikam)" in signed_in.stdout
    return cli


def intent_file(tmp_path: Path, name: str, steps: list[dict[str, Any]]) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"name": name, "definition": {"target": "staging", "steps": steps}}))
    return path


def test_intent_commands_and_a_run_followed_to_success(qp: Qp, tmp_path: Path) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    file = intent_file(tmp_path, name, [{"id": "pause", "action": "wait", "seconds": 0.2}])
    assert qp.json("intents", "validate", str(file))["valid"] is True
    created = qp.json("intents", "create", str(file))
    assert created["name"] == name and created["version"] == 1
    assert name in [item["name"] for item in qp.json("intents", "list", "--name-prefix", name)["items"]]
    assert qp.json("intents", "get", name)["id"] == created["id"]
    assert qp.json("intents", "plan", name)["levels"] == [["pause"]]

    changed = intent_file(tmp_path, name, [{"id": "pause", "action": "wait", "seconds": 0.3}])
    assert qp.json("intents", "update", name, str(changed))["version"] == 2
    assert [v["version"] for v in qp.json("intents", "versions", name)["items"]] == [1, 2]
    assert [c["id"] for c in qp.json("intents", "diff", name, "--from", "1", "--to", "2")["steps_changed"]] == ["pause"]
    assert qp.json("intents", "rollback", name, "--to", "1")["version"] == 3

    followed = qp("run", name, "--follow", "--output", "json")
    events = [json.loads(line) for line in followed.stdout.splitlines()]
    assert [e["type"] for e in events][-1] == "execution_completed"
    execution_id = next(e for e in events if e["type"] == "execution_started")
    assert execution_id

    live = qp("run", name, "--follow")  # the live view, as it ends
    assert "pause" in live.stdout and "succeeded" in live.stdout and live.stdout.endswith("\n")
    listed = qp.json("executions", "list", "--status", "succeeded")["items"]
    assert len([e for e in listed if e["intent_id"] == created["id"]]) == 2
    one = qp.json("executions", "get", listed[0]["id"])
    assert one["status"] == "succeeded" and one["steps"][0]["step_id"] == "pause"
    lines = qp("events", listed[0]["id"]).stdout.splitlines()
    assert "execution_started" in lines[0] and "execution_completed" in lines[-1]


def test_a_failed_run_exits_1_and_a_refusal_is_one_line_with_exit_3(qp: Qp, tmp_path: Path) -> None:
    name = f"cli-fail-{uuid.uuid4().hex[:8]}"
    # A remote step that no worker takes within its 1 s timeout, and no retry: the execution fails.
    step = {"action": "build-container", "image": "x:1", "timeout_s": 1, "retry": {"max_attempts": 1}}
    qp("intents", "create", str(intent_file(tmp_path, name, [step])))
    failed = qp("run", name, "--follow", "--output", "json", check=1)
    assert json.loads(failed.stdout.splitlines()[-1])["type"] == "execution_failed"

    missing = qp("intents", "get", "no-such-intent", check=3)
    assert missing.stderr.strip() == "error: no intent named 'no-such-intent' in this tenant"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "bad", "definition": {"target": "staging", "steps": [{"action": "nope"}]}}))
    refused = qp("intents", "create", str(bad), check=3)
    assert refused.stderr.startswith("error: 422") and len(refused.stderr.strip().splitlines()) == 1


def test_approve_cancel_and_follow_events_to_the_end(qp: Qp, tmp_path: Path) -> None:
    name = f"cli-approval-{uuid.uuid4().hex[:8]}"
    qp("intents", "create", str(intent_file(tmp_path, name, [{"id": "ok", "action": "approval", "message": "go?"}])))
    execution_id = qp.json("run", name)["execution_id"]
    # The requester may not approve its own execution: one line, exit 3.
    refused = qp("executions", "approve", execution_id, "ok", check=3)
    assert refused.stderr.startswith("error: 403") and len(refused.stderr.strip().splitlines()) == 1
    assert qp.json("executions", "cancel", execution_id)["cancel_requested"] is True
    followed = qp("events", execution_id, "--follow").stdout.splitlines()
    assert "approval_requested" in " ".join(followed) and "execution_cancelled" in followed[-1]
    retried = qp.json("executions", "retry", execution_id)
    assert retried["execution_id"] != execution_id
    qp("executions", "cancel", retried["execution_id"])
    # Followed to its end: this devhost stops with the module, and a cancel it had not finished would leave the
    # execution holding its tenant's concurrent-execution quota for the session's later tests.
    ended = qp("events", retried["execution_id"], "--follow").stdout.splitlines()
    assert "execution_cancelled" in ended[-1]


def test_webhook_commands_subscribe_a_receiver_that_gets_a_signed_delivery(qp: Qp, pg: Any, tmp_path: Path) -> None:
    from tests.integration.test_webhooks import Receiver, verify

    admin = Qp(qp.env["QP_URL"], tmp_path / "admin-profile.json")
    roles = "Tenant.Admin,Intent.Reader,Intent.Author,Intent.Executor"
    admin("login", "--url", qp.env["QP_URL"], "--tenant", "fabrikam", "--roles", roles, "--data-dir", str(pg.root))
    receiver = Receiver()
    created = admin.json("webhooks", "create", receiver.url, "--event", "execution.completed", "--description", "cli")
    secret, subscription = created["secret"], created["id"]
    assert secret.startswith("whsec_") and created["event_types"] == ["execution.completed"]
    listed = {item["id"]: item for item in admin.json("webhooks", "list")["items"]}
    assert listed[subscription]["secret"] is None and listed[subscription]["enabled"] is True

    name = f"cli-hook-{uuid.uuid4().hex[:8]}"
    admin("intents", "create", str(intent_file(tmp_path, name, [{"id": "pause", "action": "wait", "seconds": 0.1}])))
    admin("run", name, "--follow")
    deadline = time.monotonic() + 60  # the outbox relay's and the delivery timer's periods (1 s each), with room
    while not receiver.received and time.monotonic() < deadline:
        time.sleep(0.5)
    headers, body = receiver.received[0]
    assert verify(secret, headers, body) and json.loads(body)["type"] == "execution.completed"
    delivered = admin.json("webhooks", "deliveries", subscription)["items"]
    assert [(d["state"], d["attempts"], d["last_status"]) for d in delivered] == [("delivered", 1, 204)]

    rotated = admin.json("webhooks", "rotate-secret", subscription)["secret"]
    assert rotated.startswith("whsec_") and rotated != secret
    assert admin.json("webhooks", "disable", subscription)["enabled"] is False
    assert admin.json("webhooks", "enable", subscription)["enabled"] is True
    assert admin("webhooks", "delete", subscription).stdout.strip() == f"deleted {subscription}"
    gone = admin("webhooks", "get", subscription, check=3)
    assert gone.stderr.startswith("error: 404") and len(gone.stderr.strip().splitlines()) == 1
    # A role without Tenant.Admin is refused, in one line.
    refused = qp("webhooks", "list", check=3)
    assert refused.stderr.startswith("error: 403")
