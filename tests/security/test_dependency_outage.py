# intent_ref: platform.hardening
"""A database outage mid-traffic: quick 503s with Retry-After, nothing acknowledged lost, recovery without restart."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from devhost.child import PROJECT_ROOT, free_port
from devhost.identity import mint_token_cli
from devhost.services import stop_postgres
from shared.config import Settings
from shared.db.availability import Breaker, DatabaseUnavailable, GuardedPool
from shared.db.pool import build_pool
from tests.e2e.conftest import DevhostFactory, devhost_factory  # noqa: F401  # the fixture, through `hosts`

REQUEST_TIMEOUT_S = 10.0
"""A request still unanswered after this fails the test: during an outage every answer must come quickly."""


def _wait_for(what: str, check: Callable[[], bool], timeout: float = 60.0, seen: Callable[[], object] = str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; seen: {seen()}")
        time.sleep(0.05)


def _start_server(data_dir: Path) -> str:
    # In a child process: the embedded server's handle is cached per process, and a cached handle of a stopped
    # server would not start it again.
    script = (
        "import sys; from pathlib import Path; from devhost.services import start_postgres; "
        "print(start_postgres(Path(sys.argv[1])))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(data_dir)],
        cwd=PROJECT_ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture()
def hosts(request: pytest.FixtureRequest) -> DevhostFactory:
    factory: DevhostFactory = request.getfixturevalue("devhost_factory")
    return factory


@pytest.fixture()
def own_postgres() -> Iterator[tuple[Path, str]]:
    """A Postgres of this test alone (the session's server keeps serving the others): its data dir and URL."""
    root = Path(tempfile.mkdtemp(prefix="qp-outage-"))
    data_dir = root / "server"
    try:
        yield data_dir, _start_server(data_dir)
    finally:
        stop_postgres(data_dir)
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Outcome:
    """One write: its intent name, what came back, and when (relative to the outage)."""

    name: str
    status: int
    content_type: str
    headers: dict[str, str]
    body: str
    phase: str


class Writers:
    """Threads creating intents one after another, recording every answer."""

    def __init__(self, base_url: str, token: str, run: str, phase: Callable[[], str], threads: int = 2) -> None:
        self.outcomes: list[Outcome] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._write, args=(base_url, token, f"{run}-{n}", phase), daemon=True)
            for n in range(threads)
        ]

    def __enter__(self) -> Writers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2 * REQUEST_TIMEOUT_S)

    def seen(self) -> str:
        """The answers so far, for a failure message."""
        with self._lock:
            last = {o.status: o.body[:300] for o in self.outcomes}
            return f"errors={self.errors!r} last answer by status={last!r}"

    def count(self, status: int, phase: str | None = None) -> int:
        with self._lock:
            return sum(1 for o in self.outcomes if o.status == status and (phase is None or o.phase == phase))

    def _write(self, base_url: str, token: str, prefix: str, phase: Callable[[], str]) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT_S) as client:
            for i in range(100_000):
                if self._stop.is_set():
                    return
                name = f"outage-{prefix}-{i}"
                body = {
                    "name": name,
                    "definition": {
                        "target": "production",
                        "steps": [{"action": "build-docker-image", "image": "app:1"}],
                    },
                }
                when = phase()
                try:
                    response = client.post("/api/v1/intents", json=body, headers=headers)
                except BaseException as exc:  # a timeout is a failure of the test, reported by the main thread
                    with self._lock:
                        self.errors.append(exc)
                    return
                with self._lock:
                    self.outcomes.append(
                        Outcome(
                            name,
                            response.status_code,
                            response.headers.get("content-type", ""),
                            dict(response.headers),
                            response.text,
                            when,
                        )
                    )
                time.sleep(0.02)


