# intent_ref: platform.events
"""Sending webhook deliveries (ADR 0030): signed per Standard Webhooks, through the same SSRF guard as
`http.request`, oldest first per subscription, retried with exponential backoff, and a subscription whose delivery
fails for good is disabled with an event saying so."""

from __future__ import annotations

import contextvars
import json
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Collection
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import httpx
from psycopg_pool import ConnectionPool
from standardwebhooks import Webhook

from shared.config import get_settings
from shared.db.session import bounded_lock_waits, platform_transaction, tenant_transaction
from shared.events import webhook_store as store
from shared.events.outbox import enqueue
from shared.modules.contract import StepFailed
from shared.modules.ssrf import (
    METHOD_KEEPING_REDIRECTS,
    DeadlineExceeded,
    GuardedClient,
    LookupsBusy,
    check_url_within,
    private_network_allowed,
    read_limited,
    redirect_origin,
)
from shared.observability.urls import hide_urls
from shared.tenants.models import TenantQuotas
from shared.tenants.repository import tenant_settings

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 34
"""Attempts of one delivery before it fails for good (and its subscription is disabled): with BACKOFF_BASE_S doubling
up to BACKOFF_MAX_S, the last comes about 24.4 hours after the first (10 waits from 5 s to 2560 s, then 23 of an
hour), a receiver's outage of up to a day is ridden out, not 10 minutes and 35 seconds as with 8."""
BACKOFF_BASE_S = 5.0
BACKOFF_MAX_S = 3600.0
"""The longest wait between two attempts of a delivery: an hour."""
SEND_TIMEOUT_S = 10.0
"""How long one send may take as a whole: connecting, the receiver's headers and the read of its answer together."""
HOLD_S = 60.0
"""How long a claimed delivery is left alone by other runs while it is being sent (longer than a send takes)."""
PER_RUN = 50
TENANTS_AT_ONCE = 4
"""Tenants a run sends for at the same time (each on a thread of its own, its transactions short), not counting
those whose receivers were seen slow in this run (SLOW_SEND_S)."""
SENDERS = 16
"""Threads a run sends on in all: TENANTS_AT_ONCE for tenants not seen slow, the rest for tenants whose sends wait on
slow receivers (a thread waiting on a socket holds no connection and does no work)."""
SLOW_SEND_S = 0.25
"""A send unanswered this long marks its tenant slow for the rest of the run: its sender no longer counts among the
TENANTS_AT_ONCE, and the run starts the next tenant beside it. While tenants wait to start and every sender is taken,
a tenant seen slow ends its turn after the send in flight: the senders go round the slow tenants, not stay with the
first."""
FIND_EVERY_S = 1.0
"""How often a run held open by its tenants' sends looks again for tenants with a delivery due (the timer's period):
their deliveries go out in this run instead of waiting for the slow ones to end it."""
SUBSCRIPTIONS_AT_ONCE = 4
"""Sends of one tenant under way at once, each to a different subscription (the head of its queue: per-subscription
order holds): a receiver that keeps its send waiting holds up the tenant's other subscriptions for BESIDE_AFTER_S,
not for its whole answer."""
BESIDE_AFTER_S = 1.0
"""How long every send of a tenant under way must have waited for its receiver (and the tenant been seen slow) before
its next head starts beside them: a receiver that answers within it costs its siblings little, and one that takes up
to SEND_TIMEOUT_S holds them up no longer than this."""
EXTRA_SENDS = 48
"""Sends under way at once across the process beyond each tenant's first (SENDERS x SUBSCRIPTIONS_AT_ONCE would
allow 64): past it, a tenant's heads wait for its own sends to end, as they did when a tenant sent one at a time."""
_EXTRA_SENDS = threading.BoundedSemaphore(EXTRA_SENDS)
_SENDING: Counter[UUID] = Counter()
"""Each tenant's sends under way in the process, whichever run or turn started them: a send left to end on its own
past its run (LEAVE_AFTER_S) still counts against its tenant's SUBSCRIPTIONS_AT_ONCE until it is recorded."""
_SENDING_LOCK = threading.Lock()
TENANT_BUDGET_S = 15.0
"""How long a run starts sends: a tenant's sends past it wait for the next run; a send started before then ends
within SEND_TIMEOUT_S, well inside HOLD_S."""
LEAVE_AFTER_S = 2.0
"""How long past its budget a run (or a turn called on its own) waits for the sends it started: those still waiting
for their receivers then end on their own, within SEND_TIMEOUT_S, and record their outcome themselves. The timer
starts no run while one is open, so a run held open by a dead receiver's sends held every tenant's next deliveries
with it."""
MAX_RESPONSE_BYTES = 4096
MAX_ERROR_CHARS = 500
"""Of an attempt's error recorded in the delivery log (and in the `webhook.disabled` event's reason)."""
# The suspended tenants are read here, by the control plane: the function's owner may read no tenant row (migration
# 0048). Their deliveries stay pending, and due again once the tenant is active.
_DUE_TENANTS = (
    "SELECT tenant_id FROM app.webhook_due_tenants(%s, ARRAY(SELECT id FROM app.tenants WHERE status <> 'active'))"
    " AS due (tenant_id)"
)

