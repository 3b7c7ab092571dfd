# intent_ref: platform.ingress
"""Who sent an event: the producer's API token, judged at the time the hub accepted the event.

Event Hubs does not say who sent an event, so the token it carries is the only proof of a tenant; the tenant comes
from the token's `tid` through the tenant directory, never from the body. Expiry is judged at the enqueued time,
which the hub stamps, so a consumer backlog does not turn valid requests into rejections; an event older than
MAX_EVENT_AGE is refused as stale however valid its token was.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.auth.principal import Principal
from shared.auth.tokens import TokenValidator, VerifiedToken, bearer_token
from shared.db.session import platform_transaction
from shared.ingress.request import IngressEvent
from shared.tenants.models import Tenant
from shared.tenants.repository import tenant_directory

MAX_EVENT_AGE = timedelta(hours=24)
"""Past this, a request is stale: whatever it asked for is unlikely to be wanted now, and a token is not honoured
longer than a day after the hub accepted it."""


@dataclass(frozen=True)
class Sender:
    """Who sent an event: the token's principal in its provisioned tenant; the event is the request."""

    principal: Principal
    tenant: Tenant
    request_id: str


class StaleEventError(Exception):
    """The event was accepted by the hub longer than MAX_EVENT_AGE ago."""


def judged_at(event: IngressEvent, now: datetime) -> datetime:
    """The moment the token is judged at: the enqueued time, never later than now (a clock ahead gains nothing)."""
    if event.enqueued_time is None:
        return now
    return min(event.enqueued_time, now)


def verify_token(event: IngressEvent, validator: TokenValidator, *, now: datetime) -> VerifiedToken:
    """The event's validated token; InvalidTokenError (missing, forged, expired when enqueued, wrong audience...)."""
    return validator.validate(bearer_token(event.authorization), at=judged_at(event, now).timestamp())


def sender(verified: VerifiedToken, request_id: str) -> Sender | None:
    """The sender of a validated token as a platform tenant's principal; None when its Entra tenant is not
    provisioned (the tenant comes from the directory, as for an API caller, never from the body)."""
    tenant = tenant_directory.resolve(platform_transaction, verified.entra_tenant_id)
    return None if tenant is None else Sender(verified.principal(tenant.id), tenant, request_id)


def check_fresh(event: IngressEvent, now: datetime) -> None:
    """StaleEventError when the hub accepted the event more than MAX_EVENT_AGE before `now`."""
    age = now - judged_at(event, now)
    if age > MAX_EVENT_AGE:
        raise StaleEventError(
            f"the event was enqueued {age.total_seconds() / 3600:.1f} h ago, more than "
            f"{MAX_EVENT_AGE.total_seconds() / 3600:.0f} h"
        )
