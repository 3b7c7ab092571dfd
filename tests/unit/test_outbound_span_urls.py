# intent_ref: platform.telemetry
"""An outbound call's span keeps the scheme, host and port of its URL, never the path or query a secret can be in."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared.observability.setup import redact_outbound_url
from shared.observability.urls import outbound_url


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        return


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_a_tenants_url_secrets_stay_out_of_the_outbound_span(server: str) -> None:
    # The instrumentation hides a few signature parameters only: an http.request step's `api_key` query and a chat
    # service's webhook path (its token) reached Application Insights' dependencies.
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with httpx.Client() as client:
        HTTPXClientInstrumentor.instrument_client(client, tracer_provider=provider, request_hook=redact_outbound_url)
        client.get(f"{server}/services/T0/B0/XYZSECRET?api_key=tok123&code=fnkey")
    [span] = exporter.get_finished_spans()
    recorded = " ".join(str(value) for value in (span.attributes or {}).values())
    assert "XYZSECRET" not in recorded and "tok123" not in recorded and "fnkey" not in recorded
    assert span.attributes is not None and span.attributes["url.full" if "url.full" in span.attributes else "http.url"]
    assert outbound_url(f"{server}/services/T0?api_key=x") == f"{server}/REDACTED"
    assert outbound_url("https://example.com/") == "https://example.com/"
