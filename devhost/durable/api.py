# intent_ref: platform.devhost-durable
"""The Durable HTTP management API (HttpApiHandler), served on /durabletask/ and /runtime/webhooks/durabletask/."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from devhost.durable.binding import RPC_PATH, WEBHOOK_PATH, management_urls
from devhost.durable.management import InvalidRequest, Management, Outcome
from devhost.durable.protocol import RuntimeStatus, json_text_to_value, parse_iso
from devhost.durable.store import Instance, InstanceQuery
from devhost.durable.views import history_view, status_payload

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PREFIXES = (RPC_PATH.rstrip("/"), WEBHOOK_PATH)
_RUNNING = frozenset(
    {RuntimeStatus.Pending, RuntimeStatus.Running, RuntimeStatus.ContinuedAsNew, RuntimeStatus.Suspended}
)


def _error(status: int, message: str, exc: BaseException | None = None) -> web.Response:
    """HttpRequestMessage.CreateErrorResponse: the SDK reads ExceptionMessage on a 400 from start_new."""
    body: dict[str, Any] = {"Message": message}
    if exc is not None:
        body.update(ExceptionMessage=str(exc), ExceptionType=type(exc).__name__, StackTrace=None)
    return web.json_response(body, status=status)


def _guarded(handler: Handler) -> Handler:
    """The handler's own error conventions: ArgumentException -> 400, anything else -> 500."""

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except InvalidRequest as exc:
            return _error(400, "One or more of the arguments submitted is incorrect", exc)
        except Exception as exc:
            logger.exception("durable API %s %s failed", request.method, request.path)
            return _error(500, "Something went wrong while processing your request", exc)

    return wrapper


def _flag(request: web.Request, name: str, default: bool) -> bool:
    """bool.TryParse semantics: "true"/"false" in any case; anything else means the default."""
    value = request.query.get(name, "").strip().lower()
    return default if value not in ("true", "false") else value == "true"


def _origin(request: web.Request) -> str:
    return str(request.url.origin())


def _statuses(request: web.Request) -> list[str]:
    raw = ",".join(request.query.getall("runtimeStatus", []))
    known = {str(s) for s in RuntimeStatus}
    return [s for s in (part.strip() for part in raw.split(",")) if s in known]


def _time(request: web.Request, name: str) -> Any:
    value = request.query.get(name)
    if not value:
        return None
    try:
        return parse_iso(value)
    except ValueError:
        return None


