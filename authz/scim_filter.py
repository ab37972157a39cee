"""The SCIM filter subset that ``GET /api/v1/logs`` accepts (spec §6.3, RFC 7644 §3.4.2.2).

Grammar (RFC 7644 §3.4.2.2 without value paths ``[ ]``, which Okta's System Log does not accept:
"All SCIM operators except [ ]")::

    filter     = or_expr
    or_expr    = and_expr *("or" and_expr)
    and_expr   = unary *("and" unary)
    unary      = "not" "(" filter ")" / "(" filter ")" / comparison
    comparison = attrPath "pr" / attrPath compareOp value
    compareOp  = eq / ne / co / sw / ew / gt / ge / lt / le
    value      = JSON string / number / true / false / null

"Attribute names and attribute operators used in filters are case insensitive" (RFC 7644 §3.4.2.2);
string values compare case-exactly, as Okta's ids and event types are case-sensitive. A multi-valued
attribute (``target``) matches when any of its values does.

Only the LogEvent attributes below may be filtered on; ``published`` cannot ("published cannot be
used", spec §6.3: time bounds are ``since`` and ``until``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MAX_FILTER_LENGTH = 4096
MAX_DEPTH = 32
"""Nesting bound, so that a hostile filter cannot exhaust the parser's recursion."""

ATTRIBUTES = (
    "uuid", "eventType", "version", "severity", "displayMessage", "legacyEventType",
    "outcome.result", "outcome.reason",
    "actor.id", "actor.type", "actor.alternateId", "actor.displayName",
    "client.id", "client.ipAddress", "client.zone", "client.device", "client.userAgent.rawUserAgent",
    "target.id", "target.type", "target.alternateId", "target.displayName",
    "transaction.id", "transaction.type",
    "authenticationContext.externalSessionId",
)
_CANONICAL = {name.lower(): name for name in ATTRIBUTES}
_DEBUG_DATA = "debugcontext.debugdata."
_CONTAINS_FORBIDDEN = ("debugContext.debugData.url", "debugContext.debugData.requestUri")

OPERATORS = ("eq", "ne", "co", "sw", "ew", "gt", "ge", "lt", "le")


class FilterError(ValueError):
    """An invalid filter; ``code`` is the Okta error code to answer with."""

    def __init__(self, message: str, code: str = "E0000053") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Compare:
    path: str
    op: str
    value: str | int | float | bool | None


@dataclass(frozen=True)
class Present:
    path: str


@dataclass(frozen=True)
class And:
    left: Filter
    right: Filter


@dataclass(frozen=True)
class Or:
    left: Filter
    right: Filter


@dataclass(frozen=True)
class Not:
    inner: Filter


Filter = Compare | Present | And | Or | Not

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<lparen>\() | (?P<rparen>\)) |
        (?P<string>"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*") |
        (?P<number>-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?(?![\w.])) |
        (?P<word>[A-Za-z][\w.$-]*) |
        (?P<bad>\S)
    )""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    pos: int


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:  # only trailing whitespace is left
            break
        kind = match.lastgroup
        assert kind is not None
        if kind == "bad":
            raise FilterError(f"unexpected character {match.group(kind)!r} at position {match.start(kind)}")
        tokens.append(_Token(kind, match.group(kind), match.start(kind)))
        pos = match.end()
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.i = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def next(self, expected: str) -> _Token:
        token = self.peek()
        if token is None:
            raise FilterError(f"expected {expected} at the end of the filter")
        self.i += 1
        return token

    def keyword(self, word: str) -> bool:
        token = self.peek()
        if token is not None and token.kind == "word" and token.text.lower() == word:
            self.i += 1
            return True
        return False

    def parse(self) -> Filter:
        if not self.tokens:
            raise FilterError("the filter is empty")
        result = self.or_expr(0)
        token = self.peek()
        if token is not None:
            raise FilterError(f"unexpected {token.text!r} at position {token.pos}")
        return result

    def or_expr(self, depth: int) -> Filter:
        left = self.and_expr(depth)
        while self.keyword("or"):
            left = Or(left, self.and_expr(depth))
        return left

    def and_expr(self, depth: int) -> Filter:
        left = self.unary(depth)
        while self.keyword("and"):
            left = And(left, self.unary(depth))
        return left

    def unary(self, depth: int) -> Filter:
        if depth >= MAX_DEPTH:
            raise FilterError(f"the filter nests deeper than {MAX_DEPTH} levels")
        if self.keyword("not"):
            opening = self.next("'(' after not")
            if opening.kind != "lparen":
                raise FilterError(f"expected '(' after not at position {opening.pos}")
            return Not(self.group(depth + 1))
        token = self.peek()
        if token is not None and token.kind == "lparen":
            self.i += 1
            return self.group(depth + 1)
        return self.comparison()

    def group(self, depth: int) -> Filter:
        inner = self.or_expr(depth)
        token = self.next("')'")
        if token.kind != "rparen":
            raise FilterError(f"expected ')' at position {token.pos}, found {token.text!r}")
        return inner

    def comparison(self) -> Filter:
        token = self.next("an attribute")
        if token.kind != "word":
            raise FilterError(f"expected an attribute at position {token.pos}, found {token.text!r}")
        path = attribute_path(token.text)
        op_token = self.next("an operator")
        op = op_token.text.lower()
        if op_token.kind != "word" or (op != "pr" and op not in OPERATORS):
            raise FilterError(f"unknown operator {op_token.text!r} at position {op_token.pos}")
        if op == "pr":
            return Present(path)
        if op == "co" and path in _CONTAINS_FORBIDDEN:
            # Spec §6.3: "co on debugContext.debugData.url or requestUri is rejected (E0000031)".
            raise FilterError(f"the co operator cannot be used on {path}", code="E0000031")
        value_token = self.next("a value")
        value = _value(value_token)
        if op in ("co", "sw", "ew") and not isinstance(value, str):
            raise FilterError(f"{op} needs a string value at position {value_token.pos}")
        if op in ("gt", "ge", "lt", "le") and (value is None or isinstance(value, bool)):
            raise FilterError(f"{op} needs a string or number value at position {value_token.pos}")
        return Compare(path, op, value)


