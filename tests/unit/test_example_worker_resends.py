# intent_ref: platform.execution
"""The example worker sends a result answered 5xx (or not at all) again until the item's deadline, not only while
its lease lasts: the platform takes a repeat of a recorded result until then, and only a repeat gets a hand-over that
failed made (ADR 0027, amended 2026-12-07); and it sends a result's task token in the X-Task-Token header, which the
platform verifies before it reads the body."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from examples.workers import remote_worker

LEASE_S = 60.0
DEADLINE_S = 600.0


class Clock:
    """The worker's monotonic clock, moved on by its waits instead of passing."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class Stop:
    """The worker's stop event: never set; a wait moves the clock on."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def is_set(self) -> bool:
        return False

    def wait(self, seconds: float) -> bool:
        self.clock.now += seconds
        return False


class FakeApi:
    """The platform: answers each result with the next of `answers` (a status, or None for no answer), then 200."""

    def __init__(self, clock: Clock, answers: Sequence[int | None]) -> None:
        self.stop = Stop(clock)
        self.answers = list(answers)
        self.sent: list[dict[str, Any]] = []

    def post(self, url: str, body: dict[str, Any], **_: Any) -> httpx.Response:
        self.sent.append(body)
        status = self.answers.pop(0) if self.answers else 200
        if status is None:
            raise httpx.ConnectError("no answer")
        request = httpx.Request("POST", f"http://testserver{url}")
        content = {"state": "succeeded"} if status == 200 else {"detail": "unavailable"}
        return httpx.Response(status, json=content, request=request)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(remote_worker, "time", SimpleNamespace(monotonic=clock.monotonic))  # its module only
    return clock


def _item() -> dict[str, Any]:
    deadline = datetime.now(UTC) + timedelta(seconds=DEADLINE_S)
    return {"task_token": "t", "deadline": deadline.isoformat().replace("+00:00", "Z")}


def _report(api: FakeApi, clock: Clock) -> str:
    until = clock.now + LEASE_S  # the lease as the worker last heard of it
    return remote_worker._report(api, "/complete", _item(), {"output": {}}, until, "completed")  # type: ignore[arg-type]


@pytest.mark.parametrize("answer", [503, None], ids=["503", "no answer"])
def test_a_result_answered_5xx_is_sent_again_after_its_lease_until_taken(clock: Clock, answer: int | None) -> None:
    # 40 resends 5 s apart: well past the 60 s lease, inside the 600 s deadline. The worker gave up at the lease.
    api = FakeApi(clock, [answer] * 40)
    assert _report(api, clock) == "completed"
    assert len(api.sent) == 41 and clock.now - 1000.0 > LEASE_S


def test_it_stops_at_the_items_deadline(clock: Clock) -> None:
    api = FakeApi(clock, [503] * 10_000)
    assert _report(api, clock) == "unreported"
    assert DEADLINE_S - 10 <= clock.now - 1000.0 <= DEADLINE_S + remote_worker._RESEND_S


def test_a_result_never_answered_5xx_still_stops_with_its_lease(clock: Clock) -> None:
    # 429: the platform took nothing (too many requests), so nothing recorded waits for a repeat.
    api = FakeApi(clock, [429] * 10_000)
    assert _report(api, clock) == "unreported"
    assert clock.now - 1000.0 <= LEASE_S + remote_worker._RESEND_S


def test_a_lease_expired_answer_ends_the_resends(clock: Clock) -> None:
    api = FakeApi(clock, [503] * 20 + [409])
    assert _report(api, clock) == "conflict"


def test_a_result_carries_its_task_token_in_the_header_and_the_body() -> None:
    # The header is verified before the platform reads the body, so the result never waits behind bodies without a
    # valid token; the body's copy, the same, keeps a platform from before the header taking it (ADR 0027).
    seen: list[httpx.Request] = []

    def platform(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"state": "succeeded"})

    client = httpx.Client(base_url="http://platform", transport=httpx.MockTransport(platform))
    tokens = remote_worker.TokenSource(SimpleNamespace(token="entra-token"))  # type: ignore[arg-type]
    api = remote_worker.Api(client, tokens)
    until = time.monotonic() + LEASE_S
    assert remote_worker._report(api, "/complete", _item(), {"output": {}}, until, "completed") == "completed"

    [request] = seen
    assert request.headers["X-Task-Token"] == "t"
    assert request.headers["Authorization"] == "Bearer entra-token"
    assert json.loads(request.content) == {"task_token": "t", "output": {}}
