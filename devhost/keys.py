# intent_ref: platform.devhost
"""The host's master key (one per data folder) and the guard that asks for it on every non-function route."""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from aiohttp import web

from devhost.secret_files import read_or_create

logger = logging.getLogger(__name__)

KEY_DIRECTORY = "host-keys"
MASTER_KEY_FILE = "master"
CODE_PARAMETER = "code"
KEY_HEADER = "x-functions-key"

# What the real endpoints serve without credentials: an issuer's discovery document and signing keys are public,
# and so is a deployed application's health check.
# Every other route a component registers (the Durable management API on both prefixes, the Event Hubs data
# routes) needs the key; docs/adr/0020-devhost-host-keys.md lists them.
PUBLIC_ROUTES = frozenset(
    {
        "/devhost/identity/discovery/v2.0/keys",
        "/devhost/identity/{tenant}/v2.0/.well-known/openid-configuration",
        # The demo application's health endpoint (devhost/demo_deployment.py), public as a deployed app's is.
        "/devhost/demo/deployment/health",
    }
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def master_key_path(data_dir: Path) -> Path:
    """Where the host keeps its master key under the data folder."""
    return data_dir / KEY_DIRECTORY / MASTER_KEY_FILE


def load_or_create_master_key(data_dir: Path) -> str:
    """The data folder's master key, created (mode 0600) on first use and the same on every later start."""
    path = master_key_path(data_dir)
    # URL-safe characters only: the key travels in query strings and URL credentials without encoding.
    # Anyone who can read the key can read every instance's input: it stays the owner's.
    key = read_or_create(path, lambda: (secrets.token_urlsafe(40) + "\n").encode(), "devhost master key")
    text = key.decode().strip()
    if not text:
        raise ValueError(f"{path} is empty; delete it and the host creates a new key")
    return text


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
