# intent_ref: platform.devhost
"""The README's walkthrough as pasted, against a devhost seeded like `make run`'s: every `qp` command in order, and the
curl appendix as one script, with the example worker running, each ending as a user would see it succeed."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devhost.child import PROJECT_ROOT
from devhost.identity import mint_token_cli
from devhost.services import start_postgres, stop_postgres
from tests.e2e.conftest import DevhostFactory

pytestmark = pytest.mark.e2e

README = PROJECT_ROOT / "README.md"
_BLOCK = re.compile(r"```bash\n(.*?)```", re.S)


@pytest.fixture(scope="module")
def own_database() -> Iterator[str]:
    """A database of the README's own, as a fresh `make run` has: its commands change demo tenants (intents by
    fixed names, executions left running) that the session's other tests also use."""
    root = Path(tempfile.mkdtemp(prefix="qp-readme-"))
    try:
        yield start_postgres(root / "server")
    finally:
        stop_postgres(root / "server")
        shutil.rmtree(root, ignore_errors=True)


def readme_qp_commands() -> list[list[str]]:
    """Each `.venv/bin/qp` line of the README's bash blocks, in order, without its trailing comment."""
    commands = []
    for block in _BLOCK.findall(README.read_text()):
        for line in block.splitlines():
            if line.startswith(".venv/bin/qp "):
                commands.append(shlex.split(line, comments=True))
    return commands


def blocks(text: str, language: str = "bash") -> list[str]:
    """The fenced `language` blocks of `text` (a README, a guide), in order."""
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def as_pasted_here(script: str, base_url: str, data_dir: Path) -> str:
    """`script` (shell or Python) with only what differs for the test's devhost replaced: its URL, and its data
    folder (and port) wherever a dev token is minted: `devhost token`, the example worker, `DevhostCredential`."""
    import httpx

    port = str(httpx.URL(base_url).port)
    script = script.replace("http://127.0.0.1:7071", base_url).replace(
        ".venv/bin/python -m devhost token", f"{sys.executable} -m devhost token --data-dir {data_dir} --port {port}"
    )
    script = script.replace(
        "-m examples.workers.remote_worker ", f"-m examples.workers.remote_worker --devhost-data-dir {data_dir} "
    )
    credential = f"data_dir={str(data_dir)!r}, port={port}"
    return re.sub(r'DevhostCredential\(("[^"]*")\)', lambda m: f"DevhostCredential({m[1]}, {credential})", script)


@contextlib.contextmanager
def running_as_pasted(script: str, output: Path, stdin: str = "") -> Iterator[subprocess.Popen[bytes]]:
    """A long-running block started as pasted (bash, in the checkout, `stdin` typed into it, its output in
    `output`), then stopped as its user stops it, with Ctrl-C: it must end at once and cleanly (exit 0)."""
    with output.open("wb") as sink:
        process = subprocess.Popen(
            ["bash", "-c", script],
            cwd=PROJECT_ROOT,
            stdin=subprocess.PIPE,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the whole group, as in a terminal
        )
        assert process.stdin is not None
        process.stdin.write(stdin.encode())
        process.stdin.close()
        try:
            yield process
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGINT)
            try:
                code = process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                code = process.wait()
    assert code == 0, (script, code, output.read_text(errors="replace")[-3000:])


def test_the_readme_names_every_qp_command_it_walks_through() -> None:
    verbs = {" ".join(command[1:3]) for command in readme_qp_commands()}
    for verb in ("login --tenant", "intents create", "intents update", "intents rollback", "run deploy-web-app"):
        assert verb in verbs, verb
    assert "ID=..." not in README.read_text()


