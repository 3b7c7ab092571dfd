# intent_ref: platform.estate
"""The function app's package leaves out what .funcignore names, folders and nested names included."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path
from typing import Any

import yaml

from tests.infra.conftest import ROOT


def test_the_package_leaves_out_every_name_of_funcignore_at_any_depth(tmp_path: Path) -> None:
    # `zip -x@.funcignore` matched whole paths only: node_modules, tests and devhost went into the package.
    tree = tmp_path / "app"
    for name in (
        "function_app.py",
        "shared/engine/machine.py",
        "devhost/host.py",
        "node_modules/azurite/index.js",
        "tests/unit/test_x.py",
        "shared/__pycache__/machine.cpython-311.pyc",
        "local.settings.json",
        ".git/HEAD",
        ".python_packages/lib/site-packages/httpx/__init__.py",
    ):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text("x")
    (tree / ".funcignore").write_text((ROOT / ".funcignore").read_text())
    subprocess.run([str(ROOT / "tools" / "package_app.sh"), str(tmp_path / "app.zip"), str(tree)], check=True)
    names = {name for name in zipfile.ZipFile(tmp_path / "app.zip").namelist() if not name.endswith("/")}
    assert names == {
        ".funcignore",
        "function_app.py",
        "shared/engine/machine.py",
        ".python_packages/lib/site-packages/httpx/__init__.py",
    }


def test_the_deploy_workflow_packages_with_the_script() -> None:
    workflow = (ROOT / ".github" / "workflows" / "deploy.yml").read_text()
    assert "tools/package_app.sh dist/app.zip" in workflow and "-x@.funcignore" not in workflow


def _workflow() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / ".github" / "workflows" / "deploy.yml").read_text())
    return loaded


def test_only_the_deploy_jobs_can_mint_the_deployment_identitys_token() -> None:
    # The build job runs third-party code (pip, npm, make test): with id-token at the workflow's level it could sign
    # in as the deployment identity without passing the prod environment's approval.
    workflow = _workflow()
    assert "id-token" not in workflow.get("permissions", {})
    for name, job in workflow["jobs"].items():
        minted = job.get("permissions", {}).get("id-token") == "write"
        assert minted == (name in ("deploy-dev", "deploy-prod")), name
        assert not minted or job.get("environment") in ("dev", "prod"), name


def test_each_release_leaves_the_staging_slot_stopped() -> None:
    # Running, the slot holding the release not serving takes orchestrations, module work and timer runs from
    # production's hubs with the other code, after every swap and every swap back.
    for name in ("deploy-dev", "deploy-prod"):
        steps = _workflow()["jobs"][name]["steps"]
        runs = [step.get("run", "") for step in steps]
        deploy = next(i for i, run in enumerate(runs) if "config-zip" in run)
        assert "az functionapp start" in runs[deploy] and runs[deploy].index("start") < runs[deploy].index("config-zip")
        stop = next(i for i, run in enumerate(runs) if "az functionapp stop" in run and "--slot staging" in run)
        swaps = [i for i, run in enumerate(runs) if "slot swap" in run]
        assert stop > max(swaps) and steps[stop].get("if") == "always()", name
