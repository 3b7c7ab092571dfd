# intent_ref: platform.events
"""The webhook delivery timer's summary line (ADR 0030): it counts the tenants a run found due and did not reach, and
a run that reached none of them still says so."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from types import ModuleType

import azure.functions as func
import pytest

from shared.events.webhooks import DeliveryResult

TIMER = Path(__file__).resolve().parents[2] / "functions" / "timer_webhook_delivery.py"


def _timer_module() -> ModuleType:
    """The timer's module loaded on its own: the `functions` package would build the gateway, which needs settings."""
    spec = importlib.util.spec_from_file_location("webhook_delivery_timer_under_test", TIMER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "result, line",
    [
        (
            DeliveryResult(tenants_left=3),
            "webhooks: 0 delivered, 0 attempts failed, 0 subscriptions disabled, 0 left for the next run,"
            " 3 tenants not reached",
        ),
        (
            DeliveryResult(delivered=5, left=2, tenants_left=1),
            "webhooks: 5 delivered, 0 attempts failed, 0 subscriptions disabled, 2 left for the next run,"
            " 1 tenants not reached",
        ),
    ],
)
def test_the_summary_counts_the_tenants_a_run_did_not_reach(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, result: DeliveryResult, line: str
) -> None:
    timer = _timer_module()
    monkeypatch.setattr(timer, "deliver_due", lambda: result)
    app = func.FunctionApp()
    app.register_functions(timer.bp)
    (function,) = [f for f in app.get_functions() if f.get_function_name() == "webhook_delivery"]
    with caplog.at_level(logging.INFO, logger=timer.logger.name):
        function.get_user_function()(None)
    assert [record.getMessage() for record in caplog.records if record.name == timer.logger.name] == [line]
