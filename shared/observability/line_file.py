# intent_ref: platform.telemetry
"""A JSON-lines file that several processes append to and that stays bounded: past a size it moves aside once.

The local exporter (`QP_TELEMETRY_FILE`) is written by the devhost and each of its worker processes for as long as
`make run` runs; unbounded, a day of work filled hundreds of megabytes. When the file reaches `max_bytes` the first
writer to notice renames it to `<name>.1` (replacing the one before) and starts a new file; the other writers notice
that the path no longer names the file they hold and reopen it. So at most about twice `max_bytes` is kept, the
newest lines always in the file itself.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path
from typing import IO

MAX_BYTES = 64 * 1024 * 1024
"""Size at which the file moves aside (about half a million spans)."""


def rolled_path(path: Path) -> Path:
    """Where the file's earlier lines go when it is full."""
    return path.with_name(path.name + ".1")


class BoundedLineFile:
    """Appends whole lines to `path`, moving it to `rolled_path(path)` once it holds `max_bytes` or more."""

    def __init__(self, path: Path, max_bytes: int = MAX_BYTES) -> None:
        self._path = path
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._out = self._open()

    def write(self, text: str) -> int:
        """Append `text` (the exporters write one line at a time), first moving a full file aside."""
        with self._lock:
            if os.fstat(self._out.fileno()).st_size >= self._max_bytes:
                self._roll()
            return self._out.write(text)

    def flush(self) -> None:
        """Lines are written through (line buffering); nothing waits here."""
        with self._lock:
            self._out.flush()

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._out.close()

    def _open(self) -> IO[str]:
        # Append mode: every process's lines land whole at the end, whoever else writes.
        return self._path.open("a", encoding="utf-8", buffering=1)

    def _roll(self) -> None:
        # Writers that find the file full at once take turns on a lock of the file they hold; each then moves it
        # aside only if the path still names it, so a new file another writer started is never moved over it.
        fcntl.flock(self._out.fileno(), fcntl.LOCK_EX)
        try:
            held = os.fstat(self._out.fileno())
            try:
                current: os.stat_result | None = os.stat(self._path)
            except FileNotFoundError:
                current = None
            if current is not None and os.path.samestat(held, current):
                os.replace(self._path, rolled_path(self._path))
        finally:
            fcntl.flock(self._out.fileno(), fcntl.LOCK_UN)
        self._out.close()
        self._out = self._open()
