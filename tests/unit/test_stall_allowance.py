# intent_ref: platform.execution
"""An attempt is judged overdue by the time its orchestration's timer gives it: a compensation without a compensation
timeout by its step's timeout (it was judged by the hour-long default, so a stalled one went unrecorded for an hour)."""

from __future__ import annotations

import pytest

from shared.engine.stalls import DEFAULT_TIMEOUT_S, allowed_s

PLAN = {
    "timed": {"timeout_s": 60},
    "both": {"timeout_s": 60, "compensate_timeout_s": 600},
    "untimed": {},
    "odd": {"timeout_s": True, "compensate_timeout_s": 0},
}


@pytest.mark.parametrize(
    ("step", "phase", "allowed"),
    [
        ("timed", "run", 60.0),
        ("timed", "compensate", 60.0),
        ("both", "run", 60.0),
        ("both", "compensate", 600.0),
        ("untimed", "compensate", float(DEFAULT_TIMEOUT_S)),
        ("odd", "compensate", float(DEFAULT_TIMEOUT_S)),
        ("missing", "run", float(DEFAULT_TIMEOUT_S)),
    ],
)
def test_an_attempt_is_allowed_what_its_timer_allows(step: str, phase: str, allowed: float) -> None:
    assert allowed_s(PLAN, step, phase) == allowed
