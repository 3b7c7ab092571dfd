# intent_ref: platform.devhost
"""Start the local backing services: the embedded Postgres (pgserver) and Azurite (npm)."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")

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
    """A TCP port on 127.0.0.1 unused when asked: another process may take it before a service binds it, so what
    starts a service on it (start_node_service, start_azurite, devhost.child) moves to another when that happens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


PORT_ATTEMPTS = 5
"""How many sets of ports a service is started on before its start fails: a port is taken between free_port() and
the service's bind only when another process is handed it in that window, so a second set almost always binds."""


class PortTaken(RuntimeError):
    """A service could not listen: another process held one of its ports."""


def _listening_sockets(port: int) -> set[str] | None:
    """Inodes of the sockets listening on TCP `port` (any address); None where the system does not list them."""
    found: set[str] = set()
    listed = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        listed = True
        for row in rows:
            fields = row.split()
            # local address "0100007F:1F90", state 0A is LISTEN, then the socket's inode in column 10
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                found.add(fields[9])
    return found if listed else None


def _process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (a launcher script may run the server as a child)."""
    tree, index = [pid], 0
    while index < len(tree):
        try:
            tasks = os.listdir(f"/proc/{tree[index]}/task")
        except OSError:
            tasks = []
        for task in tasks:
            try:
                tree.extend(
                    int(child) for child in Path(f"/proc/{tree[index]}/task/{task}/children").read_text().split()
                )
            except OSError:
                continue
        index += 1
    return tree


def listens(pid: int, port: int) -> bool:
    """Whether process `pid` (or a descendant) is what listens on 127.0.0.1:`port`. A bare connection would also
    succeed on another process's listener, the very one that took the port; where the system does not tell which
    process holds a socket, a connection is all there is to go on."""
    sockets = _listening_sockets(port)
    if sockets is None:
        return port_held(port)
    if not sockets:
        return False
    readable = False
    for member in _process_tree(pid):
        try:
            fds = os.listdir(f"/proc/{member}/fd")
        except OSError:
            continue
        readable = True
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{member}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in sockets:
                return True
    # No descriptor of the tree could be read (another user's process, a hardened /proc): a connection is all there is.
    return False if readable else port_held(port)


def port_held(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:`port`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


ADDRESS_IN_USE = ("EADDRINUSE", os.strerror(errno.EADDRINUSE).lower())
"""How a server says its port was taken: the errno's name (the node services) or its text (asyncio, Python)."""


def says_port_taken(output: str) -> bool:
    """Whether a server's output says it could not bind its port because another process holds it."""
    lowered = output.lower()
    return any(word.lower() in lowered for word in ADDRESS_IN_USE)


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
    name: str, args: list[str], port: int | Sequence[int], *, log_file: Path | None = None, timeout: float = 30.0
) -> NodeService:
    """Start `args` in its own session and wait until it listens on 127.0.0.1:`port` (each of them, if several);
    PortTaken when another process held one of them."""
    ports = [port] if isinstance(port, int) else list(port)
    offset = log_file.stat().st_size if log_file and log_file.exists() else 0
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # owned by the child
    process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # noqa: S603
    service = NodeService(name, process)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if process.poll() is not None:
                said = output_since(log_file, offset)
                if says_port_taken(said) or any(port_held(each) for each in ports):
                    raise PortTaken(f"{name}: a port of {ports} was taken before it listened: {said[-300:]}")
                raise RuntimeError(f"{name} exited with code {process.returncode} before listening: {said[-300:]}")
            if all(listens(process.pid, each) for each in ports):
                return service
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} did not listen on ports {ports} within {timeout:.0f}s")
            time.sleep(0.1)
    except BaseException:
        service.stop()
        raise


def output_since(log_file: Path | None, offset: int) -> str:
    """What a child printed to `log_file` past `offset` (nothing is known without a log)."""
    if log_file is None or not log_file.exists():
        return ""
    with open(log_file, "rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


def start_moving_ports(ports: Sequence[int], start: Callable[[Sequence[int]], T]) -> T:
    """`start(ports)`, then `start` on as many newly chosen ports while one of them turns out taken (PortTaken)."""
    for attempt in range(PORT_ATTEMPTS):
        try:
            return start(ports)
        except PortTaken as taken:
            if attempt == PORT_ATTEMPTS - 1:
                raise
            logger.info("%s; starting again on other ports", taken)
            ports = [free_port() for _ in ports]
    raise AssertionError("unreachable")  # the last attempt returned or raised


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
    move_ports: bool = True,
) -> Azurite:
    """Start Azurite with its data under `data_dir` and wait until its three endpoints listen; where another process
    took one of the ports first, on three others (the answer's ports are those it listens on). `move_ports=False`
    for ports others expect it on (development storage's 10000-10002): PortTaken instead, for a second Azurite on
    other ports would write the same data folder as the one already there, and tools find none where they look."""
    data_dir.mkdir(parents=True, exist_ok=True)

    def start(ports: Sequence[int]) -> Azurite:
        blob, queue, table = ports
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
            str(blob),
            "--queueHost",
            "127.0.0.1",
            "--queuePort",
            str(queue),
            "--tableHost",
            "127.0.0.1",
            "--tablePort",
            str(table),
        ]
        return Azurite(start_node_service("azurite", args, ports, log_file=log_file), blob, queue, table)

    ports = (blob_port, queue_port, table_port)
    return start_moving_ports(ports, start) if move_ports else start(ports)
