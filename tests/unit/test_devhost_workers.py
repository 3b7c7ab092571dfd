# intent_ref: platform.devhost
"""FUNCTIONS_WORKER_PROCESS_COUNT as the devhost reads it, and the worker socket's framing."""

from __future__ import annotations

import asyncio
import socket

import pytest
from azure.functions import meta

from devhost.workers import WORKER_COUNT_SETTING, read_frame, restart_delay, worker_count, write_frame


@pytest.mark.parametrize(("value", "count"), [(None, 0), ("", 0), ("0", 0), ("2", 2), (" 10 ", 10)])
def test_the_setting_gives_the_worker_count(monkeypatch: pytest.MonkeyPatch, value: str | None, count: int) -> None:
    if value is None:
        monkeypatch.delenv(WORKER_COUNT_SETTING, raising=False)
    else:
        monkeypatch.setenv(WORKER_COUNT_SETTING, value)
    assert worker_count() == count


@pytest.mark.parametrize("value", ["two", "-1", "11", "1.5"])
def test_a_bad_value_stops_the_host_naming_the_setting(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(WORKER_COUNT_SETTING, value)
    with pytest.raises(SystemExit, match=WORKER_COUNT_SETTING):
        worker_count()


def test_frames_carry_datums_whole_and_in_order_and_end_at_end_of_stream() -> None:
    async def main() -> list[object]:
        ours, theirs = socket.socketpair()
        _, writer = await asyncio.open_unix_connection(sock=ours)
        reader, _ = await asyncio.open_unix_connection(sock=theirs)
        big = "x" * 300_000  # larger than a socket buffer: read whole all the same
        write_frame(writer, ("invoke", 1, ("f", {"req": meta.Datum(big, "string")}, None, "")))
        write_frame(writer, ("ok", 1, meta.Datum({"a": 1}, "json")))
        await writer.drain()
        writer.close()
        return [await read_frame(reader), await read_frame(reader), await read_frame(reader)]

    first, second, end = asyncio.run(main())
    assert isinstance(first, tuple) and first[:2] == ("invoke", 1)
    datum = first[2][1]["req"]
    assert datum.type == "string" and datum.value == "x" * 300_000
    assert isinstance(second, tuple) and second[2].value == {"a": 1}
    assert end is None


def test_a_worker_that_keeps_failing_to_start_is_retried_less_and_less_often() -> None:
    assert [restart_delay(n) for n in range(7)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert restart_delay(10_000) == 30.0
