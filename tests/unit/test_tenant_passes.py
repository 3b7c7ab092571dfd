# intent_ref: platform.tenant-isolation
"""A pass over found tenants: one tenant's failure is logged and named, and the tenants after it still run."""

from __future__ import annotations

import logging
import uuid

import pytest

from shared.db.tenant_passes import TenantPass, each_tenant


def test_a_failing_tenant_is_counted_and_the_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    tenants = [uuid.uuid4() for _ in range(4)]
    ran: list[uuid.UUID] = []

    def work(tenant_id: uuid.UUID) -> int:
        ran.append(tenant_id)
        if tenant_id == tenants[1]:
            raise RuntimeError("the store is out")
        return tenants.index(tenant_id)

    with caplog.at_level(logging.WARNING, logger="shared.db.tenant_passes"):
        done = each_tenant(tenants, work, what="a pass")
    assert (done.results, done.failed_count, ran) == ([0, 2, 3], 1, tenants)
    [record] = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None and str(tenants[1]) in record.getMessage()


def test_the_pass_names_the_tenants_that_failed_and_keeps_the_others_results_in_order() -> None:
    tenants = [uuid.uuid4() for _ in range(3)]

    def work(tenant_id: uuid.UUID) -> str:
        if tenant_id == tenants[1]:
            raise RuntimeError("the store is out")
        return f"done {tenants.index(tenant_id)}"

    done = each_tenant(tenants, work, what="a pass")
    assert done == TenantPass(results=["done 0", "done 2"], failed=[tenants[1]])
    assert done.failed_count == 1


def test_the_failed_tenants_are_named_in_the_order_they_went() -> None:
    tenants = [uuid.uuid4() for _ in range(3)]

    def work(tenant_id: uuid.UUID) -> int:
        if tenant_id != tenants[1]:
            raise ConnectionError("refused")
        return 1

    done = each_tenant(tenants, work, what="a pass", failures_expected=True)
    assert (done.results, done.failed, done.failed_count) == ([1], [tenants[0], tenants[2]], 2)


def test_an_expected_failure_is_a_warning_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    tenant = uuid.uuid4()

    def work(_: uuid.UUID) -> None:
        raise ConnectionError("refused")

    with caplog.at_level(logging.WARNING, logger="shared.db.tenant_passes"):
        assert each_tenant([tenant], work, what="audit outbox", failures_expected=True) == TenantPass([], [tenant])
    [record] = caplog.records
    assert record.levelno == logging.WARNING and record.exc_info is None and "refused" in record.getMessage()
