# intent_ref: platform.gateway
"""The architecture tutorial's Python client examples run as written against the devhost, through the client
package (clients/python), with the example worker of each tenant taking the remote steps."""

from __future__ import annotations

import asyncio
import contextlib
import io
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from quantum_platform import AsyncClient, DevhostCredential, NotFound

from devhost.child import PROJECT_ROOT
from devhost.identity import mint_token_cli
from devhost.services import start_postgres, stop_postgres
from examples.workers import remote_worker
from tests.e2e.conftest import DevhostFactory
from tests.e2e.tutorial_examples import run

pytestmark = pytest.mark.e2e
PERSON = ("Intent.Reader", "Intent.Author", "Intent.Deployer")
STEPS = ["build-docker-image", "push-to-registry", "deploy-to-kubernetes"]


@contextlib.contextmanager
def workers(base_url: str, tokens: list[str]) -> Iterator[None]:
    """The example worker of each tenant, on threads, until the block ends."""
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=remote_worker.run,
            args=(remote_worker.parse_args(["--api", base_url, "--token", token]), stop),
            daemon=True,
        )
        for token in tokens
    ]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=40)


async def monitored(namespace: dict[str, Any], execution_id: str) -> list[str]:
    """What the tutorial's `monitor_execution` prints for the execution."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        await asyncio.wait_for(namespace["monitor_execution"](execution_id), timeout=120)
    return printed.getvalue().splitlines()


def test_the_tutorials_client_examples_run_as_written(devhost_factory: DevhostFactory, pg: Any) -> None:
    # A database of its own: the examples create `deploy-web-app`, a name other tests use in the session's.
    root = Path(tempfile.mkdtemp(prefix="qp-tutorial-"))
    database = start_postgres(root / "server")
    try:
        host = devhost_factory(app_dir=PROJECT_ROOT, env={"QP_DATABASE_URL": database}, extra_args=("--seed-demo",))
        worker_tokens = [
            mint_token_cli(pg.root, host.base_url, tenant, ["Module.Worker"], [], None, 900, True)
            for tenant in ("contoso", "tenant-123")
        ]
        credential = DevhostCredential(
            "contoso", roles=PERSON, project_dir=PROJECT_ROOT, data_dir=pg.root, port=host.port
        )

        async def scenario() -> None:
            async with AsyncClient(host.base_url, credential=credential) as client:
                namespace: dict[str, Any] = {"client": client}
                await run("1", namespace)  # creates deploy-web-app in contoso and executes it
                first_execution, first_intent = namespace["execution_id"], namespace["intent_id"]
                await run("2", namespace)  # defines monitor_execution
                lines = await monitored(namespace, first_execution)
                assert [line.split(" completed:")[0] for line in lines[:-1]] == [f"Step {s}" for s in STEPS]
                assert "'image': 'example.azurecr.io/myapp:latest'" in lines[0]
                assert lines[-1] == f"Execution {first_execution} completed successfully"

                await run("3", namespace)  # the same intent in tenant-123, listed and executed there
                assert client.tenant == "tenant-123"
                created = namespace["intent"]
                assert created["name"] == "deploy-web-app" and created["id"] != first_intent
                listed = namespace["intents"]["items"]
                assert [item["id"] for item in listed] == [created["id"]]  # only tenant-123's own
                with pytest.raises(NotFound):  # contoso's intent is not there for tenant-123
                    await client.get(f"/api/v1/intents/{first_intent}")
                second_execution = namespace["execution"]["execution_id"]
                lines = await monitored(namespace, second_execution)
                assert lines[-1] == f"Execution {second_execution} completed successfully"

        with workers(host.base_url, worker_tokens):
            asyncio.run(scenario())
    finally:
        stop_postgres(root / "server")
        shutil.rmtree(root, ignore_errors=True)
