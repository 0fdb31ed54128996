"""Page's tuner as an Optuna sampler: ``ridgeline.FlatDirectionSampler``.

    sampler = ridgeline.FlatDirectionSampler(
        start={"lr": 1e-3, "momentum": 0.5, "weight_decay": 1e-2}, seed=0)
    study = optuna.create_study(direction="maximize", sampler=sampler, storage=...)
    study.optimize(objective, n_trials=40)

The search is ``tuner.descent._Search``, the same deterministic coordinate descent that
``ridgeline tune`` runs, on the lattice of powers of 2 from ``start`` in the coordinates of
``invariants`` (completed by free parameters; u = λα/(1−ρ), 1−ρ, α by default): a move along a
coordinate other than an invariant holds every invariant fixed exactly.

**State is the study's trials.** Before each trial the search is re-run from the start against
a lookup of the study's trials; the first point it needs that no trial covers is proposed. A
point whose trial is still RUNNING counts, for this proposal only, as a loss, so the search
goes on to the next point it may need: parallel workers (``n_jobs``, several processes) get
distinct points, and every decision is still made on finished values only, as the sequential
search would. Resuming is ``optuna.load_study`` with a new sampler: nothing finished is
proposed again.

Trials as the lookup reads them (a trial counts when its params are on the lattice):

* COMPLETE: its value; −inf when its user attr ``diverged`` is true (ridgeline's ledger).
* FAIL from a NaN returned by the objective: diverged, −inf, never proposed again. Optuna's
  public API records a NaN and a raise the same way (FAIL, no values), so the rule is: a FAIL
  that this sampler's ``after_trial`` saw is confirmed diverged when the next trial starts in
  the same process (``study.optimize`` went on), and is then listed in the study user attr
  ``ridgeline:diverged``. A raise that ends ``study.optimize``, or a process that died, leaves
  no such record, and the point is proposed again. (Consequences: an exception swallowed by
  ``catch=`` counts as diverged, and a NaN in the very last trial of a process is run again.
  A FAIL whose objective recorded why in the trial user attr ``failure``, as
  ``ridgeline.tuner.tune`` does, is a raise, never diverged.)
* PRUNED (a pruner stopped it, e.g. ridgeline.runs.pruning.PruningHook): a loss, −inf, never
  proposed again: a pruned run counts as worse than any finished one.
* RUNNING: pending. WAITING trials, and FAIL not confirmed as above: ignored.

When every point the search may need is running, a new trial gets another seed of the best
(up to ``max_level``, which the refinement uses); past that it waits, polling the study, until
a running trial ends. Speculation is bounded: while the oldest running trial runs, at most
two trials per other running trial may finish (``SPECULATION_PER_WORKER``); then a worker
waits rather than walk the whole branch in which that slow trial loses. A study whose
search is over proposes one more seed of the best and stops (``study.optimize`` cannot skip
a trial it has already created).

**Noise.** A cycle of line searches that improves nothing does not end the search: the
replicate level rises, up to ``max_level``, and the cycle runs again. With ``recheck="best"``
(the default) only the incumbent is scored as the mean over ``level`` seeds, which undoes the
luck that made it the incumbent, and a rival that beats it is topped up once it is the best;
``"all"`` tops up every compared point. While refining, ``wide`` also tries ×4 and ÷4 along a
coordinate whose ×2 and ÷2 lose: on a shallow direction one doubling can gain less than the
noise where two show it. Before the first such stop nothing changes, so a search that reaches
the optimum early costs no more. Replicate ``r`` of a point is the trial whose ``seed_param``
(default ``"seed"``, if the objective suggests it) is ``r``, or the point's ``r``-th trial
when the objective suggests no seed. Once a cycle at ``max_level`` improves nothing the
sampler calls ``study.stop()``, recording why in the study user attr ``ridgeline:stopped``.
docs/tuner.md measures these settings.

Parameters that ``start`` does not name go to ``independent_sampler`` (TPE by default).
"""

from __future__ import annotations

import ast
import contextlib
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from ridgeline.errors import TuneError, first_line
from ridgeline.tuner.descent import TuneResult, _Search
from ridgeline.tuner.invariants import CoordinateSystem
from ridgeline.tuner.monomials import InvariantError, Space
from ridgeline.tuner.settings import DEFAULT, LINE_SEARCHES, RECHECKS

__all__ = ["DIVERGED_ATTR", "FlatDirectionSampler", "STOPPED_ATTR"]

