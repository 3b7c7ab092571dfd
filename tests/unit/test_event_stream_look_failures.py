# intent_ref: platform.execution
"""An open event stream whose look at its caller's access cannot be made because the database is out of reach ends as
a stream whose feed cannot read does (its client reconnects, admitted afresh), with a warning naming the failure and no
traceback (ADR 0031, amended 2026-12-08): an outage is no bug, and every open stream of the process would otherwise log
one traceback at its look. Before, each such stream logged an ERROR with its traceback.

The stream reads through the `read` it is given, as the route gives it one: here a list of events in memory; the
failure is the one psycopg raises for a database it cannot reach."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from types import SimpleNamespace
from typing import cast

import psycopg
import pytest

from shared.api import event_stream
from shared.api.security import RequestContext
from tests.unit.test_event_stream_bounds import PAGE, Recorded, collect, in_memory, render  # noqa: F401  # the fixture


class ActiveTenant(event_stream.StreamAccess):
    """The tenant stays active (the directory is not what fails here)."""

    async def tenant_active(self) -> bool:
        return True


async def unreachable() -> event_stream.Readable:
    raise psycopg.OperationalError("connection refused: the database is out of reach")


def test_a_look_the_database_fails_ends_the_stream_with_a_warning_and_no_traceback(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(event_stream, "TENANT_LOOK_S", 0.05)
    recorded = Recorded()
    for _ in range(3):
        recorded.append()
    tenant_id = uuid.uuid4()
    context = cast(RequestContext, SimpleNamespace(tenant=SimpleNamespace(id=tenant_id), permit=None))
    slot = event_stream.admit_stream(tenant_id, 1000)
    access = ActiveTenant(tenant_id, uuid.uuid4(), time.time() + 600, unreachable)
    body = event_stream.follow(
        context, slot, uuid.UUID(int=0), 0, recorded.read, render, page=PAGE, keepalive_s=60, max_s=30, access=access
    )

    with caplog.at_level(logging.INFO, logger="shared.api.event_stream"):
        ids = asyncio.run(collect(body))  # it ends (at its first look), long before its own end

    assert ids == [1, 2, 3]
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert errors == [], [record.getMessage() for record in errors]
    [warning] = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert "OperationalError" in warning.getMessage() and warning.exc_info is None, warning.getMessage()
