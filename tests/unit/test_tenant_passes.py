# intent_ref: platform.tenant-isolation
"""A pass over found tenants: one tenant's failure is logged and counted, and the tenants after it still run."""

from __future__ import annotations

import logging
import uuid

import pytest

from shared.db.tenant_passes import each_tenant


def test_a_failing_tenant_is_counted_and_the_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    tenants = [uuid.uuid4() for _ in range(4)]
    ran: list[uuid.UUID] = []

    def work(tenant_id: uuid.UUID) -> int:
        ran.append(tenant_id)
        if tenant_id == tenants[1]:
            raise RuntimeError("the store is out")
        return tenants.index(tenant_id)

    with caplog.at_level(logging.WARNING, logger="shared.db.tenant_passes"):
        results, failed = each_tenant(tenants, work, what="a pass")
    assert (results, failed, ran) == ([0, 2, 3], 1, tenants)
    [record] = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None and str(tenants[1]) in record.getMessage()


def test_an_expected_failure_is_a_warning_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    tenant = uuid.uuid4()

    def work(_: uuid.UUID) -> None:
        raise ConnectionError("refused")

    with caplog.at_level(logging.WARNING, logger="shared.db.tenant_passes"):
        assert each_tenant([tenant], work, what="audit outbox", failures_expected=True) == ([], 1)
    [record] = caplog.records
    assert record.levelno == logging.WARNING and record.exc_info is None and "refused" in record.getMessage()
