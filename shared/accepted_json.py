# intent_ref: platform.hardening
"""The JSON the platform accepts from outside (HTTP bodies, intent-requests events), and the text it can store."""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import anyio

MAX_DEPTH = 128
"""Nested arrays and objects, the document itself being level 1. Routes bound their own documents more tightly
(definitions and parameter schemas at 32 levels by default) and name the place; this bound only has to keep every
parser and walker far from the recursion limit while letting those precise checks answer first."""
MIN_INT = -(2**63)
MAX_INT = 2**63 - 1
"""Integers are those of a Postgres bigint: anything wider is refused rather than rounded or stored as text."""
MAX_REFUSALS = 20
"""A hostile body can hold a million bad strings; the answer names the first few."""
MAX_STORED_GROWTH = 4
STORED_GROWTH_SLACK = 64 * 1024
"""A document whose numbers Postgres would give back longer than MAX_STORED_GROWTH times the text sent, plus this
many characters, is refused: jsonb keeps a number as an exact decimal and writes it out in full, so `1e300` (5
bytes) is read back as 301 digits, and a 1 MiB body of them as 60 MB on every read of it."""

_BOM = b"\xef\xbb\xbf"
# NUL cannot be stored in Postgres text or jsonb; a lone surrogate cannot be encoded as UTF-8 at all.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
JSON_STRING = r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)'
"""A regular expression for one JSON string token, for counting what lies outside strings without parsing (compile
it with re.DOTALL; its text is ASCII, so it compiles the same over bytes). A string that is never closed runs to the
end of the text: a token that could fail once begun would be tried again from every quote inside it, which is
quadratic in a hostile body's length."""
# A string, or a bracket outside one.
_TOKEN = re.compile(JSON_STRING + r"|[\[\]{}]", re.DOTALL)
_NESTING = {"[": 1, "{": 1, "]": -1, "}": -1}
# Strings are blanked out before brackets are counted: those inside one are not containers.
_STRING = re.compile(JSON_STRING.encode("ascii"), re.DOTALL)
_MAX_INT_DIGITS = len(str(MAX_INT))
_JSON_MEDIA_TYPE = re.compile(r"^application/(?:json|[!#$%&'*.^_`|~0-9a-z-]+\+json)$")


UNSTORABLE_TEXT = "unstorable_text"
NON_FINITE_NUMBER = "non_finite_number"
INTEGER_OUT_OF_RANGE = "integer_out_of_range"
DUPLICATE_MEMBER = "duplicate_member"
TOO_DEEP = "too_deep"
NOT_UTF8 = "not_utf8"
BYTE_ORDER_MARK = "byte_order_mark"
INVALID_JSON = "invalid_json"
NUMBERS_TOO_LONG = "numbers_too_long"
MAX_BODY_CONTAINERS = 100_000
"""Arrays and objects in one request body (and intent-requests event body), counted before it is parsed (ADR 0023,
0019). Each costs the parsers, the
accepted-JSON walk and the route's model several microseconds, ten times what a byte of a string costs: a 1 MiB body
of 500,000 nested `[]` took about 2 s of CPU to answer, and 0.85 s on a route that ignores its body. Real documents
hold one container per 20 bytes or more; this allows one per 10 bytes of the default body limit."""
TOO_MANY_CONTAINERS = "too_many_containers"


@dataclass(frozen=True)
class Refusal:
    """One place in the input that is not accepted: an RFC 6901 pointer (from the document's root), why, and a
    machine-readable code (one of the constants above)."""

    pointer: str
    detail: str
    code: str


class NotAcceptedJSONError(ValueError):
    """The bytes are not JSON the platform accepts; `refusals` name where and why (at most MAX_REFUSALS)."""

    def __init__(self, refusals: list[Refusal]) -> None:
        super().__init__("; ".join(f"{r.pointer or '(document)'}: {r.detail}" for r in refusals))
        self.refusals = tuple(refusals)


