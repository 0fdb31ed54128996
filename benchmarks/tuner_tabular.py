"""Runs-to-target of the tuners on a lookup table of real cpu-mini runs (benchmark ii).

Table. One or more Optuna studies (default: ``grid3-cpu-mini`` in $RIDGELINE_STORAGE or
./ridgeline.journal) hold COMPLETE runs of one preset on a λ × (1−ρ) × α grid that is uniform
in log2 along each axis: lr-wd sweeps at several momenta written into one study. This grid of
powers of 2 around cpu-mini's values holds both starts (docs/tuner.md):

    for m in 0.9875 0.975 0.95 0.9 0.8 0.6 0.2; do
      ridgeline sweep --slice lr-wd --preset cpu-mini --momentum $m --lr 0.0353553 \
        --weight-decay 0.001 --steps 12 9 --seeds 2 --study grid3-cpu-mini
    done

Measured (docs/tuner.md): a 6 × 5 × 5 table, the lr-wd slice at five momenta; the full grid above
(756 cells) did not fit. Slices. The landscape sweeps themselves also serve as 2-D tables: a slice
has a single value on its third axis, so every probe that moves that axis leaves the box and is
never run. The paper's bad start lies outside these slices; ``--starts grid`` uses the slice's
worst finished cell as the bad start and the preset's defaults, snapped to a cell, as the sensible
one:

    python benchmarks/tuner_tabular.py --storage benchmarks/results/landscapes/ridgeline.journal \
        --study lr-wd-cpu-mini --starts grid --out-json .../tuner_tabular_lr-wd.json ...

This script runs no training: it reads the trials through ridgeline.runs.ledger.trial_to_result, so
any study whose trials carry RunResult attrs (sweeps, tunes) can contribute. A cell keeps the
test accuracy of each of its seeds (None for a diverged seed).

Lookup. A point goes to the nearest cell in log2 along each axis. A point more than half a step
outside the grid, a cell nobody ran, and a seed that diverged all score as *diverged*: None to
coordinate descent (ranked below any accuracy), FAIL to the samplers. The optimum is sought
inside the measured box; wandering out of it never pays.

Noise. An evaluation returns one seed's accuracy, not the cell mean. For coordinate descent the
seed is picked by a hash of (cell, tuner seed, repetition), so re-evaluating a point gives the
same value, as a real run with the same seed would; the samplers draw it from the repetition's
generator. A cell run with one seed is noiseless, so give the sweeps ≥ 2 seeds, or add
noise: ``--add-noise PP`` adds N(0, PP) to every lookup (for coordinate descent drawn from the
same hash, so a re-evaluated point still gives the same value).

Target. A method reaches it at its first evaluation whose cell mean (over finished seeds) is
within TARGET pp of the best cell mean (noise never moves the target). The threshold of
coordinate descent is half of σ, the std of a lookup: the pooled seed-to-seed std of the cells
combined with the added noise (the preset's noise_std where both are 0), as `ridgeline tune`
uses by default. Results: benchmarks/results/tuner_tabular.json and
docs/figures/tuner_tabular.png.

    python benchmarks/tuner_tabular.py [--storage S] [--study NAME ...] [--reps 20]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import time
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).parent))  # the synthetic benchmark's shared pieces

from tuner_synthetic import LIBRARIES, ask_tell, figure, summarise  # noqa: E402

from ridgeline.errors import RidgelineError  # noqa: E402
from ridgeline.presets import get_preset  # noqa: E402
from ridgeline.runs import ledger as st  # noqa: E402
from ridgeline.tuner import settings  # noqa: E402
from ridgeline.tuner.invariants import paper_system, raw_system  # noqa: E402
from ridgeline.tuner.tune import STARTS, tune  # noqa: E402
from ridgeline.versions import versions  # noqa: E402

ROOT = Path(__file__).parents[1]
OUT_JSON = ROOT / "benchmarks" / "results" / "tuner_tabular.json"
OUT_PNG = ROOT / "docs" / "figures" / "tuner_tabular.png"
TARGET, CAP = 0.3, 100  # pp, evaluations
AXES = ("lr", "one_minus_momentum", "weight_decay")
TOL = 1e-6  # log2 tolerance when reading grid values back


@dataclass
class Table:
    """Cells of a log2 grid: ``logs[i]`` are the cell centres along AXES[i] (sorted, uniform)."""

    logs: tuple[np.ndarray, ...]
    cells: dict[tuple[int, ...], list] = field(default_factory=dict)  # seed accuracies (pp)
    added_noise: float = 0.0  # pp: N(0, this) added to every lookup (--add-noise)

    def draw(self, idx: tuple[int, ...] | None, pick: int, rng) -> float | None:
        """One evaluation of cell ``idx``: seed ``pick`` (mod the seeds run), plus added noise
        from ``rng``; None where nothing finished."""
        values = self.cells.get(idx)
        if not values or (value := values[pick % len(values)]) is None:
            return None
        return value + self.added_noise * rng.normal() if self.added_noise else value

    def index(self, p: dict) -> tuple[int, ...] | None:
        """The nearest cell, or None more than half a step outside the grid."""
        idx = self.clamp(p)
        for centres, i, value in zip(self.logs, idx, _box_logs(p), strict=True):
            step = centres[1] - centres[0] if len(centres) > 1 else 1.0
            if abs(centres[i] - value) > step / 2 + TOL:
                return None
        return idx

    def clamp(self, p: dict) -> tuple[int, ...]:
        """The nearest cell, however far outside the grid ``p`` is."""
        return tuple(int(np.argmin(np.abs(c - v))) for c, v in zip(self.logs, _box_logs(p),
                                                                    strict=True))

    def mean(self, idx: tuple[int, ...] | None) -> float | None:
        finished = [v for v in self.cells.get(idx, []) if v is not None]
        return float(np.mean(finished)) if finished else None

    @cached_property
    def best(self) -> float:
        """The best cell mean (pp); read once the table is filled."""
        return max(m for m in map(self.mean, self.cells) if m is not None)

    def noise_std(self) -> float | None:
        """Pooled seed-to-seed std (pp) over cells with ≥ 2 finished seeds."""
        groups = [[v for v in vals if v is not None] for vals in self.cells.values()]
        groups = [g for g in groups if len(g) >= 2]
        if not groups:
            return None
        dof = sum(len(g) - 1 for g in groups)
        return math.sqrt(sum(np.var(g, ddof=1) * (len(g) - 1) for g in groups) / dof)

    def box(self) -> dict:
        """The grid's extent (cell edges) in the samplers' parameters."""
        out = {}
        for name, centres in zip(AXES, self.logs, strict=True):
            half = (centres[1] - centres[0]) / 2 if len(centres) > 1 else 0.5
            out[name] = (2 ** (centres[0] - half), 2 ** (centres[-1] + half))
        return out


def _box_logs(p: dict) -> list[float]:
    return [math.log2(p["lr"]), math.log2(1 - p["momentum"]), math.log2(p["weight_decay"])]


def load_table(storage, studies: list[str], preset: str) -> Table:
    """The runs of ``preset`` in ``studies`` on their grid (see the module docstring)."""
    runs, fixed = [], set()
    for name in studies:
        study = st.open_study(name, storage, create=False)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            result = st.trial_to_result(t)
            if result is not None and result.preset == preset:
                acc = None if result.diverged else 100 * result.test_acc
                runs.append((result.hparams, acc))
                fixed.add(tuple(result.hparams.get(k) for k in
                                ("batch_size", "epochs", "warmup_epochs")))
    if not runs:
        raise SystemExit(f"no finished {preset} runs in {studies}: run the sweeps first")
    if len(fixed) > 1:  # e.g. an lr-batch slice: the tuner does not move N, so no table
        raise SystemExit(f"the runs in {studies} differ in batch_size/epochs/warmup_epochs "
                         f"({sorted(fixed)}): the table's axes are λ, 1−ρ and α only")
    points = [_box_logs(hp) for hp, _ in runs]
    table = Table(tuple(_axis([p[i] for p in points], AXES[i]) for i in range(len(AXES))))
    for hp, acc in runs:
        table.cells.setdefault(table.clamp(hp), []).append(acc)
    return table


def _axis(values: list[float], name: str) -> np.ndarray:
    """Distinct grid values along one axis, checked to be uniform in log2."""
    centres = np.array(sorted({round(v / TOL) * TOL for v in values}))
    steps = np.diff(centres)
    if steps.size and np.ptp(steps) > 1e-3:
        raise SystemExit(f"the {name} values {np.round(2**centres, 6).tolist()} are not a "
                         f"uniform log2 grid")
    return centres


# ----------------------------------------------------------------------------- methods

def cd_objective(table: Table, rep: int):
    def objective(params: dict, seed: int) -> float | None:
        idx = table.index(params)
        key = zlib.crc32(repr((idx, seed, rep)).encode())  # same point, same seed: same value
        return table.draw(idx, key, np.random.default_rng(key))

    return objective


def hit(table: Table, p: dict) -> bool:
    mean = table.mean(table.index(p))
    return mean is not None and mean >= table.best - TARGET


def run_cd(table: Table, system, start: dict, rep: int, threshold: float, line_search: str,
           cap: int) -> dict:
    """Bounded to the grid's box: points outside are worse without being run."""
    bounds = {"lr": table.box()["lr"], "weight_decay": table.box()["weight_decay"],
              "momentum": tuple(1 - b for b in reversed(table.box()["one_minus_momentum"]))}
    result = tune(cd_objective(table, rep), start, system, max_evals=cap,
                  min_improvement=threshold, seed=rep, bounds=bounds, line_search=line_search)
    first = next((r.run for r in result.history if hit(table, r.params)), None)
    final = table.mean(table.index(result.best))
    return {"runs_to_target": first, "runs_total": result.n_runs, "stopped": result.stopped,
            "final_regret": None if final is None else table.best - final}


