# intent_ref: platform.telemetry
"""The platform's meters: what the portal's alerts and workbook count, by tenant (docs/operations.md lists them).

Instruments come from the global meter provider when first used, so they record into whatever `setup` started
(or into OpenTelemetry's no-op provider when nothing was).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable
from typing import Final

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Counter, Histogram, Meter, Observation, UpDownCounter

from shared.observability.tracing import ACTION, INTENT_ID, TENANT_ID

EXECUTIONS_STARTED: Final = "qp.executions.started"
EXECUTIONS_ENDED: Final = "qp.executions.ended"
EXECUTIONS_STALLED: Final = "qp.executions.stalled"
EXECUTION_DURATION: Final = "qp.execution.duration"
STEP_DURATION: Final = "qp.step.duration"
MODULE_WORK_LAG: Final = "qp.module_work.lag"
WORK_QUEUE_LAG: Final = "qp.work_queue.lag"
EVENT_STREAMS_OPEN: Final = "qp.event_streams.open"
REQUESTS_REFUSED: Final = "qp.requests.refused"
INGRESS_REJECTED: Final = "qp.ingress.rejected"
DB_POOL_WAIT: Final = "qp.db.pool.wait"
DB_POOL_IN_USE: Final = "qp.db.pool.in_use"
EVENT_LISTENER_LISTENING: Final = "qp.event_listener.listening"

NAMES: Final = frozenset(
    {
        EXECUTIONS_STARTED,
        EXECUTIONS_ENDED,
        EXECUTIONS_STALLED,
        EXECUTION_DURATION,
        STEP_DURATION,
        MODULE_WORK_LAG,
        WORK_QUEUE_LAG,
        EVENT_STREAMS_OPEN,
        REQUESTS_REFUSED,
        INGRESS_REJECTED,
        DB_POOL_WAIT,
        DB_POOL_IN_USE,
        EVENT_LISTENER_LISTENING,
    }
)
"""Every metric the app emits: the monitoring queries may name these and no others (tests/infra keeps them so)."""

STATUS = "status"
OUTCOME = "outcome"
REASON = "reason"
POOL = "pool"


def _meter() -> Meter:
    return metrics.get_meter("quantum-platform")


@functools.cache
def _counter(name: str, description: str, unit: str = "1") -> Counter:
    return _meter().create_counter(name, unit=unit, description=description)


@functools.cache
def _histogram(name: str, description: str) -> Histogram:
    return _meter().create_histogram(name, unit="s", description=description)


@functools.cache
def _up_down(name: str, description: str) -> UpDownCounter:
    return _meter().create_up_down_counter(name, unit="1", description=description)


INTENTS_PER_TENANT: Final = 100
"""Intents of one tenant that get a series of their own in a process; its later ones are counted as `other`."""
OTHER_INTENTS: Final = "other"

_intents_seen: dict[str, set[str]] = {}
_intents_lock = threading.Lock()


def metric_intent(tenant: str, intent_id: object) -> str:
    """An intent as a metric dimension: its id for the first `INTENTS_PER_TENANT` of its tenant that this process
    counts, `other` after them. The SDK keeps every series it was given for the life of the process (about 4.5 KB
    each, whatever the temporality), and a tenant may create and run as many intents as it likes: unbounded, that
    grew every instance's memory without end. The bound is per tenant so that one tenant's intents cannot push
    another's into `other`."""
    intent = str(intent_id)
    with _intents_lock:
        seen = _intents_seen.setdefault(tenant, set())
        if intent in seen:
            return intent
        if len(seen) < INTENTS_PER_TENANT:
            seen.add(intent)
            return intent
    return OTHER_INTENTS


def _execution_attributes(tenant_id: object, intent_id: object) -> dict[str, str]:
    tenant = str(tenant_id)
    return {TENANT_ID: tenant, INTENT_ID: metric_intent(tenant, intent_id)}


def execution_started(tenant_id: object, intent_id: object) -> None:
    """An execution was recorded and its orchestration is being started."""
    _counter(EXECUTIONS_STARTED, "Executions started").add(1, _execution_attributes(tenant_id, intent_id))


def execution_ended(tenant_id: object, intent_id: object, status: str, duration_s: float | None) -> None:
    """An execution reached `succeeded`, `failed` or `cancelled` (and how long it took from its request)."""
    attributes = {**_execution_attributes(tenant_id, intent_id), STATUS: status}
    _counter(EXECUTIONS_ENDED, "Executions ended, by status").add(1, attributes)
    if duration_s is not None:
        _histogram(EXECUTION_DURATION, "Execution duration, request to end").record(duration_s, attributes)


