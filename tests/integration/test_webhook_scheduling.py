# intent_ref: platform.events
"""Which tenants a webhook delivery run serves, and when (ADR 0030): tenants whose receivers keep their sends waiting
do not take the senders the other tenants are served on, and give theirs up to tenants waiting to start, a run held
open by them serves tenants due meanwhile, the tenants a run did not reach come first in the next, a suspended
tenant's deliveries wait, pending, until it is active again, and a tenant's subscriptions are sent to in turn, so that
slow ones with a backlog hold up none of their siblings for good."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from uuid import UUID

import httpx
import pytest

from shared.db.session import tenant_transaction
from shared.events import webhooks
from shared.modules.ssrf import GuardedClient, private_network_allowed
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_webhooks import Receiver, emit, local, tenant  # noqa: F401  # `local`: the fixture

pytestmark = pytest.mark.integration
WAIT_S = 15.0
"""How long a test waits for what the run should do while the slow receivers hold their requests: far longer than it
takes, and what it waits for does not happen at all (until they are let go) when slow tenants hold every sender."""


class Held:
    """A receiver on 127.0.0.1 that holds every request until the test lets it answer (`let`): a slow receiver whose
    slowness the test decides."""

    def __init__(self) -> None:
        self.arrived = 0
        self.answered = 0
        self._permits = threading.Semaphore(0)
        held = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802  # the stdlib's name
                self.rfile.read(int(self.headers["Content-Length"]))
                held.arrived += 1
                held._permits.acquire(timeout=60)
                held.answered += 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks"

    def let(self, requests: int = 1000) -> None:
        """Let the next `requests` requests (held or still to come) be answered."""
        for _ in range(requests):
            self._permits.release()


def _until(condition: Callable[[], bool], timeout_s: float = WAIT_S) -> bool:
    """Whether `condition` holds within `timeout_s` (looked at every 10 ms)."""
    ends = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= ends:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def only(monkeypatch: pytest.MonkeyPatch) -> Callable[[Collection[UUID]], None]:
    """Limit runs to the test's tenants: other tests' tenants in the module's database, still due, would take
    senders too."""

    def limit(tenant_ids: Collection[UUID]) -> None:
        found = webhooks._due_tenants
        monkeypatch.setattr(webhooks, "_due_tenants", lambda *args: [t for t in found(*args) if t in set(tenant_ids)])

    return limit


class Run:
    """`deliver_due` on a thread of its own, so the test can watch what it does while receivers hold its sends."""

    def __init__(self, **options: Any) -> None:
        self.result: webhooks.DeliveryResult | None = None
        self._thread = threading.Thread(target=self._run, kwargs=options, daemon=True)
        self._thread.start()

    def _run(self, **options: Any) -> None:
        self.result = webhooks.deliver_due(max_tenants=10_000, **options)

    def finish(self) -> webhooks.DeliveryResult:
        self._thread.join(WAIT_S * 4)
        assert self.result is not None, "the run did not end"
        return self.result


@pytest.fixture
def held() -> Iterator[list[Held]]:
    """Held receivers, every request let go at the end whatever the test's outcome (the run then ends)."""
    made: list[Held] = []
    yield made
    for receiver in made:
        receiver.let()
        receiver.server.shutdown()
        receiver.server.server_close()


def _subscribe(api: ApiHarness, name: str, url: str, subscriptions: int = 1) -> Any:
    handle, headers = tenant(api, name)
    for _ in range(subscriptions):
        made = api.client.post("/api/v1/webhooks", json={"url": url, "event_types": ["*"]}, headers=headers)
        assert made.status_code == 201, made.text
    return handle


