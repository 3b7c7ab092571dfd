# intent_ref: platform.devhost
"""Index a v2-model function app the way the Python worker does: one FunctionRegister, get_functions() once."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import azure.functions as func


class FunctionAppLoadError(RuntimeError):
    """The script does not define exactly one function app, or its functions are inconsistent."""


@dataclass
class FunctionIndex:
    """Every function of the app, grouped by trigger type; durable functions by their durable name."""

    app: func.FunctionRegister
    functions: dict[str, func.Function] = field(default_factory=dict)
    http: list[func.Function] = field(default_factory=list)
    orchestrators: dict[str, func.Function] = field(default_factory=dict)
    activities: dict[str, func.Function] = field(default_factory=dict)
    entities: dict[str, func.Function] = field(default_factory=dict)
    eventhub: list[func.Function] = field(default_factory=list)
    timers: list[func.Function] = field(default_factory=list)
    other: list[func.Function] = field(default_factory=list)
    app_dir: Path | None = None
    """The folder of the script the app was loaded from (its host.json beside it); None for an index built from an
    app object alone."""


def trigger_of(function: func.Function) -> Any:
    """The function's trigger binding (every indexed function has exactly one; its attributes vary by type)."""
    trigger = function.get_trigger()
    if trigger is None:
        raise FunctionAppLoadError(f"function {function.get_function_name()} has no trigger")
    return trigger


def function_name(function: func.Function) -> str:
    """The function's name as the host knows it."""
    return str(function.get_function_name())


def durable_name(function: func.Function) -> str:
    """The name the Durable extension registers: the trigger's orchestration/activity/entity name, else its own."""
    trigger = trigger_of(function)
    for attribute in ("orchestration", "activity", "entity_name"):
        value = getattr(trigger, attribute, None)
        if value:
            return str(value)
    return function_name(function)


def import_script(script: Path) -> ModuleType:
    """Import `script` (e.g. function_app.py) as a module, with its folder first on sys.path like the worker."""
    script = script.resolve()
    root = str(script.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    module_name = script.stem
    if module_name in sys.modules and getattr(sys.modules[module_name], "__file__", None) == str(script):
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, script)
    if spec is None or spec.loader is None:
        raise FunctionAppLoadError(f"cannot import {script}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def find_app(module: ModuleType) -> func.FunctionRegister:
    """The single FunctionRegister among the module's globals (the worker refuses none or several)."""
    apps = [value for value in vars(module).values() if isinstance(value, func.FunctionRegister)]
    if len(apps) != 1:
        raise FunctionAppLoadError(
            f"{module.__name__} must define exactly one function app (FunctionApp / DFApp); found {len(apps)}"
        )
    return apps[0]


def build_index(app: func.FunctionRegister) -> FunctionIndex:
    """Call get_functions() (it is not idempotent: call once per app object) and group the result."""
    index = FunctionIndex(app=app)
    for function in app.get_functions():
        index.functions[function_name(function)] = function
        trigger_type = trigger_of(function).type
        if trigger_type == "httpTrigger":
            index.http.append(function)
        elif trigger_type == "orchestrationTrigger":
            index.orchestrators[durable_name(function)] = function
        elif trigger_type == "activityTrigger":
            index.activities[durable_name(function)] = function
        elif trigger_type == "entityTrigger":
            index.entities[durable_name(function)] = function
        elif trigger_type == "eventHubTrigger":
            index.eventhub.append(function)
        elif trigger_type == "timerTrigger":
            index.timers.append(function)
        else:
            index.other.append(function)
    return index


_indexes: dict[int, FunctionIndex] = {}


def load_function_app(script: Path) -> FunctionIndex:
    """Import the script, find its app and index its functions (once per app object, as the worker does)."""
    app = find_app(import_script(script))
    index = _indexes.get(id(app))
    if index is None or index.app is not app:
        index = _indexes[id(app)] = build_index(app)
    index.app_dir = script.resolve().parent
    return index