def run_sampler(table: Table, name: str, start: dict, rep: int, start_id: int, cap: int) -> dict:
    def evaluate(p: dict, rng) -> tuple[float, bool]:
        idx = table.index(p)
        value = table.draw(idx, int(rng.integers(len(table.cells.get(idx) or [None]))), rng)
        return (math.nan if value is None else value), hit(table, p)

    return ask_tell(name, start, rep, start_id, table.box(), evaluate, cap)


def methods(table: Table, threshold: float, cap: int) -> dict:
    def cd(system, line_search, thr=threshold):
        return lambda s, r, i: run_cd(table, system(), s, r, thr, line_search, cap)

    def sampled(name):
        return lambda s, r, i: run_sampler(table, name, s, r, i, cap)

    return {"reparam CD": cd(paper_system, "accelerate"),
            "reparam CD, double": cd(paper_system, "double"),
            "reparam CD, double, threshold σ": cd(paper_system, "double", 2 * threshold),
            "raw CD": cd(raw_system, "accelerate"),
            "TPE": sampled("tpe"), "random": sampled("random"), "CMA-ES": sampled("cmaes")}


def grid_starts(table: Table, preset) -> dict:
    """Starts inside the grid: its worst finished cell (bad), Page's bad start clamped to the
    grid's box (the cell nearest it, on the box's faces: the same direction, as far as the runs
    go) and the preset's defaults (sensible)."""
    worst = min((m, idx) for idx in table.cells if (m := table.mean(idx)) is not None)[1]
    paper = preset.hparams.replace(**STARTS["bad"]).to_dict()
    return {"bad": _cell_params(table, worst, preset),
            "paper, clamped": _cell_params(table, table.clamp(paper), preset),
            "sensible": preset.hparams.to_dict()}