def test_tenants_whose_receivers_keep_sends_waiting_leave_senders_for_the_others(
    api: ApiHarness, local: None, held: list[Held], only: Callable[[Collection[UUID]], None]
) -> None:
    slow, fast = Held(), Receiver()
    held.append(slow)
    # Four tenants with a slow receiver, due before the fifth: twice as many as there are senders at work.
    slow_tenants = [_subscribe(api, f"sched-slow-{n}", slow.url) for n in range(4)]
    fast_tenant = _subscribe(api, "sched-fast", fast.url)
    for handle in slow_tenants:
        emit(handle.id, "test.slow")
    emit(fast_tenant.id, "test.fast")
    only([h.id for h in [*slow_tenants, fast_tenant]])

    run = Run(tenants_at_once=2, senders=6, slow_send_s=0.05, send_timeout_s=60, budget_s=60)
    # The fifth tenant's delivery goes out while every slow receiver still holds its request (the senders the four
    # wait on are not the ones the others are served on).
    assert _until(lambda: len(fast.received) == 1), "the other tenant waited for the slow ones"
    assert slow.answered == 0
    assert _until(lambda: slow.arrived == 4)  # each sent, and held
    slow.let()
    result = run.finish()
    assert result.delivered == 5 and result.failed_attempts == 0 and result.left == 0


