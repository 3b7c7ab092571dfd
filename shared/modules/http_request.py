# intent_ref: platform.modules
"""`http.request`: one HTTP call through the SSRF guard; the output is the status, safe headers and the body."""

from __future__ import annotations

import json
from typing import Any, ClassVar

import httpx

from shared.modules.contract import Module, ModuleContext, StepFailed
from shared.modules.ssrf import GuardedClient, Resolver, private_network_allowed, read_limited, system_resolver
from shared.registry.catalog import HttpRequestParams

MAX_BODY_BYTES = 64 * 1024
REQUEST_TIMEOUT_S = 30.0
SAFE_RESPONSE_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "content-encoding",
        "content-language",
        "location",
        "etag",
        "last-modified",
        "cache-control",
        "retry-after",
        "date",
        "x-request-id",
        "x-correlation-id",
    }
)
"""Copied into the output (and so into history): never cookies or authentication challenges."""


def allowed_hosts(ctx: ModuleContext) -> list[str]:
    """The tenant's SSRF allow-list (exact host names)."""
    hosts = ctx.tenant_settings.get("allowed_hosts") or []
    return [h for h in hosts if isinstance(h, str)]


def decode_body(response: httpx.Response, content: bytes, truncated: bool) -> Any:
    """JSON if the response says so and all of it was read, otherwise text."""
    content_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if not truncated and (content_type == "application/json" or content_type.endswith("+json")) and content:
        try:
            return json.loads(content)
        except ValueError:
            pass  # a server that mislabels its body still gets its text recorded
    return content.decode(response.encoding or "utf-8", errors="replace")


class HttpRequestModule(Module[HttpRequestParams]):
    action: ClassVar[str] = "http.request"
    params_model = HttpRequestParams
    timeout_s = 60

    def __init__(
        self,
        *,
        resolver: Resolver = system_resolver,
        timeout: float = REQUEST_TIMEOUT_S,
        allow_private: bool | None = None,
    ) -> None:
        self._resolver = resolver
        self._timeout = timeout
        self._allow_private = allow_private

    def run(self, ctx: ModuleContext, params: HttpRequestParams) -> Any:
        with GuardedClient(
            allowed_hosts(ctx),
            timeout=self._timeout,
            resolver=self._resolver,
            allow_private=private_network_allowed(self._allow_private),
        ) as client:
            try:
                # The attempt's key lets the receiving service drop a redelivered request (at-least-once work).
                headers = {"Idempotency-Key": ctx.idempotency_key, **params.headers}
                response = client.request(
                    params.method, params.url, headers=headers, query=params.query, json_body=params.body
                )
                content, truncated = read_limited(response, MAX_BODY_BYTES)
            except httpx.HTTPError as exc:
                raise StepFailed(f"{params.method} {params.url} failed: {type(exc).__name__}: {exc}") from None
        status = response.status_code
        output = {
            "status": status,
            "headers": {k: v for k, v in response.headers.items() if k.lower() in SAFE_RESPONSE_HEADERS},
            "body": decode_body(response, content, truncated),
            "truncated": truncated,
        }
        expected = params.expect_status
        if (status not in expected) if expected else not 200 <= status < 300:
            wanted = ", ".join(map(str, expected)) if expected else "2xx"
            # 5xx and 429 are often transient; a 4xx usually repeats.
            raise StepFailed(
                f"{params.method} {params.url} answered {status}, expected {wanted}",
                retryable=status >= 500 or status == 429,
                details={"status": status, "output": output},
            )
        return output
