# intent_ref: platform.gateway
"""Readiness probes share one check per process: a burst of `/api/ready` runs the checks once (each borrows a pooled
connection of both logins and calls blob storage), its results answer the probes of the next moment, and a probe
waits for the check in flight no longer than the check's own timeouts allow.

Before, every probe ran every check on a worker thread of its own: 200 concurrent probes borrowed 400 connections
and held the threads tenants' requests needed."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from shared.api import readiness
from shared.api.app import create_app
from shared.api.readiness import CheckResult
from shared.config import get_settings
from shared.db.pool import close_pool

PROBES = 12
HOLD_S = 10.0
"""The longest the stand-in check waits to be let go, so that a test that fails does not hang."""


class HeldCheck:
    """A dependency check that counts its runs and, while `held`, waits for `release`."""

    def __init__(self) -> None:
        self.runs = 0
        self.held = False
        self.entered = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()

    def __call__(self) -> CheckResult:
        with self._lock:
            self.runs += 1
        if self.held:
            self.entered.set()
            self.release.wait(HOLD_S)
        return CheckResult("stand_in", True)


@pytest.fixture()
def check(monkeypatch: pytest.MonkeyPatch) -> HeldCheck:
    stand_in = HeldCheck()
    monkeypatch.setattr(readiness, "CHECKS", (stand_in,))
    return stand_in


@pytest.fixture()
def client(monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("QP_DATABASE_URL", "host=/nonexistent dbname=none")
    monkeypatch.setenv("QP_DATABASE_CONTROL_URL", "host=/nonexistent dbname=none")
    monkeypatch.setenv("QP_BLOB_CONNECTION_STRING", "UseDevelopmentStorage=true")
    get_settings.cache_clear()
    with TestClient(create_app(), raise_server_exceptions=False) as test_client:
        yield test_client
    close_pool()
    readiness._probe_client.cache_clear()
    get_settings.cache_clear()


def test_a_burst_of_probes_runs_the_checks_once(client: TestClient, check: HeldCheck) -> None:
    check.held = True
    with ThreadPoolExecutor(max_workers=PROBES) as pool:
        answers = [pool.submit(client.get, "/api/ready") for _ in range(PROBES)]
        assert check.entered.wait(HOLD_S)
        check.release.set()
        statuses = [answer.result(timeout=HOLD_S).status_code for answer in answers]
    assert statuses == [200] * PROBES
    assert check.runs == 1
    # The results answer the probes that follow at once, for a moment.
    for _ in range(PROBES):
        assert client.get("/api/ready").json() == {"status": "ready", "checks": {"stand_in": "ok"}}
    assert check.runs == 1


def test_a_probe_waits_for_the_check_in_flight_with_a_bound(
    client: TestClient, check: HeldCheck, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readiness, "_WAIT_S", 0.5, raising=False)
    check.held = True
    try:
        with ThreadPoolExecutor(max_workers=PROBES) as pool:
            answers = [pool.submit(client.get, "/api/ready") for _ in range(PROBES)]
            # A check that hangs past its own timeouts: every probe is answered 503 once the bound is reached.
            responses = [answer.result(timeout=HOLD_S / 2) for answer in answers]
        assert [response.status_code for response in responses] == [503] * PROBES
        assert responses[0].json()["checks"] == {"probe": "down (TimeoutError)"}
        assert check.runs == 1
        # Liveness is answered meanwhile.
        assert client.get("/api/health").status_code == 200
    finally:
        check.release.set()
