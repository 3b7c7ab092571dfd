# intent_ref: platform.execution
"""What the orchestrator, its activities, the module worker and remote workers agree on: names and messages."""

from __future__ import annotations

import logging
from typing import Any, Literal, Protocol
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

ORCHESTRATOR = "intent_execution_v2"
"""The orchestrator new executions start on; its name carries the generation (ADR 0025)."""
DISPATCH_STEP = "dispatch_step"
RECORD_PROGRESS = "record_progress"
CANCEL_CHILD = "cancel_child"
LOAD_OUTPUT = "load_output"
CANCEL_EVENT = "cancel"
MODULE_WORK_HUB = "module-work"

logger = logging.getLogger(__name__)

StepKind = Literal["module", "approval", "wait", "intent"]
"""How the orchestrator runs a step: module work over Event Hubs, or one of the actions it runs itself."""
ORCHESTRATOR_ACTIONS: dict[str, StepKind] = {"approval": "approval", "wait": "wait", "intent.run": "intent"}


class EventRaiser(Protocol):
    """The part of the Durable client that delivers results and cancels to orchestrations."""

    async def raise_event(self, instance_id: str, event_name: str, event_data: Any = None) -> None:
        """Deliver an external event to an orchestration instance."""


async def raise_to_orchestration(client: Any, instance_id: object, name: str, data: Any) -> bool:
    """Deliver an external event; False when the orchestration is not there or the hand-over failed (what was
    recorded before the event stands, and the orchestration reads it when it starts or settles)."""
    try:
        await client.raise_event(str(instance_id), name, data)
    except Exception as exc:
        logger.warning("could not raise %s to %s: %s", name, instance_id, exc)
        return False
    return True


# What the Durable client raises for an orchestration that has ended (410) or does not exist (404): nobody waits
# for the verdict any more, and nobody ever will.
_GONE_MESSAGES = ("is gone: either completed or failed", "No instance with ID")


def no_one_to_tell(exc: Exception) -> bool:
    """Whether a failed raise failed for good: its orchestration has ended or never existed, so a retry of the
    hand-over cannot deliver it (every other failure may pass)."""
    return any(message in str(exc) for message in _GONE_MESSAGES)


def attempt_event(phase: str, step_id: str, attempt: int) -> str:
    """The external event that carries one attempt's result to the orchestration."""
    return f"{phase}:{step_id}:{attempt}"


def approval_event(step_id: str, attempt: int) -> str:
    """The external event that carries an approval decision (the verdict of the approval step's attempt)."""
    return attempt_event("run", step_id, attempt)


class StepPlan(BaseModel):
    """What the start of an execution decides once per step: its kind, timeout and where its work runs."""

    model_config = ConfigDict(extra="forbid")

    kind: StepKind = "module"
    timeout_s: int | None = None
    remote: bool = False
    compensate_remote: bool = False
    compensate_timeout_s: int | None = None


class WorkItem(BaseModel):
    """One step attempt's work on `module-work` (partition key: the attempt, ADR 0026).

    Only built-in actions travel here, to the platform's module worker; a remote action is queued for its tenant
    (ADR 0027). `remote`, `task_token` and the URLs are what items published before that carried: they still parse,
    and the worker skips them (their attempts time out and retry into the queue).
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "type": "step.work",
                    "tenant_id": "0b6f3c1e-5d2a-4c1f-9e7b-2a8d4f6c9e10",
                    "execution_id": "5d7e1f0a-3b2c-4d5e-8f90-1a2b3c4d5e6f",
                    "step_id": "build",
                    "phase": "run",
                    "attempt": 1,
                    "action": "artifact.write",
                    "params": {"name": "report.json", "content": {"ok": True}},
                    "remote": False,
                    "timeout_s": 60,
                }
            ]
        },
    )

    type: Literal["step.work"] = "step.work"
    tenant_id: UUID
    execution_id: UUID
    step_id: str = Field(min_length=1, max_length=128)
    phase: Literal["run", "compensate"]
    attempt: int = Field(ge=1)
    action: str = Field(min_length=1, max_length=128)
    params: dict[str, Any]
    remote: bool
    timeout_s: int | None = None
    task_token: str | None = None
    complete_url: str | None = None
    fail_url: str | None = None
