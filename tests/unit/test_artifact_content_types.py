# intent_ref: platform.modules
"""artifact.write's `content_type` is a media type in printable ASCII of at most 255 characters, refused when the
intent is saved and, as a non-retryable step failure, before the store is reached: a line break, a NUL or 200 KB
reached the blob SDK, which failed the attempt (retried) after its own retries."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from shared.modules import ModuleContext, StepFailed, run_module
from shared.modules.artifact_write import ArtifactWriteModule
from shared.registry.catalog import builtin_catalog
from shared.registry.validation import validate_definition

REFUSED = [
    "text/plain\r\nx-ms-meta-evil: 1",
    "text/plain\r\n x-ms-meta-evil: 1",
    "text/plain\n",
    "text/plain\x00",
    "tëxt/plain",
    "text",
    "text/plain; charset",
    'text/plain; a="\x7f"',
    "t/" + "a" * 200_000,
    "t/" + "a" * 254,
]
ACCEPTED = [
    "application/json",
    "application/vnd.api+json",
    "text/plain; charset=utf-8",
    "text/plain;charset=UTF-8",
    'multipart/form-data; boundary="a \\"quoted\\" one"',
    "t/" + "a" * 253,
    # RFC 9110's optional whitespace (spaces and tabs) and empty parameters: media types, taken before the pattern
    "text/plain; charset=utf-8;",
    "text/plain;\tcharset=utf-8",
    "text/html ",
    "text/plain\t",
]


def _definition(content_type: str) -> dict[str, Any]:
    step = {"id": "w", "action": "artifact.write", "params": {"name": "a.txt", "content": "hi"}}
    step["params"]["content_type"] = content_type  # type: ignore[index]
    return {"name": "ctype", "definition": {"target": "staging", "steps": [step]}}


def _no_store() -> Any:
    raise AssertionError("the store was reached")


@pytest.mark.parametrize("content_type", REFUSED, ids=lambda v: repr(v[:24]))
def test_a_content_type_that_is_no_media_type_is_refused_at_save_and_before_the_store(content_type: str) -> None:
    result = validate_definition(_definition(content_type), catalog=builtin_catalog())
    assert not result.ok
    assert {error.pointer for error in result.errors} == {"/definition/steps/0/params/content_type"}
    module = ArtifactWriteModule(_no_store)
    ctx = ModuleContext(uuid.uuid4(), str(uuid.uuid4()), "w", 1)
    with pytest.raises(StepFailed) as failed:
        params = {"name": "a.txt", "content": "hi", "content_type": content_type}
        run_module(module.action, ctx, params, {module.action: module})
    assert not failed.value.retryable and "content_type" in failed.value.message


@pytest.mark.parametrize("content_type", ACCEPTED, ids=lambda v: repr(v[:24]))
def test_a_media_type_is_accepted(content_type: str) -> None:
    assert validate_definition(_definition(content_type), catalog=builtin_catalog()).ok
    module = ArtifactWriteModule(_no_store)
    assert module.parse({"name": "a.txt", "content": "hi", "content_type": content_type}).content_type == content_type