class DurableApi:
    """HTTP handlers over Management; identical behaviour on both route prefixes."""

    def __init__(self, management: Management, task_hub: str, system_key: str | None = None) -> None:
        self._management = management
        self._hub = task_hub
        self._system_key = system_key

    def add_routes(self, app: web.Application) -> None:
        for prefix in PREFIXES:
            add = app.router.add_route
            add("POST", prefix + "/orchestrators/{functionName}", _guarded(self.start))
            add("POST", prefix + "/orchestrators/{functionName}/{instanceId}", _guarded(self.start))
            for instances in (prefix + "/instances", prefix + "/instances/"):
                add("GET", instances, _guarded(self.list_instances))
                add("DELETE", instances, _guarded(self.purge_by))
            add("GET", prefix + "/instances/{instanceId}", _guarded(self.status))
            add("DELETE", prefix + "/instances/{instanceId}", _guarded(self.purge))
            add("POST", prefix + "/instances/{instanceId}/raiseEvent/{eventName}", _guarded(self.raise_event))
            add("POST", prefix + "/instances/{instanceId}/{operation}", _guarded(self.operation))

    # ------------------------------------------------------------------ start
    async def start(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["functionName"]
        body = await request.text()
        input_json: str | None = None
        if body:
            try:
                json.loads(body)
            except json.JSONDecodeError as exc:
                return _error(400, "Invalid JSON content", exc)
            input_json = body  # ExecutionStarted.Input is the request body as sent
        started = await self._management.start(
            name, request.match_info.get("instanceId") or None, input_json, request.query.get("version", "")
        )
        if started.outcome == Outcome.CONFLICT:
            return _error(
                409, f"An Orchestration instance with the instance ID '{started.instance_id}' already exists."
            )
        return await self._respond_started(request, started.instance_id)

    async def _respond_started(self, request: web.Request, instance_id: str) -> web.StreamResponse:
        """202 with the check-status payload, or with ?timeout=&pollingInterval= wait for the outcome first."""
        try:
            timeout = float(request.query["timeout"])
            interval = float(request.query["pollingInterval"])
        except (KeyError, ValueError):
            return self._check_status(request, instance_id)
        deadline = time.monotonic() + timeout
        while True:
            instance = await self._management.get(instance_id)
            if instance is not None and instance.runtime_status == RuntimeStatus.Completed:
                return web.json_response(json_text_to_value(instance.output_json))
            if instance is not None and instance.is_terminal:
                return web.json_response(status_payload(instance))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return self._check_status(request, instance_id)
            await asyncio.sleep(min(max(interval, 0.05), remaining))

    def _check_status(self, request: web.Request, instance_id: str) -> web.Response:
        payload = management_urls(_origin(request), self._hub, instance_id, system_key=self._system_key)
        headers = {"Location": payload["statusQueryGetUri"], "Retry-After": "10"}
        return web.json_response(payload, status=202, headers=headers)

    # ------------------------------------------------------------------ queries
    async def status(self, request: web.Request) -> web.StreamResponse:
        instance = await self._management.get(request.match_info["instanceId"])
        if instance is None:
            return web.Response(status=404)
        payload = status_payload(instance, show_input=_flag(request, "showInput", True))
        if _flag(request, "showHistory", False) and instance.runtime_status != RuntimeStatus.Pending:
            history = await self._management.history(instance.instance_id)
            payload["historyEvents"] = history_view(history, show_output=_flag(request, "showHistoryOutput", False))
        return web.json_response(
            payload, status=self._status_code(request, instance), headers=self._status_headers(request, instance)
        )

    @staticmethod
    def _status_code(request: web.Request, instance: Instance) -> int:
        if instance.runtime_status in _RUNNING:
            return 202
        if instance.runtime_status == RuntimeStatus.Failed and _flag(
            request, "returnInternalServerErrorOnFailure", False
        ):
            return 500
        return 200

    @staticmethod
    def _status_headers(request: web.Request, instance: Instance) -> dict[str, str]:
        if instance.runtime_status in _RUNNING:
            return {"Location": str(request.url), "Retry-After": "5"}
        return {}

    async def list_instances(self, request: web.Request) -> web.StreamResponse:
        try:
            top = int(request.query["top"])
        except (KeyError, ValueError):
            top = None
        try:
            offset = int(request.headers.get("x-ms-continuation-token") or 0)
        except ValueError:
            offset = 0
        query = InstanceQuery(
            created_from=_time(request, "createdTimeFrom"),
            created_to=_time(request, "createdTimeTo"),
            statuses=_statuses(request) or None,
            prefix=request.query.get("instanceIdPrefix") or None,
            limit=top,
            offset=offset,
        )
        instances = await self._management.query(query)
        show_input = _flag(request, "showInput", True)
        headers = {}
        if top is not None and len(instances) == top:
            headers["x-ms-continuation-token"] = str(offset + top)
        return web.json_response([status_payload(i, show_input=show_input) for i in instances], headers=headers)

    # ------------------------------------------------------------------ events and control
    async def raise_event(self, request: web.Request) -> web.StreamResponse:
        instance_id, name = request.match_info["instanceId"], request.match_info["eventName"]
        # The body is judged first only to spare a well-formed call (every call the SDK makes) a separate read:
        # a missing or finished instance still answers 404/410 before a malformed body's 400.
        refusal: web.Response | None = None
        value: Any = None
        if request.content_type.lower() != "application/json":
            refusal = _error(400, "Only application/json request content is supported")
        else:
            body = await request.text()
            try:
                value = json.loads(body) if body.strip() else None
            except json.JSONDecodeError as exc:
                refusal = _error(400, "Invalid JSON content", exc)
        if refusal is not None:
            instance = await self._management.get(instance_id)
            if instance is None:
                return web.Response(status=404)
            return web.Response(status=410) if instance.is_terminal else refusal
        # The host parses the body to a JSON value and serialises it again: a JSON string body (what the SDK's
        # raise_event sends for a dict) therefore reaches the orchestrator as a string (SDK issue #295).
        outcome = await self._management.raise_event(instance_id, name, json.dumps(value))
        return self._plain(outcome)

    async def operation(self, request: web.Request) -> web.StreamResponse:
        instance_id = request.match_info["instanceId"]
        operation = request.match_info["operation"].lower()
        reason = request.query.get("reason")
        if operation == "terminate":
            return self._plain(await self._management.terminate(instance_id, reason))
        if operation == "suspend":
            return self._plain(await self._management.suspend(instance_id, reason))
        if operation == "resume":
            return self._plain(await self._management.resume(instance_id, reason))
        if operation == "restart":
            try:
                started = await self._management.restart(
                    instance_id, new_instance_id=_flag(request, "restartWithNewInstanceId", True)
                )
            except InvalidRequest as exc:
                return _error(400, "InstanceId does not match a valid orchestration instance.", exc)
            if started.outcome == Outcome.CONFLICT:
                return _error(409, "A non-terminal instance with this instance ID already exists.")
            return await self._respond_started(request, started.instance_id)
        if operation == "rewind":
            return await self._rewind(instance_id)
        return web.Response(status=404)

    async def _rewind(self, instance_id: str) -> web.StreamResponse:
        instance = await self._management.get(instance_id)
        if instance is None:
            return web.json_response(f'No orchestration with instance ID "{instance_id}" found.', status=404)
        if instance.runtime_status != RuntimeStatus.Failed:
            return web.json_response(
                f"This orchestration has status {instance.runtime_status}, but only orchestrations in the "
                '"Failed" state can be rewound.',
                status=412,
            )
        # What the real host answers for storage providers without rewind; the SDK raises this message.
        return web.json_response("Rewind is not supported by the local durable host's storage provider.", status=501)

    @staticmethod
    def _plain(outcome: Outcome) -> web.Response:
        return web.Response(status={Outcome.OK: 202, Outcome.NOT_FOUND: 404, Outcome.GONE: 410}[outcome])

    # ------------------------------------------------------------------ purge
    async def purge(self, request: web.Request) -> web.StreamResponse:
        instance_id = request.match_info["instanceId"]
        outcome = await self._management.purge(instance_id)
        if outcome == Outcome.NOT_FOUND:
            return web.Response(status=404)
        if outcome == Outcome.NOT_TERMINAL:
            instance = await self._management.get(instance_id)
            status = instance.runtime_status if instance else "unknown"
            return web.json_response(
                "Only orchestrations in a terminal state can be purged, but the orchestration with instance ID "
                f"{instance_id} has status {status}",
                status=412,
            )
        return web.json_response({"instancesDeleted": 1})

    async def purge_by(self, request: web.Request) -> web.StreamResponse:
        created_from = _time(request, "createdTimeFrom")
        if created_from is None:
            return web.json_response("Please provide value for 'createdTimeFrom' parameter.", status=400)
        query = InstanceQuery(
            created_from=created_from, created_to=_time(request, "createdTimeTo"), statuses=_statuses(request) or None
        )
        deleted = await self._management.purge_by(query)
        if deleted == 0:
            return web.Response(status=404)
        return web.json_response({"instancesDeleted": deleted})