ClientFactory = Callable[[list[str]], GuardedClient]


def subscription_limit(quotas: TenantQuotas) -> int:
    """The tenant's webhook subscription quota (the platform default when it sets none)."""
    quota = quotas.max_webhook_subscriptions
    return quota if quota is not None else get_settings().QP_DEFAULT_MAX_WEBHOOK_SUBSCRIPTIONS


SAVE_LOOKUP_TIMEOUT_S = 3.0
"""How long saving a subscription waits for its URL's host to resolve. The request's thread waits for it, and a
name whose servers never answer held that thread for the resolver's own timeouts and retries (tens of seconds)."""
SAVE_LOOKUP_RETRY_AFTER_S = 5
"""Retry-After of a save refused for want of a lookup place: about the resolver's own timeout, within which the
lookups holding the places end."""


class WebhookUrlRefusedError(ValueError):
    """The URL may not receive webhooks: not https outside local development, not a public host, or a host that
    does not resolve (within SAVE_LOOKUP_TIMEOUT_S)."""


class WebhookUrlCheckBusyError(RuntimeError):
    """The URL could not be checked now: the tenant's name lookups in flight (or the process's) take every place."""


def https_required(environment: str) -> bool:
    """Whether webhooks go over https only in `environment`: outside local development. A subscription's URL is
    refused at save otherwise, and a send follows no redirect to a URL that is not https."""
    return environment != "local"


def check_subscription_url(url: str, allowed_hosts: list[str], *, environment: str, tenant: UUID | None = None) -> None:
    """The same guard as `http.request` (ADR 0016), at save time; it runs again at every delivery (DNS changes).

    The lookup is bounded as a delivery's is: it answers within SAVE_LOOKUP_TIMEOUT_S and takes a place of
    `tenant`'s (the subscription's; None, the platform's own) among the process's lookups, so a tenant's names that
    never answer hold neither request threads nor more than its share of the lookups."""
    if https_required(environment) and not url.startswith("https://"):
        raise WebhookUrlRefusedError("a webhook URL must use https")
    try:
        check_url_within(
            url, allowed_hosts, seconds=SAVE_LOOKUP_TIMEOUT_S, tenant=tenant, allow_private=private_network_allowed()
        )
    except DeadlineExceeded:
        # Only a lookup has a deadline here, and only a URL that parsed is looked up.
        host = httpx.URL(url).raw_host.decode("ascii").lower().rstrip(".")
        raise WebhookUrlRefusedError(
            f"could not resolve {host} in time: its name servers gave no answer within {SAVE_LOOKUP_TIMEOUT_S:g} s"
        ) from None
    except LookupsBusy as exc:
        raise WebhookUrlCheckBusyError(str(exc)) from None
    except StepFailed as exc:
        raise WebhookUrlRefusedError(str(exc)) from None


def signed_headers(
    secret: str, message_id: str, body: str, at: datetime, previous: str | None = None
) -> dict[str, str]:
    """`webhook-id`, `webhook-timestamp` and `webhook-signature` (`v1,<base64 HMAC-SHA256>`) for `body`; with the
    `previous` secret (a rotation's, while it still signs), a second signature after a space: a receiver verifies
    with either secret (Standard Webhooks)."""
    signature = Webhook(secret).sign(message_id, at, body)
    if previous is not None:
        signature += " " + Webhook(previous).sign(message_id, at, body)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
        "user-agent": "quantum-platform-webhooks/1",
    }


