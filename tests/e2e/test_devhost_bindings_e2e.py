# intent_ref: platform.devhost-durable
"""The durable client binding on a non-HTTP trigger: an Event Hub event starts an orchestration."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import azure.durable_functions as df
import httpx
import pytest
from azure.durable_functions.models.utils import http_utils

from devhost.durable.binding import client_binding_json
from tests.e2e.conftest import DevhostFactory

pytestmark = pytest.mark.e2e


def test_event_hub_trigger_starts_an_orchestration(devhost_factory: DevhostFactory) -> None:
    host = devhost_factory()
    instance_id = f"from-event-{uuid.uuid4().hex[:8]}"
    published = httpx.post(f"{host.base_url}/devhost/eventhubs/durable-starts/events",
                           json={"events": [{"body": {"instance_id": instance_id, "name": "hub"}}]})
    assert published.status_code == 200, published.text

    async def finished() -> Any:
        client = df.DurableOrchestrationClient(client_binding_json(host.base_url, "ConformanceHub"))
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                status = await client.get_status(instance_id)
                if status and status.runtime_status and status.runtime_status.value == "Completed":
                    return status
                await asyncio.sleep(0.1)
            raise AssertionError(f"{instance_id} did not complete:\n{host.log()[-3000:]}")
        finally:
            await http_utils._close_session()

    status = asyncio.run(finished())
    assert status.output == ["Hello hub", "Hello Hello hub"]
