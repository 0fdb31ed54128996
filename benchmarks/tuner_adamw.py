"""FlatDirectionSampler(invariants="adamw") against Optuna's samplers on the AdamW η×λ table.

Table: the ``lr-wd-cpu-mini-adamw`` study in benchmarks/results/adamw/adamw.journal (real
cpu-mini-adamw runs on a log2 grid of η and λ, docs/adamw.md), the mean over each cell's
seeds. An evaluation adds N(0, σ) to that mean, σ the preset's measured seed std (0.15 pp), as
a fixed function of (cell, seed, repetition), as a real run with that seed would be. Target:
within TARGET = 0.3 pp of the best cell (2σ here: one σ would leave only the cells that tie
with the best within their own one-seed noise; 0.3 pp is also cpu-mini SGD's σ). Cells off the
grid or diverged score NaN (FAIL). Every method gets CAP
trials through ``study.optimize``; the start is the first trial of each. The sampler tunes
(η, λ) with ``invariants="adamw"``: coordinates ηλ and λ, so a λ move holds ηλ fixed; "raw CD"
is the same code with no invariants (η, λ moved one at a time).

    python benchmarks/tuner_adamw.py [--reps 50]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).parent))

from tuner_sampler import CAP, Objective, outcome, summarise  # noqa: E402

from ridgeline.figures import new_figure, save  # noqa: E402
from ridgeline.presets import get_preset  # noqa: E402
from ridgeline.runs import ledger  # noqa: E402
from ridgeline.tuner.sampler import FlatDirectionSampler  # noqa: E402
from ridgeline.versions import versions  # noqa: E402

ROOT = Path(__file__).parents[1]
JOURNAL = ROOT / "benchmarks" / "results" / "adamw" / "adamw.journal"
STUDY = "lr-wd-cpu-mini-adamw"
OUT_JSON = ROOT / "benchmarks" / "results" / "adamw" / "tuner_adamw.json"
OUT_PNG = ROOT / "docs" / "adamw" / "tuner-adamw.png"
NAMES = ("lr", "weight_decay")
TARGET = 0.3  # pp below the best cell


class Table:
    """Cell means in pp on the log2 lattice of (η, λ), read from the sweep's trials."""

    def __init__(self, journal: Path, study: str) -> None:
        runs: dict[tuple[int, int], list[float]] = {}
        trials = ledger.open_study(study, str(journal), create=False).get_trials(
            deepcopy=False, states=(TrialState.COMPLETE,))
        results = [r for r in map(ledger.trial_to_result, trials) if r is not None]
        self.origin = {n: min(r.hparams[n] for r in results) for n in NAMES}
        for r in results:
            runs.setdefault(self.key(r.hparams), []).append(
                math.nan if r.test_acc is None else 100 * r.test_acc)
        self.cells = {k: float(np.mean(v)) for k, v in runs.items()}
        self.seeds = {k: len(v) for k, v in runs.items()}
        self.best = max(v for v in self.cells.values() if not math.isnan(v))
        self.shape = tuple(max(k[i] for k in self.cells) + 1 for i in range(2))

    def key(self, p: dict) -> tuple[int, int]:
        return tuple(round(math.log2(p[n] / self.origin[n])) for n in NAMES)

    def value(self, p: dict) -> float:
        return self.cells.get(self.key(p), math.nan)

    def point(self, key: tuple[int, int]) -> dict:
        return {n: self.origin[n] * 2.0**k for n, k in zip(NAMES, key, strict=True)}

    def box(self) -> dict:
        """Each axis's outer edges, half a step beyond the outermost cells."""
        return {n: (self.origin[n] / math.sqrt(2), self.origin[n] * 2.0**(s - 1) * math.sqrt(2))
                for n, s in zip(NAMES, self.shape, strict=True)}


def objective(table: Table, sigma: float, rep: int, flat: bool):
    box = table.box()

    def fn(trial: optuna.Trial) -> float:
        p = {n: trial.suggest_float(n, *box[n], log=True) for n in NAMES}
        seed = trial.suggest_int("seed", 0, 10**6) if flat else trial.number
        trial.set_user_attr("point", p)
        key = zlib.crc32(repr(table.key(p)).encode())
        return table.value(p) + sigma * np.random.default_rng([rep, seed, key]).normal()

    return fn


def make_sampler(method: str, start: dict, rep: int) -> optuna.samplers.BaseSampler:
    if method.startswith("flat"):
        return FlatDirectionSampler(start=start, invariants="adamw", seed=rep)
    if method.startswith("raw CD"):
        return FlatDirectionSampler(start=start, invariants=(), complement=(), seed=rep)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {"TPE": lambda: optuna.samplers.TPESampler(seed=rep),
                "GP": lambda: optuna.samplers.GPSampler(seed=rep),
                "random": lambda: optuna.samplers.RandomSampler(seed=rep),
                "CMA-ES": lambda: optuna.samplers.CmaEsSampler(seed=rep, x0=dict(start)),
                }[method]()


METHODS = ("flat (invariants='adamw', defaults)", "raw CD (invariants=(), defaults)", "TPE",
           "GP", "random", "CMA-ES")


