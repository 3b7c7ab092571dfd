# intent_ref: platform.identity
"""The process-wide TokenValidator, built once from the settings."""

from __future__ import annotations

from functools import lru_cache

from shared.auth.tokens import TokenValidator
from shared.config import SettingsError, get_settings


@lru_cache(maxsize=1)
def get_token_validator() -> TokenValidator:
    """The validator for QP_AUTH_METADATA_URL / QP_AUTH_AUDIENCE; one per process so its key cache is shared."""
    settings = get_settings()
    if not settings.QP_AUTH_METADATA_URL:
        raise SettingsError(
            "QP_AUTH_METADATA_URL is empty: set it to the issuer's OpenID metadata URL "
            "(the devhost sets it to its own issuer's when it starts the app)"
        )
    audiences = [part.strip() for part in settings.QP_AUTH_AUDIENCE.split(",") if part.strip()]
    if not audiences:
        raise SettingsError("QP_AUTH_AUDIENCE names no audience")
    try:
        return TokenValidator(
            settings.QP_AUTH_METADATA_URL,
            audiences,
            leeway_s=settings.QP_AUTH_LEEWAY_S,
            max_lifetime_s=settings.QP_AUTH_MAX_TOKEN_LIFETIME_S,
            jwks_cooldown_s=settings.QP_AUTH_JWKS_COOLDOWN_S,
            operator_tenant=settings.QP_OPERATOR_ENTRA_TENANT_ID,
        )
    except ValueError as exc:
        # A plain-http metadata URL to a remote host is a setting mistake; report it as one.
        raise SettingsError(f"QP_AUTH_METADATA_URL: {exc}") from None
