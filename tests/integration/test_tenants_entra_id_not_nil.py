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