def test_the_readme_qp_walkthrough_runs_as_pasted(
    devhost_factory: DevhostFactory, pg: Any, own_database: str, tmp_path: Path
) -> None:
    from examples.workers import remote_worker

    host = devhost_factory(app_dir=PROJECT_ROOT, env={"QP_DATABASE_URL": own_database}, extra_args=("--seed-demo",))
    env = {**os.environ, "QP_URL": host.base_url, "QP_PROFILE": str(tmp_path / "profile.json"), "COLUMNS": "200"}
    env.pop("QP_TOKEN", None)
    worker = mint_token_cli(pg.root, host.base_url, "contoso", ["Module.Worker"], [], None, 600, True)
    stop = threading.Event()
    options = remote_worker.parse_args(["--api", host.base_url, "--token", worker])
    thread = threading.Thread(target=remote_worker.run, args=(options, stop), daemon=True)
    thread.start()
    try:
        for command in readme_qp_commands():
            args = command[1:]
            if args[0] == "login":
                args += ["--data-dir", str(pg.root)]  # the test's devhost keeps its data outside .data
            done = subprocess.run(
                [sys.executable, "-m", "quantum_platform.cli", *args],
                cwd=PROJECT_ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=240,
            )
            assert done.returncode == 0, (command, done.returncode, done.stdout[-2000:], done.stderr)
            if args[0] == "run":
                assert "succeeded" in done.stdout, (command, done.stdout[-2000:])
    finally:
        stop.set()
        thread.join(40)


def test_the_readme_curl_appendix_runs_as_pasted(devhost_factory: DevhostFactory, pg: Any, own_database: str) -> None:
    import httpx

    from examples.workers import remote_worker

    host = devhost_factory(app_dir=PROJECT_ROOT, env={"QP_DATABASE_URL": own_database}, extra_args=("--seed-demo",))
    appendix = README.read_text().split("## Appendix: the walkthrough with curl", 1)[1]
    script = as_pasted_here("\n".join(_BLOCK.findall(appendix)), host.base_url, pg.root)
    worker = mint_token_cli(pg.root, host.base_url, "fabrikam", ["Module.Worker"], [], None, 600, True)
    stop = threading.Event()
    options = remote_worker.parse_args(["--api", host.base_url, "--token", worker])
    thread = threading.Thread(target=remote_worker.run, args=(options, stop), daemon=True)
    thread.start()
    try:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script + '\necho "EXECUTION=$E"\n'],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode == 0, (done.stdout[-3000:], done.stderr)
        assert "HTTP/1.1 201" in done.stdout or "HTTP/1.0 201" in done.stdout, done.stdout[:2000]
        execution_id = done.stdout.rsplit("EXECUTION=", 1)[1].strip()
        reader = mint_token_cli(pg.root, host.base_url, "fabrikam", ["Intent.Reader"], [], None, 600, False)
        headers = {"Authorization": f"Bearer {reader}"}
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
        assert status == "succeeded", page
        execution = httpx.get(f"{host.base_url}/api/v1/executions/{execution_id}", headers=headers).json()
        assert [step["state"] for step in execution["steps"]] == ["succeeded"] * 3, execution
    finally:
        stop.set()
        thread.join(40)


