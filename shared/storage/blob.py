# intent_ref: platform.skeleton
"""The blob service client: Azurite by connection string locally, managed identity in Azure."""

from __future__ import annotations

from typing import Any

from azure.storage.blob import BlobServiceClient, ContainerClient

from shared.config import Settings


def blob_service_client(settings: Settings, **client_options: Any) -> BlobServiceClient:
    """A client for the artifacts account; `client_options` tune retries and timeouts."""
    if settings.QP_BLOB_CONNECTION_STRING:
        return BlobServiceClient.from_connection_string(settings.QP_BLOB_CONNECTION_STRING, **client_options)
    from azure.identity import DefaultAzureCredential

    assert settings.QP_BLOB_ACCOUNT_URL  # guaranteed by the settings validator
    return BlobServiceClient(settings.QP_BLOB_ACCOUNT_URL, credential=DefaultAzureCredential(), **client_options)


_containers: dict[tuple[str | None, str | None, str], ContainerClient] = {}
"""The artifacts container's client per (connection string, account URL, container name), in this process."""


def artifacts_container(settings: Settings) -> ContainerClient:
    """The artifacts container, created on first use (locally; in Azure the IaC creates it).

    One client per process and account: a client holds its connection pool (and, in Azure, its credential's
    token), and the SDK's clients are safe to share between threads. Building one per write cost a new connection
    and an existence check per step."""
    key = (settings.QP_BLOB_CONNECTION_STRING, settings.QP_BLOB_ACCOUNT_URL, settings.QP_ARTIFACTS_CONTAINER)
    container = _containers.get(key)
    if container is None:
        container = blob_service_client(settings).get_container_client(settings.QP_ARTIFACTS_CONTAINER)
        if not container.exists():
            from azure.core.exceptions import ResourceExistsError

            try:
                container.create_container()
            except ResourceExistsError:
                pass  # created concurrently
        container = _containers.setdefault(key, container)  # two first callers at once: both use one client
    return container
