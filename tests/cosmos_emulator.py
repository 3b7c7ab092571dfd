# intent_ref: platform.audit
"""Start @vercel/cosmosdb-server (npm) as a child process: a Cosmos DB SQL-API fake for the tests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from devhost.services import NodeService, node_binary, start_moving_ports, start_node_service

# The Cosmos emulator's well-known account key: a public constant, not a secret. The fake accepts any
# key; the SDK only needs a well-formed one to sign requests. Tests only, never a real account.
COSMOS_EMULATOR_KEY = "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw=="


@dataclass
class CosmosEmulator:
    """A running cosmosdb-server and the endpoint that reaches it (HTTPS, self-signed certificate)."""

    service: NodeService
    port: int

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Stop the process (and wait for it)."""
        self.service.stop()


def start_cosmos_emulator(port: int, *, log_file: Path | None = None, timeout: float = 30.0) -> CosmosEmulator:
    """Start cosmosdb-server on 127.0.0.1:`port` (another one if a process took it first) and wait until it listens."""

    def start(ports: Sequence[int]) -> CosmosEmulator:
        (chosen,) = ports
        args = [node_binary("cosmosdb-server", "@vercel/cosmosdb-server"), "--host", "127.0.0.1", "--port", str(chosen)]
        service = start_node_service("cosmosdb-server", args, chosen, log_file=log_file, timeout=timeout)
        return CosmosEmulator(service, chosen)

    return start_moving_ports((port,), start)
