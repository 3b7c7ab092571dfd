# intent_ref: platform.events
"""Webhook subscriptions and their deliveries in Postgres (ADR 0030): every statement runs in the tenant's own
transaction, under RLS."""

from __future__ import annotations

import base64
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import psycopg
from psycopg import sql
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from shared import etags
from shared.db import tenant_locks
from shared.sealing import SealedFor, Sealer, SealError, is_sealed, sealer

Conn = psycopg.Connection[DictRow]

logger = logging.getLogger(__name__)

STALLED_BACKLOG_MAX = 10_000
"""Pending deliveries a stalled subscription is given at most: one that is disabled, or whose head has failed
STALLED_AFTER_FAILURES attempts in a row (it waits for a retry, up to a day, and everything behind it waits too). The
relay records each event it wants for it meanwhile (they go in order once its head goes through, or it is enabled
again), until this many wait; events past it are not recorded for it, and are counted on it (`dropped_events`, which
the API shows). A receiver gone for good so leaves a bounded backlog, not every event from then on."""

STALLED_AFTER_FAILURES = 10
"""Failed attempts in a row (`consecutive_failures`: those of its head, which stays its head until it goes through)
from which an enabled subscription is stalled, and its backlog bounded. Retried 5 s, 10 s, ... apart, the 10th attempt
comes about 43 minutes (2,555 s) after the first: a receiver's bad answer, restart, deploy or short outage is ridden
out with every event recorded, and one gone for good gathers at most 43 minutes of events beyond the bound before it
holds, for the 23 hours its head is retried still. Bounded from its first failure, one 500 was enough for a
subscription with a backlog to lose every event relayed until its head went through."""

