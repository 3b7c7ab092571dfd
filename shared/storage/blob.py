# intent_ref: platform.skeleton
"""The blob service client: Azurite by connection string locally, managed identity in Azure."""

from __future__ import annotations

from typing import Any

from azure.storage.blob import BlobServiceClient, ContainerClient, ExponentialRetry

from shared.config import Settings


def blob_service_client(settings: Settings, **client_options: Any) -> BlobServiceClient:
    """A client for the artifacts account; `client_options` tune retries and timeouts."""
    if settings.QP_BLOB_CONNECTION_STRING:
        return BlobServiceClient.from_connection_string(settings.QP_BLOB_CONNECTION_STRING, **client_options)
    from azure.identity import DefaultAzureCredential

    assert settings.QP_BLOB_ACCOUNT_URL  # guaranteed by the settings validator
    return BlobServiceClient(settings.QP_BLOB_ACCOUNT_URL, credential=DefaultAzureCredential(), **client_options)


_containers: dict[tuple[str | None, str | None, str, bool], ContainerClient] = {}
"""The artifacts container's client per (connection string, account URL, container name, for a request), in this
process."""

REQUEST_RETRIES = 2
"""Retries of a blob call that a request waits on (a remote worker's completion, a tenant's export or erasure)."""


def _request_options() -> dict[str, Any]:
    """Quick retries and bounded waits: the SDK's defaults (3 retries after 15, 18 and 24 s) kept a request that
    could not reach storage for about a minute before its 503; with these it answers within seconds and the caller,
    who retries anyway, decides when to try again."""
    return {
        "retry_policy": ExponentialRetry(
            initial_backoff=1, increment_base=2, retry_total=REQUEST_RETRIES, random_jitter_range=1
        ),
        "connection_timeout": 5,
        "read_timeout": 30,
    }


def artifacts_container(settings: Settings) -> ContainerClient:
    """The artifacts container for background work (modules, activities), created on first use (locally; in Azure
    the IaC creates it); the SDK's retries ride out a storage outage of about a minute.

    One client per process and account: a client holds its connection pool (and, in Azure, its credential's
    token), and the SDK's clients are safe to share between threads. Building one per write cost a new connection
    and an existence check per step."""
    return _container(settings, for_request=False)


def request_container(settings: Settings) -> ContainerClient:
    """The artifacts container for calls a request waits on: `REQUEST_RETRIES` quick retries, then the error the
    gateway answers 503 for."""
    return _container(settings, for_request=True)


def _container(settings: Settings, *, for_request: bool) -> ContainerClient:
    key = (
        settings.QP_BLOB_CONNECTION_STRING,
        settings.QP_BLOB_ACCOUNT_URL,
        settings.QP_ARTIFACTS_CONTAINER,
        for_request,
    )
    container = _containers.get(key)
    if container is None:
        options = _request_options() if for_request else {}
        container = blob_service_client(settings, **options).get_container_client(settings.QP_ARTIFACTS_CONTAINER)
        if not container.exists():
            from azure.core.exceptions import ResourceExistsError

            try:
                container.create_container()
            except ResourceExistsError:
                pass  # created concurrently
        container = _containers.setdefault(key, container)  # two first callers at once: both use one client
    return container
