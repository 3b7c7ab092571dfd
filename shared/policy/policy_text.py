# intent_ref: platform.access-control
"""Bounds on tenant Cedar text, checked before the Cedar parser sees it: its size and how deep it nests."""

# The Cedar parser and the policy-tree conversion recurse once per nesting level on the calling thread's stack and
# have no depth guard of their own: a deep enough text overflows that stack, which kills the whole host process
# (no Python exception to catch). Measured with cedarpy 4.12, in the main thread and in threads of several stack
# sizes: a parenthesis, bracket, record or call level costs about 12.6 KiB of stack, an operator or member level about
# 6 KiB; 8 MiB (the usual thread stack) overflows at 664 parentheses, 2 MiB at 166, 512 KiB at 40. The bound
# below keeps the worst text under 0.5 MiB of stack.

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "MAX_POLICY_CHARS",
    "MAX_POLICY_LITERAL_CHARS",
    "MAX_POLICY_NESTING",
    "MAX_TENANT_POLICY_TOTAL_CHARS",
    "longest_string_literal",
    "nesting_depth",
    "policy_text_problems",
]

MAX_POLICY_CHARS = 10_000
"""Longest tenant policy text: bounds the parse and validation cost of one policy."""

MAX_POLICY_NESTING = 32
"""Deepest accepted nesting (see `nesting_depth`); the same bound as a step's `when` condition."""

MAX_POLICY_LITERAL_CHARS = 256
"""Longest string literal (a `like` pattern, an entity id, an annotation included), counted as written between its
quotes. Cedar matches `like` by backtracking, in time about the product of the two lengths, with the GIL held: a
7,300-character literal matched against a 2,470-character pattern cost 10 ms per policy, 0.5 s per decision with 50
such policies, while every other thread of the host waited. Capped, and with a `like`'s left side always an attribute
(refused otherwise where the policy is parsed), a `like` costs about what any other expression does."""

MAX_TENANT_POLICY_TOTAL_CHARS = 32_000
"""A tenant's policies' text in all, at most (checked on save, and on every stored set before it is built): a decision
evaluates every expression of the tenant's policies, about a microsecond each with the GIL held, so 50 × 10,000
characters of cheap clauses cost every decision of the tenant ~35 ms; 32,000 characters of the costliest shapes
measured cost it under 1 ms (ADR 0011)."""

_OPENERS = {"(": ")", "[": "]", "{": "}"}
_CLOSERS = frozenset(_OPENERS.values())
# Each of these builds one node of the expression tree over its operands, so a chain of them is a chain of nodes.
_OPERATORS = ("&&", "||", "==", "!=", "<=", ">=", "<", ">", "+", "-", "*", "!")
_KEYWORD_OPERATORS = frozenset({"if", "in", "has", "like", "is"})
_NEUTRAL_KEYWORDS = frozenset({"then", "else"})


@dataclass
class _Group:
    """One bracketed group (or the whole text) while it is scanned."""

    closer: str
    item: int = 0  # operators of the current comma-separated item
    run: int = 0  # member accesses since the item's last operator
    longest_run: int = 0
    child: int = 0  # deepest group inside the current item
    items: list[int] = field(default_factory=list)

    def end_item(self) -> None:
        self.items.append(self.item + self.longest_run + self.child)
        self.item = self.run = self.longest_run = self.child = 0

    def operator(self) -> None:
        self.item += 1
        self.run = 0

    def member(self) -> None:
        self.run += 1
        self.longest_run = max(self.longest_run, self.run)

    def height(self) -> int:
        self.end_item()
        return max(self.items)


class _Unscannable(ValueError):
    """The text cannot be tokenized the way Cedar would (a string or a bracket left open); it is refused."""


def _string_end(text: str, start: int) -> int:
    """The index after the string literal opening at `start`, with Cedar's lexical rule: `\\` escapes any
    character but a line feed."""
    index = start + 1
    while index < len(text):
        char = text[index]
        if char == '"':
            return index + 1
        if char == "\\":
            if index + 1 >= len(text) or text[index + 1] == "\n":
                break
            index += 2
            continue
        index += 1
    raise _Unscannable(f"the string opened at offset {start} is not closed")


def _word_end(text: str, start: int) -> int:
    index = start
    while index < len(text) and (text[index].isascii() and (text[index].isalnum() or text[index] == "_")):
        index += 1
    return index