@pytest.mark.e2e
def test_a_database_outage_mid_traffic_answers_503_loses_nothing_acknowledged_and_recovers(
    hosts: DevhostFactory,
    own_postgres: tuple[Path, str],
    pg: Any,
) -> None:
    data_dir, admin_url = own_postgres
    host = hosts(
        app_dir=PROJECT_ROOT,
        env={"QP_DATABASE_URL": admin_url, "QP_RATE_LIMIT_PER_MINUTE": "60000"},
        extra_args=("--seed-demo",),
    )
    token = mint_token_cli(pg.root, host.base_url, "contoso", ["Intent.Author"], [], None, 600, False)
    phase = ["before"]
    with Writers(host.base_url, token, uuid.uuid4().hex[:8], lambda: phase[0]) as writers:
        _wait_for(
            "writes before the outage", lambda: writers.count(201) >= 6 or bool(writers.errors), seen=writers.seen
        )

        stop_postgres(data_dir)
        phase[0] = "down"
        _wait_for(
            "refused writes during the outage",
            lambda: writers.count(503, "down") >= 8 or bool(writers.errors),
            seen=writers.seen,
        )
        time.sleep(4.0)  # several breaker cooldowns: probes, not only fast refusals, run during the outage
        ready = httpx.get(f"{host.base_url}/api/ready", timeout=REQUEST_TIMEOUT_S)
        assert ready.status_code == 503 and "postgres" in ready.json()["detail"]

        assert _start_server(data_dir) == admin_url
        phase[0] = "restarted"
        _wait_for(
            "writes to succeed again",
            lambda: writers.count(201, "restarted") >= 4 or bool(writers.errors),
            seen=writers.seen,
        )
    assert not writers.errors, writers.errors
    assert host.process is not None and host.process.poll() is None, "the host must survive the outage"

    statuses = {o.status for o in writers.outcomes}
    assert statuses <= {201, 503}, [(o.status, o.body) for o in writers.outcomes if o.status not in (201, 503)]
    for refused in (o for o in writers.outcomes if o.status == 503):
        assert refused.content_type == "application/problem+json", refused.body
        problem = json.loads(refused.body)
        assert problem["type"].endswith("/dependency-unavailable") and problem["status"] == 503
        assert problem["request_id"] == refused.headers["x-request-id"]
        assert 1 <= int(refused.headers["retry-after"]) <= 5

    # Every acknowledged write is there, read back on the server itself.
    acknowledged = {o.name for o in writers.outcomes if o.status == 201}
    with psycopg.connect(admin_url) as conn:  # the platform lives in the database it was given
        stored = {row[0] for row in conn.execute("SELECT name FROM app.intents WHERE name LIKE 'outage-%'")}
    assert acknowledged <= stored, sorted(acknowledged - stored)
    assert writers.count(201, "before") >= 6 and writers.count(201, "restarted") >= 4
    # Readiness also needs the control plane's pool, which saw no traffic since: it comes back on demand.
    _wait_for(
        "readiness again",
        lambda: httpx.get(f"{host.base_url}/api/ready", timeout=REQUEST_TIMEOUT_S).status_code == 200,
        timeout=30,
    )


def test_a_pool_refuses_at_once_while_connections_are_refused_and_probes_after_the_cooldown() -> None:
    now = [0.0]
    breaker = Breaker("outage-test", cooldown_s=1.5, probe_s=30.0, clock=lambda: now[0])
    # Nothing listens on this port: every connection attempt is refused.
    pool = GuardedPool(
        f"host=127.0.0.1 port={free_port()} dbname=none user=none connect_timeout=2",
        breaker=breaker,
        min_size=1,
        max_size=2,
        timeout=0.5,
        open=True,
    )
    try:
        _wait_for("the first connection attempt to fail", lambda: breaker.down, timeout=10)
        with pytest.raises(DatabaseUnavailable):
            pool.getconn()
        # After the cooldown one request probes (and waits for a connection); the others still fail at once.
        now[0] += 2.0
        with pytest.raises(psycopg.OperationalError) as probe:
            pool.getconn()
        assert not isinstance(probe.value, DatabaseUnavailable)
        with pytest.raises(DatabaseUnavailable):
            pool.getconn()
    finally:
        pool.close()


def test_a_connection_that_opens_closes_the_breaker(pg: Any) -> None:
    breaker = Breaker("recovery-test")
    breaker.failed(psycopg.OperationalError("refused a moment ago"))
    with pytest.raises(DatabaseUnavailable):
        breaker.admit()
    pool = GuardedPool(pg.app_url, breaker=breaker, min_size=1, max_size=2, timeout=5, open=True)
    try:
        # The pool's own first connection, opened in the background, is the proof the database is back.
        _wait_for("the breaker to close", lambda: not breaker.down, timeout=10)
        with pool.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        pool.close()


def test_the_shared_pools_are_guarded() -> None:
    dead = f"host=127.0.0.1 port={free_port()} dbname=none user=none"
    settings = Settings(
        QP_DATABASE_URL=dead, QP_DATABASE_CONTROL_URL=dead, QP_BLOB_CONNECTION_STRING="UseDevelopmentStorage=true"
    )
    pool = build_pool(dead, settings, name="guarded")
    try:
        assert isinstance(pool, GuardedPool)
        _wait_for("the first connection attempt to fail", lambda: pool.breaker.down, timeout=10)
        with pytest.raises(DatabaseUnavailable):
            pool.getconn()
    finally:
        pool.close()
