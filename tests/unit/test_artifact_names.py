# intent_ref: platform.modules
"""artifact.write's `name` has no path segment ending with a dot (Azure's blob naming rules), refused when the intent
is saved and, as a non-retryable step failure, before the store is reached; a stored output's reference naming such a
segment is not read."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from shared.engine import payloads
from shared.modules import ModuleContext, StepFailed, run_module
from shared.modules.artifact_write import ArtifactWriteModule
from shared.registry.catalog import ArtifactWriteParams, builtin_catalog
from shared.registry.validation import validate_definition

REFUSED = [
    "report.",
    "a./b",
    "a/b.",
    "x...",
    "a/.../b",
    "a/..../b",
    "a/../b",
    "a/./b",
    "a//b",
    "a/",
    ".a",
    "a" * 257,
]
ACCEPTED = ["a", "a.txt", "v1.2/report.json", "a/.hidden", "a/..b/c", "a_/-b", "a" * 256]


def _definition(name: str) -> dict[str, Any]:
    step = {"id": "w", "action": "artifact.write", "params": {"name": name, "content": "hi"}}
    return {"name": "names", "definition": {"target": "staging", "steps": [step]}}


def _no_store() -> Any:
    raise AssertionError("the store was reached")


@pytest.mark.parametrize("name", REFUSED, ids=lambda v: repr(v[:16]))
def test_a_name_with_a_segment_ending_with_a_dot_is_refused_at_save_and_before_the_store(name: str) -> None:
    # The pattern took 'a./b' and 'x...': Azure's naming rules say no path segment should end with a dot, and such a
    # segment may be stored or read under another name than the one the step asked for.
    result = validate_definition(_definition(name), catalog=builtin_catalog())
    assert not result.ok
    assert {error.pointer for error in result.errors} == {"/definition/steps/0/params/name"}
    assert len(name) > 256 or all("none ending with '.'" in error.message for error in result.errors)
    module = ArtifactWriteModule(_no_store)
    ctx = ModuleContext(uuid.uuid4(), str(uuid.uuid4()), "w", 1)
    with pytest.raises(StepFailed) as failed:
        run_module(module.action, ctx, {"name": name, "content": "hi"}, {module.action: module})
    assert not failed.value.retryable and "name" in failed.value.message


@pytest.mark.parametrize("name", ["a./b", "x...", "a/..../b"])
def test_a_name_built_when_the_step_runs_is_refused_before_the_store(name: str) -> None:
    # A name made of references is checked only once they are resolved: the module refuses it itself.
    ctx = ModuleContext(uuid.uuid4(), str(uuid.uuid4()), "w", 1)
    with pytest.raises(StepFailed, match="ending with '.'") as failed:
        ArtifactWriteModule(_no_store).run(ctx, ArtifactWriteParams.model_construct(name=name, content=1))
    assert not failed.value.retryable


@pytest.mark.parametrize("name", ACCEPTED, ids=lambda v: repr(v[:16]))
def test_a_name_of_segments_not_ending_with_a_dot_is_accepted(name: str) -> None:
    assert validate_definition(_definition(name), catalog=builtin_catalog()).ok
    assert ArtifactWriteModule(_no_store).parse({"name": name, "content": "hi"}).name == name


@pytest.mark.parametrize("segment", ["...", "a.", "."])
def test_a_stored_outputs_reference_with_a_segment_ending_with_a_dot_is_not_read(segment: str) -> None:
    # '...' may be trimmed to '..' on the way to the store, and so resolve out of the tenant's prefix.
    tenant = uuid.uuid4()
    name = f"{tenant}/executions/e/{segment}/sha256-{'0' * 64}.json"
    reference = {payloads.BLOB_REF: {"container": "artifacts", "name": name, "size": 2, "sha256": "0" * 64}}
    with pytest.raises(payloads.StoredOutputError, match="prefix"):
        payloads.load(reference, tenant, container=_no_store)  # type: ignore[arg-type]
