"""FlatDirectionSampler against Optuna's samplers, all through ``study.optimize`` at one budget.

Objectives (docs/tuner.md, "FlatDirectionSampler benchmark"):

* ``synthetic``: benchmarks/tuner_synthetic.py's landscape (noise σ = 0.15 pp), and the same
  landscape with σ = 0.58 pp (``synthetic-noisy``), a robustness check at 4× the noise.
* ``table``: the 150-cell cpu-mini λ × ρ × α table (benchmarks/tuner_tabular.py) with
  N(0, 0.33 pp) added to every lookup, the measured seed-to-seed std.
* ``bn-table``: benchmarks/results/bn_table.json (a small BatchNorm CNN, 350 cells × 2 real
  seeds, from branch ``tables``) when present; target one seed std of the best cell.

Every objective suggests ``lr``, ``momentum`` (linear) and ``weight_decay`` (log) over the
method's box and a ``seed``: FlatDirectionSampler gives the replicate index; the other samplers'
trials use ``trial.number``. Noise is a fixed function of (point, seed, repetition), as a
training run with that seed would be. A diverged point returns NaN (FAIL). A method reaches the
target at its first trial whose noiseless value is within TARGET of the best. Epochs to target
sum the epochs each table run trained (a run that diverged early trained fewer).

    python benchmarks/tuner_sampler.py [--reps 100] [--table-reps 20] [--only NAME ...]
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

import tuner_synthetic as syn  # noqa: E402
import tuner_tabular as tab  # noqa: E402

from ridgeline.figures import new_figure, save  # noqa: E402
from ridgeline.presets import get_preset  # noqa: E402
from ridgeline.runs import ledger  # noqa: E402
from ridgeline.tuner.sampler import STOPPED_ATTR, FlatDirectionSampler  # noqa: E402
from ridgeline.versions import versions  # noqa: E402

ROOT = Path(__file__).parents[1]
OUT_JSON = ROOT / "benchmarks" / "results" / "tuner_sampler.json"
OUT_PNG = ROOT / "docs" / "figures" / "tuner_sampler.png"
JOURNAL = ROOT / "benchmarks" / "results" / "landscapes" / "ridgeline.journal"
BN_TABLE = ROOT / "benchmarks" / "results" / "bn_table.json"
CAP = 40  # trials per study: the budget of `ridgeline tune` (max_evals 40)
TABLE_NOISE, TABLE_TARGET = 0.33, 0.33  # pp: cpu-mini's seed std; target = one seed std
NOISY = 0.58  # pp: the robustness check's noise
RAW = ()  # no invariants: raw-coordinate descent (λ, 1−ρ, α)


class Objective:
    """One landscape: ``clean(params)`` (NaN = diverged), noise σ, box, epochs per run."""

    def __init__(self, clean, sigma: float, box: dict, target: float, best: float,
                 epochs=None) -> None:
        self.clean, self.sigma, self.box, self.target, self.best = clean, sigma, box, target, best
        self.epochs = epochs or (lambda p: 1.0)

    def hit(self, p: dict) -> bool:
        return self.clean(p) >= self.best - self.target  # False for NaN

    def __call__(self, rep: int, flat: bool):
        lr, r, wd = self.box["lr"], self.box["one_minus_momentum"], self.box["weight_decay"]

        def objective(trial: optuna.Trial) -> float:
            p = {"lr": trial.suggest_float("lr", *lr, log=True),
                 "momentum": trial.suggest_float("momentum", 1 - r[1], 1 - r[0]),
                 "weight_decay": trial.suggest_float("weight_decay", *wd, log=True)}
            seed = trial.suggest_int("seed", 0, 10**6) if flat else trial.number
            trial.set_user_attr("point", p)
            key = zlib.crc32(repr([round(math.log(v), 6) for v in _logs(p)]).encode())
            value = self.clean(p)
            return value + self.sigma * np.random.default_rng([rep, seed, key]).normal()

        return objective


def _logs(p: dict) -> list[float]:
    return [p["lr"], 1 - p["momentum"], p["weight_decay"]]


def synthetic(rep: int, sigma: float, target: float = syn.TARGET) -> Objective:
    opt = syn.optimum(rep)
    return Objective(lambda p: syn.clean_accuracy(p, opt), sigma, syn.BOX, target, syn.PEAK)


def table_objective() -> tuple[callable, dict]:
    """The 150-cell table: a factory of per-rep objectives, and its starts."""
    preset = get_preset("cpu-mini")
    table = tab.load_table(str(JOURNAL), ["lr-wd-cpu-mini", "grid3-cpu-mini"], preset.name)
    epochs = _cell_epochs(table, preset)

    def clean(p: dict) -> float:
        mean = table.mean(table.index(p))
        return math.nan if mean is None else mean

    def cost(p: dict) -> float:
        return epochs.get(table.index(p), float(preset.hparams.epochs))

    starts = tab.grid_starts(table, preset)
    starts = {"worst cell": starts["bad"], "paper, clamped": starts["paper, clamped"],
              "sensible": starts["sensible"]}
    box = table.box()
    return (lambda rep, sigma: Objective(clean, sigma, box, TABLE_TARGET, table.best, cost)), \
        starts


def bn_table_objective() -> tuple[callable, dict] | None:
    """benchmarks/results/bn_table.json (branch ``tables``: a small BatchNorm net, 10 λ × 5 (1−ρ)
    × 7 α, 2 seeds a cell): an evaluation is one of the cell's two real seeds, picked by a hash
    of (cell, seed, repetition); the target is one seed std of the best cell mean."""
    if not BN_TABLE.exists():
        return None
    data = json.loads(BN_TABLE.read_text())
    cells = {}
    for cell in data["cells"].values():
        key = tuple(round(math.log2(v)) for v in _logs(cell))
        cells[key] = ([None if a is None else 100 * a for a in cell["acc"]],
                      float(np.mean(cell["epochs"])))
    means = {k: float(np.mean(a)) for k, (a, _) in cells.items() if a and None not in a}
    best, std = max(means.values()), 100 * data["seed_std"]
    axes = data["axes"]
    box = {"lr": _edges(axes["lr"]), "one_minus_momentum": _edges(axes["one_minus_momentum"]),
           "weight_decay": _edges(axes["weight_decay"])}

    def key(p: dict) -> tuple:
        return tuple(round(math.log2(v)) for v in _logs(p))

    class Bn(Objective):
        def __call__(self, rep: int, flat: bool):
            def objective(trial: optuna.Trial) -> float:
                p = {"lr": trial.suggest_float("lr", *box["lr"], log=True),
                     "momentum": trial.suggest_float("momentum",
                                                     1 - box["one_minus_momentum"][1],
                                                     1 - box["one_minus_momentum"][0]),
                     "weight_decay": trial.suggest_float("weight_decay", *box["weight_decay"],
                                                         log=True)}
                seed = trial.suggest_int("seed", 0, 10**6) if flat else trial.number
                trial.set_user_attr("point", p)
                accs, _ = cells.get(key(p), ([None], 0.0))
                pick = zlib.crc32(repr((key(p), seed, rep)).encode()) % len(accs)
                return math.nan if accs[pick] is None else accs[pick]
            return objective

    def clean(p: dict) -> float:
        return means.get(key(p), math.nan)

    obj = Bn(clean, 0.0, box, std, best, lambda p: cells.get(key(p), (None, 4.0))[1])
    starts = {"bad": dict(data["description"]["bad_start"]),
              "centre": {"lr": 0.032, "momentum": 0.875, "weight_decay": 0.0025}}
    return (lambda rep: obj), starts


def _edges(centres: list[float]) -> tuple[float, float]:
    """A log2 axis of factor-2 cells: its outer edges, half a step beyond the centres."""
    lo, hi = min(centres), max(centres)
    return lo / math.sqrt(2), hi * math.sqrt(2)


def _cell_epochs(table, preset) -> dict:
    """Mean epochs trained per cell (a diverged run stops early)."""
    out: dict = {}
    for name in ("lr-wd-cpu-mini", "grid3-cpu-mini"):
        study = ledger.open_study(name, str(JOURNAL), create=False)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            result = ledger.trial_to_result(t)
            if result is not None and result.preset == preset.name:
                out.setdefault(table.clamp(result.hparams), []).append(len(result.epochs))
    return {k: float(np.mean(v)) for k, v in out.items()}


# ----------------------------------------------------------------------------- methods

def flat(invariants=("lr*weight_decay/(1-momentum)",), **kw):
    return lambda start, rep: FlatDirectionSampler(
        start={k: start[k] for k in ("lr", "momentum", "weight_decay")},
        invariants=invariants, seed=rep, **kw)


def baseline(name: str):
    def make(start, rep):
        if name == "TPE":
            return optuna.samplers.TPESampler(seed=rep)
        if name == "GP":
            return optuna.samplers.GPSampler(seed=rep)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=rep)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return optuna.samplers.CmaEsSampler(seed=rep, x0={k: start[k] for k in
                                                              ("lr", "momentum",
                                                               "weight_decay")})
    return make


NO_RAW = {"raw_axes": False}  # the variants measured before raw axes were the default
METHODS = {
    "flat (default): recheck best, levels 8, wide, raw axes": flat(),
    "flat, recheck best, levels 8, wide (no raw axes)": flat(**NO_RAW),
    "flat, levels 1 (Page's stop)": flat(max_level=1, recheck="all", wide=False, **NO_RAW),
    "flat, levels 2": flat(max_level=2, recheck="all", wide=False, **NO_RAW),
    "flat, levels 3": flat(max_level=3, recheck="all", wide=False, **NO_RAW),
    "flat, double, levels 3": flat(line_search="double", max_level=3, recheck="all",
                                   wide=False, **NO_RAW),
    "flat, recheck best, levels 8": flat(wide=False, **NO_RAW),
    "flat, levels 3, wide": flat(max_level=3, recheck="all", **NO_RAW),
    "raw CD, levels 3 (all)": flat(RAW, max_level=3, recheck="all", wide=False),
    "raw CD (default's settings)": flat(RAW),  # no invariants: its axes are the raw ones
    "TPE": baseline("TPE"),
    "GP": baseline("GP"),
    "random": baseline("random"),
    "CMA-ES": baseline("CMA-ES"),
}
# Earlier parts' labels -> today's (each old label straight to its final name).
RENAMED = {"flat, levels 3 (default)": "flat, levels 3",
           "flat, recheck best, levels 8, wide": "flat, recheck best, levels 8, wide (no raw axes)",
           "flat (default): recheck best, levels 8, wide":
               "flat, recheck best, levels 8, wide (no raw axes)",
           "flat, default + raw axes": "flat (default): recheck best, levels 8, wide, raw axes",
           "raw CD, levels 3": "raw CD, levels 3 (all)"}
SLOW = {"GP"}  # fewer repetitions (--slow-reps): a GP fit per trial


def run(method: str, objective: Objective, start: dict, rep: int) -> dict:
    """One study of CAP trials; the start is the first trial for every method."""
    sampler = METHODS[method](start, rep)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    if not isinstance(sampler, FlatDirectionSampler):
        study.enqueue_trial({k: start[k] for k in ("lr", "momentum", "weight_decay")})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.optimize(objective(rep, isinstance(sampler, FlatDirectionSampler)), n_trials=CAP)
    return outcome(study, objective)


def outcome(study: optuna.Study, objective) -> dict:
    """A finished study's runs and epochs to target, runs, final regret and stop reason, from
    the ``point`` user attr of its trials; ``objective`` has ``hit``, ``clean``, ``best`` and
    ``epochs`` (an Objective, or any landscape with them: benchmarks/tuner_adamw.py)."""
    points = [t.user_attrs["point"] for t in study.trials if "point" in t.user_attrs]
    first = next((i for i, p in enumerate(points, 1) if objective.hit(p)), None)
    epochs = None if first is None else sum(objective.epochs(p) for p in points[:first])
    best = max((t for t in study.trials if t.state == TrialState.COMPLETE),
               key=lambda t: t.value, default=None)
    regret = None if best is None else objective.best - objective.clean(best.user_attrs["point"])
    return {"runs_to_target": first, "epochs_to_target": epochs, "runs_total": len(points),
            "final_regret": regret, "stopped": study.user_attrs.get(STOPPED_ATTR)}


def summarise(runs: list[dict]) -> dict:
    """Median and quartiles with misses counted as worse than any hit (null if on a miss)."""
    out = {}
    for metric in ("runs_to_target", "epochs_to_target"):
        v = np.array([r[metric] if r[metric] is not None else math.inf for r in runs], float)
        q1, med, q3 = np.percentile(v, [25, 50, 75], method="lower")
        out[metric] = {k: None if math.isinf(x) else float(x)
                       for k, x in (("q1", q1), ("median", med), ("q3", q3))}
    out["success_rate"] = float(np.mean([r["runs_to_target"] is not None for r in runs]))
    out["median_runs_total"] = float(np.median([r["runs_total"] for r in runs]))
    regrets = [r["final_regret"] for r in runs if r["final_regret"] is not None]
    out["median_final_regret"] = float(np.median(regrets)) if regrets else None
    return out | {"reps": len(runs), "runs": runs}


def figure(results: dict, path: Path) -> None:
    """Runs to target per method, one panel per (objective, start): boxes over the hits,
    misses counted in red above the cap."""
    panels = [(o, s) for o in results for s in results[o]]
    fig, axes = new_figure((4.2 * len(panels), 5.5), 1, len(panels), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, (obj, start) in zip(axes[0], panels, strict=True):
        by_method = results[obj][start]
        for i, name in enumerate(by_method):
            values = [r["runs_to_target"] for r in by_method[name]["runs"]]
            hits = [v for v in values if v is not None]
            if hits:
                ax.boxplot([hits], positions=[i], widths=0.5, showfliers=False)
                ax.scatter(i + rng.uniform(-0.15, 0.15, len(hits)), hits, s=6, alpha=0.5)
            if misses := len(values) - len(hits):
                ax.scatter([i], [CAP * 1.25], marker="x", color="red")
                ax.annotate(str(misses), (i, CAP * 1.25), textcoords="offset points",
                            xytext=(5, -3), fontsize=7, color="red")
        ax.set_yscale("log")
        ax.axhline(12, color="green", lw=0.6, ls="--")
        ax.set_xticks(range(len(by_method)), [n.replace(", ", "\n") for n in by_method],
                      fontsize=6, rotation=90)
        ax.set_title(f"{obj}: {start} start", fontsize=9)
    axes[0][0].set_ylabel(f"runs to target (cap {CAP}; red x: misses; green: 12 runs)")
    save(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument("--table-reps", type=int, default=20)
    parser.add_argument("--slow-reps", type=int, default=20)
    parser.add_argument("--only", nargs="*", help="objectives to run (default: all)")
    parser.add_argument("--methods", nargs="*", help="methods to run (default: all)")
    parser.add_argument("--combine", nargs="*", type=Path,
                        help="merge these part JSONs (each a run with --only/--methods) into "
                             "--out-json and draw --out-png")
    parser.add_argument("--out-json", type=Path, default=OUT_JSON)
    parser.add_argument("--out-png", type=Path, default=OUT_PNG)
    args = parser.parse_args()
    if args.combine:
        return combine(args)
    table, table_starts = table_objective()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    objectives = {
        "synthetic": (lambda rep: synthetic(rep, syn.NOISE), syn.STARTS, args.reps),
        "synthetic-noisy": (lambda rep: synthetic(rep, NOISY, NOISY), syn.STARTS, args.reps),
        "table": (lambda rep: table(rep, TABLE_NOISE), table_starts, args.table_reps),
    }
    if (bn := bn_table_objective()) is not None:
        objectives["bn-table"] = (bn[0], bn[1], args.table_reps)
    methods = args.methods or list(METHODS)
    t0 = time.process_time()
    results: dict = {}
    for obj_name, (make, starts, reps) in objectives.items():
        if args.only and obj_name not in args.only:
            continue
        for start_name, start in starts.items():
            for method in methods:
                n = min(reps, args.slow_reps) if method in SLOW else reps
                s = summarise([run(method, make(rep), start, rep) for rep in range(n)])
                results.setdefault(obj_name, {}).setdefault(start_name, {})[method] = s
                r = s["runs_to_target"]
                print(f"{obj_name:>15} {start_name:>14} {method:>28}: median {r['median']} "
                      f"[{r['q1']}, {r['q3']}], {s['success_rate']:.0%} on target, "
                      f"total {s['median_runs_total']}", flush=True)
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(syn.LIBRARIES),
        "cpu_seconds": round(time.process_time() - t0, 1),
        "config": {"cap": CAP, "synthetic_noise_pp": syn.NOISE, "noisy_pp": NOISY,
                   "synthetic_target_pp": syn.TARGET, "table_noise_pp": TABLE_NOISE,
                   "table_target_pp": TABLE_TARGET, "table_best_pp": table(0, 0).best,
                   "starts": {"synthetic": syn.STARTS, "table": table_starts},
                   "reps": args.reps, "table_reps": args.table_reps,
                   "slow_reps": args.slow_reps, "slow_methods": sorted(SLOW)},
        "results": results,
    }
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(report, indent=1) + "\n")
    figure(results, args.out_png)
    print(f"wrote {args.out_json} and {args.out_png} ({report['cpu_seconds']} s CPU)")


def combine(args) -> None:
    """One report from parts run separately (each locked CPU command stays short)."""
    parts = [json.loads(p.read_text()) for p in args.combine]
    for part in parts:  # labels of earlier parts, before the default changed
        for starts in part["results"].values():
            for by in starts.values():
                for old, new in RENAMED.items():
                    if old in by:
                        by[new] = by.pop(old)
    results: dict = {}
    for part in parts:
        for obj, starts in part["results"].items():
            for start, by_method in starts.items():
                results.setdefault(obj, {}).setdefault(start, {}).update(by_method)
    order = list(METHODS)
    for obj in results:
        for start in results[obj]:
            by = results[obj][start]
            results[obj][start] = {m: by[m] for m in sorted(by, key=order.index)}
    report = parts[0] | {"cpu_seconds": sum(p["cpu_seconds"] for p in parts),
                         "parts": [str(p) for p in args.combine], "results": results}
    args.out_json.write_text(json.dumps(report, indent=1) + "\n")
    figure(results, args.out_png)
    print(f"wrote {args.out_json} and {args.out_png}")


if __name__ == "__main__":
    main()
