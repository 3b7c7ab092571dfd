# intent_ref: platform.devhost
"""Start the local backing services: the embedded Postgres (pgserver) and Azurite (npm)."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Azurite's well-known development account; a public constant of the emulator, not a secret.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def start_postgres(data_dir: Path) -> str:
    """Start (or re-attach to) the embedded Postgres on `data_dir`; return its superuser URL."""
    # pgserver reads XDG_RUNTIME_DIR when imported; a private one keeps it quiet and its files ours.
    os.environ.setdefault("XDG_RUNTIME_DIR", str(_runtime_dir()))
    from pgserver.postgres_server import get_server

    data_dir.mkdir(parents=True, exist_ok=True)
    server = get_server(str(data_dir), cleanup_mode=None)
    return str(server.get_uri())


def stop_postgres(data_dir: Path) -> None:
    """Stop the embedded Postgres on `data_dir` if it runs (fast shutdown: sessions are closed)."""
    os.environ.setdefault("XDG_RUNTIME_DIR", str(_runtime_dir()))
    from pgserver import _commands  # pgserver's own wrapper knows the binary and the system user

    pg_ctl = getattr(_commands, "pg_ctl")  # noqa: B009  # generated at import, invisible to type checkers

    if not (data_dir / "postmaster.pid").exists():
        return
    user = "pgserver" if os.geteuid() == 0 else None  # as root, pgserver runs the server as this user
    try:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=data_dir, user=user)
    except subprocess.CalledProcessError as exc:
        logger.warning("stopping Postgres on %s failed: %s", data_dir, exc)


def _runtime_dir() -> Path:
    path = Path("/tmp") / f"qp-runtime-{os.getuid()}"  # noqa: S108  # private, per-user, mode 0700
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class NodeService:
    """A child process started from an npm package's binary, listening on a local port."""

    name: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        """Stop the process (and wait for it)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def node_binary(command: str, package: str) -> str:
    """Path of a project-pinned npm binary (installed by `npm ci`)."""
    local = PROJECT_ROOT / "node_modules" / ".bin" / command
    if local.exists():
        return str(local)
    found = shutil.which(command)
    if not found:
        raise RuntimeError(f"{package} is not installed: run `npm ci` (make does this)")
    return found


def start_node_service(
    name: str, args: list[str], port: int, *, log_file: Path | None = None, timeout: float = 30.0
) -> NodeService:
    """Start `args` in its own session and wait until it listens on 127.0.0.1:`port`."""
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # owned by the child
    process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # noqa: S603
    service = NodeService(name, process)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with code {process.returncode} before listening")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return service
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} did not listen on port {port} within {timeout:.0f}s") from None
                time.sleep(0.1)
    except BaseException:
        service.stop()
        raise


@dataclass
class Azurite:
    """A running Azurite and the connection string that reaches it."""

    service: NodeService
    blob_port: int
    queue_port: int
    table_port: int

    @property
    def connection_string(self) -> str:
        host = "http://127.0.0.1"
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={host}:{self.blob_port}/{AZURITE_ACCOUNT};"
            f"QueueEndpoint={host}:{self.queue_port}/{AZURITE_ACCOUNT};"
            f"TableEndpoint={host}:{self.table_port}/{AZURITE_ACCOUNT};"
        )

    def stop(self) -> None:
        """Stop the process (and wait for it)."""
        self.service.stop()


def start_azurite(
    data_dir: Path,
    *,
    blob_port: int = 10000,
    queue_port: int = 10001,
    table_port: int = 10002,
    log_file: Path | None = None,
) -> Azurite:
    """Start Azurite with its data under `data_dir` and wait until the blob endpoint listens."""
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [
        node_binary("azurite", "azurite"),
        "--silent",
        "--disableTelemetry",
        "--skipApiVersionCheck",
        "--location",
        str(data_dir),
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(blob_port),
        "--queueHost",
        "127.0.0.1",
        "--queuePort",
        str(queue_port),
        "--tableHost",
        "127.0.0.1",
        "--tablePort",
        str(table_port),
    ]
    service = start_node_service("azurite", args, blob_port, log_file=log_file)
    return Azurite(service, blob_port, queue_port, table_port)
