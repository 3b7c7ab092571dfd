# intent_ref: platform.devhost
"""End-to-end fixtures: devhost child processes serving the platform app or the conformance app."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devhost.child import PROJECT_ROOT, DevhostProcess, free_port

CONFORMANCE_APP = PROJECT_ROOT / "tests" / "conformance_app"

DevhostFactory = Callable[..., DevhostProcess]


@pytest.fixture()
def devhost_factory(pg, azurite, tmp_path: Path) -> Iterator[DevhostFactory]:  # type: ignore[no-untyped-def]
    """Start devhosts attached to the session's Postgres and Azurite; all are stopped at the end."""
    started: list[DevhostProcess] = []

    def start(
        app_dir: Path = CONFORMANCE_APP,
        env: dict[str, str] | None = None,
        port: int | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> DevhostProcess:
        process = DevhostProcess(
            app_dir=app_dir,
            data_dir=pg.root,
            port=port or free_port(),
            env={
                "QP_BLOB_CONNECTION_STRING": azurite.connection_string,
                "QP_TASK_HUB": "ConformanceHub",
                "CONFORMANCE_STATE_DIR": str(tmp_path),
                **(env or {}),
            },
            log_path=tmp_path / f"devhost-{len(started)}.log",
            extra_args=extra_args,
        )
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()