_SUBSCRIPTION_COLUMNS = (
    "id, url, event_types, description, enabled, disabled_reason, consecutive_failures, dropped_events, created_at,"
    " updated_at, version"
)
_INSERT = (
    "INSERT INTO app.webhook_subscriptions (tenant_id, id, url, event_types, description, secret)"
    " VALUES (app.current_tenant_id(), %s, %s, %s, %s, %s) RETURNING {subscription}"
)
_LIST = "SELECT {subscription} FROM app.webhook_subscriptions ORDER BY created_at, id"
_COUNT = "SELECT count(*) AS n FROM app.webhook_subscriptions"
_GET = "SELECT {subscription} FROM app.webhook_subscriptions WHERE id = %s"
# The lock its UPDATE takes anyway, taken at the read: not FOR UPDATE, which would also hold up the relay's
# FOR KEY SHARE read of the subscriptions for as long as the change's transaction is open.
_GET_TO_CHANGE = _GET + " FOR NO KEY UPDATE"
# The versions an If-Match names are compared here, in the statement that writes (NULL: any); every change moves
# the version (migration 0052). A change that changes nothing keeps `updated_at`, and with it the version and the
# ETag: the trigger sees no shown column move. It still writes the row, so that the If-Match is compared on it.
_UPDATE = (
    "UPDATE app.webhook_subscriptions SET url = %(url)s, event_types = %(event_types)s,"
    " description = %(description)s, enabled = %(enabled)s,"
    " disabled_reason = CASE WHEN %(reenabled)s THEN NULL ELSE disabled_reason END,"
    " consecutive_failures = CASE WHEN %(reenabled)s THEN 0 ELSE consecutive_failures END,"
    " updated_at = CASE WHEN %(reenabled)s OR (url, event_types, description, enabled)"
    "   IS DISTINCT FROM (%(url)s, %(event_types)s::text[], %(description)s, %(enabled)s)"
    " THEN clock_timestamp() ELSE updated_at END"
    " WHERE id = %(id)s AND (%(versions)s::bigint[] IS NULL OR version = ANY (%(versions)s)) RETURNING {subscription}"
)
# Every writer of both tables takes a subscription's deliveries before the subscription: the sender records a
# delivery, then counts it on its subscription; a delete removes the deliveries, then the subscription. A change that
# may re-enable one and a delete lock these first, in id order, so that the two take the same rows in the same order
# (a delete's own scan takes them in no set order). Not the delivered ones, which neither a resume nor a sender
# touches; the pending ones too: only a sender's record makes one failed, and it locks the pending one first, so none
# becomes failed, unlocked, between this lock and the resume.
_LOCK_UNDELIVERED = (
    "SELECT id FROM app.webhook_deliveries WHERE subscription_id = %s AND state <> 'delivered' ORDER BY id FOR UPDATE"
)
_RESUME_FAILED = (
    "UPDATE app.webhook_deliveries SET state = 'pending', attempts = 0, next_attempt_at = clock_timestamp()"
    " WHERE subscription_id = %s AND state = 'failed'"
)
_TO_ROTATE = "SELECT secret FROM app.webhook_subscriptions WHERE id = %s FOR NO KEY UPDATE"
_ROTATE = (
    "UPDATE app.webhook_subscriptions SET secret = %s, updated_at = clock_timestamp()"
    " WHERE id = %s AND (%s::bigint[] IS NULL OR version = ANY (%s)) RETURNING version"
)
# Secrets kept in plain text (before migration 0031) or sealed with another key than the current one.
_TO_SEAL = "SELECT id, secret FROM app.webhook_subscriptions WHERE NOT starts_with(secret, %s) ORDER BY id FOR UPDATE"
_SEAL = "UPDATE app.webhook_subscriptions SET secret = %s WHERE id = %s"
# The deliveries, then the subscription, through the pinned tenant's function (migration 0046): DELETE on the tables
# would let a tenant's transaction LOCK them against every tenant. Answers how many subscriptions went.
# With the versions an If-Match names (NULL: any): -1 when the subscription is at another one (migration 0052).
_DELETE = "SELECT app.delete_webhook_subscription(%s, %s::bigint[]) AS removed"
# The fan-out, one statement for the whole batch (migration 0074 for `dropped_events`): a row per event and
# subscription that wants it, written in the relay's transaction. Row by row, 100 events to 2,000 subscriptions took
# half a minute, and the relay serves tenants one after another.
# - `events`: the batch, an event once (its first place: a row by row insert met its conflict at the second, which
#   took none of a stalled subscription's room), without its payload: the rows below carry (subscription, place)
#   only, and the insert takes the payload from the batch by its place (carried through the join and its sorts,
#   100 events to 1,000 subscriptions wrote over a hundred megabytes of temporary files, 2 KB events hundreds).
# - `subs`: every subscription of the tenant (RLS, and the tenant named as well), FOR KEY SHARE until the relay commits
#   (updates pass, a delete waits): one deleted before is not read, one being deleted is waited for and then not
#   read, and none goes before the deliveries written for it are in. A delivery for a subscription deleted meanwhile
#   failed its foreign key, and the relay's transaction with it, after the batch was published. In id order, the
#   order `_TO_SEAL` locks them in, so that the two cannot deadlock. The disabled ones too: an event a disabled
#   subscription wants waits for it (up to STALLED_BACKLOG_MAX), and re-enabling sends it; only the claim and the
#   finder of due tenants pass them by. MATERIALIZED: read once, whole (the join below has no equality a hash or
#   merge join could use: each event is matched against every subscription, and the first pass locks them all, in
#   the order of the sort).
# - `wanted`: an event's type in its types, or `*` there.
# - `queued`: a stalled subscription's events not recorded for it already (those take none of its room: a row by
#   row insert that met its conflict took none), numbered in batch order; the others' meet their conflicts at the
#   insert (ON CONFLICT DO NOTHING), as before, and need no number.
# - `room`: what a stalled subscription wanting an event of the batch may still be given, its pending deliveries
#   counted in its pending index up to the bound (never its whole log); its events go in their batch order until
#   none is left, the rest are `dropped` and counted on it.
# - The insert takes the rows in batch order, then by subscription: a subscription's deliveries get ids in the order
#   of its events, the order it is sent them in. Sorted narrow, the event taken from the batch after the sort, once a
#   row (OFFSET 0 keeps `k` a subquery: pulled up, the element was taken again for each column it fills).
# - `counted`: the count moves no version, nor the ETag (migration 0074): a tenant re-enabling a subscription with
#   the ETag it read is not refused for an event that came between. Its UPDATE waits for a change of the row still
#   open (the PATCH of that subscription, a sender recording an attempt): short transactions, as a seal or delete
#   the `subs` read waits for is.
_FAN_OUT = """
WITH events AS (
    SELECT DISTINCT ON (e.value ->> 'id') e.n, e.value ->> 'id' AS message_id, e.value ->> 'type' AS event_type
      FROM jsonb_array_elements(%(events)s::jsonb) WITH ORDINALITY AS e (value, n) ORDER BY e.value ->> 'id', e.n
), subs AS MATERIALIZED (
    SELECT id, event_types, NOT enabled OR consecutive_failures >= %(after)s AS stalled
      FROM app.webhook_subscriptions WHERE tenant_id = app.current_tenant_id() ORDER BY id FOR KEY SHARE
), wanted AS (
    SELECT s.id AS subscription_id, s.stalled, e.n, e.message_id
      FROM events e JOIN subs s ON e.event_type = ANY (s.event_types) OR '*' = ANY (s.event_types)
), queued AS (
    SELECT w.subscription_id, w.n, row_number() OVER (PARTITION BY w.subscription_id ORDER BY w.n) AS place
      FROM wanted w
     WHERE w.stalled AND NOT EXISTS (
           SELECT 1 FROM app.webhook_deliveries d
            WHERE d.tenant_id = app.current_tenant_id() AND d.subscription_id = w.subscription_id
              AND d.message_id = w.message_id)
), room AS (
    SELECT s.id, %(bound)s - (SELECT count(*) FROM (SELECT 1 FROM app.webhook_deliveries p
            WHERE p.tenant_id = app.current_tenant_id() AND p.subscription_id = s.id AND p.state = 'pending'
            LIMIT %(bound)s) waiting) AS room
      FROM subs s WHERE s.stalled AND EXISTS (SELECT 1 FROM queued q WHERE q.subscription_id = s.id)
), placed AS (
    SELECT q.subscription_id, q.n, q.place > r.room AS dropped FROM queued q JOIN room r ON r.id = q.subscription_id
), added AS (
    INSERT INTO app.webhook_deliveries (tenant_id, subscription_id, message_id, event_type, payload)
    SELECT app.current_tenant_id(), k.subscription_id, k.event ->> 'id', k.event ->> 'type', k.event
      FROM (SELECT subscription_id, n, %(events)s::jsonb -> (n::int - 1) AS event FROM (
                SELECT subscription_id, n FROM wanted WHERE NOT stalled
                UNION ALL SELECT subscription_id, n FROM placed WHERE NOT dropped
                ORDER BY n, subscription_id) ordered OFFSET 0) k
    ON CONFLICT DO NOTHING RETURNING 1
), dropped AS (
    SELECT subscription_id, count(*) AS n FROM placed WHERE dropped GROUP BY subscription_id
), counted AS (
    UPDATE app.webhook_subscriptions s SET dropped_events = s.dropped_events + d.n
      FROM dropped d WHERE s.tenant_id = app.current_tenant_id() AND s.id = d.subscription_id
)
SELECT (SELECT count(*) FROM added) AS added, (SELECT coalesce(sum(n), 0) FROM dropped) AS dropped,
       (SELECT count(*) FROM dropped) AS subscriptions
"""
_DELIVERY_COLUMNS = (
    "id, subscription_id, message_id, event_type, payload, state, attempts, next_attempt_at, last_status,"
    " last_error, created_at, delivered_at"
)
_DELIVERIES = "SELECT {delivery} FROM app.webhook_deliveries WHERE subscription_id = %s ORDER BY id DESC LIMIT %s"
# The head of each enabled subscription's queue, when it is due. Later deliveries wait behind it: per-subscription
# order. The claim moves its next attempt past the send's timeout, so an overlapping run leaves it alone. Whether a
# head is due is asked of the locked row (`d`), which Postgres reads again once it holds the lock: the heads were read
# when the statement began, and a run that claimed (or sent) one and committed since must not have it taken again. A
# suspended tenant's deliveries are not claimed: they stay pending, and go once it is active again (RLS: the tenants
# row read is the transaction's tenant's). The heads come least recently sent to first (never sent to before all,
# then by id; migration 0049), taken and returned in that order: heads a run could not send in its budget go back
# due, and in id order the same subscriptions came first on every run, and those after them never. Each head is one
# read of the pending index per enabled subscription (a quota bounds them), never a sort of every pending delivery,
# which a backlog of tens of thousands made outlast the statement timeout. The subscription is named as a range, not
# with `=`: with `=` it is a constant to the planner, `ORDER BY id` is then the primary key's order too, and the
# planner may walk the tenant's deliveries in id order until one is the subscription's (all of them, for a
# subscription whose one delivery is the newest); only the pending index is in (subscription_id, id) order.
_CLAIM_HEADS = (
    "WITH heads AS (SELECT s.tenant_id, h.id, s.last_sent_at FROM app.webhook_subscriptions s"
    " CROSS JOIN LATERAL (SELECT p.id FROM app.webhook_deliveries p WHERE p.tenant_id = s.tenant_id"
    " AND p.subscription_id >= s.id AND p.subscription_id <= s.id AND p.state = 'pending'"
    " ORDER BY p.subscription_id, p.id LIMIT 1) h WHERE s.enabled),"
    " due AS (SELECT d.tenant_id, d.id, d.subscription_id, h.last_sent_at FROM app.webhook_deliveries d"
    " JOIN heads h ON h.tenant_id = d.tenant_id AND h.id = d.id"
    " WHERE d.state = 'pending' AND d.next_attempt_at <= clock_timestamp()"
    " AND EXISTS (SELECT 1 FROM app.tenants t WHERE t.id = d.tenant_id AND t.status = 'active')"
    " ORDER BY h.last_sent_at NULLS FIRST, d.subscription_id LIMIT %s FOR UPDATE OF d SKIP LOCKED),"
    " claimed AS (UPDATE app.webhook_deliveries d SET next_attempt_at = clock_timestamp() + make_interval(secs => %s)"
    " FROM due, app.webhook_subscriptions s WHERE d.tenant_id = due.tenant_id AND d.id = due.id"
    " AND s.tenant_id = d.tenant_id AND s.id = d.subscription_id"
    " RETURNING d.id, d.subscription_id, d.message_id, d.event_type, d.payload, d.attempts, s.url, s.secret,"
    " due.last_sent_at)"
    " SELECT id, subscription_id, message_id, event_type, payload, attempts, url, secret FROM claimed"
    " ORDER BY last_sent_at NULLS FIRST, subscription_id"
)
_RELEASE = (
    "UPDATE app.webhook_deliveries SET next_attempt_at = clock_timestamp() WHERE id = ANY(%s) AND state = 'pending'"
)
# A head claimed whose subscription's secret does not open: due again after UNOPENED_RETRY_S, its attempts as they
# were (its receiver is not at fault), the reason in its log for the tenant to see.
_DEFER_UNOPENED = (
    "UPDATE app.webhook_deliveries SET next_attempt_at = clock_timestamp() + make_interval(secs => %s),"
    " last_error = %s WHERE id = ANY(%s) AND state = 'pending'"
)
UNOPENED_ERROR = "the subscription's signing secret does not open: rotate its secret"
_DELIVERED = (
    "UPDATE app.webhook_deliveries SET state = 'delivered', attempts = attempts + 1, last_status = %s,"
    " last_error = NULL, delivered_at = clock_timestamp() WHERE id = %s AND state = 'pending'"
)
_RETRY = (
    "UPDATE app.webhook_deliveries SET attempts = attempts + 1, last_status = %s, last_error = %s,"
    " next_attempt_at = clock_timestamp() + make_interval(secs => %s),"
    " state = CASE WHEN attempts + 1 >= %s THEN 'failed' ELSE 'pending' END"
    " WHERE id = %s AND state = 'pending' RETURNING state"
)
# Both stamp the subscription as sent to (`last_sent_at`): the claim's order, least recently sent to first.
_SUCCEEDED = (
    "UPDATE app.webhook_subscriptions SET consecutive_failures = 0, last_sent_at = clock_timestamp() WHERE id = %s"
)
_FAILED = (
    "UPDATE app.webhook_subscriptions SET consecutive_failures = consecutive_failures + 1,"
    " last_sent_at = clock_timestamp() WHERE id = %s RETURNING consecutive_failures"
)
_DISABLE = (
    "UPDATE app.webhook_subscriptions SET enabled = false, disabled_reason = %s, updated_at = clock_timestamp()"
    " WHERE id = %s AND enabled"
)


