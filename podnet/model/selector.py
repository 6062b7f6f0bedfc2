"""Calico's label selector syntax, over node labels.

    all()   has(k)   k == 'v'   k != 'v'   k in {'a', 'b'}   k not in {'a'}   !has(k)
    a && b   a || b   !a   ( ... )

`parse(text)` returns a Selector whose `matches(labels)` answers for one node;
a syntax error is a ValidationError that points at the offending position.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from podnet.model.errors import ValidationError

_TOKEN = re.compile(r"""
    \s*(?:
      (?P<all>all\(\s*\))
    | (?P<has>has\(\s*(?P<has_key>[A-Za-z0-9_./-]+)\s*\))
    | (?P<op>==|!=|&&|\|\||!|\(|\)|\{|\}|,)
    | (?P<notin>not\s+in\b)
    | (?P<in>in\b)
    | (?P<str>'[^']*'|"[^"]*")
    | (?P<key>[A-Za-z0-9_][A-Za-z0-9_./-]*)
    )""", re.VERBOSE)


@dataclass(frozen=True)
class Selector:
    text: str
    _match: Callable[[dict], bool]

    def matches(self, labels: dict) -> bool:
        return self._match(labels or {})

    def __str__(self) -> str:
        return self.text


def _tokens(text: str, field: str) -> list[tuple[str, str, int]]:
    out, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ValidationError(field, f"cannot parse selector {text!r} at position {pos}: {text[pos:pos + 12]!r}")
        kind = m.lastgroup if m.lastgroup != "has_key" else "has"
        if kind == "has":
            out.append(("has", m.group("has_key"), pos))
        elif kind == "op":
            out.append((m.group("op"), m.group("op"), pos))
        elif kind == "str":
            out.append(("str", m.group("str")[1:-1], pos))
        else:
            out.append((kind, m.group(kind), pos))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str, field: str):
        self.text, self.field = text, field
        self.toks = _tokens(text, field)
        self.i = 0

    def fail(self, what: str):
        pos = self.toks[self.i][2] if self.i < len(self.toks) else len(self.text)
        raise ValidationError(self.field, f"selector {self.text!r}: {what} at position {pos}")

    def peek(self):
        return self.toks[self.i][0] if self.i < len(self.toks) else None

    _WORDS = {"str": "a quoted value", "key": "a label name", "has": "has(label)"}

    def take(self, kind: str):
        if self.peek() != kind:
            self.fail(f"expected {self._WORDS.get(kind, repr(kind))}")
        tok = self.toks[self.i]
        self.i += 1
        return tok[1]

    def parse(self):
        expr = self.or_expr()
        if self.i != len(self.toks):
            self.fail("unexpected text")
        return expr

    def or_expr(self):
        left = self.and_expr()
        while self.peek() == "||":
            self.i += 1
            right = self.and_expr()
            left = (lambda a, b: lambda labels: a(labels) or b(labels))(left, right)
        return left

    def and_expr(self):
        left = self.unary()
        while self.peek() == "&&":
            self.i += 1
            right = self.unary()
            left = (lambda a, b: lambda labels: a(labels) and b(labels))(left, right)
        return left

    def unary(self):
        if self.peek() == "!":
            self.i += 1
            inner = self.unary()
            return lambda labels: not inner(labels)
        if self.peek() == "(":
            self.i += 1
            inner = self.or_expr()
            self.take(")")
            return inner
        return self.term()

    def term(self):
        kind = self.peek()
        if kind == "all":
            self.i += 1
            return lambda labels: True
        if kind == "has":
            key = self.take("has")
            return lambda labels: key in labels
        if kind != "key":
            self.fail("expected a label, has(), all(), '!' or '('")
        key = self.take("key")
        op = self.peek()
        if op in ("==", "!="):
            self.i += 1
            value = self.take("str")
            if op == "==":
                return lambda labels: labels.get(key) == value
            return lambda labels: labels.get(key) != value
        if op in ("in", "notin"):
            self.i += 1
            values = self.value_set()
            if op == "in":
                return lambda labels: labels.get(key) in values
            return lambda labels: labels.get(key) not in values
        self.fail(f"expected ==, !=, in or not in after {key!r}")

    def value_set(self) -> frozenset:
        self.take("{")
        values = set()
        if self.peek() != "}":
            values.add(self.take("str"))
            while self.peek() == ",":
                self.i += 1
                values.add(self.take("str"))
        self.take("}")
        return frozenset(values)


def parse(text: str, field: str = "spec.nodeSelector") -> Selector:
    if not isinstance(text, str) or not text.strip():
        raise ValidationError(field, "must be a selector such as all()")
    return Selector(text, _Parser(text, field).parse())
