# intent_ref: platform.gateway
"""The Python client and `qp` against a broken or hostile server: bounded lines, events, bodies, pages and rounds."""

from __future__ import annotations

import asyncio
import types
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import quantum_platform.client as module
from quantum_platform import AsyncClient, Client, StaticToken, UnexpectedAnswer, cli
from rich.console import Console

from tests.unit.test_cli import ENTRA, INTENT_ID, Platform, qp, refusal

EVENTS = "/api/v1/executions/e/events"
ENV = {"QP_TOKEN": "t", "QP_URL": ENTRA}
MiB = 1024 * 1024
BOUND = 60
"""Requests after which a scripted server stops answering: a client still asking then would have asked forever."""


class Unbounded(Exception):
    """The client went on asking past BOUND requests."""


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The client's waits, recorded instead of slept (both clients'), on a clock that never moves: every round of
    following is one answered at once, whatever the machine's speed."""
    waited: list[float] = []

    async def asleep(seconds: float) -> None:
        waited.append(seconds)

    monkeypatch.setattr(module, "time", types.SimpleNamespace(sleep=waited.append))
    monkeypatch.setattr(module, "asyncio", types.SimpleNamespace(sleep=asleep))
    monkeypatch.setattr(module, "_monotonic", lambda: 0.0, raising=False)
    return waited


