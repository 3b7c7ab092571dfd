# intent_ref: platform.devhost
"""The devhost's body cap (the app's QP_MAX_BODY_BYTES plus a margin) bounds the bodies of the app's HTTP functions
only: its component routes keep the Functions host's own cap, so the Durable API takes an orchestration input larger
than the request that caused it (a valid execute body of 900 KB of non-ASCII text is 2.7 MB once the app's Durable
client has JSON-encoded it), as the Functions host whose Durable API this stands in for does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devhost.durable.binding import RPC_PATH
from devhost.durable.management import Management, Outcome, Started
from devhost.keys import load_or_create_master_key
from tests.unit.test_devhost_bomb_query import LIMIT, Host, _exchange, host  # noqa: F401  # the host fixture


def test_an_orchestration_input_over_the_app_body_cap_is_taken_by_the_durable_api(
    host: Host,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    received: list[int] = []

    async def start(
        self: Management, name: str, instance_id: str | None, input_json: str | None, version: str = ""
    ) -> Started:  # noqa: ARG001,E501
        received.append(len(input_json or ""))
        return Started(Outcome.OK, instance_id or "x")

    monkeypatch.setattr(Management, "start", start)
    # What the Durable client sends for an input holding 450,000 "é" (json.dumps escapes each as \u00e9).
    body = json.dumps({"execution_id": "e", "inputs": {"blob": "é" * 450_000}}).encode()
    assert len(body) > 2 * LIMIT  # over the host's cap, LIMIT and a margin
    key = load_or_create_master_key(tmp_path)
    status, _, answer = _exchange(
        host.port,
        b"POST %sorchestrators/intent_execution_v2/abc HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"x-functions-key: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        % (RPC_PATH.encode(), key.encode(), len(body))
        + body,
    )
    assert status == 202, answer[:300]
    assert received == [len(body)]
