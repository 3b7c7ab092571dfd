# intent_ref: platform.gateway
"""Every `qp` command that prints an answer checks it against the route's documented shape first: a JSON list, an
object without a field that names the item or its state, or a field of another type ends in one line and exit 3,
never printed as if it were the answer (nor, for `run --follow`, passing for a failed run)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import TypeAdapter
from quantum_platform import UnexpectedAnswer, shapes

from tests.unit.test_cli import ENTRA, INTENT_ID, Platform, home, platform, qp, refusal  # noqa: F401  # fixtures

ENV = {"QP_TOKEN": "t", "QP_URL": ENTRA}
INTENT = f"/api/v1/intents/{INTENT_ID}"
EXECUTION = {
    "id": "e-1",
    "status": "running",
    "intent_id": INTENT_ID,
    "intent_version": 1,
    "steps": [{"step_id": "build", "action": "noop", "state": "running", "attempt": 1}],
    "error": None,
    "wait_reason": None,
}
SUBSCRIPTION = {"id": "w-1", "url": "https://hooks.example/in", "event_types": ["execution.completed"], "enabled": True}

# (the command's arguments after `qp`, the route whose answer it prints, a right answer, where a required field is)
CASES: list[tuple[tuple[str, ...], str, Any, tuple[str | int, ...]]] = [
    (("executions", "get", "e-1"), "GET /api/v1/executions/e-1", EXECUTION, ("status",)),
    (("executions", "list"), "GET /api/v1/executions", {"items": [EXECUTION], "next_cursor": None}, ("items", 0, "id")),
    (
        ("executions", "cancel", "e-1"),
        "POST /api/v1/executions/e-1/cancel",
        {"execution_id": "e-1", "status": "running", "cancel_requested": True},
        ("cancel_requested",),
    ),
    (
        ("executions", "approve", "e-1", "gate"),
        "POST /api/v1/executions/e-1/approvals/gate",
        {"execution_id": "e-1", "step_id": "gate", "decision": "approve", "applied": True},
        ("decision",),
    ),
    (
        ("executions", "retry", "e-1"),
        "POST /api/v1/executions/e-1/retry",
        {"execution_id": "e-2", "status": "pending", "created": True},
        ("execution_id",),
    ),
    (("run", INTENT_ID), f"POST {INTENT}/execute", {"execution_id": "e-1", "status": "pending"}, ("status",)),
    (("intents", "get", INTENT_ID), f"GET {INTENT}", {"id": INTENT_ID, "name": "web", "version": 1}, ("name",)),
    (
        ("intents", "create", "FILE"),
        "POST /api/v1/intents",
        {"id": INTENT_ID, "name": "web", "version": 1},
        ("id",),
    ),
    (
        ("intents", "update", INTENT_ID, "FILE"),
        f"PUT {INTENT}",
        {"id": INTENT_ID, "name": "web", "version": 2},
        ("name",),
    ),
    (
        ("intents", "rollback", INTENT_ID, "--to", "1"),
        f"POST {INTENT}/rollback",
        {"id": INTENT_ID, "name": "web", "version": 3},
        ("id",),
    ),
    (
        ("intents", "list"),
        "GET /api/v1/intents",
        {"items": [{"id": INTENT_ID, "name": "web"}], "next_cursor": None},
        ("items", 0, "name"),
    ),
    (
        ("intents", "versions", INTENT_ID),
        f"GET {INTENT}/versions",
        {"items": [{"version": 1}], "next_cursor": None},
        ("items", 0, "version"),
    ),
    (
        ("intents", "diff", INTENT_ID, "--from", "1", "--to", "2"),
        f"GET {INTENT}/diff",
        {"from_version": 1, "to_version": 2, "summary": "1 step changed"},
        ("to_version",),
    ),
    (("intents", "plan", INTENT_ID), f"POST {INTENT}/plan", {"id": INTENT_ID, "levels": [["build"]]}, ("levels",)),
    (
        ("intents", "validate", "FILE"),
        "POST /api/v1/intents/validate",
        {"valid": True, "levels": [["build"]]},
        ("levels",),
    ),
    (
        ("webhooks", "create", "https://hooks.example/in", "-e", "execution.completed"),
        "POST /api/v1/webhooks",
        SUBSCRIPTION | {"secret": "whsec_x"},
        ("url",),
    ),
    (("webhooks", "list"), "GET /api/v1/webhooks", {"items": [SUBSCRIPTION]}, ("items", 0, "id")),
    (("webhooks", "get", "w-1"), "GET /api/v1/webhooks/w-1", SUBSCRIPTION, ("id",)),
    (("webhooks", "enable", "w-1"), "PATCH /api/v1/webhooks/w-1", SUBSCRIPTION, ("url",)),
    (("webhooks", "disable", "w-1"), "PATCH /api/v1/webhooks/w-1", SUBSCRIPTION, ("id",)),
    (
        ("webhooks", "rotate-secret", "w-1"),
        "POST /api/v1/webhooks/w-1/rotate-secret",
        {"id": "w-1", "secret": "whsec_y"},
        ("secret",),
    ),
    (
        ("webhooks", "deliveries", "w-1"),
        "GET /api/v1/webhooks/w-1/deliveries",
        {"items": [{"message_id": "msg_1", "state": "delivered", "attempts": 1}]},
        ("items", 0, "message_id"),
    ),
]
IDS = [" ".join(arguments[:2]) for arguments, *_ in CASES]


def _arguments(arguments: tuple[str, ...], home: Path) -> list[str]:
    file = home / "intent.json"
    file.write_text(json.dumps({"name": "web", "definition": {"steps": [{"id": "build", "action": "noop"}]}}))
    return [str(file) if argument == "FILE" else argument for argument in arguments]


def _answering(platform: Platform, route: str, body: Any) -> None:
    status = {"POST /api/v1/webhooks": 201}.get(
        route, 202 if route.endswith(("/execute", "/retry", "/cancel")) else 200
    )
    # `intents update` reads the current version for its ETag first: that answer is not what it prints.
    current = httpx.Response(200, json={"id": INTENT_ID, "name": "web"}, headers={"ETag": f'"{INTENT_ID}.v1"'})
    platform.answer({f"GET {INTENT}": current, route: httpx.Response(status, json=body)})


def _broken(right: Any, where: tuple[str | int, ...], how: str) -> Any:
    if how == "a list":
        return [right]
    broken = copy.deepcopy(right)
    holder = broken
    for step in where[:-1]:
        holder = holder[step]
    if how == "a required field missing":
        del holder[where[-1]]
    else:  # a required field of another type: a list where text, a number or a flag belongs, and text for a list
        holder[where[-1]] = "not a list" if isinstance(holder[where[-1]], list) else ["not", "this"]
    return broken


@pytest.mark.parametrize(("arguments", "route", "right", "where"), CASES, ids=IDS)
def test_each_command_prints_an_answer_of_its_documented_shape(
    platform: Platform, home: Path, arguments: tuple[str, ...], route: str, right: Any, where: tuple[str | int, ...]
) -> None:
    _answering(platform, route, right)
    result = qp(*_arguments(arguments, home), env=ENV)
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stdout != ""


@pytest.mark.parametrize("how", ["a list", "a required field missing", "a required field of another type"])
@pytest.mark.parametrize(("arguments", "route", "right", "where"), CASES, ids=IDS)
def test_each_command_refuses_an_answer_of_another_shape_with_exit_3_and_prints_nothing(
    platform: Platform,
    home: Path,
    arguments: tuple[str, ...],
    route: str,
    right: Any,
    where: tuple[str | int, ...],
    how: str,
) -> None:
    _answering(platform, route, _broken(right, where, how))
    result = qp(*_arguments(arguments, home), env=ENV)
    line = refusal(result)
    assert route.split(" ")[1] in line and "answered something other than" in line, line
    assert result.stdout == ""


@pytest.mark.parametrize("output", ["table", "json"])
def test_executions_get_names_the_field_that_is_wrong(platform: Platform, output: str) -> None:
    platform.answer({"GET /api/v1/executions/e-1": EXECUTION | {"steps": [{"step_id": "build", "state": 7}]}})
    line = refusal(qp("executions", "get", "e-1", "--output", output, env=ENV))
    assert line == (
        "error: GET /api/v1/executions/e-1 answered something other than an execution: /steps/0/state is a number, "
        "not a string"
    )


def test_a_followed_run_whose_execution_has_no_usable_status_is_not_a_failed_run(platform: Platform) -> None:
    """A status of another type was taken as text (`5`): the run passed for a failed one (exit 1)."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == f"{INTENT}/execute":
            return httpx.Response(202, json={"execution_id": "e-1", "status": "pending"})
        if request.url.path.endswith("/events"):
            return httpx.Response(200, json={"status": "failed", "items": [], "next_after": 0})
        return httpx.Response(200, json=EXECUTION | {"status": 5})

    platform.handler = handler
    line = refusal(qp("run", INTENT_ID, "--follow", "--output", "json", env=ENV))
    assert "/status is a number, not a string" in line


