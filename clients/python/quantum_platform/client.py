# intent_ref: platform.gateway
"""The Quantum Platform API client, async and sync: tokens per tenant, `Idempotency-Key` on every start, create and
secret rotation, 429 (and 503, 502, 504 and lost connections where sending again cannot do a thing twice) retried
after `Retry-After`, problem+json raised as typed errors, list pages followed by their `next_cursor`, an execution's
events followed until its end (server-sent events when the server streams them, its JSON long poll otherwise),
reconnecting through lost connections and a restarting backend."""

from __future__ import annotations

import asyncio
import math
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from time import monotonic as _monotonic
from typing import Any

import httpx
from httpx_sse import EventSource

from quantum_platform.credentials import Credential, DevhostCredential, from_environment
from quantum_platform.errors import ProblemError, UnexpectedAnswer, problem_from, strict_json
from quantum_platform.resources import Audit, Definitions, Executions, Modules, Webhooks
from quantum_platform.shapes import EVENT, kind
from quantum_platform.terminal_text import folded

DEFAULT_URL = "http://127.0.0.1:7071"
TERMINAL_EVENTS = frozenset({"execution_completed", "execution_failed", "execution_cancelled"})
_RETRIED = frozenset({429, 503})
_GATEWAY = frozenset({502, 504})
"""A gateway's answers when the backend did not answer in time or at all: like a lost connection, the request may
have run, so they are retried only for a request that is `repeatable`, as a 503 is."""
_REPEATABLE = frozenset({"GET", "HEAD", "OPTIONS", "PUT"})
"""Methods a 503, a 502/504 or a lost connection may be retried for without an Idempotency-Key its route honours:
reading, or a PUT of a whole state (without If-Match: one with it that committed would answer 412 when sent again).
Any of them can come after the work committed (raised at COMMIT, or by a gateway timing out): a rollback, approve,
cancel, PATCH or DELETE sent again would run twice, with a key or without (those routes ignore it). A
429 is retried for every method: nothing ran."""
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})
_TRANSIENT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
"""Transport failures worth sending a repeatable request again for: timeouts and lost or refused connections (not a
malformed URL or an unsupported scheme, which fail the same way every time)."""
_RESTARTING = frozenset({502, 503, 504})
"""Answers to (re)opening a stream while the backend restarts (API Management answers 502/504 meanwhile, ADR 0041):
reconnected like a lost connection, within the same budget."""
_STARTS = re.compile(r"/api/v1/(?:intents/[^/]+/execute|executions/[^/]+/retry)")
"""The two start routes, matched whole: an approval of a step named `retry` or `execute` is not a start."""
_CREATES = frozenset(
    f"/api/v1/{collection}" for collection in ("intents", "blueprints", "webhooks", "modules", "policies")
)
"""Collections whose POST creates a resource and takes an Idempotency-Key, generated when the caller gives none."""
_ROTATIONS = re.compile(r"/api/v1/webhooks/[^/]+/rotate-secret")
"""A webhook secret's rotation, which takes an Idempotency-Key, generated when the caller gives none: rotated twice, the
secret receivers hold stops signing at once."""
_TENANTS = "/api/v1/tenants"
"""The tenant create honours the caller's own Idempotency-Key, but is given none: a platform admin's retry of it is
theirs to key."""
_EXPORTS = re.compile(r"/api/v1/tenants/[^/]+/export")
"""A tenant's export request, which queues a job and takes an Idempotency-Key, generated when the caller gives none:
sent again after a lost answer, it gets the same job (poll its Location) instead of queuing a second export once the
first has ended."""
_BODY_KEYED = re.compile(r"/api/v1/intents/[^/]+/execute")
"""The start that also reads its key from the JSON body (`idempotency_key`, for producers that cannot set the header;
both, when sent, must be the same key)."""
_POLL_WAIT_S = 25.0
_KEEPALIVE_HEADER = "X-Keep-Alive-Interval"
"""The stream's response header naming, in seconds, how often the server sends a keep-alive comment on a stream with
nothing to send (its QP_EVENT_STREAM_KEEPALIVE_S, a setting: 15 s by default)."""
_UNNAMED_KEEPALIVE_S = 120.0
"""The keep-alive interval assumed for a stream whose answer names none (or no usable one: an older server, a proxy
that dropped the header): the longest the server can be set to."""
_NAMED_KEEPALIVE_MAX_S = 3600.0
"""The most a named interval counts for: a server's answer cannot make the read timeout a number no socket takes."""
_STREAM_READ_MARGIN_S = 5.0
"""How long past the long poll's wait its answer may take to arrive."""
_RECONNECTS = 12
"""Failed reconnects of a stream in a row (backing off to `_RECONNECT_MAX_S`: about 3.5 min in all) before its error is
raised."""
_RECONNECT_MAX_S = 30.0
"""The longest a reconnect's own back-off waits (a server's `Retry-After` or `retry:` may say longer)."""
_STEADY_STREAM_S = 5.0
"""How long a stream that brought no event must have lasted, from its answer's opening, before it broke off for its
break not to count as a failed reconnect (`_Reconnects`)."""
_SERVER_RETRY_MAX_S = 60.0
"""The most a server's `retry:` (its reconnection time, in milliseconds) makes a reconnect wait, as `Retry-After`."""
_QUICK_ROUND_S = 1.0
"""A round of following (a stream, then the long poll) that brought nothing new and took less than this was answered
at once: the server's long poll waits `_POLL_WAIT_S` for an event, so the round is paused before the next one."""
_IDLE_ROUNDS = 12
"""Quick rounds with nothing new in a row (backing off to 5 s: about 45 s in all) before following gives up: a
server that keeps answering at once without moving on (replaying old events, an empty page) is not waited on
forever."""
MAX_ANSWER_BYTES = 64 * 1024 * 1024
"""The most of one answer's body the client reads (a client's `max_answer_bytes` by default): far above the API's
largest (an execution of 200 steps with 64 KiB outputs, a page of 500 events), so only a broken or hostile server
reaches it, instead of taking all the memory there is."""
STALE_MESSAGES = 100
"""Messages in a row on one event stream that bring no new event (an `id:`, `event:` or `retry:` without data, an event
without a number, or one at or before the position reached) before the stream is an UnexpectedAnswer: a server
sending them without end would keep a follower waiting for ever. Keep-alive comments are not messages."""
MAX_EVENT_BYTES = 16 * 1024 * 1024
"""The most one server-sent event (a line of it, or its data) may hold: an event carries a step's output twice (`data`
and `result`), kept inline up to QP_PAYLOAD_INLINE_MAX_BYTES (at most 1 MiB; larger outputs are blob references)."""
_MAX_EVENT_DIGITS = 19
"""An event number is a bigint (at most 2**63 - 1: 19 digits)."""
Item = dict[str, Any]
# Either answer is followed: a server without the stream answers the JSON long poll from the same URL.
_STREAM_ACCEPT = "text/event-stream, application/json;q=0.9"
_POLL_ACCEPT = "application/json"
"""The long poll alone: asked for when the tenant's streams are all open (429 `too-many-streams`), and to learn
whether a stream that ended with nothing new saw its execution end."""