@dataclass(frozen=True)
class Subscription:
    """A subscription as the API shows it (never its secret)."""

    id: UUID
    url: str
    event_types: list[str]
    description: str
    enabled: bool
    disabled_reason: str | None
    consecutive_failures: int
    dropped_events: int
    """Events it wanted that were never recorded for it: they came while it was stalled with STALLED_BACKLOG_MAX
    deliveries pending already (never sent, nor counted anywhere else)."""
    created_at: datetime
    updated_at: datetime
    version: int
    """What its ETag names: moved by every change of what the API shows of it (migration 0052) but `dropped_events`,
    a count the relay moves."""

    @property
    def etag(self) -> str:
        return etag(self.id, self.version)


class PreconditionFailedError(Exception):
    """If-Match named none of the versions the subscription is at: it changed since that ETag was issued."""


class SubscriptionQuotaError(Exception):
    """The tenant has as many subscriptions as its quota allows."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the tenant has {limit} webhook subscriptions, its quota: delete one before adding another")
        self.limit = limit


@dataclass(frozen=True)
class Claimed:
    """A delivery taken for one send: what to send, where, signed with which secret."""

    id: int
    subscription_id: UUID
    message_id: str
    event_type: str
    payload: dict[str, Any]
    attempts: int
    url: str
    secret: str
    previous_secret: str | None = None
    """The secret before the last rotation, until it expires (PREVIOUS_SECRET_KEPT_S): the send is signed with both."""


UNOPENED_RETRY_S = 60.0
"""How long the head of a subscription whose secret does not open (sealed under a key the process lacks, ADR 0040)
waits before a claim tries it again: it opens once the key is back or the secret is rotated, and goes within this;
meanwhile its tenant is not found due on its account, nor its secret logged as unopened, on every run (every
second)."""

PREVIOUS_SECRET_KEPT_S = 24 * 3600.0
"""How long a rotated-out secret still signs deliveries beside the new one: a receiver may move to the new secret
at any time within it, and a delivery verifies with either."""


@dataclass(frozen=True)
class SigningSecrets:
    """What a subscription's sealed secret holds: the current secret and, after a rotation, the one before it and
    until when it still signs. Kept in the one sealed value (`secret`), so that it is sealed, sealed again on a key
    rotation, and withheld from exports as the current one is."""

    current: str
    previous: str | None = None
    previous_until: datetime | None = None

    def packed(self) -> str:
        """The text sealed: the current secret alone, or with the previous one and its expiry, a line each."""
        if self.previous is None or self.previous_until is None:
            return self.current
        return f"{self.current}\n{self.previous}\n{self.previous_until.isoformat()}"

    @classmethod
    def unpacked(cls, text: str) -> SigningSecrets:
        """What `packed` made (a secret alone, as every one before rotation overlap was, included)."""
        current, _, rest = text.partition("\n")
        if not rest:
            return cls(current)
        previous, _, until = rest.partition("\n")
        return cls(current, previous, datetime.fromisoformat(until))

    def signing(self, at: datetime) -> str | None:
        """The previous secret when it still signs at `at`, else None."""
        if self.previous is None or self.previous_until is None or at >= self.previous_until:
            return None
        return self.previous


def etag(subscription_id: UUID, version: int) -> str:
    """The strong ETag of a subscription at `version`."""
    return etags.versioned(str(subscription_id), version)


def versions_named(subscription_id: UUID, if_match: frozenset[str] | None) -> list[int] | None:
    """The versions of the subscription the ETags in `if_match` name (None: any)."""
    return None if if_match is None else etags.versions_named(str(subscription_id), if_match)


def matches(subscription: Subscription, if_match: frozenset[str] | None) -> bool:
    """Whether `if_match` (None: any) names the version `subscription` was read at."""
    versions = versions_named(subscription.id, if_match)
    return versions is None or subscription.version in versions


def _sql(text: str) -> sql.Composed:
    return sql.SQL(text).format(subscription=sql.SQL(_SUBSCRIPTION_COLUMNS), delivery=sql.SQL(_DELIVERY_COLUMNS))


def new_secret() -> str:
    """A signing secret in the Standard Webhooks form: `whsec_` and base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def _subscription(row: DictRow) -> Subscription:
    return Subscription(**{key: row[key] for key in Subscription.__dataclass_fields__})


