# intent_ref: platform.devhost
"""Secrets the devhost keeps in its data folder: created once, readable by their owner only."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)


def read_or_create(path: Path, make: Callable[[], bytes], what: str) -> bytes:
    """The bytes of the secret at `path`, made by `make` (mode 0600) on first use; a looser mode is tightened."""
    if not path.exists():
        _create(path, make())
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        # A secret readable by others is a leak waiting to happen, even a local one: keep it the owner's.
        logger.warning("%s %s had mode %o; setting 0600", what, path, mode)
        path.chmod(0o600)
    return path.read_bytes()


def _create(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    # Created 0600 from the start (never world-readable, not even briefly), then hard-linked into place: link fails
    # if the file exists, so when the CLI and the host race, one secret wins and both use it.
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
