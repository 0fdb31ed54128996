"""Monomial invariants of hyperparameters, and the coordinate systems they define.

Page's observation is that the test accuracy of a BatchNorm ResNet barely changes along some
*products* of hyperparameters (λ/(1−ρ) and λα at fixed λα/(1−ρ), λ/N, ...). Products become sums
after taking logs, so every such invariant is a row of exponents over *base log-coordinates*
— log λ, log(1−ρ), log α, log N — and a tuning coordinate system is an invertible linear map
between those base logs and the logs of the new coordinates. Holding an invariant fixed while
another coordinate moves is then exact, not approximate.

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

__all__ = [
    "DEFAULT_KEEP",
    "PAPER_SPACE",
    "SGD_SPACE",
    "CoordinateSystem",
    "InvariantError",
    "Monomial",
    "Space",
    "paper_system",
    "describe_transfer",
    "keepable",
    "raw_system",
    "transfer",
]


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


SGD_SPACE = Space(("lr", "momentum", "weight_decay"), complement=("momentum",))
PAPER_SPACE = Space(("lr", "momentum", "weight_decay", "batch_size"), complement=("momentum",))


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


def _rank(rows: Sequence[Sequence[Fraction]]) -> int:
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


def _inverse(rows: Sequence[Sequence[Fraction]]) -> list[list[Fraction]]:
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


class CoordinateSystem:
    """Invariants plus free base coordinates, forming a basis of the log base coordinates.

    Coordinates are ordered invariants first (as given), then the free ones in declaration
    order — the paper's tuning order u, 1−ρ, α. When ``free`` is None it is completed
    automatically from the *last* declared parameters backwards, so the first declared one
    (``lr``) is the one that gets derived, as in the paper.
    """

    def __init__(
        self, space: Space, invariants: Sequence[str] = (), free: Sequence[str] | None = None
    ) -> None:
        self.space = space
        monomials = [space.parse(e) for e in invariants]
        rows = [m.exponents for m in monomials]
        if _rank(rows) < len(rows):
            raise InvariantError(
                f"invariants {[m.expr for m in monomials]} are not linearly independent: "
                "one is a product of powers of the others; drop it"
            )
        free_names = self._choose_free(rows) if free is None else self._check_free(rows, free)
        monomials += [space.parse(f"(1-{n})" if n in space.complement else n) for n in free_names]
        self.names = tuple(m.expr for m in monomials[: len(rows)]) + tuple(
            space.base_name(n) for n in free_names
        )
        self._monomials = dict(zip(self.names, monomials, strict=True))
        self._bare = {n: m.bare_index() for n, m in self._monomials.items()}
        self._inverse = [[float(v) for v in r] for r in _inverse([m.exponents for m in monomials])]

    def _choose_free(self, rows: list[tuple[Fraction, ...]]) -> list[str]:
        chosen: list[str] = []
        for name in reversed(self.space.names):
            candidate = [*rows, *(self._unit(n) for n in chosen), self._unit(name)]
            if _rank(candidate) == len(candidate):
                chosen.append(name)
        return [n for n in self.space.names if n in chosen]

    def _check_free(self, rows: list[tuple[Fraction, ...]], free: Sequence[str]) -> list[str]:
        unknown = [n for n in free if n not in self.space.names]
        if unknown:
            raise InvariantError(
                f"free coordinates {unknown} are not declared; choose from {list(self.space.names)}"
            )
        need = len(self.space.names) - len(rows)
        all_rows = rows + [self._unit(n) for n in free]
        if len(free) != need or _rank(all_rows) < len(all_rows):
            raise InvariantError(
                f"free coordinates {list(free)} do not complete the invariants to a basis: "
                f"give {need} parameter(s) that the invariants do not already determine"
            )
        return list(free)

    def _unit(self, name: str) -> tuple[Fraction, ...]:
        return tuple(Fraction(int(n == name)) for n in self.space.names)

    def exponents(self, name: str) -> dict[str, Fraction]:
        """The exponent of each base coordinate in coordinate ``name`` (for display and tests)."""
        m = self._monomial(name)
        names = self.space.names
        return {self.space.base_name(n): e for n, e in zip(names, m.exponents, strict=True)}

    def _monomial(self, name: str) -> Monomial:
        try:
            return self._monomials[name]
        except KeyError:
            raise InvariantError(
                f"unknown coordinate {name!r}; this system has {list(self.names)}"
            ) from None

    def to_coords(self, point: Mapping[str, float]) -> dict[str, float]:
        """The new coordinates of a raw point (extra keys in ``point`` are ignored)."""
        base = self.space.base_values(point)
        logs = [math.log(b) for b in base]
        return {
            n: math.exp(m.log_value(logs)) if self._bare[n] is None else base[self._bare[n]]
            for n, m in self._monomials.items()
        }

    def from_coords(self, coords: Mapping[str, float]) -> dict[str, float]:
        """The raw hyperparameters with these coordinates (inverse of :meth:`to_coords`)."""
        missing = [n for n in self.names if n not in coords]
        if missing:
            raise InvariantError(f"coordinates {missing} are missing; need {list(self.names)}")
        shifted = [math.log(coords[n]) - math.log(m.constant) for n, m in self._monomials.items()]
        logs = [math.fsum(a * s for a, s in zip(r, shifted, strict=True)) for r in self._inverse]
        base = [math.exp(v) for v in logs]
        for name, index in self._bare.items():
            if index is not None:
                base[index] = coords[name]
        return self.space.point_from_base(base)

    def move(self, point: Mapping[str, float], name: str, factor: float) -> dict:
        """Multiply coordinate ``name`` by ``factor`` keeping every other coordinate fixed.

        Keys of ``point`` outside the space (batch_size, epochs, ...) are carried over.
        """
        self._monomial(name)
        coords = self.to_coords(point)
        coords[name] *= factor
        return {**point, **self.from_coords(coords)}


def paper_system() -> CoordinateSystem:
    """Page's tuning coordinates: u = λα/(1−ρ), then 1−ρ, then α; λ is derived."""
    return CoordinateSystem(
        SGD_SPACE, ["lr*weight_decay/(1-momentum)"], free=["momentum", "weight_decay"]
    )