def backoff_s(attempt: int, base_s: float = BACKOFF_BASE_S) -> float:
    """The wait after failed attempt `attempt` (1-based): base × 2^(attempt-1), at most an hour."""
    return float(min(base_s * 2 ** max(attempt - 1, 0), BACKOFF_MAX_S))


@dataclass
class DeliveryResult:
    """What one run did."""

    delivered: int = 0
    failed_attempts: int = 0
    disabled: int = 0
    left: int = 0
    """Claimed and not sent when a tenant's share of the run was spent: due again for the next run."""
    tenants_left: int = 0
    """Tenants found due that the run did not get to before its end: found again, and first (least recently served
    first), by the next."""
    under_way: int = 0
    """Sends still waiting for their receivers when the run ended (LEAVE_AFTER_S past its budget): each records its
    own outcome when it ends, its delivery held (HOLD_S) until then."""
    not_attempted: int = 0
    """Sends the guard did not make for want of a name lookup place (LookupsBusy: other lookups, most often other
    tenants', hold the process's): no attempt is counted; the delivery goes back due, its attempts and its
    subscription's failures as they were, when its turn ends (counted in `left` then)."""

    def add(self, other: DeliveryResult) -> None:
        """Count `other`'s (one tenant's turn) in this run's."""
        self.delivered += other.delivered
        self.failed_attempts += other.failed_attempts
        self.disabled += other.disabled
        self.left += other.left
        self.tenants_left += other.tenants_left
        self.under_way += other.under_way
        self.not_attempted += other.not_attempted


class Turn:
    """One tenant's share of a run: until when it may start sends, and since when its send in flight has waited for
    its receiver. The run reads the latter, and may end the turn sooner (`ends`) once that send is answered."""

    def __init__(self, ends: float) -> None:
        self.ends = ends
        self.sending_since: float | None = None
        self.slow = False
        """Seen with a send unanswered for SLOW_SEND_S (by the run, which alone sets it)."""
        self.sender_wanted = False
        """A tenant waits to start for want of a free sender (set by the run): a turn seen slow gives its sender up."""
        self.leave_at = float("inf")
        """When the turn stops waiting for its sends under way and returns, leaving them to end and record their
        outcome on their own (the run sets it LEAVE_AFTER_S past its end)."""

    def over(self) -> bool:
        """Whether the turn starts no more sends: its end has come, or it was seen slow and its sender is wanted."""
        # Asked before each send, not when the sender is wanted: a slow turn whose waiting tenant started meanwhile
        # (another sender was freed first) goes on sending.
        return time.monotonic() >= self.ends or (self.slow and self.sender_wanted)


def _recorded(text: str) -> str:
    """What a failed attempt records of its error, at most MAX_ERROR_CHARS characters: every URL in it cut to its
    scheme, host and port, for the error goes to the delivery log and into the `webhook.disabled` event's reason,
    which platform-events and the tenant's other receivers get (a receiver's URL holds its secrets)."""
    return _cut(hide_urls(text))


def _cut(text: str) -> str:
    """`text`, at most MAX_ERROR_CHARS characters of it."""
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


def _error_text(exc: BaseException) -> str:
    """`Type: message`: what a failed attempt records of an unexpected error."""
    return _recorded(f"{type(exc).__name__}: {exc}")


