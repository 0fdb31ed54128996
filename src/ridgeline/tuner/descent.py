"""Page's tuner: cyclic coordinate descent with doubling/halving line searches.

The search walks a lattice: every point it can visit is the start multiplied by a power of two
along each coordinate of a :class:`~.invariants.CoordinateSystem`. Points are keyed by
their integer exponents and rebuilt from the start each time, so repeated ×2 and ÷2 never drift
and holding u = λα/(1−ρ) fixed is exact in the coordinates.

The search only asks for values; ``ridgeline.tuner.trials`` turns each request into an Optuna trial,
replays finished ones and runs speculative ones. The search is a deterministic function of the
values it sees, so re-running it against the same study *replays* it, and with several workers
its decisions, and so the result, are exactly those of the sequential search.

Line searches. ``"double"`` is the paper's: ×2, else ÷2, then the same step again while it
improves. ``"accelerate"`` doubles the step in log2 while it improves (×2, ×4, ×16, …) and then
brackets the best point between two worse ones and probes inside the bracket at the vertex of
the parabola through the three (or its middle); docs/tuner.md measures both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field

import optuna

from ridgeline.errors import TuneError
from ridgeline.landscape.plots import parabola_vertex
from ridgeline.runs.executors import InProcess
from ridgeline.tuner.invariants import CoordinateSystem, paper_system
from ridgeline.tuner.settings import PAPER, TunerSettings
from ridgeline.tuner.trials import (
    COMPLEMENT_MAX,
    LOG_RANGE,
    SEED_MAX,
    Calls,
    Context,
    Objective,
    TrialStore,
)

__all__ = ["Objective", "Run", "TuneError", "TuneResult", "tune"]


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
    stopped: str  # "converged" or "max_evals"
    n_calls: int  # objective calls made by this process (needed + speculative)
    n_replayed: int  # calls answered from trials already in the study
    n_speculative: int  # calls made speculatively and never needed

    @property
    def n_runs(self) -> int:
        return len(self.history)


def tune(
    objective: Objective,
    start: Mapping,
    study: optuna.Study,
    system: CoordinateSystem | None = None,
    *,
    order: Sequence[str] | None = None,
    max_evals: int = 100,
    min_improvement: float = PAPER.min_improvement,
    replicates: int = 1,
    seed: int = 0,
    bounds: Mapping[str, tuple[float | None, float | None]] | None = None,
    workers: int = 1,
    executor: Executor | None = None,
    line_search: str = PAPER.line_search,
    on_run: Callable[[Run], None] | None = None,
) -> TuneResult:
    """Coordinate descent from ``start`` in ``system`` (default: the paper's u, 1−ρ, α).

    ``objective(params, seed)`` gets the full point (tuned and pass-through keys) and returns a
    score, higher is better; None, NaN or ±inf mark a diverged run, ranked below everything.
    It may instead return a RunResult (or its dict): its test accuracy is the score and its
    fields become the trial's user attrs (``study.result_to_attrs``), so `ridgeline plot`,
    ``study.trial_to_result`` and optuna-dashboard read tuner trials like sweep trials.
    A step is accepted only if it beats the best by more than ``min_improvement``: the
    seed-to-seed std keeps noise from moving the search, but also stalls it on shallow
    coordinates where a doubling gains less than that (docs/tuner.md measures both). Each
    point is scored as the mean over seeds ``seed .. seed+replicates-1``; the same seeds at
    every point make neighbouring comparisons less noisy and (params, seed) a replayable key.
    ``max_evals`` caps the points the search needs (replayed ones included), not speculative
    calls. ``bounds`` maps raw parameter names to inclusive (low, high), either may be None;
    points outside are treated as worse without being evaluated. ``workers > 1`` evaluates
    speculatively on ``executor`` (a thread pool of that size by default). ``line_search`` is
    one of ``settings.LINE_SEARCHES`` (module docstring); the defaults of both settings are
    ``settings.PAPER``. ``on_run`` is called with each run the search needed, in order, as
    soon as it is judged (``accepted`` set), for progress output.
    """
    system = system or paper_system()
    settings = TunerSettings(line_search=line_search, min_improvement=min_improvement)
    search = _Search(system, start, order, max_evals, settings.min_improvement, bounds,
                     settings.line_search == "accelerate", on_run)
    seeds = [seed + i for i in range(replicates)]
    _check_study(study, seeds, replicates, max_evals, workers)
    own = executor is None and workers > 1
    pool = ThreadPoolExecutor(workers) if own else executor
    pool = pool or InProcess().futures()
    calls = Calls(TrialStore(study, system), objective, seeds, workers, pool)
    ok = False
    try:
        stopped = search.run(calls)
        ok = True
    finally:
        calls.close(ok)
        if own:
            pool.shutdown(wait=ok, cancel_futures=True)
    return search.result(stopped, calls)


def _check_study(study, seeds, replicates, max_evals, workers) -> None:
    if len(study.directions) != 1 or study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise TuneError("the study must be single-objective with direction='maximize'")
    if replicates < 1 or max_evals < 1 or workers < 1:
        raise TuneError("replicates, max_evals and workers must each be >= 1")
    if not (seeds[0] >= 0 and seeds[-1] <= SEED_MAX):
        raise TuneError(f"seeds {seeds[0]}..{seeds[-1]} must lie in [0, {SEED_MAX}]")


class _BudgetSpent(Exception):
    """Raised inside the search when it needs a new point after ``max_evals`` runs."""


class _Search:
    """The sequential algorithm. It only ever asks ``Calls`` for values, in a fixed order."""

    def __init__(self, system, start, order, max_evals, min_improvement, bounds, accelerate,
                 on_run, max_level: int = 1, recheck: str = "all", wide: bool = False) -> None:
        self.system, self.accelerate, self.on_run = system, accelerate, on_run
        # Replicates per compared point: 1, raised by one each time a cycle improves nothing,
        # up to max_level (1: stop there, Page's rule; see cycle()); "all" compared points
        # get them, or only the incumbent ("best": a rival is topped up once it wins).
        self.level, self.max_level, self.spent = 1, max_level, 0
        self.recheck_all, self.wide = recheck == "all", wide
        self.fixed = {k: v for k, v in start.items() if k not in system.space.names}
        self.start = {k: v for k, v in start.items() if k in system.space.names}
        self.origin = system.to_coords(start)
        self.order = [system.names.index(_known(system, c)) for c in (order or system.names)]
        self.max_evals, self.threshold = max_evals, min_improvement
        self.bounds = _check_bounds(system, bounds or {})
        self.history: list[Run] = []
        self.runs: dict[tuple[int, ...], Run] = {}
        if not self.in_bounds(self.params(self.key0)):
            raise TuneError(f"the start point {dict(start)} is outside the bounds")

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
        return all(lo <= params[n] <= hi for n, (lo, hi) in self.bounds.items())

    def run(self, calls: Calls) -> str:
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
        failures = 0
        while failures < len(self.order):
            c = self.order[i % len(self.order)]
            improved = self.line_search(c)
            # After an improvement the coordinate counts as one failed search when both
            # lattice neighbours of the new best are known to lose (always so for
            # "double"; "accelerate" may stop refining before it knows both).
            failures = failures + 1 if not improved else int(self.at_line_optimum(c))
            i += 1

    def line_search(self, c: int) -> bool:
        """×2; if no better, ÷2; then, while it improves, the same step again ("double") or
        steps that double ("accelerate"). True if the best point moved."""
        reach = [self.reach(k) for k in range(1, self.calls.workers + 1)]
        self.speculate([_step(self.best, c, s * k) for k in reach for s in (1, -1)], c)
        for direction in (1, -1):
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
                    self.refine(c, self.best[c] - 2 * direction, self.best[c] + 2 * direction)
                return True
        return False

    def reach(self, k: int) -> int:
        """How far (lattice steps) the k-th step of an improving line search goes in total."""
        return 2**k - 1 if self.accelerate else k

    def expand_and_refine(self, c: int, direction: int) -> None:
        """After a first step that improved: steps of 2, 4, 8, ... lattice points while they
        improve, then refine inside the bracket the failed step leaves.

        Far from the optimum (Page's bad start is 5-9 doublings of u away) this needs about
        log2 of the distance in runs instead of the distance itself, plus a probe or two.
        """
        step = 2
        while self.try_step(c, direction * step):
            step *= 2
        b = self.best[c]
        self.refine(c, b - direction * step // 2, b + direction * step)

    def refine(self, c: int, end_a: int, end_b: int) -> None:
        """Probe inside the bracket (lo, hi) around the best until the probe is a known point.

        A probe that wins becomes the best and the old best bounds its side; one that loses
        bounds its own side. Each probe narrows the bracket, so this ends.
        """
        lo, hi = sorted((end_a, end_b))
        while (m := self.probe(c, lo, hi)) is not None:
            b = self.best[c]
            won = self.try_step(c, m - b, expanding=False)
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
        b = self.best[c]
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
            if key in self.runs:
                if self.runs[key].value > best + self.threshold:
                    return False
            elif self.in_bounds(self.params(key)):
                return False
        return True

    def try_step(self, c: int, k: int, expanding: bool = True) -> bool:
        """Evaluate the best point moved ``k`` lattice steps along ``c``; move there if it wins.

        While ``expanding``, the points the line search goes on to if this one wins are
        offered for speculation too; ``key`` itself first, so the point needed now never
        waits behind a guess.
        """
        key = _step(self.best, c, k)
        if not self.in_bounds(self.params(key)):
            return False
        depth = range(1, self.calls.workers + 1) if expanding else range(1, 2)
        ahead = [k * (self.reach(j) - 1) for j in depth]
        self.speculate([_step(key, c, a) for a in ahead], c)
        fresh = key not in self.runs
        incumbent = self.need(self.best, None, None)  # topped up to this level first
        run = self.need(key, self.system.names[c], 2.0**k)
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

    def speculate(self, keys: list[tuple[int, ...]], c: int) -> None:
        """Offer points the line search may need next; ``Calls`` starts those it has room for."""
        room = self.max_evals - self.spent
        for key in keys:
            params = self.params(key)
            if key not in self.runs and self.in_bounds(params):
                factor = 2.0 ** (key[c] - self.best[c])
                ctx = Context(params, self.coords(key), self.system.names[c], factor)
                if not self.calls.speculate(key, ctx, room):
                    return

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

    def result(self, stopped: str, calls: Calls) -> TuneResult:
        best = self.runs[self.best]
        return TuneResult(
            best=best.params, best_value=best.value, best_coords=best.coords,
            history=self.history, stopped=stopped, n_calls=calls.n_calls,
            n_replayed=calls.n_replayed, n_speculative=calls.n_speculative,
        )


def _step(key: tuple[int, ...], c: int, k: int) -> tuple[int, ...]:
    return key[:c] + (key[c] + k,) + key[c + 1 :]


def _known(system: CoordinateSystem, name: str) -> str:
    if name not in system.names:
        raise TuneError(f"order names unknown coordinate {name!r}; have {list(system.names)}")
    return name


def _check_bounds(system: CoordinateSystem, bounds: Mapping) -> dict[str, tuple[float, float]]:
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

