"""Page's tuner: cyclic coordinate descent with doubling/halving line searches.

The search walks a lattice: every point it can visit is the start multiplied by a power of two
along each coordinate of a :class:`~ridgeline.invariants.CoordinateSystem`. Points are keyed by
their integer exponents and rebuilt from the start each time, so repeated ×2 and ÷2 never drift
and holding u = λα/(1−ρ) fixed is exact in the coordinates.

Every objective call is an Optuna trial in a study the caller owns. The search is a
deterministic function of the values it sees, so re-running it against the same study *replays*
it: calls whose (params, seed) already have a COMPLETE trial reuse the stored value. A killed
tune therefore loses only the calls in flight. With several workers the next points a line
search might need are evaluated speculatively; the decisions, and so the result, are exactly
those of the sequential search.

Line searches. ``"double"`` is the paper's: ×2, else ÷2, then the same step again while it
improves. ``"accelerate"`` doubles the step in log2 while it improves (×2, ×4, ×16, …) and then
brackets the best point between two worse ones and probes inside the bracket at the vertex of
the parabola through the three (or its middle); docs/tuner.md measures both.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import optuna
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState

from ridgeline import executors
from ridgeline import study as st
from ridgeline.errors import RidgelineError
from ridgeline.hparams import HParams
from ridgeline.invariants import SGD_SPACE, CoordinateSystem, paper_system, raw_system
from ridgeline.presets import Preset, get_preset
from ridgeline.sweep import TrainObjective, as_result, resolve_objective

__all__ = ["LINE_SEARCHES", "STARTS", "Objective", "PresetObjective", "Run", "TuneError",
           "TuneResult", "coordinate_system", "default_study_name", "start_point", "tune",
           "tune_preset"]

Objective = Callable[[dict, int], object]  # float | None, or a RunResult (or its dict)
LINE_SEARCHES = ("double", "accelerate")

_LOG_RANGE = (1e-30, 1e30)  # stored distribution of log-scaled parameters: never binding
_COMPLEMENT_MAX = 1 - 1e-9  # momentum-like parameters are stored in [0, 1 - 1e-9]
_SEED_MAX = 2**31 - 1
_MATCH_TOL = 1e-9  # relative tolerance (in log space) for matching stored params
_MARK = "ridgeline"  # user attr marking trials created by this tuner


class TuneError(RidgelineError):
    """A tune that cannot start: bad start point, bounds, order or study."""


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

    def history_table(self) -> str:
        """The paper's table: run, λ, ρ, α, λα/(1−ρ), accuracy; accepted runs marked ``*``."""
        head = f"{'run':>4}  {'λ (lr)':>10}  {'ρ (momentum)':>12}  {'α (wd)':>10}  "
        lines = [head + f"{'λα/(1−ρ)':>10}  test accuracy"]
        for r in self.history:
            p = r.params
            u = p["lr"] * p["weight_decay"] / (1 - p["momentum"])
            acc = "diverged" if r.diverged else f"{r.value:.4g}"
            lines.append(
                f"{r.run:>4}  {p['lr']:>10.4g}  {p['momentum']:>12.6g}  "
                f"{p['weight_decay']:>10.4g}  {u:>10.4g}  {acc}{' *' if r.accepted else ''}"
            )
        return "\n".join(lines)


