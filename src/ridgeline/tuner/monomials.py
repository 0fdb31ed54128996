"""Monomials of hyperparameters as exponent vectors over base log-coordinates, exactly.

Page's observation is that the test accuracy of a BatchNorm ResNet barely changes along some
*products* of hyperparameters (λ/(1−ρ) and λα at fixed λα/(1−ρ), λ/N, ...). Products become sums
after taking logs, so every such monomial is a row of exponents over *base log-coordinates*
— log λ, log(1−ρ), log α, log N. This module parses a monomial expression over a declared
``Space`` into that row, and does the rational linear algebra (rank, inverse) on rows that
tuner.invariants' coordinate systems and tuner.transfer need.

A parameter declared in ``Space(complement=...)`` enters only as ``(1-name)``: momentum lives in
[0, 1) and what matters near 1 is the distance ``1-momentum`` (0.9 → 0.99 is a 10× change).

Exponents are kept as exact fractions so the independence (rank) check has no tolerance to tune.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

from ridgeline.errors import RidgelineError

__all__ = ["InvariantError", "Monomial", "Space", "inverse", "rank"]


class InvariantError(RidgelineError, ValueError):
    """A malformed invariant, an unknown name, or a set of coordinates that is not a basis."""


@dataclass(frozen=True, init=False)
class Space:
    """The declared hyperparameters: each positive and log-scaled, or ``1-x`` of one in [0, 1)."""

    names: tuple[str, ...]
    complement: frozenset[str]

    def __init__(self, names: Sequence[str], complement: Sequence[str] = ()) -> None:
        object.__setattr__(self, "names", tuple(names))
        object.__setattr__(self, "complement", frozenset(complement))
        if len(set(self.names)) != len(self.names):
            raise InvariantError(f"duplicate hyperparameter names in {list(self.names)}")
        stray = sorted(self.complement - set(self.names))
        if stray:
            raise InvariantError(f"complement names {stray} are not among {list(self.names)}")

    def base_name(self, name: str) -> str:
        """The name of the base coordinate of one hyperparameter: ``momentum`` → ``1-momentum``."""
        return f"1-{name}" if name in self.complement else name

    def base_values(self, point: Mapping[str, float]) -> list[float]:
        """Base coordinates of a point (``1-x`` for complemented names), checked positive."""
        values = []
        for name in self.names:
            if name not in point:
                raise InvariantError(f"the point has no {name!r}; it needs {list(self.names)}")
            base = 1 - point[name] if name in self.complement else point[name]
            if not (base > 0 and math.isfinite(base)):
                allowed = "finite and < 1" if name in self.complement else "a finite number > 0"
                raise InvariantError(f"{name}={point[name]!r} is not allowed: it must be {allowed}")
            values.append(base)
        return values

    def base_logs(self, point: Mapping[str, float]) -> list[float]:
        return [math.log(b) for b in self.base_values(point)]

    def point_from_base(self, values: Sequence[float]) -> dict[str, float]:
        """Raw hyperparameters from base coordinates (inverse of :meth:`base_values`)."""
        return {
            name: (1 - v) if name in self.complement else v
            for name, v in zip(self.names, values, strict=True)
        }

    def parse(self, expr: str) -> Monomial:
        """Parse a monomial such as ``"lr*weight_decay/(1-momentum)"`` into exponents."""
        try:
            tree = ast.parse(expr.strip(), mode="eval").body
        except SyntaxError:
            raise InvariantError(f"invariant {expr!r} is not a valid expression") from None
        exponents, constant = _Parser(self, expr).monomial(tree)
        return Monomial("".join(expr.split()), tuple(exponents), constant)


@dataclass(frozen=True)
class Monomial:
    """``constant * prod(base_i ** exponents[i])``: a straight line in log base coordinates."""

    expr: str
    exponents: tuple[Fraction, ...]
    constant: float = 1.0

    def bare_index(self) -> int | None:
        """The base coordinate this monomial *is* (exponent 1, constant 1), if any.

        Such coordinates are copied rather than sent through log/exp, so a parameter that a
        move does not touch comes back bit-for-bit unchanged.
        """
        nonzero = [i for i, e in enumerate(self.exponents) if e]
        if self.constant == 1 and len(nonzero) == 1 and self.exponents[nonzero[0]] == 1:
            return nonzero[0]
        return None

    def log_value(self, base_logs: Sequence[float]) -> float:
        terms = [float(e) * v for e, v in zip(self.exponents, base_logs, strict=True) if e]
        return math.log(self.constant) + math.fsum(terms)


class _Parser:
    """Walks a Python AST, accepting only products, quotients and numeric powers of atoms."""

    def __init__(self, space: Space, expr: str) -> None:
        self.space, self.expr = space, expr

    def fail(self, node: ast.AST, why: str) -> InvariantError:
        atoms = ", ".join(
            f"({self.space.base_name(n)})" if n in self.space.complement else n
            for n in self.space.names
        )
        return InvariantError(
            f"invariant {self.expr!r}: {ast.unparse(node)!r} {why}; allowed: *, /, ** with "
            f"numeric exponents, positive numbers, parentheses and {atoms}"
        )

    def monomial(self, node: ast.AST) -> tuple[list[Fraction], float]:
        number = _number(node)
        if number is not None:
            if not number > 0:
                raise self.fail(node, "is not a positive factor")
            return [Fraction(0)] * len(self.space.names), float(number)
        if isinstance(node, ast.Name):
            return self.atom(node, node.id, complemented=False)
        if isinstance(node, ast.BinOp):
            return self.binop(node)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd):
            return self.monomial(node.operand)
        raise self.fail(node, "is not a monomial")

    def binop(self, node: ast.BinOp) -> tuple[list[Fraction], float]:
        if isinstance(node.op, ast.Sub) and _number(node.left) == 1:
            if isinstance(node.right, ast.Name):
                return self.atom(node, node.right.id, complemented=True)
            raise self.fail(node, "is a difference, not a monomial")
        if isinstance(node.op, ast.Pow):
            power = _number(node.right)
            if power is None:
                raise self.fail(node.right, "is not a numeric exponent")
            exps, const = self.monomial(node.left)
            return [e * power for e in exps], const ** float(power)
        if isinstance(node.op, (ast.Mult, ast.Div)):
            sign = 1 if isinstance(node.op, ast.Mult) else -1
            (le, lc), (re, rc) = self.monomial(node.left), self.monomial(node.right)
            return [a + sign * b for a, b in zip(le, re, strict=True)], lc * rc**sign
        raise self.fail(node, "is not a product, quotient or power")

    def atom(self, node: ast.AST, name: str, complemented: bool) -> tuple[list[Fraction], float]:
        space = self.space
        if name not in space.names:
            declared = ", ".join(space.names)
            raise InvariantError(
                f"invariant {self.expr!r}: unknown name {name!r}; declared: {declared}"
            )
        if complemented != (name in space.complement):
            form = f"(1-{name})" if name in space.complement else name
            raise self.fail(node, f"is not how {name} enters: write {form}")
        exps = [Fraction(int(n == name)) for n in space.names]
        return exps, 1.0


def _number(node: ast.AST) -> Fraction | None:
    """The value of a purely numeric sub-expression (``2``, ``-1``, ``1/2``), else None."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = _number(node.operand)
        if inner is None:
            return None
        return -inner if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.BinOp):
        left, right = _number(node.left), _number(node.right)
        if left is None or right is None:
            return None
        ops = {ast.Add: left.__add__, ast.Sub: left.__sub__, ast.Mult: left.__mul__}
        if type(node.op) in ops:
            return ops[type(node.op)](right)
        if isinstance(node.op, ast.Div) and right != 0:
            return left / right
        if isinstance(node.op, ast.Pow) and right.denominator == 1 and (left or right >= 0):
            return left ** int(right)
    return None


