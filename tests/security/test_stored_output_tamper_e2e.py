# intent_ref: platform.hardening
"""A stored output altered in the blob store is never used: the run that reads it back fails, naming the step."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from azure.storage.blob import BlobServiceClient

from tests.e2e.test_executions_e2e import (  # noqa: F401  # the fixtures
    AUTHOR,
    Platform,
    SideEffects,
    create_intent,
    detail,
    follow,
    http,
    platform,
    side_effects,
    started,
    steps_of,
)

pytestmark = pytest.mark.e2e


def test_a_reused_output_tampered_in_storage_fails_the_retry_before_anything_reads_it(
    platform: Platform,
    side_effects: SideEffects,
    azurite: Any,
) -> None:
    tag = uuid.uuid4().hex[:6]
    intent = create_intent(
        platform,
        [
            {"id": "big", **http(side_effects, f"big-{tag}", big=100_000)},
            {"id": "use", **http(side_effects, f"use-{tag}-" + "${steps.big.output.status}")},
        ],
    )
    side_effects.failing.add(f"use-{tag}-200")
    first = started(platform, intent)
    assert follow(platform, first)[0] == "failed"
    reference = steps_of(detail(platform, first))["big"]["output"]["$blob"]
    assert reference["name"].rsplit("/", 1)[-1] == f"sha256-{reference['sha256']}.json"

    blob = BlobServiceClient.from_connection_string(azurite.connection_string).get_blob_client(
        reference["container"], reference["name"]
    )
    original = blob.download_blob().readall()
    tampered = original.replace(b'"status":200', b'"status":201', 1)
    assert tampered != original and len(tampered) == len(original)
    blob.upload_blob(tampered, overwrite=True)

    side_effects.failing.discard(f"use-{tag}-200")
    retried = httpx.post(f"{platform.base}/api/v1/executions/{first}/retry", json={}, headers=platform.headers(AUTHOR))
    assert retried.status_code == 202, retried.text
    second = retried.json()["execution_id"]
    assert follow(platform, second)[0] == "failed"
    execution = detail(platform, second)
    assert "stored output of step big could not be read" in execution["error"], execution["error"]
    assert "sha256" in execution["error"], execution["error"]
    assert steps_of(execution)["use"]["state"] != "succeeded"
    # Neither the tampered value nor the original reached the step that references it on the retry.
    assert side_effects.named(f"use-{tag}-201") == []
    assert len(side_effects.named(f"use-{tag}-200")) == 1