def sealed_for(tenant_id: UUID, subscription_id: UUID) -> SealedFor:
    """What a subscription's sealed secret belongs to: it opens for that subscription of that tenant only."""
    return SealedFor("webhook-secret", tenant_id, str(subscription_id))


def seal_secret(tenant_id: UUID, subscription_id: UUID, secret: str) -> str:
    """`secret` sealed for that subscription of that tenant, as a row or a kept answer holds it."""
    return sealer().seal(secret.encode("ascii"), sealed_for(tenant_id, subscription_id))


def open_secret(stored: str, owner: SealedFor, keys: Sealer | None = None) -> str:
    """The secret a row keeps: sealed, or in plain text until the sealing timer gets to it (migration 0031)."""
    if not is_sealed(stored):
        return stored
    return (keys or sealer()).open(stored, owner).decode("ascii")


def create(
    conn: Conn, *, tenant_id: UUID, url: str, event_types: Sequence[str], description: str, max_subscriptions: int
) -> tuple[Subscription, str]:
    """A new enabled subscription and its secret (the only time the secret is returned); the row keeps it sealed.
    SubscriptionQuotaError when the tenant has `max_subscriptions` already."""
    # Counted under the tenant's lock: creates sent at once queue here instead of passing the quota together.
    tenant_locks.hold(conn, "webhook-subscriptions")
    row = conn.execute(_COUNT).fetchone()
    if row is not None and int(row["n"]) >= max_subscriptions:
        raise SubscriptionQuotaError(max_subscriptions)
    subscription_id, secret = uuid4(), new_secret()
    sealed = seal_secret(tenant_id, subscription_id, secret)
    row = conn.execute(_sql(_INSERT), (subscription_id, url, list(event_types), description, sealed)).fetchone()
    assert row is not None  # INSERT ... RETURNING
    return _subscription(row), secret


