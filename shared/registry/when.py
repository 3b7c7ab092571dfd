# intent_ref: platform.registry
"""The `when` condition grammar: parsed when a definition is saved, evaluated by a pure function at run time."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from shared.registry.references import (
    Reference,
    ReferenceSyntaxError,
    UnresolvedReferenceError,
    lookup,
    parse_reference,
)

MAX_LENGTH = 2000
MAX_NESTING = 32

Scalar = str | int | float | bool | None

_TOKEN = re.compile(
    r"""(?:
      (?P<ref>\$\{[^}]*\})
    | (?P<dstring>"(?:[^"\\]|\\.)*")
    | (?P<sstring>'(?:[^'\\]|\\.)*')
    | (?P<number>-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)
    | (?P<op>==|!=)
    | (?P<punct>[\[\](),])
    | (?P<word>[A-Za-z_]+)
    )""",
    re.VERBOSE,
)
_NAMES = {
    "ref": "a reference",
    "dstring": "a literal",
    "sstring": "a literal",
    "number": "a literal",
    "true": "a literal",
    "false": "a literal",
    "null": "a literal",
}
_KEYWORDS = frozenset({"and", "or", "not", "in", "exists", "true", "false", "null"})


class WhenSyntaxError(ValueError):
    """A condition that does not follow the grammar; the message names the position."""


@dataclass(frozen=True)
class Compare:
    ref: Reference
    op: Literal["==", "!="]
    value: Scalar


@dataclass(frozen=True)
class In:
    ref: Reference
    values: tuple[Scalar, ...]


@dataclass(frozen=True)
class Exists:
    ref: Reference


@dataclass(frozen=True)
class Not:
    operand: WhenExpr


@dataclass(frozen=True)
class And:
    operands: tuple[WhenExpr, ...]


@dataclass(frozen=True)
class Or:
    operands: tuple[WhenExpr, ...]


WhenExpr = Compare | In | Exists | Not | And | Or


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    position: int


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position].isspace():
        position += 1
    return position


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = _skip_space(text, 0)
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.lastgroup is None:
            raise WhenSyntaxError(f"unexpected character {text[position]!r} at {position}")
        kind = match.lastgroup
        value = match.group(kind)
        if kind == "word" and value not in _KEYWORDS:
            raise WhenSyntaxError(f"unknown word {value!r} at {match.start(kind)} (references are written ${{...}})")
        tokens.append(_Token(value if kind in ("word", "op", "punct") else kind, value, match.start(kind)))
        position = _skip_space(text, match.end())
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.index = 0
        self.depth = 0

    def _peek(self) -> _Token | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def _take(self, *kinds: str) -> _Token:
        token = self._peek()
        expected = " or ".join(dict.fromkeys(_NAMES.get(kind, f"'{kind}'") for kind in kinds))
        if token is None:
            raise WhenSyntaxError(f"expected {expected} at the end of the condition")
        if token.kind not in kinds:
            raise WhenSyntaxError(f"expected {expected} at {token.position}, found {token.text!r}")
        self.index += 1
        return token

    def parse(self) -> WhenExpr:
        expr = self._or()
        token = self._peek()
        if token is not None:
            raise WhenSyntaxError(f"unexpected {token.text!r} at {token.position}")
        return expr

    def _or(self) -> WhenExpr:
        operands = [self._and()]
        while (token := self._peek()) is not None and token.kind == "or":
            self.index += 1
            operands.append(self._and())
        return operands[0] if len(operands) == 1 else Or(tuple(operands))

    def _and(self) -> WhenExpr:
        operands = [self._unary()]
        while (token := self._peek()) is not None and token.kind == "and":
            self.index += 1
            operands.append(self._unary())
        return operands[0] if len(operands) == 1 else And(tuple(operands))

    def _unary(self) -> WhenExpr:
        token = self._take("not", "(", "exists", "ref")
        if token.kind == "exists":
            return Exists(self._reference(self._take("ref")))
        if token.kind == "ref":
            return self._comparison(self._reference(token))
        # A bound on nesting (a `not` or a parenthesis within another) keeps a hostile condition from exhausting the
        # interpreter's stack.
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise WhenSyntaxError(f"the condition nests deeper than {MAX_NESTING} levels")
        try:
            if token.kind == "not":
                return Not(self._unary())
            expr = self._or()
            self._take(")")
            return expr
        finally:
            self.depth -= 1

    def _comparison(self, ref: Reference) -> WhenExpr:
        operator = self._take("==", "!=", "in")
        if operator.kind == "in":
            self._take("[")
            values: list[Scalar] = []
            if (token := self._peek()) is not None and token.kind == "]":
                self.index += 1
                return In(ref, ())
            values.append(self._literal())
            while self._take(",", "]").kind == ",":
                values.append(self._literal())
            return In(ref, tuple(values))
        return Compare(ref, "==" if operator.kind == "==" else "!=", self._literal())

    def _literal(self) -> Scalar:
        token = self._take("dstring", "sstring", "number", "true", "false", "null")
        if token.kind == "dstring":
            decoded: str = json.loads(token.text)
            return decoded
        if token.kind == "sstring":
            return re.sub(r"\\(.)", r"\1", token.text[1:-1])
        if token.kind == "number":
            number: int | float = json.loads(token.text)
            return number
        return {"true": True, "false": False, "null": None}[token.kind]

    @staticmethod
    def _reference(token: _Token) -> Reference:
        try:
            return parse_reference(token.text)
        except ReferenceSyntaxError as exc:
            raise WhenSyntaxError(f"{exc} at {token.position}") from exc


def parse_when(text: str) -> WhenExpr:
    """The parsed condition; raises WhenSyntaxError naming what is wrong and where.

        expr    := or
        or      := and ("or" and)*
        and     := unary ("and" unary)*
        unary   := "not" unary | "(" expr ")" | "exists" REF
                 | REF ("==" | "!=") LITERAL | REF "in" "[" [LITERAL ("," LITERAL)*] "]"
        REF     := ${inputs.<name>[.<path>]} | ${steps.<id>.output[.<path>]}
        LITERAL := "json string" | 'single-quoted string' | number | true | false | null

    At run time (evaluate_when) an absent reference equals nothing: `==` and `in` are false, `!=` is true, and
    `exists` tests presence (a present null exists). Equality is JSON equality: 1 == 1.0, but true is not 1.
    """
    if len(text) > MAX_LENGTH:
        raise WhenSyntaxError(f"the condition is longer than {MAX_LENGTH} characters")
    if not text.strip():
        raise WhenSyntaxError("the condition is empty")
    return _Parser(text).parse()


def when_references(expr: WhenExpr) -> list[Reference]:
    """Every reference a condition reads, in order of appearance."""
    if isinstance(expr, Compare | In | Exists):
        return [expr.ref]
    if isinstance(expr, Not):
        return when_references(expr.operand)
    return [ref for operand in expr.operands for ref in when_references(operand)]


def json_equal(left: Any, right: Any) -> bool:
    """JSON equality: numbers compare by value, booleans only equal booleans, containers element-wise."""
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left == right
    if isinstance(left, int | float) and isinstance(right, int | float):
        return left == right
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(json_equal(left[key], right[key]) for key in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(json_equal(a, b) for a, b in zip(left, right, strict=True))
    return type(left) is type(right) and bool(left == right)


_ABSENT = object()


def _value(ref: Reference, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> Any:
    try:
        return lookup(ref, inputs, outputs)
    except UnresolvedReferenceError:
        return _ABSENT


def evaluate_when(expr: str | WhenExpr, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> bool:
    """Whether a step's condition holds, given the execution inputs and the outputs of steps by id."""
    node = parse_when(expr) if isinstance(expr, str) else expr
    if isinstance(node, Compare):
        value = _value(node.ref, inputs, outputs)
        equal = value is not _ABSENT and json_equal(value, node.value)
        return equal if node.op == "==" else not equal
    if isinstance(node, In):
        value = _value(node.ref, inputs, outputs)
        return value is not _ABSENT and any(json_equal(value, item) for item in node.values)
    if isinstance(node, Exists):
        return _value(node.ref, inputs, outputs) is not _ABSENT
    if isinstance(node, Not):
        return not evaluate_when(node.operand, inputs, outputs)
    if isinstance(node, And):
        return all(evaluate_when(operand, inputs, outputs) for operand in node.operands)
    return any(evaluate_when(operand, inputs, outputs) for operand in node.operands)
