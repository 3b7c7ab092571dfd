# intent_ref: platform.devhost
"""A language worker process: imports the app and runs the invocations its host sends (devhost/workers.py)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import traceback
from pathlib import Path
from typing import Any

from devhost.invoker import FunctionInvocationError, Invoker
from devhost.loader import FunctionIndex, load_function_app
from devhost.workers import DURABLE_BINDING_ENV, FD_ARG, read_frame, write_frame


def _error(exc: BaseException) -> tuple[str, str, str]:
    return type(exc).__name__, str(exc), "".join(traceback.format_exception(exc))


async def _call(
    index: FunctionIndex, invoker: Invoker, writer: asyncio.StreamWriter, call_id: int, request: Any
) -> None:
    name, inputs, trigger_metadata, trace_parent, retry = request
    try:
        function = index.functions[name]
        result = await invoker.invoke(function, inputs, trigger_metadata, trace_parent=trace_parent, retry=retry)
        write_frame(writer, ("ok", call_id, result))
    except FunctionInvocationError as exc:
        write_frame(writer, ("error", call_id, _error(exc.exc)))
    except Exception as exc:  # binding or encoding: the call fails, the worker goes on
        write_frame(writer, ("error", call_id, _error(exc)))


async def serve(app_dir: Path, fd: int) -> None:
    """Answer invocations until the host closes the socket (or is gone), then leave at once."""
    index = load_function_app(app_dir / "function_app.py")
    invoker = Invoker(str(app_dir))
    binding = os.environ.get(DURABLE_BINDING_ENV)
    if binding:
        invoker.durable_binding = lambda: binding
    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=fd))
    write_frame(writer, ("ready",))
    calls: set[asyncio.Task[None]] = set()
    while (message := await read_frame(reader)) is not None:
        _, call_id, request = message
        task = asyncio.create_task(_call(index, invoker, writer, call_id, request))
        calls.add(task)
        task.add_done_callback(calls.discard)
    # The host is gone: what runs here has no one to answer to, and its host will run it again (as in Azure).
    logging.shutdown()
    os._exit(0)


def main() -> None:
    """`python -m devhost.worker --app DIR --fd N` (started by the host, never by hand)."""
    parser = argparse.ArgumentParser(prog="python -m devhost.worker", description=__doc__)
    parser.add_argument("--app", required=True)
    parser.add_argument(FD_ARG, type=int, required=True)
    args = parser.parse_args()
    # Ctrl-C reaches the whole process group; the host stops its workers by closing their sockets.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s[worker]: %(message)s")
    # httpx's INFO line is each request's full URL, a tenant's secrets included (ssrf.py raises it too).
    for noisy in ("azure", "psycopg.pool", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    asyncio.run(serve(Path(args.app).resolve(), args.fd))


if __name__ == "__main__":
    main()