def rank(rows: Sequence[Sequence[Fraction]]) -> int:
    """Exact rank by Gaussian elimination over the rationals."""
    m = [list(r) for r in rows]
    rank = 0
    for col in range(len(m[0]) if m else 0):
        pivot = next((i for i in range(rank, len(m)) if m[i][col]), None)
        if pivot is None:
            continue
        m[rank], m[pivot] = m[pivot], m[rank]
        for i in range(len(m)):
            if i != rank and m[i][col]:
                f = m[i][col] / m[rank][col]
                m[i] = [a - f * b for a, b in zip(m[i], m[rank], strict=True)]
        rank += 1
    return rank


def inverse(rows: Sequence[Sequence[Fraction]]) -> list[list[Fraction]]:
    """Exact inverse of a square rational matrix known to be invertible."""
    n = len(rows)
    m = [list(r) + [Fraction(int(i == j)) for j in range(n)] for i, r in enumerate(rows)]
    for col in range(n):
        pivot = next(i for i in range(col, n) if m[i][col])
        m[col], m[pivot] = m[pivot], m[col]
        m[col] = [v / m[col][col] for v in m[col]]
        for i in range(n):
            if i != col and m[i][col]:
                f = m[i][col]
                m[i] = [a - f * b for a, b in zip(m[i], m[col], strict=True)]
    return [row[n:] for row in m]
