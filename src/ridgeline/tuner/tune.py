"""``ridgeline tune``: Page's tuner on any objective or a preset, run by FlatDirectionSampler.

One engine: the search is ``tuner.descent``, run by ``tuner.sampler.FlatDirectionSampler``
inside ``study.optimize``; this module only adapts an objective ``(params, seed) -> score`` to
an Optuna objective (``tune``) and binds presets and training to it (``tune_preset``), with
per-epoch reports to a pruner. Resume, parallel workers and Page's table all come from the
sampler: its state is the study's trials, and ``FlatDirectionSampler.result`` replays the table.
"""

from __future__ import annotations

import math
import numbers
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import optuna

from ridgeline.errors import RidgelineError, TuneError, first_line
from ridgeline.hparams import HParams
from ridgeline.presets import Preset, get_preset
from ridgeline.runs import executors, ledger
from ridgeline.runs.objectives import (
    TrainObjective,
    as_result,
    planned_threads,
    resolve_objective,
)
from ridgeline.runs.pruning import EPOCHS_ATTR, PruningHook, record_epochs, study_epochs
from ridgeline.tuner.descent import Run, TuneResult, box
from ridgeline.tuner.invariants import SGD_SPACE, CoordinateSystem, paper_system, raw_system
from ridgeline.tuner.sampler import FlatDirectionSampler
from ridgeline.tuner.settings import DEFAULT, LINE_SEARCHES, PAPER, TunerSettings

__all__ = ["DEFAULT", "LINE_SEARCHES", "PAPER", "STARTS", "Objective", "PresetObjective",
           "Run", "TuneError", "TuneResult", "TunerSettings", "coordinate_system",
           "default_pruner", "default_study_name", "replay", "start_point", "tune", "tune_preset"]

Objective = Callable[[dict, int], object]  # float | None, or a RunResult (or its dict)
REPLICATE = "replicate"  # the trial param the sampler sets to the replicate index
SEED_MAX = 2**31 - 1
STARTS = {"bad": {"lr": 0.001, "momentum": 0.5, "weight_decay": 0.01}, "sensible": {}}
COORDS = {"paper": paper_system, "raw": raw_system}
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
    takes_trial: bool = False  # report each epoch to the trial (TrainObjective, in process)

    def __post_init__(self) -> None:
        if self.objective is None:
            self.objective = TrainObjective()
        resolve_objective(self.objective)  # a bad "module:function" fails before any trial

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.objective = _PROCESS_OBJECTIVES.setdefault(repr(self.objective), self.objective)

    def __call__(self, params: dict, seed: int, trial: optuna.Trial | None = None) -> dict:
        hp = HParams(**params)
        fn = resolve_objective(self.objective)
        t0 = time.perf_counter()
        try:
            if trial is None:
                out = fn(hp, self.preset, seed)
            else:  # per-epoch reports to the study's pruner; epochs trained on the trial
                out = fn(hp, self.preset, seed, hooks=[PruningHook(trial)],
                         eval_each_epoch=True)
                record_epochs(trial, out)
        except (RidgelineError, optuna.TrialPruned):
            raise
        except Exception as e:  # the search cannot go on without this value: stop, resumably
            raise TuneError(f"the run at lr={hp.lr:.4g}, momentum={hp.momentum:.6g}, "
                            f"weight_decay={hp.weight_decay:.4g}, seed {seed} failed "
                            f"({type(e).__name__}: {first_line(e)}); re-run to resume") from e
        return as_result(out, hp, self.preset, seed, time.perf_counter() - t0)


