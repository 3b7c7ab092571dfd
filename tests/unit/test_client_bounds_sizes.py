# intent_ref: platform.gateway
"""The answer bound can be raised (an execution of 200 steps with 1 MiB inline outputs passes the 64 MiB default):
`max_answer_bytes=` of either client and `qp --max-answer-bytes` (or QP_MAX_ANSWER_BYTES); a bound that is not a
positive number of bytes is refused before anything is sent."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import quantum_platform.client as module
from quantum_platform import AsyncClient, Client, StaticToken, UnexpectedAnswer, cli

from tests.unit.test_cli import ENTRA, Platform, home, platform, qp, refusal  # noqa: F401  # fixtures

ENV = {"QP_TOKEN": "t", "QP_URL": ENTRA}
MiB = 1024 * 1024
EXECUTION = {"id": "e-1", "status": "succeeded", "steps": [], "output": {"report": "r" * 4096}}


@pytest.mark.parametrize("bound", [0, -1, True, 1.5, "64"], ids=["zero", "negative", "a flag", "a fraction", "text"])
def test_a_bound_that_is_not_a_positive_number_of_bytes_is_refused_by_both_clients(bound: Any) -> None:
    sent: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda request: sent.append(request) or httpx.Response(200, json={}))
    with pytest.raises(ValueError, match="max_answer_bytes must be a positive number of bytes"):
        Client("http://p", credential=StaticToken("t"), transport=transport, max_answer_bytes=bound)
    with pytest.raises(ValueError, match="max_answer_bytes must be a positive number of bytes"):
        AsyncClient("http://p", credential=StaticToken("t"), max_answer_bytes=bound)
    assert sent == []


def test_a_raised_bound_reads_an_answer_past_the_default() -> None:
    """65 MiB, as an execution of 200 steps with inline outputs can be: refused by default, read whole when raised."""
    size = module.MAX_ANSWER_BYTES + MiB

    def chunks() -> Iterator[bytes]:
        yield b'{"id": "e-1", "status": "succeeded", "steps": [], "output": "'
        for _ in range(size // MiB):
            yield b"o" * MiB
        yield b'"}'

    def handle(request: httpx.Request) -> httpx.Response:  # noqa: ARG001
        return httpx.Response(200, headers={"content-type": "application/json"}, content=chunks())

    with Client("http://p", credential=StaticToken("t"), transport=httpx.MockTransport(handle)) as api:
        with pytest.raises(UnexpectedAnswer, match=f"more than {module.MAX_ANSWER_BYTES} bytes"):
            api.executions.get("e-1")
    raised = Client(
        "http://p", credential=StaticToken("t"), transport=httpx.MockTransport(handle), max_answer_bytes=size + MiB
    )
    with raised:
        assert len(raised.executions.get("e-1")["output"]) == size

    async def read() -> int:
        async def async_chunks() -> Any:
            for chunk in chunks():
                yield chunk

        def async_handle(request: httpx.Request) -> httpx.Response:  # noqa: ARG001
            return httpx.Response(200, headers={"content-type": "application/json"}, content=async_chunks())

        transport = httpx.MockTransport(async_handle)
        async with AsyncClient(
            "http://p", credential=StaticToken("t"), transport=transport, max_answer_bytes=2 * size
        ) as api:
            return len((await api.executions.get("e-1"))["output"])

    assert asyncio.run(read()) == size


def test_qp_reads_answers_up_to_its_max_answer_bytes_option(platform: Platform) -> None:
    platform.answer({"GET /api/v1/executions/e-1": EXECUTION})
    assert qp("executions", "get", "e-1", env=ENV).exit_code == 0  # the default bound: far above 4 KiB
    small = qp("--max-answer-bytes", "1024", "executions", "get", "e-1", env=ENV)
    assert refusal(small) == "error: GET /api/v1/executions/e-1 answered more than 1024 bytes"
    assert small.stdout == ""
    from_environment = qp("executions", "get", "e-1", env=ENV | {"QP_MAX_ANSWER_BYTES": "2048"})
    assert refusal(from_environment) == "error: GET /api/v1/executions/e-1 answered more than 2048 bytes"
    raised = qp("--max-answer-bytes", str(128 * MiB), "executions", "get", "e-1", "-o", "json", env=ENV)
    assert raised.exit_code == 0, (raised.output, raised.exception)


def test_qp_raises_its_bound_past_the_default(platform: Platform) -> None:
    """`qp webhooks delete` reads the answer whole and prints a line of its own: a 65 MiB answer is refused by
    default and read with a raised bound."""
    size = module.MAX_ANSWER_BYTES + MiB

    def handle(request: httpx.Request) -> httpx.Response:  # noqa: ARG001
        return httpx.Response(200, content=(b"x" * MiB for _ in range(size // MiB)))

    platform.handler = handle
    assert "more than" in refusal(qp("webhooks", "delete", "w-1", env=ENV))
    raised = qp("--max-answer-bytes", str(size + MiB), "webhooks", "delete", "w-1", env=ENV)
    assert raised.exit_code == 0, (raised.output, raised.exception)
    assert raised.stdout == "deleted w-1\n"


@pytest.mark.parametrize("bound", ["0", "-5", "lots"])
def test_qp_refuses_a_bound_that_is_not_a_positive_number_as_a_usage_error(
    home: Path, capsys: pytest.CaptureFixture[str], bound: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--max-answer-bytes", bound, "executions", "get", "e-1"])
    assert exited.value.code == cli.EXIT_USAGE
    printed = capsys.readouterr()
    assert "Invalid value for '--max-answer-bytes'" in printed.err and printed.out == ""