def execution_stalled(tenant_id: object, intent_id: object) -> None:
    """The sweeper found an execution that made no progress for longer than its steps allow."""
    _counter(EXECUTIONS_STALLED, "Executions found stalled").add(1, _execution_attributes(tenant_id, intent_id))


REMOTE_ACTION = "remote"
"""The `action` dimension of every action a tenant registered itself (its spans carry the name)."""


@functools.cache
def _builtin_actions() -> frozenset[str]:
    from shared.registry.catalog import builtin_catalog  # the catalog imports far more than telemetry needs

    return frozenset(builtin_catalog().keys())


def metric_action(action: str) -> str:
    """An action as a metric dimension: a built-in's name, else `remote`. Tenants name their own modules, as many as
    they like, and each name would be a series of its own per tenant."""
    return action if action in _builtin_actions() else REMOTE_ACTION


def step_ended(tenant_id: object, action: str, outcome: str, duration_s: float | None) -> None:
    """A step attempt's result was recorded (`succeeded` or `failed`), with its duration from dispatch."""
    if duration_s is not None:
        attributes = {TENANT_ID: str(tenant_id), ACTION: metric_action(action), OUTCOME: outcome}
        _histogram(STEP_DURATION, "Step attempt duration, dispatch to result").record(duration_s, attributes)


def module_work_lag(action: str, lag_s: float) -> None:
    """How long a `module-work` event waited on the hub before the module worker took it."""
    _histogram(MODULE_WORK_LAG, "Time from enqueue on module-work to pickup").record(
        max(0.0, lag_s), {ACTION: metric_action(action)}
    )


def work_queue_lag(tenant_id: object, action: str, lag_s: float) -> None:
    """How long a remote item waited in its tenant's queue before a worker leased it."""
    _histogram(WORK_QUEUE_LAG, "Time from queueing a remote item to its lease").record(
        max(0.0, lag_s), {TENANT_ID: str(tenant_id), ACTION: metric_action(action)}
    )


def event_stream_opened(tenant_id: object, delta: int = 1) -> None:
    """An event stream opened (+1) or closed (-1)."""
    _up_down(EVENT_STREAMS_OPEN, "Event streams open").add(delta, {TENANT_ID: str(tenant_id)})


def request_refused(tenant_id: object, reason: str) -> None:
    """A request answered 429: `rate-limited`, `tenant-busy`, `execution-quota`, `too-many-streams` or `check-busy`."""
    _counter(REQUESTS_REFUSED, "Requests refused, by reason").add(1, {TENANT_ID: str(tenant_id), REASON: reason})


def ingress_rejected(tenant_id: object, reason: str) -> None:
    """An `intent-requests` event was rejected (recorded with its reason)."""
    _counter(INGRESS_REJECTED, "Intent requests rejected").add(1, {TENANT_ID: str(tenant_id), REASON: reason})


def pool_wait(pool: str, wait_s: float) -> None:
    """How long a caller waited for a pooled database connection."""
    _histogram(DB_POOL_WAIT, "Wait for a pooled database connection").record(wait_s, {POOL: pool})


def observe_pools(pools: Callable[[], Iterable[tuple[str, int, int]]]) -> None:
    """Report each pool's connections in use as a fraction of its maximum (`pools` yields name, in use, max)."""

    def observe(_: CallbackOptions) -> Iterable[Observation]:
        return [Observation(used / size if size else 0.0, {POOL: name}) for name, used, size in pools()]

    _meter().create_observable_gauge(DB_POOL_IN_USE, [observe], unit="1", description="Pool connections in use")


def observe_event_listener(listening: Callable[[], bool | None]) -> None:
    """Report 1 while this process's execution event listener listens and 0 while it does not (`listening` answers
    None until the process has made its listener: nothing is reported then). While it does not listen, live streams
    and long polls read again every DOWN_RECHECK_S instead of being woken (shared/engine/event_wakeup.py)."""

    def observe(_: CallbackOptions) -> Iterable[Observation]:
        state = listening()
        return [] if state is None else [Observation(1 if state else 0)]

    _meter().create_observable_gauge(
        EVENT_LISTENER_LISTENING, [observe], unit="1", description="Execution event listener listening (1) or not (0)"
    )
