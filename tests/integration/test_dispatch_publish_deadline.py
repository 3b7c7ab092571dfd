# intent_ref: platform.execution
"""A dispatch's publish of its work on `module-work` ends by its deadline: untimed, a hub link whose open hung (a hub
that accepts the connection and never answers) held the dispatch activity and the hub's turn for the SDK's retries
(minutes). Given up, the activity's retry publishes the same work on a fresh link."""

from __future__ import annotations

import uuid

import pytest

from shared.engine import work_hub
from shared.engine.protocol import WorkItem
from shared.events.publisher import PublishTimeoutError
from tests.integration.test_module_worker_claims import BOUND_S
from tests.integration.test_publish_resend_stuck_link import _Answering, _Publisher
from tests.integration.test_sdk_module_deadlines import _Run, _Silent, silent  # noqa: F401  # the fixture

pytestmark = pytest.mark.integration

DEADLINE_S = 2.0
"""The dispatch's deadline here; the SDK's own open against a silent hub lasts minutes."""


def _item(attempt: int) -> WorkItem:
    return WorkItem(
        tenant_id=uuid.UUID(int=7),
        execution_id=uuid.UUID(int=8),
        step_id="announce",
        phase="run",
        attempt=attempt,
        action="event.emit",
        params={"type": "custom.deploy.done", "data": {}},
        remote=False,
        timeout_s=30,
    )


def test_a_dispatch_publish_against_a_silent_hub_ends_by_its_deadline_and_its_retry_sends_on_a_fresh_link(
    silent: _Silent,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    publisher = _Publisher(silent.port, silent_links=1)  # its first producer is a real one for the silent hub
    monkeypatch.setattr(work_hub, "get_publisher", lambda: publisher)
    monkeypatch.setattr(work_hub, "PUBLISH_TIMEOUT_S", DEADLINE_S)
    try:
        first = _Run(lambda: work_hub.publish_work([_item(1)]))
        assert first.ended(), (
            f"the dispatch's publish had not ended after {BOUND_S:g} s: it waited on the hub's stuck link open"
        )
        assert isinstance(first.error, PublishTimeoutError), f"not given up by its deadline: {first.error!r}"
        again = _Run(lambda: work_hub.publish_work([_item(1)]))  # the activity's retry: the same work
        assert again.ended() and again.error is None, f"the retry did not send on a fresh link: {again.error!r}"
        assert len(publisher.built) == 2 and isinstance(publisher.built[1], _Answering)
        assert len(publisher.built[1].sent) == 1, "the retry's work was not sent"
    finally:
        silent.close()
        publisher.close()
