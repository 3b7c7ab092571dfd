# intent_ref: platform.execution
"""Which requests get server-sent events, and where a resumed stream starts."""

from __future__ import annotations

import pytest

from shared.api.event_stream import frame, resume_after, wants_event_stream
from shared.api.problems import ProblemError
from shared.api.routers.executions import ExecutionEventOut


@pytest.mark.parametrize(
    ("accept", "streams"),
    [
        ("text/event-stream", True),
        ("text/event-stream, application/json;q=0.9", True),
        ("application/json, TEXT/EVENT-STREAM; q=0.5", True),
        ("text/event-stream;q=0", False),
        ("text/event-stream;q=0.0", False),
        ("application/json", False),
        ("*/*", False),
        ("", False),
        (None, False),
        ("text/event-stream;q=nonsense", False),
    ],
)
def test_only_an_accept_that_asks_for_event_streams_gets_one(accept: str | None, streams: bool) -> None:
    assert wants_event_stream(accept) is streams


def test_last_event_id_wins_over_after_and_must_be_an_event_number() -> None:
    assert resume_after(None, 7) == 7
    assert resume_after("12", 0) == 12
    assert resume_after(" 3 ", 9) == 3
    for bad in ("-1", "1.5", "abc", "１２", str(2**63), "", "9" * 5000):
        with pytest.raises(ProblemError) as refused:
            resume_after(bad, 0)
        assert refused.value.status == 422


def test_a_frame_is_one_sse_message_whose_data_is_one_line() -> None:
    event = ExecutionEventOut.model_validate(
        {
            "seq": 4,
            "type": "step_completed",
            "step": "build",
            "step_id": "build",
            "data": {"output": {"text": "two\nlines"}},
            "result": {"text": "two\nlines"},
            "error": None,
            "occurred_at": "2026-12-04T00:00:00Z",
        }
    )
    message = frame(4, "step_completed", event).decode()
    assert message.endswith("\n\n") and message.count("\n") == 4
    lines = message.splitlines()
    assert lines[:2] == ["id: 4", "event: step_completed"]
    assert lines[2].startswith("data: {") and '"two\\nlines"' in lines[2]
