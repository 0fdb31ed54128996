"""Page's tuner: cyclic coordinate descent with doubling/halving line searches.

The search walks a lattice: every point it can visit is the start multiplied by a power of two
along each coordinate of a :class:`~.invariants.CoordinateSystem`. Points are keyed by
their integer exponents and rebuilt from the start each time, so repeated ×2 and ÷2 never drift
and holding u = λα/(1−ρ) fixed is exact in the coordinates.

The search only asks for values, through ``need``; ``tuner.sampler.FlatDirectionSampler``
answers from the study's trials and proposes the first point no trial covers. The search is a
deterministic function of the values it sees, so re-running it against the same study *replays*
it: that is how the sampler keeps no state of its own, and why resumed and parallel studies make
the sequential search's decisions.

Line searches. ``"double"`` is the paper's: ×2, else ÷2, then the same step again while it
improves. ``"accelerate"`` doubles the step in log2 while it improves (×2, ×4, ×16, …) and then
brackets the best point between two worse ones and probes inside the bracket at the vertex of
the parabola through the three (or its middle); docs/tuner.md measures both.

The box. Bounds are on the raw parameters, but the search moves coordinates. A unit step (×2
or ÷2) whose point leaves the box only through a parameter the move does not aim at (λ derived
from u, 1−ρ and α) *slides*: the other free coordinates shift, by the fewest doublings, until
the point is inside, with the moved coordinate and every invariant kept (``place``). So λ's range
never blocks a move of u, which α or 1−ρ can make instead. Longer steps (the accelerating
search's ×4, ×16, …) and probes stay inside the box, where the bracket closes at no cost:
sliding them too cost 1–3 runs to target in docs/tuner.md's benchmark. A momentum-like parameter
at exactly 0 (1−ρ = 1, plain SGD: the end of its domain, which no further step can bracket) is
outside the box unless the start is there.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from ridgeline.errors import TuneError
from ridgeline.landscape.plots import parabola_vertex
from ridgeline.tuner.invariants import CoordinateSystem

__all__ = ["Context", "Run", "TuneResult"]

LOG_RANGE = (1e-30, 1e30)  # the range of a log-scaled parameter nobody bounded: never binding
COMPLEMENT_MAX = 1 - 1e-9  # momentum-like parameters lie in [0, 1 - 1e-9]
MAX_SLIDE = 8  # doublings the free coordinates may shift to bring a point into the box


@dataclass
class Context:
    """A point the search asks for: raw params, coordinates, and the step that led there."""

    params: dict
    coords: dict
    coordinate: str | None
    factor: float | None


@dataclass
class Run:
    """One point the search needed, numbered in the order the sequential search asked for it."""

    run: int
    params: dict
    coords: dict
    value: float  # mean over replicate seeds; -inf when any seed diverged
    diverged: bool
    coordinate: str | None  # None for the start point
    factor: float | None  # the step from the best point at the time: 2.0, 0.5, 4.0, ...
    values: tuple[float, ...]
    accepted: bool = False  # became the new best
    trials: tuple[int, ...] = field(default=(), compare=False)  # Optuna trial numbers
    replayed: bool = field(default=False, compare=False)


@dataclass
class TuneResult:
    best: dict
    best_value: float
    best_coords: dict
    history: list[Run]
    stopped: str  # "converged", "max_evals" or "unfinished"
    n_calls: int  # objective calls made by this process
    n_replayed: int  # runs answered from trials the study held before
    n_speculative: int  # trials run in parallel that the sequential search never needed
    study: object = field(default=None, compare=False, repr=False)  # where the trials are
    epochs: int = field(default=0, compare=False)  # epochs trained by the study's runs

    @property
    def n_runs(self) -> int:
        return len(self.history)


@dataclass(frozen=True)
class _Direction:
    """A line the search moves along: ``vector`` lattice steps per unit step. ``name`` is
    what a Run records; ``axis`` the coordinate it moves, for sliding (``place``), or None
    for a raw axis (one raw parameter at the others fixed), which never slides."""

    vector: tuple[int, ...]
    name: str
    axis: int | None

    def pos(self, key: tuple[int, ...]) -> int:
        """Where ``key`` lies along this line (its first moving coordinate, signed)."""
        i = next(i for i, v in enumerate(self.vector) if v)
        return key[i] * self.vector[i]


class _BudgetSpent(Exception):
    """Raised inside the search when it needs a new point after ``max_evals`` runs."""


class _Search:
    """The sequential algorithm. It only ever asks ``calls.need`` for values, in a fixed order.
    ``calls.need(key, ctx, number, level)`` returns an object whose ``calls`` are the point's
    first ``level`` replicates (``value``, ``diverged``, ``number``, ``replayed``)."""

    def __init__(self, system, start, order, max_evals, min_improvement, bounds, accelerate,
                 on_run, max_level: int = 1, recheck: str = "all", wide: bool = False,
                 min_level: int = 1, raw_axes: bool = False) -> None:
        self.system, self.accelerate, self.on_run = system, accelerate, on_run
        # Replicates per compared point: min_level, raised by one each time a cycle improves
        # nothing, up to max_level (= min_level: stop there, Page's rule; see cycle()); "all"
        # compared points get them, or only the incumbent ("best": a rival is topped up once
        # it wins).
        self.level, self.max_level, self.spent = min_level, max(max_level, min_level), 0
        self.recheck_all, self.wide = recheck == "all", wide
        self.fixed = {k: v for k, v in start.items() if k not in system.space.names}
        self.start = {k: v for k, v in start.items() if k in system.space.names}
        self.origin = system.to_coords(start)
        self.order = [_axis(system, system.names.index(_known(system, c)))
                      for c in (order or system.names)]
        self.raw = _raw_axes(system) if raw_axes else []
        self.max_evals, self.threshold = max_evals, min_improvement
        self.bounds = box(system, bounds or {})
        # Plain SGD (a momentum-like parameter at 0) is the domain's end: out, unless started at.
        self.no_zero = [n for n in system.space.complement if self.start.get(n) != 0]
        self.history: list[Run] = []
        self.runs: dict[tuple[int, ...], Run] = {}
        if not self.in_bounds(self.params(self.key0)):
            raise TuneError(f"the start point {dict(start)} is outside the bounds")
        self.placed: dict[tuple, tuple[int, ...] | None] = {}
        self.free = [i for i, n in enumerate(system.names) if n in
                     {system.space.base_name(b) for b in system.space.names}]

    @property
    def key0(self) -> tuple[int, ...]:
        return (0,) * len(self.system.names)

    def coords(self, key: tuple[int, ...]) -> dict[str, float]:
        return {n: self.origin[n] * 2.0**k for n, k in zip(self.system.names, key, strict=True)}

    def params(self, key: tuple[int, ...]) -> dict:
        if key == self.key0:  # the caller's numbers exactly, not a log/exp round trip of them
            return {**self.fixed, **self.start}
        return {**self.fixed, **self.system.from_coords(self.coords(key))}

    def in_bounds(self, params: Mapping) -> bool:
        return (all(lo <= params[n] <= hi for n, (lo, hi) in self.bounds.items())
                and all(params[n] != 0 for n in self.no_zero))

    def place(self, key: tuple[int, ...], c: _Direction) -> tuple[int, ...] | None:
        """``key`` if its point is in the box, else the nearest in-box key with the same
        coordinate ``c`` and invariants (the other free coordinates shifted by the fewest
        doublings, module docstring), else None."""
        if c.axis is None:  # a raw axis: no slide
            return key if self.in_bounds(self.params(key)) else None
        if (key, c.axis) not in self.placed:
            self.placed[key, c.axis] = self._slide(key, c.axis)
        return self.placed[key, c.axis]

    def _slide(self, key: tuple[int, ...], c: int) -> tuple[int, ...] | None:
        if self.in_bounds(self.params(key)):
            return key
        others = [i for i in self.free if i != c]
        for total in range(1, MAX_SLIDE + 1):
            for shift in itertools.product(range(-total, total + 1), repeat=len(others)):
                if sum(map(abs, shift)) != total:
                    continue
                moved = list(key)
                for i, d in zip(others, shift, strict=True):
                    moved[i] += d
                if self.in_bounds(self.params(tuple(moved))):
                    return tuple(moved)
        return None

    def run(self, calls) -> str:
        """Cycle through the coordinates until a full cycle improves nothing at max_level."""
        self.calls = calls
        try:
            self.best = self.key0
            first = self.need(self.best, None, None)
            first.accepted = True
            self.report(first)
            self.cycle(0)
            while self.level < self.max_level:
                self.level += 1
                self.need(self.best, None, None)
                self.cycle(0)
        except _BudgetSpent:
            return "max_evals"
        return "converged"

    def cycle(self, i: int) -> None:
        """Line searches in turn until a full cycle (rolling) improves nothing.

        With noise, a cycle that ends this way is often a lucky incumbent or an unlucky rival
        rather than an optimum; ``run`` then raises ``level`` and cycles again, so the same
        comparisons are redone on means over more seeds (the points already run only get the
        missing seeds). Before the first stop nothing changes, so a search that is on target
        early costs no more.
        """
        # Refining (level > 1), ``raw_axes`` adds the raw parameters' own axes (α at fixed λ
        # and ρ, ...): where the invariants are not flat (far from the weight-norm
        # equilibrium, e.g. a short run), the optimum may lie along one of them, which the
        # invariant coordinates reach only by moving two at once.
        lines = self.order + (self.raw if self.level > 1 else [])
        failures = 0
        while failures < len(lines):
            c = lines[i % len(lines)]
            improved = self.line_search(c)
            # After an improvement the coordinate counts as one failed search when both
            # lattice neighbours of the new best are known to lose (always so for
            # "double"; "accelerate" may stop refining before it knows both).
            failures = failures + 1 if not improved else int(self.at_line_optimum(c))
            i += 1

    def line_search(self, c: int) -> bool:
        """×2; if no better, ÷2; then, while it improves, the same step again ("double") or
        steps that double ("accelerate"). True if the best point moved."""
        # A direction whose first step needs no slide goes first: sliding costs a run where
        # the box used to reject for free, so it is tried only once the other side lost.
        plain = [d for d in (1, -1) if self.in_bounds(self.params(_step(self.best, c, d)))]
        for direction in plain + [d for d in (1, -1) if d not in plain]:
            if self.try_step(c, direction):
                if self.accelerate:
                    self.expand_and_refine(c, direction)
                else:
                    while self.try_step(c, direction):
                        pass
                return True
        # Refining (level > 1) on a shallow coordinate, one doubling may gain less than the
        # noise where two show it: also try ×4 and ÷4 before the coordinate counts as failed.
        for direction in (1, -1) if self.level > 1 and self.wide else ():
            if self.try_step(c, 2 * direction):
                if self.accelerate:
                    b = c.pos(self.best)
                    self.refine(c, b - 2 * direction, b + 2 * direction)
                return True
        return False

    def expand_and_refine(self, c: int, direction: int) -> None:
        """After a first step that improved: steps of 2, 4, 8, ... lattice points while they
        improve, then refine inside the bracket the failed step leaves.

        Far from the optimum (Page's bad start is 5-9 doublings of u away) this needs about
        log2 of the distance in runs instead of the distance itself, plus a probe or two.
        """
        step = 2
        while self.try_step(c, direction * step):
            step *= 2
        b = c.pos(self.best)
        self.refine(c, b - direction * step // 2, b + direction * step)

    def refine(self, c: int, end_a: int, end_b: int) -> None:
        """Probe inside the bracket (lo, hi) around the best until the probe is a known point.

        A probe that wins becomes the best and the old best bounds its side; one that loses
        bounds its own side. Each probe narrows the bracket, so this ends.
        """
        lo, hi = sorted((end_a, end_b))
        while (m := self.probe(c, lo, hi)) is not None:
            b = c.pos(self.best)
            won = self.try_step(c, m - b)
            if m > b:
                lo, hi = (b, hi) if won else (lo, m)
            else:
                lo, hi = (lo, b) if won else (m, hi)

    def probe(self, c: int, lo: int, hi: int) -> int | None:
        """The lattice point to try next inside (lo, hi), or None when there is none.

        The vertex of the parabola through the best and the two ends (in log2: near the optimum
        accuracy is quadratic in log-hyperparameters), rounded; the middle of the wider gap
        when that parabola is unusable (an end diverged, is out of bounds or not yet run; the
        parabola opens upwards or peaks outside the bracket). A probe out of bounds is moved
        halfway towards the best until it is in bounds.
        """
        b = c.pos(self.best)
        ys = [self.runs.get(_step(self.best, c, x - b)) for x in (lo, b, hi)]
        vertex = None if None in ys else parabola_vertex((lo, b, hi), [r.value for r in ys])
        if vertex is not None and lo < vertex < hi:
            m = math.floor(vertex + 0.5)
        else:
            m = b + (hi - b) // 2 if hi - b >= b - lo else b - (b - lo) // 2
        while m != b and not self.in_bounds(self.params(_step(self.best, c, m - b))):
            m = b + int((m - b) / 2)
        return None if m == b or _step(self.best, c, m - b) in self.runs else m

    def at_line_optimum(self, c: int) -> bool:
        """Both lattice neighbours of the best along ``c`` are known not to beat it."""
        best = self.runs[self.best].value
        for k in (1, -1):
            key = _step(self.best, c, k)
            if self.in_bounds(self.params(key)):
                if key not in self.runs or self.runs[key].value > best + self.threshold:
                    return False
            elif ((slid := self.place(key, c)) in self.runs  # a slid neighbour is not
                  and self.runs[slid].value > best + self.threshold):  # required, but counts
                return False
        return True

    def try_step(self, c: int, k: int) -> bool:
        """Evaluate the best point moved ``k`` lattice steps along ``c``; move there if it wins.
        A unit step out of the box slides into it (``place``); a longer one is not taken."""
        key = _step(self.best, c, k)
        if not self.in_bounds(self.params(key)):
            if abs(k) != 1:  # a longer step out of the box: the bracket closes inside it
                return False
            key = self.place(key, c)  # a unit step slides: the box never blocks a move
            if key is None:
                return False
        fresh = key not in self.runs
        incumbent = self.need(self.best, None, None)  # topped up to this level first
        run = self.need(key, c.name, 2.0**k)
        won = run.value > incumbent.value + self.threshold
        if won:
            self.best, run.accepted = key, True
        if fresh:
            self.report(run)
        return won

    def report(self, run: Run) -> None:
        """Tell ``on_run`` about a new run once the search has judged it."""
        if self.on_run is not None:
            self.on_run(run)

    def need(self, key: tuple[int, ...], coordinate: str | None, factor: float | None) -> Run:
        """The run at ``key`` scored over ``level`` seeds: run now, or topped up if it has
        fewer (the same Run, its value re-averaged)."""
        run = self.runs.get(key)
        have = len(run.values) if run is not None else 0
        level = self.level if self.recheck_all or key == getattr(self, "best", key) else 1
        if run is not None and have >= level:
            return run
        if self.spent >= self.max_evals:
            raise _BudgetSpent
        ctx = Context(self.params(key), self.coords(key), coordinate, factor)
        number = run.run if run is not None else len(self.history) + 1
        point = self.calls.need(key, ctx, number, level)
        self.spent += level - have
        values = tuple(c.value for c in point.calls)
        diverged = any(c.diverged for c in point.calls)
        fields = dict(
            value=-math.inf if diverged else math.fsum(values) / len(values),
            diverged=diverged, values=values, trials=tuple(c.number for c in point.calls),
            replayed=all(c.replayed for c in point.calls),
        )
        if run is not None:
            run.__dict__.update(fields)
            return run
        run = Run(run=number, params=ctx.params, coords=ctx.coords, coordinate=coordinate,
                  factor=factor, **fields)
        self.history.append(run)
        self.runs[key] = run
        return run

    def result(self, stopped: str, n_calls: int = 0, n_replayed: int = 0,
               n_speculative: int = 0) -> TuneResult:
        best = self.runs[self.best]
        return TuneResult(
            best=best.params, best_value=best.value, best_coords=best.coords,
            history=self.history, stopped=stopped, n_calls=n_calls,
            n_replayed=n_replayed, n_speculative=n_speculative,
        )


def _step(key: tuple[int, ...], c: _Direction, k: int) -> tuple[int, ...]:
    return tuple(a + k * v for a, v in zip(key, c.vector, strict=True))


def _axis(system: CoordinateSystem, index: int) -> _Direction:
    unit = tuple(int(i == index) for i in range(len(system.names)))
    return _Direction(unit, system.names[index], index)


def _raw_axes(system: CoordinateSystem) -> list[_Direction]:
    """Each raw parameter's own axis (×2 of it, the others fixed) in the lattice, where it is
    a lattice direction and not already a coordinate: for u = λα/(1−ρ), 1−ρ, α these are
    1−ρ at fixed λ, α (u ÷2, 1−ρ ×2) and α at fixed λ, ρ (u ×2, α ×2)."""
    space, out = system.space, []
    for name in space.names:
        base = space.base_name(name)
        column = [system.exponents(n)[base] for n in system.names]
        if any(e.denominator != 1 for e in column):
            continue
        vector = tuple(int(e) for e in column)
        if sum(map(abs, vector)) > 1:  # a unit vector is a coordinate already
            out.append(_Direction(vector, f"{base} (raw)", None))
    return out


def _known(system: CoordinateSystem, name: str) -> str:
    if name not in system.names:
        raise TuneError(f"order names unknown coordinate {name!r}; have {list(system.names)}")
    return name


def box(system: CoordinateSystem, bounds: Mapping) -> dict[str, tuple[float, float]]:
    """User bounds intersected with the range Optuna stores (momentum-like: [0, 1 − 1e-9])."""
    space = system.space
    unknown = [n for n in bounds if n not in space.names]
    if unknown:
        raise TuneError(f"bounds name {unknown}, which are not tuned; tuned: {list(space.names)}")
    out = {}
    for name in space.names:
        lo, hi = (0.0, COMPLEMENT_MAX) if name in space.complement else LOG_RANGE
        user_lo, user_hi = bounds.get(name, (None, None))
        out[name] = (max(lo, user_lo if user_lo is not None else lo),
                     min(hi, user_hi if user_hi is not None else hi))
    return out

