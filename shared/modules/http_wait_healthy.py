# intent_ref: platform.modules
"""`http.wait_healthy` and its alias `verify-deployment`: poll a URL until it answers healthy or time runs out."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ClassVar

import httpx

from shared.modules.contract import Abandoned, Module, ModuleContext, StepFailed
from shared.modules.http_request import allowed_hosts
from shared.modules.ssrf import GuardedClient, Resolver, UrlRefused, private_network_allowed, system_resolver
from shared.registry.catalog import HttpWaitHealthyParams, VerifyDeploymentParams

PROBE_TIMEOUT_S = 10.0
ABANDON_GRACE_S = 1.0
"""How long past its attempt's deadline a poll waits for the worker to abandon it before it ends on its own."""


class HttpWaitHealthyModule(Module[HttpWaitHealthyParams]):
    action: ClassVar[str] = "http.wait_healthy"
    params_model = HttpWaitHealthyParams
    timeout_s = 900

    def __init__(
        self,
        *,
        sleep: Callable[[float], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
        resolver: Resolver = system_resolver,
        allow_private: bool | None = None,
    ) -> None:
        """`sleep` (seconds) pauses between probes; None waits on the attempt's `abandoned` event, so an abandoned
        poll ends at once."""
        self._sleep = sleep
        self._clock = clock
        self._resolver = resolver
        self._allow_private = allow_private

    def run(self, ctx: ModuleContext, params: HttpWaitHealthyParams) -> Any:
        return self.poll(ctx, params)

    def poll(self, ctx: ModuleContext, params: HttpWaitHealthyParams) -> dict[str, Any]:
        """Probe every `interval` s; healthy on an expected status, a failure once `timeout` s have passed or the
        attempt's deadline comes (or the attempt is abandoned), whichever is first."""
        started = self._clock()
        limit = started + params.timeout
        # The attempt's deadline, on this module's clock: past it the worker has recorded the attempt timed out and
        # this thread (and its tenant's share of the module threads) would be held for nothing, up to the whole
        # `timeout` (30 days at most) since a thread cannot be stopped.
        left = ctx.time_left()
        # Only a deadline clearly before the poll's own limit decides: one about as far (a step timeout equal to the
        # poll's, the claim a moment before the start) would trade the poll's own verdict for the worker's.
        by_deadline = left is not None and started + left + ABANDON_GRACE_S < limit
        if left is not None:
            limit = min(limit, started + left)
        pause = self._sleep or ctx.abandoned.wait
        probes = 0
        last = "no probe"
        with GuardedClient(
            allowed_hosts(ctx),
            resolver=self._resolver,
            allow_private=private_network_allowed(self._allow_private),
            tenant=ctx.tenant_id,
        ) as client:
            while True:
                if ctx.abandoned.is_set():
                    raise Abandoned(
                        f"{params.url} not healthy when its attempt was abandoned ({probes} probes; last: {last})",
                        details={"probes": probes, "last": last},
                    )
                probes += 1
                remaining = max(limit - self._clock(), 0.1)
                try:
                    response = client.request("GET", params.url, timeout=min(PROBE_TIMEOUT_S, remaining))
                    response.close()
                    status = response.status_code
                    if status in params.expect_status:
                        return {
                            "url": params.url,
                            "status": status,
                            "probes": probes,
                            "elapsed_s": round(self._clock() - started, 3),
                        }
                    last = f"status {status}"
                except UrlRefused:
                    raise  # waiting cannot make a refused URL allowed
                except (httpx.HTTPError, StepFailed) as exc:
                    # An app that is still starting refuses connections: that is "not healthy yet", not a failure.
                    last = f"{type(exc).__name__}: {exc}"
                if self._clock() + params.interval > limit:
                    if by_deadline:
                        # The worker answers for the attempt at its deadline, as timed out (the orchestrator's own
                        # timer reads the same): wait for that instead of answering first with another verdict.
                        pause(max(limit - self._clock(), 0.0) + ABANDON_GRACE_S)
                        if ctx.abandoned.is_set() and self._clock() < limit:
                            # Woken by a give-up, not by the deadline: stopped short for it, as above.
                            raise Abandoned(
                                f"{params.url} not healthy when its attempt was abandoned ({probes} probes; "
                                f"last: {last})",
                                details={"probes": probes, "last": last},
                            )
                        raise StepFailed(
                            f"{params.url} not healthy by its attempt's deadline ({probes} probes; last: {last})",
                            details={"probes": probes, "last": last},
                        )
                    raise StepFailed(
                        f"{params.url} not healthy after {params.timeout:g} s ({probes} probes; last: {last})",
                        details={"probes": probes, "last": last},
                    )
                pause(params.interval)


class VerifyDeploymentModule(Module[VerifyDeploymentParams]):
    action: ClassVar[str] = "verify-deployment"
    params_model = VerifyDeploymentParams
    timeout_s = 900

    def __init__(self, waiter: HttpWaitHealthyModule | None = None) -> None:
        self._waiter = waiter or HttpWaitHealthyModule()

    def run(self, ctx: ModuleContext, params: VerifyDeploymentParams) -> Any:
        base = params.url or ctx.tenant_settings.get("base_url")
        if not isinstance(base, str) or not base:
            raise StepFailed("verify-deployment needs a url, or a base_url in the tenant's settings", retryable=False)
        url = base
        if params.health_check:
            url = f"{base.rstrip('/')}/{params.health_check.lstrip('/')}"
        wait = self._waiter.parse({"url": url, "timeout": params.timeout, "interval": params.interval})
        return self._waiter.poll(ctx, wait)