DEFAULT_INVARIANTS = ("lr*weight_decay/(1-momentum)",)
# Named invariant sets, ``invariants="adamw"``: (monomials, parameters entering as 1-x).
# "adamw": AdamW's flat direction ηλ (science.theory.adamw_equilibrium_angular_update, Kosson
# et al. 2024; the EMA time scale 1/(ηλ), Wang & Aitchison 2025), so with start over
# (lr, weight_decay[, beta1]) the coordinates are ηλ, λ and, if tuned, 1−β₁ (λ and β₁ free,
# lr derived). Measured in docs/adamw.md: on cpu-mini's η×λ table it is slower than TPE from
# two of three starts (the ridge bends where decay no longer equilibrates within the run).
INVARIANT_SETS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "sgd": (DEFAULT_INVARIANTS, ("momentum",)),
    "adamw": (("lr*weight_decay",), ("beta1",)),
}
FAILURE_ATTR = "failure"  # trial user attr (ridgeline.runs.ledger's): why it failed, not a NaN
DIVERGED_ATTR = "ridgeline:diverged"  # study user attr: numbers of FAIL trials that diverged
STOPPED_ATTR = "ridgeline:stopped"  # study user attr: why the sampler stopped the study
LATTICE_TOL = 1e-6  # in log2: how close stored params must be to a lattice point
IDLE_POLL_S = 0.2  # how often a worker with nothing useful to run looks again
SPECULATION_PER_WORKER = 2  # speculative trials that may finish per other running trial


