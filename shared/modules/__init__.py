# intent_ref: platform.modules
"""Built-in modules and the registry the module worker runs them from."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from shared.modules.artifact_write import ArtifactWriteModule
from shared.modules.contract import Module, ModuleContext, StepFailed, invoke, run_registered
from shared.modules.event_emit import EventEmitModule
from shared.modules.http_request import HttpRequestModule
from shared.modules.http_wait_healthy import HttpWaitHealthyModule, VerifyDeploymentModule


def _registry(*modules: Module[Any]) -> Mapping[str, Module[Any]]:
    by_action: dict[str, Module[Any]] = {}
    for module in modules:
        if module.action in by_action:
            raise ValueError(f"module {module.action!r} registered twice")
        by_action[module.action] = module
    return MappingProxyType(by_action)


BUILTIN_MODULES: Mapping[str, Module[Any]] = _registry(
    HttpRequestModule(),
    HttpWaitHealthyModule(),
    VerifyDeploymentModule(),
    ArtifactWriteModule(),
    EventEmitModule(),
)
"""Adding a module: one file with a `Module` subclass, one line here (and its spec in the registry catalog)."""


def run_module(
    action: str, ctx: ModuleContext, raw_params: Any, modules: Mapping[str, Module[Any]] = BUILTIN_MODULES
) -> Any:
    """Validate `raw_params` and run `action`; every failure, invalid parameters included, is `StepFailed`."""
    return run_registered(modules, action, ctx, raw_params)


__all__ = ["BUILTIN_MODULES", "Module", "ModuleContext", "StepFailed", "invoke", "run_module"]
