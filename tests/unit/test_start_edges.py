# intent_ref: platform.execution
"""The start service knows nothing of HTTP: the engine and the ingress import no API or web framework, and each edge
translates every refusal of a start (the API to problem+json, the ingress to a reason and the same document)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from shared.accepted_json import NotAcceptedJSONError, Refusal
from shared.api.accepted_input import refused_problem
from shared.api.problems import FieldError, ProblemError, json_pointer, problem_document
from shared.api.start_problems import launch_problem, start_problem
from shared.engine import start as engine
from shared.engine.start_service import OrchestrationUnavailableError
from shared.ingress.rejecting import Rejected, invalid_body, not_accepted, refused_start
from shared.policy.gates import GateViolation

ROOT = Path(__file__).resolve().parents[2]
HTTP_FREE = ("shared/engine", "shared/ingress", "shared/check_gate.py")
"""Folders (each file in them) and files: the check gate too, which the start path takes its turns at."""
FORBIDDEN_PREFIXES = ("shared.api", "fastapi", "starlette")


def _imports(source: str, package: str) -> list[str]:
    """Every module a module's source imports (at any depth), relative imports resolved against its package."""
    names: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names.append(base)
            names.extend(f"{base}.{alias.name}" for alias in node.names)
    return names


def _forbidden(name: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in FORBIDDEN_PREFIXES)


@pytest.mark.parametrize(
    "source",
    [
        "import fastapi",
        "from starlette.concurrency import run_in_threadpool",
        "from shared.api.problems import ProblemError",
        "from shared import api",
        "from ..api import starting",
        "from .. import api",
        "def f() -> None:\n    import shared.api.security",
    ],
)
def test_the_walk_sees_a_forbidden_import_however_it_is_spelled(source: str) -> None:
    # Else the boundary test below would pass on a file that does import the API.
    assert any(_forbidden(name) for name in _imports(source, "shared.engine"))


def test_the_walk_lets_the_engines_own_imports_through() -> None:
    source = "from shared.engine.start import StartError\nimport shared.apis_elsewhere\nfrom . import steps"
    assert not any(_forbidden(name) for name in _imports(source, "shared.engine"))


def test_the_engine_and_the_ingress_import_neither_the_api_nor_a_web_framework() -> None:
    found = {
        str(path.relative_to(ROOT)): name
        for folder in HTTP_FREE
        for path in ([ROOT / folder] if folder.endswith(".py") else sorted((ROOT / folder).rglob("*.py")))
        for name in _imports(path.read_text(), ".".join(path.relative_to(ROOT).parts[:-1]))
        if _forbidden(name)
    }
    assert found == {}


