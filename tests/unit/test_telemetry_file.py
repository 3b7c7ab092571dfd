# intent_ref: platform.telemetry
"""The local telemetry file stays bounded while several processes append to it, and no line is torn or lost to
the reader of the newest ones."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from devhost.trace_tree import read_spans
from shared.observability.line_file import BoundedLineFile, rolled_path

_WRITER = """
import json, sys
from pathlib import Path
from shared.observability.line_file import BoundedLineFile
out = BoundedLineFile(Path(sys.argv[1]), max_bytes=int(sys.argv[2]))
for n in range(int(sys.argv[3])):
    out.write(json.dumps({"writer": sys.argv[4], "n": n, "pad": "x" * 100}) + "\\n")
out.close()
"""


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def test_a_full_file_moves_aside_once_and_a_new_one_takes_the_newest_lines(tmp_path: Path) -> None:
    path = tmp_path / "telemetry.jsonl"
    first, second = BoundedLineFile(path, max_bytes=1000), BoundedLineFile(path, max_bytes=1000)
    for n in range(60):
        (first if n % 2 else second).write(json.dumps({"n": n, "pad": "y" * 40}) + "\n")
    first.close()
    second.close()
    current, rolled = _lines(path), _lines(rolled_path(path))
    assert rolled, "the full file was not moved aside"
    assert path.stat().st_size < 1000 + 100 and rolled_path(path).stat().st_size < 1000 + 200
    numbers = [line["n"] for line in rolled + current]
    # The newest lines, in the order written, end the file; what is gone is older than everything kept.
    assert current[-1]["n"] == 59
    assert numbers == sorted(numbers)
    assert numbers == list(range(60 - len(numbers), 60))


def test_processes_appending_at_once_tear_no_line_and_keep_it_bounded(tmp_path: Path) -> None:
    path = tmp_path / "telemetry.jsonl"
    writers = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(path), "20000", "3000", name], cwd=Path.cwd())
        for name in ("host", "worker-1", "worker-2")
    ]
    assert [writer.wait(timeout=120) for writer in writers] == [0, 0, 0]
    current, rolled = _lines(path), _lines(rolled_path(path))  # json.loads fails on a torn line
    assert current and rolled
    assert len(rolled + current) < 3 * 3000
    assert path.stat().st_size < 2 * 20000
    assert rolled_path(path).stat().st_size < 3 * 20000
    # What is kept of each writer is the end of what it wrote, in order, nothing missing in between: a line is only
    # ever dropped with everything older than it.
    for name in ("host", "worker-1", "worker-2"):
        kept = [line["n"] for line in rolled + current if line["writer"] == name]
        assert kept == list(range(3000 - len(kept), 3000)), name


def test_the_trace_reader_reads_the_lines_moved_aside_first(tmp_path: Path) -> None:
    path = tmp_path / "telemetry.jsonl"

    def span(name: str) -> str:
        return json.dumps(
            {
                "span": {
                    "name": name,
                    "context": {"span_id": name, "trace_id": "t"},
                    "parent_id": None,
                    "start_time": "2026-12-04T10:00:00Z",
                    "end_time": "2026-12-04T10:00:01Z",
                }
            }
        )

    rolled_path(path).write_text(span("older") + "\n", encoding="utf-8")
    path.write_text(span("newer") + "\n", encoding="utf-8")
    assert [node.name for node in read_spans(path)] == ["older", "newer"]
