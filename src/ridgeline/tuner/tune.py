"""``ridgeline tune``: Page's tuner on a preset, from the paper's bad start or a sensible one.

The algorithm is ``tuner.descent``, its trials ``tuner.trials`` and its default settings
``tuner.settings``; this module binds them to presets and training (``tune_preset``) and
re-exports the engine's public names, so ``from ridgeline.tuner.tune import tune`` is the one
import a user needs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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
from ridgeline.tuner.descent import Objective, Run, TuneResult, check_settings, tune
from ridgeline.tuner.invariants import SGD_SPACE, CoordinateSystem, paper_system, raw_system
from ridgeline.tuner.settings import (
    LINE_SEARCHES,
    NOISE_FRACTION,
    TunerSettings,
    default_settings,
)

__all__ = ["LINE_SEARCHES", "NOISE_FRACTION", "STARTS", "Objective", "PresetObjective", "Run",
           "TuneError", "TuneResult", "TunerSettings", "coordinate_system", "default_settings",
           "default_study_name", "start_point", "tune", "tune_preset"]

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
            raise TuneError(f"the run at lr={hp.lr:.4g}, momentum={hp.momentum:.6g}, "
                            f"weight_decay={hp.weight_decay:.4g}, seed {seed} failed "
                            f"({type(e).__name__}: {first_line(e)}); re-run to resume") from e
        return as_result(out, hp, self.preset, seed, time.perf_counter() - t0)


def tune_preset(
    preset: str | Preset,
    start: str | HParams = "sensible",
    storage=None,
    study_name: str | None = None,
    *,
    objective=None,
    system: CoordinateSystem | None = None,
    line_search: str | None = None,
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

    ``line_search`` and ``min_improvement`` left None are ``default_settings(preset)``'s, the
    measured best of docs/tuner.md: the accelerating line search and NOISE_FRACTION × the
    preset's noise_std (0 where the preset states none). ``executor``, ``workers``
    and ``ray_address`` place runs as for sweeps (``ridgeline.runs.executors``); with more than
    one worker the next points a line search may need are run speculatively.
    """
    preset = get_preset(preset) if isinstance(preset, str) else preset
    label = start if isinstance(start, str) else "custom"
    hp = start_point(preset.hparams, start) if isinstance(start, str) else start
    settings = default_settings(preset).replace(line_search=line_search,
                                                min_improvement=min_improvement)
    check_settings(max_evals, settings.min_improvement, replicates, seed)  # before the study
    run_one = PresetObjective(objective, preset.name)
    study = ledger.open_study(study_name or default_study_name(preset.name, label), storage)
    with executors.make_executor(executor, workers, ray_address) as ex:
        pool, ok = ex.futures(), False
        ledger.warn_thread_mismatch(study, planned_threads(objective, ex))
        try:
            result = tune(run_one, hp.to_dict(), study, system, max_evals=max_evals,
                          replicates=replicates, seed=seed, workers=ex.workers if pool else 1,
                          executor=pool, on_run=on_run, **settings.as_kwargs())
            ok = True
        finally:
            if pool is not None:
                pool.shutdown(wait=ok, cancel_futures=True)
    return result
