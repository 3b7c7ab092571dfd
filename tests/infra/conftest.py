# intent_ref: platform.estate
"""Parsed Bicep and Terraform files of the estate, shared by the infra tests (parsed once per session)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hcl2
import pytest
from pycep import BicepParser

ROOT = Path(__file__).resolve().parents[2]
BICEP = ROOT / "bicep"
TERRAFORM = ROOT / "terraform"


def unquote(value: Any) -> Any:
    """python-hcl2 v8 keeps the quotes of strings and block keys; strip them everywhere."""
    if isinstance(value, str):
        return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value
    if isinstance(value, list):
        return [unquote(item) for item in value]
    if isinstance(value, dict):
        return {unquote(key): unquote(item) for key, item in value.items()}
    return value


@dataclass
class BicepFile:
    """One parsed .bicep file."""

    path: Path
    parsed: dict[str, Any]

    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        return {name: res for name, res in (self.parsed.get("resources") or {}).items() if not res.get("existing")}

    @property
    def variables(self) -> dict[str, Any]:
        return {name: var["value"] for name, var in (self.parsed.get("variables") or {}).items()}


@dataclass
class TerraformModule:
    """The .tf files of one directory, merged."""

    path: Path
    resources: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # type -> name -> body
    locals: dict[str, Any] = field(default_factory=dict)
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def of_type(self, resource_type: str) -> dict[str, dict[str, Any]]:
        return self.resources.get(resource_type, {})


def _parse_bicep(path: Path) -> BicepFile:
    return BicepFile(path, BicepParser().parse(file_path=path))


def _parse_terraform(directory: Path) -> TerraformModule:
    module = TerraformModule(directory)
    for path in sorted(directory.glob("*.tf")):
        with path.open(encoding="utf-8") as handle:
            document = unquote(hcl2.load(handle))
        for block in document.get("resource", []):
            for resource_type, named in block.items():
                for name, body in named.items():
                    module.resources.setdefault(resource_type, {})[name] = body
        for block in document.get("locals", []):
            module.locals.update(block)
        for block in document.get("variable", []):
            module.variables.update(block)
        for block in document.get("output", []):
            module.outputs.update(block)
    return module


@pytest.fixture(scope="session")
def bicep_main() -> BicepFile:
    return _parse_bicep(BICEP / "main.bicep")


@pytest.fixture(scope="session")
def bicep_modules() -> dict[str, BicepFile]:
    return {path.stem: _parse_bicep(path) for path in sorted((BICEP / "modules").glob("*.bicep"))}


@pytest.fixture(scope="session")
def tf_root() -> TerraformModule:
    return _parse_terraform(TERRAFORM)


@pytest.fixture(scope="session")
def tf_modules() -> dict[str, TerraformModule]:
    return {path.name: _parse_terraform(path) for path in sorted((TERRAFORM / "modules").iterdir()) if path.is_dir()}


@pytest.fixture(scope="session")
def tf_main_modules() -> dict[str, dict[str, Any]]:
    """The root's `module` blocks by name: what each module is given."""
    with (TERRAFORM / "main.tf").open(encoding="utf-8") as handle:
        document = unquote(hcl2.load(handle))
    return {name: body for block in document.get("module", []) for name, body in block.items()}