def tune(
    objective: Objective,
    start: Mapping,
    study: optuna.Study,
    system: CoordinateSystem | None = None,
    *,
    order: Sequence[str] | None = None,
    max_evals: int = 100,
    min_improvement: float = 0.0,
    replicates: int = 1,
    seed: int = 0,
    bounds: Mapping[str, tuple[float | None, float | None]] | None = None,
    workers: int = 1,
    executor: Executor | None = None,
    line_search: str = "double",
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
    one of LINE_SEARCHES (module docstring); ``on_run`` is called with each run the search
    needed, in order, as soon as it is judged (``accepted`` set), for progress output.
    """
    system = system or paper_system()
    if line_search not in LINE_SEARCHES:
        raise TuneError(f"line_search {line_search!r} is not one of {list(LINE_SEARCHES)}")
    search = _Search(system, start, order, max_evals, min_improvement, bounds,
                     line_search == "accelerate", on_run)
    seeds = [seed + i for i in range(replicates)]
    _check_study(study, seeds, replicates, max_evals, workers)
    own = executor is None and workers > 1
    pool = ThreadPoolExecutor(workers) if own else executor
    calls = _Calls(_Store(study, system), objective, seeds, workers, pool or _Inline())
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
    if not (seeds[0] >= 0 and seeds[-1] <= _SEED_MAX):
        raise TuneError(f"seeds {seeds[0]}..{seeds[-1]} must lie in [0, {_SEED_MAX}]")


class _BudgetSpent(Exception):
    """Raised inside the search when it needs a new point after ``max_evals`` runs."""


class _Search:
    """The sequential algorithm. It only ever asks ``_Calls`` for values, in a fixed order."""

    def __init__(self, system, start, order, max_evals, min_improvement, bounds, accelerate,
                 on_run) -> None:
        self.system, self.accelerate, self.on_run = system, accelerate, on_run
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

    def run(self, calls: _Calls) -> str:
        """Cycle through the coordinates until a full cycle (rolling) improves nothing."""
        self.calls = calls
        try:
            self.best = self.key0
            first = self.need(self.best, None, None)
            first.accepted = True
            self.report(first)
            failures, i = 0, 0
            while failures < len(self.order):
                c = self.order[i % len(self.order)]
                improved = self.line_search(c)
                # After an improvement the coordinate counts as one failed search when both
                # lattice neighbours of the new best are known to lose (always so for
                # "double"; "accelerate" may stop refining before it knows both).
                failures = failures + 1 if not improved else int(self.at_line_optimum(c))
                i += 1
        except _BudgetSpent:
            return "max_evals"
        return "converged"

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
        vertex = None if None in ys else _vertex((lo, b, hi), [r.value for r in ys])
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
        run = self.need(key, self.system.names[c], 2.0**k)
        won = run.value > self.runs[self.best].value + self.threshold
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
        """Offer points the line search may need next; ``_Calls`` starts those it has room for."""
        room = self.max_evals - len(self.history)
        for key in keys:
            params = self.params(key)
            if key not in self.runs and self.in_bounds(params):
                factor = 2.0 ** (key[c] - self.best[c])
                ctx = _Context(params, self.coords(key), self.system.names[c], factor)
                if not self.calls.speculate(key, ctx, room):
                    return

    def need(self, key: tuple[int, ...], coordinate: str | None, factor: float | None) -> Run:
        if key in self.runs:
            return self.runs[key]
        if len(self.history) >= self.max_evals:
            raise _BudgetSpent
        ctx = _Context(self.params(key), self.coords(key), coordinate, factor)
        number = len(self.history) + 1
        point = self.calls.need(key, ctx, number)
        values = tuple(c.value for c in point.calls)
        diverged = any(c.diverged for c in point.calls)
        run = Run(
            run=number, params=ctx.params, coords=ctx.coords,
            value=-math.inf if diverged else math.fsum(values) / len(values),
            diverged=diverged, coordinate=coordinate, factor=factor, values=values,
            trials=tuple(c.number for c in point.calls),
            replayed=all(c.replayed for c in point.calls),
        )
        self.history.append(run)
        self.runs[key] = run
        return run

    def result(self, stopped: str, calls: _Calls) -> TuneResult:
        best = self.runs[self.best]
        return TuneResult(
            best=best.params, best_value=best.value, best_coords=best.coords,
            history=self.history, stopped=stopped, n_calls=calls.n_calls,
            n_replayed=calls.n_replayed, n_speculative=calls.n_speculative,
        )


def _step(key: tuple[int, ...], c: int, k: int) -> tuple[int, ...]:
    return key[:c] + (key[c] + k,) + key[c + 1 :]


def _vertex(xs: Sequence[int], ys: Sequence[float]) -> float | None:
    """Arg-max of the parabola through three points; None unless it opens downwards."""
    if not all(math.isfinite(y) for y in ys):
        return None
    (x0, x1, x2), (y0, y1, y2) = xs, ys
    slope_a, slope_b = (y1 - y0) / (x1 - x0), (y2 - y1) / (x2 - x1)
    curvature = (slope_b - slope_a) / (x2 - x0)
    if not curvature < 0:
        return None
    return (x0 + x1) / 2 - slope_a / (2 * curvature)


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
        lo, hi = (0.0, _COMPLEMENT_MAX) if name in space.complement else _LOG_RANGE
        user_lo, user_hi = bounds.get(name, (None, None))
        out[name] = (max(lo, user_lo if user_lo is not None else lo),
                     min(hi, user_hi if user_hi is not None else hi))
    return out


@dataclass
class _Context:
    params: dict
    coords: dict
    coordinate: str | None
    factor: float | None


@dataclass
class _Call:
    """One objective call, i.e. one trial."""

    seed: int
    number: int  # Optuna trial number
    trial: optuna.Trial | None = None  # handle while RUNNING
    value: float = math.nan
    diverged: bool = False
    error: BaseException | None = None
    done: bool = False
    replayed: bool = False
    cancelled: bool = False


@dataclass
class _Point:
    calls: list[_Call]
    run: int | None = None  # set once the search needs it


class _Calls:
    """Runs, caches, replays and records objective calls; the search sees only their values."""

    def __init__(self, store, objective, seeds, workers, executor) -> None:
        self.store, self.objective, self.seeds = store, objective, seeds
        self.workers, self.executor = workers, executor
        self.points: dict[tuple[int, ...], _Point] = {}
        self.inflight: dict[Future, tuple[_Point, _Call]] = {}
        self.n_calls = self.n_replayed = 0
        store.recover()

    def need(self, key, ctx: _Context, number: int) -> _Point:
        point = self.points.get(key) or self.start(key, ctx)
        point.run = number
        for call in point.calls:
            if call.done and call.trial is not None and call.error is None:
                self.store.finish(call, point)  # speculative result now needed
        while not all(c.done for c in point.calls):
            self.harvest(block=True)
        failed = next((c.error for c in point.calls if c.error is not None), None)
        if failed is not None:
            raise failed
        return point

    def speculate(self, key, ctx: _Context, room: int) -> bool:
        """Start ``key`` if a worker is idle; False once there is no room for more."""
        if self.workers == 1:
            return False
        self.harvest(block=False)
        pending = sum(1 for p in self.points.values() if p.run is None)
        if len(self.inflight) + len(self.seeds) > self.workers or pending >= room:
            return False
        if key not in self.points:
            self.start(key, ctx)
        return True

    def start(self, key, ctx: _Context) -> _Point:
        point = _Point([])
        self.points[key] = point
        for seed in self.seeds:
            call = self.store.replay(ctx.params, seed)
            if call is None:
                call = self.store.create(ctx, seed, self.seeds.index(seed))
                future = self.executor.submit(_evaluate, self.objective, ctx.params, seed)
                self.inflight[future] = (point, call)
                self.n_calls += 1
            else:
                self.n_replayed += 1
            point.calls.append(call)
        return point

    def harvest(self, block: bool) -> None:
        if not self.inflight:
            return
        done, _ = wait(list(self.inflight), timeout=None if block else 0,
                       return_when=FIRST_COMPLETED)
        for future in done:
            point, call = self.inflight.pop(future)
            self.complete(point, call, future)

    def complete(self, point: _Point, call: _Call, future: Future) -> None:
        call.done = True
        if future.exception() is not None:
            call.error = future.exception()
            self.store.fail(call)
            return
        call.value, call.diverged, attrs = future.result()
        self.store.annotate(call, attrs)
        if point.run is None:
            self.store.hold(call)
        else:
            self.store.finish(call, point)

    @property
    def n_speculative(self) -> int:
        return sum(
            1
            for p in self.points.values() if p.run is None
            for c in p.calls if not (c.replayed or c.cancelled)
        )

    def close(self, ok: bool) -> None:
        """Finish or cancel what is left. After an error, running calls stay RUNNING (the next
        tune marks them FAIL) and finished-but-unneeded ones stay RUNNING with their value
        stashed (the next tune uses it), so an interrupted tune repeats nothing."""
        self.harvest(block=False)  # record whatever has already finished
        for future, (_, call) in list(self.inflight.items()):
            if future.cancel():  # queued, never started: not an objective call
                self.inflight.pop(future)
                call.done = call.cancelled = True
                self.n_calls -= 1
                call.trial.set_user_attr("cancelled", True)
                self.store.fail(call)
        if not ok:
            return
        while self.inflight:
            self.harvest(block=True)
        for point in self.points.values():
            for call in point.calls:
                if call.trial is not None and call.error is None:
                    self.store.finish(call, point)
        self.store.finish_stale()


def _evaluate(objective: Objective, params: dict, seed: int) -> tuple[float, bool, dict]:
    """Call the objective: (value, diverged, user attrs). None, NaN and ±inf become
    (−inf, diverged); a RunResult gives its test accuracy and its fields as attrs."""
    value, attrs = objective(dict(params), seed), {}
    if value is not None and not isinstance(value, (int, float)):
        attrs = st.result_to_attrs(value)
        value = None if attrs["diverged"] else attrs["test_acc"]
    if value is None or not math.isfinite(value := float(value)):
        return -math.inf, True, attrs
    return value, False, attrs


class _Inline(Executor):
    """workers=1: run each call at submission, in the caller's thread."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # even KeyboardInterrupt: the search re-raises it
            future.set_exception(exc)
        return future


class _Store:
    """All Optuna access, from the main thread only.

    Trials are created with ``enqueue_trial`` + ``ask`` so the stored params are exactly the
    point's. Params are the tuned raw hyperparameters plus ``seed``; pass-through keys go in the
    ``fixed`` user attr. A finished call is told COMPLETE (value −inf if it diverged). A
    speculative call whose result is not yet needed stays RUNNING with ``pending_value`` set.
    """

    def __init__(self, study: optuna.Study, system: CoordinateSystem) -> None:
        self.study, self.space = study, system.space
        self.dists = {
            n: FloatDistribution(0.0, _COMPLEMENT_MAX) if n in self.space.complement
            else FloatDistribution(*_LOG_RANGE, log=True)
            for n in self.space.names
        } | {"seed": IntDistribution(0, _SEED_MAX)}
        self.complete: list[tuple[list[float], int, str, _Call]] = []
        self.stale: list[tuple[list[float], int, str, _Call]] = []

    def recover(self) -> None:
        """Index COMPLETE trials for replay. This tuner's RUNNING trials are abandoned by a
        killed tune: FAIL them, unless they hold a finished speculative value to reuse."""
        self._drop_waiting()
        for t in self.study.get_trials(deepcopy=False):
            ours = t.state == TrialState.RUNNING and t.user_attrs.get(_MARK)
            held = ours and "pending_value" in t.user_attrs
            if all(n in t.params for n in self.dists) and (t.state == TrialState.COMPLETE or held):
                value = t.value if t.state == TrialState.COMPLETE else t.user_attrs["pending_value"]
                handle = optuna.Trial(self.study, t._trial_id) if ours else None
                call = _Call(t.params["seed"], t.number, handle, value=value,
                             diverged=value == -math.inf, done=True, replayed=True)
                entry = (self.space.base_logs(t.params), t.params["seed"],
                         json.dumps(t.user_attrs.get("fixed", {}), sort_keys=True), call)
                (self.stale if ours else self.complete).append(entry)
            elif ours:
                self.study.tell(t.number, state=TrialState.FAIL)

    def _drop_waiting(self) -> None:
        """Enqueued trials of a tune killed between enqueue and ask are popped and failed."""
        waiting = self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if any(not t.user_attrs.get(_MARK) for t in waiting):
            raise TuneError(
                "the study has WAITING (enqueued) trials not made by ridgeline; the tuner "
                "creates its trials through the queue and would take them over: run them first"
            )
        for _ in waiting:
            self.study.tell(self.study.ask().number, state=TrialState.FAIL)

    def replay(self, params: Mapping, seed: int) -> _Call | None:
        logs = self.space.base_logs(params)
        fixed = _fixed_json(self.space, params)
        for index in (self.complete, self.stale):
            for i, (other, s, f, call) in enumerate(index):
                if s == seed and f == fixed and all(
                    abs(a - b) <= _MATCH_TOL for a, b in zip(logs, other, strict=True)
                ):
                    if index is self.stale:
                        index.pop(i)  # each stale trial is finished once, by whoever takes it
                    return call
        return None

    def create(self, ctx: _Context, seed: int, replicate: int) -> _Call:
        params = {n: ctx.params[n] for n in self.space.names} | {"seed": seed}
        attrs = {
            _MARK: 1, "coords": ctx.coords, "coordinate": ctx.coordinate, "factor": ctx.factor,
            "replicate": replicate, "fixed": json.loads(_fixed_json(self.space, ctx.params)),
        }
        self.study.enqueue_trial(params, user_attrs=attrs)
        trial = self.study.ask(self.dists)
        if trial.params != params:
            raise TuneError(f"trial {trial.number} was taken over by another process")
        return _Call(seed, trial.number, trial)

    def annotate(self, call: _Call, attrs: Mapping) -> None:
        """The objective's RunResult fields, written as soon as it returns (a held speculative
        result that a later tune reuses keeps them)."""
        for key, value in attrs.items():
            call.trial.set_user_attr(key, value)

    def hold(self, call: _Call) -> None:
        call.trial.set_user_attr("pending_value", call.value)

    def finish(self, call: _Call, point: _Point) -> None:
        if point.run is None:
            call.trial.set_user_attr("speculative", True)
        else:
            call.trial.set_user_attr("run", point.run)
            call.trial.set_user_attr("speculative", False)
        call.trial.set_user_attr("diverged", call.diverged)
        self.study.tell(call.number, call.value)
        call.trial = None

    def fail(self, call: _Call) -> None:
        self.study.tell(call.number, state=TrialState.FAIL)
        call.trial = None

    def finish_stale(self) -> None:
        """Stale speculative results this tune never needed: record them as such."""
        for *_, call in self.stale:
            call.trial.set_user_attr("speculative", True)
            self.study.tell(call.number, call.value)
        self.stale.clear()


def _fixed_json(space, params: Mapping) -> str:
    return json.dumps({k: v for k, v in params.items() if k not in space.names}, sort_keys=True)


# ----------------------------------------------------------------------------- presets

STARTS = {"bad": {"lr": 0.001, "momentum": 0.5, "weight_decay": 0.01}, "sensible": {}}
COORDS = {"paper": paper_system, "raw": raw_system}
# Default min_improvement in units of the preset's noise_std: docs/tuner.md measures 0 to 1.
NOISE_FRACTION = 0.5
_PROCESS_OBJECTIVES: dict[str, Callable] = {}  # per worker process, see PresetObjective


def start_point(hp: HParams, start: str = "sensible", **overrides) -> HParams:
    """``hp`` itself (sensible) or Page's bad start λ=0.001, ρ=0.5, α=0.01, then ``overrides``;
    batch size, epochs and warm-up stay those of ``hp``."""
    if start not in STARTS:
        raise TuneError(f"unknown start {start!r}: use one of {', '.join(STARTS)}")
    return hp.replace(**{**STARTS[start], **overrides})


def default_study_name(preset: str, start: str) -> str:
    return f"tune-{preset}-{start}"


def coordinate_system(coords: str = "paper", invariants: Sequence[str] = ()) -> CoordinateSystem:
    """``paper`` (u = λα/(1−ρ), 1−ρ, α), ``raw`` (λ, 1−ρ, α), or ``invariants`` held as
    coordinates, completed by free parameters (λ derived, as in the paper)."""
    if invariants:
        return CoordinateSystem(SGD_SPACE, invariants)
    if coords not in COORDS:
        raise TuneError(f"unknown coordinates {coords!r}: use one of {', '.join(COORDS)}")
    return COORDS[coords]()


@dataclass
class PresetObjective:
    """A sweep-style objective ``(hparams, preset, seed)`` (default: training) as the tuner's
    ``(params, seed)``, returning the RunResult dict so that every trial records it.

    Worker processes receive a pickled copy with every call; the first copy each process sees
    is kept and reused (``__setstate__``), so a TrainObjective loads CIFAR-10 once per
    process rather than once per run.
    """

    objective: object = None  # callable, "module:function", or None: TrainObjective()
    preset: str = "cpu-mini"

    def __post_init__(self) -> None:
        if self.objective is None:
            self.objective = TrainObjective()
        resolve_objective(self.objective)  # a bad "module:function" fails before any trial

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.objective = _PROCESS_OBJECTIVES.setdefault(repr(self.objective), self.objective)

    def __call__(self, params: dict, seed: int) -> dict:
        hp = HParams(**params)
        fn = resolve_objective(self.objective)
        t0 = time.perf_counter()
        try:
            out = fn(hp, self.preset, seed)
        except RidgelineError:
            raise
        except Exception as e:  # the search cannot go on without this value: stop, resumably
            why = (str(e).strip().splitlines() or [""])[0]
            raise TuneError(f"the run at lr={hp.lr:.4g}, momentum={hp.momentum:.6g}, "
                            f"weight_decay={hp.weight_decay:.4g}, seed {seed} failed "
                            f"({type(e).__name__}: {why}); re-run to resume") from e
        return as_result(out, hp, self.preset, seed, time.perf_counter() - t0)


def tune_preset(
    preset: str | Preset,
    start: str | HParams = "sensible",
    storage=None,
    study_name: str | None = None,
    *,
    objective=None,
    system: CoordinateSystem | None = None,
    line_search: str = "accelerate",
    min_improvement: float | None = None,
    replicates: int = 1,
    max_evals: int = 40,
    seed: int = 0,
    executor=None,
    workers: int | None = None,
    ray_address: str | None = None,
    on_run: Callable[[Run], None] | None = None,
) -> TuneResult:
    """Tune a preset's λ, ρ, α from ``start`` ("sensible", "bad" or an HParams whose other
    fields stay fixed); every run is a trial of ``study_name`` (default tune-PRESET-START) in
    ``storage``. Re-running with the same arguments replays the finished runs, so an
    interrupted tune resumes where it stopped.

    Defaults are the measured best of docs/tuner.md: the accelerating line search and
    ``min_improvement`` = NOISE_FRACTION × the preset's noise_std. ``executor``, ``workers``
    and ``ray_address`` place runs as for sweeps (``ridgeline.executors``); with more than
    one worker the next points a line search may need are run speculatively.
    """
    preset = get_preset(preset) if isinstance(preset, str) else preset
    label = start if isinstance(start, str) else "custom"
    hp = start_point(preset.hparams, start) if isinstance(start, str) else start
    if min_improvement is None:
        min_improvement = NOISE_FRACTION * preset.noise_std
    run_one = PresetObjective(objective, preset.name)
    study = st.open_study(study_name or default_study_name(preset.name, label), storage)
    with executors.make_executor(executor, workers, ray_address) as ex:
        pool, ok = ex.futures(), False
        try:
            result = tune(run_one, hp.to_dict(), study, system,
                          max_evals=max_evals, min_improvement=min_improvement,
                          replicates=replicates, seed=seed, workers=ex.workers if pool else 1,
                          executor=pool, line_search=line_search, on_run=on_run)
            ok = True
        finally:
            if pool is not None:
                pool.shutdown(wait=ok, cancel_futures=True)
    return result
