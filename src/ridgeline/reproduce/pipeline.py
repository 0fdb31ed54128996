"""`ridgeline reproduce`: Page's part 5 end to end in one resumable command, planned to a budget.

What runs, in order: the paper's three landscapes (lr-batch, lr-momentum, lr-wd sweeps), the
tuner from Page's bad start and from the preset's sensible one, and the flatness experiments
of ``science.experiments``; then ``reproduce.report`` writes one report from the storage. What
to run within a budget, and the stored plan, are ``reproduce.plan``'s.

Resumption. Everything lives in one Optuna storage: sweeps and tunes resume through their
studies, the experiments through ``experiments.StudyCache`` (study ``diagnostics-PRESET``), and
the plan is reused while ``--budget`` is unchanged (``plan.plan_for``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from ridgeline.errors import RidgelineError
from ridgeline.landscape import sweep
from ridgeline.presets import get_preset
from ridgeline.reproduce import plan as planning
from ridgeline.reproduce import report
from ridgeline.runs import ledger
from ridgeline.science import experiments
from ridgeline.tuner import report as tuner_report
from ridgeline.tuner import tune


@dataclass
class Options:
    """How runs are made: passed through to sweeps and tunes (diagnostics run in-process)."""

    objective: object = None  # sweep-style objective (None: TrainObjective())
    data: object = None  # Cifar10 or a loader, for the diagnostics (None: load_cifar10())
    device: str = "auto"
    precision: str = "auto"
    executor: str | None = None
    workers: int | None = None
    ray_address: str | None = None
    progress: bool = True


def run(plan: planning.Plan, storage=None, out=None, options: Options | None = None,
        command: str = "", say: Callable[[str], None] = print) -> dict:
    """Run (or resume) ``plan`` in ``storage``, then write the report to ``out``; returns how
    many runs each section made now, and the report's paths."""
    opts = options or Options()
    storage = ledger.default_storage() if storage is None else storage
    planning.store(storage, plan.preset, planning.PLAN_ATTR, plan.to_dict())
    ran: Counter = Counter()
    started, t0, failed = time.time(), time.perf_counter(), 0
    try:
        failed = run_landscapes(plan, storage, opts, ran, say)
        run_tuner(plan, storage, opts, ran, say)
        run_diagnostics(plan, storage, opts, ran, say)
    finally:
        planning.record_session(storage, plan.preset, started, time.perf_counter() - t0, ran,
                                command)
    paths = report.write_report(storage, plan.preset, out or f"reproduce-{plan.preset}",
                                command)
    if failed:
        raise RidgelineError(f"{failed} landscape runs failed (user attr 'failure' in their "
                             f"studies): re-run the same command to retry them")
    return {"ran": dict(ran), **paths}


def run_landscapes(plan: planning.Plan, storage, opts: Options, ran: Counter, say) -> int:
    """The three sweeps; returns how many runs failed (they are retried by the next call)."""
    failed = 0
    for name, spec in plan.grids().items():
        r = sweep.run_sweep(spec, storage, None, opts.objective, opts.workers, opts.progress,
                            executor=opts.executor, ray_address=opts.ray_address)
        say(f"landscape {name}: {r.summary()}")
        ran["landscapes"] += sum(v for k, v in r.ran.items() if k != "failed")
        failed += r.ran.get("failed", 0)
    return failed


def run_tuner(plan: planning.Plan, storage, opts: Options, ran: Counter, say) -> None:
    """Both tunes at the tuner's default settings, which the report's replay uses too."""
    for start, evals in plan.tune_evals().items():
        if not evals:
            continue
        result = tune.tune_preset(
            plan.preset, start, storage, objective=opts.objective, max_evals=evals,
            executor=opts.executor, workers=opts.workers, ray_address=opts.ray_address,
            on_run=tuner_report.Progress(evals) if opts.progress else None)
        say(f"tuner from the {start} start: {tuner_report.summary(result)}")
        ran["tuner"] += result.n_calls


def diagnostics_setup(plan: planning.Plan, opts: Options) -> experiments.Setup:
    def load():
        from ridgeline.cifar.data import load_cifar10

        return load_cifar10()

    return experiments.Setup(get_preset(plan.preset), opts.data or load, plan.seeds,
                             device=opts.device, precision=opts.precision)


def run_diagnostics(plan: planning.Plan, storage, opts: Options, ran: Counter,
                    say) -> None:
    """The planned experiments, in-process (a few runs each), one trial per unit."""
    if not plan.diagnostics:
        return
    setup = diagnostics_setup(plan, opts)
    planning.store(storage, plan.preset, planning.SETUP_ATTR,
                   {"every": setup.every, "precision": setup.precision})
    cache = experiments.StudyCache(ledger.open_study(experiments.study_name(plan.preset), storage))
    for kind in plan.diagnostics:
        before = cache.computed
        experiments.run(kind, setup, cache)
        say(f"diagnostics {experiments.TITLES[kind]}: {cache.computed - before} runs now")
    ran["diagnostics"] += cache.computed