def _send(client: GuardedClient, claimed: store.Claimed, timeout_s: float) -> tuple[int | None, str | None] | None:
    """POST one delivery, all of it within `timeout_s`; answers the status and, when it did not succeed, why; None
    when it was not attempted: its host's lookup found no place (LookupsBusy) before anything was sent."""
    # Exactly the bytes the client sends for `json_body`, so the signature covers what the receiver reads.
    body = json.dumps(claimed.payload, separators=(",", ":"))
    headers = signed_headers(claimed.secret, claimed.message_id, body, datetime.now(UTC), claimed.previous_secret)
    try:
        # The client's deadline covers the exchange until the answer is read: a receiver that trickles its headers
        # or its body a byte at a time fails the attempt (DeadlineExceeded) instead of holding the run.
        # Only a 307 or 308 is followed (the same POST and body again, each hop checked by the guard): a 301, 302 or
        # 303 would turn the signed POST into a GET without its body, and the 2xx of whatever page it led to (a login
        # form) counted the event delivered.
        response = client.request(
            "POST",
            claimed.url,
            headers=headers,
            json_body=claimed.payload,
            timeout=timeout_s,
            follow_redirects=METHOD_KEEPING_REDIRECTS,
        )
        read_limited(response, MAX_RESPONSE_BYTES, decode=False)  # the answer is not kept; this closes it
    except LookupsBusy as exc:
        # The process's lookup places are taken (by other tenants' names that never answer, as often as not) and
        # the receiver was not tried. Counted as a failed attempt, it was backed off and counted towards disabling
        # the subscription, for other tenants' doing.
        logger.info("webhooks: delivery %s not attempted: %s", claimed.id, exc)
        return None
    except StepFailed as exc:  # refused by the guard now (the host's addresses changed), or unreachable
        return None, _recorded(str(exc))
    except httpx.HTTPError as exc:  # DeadlineExceeded among them
        return None, _error_text(exc)
    except Exception as exc:
        # Whatever else a receiver's answer makes the client raise is a failed attempt too: raised on, it would end
        # the tenant's run with no attempt counted, and the delivery would come back every HOLD_S for ever.
        logger.warning("webhooks: delivery %s failed unexpectedly", claimed.id, exc_info=True)
        return None, _error_text(exc)
    if 200 <= response.status_code < 300:
        return response.status_code, None
    if 300 <= response.status_code < 400:
        # Its origin alone (scheme, host and port): a Location's path and query can hold the receiver's secrets.
        to = redirect_origin(response, claimed.url)
        where = f" to {to}" if to is not None else ""
        return response.status_code, _cut(
            f"the receiver answered {response.status_code}, a redirect{where}: webhooks follow only 307 and 308"
        )
    return response.status_code, f"the receiver answered {response.status_code}"


class _Sends:
    """The sends of one tenant's turn under way, by when each started: the turn's `sending_since` is the oldest's
    (the run reads it to see the tenant slow), and the turn starts another beside them once all have waited
    BESIDE_AFTER_S."""

    def __init__(self, turn: Turn) -> None:
        self._turn = turn
        self._lock = threading.Lock()
        self._since: dict[int, float] = {}

    def started(self, key: int) -> None:
        with self._lock:
            self._since[key] = time.monotonic()
            self._turn.sending_since = min(self._since.values())

    def ended(self, key: int) -> None:
        with self._lock:
            self._since.pop(key, None)
            self._turn.sending_since = min(self._since.values()) if self._since else None

    def live(self) -> int:
        """How many sends wait for their receivers."""
        with self._lock:
            return len(self._since)

    def slow_in(self, wait_s: float) -> float:
        """How long until every send under way has waited `wait_s` (0 when they all have, or none is)."""
        with self._lock:
            newest = max(self._since.values(), default=None)
        return 0.0 if newest is None else max(newest + wait_s - time.monotonic(), 0.0)


def _take_send(tenant_id: UUID, at_once: int) -> bool | None:
    """A place for one more send of the tenant, counted until it is recorded: None when the tenant has `at_once`
    under way already (in this turn or in one that left them), or when it has one and the process's EXTRA_SENDS are
    all taken; else whether the place took one of those (to give back with `_give_send`)."""
    with _SENDING_LOCK:
        under_way = _SENDING[tenant_id]
        if under_way >= at_once:
            return None
        extra = under_way > 0  # a tenant's first send under way needs no extra: every tenant always has one
        if extra and not _EXTRA_SENDS.acquire(blocking=False):
            return None
        _SENDING[tenant_id] += 1
    return extra


def _give_send(tenant_id: UUID, extra: bool) -> None:
    with _SENDING_LOCK:
        _SENDING[tenant_id] -= 1
        if _SENDING[tenant_id] <= 0:
            del _SENDING[tenant_id]
    if extra:
        _EXTRA_SENDS.release()


def sends_under_way(tenant_id: UUID) -> int:
    """The tenant's sends under way in this process, those runs left to end on their own included."""
    with _SENDING_LOCK:
        return _SENDING[tenant_id]


