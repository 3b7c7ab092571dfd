# intent_ref: platform.devhost-durable
"""Host-side retries of activities and sub-orchestrations, with DTFx RetryInterceptor semantics."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from typing import Any, Literal

Phase = Literal["attempt", "timer"]
Kind = Literal["activity", "orchestration"]


@dataclass(frozen=True)
class RetryPolicy:
    """The action's retryOptions. The Python SDK sends only the first two; the others are honoured if present."""

    first_interval_ms: float
    max_attempts: int
    backoff_coefficient: float = 1.0
    max_interval_ms: float | None = None

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> RetryPolicy:
        max_interval = options.get("maxRetryIntervalInMilliseconds")
        return cls(
            first_interval_ms=float(options["firstRetryIntervalInMilliseconds"]),
            max_attempts=int(options["maxNumberOfAttempts"]),
            backoff_coefficient=float(options.get("backoffCoefficient") or 1.0),
            max_interval_ms=None if max_interval is None else float(max_interval),
        )

    def delay(self, retry_count: int) -> timedelta:
        """Wait after the failure of attempt `retry_count + 1`: first * backoff^retry_count, capped."""
        delay_ms = self.first_interval_ms * self.backoff_coefficient**retry_count
        if self.max_interval_ms is not None:
            delay_ms = min(delay_ms, self.max_interval_ms)
        return timedelta(milliseconds=delay_ms)


@dataclass(frozen=True)
class RetryState:
    """One retried call, keyed in the instance by its single outstanding sequence id (an attempt or a timer).

    DTFx creates the retry timer even after the last attempt and only then rethrows; the SDK mirrors that with
    hidden ids, so the host must follow the same attempt, timer, attempt, timer... layout.
    """

    kind: Kind
    name: str
    input: str | None
    policy: RetryPolicy
    attempt: int = 1
    phase: Phase = "attempt"
    instance_id: str | None = None  # sub-orchestrations: the explicit child id, if the action gave one
    version: str = ""

    @property
    def exhausted(self) -> bool:
        return self.attempt >= self.policy.max_attempts

    def waiting(self) -> RetryState:
        return replace(self, phase="timer")

    def next_attempt(self) -> RetryState:
        return replace(self, attempt=self.attempt + 1, phase="attempt")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RetryState:
        return cls(**{**data, "policy": RetryPolicy(**data["policy"])})