class _Refused:
    """A value the parser met that is refused; kept in place so the walk can say where it was."""

    __slots__ = ("code", "detail")

    def __init__(self, detail: str, code: str) -> None:
        self.detail, self.code = detail, code


class _DuplicateKeys(dict[str, Any]):
    """An object that named some member more than once (the last value kept, as json.loads would)."""

    def __init__(self, pairs: list[tuple[str, Any]], duplicates: list[str]) -> None:
        super().__init__(pairs)
        self.duplicates = duplicates


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) == len(pairs):
        return document
    seen: set[str] = set()
    duplicates: dict[str, None] = {}
    for key, _ in pairs:
        if key in seen:
            duplicates[key] = None
        seen.add(key)
    return _DuplicateKeys(pairs, list(duplicates))


def _constant(name: str) -> _Refused:
    return _Refused(f"{name} is not a JSON number; only finite numbers are accepted", NON_FINITE_NUMBER)


def _float(text: str) -> float | _Refused:
    value = float(text)
    if math.isfinite(value):
        return value
    return _Refused("the number overflows; only finite numbers are accepted", NON_FINITE_NUMBER)


def stored_number_length(value: float) -> int:
    """How many characters Postgres writes a float out as once it is stored in jsonb (an exact decimal, written in
    full: 1e+300 as 301 digits), from the text the app sends it (`repr`, as json.dumps writes floats)."""
    text = repr(value)
    if "e" not in text:
        return len(text)  # plain decimal notation: written back as sent
    # repr's scientific notation is `[-]d[.ddd]e±x`: its digits, and the power of ten of the last of them.
    mantissa, power = text.split("e")
    sign = mantissa.startswith("-")
    digits = mantissa.lstrip("-").replace(".", "")
    count = len(digits)
    exponent = int(power) - (count - 1)
    if exponent >= 0:
        length = count + exponent  # the digits, then the zeros
    elif count + exponent > 0:
        length = count + 1  # a decimal point among the digits
    else:
        length = 2 - exponent  # "0.", the zeros, then the digits
    return length + sign


class _TooLong(Exception):
    """The numbers already read would be written back longer than the document's bound: stop parsing."""


def _growth_counting(budget: int) -> Callable[[str], float | _Refused]:
    """`_float`, counting how much longer Postgres would write each float out than it was sent, and stopping the
    parse (`_TooLong`) as soon as that passes `budget`: the rest of a hostile body is never converted."""
    growth = 0

    def parse(text: str) -> float | _Refused:
        nonlocal growth
        value = _float(text)
        if isinstance(value, float) and ("e" in text or "E" in text):
            growth += stored_number_length(value) - len(text)
            if growth > budget:
                raise _TooLong
        return value

    return parse


def _int(text: str) -> int | _Refused:
    # Checking the digit count first keeps a 100,000-digit integer from being converted at all.
    if len(text) - text.startswith("-") <= _MAX_INT_DIGITS:
        value = int(text)
        if MIN_INT <= value <= MAX_INT:
            return value
    return _Refused(f"the integer is outside [{MIN_INT}, {MAX_INT}]", INTEGER_OUT_OF_RANGE)


def escaped_token(name: str) -> str:
    """One reference token of a JSON pointer: `~` written as `~0`, then `/` as `~1` (RFC 6901)."""
    return name.replace("~", "~0").replace("/", "~1")


def unescaped_token(token: str) -> str:
    """The member name a reference token stands for: `~1` read as `/`, then `~0` as `~` (RFC 6901)."""
    return token.replace("~1", "/").replace("~0", "~")


def path_pointer(path: Iterable[object]) -> str:
    """A JSON pointer (RFC 6901) for a path of member names and indexes, each written as `str` gives it and
    escaped; "" for the document itself."""
    return "".join(f"/{escaped_token(str(step))}" for step in path)


