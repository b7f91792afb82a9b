"""The policy condition grammar, parsed by hand so a spec can never run code.

Grammar (``for N windows`` binds to the comparison before it)::

    expr       := and_expr ("or" and_expr)*
    and_expr   := atom ("and" atom)*
    atom       := "(" expr ")" | comparison
    comparison := METRIC OP operand ["for" INT ("window" | "windows")]
    operand    := NUMBER | METRIC [("+" | "-") NUMBER]
    OP         := "<" | "<=" | ">" | ">=" | "==" | "!="

A per-class metric names its class after ``.class=`` (``recall.class=virus < 0.8``); a
class whose label has spaces or operators cannot be named in a condition. A metric on the
right compares two figures of the same window, such as two arms of a rollout
(``canary.recall >= champion.recall - 0.01 for 2 windows``); the sign needs spaces around
it, since a name may hold a dash.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

_TOKEN = re.compile(
    r"\s*(?:(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?%?)"
    r"|(?P<op><=|>=|==|!=|<|>)"
    r"|(?P<sign>[-+])"
    r"|(?P<paren>[()])"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_.\-]*(?:(?<=\.class)=[A-Za-z0-9_.\-]+)?))"
)
_KEYWORDS = {"and", "or", "for", "window", "windows"}


class PolicySyntaxError(ValueError):
    """A condition that does not parse; ``column`` is 1-based within the condition text."""

    def __init__(self, message: str, column: int) -> None:
        super().__init__(f"{message} (column {column})")
        self.column = column


@dataclass(frozen=True)
class Comparison:
    """``metric OP value``, or with ``other``: ``metric OP other + value`` (an offset)."""

    metric: str
    op: str
    value: float
    windows: int = 1
    other: str | None = None


@dataclass(frozen=True)
class BoolOp:
    op: str  # "and" | "or"
    left: Condition
    right: Condition


Condition = Comparison | BoolOp


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    col: int


def _tokenize(text: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            col = pos + len(text[pos:]) - len(text[pos:].lstrip()) + 1
            raise PolicySyntaxError(f"unexpected character {text[col - 1]!r}", col)
        kind = m.lastgroup or ""
        start = m.start(kind)
        tokens.append(_Tok(kind, m.group(kind), start + 1))
        pos = m.end()
    tokens.append(_Tok("end", "", len(text) + 1))
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.i = 0

    def peek(self) -> _Tok:
        return self.tokens[self.i]

    def take(self) -> _Tok:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def is_word(self, word: str) -> bool:
        tok = self.peek()
        return tok.kind == "name" and tok.text.lower() == word

    def expr(self) -> Condition:
        node = self.and_expr()
        while self.is_word("or"):
            self.take()
            node = BoolOp("or", node, self.and_expr())
        return node

    def and_expr(self) -> Condition:
        node = self.atom()
        while self.is_word("and"):
            self.take()
            node = BoolOp("and", node, self.atom())
        return node

    def atom(self) -> Condition:
        tok = self.peek()
        if tok.kind == "paren" and tok.text == "(":
            self.take()
            node = self.expr()
            close = self.take()
            if not (close.kind == "paren" and close.text == ")"):
                raise PolicySyntaxError(f"expected ')' but found {_show(close)}", close.col)
            return node
        return self.comparison()

    def comparison(self) -> Comparison:
        name = self.take()
        if name.kind != "name" or name.text.lower() in _KEYWORDS:
            raise PolicySyntaxError(f"expected a metric name but found {_show(name)}", name.col)
        op = self.take()
        if op.kind != "op":
            raise PolicySyntaxError(
                f"expected a comparison (<, <=, >, >=, ==, !=) after {name.text!r} "
                f"but found {_show(op)}",
                op.col,
            )
        other, value = self.operand()
        windows = 1
        if self.is_word("for"):
            self.take()
            count = self.take()
            if count.kind != "num" or not count.text.isdigit() or int(count.text) < 1:
                raise PolicySyntaxError(
                    f"expected a whole number of windows after 'for' but found {_show(count)}",
                    count.col,
                )
            unit = self.take()
            if not (unit.kind == "name" and unit.text.lower() in {"window", "windows"}):
                raise PolicySyntaxError(f"expected 'windows' but found {_show(unit)}", unit.col)
            windows = int(count.text)
        return Comparison(name.text, op.text, value, windows, other)

    def operand(self) -> tuple[str | None, float]:
        """A number, or a metric with an optional signed offset: (metric or None, number)."""
        tok = self.take()
        if tok.kind == "num":
            return None, _number(tok.text)
        if tok.kind != "name" or tok.text.lower() in _KEYWORDS:
            raise PolicySyntaxError(
                f"expected a number or a metric name but found {_show(tok)}", tok.col
            )
        after = self.peek()
        if after.kind == "sign":
            self.take()
            num = self.take()
            if num.kind != "num" or num.text[0] in "+-":
                raise PolicySyntaxError(
                    f"expected a number after {after.text!r} but found {_show(num)}", num.col
                )
            return tok.text, _number(num.text) * (-1 if after.text == "-" else 1)
        if after.kind == "num" and after.text[0] in "+-":  # "champion.recall -0.01"
            self.take()
            return tok.text, _number(after.text)
        return tok.text, 0.0


def _number(text: str) -> float:
    return float(text.rstrip("%")) / (100 if text.endswith("%") else 1)


def _show(tok: _Tok) -> str:
    return "the end of the condition" if tok.kind == "end" else repr(tok.text)


def parse(text: str) -> Condition:
    """Parse a condition such as ``accuracy <= 0.70 for 3 windows and churn_rate >= 0.10``."""
    parser = _Parser(text)
    if parser.peek().kind == "end":
        raise PolicySyntaxError("the condition is empty", 1)
    node = parser.expr()
    rest = parser.peek()
    if rest.kind != "end":
        raise PolicySyntaxError(
            f"expected 'and', 'or' or the end but found {_show(rest)}", rest.col
        )
    return node


def metrics_of(condition: Condition) -> list[str]:
    """The metric names a condition reads, in order of appearance."""
    if isinstance(condition, Comparison):
        return [condition.metric] + ([condition.other] if condition.other else [])
    return metrics_of(condition.left) + metrics_of(condition.right)


def windows_needed(condition: Condition) -> int:
    """How many of the latest windows the condition looks at."""
    if isinstance(condition, Comparison):
        return condition.windows
    return max(windows_needed(condition.left), windows_needed(condition.right))


_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}


@dataclass
class Verdict:
    """Three-valued: ``True``, ``False`` or ``None`` (unknown: a figure is missing).

    ``values`` holds, per metric, the figures of the windows that decided it (oldest
    first, ``None`` where missing), so that each evaluation can be stored and audited.
    """

    outcome: bool | None
    values: dict[str, list[float | None]]


def _figure(window: Mapping[str, float], metric: str) -> float | None:
    value = window.get(metric)
    if value is None or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


def _comparison(
    c: Comparison, windows: Sequence[Mapping[str, float]]
) -> tuple[bool | None, list[float | None], list[float | None]]:
    recent = list(windows[-c.windows :])
    figures = [_figure(w, c.metric) for w in recent]
    if c.other is None:
        bounds: list[float | None] = [c.value] * len(recent)
        others: list[float | None] = []
    else:
        others = [_figure(w, c.other) for w in recent]
        bounds = [None if o is None else o + c.value for o in others]
    checks = [
        None if f is None or b is None else _OPS[c.op](f, b)
        for f, b in zip(figures, bounds, strict=True)
    ]
    if any(check is False for check in checks):
        return False, figures, others
    if len(recent) < c.windows or any(check is None for check in checks):
        # not enough consecutive windows (yet), or a figure missing
        return None, figures, others
    return True, figures, others


def evaluate(condition: Condition, windows: Sequence[Mapping[str, float]]) -> Verdict:
    """Evaluate over metric windows, oldest first; a missing figure is unknown, never false.

    ``and`` / ``or`` follow Kleene's logic: ``False and unknown`` is false, ``True or
    unknown`` is true, anything else with an unknown is unknown.
    """
    values: dict[str, list[float | None]] = {}

    def walk(node: Condition) -> bool | None:
        if isinstance(node, Comparison):
            outcome, figures, others = _comparison(node, windows)
            values[node.metric] = figures
            if node.other is not None:
                values[node.other] = others
            return outcome
        left, right = walk(node.left), walk(node.right)
        if node.op == "and":
            if left is False or right is False:
                return False
            return None if left is None or right is None else True
        if left is True or right is True:
            return True
        return None if left is None or right is None else False

    return Verdict(walk(condition), values)