def _cell_params(table: Table, idx: tuple[int, ...], preset) -> dict:
    logs = [c[i] for c, i in zip(table.logs, idx, strict=True)]
    return preset.hparams.replace(lr=float(2 ** logs[0]), momentum=float(1 - 2 ** logs[1]),
                                  weight_decay=float(2 ** logs[2])).to_dict()


def run_all(table: Table, starts: dict, threshold: float, reps: int, cap: int) -> dict:
    """Every method from every start that lies in the grid (a start outside it is skipped:
    there is nothing to look up there)."""
    results: dict = {}
    for start_id, (start_name, start) in enumerate(starts.items()):
        if table.index(start) is None:
            print(f"{start_name} start {start} is outside the grid: skipped", flush=True)
            continue
        results[start_name] = {}
        for name, run in methods(table, threshold, cap).items():
            results[start_name][name] = s = summarise([run(start, r, start_id)
                                                       for r in range(reps)])
            print(f"{start_name:>8} {name:>32}: median {s['median']}, IQR [{s['q1']}, "
                  f"{s['q3']}], success {s['success_rate']:.0%}", flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", help="journal file or database URL")
    parser.add_argument("--study", nargs="+", default=["grid3-cpu-mini"])
    parser.add_argument("--preset", default="cpu-mini")
    parser.add_argument("--starts", choices=("paper", "grid"), default="paper",
                        help="paper: Page's bad start and the defaults; grid: the worst cell, "
                             "Page's bad start clamped to the grid and the defaults (for grids "
                             "that miss the paper's start)")
    parser.add_argument("--add-noise", type=float, default=0.0, metavar="PP",
                        help="add N(0, PP) to every lookup, drawn per repetition (a one-seed "
                             "table is otherwise noiseless), e.g. 0.33: cpu-mini's seed std")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--cap", type=int, default=CAP)
    parser.add_argument("--out-json", type=Path, default=OUT_JSON)
    parser.add_argument("--out-png", type=Path, default=OUT_PNG)
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    preset = get_preset(args.preset)
    try:
        table = load_table(args.storage, args.study, preset.name)
    except RidgelineError as e:  # no such storage or study: one line, as the CLI would say
        raise SystemExit(f"error: {e}") from None
    table.added_noise = args.add_noise
    measured = math.hypot(table.noise_std() or 0.0, args.add_noise)  # what a lookup varies by
    sigma = measured or 100 * (preset.noise_std or 0.0)  # 0 where the preset states none
    threshold = settings.threshold(sigma)
    starts = grid_starts(table, preset) if args.starts == "grid" else {
        name: preset.hparams.replace(**change).to_dict() for name, change in STARTS.items()}
    t0 = time.process_time()
    results = run_all(table, starts, threshold, args.reps, args.cap)
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(LIBRARIES),
        "cpu_seconds": round(time.process_time() - t0, 1),
        "config": {
            "studies": args.study, "preset": preset.name, "target_pp": TARGET, "cap": args.cap,
            "grid_log2": {a: c.tolist() for a, c in zip(AXES, table.logs, strict=True)},
            "cells_run": len(table.cells), "best_cell_mean_pp": table.best,
            "noise_std_pp": sigma, "added_noise_pp": args.add_noise,
            "cd_min_improvement_pp": threshold,
            "start_rule": args.starts, "starts": starts,
            "skipped_starts": [n for n in starts if n not in results],
            "reps": args.reps,
        },
        "results": results,
    }
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(report, indent=1) + "\n")
    added = f", {args.add_noise:g} pp of it added" if args.add_noise else ""
    figure(results, args.out_png, f"Lookup table of real {preset.name} runs "
           f"({len(table.cells)} cells, lookup noise σ = {sigma:.2f} pp{added})", starts,
           args.cap, TARGET)
    print(f"wrote {args.out_json} and {args.out_png}")


if __name__ == "__main__":
    main()