def test_a_tenant_seen_slow_when_the_slow_senders_are_all_taken_ends_its_turn_with_that_send(
    api: ApiHarness,
    local: None,
    held: list[Held],
    only: Callable[[Collection[UUID]], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, third, fast = Held(), Held(), Receiver()
    held += [first, third]
    # Three tenants with two slow subscriptions each, then one with a fast receiver; one sender at work, two for the
    # slow: the third tenant seen slow finds the slow senders taken.
    slow_tenants = [_subscribe(api, f"sched-lane-{n}", first.url, subscriptions=2) for n in range(2)]
    last_slow = _subscribe(api, "sched-lane-2", third.url, subscriptions=2)
    fast_tenant = _subscribe(api, "sched-lane-fast", fast.url)
    for handle in [*slow_tenants, last_slow, fast_tenant]:
        emit(handle.id, "test.lane")
    only([h.id for h in [*slow_tenants, last_slow, fast_tenant]])
    turns: list[webhooks.Turn] = []

    class Watched(webhooks.Turn):
        def __init__(self, ends: float) -> None:
            super().__init__(ends)
            turns.append(self)

    monkeypatch.setattr(webhooks, "Turn", Watched)

    run = Run(tenants_at_once=1, senders=3, slow_send_s=0.05, send_timeout_s=60, budget_s=60)
    assert _until(lambda: len(turns) == 3 and all(turn.slow for turn in turns))
    # Every sender is taken; the third tenant's turn ends with the send it waits on.
    assert turns[2].ends < turns[0].ends == turns[1].ends
    third.let(1)
    assert _until(lambda: len(fast.received) == 1), "the other tenant waited for the slow ones"
    assert first.answered == 0 and third.arrived == 1
    first.let()
    third.let()
    result = run.finish()
    assert result.delivered == 6 and result.left == 1  # the third tenant's second head: due for the next run
    with tenant_transaction(last_slow.id) as conn:
        rows = conn.execute(
            "SELECT state, attempts, state = 'pending' AND next_attempt_at <= clock_timestamp() AS due"
            " FROM app.webhook_deliveries ORDER BY state"
        ).fetchall()
    assert [(r["state"], r["attempts"], r["due"]) for r in rows] == [("delivered", 1, False), ("pending", 0, True)]
    assert webhooks.deliver_tenant(last_slow.id).delivered == 1


SLOW_RECEIVER_S = 0.3
"""How long the slow receivers of the backlog tests take to answer (with success): a sender is taken that long by each
send to them, whatever the machine's speed, which bounds how many tenants a run can start before its end."""


def _backlogged(api: ApiHarness, name: str, slow_tenants: int, backlog: int) -> tuple[Receiver, list[Any], Any]:
    """`slow_tenants` tenants whose receiver answers in SLOW_RECEIVER_S, each with `backlog` deliveries due, then one
    tenant with a fast receiver and one delivery, due after all of theirs: the fast receiver, and the handles."""
    slow, fast = Receiver(delay_s=SLOW_RECEIVER_S), Receiver()
    slow_tenants_made = [_subscribe(api, f"{name}-slow-{n}", slow.url) for n in range(slow_tenants)]
    fast_tenant = _subscribe(api, f"{name}-fast", fast.url)
    for handle in slow_tenants_made:
        emit(handle.id, *["test.backlog"] * backlog)
    emit(fast_tenant.id, "test.fast")
    return fast, slow_tenants_made, fast_tenant


def _delivered(tenant_id: UUID) -> int:
    """How many of the tenant's deliveries went out."""
    with tenant_transaction(tenant_id) as conn:
        row = conn.execute("SELECT count(*) AS n FROM app.webhook_deliveries WHERE state = 'delivered'").fetchone()
    return int(row["n"]) if row is not None else 0


def test_slow_tenants_with_a_backlog_give_their_senders_up_to_the_tenants_waiting_to_start(
    api: ApiHarness, local: None, only: Callable[[Collection[UUID]], None]
) -> None:
    # Backlogs of 10 sends, longer than the run: a slow tenant's turn ends only by the run's end or by giving way.
    fast, slow_tenants, fast_tenant = _backlogged(api, "sched-give-way", slow_tenants=9, backlog=10)
    only([h.id for h in [*slow_tenants, fast_tenant]])

    # One sender at work, two for the slow. Before, the first two slow tenants sent their backlogs on the slow senders
    # all run long and the other seven took turns on the third, one slow send each: the fast tenant, tenth, could start
    # at 0.1 s + 7 x SLOW_RECEIVER_S = 2.2 s at the earliest, past the run's end, and was not served in any run while
    # the backlogs lasted. A tenant seen slow now gives its sender up after the send in flight while a tenant waits
    # for one: the three senders go round the nine slow tenants (about 1 s), and every tenant found due starts in
    # this run.
    result = webhooks.deliver_due(
        max_tenants=10_000, tenants_at_once=1, senders=3, slow_send_s=0.05, send_timeout_s=5, budget_s=2.0
    )
    assert len(fast.received) == 1 and result.tenants_left == 0, result
    assert all(_delivered(handle.id) >= 1 for handle in slow_tenants)


def test_the_tenants_a_run_did_not_reach_come_first_in_the_next(
    api: ApiHarness, local: None, only: Callable[[Collection[UUID]], None]
) -> None:
    fast, slow_tenants, fast_tenant = _backlogged(api, "sched-next-run", slow_tenants=10, backlog=6)
    only([h.id for h in [*slow_tenants, fast_tenant]])
    options: dict[str, Any] = {"tenants_at_once": 1, "senders": 2, "slow_send_s": 0.05, "send_timeout_s": 5}

    # Two senders on sends of SLOW_RECEIVER_S start at most eight tenants in 1.1 s: the run cannot reach the fast
    # tenant, due after ten slow ones, however fast the machine (the slow tenants' backlogs outlast a run).
    first = webhooks.deliver_due(max_tenants=10_000, budget_s=1.1, **options)
    assert fast.received == [] and first.tenants_left >= 3, first
    # The next run starts with the tenants this one did not reach (never sent for: first), and gets to the fast one.
    # Before, it found them in the same order again (oldest head due first: the slow tenants' backlogs), and the fast
    # tenant waited as many runs as their backlogs lasted.
    second = webhooks.deliver_due(max_tenants=10_000, budget_s=1.1, **options)
    assert len(fast.received) == 1, second
    assert all(_delivered(handle.id) >= 1 for handle in slow_tenants)  # each slow tenant sent for in one of the two


def test_a_run_held_open_by_a_slow_tenant_serves_the_tenants_due_meanwhile(
    api: ApiHarness, local: None, held: list[Held], only: Callable[[Collection[UUID]], None]
) -> None:
    slow, fast = Held(), Receiver()
    held.append(slow)
    slow_tenant = _subscribe(api, "sched-open-slow", slow.url)
    later_tenant = _subscribe(api, "sched-open-later", fast.url)
    emit(slow_tenant.id, "test.slow")
    only([slow_tenant.id, later_tenant.id])

    run = Run(send_timeout_s=60, budget_s=60)
    assert _until(lambda: slow.arrived == 1)
    later = emit(later_tenant.id, "test.later")  # due after the run began
    assert _until(lambda: len(fast.received) == 1), "the tenant due meanwhile waited for the run's end"
    assert [e["id"] for e in fast.events()] == later and slow.answered == 0
    slow.let()
    assert run.finish().delivered == 2


def test_a_suspended_tenants_deliveries_wait_until_it_is_active_again(api: ApiHarness, local: None) -> None:
    api.provision("sched-operator")
    admin = api.headers("sched-operator", ["Platform.Admin"])
    receiver = Receiver()
    handle = _subscribe(api, "sched-suspended", receiver.url)

    def status(value: str) -> None:
        etag = api.client.get(f"/api/v1/tenants/{handle.id}", headers=admin).headers["etag"]
        changed = api.client.patch(
            f"/api/v1/tenants/{handle.id}", json={"status": value}, headers={**admin, "If-Match": etag}
        )
        assert changed.status_code == 200 and changed.json()["status"] == value, changed.text

    status("suspended")
    emit(handle.id, "test.contained")
    assert handle.id not in webhooks._due_tenants(10_000, None)
    webhooks.deliver_due(max_tenants=10_000)
    assert webhooks.deliver_tenant(handle.id) == webhooks.DeliveryResult()  # sent for directly: not claimed either
    assert receiver.received == []
    with tenant_transaction(handle.id) as conn:
        rows = conn.execute(
            "SELECT d.state, d.attempts, d.last_error, d.next_attempt_at <= clock_timestamp() AS due, s.enabled"
            " FROM app.webhook_deliveries d JOIN app.webhook_subscriptions s ON s.id = d.subscription_id"
        ).fetchall()
    # Pending, never attempted, the subscription enabled: nothing failed.
    assert [dict(r) for r in rows] == [
        {"state": "pending", "attempts": 0, "last_error": None, "due": True, "enabled": True}
    ]

    status("active")
    assert handle.id in webhooks._due_tenants(10_000, None)
    assert webhooks.deliver_tenant(handle.id).delivered == 1
    assert [e["type"] for e in receiver.events()] == ["test.contained"]


class SpendsTheTurn(GuardedClient):
    """A guarded client whose send to one of `slow` spends the tenant's turn, as a receiver that answers only after
    the tenant's budget has passed would, without the wait: exactly one such send goes out per run."""

    def __init__(self, allowed: list[str], turn: webhooks.Turn, slow: Collection[str]) -> None:
        super().__init__(allowed, allow_private=private_network_allowed())
        self.turn, self.slow = turn, slow

    def request(self, method: str, url: str, **options: Any) -> httpx.Response:
        try:
            return super().request(method, url, **options)
        finally:
            if url in self.slow:
                self.turn.ends = 0.0


def test_a_tenants_subscriptions_are_sent_to_in_turn_while_slow_ones_have_a_backlog(
    api: ApiHarness, local: None
) -> None:
    receivers = {name: Receiver() for name in "ABC"}
    handle, headers = tenant(api, "sched-in-turn")
    made = [
        api.client.post("/api/v1/webhooks", json={"url": receivers["C"].url, "event_types": ["*"]}, headers=headers)
        for _ in range(3)
    ]
    ids = sorted(m.json()["id"] for m in made)
    # The two lowest ids, first in id order, get the slow receivers: in that order they came first on every run.
    for name, subscription_id in zip("AB", ids, strict=False):
        changed = api.client.patch(
            f"/api/v1/webhooks/{subscription_id}", json={"url": receivers[name].url}, headers=headers
        )
        assert changed.status_code == 200, changed.text
    events = emit(handle.id, *["test.backlog"] * 4)
    turn = webhooks.Turn(0.0)
    slow = {receivers["A"].url, receivers["B"].url}
    got = []
    for _ in range(6):
        turn.ends = time.monotonic() + 60  # a turn ends only by a slow send
        webhooks.deliver_tenant(handle.id, client_factory=lambda allowed: SpendsTheTurn(allowed, turn, slow), turn=turn)
        got.append(tuple(len(receivers[name].received) for name in "ABC"))
    # Each run sends to the subscription least recently sent to first: C, behind the slow A and B, is sent to in the
    # third run (before, never), and every subscription twice in six runs, each in its events' order.
    assert got[:3] == [(1, 0, 0), (1, 1, 0), (2, 1, 1)], got
    assert min(got[-1]) >= 2, got
    for receiver in receivers.values():
        assert [e["id"] for e in receiver.events()] == events[: len(receiver.received)]
