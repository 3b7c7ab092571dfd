# intent_ref: platform.database
"""In Azure each pool's password is its own identity's token: the control pool never borrows the runtime's."""

from __future__ import annotations

from typing import Any

import azure.identity
import pytest

from shared.config import Settings
from shared.db import pool as pool_module

_AZURE = {
    "QP_DATABASE_URL": "host=db dbname=quantum user=id-dev-x",
    "QP_DATABASE_CONTROL_URL": "host=db dbname=quantum user=id-dev-x-control",
    "QP_DATABASE_CONTROL_CLIENT_ID": "00000000-0000-0000-0000-00000000c0de",
    "QP_DATABASE_ENTRA_AUTH": True,
    "QP_BLOB_ACCOUNT_URL": "https://x.blob.core.windows.net",
}


class _Token:
    def __init__(self, token: str) -> None:
        self.token = token


class _Credential:
    """Records how it was built; its token names it."""

    built: list[tuple[str, dict[str, Any]]] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.built.append((type(self).__name__, kwargs))

    def get_token(self, *scopes: str) -> _Token:
        return _Token(f"{type(self).__name__}:{self.kwargs.get('client_id', 'default')}")


class ManagedIdentityCredential(_Credential):
    pass


class DefaultAzureCredential(_Credential):
    pass


@pytest.fixture(autouse=True)
def _fake_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    _Credential.built = []
    monkeypatch.setattr(azure.identity, "ManagedIdentityCredential", ManagedIdentityCredential)
    monkeypatch.setattr(azure.identity, "DefaultAzureCredential", DefaultAzureCredential)


def test_the_control_pool_asks_for_the_control_identitys_token() -> None:
    settings = Settings.model_validate(_AZURE)
    kwargs = pool_module._connection_kwargs(settings, settings.QP_DATABASE_CONTROL_CLIENT_ID)
    assert kwargs()["password"] == "ManagedIdentityCredential:00000000-0000-0000-0000-00000000c0de"
    assert _Credential.built == [("ManagedIdentityCredential", {"client_id": "00000000-0000-0000-0000-00000000c0de"})]


def test_the_app_pool_keeps_the_default_credential() -> None:
    settings = Settings.model_validate(_AZURE)
    kwargs = pool_module._connection_kwargs(settings)
    assert kwargs()["password"] == "DefaultAzureCredential:default"


def test_locally_no_token_is_asked_for() -> None:
    local = Settings.model_validate(
        {
            "QP_DATABASE_URL": "host=x",
            "QP_DATABASE_CONTROL_URL": "host=x",
            "QP_BLOB_CONNECTION_STRING": "UseDevelopmentStorage=true",
        }
    )
    assert "password" not in pool_module._connection_kwargs(local, "ignored")
    assert _Credential.built == []