class _SharedClient:
    """A turn's client, closed once the turn and every send it started are done with it: a send the turn left under
    way (LEAVE_AFTER_S) goes on with it after the turn has returned."""

    def __init__(self, client: GuardedClient) -> None:
        self.client = client
        self._users = 1
        self._lock = threading.Lock()

    def hold(self) -> None:
        with self._lock:
            self._users += 1

    def done(self) -> None:
        with self._lock:
            self._users -= 1
            last = self._users == 0
        if last:
            self.client.close()


def deliver_tenant(
    tenant_id: UUID,
    *,
    pool: ConnectionPool[Any] | None = None,
    backoff_base_s: float = BACKOFF_BASE_S,
    client_factory: ClientFactory | None = None,
    budget_s: float = TENANT_BUDGET_S,
    send_timeout_s: float = SEND_TIMEOUT_S,
    turn: Turn | None = None,
    subscriptions_at_once: int = SUBSCRIPTIONS_AT_ONCE,
    slow_send_s: float = SLOW_SEND_S,
    beside_after_s: float = BESIDE_AFTER_S,
) -> DeliveryResult:
    """Send the tenant's due deliveries, one head per subscription at a time, each send within `send_timeout_s`,
    until none is due, PER_RUN, or `budget_s` has passed (or the run's `turn` is over): what is claimed and not yet
    sent then goes back, due, for the next run. Sends to different subscriptions overlap: once every send under way
    has waited `beside_after_s` for its receiver and the turn is seen slow (`slow_send_s`, by the run that gave the
    turn, or here when none did), the next head starts beside them, up to `subscriptions_at_once` under way for the
    tenant in the process, whichever turn started them (and EXTRA_SENDS beyond each tenant's first across the
    process). The sends under way are waited for until LEAVE_AFTER_S past the budget (the turn's `leave_at`): those
    still waiting then end on their own and record their outcome themselves (`under_way`). A suspended tenant's
    deliveries are not claimed (webhook_store)."""
    result = DeliveryResult()
    alone = turn is None  # no run watches the turn: it sees its sends slow itself
    if turn is None:
        turn = Turn(time.monotonic() + budget_s)
        turn.leave_at = turn.ends + LEAVE_AFTER_S
    if sends_under_way(tenant_id) >= subscriptions_at_once:
        # Its receivers still hold as many sends as it may have under way (left by an earlier run): nothing to start
        # until one ends, and nothing is claimed only to be given back.
        return result
    with tenant_transaction(tenant_id, pool=pool) as conn:
        allowed = [str(h) for h in tenant_settings(conn).get("allowed_hosts") or []]
    make_client = client_factory or (
        lambda hosts: GuardedClient(
            hosts,
            timeout=send_timeout_s,
            allow_private=private_network_allowed(),
            tenant=tenant_id,
            busy=LookupsBusy,
            https_redirects_only=https_required(get_settings().QP_ENVIRONMENT),
        )
    )
    sends = _Sends(turn)
    waiting: deque[store.Claimed] = deque()  # claimed, not started: given back if the turn ends first
    # Sent for and not attempted (no lookup place): held, so that this turn does not claim them again at once, and
    # given back due when it ends.
    not_attempted: list[store.Claimed] = []
    running: dict[Future[DeliveryResult], store.Claimed] = {}
    drained = False  # the last claim found nothing due; sends ending may make their subscriptions' next ones due
    threads = ThreadPoolExecutor(max_workers=max(subscriptions_at_once, 1), thread_name_prefix="webhook-sends")
    shared = _SharedClient(make_client(allowed))
    try:
        while True:
            for future in [f for f in running if f.done()]:
                item = running.pop(future)
                outcome = future.result()  # what a record raised ends the turn, as before
                result.add(outcome)
                if outcome.not_attempted:
                    not_attempted.append(item)
                drained = False
            if running and time.monotonic() >= turn.leave_at:
                break  # the sends under way end and record on their own
            started = result.delivered + result.failed_attempts + len(not_attempted) + len(running)
            if not waiting and not drained and started < PER_RUN and not turn.over():
                # A head under way is held (HOLD_S), so it is not claimed again, and its subscription's next
                # delivery waits behind it: per-subscription order holds while its siblings are sent to.
                with tenant_transaction(tenant_id, pool=pool) as conn:
                    waiting.extend(store.claim_due(conn, tenant_id, limit=PER_RUN - started, hold_s=HOLD_S))
                drained = not waiting
            # Asked again once the sends under way have ended: a slow turn whose sender was wanted may find the
            # waiting tenant started meanwhile, and go on sending.
            over = turn.over()
            if waiting and over and not running:
                # A slow receiver spent this tenant's share of the run, or its sender is wanted by a tenant not
                # yet served: its other heads wait for the next run.
                break
            if not running and not waiting:
                break
            if alone and sends.live() and sends.slow_in(slow_send_s) == 0.0:
                turn.slow = True
            # The first send at once; another beside those under way once they have all waited `beside_after_s`
            # and the turn is seen slow (by the run, which may end the turn instead: Turn.over, asked above).
            can_start = (
                not over
                and bool(waiting)
                and len(running) < subscriptions_at_once
                and (not running or (turn.slow and sends.slow_in(beside_after_s) == 0.0))
            )
            extra = _take_send(tenant_id, subscriptions_at_once) if can_start else None
            if extra is not None:
                item = waiting.popleft()
                shared.hold()
                future = threads.submit(
                    contextvars.copy_context().run,
                    _deliver_in_place,
                    tenant_id,
                    extra,
                    shared,
                    item,
                    sends,
                    pool=pool,
                    backoff_base_s=backoff_base_s,
                    send_timeout_s=send_timeout_s,
                )
                running[future] = item
                continue
            if can_start and not running:
                # Every send the tenant may have under way is one an earlier turn left: its heads wait for them.
                break
            if can_start:
                # The tenant's or the process's sends under way are all taken: until one of this tenant's ends.
                wait(running, timeout=_until_left(turn, 0.05), return_when=FIRST_COMPLETED)
                continue
            # Until a send ends, or those under way have all waited long enough for the next to start beside them.
            beside = not over and bool(waiting) and len(running) < subscriptions_at_once and sends.live() > 0
            # At least 10 ms: the run marks the turn slow on its own thread, shortly after the wait is up.
            timeout = max(sends.slow_in(beside_after_s), 0.01) if beside else None
            wait(running, timeout=_until_left(turn, timeout), return_when=FIRST_COMPLETED)
    finally:
        # The sends under way are recorded before the turn returns, unless they still wait for their receivers at
        # its `leave_at`: they go on, on their own (their delivery held, HOLD_S), and record their outcome once. The
        # heads not started are due again at once, not held for HOLD_S (one whose record raised keeps its hold: it
        # may have reached its receiver). So are those not attempted (LookupsBusy); one left under way that turns out
        # not attempted keeps its hold, its attempts as they were.
        wait(running, timeout=_until_left(turn, None))
        threads.shutdown(wait=False)
        shared.done()
        not_attempted += [
            item
            for future, item in running.items()
            if future.done() and future.exception() is None and future.result().not_attempted
        ]
        unsent = [*waiting, *not_attempted]
        if unsent:
            result.left += len(unsent)
            with tenant_transaction(tenant_id, pool=pool) as conn:
                store.release(conn, [later.id for later in unsent])
    for future in running:
        if future.done():
            result.add(future.result())
        else:
            result.under_way += 1
            future.add_done_callback(_log_left_failure)
    return result