class ApiResponse:
    """An answer of the API: status, headers and JSON body; the body's fields also read as `response["id"]`."""

    def __init__(self, response: httpx.Response) -> None:
        self.http = response

    @property
    def status_code(self) -> int:
        return self.http.status_code

    @property
    def headers(self) -> httpx.Headers:
        return self.http.headers

    @property
    def text(self) -> str:
        return self.http.text

    def json(self) -> Any:
        """The body as JSON; UnexpectedAnswer (a ValueError) when it is not JSON."""
        try:
            return strict_json(self.http.content)
        except ValueError:
            raise UnexpectedAnswer(f"{self._route()} answered something other than JSON") from None

    def __getitem__(self, key: str) -> Any:
        body = self.json()
        if not isinstance(body, dict):
            raise UnexpectedAnswer(f"{self._route()} answered a JSON {type(body).__name__}, not an object")
        return body[key]

    def _route(self) -> str:
        return f"{self.http.request.method} {self.http.request.url.path}"

    def get(self, key: str, default: Any = None) -> Any:
        body = self.json()
        return body.get(key, default) if isinstance(body, dict) else default

    def __contains__(self, key: object) -> bool:
        body = self.json()
        return isinstance(body, dict) and key in body

    def __repr__(self) -> str:
        return f"<ApiResponse {self.status_code} {self.http.request.method} {self.http.request.url.path}>"


@dataclass(frozen=True)
class RetryWait:
    """One wait before a request is sent again, as the client's `on_retry` hook hears of it before it waits."""

    seconds: float
    reason: str
    """What is waited out: the answer's status and title (`429 Too many requests`) or the transport error's name, one
    line, the title's controls shown as escapes (`terminal_text.folded`)."""
    attempt: int
    """Which repetition comes after the wait: 1 for the first."""
    max_retries: int


RetryHook = Callable[[RetryWait], None]


@dataclass(frozen=True)
class _Prepared:
    method: str
    path: str
    headers: dict[str, str]
    json: Any
    params: dict[str, Any] | None
    keyed: bool = False
    """Whether the request carries a key (header or body) that its route honours: sending it again does nothing
    twice."""
    tenant: str | None = None
    """The tenant whose token the request carries, each time it is sent: the client's when it was prepared (a
    `set_tenant` after that does not move it to another tenant between its retries, nor a listing or a stream between
    its pages or reconnects)."""


def _honours_key(method: str, target: str) -> bool:
    """Whether `method` on the route `target` (its path, without a trailing slash) replays a repeated Idempotency-Key
    instead of doing the work again: the starts, creates, secret rotations and export requests only; every other route
    ignores the header."""
    return method == "POST" and (_generates_key(target) or target == _TENANTS)


def _generates_key(target: str) -> bool:
    """Whether a POST to `target` is given a key of its own when the caller gives none: a start, create, rotation or
    export request."""
    return (
        _STARTS.fullmatch(target) is not None
        or target in _CREATES
        or _ROTATIONS.fullmatch(target) is not None
        or _EXPORTS.fullmatch(target) is not None
    )


def _body_key(method: str, target: str, body: Any) -> str | None:
    """The key a start carries in its JSON body, on the route that reads it there (None otherwise)."""
    if method != "POST" or not _BODY_KEYED.fullmatch(target) or not isinstance(body, dict):
        return None
    key = body.get("idempotency_key")
    return key if isinstance(key, str) else None