class FlatDirectionSampler(BaseSampler):
    """Cyclic coordinate descent along the flat directions of BatchNorm networks.

    ``start`` names the tuned parameters and the first point; ``complement`` those that enter
    as ``1-x`` (in [0, 1), stepped in log(1−x)); ``invariants`` are monomials held fixed by
    every move along another coordinate, one monomial as a string, or the name of a set in
    ``INVARIANT_SETS`` ("sgd": the default; "adamw": ηλ, with ``beta1`` complemented), which
    also adds that set's complemented names to ``complement``. ``min_improvement`` (a step
    must beat the best by more than this) and ``line_search`` are the search's
    (``tuner.descent``); ``max_level``, ``recheck`` and ``wide`` say how it refines instead
    of stopping (module docstring);
    ``replicates`` is the starting level (each compared point the mean of that many seeds);
    ``order`` the coordinates' order (default: invariants, then free ones); ``max_evals``
    caps the evaluations the search asks for (None: only ``n_trials`` does). ``seed`` seeds
    the default ``independent_sampler``. The defaults are ``tuner.settings.DEFAULT``.
    """

    def __init__(
        self,
        *,
        start: Mapping[str, float],
        invariants: Sequence[str] | str = DEFAULT_INVARIANTS,
        complement: Sequence[str] = ("momentum",),
        min_improvement: float = DEFAULT.min_improvement,
        line_search: str = DEFAULT.line_search,
        max_level: int = DEFAULT.max_level,
        recheck: str = DEFAULT.recheck,
        wide: bool = DEFAULT.wide,
        raw_axes: bool = DEFAULT.raw_axes,
        max_evals: int | None = None,
        replicates: int = 1,
        order: Sequence[str] | None = None,
        seed_param: str = "seed",
        independent_sampler: BaseSampler | None = None,
        seed: int | None = None,
    ) -> None:
        invariants, complement = _resolve_invariants(invariants, complement, start)
        space = Space(tuple(start), complement=[n for n in complement if n in start])
        self._system = CoordinateSystem(space, invariants)
        self._system.to_coords(start)  # a start outside the space's domain fails here
        if line_search not in LINE_SEARCHES:
            raise TuneError(f"line_search {line_search!r} is not one of {list(LINE_SEARCHES)}")
        for name, value in (("max_level", max_level), ("max_evals", max_evals or 1),
                            ("replicates", replicates)):
            if not (isinstance(value, int) and value >= 1):
                raise TuneError(f"{name}={value!r} is not allowed: it must be an integer >= 1")
        self._start = dict(start)
        if recheck not in RECHECKS:
            raise TuneError(f"recheck {recheck!r} is not one of {list(RECHECKS)}")
        self._search_args = dict(min_improvement=min_improvement, max_level=max_level,
                                 recheck=recheck, wide=wide, raw_axes=raw_axes,
                                 accelerate=line_search == "accelerate",
                                 max_evals=max_evals or 2**62, min_level=replicates,
                                 order=order)
        _Search(self._system, self._start, bounds=None, on_run=None,  # a bad order or start
                **self._search_args)  # fails here, at construction
        self._seed_param = seed_param
        self._independent = independent_sampler or optuna.samplers.TPESampler(seed=seed)
        self._lock = threading.Lock()
        self._proposals: dict[int, _Proposal] = {}  # this process's trials not yet finished
        self._unconfirmed: set[int] = set()  # FAILs seen by after_trial, see the docstring

    def __getstate__(self) -> dict:
        """Picklable (Ray Tune's OptunaSearch pickles its sampler): the lock is made anew."""
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ Optuna's interface

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Optuna calls this when a trial is created, before anything is sampled: the
        proposal is chosen here, under a lock, so ``n_jobs`` threads see each other's."""
        while True:
            with self._lock:
                self._confirm_diverged(study)
                proposal, stopped = self._propose(study, number=trial.number)
                if stopped is not None:
                    _stop(study, stopped)
                if proposal is not None:
                    self._proposals[trial.number] = proposal
                    break
            time.sleep(IDLE_POLL_S)  # nothing worth running until a running trial ends
        self._independent.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        """Optuna calls this at trial creation: empty, as every tuned value is a fixed
        proposal given in :meth:`sample_independent` (whose ranges are known only there)."""
        return {}

    def sample_relative(self, study, trial, search_space) -> dict:
        """Optuna calls this after :meth:`infer_relative_search_space`: nothing to sample."""
        return {}

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, name: str,
                           param_distribution: BaseDistribution):
        """Optuna calls this for each ``trial.suggest_*``: a tuned name gets the proposal
        (checked against the suggested range), ``seed_param`` the replicate index, any
        other name the independent sampler's value."""
        proposal = self._proposals.get(trial.number)
        if proposal is not None and name in self._start:
            return _inside(name, proposal.params[name], param_distribution)
        if proposal is not None and name == self._seed_param:
            return _inside(name, proposal.replicate, param_distribution)
        return self._independent.sample_independent(study, trial, name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        """Optuna calls this when a trial ends, before its state is stored: a FAIL is
        remembered (docstring: NaN or a raise), and the study is stopped when the search has
        nothing left to try."""
        with self._lock:
            self._proposals.pop(trial.number, None)
            if state == TrialState.FAIL and FAILURE_ATTR not in trial.user_attrs:
                self._unconfirmed.add(trial.number)
            elif state == TrialState.COMPLETE:
                value = -math.inf if trial.user_attrs.get("diverged") else values[0]
                _, stopped = self._propose(study, {trial.number: value})
                if stopped is not None:
                    _stop(study, stopped)
        self._independent.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        """Optuna calls this in each worker of ``n_jobs``; the search itself is random-free."""
        self._independent.reseed_rng()

    # ------------------------------------------------------------------ the search

    def result(self, study: optuna.Study) -> TuneResult:
        """The search so far, replayed from the study's trials: Page's table of runs
        (``history``), the best point, and ``stopped``: "converged", "max_evals" (the
        search's budget), or "unfinished" (it needs a point no finished trial covers).
        ``ridgeline tune`` prints and plots this; call it after ``study.optimize``."""
        with self._lock:
            lookup = _Lookup(self, study, {}, pending=False)
            search = _Search(self._system, self._start, bounds=lookup.bounds(), on_run=None,
                             **self._search_args)
            try:
                stopped = search.run(lookup)
            except _Propose:
                stopped = "unfinished"
            if not search.history:
                raise TuneError("the study holds no finished trial at the sampler's start")
            used = {n for r in search.history for n in r.trials}
            extra = sum(1 for t in study.get_trials(deepcopy=False)
                        if t.state.is_finished() and t.number not in used
                        and self._key(t.params) is not None)
            return search.result(stopped, n_speculative=extra)

    def _propose(self, study: optuna.Study, finished: Mapping[int, float] | None = None,
                 number: int | None = None):
        """(the next proposal, why the search is over or None), from the study's trials;
        ``number`` is the trial it is for (None: only asking whether the search is over)."""
        lookup = _Lookup(self, study, dict(finished or {}))
        search = _Search(self._system, self._start, bounds=lookup.bounds(), on_run=None,
                         **self._search_args)
        try:
            stopped = search.run(lookup)
        except _Propose as p:
            speculative = lookup.waiting  # it assumed a running point loses
            if speculative and not _may_speculate(study, number):
                return None, None
            return p.proposal, None
        best = search.best
        reeval = _Proposal(search.params(best), lookup.next_replicate(best))
        if lookup.waiting:  # every point it may need is running: measure the best again, up
            # to max_level seeds (the refinement uses them); past that, wait (None)
            useful = reeval.replicate < self._search_args["max_level"]
            return (reeval if useful else None), None
        level = search.level
        why = (f"{stopped}: no move beat the best at {level} seed(s) per point"
               if stopped == "converged" else f"{stopped}: the search's budget is spent")
        return reeval, why

    def _key(self, params: Mapping) -> tuple[int, ...] | None:
        """The lattice key of stored params, or None off the lattice (another start)."""
        try:
            coords = self._system.to_coords(params)
        except (KeyError, ValueError, ArithmeticError):
            return None
        origin = self._system.to_coords(self._start)
        exps = [math.log2(coords[n] / origin[n]) for n in self._system.names]
        key = tuple(round(e) for e in exps)
        if any(abs(e - k) > LATTICE_TOL for e, k in zip(exps, key, strict=True)):
            return None
        return key

    def _confirm_diverged(self, study: optuna.Study) -> None:
        """A new trial in this process: the FAILs seen so far were NaNs (docstring)."""
        if self._unconfirmed:
            known = set(study.user_attrs.get(DIVERGED_ATTR, ()))
            study.set_user_attr(DIVERGED_ATTR, sorted(known | self._unconfirmed))
            self._unconfirmed.clear()


@dataclass(frozen=True)
class _Proposal:
    params: dict
    replicate: int


class _Propose(Exception):  # noqa: N818 - control flow: the search needs an unrun point
    def __init__(self, proposal: _Proposal) -> None:
        self.proposal = proposal


@dataclass
class _Value:
    """One replicate as ``_Search`` reads it (``trials.Calls``' call, from a stored trial)."""

    value: float
    diverged: bool
    number: int
    replayed: bool = True


@dataclass
class _Point:
    calls: list[_Value]


class _Lookup:
    """``_Search``'s calls answered from the study's trials (see the module docstring):
    ``need`` returns finished values, raises ``_Propose`` for the first unrun replicate and
    scores a point with a RUNNING replicate as a loss (``waiting``)."""

    workers = 1  # speculation comes from the RUNNING trials instead

    def __init__(self, sampler: FlatDirectionSampler, study: optuna.Study,
                 finished: dict[int, float], pending: bool = True) -> None:
        self.sampler, self.waiting = sampler, False
        self.done: dict[tuple, dict[int, _Value]] = {}
        self.running: dict[tuple, set[int]] = {}
        self.dists: dict[str, BaseDistribution] = {}
        diverged = set(study.user_attrs.get(DIVERGED_ATTR, ())) | sampler._unconfirmed
        trials = study.get_trials(deepcopy=False)
        for t in trials:
            self.dists.update(t.distributions)
        pending_here = [(n, p.params, p.replicate) for n, p in sampler._proposals.items()
                   if n not in finished]  # proposed in this process: pending, params or not
        for t in sorted(trials, key=lambda t: t.number):
            if t.number in finished:
                self.add(t.params, t.number, _read(finished[t.number]), t.params)
            elif t.state == TrialState.COMPLETE:
                value = -math.inf if t.user_attrs.get("diverged") else t.value
                self.add(t.params, t.number, _read(value), t.params)
            elif (t.state == TrialState.FAIL and t.number in diverged
                  or t.state == TrialState.PRUNED):  # pruned: worse than any finished run
                self.add(t.params, t.number, _read(-math.inf), t.params)
            elif (pending and t.state == TrialState.RUNNING
                  and t.number not in sampler._proposals):
                self.add(t.params, t.number, None, t.params)
        for number, params, replicate in pending_here if pending else ():
            self.add(params, number, None, {sampler._seed_param: replicate})

    def add(self, params: Mapping, number: int, value: _Value | None, seeded: Mapping) -> None:
        key = self.sampler._key(params)
        if key is None:
            return
        done, running = self.done.setdefault(key, {}), self.running.setdefault(key, set())
        replicate = seeded.get(self.sampler._seed_param)
        if not isinstance(replicate, int):  # no seed param: replicates in trial order
            replicate = next(r for r in range(len(done) + len(running) + 1)
                             if r not in done and r not in running)
        if replicate in done or replicate in running:
            return  # a duplicate (two processes proposed the same point): the first counts
        if value is None:
            running.add(replicate)
        else:
            done[replicate] = _Value(value.value, value.diverged, number)

    def bounds(self) -> dict[str, tuple[float, float]]:
        """The suggested ranges seen so far (none before the first suggest)."""
        return {n: (d.low, d.high) for n, d in self.dists.items()
                if n in self.sampler._start and isinstance(d, FloatDistribution)}

    def next_replicate(self, key: tuple) -> int:
        taken = self.done.get(key, {}).keys() | self.running.get(key, set())
        return next(r for r in range(len(taken) + 1) if r not in taken)

    def need(self, key, ctx, number: int, level: int = 1) -> _Point:
        done, running = self.done.get(key, {}), self.running.get(key, set())
        missing = [r for r in range(level) if r not in done]
        unrun = [r for r in missing if r not in running]
        if unrun:
            raise _Propose(_Proposal(ctx.params, unrun[0]))
        if missing:
            self.waiting = True
            return _Point([_Value(-math.inf, True, -1, False)])
        return _Point([done[r] for r in range(level)])

    def speculate(self, key, ctx, room: int) -> bool:
        return False


def _may_speculate(study: optuna.Study, number: int | None) -> bool:
    """Bounded speculation: while the oldest running trial runs, at most
    ``SPECULATION_PER_WORKER`` trials per other running trial may finish after it started.
    Why: with one slow trial (a process starting, a busy host) the other workers would walk
    the whole branch in which it loses, and spend runs the search may never use."""
    trials = study.get_trials(deepcopy=False)
    running = [t.number for t in trials if t.state == TrialState.RUNNING and t.number != number]
    if not running:
        return True
    oldest = min(running)
    since = sum(1 for t in trials if t.number > oldest and t.state.is_finished())
    return since < SPECULATION_PER_WORKER * len(running)


def _read(value: float | None) -> _Value:
    """A finished replicate: None and non-finite values are diverged (−inf)."""
    if value is None or not math.isfinite(value):
        return _Value(-math.inf, True, -1)
    return _Value(float(value), False, -1)


def _inside(name: str, value, dist: BaseDistribution):
    """The proposal, if the objective's range allows it; else one line naming both."""
    low, high = getattr(dist, "low", None), getattr(dist, "high", None)
    if isinstance(dist, IntDistribution):
        value = int(value)
    if low is not None and not low <= value <= high:
        raise TuneError(f"{name}={value:.6g} is outside the range the objective suggests, "
                        f"[{low:.6g}, {high:.6g}]: widen it or move the sampler's start")
    return value


def _stop(study: optuna.Study, why: str) -> None:
    """Record why, then stop ``study.optimize`` (outside it there is nothing to stop)."""
    if study.user_attrs.get(STOPPED_ATTR) != why:
        study.set_user_attr(STOPPED_ATTR, why)
    with contextlib.suppress(RuntimeError):  # ask/tell use, not inside optimize
        study.stop()


def _resolve_invariants(invariants: Sequence[str] | str, complement: Sequence[str],
                        start: Mapping[str, float]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``invariants`` as monomials and ``complement`` with a named set's names added: a name
    in INVARIANT_SETS, one monomial as a string, or a sequence of monomials as given."""
    if not isinstance(invariants, str):
        return tuple(invariants), tuple(complement)
    if invariants in INVARIANT_SETS:
        monomials, extra = INVARIANT_SETS[invariants]
        missing = sorted({n for m in monomials for n in _names(m)} - set(start))
        if missing:
            raise TuneError(f"invariants={invariants!r} holds {', '.join(monomials)}: start "
                            f"must name {', '.join(missing)} too")
        return monomials, (*complement, *(n for n in extra if n not in complement))
    space = Space(tuple(start), complement=[n for n in complement if n in start])
    try:
        space.parse(invariants)
    except InvariantError as e:
        raise TuneError(f"invariants={invariants!r} is neither a named set (one of "
                        f"{', '.join(INVARIANT_SETS)}) nor a monomial over the start's "
                        f"{', '.join(start)}: {first_line(e)}") from None
    return (invariants,), tuple(complement)


def _names(expr: str) -> set[str]:
    """The hyperparameter names in a monomial (of a named set: known to parse)."""
    return {n.id for n in ast.walk(ast.parse(expr, mode="eval")) if isinstance(n, ast.Name)}
