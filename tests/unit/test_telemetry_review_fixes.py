# intent_ref: platform.telemetry
"""What the app logs stays its own: the exporter's INFO records stay out of the host's log stream, a caller's
request id is echoed only when it is one whole well-formed line, and a percent-decoded path logged on a 500 stays on
its line."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import pytest
from opentelemetry import propagate
from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from shared.api import adapter
from shared.api.middleware import ErrorBoundary, RequestIdMiddleware
from shared.api.request_ids import choose_request_id
from shared.observability import setup

FORGED_PATH = "/api/v1/intents/x\nERROR shared.api.problems: request FORGED\u2028ERROR: tenant leak"
"""A path as the server gives it after percent-decoding `%0A` and `%E2%80%A8` (a line separator to a log viewer, and
the one the URL parser keeps): forged log lines if logged raw."""


@pytest.fixture
def exporter_loggers() -> Iterator[None]:
    """The exporter's loggers and the global propagator as they were before the test."""
    levels = {name: logging.getLogger(name).level for name in setup.EXPORTER_LOGGERS}
    textmap = propagate.get_global_textmap()
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    propagate.set_global_textmap(textmap)


def test_the_exporters_own_info_records_do_not_reach_the_root(
    exporter_loggers: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The Functions worker sets the root to INFO and forwards every record: each export's request headers and its
    # `Transmission succeeded` went to the host's log stream and Application Insights, a record of every batch.
    monkeypatch.setattr(setup, "_mode", None)
    monkeypatch.setattr(setup, "_start_azure_monitor", lambda _connection, _resource: None)
    monkeypatch.setattr(setup, "_instrument_libraries", lambda _sql_spans: None)
    for name in setup.EXPORTER_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    assert setup.configure_telemetry("InstrumentationKey=00000000-0000-0000-0000-000000000000", None) == (
        "azure-monitor"
    )
    with caplog.at_level(logging.INFO):
        logging.getLogger("azure.monitor.opentelemetry.exporter.export._base").info("Transmission succeeded")
        logging.getLogger("azure.core.pipeline.policies.http_logging_policy").info("Request URL: 'https://x/'")
        logging.getLogger("azure.monitor.opentelemetry.exporter.export._base").warning("Retrying due to server")
    assert [record.getMessage() for record in caplog.records] == ["Retrying due to server"]
    # Held on the loggers themselves: an `azure` parent another module raised is no part of this process's set-up.
    assert {logging.getLogger(name).level for name in setup.EXPORTER_LOGGERS} == {logging.WARNING}


@pytest.mark.parametrize("forged", ["forged\n", "forged\r\n", "\nforged", "a\x1b[31mb", "a" * 129, ""])
def test_a_request_id_that_is_not_one_whole_well_formed_line_is_replaced(forged: str) -> None:
    # `^...$` with `.match` took `forged\n`: `$` matches before a final newline, and the id was echoed and logged.
    chosen = choose_request_id(forged)
    assert chosen != forged and "\n" not in chosen


def test_a_well_formed_request_id_is_kept() -> None:
    assert choose_request_id("req-1.a:b_C") == "req-1.a:b_C"


def _scope(path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": quote(path).encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), (b"x-request-id", b"req-forged-path")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _call(app: Any, path: str) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await app(_scope(path), _receive, send)
    return sent


async def _raises(_scope: Scope, _receive: Receive, _send: Send) -> None:
    raise RuntimeError("the database went away")


async def _returns_without_answering(_scope: Scope, _receive: Receive, _send: Send) -> None:
    return None


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The messages logged at ERROR, without their tracebacks (what a log stream shows of each record's text)."""
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]


def _status(sent: list[Message]) -> int:
    return int(next(message["status"] for message in sent if message["type"] == "http.response.start"))


def test_a_500_on_a_path_with_an_encoded_newline_logs_one_line(caplog: pytest.LogCaptureFixture) -> None:
    # The problem handler logged the decoded path as it was: `%0A` started a forged ERROR line of the attacker's text.
    with caplog.at_level(logging.ERROR):
        sent = asyncio.run(_call(RequestIdMiddleware(_raises), FORGED_PATH))
    assert _status(sent) == 500
    [line] = _lines(caplog)
    assert line.startswith("request req-forged-path: unhandled error on ") and len(line.splitlines()) == 1, line


def test_an_app_that_returns_without_answering_logs_its_path_on_one_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        sent = asyncio.run(_call(ErrorBoundary(_returns_without_answering), FORGED_PATH))
    assert _status(sent) == 500
    [line] = _lines(caplog)
    assert "without answering" in line and len(line.splitlines()) == 1, line


def test_the_adapters_failures_log_their_path_on_one_line(caplog: pytest.LogCaptureFixture) -> None:
    # The adapter's own two 500s (an app that ended without answering, an adapter that failed) logged it raw too.
    async def both() -> list[int]:
        request = Request(_scope(FORGED_PATH), _receive)
        ended = await adapter._relay(_returns_without_answering, request)
        failed = await adapter.serve(SimpleNamespace(app=_raises), request)  # type: ignore[arg-type]
        return [ended.status_code, failed.status_code]

    with caplog.at_level(logging.ERROR):
        assert asyncio.run(both()) == [500, 500]
    lines = _lines(caplog)
    assert len(lines) == 2 and not [line for line in lines if len(line.splitlines()) > 1], lines
