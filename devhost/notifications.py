# intent_ref: platform.devhost
"""One LISTEN connection for the whole host: components subscribe to channels instead of opening their own."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

logger = logging.getLogger(__name__)

OnNotify = Callable[[str | None, int | None], None]
"""Called with (payload, notifying backend pid) per notification; (None, None) after every (re)connect, because
notifications sent while no connection listened are lost: "anything may have changed"."""

_RECONNECT_DELAY_S = 1.0
_READ_TIMEOUT_S = 0.5
"""How often the reader looks up from its socket to LISTEN on channels subscribed since, or to stop."""


class Notifications:
    """LISTENs on every subscribed channel over one autocommit connection, reconnecting until stopped."""

    def __init__(self, database_url: str, *, reconnect_delay_s: float = _RECONNECT_DELAY_S) -> None:
        self._database_url = database_url
        self._reconnect_delay_s = reconnect_delay_s
        self._subscribers: dict[str, list[OnNotify]] = defaultdict(list)
        self._listening: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.connections = 0
        """How many times it has (re)connected."""

    def subscribe(self, channel: str, on_notify: OnNotify) -> None:
        """Call `on_notify` for `channel` from now on (LISTEN is issued within a read timeout); starts on first use."""
        self._subscribers[channel].append(on_notify)
        if self._task is None or self._task.done():
            self._stopping = asyncio.Event()
            self._task = asyncio.create_task(self._run(), name="devhost-notifications")

    def unsubscribe(self, channel: str, on_notify: OnNotify) -> None:
        with contextlib.suppress(ValueError):
            self._subscribers[channel].remove(on_notify)

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            # Nothing to finish there: cancel rather than wait for its bounded read to time out.
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(self._database_url, autocommit=True) as conn:
                    self._listening = set()
                    self.connections += 1
                    while not self._stopping.is_set():
                        await self._listen_new(conn)
                        # A bounded wait, so new channels and `stopping` are seen without cancelling a read.
                        async for notify in conn.notifies(timeout=_READ_TIMEOUT_S):
                            self._deliver(notify.channel, notify.payload, notify.pid)
            except psycopg.Error as exc:
                logger.warning("host notification listener lost its connection (%s); reconnecting", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=self._reconnect_delay_s)

    async def _listen_new(self, conn: psycopg.AsyncConnection[Any]) -> None:
        for channel in [c for c, subs in self._subscribers.items() if subs and c not in self._listening]:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            self._listening.add(channel)
            self._deliver(channel, None, None)  # subscribed or reconnected: whatever happened meanwhile

    def _deliver(self, channel: str, payload: str | None, pid: int | None) -> None:
        for on_notify in list(self._subscribers.get(channel, ())):
            try:
                on_notify(payload, pid)
            except Exception:  # one subscriber's bug must not starve the others
                logger.exception("a notification subscriber of %s failed", channel)
