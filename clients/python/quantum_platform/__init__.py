# intent_ref: platform.gateway
"""Python client of the Quantum Platform API."""

from quantum_platform.client import DEFAULT_URL, TERMINAL_EVENTS, ApiResponse, AsyncClient, Client, RetryWait
from quantum_platform.credentials import AzureCredential, Credential, DevhostCredential, StaticToken
from quantum_platform.errors import (
    BadRequest,
    Conflict,
    CredentialError,
    Forbidden,
    NotFound,
    PlatformError,
    ProblemError,
    RateLimited,
    Unauthorized,
    Unavailable,
    UnexpectedAnswer,
    ValidationFailed,
)

__all__ = [
    "DEFAULT_URL",
    "TERMINAL_EVENTS",
    "ApiResponse",
    "AsyncClient",
    "AzureCredential",
    "BadRequest",
    "Client",
    "Conflict",
    "Credential",
    "CredentialError",
    "DevhostCredential",
    "Forbidden",
    "NotFound",
    "PlatformError",
    "ProblemError",
    "RateLimited",
    "RetryWait",
    "StaticToken",
    "Unauthorized",
    "Unavailable",
    "UnexpectedAnswer",
    "ValidationFailed",
]
