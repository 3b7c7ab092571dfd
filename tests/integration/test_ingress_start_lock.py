# intent_ref: platform.ingress
"""An ingress start whose input is checked in its transaction (both checks made before it outdated by new versions)
does not hold its tenant's start lock across that check: the tenant's API starts go on meanwhile, and a rejection of
the event recorded meanwhile is still found, under the lock, before anything is written."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from shared.api.durable import get_durable_client
from shared.engine import start as engine_start
from shared.ingress.process import Outcome, process_event
from shared.ingress.request import IngressEvent
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_ingress_launch import _validator
from tests.integration.test_ingress_rejections import _intent
from tests.integration.test_ingress_review_fixes import _event, _sequence
from tests.integration.test_ingress_started_or_rejected import _both, _delivered_beside, _free_quota
from tests.integration.test_start_service import TaskHub

pytestmark = pytest.mark.integration

_WAIT_S = 10.0
"""How long a test waits for the other side to reach the point it is waited at before it fails."""

_PARKED = contextvars.ContextVar("parked", default=False)
"""Set for the delivery whose in-transaction check is held: its checks before the transaction always go stale."""

_CHECKS_BEFORE = 2
"""The input checks the start service makes outside the transaction before it checks inside (INPUT_CHECK_ATTEMPTS)."""


class ParkedCheck:
    """The parked delivery's input check made in its start's transaction, held there until released."""

    def __init__(self) -> None:
        """Nothing checked yet."""
        self.calls = 0
        self.reached = threading.Event()
        self.release = threading.Event()
        self.ended = threading.Event()

    def held(self) -> None:
        """Called on each of the parked delivery's checks: the one in the transaction waits for `release` (at most
        _WAIT_S, so a start blocked behind it fails the test instead of hanging it)."""
        self.calls += 1
        if self.calls <= _CHECKS_BEFORE:
            return
        self.reached.set()
        self.release.wait(_WAIT_S)
        self.ended.set()

    def wait_reached(self) -> None:
        """Until the parked delivery is inside its in-transaction check."""
        assert self.reached.wait(_WAIT_S), "the in-transaction check was never reached"


@pytest.fixture
def parked(monkeypatch: pytest.MonkeyPatch) -> Iterator[ParkedCheck]:
    """Outdate the parked delivery's checks made before its transaction (a new version saved after each) and hold
    its check in the transaction; every other start is checked as ever."""
    check = ParkedCheck()
    real_stands, real_problems = engine_start.InputCheck.stands_for, engine_start._input_problems

    def stands_for(self: engine_start.InputCheck, item: Any, given_input: dict[str, Any]) -> bool:
        return False if _PARKED.get() else real_stands(self, item, given_input)

    def problems(schema: dict[str, Any] | None, values: dict[str, Any]) -> list[dict[str, str]]:
        if _PARKED.get():
            check.held()
        return real_problems(schema, values)

    monkeypatch.setattr(engine_start.InputCheck, "stands_for", stands_for)
    monkeypatch.setattr(engine_start, "_input_problems", problems)
    yield check
    check.release.set()


def _parked_delivery(event: IngressEvent, api: ApiHarness) -> Callable[[], Outcome]:
    """`event` delivered on a thread of its own, its in-transaction check parked; what it gives waits for its
    outcome."""
    outcomes: list[Outcome] = []
    failures: list[BaseException] = []

    def deliver() -> None:
        _PARKED.set(True)
        try:
            outcomes.append(asyncio.run(process_event(event, TaskHub(), _validator(api))))
        except BaseException as exc:  # reported by the test, not lost on the thread
            failures.append(exc)

    thread = threading.Thread(target=deliver, daemon=True)
    thread.start()

    def outcome() -> Outcome:
        thread.join(_WAIT_S)
        assert not thread.is_alive(), "the parked delivery did not finish"
        if failures:
            raise failures[0]
        return outcomes[0]

    return outcome


def test_an_api_start_goes_on_while_an_ingress_start_checks_in_its_transaction(
    api: ApiHarness, parked: ParkedCheck
) -> None:
    # The ingress's start took the tenant's start lock first in its transaction, so on this path it held it across
    # the in-transaction check (seconds for a large input), and every API start of the tenant waited behind it.
    name = "lock-not-held-by-check"
    api.provision(name)
    intent_id = _intent(api, name)
    hub = TaskHub()
    api.client.app.dependency_overrides[get_durable_client] = lambda: hub  # type: ignore[attr-defined]
    event = _event(api, name, {"intent_id": intent_id, "input": {}, "idempotency_key": "slow"}, _sequence())
    delivered = _parked_delivery(event, api)
    parked.wait_reached()

    answer = api.client.post(
        f"/api/v1/intents/{intent_id}/execute", json={"input": {}}, headers=api.headers(name, ["Intent.Executor"])
    )
    assert answer.status_code == 202, answer.text
    # Answered before the check was let go: a start waiting for the lock answers only once the check gave up
    # waiting for its release.
    assert not parked.ended.is_set(), "the API start waited for the ingress's in-transaction check"

    parked.release.set()
    outcome = delivered()
    assert parked.calls == _CHECKS_BEFORE + 1
    assert outcome.created and outcome.execution_id is not None
    assert outcome.execution_id != answer.json()["execution_id"]


def test_a_rejection_recorded_during_the_in_transaction_check_is_found_before_the_start(
    api: ApiHarness, parked: ParkedCheck
) -> None:
    # Delivery 1 looked for the event's record, found none, and is checking the input in its transaction, not
    # holding the lock; the tenant's quota fills (a start refused over quota is refused before its check, so it
    # had room when delivery 1 read); delivery 2 is refused its quota and records the rejection; the quota then
    # frees. Delivery 1 looks again once it holds the lock, before it writes anything, and answers the record
    # instead of starting.
    name = "lock-record-during-check"
    tenant_id = api.provision(name, quotas={"max_concurrent_executions": 1}).id
    intent_id = _intent(api, name)
    sequence = _sequence()
    event = _event(api, name, {"intent_id": intent_id, "input": {}, "idempotency_key": "n"}, sequence)
    first = _parked_delivery(event, api)
    parked.wait_reached()
    busy = _event(api, name, {"intent_id": intent_id, "input": {}, "idempotency_key": "busy"}, sequence + 1)
    assert asyncio.run(process_event(busy, TaskHub(), _validator(api))).created

    second = _delivered_beside(event, TaskHub(), api)()  # not held up by delivery 1, which holds no lock
    assert second == Outcome(event.event_id, reason="quota_exceeded")
    assert not parked.ended.is_set(), "the record waited for delivery 1's in-transaction check"
    _free_quota(api, tenant_id)

    parked.release.set()
    assert first() == Outcome(event.event_id, reason="quota_exceeded")
    assert parked.calls == _CHECKS_BEFORE + 1
    assert _both(api, tenant_id, "n") == ([], ["quota_exceeded"])


_INTERLEAVED = contextvars.ContextVar("interleaved", default=False)
"""Set for the delivery before whose start's key lookup the other deliveries are processed."""


