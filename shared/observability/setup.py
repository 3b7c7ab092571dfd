# intent_ref: platform.telemetry
"""Start OpenTelemetry once per process: the Azure Monitor distro when a connection string is set, else a local file.

Nothing here is on a request's path once started: spans and metrics leave through batching processors on threads
of their own, so an exporter that is down costs a request nothing (its batches are dropped or kept on disk by the
distro), and a process without either setting keeps OpenTelemetry's no-op API.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from opentelemetry import metrics, propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators import textmap
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, MetricsData, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shared.config import get_settings
from shared.db.pool import pool_usage
from shared.engine.event_wakeup import made_event_wakeup
from shared.observability import metrics as platform_metrics
from shared.observability.line_file import BoundedLineFile
from shared.observability.urls import outbound_url

SERVICE_NAME = "quantum-platform"
"""The `service.name` resource attribute: the cloud role name Application Insights shows."""

APP_LOGGERS = ("qp", "shared", "functions")
"""The app's own logger trees, whose records the distro exports: `qp.telemetry`, and every module's logger, named
after the module (`shared.api.problems`, `functions.timer_execution_sweeper`...). Never the root: the SDKs' and
libraries' INFO chatter (`azure.*`, `httpx`...) stays in the host's log stream."""

TELEMETRY_LOGGER = "qp.telemetry"
"""The telemetry lines' logger (shared.telemetry): not exported, as each line's span event carries the same fields."""

EXPORTER_LOGGERS = ("azure.core.pipeline.policies.http_logging_policy", "azure.monitor.opentelemetry.exporter")
"""Loggers that record every export at INFO (each request's headers, `Transmission succeeded`): held at WARNING."""

_lock = threading.Lock()
_mode: str | None = None


def configure_telemetry(connection_string: str | None, telemetry_file: str | None, *, sql_spans: bool = False) -> str:
    """Start exporting once per process; answers how ("azure-monitor", "file" or "off"). Later calls change nothing."""
    global _mode
    with _lock:
        if _mode is not None:
            return _mode
        resource = Resource.create({"service.name": SERVICE_NAME})
        if connection_string:
            _quiet_exporter_loggers()
            _start_azure_monitor(connection_string, resource)
            _mode = "azure-monitor"
        elif telemetry_file:
            _start_file(Path(telemetry_file), resource)
            _mode = "file"
        else:
            _mode = "off"
            return _mode
        _propagate_trace_context_only()
        _instrument_libraries(sql_spans)
        return _mode


def start_telemetry() -> str:
    """Start exporting as the app settings say, and report the database pools' use and whether the execution event
    listener listens; answers how (see above)."""
    settings = get_settings()
    mode = configure_telemetry(
        settings.APPLICATIONINSIGHTS_CONNECTION_STRING,
        settings.QP_TELEMETRY_FILE,
        sql_spans=settings.QP_TELEMETRY_SQL_SPANS,
    )
    if mode != "off":
        platform_metrics.observe_pools(pool_usage)
        platform_metrics.observe_event_listener(event_listener_listening)
    return mode


def event_listener_listening() -> bool | None:
    """Whether this process's execution event listener listens; None until the process has made it (a stream or long
    poll makes it on first use): observing it never makes one."""
    wakeup = made_event_wakeup()
    return None if wakeup is None else wakeup.listening.is_set()


def telemetry_mode() -> str:
    """How this process exports ("off" until configured)."""
    return _mode or "off"


def _start_azure_monitor(connection_string: str, resource: Resource) -> None:
    from azure.monitor.opentelemetry import configure_azure_monitor

    first = logging.getLogger(APP_LOGGERS[0])
    before = list(first.handlers)
    configure_azure_monitor(
        connection_string=connection_string,
        resource=resource,
        # Every span is kept: alerts count metrics, but a failed execution's trace must be there to open.
        sampling_ratio=1.0,
        # The distro hands its log handler to one logger; the app's other trees get the same handler below.
        logger_name=APP_LOGGERS[0],
        instrumentation_options={
            # FastAPI is instrumented on the app itself (shared.api.app), psycopg 3 below; the rest is not used.
            "fastapi": {"enabled": False},
            # httpx is instrumented below, with the URL redaction the distro's own instrumentation would not apply.
            "httpx": {"enabled": False},
            "django": {"enabled": False},
            "flask": {"enabled": False},
            "psycopg2": {"enabled": False},
            "requests": {"enabled": False},
            "urllib": {"enabled": False},
            "urllib3": {"enabled": False},
        },
    )
    exporting = [handler for handler in first.handlers if handler not in before]
    for handler in exporting:
        handler.addFilter(_not_a_telemetry_line)
    # The same handler instance on each tree (the trees are disjoint, so no record is exported twice): a 500's
    # `request <id>: unhandled error` (shared.api.problems) or a retried intent-requests batch (shared.ingress.process)
    # went out of no exporter when only `qp` had it. The trees stop at themselves: the Functions worker forwards every
    # record that reaches the root to the host, which sent it to the same Application Insights a second time (sampled,
    # by host.json); the exported copy is the unsampled one, and the distro's live metrics show it in the portal.
    for name in APP_LOGGERS:
        logger = logging.getLogger(name)
        for handler in exporting:
            if handler not in logger.handlers:
                logger.addHandler(handler)
        logger.propagate = False


def _not_a_telemetry_line(record: logging.LogRecord) -> bool:
    """The exporting handler's filter: a `qp.telemetry` line would be a second `traces` row of its span event."""
    return record.name != TELEMETRY_LOGGER


def _quiet_exporter_loggers() -> None:
    """The exporter's own INFO records reached the root, so the Functions host sent each export's log to Application
    Insights and the host's log stream: a record of every batch, itself exported in the next."""
    for name in EXPORTER_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def _propagate_trace_context_only() -> None:
    """Requests and events are read (and calls written) with W3C `traceparent` only, without baggage or `tracestate`:
    the app uses neither, and OpenTelemetry logged a caller's oversized `baggage` header, or a malformed `tracestate`,
    whole, at WARNING, on every request that sent one."""
    propagate.set_global_textmap(TraceparentOnlyPropagator())


class TraceparentOnlyPropagator(TraceContextTextMapPropagator):
    """W3C trace context without `tracestate`: a caller's is neither parsed (a malformed one was logged whole, before
    authentication) nor kept on the request's span, so it is not sent on with the app's own calls."""

    def extract(
        self,
        carrier: textmap.CarrierT,
        context: Context | None = None,
        getter: textmap.Getter[textmap.CarrierT] = textmap.default_getter,
    ) -> Context:
        """The context of the carrier's `traceparent` alone."""
        traceparent = getter.get(carrier, self._TRACEPARENT_HEADER_NAME)
        if not traceparent:
            return Context() if context is None else context
        return super().extract({self._TRACEPARENT_HEADER_NAME: traceparent}, context)

    @property
    def fields(self) -> set[str]:
        """The one header this propagator reads and writes."""
        return {self._TRACEPARENT_HEADER_NAME}


def _start_file(path: Path, resource: Resource) -> None:
    """Spans and metrics as JSON lines appended to `path`, kept bounded (local runs: `python -m devhost trace` reads
    it and the lines moved aside before it)."""
    out: Any = BoundedLineFile(path)  # the exporters take any object with write and flush
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=out, formatter=_span_line)))
    trace.set_tracer_provider(provider)
    reader = PeriodicExportingMetricReader(ConsoleMetricExporter(out=out, formatter=_metrics_line))
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[reader]))


