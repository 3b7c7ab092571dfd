# intent_ref: platform.execution
"""What references read of an output stored as a blob: which paths later steps name, and the parts kept."""

from __future__ import annotations

import uuid

import pytest

from shared.engine.graph import referenced_output_paths
from shared.engine.payloads import BLOB_REF, load_parts, project
from shared.registry.model import Definition
from shared.tenants.offboarding import tenant_blob_prefix

OUTPUT = {
    "status": 200,
    "headers": {"etag": "v1", "server": "x"},
    "body": {"items": [1, 2, 3], "name": "big", "blob": "x" * 1000},
}


def _steps(*steps: dict[str, object]) -> Definition:
    return Definition.model_validate({"target": "staging", "steps": list(steps)})


def test_paths_come_from_params_compensations_and_conditions() -> None:
    definition = _steps(
        {"id": "big", "action": "http.request", "url": "https://example.com/a"},
        {
            "id": "use",
            "action": "http.request",
            "url": "https://example.com/${steps.big.output.body.name}",
            "when": "${steps.big.output.status} == 200",
            "compensate": {"action": "http.request", "url": "https://example.com/${steps.big.output.headers.etag}"},
        },
        {"id": "all", "action": "event.emit", "type": "seen", "data": {"whole": "${steps.use.output}"}},
    )
    assert definition.steps is not None
    assert referenced_output_paths(definition.steps) == {
        "big": frozenset({("body", "name"), ("status",), ("headers", "etag")}),
        "use": frozenset({()}),
    }


def test_only_the_referenced_parts_are_kept_in_their_places() -> None:
    parts = project(OUTPUT, [("body", "name"), ("status",), ("headers", "etag"), ("missing", "x")])
    assert parts == {"status": 200, "headers": {"etag": "v1"}, "body": {"name": "big"}}


@pytest.mark.parametrize(
    ("paths", "expected"),
    [
        ([()], OUTPUT),  # the whole output is referenced
        ([("body",), ("body", "name")], {"body": OUTPUT["body"]}),  # a shorter path takes the object whole
        ([("body", "items", "1")], {"body": {"items": [1, 2, 3]}}),  # a list is taken whole: indexes stay true
    ],
)
def test_whole_values_where_thinning_would_change_meaning(paths: list[tuple[str, ...]], expected: object) -> None:
    assert project(OUTPUT, paths) == expected


def test_another_tenants_stored_output_is_refused_before_it_is_read() -> None:
    other = uuid.uuid4()
    reference = {
        BLOB_REF: {
            "container": "artifacts",
            "name": f"{tenant_blob_prefix(other)}executions/x.json",
            "size": 10,
            "sha256": "0" * 64,
        }
    }
    with pytest.raises(ValueError, match="prefix"):
        load_parts(uuid.uuid4(), reference, [("status",)])


def test_an_inline_output_is_projected_without_reading_anything() -> None:
    assert load_parts(uuid.uuid4(), OUTPUT, [("status",)]) == {"status": 200}