class _Core:
    """What both clients share: the tenant, the credential, request preparation, and the retry decisions of each
    request (`retrying`)."""

    def __init__(
        self,
        base_url: str | None,
        credential: Credential | None,
        tenant: str | None,
        max_retries: int,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
        on_retry: RetryHook | None = None,
    ) -> None:
        self.base_url = (base_url or os.environ.get("QP_URL") or DEFAULT_URL).rstrip("/")
        self.credential: Credential = credential or from_environment() or DevhostCredential()
        self._tenant = tenant
        self.max_retries = max_retries
        # Told of each wait before a repetition, so a caller can say why nothing happens for up to a minute; the
        # library itself prints nothing.
        self.on_retry = on_retry
        # A bool is an int to Python: `max_answer_bytes=True` would read one byte of every answer.
        if isinstance(max_answer_bytes, bool) or not isinstance(max_answer_bytes, int) or max_answer_bytes <= 0:
            raise ValueError(f"max_answer_bytes must be a positive number of bytes, not {max_answer_bytes!r}")
        self.max_answer_bytes = max_answer_bytes

    def reconnect_wait(
        self, failures: int, backoff: int, error: httpx.TransportError | ProblemError, floor: float = 0.0
    ) -> float | None:
        """The wait before reopening a stream that broke off in `error` (`failures` in a row, the back-off's
        `backoff`th step, at least `floor`: the server's `retry:`), told to the `on_retry` hook first as a retried
        call's wait is (a follow must not go quiet for seconds unexplained), or None when the reconnects are spent."""
        answer = error.response if isinstance(error, ProblemError) else None
        delay = _reconnect_delay(failures, answer, backoff=backoff, floor=floor)
        if delay is not None and self.on_retry is not None:
            reason = type(error).__name__
            if isinstance(error, ProblemError):
                reason = folded(f"{error.status} {error.title}")
            self.on_retry(RetryWait(delay, reason, max(failures, 1), _RECONNECTS))
        return delay

    @property
    def tenant(self) -> str | None:
        """The tenant whose token the next request carries (None: the credential's own)."""
        return self._tenant

    def set_tenant(self, tenant: str | None) -> None:
        """Act as `tenant` from now on: every request carries a token for it (the API scopes everything to it)."""
        self._tenant = tenant

    def prepare(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> _Prepared:
        merged = dict(headers or {})
        # The caller's own key, in any spelling of the header, is the key: sent once under the canonical name (a
        # second, generated one overwrote it, or went beside it and the API refused two keys).
        given = {merged.pop(name) for name in list(merged) if name.lower() == "idempotency-key"}
        if idempotency_key is None and len(given) > 1:
            raise ValueError(f"two different Idempotency-Key headers: {sorted(given)}")
        if idempotency_key is None and given:
            idempotency_key = given.pop()
        method = method.upper()
        target = httpx.URL(path).path.rstrip("/")
        in_body = _body_key(method, target, json)
        generate = method == "POST" and _generates_key(target)
        # A start keyed in its body is sent without a header: a generated one would win over the body's key and
        # make every repetition of the same start a new execution.
        if idempotency_key is None and in_body is None and generate:
            # One key per logical start, create or rotation, reused by this client's own retries: a retried create
            # is the same create (never a second webhook subscription), a retried start the same start.
            idempotency_key = str(uuid.uuid4())
        if idempotency_key is not None:
            merged["Idempotency-Key"] = idempotency_key
        keyed = _honours_key(method, target) and (idempotency_key is not None or in_body is not None)
        return _Prepared(method, path, merged, json, params, keyed, self._tenant)

    def authorized(self, prepared: _Prepared) -> dict[str, str]:
        return {**prepared.headers, "Authorization": f"Bearer {self.credential.token(prepared.tenant)}"}

    def retrying(self, prepared: _Prepared) -> _Retrying:
        """The retry decisions of one request, answer by answer: whether it is repeatable (`prepared.keyed` when it
        carries a key its route honours; an Idempotency-Key header alone says nothing, most routes ignore it), and
        the tenant whose token a 401 renews."""
        names = {name.lower() for name in prepared.headers}
        method = prepared.method.upper()
        # A conditional write that committed fails its own repetition (412): not repeatable, whatever its method.
        conditional = "if-match" in names
        repeatable = method in _SAFE or prepared.keyed or (method in _REPEATABLE and not conditional)
        return _Retrying(self, repeatable=repeatable, tenant=prepared.tenant)

    def stream_prepared(self, path: str, after: int, tenant: str | None, accept: str = _STREAM_ACCEPT) -> _Prepared:
        """An events URL's request from `after`, for `tenant` (the stream's, fixed when it began)."""
        prepared = self.prepare(
            "GET",
            path,
            params={"after": after, "wait": _POLL_WAIT_S},
            # Not compressed: a small compressed chunk could hold a whole event far past the bound, decoded at once.
            headers={"Accept": accept, "Accept-Encoding": "identity"},
        )
        return replace(prepared, tenant=tenant)

    def build(self, http: httpx.Client | httpx.AsyncClient, prepared: _Prepared) -> httpx.Request:
        """`prepared` as a request, with a token for its tenant; a long poll's read timeout lasts past its `wait`."""
        return http.build_request(
            prepared.method,
            prepared.path,
            json=prepared.json,
            params=prepared.params,
            headers=self.authorized(prepared),
            timeout=_wait_timeout(http.timeout, prepared),
        )

    def take(self, response: httpx.Response, body: bytearray, chunk: bytes) -> None:
        """Add `chunk` to the `body` being read; UnexpectedAnswer past `max_answer_bytes` (a body without end, or a
        decompressed one, would otherwise take all the memory there is)."""
        body += chunk
        if len(body) > self.max_answer_bytes:
            raise UnexpectedAnswer(
                f"{response.request.method} {response.request.url.path} answered more than "
                f"{self.max_answer_bytes} bytes"
            )

    @staticmethod
    def checked(response: httpx.Response) -> ApiResponse:
        if response.status_code >= 400:
            raise problem_from(response)
        return ApiResponse(response)


class _Retrying:
    """Decides, answer by answer, whether one request is sent again: after renewing a refused token (once), or after
    `Retry-After` for 429, and for 503, 502, 504 and a lost connection when the request is `repeatable` (up to
    `max_retries`, with the same headers: a start's key included). Both clients' loops ask it, so they cannot drift
    apart."""

    def __init__(self, core: _Core, *, repeatable: bool, tenant: str | None) -> None:
        self._core = core
        self._repeatable = repeatable
        self._tenant = tenant
        self._attempt = 0
        self._renewed = False

    def after(self, response: httpx.Response) -> float | None:
        """Seconds to wait before sending the request again (0: at once, with a fresh token), or None when
        `response` is the answer."""
        if response.status_code == 401 and not self._renewed:
            self._renewed = True
            self._core.credential.refresh(self._tenant)  # the request's tenant, whatever the client's is now
            return 0.0
        status = response.status_code
        if status not in _RETRIED and status not in _GATEWAY:
            return None
        if status != 429 and not self._repeatable and not _asks_to_be_sent_again(response):
            return None
        return self._next(_retry_after(response), _answer_reason(response))

    def after_error(self, error: httpx.TransportError) -> float | None:
        """Seconds to wait before sending the request again after `error` (the request may have run: only a
        `repeatable` one is sent again), or None when `error` is raised."""
        if not isinstance(error, _TRANSIENT) or not self._repeatable:
            return None
        return self._next(None, type(error).__name__)

    def _next(self, seconds: float | None, reason: str) -> float | None:
        """The wait before the next attempt (`seconds` when the server named it, else backing off), told to the
        core's `on_retry` hook first, or None when the attempts are spent."""
        attempt = self._attempt
        if attempt >= self._core.max_retries:
            return None
        self._attempt += 1
        wait = float(min(0.5 * 2**attempt, 10.0)) if seconds is None else seconds
        if self._core.on_retry is not None:
            self._core.on_retry(RetryWait(wait, reason, self._attempt, self._core.max_retries))
        return wait


def _answer_reason(response: httpx.Response) -> str:
    """`response`'s status and the title of its problem document (else the status's own phrase), one line."""
    try:
        body = strict_json(response.content)
    except (ValueError, httpx.ResponseNotRead):
        body = None
    title = body.get("title") if isinstance(body, dict) else None
    if not isinstance(title, str) or not title.strip():
        title = httpx.codes.get_reason_phrase(response.status_code)
    return folded(f"{response.status_code} {title}")


def _streams_taken(response: httpx.Response) -> bool:
    """Whether the answer is a 429 `too-many-streams`: the tenant's streams on this instance are all open, for minutes
    maybe, while its long poll on the same URL, which that bound does not count, is served now. Any other 429 (the
    tenant's requests in flight) bounds the poll too: it is waited out as its `Retry-After` says."""
    if response.status_code != 429:
        return False
    try:
        body = strict_json(response.content)
    except (ValueError, httpx.ResponseNotRead):
        return False
    return isinstance(body, dict) and str(body.get("type", "")).endswith("/too-many-streams")


def _asks_to_be_sent_again(response: httpx.Response) -> bool:
    """Whether the answer is a 503 `orchestration-unavailable`: the request was recorded (a cancel, a decision, a
    worker's result) or nothing was done, and the platform asks for the same request again, which it answers without
    applying it twice: repeated even for a request that is not `repeatable` (a cancel, an approval)."""
    if response.status_code != 503:
        return False
    try:
        body = strict_json(response.content)
    except (ValueError, httpx.ResponseNotRead):
        return False
    return isinstance(body, dict) and str(body.get("type", "")).endswith("/orchestration-unavailable")


def _retry_after(response: httpx.Response) -> float | None:
    """The answer's `Retry-After` in seconds, as a number or an HTTP date (capped at 60), or None without a usable
    one (`nan` or `inf` reached time.sleep, which raised)."""
    value = str(response.headers.get("Retry-After", "")).strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # an obsolete date without a zone: HTTP dates are GMT
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), 60.0)


