# intent_ref: platform.tenant-isolation
"""The database refuses a tenant provisioned for the nil UUID, whatever path inserts it (migration 0055)."""

from __future__ import annotations

import uuid

import psycopg
import pytest

pytestmark = pytest.mark.integration


def _insert(pg, entra_tenant_id: uuid.UUID) -> None:  # type: ignore[no-untyped-def]
    with psycopg.connect(pg.control_url, autocommit=True) as control, control.transaction():
        control.execute("SET LOCAL ROLE qp_platform")
        control.execute(
            "INSERT INTO app.tenants (id, name, entra_tenant_id) VALUES (%s, %s, %s)",
            (uuid.uuid4(), f"nil-check-{uuid.uuid4().hex[:8]}", entra_tenant_id),
        )


def test_no_tenant_is_stored_for_the_nil_uuid(pg) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(psycopg.errors.CheckViolation, match="tenants_entra_tenant_id_not_nil"):
        _insert(pg, uuid.UUID(int=0))
    _insert(pg, uuid.uuid4())  # any other id is stored as before


def test_a_tenant_stored_for_the_nil_uuid_before_the_rule_can_still_be_suspended(pg) -> None:  # type: ignore[no-untyped-def]
    # Left usable, so that it can be suspended and erased: the rule holds for an id being written.
    tenant_id = uuid.uuid4()
    with psycopg.connect(pg.admin_url, dbname="quantum", autocommit=True) as admin, admin.transaction():
        admin.execute("SET LOCAL session_replication_role = replica")  # as a row stored before the rule
        admin.execute(
            "INSERT INTO app.tenants (id, name, entra_tenant_id) VALUES (%s, %s, %s)",
            (tenant_id, f"nil-old-{tenant_id.hex[:8]}", uuid.UUID(int=0)),
        )
    with psycopg.connect(pg.control_url, autocommit=True) as control, control.transaction():
        control.execute("SET LOCAL ROLE qp_platform")
        control.execute("UPDATE app.tenants SET status = 'suspended' WHERE id = %s", (tenant_id,))
        assert control.execute("SELECT status FROM app.tenants WHERE id = %s", (tenant_id,)).fetchone() == (
            "suspended",
        )


def test_no_tenant_is_moved_to_the_nil_uuid(pg) -> None:  # type: ignore[no-untyped-def]
    tenant_id = uuid.uuid4()
    with psycopg.connect(pg.control_url, autocommit=True) as control, control.transaction():
        control.execute("SET LOCAL ROLE qp_platform")
        control.execute(
            "INSERT INTO app.tenants (id, name, entra_tenant_id) VALUES (%s, %s, %s)",
            (tenant_id, f"nil-move-{tenant_id.hex[:8]}", uuid.uuid4()),
        )
        with pytest.raises(psycopg.errors.CheckViolation, match="nil UUID"), control.transaction():
            control.execute("UPDATE app.tenants SET entra_tenant_id = %s WHERE id = %s", (uuid.UUID(int=0), tenant_id))