def test_nothing_they_import_brings_in_the_api_or_a_web_framework_either() -> None:
    script = (
        "import importlib, json, pkgutil, sys\n"
        "import shared.engine, shared.ingress\n"
        "for package in (shared.engine, shared.ingress):\n"
        "    for info in pkgutil.iter_modules(package.__path__):\n"
        "        importlib.import_module(f'{package.__name__}.{info.name}')\n"
        f"print(json.dumps(sorted(n for n in sys.modules if n.startswith({FORBIDDEN_PREFIXES!r}))))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(result.stdout) == []


def _all_subclasses(kind: type[Exception]) -> set[type[Exception]]:
    found: set[type[Exception]] = set()
    for sub in kind.__subclasses__():
        found |= {sub, *_all_subclasses(sub)}
    return found


# One refusal of each kind, and the reason a producer reads for it (ADR 0019, ADR 0022 for the reused key).
REFUSALS: list[tuple[engine.StartError, str, int]] = [
    (engine.IntentNotFoundError("No intent 5d7e1f0a-3b2c-4d5e-8f90-1a2b3c4d5e6f."), "not_found", 404),
    (engine.StartForbiddenError("intent.execute", "no_permit"), "forbidden", 403),
    (engine.GateRefusedError([GateViolation("deploy", "module_not_allowed", "http.request")]), "forbidden", 403),
    (engine.TenantSuspendedError("tenant is suspended"), "forbidden", 403),
    (engine.InvalidInputError([{"pointer": "/input/version", "detail": "1 is not a string"}]), "invalid", 422),
    (engine.IdempotencyConflictError("the key was used for a different request"), "invalid", 422),
    (engine.QuotaExceededError(3), "quota_exceeded", 429),
    (engine.PlanChangedError("a" * 64, "b" * 64), "conflict", 409),
    (engine.IntentArchivedError("intent is archived"), "conflict", 409),
    (engine.NoLongerValidError("module gone"), "conflict", 409),
    (engine.InputTooLargeError(3_400_000, 1_000_000), "invalid", 413),
]


def _api_document(problem: ProblemError, instance: str) -> dict[str, Any]:
    return problem_document(
        problem.status,
        problem.slug,
        problem.title,
        problem.detail,
        instance=instance,
        errors=problem.errors,
        extensions=problem.extensions,
    )


def _stored(document: dict[str, Any]) -> Any:
    # What the rejection table keeps and the listing answers: the document as JSON.
    return json.loads(json.dumps(document))


class _Unheard(engine.StartError):
    """A refusal added to the engine before its edges learnt it."""


def test_every_refusal_of_a_start_has_a_case_here() -> None:
    assert {type(exc) for exc, _, _ in REFUSALS} == _all_subclasses(engine.StartError) - {_Unheard}


@pytest.mark.parametrize(("exc", "reason", "status"), REFUSALS, ids=lambda v: type(v).__name__)
def test_each_edge_translates_a_refusal_to_the_same_document(exc: engine.StartError, reason: str, status: int) -> None:
    problem = start_problem(exc)
    rejected = refused_start(exc)
    assert problem.status == status
    assert rejected is not None and rejected.reason == reason
    instance = "intent-requests/0/7"
    assert _stored(rejected.document(instance)) == _stored(_api_document(problem, instance))
    assert str(rejected) == (problem.detail or problem.title)


def test_the_api_keeps_its_headers_and_the_domain_data_of_a_refusal() -> None:
    quota = start_problem(engine.QuotaExceededError(3))
    assert (quota.slug, quota.headers, quota.extensions) == ("execution-quota", {"Retry-After": "30"}, {"limit": 3})
    gate = start_problem(engine.GateRefusedError([GateViolation("deploy", "module_not_allowed", "http.request")]))
    assert gate.extensions["violations"] == [
        {"step": "deploy", "reason": "module_not_allowed", "value": "http.request"}
    ]
    denied = start_problem(engine.StartForbiddenError("intent.execute", "no_permit"))
    assert (denied.detail, denied.extensions) == ("Not allowed to intent.execute.", {"reason": "no_permit"})
    production = start_problem(engine.StartForbiddenError("intent.execute", "production_requires_deployer"))
    assert production.detail == "Not allowed to intent.execute: production targets need the Intent.Deployer role."
    large = start_problem(engine.InputTooLargeError(3_400_000, 1_000_000))
    assert (large.slug, large.extensions) == ("orchestration-input-too-large", {"size": 3_400_000, "limit": 1_000_000})
    launch = launch_problem(OrchestrationUnavailableError(uuid4(), "hub down"))
    assert (launch.status, launch.slug, launch.headers) == (503, "orchestration-unavailable", {"Retry-After": "5"})


def test_a_refusal_an_edge_does_not_know_is_a_server_error_and_never_a_rejection() -> None:
    assert start_problem(_Unheard("new")).status == 500
    assert refused_start(_Unheard("new")) is None  # raised by the ingress: retried, never recorded


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


@pytest.mark.parametrize("body", [{"name": 1, "tenant_id": "x"}, {"body": 1, "name": "ok"}, {"a/b~c": 1, "name": "n"}])
def test_an_invalid_body_gets_the_document_the_api_gives_a_field_error(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as caught:
        _Body.model_validate(body)
    errors = caught.value.errors()
    api = ProblemError(
        422,
        "validation-error",
        "Request validation failed",
        f"{len(errors)} invalid field(s)",
        errors=[FieldError(pointer=json_pointer(e["loc"]), detail=e["msg"]) for e in errors],
    )
    rejected = invalid_body(caught.value)
    assert rejected.reason == "invalid"
    assert _stored(rejected.document("i")) == _stored(_api_document(api, "i"))


def test_a_body_that_is_not_accepted_json_gets_the_document_the_api_edge_gives_it() -> None:
    exc = NotAcceptedJSONError([Refusal("/input/name", "the text holds a NUL character", "unstorable_text")])
    rejected = not_accepted(exc)
    assert rejected.reason == "invalid"
    assert _stored(rejected.document("i")) == _stored(_api_document(refused_problem(exc), "i"))


def test_a_rejection_documents_only_the_members_it_has() -> None:
    document = Rejected("conflict", 409, "archived", "Conflict").document("intent-requests/1/2")
    assert document == {
        "type": "https://quantum-platform.dev/problems/archived",
        "title": "Conflict",
        "status": 409,
        "instance": "intent-requests/1/2",
    }


def test_an_orchestration_input_is_measured_as_the_durable_client_posts_it() -> None:
    # The client serializes the input to a JSON string, then posts that string as a JSON body: measured as the first
    # serialization only, an input under the bound reached the host a fifth larger (twice as large for quotes).
    from aiohttp.payload import JsonPayload
    from azure.durable_functions.models.DurableOrchestrationClient import DurableOrchestrationClient

    from shared.engine.start import input_size

    for start_input in ({"inputs": {"text": 'say "hi" \\ é 😀' * 50}}, {"definition": {"steps": [{"id": "a"}] * 20}}):
        posted = JsonPayload(DurableOrchestrationClient._get_json_input(start_input))
        assert input_size(start_input) == posted.size
