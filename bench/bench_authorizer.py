# intent_ref: platform.access-control
"""Authorizer throughput and latency: `python -m bench.bench_authorizer [iterations]` from the repo root."""

from __future__ import annotations

import statistics
import sys
import time
import uuid
from collections.abc import Callable

from shared.auth.principal import INTENT_DEPLOYER, INTENT_READER, Principal
from shared.policy.actions import Action
from shared.policy.authorizer import Resource, TenantFacts, get_authorizer

TENANT_POLICIES = (
    '@id("no-secret-in-production") forbid (principal, action == QP::Action::"intent.execute", '
    'resource is QP::Intent) when { resource.labels.contains("data=secret") && resource.target == "production" };',
)


def _run(label: str, iterations: int, decide: Callable[[], object]) -> None:
    for _ in range(200):  # warm-up: schema handles, the tenant policy-set cache
        decide()
    samples: list[float] = []
    started = time.perf_counter()
    for _ in range(iterations):
        begin = time.perf_counter_ns()
        decide()
        samples.append((time.perf_counter_ns() - begin) / 1000)
    elapsed = time.perf_counter() - started
    cuts = statistics.quantiles(samples, n=100)
    print(f"{label:<40} {iterations / elapsed:>9.0f} decisions/s   p50 {cuts[49]:>6.0f} µs   p95 {cuts[94]:>6.0f} µs")


def main() -> None:
    iterations = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    authz = get_authorizer()
    tenant_id = uuid.uuid4()
    facts = TenantFacts(tenant_id, "active", frozenset({"staging", "production"}), frozenset({"http"}))
    reader = Principal(tenant_id, uuid.uuid4(), uuid.uuid4(), frozenset({INTENT_READER}), frozenset(), False)
    deployer = Principal(tenant_id, uuid.uuid4(), uuid.uuid4(), frozenset({INTENT_DEPLOYER}), frozenset(), False)
    intent = Resource("Intent", "i-1", tenant_id, {"target": "production", "labels": {"data": "secret"}})

    _run("intent.read (allow)", iterations, lambda: authz.decide(reader, Action.INTENT_READ, intent, tenant=facts))
    _run(
        "intent.execute (deny, role)",
        iterations,
        lambda: authz.decide(reader, Action.INTENT_EXECUTE, intent, tenant=facts),
    )
    _run(
        "intent.execute + tenant forbid (deny)",
        iterations,
        lambda: authz.decide(deployer, Action.INTENT_EXECUTE, intent, tenant=facts, tenant_policies=TENANT_POLICIES),
    )


if __name__ == "__main__":
    main()
