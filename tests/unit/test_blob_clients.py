# intent_ref: platform.hardening
"""A blob call that a request waits on gives up after a few quick retries, and the gateway answers 503 for it."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from azure.core.exceptions import AzureError

from devhost.services import AZURITE_KEY
from shared.api.problems import unavailable_dependency
from shared.config import Settings
from shared.storage import blob


class _Dropping:
    """A TCP server that accepts each connection and closes it unanswered, counting them."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            connection.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def dropping() -> Iterator[_Dropping]:
    server = _Dropping()
    yield server
    server.close()


def _settings(port: int) -> Settings:
    return Settings.model_construct(
        QP_BLOB_CONNECTION_STRING=(
            f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
        ),
        QP_BLOB_ACCOUNT_URL=None,
        QP_ARTIFACTS_CONTAINER="artifacts",
    )


def test_a_request_blob_call_stops_after_its_retries_and_answers_503(dropping: _Dropping) -> None:
    with pytest.raises(AzureError) as raised:
        blob.request_container(_settings(dropping.port))
    assert dropping.accepted == 1 + blob.REQUEST_RETRIES
    assert unavailable_dependency(raised.value) == "blob storage"


def test_the_request_client_retries_quickly_and_the_background_one_rides_out_a_minute() -> None:
    request = blob.blob_service_client(_settings(1), **blob._request_options())
    background = blob.blob_service_client(_settings(1))
    assert (request._config.retry_policy.total_retries, request._config.retry_policy.initial_backoff) == (2, 1)
    assert (background._config.retry_policy.total_retries, background._config.retry_policy.initial_backoff) == (3, 15)
