# intent_ref: platform.registry
"""Validators for tenant-supplied JSON Schemas: every regular expression runs on RE2, in linear time.

Python's `re` backtracks, so a tenant's `pattern` such as `^(a+)+$` could hold a worker for hours on a short
input. Patterns RE2 cannot compile (backreferences, lookaround) are refused when the schema is registered.

Inside `evaluation_budget()` every keyword application counts against a step budget (ADR 0016, amended
2026-12-05): `unevaluatedProperties` nested under `if`/`allOf` re-evaluates its subschemas, so the work doubles with
each level; past the budget the evaluation stops with `EvaluationBudgetExceeded`. A budget opened inside another
draws from it, so several evaluations (the steps of one definition) can share one. `uniqueItems`, `enum` and
`const` compare canonical JSON encodings in linear time, each value encoded once per budget and charged for its
size, and messages quote schema values in a bounded form. A regex search is charged for its subject's length (plus a
fixed overhead) times its program's weight, the fractions carried from search to search; it is made once per budget
for the same pattern and long text, and a search answered so is charged too; regex work is also bounded by a fixed
allowance, whatever the instance's size. A pattern compiles to a bounded program, and one schema's patterns to a
bounded total; each distinct pattern's compile is charged once per budget and its program held by the budget, so an
evaluation costs the same whatever the process's cache holds. A subschema's keys, known or not, are charged on each
descend (ADR 0021, amended 2026-12-07). No message quotes a whole instance (a `false` subschema's included), a
subschema is evaluated by this validator whatever its `$schema`, a pattern is weighed with its classes widened so
that one matching nothing in Latin-1 still counts, each program compiles within a memory fitted to its size, and
the DFA states a search may cache are counted against the budget's memory (the same ADR and amendment day). A
descend applying no keyword is charged a step, scans of an object's keys and `unevaluatedItems`' indexes (a set) are
charged, a failing `anyOf`/`oneOf` branch is evaluated to its first error only, a message names a few unexpected
keys, and a program compiles with memory enough for its DFAs to search at their speed (the same ADR, amended again
on review of 94c7cb3). A `$ref`'s lookup is charged for its segments and length at each application, and `required`
and `dependentRequired` for their names, quoted in the bounded form (the same ADR, on review of 29a2ec0 and of
91faf6f). `properties` and `dependentSchemas` walk the smaller of their names and the object's keys, charged (the
same ADR, on review of 91faf6f).
"""

from __future__ import annotations

import heapq
import reprlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from itertools import islice
from typing import Any, TypeVar
from urllib.parse import unquote

import attrs
import re2  # type: ignore[import-untyped]  # the package ships no type information
from jsonschema import Draft202012Validator, ValidationError
from jsonschema._utils import equal, uniq
from jsonschema.protocols import Validator
from jsonschema.validators import create

from shared.accepted_json import canonical_text

JsonPath = tuple[str | int, ...]
MAX_PATTERN_LENGTH = 1000
# Keywords whose values are data, not subschemas: a `pattern` key inside them is not a keyword.
_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples"})
_PATTERN_CACHE_SIZE = 1024
_PATTERN_CACHE_PROGRAM = 2_000_000
"""Instructions the compiled patterns kept between evaluations may hold in all (ten schemas at MAX_SCHEMA_PROGRAM)."""
_PATTERN_CACHE_MEMORY = 256 << 20
"""Memory the compiled patterns kept between evaluations may hold in all, each counted at _KEPT_PROGRAM_MEMORY: a
kept program's DFA caches states as it searches, up to about 1.5 MB, so 1,024 small programs (4 schemas of 256
patterns) held 677 MB whatever their instruction count."""
MAX_PATTERN_PROGRAM = 100_000
"""Instructions one pattern may compile to. A Unicode class is about 1,300 of them, and a repetition copies it:
`[\\pL\\pN]{400}` (14 characters) compiled to 537,000 in 0.2 s and held megabytes for the process's life."""
MAX_SCHEMA_PROGRAM = 400_000
"""Instructions one schema's distinct patterns may compile to in all (about 0.15 s of compiling)."""
_COMPILE_MEMORY = 4 << 20
"""RE2's memory budget for one pattern: a program much past MAX_PATTERN_PROGRAM (about 270,000 instructions) fails to
compile within a few milliseconds instead of being built in full, and the DFA's cache of states stays small."""
_KEPT_PROGRAM_MEMORY = _COMPILE_MEMORY // 2
"""What one kept program is counted to hold (its DFAs' caches of states grow to about this)."""
COMPILE_INSTRUCTIONS_PER_STEP = 16
"""Instructions compiled within an evaluation charged as one step (about 1 µs an instruction for Unicode classes)."""
MIN_COMPILE_STEPS = 3
"""The least a compile within an evaluation is charged, however small its program: looking a pattern up, compiling
it and pinning it takes about 15 µs."""
MAX_PINNED_PROGRAMS = 2_048
"""Distinct patterns one budget (and those opened inside it) may hold compiled, eight schemas of MAX_SCHEMA_PATTERNS:
350 schemas of 256 under one definition's budget pinned 89,600 programs (160 MB, 3 s)."""
PINNED_BYTES_PER_INSTRUCTION = 16
PINNED_PROGRAM_OVERHEAD = 2_048
"""Bytes a pinned program is estimated to hold beyond PINNED_BYTES_PER_INSTRUCTION for each instruction."""
MAX_PINNED_MEMORY = 32 << 20
"""Estimated bytes one budget's pinned programs may hold in all (five schemas at MAX_SCHEMA_PROGRAM), their
instructions and the DFA states their searches may cache (`_hold_states`): about 128 small programs that each
searched 4 KB or more."""
MAX_SCHEMA_PATTERNS = 256
"""Distinct regexes one schema may hold: all of them stay compiled in the cache above during an evaluation."""
MAX_EVALUATION_STEPS = 100_000
"""Keyword applications one evaluation may make, beyond STEPS_PER_INSTANCE_NODE for each value of the instance (in all
at most MAX_TOTAL_STEPS)."""
STEPS_PER_INSTANCE_NODE = 10
"""Steps each value of the instance adds to its budget (up to MAX_TOTAL_STEPS): a row of four patterned fields
spends about 45 of them over its five values."""
MAX_TOTAL_STEPS = 400_000
"""Steps one evaluation may spend in all, whatever its instance's size: about 2 s at the 5 µs a step measured here
for keyword work and the worst regex work. Growing without it, a 1 MB array of 499,000 numbers under `anyOf` and
`not` took 14 s and was accepted."""


