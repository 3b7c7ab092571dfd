# intent_ref: platform.settings
"""The one settings class: every app setting the platform reads, validated once, failing fast."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal
from uuid import UUID

import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIN_SEALING_KEY_CHARS = 32
"""The shortest sealing key material accepted (`openssl rand -base64 48` gives 64 characters)."""


class SettingsError(RuntimeError):
    """Raised at start-up when a setting is missing or malformed; the message names each one."""


class Settings(BaseSettings):
    """App settings; field names are the app-setting names (environment variables)."""

    model_config = SettingsConfigDict(extra="ignore", case_sensitive=True, frozen=True)

    QP_DATABASE_URL: str = Field(
        min_length=1, description="Postgres connection of tenant requests (non-owner login, member of qp_runtime)."
    )
    QP_DATABASE_CONTROL_URL: str = Field(
        min_length=1, description="Postgres connection of the control plane (its own login, member of qp_platform)."
    )
    QP_DATABASE_OWNER_URL: str | None = Field(
        default=None, description="Owner connection used only by the migration runner."
    )
    QP_DATABASE_ENTRA_AUTH: bool = Field(
        default=False, description="Use a managed-identity token as the Postgres password (Azure)."
    )
    QP_DATABASE_CONTROL_CLIENT_ID: str | None = Field(
        default=None, description="Azure: client id of the control plane's identity (its token is the password)."
    )
    QP_DATABASE_POOL_MAX: int = Field(default=10, ge=1, le=200)
    QP_DATABASE_POOL_TIMEOUT_S: float = Field(
        default=3.0,
        gt=0,
        le=60,
        description="How long a request waits for a pooled connection before it is answered 503 with Retry-After.",
    )
    QP_DATABASE_CONNECT_TIMEOUT_S: int = Field(
        default=2,
        ge=1,
        le=60,
        description="How long opening a new database connection may take (an outage fails "
        "fast instead of holding requests).",
    )
    QP_TENANT_MAX_CONCURRENT_REQUESTS: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="Requests of one tenant in flight at once per instance; unset means half the tenant pool, so "
        "one tenant's burst always leaves connections for the others.",
    )

    QP_BLOB_CONNECTION_STRING: str | None = Field(default=None, description="Local only (Azurite).")
    QP_BLOB_ACCOUNT_URL: str | None = Field(default=None, description="Azure: identity-based blob endpoint.")
    QP_ARTIFACTS_CONTAINER: str = Field(default="artifacts", pattern=r"^[a-z0-9](?:[a-z0-9-]{1,61}[a-z0-9])$")

    QP_TASK_HUB: str = Field(default="QuantumLocal", pattern=r"^[A-Za-z][A-Za-z0-9]{2,44}$")
    QP_EVENTHUB_BACKEND: Literal["local", "azure"] = "local"
    EventHubConnection__fullyQualifiedNamespace: str | None = None

    QP_AUDIT_BACKEND: Literal["postgres", "cosmos"] = Field(
        default="postgres", description="Where audit records go: Postgres locally, Cosmos DB in Azure."
    )
    QP_COSMOS_ENDPOINT: str | None = Field(
        default=None, description="Cosmos DB account endpoint (https://...); reached with the app's identity."
    )
    QP_COSMOS_DATABASE: str = Field(default="quantum", min_length=1, max_length=255)
    QP_COSMOS_AUDIT_CONTAINER: str = Field(default="audit", min_length=1, max_length=255)

    QP_RATE_LIMIT_PER_MINUTE: int = Field(
        default=600, ge=1, description="Platform default request rate per tenant; a tenant's quotas override it."
    )
    QP_RATE_LIMIT_BURST: int = Field(
        default=100, ge=1, description="Platform default bucket size (burst) per tenant; quotas override it."
    )

    QP_MAX_BODY_BYTES: int = Field(default=1024 * 1024, ge=1024)
    QP_REGISTRY_MAX_DEFINITION_BYTES: int = Field(default=256 * 1024, ge=1024, le=16 * 1024 * 1024)
    QP_REGISTRY_MAX_STEPS: int = Field(default=200, ge=1, le=10_000)
    # At most what the accepted-JSON parser lets through (shared.accepted_json.MAX_DEPTH): a higher limit would
    # promise definitions that every request refuses before validation.
    QP_REGISTRY_MAX_DEPTH: int = Field(default=32, ge=4, le=128)
    QP_PAYLOAD_INLINE_MAX_BYTES: int = Field(
        default=64 * 1024,
        ge=1024,
        le=1024 * 1024,
        description="A step output larger than this (as JSON) is stored as a blob and referenced.",
    )
    QP_TASK_TOKEN_TTL_S: int = Field(
        default=24 * 3600, ge=60, le=30 * 24 * 3600, description="How long a remote step's task token is valid."
    )
    QP_DISPATCH_RESULT_WAIT_MS: int = Field(
        default=250,
        ge=0,
        le=5000,
        description="How long a dispatch of built-in steps waits for their results to answer them itself (ADR 0034); "
        "0 never waits.",
    )
    QP_DEFAULT_MAX_CONCURRENT_EXECUTIONS: int = Field(
        default=100, ge=1, le=100_000, description="A tenant's concurrent executions when its quota sets none."
    )
    QP_MAX_ORCHESTRATION_INPUT_BYTES: int = Field(
        default=1_000_000,
        ge=4096,
        le=64 * 1024 * 1024,
        description="The largest orchestration input a start hands the task hub, as the Durable client posts it "
        "(JSON, non-ASCII escaped, posted as a JSON string): a larger start is refused (413) before anything is "
        "recorded. Below the Durable "
        "Task Scheduler's message ceiling of 1 MiB, with room for the message's framing (ADR 0014, 0024).",
    )
    QP_DEFAULT_MAX_WEBHOOK_SUBSCRIPTIONS: int = Field(
        default=25, ge=1, le=10_000, description="A tenant's webhook subscriptions when its quota sets none."
    )
    QP_EVENT_STREAM_KEEPALIVE_S: float = Field(
        default=15.0,
        ge=0.05,
        le=120.0,
        description="An event stream with nothing to send sends a keep-alive comment this often (proxies and load "
        "balancers close connections idle for 4 minutes).",
    )
    QP_EVENT_STREAM_MAX_S: float = Field(
        default=220.0,
        ge=1.0,
        le=225.0,
        description="An event stream ends after this long (below the 230 s Azure's front end allows an HTTP function); "
        "its client resumes with Last-Event-ID.",
    )
    QP_EVENT_STREAMS_PER_TENANT: int = Field(
        default=100,
        ge=1,
        le=100_000,
        description="Event streams one tenant may hold open per instance; more are answered 429 too-many-streams. "
        "A stream whose client does not read may hold up to about 0.7 MiB of the instance (ADR 0031): 100 keep one "
        "tenant's to about 70 MiB.",
    )
    QP_ALLOW_PRIVATE_NETWORK_HOSTS: bool = Field(
        default=False,
        description="Local development only: a tenant's allowed_hosts may name loopback or private hosts, and "
        "outbound steps may reach them. Off in Azure, where those are the platform's own services.",
    )
    QP_ENVIRONMENT: Literal["local", "dev", "prod"] = "local"
    QP_OPERATOR_ENTRA_TENANT_ID: UUID | None = Field(
        default=None,
        description="The platform operators' own Entra tenant: only its tokens' Platform.Admin role counts. The API "
        "is multi-tenant and each customer's administrators assign its app roles in their own directory, so without "
        "this any customer could give itself the control plane. Required outside local development (in Azure the "
        "deployment's own tenant); unset locally, every tenant's Platform.Admin counts.",
    )
    QP_SEALING_KEY: SecretStr | None = Field(
        default=None,
        description="Key material (at least 32 characters) that seals the secrets the database keeps (webhook signing "
        "secrets, task-token keys) so that the database alone does not reveal them; in Azure a Key Vault reference. "
        "Required outside local development, where a fixed development key stands in.",
    )
    QP_SEALING_KEY_PREVIOUS: SecretStr | None = Field(
        default=None,
        description="The sealing key before a rotation: values sealed with it still open, and the sealing timer "
        "seals them again with QP_SEALING_KEY. Set only while a rotation is under way (ADR 0040).",
    )
    APPLICATIONINSIGHTS_CONNECTION_STRING: str | None = Field(
        default=None,
        description="Application Insights: when set, traces, metrics and the app's logs go there (OpenTelemetry).",
    )
    QP_TELEMETRY_SQL_SPANS: bool = Field(
        default=False,
        description="A dependency span per SQL statement (psycopg instrumentation): turn on to see where a slow "
        "request spends its time; it costs more than half the throughput of a busy instance (docs/performance.md).",
    )
    QP_TELEMETRY_FILE: str | None = Field(
        default=None,
        description="Local runs: append spans and metrics as JSON lines to this file when no connection string is "
        "set (`python -m devhost trace <execution>` prints one execution's trace from it).",
    )

    QP_AUTH_METADATA_URL: str = Field(
        default="",
        description="OpenID metadata URL of the token issuer, e.g. Entra's "
        "https://login.microsoftonline.com/organizations/v2.0/.well-known/openid-configuration; "
        "empty means the devhost fills it with its own issuer's.",
    )
    QP_AUTH_AUDIENCE: str = Field(
        default="api://quantum-platform",
        min_length=1,
        description="Accepted token audiences (the API's client id and/or app id URI), comma-separated.",
    )
    QP_AUTH_MAX_TOKEN_LIFETIME_S: int = Field(
        default=2 * 3600,
        ge=300,
        le=48 * 3600,
        description="Longest accepted access-token lifetime (exp - iat, or exp - nbf); Entra issues 60-90 minutes.",
    )
    QP_AUTH_LEEWAY_S: int = Field(30, ge=0, le=300, description="Clock skew allowed on exp/nbf/iat, seconds.")
    QP_AUTH_JWKS_COOLDOWN_S: float = Field(
        60, ge=1, description="Minimum seconds between JWKS refetches triggered by an unknown signing key id."
    )

    @field_validator("QP_SEALING_KEY", "QP_SEALING_KEY_PREVIOUS", "QP_OPERATOR_ENTRA_TENANT_ID", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # local.settings.json leaves a setting empty to mean unset.
        return None if value == "" else value

    @model_validator(mode="after")
    def _one_blob_endpoint(self) -> Settings:
        if bool(self.QP_BLOB_CONNECTION_STRING) == bool(self.QP_BLOB_ACCOUNT_URL):
            raise ValueError("set exactly one of QP_BLOB_CONNECTION_STRING or QP_BLOB_ACCOUNT_URL")
        if self.QP_EVENTHUB_BACKEND == "azure" and not self.EventHubConnection__fullyQualifiedNamespace:
            raise ValueError("EventHubConnection__fullyQualifiedNamespace is required when QP_EVENTHUB_BACKEND=azure")
        if self.QP_AUDIT_BACKEND == "cosmos" and not self.QP_COSMOS_ENDPOINT:
            raise ValueError("QP_COSMOS_ENDPOINT is required when QP_AUDIT_BACKEND=cosmos")
        if self.QP_COSMOS_ENDPOINT and not self.QP_COSMOS_ENDPOINT.startswith("https://"):
            raise ValueError("QP_COSMOS_ENDPOINT must be an https:// URL")
        self._check_control_login()
        self._check_sealing_keys()
        if self.QP_OPERATOR_ENTRA_TENANT_ID is not None and self.QP_OPERATOR_ENTRA_TENANT_ID.int == 0:
            # Tokens naming the nil UUID are refused at the edge, so the control plane would have no administrator.
            raise ValueError("QP_OPERATOR_ENTRA_TENANT_ID is the nil UUID, which Entra never issues as a tenant id")
        if self.QP_OPERATOR_ENTRA_TENANT_ID is None and self.QP_ENVIRONMENT != "local":
            raise ValueError(
                "QP_OPERATOR_ENTRA_TENANT_ID is required outside local development: the Entra tenant whose "
                "Platform.Admin role may manage tenants"
            )
        return self

    def _check_sealing_keys(self) -> None:
        if self.QP_SEALING_KEY is None and self.QP_ENVIRONMENT != "local":
            raise ValueError("QP_SEALING_KEY is required outside local development (a Key Vault reference in Azure)")
        for name in ("QP_SEALING_KEY", "QP_SEALING_KEY_PREVIOUS"):
            value = getattr(self, name)
            if value is None:
                continue
            material = value.get_secret_value()
            # An App Service Key Vault reference that could not be resolved arrives as its own text.
            if material.startswith("@Microsoft.KeyVault("):
                raise ValueError(
                    f"{name} is an unresolved Key Vault reference: grant the app's identity 'Key Vault Secrets User' "
                    "on the vault and create the secret"
                )
            if len(material) < MIN_SEALING_KEY_CHARS:
                raise ValueError(f"{name} must be at least {MIN_SEALING_KEY_CHARS} characters of random key material")
        previous = self.QP_SEALING_KEY_PREVIOUS
        if previous is not None and self.QP_SEALING_KEY is None:
            raise ValueError("QP_SEALING_KEY_PREVIOUS needs QP_SEALING_KEY (the key it was rotated to)")

    def _check_control_login(self) -> None:
        if self.QP_DATABASE_ENTRA_AUTH and not self.QP_DATABASE_CONTROL_CLIENT_ID:
            raise ValueError("QP_DATABASE_CONTROL_CLIENT_ID is required when QP_DATABASE_ENTRA_AUTH=true")
        # Outside local development the two pools must be two logins: one login would be able to reach both roles.
        app, control = _login_of(self.QP_DATABASE_URL), _login_of(self.QP_DATABASE_CONTROL_URL)
        if self.QP_ENVIRONMENT != "local" and (app is None or control is None or app == control):
            raise ValueError("QP_DATABASE_CONTROL_URL must name a different user than QP_DATABASE_URL")


def _login_of(conninfo: str) -> str | None:
    """The user a connection string names (None when it names none or cannot be parsed)."""
    try:
        user = conninfo_to_dict(conninfo).get("user")
    except psycopg.ProgrammingError:
        return None
    return str(user) if user else None


def load_settings() -> Settings:
    """Read and validate the settings now, turning pydantic's report into one clear message."""
    try:
        return Settings()  # values come from the environment
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]) or "settings"
            problems.append(f"{name}: {err['msg']}")
        raise SettingsError("invalid app settings: " + "; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, loaded once."""
    return load_settings()
