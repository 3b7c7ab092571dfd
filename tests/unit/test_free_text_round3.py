# intent_ref: platform.hardening
"""Free text, third round: a remote module registration's description and a tenant policy's description are shown
as written (refused at the edge, their lines kept); a worker's progress message is neutralised, not refused (a
refused heartbeat extends no lease; a NUL or a lone surrogate is refused at the edge, as in every body); an
approval's message resolved at run time is neutralised (`shown_message`).

Through the app without I/O, as tests/unit/edge_harness.py sets it up: every refusal here comes before any
transaction, so the database is one that does not exist and nothing can have changed."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from devhost.identity import SigningKey
from shared.api.routers.work import HeartbeatRequest, Progress
from shared.auth.principal import TENANT_ADMIN
from shared.engine.progress import shown_message
from shared.free_text import REPLACEMENT, neutralised, unshown_problem
from shared.policy.tenant_policies import TenantPolicyCreate
from shared.registry.modules import ModuleRegistration
from tests.unit.edge_harness import (  # noqa: F401  # the fixtures client, key, validator
    bearer,
    client,
    key,
    validation_problem,
    validator,
)

# Refused in a description (text of several lines): a line feed and a tab are not among them.
UNSHOWN = ["\x1b[2J", "a\x00b", "\x7f", "\x85", "evil\u202etxt.exe", "\u2066x\u2069", "over\rwritten", "a\u2028b"]
FOR_PEOPLE = "Builds of the Zürich team \u2014 \u05e9\u05dc\u05d5\u05dd \U0001f680\nsecond line\twith a tab"
SCHEMA = {"type": "object", "properties": {"chart": {"type": "string"}}}
POLICY = 'forbid (principal, action == QP::Action::"intent.execute", resource) when { resource.labels.contains("x") };'


@pytest.fixture()
def admin(key: SigningKey) -> dict[str, str]:
    return bearer(key, TENANT_ADMIN)


def _refused_naming(answer: Any, pointer: str, text: str) -> None:
    problem = validation_problem(answer)
    assert [error["pointer"] for error in problem["errors"]] == [pointer], problem
    detail = problem["errors"][0]["detail"]
    assert "U+" in detail and text not in detail, detail  # named by code point, never echoed


# ---- a module registration's and a policy's description are refused at the edge -----------------------------------


@pytest.mark.parametrize("text", UNSHOWN)
def test_a_module_description_that_would_act_where_shown_is_refused(
    client: TestClient, admin: dict[str, str], text: str
) -> None:
    body = {"action": "helm-upgrade", "description": text, "params_schema": SCHEMA}
    _refused_naming(client.post("/api/v1/modules", json=body, headers=admin), "/description", text)


@pytest.mark.parametrize("text", UNSHOWN)
def test_a_policy_description_that_would_act_where_shown_is_refused(
    client: TestClient, admin: dict[str, str], text: str
) -> None:
    body = {"name": "no-friday-production", "description": text, "policy": POLICY}
    _refused_naming(client.post("/api/v1/policies", json=body, headers=admin), "/description", text)


def test_descriptions_for_people_pass_with_their_lines() -> None:
    module = ModuleRegistration.model_validate(
        {"action": "helm-upgrade", "description": FOR_PEOPLE, "params_schema": SCHEMA}
    )
    policy = TenantPolicyCreate.model_validate({"name": "p", "description": FOR_PEOPLE, "policy": POLICY})
    assert module.description == policy.description == FOR_PEOPLE
    assert ModuleRegistration.model_validate({"action": "a", "params_schema": SCHEMA}).description == ""
    assert TenantPolicyCreate.model_validate({"name": "p", "policy": POLICY}).description == ""
    # The length bound still comes first, with its own error.
    with pytest.raises(ValidationError) as caught:
        TenantPolicyCreate.model_validate({"name": "p", "description": "\x1b" * 501, "policy": POLICY})
    assert [error["type"] for error in caught.value.errors()] == ["string_too_long"]


def test_the_document_states_the_rule(client: TestClient) -> None:
    schemas = client.app.openapi()["components"]["schemas"]  # type: ignore[attr-defined]
    for schema in ("ModuleRegistration", "TenantPolicyCreate"):
        described = str(schemas[schema]["properties"]["description"])
        assert "no control characters but line feeds and tabs" in described, (schema, described)
    described = str(schemas["Progress"]["properties"]["message"])
    # Controls are replaced; a NUL or a lone surrogate is refused like in every body (the edge's rule, ADR 0023).
    assert "are each replaced by U+FFFD, not refused" in described, described
    assert "refused with 422 `unstorable_text`" in described, described


# ---- a worker's progress message is neutralised, not refused (NUL and lone surrogates aside) ----------------------


@pytest.mark.parametrize("text", UNSHOWN)
def test_a_progress_message_is_neutralised_not_refused(text: str) -> None:
    beat = HeartbeatRequest.model_validate(
        {"lease_id": "3f2e1d0c-9b8a-4765-a4b3-c2d1e0f9a8b7", "progress": {"percent": 40, "message": text}}
    )
    assert beat.progress is not None and beat.progress.message is not None
    assert unshown_problem(beat.progress.message, lines=True) is None
    assert REPLACEMENT in beat.progress.message and len(beat.progress.message) == len(text)


def test_a_progress_message_keeps_its_lines_and_its_bounds() -> None:
    assert Progress.model_validate({"message": "layer 3\r\nlayer 4\tok"}).message == "layer 3\nlayer 4\tok"
    assert Progress.model_validate({"message": None}).message is None
    for wrong, kind in (("", "string_too_short"), ("x" * 501, "string_too_long"), (5, "string_type")):
        with pytest.raises(ValidationError) as caught:
            Progress.model_validate({"message": wrong})
        assert [(error["type"], error["loc"]) for error in caught.value.errors()] == [(kind, ("message",))]


# ---- an approval's message resolved at run time is neutralised ------------------------------------------------------


@pytest.mark.parametrize("text", UNSHOWN)
def test_a_resolved_approval_message_is_neutralised(text: str) -> None:
    shown = shown_message(f"Ship {text}?\nSee the change log.")
    assert isinstance(shown, str) and unshown_problem(shown, lines=True) is None
    assert shown.endswith("?\nSee the change log.") and REPLACEMENT in shown


def test_a_resolved_approval_message_for_people_is_shown_as_written() -> None:
    assert shown_message(FOR_PEOPLE) == FOR_PEOPLE
    assert shown_message(None) is None
    assert shown_message({"note": "\x1b"}) == {"note": "\x1b"}  # not text: shown as the JSON it is


def test_neutralised_replaces_one_for_one() -> None:
    assert neutralised("a\x1bb\nc") == "a\ufffdb\ufffdc"  # one line: its line feed goes too
    assert neutralised("a\x1bb\r\nc\u202e", lines=True) == "a\ufffdb\nc\ufffd"
    assert neutralised(FOR_PEOPLE, lines=True) == FOR_PEOPLE
