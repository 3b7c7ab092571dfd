# intent_ref: platform.access-control
"""Bounds on tenant Cedar text, checked before the Cedar parser sees it (its size and how deep it nests), and on the
parsed policy (its clauses, its literals and what evaluating it costs)."""

# The Cedar parser and the policy-tree conversion recurse once per nesting level on the calling thread's stack and
# have no depth guard of their own: a deep enough text overflows that stack, which kills the whole host process
# (no Python exception to catch). Measured with cedarpy 4.12, in the main thread and in threads of several stack
# sizes: a parenthesis, bracket, record or call level costs about 12.6 KiB of stack, an operator or member level about
# 6 KiB; 8 MiB (the usual thread stack) overflows at 664 parentheses, 2 MiB at 166, 512 KiB at 40. The bound
# below keeps the worst text under 0.5 MiB of stack.

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, get_args

import cedarpy
from cedarpy import pst

from shared.policy.remembered import Remembered

__all__ = [
    "DURATION_CHARS_PER_NODE",
    "LIKE_COST",
    "MAX_CONSTRUCTOR_LITERAL_CHARS",
    "MAX_POLICY_CHARS",
    "MAX_POLICY_CLAUSES",
    "MAX_POLICY_LITERAL_CHARS",
    "MAX_POLICY_NESTING",
    "MAX_TENANT_POLICY_COST",
    "KNOWN_COSTS_SIZE",
    "MAX_TENANT_POLICY_TOTAL_CHARS",
    "SET_COMPARISON_COST",
    "longest_string_literal",
    "nesting_depth",
    "policy_cost",
    "policy_text_problems",
    "policy_tree_problems",
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
(refused otherwise where the policy is parsed), a `like` still walks a 128-character target once per pattern character
that can match (~6 µs against a repetitive target), about fifty ordinary nodes: it counts LIKE_COST."""

MAX_CONSTRUCTOR_LITERAL_CHARS = 48
"""Longest string a `decimal(…)`, `ip(…)`, `datetime(…)` or `duration(…)` literal may be given: Cedar parses it again
on every decision (a `duration` at ~45-60 ns a character), yet it counted one node: 243-character `duration` literals
filling the character bound cost a decision +1.44 ms at 425 nodes. No honest literal is longer:
`"2026-12-07T10:00:00.000+0100"` is 28, a full IPv6 range `"ffff:…:ffff/128"` 43."""

DURATION_CHARS_PER_NODE = 2
"""A `duration("…")` literal counts one node for every this many characters of its string: Cedar parses it on every
decision at ~45-60 ns a character (496 of 40 characters, 2 nodes each, cost a decision +1.5 ms), where a `decimal`,
`ip` or `datetime` literal within MAX_CONSTRUCTOR_LITERAL_CHARS costs about what a few nodes do."""

LIKE_COST = 50
"""What a `like` counts for, in nodes: it matches by backtracking over the attribute (a `*` retried at each of a
128-character target's positions, ~6 µs, about fifty ordinary nodes); fifty policies of one `like` each still fit."""

MAX_TENANT_POLICY_TOTAL_CHARS = 32_000
"""A tenant's policies' text in all, at most (checked on save, and on every stored set before it is built): it bounds
what saving and building the set parse. What a decision costs is bounded by MAX_TENANT_POLICY_COST: 32,000 characters
of nested set literals cost a decision ~5 ms (ADR 0011)."""

MAX_TENANT_POLICY_COST = 4_000
"""What evaluating a tenant's policies may cost in all, in expression nodes (`policy_cost`), checked on save under the
create's lock and on every stored set before it is built. A decision evaluates every node of every policy with the GIL
held; with collection literals kept flat (`policy_tree_problems`) the costliest shapes measured cost at most ~0.22 µs
a node (`decimal(…)` and `ip(…)` calls, records of 1,000 fields, sets of distinct numbers), and what compares the
tenant's own sets counts SET_COMPARISON_COST, so ~0.9 ms a decision at this bound where 31,968 characters of nested
sets cost ~5 ms (ADR 0011). A 250-string `contains` list is 255 nodes: fifteen of them fit."""

SET_COMPARISON_COST = 100
"""What comparing sets of the tenant's data counts for, in nodes: a `containsAll` or `containsAny` neither side of which
is a set literal (it walks a whole set: 500 module names of 128 characters, ~21-27 µs a comparison, about a hundred
ordinary nodes; against a literal it walks the literal, ~1 µs for two labels), an `==` or `!=` neither side of which is
a literal and one side of which may be a set (a set attribute or an `if`: two equal sets compare element by element,
100 names of 128 characters ~5.5 µs), and each element of a set literal (or field of a record literal) that is not a
scalar literal, past its own nodes (a set orders its elements as it is built, comparing whole sets when they are sets:
`[resource.allowed_modules, …]` cost ~7 ms a decision at 2-3 nodes an element)."""

MAX_POLICY_CLAUSES = 32
"""The most `when` / `unless` clauses a policy may have: Cedar joins them into one chain of `&&` that it evaluates
recursively, so 760 `unless { false }` clauses (10,000 characters) reached its recursion limit on 512 KiB and 2 MiB
thread stacks and not on 8 MiB (a decision that depends on the thread); 32 clauses over 32-deep bodies evaluate on
512 KiB."""

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


_EXPRESSIONS: tuple[type, ...] = get_args(pst.Expr)
_COLLECTIONS = (pst.Set, pst.Record)
_SET_COMPARISONS = frozenset({"contains_all", "contains_any"})
_SCALAR_LITERALS = (pst.BoolLit, pst.LongLit, pst.StringLit, pst.EntityLit)
# Applied to a scalar literal, each of these makes a scalar value, which compares at about a literal's cost.
_SCALAR_CONSTRUCTORS = frozenset({"neg", "decimal", "ip", "datetime", "duration"})
# Each of these parses its string argument again on every decision.
_PARSING_CONSTRUCTORS = frozenset({"decimal", "ip", "datetime", "duration"})
# The set-typed attributes of the schema (schema.cedarschema), whichever entity holds them.
_SET_ATTRIBUTES = frozenset({"labels", "roles", "allowed_targets", "allowed_modules"})
_EQUALITIES = frozenset({"eq", "not_eq"})


def _children(node: object) -> list[Any]:
    """The direct parts of a parsed-policy node (fields of a dataclass, items of a tuple or mapping); a `like`'s are
    its left side only: its pattern is one node per character (a 256-character pattern, 256 of them), none of which
    costs anything or holds a literal the walk looks for (the `like` itself counts LIKE_COST)."""
    if isinstance(node, pst.Like):
        return [node.base]
    if is_dataclass(node):
        return [getattr(node, item.name) for item in fields(node)]
    if isinstance(node, tuple | list):
        return list(node)
    if isinstance(node, Mapping):
        return list(node.values())
    return []


def _is_scalar_literal(expr: object) -> bool:
    """Whether `expr` is a string, number, boolean or entity literal, or `-`, `decimal(…)`, `ip(…)`, `datetime(…)`
    or `duration(…)` applied to one."""
    while isinstance(expr, pst.UnaryOp) and expr.op in _SCALAR_CONSTRUCTORS:
        expr = expr.arg
    return isinstance(expr, _SCALAR_LITERALS)


def _collection_cost(elements: Iterable[object]) -> int:
    """What building a set or record literal costs past its own nodes: SET_COMPARISON_COST for each element (or
    field value) that is not a scalar literal."""
    # Cedar builds the literal on every decision, and a set compares its elements as it orders them: an element that
    # evaluates to a set of the tenant's data (`resource.labels`, `principal.tenant.allowed_modules`) is compared
    # whole, so `[resource.allowed_modules, …]` at 2-3 nodes an element cost ~7 ms a decision within the budget.
    return SET_COMPARISON_COST * sum(not _is_scalar_literal(element) for element in elements)


def _may_be_set(expr: object) -> bool:
    """Whether `expr` may evaluate to a set of the tenant's data: a set attribute, or an `if` (either branch)."""
    return isinstance(expr, pst.IfThenElse) or (isinstance(expr, pst.GetAttr) and expr.attr in _SET_ATTRIBUTES)


def _is_literal(expr: object) -> bool:
    """Whether `expr` is a scalar or collection literal (what bounds an equality by its own, counted, size)."""
    return _is_scalar_literal(expr) or isinstance(expr, _COLLECTIONS)


def _node_cost(node: object) -> int:
    """What evaluating `node` itself costs, in ordinary expression nodes (0 for what is not an expression)."""
    if isinstance(node, pst.Like):
        return LIKE_COST
    if isinstance(node, pst.UnaryOp) and node.op == "duration" and isinstance(node.arg, pst.StringLit):
        # Parsed again on every decision at ~45-60 ns a character (a `decimal`, `ip` or `datetime` several times less).
        return max(1, -(-len(node.arg.value) // DURATION_CHARS_PER_NODE))
    if isinstance(node, pst.BinaryOp) and node.op in _EQUALITIES:
        # Two equal sets compare element by element (100 names of 128 characters: ~2 µs); a literal side differs
        # from a large set at once, or is counted element by element already.
        sets = (_may_be_set(node.left) or _may_be_set(node.right)) and not (
            _is_literal(node.left) or _is_literal(node.right)
        )
        return SET_COMPARISON_COST if sets else 1
    if isinstance(node, pst.BinaryOp) and node.op in _SET_COMPARISONS:
        # Cedar walks the smaller set (and compares lengths first), so a literal side bounds the comparison by its
        # elements, each counted already; only two sets of the tenant's data compare at a cost of their size.
        literal_side = isinstance(node.left, pst.Set) or isinstance(node.right, pst.Set)
        return 1 if literal_side else SET_COMPARISON_COST
    if isinstance(node, pst.Set):
        return 1 + _collection_cost(node.elements)
    if isinstance(node, pst.Record):
        return 1 + _collection_cost(node.fields.values())
    return 1 if isinstance(node, _EXPRESSIONS) else 0


def _long_constructor_literal(node: object) -> int:
    """The length of the string `node` parses on every decision when it is `decimal`, `ip`, `datetime` or `duration`
    of a string literal longer than MAX_CONSTRUCTOR_LITERAL_CHARS, else 0."""
    if isinstance(node, pst.UnaryOp) and node.op in _PARSING_CONSTRUCTORS and isinstance(node.arg, pst.StringLit):
        length = len(node.arg.value)
        return length if length > MAX_CONSTRUCTOR_LITERAL_CHARS else 0
    return 0


def _walk(tree: pst.PolicySet) -> tuple[int, bool, int]:
    """The evaluation cost of `tree`'s policies, whether a set or record literal holds another one, and the longest
    string a constructor literal parses past MAX_CONSTRUCTOR_LITERAL_CHARS (0 if none)."""
    cost, nested, long_literal = 0, False, 0
    # Iterative: nesting is bounded before parsing, but the walk should not depend on it. Each entry carries whether
    # it lies inside a collection literal.
    policies = (*tree.static_policies.values(), *tree.templates.values())
    pending: list[tuple[Any, bool]] = [(policy, False) for policy in policies]
    while pending:
        node, inside = pending.pop()
        cost += _node_cost(node)
        long_literal = max(long_literal, _long_constructor_literal(node))
        collection = isinstance(node, _COLLECTIONS)
        nested = nested or (collection and inside)
        pending.extend((child, inside or collection) for child in _children(node))
    return cost, nested, long_literal


def policy_tree_problems(tree: pst.PolicySet) -> tuple[list[str], int]:
    """Why a parsed tenant policy costs too much to evaluate (empty = it does not), and its cost (`policy_cost`)."""
    cost, nested, long_literal = _walk(tree)
    problems = []
    clauses = max((len(policy.clauses) for policy in tree.static_policies.values()), default=0)
    if clauses > MAX_POLICY_CLAUSES:
        problems.append(f"a policy has at most {MAX_POLICY_CLAUSES} `when` / `unless` clauses; this one has {clauses}")
    if nested:
        # Built again on every decision, and a set of sets compares its elements as it builds: `[[[1]]]` repeated
        # cost ~0.3 µs a node, several times a flat literal.
        problems.append("a set or record literal may not hold another set or record literal")
    if long_literal:
        # Parsed again on every decision at a cost in proportion to its length, yet one node.
        problems.append(
            f"the string of a `decimal`, `ip`, `datetime` or `duration` literal is at most "
            f"{MAX_CONSTRUCTOR_LITERAL_CHARS} characters; this policy has one of {long_literal}"
        )
    if cost > MAX_TENANT_POLICY_COST:
        problems.append(
            f"a tenant's policies cost at most {MAX_TENANT_POLICY_COST} expression nodes to evaluate in all; "
            f"this one costs {cost} (a `containsAll` / `containsAny` of two sets neither of which is a literal, an "
            "`==` / `!=` of a set attribute with what is not a literal, and each element of a set or record literal "
            f"that is not a string, number, boolean or entity literal, count {SET_COMPARISON_COST}; a `like` "
            f"{LIKE_COST})"
        )
    return problems, cost


KNOWN_COSTS_SIZE = 4_096
"""How many texts' costs `policy_cost` remembers (by digest: ~0.2 KB each, whatever the text's length)."""


_known_costs: Remembered[int] = Remembered(KNOWN_COSTS_SIZE)


def policy_cost(text: str) -> int:
    """What evaluating `text` costs a decision, in expression nodes (see SET_COMPARISON_COST for what counts more);
    ValueError for a text that may not be parsed or does not parse."""
    # A create counts every stored policy of its tenant under the tenant's lock: parsing them all again took ~70-85 ms
    # at the character bound. The cost is the text's alone, so a digest of it is a safe key across tenants; a text
    # that fails is not remembered (it raises, and is rare).
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
    known = _known_costs.get(digest)
    if known is not None:
        return known
    problems = policy_text_problems(text)
    if problems:
        raise ValueError(problems[0])
    cost = _walk(cedarpy.policies_to_pst(text))[0]
    _known_costs.put(digest, cost)
    return cost
