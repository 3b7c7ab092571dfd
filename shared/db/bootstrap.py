# intent_ref: platform.database
"""Create the roles and the database the migrations expect (needs a role that may create roles)."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from shared.db.roles import APP_LOGIN_ROLE, DATABASE_NAME, OWNER_ROLE, PLATFORM_ROLE, RUNTIME_ROLE


@dataclass(frozen=True)
class DatabaseUrls:
    """Connection strings derived from an administrative one."""

    admin: str
    owner: str
    app: str


def _role_exists(conn: psycopg.Connection[tuple[object, ...]], role: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is not None


def _create_nologin_role(conn: psycopg.Connection[tuple[object, ...]], role: str) -> None:
    if not _role_exists(conn, role):
        create = sql.SQL("CREATE ROLE {} NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE")
        conn.execute(create.format(sql.Identifier(role)))


def bootstrap(admin_url: str, database: str = DATABASE_NAME) -> DatabaseUrls:
    """Idempotently create qp_owner, qp_runtime, qp_app and `database` owned by qp_owner.

    Locally this runs against the embedded server as its superuser. In Azure the same statements are a
    documented one-off step run by the server's Entra administrator.
    """
    with psycopg.connect(admin_url, autocommit=True) as conn:
        if not _role_exists(conn, OWNER_ROLE):
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS").format(sql.Identifier(OWNER_ROLE)))
        for role in (RUNTIME_ROLE, PLATFORM_ROLE):
            _create_nologin_role(conn, role)
        if not _role_exists(conn, APP_LOGIN_ROLE):
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE").format(
                    sql.Identifier(APP_LOGIN_ROLE)
                )
            )
        for role in (RUNTIME_ROLE, PLATFORM_ROLE):
            conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(role), sql.Identifier(APP_LOGIN_ROLE)))
        # The owner must not be a member of the roles the policies name: it would be bound (or widened) by them.
        conn.execute(sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(RUNTIME_ROLE), sql.Identifier(OWNER_ROLE)))
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        if not exists:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), sql.Identifier(OWNER_ROLE))
            )
    with psycopg.connect(admin_url, dbname=database, autocommit=True) as conn:
        # gen_random_uuid is built in since PG 13, so no extension is needed; public stays closed to the app.
        conn.execute(sql.SQL("REVOKE CREATE ON SCHEMA public FROM PUBLIC"))
        grant = sql.SQL("GRANT CONNECT ON DATABASE {} TO {}")
        conn.execute(grant.format(sql.Identifier(database), sql.Identifier(APP_LOGIN_ROLE)))
    params = conninfo_to_dict(admin_url)
    params["dbname"] = database
    params.pop("password", None)
    return DatabaseUrls(
        admin=admin_url,
        owner=make_conninfo("", **{**params, "user": OWNER_ROLE}),
        app=make_conninfo("", **{**params, "user": APP_LOGIN_ROLE}),
    )


def ensure_runtime_role(url: str) -> None:
    """For an external server whose login owns the tables: make sure the NOLOGIN roles exist and the login may use them.

    The app then runs every transaction as qp_runtime or qp_platform (SET LOCAL ROLE), so RLS binds it all the same.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        for role in (RUNTIME_ROLE, PLATFORM_ROLE):
            _create_nologin_role(conn, role)
            conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(sql.Identifier(role)))