@pytest.fixture
def platform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Platform:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("QP_PROFILE", str(tmp_path / "profile.json"))
    for name in ("QP_URL", "QP_TOKEN", "QP_PROJECT_DIR", "COLUMNS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(cli, "out", Console(width=200))
    monkeypatch.setattr(cli, "err", Console(stderr=True, width=200))
    return Platform(monkeypatch)


def counted(handler: Callable[[httpx.Request], httpx.Response], asked: list[httpx.Request]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        if len(asked) > BOUND:
            raise Unbounded(f"{len(asked)} requests")
        return handler(request)

    return httpx.MockTransport(handle)


def sync_events(transport: httpx.MockTransport) -> Iterator[dict[str, Any]]:
    with Client("http://p", credential=StaticToken("t"), transport=transport) as api:
        yield from api.stream(EVENTS)


def async_events(transport: httpx.MockTransport, got: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every event the async client yields (into `got` as they come, for a test that expects a raise)."""
    got = [] if got is None else got

    async def follow() -> None:
        async with AsyncClient("http://p", credential=StaticToken("t"), transport=transport) as api:
            async for event in api.stream(EVENTS):
                got.append(event)

    asyncio.run(follow())
    return got


def sse(body: str) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, text=body)


def is_stream(request: httpx.Request) -> bool:
    return request.headers.get("accept", "").startswith("text/event-stream")


# ------------------------------------------------------------------------------------------ D3: an endless line
def test_an_event_line_without_end_is_refused_at_the_event_bound_in_both_clients() -> None:
    sent: list[int] = []

    def chunks() -> Iterator[bytes]:
        yield b"data: "
        for _ in range(40):  # more than twice the bound: a client that buffers it all reads 40 MiB, then the end
            sent.append(1)
            yield b"x" * MiB

    async def async_chunks() -> AsyncIterator[bytes]:
        for chunk in chunks():
            yield chunk

    asynchronous = [False]

    def handler(request: httpx.Request) -> httpx.Response:
        if is_stream(request):
            body: Any = async_chunks() if asynchronous[0] else chunks()
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)
        return httpx.Response(200, json={"status": "succeeded", "items": [], "next_after": 0})

    with pytest.raises(UnexpectedAnswer, match="event of more than"):
        list(sync_events(counted(handler, [])))
    assert len(sent) <= module.MAX_EVENT_BYTES // MiB + 1  # read no further than the bound

    sent.clear()
    asynchronous[0] = True
    with pytest.raises(UnexpectedAnswer, match="event of more than"):
        async_events(counted(handler, []))
    assert len(sent) <= module.MAX_EVENT_BYTES // MiB + 1


def test_an_event_of_many_data_lines_is_held_to_the_same_bound() -> None:
    line = b"data: " + b"y" * (MiB - 7) + b"\n"

    def handler(request: httpx.Request) -> httpx.Response:
        if is_stream(request):
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=line * 20)
        return httpx.Response(200, json={"status": "succeeded", "items": [], "next_after": 0})

    with pytest.raises(UnexpectedAnswer, match="event of more than"):
        list(sync_events(counted(handler, [])))


def test_an_event_past_the_bound_that_comes_whole_in_one_chunk_is_refused() -> None:
    # Only what followed the chunk's last event end was counted: a whole event (a compressed chunk decoded at once)
    # passed whatever its size.
    big = b"data: " + b"z" * (module.MAX_EVENT_BYTES + MiB) + b"\n\n"
    asked: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if is_stream(request):
            end = b'data: {"seq": 2, "type": "execution_completed"}\n\n'
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=big + end)
        return httpx.Response(200, json={"status": "succeeded", "items": [], "next_after": 0})

    with pytest.raises(UnexpectedAnswer, match="event of more than"):
        list(sync_events(counted(handler, asked)))
    assert asked[0].headers["accept-encoding"] == "identity"  # not compressed, so not decoded past the bound at once


@pytest.mark.parametrize("blank", [b"\r\n", b"\r", b"\n"])
def test_events_whose_blank_line_ends_differently_from_their_lines_are_each_counted_alone(blank: bytes) -> None:
    # LF lines and a CRLF or CR blank line are an event end the format allows: missed, every event of a stream was
    # added to the one before, until a long stream of small events was refused.
    pad = "p" * (MiB - 100)
    events = b"".join(
        f'data: {{"seq": {n}, "type": "step_started", "pad": "{pad}"}}\n'.encode() + blank for n in range(1, 21)
    )
    end = b'data: {"seq": 21, "type": "execution_completed"}\n' + blank

    def handler(request: httpx.Request) -> httpx.Response:
        if is_stream(request):
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=events + end)
        return httpx.Response(200, json={"status": "succeeded", "items": [], "next_after": 21})

    got = list(sync_events(counted(handler, [])))
    assert [event["seq"] for event in got] == list(range(1, 22))


# ------------------------------------------------------------------------------------------ D4: replayed events
@pytest.mark.parametrize("how", ["stream", "page"])
def test_events_at_or_before_the_resume_position_are_never_yielded_again(how: str, pauses: list[float]) -> None:
    """A server that sends event 1 again on every reconnect (never the terminal one): it comes once, and the client
    backs off, then gives up, instead of yielding it thousands of times."""
    replayed = '{"seq": 1, "type": "step_started"}'

    def handler(request: httpx.Request) -> httpx.Response:
        if how == "stream" and is_stream(request):
            return sse(f"id: 1\nevent: step_started\ndata: {replayed}\n\n")
        return httpx.Response(200, json={"status": "running", "items": [{"seq": 1, "type": "step_started"}]})

    got: list[int] = []
    with pytest.raises(UnexpectedAnswer, match="no new event"):
        got.extend(event["seq"] for event in sync_events(counted(handler, [])))
    assert got == [1]
    assert pauses == [0.5, 1.0, 2.0, 4.0] + [5.0] * 8

    pauses.clear()
    yielded: list[dict[str, Any]] = []
    with pytest.raises(UnexpectedAnswer, match="no new event"):
        async_events(counted(handler, []), yielded)
    assert [event["seq"] for event in yielded] == [1]
    assert len(pauses) == 12


def test_qp_events_lists_each_event_once_by_the_same_rule(platform: Platform) -> None:
    """`qp events` reads pages by the stream's rule: an event without a number is no event, and one at or before
    the position is not listed again."""

    def handler(request: httpx.Request) -> httpx.Response:
        after = int(request.url.params.get("after", "0"))
        items: list[dict[str, Any]] = [{"seq": 1, "type": "step_started"}, {"type": "unnumbered"}]
        items += [{"seq": 2, "type": "step_started"}] if after < 2 else []
        return httpx.Response(200, json={"status": "running", "items": items, "next_after": 0})

    platform.handler = handler
    result = qp("events", "e", "--output", "json", env=ENV)
    assert result.exit_code == 0, (result.output, result.exception)
    assert [line.split(",")[0] for line in result.stdout.splitlines()] == ['{"seq": 1', '{"seq": 2']


# ------------------------------------------------------------------------------------------ D5: a cursor cycle
def cycle(request: httpx.Request) -> httpx.Response:
    """Pages A -> B -> A -> ...: never the cursor just sent, always one sent before."""
    following = "B" if request.url.params.get("cursor") != "B" else "A"
    return httpx.Response(200, json={"items": [{"id": INTENT_ID, "name": "x"}], "next_cursor": following})


def test_a_cursor_cycle_is_refused_by_both_clients() -> None:
    asked: list[httpx.Request] = []
    with Client("http://p", credential=StaticToken("t"), transport=counted(cycle, asked)) as api:
        with pytest.raises(UnexpectedAnswer, match="cursor"):
            list(api.intents.iterate())
    assert [request.url.params.get("cursor") for request in asked] == [None, "B", "A"]

    async def walk() -> None:
        async with AsyncClient("http://p", credential=StaticToken("t"), transport=counted(cycle, [])) as api:
            async for _ in api.iterate("/api/v1/intents"):
                pass

    with pytest.raises(UnexpectedAnswer, match="cursor"):
        asyncio.run(walk())


def test_qp_list_all_refuses_a_cursor_cycle(platform: Platform) -> None:
    def bounded(request: httpx.Request) -> httpx.Response:
        if len(platform.seen) > BOUND:
            raise Unbounded(f"{len(platform.seen)} requests")
        return cycle(request)

    platform.handler = bounded
    assert "cursor" in refusal(qp("intents", "list", "--all", env=ENV))
    assert len(platform.seen) == 3


# ------------------------------------------------------------------------------------------ D6: an instant long poll
def test_a_long_poll_answered_at_once_with_nothing_new_is_paused_then_given_up(pauses: list[float]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:  # noqa: ARG001
        return httpx.Response(200, json={"status": "running", "items": [], "next_after": 0})

    asked: list[httpx.Request] = []
    with pytest.raises(UnexpectedAnswer, match="at once"):
        list(sync_events(counted(handler, asked)))
    assert len(asked) == 13 and pauses == [0.5, 1.0, 2.0, 4.0] + [5.0] * 8

    pauses.clear()
    with pytest.raises(UnexpectedAnswer, match="at once"):
        async_events(counted(handler, []))
    assert pauses == [0.5, 1.0, 2.0, 4.0] + [5.0] * 8


def test_a_poll_that_moves_on_is_followed_without_giving_up(pauses: list[float]) -> None:
    """Quick empty rounds between events do not add up: each new event starts the count again."""
    answers = iter(range(1, 40))

    def handler(request: httpx.Request) -> httpx.Response:
        seq = next(answers)
        if seq % 3:  # two empty answers for every event
            after = int(request.url.params["after"])
            return httpx.Response(200, json={"status": "running", "items": [], "next_after": after})
        kind = "execution_completed" if seq == 36 else "step_started"
        return httpx.Response(200, json={"status": "running", "items": [{"seq": seq, "type": kind}]})

    assert [event["seq"] for event in sync_events(counted(handler, []))] == list(range(3, 37, 3))
    assert max(pauses) == 1.0


# ------------------------------------------------------------------------------------------ D7: wrong shapes, sizes
def test_qp_run_refuses_a_start_answered_with_a_list(platform: Platform) -> None:
    platform.answer({f"POST /api/v1/intents/{INTENT_ID}/execute": httpx.Response(202, json=[1, 2, 3])})
    assert "list" in refusal(qp("run", INTENT_ID, env=ENV))


def test_an_events_route_answering_a_list_is_an_unexpected_answer(platform: Platform) -> None:
    def handler(request: httpx.Request) -> httpx.Response:  # noqa: ARG001
        return httpx.Response(200, json=[])

    with pytest.raises(UnexpectedAnswer):
        list(sync_events(counted(handler, [])))
    platform.handler = handler
    assert "events" in refusal(qp("events", "e", "--follow", env=ENV))
    assert "events" in refusal(qp("events", "e", env=ENV))


def test_an_event_id_of_digits_that_are_not_ascii_is_not_a_number() -> None:
    def handler(request: httpx.Request) -> httpx.Response:  # noqa: ARG001
        return sse('id: ²\nevent: execution_completed\ndata: {"seq": 1, "type": "execution_completed"}\n\n')

    assert [event["seq"] for event in sync_events(counted(handler, []))] == [1]


def test_an_answer_past_the_clients_bound_is_refused_without_reading_it_all() -> None:
    sent: list[int] = []
    bound = 64 * MiB  # the documented default

    def chunks() -> Iterator[bytes]:
        yield b'{"items": [], "pad": "'
        for _ in range(bound // MiB + 30):
            sent.append(1)
            yield b"a" * MiB

    def handler(request: httpx.Request) -> httpx.Response:  # noqa: ARG001
        return httpx.Response(200, headers={"content-type": "application/json"}, content=chunks())

    with Client("http://p", credential=StaticToken("t"), transport=counted(handler, [])) as api:
        with pytest.raises(UnexpectedAnswer, match="more than"):
            api.get("/api/v1/intents")
    assert len(sent) <= bound // MiB + 1

    small = Client("http://p", credential=StaticToken("t"), transport=counted(handler, []), max_answer_bytes=MiB)
    with small, pytest.raises(UnexpectedAnswer, match=f"more than {MiB} bytes"):
        small.get("/api/v1/intents")


def test_a_body_that_is_not_json_is_an_unexpected_answer_and_still_a_value_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:  # noqa: ARG001
        return httpx.Response(200, text="<html>")

    with Client("http://p", credential=StaticToken("t"), transport=counted(handler, [])) as api:
        answer = api.get("/api/v1/intents")
        with pytest.raises(UnexpectedAnswer, match="not JSON|other than JSON"):
            answer.json()
        with pytest.raises(ValueError):
            answer.json()


def test_an_error_qp_did_not_expect_is_shown_as_itself(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """main's handlers name only exceptions that exist: an unexpected error is not hidden behind an AttributeError
    raised while looking for click's Abort, which typer's own copy of click does not have; its traceback is printed
    and qp exits EXIT_SOFTWARE."""

    def broken(**_: Any) -> None:
        raise LookupError("unexpected")

    monkeypatch.setattr(cli, "app", broken)
    with pytest.raises(SystemExit) as exited:
        cli.main(["events", "e"])
    assert exited.value.code == cli.EXIT_SOFTWARE
    said = capsys.readouterr().err
    assert "LookupError: unexpected" in said and "AttributeError" not in said
