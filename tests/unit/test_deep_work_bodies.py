# intent_ref: platform.execution
"""A `module-work` body nested far too deep is skipped as no work item, and the rest of its batch runs."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from shared import accepted_json
from shared.engine import worker
from shared.engine.protocol import WorkItem

DEEP = b"[" * 100_000 + b"]" * 100_000
"""Deep enough that json.loads raises RecursionError."""


def _item(params: dict[str, Any] | None = None) -> WorkItem:
    return WorkItem(
        tenant_id=uuid.uuid4(),
        execution_id=uuid.uuid4(),
        step_id="other-step",
        phase="run",
        attempt=1,
        action="http.request",
        params=params or {},
        remote=False,
    )


def _nested(levels: int) -> Any:
    value: Any = "bottom"
    for _ in range(levels):
        value = [value]
    return value


class _Raiser:
    async def raise_event(self, instance_id: str, event_name: str, event_data: Any = None) -> None:
        pass


def test_a_body_nested_too_deep_is_skipped_and_the_other_items_of_its_batch_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ran: list[str] = []

    async def run_attempt(item: WorkItem, modules: Any = None, entry: Any = None) -> worker.Outcome | None:
        ran.append(item.step_id)
        return None

    monkeypatch.setattr(worker, "run_attempt", run_attempt)
    valid = _item()
    # Before, RecursionError escaped the batch before any item was claimed, on the first run and every retry.
    assert asyncio.run(worker.process_batch([DEEP, valid.model_dump_json()], _Raiser())) == 0
    assert ran == [valid.step_id]


@pytest.mark.parametrize("body", [DEEP, DEEP.decode()], ids=["bytes", "text"])
def test_parse_items_skips_a_body_nested_too_deep(body: bytes | str) -> None:
    valid = _item()
    assert worker.parse_items([body, valid.model_dump_json()]) == [valid]


def test_an_item_whose_parameters_embed_a_value_as_deep_as_the_platform_accepts_is_still_parsed() -> None:
    # A parameter can take a whole input or output (up to the accepted bound) inside the definition's own nesting.
    item = _item({"body": {"wrapped": _nested(accepted_json.MAX_DEPTH)}})
    body = item.model_dump_json()
    assert accepted_json.nesting_depth(body) > accepted_json.MAX_DEPTH
    assert worker.parse_items([body]) == [item]


def test_a_body_just_past_the_items_bound_is_skipped_and_one_at_it_is_parsed() -> None:
    def body(levels: int) -> str:
        # As JSON text: pydantic does not serialize a value this deep, and the bound is about bodies as they arrive.
        document = _item().model_dump(mode="json")
        return json.dumps({**document, "params": {"deep": _nested(levels - 2)}})  # the item, its params

    at, past = body(worker.MAX_ITEM_DEPTH), body(worker.MAX_ITEM_DEPTH + 1)
    assert accepted_json.nesting_depth(at) == worker.MAX_ITEM_DEPTH
    assert [item.params["deep"] for item in worker.parse_items([at, past])] == [_nested(worker.MAX_ITEM_DEPTH - 2)]
    assert json.loads(past)  # json itself could parse it: the bound, not the parser, refuses it
