# intent_ref: platform.hardening
"""Sealed secrets (ADR 0040): a value opens only under a key of ours and for the owner it was sealed for, and the
settings refuse to run without a usable key outside local development."""

from __future__ import annotations

import uuid

import pytest

from shared.config import Settings
from shared.sealing import SEALED_PREFIX, SealedFor, Sealer, SealError, is_sealed

KEY = "k" * 48
OTHER_KEY = "o" * 48
TENANT = uuid.uuid4()
OWNER = SealedFor("webhook-secret", TENANT, "subscription-1")
BASE = {
    "QP_DATABASE_URL": "host=db user=qp_app",
    "QP_DATABASE_CONTROL_URL": "host=db user=qp_control",
    "QP_BLOB_CONNECTION_STRING": "UseDevelopmentStorage=true",
}


def test_a_sealed_value_opens_to_the_secret_and_shows_nothing_of_it() -> None:
    sealer = Sealer(KEY)
    sealed = sealer.seal(b"whsec_secret-bytes", OWNER)
    assert is_sealed(sealed) and sealed.startswith(sealer.current_prefix) and "secret-bytes" not in sealed
    assert sealer.open(sealed, OWNER) == b"whsec_secret-bytes"
    assert sealer.seal(b"whsec_secret-bytes", OWNER) != sealed  # a fresh nonce each time


@pytest.mark.parametrize(
    "owner",
    [
        SealedFor("task-token-key", TENANT, "subscription-1"),  # another purpose
        SealedFor("webhook-secret", uuid.uuid4(), "subscription-1"),  # another tenant
        SealedFor("webhook-secret", TENANT, "subscription-2"),  # another row
    ],
)
def test_a_sealed_value_opens_for_its_own_owner_only(owner: SealedFor) -> None:
    sealer = Sealer(KEY)
    with pytest.raises(SealError):
        sealer.open(sealer.seal(b"secret", OWNER), owner)


def test_an_altered_or_foreign_value_does_not_open() -> None:
    sealer = Sealer(KEY)
    sealed = sealer.seal(b"secret", OWNER)
    body = sealed.rsplit(".", 1)[1]
    flipped = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1]
    for value in (
        sealed.rsplit(".", 1)[0] + "." + flipped,  # one character of the ciphertext or tag changed
        Sealer(OTHER_KEY).seal(b"secret", OWNER),  # another key
        f"{SEALED_PREFIX}.{sealer.current_prefix.split('.')[1]}.!!not base64!!",
        "whsec_plain",
        "",
    ):
        with pytest.raises(SealError):
            sealer.open(value, OWNER)


def test_the_previous_key_opens_what_it_sealed_and_the_current_one_seals() -> None:
    before = Sealer(OTHER_KEY)
    sealed_before = before.seal(b"secret", OWNER)
    rotated = Sealer(KEY, previous=OTHER_KEY)
    assert rotated.open(sealed_before, OWNER) == b"secret"
    assert not sealed_before.startswith(rotated.current_prefix)  # the timer's sign that it is to be sealed again
    resealed = rotated.seal(b"secret", OWNER)
    assert resealed.startswith(rotated.current_prefix) and Sealer(KEY).open(resealed, OWNER) == b"secret"
    with pytest.raises(SealError):
        before.open(resealed, OWNER)


def test_local_development_runs_without_a_key_and_nothing_else_does() -> None:
    assert Settings(**BASE).QP_SEALING_KEY is None
    assert Settings(**BASE, QP_SEALING_KEY="").QP_SEALING_KEY is None  # local.settings.json's empty value
    dev = {**BASE, "QP_ENVIRONMENT": "dev", "QP_OPERATOR_ENTRA_TENANT_ID": "00000000-0000-0000-0000-0000000000aa"}
    with pytest.raises(ValueError, match="QP_SEALING_KEY is required"):
        Settings(**dev)
    assert Settings(**dev, QP_SEALING_KEY=KEY).QP_SEALING_KEY is not None


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"QP_SEALING_KEY": "short"}, "at least 32 characters"),
        ({"QP_SEALING_KEY": KEY, "QP_SEALING_KEY_PREVIOUS": "short"}, "QP_SEALING_KEY_PREVIOUS must be at least"),
        (
            {"QP_SEALING_KEY": "@Microsoft.KeyVault(VaultName=kv-qp;SecretName=qp-sealing-key)"},
            "unresolved Key Vault reference",
        ),
        ({"QP_SEALING_KEY_PREVIOUS": KEY}, "needs QP_SEALING_KEY"),
    ],
)
def test_an_unusable_key_fails_at_start(values: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings(**BASE, **values)


def test_the_key_never_shows_in_the_settings_text() -> None:
    settings = Settings(**BASE, QP_SEALING_KEY=KEY)
    assert KEY not in repr(settings) and KEY not in str(settings.model_dump())
