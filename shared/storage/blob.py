# intent_ref: platform.skeleton
"""The blob service client: Azurite by connection string locally, managed identity in Azure."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient, ContainerClient, ExponentialRetry

from shared.config import Settings

T = TypeVar("T")


class StorageCall(Protocol):
    """How a caller bounds one storage operation: `call(**options)` (the options are the SDK's per-call keywords, such
    as `retry_total` and `timeout`), `what` naming it in the failure the bound ends it with."""

    def __call__(self, what: str, call: Callable[..., T], /) -> T:
        """The operation's result, or the caller's failure once its bound is reached."""
        ...


def unbounded(what: str, call: Callable[..., T], /) -> T:  # noqa: ARG001
    """The operation under the client's own retry policy and timeouts (no bound of the caller's)."""
    return call()


def blob_service_client(settings: Settings, **client_options: Any) -> BlobServiceClient:
    """A client for the artifacts account; `client_options` tune retries and timeouts."""
    if settings.QP_BLOB_CONNECTION_STRING:
        return BlobServiceClient.from_connection_string(settings.QP_BLOB_CONNECTION_STRING, **client_options)
    from azure.identity import DefaultAzureCredential

    assert settings.QP_BLOB_ACCOUNT_URL  # guaranteed by the settings validator
    return BlobServiceClient(settings.QP_BLOB_ACCOUNT_URL, credential=DefaultAzureCredential(), **client_options)


_Key = tuple[str | None, str | None, str, bool]
_containers: dict[_Key, ContainerClient] = {}
"""The artifacts container's client per (connection string, account URL, container name, for a request), in this
process."""
_checked: set[_Key] = set()
"""The clients whose container was found (or created) in this process: a check that failed is made again by the next
caller, with the same client."""

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


def artifacts_container(settings: Settings, *, within: StorageCall = unbounded) -> ContainerClient:
    """The artifacts container for background work (modules, activities), created on first use (locally; in Azure
    the IaC creates it); the SDK's retries ride out a storage outage of about a minute.

    One client per process and account: a client holds its connection pool (and, in Azure, its credential's
    token), and the SDK's clients are safe to share between threads. Building one per write cost a new connection
    and an existence check per step. `within` bounds that first check and creation: a module passes its attempt's
    deadline, since the SDK's own retries held its thread for minutes past it when storage was away (ADR 0026)."""
    return _container(settings, for_request=False, within=within)


def request_container(settings: Settings) -> ContainerClient:
    """The artifacts container for calls a request waits on: `REQUEST_RETRIES` quick retries, then the error the
    gateway answers 503 for."""
    return _container(settings, for_request=True)


def _container(settings: Settings, *, for_request: bool, within: StorageCall = unbounded) -> ContainerClient:
    key = (
        settings.QP_BLOB_CONNECTION_STRING,
        settings.QP_BLOB_ACCOUNT_URL,
        settings.QP_ARTIFACTS_CONTAINER,
        for_request,
    )
    container = _containers.get(key)
    if container is None:
        options = _request_options() if for_request else {}
        built = blob_service_client(settings, **options).get_container_client(settings.QP_ARTIFACTS_CONTAINER)
        container = _containers.setdefault(key, built)  # two first callers at once: both use one client
    if key not in _checked:
        # Made before the client is handed out, but kept whatever its outcome: a check cut off by its caller's bound
        # is made again by the next caller, and the process still holds one client (and one connection pool).
        _ensure(container, within)
        _checked.add(key)
    return container


def _ensure(container: ContainerClient, within: StorageCall) -> None:
    """Create the container unless it is there (two first callers at once may both try)."""
    name = container.container_name
    if within(f"the check of container {name!r}", lambda **options: container.exists(**options)):
        return
    try:
        within(f"the creation of container {name!r}", lambda **options: container.create_container(**options))
    except ResourceExistsError:
        pass  # created concurrently