def _until_left(turn: Turn, timeout: float | None) -> float | None:
    """`timeout` (None: none), cut at the turn's `leave_at`."""
    if turn.leave_at == float("inf"):
        return timeout
    left = max(turn.leave_at - time.monotonic(), 0.0)
    return left if timeout is None else min(timeout, left)


def _log_left_failure(future: Future[DeliveryResult]) -> None:
    """A send its turn left under way has no run to raise its record's error in: it is logged."""
    exc = future.exception()
    if exc is not None:
        logger.error("webhooks: a send left under way by its run could not be recorded", exc_info=exc)


def _deliver_in_place(
    tenant_id: UUID,
    extra: bool,
    shared: _SharedClient,
    item: store.Claimed,
    sends: _Sends,
    *,
    pool: ConnectionPool[Any] | None,
    backoff_base_s: float,
    send_timeout_s: float,
) -> DeliveryResult:
    """`_deliver` in a place `_take_send` gave: the place, and the client, given back once the outcome is recorded
    (before the future is done, so that a turn that sees it done finds the place free)."""
    try:
        return _deliver(
            tenant_id,
            shared.client,
            item,
            sends,
            pool=pool,
            backoff_base_s=backoff_base_s,
            send_timeout_s=send_timeout_s,
        )
    finally:
        _give_send(tenant_id, extra)
        shared.done()


