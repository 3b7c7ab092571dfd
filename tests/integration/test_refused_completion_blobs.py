# intent_ref: platform.execution
"""A remote completion whose spend is refused leaves no stored output behind: racing results keep only the
winner's blob, and a result whose lease ran out while its output was uploaded keeps none (ADR 0027)."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from shared.config import get_settings
from shared.db.session import tenant_transaction
from shared.engine import payloads, remote
from shared.engine.steps import AttemptKey
from shared.storage.blob import request_container
from shared.tenants.offboarding import tenant_blob_prefix
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.security.test_task_token_no_trace import RemoteAttempt, big_output, remote_attempt, stored_output

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tenant(api: ApiHarness) -> uuid.UUID:  # noqa: F811  # the fixture
    return api.provision("refused-blobs").id


def _blobs(attempt: RemoteAttempt) -> list[str]:
    """Every blob stored under the attempt's execution."""
    prefix = f"{tenant_blob_prefix(attempt.tenant_id)}executions/{attempt.key.execution_id}/"
    return sorted(blob.name for blob in request_container(get_settings()).list_blobs(name_starts_with=prefix))


def _send(attempt: RemoteAttempt, output: Any) -> remote.Recorded:
    return remote.record(
        attempt.token,
        attempt.key.execution_id,
        attempt.key.step_id,
        attempt.key.phase,
        remote.RemoteResult(ok=True, output=output),
    )


def test_racing_completions_leave_only_the_winners_blob(
    api: ApiHarness,  # noqa: F811  # the fixture
    app_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
) -> None:
    attempt = remote_attempt(app_pool, tenant)
    start = threading.Barrier(6)
    outcomes: dict[str, Any] = {}

    def report(marker: str) -> None:
        start.wait()
        try:
            outcomes[marker] = _send(attempt, big_output(marker))
        except (remote.TokenUsedError, remote.LeaseExpiredError) as exc:
            outcomes[marker] = exc

    threads = [threading.Thread(target=report, args=(f"m{index}",)) for index in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [marker for marker, outcome in outcomes.items() if isinstance(outcome, remote.Recorded)]
    assert len(winners) == 1 and len(outcomes) == 6, outcomes
    reference = stored_output(app_pool, attempt)
    assert _blobs(attempt) == [reference[payloads.BLOB_REF]["name"]]
    assert payloads.load(reference, tenant)["marker"] == winners[0]


def test_a_result_whose_lease_ran_out_during_its_upload_leaves_no_blob(
    api: ApiHarness,  # noqa: F811  # the fixture
    app_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    attempt = remote_attempt(app_pool, tenant)
    # Another step of the execution stored the same bytes: their blob is that step's, and stays.
    other = payloads.claim_check(tenant, AttemptKey(attempt.key.execution_id, "deploy", "run", 1), big_output("late"))
    stored = remote.claim_check

    def upload_then_expire(*args: Any, **kwargs: Any) -> Any:
        reference = stored(*args, **kwargs)
        with tenant_transaction(tenant, pool=app_pool) as conn:
            conn.execute(
                "UPDATE app.work_items SET lease_expires_at = clock_timestamp() - interval '1 second'"
                " WHERE execution_id = %s",
                (attempt.key.execution_id,),
            )
        return reference

    monkeypatch.setattr(remote, "claim_check", upload_then_expire)
    with pytest.raises(remote.LeaseExpiredError):
        _send(attempt, big_output("late"))
    assert _blobs(attempt) == [other[payloads.BLOB_REF]["name"]]


def test_a_repeat_in_other_bytes_keeps_only_the_recorded_blob(
    api: ApiHarness,  # noqa: F811  # the fixture
    app_pool: ConnectionPool[Any],
    tenant: uuid.UUID,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A copy of the request recorded the same value first, its members in another order: the repeat is answered,
    # and its own blob (another digest) is removed.
    attempt = remote_attempt(app_pool, tenant)
    output = big_output("same")
    reordered = dict(reversed(list(output.items())))
    stored = remote.claim_check

    def upload_then_lose(*args: Any, **kwargs: Any) -> Any:
        reference = stored(*args, **kwargs)
        monkeypatch.setattr(remote, "claim_check", stored)
        _send(attempt, output)  # the copy that records first
        return reference

    monkeypatch.setattr(remote, "claim_check", upload_then_lose)
    repeat = _send(attempt, reordered)
    reference = stored_output(app_pool, attempt)
    assert repeat.verdict == {"ok": True, "output": reference}
    assert _blobs(attempt) == [reference[payloads.BLOB_REF]["name"]]