def pointer_token(name: str) -> str:
    """One reference token of a pointer (RFC 6901 escaping); unstorable characters are written as \\uXXXX so that
    the pointer itself can be sent back in a response."""
    return storable_text(escaped_token(name))


def storable_text(text: str) -> str:
    """`text` with each NUL and lone surrogate written as its \\uXXXX escape: a message that quotes what an outside
    party sent (an endpoint's answer, say) can then be stored and shown."""
    return _UNSTORABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def replace_unstorable(text: str) -> str:
    """`text` with each NUL and lone surrogate replaced with U+FFFD (the replacement character): for text an outside
    party sent that is recorded as it came but for what no text can be stored with. Two halves that form a valid
    surrogate pair (as the `unicode_escape` charset leaves `\\ud83d\\ude00`) are first joined into their one
    character, which is storable: only halves left alone are replaced."""
    if _UNSTORABLE.search(text) is None:
        return text
    # Through UTF-16, which writes each half as it is: read back, a high half followed by a low one is their
    # character, and any other half is undecodable, one U+FFFD each.
    joined = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return _UNSTORABLE.sub("\ufffd", joined)


def text_refusal(text: str) -> str | None:
    """Why a string cannot be accepted (a NUL or a lone surrogate in it), or None."""
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    char = found.group()
    return (
        "NUL (U+0000) is not accepted in text"
        if char == "\x00"
        else f"a lone surrogate (U+{ord(char):04X}) is not accepted in text"
    )


def _value_refusal(value: Any, bound_integers: bool) -> _Refused | None:
    if isinstance(value, _Refused):
        return value
    if isinstance(value, str):
        detail = text_refusal(value)
        return None if detail is None else _Refused(detail, UNSTORABLE_TEXT)
    if isinstance(value, float) and not math.isfinite(value):
        return _Refused("only finite numbers are accepted", NON_FINITE_NUMBER)
    if bound_integers and isinstance(value, int) and not isinstance(value, bool) and not MIN_INT <= value <= MAX_INT:
        return _Refused(f"the integer is outside [{MIN_INT}, {MAX_INT}]", INTEGER_OUT_OF_RANGE)
    return None


_Path = tuple[Any, str | int] | None
"""Where a value sits: (the parent's path, its member name or index), None at the root. Built as links, a node's
pointer costs nothing until a refusal names it: pointers built for every node held a long member name once per
child below it (a 40,000-character name over 5,000 members: 200 MB for a 100 KB body)."""


def _pointer(path: _Path) -> str:
    steps: list[str | int] = []
    while path is not None:
        path, step = path
        steps.append(step)
    # Written as \uXXXX a character at a time, the unstorable ones come out the same in the whole pointer as in
    # each token: neither the separators nor the escapes hold one.
    return storable_text(path_pointer(reversed(steps)))


_STRINGS_ONLY = frozenset({str})


def _dumped_name(key: Any) -> str:
    """A member name that is not a string as `json.dumps` writes it (`true`, `null`, `200`, `1.5`)."""
    if isinstance(key, bool) or key is None:
        return json.dumps(key)
    return int.__repr__(key) if isinstance(key, int) else float.__repr__(key) if isinstance(key, float) else str(key)


