# intent_ref: platform.audit
"""Integration fixtures beyond the session's Postgres and Azurite: the Cosmos DB fake."""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.cosmos import CosmosClient, DatabaseProxy
from urllib3.exceptions import InsecureRequestWarning

from devhost.services import free_port
from tests.cosmos_emulator import COSMOS_EMULATOR_KEY, CosmosEmulator, start_cosmos_emulator


@pytest.fixture(scope="session")
def cosmos() -> Iterator[CosmosEmulator]:
    """A cosmosdb-server on a free port, for the whole session."""
    root = Path(tempfile.mkdtemp(prefix="qp-cosmos-"))
    instance = start_cosmos_emulator(free_port(), log_file=root / "cosmosdb-server.log")
    try:
        yield instance
    finally:
        instance.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def cosmos_database(cosmos: CosmosEmulator) -> DatabaseProxy:
    """The `quantum` database on the fake; containers are created per test module."""
    # Tests only: the fake serves a self-signed certificate and accepts the emulator's public key.
    # Production uses the account's real certificate and DefaultAzureCredential (no keys).
    client = CosmosClient(cosmos.endpoint, credential=COSMOS_EMULATOR_KEY, connection_verify=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureRequestWarning)
        return client.create_database_if_not_exists("quantum")
