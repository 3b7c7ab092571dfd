# intent_ref: platform.execution
"""The sweeper hands every expired lease's verdict to its orchestration, one failed hand-over skipping no other."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from shared.engine import remote, sweeper


@dataclass(frozen=True)
class _Key:
    execution_id: str
    event_name: str


@dataclass(frozen=True)
class _Attempt:
    key: _Key

    def verdict(self) -> dict[str, Any]:
        return {"ok": False, "state": "timed_out"}


class _Rows:
    def __init__(self, tenant_id: uuid.UUID) -> None:
        self._tenant_id = tenant_id

    def execute(self, *_: Any) -> Any:
        tenant_id = self._tenant_id

        class _Result:
            def fetchall(self) -> list[dict[str, str]]:
                return [{"tenant_id": str(tenant_id)}]

        return _Result()


def test_a_verdict_that_cannot_be_raised_skips_no_other(monkeypatch: pytest.MonkeyPatch) -> None:
    # The attempts are recorded ended before their verdicts go out: one raise failing (an orchestration purged, a
    # task hub hiccup) skipped the tenant's other verdicts, and nobody would raise them again.
    tenant_id = uuid.uuid4()
    monkeypatch.setattr(sweeper, "platform_transaction", lambda pool=None: contextlib.nullcontext(_Rows(tenant_id)))
    attempts = [_Attempt(_Key(f"e-{n}", f"run:s:{n}")) for n in range(3)]
    monkeypatch.setattr(sweeper, "_expire_tenant_leases", lambda _tenant, _pool: attempts)
    marked: list[str] = []
    monkeypatch.setattr(
        remote, "mark_verdicts_handed_over", lambda _tenant, keys, _pool: marked.extend(k.execution_id for k in keys)
    )
    raised: list[str] = []

    class _Client:
        async def raise_event(self, instance_id: str, name: str, data: Any) -> None:
            if instance_id == "e-0":
                raise RuntimeError("No instance with ID 'e-0' found.")
            raised.append(instance_id)

    assert asyncio.run(sweeper.expire_work_leases(_Client())) == 3
    assert raised == ["e-1", "e-2"]
    # Handed over (a gone orchestration's too: nobody waits for it); one that failed for now stays to raise again.
    assert sorted(marked) == ["e-0", "e-1", "e-2"]
