# intent_ref: platform.database
"""Names of the database roles; the migrations and the bootstrap use the same ones."""

OWNER_ROLE = "qp_owner"
"""Owns the schema and every table; runs migrations; never used by the running app."""

RUNTIME_ROLE = "qp_runtime"
"""NOLOGIN, not owner, not superuser, no BYPASSRLS: every app transaction runs as this role."""

PLATFORM_ROLE = "qp_platform"
"""NOLOGIN control-plane role: manages tenant rows and sees no tenant's data (Platform.Admin requests)."""

APP_LOGIN_ROLE = "qp_app"
"""The local login of tenant requests (in Azure, the runtime identity's Entra principal); member of qp_runtime only."""

CONTROL_LOGIN_ROLE = "qp_control"
"""The local login of the control plane (in Azure, the control identity's principal); member of qp_platform only."""

DATABASE_NAME = "quantum"