def tune(
    objective: Objective,
    start: Mapping,
    system: CoordinateSystem | None = None,
    *,
    storage=None,
    study_name: str | None = None,
    order: Sequence[str] | None = None,
    max_evals: int = 100,
    replicates: int = 1,
    seed: int = 0,
    bounds: Mapping[str, tuple[float | None, float | None]] | None = None,
    workers: int = 1,
    executor: Executor | None = None,
    settings: TunerSettings = PAPER,
    pruner: optuna.pruners.BasePruner | None = None,
    on_run: Callable[[Run], None] | None = None,
    **overrides,
) -> TuneResult:
    """Coordinate descent from ``start`` in ``system`` (default: the paper's u, 1−ρ, α), as a
    study of ``FlatDirectionSampler`` in ``storage`` (an Optuna storage or a ridgeline
    storage reference; None: in memory) under ``study_name``.

    ``objective(params, seed)`` gets the full point (tuned and pass-through keys) and returns a
    score, higher is better; None, NaN or ±inf mark a diverged run, ranked below everything.
    It may instead return a RunResult (or its dict): its test accuracy is the score and its
    fields become the trial's user attrs (``ledger.result_to_attrs``), so `ridgeline plot`,
    ``ledger.trial_to_result`` and optuna-dashboard read tuner trials like sweep trials. An
    objective whose attribute ``takes_trial`` is true is called in this process with the
    ``optuna.Trial`` as a third argument (for ``trial.report``; ``PresetObjective``).
    A raise ends the tune (the trial FAILs, recorded with why); running it again resumes.

    ``settings`` (``PAPER``, Page's search, by default; ``DEFAULT`` is the sampler's)
    with keyword ``overrides`` (``min_improvement=…``, ``line_search=…``, ``max_level=…``)
    say how steps are judged. Replicate ``r`` of a point is run with seed ``seed + r``;
    ``replicates`` is the starting level. ``max_evals`` caps the evaluations the search
    needs (replayed ones included). ``bounds`` maps raw parameter names to inclusive (low,
    high), either may be None; a step that leaves them slides or is skipped (``descent``).
    ``workers > 1`` runs that many trials at once (``study.optimize(n_jobs=…)``), each placed
    on ``executor`` when given: the extra workers run the points the search may need next,
    and its decisions are still those of the sequential search. ``on_run`` is called with
    each run the search judged, in order, for progress output.
    """
    system = system or paper_system()
    settings = settings.replace(**overrides)
    check_settings(max_evals, settings.min_improvement, replicates, seed, workers)
    sampler, tuned, fixed = _sampler(start, system, settings, max_evals=max_evals,
                                     replicates=replicates, order=order, seed=seed)
    dists = _distributions(system, bounds or {}, tuned)
    with _quiet_optuna():
        study = optuna.create_study(
            storage=None if storage is None else ledger.open_storage(storage),
            sampler=sampler, pruner=pruner or optuna.pruners.NopPruner(),
            study_name=study_name, direction="maximize", load_if_exists=True)
        ledger.fail_stale(study)  # a killed tune's RUNNING trials: their points run again
        before = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
        counter = _Progress(sampler, fixed, on_run)
        run_trial = _TrialObjective(objective, fixed, dists, seed, executor)
        if not _over(sampler, study):  # a finished tune, run again, runs nothing
            study.optimize(run_trial, n_trials=None, n_jobs=workers,  # the sampler stops it
                           callbacks=[counter])
    result = _with_fixed(sampler.result(study), fixed)
    result.n_calls = run_trial.calls
    result.n_replayed = sum(1 for r in result.history for n in r.trials if n in before)
    result.study, result.epochs = study, study_epochs(study)
    counter(study, None)  # report whatever the last replay judged
    return result


def replay(study: optuna.Study, start: Mapping, system: CoordinateSystem | None = None, *,
           settings: TunerSettings = DEFAULT, max_evals: int = 100, replicates: int = 1,
           order: Sequence[str] | None = None) -> TuneResult:
    """The tune's table from its study alone, as ``tune`` with these arguments made it
    (``stopped`` is "unfinished" while the search needs a run the study does not hold)."""
    sampler, _, fixed = _sampler(start, system or paper_system(), settings, max_evals=max_evals,
                                 replicates=replicates, order=order, seed=0)
    result = _with_fixed(sampler.result(study), fixed)
    result.study, result.epochs = study, study_epochs(study)
    return result


def _sampler(start: Mapping, system: CoordinateSystem, settings: TunerSettings, **kw):
    """(the sampler ``tune`` runs, the tuned part of ``start``, its pass-through part)."""
    tuned = {k: v for k, v in start.items() if k in system.space.names}
    fixed = {k: v for k, v in start.items() if k not in system.space.names}
    sampler = FlatDirectionSampler(start=tuned, invariants=_invariants(system),
                                   complement=system.space.complement, seed_param=REPLICATE,
                                   **kw, **settings.as_kwargs())
    return sampler, tuned, fixed


def _over(sampler: FlatDirectionSampler, study: optuna.Study) -> bool:
    try:
        return sampler.result(study).stopped != "unfinished"
    except TuneError:  # not even the start has run
        return False