def raw_system() -> CoordinateSystem:
    """The baseline: coordinate descent directly in (λ, 1−ρ, α)."""
    return CoordinateSystem(SGD_SPACE, [], free=["lr", "momentum", "weight_decay"])


def transfer(
    point: Mapping[str, float],
    change: Mapping[str, float],
    keep: Sequence[str],
    space: Space = PAPER_SPACE,
) -> tuple[dict, list[str]]:
    """Apply ``change`` and re-derive other parameters so each invariant in ``keep`` is unchanged.

    Rule: the changed parameters and kept invariants are pinned; every other parameter is held
    at its old value, choosing held ones from the *end* of the declaration order (batch_size,
    weight_decay, momentum, lr) and skipping those the pins already determine. What remains — the
    earliest declared, so ``lr`` unless it is itself changed — is adjusted. Returns the new point
    and one reason per changed value. A derived batch_size is left as a float (round it yourself).
    """
    unknown = [k for k in change if k not in space.names]
    if unknown:
        raise InvariantError(f"cannot change {unknown}: declared are {list(space.names)}")
    pins = [*keep, *(f"(1-{k})" if k in space.complement else k for k in change)]
    try:
        system = CoordinateSystem(space, pins)
    except InvariantError as err:
        if "not linearly independent" not in str(err):
            raise
        raise InvariantError(
            f"change {dict(change)} with keep {list(keep)} over-determines the setting: "
            "some kept invariant cannot stay fixed; keep fewer invariants or change fewer values"
        ) from None
    old, moved = system.to_coords(point), system.to_coords({**point, **change})
    coords = {**moved, **{name: old[name] for name in system.names[: len(keep)]}}
    new = {**point, **system.from_coords(coords), **change}
    return new, _reasons(space, point, new, change, keep)