def list_all(conn: Conn) -> list[Subscription]:
    return [_subscription(row) for row in conn.execute(_sql(_LIST)).fetchall()]


def get(conn: Conn, subscription_id: UUID) -> Subscription | None:
    row = conn.execute(_sql(_GET), (subscription_id,)).fetchone()
    return _subscription(row) if row else None


class _DisabledMeanwhile(Exception):
    """The subscription, read enabled, was found disabled once locked: its deliveries' locks are needed first."""


def get_to_change(conn: Conn, subscription_id: UUID, *, enabling: bool = False) -> Subscription | None:
    """The subscription as it is, locked until the transaction ends, for `update` to be decided from: a sender that
    disables it meanwhile waits, or has committed before this read and is seen (a read without the lock could
    re-enable a subscription just disabled, skipping the failed delivery that `update` would have resent). With
    `enabling` (the change may re-enable it, resuming its failed deliveries) and the subscription disabled, its
    deliveries not yet delivered are locked first, the order every writer of the two takes them in: a delete waits
    here instead of deadlocking."""
    if enabling:
        seen = get(conn, subscription_id)
        if seen is not None and seen.enabled:
            # Enabled already, the change re-enables nothing: its deliveries (all of a backlog) need no lock. Locked
            # in a savepoint, so that when a sender disabled it since the read, the lock is given back and taken
            # again after the deliveries', in the writers' order.
            try:
                with conn.transaction():
                    row = conn.execute(_sql(_GET_TO_CHANGE), (subscription_id,)).fetchone()
                    if row is not None and not row["enabled"]:
                        raise _DisabledMeanwhile
                return _subscription(row) if row else None
            except _DisabledMeanwhile:
                pass
        conn.execute(_LOCK_UNDELIVERED, (subscription_id,))
    row = conn.execute(_sql(_GET_TO_CHANGE), (subscription_id,)).fetchone()
    return _subscription(row) if row else None