def _wait_timeout(timeout: httpx.Timeout, prepared: _Prepared) -> httpx.Timeout:
    """The client's `timeout` for a GET whose answer the server may hold up to its `wait` seconds (opening a stream, a
    long poll, `executions.events(id, wait=...)`): its read timeout at least the wait and `_STREAM_READ_MARGIN_S`; a
    shorter one broke every round of a quiet execution until the reconnects were spent. A stream's own reads then
    wait as its keep-alive says (`_follow_keepalive`). Connecting, writing and waiting for a connection keep the
    client's own bounds, and so does every other request."""
    wait = _held(prepared)
    read = timeout.read
    if read is not None and wait > 0:
        read = max(read, wait + _STREAM_READ_MARGIN_S)
    return httpx.Timeout(connect=timeout.connect, read=read, write=timeout.write, pool=timeout.pool)


def _held(prepared: _Prepared) -> float:
    """The seconds a GET asks the server to hold its answer (its `wait` parameter, given in `params` or in the path's
    own query string: `params` wins, as it does in the request sent), 0 for any other request."""
    if prepared.method != "GET":
        return 0.0
    given = (prepared.params or {}).get("wait")
    if given is None:
        try:
            given = httpx.URL(prepared.path).params.get("wait")
        except httpx.InvalidURL:
            return 0.0  # sending it fails the same way
    try:
        wait = float(given or 0)
    except (TypeError, ValueError):
        return 0.0  # the server refuses it (422) at once
    return wait if math.isfinite(wait) and wait > 0 else 0.0


def _keepalive(response: httpx.Response) -> float:
    """The keep-alive interval a stream's answer names (`_KEEPALIVE_HEADER`, at most `_NAMED_KEEPALIVE_MAX_S`), or
    `_UNNAMED_KEEPALIVE_S` when it names none that is a positive number of seconds."""
    try:
        seconds = float(response.headers.get(_KEEPALIVE_HEADER, ""))
    except ValueError:
        return _UNNAMED_KEEPALIVE_S
    if not math.isfinite(seconds) or seconds <= 0:
        return _UNNAMED_KEEPALIVE_S
    return min(seconds, _NAMED_KEEPALIVE_MAX_S)


def _follow_keepalive(response: httpx.Response, timeout: httpx.Timeout) -> None:
    """Let the reads of an event stream's body wait twice its keep-alive interval (one late keep-alive is no break),
    or the client's own read timeout when longer: the server's interval is its setting (up to 120 s), and a read
    timeout under it broke a healthy quiet stream again and again. The header is read before the body: the transport
    takes the read bound from the request's `timeout` extension when the body's reading begins (at each read over
    HTTP/2), so the bound set here is the one the stream's reads wait by."""
    if timeout.read is None or not _is_sse(response):
        return
    bounds = dict(response.request.extensions.get("timeout") or timeout.as_dict())
    bounds["read"] = max(timeout.read, 2 * _keepalive(response))
    response.request.extensions["timeout"] = bounds


def _reconnect_delay(
    failures: int, answer: httpx.Response | None = None, *, backoff: int | None = None, floor: float = 0.0
) -> float | None:
    """How long a stream that broke off (connection lost, server restarting) waits before reconnecting: the
    answer's `Retry-After` when it gave one, else a back-off at its `backoff`th step (`failures` by default) to
    `_RECONNECT_MAX_S`; never less than `floor` (the server's `retry:`); None when it has failed too often in a row."""
    if failures > _RECONNECTS:
        return None
    seconds = _retry_after(answer) if answer is not None else None
    if seconds is None:
        step = max(failures if backoff is None else backoff, 1)
        seconds = min(0.5 * 2 ** min(step - 1, 16), _RECONNECT_MAX_S)
    return float(max(seconds, floor))


