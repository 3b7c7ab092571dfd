# intent_ref: platform.identity
"""Where the client's bearer tokens come from: a fixed token, the local devhost's dev identity, or azure-identity;
each knows how to give a token for another tenant (`Client.set_tenant`)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from quantum_platform.errors import CredentialError

DEFAULT_ROLES = ("Intent.Reader", "Intent.Author", "Intent.Executor", "Intent.Deployer")
_RENEW_BEFORE_S = 120.0


class Credential(Protocol):
    """Gives a bearer token for a tenant (None: the credential's own)."""

    def token(self, tenant: str | None) -> str:
        """A token valid now for `tenant`."""
        ...

    def refresh(self, tenant: str | None) -> None:
        """Forget a token the platform refused, so the next call gets a fresh one."""
        ...


class StaticToken:
    """One token as given (e.g. `QP_TOKEN`); it cannot switch tenants."""

    def __init__(self, token: str) -> None:
        self._token = token

    def token(self, tenant: str | None) -> str:
        if tenant is not None:
            raise ValueError("a fixed token belongs to one tenant: use a credential that can mint for others")
        return self._token

    def refresh(self, tenant: str | None) -> None:  # noqa: ARG002  # the protocol's signature
        return None  # nothing to renew: the caller gave this token


class DevhostCredential:
    """Dev tokens from the local devhost's identity (`python -m devhost token`), minted per tenant and renewed
    before they expire. `project_dir` is the platform's checkout (where `make run` keeps `.data`); `oid` the user's
    object id the tokens carry (None: the devhost's stable demo user of the tenant)."""

    def __init__(
        self,
        tenant: str = "contoso",
        *,
        roles: tuple[str, ...] | list[str] = DEFAULT_ROLES,
        project_dir: str | Path | None = None,
        data_dir: str | Path | None = None,
        port: int | None = None,
        python: str | None = None,
        lifetime_s: int = 3600,
        oid: str | None = None,
    ) -> None:
        self.default_tenant = tenant
        self._roles = ",".join(roles)
        self._project_dir = Path(project_dir or os.environ.get("QP_PROJECT_DIR") or Path.cwd())
        self._data_dir = str(data_dir) if data_dir is not None else None
        self._port = port
        self._python = python or sys.executable
        self._lifetime_s = lifetime_s
        self._oid = oid
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[str, float]] = {}

    def token(self, tenant: str | None) -> str:
        name = tenant or self.default_tenant
        with self._lock:
            cached = self._tokens.get(name)
            if cached is not None and cached[1] - _RENEW_BEFORE_S > time.monotonic():
                return cached[0]
            minted = self._mint(name)
            self._tokens[name] = (minted, time.monotonic() + self._lifetime_s)
            return minted

    def refresh(self, tenant: str | None) -> None:
        with self._lock:
            self._tokens.pop(tenant or self.default_tenant, None)

    def _mint(self, tenant: str) -> str:
        command = [self._python, "-m", "devhost", "token", "--tenant", tenant, "--roles", self._roles]
        command += ["--expires-in", str(self._lifetime_s)]
        if self._oid is not None:
            command += ["--oid", self._oid]
        if self._data_dir is not None:
            command += ["--data-dir", self._data_dir]
        if self._port is not None:
            command += ["--port", str(self._port)]
        try:
            done = subprocess.run(command, cwd=self._project_dir, capture_output=True, text=True, check=False)  # noqa: S603
        except OSError as exc:  # no such interpreter or checkout
            raise CredentialError(f"minting a dev token for {tenant} failed: {exc}") from None
        if done.returncode != 0:
            raise CredentialError(f"minting a dev token for {tenant} failed: {done.stderr.strip()[-500:]}")
        return done.stdout.strip()


class AzureCredential:
    """Tokens from azure-identity (DefaultAzureCredential unless given) for the API's scope; another tenant is
    asked for with `tenant_id`, as a multi-tenant app does."""

    def __init__(self, scope: str, credential: Any = None) -> None:
        if credential is None:
            from azure.identity import DefaultAzureCredential  # the `azure` extra

            credential = DefaultAzureCredential()
        self._scope, self._credential = scope, credential

    def token(self, tenant: str | None) -> str:
        kwargs = {"tenant_id": tenant} if tenant else {}
        return str(self._credential.get_token(self._scope, **kwargs).token)

    def refresh(self, tenant: str | None) -> None:  # noqa: ARG002  # the protocol's signature
        return None  # azure-identity caches and renews on its own


def from_environment() -> Credential | None:
    """`QP_TOKEN` when set."""
    token = os.environ.get("QP_TOKEN")
    return StaticToken(token) if token else None
