# intent_ref: platform.devhost
"""Language worker processes: the host runs triggered functions in them, as the Functions host runs its workers.

With `FUNCTIONS_WORKER_PROCESS_COUNT` set, the devhost starts that many `python -m devhost.worker` processes, each
importing the app, and sends them every orchestrator, activity, Event Hubs and timer invocation (Datum in, Datum
out, over a socket pair); HTTP functions stay in the host process, whose request objects cannot cross a process.
A worker that dies fails its calls in flight with WorkerExitedError, which is no answer rather than the function's
failure (`worker_exited`): the durable engine runs the episode or activity again, as the Durable extension retries
a work item after a worker crash, and the Event Hubs and timer triggers log it as a failed invocation. The worker
is started again; a worker whose host is gone exits at once, as a real one does.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import pickle
import socket
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import azure.functions as func
from azure.functions import meta

from devhost.invoker import FunctionInvocationError, Retry
from devhost.loader import function_name

logger = logging.getLogger(__name__)

WORKER_COUNT_SETTING = "FUNCTIONS_WORKER_PROCESS_COUNT"
DURABLE_BINDING_ENV = "QP_DEVHOST_DURABLE_BINDING"
"""How a worker learns the durableClient binding JSON the host fills for functions whose caller gives none."""
FD_ARG = "--fd"
_HEADER = struct.Struct("!I")
_RESTART_DELAY_S = 1.0
_MAX_RESTART_DELAY_S = 30.0


def restart_delay(failed_starts: int) -> float:
    """Seconds before starting a worker again after it exited, given how many starts in a row ended before the
    worker was ready (an app that no longer imports): 1 s after a worker that was serving, doubling per failed
    start up to 30 s, so a broken app is retried without filling the log every second."""
    return min(_RESTART_DELAY_S * (1 << min(failed_starts, 16)), _MAX_RESTART_DELAY_S)


class RemoteFunctionError(Exception):
    """What a function raised in a worker process: its type name, message and formatted traceback."""

    def __init__(self, type_name: str, message: str, remote_traceback: str) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.remote_traceback = remote_traceback


class WorkerExitedError(Exception):
    """The worker process running the call exited before answering."""


def worker_exited(exc: BaseException) -> bool:
    """Whether a failed invocation got no answer because its worker process exited (or was not there), rather than
    because the function failed: the call may run again, in a worker started since."""
    return isinstance(exc, FunctionInvocationError) and isinstance(exc.exc, WorkerExitedError)


def worker_count() -> int:
    """How many worker processes `FUNCTIONS_WORKER_PROCESS_COUNT` asks for (0: run functions in the host)."""
    raw = os.environ.get(WORKER_COUNT_SETTING, "").strip()
    if not raw:
        return 0
    try:
        count = int(raw)
    except ValueError:
        raise SystemExit(f"devhost: {WORKER_COUNT_SETTING} must be a whole number, got {raw!r}") from None
    if not 0 <= count <= 10:  # the Functions host's own bound
        raise SystemExit(f"devhost: {WORKER_COUNT_SETTING} must be between 0 and 10, got {count}")
    return count


async def read_frame(reader: asyncio.StreamReader) -> Any:
    """The next message, or None at end of stream."""
    try:
        header = await reader.readexactly(_HEADER.size)
        body = await reader.readexactly(_HEADER.unpack(header)[0])
    except asyncio.IncompleteReadError:
        return None
    return pickle.loads(body)  # noqa: S301  # our own processes at both ends of a socket pair


def write_frame(writer: asyncio.StreamWriter, message: Any) -> None:
    """Queue one message (a whole frame per call, so concurrent writers never interleave)."""
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(_HEADER.pack(len(body)) + body)


@dataclass(eq=False)
class _Worker:
    number: int
    process: asyncio.subprocess.Process | None = None
    writer: asyncio.StreamWriter | None = None
    ready: asyncio.Future[None] | None = None
    pending: dict[int, tuple[str, asyncio.Future[Any]]] = field(default_factory=dict)
    reader_task: asyncio.Task[None] | None = None
    failed_starts: int = 0
    """Starts in a row that ended before the worker was ready."""


class WorkerPool:
    """Sends invocations to worker processes; same `invoke` as the in-process Invoker."""

    def __init__(self, app_dir: Path, count: int, durable_binding: Callable[[], str]) -> None:
        self._app_dir = app_dir
        self._durable_binding = durable_binding
        self._workers = [_Worker(number) for number in range(count)]
        self._ids = itertools.count(1)
        self._stopping = False

    async def start(self) -> None:
        """Start every worker process and wait until each has imported the app."""
        for worker in self._workers:
            await self._spawn(worker)
        await asyncio.gather(*(w.ready for w in self._workers if w.ready is not None))
        logger.info("%d worker process(es) ready", len(self._workers))

    async def _spawn(self, worker: _Worker, ready: asyncio.Future[None] | None = None) -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        env = {**os.environ, DURABLE_BINDING_ENV: self._durable_binding()}
        try:
            worker.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "devhost.worker",
                "--app",
                str(self._app_dir),
                FD_ARG,
                str(theirs.fileno()),
                pass_fds=(theirs.fileno(),),
                env=env,
            )
        finally:
            theirs.close()
        reader, worker.writer = await asyncio.open_unix_connection(sock=ours)
        worker.ready = ready if ready is not None else loop.create_future()
        worker.reader_task = asyncio.create_task(self._read(worker, reader), name=f"devhost-worker-{worker.number}")

    async def _read(self, worker: _Worker, reader: asyncio.StreamReader) -> None:
        while (message := await read_frame(reader)) is not None:
            kind = message[0]
            if kind == "ready":
                worker.failed_starts = 0
                if worker.ready is not None and not worker.ready.done():
                    worker.ready.set_result(None)
                continue
            _, call_id, payload = message
            name, future = worker.pending.pop(call_id, (None, None))
            if name is None or future is None or future.done():
                continue  # a call this host no longer waits for
            if kind == "ok":
                future.set_result(payload)
            else:
                type_name, text, stack = payload
                error = RemoteFunctionError(type_name, text, stack)
                future.set_exception(FunctionInvocationError(name, error, friendly=f"{type_name}: {text}"))
        await self._exited(worker)

    async def _exited(self, worker: _Worker) -> None:
        # At once, before anything awaits: an invocation sent now would go to a socket nobody reads and wait for
        # ever. Until the restart, invocations routed here wait for it (the other workers are chosen first).
        worker.writer = None
        started, restarted = worker.ready, asyncio.get_running_loop().create_future()
        worker.ready = restarted
        process = worker.process
        code = await process.wait() if process is not None else None
        for name, future in worker.pending.values():
            if not future.done():
                future.set_exception(FunctionInvocationError(name, WorkerExitedError(f"worker exited ({code})")))
        worker.pending.clear()
        delay = restart_delay(worker.failed_starts)  # 0 for a worker that was serving: "ready" reset it
        if started is not None and not started.done():
            started.set_exception(RuntimeError(f"worker {worker.number} exited ({code}) before it was ready"))
            worker.failed_starts += 1
        if not self._stopping:
            logger.error("worker process %d exited (%s); starting it again in %.0f s", worker.number, code, delay)
            await asyncio.sleep(delay)
        if self._stopping:
            restarted.set_exception(WorkerExitedError("the host is stopping"))
            restarted.exception()  # retrieved here: nobody may be waiting for it
            return
        await self._spawn(worker, restarted)

    def _choose(self) -> _Worker:
        return min(self._workers, key=lambda w: (w.ready is None or not w.ready.done(), len(w.pending)))

    async def invoke(
        self,
        function: func.Function,
        inputs: dict[str, meta.Datum],
        trigger_metadata: dict[str, meta.Datum] | None = None,
        *,
        trace_parent: str = "",
        retry: Retry | None = None,
    ) -> meta.Datum | None:
        """Run `function` in the least busy worker; its encoded output, if any.

        Raises FunctionInvocationError when the user code raises or the worker exits meanwhile.
        """
        worker = self._choose()
        name = function_name(function)
        if worker.ready is not None:
            try:
                await asyncio.shield(worker.ready)
            except Exception as exc:  # it exited before it was ready, or the host stops
                raise FunctionInvocationError(name, WorkerExitedError(str(exc))) from exc
        if worker.writer is None:
            raise FunctionInvocationError(name, WorkerExitedError("worker not running"))
        call_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        worker.pending[call_id] = (name, future)
        write_frame(worker.writer, ("invoke", call_id, (name, inputs, trigger_metadata, trace_parent, retry)))
        result: meta.Datum | None = await future
        return result

    async def stop(self) -> None:
        """Close the workers' sockets (each exits at end of stream) and wait for them briefly."""
        self._stopping = True
        for worker in self._workers:
            if worker.writer is not None:
                worker.writer.close()
        for worker in self._workers:
            if worker.process is None:
                continue
            try:
                await asyncio.wait_for(worker.process.wait(), timeout=5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
            if worker.reader_task is not None:
                worker.reader_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker.reader_task
