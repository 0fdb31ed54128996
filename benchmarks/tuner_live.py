"""Live cpu-mini tunes from Page's bad start with FlatDirectionSampler (benchmark (iii), #14).

Each search seed is its own study in one journal, so an interrupted run resumes where it stopped
(``load_study`` with a new sampler: nothing finished is run again). Search seed ``s`` trains
replicate ``r`` of a point with seed ``1000·s + r``: the three searches see different noise.
A trial is on target when its test accuracy is within one seed std (0.33 pp) of the best cpu-mini
mean known, 80.59 % (the best cell of the 150-cell table, benchmarks/tuner_sampler.py). Compute
is counted in epochs trained; a PercentilePruner(90, warm-up 1 epoch) stops clearly lost runs
(docs/tuner.md, "Pruning"). CPU-heavy: one trial at a time under ``--lock`` (a file for flock),
so other measurements can take turns between trials.

    RIDGELINE_DATA=../shared/data python benchmarks/tuner_live.py --seeds 0 1 2 --trials 16

``--sampler tpe`` runs Optuna's TPESampler (seeded by the search seed, Page's bad start
enqueued as its first trial, the training seed 1000·s + trial number) in studies of its own,
``live-bad-tpe-seed{s}``, into benchmarks/results/tuner_live_tpe.json: the same objective,
pruner and target, for the comparison at the same budget.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import platform
import time
from pathlib import Path

import optuna
import torch

from ridgeline.cifar.data import load_cifar10
from ridgeline.hparams import HParams
from ridgeline.presets import get_preset
from ridgeline.runs import ledger
from ridgeline.runs.pruning import EPOCHS_ATTR, train_trial
from ridgeline.tuner.sampler import STOPPED_ATTR, FlatDirectionSampler
from ridgeline.versions import versions

ROOT = Path(__file__).parents[1]
OUT = ROOT / "benchmarks" / "results" / "tuner_live.json"
JOURNAL = ROOT / "benchmarks" / "results" / "tuner_live" / "tuner_live.journal"
TARGET_ATTR = "benchmark:stopped_at_target"  # --stop-at-target ended the search here
BAD = {"lr": 0.001, "momentum": 0.5, "weight_decay": 0.01}
BEST_KNOWN, TARGET = 0.8059, 0.0033  # the table's best cell mean; one seed std


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


@contextlib.contextmanager
def cpu_lock(path: str | None):
    if path is None:
        yield
        return
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
    time.sleep(2)  # let a waiting measurement take its turn


def make_objective(search_seed: int, data, lock: str | None, flat: bool = True):
    preset = get_preset("cpu-mini")

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-5, 100, log=True)
        momentum = trial.suggest_float("momentum", 0.0, 0.999)
        wd = trial.suggest_float("weight_decay", 1e-7, 1, log=True)
        # the flat sampler sets the replicate index; other samplers would model it as a
        # hyperparameter, so their runs take the trial number
        replicate = trial.suggest_int("seed", 0, 999) if flat else trial.number
        hp = HParams(**{**preset.hparams.to_dict(), "lr": lr, "momentum": momentum,
                        "weight_decay": wd})
        with cpu_lock(lock):
            result = train_trial(trial, hp, preset.name, seed=1000 * search_seed + replicate,
                                 data=data)
        trial.set_user_attr("threads", torch.get_num_threads())
        trial.set_user_attr("train_time", result.train_time)
        if result.test_acc is None:
            return float("nan")  # diverged: the sampler ranks it below everything
        return result.test_acc

    return objective


def stop_at_target(study: optuna.Study, trial) -> None:
    if trial.value is not None and trial.value >= BEST_KNOWN - TARGET:
        study.set_user_attr(TARGET_ATTR, trial.number)
        study.stop()


def summarise(study: optuna.Study) -> dict:
    rows, epochs, first = [], 0, None
    for t in study.trials:
        if t.state not in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                           optuna.trial.TrialState.FAIL):
            continue
        if t.state == optuna.trial.TrialState.FAIL and EPOCHS_ATTR not in t.user_attrs:
            continue  # killed mid-run (diverged runs record their epochs), run again later
        epochs += int(t.user_attrs.get(EPOCHS_ATTR, 0))
        acc = t.value if t.state == optuna.trial.TrialState.COMPLETE else None
        rows.append({"trial": t.number, "state": t.state.name, **t.params, "test_acc": acc,
                     "epochs": t.user_attrs.get(EPOCHS_ATTR),
                     "train_time": t.user_attrs.get("train_time")})
        if first is None and acc is not None and acc >= BEST_KNOWN - TARGET:
            first = {"runs": len(rows), "epochs": epochs}
    best = max((r for r in rows if r["test_acc"] is not None), key=lambda r: r["test_acc"],
               default=None)
    return {"runs": len(rows), "epochs": epochs, "to_target": first, "best": best,
            "stopped": study.user_attrs.get(STOPPED_ATTR),
            "stopped_at_target": study.user_attrs.get(TARGET_ATTR),
            "trials": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--trials", type=int, default=16, help="trials per search (total)")
    p.add_argument("--sampler", choices=("flat", "tpe"), default="flat")
    p.add_argument("--lock", default=None, help="flock this file around each training run")
    p.add_argument("--stop-at-target", action="store_true",
                   help="end a search at its first run on target (saves CPU; runs and epochs "
                        "to target are unchanged, the search's own stop is then not measured)")
    args = p.parse_args()
    JOURNAL.parent.mkdir(parents=True, exist_ok=True)
    storage = ledger.open_storage(str(JOURNAL))
    data = load_cifar10()
    out = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpu": cpu_model(),
           "threads": torch.get_num_threads(), "versions": versions(),
           "best_known": BEST_KNOWN, "target": TARGET, "start": BAD, "sampler": args.sampler,
           "searches": {}}
    flat = args.sampler == "flat"
    out_path = OUT if flat else OUT.with_name("tuner_live_tpe.json")
    for s in args.seeds:
        sampler = (FlatDirectionSampler(start=BAD, seed=s) if flat
                   else optuna.samplers.TPESampler(seed=s))
        pruner = optuna.pruners.PercentilePruner(90.0, n_startup_trials=5, n_warmup_steps=1)
        study = optuna.create_study(study_name=f"live-bad-{'' if flat else 'tpe-'}seed{s}",
                                    storage=storage, direction="maximize", sampler=sampler,
                                    pruner=pruner, load_if_exists=True)
        if not flat and not study.trials:
            study.enqueue_trial(BAD)
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)  # killed: this is the
            # journal's only writer, so a RUNNING trial is one a killed run left; run it again
        done = len([t for t in study.trials if t.state.is_finished()])
        over = {STOPPED_ATTR, TARGET_ATTR} & study.user_attrs.keys()
        if done < args.trials and not over:
            study.optimize(make_objective(s, data, args.lock, flat), n_trials=args.trials - done,
                           callbacks=[stop_at_target] if args.stop_at_target else [])
        out["searches"][str(s)] = summarise(study)
        out_path.write_text(json.dumps(out, indent=1))
        print(s, {k: v for k, v in out["searches"][str(s)].items() if k != "trials"},
              flush=True)


if __name__ == "__main__":
    main()