def _with_fixed(result: TuneResult, fixed: Mapping) -> TuneResult:
    """The search's points carry only tuned names: add the pass-through ones back."""
    for run in result.history:
        run.params = {**fixed, **run.params}
    result.best = {**fixed, **result.best}
    return result


def _invariants(system: CoordinateSystem) -> tuple[str, ...]:
    """The invariant coordinates of ``system`` (the rest are free base coordinates)."""
    base = {system.space.base_name(n) for n in system.space.names}
    return tuple(n for n in system.names if n not in base)


def _distributions(system, bounds: Mapping, tuned: Mapping) -> dict:
    """What the objective suggests: each tuned name over its bounds (``descent.box``:
    log-scaled, or linear in [0, 1) for momentum-like names), so the sampler's box is the
    bounds."""
    out = {}
    for name, (lo, hi) in box(system, bounds).items():
        if name not in tuned:
            continue
        if not lo <= tuned[name] <= hi:
            raise TuneError(f"the start point {dict(tuned)} is outside the bounds "
                            f"{name} in [{lo:g}, {hi:g}]")
        complement = name in system.space.complement
        out[name] = optuna.distributions.FloatDistribution(lo, hi, log=not complement)
    return out


class _quiet_optuna:  # noqa: N801 - a context manager used like a function
    """No log line per trial (ridgeline prints its own progress)."""

    def __enter__(self):
        self.level = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)

    def __exit__(self, *exc):
        optuna.logging.set_verbosity(self.level)


class _Progress:
    """An optimize callback: after each trial, tell ``on_run`` about the runs the search has
    judged since the last call (a replay of the study, as the sampler makes it)."""

    def __init__(self, sampler, fixed, on_run) -> None:
        self.sampler, self.fixed, self.on_run, self.told = sampler, fixed, on_run, 0
        self.lock = threading.Lock()

    def __call__(self, study, trial) -> None:
        if self.on_run is None:
            return
        with self.lock:
            try:
                history = _with_fixed(self.sampler.result(study), self.fixed).history
            except TuneError:  # nothing judged yet
                return
            for run in history[self.told:]:
                self.on_run(run)
            self.told = max(self.told, len(history))


class _TrialObjective:
    """``objective(params, seed)`` as an Optuna objective: suggest the tuned params and the
    replicate, run (on ``executor`` when given), store the RunResult and encode divergence as
    every ridgeline writer does (COMPLETE, value 0.0, ``diverged=True``)."""

    def __init__(self, objective, fixed, dists, seed, executor) -> None:
        self.objective, self.fixed, self.dists, self.seed = objective, fixed, dists, seed
        self.executor, self.calls = executor, 0
        self.lock = threading.Lock()
        self.takes_trial = bool(getattr(objective, "takes_trial", False))

    def __call__(self, trial: optuna.Trial) -> float:
        params = {n: trial.suggest_float(n, d.low, d.high, log=d.log)
                  for n, d in self.dists.items()}
        seed = self.seed + trial.suggest_int(REPLICATE, 0, SEED_MAX - self.seed)
        point = {**self.fixed, **params}
        with self.lock:
            self.calls += 1
        with ledger.alive(trial):
            try:
                out = self.call(point, seed, trial)
            except optuna.TrialPruned:
                raise
            except BaseException as e:  # noqa: B036 - recorded, then re-raised
                trial.set_user_attr(ledger.FAILURE_ATTR, ledger.error_reason(e))
                raise
        value, attrs = _score(out)
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        if attrs.get("epochs") and EPOCHS_ATTR not in trial.user_attrs:
            trial.set_user_attr(EPOCHS_ATTR, len(attrs["epochs"]))  # compute, counted
        trial.set_user_attr("seed", seed)
        trial.set_user_attr(ledger.DIVERGED_ATTR, value is None)
        return ledger.DIVERGED_VALUE if value is None else value

    def call(self, point: dict, seed: int, trial: optuna.Trial):
        if self.takes_trial:
            return self.objective(point, seed, trial)  # in this process: it needs the trial
        if self.executor is None:
            return self.objective(point, seed)
        return self.executor.submit(self.objective, point, seed).result()


