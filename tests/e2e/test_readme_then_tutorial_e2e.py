# intent_ref: platform.gateway
"""Following the README in order: its `qp` walkthrough, then the tutorial's client examples in the tenant the README
names for them; every example runs as written (Example 1 was refused with 409 where the walkthrough had already
created `deploy-web-app`)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from quantum_platform import AsyncClient, DevhostCredential

from devhost.child import PROJECT_ROOT
from devhost.identity import mint_token_cli
from devhost.services import start_postgres, stop_postgres
from tests.e2e.conftest import DevhostFactory
from tests.e2e.test_client_tutorial_e2e import PERSON, monitored, workers
from tests.e2e.test_readme_e2e import README, readme_qp_commands
from tests.e2e.tutorial_examples import run

pytestmark = pytest.mark.e2e


def examples_tenant() -> str:
    """The tenant the README's client snippet opens the examples' client in."""
    found = re.search(r'client = AsyncClient\(tenant="([a-z0-9-]+)"\)', README.read_text(encoding="utf-8"))
    assert found is not None, "the README names no tenant for the tutorial's examples"
    return found.group(1)


@pytest.fixture
def own_database() -> Iterator[str]:
    root = Path(tempfile.mkdtemp(prefix="qp-readme-order-"))
    try:
        yield start_postgres(root / "server")
    finally:
        stop_postgres(root / "server")
        shutil.rmtree(root, ignore_errors=True)


def test_the_examples_run_as_written_after_the_qp_walkthrough(
    devhost_factory: DevhostFactory, pg: Any, own_database: str, tmp_path: Path
) -> None:
    tenant = examples_tenant()
    host = devhost_factory(app_dir=PROJECT_ROOT, env={"QP_DATABASE_URL": own_database}, extra_args=("--seed-demo",))
    env = {**os.environ, "QP_URL": host.base_url, "QP_PROFILE": str(tmp_path / "profile.json"), "COLUMNS": "200"}
    env.pop("QP_TOKEN", None)
    worker_tokens = [
        mint_token_cli(pg.root, host.base_url, name, ["Module.Worker"], [], None, 900, True)
        for name in dict.fromkeys(("contoso", tenant, "tenant-123"))
    ]
    with workers(host.base_url, worker_tokens):
        for command in readme_qp_commands():
            args = command[1:]
            if args[0] == "login":
                args += ["--data-dir", str(pg.root)]
            done = subprocess.run(
                [sys.executable, "-m", "quantum_platform.cli", *args],
                cwd=PROJECT_ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=240,
                check=False,
            )
            assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr)

        credential = DevhostCredential(tenant, roles=PERSON, project_dir=PROJECT_ROOT, data_dir=pg.root, port=host.port)

        async def examples() -> None:
            async with AsyncClient(host.base_url, credential=credential, tenant=tenant) as client:
                namespace: dict[str, Any] = {"client": client}
                await run("1", namespace)  # refused 409 in a tenant where the walkthrough created deploy-web-app
                await run("2", namespace)
                lines = await monitored(namespace, namespace["execution_id"])
                assert lines[-1] == f"Execution {namespace['execution_id']} completed successfully"
                await run("3", namespace)
                assert namespace["intent"]["name"] == "deploy-web-app"
                lines = await monitored(namespace, namespace["execution"]["execution_id"])
                assert lines[-1].endswith("completed successfully"), lines

        asyncio.run(examples())