def _span_line(span: ReadableSpan) -> str:
    return '{"span":' + str(span.to_json(indent=None)) + "}\n"


def _metrics_line(data: MetricsData) -> str:
    return '{"metrics":' + data.to_json(indent=None) + "}\n"


def _instrument_libraries(sql_spans: bool) -> None:
    """Database statements (unless `sql_spans` is off) and outbound HTTP calls become dependency spans (httpx: the
    distro does it in Azure)."""
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

    if sql_spans:
        PsycopgInstrumentor().instrument(enable_commenter=False, skip_dep_check=True)
    httpx_instrumentor: Any = HTTPXClientInstrumentor()
    if not httpx_instrumentor.is_instrumented_by_opentelemetry:
        httpx_instrumentor.instrument(request_hook=redact_outbound_url, async_request_hook=_redact_outbound_url_async)


_URL_ATTRIBUTES = ("http.url", "url.full")
"""Where an outbound call's span keeps its URL (the older and the current semantic conventions)."""


def redact_outbound_url(span: Any, request: Any) -> None:
    """httpx's request hook: the span's URL as `outbound_url` gives it (the instrumentation redacts a few signature
    parameters only)."""
    if span.is_recording():
        for attribute in _URL_ATTRIBUTES:
            span.set_attribute(attribute, outbound_url(request.url))


async def _redact_outbound_url_async(span: Any, request: Any) -> None:
    """The async client's request hook: as `redact_outbound_url`."""
    redact_outbound_url(span, request)
