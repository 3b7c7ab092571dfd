# intent_ref: platform.quality
"""Session fixtures: one embedded Postgres and one Azurite for the whole test run, real and throwaway."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devhost.services import Azurite, free_port, start_azurite, start_postgres, stop_postgres
from shared.db.bootstrap import bootstrap
from shared.db.migrate import apply_migrations


@dataclass(frozen=True)
class PostgresInstance:
    """The session's embedded server: bootstrapped (roles, database) and migrated."""

    root: Path
    """A devhost started with `--data-dir root` attaches to this same server (root/postgres)."""
    data_dir: Path
    admin_url: str
    owner_url: str
    app_url: str
    """The login of tenant requests (qp_app, member of qp_runtime only)."""
    control_url: str
    """The login of the control plane (qp_control, member of qp_platform only)."""


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresInstance]:
    """An embedded Postgres with the platform's roles, database and migrations."""
    root = Path(tempfile.mkdtemp(prefix="qp-pg-"))
    data_dir = root / "postgres"
    admin_url = start_postgres(data_dir)
    try:
        urls = bootstrap(admin_url)
        apply_migrations(urls.owner)
        yield PostgresInstance(root, data_dir, admin_url, urls.owner, urls.app, urls.control)
    finally:
        stop_postgres(data_dir)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """An Azurite on free ports with its data in a temporary folder."""
    root = Path(tempfile.mkdtemp(prefix="qp-azurite-"))
    instance = start_azurite(
        root / "data",
        blob_port=free_port(),
        queue_port=free_port(),
        table_port=free_port(),
        log_file=root / "azurite.log",
    )
    try:
        yield instance
    finally:
        instance.stop()
        shutil.rmtree(root, ignore_errors=True)
