# intent_ref: platform.audit
"""Start @vercel/cosmosdb-server (npm) as a child process: a Cosmos DB SQL-API fake for the tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from devhost.services import PROJECT_ROOT

# The Cosmos emulator's well-known account key: a public constant, not a secret. The fake accepts any
# key; the SDK only needs a well-formed one to sign requests. Tests only, never a real account.
COSMOS_EMULATOR_KEY = (
    "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw=="  # noqa: S105
)


@dataclass
class CosmosEmulator:
    """A running cosmosdb-server and the endpoint that reaches it (HTTPS, self-signed certificate)."""

    process: subprocess.Popen[bytes]
    port: int

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Stop the process (and wait for it)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def cosmos_emulator_binary() -> str:
    """Path of the project's pinned cosmosdb-server (installed by `npm ci`)."""
    local = PROJECT_ROOT / "node_modules" / ".bin" / "cosmosdb-server"
    if local.exists():
        return str(local)
    found = shutil.which("cosmosdb-server")
    if not found:
        raise RuntimeError("@vercel/cosmosdb-server is not installed: run `npm ci` (make does this)")
    return found


def start_cosmos_emulator(port: int, *, log_file: Path | None = None, timeout: float = 30.0) -> CosmosEmulator:
    """Start cosmosdb-server on 127.0.0.1:`port` and wait until it accepts connections."""
    args = [cosmos_emulator_binary(), "--host", "127.0.0.1", "--port", str(port)]
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115  # owned by the child
    process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # noqa: S603
    emulator = CosmosEmulator(process, port)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"cosmosdb-server exited with code {process.returncode} before listening")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return emulator
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"cosmosdb-server did not listen on port {port} within {timeout:.0f}s") from None
                time.sleep(0.1)
    except BaseException:
        emulator.stop()
        raise