def _walk(document: Any, bound_integers: bool, names_as_dumped: bool = False) -> Iterator[Refusal]:
    # Iterative, so that a Python value deeper than the recursion limit is walked as safely as a parsed one.
    stack: list[tuple[_Path, Any]] = [(None, document)]
    while stack:
        at, value = stack.pop()
        if isinstance(value, dict):
            if isinstance(value, _DuplicateKeys):
                for key in value.duplicates:
                    yield Refusal(_pointer((at, key)), "the member is given more than once", DUPLICATE_MEMBER)
            children: list[tuple[_Path, Any]] = []
            # The names as json.dumps writes them, kept only for an object with a name that is not a string: two
            # names written alike (`1` and `"1"`, `True` and `"true"`) made one member once stored, the other's value
            # silently gone.
            dumped: set[str] | None = None
            if names_as_dumped and not _STRINGS_ONLY.issuperset(map(type, value)):
                dumped = set()
            for key, child in value.items():
                if isinstance(key, str):
                    name, detail = key, text_refusal(key)
                elif names_as_dumped:
                    name, detail = _dumped_name(key), None  # stored as the string json.dumps writes for it
                else:
                    name, detail = str(key), "a member name must be a string"
                if detail is not None:
                    yield Refusal(_pointer((at, name)), f"member name: {detail}", UNSTORABLE_TEXT)
                if dumped is not None:
                    if name in dumped:
                        yield Refusal(_pointer((at, name)), "the member is given more than once", DUPLICATE_MEMBER)
                    dumped.add(name)
                children.append(((at, name), child))
            stack.extend(reversed(children))
        elif isinstance(value, list | tuple):
            stack.extend(reversed([((at, index), child) for index, child in enumerate(value)]))
        else:
            refused = _value_refusal(value, bound_integers)
            if refused is not None:
                yield Refusal(_pointer(at), refused.detail, refused.code)


def refusals(value: Any, *, bound_integers: bool = True, names_as_dumped: bool = False) -> list[Refusal]:
    """What the accepted JSON refuses in an already-parsed value (NUL, lone surrogates, non-finite numbers and,
    with `bound_integers`, integers beyond a bigint), at most MAX_REFUSALS, in document order.

    Without `bound_integers` it refuses only what Postgres can never have stored, so values read back from the
    database (written before the bound) still pass. With `names_as_dumped`, a member name that is not a string (an
    int, a float, a bool, None: what `json.dumps` accepts) is taken as the string `json.dumps` writes for it, as a
    value about to be stored through it is, instead of being refused; two names of one object written alike (`1`
    and `"1"`) are refused as a member given more than once (DUPLICATE_MEMBER)."""
    return list(itertools.islice(_walk(value, bound_integers, names_as_dumped), MAX_REFUSALS))


def has_non_string_names(value: Any) -> bool:
    """Whether an object in `value` has a member name that is not a string (which `json.dumps` writes as one, so that
    two names can be written alike). Cheaper than `refusals`: it builds no paths, and looks at an array's or an
    object's members one by one only when some of them are arrays or objects."""
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if not _STRINGS_ONLY.issuperset(map(type, item)):
                return True
            members: Iterable[Any] = item.values()
        elif isinstance(item, list | tuple):
            members = item
        else:
            continue
        kinds = set(map(type, members))
        if any(issubclass(kind, dict | list | tuple) for kind in kinds):
            stack.extend(member for member in members if isinstance(member, dict | list | tuple))
    return False


def containers(body: bytes) -> int:
    """How many arrays and objects a JSON body holds, counted on its bytes without parsing them (brackets inside
    strings ignored), or at least how many when that is within MAX_BODY_CONTAINERS: a few milliseconds per MiB,
    where parsing a MiB of brackets costs a second."""
    brackets = body.count(b"[") + body.count(b"{")
    if brackets <= MAX_BODY_CONTAINERS:
        return brackets  # at most this many (those inside strings included): nothing more to count
    bare = _STRING.sub(b'""', body)
    return bare.count(b"[") + bare.count(b"{")


def too_many_containers(found: int) -> NotAcceptedJSONError:
    """The refusal of a body of `found` arrays and objects, over MAX_BODY_CONTAINERS."""
    detail = f"the body holds {found} arrays and objects; at most {MAX_BODY_CONTAINERS} are accepted"
    return NotAcceptedJSONError([Refusal("", detail, TOO_MANY_CONTAINERS)])


def nesting_depth(text: str) -> int:
    """How deeply arrays and objects nest in JSON text, counted without parsing it (brackets in strings ignored)."""
    tokens = _TOKEN.findall(text)
    return max(itertools.accumulate(_NESTING[t] for t in tokens if t in _NESTING), default=0)


