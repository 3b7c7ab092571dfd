# intent_ref: platform.devhost
"""Demo content for the demo tenants: the seed tutorial's remote modules and its `deploy-application` blueprint."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from devhost.provision import DEMO_TENANTS, demo_tenant_id
from shared.db.session import enter_tenant
from shared.policy.facts import TenantFacts
from shared.registry import service
from shared.registry.catalog import seed_remote_modules
from shared.registry.modules import ModuleConflictError, ModuleRegistration, register_module

logger = logging.getLogger(__name__)

SEED_ACTOR = "devhost:seed-demo"
DEMO_APP_PATH = "/devhost/demo/deployment"
"""Where the devhost serves its stand-in for the demo's deployed application (devhost/demo_deployment.py)."""
DEMO_BLUEPRINT = Path(__file__).resolve().parent.parent / "examples" / "blueprints" / "deploy-application.json"
"""The `created_by` of what the seed registers (a named platform actor, not an Entra principal)."""


def seed_demo_modules(app_url: str) -> list[str]:
    """Register the seed's remote modules for each demo tenant if absent; returns `tenant:action` of each added.

    A plain connection rather than the app's pool: this runs before the app is loaded. Each tenant's
    registrations run in one transaction, entered as the runtime role with the tenant pinned.
    """
    registrations = [ModuleRegistration.from_spec(spec) for spec in seed_remote_modules()]
    added: list[str] = []
    with psycopg.connect(app_url, autocommit=True, row_factory=dict_row) as conn:
        for name in DEMO_TENANTS:
            tenant_id = demo_tenant_id(name)
            with conn.transaction():
                enter_tenant(conn, tenant_id)
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


def seed_demo_blueprints(app_url: str) -> list[str]:
    """Create the `deploy-application` blueprint (examples/blueprints) for each demo tenant that lacks it.

    With it, the seed tutorial's declaration (`{"target", "version", "environment"}`) validates and plans.
    """
    document = json.loads(DEMO_BLUEPRINT.read_text(encoding="utf-8"))
    added: list[str] = []
    with psycopg.connect(app_url, autocommit=True, row_factory=dict_row) as conn:
        for name in DEMO_TENANTS:
            tenant_id = demo_tenant_id(name)
            with conn.transaction():
                enter_tenant(conn, tenant_id)
                row = conn.execute("SELECT status, allowed_targets, allowed_modules FROM app.tenants").fetchone()
                if row is None:
                    continue
                exists = conn.execute(
                    "SELECT 1 FROM app.intents WHERE kind = 'blueprint' AND name = %s", (document["name"],)
                ).fetchone()
                if exists:
                    continue
                facts = TenantFacts(
                    tenant_id, row["status"], frozenset(row["allowed_targets"]), frozenset(row["allowed_modules"])
                )
                service.create(conn, "blueprint", document, item_id=uuid.uuid4(), tenant=facts, created_by=SEED_ACTOR)
                added.append(f"{name}:{document['name']}")
    if added:
        logger.info("seeded demo blueprints: %s", ", ".join(added))
    return added


def seed_demo_settings(app_url: str, base_url: str) -> list[str]:
    """Point each demo tenant's `base_url` at the devhost's stand-in for the deployed demo app (and let its steps
    reach this loopback host), where the tenant has not set its own; returns the tenants changed.

    With it the seed blueprint's `verify-deployment` step has something to check: the tutorial's declaration runs
    to success locally. The SSRF guard is not widened: loopback is reachable only because the tenant allows it
    and local settings allow private hosts (ADR 0016)."""
    demo_app = f"{base_url.rstrip('/')}{DEMO_APP_PATH}"
    changed: list[str] = []
    with psycopg.connect(app_url, autocommit=True, row_factory=dict_row) as conn:
        for name in DEMO_TENANTS:
            with conn.transaction():
                enter_tenant(conn, demo_tenant_id(name))
                row = conn.execute("SELECT settings FROM app.tenants").fetchone()
                if row is None:
                    continue
                settings = dict(row["settings"])
                current = settings.get("base_url")
                if current == demo_app or (current is not None and not str(current).endswith(DEMO_APP_PATH)):
                    continue  # set already, or the tenant's own choice: it stands (an earlier run's port moves)
                hosts = list(settings.get("allowed_hosts") or [])
                if "127.0.0.1" not in hosts:
                    hosts.append("127.0.0.1")
                settings.update(base_url=demo_app, allowed_hosts=hosts)
                conn.execute("UPDATE app.tenants SET settings = %s", (Jsonb(settings),))
                changed.append(name)
    if changed:
        logger.info("demo tenants' base_url: %s (%s)", demo_app, ", ".join(changed))
    return changed
