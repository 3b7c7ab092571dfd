# intent_ref: platform.execution
"""Wake the long polls of an execution's events when Postgres announces an append: one listener per process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from uuid import UUID

import psycopg

from shared.config import SettingsError, get_settings

logger = logging.getLogger(__name__)

CHANNEL = "execution_events"
"""Migration 0016: after an event commits, `<execution id>:<seq>`; one channel for the whole platform."""
APPLICATION_NAME = "qp-event-wakeup"
_RECONNECT_DELAY_S = 1.0
_READ_TIMEOUT_S = 1.0
"""How often the listening thread looks up from its socket to see whether it should stop."""
DOWN_RECHECK_S = 2.0
"""How long a waiter waits for a wake-up before it reads again on its own while the process does not listen (its
listener not connected yet, or its connection lost and not back): an event then reaches it within this."""
LISTENING_RECHECK_S = 30.0
"""How long a waiter waits for a wake-up before it reads again on its own while the listener listens: a safety net
only (a notification is not lost while the connection stays up, and a lost connection wakes every waiter, which then
waits DOWN_RECHECK_S), so an idle waiter costs a read this seldom, not every DOWN_RECHECK_S."""
COALESCE_S = 0.05
"""A waiter wakes this long after the first notification, not at once: events appended in separate commits close
together (a step's end and the next one's start) are answered by one read and one response instead of a poll round
each, and the event still reaches the client well within 100 ms of its commit."""

Connect = Callable[[], psycopg.Connection[Any]]
W = TypeVar("W", "Waiter", "ThreadWaiter")


class Waiter:
    """One long poll's wake-up: `event` is set (on its event loop) when its execution may have a new event."""

    def __init__(
        self, owner: EventWakeup, execution_id: UUID, loop: asyncio.AbstractEventLoop, coalesce_s: float = COALESCE_S
    ) -> None:
        self._owner, self.execution_id, self._loop, self._coalesce_s = owner, execution_id, loop, coalesce_s
        self.event = asyncio.Event()
        self._pending = threading.Event()  # a wake-up is scheduled and has not fired yet

    def clear(self) -> None:
        """Forget earlier wake-ups: call right before reading, so an append after the read wakes it again."""
        self.event.clear()

    def wake(self) -> None:
        # Called from the listening thread: asyncio.Event is not thread-safe, its loop sets it.
        if self._pending.is_set():
            return  # the scheduled wake-up covers this notification too
        self._pending.set()
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
            self._loop.call_soon_threadsafe(self._loop.call_later, self._coalesce_s, self._fire)

    def _fire(self) -> None:
        self._pending.clear()
        self.event.set()

    def close(self) -> None:
        self._owner.unsubscribe(self)


class ThreadWaiter:
    """A blocking wait's wake-up: `event` (a threading.Event) is set at once when its execution may have a new event.

    For a worker thread that waits for a result a moment (a dispatch waiting for quick step results), where a
    coalescing delay would only add latency."""

    def __init__(self, owner: EventWakeup, execution_id: UUID) -> None:
        self._owner, self.execution_id = owner, execution_id
        self.event = threading.Event()

    def wake(self) -> None:
        self.event.set()

    def close(self) -> None:
        self._owner.unsubscribe(self)


