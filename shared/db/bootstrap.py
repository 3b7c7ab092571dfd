# intent_ref: platform.database
"""Create the roles and the database the migrations expect (needs a role that may create roles)."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from shared.db.roles import (
    APP_LOGIN_ROLE,
    CONTROL_LOGIN_ROLE,
    DATABASE_NAME,
    OWNER_ROLE,
    PLATFORM_ROLE,
    RUNTIME_ROLE,
)

# Each app login and the one role it may become. Membership is what SET ROLE checks, per login: a login that
# could reach both roles would let SQL injected into a tenant transaction switch to the control plane (ADR 0018).
LOGIN_MEMBERSHIPS = {APP_LOGIN_ROLE: RUNTIME_ROLE, CONTROL_LOGIN_ROLE: PLATFORM_ROLE}
# Roles no app login may be a member of except its own (membership is transitive, so the logins count too).
_PLATFORM_ROLES = (OWNER_ROLE, RUNTIME_ROLE, PLATFORM_ROLE, APP_LOGIN_ROLE, CONTROL_LOGIN_ROLE)
_MEMBERSHIPS_OF = (
    "SELECT r.rolname AS role, g.rolname AS grantor FROM pg_auth_members m"
    " JOIN pg_roles r ON r.oid = m.roleid JOIN pg_roles g ON g.oid = m.grantor"
    " JOIN pg_roles l ON l.oid = m.member WHERE l.rolname = %s AND r.rolname = ANY(%s)"
)

Conn = psycopg.Connection[tuple[object, ...]]


@dataclass(frozen=True)
class DatabaseUrls:
    """Connection strings derived from an administrative one."""

    admin: str
    owner: str
    app: str
    control: str


def _role_exists(conn: Conn, role: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is not None


def _create_nologin_role(conn: Conn, role: str) -> None:
    if not _role_exists(conn, role):
        create = sql.SQL("CREATE ROLE {} NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE")
        conn.execute(create.format(sql.Identifier(role)))


def _create_login_role(conn: Conn, role: str) -> None:
    if not _role_exists(conn, role):
        create = sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE")
        conn.execute(create.format(sql.Identifier(role)))


def revoke_memberships(conn: Conn, member: str, roles: list[str]) -> None:
    """Remove `member` from each of `roles`, whoever granted it (a REVOKE only removes its own grantor's grant)."""
    for row in conn.execute(_MEMBERSHIPS_OF, (member, roles)).fetchall():
        role, grantor = str(row[0]), str(row[1])
        revoke = sql.SQL("REVOKE {} FROM {} GRANTED BY {}")
        conn.execute(revoke.format(sql.Identifier(role), sql.Identifier(member), sql.Identifier(grantor)))


def bootstrap(admin_url: str, database: str = DATABASE_NAME) -> DatabaseUrls:
    """Idempotently create the roles, the two app logins and `database` owned by qp_owner; converge memberships."""
    # Locally this runs against the embedded server as its superuser. In Azure the same statements are a
    # documented one-off step run by the server's Entra administrator (docs/runbooks/deploy.md).
    with psycopg.connect(admin_url, autocommit=True) as conn:
        if not _role_exists(conn, OWNER_ROLE):
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS").format(sql.Identifier(OWNER_ROLE)))
        for role in (RUNTIME_ROLE, PLATFORM_ROLE):
            _create_nologin_role(conn, role)
        for login, role in LOGIN_MEMBERSHIPS.items():
            _create_login_role(conn, login)
            conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(role), sql.Identifier(login)))
            # Data directories bootstrapped before ADR 0018 granted qp_platform to qp_app: converge them.
            revoke_memberships(conn, login, [other for other in _PLATFORM_ROLES if other != role])
        # The owner must not be a member of the roles the policies name: it would be bound (or widened) by them.
        revoke_memberships(conn, OWNER_ROLE, [RUNTIME_ROLE, PLATFORM_ROLE])
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        if not exists:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), sql.Identifier(OWNER_ROLE))
            )
    with psycopg.connect(admin_url, dbname=database, autocommit=True) as conn:
        # gen_random_uuid is built in since PG 13, so no extension is needed; public stays closed to the app.
        conn.execute(sql.SQL("REVOKE CREATE ON SCHEMA public FROM PUBLIC"))
        grant = sql.SQL("GRANT CONNECT ON DATABASE {} TO {}")
        for login in LOGIN_MEMBERSHIPS:
            conn.execute(grant.format(sql.Identifier(database), sql.Identifier(login)))
    params = conninfo_to_dict(admin_url)
    params["dbname"] = database
    params.pop("password", None)
    return DatabaseUrls(
        admin=admin_url,
        owner=make_conninfo("", **{**params, "user": OWNER_ROLE}),
        app=make_conninfo("", **{**params, "user": APP_LOGIN_ROLE}),
        control=make_conninfo("", **{**params, "user": CONTROL_LOGIN_ROLE}),
    )


def ensure_runtime_role(url: str) -> None:
    """External server whose login owns the tables: ensure the NOLOGIN roles exist and that login may use both."""
    # That one login serves both pools (QP_DATABASE_URL and QP_DATABASE_CONTROL_URL), so it is a member of qp_runtime
    # and qp_platform: ADR 0018's separation does not apply to a login that owns the tables and is trusted with them
    # anyway. Every transaction still switches to qp_runtime or qp_platform (SET LOCAL ROLE), so RLS binds it.
    with psycopg.connect(url, autocommit=True) as conn:
        for role in (RUNTIME_ROLE, PLATFORM_ROLE):
            _create_nologin_role(conn, role)
            conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(sql.Identifier(role)))
