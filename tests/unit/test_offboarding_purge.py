# intent_ref: platform.tenants
"""An erasure purges the tenant's orchestrations several at a time, each terminated first when it still runs."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import Enum
from typing import Any

from shared.tenants.offboarding import purge_orchestrations


class _Runtime(Enum):
    Running = "Running"
    Completed = "Completed"
    Terminated = "Terminated"


@dataclass
class _Status:
    runtime_status: _Runtime


@dataclass
class _Purged:
    instances_deleted: int


class _Client:
    """The Durable client's calls an erasure makes, each taking a moment; counts how many run at once."""

    def __init__(self, running: set[str]) -> None:
        self.running = running
        self.terminated: list[str] = []
        self.purged: list[str] = []
        self.at_once = 0
        self.most_at_once = 0

    async def _call(self) -> None:
        self.at_once += 1
        self.most_at_once = max(self.most_at_once, self.at_once)
        await asyncio.sleep(0.01)
        self.at_once -= 1

    async def get_status(self, instance_id: str) -> Any:
        await self._call()
        return _Status(_Runtime.Running if instance_id in self.running else _Runtime.Completed)

    async def terminate(self, instance_id: str, reason: str) -> None:
        await self._call()
        self.terminated.append(instance_id)
        self.running.discard(instance_id)

    async def purge_instance_history(self, instance_id: str) -> Any:
        await self._call()
        self.purged.append(instance_id)
        return _Purged(1)


def test_orchestrations_are_purged_a_bounded_number_at_a_time_and_running_ones_terminated_first() -> None:
    # One after another, a tenant of some thousands of executions could not be erased within the function's limit.
    ids = [f"e-{n}" for n in range(40)]
    client = _Client(running={"e-3", "e-17"})
    purged = asyncio.run(purge_orchestrations(ids, client, concurrency=8))
    assert purged == 40 and sorted(client.purged) == sorted(ids)
    assert sorted(client.terminated) == ["e-17", "e-3"]
    assert 1 < client.most_at_once <= 8
