"""Calico's label selector language (libcalico-go's selector parser), over any label map.

    all()   global()   has(k)   !has(k)   k == 'v'   k != 'v'   k in {'a', 'b'}   k not in {'a'}
    k contains 's'   k starts with 's'   k ends with 's'   a && b   a || b   !a   ( ... )

The empty selector means all(). As in Calico, `k != 'v'` and `k not in {...}` also match when the
label is absent; `contains`, `starts with` and `ends with` need the label. `global()` matches every
label map; where it is a namespaceSelector it means "no namespace" (see `Selector.is_global`).

`parse(text)` returns a Selector whose `matches(labels)` answers for one label map; a syntax error is
a ValidationError that names the field and points at the offending position.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Callable

from podnet.model.errors import ValidationError

_TOKEN = re.compile(r"""
    \s*(?:
      (?P<all>all\(\s*\))
    | (?P<global>global\(\s*\))
    | (?P<has>has\(\s*(?P<has_key>[A-Za-z0-9_./-]+)\s*\))
    | (?P<op>==|!=|&&|\|\||!|\(|\)|\{|\}|,)
    | (?P<notin>not\s+in\b)
    | (?P<in>in\b)
    | (?P<contains>contains\b)
    | (?P<starts>starts\s+with\b)
    | (?P<ends>ends\s+with\b)
    | (?P<str>'[^']*'|"[^"]*")
    | (?P<key>[A-Za-z0-9_][A-Za-z0-9_./-]*)
    )""", re.VERBOSE)


@dataclass(frozen=True)
class Selector:
    text: str
    _match: Callable[[dict], bool] = field(compare=False, repr=False)
    is_all: bool = False  # all(), global() or empty: matches everything
    is_global: bool = False  # exactly global()

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
        start = m.start(kind)
        if kind == "has":
            out.append(("has", m.group("has_key"), start))
        elif kind == "op":
            out.append((m.group("op"), m.group("op"), start))
        elif kind == "str":
            out.append(("str", m.group("str")[1:-1], start))
        else:
            out.append((kind, m.group(kind), start))
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
        terms = [self.and_expr()]
        while self.peek() == "||":
            self.i += 1
            terms.append(self.and_expr())
        if len(terms) == 1:
            return terms[0]
        return lambda labels: any(t(labels) for t in terms)

    def and_expr(self):
        terms = [self.unary()]
        while self.peek() == "&&":
            self.i += 1
            terms.append(self.unary())
        if len(terms) == 1:
            return terms[0]
        return lambda labels: all(t(labels) for t in terms)

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
        if kind in ("all", "global"):
            self.i += 1
            return lambda labels: True
        if kind == "has":
            key = self.take("has")
            return lambda labels: key in labels
        if kind != "key":
            self.fail("expected a label, has(), all(), global(), '!' or '('")
        key = self.take("key")
        op = self.peek()
        if op in ("==", "!=", "contains", "starts", "ends"):
            self.i += 1
            value = self.take("str")
            if op == "==":
                return lambda labels: labels.get(key) == value
            if op == "!=":
                return lambda labels: labels.get(key) != value
            if op == "contains":
                return lambda labels: key in labels and value in labels[key]
            if op == "starts":
                return lambda labels: key in labels and labels[key].startswith(value)
            return lambda labels: key in labels and labels[key].endswith(value)
        if op in ("in", "notin"):
            self.i += 1
            values = self.value_set()
            if op == "in":
                return lambda labels: labels.get(key) in values
            return lambda labels: labels.get(key) not in values
        self.fail(f"expected ==, !=, in, not in, contains, starts with or ends with after {key!r}")

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


@functools.lru_cache(maxsize=8192)
def _compile(text: str, field: str) -> Selector:
    stripped = text.strip()
    if not stripped:
        return Selector(text, lambda labels: True, is_all=True)
    match = _Parser(text, field).parse()
    simple = re.sub(r"\s+", "", stripped)
    return Selector(text, match, is_all=simple in ("all()", "global()"), is_global=simple == "global()")


def parse(text: str, field: str = "spec.nodeSelector") -> Selector:
    """The selector `text` means; the empty selector is all(). Parsed once per (text, field)."""
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise ValidationError(field, f"must be a selector string such as all(), not {text!r}")
    return _compile(text, field)


def quote(value: str) -> str:
    """`value` as a selector literal (Calico accepts either quote)."""
    return f'"{value}"' if "'" in value else f"'{value}'"
