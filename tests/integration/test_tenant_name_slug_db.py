# intent_ref: platform.tenant-isolation
"""The database refuses a tenant name that is no DNS-label slug, whatever path writes it, and leaves the tenants
named before the rule usable (migration 0056)."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from shared.db.roles import DATABASE_NAME

pytestmark = pytest.mark.integration


def _insert(pg, name: str) -> None:  # type: ignore[no-untyped-def]
    with psycopg.connect(pg.control_url, autocommit=True) as control, control.transaction():
        control.execute("SET LOCAL ROLE qp_platform")
        control.execute(
            "INSERT INTO app.tenants (id, name, entra_tenant_id) VALUES (%s, %s, %s)",
            (uuid.uuid4(), name, uuid.uuid4()),
        )


@pytest.mark.parametrize("name", ["ab-", "x--y"])
def test_a_name_that_is_no_slug_is_not_stored(pg, name: str) -> None:  # type: ignore[no-untyped-def]
    # Both pass 0002's pattern; `-ab` and `a` never did.
    with pytest.raises(psycopg.errors.CheckViolation, match="not 2 to 63 lower-case") as raised:
        _insert(pg, name)
    assert raised.value.diag.constraint_name == "tenants_name_slug"
    _insert(pg, f"slug-db-{uuid.uuid4().hex[:8]}")  # a slug is stored as before


def test_a_tenant_named_before_the_rule_stays_usable_but_cannot_be_renamed_to_a_non_slug(pg) -> None:  # type: ignore[no-untyped-def]
    legacy = f"legacy-{uuid.uuid4().hex[:8]}-"
    with psycopg.connect(pg.admin_url, dbname=DATABASE_NAME) as admin:
        # A row stored before migration 0056, made here by writing it with the rule switched off; all rolled back.
        admin.execute("ALTER TABLE app.tenants DISABLE TRIGGER tenants_name_slug")
        tenant_id = uuid.uuid4()
        admin.execute(
            "INSERT INTO app.tenants (id, name, entra_tenant_id) VALUES (%s, %s, %s)", (tenant_id, legacy, uuid.uuid4())
        )
        admin.execute("ALTER TABLE app.tenants ENABLE TRIGGER tenants_name_slug")
        # Suspending it, or any change that leaves its name, is stored (a CHECK, even NOT VALID, refused these).
        admin.execute(
            "UPDATE app.tenants SET status = 'suspended', display_name = 'Legacy' WHERE id = %s", (tenant_id,)
        )
        admin.execute("UPDATE app.tenants SET name = name WHERE id = %s", (tenant_id,))
        with pytest.raises(psycopg.errors.CheckViolation, match="not 2 to 63 lower-case"), admin.transaction():
            admin.execute("UPDATE app.tenants SET name = %s WHERE id = %s", (f"{legacy}-", tenant_id))
        assert admin.execute("SELECT status FROM app.tenants WHERE id = %s", (tenant_id,)).fetchone() == ("suspended",)
        admin.rollback()