def _idle_delay(rounds: int) -> float:
    """The pause after `rounds` quick rounds in a row that brought nothing new; UnexpectedAnswer past the budget."""
    if rounds > _IDLE_ROUNDS:
        raise UnexpectedAnswer(
            f"the event stream answered {_IDLE_ROUNDS} times in a row at once with no new event and the execution "
            "not ended"
        )
    return float(min(0.5 * 2 ** (rounds - 1), 5.0))


def _reconnects(error: Exception) -> bool:
    """Whether a stream that ended in `error` is reopened: a lost connection, a backend restarting, or a tenant at
    its bound of requests in flight (429, after its `Retry-After`)."""
    if isinstance(error, ProblemError):
        return error.status in _RESTARTING or error.status == 429
    return isinstance(error, httpx.TransportError)


def _ends_round(response: httpx.Response) -> bool:
    """Whether opening a stream that was answered `response` ends the round, reconnected by `stream` within its
    budget after `Retry-After`: a backend restarting, or a tenant at its bound of requests in flight (429), which an
    execution that runs on for minutes outlasts `max_retries` waits."""
    return response.status_code in _RESTARTING or response.status_code == 429


def _is_sse(response: httpx.Response) -> bool:
    content_type: str = response.headers.get("content-type", "")
    return content_type.partition(";")[0].strip() == "text/event-stream"


def _number(value: object) -> int | None:
    """An event number (an `id:`, a `seq`) as an int, or None when `value` is none ('²' passes str.isdigit)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if value >= 0 else None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= _MAX_EVENT_DIGITS:
        return int(value)
    return None


def event_is_new(item: Mapping[str, Any], after: int) -> bool:
    """The one rule for every way of reading events: an event counts only past the resume position `after`. A server
    that sends older events again (a replay, a page that does not move on) would have them yielded again forever."""
    seq = _number(item.get("seq"))
    return seq is not None and seq > after


def _event(item: Any, source: str) -> dict[str, Any]:
    """`item` when it is an event object of the documented shape (a string `type`, a `seq` that is an event number
    when it is there); UnexpectedAnswer naming `source` otherwise."""
    event = EVENT.check(item, source)
    if event.get("seq") is not None and _number(event["seq"]) is None:
        raise UnexpectedAnswer(f"{source} answered an event whose seq {event['seq']!r} is not an event number")
    return event


def _sse_event(data: str, event_id: str, after: int) -> tuple[dict[str, Any] | None, int]:
    """One SSE message as the long poll's event object and the resume position (`id:` is the event number, else the
    event's `seq`). A message without data, or without a number, or not past `after` brings nothing (None); data that
    is not an event object of the documented shape is UnexpectedAnswer at once: the server sends nothing else."""
    if not data:
        return None, after
    try:
        parsed = strict_json(data)
    except ValueError:
        raise UnexpectedAnswer("an event stream sent an event whose data is not JSON") from None
    item = _event(parsed, "an event stream")
    position = _number(event_id)
    if position is None:
        position = _number(item.get("seq"))
    if position is None or position <= after:
        return None, after
    if _number(item.get("seq")) is None:
        item = {**item, "seq": position}
    return item, position


def _stale(count: int) -> int:
    """`count` messages in a row that brought no new event on one stream; UnexpectedAnswer past STALE_MESSAGES."""
    if count > STALE_MESSAGES:
        raise UnexpectedAnswer(f"an event stream sent {STALE_MESSAGES} messages in a row without a new event")
    return count


def _page(page: Any, seen: set[str]) -> tuple[list[Item], str | None]:
    """A listing page's items and the cursor of the next page (None: the last one). A server answering a cursor
    already followed in this walk (its own, or an earlier one: A, B, A) would page forever: that is refused, not
    followed. `seen` holds the walk's cursors and gains the next one. An item that is not a JSON object makes the
    page UnexpectedAnswer, not a shorter page: dropping it would pass a wrong answer for a right one."""
    if not isinstance(page, dict) or not isinstance(page.get("items") or [], list):
        raise UnexpectedAnswer("a listing answered something other than a page ({items: [...], next_cursor})")
    items: list[Item] = page.get("items") or []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise UnexpectedAnswer(
                "a listing answered something other than a page ({items: [...], next_cursor}): "
                f"/items/{index} is {kind(item)}, not an object"
            )
    cursor = page.get("next_cursor")
    if cursor is None or cursor == "":
        return items, None
    cursor = str(cursor)
    if cursor in seen:
        raise UnexpectedAnswer(
            f"a listing answered the cursor it was sent ({folded(cursor)}) as its next one, again in one walk: it "
            "would page forever"
        )
    seen.add(cursor)
    return items, cursor


def _events(page: Any, after: int) -> tuple[list[dict[str, Any]], int, bool]:
    """A page of events: those past `after`, the position to resume from, and whether the execution ended."""
    if not isinstance(page, dict) or not isinstance(page.get("items", []), list):
        raise UnexpectedAnswer("an events route answered something other than a page of events ({items: [...]})")
    next_after = _number(page.get("next_after", after))
    if next_after is None:
        raise UnexpectedAnswer(f"an events page answered next_after {page.get('next_after')!r}, not an event number")
    checked = [_event(item, "an events page") for item in page.get("items", [])]
    items = [item for item in checked if event_is_new(item, after)]
    ended = page.get("status") in ("succeeded", "failed", "cancelled")
    return items, max([next_after, after, *(int(item["seq"]) for item in items)]), ended


_LINE_END = re.compile(rb"\r\n|\r|\n")


class _BoundedEvents(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A stream's bytes as httpx-sse reads them, failing once an event (its lines since the last blank line, or a line
    without end) passes `limit` bytes: the reader buffers a line and an event whole, so one without end would take all
    the memory there is. Every line of every chunk is counted (a whole event may come in one decoded chunk), with the
    line ends the format allows (CRLF, CR, LF, mixed)."""

    def __init__(self, response: httpx.Response, limit: int = MAX_EVENT_BYTES) -> None:
        self.response = response
        self._limit = limit
        self._held = 0  # bytes of the event's ended lines
        self._line = 0  # bytes of the line not ended yet
        self._cr = False  # the last chunk ended in CR, which a LF beginning the next one completes

    def _checked(self, chunk: bytes) -> bytes:
        at = 1 if self._cr and chunk.startswith(b"\n") else 0
        self._cr = False
        for end in _LINE_END.finditer(chunk, at):
            length = self._line + end.start() - at
            # A blank line ends the event; any other adds its bytes (and its end) to it.
            self._held = 0 if length == 0 else self._held + length + 1
            self._line, at = 0, end.end()
            self._cr = end.group() == b"\r" and at == len(chunk)
            if self._held > self._limit:
                break
        self._line += len(chunk) - at
        if self._held + self._line > self._limit:
            raise UnexpectedAnswer(f"an event stream sent an event of more than {self._limit} bytes")
        return chunk

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.response.iter_bytes():
            yield self._checked(chunk)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.response.aiter_bytes():
            yield self._checked(chunk)


