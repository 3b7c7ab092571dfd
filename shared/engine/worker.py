# intent_ref: platform.execution
"""The module worker: runs built-in actions taken from `module-work` and hands each result to its orchestration.

Delivery is at least once. A result is recorded before it is raised, and recorded once per attempt (a conditional
update), so a redelivered item re-raises the recorded verdict instead of running the action again; a handler
exception is a failed attempt, never a lost item.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from shared.db.session import tenant_transaction
from shared.engine import steps as store
from shared.engine.payloads import claim_check
from shared.engine.protocol import EventRaiser, WorkItem
from shared.engine.steps import AttemptKey
from shared.modules import BUILTIN_MODULES, Module, ModuleContext, StepFailed, run_module
from shared.tenants.repository import tenant_settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """A verdict to raise: to which orchestration, under which event name."""

    execution_id: str
    event_name: str
    verdict: dict[str, Any]


def parse_items(bodies: Iterable[bytes | str]) -> list[WorkItem]:
    """The work items of a batch; a body that is not one is logged and skipped (it can never become valid)."""
    items: list[WorkItem] = []
    for body in bodies:
        try:
            items.append(WorkItem.model_validate(json.loads(body)))
        except (ValueError, ValidationError) as exc:
            logger.error("module-work: skipped an event that is not a work item: %s", str(exc)[:500])
    return items


def run_item(item: WorkItem, modules: Mapping[str, Module[Any]] = BUILTIN_MODULES) -> Outcome | None:
    """Run one built-in attempt (or find its recorded result) and record the outcome; None when not ours."""
    key = AttemptKey(item.execution_id, item.step_id, item.phase, item.attempt)
    with tenant_transaction(item.tenant_id) as conn:
        attempt = store.get_attempt(conn, key)
        settings = tenant_settings(conn)
    if attempt is None:
        # Its dispatch commits before it publishes, so the attempt is gone (the tenant was erased): nothing to do.
        logger.warning("module-work: no attempt %s; skipped", key)
        return None
    if not attempt.finished:
        ctx = ModuleContext(
            tenant_id=item.tenant_id,
            execution_id=str(item.execution_id),
            step_id=item.step_id,
            attempt=item.attempt,
            tenant_settings=settings,
        )
        try:
            output = claim_check(item.tenant_id, key, run_module(item.action, ctx, item.params, modules))
            result: dict[str, Any] = {"ok": True, "output": output}
        except StepFailed as exc:
            result = {"ok": False, "error": exc.message, "retryable": exc.retryable}
        with tenant_transaction(item.tenant_id) as conn:
            attempt, _ = store.finish_attempt(
                conn,
                key,
                ok=result["ok"],
                output=result.get("output"),
                error=result.get("error"),
                retryable=result.get("retryable", True),
            )
    return Outcome(str(item.execution_id), key.event_name, attempt.verdict())


async def process_batch(
    bodies: Iterable[bytes | str], client: EventRaiser, modules: Mapping[str, Module[Any]] = BUILTIN_MODULES
) -> int:
    """Run a batch's built-in items concurrently and raise each verdict; returns how many were raised.

    Remote items are left to their tenant's workers. If any verdict could not be raised, the batch fails after
    the others were raised, so a redelivery (or the step's timeout) brings the recorded verdict through.
    """
    items = [item for item in parse_items(bodies) if not item.remote]
    outcomes = await asyncio.gather(
        *(asyncio.to_thread(run_item, item, modules) for item in items), return_exceptions=True
    )
    raised, failures = 0, []
    for item, outcome in zip(items, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            logger.error(
                "module-work: %s %s attempt %s could not be recorded: %s",
                item.execution_id,
                item.step_id,
                item.attempt,
                outcome,
            )
            failures.append(outcome)
            continue
        if outcome is None:
            continue
        try:
            await client.raise_event(outcome.execution_id, outcome.event_name, outcome.verdict)
            raised += 1
        except Exception as exc:  # one orchestration's trouble must not keep the others' results back
            logger.error("module-work: could not raise %s to %s: %s", outcome.event_name, outcome.execution_id, exc)
            failures.append(exc)
    if failures:
        raise RuntimeError(f"{len(failures)} of {len(items)} work items did not complete") from failures[0]
    return raised
