# intent_ref: platform.gateway
"""Typed helpers over the API's routes, shared by the sync and the async client: each returns what the client's
`request` returns (an answer, or an awaitable of one); `iterate` returns what its `iterate` returns (every item of
every page, followed by `next_cursor`: an iterator, or an async one)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import quote

R = TypeVar("R")
P = TypeVar("P")
Send = Callable[..., R]
Pages = Callable[..., P]
"""The client's `iterate(path, params=...)`: every item of a paged listing, the pages followed by `next_cursor`."""
Json = dict[str, Any]


def _segment(value: object) -> str:
    return quote(str(value), safe="")


def _params(**values: Any) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def _labels(label: str | Sequence[str] | None) -> list[str] | None:
    """The `label` filter as the API takes it: `key:value`, repeated to require several."""
    if label is None:
        return None
    return [label] if isinstance(label, str) else [str(item) for item in label]


class Definitions(Generic[R, P]):
    """Intents or blueprints: create, read, list (a page, or `iterate` for all), change, archive, versions, roll back,
    validate, plan."""

    def __init__(self, send: Send[R], kind: Literal["intents", "blueprints"], pages: Pages[P]) -> None:
        self._send, self._base, self._pages = send, f"/api/v1/{kind}", pages

    def create(self, body: Mapping[str, Any]) -> R:
        return self._send("POST", self._base, json=dict(body))

    def get(self, item_id: str) -> R:
        return self._send("GET", f"{self._base}/{_segment(item_id)}")

    def list(
        self,
        *,
        name_prefix: str | None = None,
        label: str | Sequence[str] | None = None,
        status: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> R:
        """One page, by name; the next one with `cursor=` the answer's `next_cursor` (None: the last page)."""
        params = _params(name_prefix=name_prefix, label=_labels(label), status=status, limit=limit, cursor=cursor)
        return self._send("GET", self._base, params=params)

    def iterate(
        self,
        *,
        name_prefix: str | None = None,
        label: str | Sequence[str] | None = None,
        status: str | None = None,
        page_size: int | None = None,
    ) -> P:
        """Every item that `list` would page through, page after page."""
        params = _params(name_prefix=name_prefix, label=_labels(label), status=status, limit=page_size)
        return self._pages(self._base, params=params)

    def update(self, item_id: str, definition: Mapping[str, Any], *, if_match: str) -> R:
        """The next version; `if_match` is the current version's ETag (`get(...).headers["ETag"]`), which the route
        requires (without it: 428; a stale one: 412). Left out, it is a TypeError (a required keyword); empty, a
        ValueError; either before anything is sent."""
        if not if_match:
            raise ValueError("if_match: the current version's ETag is required (the route answers 428 without it)")
        return self._send(
            "PUT", f"{self._base}/{_segment(item_id)}", json=dict(definition), headers={"If-Match": if_match}
        )

    def archive(self, item_id: str) -> R:
        return self._send("DELETE", f"{self._base}/{_segment(item_id)}")

    def versions(self, item_id: str, *, limit: int | None = None, cursor: str | None = None) -> R:
        """One page of versions, oldest first; the next one with `cursor=` the answer's `next_cursor`."""
        params = _params(limit=limit, cursor=cursor)
        return self._send("GET", f"{self._base}/{_segment(item_id)}/versions", params=params or None)

    def iterate_versions(self, item_id: str, *, page_size: int | None = None) -> P:
        """Every version, oldest first, page after page."""
        return self._pages(f"{self._base}/{_segment(item_id)}/versions", params=_params(limit=page_size))

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


class Executions(Generic[R, P]):
    """Start, read, list (a page, or `iterate` for all), cancel, approve and retry executions (events: the client's
    `stream`)."""

    def __init__(self, send: Send[R], pages: Pages[P]) -> None:
        self._send, self._pages = send, pages

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

    def list(
        self,
        *,
        status: str | None = None,
        intent_id: str | None = None,
        created_after: str | None = None,
        created_before: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> R:
        """One page, newest first; the next one with `cursor=` the answer's `next_cursor` (None: the last page).
        `created_after`/`created_before` are RFC 3339 times."""
        params = _params(
            status=status,
            intent_id=intent_id,
            created_after=created_after,
            created_before=created_before,
            limit=limit,
            cursor=cursor,
        )
        return self._send("GET", "/api/v1/executions", params=params)

    def iterate(
        self,
        *,
        status: str | None = None,
        intent_id: str | None = None,
        created_after: str | None = None,
        created_before: str | None = None,
        page_size: int | None = None,
    ) -> P:
        """Every execution that `list` would page through, newest first."""
        params = _params(
            status=status,
            intent_id=intent_id,
            created_after=created_after,
            created_before=created_before,
            limit=page_size,
        )
        return self._pages("/api/v1/executions", params=params)

    def events(self, execution_id: str, *, after: int = 0, wait: float = 0, limit: int | None = None) -> R:
        """The events after `after` (at most `limit`, 100 by default); the next ones with `after=` the answer's
        `next_after`."""
        params = _params(after=after, wait=wait, limit=limit)
        return self._send("GET", f"/api/v1/executions/{_segment(execution_id)}/events", params=params)

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

    def list(self, *, include_disallowed: bool | None = None) -> R:
        """The whole catalog in one answer (the route does not page)."""
        return self._send("GET", "/api/v1/modules", params=_params(include_disallowed=include_disallowed) or None)

    def get(self, action: str) -> R:
        return self._send("GET", f"/api/v1/modules/{_segment(action)}")

    def register(self, spec: Mapping[str, Any]) -> R:
        return self._send("POST", "/api/v1/modules", json=dict(spec))


class Audit(Generic[R, P]):
    """The tenant's audit trail (Tenant.Admin): a page, or `iterate` for all."""

    def __init__(self, send: Send[R], pages: Pages[P]) -> None:
        self._send, self._pages = send, pages

    def list(
        self,
        *,
        action: str | None = None,
        decision: Literal["allow", "deny"] | None = None,
        principal_id: str | None = None,
        resource_type: str | None = None,
        resource_id: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> R:
        """One page of records; the next one with `cursor=` the answer's `next_cursor`. Times are RFC 3339."""
        params = _params(
            action=action,
            decision=decision,
            principal_id=principal_id,
            resource_type=resource_type,
            resource_id=resource_id,
            since=since,
            until=until,
            limit=limit,
            cursor=cursor,
        )
        return self._send("GET", "/api/v1/audit", params=params)

    def iterate(
        self,
        *,
        action: str | None = None,
        decision: Literal["allow", "deny"] | None = None,
        principal_id: str | None = None,
        resource_type: str | None = None,
        resource_id: str | None = None,
        since: str | None = None,
        until: str | None = None,
        page_size: int | None = None,
    ) -> P:
        """Every record that `list` would page through."""
        params = _params(
            action=action,
            decision=decision,
            principal_id=principal_id,
            resource_type=resource_type,
            resource_id=resource_id,
            since=since,
            until=until,
            limit=page_size,
        )
        return self._pages("/api/v1/audit", params=params)


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
        """Every subscription in one answer (the route does not page: a tenant has at most its quota of them)."""
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