def _bounded_sse(body: _BoundedEvents) -> EventSource:
    """The server-sent events of `body`'s response, read by httpx-sse from its decoded bytes, each held to
    MAX_EVENT_BYTES."""
    response = body.response
    # Decoded already (`iter_bytes`): the stand-in answer must not decode them again.
    headers = [(name, value) for name, value in response.headers.items() if name.lower() != "content-encoding"]
    return EventSource(httpx.Response(response.status_code, headers=headers, stream=body))


class _Reconnects:
    """One follow's reconnect decisions, both clients' loops asking it. Two counts: `failures`, the breaks in a row
    that spend the `_RECONNECTS` budget, and the back-off's step. An event (or a page read) starts both again. A
    stream that lasted `_STEADY_STREAM_S` from its answer's opening before it broke off (not by its reads timing out:
    one silent past twice its keep-alive has not worked) worked: its break starts the back-off again and spends
    nothing, so a proxy that cuts every quiet stream after a while does not end a follow whose reconnects all work.
    Anything else, a stream answered 200 that drops at once among them, is a failure: the server's opening `retry:`
    (every stream's first line) or a keep-alive is no proof that the stream works, and a server that answers and
    drops at once is given up on after the budget, not reconnected to every half second for ever. Every wait is at
    least the server's `retry:` (its reconnection time, at most `_SERVER_RETRY_MAX_S`)."""

    def __init__(self, core: _Core) -> None:
        self._core = core
        self.failures = 0
        self._backoff = 0
        self._floor = 0.0

    def progressed(self) -> None:
        """An event came, or a page was read: the follow works."""
        self.failures = self._backoff = 0

    def told(self, retry: int | None) -> None:
        """The server's `retry:` field (milliseconds), when a message carried one."""
        if retry is not None and retry >= 0:
            self._floor = min(retry / 1000, _SERVER_RETRY_MAX_S)

    def after(self, error: httpx.TransportError | ProblemError, opened: float | None) -> float | None:
        """The wait before reopening a stream that broke off in `error` (`opened`: when its answer opened, None when
        it never did), or None when the reconnects are spent."""
        steady = (
            opened is not None
            and _monotonic() - opened >= _STEADY_STREAM_S
            and not isinstance(error, httpx.TimeoutException)
        )
        if steady:
            self._backoff = 1
        else:
            self.failures += 1
            self._backoff += 1
        return self._core.reconnect_wait(self.failures, self._backoff, error, self._floor)


