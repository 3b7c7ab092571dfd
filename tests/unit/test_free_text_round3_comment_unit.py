# intent_ref: platform.hardening
"""An approval's comment is shown as written: one that would act where it is shown is refused at the edge, its lines
kept (ApprovalDecision in shared/api/routers/execution_control.py)."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient

from devhost.identity import SigningKey
from shared.api.durable import get_durable_client
from shared.auth.principal import INTENT_APPROVER
from tests.unit.edge_harness import (  # noqa: F401  # the fixtures client, key, validator
    bearer,
    client,
    key,
    validation_problem,
    validator,
)
from tests.unit.test_free_text_round3 import UNSHOWN


@pytest.mark.parametrize("decision", ["approve", "reject"])
@pytest.mark.parametrize("text", UNSHOWN)
def test_an_approval_comment_that_would_act_where_shown_is_refused(
    client: TestClient, key: SigningKey, text: str, decision: str
) -> None:
    # Bound, as a function host binds it: the refusal is the body's, not the missing client's.
    client.app.dependency_overrides[get_durable_client] = lambda: object()  # type: ignore[attr-defined]
    answer = client.post(
        f"/api/v1/executions/{uuid.uuid4()}/approvals/gate",
        json={"decision": decision, "comment": text},
        headers=bearer(key, INTENT_APPROVER),
    )
    problem = validation_problem(answer)
    assert [error["pointer"] for error in problem["errors"]] == ["/comment"], problem
    assert "U+" in problem["errors"][0]["detail"] and text not in problem["errors"][0]["detail"]


def test_the_document_states_the_comment_rule(client: TestClient) -> None:
    schemas = client.app.openapi()["components"]["schemas"]  # type: ignore[attr-defined]
    assert "no control characters but line feeds and tabs" in str(schemas["ApprovalDecision"]["properties"]["comment"])