def _value(token: _Token) -> str | int | float | bool | None:
    if token.kind == "string":
        decoded = json.loads(token.text)
        assert isinstance(decoded, str)
        return decoded
    if token.kind == "number":
        number = json.loads(token.text)
        assert isinstance(number, (int, float))
        return number
    if token.kind == "word" and token.text.lower() in ("true", "false", "null"):
        return {"true": True, "false": False, "null": None}[token.text.lower()]
    raise FilterError(f"expected a value at position {token.pos}, found {token.text!r}")


def attribute_path(name: str) -> str:
    """The canonical spelling of a filterable attribute; FilterError for any other name."""
    lowered = name.lower()
    if lowered == "published":
        raise FilterError("published cannot be used in a filter; use since and until")
    canonical = _CANONICAL.get(lowered)
    if canonical is not None:
        return canonical
    if lowered.startswith(_DEBUG_DATA) and len(lowered) > len(_DEBUG_DATA):
        # debugData keys are free-form ("key names and values may change", spec §6.1): keep the case.
        rest = name[len(_DEBUG_DATA):]
        if all(part for part in rest.split(".")):
            return "debugContext.debugData." + rest
    raise FilterError(f"{name!r} cannot be used in a filter")


def parse_filter(text: str) -> Filter:
    """Parse a filter expression; raise FilterError (with the Okta error code) if it is invalid."""
    if len(text) > MAX_FILTER_LENGTH:
        raise FilterError(f"the filter is longer than {MAX_FILTER_LENGTH} characters")
    return _Parser(text).parse()


def _values(event: Any, parts: list[str]) -> list[Any]:
    current = [event]
    for part in parts:
        found: list[Any] = []
        for item in current:
            if isinstance(item, Mapping):
                child = item.get(part)
                if isinstance(child, list):
                    found.extend(child)
                elif child is not None or part in item:
                    found.append(child)
            elif isinstance(item, list):
                for element in item:
                    if isinstance(element, Mapping) and part in element:
                        found.append(element[part])
        current = found
    flat: list[Any] = []
    for item in current:
        if isinstance(item, list):
            flat.extend(item)
        else:
            flat.append(item)
    return flat


def _ordered(actual: Any, expected: Any) -> bool:
    """Both strings, or both numbers (booleans are neither)."""
    if isinstance(actual, str) and isinstance(expected, str):
        return True
    numbers = (int, float)
    return (isinstance(actual, numbers) and isinstance(expected, numbers)
            and not isinstance(actual, bool) and not isinstance(expected, bool))


def _compare(actual: Any, op: str, expected: str | int | float | bool | None) -> bool:
    if op == "eq":
        return _same(actual, expected)
    if op in ("co", "sw", "ew"):
        if not isinstance(actual, str) or not isinstance(expected, str):
            return False
        if op == "co":
            return expected in actual
        return actual.startswith(expected) if op == "sw" else actual.endswith(expected)
    if not _ordered(actual, expected):
        return False
    if op == "gt":
        return bool(actual > expected)
    if op == "ge":
        return bool(actual >= expected)
    if op == "lt":
        return bool(actual < expected)
    return bool(op == "le" and actual <= expected)


def _same(actual: Any, expected: str | int | float | bool | None) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool):
        return actual is expected
    return bool(actual == expected)


def matches(node: Filter, event: Mapping[str, Any]) -> bool:
    """Whether a LogEvent satisfies the filter."""
    if isinstance(node, And):
        return matches(node.left, event) and matches(node.right, event)
    if isinstance(node, Or):
        return matches(node.left, event) or matches(node.right, event)
    if isinstance(node, Not):
        return not matches(node.inner, event)
    values = _values(event, node.path.split("."))
    if isinstance(node, Present):
        return any(v not in (None, "", [], {}) for v in values)
    if node.op == "ne":
        # "ne" on a multi-valued attribute: no value equals (the complement of eq).
        return not any(_same(v, node.value) for v in values)
    if not values:
        return node.op == "eq" and node.value is None
    return any(_compare(v, node.op, node.value) for v in values)


__all__ = ["ATTRIBUTES", "And", "Compare", "Filter", "FilterError", "Not", "Or", "Present", "attribute_path",
           "matches", "parse_filter"]