def test_a_rejection_recorded_before_the_keys_execution_answers_a_replay_of_it(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Delivery 1 of event 1 found no record; before its start looked up the key, delivery 2 of event 1 was refused
    # its quota and recorded it, and then event 2 (the same request under the same key) started it. Delivery 1 finds
    # event 2's execution by the key: a replay, which takes no lock, looks for the record again first (committed
    # before that execution, which waited for the record's lock), and answers the rejection, not the execution.
    # The tenant's quota fills only after delivery 1 read it (a start refused over quota is refused before its
    # input's check).
    name = "lock-record-before-replay"
    tenant_id = api.provision(name, quotas={"max_concurrent_executions": 1}).id
    intent_id = _intent(api, name)
    sequence = _sequence()
    body = {"intent_id": intent_id, "input": {}, "idempotency_key": "n"}
    event, again = _event(api, name, body, sequence), _event(api, name, body, _sequence())
    busy = _event(api, name, {"intent_id": intent_id, "input": {}, "idempotency_key": "busy"}, sequence + 1)
    real_by_key, lookups, others = engine_start._by_key, [0], list[Outcome]()

    def by_key(conn: Any, key: str | None) -> Any:
        if _INTERLEAVED.get():
            lookups[0] += 1
            if lookups[0] == 2:  # the start's own (the first is its read's, before the input's check)
                assert _delivered_beside(busy, TaskHub(), api)().created
                others.append(_delivered_beside(event, TaskHub(), api)())
                _free_quota(api, tenant_id)
                others.append(_delivered_beside(again, TaskHub(), api)())
        return real_by_key(conn, key)

    monkeypatch.setattr(engine_start, "_by_key", by_key)

    def deliver() -> Outcome:
        _INTERLEAVED.set(True)
        return asyncio.run(process_event(event, TaskHub(), _validator(api)))

    answer = contextvars.Context().run(deliver)
    assert others[0] == Outcome(event.event_id, reason="quota_exceeded")
    assert others[1].created
    assert answer == Outcome(event.event_id, reason="quota_exceeded")
    assert _both(api, tenant_id, "n") == ([others[1].execution_id], ["quota_exceeded"])