class EventWakeup:
    """LISTENs on one dedicated connection in a daemon thread (never one from the request pool) and wakes the
    waiters of the execution each notification names.

    A notification sent while the connection is down is lost, so every (re)connect wakes every waiter; a waiter
    also re-reads on its own now and then (`recheck_s`: often while nobody listens, seldom while the connection is
    up), so nothing depends on delivery. A connection that drops wakes every waiter too, so that each waits the short
    interval from then on, not the long one it started with.

    These wake-ups of a change of the connection (a connect, a drop) come at most once per DOWN_RECHECK_S: each is a
    read for every stream's feed and long poll of the process, and a connection that flaps (dropped as soon as it is
    made) woke them twice per flap. One due sooner is put off until then, and covers every change meanwhile, so a
    waiter is still woken within DOWN_RECHECK_S of any change (a waiter that was already woken since reads on its own
    every DOWN_RECHECK_S while nobody listens).
    """

    def __init__(self, connect: Connect, *, reconnect_delay_s: float = _RECONNECT_DELAY_S) -> None:
        self._connect = connect
        self._reconnect_delay_s = reconnect_delay_s
        self._lock = threading.Lock()
        self._waiters: dict[UUID, set[Waiter | ThreadWaiter]] = {}
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._stopped = False
        """Set by `stop()` (under `_lock`): a stopped listener never starts again (a reference kept past
        `forget_event_wakeup` would otherwise start one nothing stops, on a connection of its own)."""
        self._conn: psycopg.Connection[Any] | None = None
        self.listening = threading.Event()
        """Set while the connection listens (cleared when it drops)."""
        self.connections = 0
        """How many times the listener has (re)connected."""
        self._changed_woken_at = -float("inf")
        """When (monotonic) the waiters were last woken for a change of the connection."""
        self._changed_wake: threading.Timer | None = None
        """That wake-up, put off until DOWN_RECHECK_S after the last one (None: none is due)."""

    # ------------------------------------------------------------------ waiters (event loop side)
    def subscribe(self, execution_id: UUID) -> Waiter:
        """A waiter for `execution_id` on the running event loop; the listener starts on first use."""
        return self._register(Waiter(self, execution_id, asyncio.get_running_loop()))

    def subscribe_thread(self, execution_id: UUID) -> ThreadWaiter:
        """A waiter for `execution_id` that a blocking thread waits on; the listener starts on first use."""
        return self._register(ThreadWaiter(self, execution_id))

    def _register(self, waiter: W) -> W:
        with self._lock:
            self._waiters.setdefault(waiter.execution_id, set()).add(waiter)
        self.start()
        return waiter

    def unsubscribe(self, waiter: Waiter | ThreadWaiter) -> None:
        with self._lock:
            waiters = self._waiters.get(waiter.execution_id)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[waiter.execution_id]

    @contextlib.contextmanager
    def waiting(self, execution_id: UUID) -> Iterator[Waiter]:
        waiter = self.subscribe(execution_id)
        try:
            yield waiter
        finally:
            waiter.close()

    @property
    def waiter_count(self) -> int:
        with self._lock:
            return sum(len(w) for w in self._waiters.values())

    # ------------------------------------------------------------------ the listening thread
    def start(self) -> None:
        """Start the listening thread unless it runs, or this listener was stopped: then its waiters re-read on
        their own (`recheck_s`) and the process's listener is whatever `get_event_wakeup` answers now."""
        with self._lock:
            if self._stopped:
                logger.debug("execution event listener was stopped; not started again")
                return
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="execution-event-wakeup", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening and close the connection (waiters fall back to their own re-reads): every waiter is woken
        at once when it ends, even when a change's wake-up was put off (`_wake_all_changed`). Final: `start()` does
        nothing from then on, so a start while this joins the thread cannot keep it running."""
        listened = self.listening.is_set()
        with self._lock:
            self._stopped = True
            self._stopping.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        self._thread = None
        with self._lock:
            timer, self._changed_wake = self._changed_wake, None
        if timer is not None:
            timer.cancel()
        if timer is not None or listened:
            # The drop's wake-up, put off by the rate limit, was just cancelled (or the waiters wait out the long
            # re-check of a listener that listened): they read again now, then every DOWN_RECHECK_S on their own.
            with self._lock:
                self._changed_woken_at = time.monotonic()
            self._wake_all()

    @property
    def backend_pid(self) -> int | None:
        """The server process of the listening connection (None while disconnected)."""
        conn = self._conn
        return None if conn is None else conn.info.backend_pid

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                with self._connect() as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._conn = conn
                    self.connections += 1
                    self.listening.set()
                    self._wake_all_changed()  # whatever was appended while nobody listened
                    while not self._stopping.is_set():
                        for notify in conn.notifies(timeout=_READ_TIMEOUT_S):
                            self._dispatch(notify.payload)
            except Exception as exc:  # a lost or refused connection: waiters re-read on their own meanwhile
                if not self._stopping.is_set():
                    logger.warning("execution event listener lost its connection (%s); reconnecting", exc)
            finally:
                self._conn = None
                if self.listening.is_set():
                    self.listening.clear()
                    # Notifications are lost from now until the next connect: each waiter reads again at once and
                    # then on its own every DOWN_RECHECK_S, not after the LISTENING_RECHECK_S it was waiting out.
                    self._wake_all_changed()
            self._stopping.wait(self._reconnect_delay_s)

    def _dispatch(self, payload: str) -> None:
        try:
            execution_id = uuid.UUID(payload.split(":", 1)[0])
        except ValueError:
            self._wake_all()  # a payload this version does not read: waking everyone is always safe
            return
        with self._lock:
            waiters = list(self._waiters.get(execution_id, ()))
        for waiter in waiters:
            waiter.wake()

    def _wake_all(self) -> None:
        with self._lock:
            waiters = [w for group in self._waiters.values() for w in group]
        for waiter in waiters:
            waiter.wake()

    def _wake_all_changed(self) -> None:
        """Wake every waiter for a change of the connection: now, or, when the last such wake-up was less than
        DOWN_RECHECK_S ago, then (one wake-up put off covers every change until it comes)."""
        with self._lock:
            if self._changed_wake is not None:
                return  # the wake-up put off covers this change too
            wait = self._changed_woken_at + DOWN_RECHECK_S - time.monotonic()
            if wait > 0:
                timer = threading.Timer(wait, self._wake_all_changed_now)
                timer.daemon = True
                self._changed_wake = timer
                timer.start()
                return
            self._changed_woken_at = time.monotonic()
        self._wake_all()

    def _wake_all_changed_now(self) -> None:
        """The wake-up `_wake_all_changed` put off, when it is due (on its timer's thread)."""
        with self._lock:
            if self._changed_wake is None:
                return  # stopped meanwhile
            self._changed_wake = None
            self._changed_woken_at = time.monotonic()
        self._wake_all()


def recheck_s(wakeup: EventWakeup | None) -> float:
    """How long a waiter of `wakeup` (None: the process has no listener) waits for a wake-up before it reads again on
    its own: LISTENING_RECHECK_S while the listener listens, DOWN_RECHECK_S while it does not. Asked before each
    wait: a connection that drops wakes its waiters, which then ask again."""
    if wakeup is not None and wakeup.listening.is_set():
        return LISTENING_RECHECK_S
    return DOWN_RECHECK_S


def connect_from_settings() -> psycopg.Connection[Any]:
    """A connection of the app's own login, as the pool makes them (Entra token when so configured)."""
    from shared.db.pool import _connection_kwargs

    settings = get_settings()
    kwargs = _connection_kwargs(settings)
    resolved: dict[str, Any] = kwargs() if callable(kwargs) else dict(kwargs)
    resolved.pop("row_factory", None)
    resolved["autocommit"] = True
    return psycopg.connect(settings.QP_DATABASE_URL, application_name=APPLICATION_NAME, **resolved)


_made_lock = threading.Lock()
_made: tuple[EventWakeup | None] | None = None
"""What `get_event_wakeup` made (in a 1-tuple: the process may have no listener to make), None until it has; only
changed under `_made_lock`."""


def get_event_wakeup() -> EventWakeup | None:
    """The process-wide listener, or None when the process has no database settings (waiters then re-read only)."""
    global _made
    made = _made
    if made is None:
        with _made_lock:
            made = _made
            if made is None:
                try:
                    get_settings()
                except SettingsError:
                    made = (None,)
                else:
                    made = (EventWakeup(connect_from_settings),)
                _made = made
    return made[0]


def made_event_wakeup() -> EventWakeup | None:
    """The process-wide listener if `get_event_wakeup` has made one, else None: never makes one (for observers,
    which must not open a connection a process that serves no stream or long poll does not need)."""
    made = _made  # one read: a `forget_event_wakeup` meanwhile cannot make this call make one
    return None if made is None else made[0]


def forget_event_wakeup() -> None:
    """Stop the process-wide listener, if one was made, and forget it: the next `get_event_wakeup` makes a new one
    from the settings of then (tests that point the process at another database in turn)."""
    global _made
    with _made_lock:
        made, _made = _made, None
    if made is not None and made[0] is not None:
        made[0].stop()
