# intent_ref: platform.gateway
"""A request whose transaction the database rolled back for a concurrent one (a deadlock's victim, a serialization
failure) is answered 503 with Retry-After, saying so, not that the database is unavailable."""

from __future__ import annotations

import json

import psycopg
import pytest

from shared.api.problems import DEPENDENCY_RETRY_AFTER_S, error_response


@pytest.mark.parametrize("exc", [psycopg.errors.DeadlockDetected("deadlock detected"),
                                 psycopg.errors.SerializationFailure("could not serialize access")])  # fmt: skip
def test_a_conflict_with_a_concurrent_request_is_a_503_that_says_so(exc: psycopg.Error) -> None:
    answer = error_response(exc, instance="/api/v1/webhooks/x", request_id="r-1")
    body = json.loads(answer.body)
    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == str(DEPENDENCY_RETRY_AFTER_S)
    assert body["type"].endswith("/dependency-unavailable") and body["request_id"] == "r-1"
    assert body["detail"] == (
        f"The request conflicted with a concurrent one; retry after {DEPENDENCY_RETRY_AFTER_S} seconds."
    )


def test_a_conflict_inside_a_task_group_is_answered_the_same() -> None:
    wrapped = ExceptionGroup("one failure", [psycopg.errors.DeadlockDetected("deadlock detected")])
    body = json.loads(error_response(wrapped, instance="/x", request_id="r-2").body)
    assert body["detail"].startswith("The request conflicted with a concurrent one;")


def test_a_database_that_cannot_be_reached_is_still_unavailable() -> None:
    answer = error_response(psycopg.OperationalError("connection refused"), instance="/x", request_id="r-3")
    body = json.loads(answer.body)
    assert answer.status_code == 503 and answer.headers["Retry-After"] == str(DEPENDENCY_RETRY_AFTER_S)
    assert (
        body["detail"] == f"The database is unavailable at the moment; retry after {DEPENDENCY_RETRY_AFTER_S} seconds."
    )
