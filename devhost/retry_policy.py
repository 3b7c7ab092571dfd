# intent_ref: platform.devhost-eventhubs
"""A function's retry policy (`@app.retry`), as the Functions host applies it to Event Hubs triggers.

A failed invocation runs again with the same events, up to `max_retry_count` more times (-1: without end), after
a fixed delay or one that doubles from the minimum to the maximum. While it retries, its partition waits; once the
retries are spent the failure is logged and the checkpoint moves on, as without a policy. A host that stops while
retrying leaves the checkpoint where it was, so the events come again, counted from zero.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

import azure.functions as func

Strategy = Literal["fixed_delay", "exponential_backoff"]
_TIMESPAN = re.compile(r"^(?:(?P<days>\d+)\.)?(?P<h>\d{1,2}):(?P<m>\d{1,2}):(?P<s>\d{1,2}(?:\.\d+)?)$")


class RetryPolicyError(ValueError):
    """A retry setting the host would refuse at start."""


def timespan_s(value: str, what: str) -> float:
    """Seconds of a timespan written as the host reads it: `[d.]hh:mm:ss[.fff]`."""
    match = _TIMESPAN.match(value.strip())
    if match is None:
        raise RetryPolicyError(f"{what} {value!r} is not a timespan ([d.]hh:mm:ss)")
    days = int(match["days"] or 0)
    return ((days * 24 + int(match["h"])) * 60 + int(match["m"])) * 60 + float(match["s"])


@dataclass(frozen=True)
class RetryPolicy:
    """How often, and after how long, a failed invocation runs again."""

    strategy: Strategy
    max_retry_count: int
    """Retries after the first run; -1 retries until the invocation succeeds."""
    delay_s: float = 0.0
    """fixed_delay: the wait before every retry."""
    minimum_s: float = 0.0
    """exponential_backoff: the wait before the first retry, doubled for each one after."""
    maximum_s: float = 0.0
    """exponential_backoff: the longest wait."""

    @classmethod
    def of(cls, function: func.Function) -> RetryPolicy | None:
        """The function's policy, or None when it has none; raises RetryPolicyError for one the host refuses."""
        setting: dict[str, Any] | None = function.get_settings_dict("retry_policy")
        if not setting:
            return None
        strategy = setting.get("strategy")
        try:
            count = int(setting.get("max_retry_count"))  # type: ignore[arg-type]  # checked just below
        except (TypeError, ValueError):
            raise RetryPolicyError(f"max_retry_count {setting.get('max_retry_count')!r} is not a number") from None
        if count < -1:
            raise RetryPolicyError(f"max_retry_count {count} is below -1")
        if strategy == "fixed_delay":
            return cls("fixed_delay", count, delay_s=timespan_s(str(setting.get("delay_interval")), "delay_interval"))
        if strategy == "exponential_backoff":
            minimum = timespan_s(str(setting.get("minimum_interval")), "minimum_interval")
            maximum = timespan_s(str(setting.get("maximum_interval")), "maximum_interval")
            if maximum < minimum:
                raise RetryPolicyError("maximum_interval is shorter than minimum_interval")
            return cls("exponential_backoff", count, minimum_s=minimum, maximum_s=maximum)
        raise RetryPolicyError(f"strategy {strategy!r} is neither fixed_delay nor exponential_backoff")

    def retries_after(self, retry_count: int) -> bool:
        """Whether a run that was retry number `retry_count` (0: the first run) is retried when it fails."""
        return self.max_retry_count == -1 or retry_count < self.max_retry_count

    def delay_before(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1: the first retry)."""
        if self.strategy == "fixed_delay":
            return self.delay_s
        # Capped before it is raised to a power: a policy without end must not overflow the float.
        return min(self.maximum_s, math.ldexp(self.minimum_s, min(max(retry - 1, 0), 62)))