def _score(out) -> tuple[float | None, dict]:
    """(score or None when diverged, user attrs) of an objective's return value."""
    if isinstance(out, dict) or hasattr(out, "test_acc"):
        attrs = ledger.result_to_attrs(out)
        value = ledger.result_value(out)
    else:
        attrs, value = {}, out
    if value is None or not math.isfinite(float(value)):
        return None, attrs
    return float(value), attrs


def check_settings(max_evals: int = 100, min_improvement: float = 0.0, replicates: int = 1,
                   seed: int = 0, workers: int = 1) -> None:
    """``tune``'s numeric settings, each named with its value when it is out of range; callers
    run this before they create a study, so bad settings leave no trace in the storage."""
    for name, value in (("max_evals", max_evals), ("replicates", replicates),
                        ("workers", workers)):
        if not (isinstance(value, numbers.Integral) and value >= 1):
            raise TuneError(f"{name}={value!r} is not allowed: it must be an integer >= 1")
    if not (min_improvement >= 0 and math.isfinite(min_improvement)):
        raise TuneError(f"min_improvement={min_improvement!r} is not allowed: it must be a "
                        f"finite number >= 0 (test accuracy as a fraction)")
    if not (isinstance(seed, numbers.Integral) and 0 <= seed <= SEED_MAX - replicates + 1):
        raise TuneError(f"seed={seed!r} is not allowed: seeds {seed}..{seed + replicates - 1} "
                        f"must lie in [0, {SEED_MAX}]")


def default_pruner() -> optuna.pruners.BasePruner:
    """The pruner ``tune_preset`` uses: the only rule measured to keep the search's decisions
    (docs/tuner.md, "Pruning"): prune a run in the bottom 10 % at an epoch, after 1 epoch."""
    return optuna.pruners.PercentilePruner(90.0, n_startup_trials=5, n_warmup_steps=1)


def tune_preset(
    preset: str | Preset,
    start: str | HParams = "sensible",
    storage=None,
    study_name: str | None = None,
    *,
    objective=None,
    system: CoordinateSystem | None = None,
    settings: TunerSettings = DEFAULT,
    replicates: int = 1,
    max_evals: int = 40,
    seed: int = 0,
    prune: bool = True,
    executor=None,
    workers: int | None = None,
    ray_address: str | None = None,
    on_run: Callable[[Run], None] | None = None,
    **overrides,
) -> TuneResult:
    """Tune a preset's λ, ρ, α from ``start`` ("sensible", "bad" or an HParams whose other
    fields stay fixed); every run is a trial of ``study_name`` (default tune-PRESET-START) in
    ``storage``. Re-running with the same arguments resumes: finished runs are not repeated.

    ``settings`` default to the sampler's (``DEFAULT``), changed by keyword ``overrides``
    (``line_search=…``, ``min_improvement=…``; None keeps a field). With ``prune`` and the
    default training objective in this process, each run reports its test accuracy per
    epoch and ``default_pruner()`` stops clearly lost runs (worker processes train whole
    runs). ``executor``, ``workers`` and ``ray_address`` place runs as for sweeps
    (``ridgeline.runs.executors``).
    """
    preset = get_preset(preset) if isinstance(preset, str) else preset
    label = start if isinstance(start, str) else "custom"
    hp = start_point(preset.hparams, start) if isinstance(start, str) else start
    settings = settings.replace(**overrides)
    check_settings(max_evals, settings.min_improvement, replicates, seed)  # before the study
    run_one = PresetObjective(objective, preset.name)
    name = study_name or default_study_name(preset.name, label)
    with executors.make_executor(executor, workers, ray_address) as ex:
        pool, ok = ex.futures(), False
        in_process = pool is None or isinstance(ex, executors.InProcess)
        run_one.takes_trial = prune and in_process and isinstance(run_one.objective,
                                                                 TrainObjective)
        opened = ledger.open_storage(storage)  # once, for the check and the tune
        ledger.warn_thread_mismatch(ledger.open_study(name, opened),
                                    planned_threads(objective, ex))
        try:
            result = tune(run_one, hp.to_dict(), system, storage=opened,
                          study_name=name, max_evals=max_evals, replicates=replicates,
                          seed=seed, workers=ex.workers if pool else 1,
                          executor=None if in_process else pool, settings=settings,
                          pruner=default_pruner() if run_one.takes_trial else None,
                          on_run=on_run)
            ok = True
        finally:
            if pool is not None:
                pool.shutdown(wait=ok, cancel_futures=True)
    return result
