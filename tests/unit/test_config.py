# intent_ref: platform.settings
"""Settings fail fast and name the offending setting."""

from __future__ import annotations

import pytest

from shared.accepted_json import MAX_DEPTH
from shared.config import SettingsError, load_settings

OPERATOR = "00000000-0000-0000-0000-0000000000aa"
_BASE = {
    "QP_DATABASE_URL": "host=/tmp dbname=quantum user=qp_app",
    "QP_DATABASE_CONTROL_URL": "host=/tmp dbname=quantum user=qp_control",
    "QP_BLOB_CONNECTION_STRING": "UseDevelopmentStorage=true",
}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "QP_DATABASE_URL",
        "QP_DATABASE_CONTROL_URL",
        "QP_DATABASE_CONTROL_CLIENT_ID",
        "QP_DATABASE_ENTRA_AUTH",
        "QP_ENVIRONMENT",
        "QP_OPERATOR_ENTRA_TENANT_ID",
        "QP_BLOB_CONNECTION_STRING",
        "QP_BLOB_ACCOUNT_URL",
        "QP_TASK_HUB",
        "QP_DATABASE_POOL_MAX",
        "QP_EVENTHUB_BACKEND",
        "EventHubConnection__fullyQualifiedNamespace",
    ):
        monkeypatch.delenv(name, raising=False)


_DEV = {"QP_ENVIRONMENT": "dev", "QP_SEALING_KEY": "k" * 48, "QP_OPERATOR_ENTRA_TENANT_ID": OPERATOR}
"""What outside local development requires besides the base."""


def _set(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for key, value in values.items():
        monkeypatch.setenv(key, value)


def test_valid_settings_load(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch, **_BASE)
    settings = load_settings()
    assert settings.QP_DATABASE_URL == _BASE["QP_DATABASE_URL"]
    assert settings.QP_MAX_BODY_BYTES == 1024 * 1024


def test_missing_database_url_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch, QP_BLOB_CONNECTION_STRING="UseDevelopmentStorage=true")
    with pytest.raises(SettingsError, match="QP_DATABASE_URL"):
        load_settings()


def test_missing_control_url_is_named_and_never_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch, **{k: v for k, v in _BASE.items() if k != "QP_DATABASE_CONTROL_URL"})
    with pytest.raises(SettingsError, match="QP_DATABASE_CONTROL_URL"):
        load_settings()


def test_entra_auth_needs_the_control_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch, **_BASE, QP_DATABASE_ENTRA_AUTH="true")
    with pytest.raises(SettingsError, match="QP_DATABASE_CONTROL_CLIENT_ID"):
        load_settings()
    _set(monkeypatch, QP_DATABASE_CONTROL_CLIENT_ID="00000000-0000-0000-0000-000000000001")
    assert load_settings().QP_DATABASE_CONTROL_CLIENT_ID == "00000000-0000-0000-0000-000000000001"


def test_outside_local_development_the_two_pools_are_two_logins(monkeypatch: pytest.MonkeyPatch) -> None:
    same = "host=db dbname=quantum user=id-dev-x"
    dev = {**_BASE, **_DEV, "QP_DATABASE_URL": same, "QP_DATABASE_CONTROL_URL": same}
    _set(monkeypatch, **dev)
    with pytest.raises(SettingsError, match="different user"):
        load_settings()
    _set(monkeypatch, QP_DATABASE_CONTROL_URL="host=db dbname=quantum")  # names no user at all
    with pytest.raises(SettingsError, match="different user"):
        load_settings()
    _set(monkeypatch, QP_DATABASE_CONTROL_URL="host=db dbname=quantum user=id-control-dev-x")
    assert load_settings().QP_DATABASE_CONTROL_URL.endswith("id-control-dev-x")
    # Locally (the devhost's external-server mode) one login may serve both.
    _set(monkeypatch, QP_ENVIRONMENT="local", QP_DATABASE_CONTROL_URL=same)
    assert load_settings().QP_DATABASE_CONTROL_URL == same


def test_malformed_number_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch, **_BASE, QP_DATABASE_POOL_MAX="many")
    with pytest.raises(SettingsError, match="QP_DATABASE_POOL_MAX"):
        load_settings()


def test_the_registry_depth_limit_stops_where_the_json_parser_does(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QP_REGISTRY_MAX_DEPTH", str(MAX_DEPTH))
    _set(monkeypatch, **_BASE)
    assert load_settings().QP_REGISTRY_MAX_DEPTH == MAX_DEPTH
    monkeypatch.setenv("QP_REGISTRY_MAX_DEPTH", str(MAX_DEPTH + 1))  # deeper would be refused before validation
    with pytest.raises(SettingsError, match="QP_REGISTRY_MAX_DEPTH"):
        load_settings()


def test_malformed_task_hub_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch, **_BASE, QP_TASK_HUB="no spaces allowed")
    with pytest.raises(SettingsError, match="QP_TASK_HUB"):
        load_settings()


def test_blob_endpoint_must_be_exactly_one(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch, **_BASE, QP_BLOB_ACCOUNT_URL="https://acct.blob.core.windows.net")
    with pytest.raises(SettingsError, match="QP_BLOB_CONNECTION_STRING or QP_BLOB_ACCOUNT_URL"):
        load_settings()


def test_azure_event_hubs_need_a_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch, **_BASE, QP_EVENTHUB_BACKEND="azure")
    with pytest.raises(SettingsError, match="EventHubConnection__fullyQualifiedNamespace"):
        load_settings()


def test_outside_local_development_the_operators_tenant_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without it any customer's Platform.Admin would count: its administrators assign the API's roles themselves.
    _set(monkeypatch, **{**_BASE, **_DEV, "QP_OPERATOR_ENTRA_TENANT_ID": ""})
    with pytest.raises(SettingsError, match="QP_OPERATOR_ENTRA_TENANT_ID is required"):
        load_settings()
    _set(monkeypatch, QP_OPERATOR_ENTRA_TENANT_ID="not-a-guid")
    with pytest.raises(SettingsError, match="QP_OPERATOR_ENTRA_TENANT_ID"):
        load_settings()
    _set(monkeypatch, QP_OPERATOR_ENTRA_TENANT_ID=OPERATOR)
    assert str(load_settings().QP_OPERATOR_ENTRA_TENANT_ID) == OPERATOR
    _set(monkeypatch, QP_ENVIRONMENT="local", QP_OPERATOR_ENTRA_TENANT_ID="")
    assert load_settings().QP_OPERATOR_ENTRA_TENANT_ID is None


def test_the_operators_tenant_is_never_the_nil_uuid(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tokens naming the nil UUID are refused at the edge: the control plane would start with no administrator.
    for spelling in ("00000000-0000-0000-0000-000000000000", "00000000000000000000000000000000"):
        _set(monkeypatch, **{**_BASE, **_DEV, "QP_OPERATOR_ENTRA_TENANT_ID": spelling})
        with pytest.raises(SettingsError, match="nil UUID"):
            load_settings()
