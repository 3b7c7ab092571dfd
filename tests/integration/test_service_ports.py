# intent_ref: platform.quality
"""A port from free_port() is free only when asked: when another process takes it before the service binds it (two
test processes, a benchmark beside them), Azurite, the Cosmos fake and the devhost still start, on another port, and
the service answered there is the one started, not the process that took the port."""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.storage.blob import BlobServiceClient

from devhost.child import PROJECT_ROOT, DevhostProcess
from devhost.services import PortTaken, free_port, start_azurite
from tests.cosmos_emulator import start_cosmos_emulator
from tests.e2e import durable_support
from tests.e2e.conformance_index import conformance_index

CONFORMANCE_APP = PROJECT_ROOT / "tests" / "conformance_app"
WAIT_S = 10.0
"""The bound of every call: the port's taker accepts connections and never answers them, so a client sent there by
mistake waits this long and fails."""


@pytest.fixture()
def taken_port() -> Iterator[int]:
    """A port another process took after free_port() handed it out: it listens there and never answers."""
    with socket.socket() as taker:
        taker.bind(("127.0.0.1", 0))
        taker.listen()
        yield int(taker.getsockname()[1])


@pytest.fixture()
def data_dir() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="qp-ports-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.integration
def test_azurite_moves_off_a_port_another_process_took(taken_port: int, data_dir: Path) -> None:
    azurite = start_azurite(
        data_dir / "data",
        blob_port=free_port(),
        queue_port=taken_port,
        table_port=free_port(),
        log_file=data_dir / "azurite.log",
    )
    try:
        assert taken_port not in (azurite.blob_port, azurite.queue_port, azurite.table_port)
        assert azurite.service.process.poll() is None
        blobs = BlobServiceClient.from_connection_string(
            azurite.connection_string, connection_timeout=WAIT_S, read_timeout=WAIT_S, retry_total=0
        )
        blobs.create_container("ports")
        assert [c.name for c in blobs.list_containers()] == ["ports"]
    finally:
        azurite.stop()


@pytest.mark.integration
def test_azurite_is_not_taken_for_the_process_that_took_its_blob_port(taken_port: int, data_dir: Path) -> None:
    azurite = start_azurite(
        data_dir / "data", blob_port=taken_port, queue_port=free_port(), table_port=free_port()
    )  # no log file: what it printed is not known, the taken port is
    try:
        assert azurite.blob_port != taken_port
        blobs = BlobServiceClient.from_connection_string(
            azurite.connection_string, connection_timeout=WAIT_S, read_timeout=WAIT_S, retry_total=0
        )
        assert list(blobs.list_containers()) == []
    finally:
        azurite.stop()


@pytest.mark.integration
def test_azurite_on_ports_others_expect_it_on_does_not_move(taken_port: int, data_dir: Path) -> None:
    # The devhost's own Azurite serves development storage, whose connection string names its ports: moved, it served
    # no one who looked there, and a second one wrote the data folder of the first.
    with pytest.raises(PortTaken):
        start_azurite(
            data_dir / "data",
            blob_port=free_port(),
            queue_port=taken_port,
            table_port=free_port(),
            log_file=data_dir / "azurite.log",
            move_ports=False,
        )


@pytest.mark.integration
def test_the_cosmos_fake_moves_off_a_port_another_process_took(taken_port: int, data_dir: Path) -> None:
    cosmos = start_cosmos_emulator(taken_port, log_file=data_dir / "cosmosdb-server.log")
    try:
        assert cosmos.port != taken_port
        answer = httpx.get(cosmos.endpoint + "/", verify=False, timeout=WAIT_S)  # noqa: S501  # the fake's own certificate
        assert answer.status_code < 500
    finally:
        cosmos.stop()


@pytest.mark.e2e
def test_the_devhost_moves_off_a_port_another_process_took(
    pg: Any, azurite: Any, taken_port: int, tmp_path: Path
) -> None:
    host = DevhostProcess(
        app_dir=CONFORMANCE_APP,
        data_dir=pg.root,
        port=taken_port,
        env={
            "QP_BLOB_CONNECTION_STRING": azurite.connection_string,
            "QP_TASK_HUB": "ServicePorts",
            "CONFORMANCE_STATE_DIR": str(tmp_path),
        },
        log_path=tmp_path / "devhost.log",
    )
    try:
        host.start()
        assert host.port != taken_port
        answer = httpx.get(f"{host.base_url}/api/plain", timeout=WAIT_S)
        assert answer.status_code == 200, host.log()
    finally:
        host.kill()


@pytest.mark.e2e
def test_an_in_process_durable_host_serves_though_the_port_it_was_once_handed_is_taken(
    pg: Any, taken_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Where the fixture once asked for a port and bound it later, this one is what it would have been handed.
    monkeypatch.setattr(durable_support, "free_port", lambda: taken_port, raising=False)

    async def main() -> int:
        served = durable_support.serve_durable_host(
            conformance_index(), CONFORMANCE_APP, pg.owner_url, tmp_path, "Ports"
        )
        async with served as host, httpx.AsyncClient(timeout=WAIT_S) as client:
            assert not host.base_url.endswith(f":{taken_port}")
            answer = await client.get(f"{host.base_url}/runtime/webhooks/durabletask/instances/no-such-instance")
            return answer.status_code

    assert asyncio.run(main()) == 404