def loads(body: bytes) -> Any:
    """The document in `body` when it is accepted JSON; NotAcceptedJSONError naming every refused place otherwise.

    Accepted: UTF-8 without a byte order mark; one JSON text (RFC 8259); no NUL and no lone surrogate in any string
    or member name, escaped or not; only finite numbers; integers within a bigint; no member name twice in an
    object; at most MAX_DEPTH levels of nesting; numbers that Postgres gives back at most MAX_STORED_GROWTH times as
    long as the whole text, give or take STORED_GROWTH_SLACK.
    """
    if body.startswith(_BOM):
        raise NotAcceptedJSONError(
            [Refusal("", "a byte order mark is not accepted; send UTF-8 without one", BYTE_ORDER_MARK)]
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotAcceptedJSONError([Refusal("", f"the body is not UTF-8 (byte {exc.start})", NOT_UTF8)]) from None
    depth = nesting_depth(text)
    if depth > MAX_DEPTH:
        raise NotAcceptedJSONError([Refusal("", f"nesting is deeper than {MAX_DEPTH} levels", TOO_DEEP)])
    bound = MAX_STORED_GROWTH * len(text) + STORED_GROWTH_SLACK
    try:
        document = json.loads(
            text,
            object_pairs_hook=_object,
            parse_constant=_constant,
            parse_float=_growth_counting(bound - len(text)),
            parse_int=_int,
        )
    except json.JSONDecodeError as exc:
        raise NotAcceptedJSONError(
            [Refusal("", f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", INVALID_JSON)]
        ) from None
    except _TooLong:
        detail = (
            f"its numbers would be stored and read back as more than {bound} characters ({len(text)} were sent): a"
            " number is kept as an exact decimal and written out in full (1e300 as 301 digits); send such values as"
            " strings"
        )
        raise NotAcceptedJSONError([Refusal("", detail, NUMBERS_TOO_LONG)]) from None
    found = refusals(document)
    if found:
        raise NotAcceptedJSONError(found)
    return document


def accepted(body: bytes) -> bytes:
    """`body` itself when it is accepted JSON (NotAcceptedJSONError otherwise), for callers that parse it again."""
    loads(body)
    return body


def is_json_media_type(content_type: str | None) -> bool:
    """Whether a Content-Type is application/json or an application/*+json type (its parameters are not looked at
    here: the gateway refuses a charset other than UTF-8, `shared.api.accepted_input.media_type_refusal`)."""
    if not content_type:
        return False
    return _JSON_MEDIA_TYPE.match(content_type.split(";", 1)[0].strip().lower()) is not None


def canonical_text(value: Any) -> str:
    """One text per JSON value as JSON compares values: members sorted, integral floats as ints (1 == 1.0), booleans
    kept apart from numbers (true != 1)."""
    return json.dumps(_normalised(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def same_json(one: Any, other: Any) -> bool:
    """Whether two JSON values are equal as JSON compares them (see `canonical_text`)."""
    return canonical_text(one) == canonical_text(other)


def _normalised(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _normalised(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_normalised(item) for item in value]
    return value


class TenantParses:
    """Per tenant, the limiter its bodies are parsed through (`size` at once, per process): a parse holds the
    interpreter's lock for most of its time, so one tenant's parses at once parse no faster than one after the other
    and only crowd out the event loop every tenant's requests run on; they queue on the loop, holding no thread."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._limiters: dict[UUID, anyio.CapacityLimiter] = {}

    def of(self, tenant_id: UUID) -> anyio.CapacityLimiter:
        """The tenant's limiter (made on its first parse)."""
        limiter = self._limiters.get(tenant_id)
        if limiter is None:
            limiter = self._limiters.setdefault(tenant_id, anyio.CapacityLimiter(self._size))
        return limiter

    def __getitem__(self, tenant_id: UUID) -> anyio.CapacityLimiter:
        """The tenant's limiter once made (KeyError before its first parse)."""
        return self._limiters[tenant_id]