class AsyncClient:
    """The async client: `await client.post(...)`, `async for event in client.stream(...)`, typed helpers under
    `client.intents`, `client.blueprints`, `client.executions`, `client.modules`, `client.audit`, `client.webhooks`."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        credential: Credential | None = None,
        tenant: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 4,
        transport: httpx.AsyncBaseTransport | None = None,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
        on_retry: RetryHook | None = None,
    ) -> None:
        """`on_retry`, when given, is called with a `RetryWait` before each wait for a repetition (a 429's
        `Retry-After` can hold a request for a minute at a time, `max_retries` times)."""
        self._core = _Core(base_url, credential, tenant, max_retries, max_answer_bytes, on_retry)
        self._http = httpx.AsyncClient(base_url=self._core.base_url, timeout=timeout, transport=transport)
        self.intents: Definitions[Awaitable[ApiResponse], AsyncIterator[Item]] = Definitions(
            self.request, "intents", self.iterate
        )
        self.blueprints: Definitions[Awaitable[ApiResponse], AsyncIterator[Item]] = Definitions(
            self.request, "blueprints", self.iterate
        )
        self.executions: Executions[Awaitable[ApiResponse], AsyncIterator[Item]] = Executions(
            self.request, self.iterate
        )
        self.modules: Modules[Awaitable[ApiResponse]] = Modules(self.request)
        self.audit: Audit[Awaitable[ApiResponse], AsyncIterator[Item]] = Audit(self.request, self.iterate)
        self.webhooks: Webhooks[Awaitable[ApiResponse]] = Webhooks(self.request)

    @property
    def tenant(self) -> str | None:
        return self._core.tenant

    def set_tenant(self, tenant: str | None) -> None:
        """Act as `tenant` from now on (a demo tenant name locally, an Entra tenant id in Azure)."""
        self._core.set_tenant(tenant)

    async def request(self, method: str, path: str, **kwargs: Any) -> ApiResponse:
        """Send one request; 429 is retried after `Retry-After`, 503, 502, 504 and a lost connection too unless
        sending again could do something twice (a POST, PATCH or DELETE that is not a start or create with its key,
        a write with If-Match), a refused token once with a fresh one."""
        return await self._send(self._core.prepare(method, path, **kwargs))

    async def _send(self, prepared: _Prepared) -> ApiResponse:
        retrying = self._core.retrying(prepared)
        while True:
            try:
                response = await self._read(await self._http.send(self._core.build(self._http, prepared), stream=True))
            except httpx.TransportError as error:
                if (delay := retrying.after_error(error)) is None:
                    raise
                await asyncio.sleep(delay)
                continue
            if (delay := retrying.after(response)) is None:
                return self._core.checked(response)
            await asyncio.sleep(delay)

    async def _read(self, response: httpx.Response) -> httpx.Response:
        """`response` read whole, up to the client's `max_answer_bytes` (UnexpectedAnswer past it), and closed."""
        body = bytearray()
        try:
            async for chunk in response.aiter_bytes():
                self._core.take(response, body, chunk)
        finally:
            await response.aclose()
        response._content = bytes(body)  # what `aread` keeps: the body is read, once, within the bound
        return response

    async def get(self, path: str, **kwargs: Any) -> ApiResponse:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> ApiResponse:
        return await self.request("POST", path, **kwargs)

    async def put(self, path: str, **kwargs: Any) -> ApiResponse:
        return await self.request("PUT", path, **kwargs)

    async def patch(self, path: str, **kwargs: Any) -> ApiResponse:
        return await self.request("PATCH", path, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> ApiResponse:
        return await self.request("DELETE", path, **kwargs)

    def iterate(self, path: str, *, params: Mapping[str, Any] | None = None) -> AsyncIterator[Item]:
        """Every item of a paged listing (`{"items": [...], "next_cursor": ...}`), asking for the next page with
        `cursor=` until the answer names none; `params` are the route's filters (and `limit`, the page size). Every
        page is the client's tenant's when `iterate` was called: a `set_tenant` meanwhile does not mix in another's."""
        return self._pages(path, dict(params or {}), self._core.tenant)

    async def _pages(self, path: str, query: dict[str, Any], tenant: str | None) -> AsyncIterator[Item]:
        seen = {str(query["cursor"])} if query.get("cursor") else set()
        while True:
            prepared = replace(self._core.prepare("GET", path, params=dict(query)), tenant=tenant)
            items, cursor = _page((await self._send(prepared)).json(), seen)
            for item in items:
                yield item
            if cursor is None:
                return
            query["cursor"] = cursor

    def stream(self, path: str, *, after: int = 0) -> AsyncIterator[dict[str, Any]]:
        """Each event of an execution (`path` is its events URL) as it is recorded, oldest first, ending after the
        terminal event; resumes from `after`, and reconnects from the last event seen when a stream breaks off, with
        a token for the client's tenant when `stream` was called (a `set_tenant` meanwhile does not move it)."""
        return self._events(path, after, self._core.tenant)

    async def _events(self, path: str, after: int, tenant: str | None) -> AsyncIterator[dict[str, Any]]:
        reconnects, idle = _Reconnects(self._core), 0
        while True:
            began = _monotonic()
            opened: float | None = None
            try:
                response = await self._open_stream(path, after, tenant)
                opened = _monotonic()
                try:
                    if _is_sse(response):
                        seen, stale = False, 0
                        async for message in _bounded_sse(_BoundedEvents(response)).aiter_sse():
                            reconnects.told(message.retry)
                            item, after = _sse_event(message.data, message.id, after)
                            if item is None:
                                stale = _stale(stale + 1)
                                continue
                            seen, idle, stale = True, 0, 0
                            reconnects.progressed()
                            yield item
                            if item.get("type") in TERMINAL_EVENTS:
                                return
                        if seen:
                            continue
                        # A stream that ends with nothing new is asked once as a page: it says whether the run ended.
                        ended_as = await self._open_stream(path, after, tenant, _POLL_ACCEPT)
                        page = ApiResponse(await self._read(ended_as)).json()
                    else:
                        page = ApiResponse(await self._read(response)).json()
                    items, after, ended = _events(page, after)
                finally:
                    await response.aclose()
            except (httpx.TransportError, ProblemError) as error:
                if not _reconnects(error):
                    raise
                if (delay := reconnects.after(error, opened)) is None:
                    raise
                await asyncio.sleep(delay)
                continue
            reconnects.progressed()  # a page was read: the budget counts failures in a row
            for item in items:
                idle = 0
                yield item
                if item.get("type") in TERMINAL_EVENTS:
                    return
            if ended and not items:
                return
            if not items and _monotonic() - began < _QUICK_ROUND_S:
                idle += 1
                await asyncio.sleep(_idle_delay(idle))

    async def _open_stream(
        self, path: str, after: int, tenant: str | None, accept: str = _STREAM_ACCEPT
    ) -> httpx.Response:
        """The events URL opened for reading as it arrives, for `tenant`, past a renewed token; asked for as the long
        poll when the tenant's streams are all open; the caller closes it and reconnects on 429, 502, 503 and 504."""
        prepared = self._core.stream_prepared(path, after, tenant, accept)
        retrying = self._core.retrying(prepared)
        while True:
            response = await self._http.send(self._core.build(self._http, prepared), stream=True)
            if response.status_code < 400:
                _follow_keepalive(response, self._http.timeout)
                return response
            await self._read(response)
            if accept != _POLL_ACCEPT and _streams_taken(response):
                accept = _POLL_ACCEPT
                prepared = self._core.stream_prepared(path, after, tenant, accept)
                continue
            if _ends_round(response) or (delay := retrying.after(response)) is None:
                raise problem_from(response)
            await asyncio.sleep(delay)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()


class Client:
    """The sync client: the same calls as `AsyncClient`, without `await`."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        credential: Credential | None = None,
        tenant: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 4,
        transport: httpx.BaseTransport | None = None,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
        on_retry: RetryHook | None = None,
    ) -> None:
        """`on_retry`, when given, is called with a `RetryWait` before each wait for a repetition (a 429's
        `Retry-After` can hold a request for a minute at a time, `max_retries` times)."""
        self._core = _Core(base_url, credential, tenant, max_retries, max_answer_bytes, on_retry)
        self._http = httpx.Client(base_url=self._core.base_url, timeout=timeout, transport=transport)
        self.intents: Definitions[ApiResponse, Iterator[Item]] = Definitions(self.request, "intents", self.iterate)
        self.blueprints: Definitions[ApiResponse, Iterator[Item]] = Definitions(
            self.request, "blueprints", self.iterate
        )
        self.executions: Executions[ApiResponse, Iterator[Item]] = Executions(self.request, self.iterate)
        self.modules: Modules[ApiResponse] = Modules(self.request)
        self.audit: Audit[ApiResponse, Iterator[Item]] = Audit(self.request, self.iterate)
        self.webhooks: Webhooks[ApiResponse] = Webhooks(self.request)

    @property
    def tenant(self) -> str | None:
        return self._core.tenant

    def set_tenant(self, tenant: str | None) -> None:
        """Act as `tenant` from now on (a demo tenant name locally, an Entra tenant id in Azure)."""
        self._core.set_tenant(tenant)

    def request(self, method: str, path: str, **kwargs: Any) -> ApiResponse:
        """Send one request; 429 is retried after `Retry-After`, 503, 502, 504 and a lost connection too unless
        sending again could do something twice (a POST, PATCH or DELETE that is not a start or create with its key,
        a write with If-Match), a refused token once with a fresh one."""
        return self._send(self._core.prepare(method, path, **kwargs))

    def _send(self, prepared: _Prepared) -> ApiResponse:
        retrying = self._core.retrying(prepared)
        while True:
            try:
                response = self._read(self._http.send(self._core.build(self._http, prepared), stream=True))
            except httpx.TransportError as error:
                if (delay := retrying.after_error(error)) is None:
                    raise
                time.sleep(delay)
                continue
            if (delay := retrying.after(response)) is None:
                return self._core.checked(response)
            time.sleep(delay)

    def _read(self, response: httpx.Response) -> httpx.Response:
        """`response` read whole, up to the client's `max_answer_bytes` (UnexpectedAnswer past it), and closed."""
        body = bytearray()
        try:
            for chunk in response.iter_bytes():
                self._core.take(response, body, chunk)
        finally:
            response.close()
        response._content = bytes(body)  # what `read` keeps: the body is read, once, within the bound
        return response

    def get(self, path: str, **kwargs: Any) -> ApiResponse:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> ApiResponse:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> ApiResponse:
        return self.request("PUT", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> ApiResponse:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> ApiResponse:
        return self.request("DELETE", path, **kwargs)

    def iterate(self, path: str, *, params: Mapping[str, Any] | None = None) -> Iterator[Item]:
        """Every item of a paged listing (`{"items": [...], "next_cursor": ...}`), asking for the next page with
        `cursor=` until the answer names none; `params` are the route's filters (and `limit`, the page size). Every
        page is the client's tenant's when `iterate` was called: a `set_tenant` meanwhile does not mix in another's."""
        return self._pages(path, dict(params or {}), self._core.tenant)

    def _pages(self, path: str, query: dict[str, Any], tenant: str | None) -> Iterator[Item]:
        seen = {str(query["cursor"])} if query.get("cursor") else set()
        while True:
            prepared = replace(self._core.prepare("GET", path, params=dict(query)), tenant=tenant)
            items, cursor = _page(self._send(prepared).json(), seen)
            yield from items
            if cursor is None:
                return
            query["cursor"] = cursor

    def stream(self, path: str, *, after: int = 0) -> Iterator[dict[str, Any]]:
        """Each event of an execution as it is recorded, ending after the terminal event; reconnects from the last
        event seen when a stream breaks off, with a token for the client's tenant when `stream` was called."""
        return self._events(path, after, self._core.tenant)

    def _events(self, path: str, after: int, tenant: str | None) -> Iterator[dict[str, Any]]:
        reconnects, idle = _Reconnects(self._core), 0
        while True:
            began = _monotonic()
            opened: float | None = None
            try:
                response = self._open_stream(path, after, tenant)
                opened = _monotonic()
                try:
                    if _is_sse(response):
                        seen, stale = False, 0
                        for message in _bounded_sse(_BoundedEvents(response)).iter_sse():
                            reconnects.told(message.retry)
                            item, after = _sse_event(message.data, message.id, after)
                            if item is None:
                                stale = _stale(stale + 1)
                                continue
                            seen, idle, stale = True, 0, 0
                            reconnects.progressed()
                            yield item
                            if item.get("type") in TERMINAL_EVENTS:
                                return
                        if seen:
                            continue
                        # A stream that ends with nothing new is asked once as a page: it says whether the run ended.
                        page = ApiResponse(self._read(self._open_stream(path, after, tenant, _POLL_ACCEPT))).json()
                    else:
                        page = ApiResponse(self._read(response)).json()
                    items, after, ended = _events(page, after)
                finally:
                    response.close()
            except (httpx.TransportError, ProblemError) as error:
                if not _reconnects(error):
                    raise
                if (delay := reconnects.after(error, opened)) is None:
                    raise
                time.sleep(delay)
                continue
            reconnects.progressed()  # a page was read: the budget counts failures in a row
            for item in items:
                idle = 0
                yield item
                if item.get("type") in TERMINAL_EVENTS:
                    return
            if ended and not items:
                return
            if not items and _monotonic() - began < _QUICK_ROUND_S:
                idle += 1
                time.sleep(_idle_delay(idle))

    def _open_stream(self, path: str, after: int, tenant: str | None, accept: str = _STREAM_ACCEPT) -> httpx.Response:
        """The events URL opened for reading as it arrives, for `tenant`, past a renewed token; asked for as the long
        poll when the tenant's streams are all open; the caller closes it and reconnects on 429, 502, 503 and 504."""
        prepared = self._core.stream_prepared(path, after, tenant, accept)
        retrying = self._core.retrying(prepared)
        while True:
            response = self._http.send(self._core.build(self._http, prepared), stream=True)
            if response.status_code < 400:
                _follow_keepalive(response, self._http.timeout)
                return response
            self._read(response)
            if accept != _POLL_ACCEPT and _streams_taken(response):
                accept = _POLL_ACCEPT
                prepared = self._core.stream_prepared(path, after, tenant, accept)
                continue
            if _ends_round(response) or (delay := retrying.after(response)) is None:
                raise problem_from(response)
            time.sleep(delay)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