def run(method: str, table: Table, sigma: float, start: dict, rep: int, epochs: int,
        target: float = TARGET) -> dict:
    sampler = make_sampler(method, start, rep)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    flat = isinstance(sampler, FlatDirectionSampler)
    if not flat:
        study.enqueue_trial(start)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.optimize(objective(table, sigma, rep, flat), n_trials=CAP)
    # tuner_sampler's Objective for its hit/regret rules; its own __call__ is SGD's, unused
    landscape = Objective(table.value, sigma, table.box(), target, table.best, lambda p: epochs)
    return outcome(study, landscape)


def starts(table: Table) -> dict[str, dict]:
    """The worst finished cell; the familiar AdamW default (η = 1e-3, λ = 0.01) snapped into
    the grid; the uncalibrated placeholder cpu-mini-adamw had (η = 2e-3, λ = 1)."""
    worst = min((k for k, v in table.cells.items() if not math.isnan(v)), key=table.cells.get)
    corners = [table.point((0, 0)), table.point(tuple(k - 1 for k in table.shape))]
    snap = {n: float(np.clip(v, corners[0][n], corners[1][n])) for n, v in
            {"lr": 1e-3, "weight_decay": 0.01}.items()}
    return {"worst cell": table.point(worst),
            "AdamW default, clamped": table.point(table.key(snap)),
            "placeholder": table.point(table.key({"lr": 2e-3, "weight_decay": 1.0}))}


def figure(results: dict, table: Table, path: Path) -> None:
    fig, axes = new_figure((13, 4.6), 1, len(results) + 1, squeeze=False)
    ax = axes[0][0]
    grid = np.full(table.shape[::-1], np.nan)
    for (i, j), v in table.cells.items():
        grid[j, i] = v
    im = ax.imshow(grid, origin="lower", cmap="viridis", vmin=np.nanmax(grid) - 15)
    for (i, j), v in table.cells.items():
        ax.text(i, j, f"{v:.1f}", ha="center", va="center", fontsize=6,
                color="w" if v < table.best - 7 else "k")
    ax.set(xticks=range(table.shape[0]), yticks=range(table.shape[1]),
           xlabel="lr η", ylabel="weight_decay λ", title="η×λ table (% test)")
    ax.set_xticklabels([f"{table.origin['lr'] * 2**i:.1e}" for i in range(table.shape[0])],
                       rotation=60, fontsize=6)
    ax.set_yticklabels([f"{table.origin['weight_decay'] * 2**j:g}"
                        for j in range(table.shape[1])], fontsize=6)
    fig.colorbar(im, ax=ax, shrink=0.7)
    for ax, (start, by) in zip(axes[0][1:], results.items(), strict=True):
        for i, s in enumerate(by.values()):
            hits = [r["runs_to_target"] for r in s["runs"] if r["runs_to_target"]]
            if hits:
                ax.boxplot([hits], positions=[i], widths=0.5, showfliers=False)
            ax.annotate(f"{s['success_rate']:.0%}", (i, CAP * 1.15), ha="center", fontsize=7)
        ax.set_xticks(range(len(by)), [n.split(" (")[0] for n in by], rotation=60, fontsize=7)
        ax.set(yscale="log", ylim=(0.8, CAP * 1.4), title=f"start: {start}",
               ylabel="runs to target (boxes: hits; % on target)")
    save(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--slow-reps", type=int, default=10, help="GP's (a GP fit a trial)")
    parser.add_argument("--journal", type=Path, default=JOURNAL)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--sigma", type=float, help="seed std in pp (default: the preset's)")
    parser.add_argument("--target", type=float, default=TARGET, help="pp below the best cell")
    parser.add_argument("--out-json", type=Path, default=OUT_JSON)
    parser.add_argument("--out-png", type=Path, default=OUT_PNG)
    args = parser.parse_args()
    preset = get_preset("cpu-mini-adamw")
    if args.sigma is None and preset.noise_std is None:
        raise SystemExit("cpu-mini-adamw has no measured noise_std; pass --sigma PP")
    sigma = args.sigma if args.sigma is not None else 100 * preset.noise_std
    table = Table(args.journal, STUDY)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # after the journal's open: NaN = FAIL
    t0 = time.process_time()
    results: dict = {}
    start_points = starts(table)
    for start_name, start in start_points.items():
        for method in args.methods:
            n = args.slow_reps if method == "GP" else args.reps
            s = summarise([run(method, table, sigma, start, rep, preset.hparams.epochs,
                               args.target) for rep in range(n)])
            results.setdefault(start_name, {})[method] = s
            r = s["runs_to_target"]
            print(f"{start_name:>24} {method:>38}: median {r['median']} [{r['q1']}, {r['q3']}]"
                  f", {s['success_rate']:.0%}, total {s['median_runs_total']}", flush=True)
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(("ridgeline", "optuna", "numpy", "cmaes")),
        "cpu_seconds": round(time.process_time() - t0),
        "config": {"cap": CAP, "sigma_pp": sigma, "target_pp": args.target, "best_pp": table.best,
                   "study": STUDY, "cells": len(table.cells), "shape": table.shape,
                   "starts": start_points, "reps": args.reps, "slow_reps": args.slow_reps},
        "results": results,
    }
    args.out_json.write_text(json.dumps(report, indent=1) + "\n")
    figure(results, table, args.out_png)
    print(f"wrote {args.out_json} and {args.out_png}")


if __name__ == "__main__":
    main()
