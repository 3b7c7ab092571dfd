# intent_ref: platform.hardening
"""Secrets sealed at rest: AES-256-GCM under a key kept outside the database, each bound to what it protects."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared.config import get_settings

SEALED_PREFIX = "qpsealed1"
"""How every sealed value starts: `qpsealed1.<key id>.<base64url of nonce, ciphertext and tag>`."""
LOCAL_DEVELOPMENT_KEY = "local development only: this key is in the source, so it seals nothing that matters"
"""The key of QP_ENVIRONMENT=local when QP_SEALING_KEY is unset; the settings refuse to run without one elsewhere."""
_NONCE_BYTES = 12
_KDF_INFO = b"quantum-platform sealing key v1"


class SealError(Exception):
    """A value that does not open: sealed under a key this process does not have, for another owner, or altered."""


@dataclass(frozen=True)
class SealedFor:
    """What a sealed value belongs to; it opens only for the same purpose, tenant and row (its associated data)."""

    purpose: str
    tenant_id: UUID
    ref: str

    def associated_data(self) -> bytes:
        return f"{self.purpose}\n{self.tenant_id}\n{self.ref}".encode()


class _Key:
    """One AES-256 key derived from key material (any long random text, as a Key Vault secret holds)."""

    def __init__(self, material: str) -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KDF_INFO).derive(material.encode())
        # Names the key in what it sealed, so a rotation knows which values to seal again; reveals nothing of it.
        self.id = hashlib.sha256(b"key id\n" + key).hexdigest()[:16]
        self.aead = AESGCM(key)


class Sealer:
    """Seals with the current key; opens with it or with the key before a rotation."""

    def __init__(self, current: str, previous: str | None = None) -> None:
        self._current = _Key(current)
        self._keys = {self._current.id: self._current}
        if previous is not None:
            older = _Key(previous)
            self._keys.setdefault(older.id, older)

    @property
    def current_prefix(self) -> str:
        """How a value sealed with the current key starts: any other value is to be sealed (again)."""
        return f"{SEALED_PREFIX}.{self._current.id}."

    def seal(self, secret: bytes, owner: SealedFor) -> str:
        """`secret` sealed for `owner` under the current key."""
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._current.aead.encrypt(nonce, secret, owner.associated_data())
        return self.current_prefix + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def open(self, sealed: str, owner: SealedFor) -> bytes:
        """The secret `sealed` holds for `owner`; SealError when it was not sealed for it by a key of ours."""
        prefix, _, rest = sealed.partition(".")
        key_id, _, body = rest.partition(".")
        key = self._keys.get(key_id)
        if prefix != SEALED_PREFIX or key is None:
            raise SealError(f"not sealed by a key this process has (key id {key_id[:16]!r})")
        try:
            raw = base64.urlsafe_b64decode(body.encode("ascii"))
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise SealError("a sealed value's body is not base64url") from None
        try:
            return key.aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], owner.associated_data())
        except (InvalidTag, ValueError):
            raise SealError(f"a sealed {owner.purpose} does not open: altered, or sealed for another owner") from None


def is_sealed(value: str) -> bool:
    """Whether `value` is a sealed value (else a secret kept in plain text before sealing, to be sealed)."""
    return value.startswith(SEALED_PREFIX + ".")


@lru_cache(maxsize=1)
def sealer() -> Sealer:
    """The process's sealer, from QP_SEALING_KEY (and QP_SEALING_KEY_PREVIOUS during a rotation)."""
    settings = get_settings()
    current, previous = settings.QP_SEALING_KEY, settings.QP_SEALING_KEY_PREVIOUS
    # The settings refuse a missing key outside local development, so only a local run gets the fixed one.
    material = current.get_secret_value() if current is not None else LOCAL_DEVELOPMENT_KEY
    return Sealer(material, previous.get_secret_value() if previous is not None else None)
