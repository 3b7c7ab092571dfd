# intent_ref: platform.gateway
"""The Quantum Platform API client, async and sync: tokens per tenant, `Idempotency-Key` on every start and create,
429 (and 503 where sending again cannot do a thing twice) retried after `Retry-After`, problem+json raised as typed
errors, an execution's events followed until its end (server-sent events when the server streams them, its JSON long
poll otherwise), reconnecting through lost connections and a restarting backend."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import EventSource

from quantum_platform.credentials import Credential, DevhostCredential, from_environment
from quantum_platform.errors import ProblemError, problem_from
from quantum_platform.resources import Audit, Definitions, Executions, Modules, Webhooks

DEFAULT_URL = "http://127.0.0.1:7071"
TERMINAL_EVENTS = frozenset({"execution_completed", "execution_failed", "execution_cancelled"})
_RETRIED = frozenset({429, 503})
_REPEATABLE = frozenset({"GET", "HEAD", "OPTIONS", "PUT"})
"""Methods a 503 may be retried for without an Idempotency-Key: reading, or a PUT of a whole state. A 503 can come
after the work committed (raised at COMMIT, or by a gateway timing out): a rollback, approve, cancel, rotate-secret,
PATCH or DELETE sent again would run twice. A 429 is retried for every method: nothing ran."""
_RESTARTING = frozenset({502, 503, 504})
"""Answers to (re)opening a stream while the backend restarts (API Management answers 502/504 meanwhile, ADR 0041):
reconnected like a lost connection, within the same budget."""
_STARTS = ("/execute", "/retry")
_CREATES = frozenset(
    f"/api/v1/{collection}" for collection in ("intents", "blueprints", "webhooks", "modules", "policies")
)
"""Collections whose POST creates a resource and takes an Idempotency-Key (the tenant create does not)."""
_POLL_WAIT_S = 25.0
_RECONNECTS = 12
"""Consecutive failed reconnects of a stream (backing off to 5 s: about 45 s in all) before its error is raised."""
# Either answer is followed: a server without the stream answers the JSON long poll from the same URL.
_STREAM_ACCEPT = "text/event-stream, application/json;q=0.9"


class ApiResponse:
    """An answer of the API: status, headers and JSON body; the body's fields also read as `response["id"]`."""

    def __init__(self, response: httpx.Response) -> None:
        self.http = response

    @property
    def status_code(self) -> int:
        return self.http.status_code

    @property
    def headers(self) -> httpx.Headers:
        return self.http.headers

    @property
    def text(self) -> str:
        return self.http.text

    def json(self) -> Any:
        return self.http.json()

    def __getitem__(self, key: str) -> Any:
        return self.json()[key]

    def get(self, key: str, default: Any = None) -> Any:
        body = self.json()
        return body.get(key, default) if isinstance(body, dict) else default

    def __contains__(self, key: object) -> bool:
        body = self.json()
        return isinstance(body, dict) and key in body

    def __repr__(self) -> str:
        return f"<ApiResponse {self.status_code} {self.http.request.method} {self.http.request.url.path}>"


@dataclass(frozen=True)
class _Prepared:
    method: str
    path: str
    headers: dict[str, str]
    json: Any
    params: dict[str, Any] | None


