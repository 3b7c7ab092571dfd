# intent_ref: platform.devhost
"""Provide the app's backing services locally: Postgres (embedded or external), Azurite, migrations, demo tenants."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from devhost.services import Azurite, start_azurite, start_postgres, stop_postgres
from shared.db.bootstrap import bootstrap, ensure_runtime_role
from shared.db.migrate import apply_migrations
from shared.db.roles import PLATFORM_ROLE

logger = logging.getLogger(__name__)

# `tenant-123` is the tenant the architecture tutorial switches to (`client.set_tenant("tenant-123")`).
DEMO_TENANTS = ("contoso", "fabrikam", "tenant-123")
DEV_STORAGE = "UseDevelopmentStorage=true"
# What the demo tenants may use (an empty allow-list allows nothing, ADR 0011): the built-in module families and
# the seed tutorial's remote actions, on both demo targets.
DEMO_ALLOWED_MODULES = (
    "http",
    "artifact",
    "event",
    "approval",
    "wait",
    "intent",
    "verify-deployment",
    "build-container",
    "build-docker-image",
    "push-to-registry",
    "deploy-to-kubernetes",
)
DEMO_ALLOWED_TARGETS = ("staging", "production")
# Fixed namespace so a demo tenant's ids are the same on every machine and in every token.
DEV_NAMESPACE = uuid.UUID("6f1c1f4e-3c55-4d0b-9a59-2f0a6a8c7e11")


@dataclass
class Provisioned:
    """What was provided, and what must be stopped on exit."""

    owner_url: str
    app_url: str
    control_url: str
    blob_connection_string: str | None
    azurite: Azurite | None = None
    postgres_dir: Path | None = None
    notes: list[str] = field(default_factory=list)

    def stop(self) -> None:
        """Stop what this process started (never a server it merely attached to)."""
        if self.azurite is not None:
            self.azurite.stop()
        if self.postgres_dir is not None:
            stop_postgres(self.postgres_dir)


def _postgres_running(data_dir: Path) -> bool:
    pid_file = data_dir / "postmaster.pid"
    if not pid_file.exists():
        return False
    try:
        os.kill(int(pid_file.read_text().split()[0]), 0)
    except (ValueError, ProcessLookupError, PermissionError):
        return False
    return True


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.3)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass(frozen=True)
class ProvisionedDatabase:
    """The database's connection strings, with migrations applied, and the server this process started."""

    owner_url: str
    app_url: str
    control_url: str
    started_dir: Path | None
    description: str


def provision_database(
    data_dir: Path, external_url: str | None, external_control_url: str | None = None
) -> ProvisionedDatabase:
    """Bootstrap and migrate the embedded server, or an external one (`external_url`)."""
    if external_url:
        ensure_runtime_role(external_url)
        apply_migrations(external_url)
        # The external login owns the tables and is a member of both roles: unless a control login is given,
        # it serves the control plane too (ADR 0018: that mode already trusts its login).
        return ProvisionedDatabase(
            external_url,
            external_url,
            external_control_url or external_url,
            None,
            "external Postgres (QP_DATABASE_URL)",
        )
    pg_dir = data_dir / "postgres"
    attached = _postgres_running(pg_dir)
    admin_url = start_postgres(pg_dir)
    urls = bootstrap(admin_url)
    apply_migrations(urls.owner)
    return ProvisionedDatabase(
        urls.owner, urls.app, urls.control, None if attached else pg_dir, f"embedded Postgres ({pg_dir})"
    )


def provision_storage(data_dir: Path, configured: str | None, log_dir: Path) -> tuple[str | None, Azurite | None]:
    """Start Azurite when the app points at development storage and nothing listens there yet."""
    if configured and configured != DEV_STORAGE:
        return configured, None
    if _listening(10000):
        logger.info("Azurite (or another blob endpoint) already listens on 10000; reusing it")
        return DEV_STORAGE, None
    # On development storage's own ports, or not at all: its connection string names them.
    azurite = start_azurite(data_dir / "azurite", log_file=log_dir / "azurite.log", move_ports=False)
    return azurite.connection_string, azurite


def demo_tenant_id(name: str) -> uuid.UUID:
    """The platform tenant id of a demo tenant (stable across machines)."""
    return uuid.uuid5(DEV_NAMESPACE, f"tenant:{name}")


def seed_demo_tenants(control_url: str, entra_tenant_ids: dict[str, uuid.UUID]) -> list[str]:
    """Insert the demo tenants if absent, as the control plane does (its login); returns the names inserted."""
    inserted = []
    with psycopg.connect(control_url, autocommit=True) as conn:
        for name, entra_id in entra_tenant_ids.items():
            with conn.transaction():
                conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(PLATFORM_ROLE)))
                cur = conn.execute(
                    "INSERT INTO app.tenants (id, name, display_name, entra_tenant_id, allowed_modules,"
                    " allowed_targets) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    (
                        demo_tenant_id(name),
                        name,
                        name.capitalize(),
                        entra_id,
                        list(DEMO_ALLOWED_MODULES),
                        list(DEMO_ALLOWED_TARGETS),
                    ),
                )
                if cur.rowcount:
                    inserted.append(name)
    return inserted