STEPS_PER_ENCODED_CHARACTERS = 16
"""Characters of a canonical encoding charged as one step, on top of one step per value encoded: a long string is
one value, and its encoding still costs its length."""
_CACHED_TEXT_LENGTH = 64
"""Encodings at least this long are kept while the budget lasts; shorter ones cost less to make again than to keep.
Searches of a text this long are kept likewise."""
REGEX_WORK_PER_STEP = 512
"""UTF-8 bytes searched times compiled-program instructions charged as one step. RE2 runs in time linear in the text,
but per byte it may step every instruction a byte can reach when its DFA cannot cache the states (`[ab]*a[ab]{300}c`,
`(?s)(?:.?){990}c` on emoji): measured at most about 19 ns a unit, 10 µs per step so charged, against about 10 µs for
a keyword application. One step per search, whatever its length, let one pattern repeated 1,000 times hold a worker
for 30 s; counted in code points, a four-byte emoji cost four times its charge."""
MAX_REGEX_STEPS = 300_000
"""Steps of regex work one budget may spend in all, however large the instance (its budget grows with its size, and
a 1 MB instance under 50 costly patterns ran for 43 s): about 1.5 s of the worst searching measured here (10 ns a
unit, 5 µs a step, on `(?s)(?:.?){990}c` over emoji), and room for 7,000 rows of four ordinary patterns (1 MB)."""
MIN_REGEX_WEIGHT = REGEX_WORK_PER_STEP // STEPS_PER_ENCODED_CHARACTERS
"""The least program size charged: a search costs at least a step per STEPS_PER_ENCODED_CHARACTERS bytes."""
MAX_REGEX_WEIGHT = 16 * REGEX_WORK_PER_STEP
"""The largest weight charged, so a search costs at most 16 steps a byte."""
SEARCH_OVERHEAD_CHARACTERS = 2
"""What a search costs beyond its subject's bytes, counted as bytes of the smallest program (an eighth of a step,
whatever the pattern: a search of 8 bytes takes about 1-4 µs however large the program, and charged 16 bytes times
its weight a name of 8 letters cost 22 steps): matching 17,000 short keys against 256 patterns (8.7 million
searches, each charged nothing) took 19.5 s. A whole step each refused 3,150 rows of four patterns (447 KB)."""
SEARCH_OVERHEAD_WORK = SEARCH_OVERHEAD_CHARACTERS * MIN_REGEX_WEIGHT
REMEMBERED_SEARCH_WORK = REGEX_WORK_PER_STEP
"""The work charged for a search answered from what the budget remembers (a whole step: 630,000 lookups took 1 s):
nested `unevaluatedProperties` asked the same 23,000 remembered questions 256 times over (34 s)."""
KEYS_PER_STEP = 16
"""A subschema's keys charged as one step each time the evaluation descends into it: the validator walks every key,
known keyword or not, and 19,000 unknown keys under a referenced subschema held a worker for 10 s uncharged. Keys of
an instance a keyword scans (`additionalProperties`, `unevaluated*` bookkeeping) are charged at the same rate."""
QUOTED_KEYS = 8
"""Unexpected keys a message names (the least in order), with a count of the rest: sorting and quoting every one of
60,000 extra keys, uncharged, at each application took seconds."""
MAX_BRANCH_ERRORS = 200
"""Failing branches of one `anyOf`/`oneOf` whose first error its violation keeps (a branch's others are not made)."""
MAX_REF_LENGTH = 1_024
"""Characters a `$ref` may hold (refused when the schema is saved, and when a stored one is evaluated): the resolver
decodes and walks the whole of it at each application, and a 150,000-character percent-encoded one applied 2,048
times, under an empty input, took 15 s."""
REF_CHARACTERS_PER_STEP = 32
"""Characters of a `$ref` charged as one step each time it is applied (`_charge_reference`), past
UNCHARGED_REF_CHARACTERS, on top of its segments' charge and the application's own: decoding is per character
(about 0.05 µs each, percent-encoded), walking per segment. At 4 characters a step, an honest
`#/$defs/SomeFairlyLongTypeName/properties/fieldN` cost 8 steps where its lookup takes about as long as one, and
rows of ten such fields were refused at 3,300 (688 KB)."""
UNCHARGED_REF_CHARACTERS = 16
"""Characters of a `$ref` its application's own step covers (`#/$defs/address`)."""
UNCHARGED_REF_SEGMENTS = 3
"""Pointer segments (`/`-separated parts) of a `$ref` its application's own step covers; each one past them costs a
step: the resolver walks the pointer a segment at a time and re-reads those it has walked through `not`s, about 1.5
µs a segment at 30 of them and 3.3 µs at 253 (841 µs a lookup)."""


class EvaluationBudget:
    """The state of one budget of keyword applications: the steps left, the canonical encodings made within it, and
    what its evaluations remember. A budget opened inside another (`enclosing`) may spend no more than that one has
    left, gives back what it spent when it closes, and shares its caches: the enclosing budget is the one that
    counts. Within a budget the values evaluated must not change, since encodings are remembered by identity."""

    __slots__ = (
        "enclosing",
        "enums",
        "limit",
        "pinned_memory",
        "programs",
        "regex_limit",
        "regex_steps",
        "regex_work",
        "results",
        "steps",
        "texts",
        "uniques",
    )

    def __init__(self, steps: int, enclosing: EvaluationBudget | None = None) -> None:
        self.enclosing = enclosing
        self.steps: int = steps if enclosing is None else min(steps, max(enclosing.steps, 0))
        self.limit: int = self.steps
        # Regex work (bytes times weight) not yet charged as a whole step: carried, so short searches add up.
        self.regex_work = 0
        # Regex work is drawn from a fixed allowance too, not only from the steps, which grow with the instance.
        enclosing_regex = MAX_REGEX_STEPS if enclosing is None else max(enclosing.regex_steps, 0)
        self.regex_steps: int = min(MAX_REGEX_STEPS, enclosing_regex)
        self.regex_limit: int = self.regex_steps
        # The programs the budget's evaluations use, each charged once: a cache eviction meanwhile changes nothing.
        self.programs: dict[str, _Pinned] = {} if enclosing is None else enclosing.programs
        # Their estimated memory, counted on the outermost budget, which holds them.
        self.pinned_memory = 0
        # Each cache keeps the value it is keyed by (its id) alive, so the id is not reused while the budget lasts.
        self.texts: dict[int, tuple[Any, str]] = {} if enclosing is None else enclosing.texts
        self.enums: dict[int, tuple[Any, frozenset[str]]] = {} if enclosing is None else enclosing.enums
        self.uniques: dict[int, tuple[Any, bool]] = {} if enclosing is None else enclosing.uniques
        # What callers remember within the budget: an evaluation's outcome, a schema's checked references.
        self.results: dict[Any, Any] = {} if enclosing is None else enclosing.results

    @property
    def spent(self) -> int:
        """The steps spent so far (one more than the limit once exceeded)."""
        return self.limit - self.steps

    def charge(self, steps: int) -> None:
        """Spend `steps`; past the limit raise EvaluationBudgetExceeded, naming the budget that ran out."""
        self.steps -= steps
        if self.steps < 0:
            exhausted = self
            # A budget given all its enclosing one had left ran out with it: that one's owner answers for it.
            while exhausted.enclosing is not None and exhausted.limit >= exhausted.enclosing.steps:
                exhausted = exhausted.enclosing
            raise EvaluationBudgetExceeded(exhausted)

    def charge_regex_work(self, work: int) -> None:
        """Spend `work` (bytes times program weight): whole REGEX_WORK_PER_STEP as steps, the rest carried; past the
        regex allowance (MAX_REGEX_STEPS) raise EvaluationBudgetExceeded as past the steps."""
        steps, self.regex_work = divmod(self.regex_work + work, REGEX_WORK_PER_STEP)
        self.regex_steps -= steps
        if self.regex_steps < 0:
            exhausted = self
            while exhausted.enclosing is not None and exhausted.regex_limit >= exhausted.enclosing.regex_steps:
                exhausted = exhausted.enclosing
            raise EvaluationBudgetExceeded(exhausted)
        self.charge(steps)


STEPS_EXCEEDED = "evaluating it takes more steps than allowed"
MEMORY_EXCEEDED = "evaluating it holds more compiled patterns, or more of their memory, than allowed"


class EvaluationBudgetExceeded(Exception):
    """An evaluation of a tenant's schema made more keyword applications than its budget (`budget`) allows, or
    pinned more programs or memory (`reason` says which)."""

    def __init__(self, budget: EvaluationBudget, reason: str = STEPS_EXCEEDED) -> None:
        super().__init__(reason)
        self.budget = budget


_EVALUATION: ContextVar[EvaluationBudget | None] = ContextVar("tenant_schema_evaluation", default=None)


def instance_size(instance: Any) -> int:
    """The number of values in a JSON instance (objects and arrays count with their members)."""
    count, stack = 0, [instance]
    while stack:  # iterative: an instance may be deep
        node = stack.pop()
        count += 1
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return count