def update(
    conn: Conn,
    current: Subscription,
    *,
    url: str,
    event_types: Sequence[str],
    description: str,
    enabled: bool,
    if_match: frozenset[str] | None = None,
) -> Subscription:
    """Change a subscription (`current` read with `get_to_change` in this transaction, with `enabling` when `enabled`)
    if `if_match` (None: any) names its version, else PreconditionFailedError; enabling a disabled one clears its
    failures and sends its failed deliveries again, then those recorded while it was disabled, in their order."""
    reenabled = enabled and not current.enabled
    versions = versions_named(current.id, if_match)
    bound = {
        "url": url,
        "event_types": list(event_types),
        "description": description,
        "enabled": enabled,
        "reenabled": reenabled,
        "id": current.id,
        "versions": versions,
    }
    row = conn.execute(_sql(_UPDATE), bound).fetchone()
    if row is None:  # read (and locked) in this transaction: at another version
        raise PreconditionFailedError
    if reenabled:
        conn.execute(_RESUME_FAILED, (current.id,))
    return _subscription(row)


def rotate(
    conn: Conn, tenant_id: UUID, subscription_id: UUID, *, if_match: frozenset[str] | None = None
) -> tuple[str, int] | None:
    """A new secret for the subscription (returned once) and the version it is now at, if `if_match` (None: any)
    names its version, else PreconditionFailedError; None when there is no such subscription. Deliveries from now on
    are signed with the new secret and, for PREVIOUS_SECRET_KEPT_S, with the one it replaces as well (the one before
    that signs no more)."""
    secret = new_secret()
    versions = versions_named(subscription_id, if_match)
    kept = SigningSecrets(secret)
    # The lock its UPDATE takes anyway, taken at the read: a rotation at the same time waits, and keeps this one's.
    row = conn.execute(_TO_ROTATE, (subscription_id,)).fetchone()
    if row is not None:
        try:
            replaced = SigningSecrets.unpacked(open_secret(row["secret"], sealed_for(tenant_id, subscription_id)))
        except SealError:
            # It signs nothing (no claim opens it either), and a rotation is how a tenant gets a working one back.
            logger.warning("webhooks: the secret subscription %s rotates away does not open: not kept", subscription_id)
        else:
            until = datetime.now(UTC) + timedelta(seconds=PREVIOUS_SECRET_KEPT_S)
            kept = SigningSecrets(secret, replaced.current, until)
    sealed = seal_secret(tenant_id, subscription_id, kept.packed())
    row = conn.execute(_ROTATE, (sealed, subscription_id, versions, versions)).fetchone()
    if row is None:
        # With If-Match, gone is as stale as moved on (RFC 9110: no current representation matches).
        if versions is not None:
            raise PreconditionFailedError
        return None
    return secret, int(row["version"])


