"""Coordinate systems of hyperparameters built from monomial invariants.

A tuning coordinate system is an invertible linear map between the base logs of the
hyperparameters (log λ, log(1−ρ), log α) and the logs of the new coordinates: some invariants
(tuner.monomials), completed by free base coordinates. Holding an invariant fixed while another
coordinate moves is then exact, not approximate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from fractions import Fraction

from ridgeline.tuner.monomials import InvariantError, Monomial, Space, inverse, rank

__all__ = ["SGD_SPACE", "CoordinateSystem", "paper_system", "raw_system"]

SGD_SPACE = Space(("lr", "momentum", "weight_decay"), complement=("momentum",))


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
        if rank(rows) < len(rows):
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
        self._inverse = [[float(v) for v in r] for r in inverse([m.exponents for m in monomials])]

    def _choose_free(self, rows: list[tuple[Fraction, ...]]) -> list[str]:
        chosen: list[str] = []
        for name in reversed(self.space.names):
            candidate = [*rows, *(self._unit(n) for n in chosen), self._unit(name)]
            if rank(candidate) == len(candidate):
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
        if len(free) != need or rank(all_rows) < len(all_rows):
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
