# intent_ref: platform.tenant-isolation
"""Two logins (ADR 0018): tenant requests cannot become the control plane, nor the control plane the runtime."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, LiteralString

import psycopg
import pytest
from psycopg import sql
from psycopg_pool import ConnectionPool

from devhost.services import start_postgres, stop_postgres
from shared.db.bootstrap import bootstrap
from shared.db.roles import APP_LOGIN_ROLE, CONTROL_LOGIN_ROLE, OWNER_ROLE, PLATFORM_ROLE, RUNTIME_ROLE
from shared.db.session import platform_transaction, runtime_transaction, tenant_transaction

pytestmark = pytest.mark.integration

_SESSION_USER = "SELECT session_user AS login, current_user AS role"


def _is_member(admin_url: str, login: str, role: str) -> bool:
    """Whether `login` reaches `role` through any chain of memberships (what SET ROLE checks)."""
    with psycopg.connect(admin_url) as conn:
        row = conn.execute("SELECT pg_has_role(%s, %s, 'MEMBER')", (login, role)).fetchone()
    return bool(row and row[0])


def _cannot_set_role(url: str, statement: LiteralString) -> None:
    with psycopg.connect(url, autocommit=True) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(statement)


def test_the_app_login_cannot_become_the_control_plane_or_the_owner(pg: Any) -> None:
    for statement in ("SET ROLE qp_platform", "SET ROLE qp_owner", "SET ROLE qp_control"):
        _cannot_set_role(pg.app_url, statement)
    for role in (PLATFORM_ROLE, OWNER_ROLE, CONTROL_LOGIN_ROLE):
        assert not _is_member(pg.admin_url, APP_LOGIN_ROLE, role), role
    assert _is_member(pg.admin_url, APP_LOGIN_ROLE, RUNTIME_ROLE)


def test_the_control_login_cannot_become_the_runtime_or_the_owner(pg: Any) -> None:
    for statement in ("SET ROLE qp_runtime", "SET ROLE qp_owner", "SET ROLE qp_app"):
        _cannot_set_role(pg.control_url, statement)
    for role in (RUNTIME_ROLE, OWNER_ROLE, APP_LOGIN_ROLE):
        assert not _is_member(pg.admin_url, CONTROL_LOGIN_ROLE, role), role
    assert _is_member(pg.admin_url, CONTROL_LOGIN_ROLE, PLATFORM_ROLE)


def test_sql_inside_a_tenant_transaction_cannot_switch_to_the_control_plane(
    app_pool: ConnectionPool[Any], control_pool: ConnectionPool[Any]
) -> None:
    tenant = uuid.uuid4()
    with pytest.raises(psycopg.errors.InsufficientPrivilege), tenant_transaction(tenant, pool=app_pool) as conn:
        conn.execute("SET ROLE qp_platform")
    with pytest.raises(psycopg.errors.InsufficientPrivilege), runtime_transaction(pool=app_pool) as conn:
        conn.execute("SET LOCAL ROLE qp_platform")
    # Nor the other way round: the control plane's login never runs as the runtime role.
    with pytest.raises(psycopg.errors.InsufficientPrivilege), tenant_transaction(tenant, pool=control_pool):
        pass


@pytest.mark.usefixtures("process_pools")
def test_each_transaction_runs_on_its_own_login_by_default() -> None:
    with platform_transaction() as conn:
        assert conn.execute(_SESSION_USER).fetchone() == {"login": CONTROL_LOGIN_ROLE, "role": PLATFORM_ROLE}
    with tenant_transaction(uuid.uuid4()) as conn:
        assert conn.execute(_SESSION_USER).fetchone() == {"login": APP_LOGIN_ROLE, "role": RUNTIME_ROLE}
    with runtime_transaction() as conn:
        assert conn.execute(_SESSION_USER).fetchone() == {"login": APP_LOGIN_ROLE, "role": RUNTIME_ROLE}


@pytest.fixture(scope="module")
def old_style_server() -> Iterator[str]:
    """A fresh server bootstrapped the way it was before ADR 0018: one login, a member of both roles."""
    root = Path(tempfile.mkdtemp(prefix="qp-old-roles-"))
    admin_url = start_postgres(root / "postgres")
    try:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute("CREATE ROLE qp_owner LOGIN NOSUPERUSER NOBYPASSRLS")
            for role in (RUNTIME_ROLE, PLATFORM_ROLE):
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
            conn.execute("CREATE ROLE qp_app LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE")
            conn.execute("GRANT qp_runtime, qp_platform TO qp_app")
            conn.execute("CREATE DATABASE quantum OWNER qp_owner")
            conn.execute("GRANT CONNECT ON DATABASE quantum TO qp_app")
        yield admin_url
    finally:
        stop_postgres(root / "postgres")
        shutil.rmtree(root, ignore_errors=True)


def test_bootstrap_converges_an_old_style_database(old_style_server: str) -> None:
    admin_url = old_style_server
    assert _is_member(admin_url, APP_LOGIN_ROLE, PLATFORM_ROLE)
    for _ in range(2):  # idempotent: the second run changes nothing and fails on nothing
        urls = bootstrap(admin_url)
        assert not _is_member(admin_url, APP_LOGIN_ROLE, PLATFORM_ROLE)
        assert _is_member(admin_url, APP_LOGIN_ROLE, RUNTIME_ROLE)
        assert _is_member(admin_url, CONTROL_LOGIN_ROLE, PLATFORM_ROLE)
        assert not _is_member(admin_url, CONTROL_LOGIN_ROLE, RUNTIME_ROLE)
    for url, login in ((urls.app, APP_LOGIN_ROLE), (urls.control, CONTROL_LOGIN_ROLE)):
        with psycopg.connect(url) as conn:  # both logins may connect to the database
            assert conn.execute("SELECT session_user").fetchone() == (login,)
    _cannot_set_role(urls.app, "SET ROLE qp_platform")
