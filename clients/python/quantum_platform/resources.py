# intent_ref: platform.gateway
"""Typed helpers over the API's routes, shared by the sync and the async client: each returns what the client's
`request` returns (an answer, or an awaitable of one)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import quote

R = TypeVar("R")
Send = Callable[..., R]
Json = dict[str, Any]


def _segment(value: object) -> str:
    return quote(str(value), safe="")


def _params(**values: Any) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


class Definitions(Generic[R]):
    """Intents or blueprints: create, read, list, change, archive, versions, roll back, validate, plan."""

    def __init__(self, send: Send[R], kind: Literal["intents", "blueprints"]) -> None:
        self._send, self._base = send, f"/api/v1/{kind}"

    def create(self, body: Mapping[str, Any]) -> R:
        return self._send("POST", self._base, json=dict(body))

    def get(self, item_id: str) -> R:
        return self._send("GET", f"{self._base}/{_segment(item_id)}")

    def list(self, *, name_prefix: str | None = None, status: str | None = None, limit: int | None = None) -> R:
        return self._send("GET", self._base, params=_params(name_prefix=name_prefix, status=status, limit=limit))

    def update(self, item_id: str, definition: Mapping[str, Any], *, if_match: str | None = None) -> R:
        headers = {"If-Match": if_match} if if_match else None
        return self._send("PUT", f"{self._base}/{_segment(item_id)}", json=dict(definition), headers=headers)

    def archive(self, item_id: str) -> R:
        return self._send("DELETE", f"{self._base}/{_segment(item_id)}")

    def versions(self, item_id: str) -> R:
        return self._send("GET", f"{self._base}/{_segment(item_id)}/versions")

    def version(self, item_id: str, version: int) -> R:
        return self._send("GET", f"{self._base}/{_segment(item_id)}/versions/{int(version)}")

    def rollback(self, item_id: str, version: int) -> R:
        return self._send("POST", f"{self._base}/{_segment(item_id)}/rollback", json={"to_version": int(version)})

    def diff(self, item_id: str, *, from_version: int, to_version: int) -> R:
        params = {"from": int(from_version), "to": int(to_version)}
        return self._send("GET", f"{self._base}/{_segment(item_id)}/diff", params=params)

    def validate(self, body: Mapping[str, Any]) -> R:
        return self._send("POST", f"{self._base}/validate", json=dict(body))

    def plan(self, item_id: str) -> R:
        return self._send("POST", f"{self._base}/{_segment(item_id)}/plan")


class Executions(Generic[R]):
    """Start, read, list, cancel, approve and retry executions (events: the client's `stream`)."""

    def __init__(self, send: Send[R]) -> None:
        self._send = send

    def start(
        self,
        intent_id: str,
        *,
        input: Mapping[str, Any] | None = None,  # noqa: A002  # the API's own name
        version: int | None = None,
        idempotency_key: str | None = None,
    ) -> R:
        body = _params(input=dict(input) if input is not None else None, version=version)
        return self._send(
            "POST", f"/api/v1/intents/{_segment(intent_id)}/execute", json=body or None, idempotency_key=idempotency_key
        )

    def get(self, execution_id: str) -> R:
        return self._send("GET", f"/api/v1/executions/{_segment(execution_id)}")

    def list(self, *, status: str | None = None, intent_id: str | None = None, limit: int | None = None) -> R:
        return self._send("GET", "/api/v1/executions", params=_params(status=status, intent_id=intent_id, limit=limit))

    def events(self, execution_id: str, *, after: int = 0, wait: float = 0) -> R:
        return self._send(
            "GET", f"/api/v1/executions/{_segment(execution_id)}/events", params={"after": after, "wait": wait}
        )

    def cancel(self, execution_id: str) -> R:
        return self._send("POST", f"/api/v1/executions/{_segment(execution_id)}/cancel")

    def approve(self, execution_id: str, step_id: str, *, reject: bool = False, comment: str = "") -> R:
        body = {"decision": "reject" if reject else "approve", "comment": comment}
        return self._send(
            "POST", f"/api/v1/executions/{_segment(execution_id)}/approvals/{_segment(step_id)}", json=body
        )

    def retry(self, execution_id: str, *, idempotency_key: str | None = None) -> R:
        return self._send("POST", f"/api/v1/executions/{_segment(execution_id)}/retry", idempotency_key=idempotency_key)


class Modules(Generic[R]):
    """The module catalog of the tenant, and registering a remote module (Tenant.Admin)."""

    def __init__(self, send: Send[R]) -> None:
        self._send = send

    def list(self) -> R:
        return self._send("GET", "/api/v1/modules")

    def get(self, action: str) -> R:
        return self._send("GET", f"/api/v1/modules/{_segment(action)}")

    def register(self, spec: Mapping[str, Any]) -> R:
        return self._send("POST", "/api/v1/modules", json=dict(spec))


class Audit(Generic[R]):
    """The tenant's audit trail (Tenant.Admin)."""

    def __init__(self, send: Send[R]) -> None:
        self._send = send

    def list(self, *, limit: int | None = None, cursor: str | None = None) -> R:
        return self._send("GET", "/api/v1/audit", params=_params(limit=limit, cursor=cursor))


class Webhooks(Generic[R]):
    """The tenant's webhook subscriptions (Tenant.Admin): subscribe a URL to domain event types, change, enable or
    disable, rotate the signing secret, read the deliveries, delete. The secret is in the answers of `create` and
    `rotate_secret` only."""

    def __init__(self, send: Send[R]) -> None:
        self._send = send

    def create(
        self,
        url: str,
        event_types: Sequence[str],
        *,
        description: str = "",
        idempotency_key: str | None = None,
    ) -> R:
        body = {"url": url, "event_types": list(event_types), "description": description}
        return self._send("POST", "/api/v1/webhooks", json=body, idempotency_key=idempotency_key)

    def list(self) -> R:
        return self._send("GET", "/api/v1/webhooks")

    def get(self, subscription_id: str) -> R:
        return self._send("GET", f"/api/v1/webhooks/{_segment(subscription_id)}")

    def update(
        self,
        subscription_id: str,
        *,
        url: str | None = None,
        event_types: Sequence[str] | None = None,
        description: str | None = None,
        enabled: bool | None = None,
    ) -> R:
        body = _params(
            url=url,
            event_types=None if event_types is None else [str(t) for t in event_types],
            description=description,
            enabled=enabled,
        )
        return self._send("PATCH", f"/api/v1/webhooks/{_segment(subscription_id)}", json=body)

    def rotate_secret(self, subscription_id: str) -> R:
        return self._send("POST", f"/api/v1/webhooks/{_segment(subscription_id)}/rotate-secret")

    def deliveries(self, subscription_id: str) -> R:
        return self._send("GET", f"/api/v1/webhooks/{_segment(subscription_id)}/deliveries")

    def delete(self, subscription_id: str) -> R:
        return self._send("DELETE", f"/api/v1/webhooks/{_segment(subscription_id)}")
