# intent_ref: platform.devhost-eventhubs
"""A function's `@app.retry` policy as the devhost reads it: strategies, delays, counts and what it refuses."""

from __future__ import annotations

from typing import Any

import azure.functions as func
import pytest

from devhost.retry_policy import RetryPolicy, RetryPolicyError


def _function(**retry: Any) -> func.Function:
    """One Event Hubs function with the given retry settings (none when empty)."""
    app = func.FunctionApp()

    def handler(event: func.EventHubEvent) -> None:
        """Never called."""

    decorated: Any = app.event_hub_message_trigger(arg_name="event", event_hub_name="h", connection="C")(handler)
    if retry:
        decorated = app.retry(**retry)(decorated)
    (function,) = app.get_functions()
    return function


def test_no_policy_is_none() -> None:
    assert RetryPolicy.of(_function()) is None


def test_a_fixed_delay_waits_the_same_before_every_retry() -> None:
    policy = RetryPolicy.of(_function(strategy="fixed_delay", max_retry_count="3", delay_interval="00:00:02.5"))
    assert policy is not None
    assert [policy.delay_before(n) for n in (1, 2, 3)] == [2.5, 2.5, 2.5]
    assert [policy.retries_after(n) for n in (0, 1, 2, 3)] == [True, True, True, False]


def test_an_exponential_backoff_doubles_from_the_minimum_up_to_the_maximum() -> None:
    policy = RetryPolicy.of(
        _function(
            strategy="exponential_backoff",
            max_retry_count="-1",
            minimum_interval="00:00:05",
            maximum_interval="1.00:00:00",
        )
    )
    assert policy is not None
    assert [policy.delay_before(n) for n in (1, 2, 3, 4)] == [5.0, 10.0, 20.0, 40.0]
    assert policy.delay_before(10_000) == 86_400.0  # capped, without overflowing on the way
    assert policy.retries_after(10_000)  # -1: until it succeeds


@pytest.mark.parametrize(
    ("retry", "refusal"),
    [
        ({"strategy": "linear", "max_retry_count": "3", "delay_interval": "00:00:01"}, "neither"),
        ({"strategy": "fixed_delay", "max_retry_count": "many", "delay_interval": "00:00:01"}, "not a number"),
        ({"strategy": "fixed_delay", "max_retry_count": "-2", "delay_interval": "00:00:01"}, "below -1"),
        ({"strategy": "fixed_delay", "max_retry_count": "3", "delay_interval": "5s"}, "not a timespan"),
        ({"strategy": "fixed_delay", "max_retry_count": "3"}, "not a timespan"),
        (
            {
                "strategy": "exponential_backoff",
                "max_retry_count": "3",
                "minimum_interval": "00:01:00",
                "maximum_interval": "00:00:10",
            },
            "shorter",
        ),
    ],
)
def test_a_policy_the_host_would_refuse_is_refused(retry: dict[str, str], refusal: str) -> None:
    with pytest.raises(RetryPolicyError, match=refusal):
        RetryPolicy.of(_function(**retry))