def secrets_to_seal(conn: Conn, current_prefix: str) -> list[tuple[UUID, str]]:
    """The tenant's subscriptions whose secret is not sealed with the current key (inside its tenant transaction),
    as (id, stored secret), locked in id order (the relay's order) until the transaction ends."""
    return [(row["id"], row["secret"]) for row in conn.execute(_TO_SEAL, (current_prefix,)).fetchall()]


def store_sealed(conn: Conn, subscription_id: UUID, sealed: str) -> None:
    """Keep the subscription's secret as `sealed` (the same secret, sealed with another key)."""
    conn.execute(_SEAL, (sealed, subscription_id))


def delete(conn: Conn, subscription_id: UUID, *, if_match: frozenset[str] | None = None) -> bool:
    """Remove a subscription and its delivery log if `if_match` (None: any) names its version, else
    PreconditionFailedError (changing nothing), also when there is no such subscription (RFC 9110: no current
    representation matches; a delete sent with the same ETag removed it meanwhile); without `if_match`, False
    when there was none."""
    # The deliveries first: a sender records a delivery, then its subscription, and the same order here keeps the
    # two from deadlocking. Those a re-enable may resume are locked as it locks them, in id order, before the
    # function removes them in whatever order its scan finds them. Those the relay commits in between go with the
    # subscription (the cascade of migration 0034), which waits for the relay's transaction.
    conn.execute(_LOCK_UNDELIVERED, (subscription_id,))
    versions = versions_named(subscription_id, if_match)
    row = conn.execute(_DELETE, (subscription_id, versions)).fetchone()
    removed = row is not None and row["removed"] == 1
    if not removed and versions is not None:  # -1: at another version; 0: gone
        raise PreconditionFailedError
    return removed