@contextmanager
def evaluation_budget(steps: int) -> Iterator[EvaluationBudget]:
    """Within this block TenantSchemaValidator's keyword applications count against `steps` (in this thread or task
    only); one more raises EvaluationBudgetExceeded. Inside another such block, the steps are drawn from that one
    too (at most what it has left). Outside any such block nothing is counted."""
    enclosing = _EVALUATION.get()
    budget = EvaluationBudget(steps, enclosing)
    token = _EVALUATION.set(budget)
    try:
        yield budget
    finally:
        _EVALUATION.reset(token)
        if enclosing is not None:
            enclosing.steps -= budget.spent
            enclosing.regex_steps -= budget.regex_limit - budget.regex_steps


def current_budget() -> EvaluationBudget | None:
    """The innermost budget open in this thread or task, if any."""
    return _EVALUATION.get()


def _step() -> None:
    evaluation = _EVALUATION.get()
    if evaluation is not None:
        evaluation.charge(1)


def _charge_reference(ref: Any) -> None:
    """Charge a lookup of `ref` to the open budget, before it is made: a step per segment past
    UNCHARGED_REF_SEGMENTS and per REF_CHARACTERS_PER_STEP of its characters past UNCHARGED_REF_CHARACTERS (the
    resolver decodes the whole pointer and walks it segment by segment each time)."""
    evaluation = _EVALUATION.get()
    if evaluation is not None and isinstance(ref, str):
        # Counted as the resolver splits it, once decoded: an encoded `%2F` is a segment it walks like any other.
        segments = max(unquote(ref).count("/") - UNCHARGED_REF_SEGMENTS, 0)
        evaluation.charge(segments + max(len(ref) - UNCHARGED_REF_CHARACTERS, 0) // REF_CHARACTERS_PER_STEP)


def _named(names: dict[str, Any], instance: dict[str, Any]) -> list[str]:
    """The names of `names` (a keyword's map of property names) that `instance` holds, in the schema's order, found
    by walking the smaller of the two and charged for it (a step per KEYS_PER_STEP): the library walked every name
    at each application, one step whatever their number, and 1,995 names over 340,000 empty rows took 14 s."""
    _scanned(min(len(names), len(instance)))
    if len(names) <= len(instance):
        return [name for name in names if name in instance]
    found = [key for key in instance if key in names]
    if len(found) < 2:
        return found
    return sorted(found, key=_positions(names).__getitem__)


def _positions(names: dict[str, Any]) -> dict[str, int]:
    """Each name's place in `names`, made once per budget (and charged then): what orders a few found names."""
    evaluation = _EVALUATION.get()
    key = ("positions", id(names))
    cached = evaluation.results.get(key) if evaluation is not None else None
    if cached is not None and cached[0] is names:
        return cached[1]  # type: ignore[no-any-return]
    _scanned(len(names))
    positions = {name: index for index, name in enumerate(names)}
    if evaluation is not None:
        evaluation.results[key] = (names, positions)  # the map is kept with it, so its id is not reused
    return positions


def _scanned(count: int) -> None:
    """Charge a scan of `count` keys or items (a step per KEYS_PER_STEP) to the open budget, before it is made."""
    evaluation = _EVALUATION.get()
    if evaluation is not None:
        evaluation.charge(count // KEYS_PER_STEP)


def _text(value: Any) -> str:
    """`canonical_text(value)`, encoded once per budget and charged for its size: a schema applying `enum` or `const`
    to the same large value many times (under `allOf`, `not`) would otherwise encode it each time for one step."""
    evaluation = _EVALUATION.get()
    if evaluation is None:
        return canonical_text(value)
    cached = evaluation.texts.get(id(value))
    if cached is not None and cached[0] is value:
        return cached[1]
    evaluation.charge(instance_size(value))  # before the work, so a value too large for what is left is not encoded
    text = canonical_text(value)
    evaluation.charge(len(text) // STEPS_PER_ENCODED_CHARACTERS)
    if len(text) >= _CACHED_TEXT_LENGTH:
        evaluation.texts[id(value)] = (value, text)
    return text


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 80
_SHORT.maxlist = _SHORT.maxdict = _SHORT.maxtuple = 8
_SHORT.maxlevel = 3


def short_repr(value: Any) -> str:
    """`repr(value)`, abbreviated at bounded cost: schema values (`const`, `enum`) are repeated in each message."""
    return _SHORT.repr(value)


def _options(latin1: bool = False, memory: int = _COMPILE_MEMORY) -> Any:
    """RE2 options for tenant patterns: quiet, within `memory`, for UTF-8 text or (`latin1`) Latin-1."""
    options = re2.Options()
    options.log_errors = False  # a refused pattern is reported to the tenant, not to the process's stderr
    options.max_mem = memory
    if latin1:
        options.encoding = re2.Options.Encoding.LATIN1
    return options


_OPTIONS = _options()
_LATIN1_OPTIONS = _options(latin1=True)
_MEMORY_TIERS = (256 << 10, 1 << 20, _COMPILE_MEMORY)
"""The memory RE2 may use for one tenant program (its instructions and the DFAs' caches of states), the least in
which the pattern compiles: about 10,000, 45,000 and 270,000 instructions. At 4 MiB each of 250 small programs
searching 16 KB of text filled about 680 KB of states (169 MB in one start); at 256 KiB, about 100 KB."""
_TIERED_OPTIONS = tuple((memory, _options(memory=memory)) for memory in _MEMORY_TIERS)
DFA_BYTES_PER_BYTE = 64
"""Bytes of DFA states a program is estimated to cache for each byte it searches, up to its memory tier (about 42
were measured for small programs on text the DFA cannot settle on)."""


@dataclass(frozen=True)
class _Program:
    """What compiling a pattern gave: the compiled regex and the weight its searches are charged, or why not."""

    regexp: Any
    reason: str | None
    size: int
    weight: int
    memory: int = 0
    """The memory RE2 may use for it (`_MEMORY_TIERS`): its instructions and the states its DFAs cache."""


DFA_BYTES_PER_INSTRUCTION = 128
"""Memory a program's DFAs are given for each instruction of the larger of its forward and reverse programs,
SEARCH_MEMORY_FACTOR times over, so that they cache enough states not to give up for the slower NFA: measured,
the least memory that kept a search fast was 110-650 bytes an instruction (`\\p{L}+$`, 1,583 reverse instructions,
needed 768 KiB; at 256 KiB it searched Greek 8 times slower, `\\p{L}{10}@` 96 times)."""
SEARCH_MEMORY_FACTOR = 4
SEARCH_MEMORY_OVERHEAD = 64 << 10
"""What a program's search needs beyond DFA_BYTES_PER_INSTRUCTION times its instructions."""


def _search_memory(regexp: Any) -> int:
    """The memory `regexp` should compile within for its DFAs to search at their speed."""
    instructions = max(int(regexp.programsize), int(regexp.reverseprogramsize))
    return SEARCH_MEMORY_FACTOR * DFA_BYTES_PER_INSTRUCTION * instructions + SEARCH_MEMORY_OVERHEAD


def _compiled_in_tier(pattern: str) -> tuple[Any, int]:
    """`pattern` compiled within the least of _MEMORY_TIERS it fits with room for its DFAs (`_search_memory`), and
    that tier; re2.error past the largest."""
    for index, (memory, options) in enumerate(_TIERED_OPTIONS[:-1]):
        try:
            regexp = re2.compile(pattern, options)
        except re2.error as exc:
            if b"too large" not in (exc.args[0] if exc.args and isinstance(exc.args[0], bytes) else b"too large"):
                raise  # not a matter of memory: the largest tier would refuse it too
            continue
        wanted = _search_memory(regexp)
        if wanted <= memory:
            return regexp, memory
        # Compiled again in the least tier with room for its DFAs (a compile of a few hundred µs, made once).
        larger = next((tier for tier in _TIERED_OPTIONS[index + 1 :] if tier[0] >= wanted), _TIERED_OPTIONS[-1])
        return re2.compile(pattern, larger[1]), larger[0]
    return re2.compile(pattern, _OPTIONS), _COMPILE_MEMORY


def _latin1_size(pattern: str) -> int | None:
    """The size of `pattern` compiled for Latin-1 text, or None when Latin-1 cannot express it."""
    try:
        return int(re2.compile(pattern.encode("latin-1"), _LATIN1_OPTIONS).programsize)
    except (UnicodeEncodeError, re2.error):
        return None


_ANY = "(?s:.)"
"""What a class or escape is widened to when weighing (`_widened`): one Latin-1 instruction matching any byte."""


def _class_end(pattern: str, start: int) -> int:
    """The index just past the bracket class opening at `start` (the pattern's end when it is unclosed)."""
    index = start + 1
    if pattern.startswith("^", index):
        index += 1
    if pattern.startswith("]", index):  # a `]` first is a member
        index += 1
    while index < len(pattern) and pattern[index] != "]":
        if pattern[index] == "\\":
            index += 2
        elif pattern.startswith("[:", index) and (end := pattern.find(":]", index + 2)) >= 0:
            index = end + 2
        else:
            index += 1
    return min(index + 1, len(pattern))


def _escape_end(pattern: str, start: int) -> int:
    """The index just past the escape at `start` (`\\p{Greek}`, `\\pL`, `\\d`...)."""
    if pattern[start + 1 : start + 2] in ("p", "P"):
        if pattern.startswith("{", start + 2):
            end = pattern.find("}", start + 3)
            return len(pattern) if end < 0 else end + 1
        return min(start + 3, len(pattern))
    if pattern.startswith("Q", start + 1):  # quoted to `\E`: nothing inside is a class
        end = pattern.find("\\E", start + 2)
        return len(pattern) if end < 0 else end + 2
    return min(start + 2, len(pattern))


def _widened(pattern: str) -> str:
    """`pattern` with each bracket class and Unicode class (`\\p{Han}`) widened to any byte: a class with no
    Latin-1 member is dropped from the Latin-1 program, which RE2 runs in full on UTF-8 text (`(?:\\p{Han}?){900}c`
    weighed the least, 32, and took 13.5 µs a byte on ASCII)."""
    parts: list[str] = []
    index = 0
    while index < len(pattern):
        if pattern[index] == "\\":
            end = _escape_end(pattern, index)
            parts.append(_ANY if pattern[index + 1 : index + 2] in ("p", "P") else pattern[index:end])
        elif pattern[index] == "[":
            end = _class_end(pattern, index)
            parts.append(_ANY)
        else:
            end = index + 1
            parts.append(pattern[index])
        index = end
    return "".join(parts)


def _weight(pattern: str, size: int) -> int:
    """What a search of `pattern` (`size` instructions for UTF-8) is charged per byte, before the bounds: the larger
    of its Latin-1 program and that of its widened form (`_widened`), or its UTF-8 size when Latin-1 cannot express
    it (a character past Latin-1)."""
    latin1 = _latin1_size(pattern) if size > MIN_REGEX_WEIGHT else None
    if latin1 is None:
        return size
    widened = _latin1_size(_widened(pattern))
    return size if widened is None else max(latin1, widened)


def _program(pattern: str) -> _Program:
    """`pattern` compiled (uncached), refused past MAX_PATTERN_LENGTH characters or MAX_PATTERN_PROGRAM instructions."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        return _Program(None, f"longer than {MAX_PATTERN_LENGTH} characters", 0, 0)
    try:
        regexp, memory = _compiled_in_tier(pattern)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else "unsupported"
        text = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
        if "too large" in text:
            text = f"it compiles to more than {MAX_PATTERN_PROGRAM:,} instructions"
        return _Program(None, text, MAX_PATTERN_PROGRAM, 0)
    size = int(regexp.programsize)
    if size > MAX_PATTERN_PROGRAM:
        # Not kept: the cache would hold it for the process's life.
        return _Program(
            None, f"it compiles to {size:,} instructions; at most {MAX_PATTERN_PROGRAM:,} are allowed", size, 0
        )
    # A Unicode class's UTF-8 program spells out every byte sequence (`\\p{L}`: 1,199 instructions) of which a byte
    # steps a few; its Latin-1 program (`^[\\p{L} '-]{1,64}$`: 705 against 76,801) follows the cost per byte searched,
    # once a class with no Latin-1 member is widened so that it still counts (`_widened`).
    weight = min(max(_weight(pattern, size), MIN_REGEX_WEIGHT), MAX_REGEX_WEIGHT)
    return _Program(regexp, None, size, weight, memory)


class _CompiledPatterns:
    """The compiled patterns kept between evaluations, least recently used dropped first: at most
    _PATTERN_CACHE_SIZE of them, _PATTERN_CACHE_PROGRAM instructions and _PATTERN_CACHE_MEMORY in all. Nothing here
    is charged: an evaluation charges each pattern it uses once, whether kept here or not (`_pinned`)."""

    def __init__(self) -> None:
        self._kept: OrderedDict[str, _Program] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def program(self, pattern: str) -> _Program:
        """`pattern`'s program, compiled once while kept."""
        with self._lock:
            kept = self._kept.get(pattern)
            if kept is not None:
                self._kept.move_to_end(pattern)
                return kept
        made = _program(pattern)
        re2.purge()  # the module's own cache would keep a refused or dropped program alive: this one is the only one
        with self._lock:
            if pattern not in self._kept:
                self._kept[pattern] = made
                self._size += made.size if made.regexp is not None else 0
            while self._over_bound():
                _, dropped = self._kept.popitem(last=False)
                self._size -= dropped.size if dropped.regexp is not None else 0
        return made

    def _over_bound(self) -> bool:
        """Whether the kept programs exceed a bound (their count, instructions or estimated memory): under the lock."""
        memory = len(self._kept) * _KEPT_PROGRAM_MEMORY
        return (
            len(self._kept) > _PATTERN_CACHE_SIZE
            or self._size > _PATTERN_CACHE_PROGRAM
            or memory > _PATTERN_CACHE_MEMORY
        )

    def __call__(self, pattern: str) -> tuple[Any, str | None]:
        """The compiled pattern, or None and why RE2 cannot run it."""
        made = self.program(pattern)
        return made.regexp, made.reason

    def cache_clear(self) -> None:
        """Forget every compiled pattern."""
        with self._lock:
            self._kept.clear()
            self._size = 0


_PROGRAMS = _CompiledPatterns()
_compiled = _PROGRAMS


def pattern_problem(pattern: str) -> str | None:
    """Why `pattern` cannot be enforced (e.g. a backreference or lookaround), or None when it can."""
    return _compiled(pattern)[1]


def matches(pattern: str, text: str) -> bool:
    """Whether `pattern` matches anywhere in `text` (JSON Schema regexes are unanchored); an unenforceable
    pattern matches nothing, so a schema stored before this rule refuses rather than waves through."""
    regexp = _compiled(pattern)[0]
    return regexp is not None and regexp.search(text) is not None


@dataclass(frozen=True)
class _Pinned:
    """A pattern as an evaluation uses it: the compiled regex (None when RE2 cannot run it), why not, and the weight
    its searches are charged."""

    regexp: Any
    reason: str | None
    weight: int
    states: int = 0
    """What the DFAs' caches of states may hold beyond its instructions as counted (`_hold`): its memory tier's
    rest."""


def _pinned(pattern: str) -> _Pinned:
    """`pattern` as the open budget uses it: looked up once per budget, its compile (1 + size /
    COMPILE_INSTRUCTIONS_PER_STEP steps, at least MIN_COMPILE_STEPS) charged then whether the process had it compiled
    or not, and held by the budget, so the same evaluation spends the same steps warm or cold, and another
    evaluation's patterns evicting it from the cache meanwhile neither recompiles nor charges it again; past
    MAX_PINNED_PROGRAMS or MAX_PINNED_MEMORY the budget is refused (`_hold`, and `_hold_states` as it searches).
    The weight is its Latin-1 compile's size (see `_program`) held between MIN_REGEX_WEIGHT and MAX_REGEX_WEIGHT."""
    evaluation = _EVALUATION.get()
    pinned = evaluation.programs.get(pattern) if evaluation is not None else None
    if pinned is not None:
        return pinned
    made = _PROGRAMS.program(pattern)
    regexp, reason = _compiled(pattern)
    held = _held(made.size) if regexp is not None else 0
    pinned = _Pinned(regexp, reason, made.weight if regexp is not None else 0, max(made.memory - held, 0))
    if evaluation is not None:
        evaluation.charge(max(MIN_COMPILE_STEPS, 1 + made.size // COMPILE_INSTRUCTIONS_PER_STEP))
        _hold(evaluation, made.size if regexp is not None else 0)
        evaluation.programs[pattern] = pinned
    return pinned


def _held(size: int) -> int:
    """The memory a program of `size` instructions is counted to hold before it searches."""
    return size * PINNED_BYTES_PER_INSTRUCTION + PINNED_PROGRAM_OVERHEAD


def _outermost(evaluation: EvaluationBudget) -> EvaluationBudget:
    """The budget `evaluation` is drawn from in the end: it holds the pinned programs."""
    while evaluation.enclosing is not None:
        evaluation = evaluation.enclosing
    return evaluation


def _hold(evaluation: EvaluationBudget, size: int) -> None:
    """Count one more pinned program of `size` instructions on the outermost budget; past MAX_PINNED_PROGRAMS or
    MAX_PINNED_MEMORY raise EvaluationBudgetExceeded for it, which holds them all."""
    holder = _outermost(evaluation)
    holder.pinned_memory += _held(size)
    if len(holder.programs) >= MAX_PINNED_PROGRAMS or holder.pinned_memory > MAX_PINNED_MEMORY:
        raise EvaluationBudgetExceeded(holder, MEMORY_EXCEEDED)


def _hold_states(evaluation: EvaluationBudget, pattern: str, size: int) -> None:
    """Count the DFA states a search of `size` bytes by the pinned `pattern` may cache (DFA_BYTES_PER_BYTE each,
    up to its memory tier's rest) on the outermost budget; past MAX_PINNED_MEMORY raise EvaluationBudgetExceeded for
    it. Counted before the search, so one the memory cannot hold is not made: 250 small programs, each searching
    16 KB, held 130 MB counted as 0.5 MB."""
    pinned = evaluation.programs.get(pattern)
    if pinned is None:
        return
    holder = _outermost(evaluation)
    key = ("states", pattern)
    held = holder.results.get(key, 0)
    more = min(pinned.states - held, size * DFA_BYTES_PER_BYTE)
    if more <= 0:
        return
    holder.results[key] = held + more
    holder.pinned_memory += more
    if holder.pinned_memory > MAX_PINNED_MEMORY:
        raise EvaluationBudgetExceeded(holder, MEMORY_EXCEEDED)


def _utf8_size(text: str) -> int:
    """The length of `text` in UTF-8 bytes, what RE2 steps through (a lone surrogate counted as three)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _searched(pattern: str, regexp: Any, weight: int, text: str) -> bool:
    """Whether the compiled `pattern` (`regexp`) matches anywhere in `text`, charged to the open budget before the
    work (so a search too long for what is left is not made): its UTF-8 size times `weight`, plus
    SEARCH_OVERHEAD_WORK. A long text's outcome is kept while the budget lasts, so the same pattern applied to it
    again (under `allOf`, through `$ref`) is charged REMEMBERED_SEARCH_WORK only."""
    evaluation = _EVALUATION.get()
    if evaluation is None:
        return regexp.search(text) is not None
    kept = len(text) >= _CACHED_TEXT_LENGTH
    key = ("search", pattern, text)  # holds the strings themselves: no identity to outlive
    if kept and key in evaluation.results:
        evaluation.charge_regex_work(REMEMBERED_SEARCH_WORK)
        return bool(evaluation.results[key])
    size = _utf8_size(text)
    evaluation.charge_regex_work(size * weight + SEARCH_OVERHEAD_WORK)
    _hold_states(evaluation, pattern, size)
    found = regexp.search(text) is not None
    if kept:
        evaluation.results[key] = found
    return found


def _charged_matches(pattern: str, text: str) -> bool:
    """`matches(pattern, text)`, charged to the open budget (`_searched`)."""
    pinned = _pinned(pattern)
    return pinned.regexp is not None and _searched(pattern, pinned.regexp, pinned.weight, text)


def _charged_any_matches(patterns: Iterable[str]) -> Callable[[str], bool]:
    """`any_matches(patterns)`, each search charged to the open budget (`_searched`)."""
    pinned = [(pattern, _pinned(pattern)) for pattern in patterns]
    compiled = [(pattern, each.regexp, each.weight) for pattern, each in pinned if each.regexp is not None]
    return lambda text: any(_searched(pattern, regexp, weight, text) for pattern, regexp, weight in compiled)


def any_matches(patterns: Iterable[str]) -> Callable[[str], bool]:
    """Whether a text matches one of `patterns`, each compiled once here rather than once per text."""
    compiled = [regexp for regexp, _ in map(_compiled, patterns) if regexp is not None]
    return lambda text: any(regexp.search(text) is not None for regexp in compiled)


def _schema_patterns(schema: Any) -> Iterator[tuple[JsonPath, str]]:
    """Every `pattern` and `patternProperties` regex in `schema`, with its location."""
    stack: list[tuple[JsonPath, Any]] = [((), schema)]
    while stack:  # iterative: a tenant's schema may be deep
        path, node = stack.pop()
        if isinstance(node, list):
            stack.extend(((*path, index), item) for index, item in enumerate(node))
            continue
        if not isinstance(node, dict):
            continue
        for key, value in node.items():
            if key == "pattern" and isinstance(value, str):
                yield (*path, key), value
            elif key == "patternProperties" and isinstance(value, dict):
                yield from (((*path, key, regex), regex) for regex in value)
            if key not in _DATA_KEYWORDS:
                stack.append(((*path, key), value))


def pattern_problems(schema: Any) -> list[tuple[JsonPath, str]]:
    """Every `pattern` and `patternProperties` regex in `schema` that RE2 cannot run (or that compiles to more than
    MAX_PATTERN_PROGRAM instructions), with its location; more than MAX_SCHEMA_PATTERNS distinct regexes, or more than
    MAX_SCHEMA_PROGRAM instructions in all (they would not all stay compiled during an evaluation). Past that total
    nothing more is compiled."""
    problems: list[tuple[JsonPath, str]] = []
    reasons: dict[str, str | None] = {}
    total = 0
    for path, pattern in _schema_patterns(schema):
        if pattern not in reasons:
            reasons[pattern] = None
            if total <= MAX_SCHEMA_PROGRAM and len(reasons) <= MAX_SCHEMA_PATTERNS:  # else refused: compile no more
                made = _PROGRAMS.program(pattern)
                total += made.size
                reasons[pattern] = made.reason
        reason = reasons[pattern]
        if reason is not None:
            problems.append((path, f"the pattern {pattern!r} cannot be used: {reason}"))
    distinct = reasons
    if len(distinct) > MAX_SCHEMA_PATTERNS:
        problems.append(
            ((), f"the schema holds {len(distinct)} distinct regexes; at most {MAX_SCHEMA_PATTERNS} are allowed")
        )
    if total > MAX_SCHEMA_PROGRAM:
        problems.append(
            (
                (),
                f"the schema's regexes compile to more than {MAX_SCHEMA_PROGRAM:,} instructions in all"
                " (a Unicode class such as \\p{L} is about 1,300, and a repetition {n} copies it n times)",
            )
        )
    return sorted(problems, key=lambda problem: [str(part) for part in problem[0]])


# The keyword functions below are jsonschema's own, with RE2 in place of `re`. `additionalProperties` and
# `unevaluatedProperties` are among them because the library matches `patternProperties` inside them too.
def _pattern(validator: Any, pattern: Any, instance: Any, _schema: Any) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "string") or not isinstance(pattern, str):
        return
    pinned = _pinned(pattern)  # one lookup per application
    if pinned.regexp is None:
        yield ValidationError(f"the pattern {pattern!r} cannot be evaluated")
    elif not _searched(pattern, pinned.regexp, pinned.weight, instance):
        yield ValidationError(f"{short_repr(instance)} does not match {pattern!r}")


def _pattern_properties(validator: Any, patterns: Any, instance: Any, _schema: Any) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        pinned = _pinned(pattern)  # one lookup per application
        if pinned.regexp is None:
            yield ValidationError(f"the pattern {pattern!r} cannot be evaluated")
            continue
        for key, value in instance.items():
            if _searched(pattern, pinned.regexp, pinned.weight, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


class UnexpectedProperties(ValidationError):
    """An `additionalProperties: false` violation that carries the keys it found unexpected (`keys`, in the
    instance's order), so a report need not match them against the patterns again."""

    def __init__(self, message: str, keys: list[str]) -> None:
        super().__init__(message)
        self.keys = tuple(keys)


def _additional(instance: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """The keys of `instance` neither `properties` nor `patternProperties` names, the scan charged."""
    properties = schema.get("properties", {})
    matched = _charged_any_matches(schema.get("patternProperties", {}))
    _scanned(len(instance))
    return [key for key in instance if key not in properties and not matched(key)]


def _quoted_keys(keys: list[str]) -> tuple[str, str]:
    """The least QUOTED_KEYS of `keys` quoted and joined (with a count of the rest), and the verb's number: no sort
    of them all."""
    shown = ", ".join(repr(key) for key in heapq.nsmallest(QUOTED_KEYS, keys))
    if len(keys) > QUOTED_KEYS:
        shown += f" and {len(keys) - QUOTED_KEYS:,} more"
    return shown, "singular" if len(keys) == 1 else "plural"


def _additional_properties(
    validator: Any, additional: Any, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    extras = _additional(instance, schema)
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        joined, number = _quoted_keys(extras)
        if "patternProperties" in schema:
            patterns = short_repr(heapq.nsmallest(QUOTED_KEYS + 1, schema["patternProperties"]))[1:-1]
            verb = "does" if number == "singular" else "do"
            yield UnexpectedProperties(f"{joined} {verb} not match any of the regexes: {patterns}", extras)
        else:
            verb = "was" if number == "singular" else "were"
            yield UnexpectedProperties(f"Additional properties are not allowed ({joined} {verb} unexpected)", extras)


def _valid(errors: Iterable[ValidationError]) -> bool:
    return next(iter(errors), None) is None


def _valid_under(validator: Any, instance: Any, subschema: Any) -> bool:
    """Whether `instance` is valid under `subschema`; a boolean one is answered without an error that would quote
    the whole instance (work repeated at every evaluation of an `unevaluated*` bookkeeping)."""
    if isinstance(subschema, bool):
        return subschema
    return _valid(validator.descend(instance, subschema))


_Found = TypeVar("_Found", str, int)
_OwnKeywords = Callable[[Any, Any, Any], tuple[set[_Found], bool]]


def _evaluated(validator: Any, instance: Any, schema: Any, own: _OwnKeywords[_Found]) -> set[_Found]:
    """The keys or indexes of `instance` some keyword of `schema` evaluates (what `unevaluatedProperties` or
    `unevaluatedItems` leaves alone), as the library finds them but in a set, each scan and union charged: its list,
    searched once per item, took 12.7 s on 60,000 items under `items`. `own` collects what the keywords of the
    instance's kind evaluate, and says whether that is every key or index (nothing further can add one)."""
    _step()  # each call re-evaluates subschemas: the recursion is what the budget bounds
    if validator.is_type(schema, "boolean"):
        return set()
    found, whole = own(validator, instance, schema)
    if whole:
        return found
    for keyword in ("$ref", "$dynamicRef"):
        if (ref := schema.get(keyword)) is not None:
            _charge_reference(ref)
            resolved = validator._resolver.lookup(ref)
            referred = validator.evolve(schema=resolved.contents, _resolver=resolved.resolver)
            found |= _evaluated(referred, instance, resolved.contents, own)
    if "if" in schema:
        if _valid_under(validator, instance, schema["if"]):
            found |= _evaluated(validator, instance, schema["if"], own)
            if "then" in schema:
                found |= _evaluated(validator, instance, schema["then"], own)
        elif "else" in schema:
            found |= _evaluated(validator, instance, schema["else"], own)
    for keyword in ("allOf", "oneOf", "anyOf"):
        for subschema in schema.get(keyword, []):
            if _valid_under(validator, instance, subschema):
                found |= _evaluated(validator, instance, subschema, own)
    _scanned(len(found))  # what the caller's union costs
    return found


def _own_keys(validator: Any, instance: dict[str, Any], schema: Any) -> tuple[set[str], bool]:
    """The keys the object keywords of `schema` evaluate (for `_evaluated`)."""
    keys: set[str] = set()
    properties = schema.get("properties")
    if validator.is_type(properties, "object"):
        _scanned(min(len(properties), len(instance)))
        keys |= properties.keys() & instance.keys()
    for keyword in ("additionalProperties", "unevaluatedProperties"):
        if (subschema := schema.get(keyword)) is not None:
            _scanned(len(instance))  # a boolean subschema is answered without a descend to charge
            keys |= {key for key, value in instance.items() if _valid_under(validator, value, subschema)}
    for pattern in schema.get("patternProperties", {}):
        keys |= {key for key in instance if _charged_matches(pattern, key)}
    dependent = schema.get("dependentSchemas", {})
    for name in _named(dependent, instance):
        keys |= _evaluated(validator, instance, dependent[name], _own_keys)
    return keys, False


def _unevaluated_properties(
    validator: Any, unevaluated: Any, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    evaluated = _evaluated(validator, instance, schema, _own_keys)
    _scanned(len(instance))
    failing = [
        key for key in instance if key not in evaluated and not _valid_under(validator, instance[key], unevaluated)
    ]
    if failing:
        joined, number = _quoted_keys(failing)
        verb = "was" if number == "singular" else "were"
        if unevaluated is False:
            yield ValidationError(f"Unevaluated properties are not allowed ({joined} {verb} unexpected)")
        else:
            yield ValidationError(
                f"Unevaluated properties are not valid under the given schema ({joined} {verb} unevaluated and invalid)"
            )


def _unique_items(validator: Any, unique: Any, instance: Any, _schema: Any) -> Iterator[ValidationError]:
    if not unique or not validator.is_type(instance, "array"):
        return
    evaluation = _EVALUATION.get()
    cached = evaluation.uniques.get(id(instance)) if evaluation is not None else None
    if cached is not None and cached[0] is instance:
        unique = cached[1]
    else:
        try:
            unique = len({_text(item) for item in instance}) == len(instance)
        except (TypeError, ValueError):  # not JSON (never so for a request body): the pairwise comparison
            unique = bool(uniq(instance))
        if evaluation is not None:
            evaluation.uniques[id(instance)] = (instance, unique)
    if not unique:
        yield ValidationError(f"{short_repr(instance)} has non-unique elements")


def _enum(_validator: Any, enums: Any, instance: Any, _schema: Any) -> Iterator[ValidationError]:
    try:
        evaluation = _EVALUATION.get()
        cached = evaluation.enums.get(id(enums)) if evaluation is not None else None
        if cached is None or cached[0] is not enums:
            cached = (enums, frozenset(map(_text, enums)))
            if evaluation is not None:
                evaluation.enums[id(enums)] = cached  # the enum is kept with it, so its id is not reused
        found = _text(instance) in cached[1]
    except (TypeError, ValueError):
        found = any(equal(each, instance) for each in enums)
    if not found:
        yield ValidationError(f"{short_repr(instance)} is not one of {short_repr(enums)}")


def _type(validator: Any, types: Any, instance: Any, _schema: Any) -> Iterator[ValidationError]:
    kinds = [types] if isinstance(types, str) else types
    if not any(validator.is_type(instance, kind) for kind in kinds):
        yield ValidationError(f"{short_repr(instance)} is not of type {', '.join(repr(kind) for kind in kinds)}")


def _const(_validator: Any, const: Any, instance: Any, _schema: Any) -> Iterator[ValidationError]:
    try:
        same = _text(instance) == _text(const)
    except (TypeError, ValueError):
        same = equal(instance, const)
    if not same:
        yield ValidationError(f"{short_repr(const)} was expected")


# jsonschema's own messages for the keywords below quote the whole instance (`{instance!r}`), built eagerly, with no
# step charged, even where only validity is asked (`not`, `if`, `contains` ask is_valid of their subschema): a 400 KB
# array under 300 `not`s of `maxItems` took 3.8 s and was valid. Here each quotes it in the bounded form.
def _not(validator: Any, not_schema: Any, instance: Any, _schema: Any) -> Iterator[ValidationError]:
    """`not`, its message bounded."""
    if validator.evolve(schema=not_schema).is_valid(instance):
        yield ValidationError(f"{short_repr(instance)} should not be valid under {short_repr(not_schema)}")


def _branch_errors(validator: Any, branches: Any, instance: Any) -> tuple[list[ValidationError], int | None]:
    """The first error of each branch up to the first valid one (of MAX_BRANCH_ERRORS branches at most), and that
    one's index (None when every branch fails). A branch is evaluated to its first error only: every error of every
    branch, 360,000 over 120,000 items under three, took 6 s and 1 GB. A kept error keeps no branches of its own
    (a report reads one level)."""
    errors: list[ValidationError] = []
    for index, subschema in enumerate(branches):
        first = next(islice(validator.descend(instance, subschema, schema_path=index), 1), None)
        if first is None:
            return errors, index
        if len(errors) < MAX_BRANCH_ERRORS:
            first.context.clear()
            errors.append(first)
    return errors, None


def _any_of(validator: Any, any_of: Any, instance: Any, _schema: Any) -> Iterator[ValidationError]:
    """`anyOf`, its message bounded (its failing branches' are, each by its own keyword)."""
    errors, valid = _branch_errors(validator, any_of, instance)
    if valid is None:
        yield ValidationError(f"{short_repr(instance)} is not valid under any of the given schemas", context=errors)


def _one_of(validator: Any, one_of: Any, instance: Any, _schema: Any) -> Iterator[ValidationError]:
    """`oneOf`, its messages bounded."""
    errors, valid = _branch_errors(validator, one_of, instance)
    if valid is None:
        yield ValidationError(f"{short_repr(instance)} is not valid under any of the given schemas", context=errors)
        return
    more = [each for each in one_of[valid + 1 :] if validator.evolve(schema=each).is_valid(instance)]
    if more:
        yield ValidationError(f"{short_repr(instance)} is valid under each of {short_repr([*more, one_of[valid]])}")


def _bound(kind: str, below: bool, message: str) -> Callable[..., Iterator[ValidationError]]:
    """A `min*` (`below`) or `max*` keyword on the length of an instance of JSON type `kind`."""

    def bound(validator: Any, limit: Any, instance: Any, _schema: Any) -> Iterator[ValidationError]:
        """The keyword, its message bounded."""
        if not validator.is_type(instance, kind):
            return
        if below and len(instance) < limit:
            yield ValidationError(f"{short_repr(instance)} {'should be non-empty' if limit == 1 else message}")
        elif not below and len(instance) > limit:
            yield ValidationError(f"{short_repr(instance)} {'is expected to be empty' if limit == 0 else message}")

    return bound


def _contains(validator: Any, contains: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    """`contains` (with `minContains` and `maxContains`), its messages bounded."""
    if not validator.is_type(instance, "array"):
        return
    least, most = schema.get("minContains", 1), schema.get("maxContains", len(instance))
    matching = validator.evolve(schema=contains)
    matched = 0
    for each in instance:
        if matching.is_valid(each):
            matched += 1
            if matched > most:
                yield ValidationError(
                    f"Too many items match the given schema (expected at most {most})",
                    validator="maxContains",
                    validator_value=most,
                )
                return
    if matched < least:
        if not matched:
            yield ValidationError(f"{short_repr(instance)} does not contain items matching the given schema")
        else:
            yield ValidationError(
                f"Too few items match the given schema (expected at least {least} but only {matched} matched)",
                validator="minContains",
                validator_value=least,
            )


def _items(validator: Any, items: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    """`items` (after any `prefixItems`), the message of `items: false` bounded."""
    if not validator.is_type(instance, "array"):
        return
    prefix = len(schema.get("prefixItems", []))
    extra = len(instance) - prefix
    if extra <= 0:
        return
    if items is False:
        # At most one more item than the bounded form shows, so it still ends in "...": no copy of the whole rest.
        rest = instance[prefix] if extra == 1 else instance[prefix : prefix + _SHORT.maxlist + 1]
        quoted = short_repr(rest)
        item = "item" if prefix == 1 else "items"
        yield ValidationError(f"Expected at most {prefix} {item} but found {extra} extra: {quoted}")
        return
    for index in range(prefix, len(instance)):
        yield from validator.descend(instance=instance[index], schema=items, path=index)


def _indexes(count: int) -> set[int]:
    """The indexes 0 to `count`, their making charged."""
    _scanned(count)
    return set(range(count))


def _own_indexes(validator: Any, instance: list[Any], schema: Any) -> tuple[set[int], bool]:
    """The indexes the array keywords of `schema` evaluate (for `_evaluated`): all of them under `items`."""
    if "items" in schema:
        return _indexes(len(instance)), True
    indexes: set[int] = set()
    if validator.is_type(schema.get("prefixItems"), "array"):
        indexes |= _indexes(min(len(schema["prefixItems"]), len(instance)))
    for keyword in ("contains", "unevaluatedItems"):
        if keyword in schema:
            _scanned(len(instance))  # a boolean subschema is answered without a descend to charge
            indexes |= {index for index, item in enumerate(instance) if _valid_under(validator, item, schema[keyword])}
    return indexes, False


def _unevaluated_items(validator: Any, _unevaluated: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    """`unevaluatedItems`, its message quoting the unexpected items in the bounded form."""
    if not validator.is_type(instance, "array"):
        return
    evaluated = _evaluated(validator, instance, schema, _own_indexes)
    _scanned(len(instance))
    extras = [item for index, item in enumerate(instance) if index not in evaluated]
    if extras:
        verb = "was" if len(extras) == 1 else "were"
        quoted = short_repr(extras[: _SHORT.maxlist + 1])[1:-1]  # no copy of them all to quote a few
        yield ValidationError(f"Unevaluated items are not allowed ({quoted} {verb} unexpected)")


_library_ref = Draft202012Validator.VALIDATORS["$ref"]


def _ref(validator: Any, ref: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    """`$ref`, its lookup charged for the reference's length (`_charge_reference`)."""
    _charge_reference(ref)
    return _library_ref(validator, ref, instance, schema)  # type: ignore[no-any-return]


def _properties(validator: Any, properties: Any, instance: Any, _schema: Any) -> Iterator[ValidationError]:
    """`properties`, the names it applies to found as `_named` finds them (in the schema's order, as the library's)."""
    if not validator.is_type(instance, "object"):
        return
    for name in _named(properties, instance):
        yield from validator.descend(instance[name], properties[name], path=name, schema_path=name)


def _dependent_schemas(validator: Any, dependent: Any, instance: Any, _schema: Any) -> Iterator[ValidationError]:
    """`dependentSchemas`, the names it applies to found as `properties`'."""
    if not validator.is_type(instance, "object"):
        return
    for name in _named(dependent, instance):
        yield from validator.descend(instance, dependent[name], schema_path=name)


def _required(validator: Any, required: Any, instance: Any, _schema: Any) -> Iterator[ValidationError]:
    """`required`, its names' lookups charged (a step per KEYS_PER_STEP of them) and its messages bounded: 38,000
    names applied 4,096 times through `allOf`s of `$ref`s took 4.6 s, a step each."""
    if not validator.is_type(instance, "object"):
        return
    _scanned(len(required))
    for name in required:
        if name not in instance:
            yield ValidationError(f"{short_repr(name)} is a required property")


def _dependent_required(validator: Any, dependent: Any, instance: Any, _schema: Any) -> Iterator[ValidationError]:
    """`dependentRequired`, its names' lookups charged as `required`'s (those of each list that applies too) and its
    messages bounded."""
    if not validator.is_type(instance, "object"):
        return
    _scanned(len(dependent))
    applying = [(name, names) for name, names in dependent.items() if name in instance]
    _scanned(sum(len(names) for _, names in applying))
    for name, names in applying:
        for each in names:
            if each not in instance:
                yield ValidationError(f"{short_repr(each)} is a dependency of {short_repr(name)}")


def _counted(keyword: Callable[..., Any]) -> Callable[..., Any]:
    def counted(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
        _step()
        return keyword(validator, value, instance, schema)

    return counted


def _applicable(schema: Any) -> Iterable[tuple[str, Any]]:
    """A subschema's keys as the validator walks them, charged a step per KEYS_PER_STEP of them: it walks unknown
    keys too, each time it descends into the subschema."""
    evaluation = _EVALUATION.get()
    if evaluation is not None:
        evaluation.charge(len(schema) // KEYS_PER_STEP)
    return schema.items()  # type: ignore[no-any-return]


TenantSchemaValidator: type[Validator] = create(
    meta_schema=Draft202012Validator.META_SCHEMA,
    validators={
        keyword: _counted(function)
        for keyword, function in {
            **Draft202012Validator.VALIDATORS,
            "pattern": _pattern,
            "patternProperties": _pattern_properties,
            "additionalProperties": _additional_properties,
            "unevaluatedProperties": _unevaluated_properties,
            "uniqueItems": _unique_items,
            "enum": _enum,
            "const": _const,
            "type": _type,
            "not": _not,
            "anyOf": _any_of,
            "oneOf": _one_of,
            "minItems": _bound("array", True, "is too short"),
            "maxItems": _bound("array", False, "is too long"),
            "minLength": _bound("string", True, "is too short"),
            "maxLength": _bound("string", False, "is too long"),
            "minProperties": _bound("object", True, "does not have enough properties"),
            "maxProperties": _bound("object", False, "has too many properties"),
            "contains": _contains,
            "items": _items,
            "unevaluatedItems": _unevaluated_items,
            "$ref": _ref,
            "properties": _properties,
            "dependentSchemas": _dependent_schemas,
            "required": _required,
            "dependentRequired": _dependent_required,
        }.items()
    },
    type_checker=Draft202012Validator.TYPE_CHECKER,
    format_checker=Draft202012Validator.FORMAT_CHECKER,
    id_of=Draft202012Validator.ID_OF,  # type: ignore[arg-type]  # the library's own, typed more loosely
    applicable_validators=_applicable,
)
"""JSON Schema 2020-12 with RE2 regexes, linear `uniqueItems`, `enum` and `const`, and every keyword application (and
a subschema's keys, `_applicable`) counted against the budget of `evaluation_budget()`: the one validator class for
every schema a tenant supplies."""

_VALIDATOR_CLASS: Any = TenantSchemaValidator  # its methods are replaced below: the protocol types none of them
_EVOLVED_FIELDS = tuple((field.name, field.alias) for field in attrs.fields(_VALIDATOR_CLASS) if field.init)
_library_descend = _VALIDATOR_CLASS.descend
_library_iter_errors = _VALIDATOR_CLASS.iter_errors


def _false_schema_error(instance: Any) -> ValidationError:
    """What a `false` subschema answers, quoting the instance in the bounded form (the library quotes all of it)."""
    details: dict[str, Any] = {"validator": None, "validator_value": None, "instance": instance, "schema": False}
    return ValidationError(f"False schema does not allow {short_repr(instance)}", **details)


def _evolve(self: Any, **changes: Any) -> Any:
    """The validator for a subschema, always a TenantSchemaValidator: the library's picks a class by the
    subschema's `$schema`, and a subschema naming 2020-12 (or draft 7) was evaluated by the library's own validator,
    with Python's backtracking regexes and no budget (`^(a+)+$` on 30 characters held a worker for a minute)."""
    changes.setdefault("schema", self.schema)
    for name, alias in _EVOLVED_FIELDS:
        changes.setdefault(alias, getattr(self, name))
    return _VALIDATOR_CLASS(**changes)


def _applies_nothing(schema: Any) -> bool:
    """Whether `schema` is boolean or has no keyword the validator applies (each applied is charged a step)."""
    return not isinstance(schema, dict) or not any(key in _VALIDATOR_CLASS.VALIDATORS for key in schema)


def _descend(
    self: Any, instance: Any, schema: Any, path: Any = None, schema_path: Any = None, resolver: Any = None
) -> Iterator[ValidationError]:
    """The library's descend, charged a step when no keyword of the subschema is (a descend costs a few µs whatever
    it applies: 60 `items: {title}` over 100,000 items took 15 s uncharged), and a `false` subschema's error quoting
    the instance in the bounded form."""
    if _applies_nothing(schema):
        _step()
    if schema is False:
        return iter((_false_schema_error(instance),))
    return _library_descend(self, instance, schema, path, schema_path, resolver)  # type: ignore[no-any-return]


def _iter_errors(self: Any, instance: Any, _schema: Any = None) -> Iterator[ValidationError]:
    """The library's iter_errors, but a `false` schema's error quotes the instance in the bounded form (`not`,
    `contains` and `if` ask is_valid of their subschema, which may be `false`); charged a step when it applies no
    keyword, as `_descend` (`contains` asks it of each item)."""
    if _schema is None and not self._validators:
        _step()
    if _schema is None and self.schema is False:
        return iter((_false_schema_error(instance),))
    return _library_iter_errors(self, instance, _schema)  # type: ignore[no-any-return]


_VALIDATOR_CLASS.evolve = _evolve
_VALIDATOR_CLASS.descend = _descend
_VALIDATOR_CLASS.iter_errors = _iter_errors


def tenant_validator(schema: Any) -> Validator:
    """A validator of instances against a tenant-supplied schema (intent inputs, module parameters)."""
    return TenantSchemaValidator(schema)