def nesting_depth(text: str, *, limit: int | None = None) -> int:
    """An upper bound of how deep the Cedar parser recurses on `text`, in nesting levels.

    Every bracketed group (`(`, `[`, `{`: parentheses, sets, records, calls, scopes, condition bodies) is one
    level over the deepest of its comma-separated items; within an item each operator (`&&`, `||`, comparisons,
    `+ - * !`, `if`, `in`, `has`, `like`, `is`) adds one, and the longest chain of member accesses (`.x`,
    `.f()`, `["k"]`) adds its length. Strings and comments are skipped exactly as Cedar's lexer does. Raises
    ValueError for a string or bracket left open or a mismatched closing bracket (Cedar could not parse the text
    anyway, and counting past it could disagree with Cedar about where a token ends). With `limit`, returns
    `limit + 1` as soon as the bracket depth alone exceeds it, without scanning further.
    """
    stack = [_Group("")]
    after_primary = False  # whether a `[` here indexes a value (a member access) rather than opening a set
    index = 0
    while index < len(text):
        char = text[index]
        top = stack[-1]
        if char.isspace():
            index += 1
            continue
        if text.startswith("//", index):
            while index < len(text) and text[index] not in "\n\r":
                index += 1
            continue
        if char == '"':
            index = _string_end(text, index)
            after_primary = True
            continue
        if char in _OPENERS:
            if char == "[" and after_primary:
                top.member()
            stack.append(_Group(_OPENERS[char]))
            if limit is not None and len(stack) - 1 > limit:
                return limit + 1
            after_primary = False
            index += 1
            continue
        if char in _CLOSERS:
            if len(stack) == 1 or char != top.closer:
                raise _Unscannable(f"the {char!r} at offset {index} closes no bracket opened before it")
            stack.pop()
            stack[-1].child = max(stack[-1].child, 1 + top.height())
            after_primary = True
            index += 1
            continue
        if char in ",;":
            top.end_item()
            after_primary = False
            index += 1
            continue
        if char == ".":
            top.member()
            after_primary = False
            index += 1
            continue
        operator = next((op for op in _OPERATORS if text.startswith(op, index)), None)
        if operator is not None:
            top.operator()
            after_primary = False
            index += len(operator)
            continue
        if char.isascii() and (char.isalnum() or char == "_"):
            end = _word_end(text, index)
            word = text[index:end]
            if word in _KEYWORD_OPERATORS:
                top.operator()
                after_primary = False
            elif word in _NEUTRAL_KEYWORDS:
                top.run = 0
                after_primary = False
            else:
                after_primary = True
            index = end
            continue
        # `:`, `::`, `@`, `?` and anything Cedar's lexer refuses build no nesting.
        after_primary = False
        index += 1
    if len(stack) > 1:
        raise _Unscannable(f"{len(stack) - 1} bracket(s) are not closed")
    return stack[0].height()


def longest_string_literal(text: str) -> int:
    """The length of the longest string literal of `text`, as written between its quotes (comments skipped as
    Cedar's lexer skips them); ValueError for a string left open."""
    longest = 0
    index = 0
    while index < len(text):
        if text.startswith("//", index):
            while index < len(text) and text[index] not in "\n\r":
                index += 1
        elif text[index] == '"':
            end = _string_end(text, index)
            longest = max(longest, end - index - 2)
            index = end
        else:
            index += 1
    return longest


def policy_text_problems(text: str) -> list[str]:
    """Why `text` may not be handed to the Cedar parser (empty = it may): too long, too deep, unscannable, or a
    string literal too long to match cheaply."""
    if len(text) > MAX_POLICY_CHARS:
        return [f"a policy is at most {MAX_POLICY_CHARS} characters; this one has {len(text)}"]
    try:
        depth = nesting_depth(text, limit=MAX_POLICY_NESTING)
    except _Unscannable as exc:
        return [f"syntax error: {exc}"]
    if depth > MAX_POLICY_NESTING:
        return [
            f"the policy nests deeper than {MAX_POLICY_NESTING} levels (brackets, operators and member accesses count)"
        ]
    longest = longest_string_literal(text)
    if longest > MAX_POLICY_LITERAL_CHARS:
        return [
            f"a string literal (a `like` pattern included) is at most {MAX_POLICY_LITERAL_CHARS} characters; "
            f"this policy has one of {longest}"
        ]
    return []