def _reasons(
    space: Space, old: Mapping, new: Mapping, change: Mapping, keep: Sequence[str]
) -> list[str]:
    """One line per changed value: requested, or which kept invariants forced it."""
    requested = ", ".join(f"{k} {_fmt(old[k])} → {_fmt(v)}" for k, v in change.items())
    old_logs = space.base_logs(old)
    lines = []
    for i, name in enumerate(space.names):
        arrow = f"{name} {_fmt(old[name])} → {_fmt(new[name])}"
        if name in change:
            lines.append(f"{arrow}: requested")
        elif not math.isclose(old[name], new[name], rel_tol=1e-12):
            held = [m for m in map(space.parse, keep) if m.exponents[i]]
            why = ", ".join(f"{m.expr} = {math.exp(m.log_value(old_logs)):.2e}" for m in held)
            lines.append(f"{arrow}: keeps {why} as {requested}")
    return lines


def _fmt(x: float) -> str:
    return f"{x:.4g}"


# The paper's three ridges, λ/N, λ/(1−ρ) and λα, are each a flat direction of its own slice
# (the other two parameters fixed). In log coordinates they span the moves that keep this one
# monomial fixed, so keeping it moves along the ridge of whatever changes: λ ∝ N for a batch
# size, λ ∝ 1−ρ for a momentum, λ ∝ 1/α for a weight decay (and 1−ρ ∝ λ for a learning rate).
# Keeping all three ridges' invariants at once would instead move off them (docs/tuner.md).
DEFAULT_KEEP = ("lr*weight_decay/((1-momentum)*batch_size)",)
RIDGES = ("lr/batch_size", "lr/(1-momentum)", "lr*weight_decay")


def keepable(
    change: Mapping[str, float], candidates: Sequence[str] = DEFAULT_KEEP,
    space: Space = PAPER_SPACE,
) -> tuple[list[str], list[str]]:
    """The candidates that can all stay fixed while ``change`` is applied (taken greedily in
    order), and those the change over-determines, e.g. lr/batch_size when both move."""
    pins = [space.parse(f"(1-{k})" if k in space.complement else k).exponents for k in change]
    kept, dropped = [], []
    for expr in candidates:
        rows = [*pins, *(space.parse(e).exponents for e in kept), space.parse(expr).exponents]
        (kept if _rank(rows) == len(rows) else dropped).append(expr)
    return kept, dropped


def describe_transfer(
    point: Mapping[str, float], change: Mapping[str, float], keep: Sequence[str] | None = None,
    space: Space = PAPER_SPACE,
) -> list[str]:
    """`ridgeline transfer`'s answer: the old and new settings, the kept invariants, one
    reason per changed value, and which default invariants could not be kept and why.

    ``keep=None`` keeps every one of DEFAULT_KEEP that the change leaves room for.
    """
    dropped: list[str] = []
    if keep is None:
        keep, dropped = keepable(change, DEFAULT_KEEP, space)
    new, reasons = transfer(point, change, keep, space)
    lines = [f"from  {_setting(space, point)}", f"keep  {', '.join(keep) or 'nothing'}",
             f"to    {_setting(space, new)}", *(f"  {r}" for r in reasons)]
    old_logs, new_logs = space.base_logs(point), space.base_logs(new)
    same = [f"{m.expr} = {math.exp(m.log_value(old_logs)):.2e}" for m in map(space.parse, RIDGES)
            if m.expr not in keep
            and math.isclose(m.log_value(old_logs), m.log_value(new_logs), abs_tol=1e-12)]
    if same:
        lines.append(f"also unchanged (the paper's ridges): {', '.join(same)}")
    if dropped:
        lines.append(f"not kept: {', '.join(dropped)} (the changed values alone fix it)")
    if "batch_size" in new and not math.isclose(new["batch_size"], round(new["batch_size"])):
        lines.append(f"batch_size {_fmt(new['batch_size'])} is not an integer: round it to "
                     f"{max(1, round(new['batch_size']))} (the invariants with batch_size then "
                     f"hold to that rounding)")
    return lines


def _setting(space: Space, point: Mapping[str, float]) -> str:
    return " ".join(f"{n}={_fmt(point[n])}" for n in space.names if n in point)

