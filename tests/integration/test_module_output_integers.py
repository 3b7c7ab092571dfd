# intent_ref: platform.modules
"""An integer beyond a bigint in a built-in module's output is refused at the module's boundary, as the API's edge
refuses it: jsonb kept it, but it read back as a float, so 2**64 + 1 and 18446744073709551557 were both recorded,
raised and referenced as 1.8446744073709552e+19. The step fails (not retried), naming the member; integers within a
bigint come back exactly."""

from __future__ import annotations

import uuid
from typing import Any, ClassVar

import pytest
from psycopg_pool import ConnectionPool

from shared.modules import Module, ModuleContext
from tests.integration.api_harness import ApiHarness, api  # noqa: F401  # the fixture
from tests.integration.test_module_worker_claims import (  # noqa: F401  # the fixtures
    _Batch,
    _dispatched,
    _NoParams,
    _Raiser,
    _row,
    batches_held_whole,
    no_module_thread_held,
)

pytestmark = pytest.mark.integration


class _Returns(Module[_NoParams]):
    """Returns the output it was made with; counts its runs."""

    action: ClassVar[str] = "test.returns"
    params_model = _NoParams

    def __init__(self, output: Any) -> None:
        self.output = output
        self.runs = 0

    def run(self, ctx: ModuleContext, params: _NoParams) -> Any:
        self.runs += 1
        return self.output


@pytest.fixture(scope="module")
def tenant(api: ApiHarness) -> uuid.UUID:  # noqa: F811
    return api.provision("output-integers").id


@pytest.mark.parametrize("value", [2**64 + 1, 18446744073709551557, -(2**63) - 1])
def test_an_integer_beyond_a_bigint_in_an_output_fails_the_step_naming_the_member(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID, value: int
) -> None:
    module = _Returns({"name": "ok", "u64": value})
    item = _dispatched(app_pool, tenant, module.action)
    raiser = _Raiser()
    batch = _Batch([item], raiser, {module.action: module})
    batch.start()
    assert batch.outcome() == 1
    (verdict,) = raiser.to(item.execution_id)
    assert verdict["ok"] is False and verdict["retryable"] is False, verdict
    assert "/u64: the integer is outside" in verdict["error"], verdict
    row = _row(app_pool, item)
    assert row["state"] == "failed" and row["output"] is None, row
    assert "/u64" in row["error"]
    assert module.runs == 1


@pytest.mark.parametrize("value", [2**63 - 1, -(2**63), "18446744073709551617"])
def test_an_integer_within_a_bigint_and_a_long_number_in_a_string_come_back_exactly(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID, value: int | str
) -> None:
    module = _Returns({"id": value})
    item = _dispatched(app_pool, tenant, module.action)
    raiser = _Raiser()
    batch = _Batch([item], raiser, {module.action: module})
    batch.start()
    assert batch.outcome() == 1
    assert raiser.to(item.execution_id) == [{"ok": True, "output": {"id": value}}]
    row = _row(app_pool, item)
    assert row["state"] == "succeeded"
    recorded = row["output"]["id"]
    assert recorded == value and type(recorded) is type(value), row


@pytest.mark.parametrize("long_value", [None, 1733616000000000000, "ORD-1234567890123456789"])
def test_member_names_that_are_not_strings_are_stored_as_json_writes_them_whatever_else_the_output_holds(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID, long_value: int | str | None
) -> None:
    # The walk that names a refused place ran only when a pre-check found 19 digits in a row (or a NUL or surrogate
    # escape), and refused a member name that is not a string: `{"by_status": {200: 3}}` was recorded, but the same
    # output with a bigint timestamp or an order number beside it failed its step, not retried.
    output: dict[str, Any] = {"by_status": {200: 3, True: 1, None: 0, 1.5: 2}}
    if long_value is not None:
        output["beside"] = long_value
    module = _Returns(output)
    item = _dispatched(app_pool, tenant, module.action)
    raiser = _Raiser()
    batch = _Batch([item], raiser, {module.action: module})
    batch.start()
    assert batch.outcome() == 1
    (verdict,) = raiser.to(item.execution_id)
    assert verdict["ok"] is True, verdict
    row = _row(app_pool, item)
    assert row["state"] == "succeeded", row
    assert row["output"]["by_status"] == {"200": 3, "true": 1, "null": 0, "1.5": 2}, row
    if long_value is not None:
        assert row["output"]["beside"] == long_value


@pytest.mark.parametrize("long_value", [None, 1733616000000000000])
@pytest.mark.parametrize(
    ("output", "pointer"),
    [({1: "a", "1": "b"}, "/1"), ({True: "bool", "true": "str"}, "/true"), ({"n": {None: 1, "null": 2}}, "/n/null")],
)
def test_member_names_written_alike_fail_the_step_naming_the_member_whatever_else_the_output_holds(
    app_pool: ConnectionPool[Any], tenant: uuid.UUID, output: dict[Any, Any], pointer: str, long_value: int | None
) -> None:
    # json.dumps writes `1` and `"1"` (or `True` and `"true"`) alike: stored, the object kept one of them, the other
    # value silently gone. Refused as a member given twice, with or without a 19-digit value beside it.
    output = dict(output)
    if long_value is not None:
        output["beside"] = long_value
    module = _Returns(output)
    item = _dispatched(app_pool, tenant, module.action)
    raiser = _Raiser()
    batch = _Batch([item], raiser, {module.action: module})
    batch.start()
    assert batch.outcome() == 1
    (verdict,) = raiser.to(item.execution_id)
    assert verdict["ok"] is False and verdict["retryable"] is False, verdict
    assert f"{pointer}: the member is given more than once" in verdict["error"], verdict
    row = _row(app_pool, item)
    assert row["state"] == "failed" and row["output"] is None, row
    assert pointer in row["error"]
    assert module.runs == 1
