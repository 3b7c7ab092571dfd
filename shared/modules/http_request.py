# intent_ref: platform.modules
"""`http.request`: one HTTP call through the SSRF guard; the output is the status, safe headers and the body."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any, ClassVar, NoReturn

import httpx

from shared import accepted_json
from shared.accepted_json import MAX_INT, MIN_INT
from shared.modules.contract import Module, ModuleContext, StepFailed
from shared.modules.ssrf import GuardedClient, Resolver, private_network_allowed, read_limited, system_resolver
from shared.registry.catalog import HttpRequestParams

MAX_BODY_BYTES = 64 * 1024
REQUEST_TIMEOUT_S = 30.0
SAFE_RESPONSE_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "content-encoding",
        "content-language",
        "location",
        "etag",
        "last-modified",
        "cache-control",
        "retry-after",
        "date",
        "x-request-id",
        "x-correlation-id",
    }
)
"""Copied into the output (and so into history): never cookies or authentication challenges."""


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
"""A field name (RFC 9110 token)."""
_HEADER_VALUE = re.compile(r"(?:[^\x00\t\n\v\f\r ]+(?:[ \t]+[^\x00\t\n\v\f\r ]+)*)?")
"""A field value as the HTTP/1.1 client sends it: no line break, NUL or other control white space, nor white space
at either end."""


def header_fault(headers: Mapping[str, str]) -> str | None:
    """Why `headers` cannot be sent, naming the header and never quoting its value (a rendered value is often a
    token, and a trailing line break in it is a common paste mistake), or None."""
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name):
            # Only what precedes the first character a name may not hold: a whole header line pasted as a name
            # carries its value after the colon.
            start = _HEADER_NAME.match(name)
            named = f"the header name starting {start.group(0)!r}" if start else "a header name"
            return f"{named} holds a character HTTP does not allow in a name"
        if not value.isascii():
            return f"the value of header {name!r} holds a character that is not ASCII"
        if not _HEADER_VALUE.fullmatch(value):
            return f"the value of header {name!r} holds a line break, a NUL or white space at either end"
    return None


def allowed_hosts(ctx: ModuleContext) -> list[str]:
    """The tenant's SSRF allow-list (exact host names)."""
    hosts = ctx.tenant_settings.get("allowed_hosts") or []
    return [h for h in hosts if isinstance(h, str)]


class _Unrecordable(ValueError):
    """A number in a JSON body that cannot be recorded exactly as a JSON number: an integer a bigint cannot hold, or
    one that is not finite (NaN, Infinity, -Infinity, which Python's parser takes, or a float that overflows)."""


def _bigint(digits: str) -> int:
    value = int(digits)
    if not MIN_INT <= value <= MAX_INT:
        raise _Unrecordable(digits)
    return value


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Unrecordable(text)
    return value


def _constant(name: str) -> NoReturn:
    raise _Unrecordable(name)


def decode_body(response: httpx.Response, content: bytes, truncated: bool) -> Any:
    """JSON if the response says so and all of it was read, otherwise text."""
    return read_body(response, content, truncated)[0]


def read_body(response: httpx.Response, content: bytes, truncated: bool) -> tuple[Any, bool, bool]:
    """The body as `decode_body` answers it; whether it is the text of a JSON body that cannot be recorded as JSON
    (`body_as_text` in the output); and whether characters of a text body that no output can hold (NUL, lone
    surrogates) were replaced with U+FFFD (`body_replaced`).

    A JSON body is recorded as its text when it holds what the module's boundary refuses: an integer beyond a bigint
    (a 64-bit unsigned id, say: jsonb reads it back as a float), NaN, Infinity or -Infinity (which Python's parser
    takes) or a float that overflows to one, a NUL (`\\u0000`) or a lone surrogate (`\\ud800`) in a string or a
    member name, or nesting deeper than the accepted JSON's. Each failed the step, not retried, after the upstream
    call had done its work, its status and headers lost. Its text is recorded instead, as a mislabelled body's is:
    every character kept, but for a NUL or lone surrogate of its own (a raw NUL byte), which no text can be stored
    with and which becomes U+FFFD (`body_replaced`). `body_replaced` is also set when the body's charset could not
    decode some of its bytes, each replaced with U+FFFD: the text recorded is then not the text sent either."""
    content_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    as_text = False
    if not truncated and (content_type == "application/json" or content_type.endswith("+json")) and content:
        try:
            return _recordable_json(content), False, False
        except _Unrecordable:
            as_text = True
        except ValueError:
            pass  # a server that mislabels its body still gets its text recorded
    text, replaced = decode_text(content, response.encoding)
    storable = accepted_json.replace_unstorable(text)
    # Each NUL or lone surrogate became one U+FFFD; a surrogate pair a charset left as two halves (`unicode_escape`)
    # was joined into its one character, which changes the text but replaces nothing.
    return storable, as_text, replaced or storable.count("\ufffd") > text.count("\ufffd")


def _recordable_json(content: bytes) -> Any:
    """JSON `content` (at most MAX_BODY_BYTES, so the walk is cheap) parsed; `_Unrecordable` when it holds what an
    output cannot (what `contract._unstorable` refuses): nesting deeper than the accepted JSON's once inside the
    output (counted before parsing: deep enough, the parser raised RecursionError, which failed the step as
    retryable and ran the call again), a number that cannot be recorded as one, a NUL or a lone surrogate.
    ValueError when it is not JSON, which brackets that do not balance tell before any parse (`_Unrecordable` is
    only for JSON: `body_as_text` says the text is JSON's)."""
    text = content.decode(json.detect_encoding(content), "surrogatepass")
    deepest, balanced = _nesting(text)
    # The body is recorded one level inside the output (`{"status": ..., "body": <body>}`), so the output nests one
    # level deeper than it: a body of MAX_DEPTH levels makes an output the module's boundary refuses.
    if deepest > accepted_json.MAX_DEPTH - 1:
        if not balanced:
            # Not JSON (its brackets do not close as they open), and too deep to hand the parser to find out.
            raise ValueError("brackets that do not balance")
        raise _Unrecordable(f"nests deeper than {accepted_json.MAX_DEPTH - 1} levels, as the body of an output")
    parsed = json.loads(text, parse_int=_bigint, parse_float=_finite, parse_constant=_constant)
    if accepted_json.refusals(parsed, bound_integers=True):
        raise _Unrecordable("holds text no output can")
    return parsed