def _deliver(
    tenant_id: UUID,
    client: GuardedClient,
    item: store.Claimed,
    sends: _Sends,
    *,
    pool: ConnectionPool[Any] | None,
    backoff_base_s: float,
    send_timeout_s: float,
) -> DeliveryResult:
    """Send one claimed delivery and record how it went (a failure for good disables its subscription)."""
    result = DeliveryResult()
    sends.started(item.id)
    try:
        outcome = _send(client, item, send_timeout_s)
    finally:
        sends.ended(item.id)
    if outcome is None:
        # Nothing recorded: its turn gives it back (held until then, so that the turn does not claim it again).
        result.not_attempted += 1
        return result
    status, error = outcome
    with tenant_transaction(tenant_id, pool=pool) as conn:
        if error is None:
            assert status is not None  # a success has a status
            store.record_success(conn, item, status)
            result.delivered += 1
            return result
        result.failed_attempts += 1
        failed, _ = store.record_failure(
            conn,
            item,
            status=status,
            error=error,
            retry_in_s=backoff_s(item.attempts + 1, backoff_base_s),
            max_attempts=MAX_ATTEMPTS,
        )
        if failed and store.disable(conn, item.subscription_id, f"delivery failed {MAX_ATTEMPTS} times"):
            result.disabled += 1
            enqueue(
                conn,
                "webhook.disabled",
                f"webhooks/{item.subscription_id}",
                {
                    "subscription_id": str(item.subscription_id),
                    "reason": f"delivery of {item.message_id} failed {MAX_ATTEMPTS} times: {error}",
                },
            )
    return result


def _due_tenants(max_tenants: int, control_pool: ConnectionPool[Any] | None) -> list[UUID]:
    """Active tenants with a delivery due, least recently served first (never served before all), then oldest due."""
    with platform_transaction(pool=control_pool) as conn:
        return [UUID(str(row["tenant_id"])) for row in conn.execute(_DUE_TENANTS, (max_tenants,)).fetchall()]


def _see_slow(turns: Collection[Turn], now: float, slow_send_s: float, slow_senders: int) -> None:
    """Mark the turns whose send has waited `slow_send_s`; one seen slow when `slow_senders` slow ones hold senders
    already ends with the send it waits on, so that slow tenants never hold the senders the others are served on."""
    for turn in turns:
        since = turn.sending_since
        if turn.slow or since is None or now - since < slow_send_s:
            continue
        # Its end before its mark: the tenant's sender starts sends beside a slow one only once it is marked slow,
        # and then asks whether the turn is over.
        if sum(other.slow for other in turns) + 1 > slow_senders:
            turn.ends = min(turn.ends, now)
        turn.slow = True


