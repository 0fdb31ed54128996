"""Which Optuna pruner keeps the tuner's decisions intact? Replayed on benchmarks/bn_table.py.

Every cell of the table holds, per seed, the test accuracy after each epoch and the train
loss, so a tuning run can be replayed with per-epoch reports: ``FlatDirectionSampler`` from
Page's bad start (λ=0.001, ρ=0.5, α=0.01) in ``study.optimize``, the objective looking the
proposed point up (nearest cell in log2; outside the grid: NaN, diverged), picking a seed by a
hash of (cell, replicate, repetition), and replaying that seed's curve with
``trial.report(acc, epoch)`` / ``trial.should_prune()``, so a pruned run is PRUNED (the sampler
counts it worse than any finished run). ``chance stop``: a run whose first-epoch train loss is
within 0.05 of ln 10 ends there as a finished run at accuracy 0.1.

Per rule and repetition (the same hashes for every rule, so the rule is the only difference):
the sequence of incumbents (the best point after each trial) compared with the unpruned run's,
the final point's cell mean, and the epochs trained (a finished run: all epochs; a pruned one:
the epochs it reported; a chance stop: 1). Writes benchmarks/results/pruning_table.json.

    flock /tmp/ridgeline-cpu.lock python benchmarks/pruning_table.py [--reps 20]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import sys
import time
import zlib
from pathlib import Path

import optuna

import ridgeline
from ridgeline.versions import versions

ROOT = Path(__file__).parents[1]
TABLE = ROOT / "benchmarks" / "results" / "bn_table.json"
OUT = ROOT / "benchmarks" / "results" / "pruning_table.json"
START = {"lr": 1e-3, "momentum": 0.5, "weight_decay": 1e-2}
CHANCE_TOL = 0.05


def rules() -> dict:
    med = optuna.pruners.MedianPruner
    pct = optuna.pruners.PercentilePruner
    return {
        "none": lambda: optuna.pruners.NopPruner(),
        "median, warm-up 0": lambda: med(n_startup_trials=5, n_warmup_steps=0),
        "median, warm-up 1": lambda: med(n_startup_trials=5, n_warmup_steps=1),
        "median, warm-up 2": lambda: med(n_startup_trials=5, n_warmup_steps=2),
        "percentile 75, warm-up 1": lambda: pct(75.0, n_startup_trials=5, n_warmup_steps=1),
        "percentile 90, warm-up 1": lambda: pct(90.0, n_startup_trials=5, n_warmup_steps=1),
        "percentile 90, warm-up 2": lambda: pct(90.0, n_startup_trials=5, n_warmup_steps=2),
    }


class Table:
    def __init__(self, doc: dict) -> None:
        self.doc = doc
        ax = doc["axes"]
        self.logs = [[math.log2(v) for v in ax["lr"]],
                     [math.log2(v) for v in ax["one_minus_momentum"]],
                     [math.log2(v) for v in ax["weight_decay"]]]
        self.cells = {tuple(map(int, k.split(","))): c for k, c in doc["cells"].items()}
        self.epochs = doc["description"]["epochs"]

    def index(self, p: dict) -> tuple[int, ...] | None:
        v = [math.log2(p["lr"]), math.log2(1 - p["momentum"]), math.log2(p["weight_decay"])]
        idx = []
        for centres, x in zip(self.logs, v, strict=True):
            i = min(range(len(centres)), key=lambda i: abs(centres[i] - x))
            if abs(centres[i] - x) > 0.5 + 1e-6:
                return None
            idx.append(i)
        return tuple(idx)

    def mean(self, idx) -> float | None:
        accs = [a for a in self.cells[idx]["acc"] if a is not None] if idx else []
        return statistics.fmean(accs) if accs else None

    @property
    def best(self) -> float:
        return max(m for m in map(self.mean, self.cells) if m is not None)


def run(table: Table, pruner, rep: int, chance_stop: bool, n_trials: int,
        threshold: float) -> dict:
    epochs_used = []

    def objective(trial: optuna.Trial) -> float:
        p = {"lr": trial.suggest_float("lr", 1e-9, 1e3, log=True),
             "momentum": trial.suggest_float("momentum", 0.0, 0.9999),
             "weight_decay": trial.suggest_float("weight_decay", 1e-12, 10, log=True)}
        seed = trial.suggest_int("seed", 0, 1000)
        idx = table.index(p)
        if idx is None:
            epochs_used.append(0)  # outside the measured box: never run, counted diverged
            return math.nan
        cell = table.cells[idx]
        pick = zlib.crc32(repr((idx, seed, rep)).encode()) % len(cell["acc"])
        curve, loss = cell["curve"][pick], cell["loss"][pick]
        if curve[-1] is None:
            epochs_used.append(len(curve))
            return math.nan
        if chance_stop and abs(loss[0] - math.log(10)) <= CHANCE_TOL and len(curve) > 1:
            epochs_used.append(1)
            return 0.1
        for e, acc in enumerate(curve[:-1], start=1):
            trial.report(acc, e)
            if trial.should_prune():
                epochs_used.append(e)
                raise optuna.TrialPruned()
        epochs_used.append(len(curve))
        return curve[-1]

    sampler = ridgeline.FlatDirectionSampler(start=START, min_improvement=threshold, seed=rep)
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    study.optimize(objective, n_trials=n_trials)
    incumbents, best, best_v = [], None, -math.inf
    for t in study.trials:
        if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None \
                and math.isfinite(t.value) and t.value > best_v:
            best_v, best = t.value, table.index(t.params)
        incumbents.append(best)
    final = table.mean(best)
    return {"incumbents": incumbents, "final_cell": best, "final_mean": final,
            "regret_pp": None if final is None else 100 * (table.best - final),
            "epochs": sum(epochs_used), "trials": len(study.trials),
            "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--table", type=Path, default=TABLE)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--trials", type=int, default=60)
    a = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    table = Table(json.loads(a.table.read_text()))
    sigma = table.doc["seed_std"]
    threshold = sigma / 2  # the tuner's default rule: half the seed std
    t0 = time.process_time()
    out: dict = {}
    base: dict = {}
    for chance_stop in (False, True):
        for name, make in rules().items():
            label = name + (" + chance stop" if chance_stop else "")
            runs = [run(table, make(), r, chance_stop, a.trials, threshold)
                    for r in range(a.reps)]
            if name == "none" and not chance_stop:
                base = {r: x for r, x in enumerate(runs)}
            same_path = [x["incumbents"] == base[r]["incumbents"] for r, x in enumerate(runs)]
            same_final = [x["final_cell"] == base[r]["final_cell"] for r, x in enumerate(runs)]
            regrets = [x["regret_pp"] for x in runs if x["regret_pp"] is not None]
            out[label] = {
                "same_incumbent_path": sum(same_path) / len(runs),
                "same_final_cell": sum(same_final) / len(runs),
                "median_regret_pp": statistics.median(regrets) if regrets else None,
                "mean_regret_pp": statistics.fmean(regrets) if regrets else None,
                "mean_epochs": statistics.fmean(x["epochs"] for x in runs),
                "mean_trials": statistics.fmean(x["trials"] for x in runs),
                "mean_pruned": statistics.fmean(x["pruned"] for x in runs),
            }
            s = out[label]
            print(f"{label:>40}: same path {s['same_incumbent_path']:.0%}, same final "
                  f"{s['same_final_cell']:.0%}, regret median {s['median_regret_pp']:.2f} pp "
                  f"mean {s['mean_regret_pp']:.2f}, epochs {s['mean_epochs']:.0f} over "
                  f"{s['mean_trials']:.0f} trials ({s['mean_pruned']:.1f} pruned)", flush=True)
    doc = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
           "versions": versions(("ridgeline", "optuna")), "table": str(a.table.relative_to(ROOT))
           if a.table.is_relative_to(ROOT) else str(a.table),
           "config": {"reps": a.reps, "n_trials": a.trials, "start": START,
                      "min_improvement": threshold, "seed_std": sigma,
                      "best_cell_mean": table.best, "chance_tol": CHANCE_TOL,
                      "epochs_per_run": table.epochs},
           "cpu_seconds": round(time.process_time() - t0, 1), "results": out}
    a.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
