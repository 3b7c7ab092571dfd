# intent_ref: platform.tenants
"""A tenant's name is a DNS-label-like slug (`ab-` and `x--y` were provisioned), its display name holds no control
character nor bidirectional override (they reached terminals and logs as sent), and its allowed_hosts only host names
and IP addresses as the outbound guard compares them (`*`, `0.0.0.0/0`, `"127.0.0.1 "` were stored, and matched
nothing).

Through the app without I/O where the refusal comes before any transaction, as tests/unit/edge_harness.py has it (the
tenant from a stand-in directory cache, the rate token always granted); the allow-list through its check, as
tests/unit/test_ssrf_private_networks.py."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from devhost.identity import SigningKey
from devhost.provision import DEMO_TENANTS
from shared.auth.principal import PLATFORM_ADMIN
from shared.modules.ssrf import check_url
from shared.tenants.models import TenantCreate, TenantUpdate
from shared.tenants.settings import settings_problems
from tests.unit.edge_harness import (  # noqa: F401  # the fixtures client, key, validator
    bearer,
    client,
    key,
    validation_problem,
    validator,
)


@pytest.fixture()
def admin(key: SigningKey) -> dict[str, str]:
    return bearer(key, PLATFORM_ADMIN)


def _refused_at(answer: Any) -> list[str]:
    """The pointers of a 422 validation problem."""
    return [error["pointer"] for error in validation_problem(answer)["errors"]]


def _spec(**fields: Any) -> dict[str, Any]:
    return {"name": "northwind", "entra_tenant_id": str(uuid.uuid4()), **fields}


# ---- the name ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ab-", "x--y", "-ab", "a-", "tenant--123", "a---b"])
def test_a_name_with_a_trailing_or_doubled_hyphen_is_refused(
    client: TestClient, admin: dict[str, str], name: str
) -> None:
    answer = client.post("/api/v1/tenants", json=_spec(name=name), headers=admin)
    assert _refused_at(answer) == ["/name"]


@pytest.mark.parametrize(
    "name", [*DEMO_TENANTS, "northwind", "ab", "a1", "0-9", "brief-1a2b3c4d", "a-b-c", "x" * 63, f"x{'-y' * 31}"]
)
def test_the_names_in_use_are_still_taken(name: str) -> None:
    assert TenantCreate.model_validate(_spec(name=name)).name == name


@pytest.mark.parametrize("name", ["a", "x" * 64, f"x{'-y' * 31}y", "Northwind", "north_wind", ""])
def test_the_other_bounds_of_a_name_stay(name: str) -> None:
    with pytest.raises(ValidationError) as caught:
        TenantCreate.model_validate(_spec(name=name))
    assert [error["loc"] for error in caught.value.errors()] == [("name",)]


# ---- the display name ------------------------------------------------------------------------------------------------


UNSHOWN = {
    "escape": "Acme\x1b[2J\x1b[31mOWNED",
    "newline": "Acme\nINFO forged log line",
    "carriage return": "Acme\rEvil",
    "tab": "Acme\tCorp",
    "DEL": "Acme\x7f",
    "C1 CSI": "Acme\x9b31m",
    "C1 NEL": "Acme\x85",
    "right-to-left override": "Acme\u202egnp.exe",
    "left-to-right embedding": "\u202aAcme",
    "pop directional formatting": "Acme\u202c",
    "first strong isolate": "\u2068Acme",
    "pop directional isolate": "Acme\u2069",
}


@pytest.mark.parametrize("display_name", UNSHOWN.values(), ids=UNSHOWN.keys())
def test_a_display_name_with_control_or_bidi_characters_is_refused(
    client: TestClient, admin: dict[str, str], display_name: str
) -> None:
    answer = client.post("/api/v1/tenants", json=_spec(display_name=display_name), headers=admin)
    assert _refused_at(answer) == ["/display_name"]
    detail = answer.json()["errors"][0]["detail"]
    assert "control characters and bidirectional overrides" in detail and "U+" in detail, detail
    # The character is named by its code point, never echoed to the terminal that shows the answer.
    assert not any(ch in answer.text for ch in "\x1b\x7f\x85\x9b\u202a\u202c\u202e\u2068\u2069")


def test_a_change_of_the_display_name_is_refused_the_same(client: TestClient, admin: dict[str, str]) -> None:
    answer = client.patch(f"/api/v1/tenants/{uuid.uuid4()}", json={"display_name": "Acme\u202e"}, headers=admin)
    assert _refused_at(answer) == ["/display_name"]


@pytest.mark.parametrize(
    "display_name", ["Northwind Traders", "", "Zoë & Søn – Ünïcode", "שלום עולם", "مرحبا", "日本語の名前", "Tenant-123"]
)
def test_printable_display_names_in_any_script_are_taken(display_name: str) -> None:
    assert TenantCreate.model_validate(_spec(display_name=display_name)).display_name == display_name
    assert TenantUpdate.model_validate({"display_name": display_name}).display_name == display_name


# ---- the allow-list ------------------------------------------------------------------------------------------------


MEANINGLESS = [
    "*",
    "*.internal",
    "*.example.com",
    "0.0.0.0/0",
    "10.0.0.0/8",
    "127.0.0.1 ",
    "127.0.0.1\n",
    " api.example.com",
    "api .example.com",
    "api.example.com:443",
    "https://api.example.com",
    "api.example.com/path",
    "[::1]",
    "a..example",
    "-api.example.com",
    ".",
]


@pytest.mark.parametrize("entry", MEANINGLESS)
@pytest.mark.parametrize("allow_private", [False, True])
def test_an_entry_that_is_no_host_is_refused(entry: str, allow_private: bool) -> None:
    problems = settings_problems({"allowed_hosts": ["api.example.com", entry]}, allow_private=allow_private)
    assert [at for at, _ in problems] == ["/settings/allowed_hosts/1"], problems
    assert repr(entry) in problems[0][1] and "not a host name or an IP address" in problems[0][1], problems


@pytest.mark.parametrize(
    "entry",
    ["api.example.com", "API.Example.COM.", "a_b.example", "93.184.215.14", "2606:4700::1111", "bücher.example"],
)
def test_host_names_and_addresses_are_taken_and_match_as_the_guard_compares_them(entry: str) -> None:
    assert settings_problems({"allowed_hosts": [entry]}, allow_private=False) == []
    host = f"[{entry}]" if ":" in entry else entry
    # Allowed, the entry opens its host's private addresses (with private networks open): it matches the URL's host.
    target = check_url(f"https://{host}/", [entry], lambda h, p: ["10.0.0.1"], allow_private=True)
    assert target.addresses == ("10.0.0.1",)


@pytest.mark.parametrize("entry", ["127.0.0.1", "::1", "localhost", "db.internal", "127.1"])
def test_private_hosts_are_still_a_matter_of_the_deployment(entry: str) -> None:
    assert settings_problems({"allowed_hosts": [entry]}, allow_private=True) == []
    assert settings_problems({"allowed_hosts": [entry]}, allow_private=False) != []
