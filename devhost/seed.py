# intent_ref: platform.devhost
"""Demo content for the demo tenants: the seed tutorial's remote modules, registered as a Tenant.Admin would."""

from __future__ import annotations

import logging

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from devhost.provision import DEMO_TENANTS, demo_tenant_id
from shared.db.roles import RUNTIME_ROLE
from shared.registry.catalog import seed_remote_modules
from shared.registry.modules import ModuleConflictError, ModuleRegistration, register_module

logger = logging.getLogger(__name__)

SEED_ACTOR = "devhost:seed-demo"
"""The `created_by` of what the seed registers (a named platform actor, not an Entra principal)."""


def seed_demo_modules(app_url: str) -> list[str]:
    """Register the seed's remote modules for each demo tenant if absent; returns `tenant:action` of each added.

    A plain connection rather than the app's pool: this runs before the app (and its settings) is loaded. Each
    tenant's registrations run in one transaction set up exactly as `tenant_transaction` sets one up.
    """
    registrations = [ModuleRegistration.from_spec(spec) for spec in seed_remote_modules()]
    added: list[str] = []
    with psycopg.connect(app_url, autocommit=True, row_factory=dict_row) as conn:
        for name in DEMO_TENANTS:
            tenant_id = demo_tenant_id(name)
            with conn.transaction():
                conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(RUNTIME_ROLE)))
                conn.execute("SELECT app.pin_tenant(%s)", (tenant_id,))
                if conn.execute("SELECT 1 FROM app.tenants").fetchone() is None:  # RLS: the pinned tenant's row
                    logger.warning("demo tenant %s is not provisioned; its modules are not seeded", name)
                    continue
                for registration in registrations:
                    try:
                        register_module(conn, tenant_id, registration, SEED_ACTOR)
                    except ModuleConflictError:
                        continue  # registered by an earlier run (or by the tenant's admin): leave it as it is
                    added.append(f"{name}:{registration.action}")
    if added:
        logger.info("seeded demo modules: %s", ", ".join(added))
    return added
