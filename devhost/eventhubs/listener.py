# intent_ref: platform.devhost-eventhubs
"""Wake consumers when devhost_eventhubs.publish() notifies, whoever published (app, devhost, psql)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import psycopg
from psycopg import sql

logger = logging.getLogger(__name__)

_RECONNECT_DELAY = 1.0


async def listen(
    database_url: str, channel: str, on_notify: Callable[[str | None], None], stopping: asyncio.Event
) -> None:
    """LISTEN on `channel` and call `on_notify(hub)` per notification, reconnecting until `stopping`.

    `on_notify(None)` means "anything may have changed": it is called after every (re)connect because
    notifications sent while no connection listened are lost.
    """
    while not stopping.is_set():
        try:
            async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                on_notify(None)
                while not stopping.is_set():
                    # A bounded wait, so `stopping` is seen without cancelling a read mid-protocol.
                    async for notify in conn.notifies(timeout=1.0):
                        on_notify(notify.payload)
        except psycopg.Error as exc:
            logger.warning("event hub listener lost its connection (%s); reconnecting", exc)
            try:
                await asyncio.wait_for(stopping.wait(), timeout=_RECONNECT_DELAY)
            except TimeoutError:
                pass