class _Core:
    """What both clients share: the tenant, the credential, request preparation, and the retry decisions of each
    request (`retrying`)."""

    def __init__(
        self, base_url: str | None, credential: Credential | None, tenant: str | None, max_retries: int
    ) -> None:
        self.base_url = (base_url or os.environ.get("QP_URL") or DEFAULT_URL).rstrip("/")
        self.credential: Credential = credential or from_environment() or DevhostCredential()
        self._tenant = tenant
        self.max_retries = max_retries

    @property
    def tenant(self) -> str | None:
        """The tenant whose token the next request carries (None: the credential's own)."""
        return self._tenant

    def set_tenant(self, tenant: str | None) -> None:
        """Act as `tenant` from now on: every request carries a token for it (the API scopes everything to it)."""
        self._tenant = tenant

    def prepare(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> _Prepared:
        merged = dict(headers or {})
        method = method.upper()
        target = path.rstrip("/")
        if idempotency_key is None and method == "POST" and (target.endswith(_STARTS) or target in _CREATES):
            # One key per logical start or create, reused by this client's own retries: a retried create is the
            # same create (never a second webhook subscription), a retried start the same start.
            idempotency_key = str(uuid.uuid4())
        if idempotency_key is not None:
            merged["Idempotency-Key"] = idempotency_key
        return _Prepared(method, path, merged, json, params)

    def authorized(self, prepared: _Prepared) -> dict[str, str]:
        return {**prepared.headers, "Authorization": f"Bearer {self.credential.token(self._tenant)}"}

    def retrying(self, method: str = "GET", headers: Mapping[str, str] | None = None) -> _Retrying:
        """The retry decisions of one request, answer by answer."""
        keyed = any(name.lower() == "idempotency-key" for name in headers or {})
        return _Retrying(self, repeatable=method.upper() in _REPEATABLE or keyed)

    def stream_request(self, http: httpx.Client | httpx.AsyncClient, path: str, after: int) -> httpx.Request:
        prepared = self.prepare(
            "GET", path, params={"after": after, "wait": _POLL_WAIT_S}, headers={"Accept": _STREAM_ACCEPT}
        )
        return http.build_request("GET", prepared.path, params=prepared.params, headers=self.authorized(prepared))

    @staticmethod
    def checked(response: httpx.Response) -> ApiResponse:
        if response.status_code >= 400:
            raise problem_from(response)
        return ApiResponse(response)


class _Retrying:
    """Decides, answer by answer, whether one request is sent again: after renewing a refused token (once), or after
    `Retry-After` for 429, and for 503 when the request is `repeatable` (up to `max_retries`). Both clients' loops
    ask it, so they cannot drift apart."""

    def __init__(self, core: _Core, *, repeatable: bool) -> None:
        self._core = core
        self._repeatable = repeatable
        self._attempt = 0
        self._renewed = False

    def after(self, response: httpx.Response) -> float | None:
        """Seconds to wait before sending the request again (0: at once, with a fresh token), or None when
        `response` is the answer."""
        if response.status_code == 401 and not self._renewed:
            self._renewed = True
            self._core.credential.refresh(self._core.tenant)
            return 0.0
        attempt = self._attempt
        if response.status_code not in _RETRIED or attempt >= self._core.max_retries:
            return None
        if response.status_code == 503 and not self._repeatable:
            return None
        self._attempt += 1
        seconds = _retry_after(response)
        return float(min(0.5 * 2**attempt, 10.0)) if seconds is None else seconds


def _retry_after(response: httpx.Response) -> float | None:
    """The answer's `Retry-After` in seconds (capped at 60), or None without one."""
    try:
        seconds = float(str(response.headers.get("Retry-After", "")))
    except ValueError:
        return None
    return min(max(seconds, 0.0), 60.0)


def _reconnect_delay(failures: int, answer: httpx.Response | None = None) -> float | None:
    """How long a stream that broke off (connection lost, server restarting) waits before reconnecting: the
    answer's `Retry-After` when it gave one, else a back-off to 5 s; None when it has failed too often in a row."""
    if failures > _RECONNECTS:
        return None
    seconds = _retry_after(answer) if answer is not None else None
    return float(min(0.5 * 2 ** (failures - 1), 5.0)) if seconds is None else seconds


def _reconnects(error: Exception) -> bool:
    """Whether a stream that ended in `error` is reopened: a lost connection, or a backend restarting."""
    if isinstance(error, ProblemError):
        return error.status in _RESTARTING
    return isinstance(error, httpx.TransportError)


def _is_sse(response: httpx.Response) -> bool:
    content_type: str = response.headers.get("content-type", "")
    return content_type.partition(";")[0].strip() == "text/event-stream"


def _sse_event(data: str, event_id: str, after: int) -> tuple[dict[str, Any] | None, int]:
    """One SSE message as the long poll's event object and the resume position (`id:` is the event number)."""
    try:
        item = json.loads(data) if data else None
    except ValueError:
        item = None
    position = int(event_id) if event_id.isdigit() else after
    return (item if isinstance(item, dict) else None), max(position, after)


def _events(page: Any) -> tuple[list[dict[str, Any]], int, bool]:
    items = [item for item in page.get("items", []) if isinstance(item, dict)]
    ended = page.get("status") in ("succeeded", "failed", "cancelled")
    return items, int(page.get("next_after", 0)), ended


class AsyncClient:
    """The async client: `await client.post(...)`, `async for event in client.stream(...)`, typed helpers under
    `client.intents`, `client.blueprints`, `client.executions`, `client.modules`, `client.audit`, `client.webhooks`."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        credential: Credential | None = None,
        tenant: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 4,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._core = _Core(base_url, credential, tenant, max_retries)
        self._http = httpx.AsyncClient(base_url=self._core.base_url, timeout=timeout, transport=transport)
        self.intents: Definitions[Awaitable[ApiResponse]] = Definitions(self.request, "intents")
        self.blueprints: Definitions[Awaitable[ApiResponse]] = Definitions(self.request, "blueprints")
        self.executions: Executions[Awaitable[ApiResponse]] = Executions(self.request)
        self.modules: Modules[Awaitable[ApiResponse]] = Modules(self.request)
        self.audit: Audit[Awaitable[ApiResponse]] = Audit(self.request)
        self.webhooks: Webhooks[Awaitable[ApiResponse]] = Webhooks(self.request)

    @property
    def tenant(self) -> str | None:
        return self._core.tenant

    def set_tenant(self, tenant: str | None) -> None:
        """Act as `tenant` from now on (a demo tenant name locally, an Entra tenant id in Azure)."""
        self._core.set_tenant(tenant)

    async def request(self, method: str, path: str, **kwargs: Any) -> ApiResponse:
        """Send one request; 429 is retried after `Retry-After`, 503 too unless sending again could do something
        twice (a POST, PATCH or DELETE without an Idempotency-Key), a refused token once with a fresh one."""
        prepared = self._core.prepare(method, path, **kwargs)
        retrying = self._core.retrying(prepared.method, prepared.headers)
        while True:
            response = await self._http.request(
                prepared.method, prepared.path, json=prepared.json, params=prepared.params,
                headers=self._core.authorized(prepared),
            )  # fmt: skip
            if (delay := retrying.after(response)) is None:
                return self._core.checked(response)
            await asyncio.sleep(delay)

    async def get(self, path: str, **kwargs: Any) -> ApiResponse:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> ApiResponse:
        return await self.request("POST", path, **kwargs)

    async def put(self, path: str, **kwargs: Any) -> ApiResponse:
        return await self.request("PUT", path, **kwargs)

    async def patch(self, path: str, **kwargs: Any) -> ApiResponse:
        return await self.request("PATCH", path, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> ApiResponse:
        return await self.request("DELETE", path, **kwargs)

    async def stream(self, path: str, *, after: int = 0) -> AsyncIterator[dict[str, Any]]:
        """Each event of an execution (`path` is its events URL) as it is recorded, oldest first, ending after the
        terminal event; resumes from `after`, and reconnects from the last event seen when a stream breaks off."""
        failures = 0
        while True:
            try:
                response = await self._open_stream(path, after)
                try:
                    if _is_sse(response):
                        seen = False
                        async for message in EventSource(response).aiter_sse():
                            item, after = _sse_event(message.data, message.id, after)
                            if item is None:
                                continue
                            seen, failures = True, 0
                            yield item
                            if item.get("type") in TERMINAL_EVENTS:
                                return
                        if seen:
                            continue
                        # A stream that ends with nothing new is asked once as a page: it says whether the run ended.
                        items, after, ended = _events(
                            (await self.get(path, params={"after": after, "wait": _POLL_WAIT_S})).json()
                        )
                    else:
                        await response.aread()
                        items, after, ended = _events(response.json())
                finally:
                    await response.aclose()
            except (httpx.TransportError, ProblemError) as error:
                if not _reconnects(error):
                    raise
                failures += 1
                answer = error.response if isinstance(error, ProblemError) else None
                if (delay := _reconnect_delay(failures, answer)) is None:
                    raise
                await asyncio.sleep(delay)
                continue
            failures = 0  # a page was read: the budget counts failures in a row
            for item in items:
                yield item
                if item.get("type") in TERMINAL_EVENTS:
                    return
            if ended and not items:
                return

    async def _open_stream(self, path: str, after: int) -> httpx.Response:
        """The events URL opened for reading as it arrives, past 429 and a renewed token; the caller closes it and
        reconnects on 502/503/504."""
        retrying = self._core.retrying()
        while True:
            response = await self._http.send(self._core.stream_request(self._http, path, after), stream=True)
            if response.status_code < 400:
                return response
            await response.aread()
            await response.aclose()
            if response.status_code in _RESTARTING or (delay := retrying.after(response)) is None:
                raise problem_from(response)
            await asyncio.sleep(delay)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()


class Client:
    """The sync client: the same calls as `AsyncClient`, without `await`."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        credential: Credential | None = None,
        tenant: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 4,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._core = _Core(base_url, credential, tenant, max_retries)
        self._http = httpx.Client(base_url=self._core.base_url, timeout=timeout, transport=transport)
        self.intents: Definitions[ApiResponse] = Definitions(self.request, "intents")
        self.blueprints: Definitions[ApiResponse] = Definitions(self.request, "blueprints")
        self.executions: Executions[ApiResponse] = Executions(self.request)
        self.modules: Modules[ApiResponse] = Modules(self.request)
        self.audit: Audit[ApiResponse] = Audit(self.request)
        self.webhooks: Webhooks[ApiResponse] = Webhooks(self.request)

    @property
    def tenant(self) -> str | None:
        return self._core.tenant

    def set_tenant(self, tenant: str | None) -> None:
        """Act as `tenant` from now on (a demo tenant name locally, an Entra tenant id in Azure)."""
        self._core.set_tenant(tenant)

    def request(self, method: str, path: str, **kwargs: Any) -> ApiResponse:
        """Send one request; 429 is retried after `Retry-After`, 503 too unless sending again could do something
        twice (a POST, PATCH or DELETE without an Idempotency-Key), a refused token once with a fresh one."""
        prepared = self._core.prepare(method, path, **kwargs)
        retrying = self._core.retrying(prepared.method, prepared.headers)
        while True:
            response = self._http.request(
                prepared.method, prepared.path, json=prepared.json, params=prepared.params,
                headers=self._core.authorized(prepared),
            )  # fmt: skip
            if (delay := retrying.after(response)) is None:
                return self._core.checked(response)
            time.sleep(delay)

    def get(self, path: str, **kwargs: Any) -> ApiResponse:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> ApiResponse:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> ApiResponse:
        return self.request("PUT", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> ApiResponse:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> ApiResponse:
        return self.request("DELETE", path, **kwargs)

    def stream(self, path: str, *, after: int = 0) -> Iterator[dict[str, Any]]:
        """Each event of an execution as it is recorded, ending after the terminal event; reconnects from the last
        event seen when a stream breaks off."""
        failures = 0
        while True:
            try:
                response = self._open_stream(path, after)
                try:
                    if _is_sse(response):
                        seen = False
                        for message in EventSource(response).iter_sse():
                            item, after = _sse_event(message.data, message.id, after)
                            if item is None:
                                continue
                            seen, failures = True, 0
                            yield item
                            if item.get("type") in TERMINAL_EVENTS:
                                return
                        if seen:
                            continue
                        # A stream that ends with nothing new is asked once as a page: it says whether the run ended.
                        page = self.get(path, params={"after": after, "wait": _POLL_WAIT_S}).json()
                        items, after, ended = _events(page)
                    else:
                        response.read()
                        items, after, ended = _events(response.json())
                finally:
                    response.close()
            except (httpx.TransportError, ProblemError) as error:
                if not _reconnects(error):
                    raise
                failures += 1
                answer = error.response if isinstance(error, ProblemError) else None
                if (delay := _reconnect_delay(failures, answer)) is None:
                    raise
                time.sleep(delay)
                continue
            failures = 0  # a page was read: the budget counts failures in a row
            for item in items:
                yield item
                if item.get("type") in TERMINAL_EVENTS:
                    return
            if ended and not items:
                return

    def _open_stream(self, path: str, after: int) -> httpx.Response:
        """The events URL opened for reading as it arrives, past 429 and a renewed token; the caller closes it and
        reconnects on 502/503/504."""
        retrying = self._core.retrying()
        while True:
            response = self._http.send(self._core.stream_request(self._http, path, after), stream=True)
            if response.status_code < 400:
                return response
            response.read()
            response.close()
            if response.status_code in _RESTARTING or (delay := retrying.after(response)) is None:
                raise problem_from(response)
            time.sleep(delay)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
