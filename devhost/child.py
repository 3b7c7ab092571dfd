# intent_ref: platform.devhost
"""Run `python -m devhost run` as a child process (end-to-end tests kill it for real; benchmarks drive it)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from devhost.keys import load_or_create_master_key
from devhost.services import PORT_ATTEMPTS, PortTaken, free_port, listens, output_since, says_port_taken

PROJECT_ROOT = Path(__file__).resolve().parents[1]
__all__ = ["PROJECT_ROOT", "DevhostProcess", "free_port"]


@dataclass
class DevhostProcess:
    """A devhost child process serving `app_dir`."""

    app_dir: Path
    data_dir: Path
    port: int
    env: dict[str, str]
    log_path: Path
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    temp_dir: Path | None = field(default=None, repr=False)
    """The host's temporary folder (its TMPDIR), beside its log, removed when it stops: what the host keeps there
    (the telemetry exporter's retry store, 1-4 MB a process) must not pile up in the system's."""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host_key(self) -> str:
        """The master key of the host's data folder (what `python -m devhost key` prints)."""
        return load_or_create_master_key(self.data_dir.resolve())

    @property
    def key_header(self) -> dict[str, str]:
        """The header that opens the host's guarded routes (Durable API, /devhost/eventhubs)."""
        return {"x-functions-key": self.host_key}

    def start(self, timeout: float = 60.0) -> DevhostProcess:
        """Start the host and wait until it listens. Where another process took its port first (a port from
        free_port() is only free when asked), it starts again on another: `port` and `base_url` name the one it
        listens on."""
        for attempt in range(PORT_ATTEMPTS):
            try:
                return self._start_on_port(timeout)
            except PortTaken:
                if attempt == PORT_ATTEMPTS - 1:
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")  # the last attempt returned or raised

    def _start_on_port(self, timeout: float) -> DevhostProcess:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        env = {**os.environ, **self.env}
        if "TMPDIR" not in self.env:
            if self.temp_dir is None or not self.temp_dir.exists():
                self.temp_dir = Path(tempfile.mkdtemp(prefix="devhost-tmp-", dir=self.log_path.parent))
            env["TMPDIR"] = str(self.temp_dir)
        log = open(self.log_path, "ab")  # handed to the child
        self.process = subprocess.Popen(  # noqa: S603  # our own interpreter and arguments
            [
                sys.executable,
                "-m",
                "devhost",
                "run",
                "--app",
                str(self.app_dir),
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
                *self.extra_args,
            ],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                said = output_since(self.log_path, offset)
                # Its own port named: the output also holds what its services printed (a bind of theirs retried).
                if says_port_taken(said) and str(self.port) in said:
                    raise PortTaken(f"devhost: port {self.port} was taken before it listened:\n{said[-2000:]}")
                raise RuntimeError(f"devhost exited with {self.process.returncode}:\n{self.log()}")
            # Its own listener, not a connection: another process that took the port would answer one.
            if listens(self.process.pid, self.port):
                return self
            time.sleep(0.1)
        self.kill()
        raise TimeoutError(f"devhost did not listen within {timeout:.0f}s:\n{self.log()}")

    def log(self) -> str:
        """What the host printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM (what Ctrl-C does) and wait, then remove the host's temporary folder; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        return int(self.process.returncode)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, like a crash (the temporary folder stays for the next start, as a crashed
        host's files do)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