def test_an_intent_looked_up_by_name_is_checked_too(platform: Platform) -> None:
    platform.answer({"GET /api/v1/intents": {"items": [{"id": ["x"], "name": "web"}], "next_cursor": None}})
    assert "/id is a list, not a string" in refusal(qp("intents", "get", "web", env=ENV))


def test_a_shape_leaves_fields_it_does_not_know_alone_and_refuses_a_flag_for_a_number() -> None:
    newer = EXECUTION | {"region": {"name": "westeurope"}}
    assert shapes.EXECUTION.check(newer, "GET /x") is newer
    with pytest.raises(UnexpectedAnswer, match="/intent_version is a boolean, not an integer"):
        shapes.EXECUTION.check(EXECUTION | {"intent_version": True}, "GET /x")


@pytest.mark.parametrize(
    ("shape", "answer", "says"),
    [
        (shapes.EXECUTION, EXECUTION | {"target": 5, "steps": [{"step_id": "b", "state": 7}]}, "/steps/0/state is a"),
        (shapes.INTENT_SUMMARY, {"id": 5}, "/name is missing"),
        (shapes.page_of("a page", shapes.INTENT_SUMMARY), {"items": [{"id": 5}], "next_cursor": 2}, "/items/0/name is"),
    ],
    ids=["a required field before another", "a missing field before a wrong one", "a missing field in an item"],
)
def test_of_two_wrong_fields_the_missing_one_then_the_required_one_is_named(
    shape: shapes.Shape, answer: Any, says: str
) -> None:
    """In each object a missing field is named first, then a wrong field it requires, then a wrong one it may have."""
    with pytest.raises(UnexpectedAnswer, match=f": {says}"):
        shape.check(answer, "GET /x")