_BRACKET_TOKEN = re.compile(accepted_json.JSON_STRING + r"|[\[\]{}]", re.DOTALL)
_OPENER = {"]": "[", "}": "{"}


def _nesting(text: str) -> tuple[int, bool]:
    """How deeply arrays and objects nest in `text` (brackets in strings ignored, as `accepted_json.nesting_depth`
    counts them), and whether its brackets balance: each closes the last one still open, of its own kind (`]` an
    array, `}` an object), and all are closed at the end. Text whose brackets do not balance is no JSON, however deep
    it runs: `{` x 200 then `]` x 200 closes as many as it opens, none of its kind."""
    open_kinds: list[str] = []
    deepest = 0
    for token in _BRACKET_TOKEN.findall(text):
        opener = _OPENER.get(token)
        if opener is not None:
            if not open_kinds or open_kinds.pop() != opener:
                return deepest, False
        elif token in ("[", "{"):
            open_kinds.append(token)
            deepest = max(deepest, len(open_kinds))
    return deepest, not open_kinds


def decode_text(content: bytes, charset: str | None) -> tuple[str, bool]:
    """`content` as text in `charset`, else UTF-8, undecodable bytes replaced, never an error; and whether any were.

    The charset is the server's choice: one Python does not know, or one naming a codec that is no text encoding
    (`rot13`, `hex`, `zlib`, `undefined`), raised instead of decoding, and the answer (its status too) was lost."""
    if charset:
        try:
            return _decoded(content, charset)
        except (LookupError, ValueError):  # not a text encoding; UnicodeError (`undefined`, `idna`) is a ValueError
            pass
    return _decoded(content, "utf-8")


def _decoded(content: bytes, charset: str) -> tuple[str, bool]:
    text = content.decode(charset, errors="replace")
    if "\ufffd" not in text:
        return text, False  # nothing was replaced
    try:
        content.decode(charset)  # only to tell a U+FFFD the body sent from one standing for bytes it could not decode
    except UnicodeDecodeError:
        return text, True
    return text, False


class HttpRequestModule(Module[HttpRequestParams]):
    action: ClassVar[str] = "http.request"
    params_model = HttpRequestParams
    timeout_s = 60

    def __init__(
        self,
        *,
        resolver: Resolver = system_resolver,
        timeout: float = REQUEST_TIMEOUT_S,
        allow_private: bool | None = None,
    ) -> None:
        self._resolver = resolver
        self._timeout = timeout
        self._allow_private = allow_private

    def run(self, ctx: ModuleContext, params: HttpRequestParams) -> Any:
        with GuardedClient(
            allowed_hosts(ctx),
            timeout=self._timeout,
            resolver=self._resolver,
            allow_private=private_network_allowed(self._allow_private),
            tenant=ctx.tenant_id,
        ) as client:
            # The attempt's key lets the receiving service drop a redelivered request (at-least-once work).
            headers = {"Idempotency-Key": ctx.idempotency_key, **params.headers}
            fault = header_fault(headers)
            if fault is not None:
                raise StepFailed(f"{params.method} {params.url} not sent: {fault}", retryable=False)
            # The exchange ends by the attempt's deadline too: a step may allow less than REQUEST_TIMEOUT_S, and
            # past it the worker has recorded the attempt timed out while this thread would still be held.
            left = ctx.time_left()
            timeout = self._timeout if left is None else min(self._timeout, left)
            try:
                response = client.request(
                    params.method,
                    params.url,
                    headers=headers,
                    query=params.query,
                    json_body=params.body,
                    timeout=timeout,
                )
                content, truncated = read_limited(response, MAX_BODY_BYTES)
            except (httpx.LocalProtocolError, UnicodeEncodeError) as exc:
                # Their text quotes the header they refused, value and all: only the kind of error is kept.
                raise StepFailed(
                    f"{params.method} {params.url} failed: {type(exc).__name__}: the request is not valid HTTP",
                    retryable=False,
                ) from None
            except httpx.HTTPError as exc:
                raise StepFailed(f"{params.method} {params.url} failed: {type(exc).__name__}: {exc}") from None
        status = response.status_code
        body, as_text, replaced = read_body(response, content, truncated)
        output = {
            "status": status,
            "headers": {k: v for k, v in response.headers.items() if k.lower() in SAFE_RESPONSE_HEADERS},
            "body": body,
            "truncated": truncated,
        }
        if as_text:
            output["body_as_text"] = True  # JSON that cannot be recorded as JSON, recorded as its text
        if replaced:
            output["body_replaced"] = True  # bytes not decoded, a NUL or a lone surrogate: replaced with U+FFFD
        expected = params.expect_status
        if (status not in expected) if expected else not 200 <= status < 300:
            wanted = ", ".join(map(str, expected)) if expected else "2xx"
            # 5xx and 429 are often transient; a 4xx usually repeats.
            raise StepFailed(
                f"{params.method} {params.url} answered {status}, expected {wanted}",
                retryable=status >= 500 or status == 429,
                details={"status": status, "output": output},
            )
        return output
