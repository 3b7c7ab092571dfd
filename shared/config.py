# intent_ref: platform.settings
"""The one settings class: every app setting the platform reads, validated once, failing fast."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class SettingsError(RuntimeError):
    """Raised at start-up when a setting is missing or malformed; the message names each one."""


class Settings(BaseSettings):
    """App settings; field names are the app-setting names (environment variables)."""

    model_config = SettingsConfigDict(extra="ignore", case_sensitive=True, frozen=True)

    QP_DATABASE_URL: str = Field(min_length=1, description="Runtime Postgres connection (non-owner login).")
    QP_DATABASE_OWNER_URL: str | None = Field(
        default=None, description="Owner connection used only by the migration runner."
    )
    QP_DATABASE_ENTRA_AUTH: bool = Field(
        default=False, description="Use a managed-identity token as the Postgres password (Azure)."
    )
    QP_DATABASE_POOL_MAX: int = Field(default=10, ge=1, le=200)

    QP_BLOB_CONNECTION_STRING: str | None = Field(default=None, description="Local only (Azurite).")
    QP_BLOB_ACCOUNT_URL: str | None = Field(default=None, description="Azure: identity-based blob endpoint.")
    QP_ARTIFACTS_CONTAINER: str = Field(default="artifacts", pattern=r"^[a-z0-9](?:[a-z0-9-]{1,61}[a-z0-9])$")

    QP_TASK_HUB: str = Field(default="QuantumLocal", pattern=r"^[A-Za-z][A-Za-z0-9]{2,44}$")
    QP_EVENTHUB_BACKEND: Literal["local", "azure"] = "local"
    EventHubConnection__fullyQualifiedNamespace: str | None = None

    QP_MAX_BODY_BYTES: int = Field(default=1024 * 1024, ge=1024)
    QP_ENVIRONMENT: Literal["local", "dev", "prod"] = "local"
    APPLICATIONINSIGHTS_CONNECTION_STRING: str | None = None

    @model_validator(mode="after")
    def _one_blob_endpoint(self) -> Settings:
        if bool(self.QP_BLOB_CONNECTION_STRING) == bool(self.QP_BLOB_ACCOUNT_URL):
            raise ValueError("set exactly one of QP_BLOB_CONNECTION_STRING or QP_BLOB_ACCOUNT_URL")
        if self.QP_EVENTHUB_BACKEND == "azure" and not self.EventHubConnection__fullyQualifiedNamespace:
            raise ValueError(
                "EventHubConnection__fullyQualifiedNamespace is required when QP_EVENTHUB_BACKEND=azure"
            )
        return self


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