def test_the_readme_producer_example_starts_an_execution_as_pasted(
    devhost_factory: DevhostFactory, pg: Any, own_database: str
) -> None:
    import httpx

    host = devhost_factory(app_dir=PROJECT_ROOT, env={"QP_DATABASE_URL": own_database}, extra_args=("--seed-demo",))
    person = mint_token_cli(pg.root, host.base_url, "contoso", ["Intent.Author", "Intent.Reader"], [], None, 600, False)
    headers = {"Authorization": f"Bearer {person}"}
    intent = (PROJECT_ROOT / "examples/intents/deploy-web-app.json").read_text()
    created = httpx.post(
        f"{host.base_url}/api/v1/intents", content=intent, headers={**headers, "content-type": "application/json"}
    )
    assert created.status_code in (201, 409), created.text  # 409: the walkthrough in this database created it
    listed = httpx.get(f"{host.base_url}/api/v1/intents", params={"name_prefix": "deploy-web-app"}, headers=headers)
    intent_id = next(i["id"] for i in listed.json()["items"] if i["name"] == "deploy-web-app")
    before = {e["id"] for e in httpx.get(f"{host.base_url}/api/v1/executions", headers=headers).json()["items"]}
    rejected_before = httpx.get(f"{host.base_url}/api/v1/ingress/rejections", headers=headers).json()["items"]
    section = README.read_text().split("## Event Hub producers", 1)[1].split("\n## ", 1)[0]
    script = as_pasted_here("\n".join(_BLOCK.findall(section)), host.base_url, pg.root).replace(
        ".venv/bin/python -m devhost key", f"{sys.executable} -m devhost key --data-dir {pg.root}"
    )
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr)
    started: list[Any] = []
    for _ in range(30):  # the hub's consumer starts it shortly after the event is accepted
        items = httpx.get(f"{host.base_url}/api/v1/executions", headers=headers).json()["items"]
        started = [e for e in items if e["id"] not in before]
        rejected = httpx.get(f"{host.base_url}/api/v1/ingress/rejections", headers=headers).json()["items"]
        assert rejected == rejected_before, rejected
        if started:
            break
        threading.Event().wait(1)
    assert [e["intent_id"] for e in started] == [intent_id], started


def test_the_readme_first_curls_identity_and_provisioning_blocks_run_as_pasted(
    devhost_factory: DevhostFactory, pg: Any, own_database: str
) -> None:
    host = devhost_factory(app_dir=PROJECT_ROOT, env={"QP_DATABASE_URL": own_database}, extra_args=("--seed-demo",))
    text = README.read_text()
    first = _BLOCK.findall(text.split("ready-to-paste `curl`", 1)[1])[0]
    identity = text.split("Mint a dev token for any role", 1)[1].split("Suspending a tenant", 1)[0]
    blocks = [first, *_BLOCK.findall(identity)]
    assert len(blocks) == 3, blocks
    outputs = []
    for block in blocks:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", as_pasted_here(block, host.base_url, pg.root)],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, (block, done.stdout[-2000:], done.stderr)
        outputs.append(done.stdout)
    health, identity_out, provisioning = outputs
    decoder = json.JSONDecoder()
    live, end = decoder.raw_decode(health)
    ready, _ = decoder.raw_decode(health, end)
    assert live["status"] == "ok" and ready == {"status": "ready", "checks": {"postgres": "ok", "blob_storage": "ok"}}
    me, _ = decoder.raw_decode(identity_out)
    assert me["tenant_name"] == "contoso" and sorted(me["roles"]) == ["Intent.Author", "Intent.Reader"], me
    assert len(re.findall(r"eyJ[\w-]+\.[\w-]+\.[\w-]+", identity_out)) == 3, identity_out  # the printed tokens
    created, end = decoder.raw_decode(provisioning)
    own, _ = decoder.raw_decode(provisioning, end)
    assert created["name"] == own["name"] == "northwind", provisioning  # the create's answer, then the tenant's own
    assert own["allowed_modules"] == created["allowed_modules"] == ["http", "artifact"], (created, own)


def test_the_readme_filter_examples_are_accepted(devhost_factory: DevhostFactory, pg: Any, own_database: str) -> None:
    import httpx

    host = devhost_factory(app_dir=PROJECT_ROOT, env={"QP_DATABASE_URL": own_database}, extra_args=("--seed-demo",))
    roles = ["Intent.Reader", "Tenant.Admin"]
    token = mint_token_cli(pg.root, host.base_url, "contoso", roles, [], None, 600, False)
    examples = re.findall(r"`GET (/api/v1/[^`\s{}]*\?[^`\s{}]*)`", README.read_text())
    assert len(examples) >= 4, examples
    for example in examples:
        answer = httpx.get(host.base_url + example, headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200, (example, answer.text)