def fan_out(conn: Conn, events: Sequence[dict[str, Any]]) -> int:
    """A delivery for each subscription that wants each event (`*` wants all), enabled or not, in one statement
    (`_FAN_OUT`): a stalled one's (disabled, or its head failed STALLED_AFTER_FAILURES times in a row) wait until it
    goes through again, at most STALLED_BACKLOG_MAX of them, and those past it are counted on it (`dropped_events`).
    Run in the relay's transaction, so an event marked published has its deliveries recorded. Returns how many were
    added."""
    if not events:
        return 0
    bound = {"events": Jsonb(list(events)), "after": STALLED_AFTER_FAILURES, "bound": STALLED_BACKLOG_MAX}
    row = conn.execute(_FAN_OUT, bound).fetchone()
    assert row is not None  # an aggregate's one row
    if row["dropped"]:
        logger.warning(
            "webhooks: %d deliveries not recorded for %d stalled subscriptions holding %d pending already (counted"
            " on each as dropped_events)",
            row["dropped"],
            row["subscriptions"],
            STALLED_BACKLOG_MAX,
        )
    return int(row["added"])


def deliveries(conn: Conn, subscription_id: UUID, limit: int = 100) -> list[dict[str, Any]]:
    """The subscription's delivery log, newest first."""
    return [dict(row) for row in conn.execute(_sql(_DELIVERIES), (subscription_id, limit)).fetchall()]


def claim_due(conn: Conn, tenant_id: UUID, *, limit: int, hold_s: float) -> list[Claimed]:
    """The due heads of the tenant's enabled subscriptions (none while it is suspended), least recently sent to first,
    held for `hold_s` while they are sent, each with its secret opened (and the one before its last rotation, while
    that still signs). A head whose secret does not open (SealError) is logged and left out, due again after
    UNOPENED_RETRY_S; the others are claimed."""
    claimed = []
    unopened: list[int] = []
    now = datetime.now(UTC)
    for row in conn.execute(_CLAIM_HEADS, (limit, hold_s)).fetchall():
        fields = dict(row)
        try:
            opened = open_secret(row["secret"], sealed_for(tenant_id, row["subscription_id"]))
        except SealError as exc:
            # Raised, it took back the whole claim: every run found the tenant due first, and its other
            # subscriptions got nothing for as long as the key was missing.
            _log_unopened(tenant_id, row["subscription_id"], exc)
            unopened.append(row["id"])
            continue
        kept = SigningSecrets.unpacked(opened)
        fields["secret"], fields["previous_secret"] = kept.current, kept.signing(now)
        claimed.append(Claimed(**fields))
    if unopened:
        conn.execute(_DEFER_UNOPENED, (UNOPENED_RETRY_S, UNOPENED_ERROR, unopened))
    return claimed


def _log_unopened(tenant_id: UUID, subscription_id: UUID, exc: SealError) -> None:
    """Once per claim of its head, UNOPENED_RETRY_S apart: the operator's to act on (a key restored) or the tenant's
    (a rotation)."""
    logger.error(
        "webhooks: the signing secret of subscription %s of tenant %s does not open; its deliveries wait %.0f s at a"
        " time; check QP_SEALING_KEY and QP_SEALING_KEY_PREVIOUS, or rotate its secret: %s",
        subscription_id,
        tenant_id,
        UNOPENED_RETRY_S,
        exc,
    )


def release(conn: Conn, delivery_ids: Sequence[int]) -> None:
    """Give claimed deliveries back unsent: due again at once, their attempts as they were."""
    conn.execute(_RELEASE, (list(delivery_ids),))


def record_success(conn: Conn, claimed: Claimed, status: int) -> None:
    conn.execute(_DELIVERED, (status, claimed.id))
    conn.execute(_SUCCEEDED, (claimed.subscription_id,))


def record_failure(
    conn: Conn, claimed: Claimed, *, status: int | None, error: str, retry_in_s: float, max_attempts: int
) -> tuple[bool, int]:
    """Count a failed attempt; returns whether the delivery is now failed for good, and the subscription's
    consecutive failures."""
    row = conn.execute(_RETRY, (status, error[:1000], retry_in_s, max_attempts, claimed.id)).fetchone()
    failures = conn.execute(_FAILED, (claimed.subscription_id,)).fetchone()
    return (row is not None and row["state"] == "failed"), int(failures["consecutive_failures"]) if failures else 0


def disable(conn: Conn, subscription_id: UUID, reason: str) -> bool:
    return conn.execute(_DISABLE, (reason, subscription_id)).rowcount == 1
