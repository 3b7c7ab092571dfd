# intent_ref: platform.devhost
"""The host's master key (one per data folder) and the guard that asks for it on every non-function route."""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import logging
import os
import secrets
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from aiohttp import web

logger = logging.getLogger(__name__)

KEY_DIRECTORY = "host-keys"
MASTER_KEY_FILE = "master"
CODE_PARAMETER = "code"
KEY_HEADER = "x-functions-key"

# What the real endpoints serve without credentials: an issuer's discovery document and signing keys are public.
# Every other route a component registers (the Durable management API on both prefixes, the Event Hubs data
# routes) needs the key; docs/adr/0020-devhost-host-keys.md lists them.
PUBLIC_ROUTES = frozenset(
    {
        "/devhost/identity/discovery/v2.0/keys",
        "/devhost/identity/{tenant}/v2.0/.well-known/openid-configuration",
    }
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def master_key_path(data_dir: Path) -> Path:
    """Where the host keeps its master key under the data folder."""
    return data_dir / KEY_DIRECTORY / MASTER_KEY_FILE


def load_or_create_master_key(data_dir: Path) -> str:
    """The data folder's master key, created (mode 0600) on first use and the same on every later start."""
    path = master_key_path(data_dir)
    if not path.exists():
        _create_key_file(path)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        # Anyone who can read the key can read every instance's input: keep it the owner's.
        logger.warning("devhost master key %s had mode %o; setting 0600", path, mode)
        path.chmod(0o600)
    key = path.read_text().strip()
    if not key:
        raise ValueError(f"{path} is empty; delete it and the host creates a new key")
    return key


def _create_key_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # URL-safe characters only: the key travels in query strings and URL credentials without encoding.
    key = secrets.token_urlsafe(40)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    # 0600 from the first byte, then hard-linked into place: when the CLI and the host race, one key wins.
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(key + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def presented_keys(request: web.Request) -> list[str]:
    """Every key the request carries: `?code=`, the `x-functions-key` header, or a Basic password.

    The first two are what the Functions host reads. Basic is how the SDK's client brings the key on the RPC
    prefix: its HTTP client turns the credentials in the binding's rpcBaseUrl into that header.
    """
    keys = list(request.query.getall(CODE_PARAMETER, []))
    header = request.headers.get(KEY_HEADER)
    if header:
        keys.append(header)
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "basic" and credentials:
        with contextlib.suppress(binascii.Error, UnicodeDecodeError):
            keys.append(base64.b64decode(credentials.strip(), validate=True).decode().partition(":")[2])
    return keys


def carries_key(request: web.Request, key: str) -> bool:
    """True when one of the presented keys is `key` (compared in constant time)."""
    expected = key.encode()
    return any(hmac.compare_digest(candidate.encode(), expected) for candidate in presented_keys(request))


class HostKeyGuard:
    """Answers 401, with no body, to a request for a guarded route that does not carry the master key."""

    def __init__(self, key: str) -> None:
        self._key = key
        self._guarded: set[web.AbstractResource] = set()

    def guard(self, resources: Iterable[web.AbstractResource]) -> list[str]:
        """Guard every resource but the public ones; returns the guarded routes (for the log)."""
        guarded = []
        for resource in resources:
            if resource.canonical not in PUBLIC_ROUTES:
                self._guarded.add(resource)
                guarded.append(resource.canonical)
        return guarded

    def is_guarded(self, resource: web.AbstractResource | None) -> bool:
        return resource is not None and resource in self._guarded

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Runs after routing, so the decision follows the matched route, never a path prefix."""
        if self.is_guarded(request.match_info.route.resource) and not carries_key(request, self._key):
            # Like the Functions host: nothing about what exists behind the route, not even whether it does.
            return web.Response(status=401)
        return await handler(request)
