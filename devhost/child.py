# intent_ref: platform.devhost
"""Run `python -m devhost run` as a child process (end-to-end tests kill it for real; benchmarks drive it)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from devhost.keys import load_or_create_master_key
from devhost.services import free_port

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
        """Start the host and wait until it listens."""
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
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"devhost exited with {self.process.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.1)
        self.kill()
        raise TimeoutError(f"devhost did not listen within {timeout:.0f}s:\n{self.log()}")

    def log(self) -> str:
        """What the host printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM (what Ctrl-C does) and wait; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, like a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