def deliver_due(
    *,
    max_tenants: int = 100,
    pool: ConnectionPool[Any] | None = None,
    control_pool: ConnectionPool[Any] | None = None,
    backoff_base_s: float = BACKOFF_BASE_S,
    client_factory: ClientFactory | None = None,
    tenants_at_once: int = TENANTS_AT_ONCE,
    senders: int = SENDERS,
    budget_s: float = TENANT_BUDGET_S,
    send_timeout_s: float = SEND_TIMEOUT_S,
    slow_send_s: float = SLOW_SEND_S,
    subscriptions_at_once: int = SUBSCRIPTIONS_AT_ONCE,
    beside_after_s: float = BESIDE_AFTER_S,
) -> DeliveryResult:
    """One run over the active tenants with a delivery due, least recently served first (migration 0050), each started
    as soon as a sender is free, until `budget_s` has passed, plus at most LEAVE_AFTER_S for the sends then under way:
    those still waiting for their receivers then end on their own, within `send_timeout_s`, and record their outcome
    themselves (`under_way`); the next run is not held up by them, and their tenants have no more than
    `subscriptions_at_once` under way at once, whichever run started them. A tenant whose send waits `slow_send_s` for
    its receiver stops counting among the `tenants_at_once` at work, and the next tenant starts beside it: slow tenants
    hold up to `senders - tenants_at_once` senders, not those the others are served on; past that, a tenant seen slow
    ends its turn with that send. While a tenant waits to start for want of a free sender, a tenant seen slow ends its
    turn after its send in flight, so slow tenants' backlogs leave the run's time to the tenants after them. While its
    tenants' sends hold the run open, it looks every FIND_EVERY_S for tenants with a delivery due whose turn is not
    under way, those it served already included once every tenant found has started: one tenant's slow sends keep the
    run open, and another's events due meanwhile go out in it, not after it. One tenant's trouble is logged and the
    others still go; so is a tenant whose row another transaction holds locked past bounded_lock_waits' bound."""
    total = DeliveryResult()
    started = time.monotonic()
    ends = started + budget_s
    queue = deque(_due_tenants(max_tenants, control_pool))
    if not queue:
        return total
    served: set[UUID] = set()
    found_at = started
    running: dict[Future[DeliveryResult | None], Turn] = {}
    sending_for: dict[Future[DeliveryResult | None], UUID] = {}

    def run(tenant_id: UUID, turn: Turn) -> DeliveryResult | None:
        try:
            return deliver_tenant(
                tenant_id,
                pool=pool,
                backoff_base_s=backoff_base_s,
                client_factory=client_factory,
                send_timeout_s=send_timeout_s,
                turn=turn,
                subscriptions_at_once=subscriptions_at_once,
                slow_send_s=slow_send_s,
                beside_after_s=beside_after_s,
            )
        except Exception:
            logger.exception("webhooks: the deliveries of tenant %s could not be sent", tenant_id)
            return None

    with bounded_lock_waits(), ThreadPoolExecutor(max_workers=senders, thread_name_prefix="webhooks") as threads:
        while True:
            now = time.monotonic()
            _see_slow(running.values(), now, slow_send_s, senders - tenants_at_once)
            if not queue and running and now < ends and now - found_at >= FIND_EVERY_S:
                found_at = now
                # Served ones too (their turn over, they have a delivery due again): before, a run served a tenant
                # once, and a run held open by another tenant's dead receivers held its next deliveries as long.
                busy = set(sending_for.values())
                queue.extend(t for t in _due_tenants(max_tenants, control_pool) if t not in busy)
            while (
                queue
                and now < ends
                and len(running) < senders
                and sum(not turn.slow for turn in running.values()) < tenants_at_once
            ):
                tenant_id = queue.popleft()
                served.add(tenant_id)
                turn = Turn(ends)
                turn.leave_at = ends + LEAVE_AFTER_S
                # In a copy of this context, so that its sends belong to the timer invocation's trace (and its tenant
                # transactions' lock waits are bounded).
                future = threads.submit(contextvars.copy_context().run, run, tenant_id, turn)
                running[future], sending_for[future] = turn, tenant_id
            # Tenants wait to start and every sender is taken: the slow turns give theirs up after their send in
            # flight (Turn.over), else slow tenants with a backlog would send all run long on every sender the others
            # are not served on, and the tenants after them would wait for a later run, and the next, for as long as
            # the backlogs lasted.
            wanted = bool(queue) and len(running) >= senders
            for turn in running.values():
                turn.sender_wanted = wanted
            if now >= ends:
                total.tenants_left += sum(t not in served for t in queue)
                queue.clear()
            if not running:
                return total
            done, _ = wait(
                running,
                timeout=_next_look(running.values(), now, ends, found_at if not queue else None, slow_send_s),
                return_when=FIRST_COMPLETED,
            )
            for future in done:
                del running[future], sending_for[future]
                outcome = future.result()
                if outcome is not None:
                    total.add(outcome)


def _next_look(
    turns: Collection[Turn], now: float, ends: float, found_at: float | None, slow_send_s: float
) -> float | None:
    """How long the run may wait for a turn to end before it must look again: when a send in flight would turn slow,
    the next find is due (`found_at`, when nothing waits to start), or the run ends; None after its end."""
    if now >= ends:
        return None
    moments = [ends]
    if found_at is not None:
        moments.append(found_at + FIND_EVERY_S)
    for turn in turns:
        if not turn.slow:
            since = turn.sending_since
            moments.append((now if since is None else since) + slow_send_s)
    return max(min(moments) - now, 0.001)