# ------------------------------------------------------------------------------------------ the shapes are the API's
SCHEMAS = {
    "EXECUTION": "ExecutionOut",
    "STEP": "StepOut",
    "EXECUTION_SUMMARY": "ExecutionSummary",
    "STARTED": "ExecutionAccepted",
    "CANCELLED": "CancelAccepted",
    "DECIDED": "ApprovalRecorded",
    "EVENT": "ExecutionEventOut",
    "INTENT": "RegistryItem",
    "INTENT_SUMMARY": "RegistryItemSummary",
    "VERSION": "RegistryVersion",
    "DIFF": "RegistryDiff",
    "PLAN": "RegistryPlan",
    "VALIDATION": "RegistryValidation",
    "SUBSCRIPTION": "SubscriptionOut",
    "SECRET": "SecretOut",
    "DELIVERY": "DeliveryOut",
    "ME": "Me",
}
JSON_TYPES = {"string": str, "integer": int, "number": float, "boolean": bool, "object": dict, "array": list}


def _documented(schema: dict[str, Any]) -> set[type]:
    """The Python types a property of the OpenAPI document allows (an object for a reference)."""
    if "anyOf" in schema:
        return set().union(*(_documented(option) for option in schema["anyOf"]))
    if "$ref" in schema:
        return {dict}
    if schema.get("type") == "null":
        return {type(None)}
    return {JSON_TYPES[schema["type"]]}


@pytest.mark.parametrize(("name", "schema"), SCHEMAS.items())
def test_each_shape_asks_only_what_the_api_documents(name: str, schema: str) -> None:
    """Every required field is one the API always sends, and every field is of the type the API documents: a shape
    stricter than the API would refuse the platform's own answers."""
    document = json.loads((Path(__file__).parents[2] / "docs" / "openapi.json").read_text(encoding="utf-8"))
    component = document["components"]["schemas"][schema]
    shape: shapes.Shape = getattr(shapes, name)
    asked = TypeAdapter(shape.model).json_schema()
    assert set(asked["required"]) <= set(component["required"])
    for field, spec in asked["properties"].items():
        assert _documented(spec) == _documented(component["properties"][field]), field
