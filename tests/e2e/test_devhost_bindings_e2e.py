# intent_ref: platform.devhost-durable
"""The durable client binding on a non-HTTP trigger: an Event Hub event starts an orchestration."""

from __future__ import annotations

import uuid
from typing import Any

import azure.durable_functions as df
import httpx
import pytest

from tests.e2e.conftest import DevhostFactory
from tests.e2e.durable_support import wait_for_status, with_client

pytestmark = pytest.mark.e2e


def test_event_hub_trigger_starts_an_orchestration(devhost_factory: DevhostFactory) -> None:
    host = devhost_factory()
    instance_id = f"from-event-{uuid.uuid4().hex[:8]}"
    published = httpx.post(
        f"{host.base_url}/devhost/eventhubs/durable-starts/events",
        json={"events": [{"body": {"instance_id": instance_id, "name": "hub"}}]},
        headers=host.key_header,
    )
    assert published.status_code == 200, published.text

    async def completed(client: df.DurableOrchestrationClient) -> Any:
        return await wait_for_status(client, instance_id, timeout=30)

    status = with_client(host.base_url, "ConformanceHub", completed, host.host_key)
    assert status.runtime_status == df.OrchestrationRuntimeStatus.Completed, host.log()[-3000:]
    assert status.output == ["Hello hub", "Hello Hello hub"]
