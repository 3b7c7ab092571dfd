# intent_ref: platform.telemetry
"""A devhost started by the tests or a benchmark keeps the Azure Monitor exporter's retry store in its own temporary
folder and takes it along when it stops: one left in the system's temporary folder by every run piled up there."""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from devhost.child import PROJECT_ROOT
from devhost.services import free_port
from tests.e2e.conftest import DevhostFactory

WAIT_S = 60.0
"""The bound of the wait for the exporter to start (the platform's import in the host); a run that fails says so."""


@pytest.mark.e2e
def test_the_telemetry_retry_store_stays_in_the_hosts_folder_and_goes_with_it(
    devhost_factory: DevhostFactory, tmp_path: Path
) -> None:
    key = str(uuid.uuid4())  # the store's folder is named after it: no other run's can be taken for this one's
    store = f"opentelemetry-python-{key}"
    system_temp = Path(tempfile.gettempdir())

    def stores() -> list[Path]:
        return [*tmp_path.rglob(store), *system_temp.glob(f"Microsoft-AzureMonitor-*/{store}")]

    host = devhost_factory(
        app_dir=PROJECT_ROOT,
        env={
            # Nothing listens there: every export fails, which is when the store is written.
            "APPLICATIONINSIGHTS_CONNECTION_STRING": f"InstrumentationKey={key};"
            f"IngestionEndpoint=http://127.0.0.1:{free_port()}/",
            "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
            "QP_TASK_HUB": "TelemetryStoreDir",
        },
    )
    try:
        deadline = time.monotonic() + WAIT_S
        while not stores() and time.monotonic() < deadline:
            time.sleep(0.2)
        found = stores()
        assert found, f"no retry store named {store} within {WAIT_S:.0f}s:\n{host.log()}"
        assert all(path.is_relative_to(tmp_path) for path in found), found

        host.stop()
        assert stores() == []
    finally:
        for left in system_temp.glob(f"Microsoft-AzureMonitor-*/{store}"):
            shutil.rmtree(left.parent, ignore_errors=True)  # the parent's name hashes this run's key: ours alone
