# intent_ref: platform.registry
"""The free text of an intent or blueprint a tenant sends (its description, its labels' values, an approval step's
message) is checked as a tenant's display name is (shared.free_text), by a check apart from `validate_definition`:
a version stored before the rule is checked again by that function at every start, plan and rollback, and must
still pass there."""

from __future__ import annotations

from typing import Any

import pytest

from shared.registry.catalog import builtin_catalog
from shared.registry.validation import unshown_text_problems, validate_definition

UNSHOWN = [
    "\x1b]8;;https://evil.example\x07click\x1b]8;;\x07",
    "approve\u202egnp.exe",
    "over\rwritten",
    "\x9b2J",
    "a\u2028record",
]


def _intent(message: Any, *, beside: bool = False, **extra: Any) -> dict[str, Any]:
    approval: dict[str, Any] = {"id": "gate", "action": "approval"}
    if beside:
        approval["message"] = message  # the seed's style: parameters beside `action`
    else:
        approval["params"] = {"message": message}
    steps = [
        {"id": "announce", "action": "event.emit", "params": {"type": "release.ready"}},
        approval,
    ]
    return {"name": "release", "definition": {"steps": steps}, **extra}


@pytest.mark.parametrize("text", UNSHOWN)
@pytest.mark.parametrize(
    ("doc", "at"),
    [
        (lambda text: _intent(text), "/definition/steps/1/params/message"),
        (lambda text: _intent(text, beside=True), "/definition/steps/1/message"),
        (lambda text: _intent("Ship it?", description=text), "/description"),
        (lambda text: _intent("Ship it?", labels={"team": "web", "owner": text}), "/labels/owner"),
    ],
)
def test_sent_free_text_that_would_act_where_shown_is_refused(text: str, doc: Any, at: str) -> None:
    problems = unshown_text_problems(doc(text))
    assert [(problem.pointer, problem.code) for problem in problems] == [(at, "unshown_character")]
    assert text not in problems[0].message and "U+" in problems[0].message


@pytest.mark.parametrize("text", UNSHOWN)
def test_a_stored_version_holding_such_text_still_validates_for_its_runs(text: str) -> None:
    # What a start, a plan and a rollback check of a stored version: its message is not looked at for the rule.
    doc = _intent(text, description=text, labels={"owner": text})
    result = validate_definition(doc, catalog=builtin_catalog())
    assert result.ok, result.errors
    assert result.steps[1].params["message"] == text


def test_text_for_people_passes() -> None:
    text = "Ship ${inputs.version} to production? \u2014 \u05e9\u05dc\u05d5\u05dd \U0001f680"
    assert unshown_text_problems(_intent(text, description=text, labels={"owner": "Zürich"})) == []
    assert unshown_text_problems(_intent(None)) == []  # a missing or malformed message is the schema's to report
    assert unshown_text_problems({"definition": {"steps": [{"action": "event.emit", "message": "\x1b"}]}}) == []
    assert unshown_text_problems([]) == []


def test_a_description_and_a_message_keep_their_lines_and_a_label_does_not() -> None:
    text = "Ship it?\n\tThe canary is green."
    assert unshown_text_problems(_intent(text, description=text)) == []
    problems = unshown_text_problems(_intent("Ship it?", labels={"owner": "a\nb"}))
    assert [(problem.pointer, problem.code) for problem in problems] == [("/labels/owner", "unshown_character")]
