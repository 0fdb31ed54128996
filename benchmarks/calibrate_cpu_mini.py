"""Calibrate the cpu-mini preset: seed noise at the defaults and a coarse lr x weight_decay slice.

Each run is saved as JSON under benchmarks/results/cpu_mini/ and skipped when re-run, so the
script resumes after an interruption. ``--report`` summarises into docs/cpu-mini.md + a figure.

    RIDGELINE_DATA=../shared/data python benchmarks/calibrate_cpu_mini.py [--report]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from ridgeline.cifar.data import load_cifar10
from ridgeline.cifar.train import train
from ridgeline.presets import get_preset

OUT = Path(__file__).parent / "results" / "cpu_mini"
DOC = Path(__file__).parents[1] / "docs"
LRS = [0.0125, 0.05, 0.2, 0.8, 3.2]  # λ: ×4 steps around the default 0.2
WDS = [1.25e-4, 5e-4, 2e-3]  # α: ×4 steps around the default 5e-4
SEEDS = [0, 1, 2]


def plan(preset) -> list[tuple[float, float, int]]:
    hp = preset.hparams
    runs = [(hp.lr, hp.weight_decay, s) for s in SEEDS]
    return runs + [(lr, wd, 0) for wd in WDS for lr in LRS if (lr, wd) != (hp.lr, hp.weight_decay)]


def path_for(lr: float, wd: float, seed: int) -> Path:
    return OUT / f"lr{lr:g}_wd{wd:g}_seed{seed}.json"


def run_all() -> None:
    preset = get_preset("cpu-mini")
    data = load_cifar10()
    OUT.mkdir(parents=True, exist_ok=True)
    for lr, wd, seed in plan(preset):
        path = path_for(lr, wd, seed)
        if path.exists():
            continue
        hp = preset.hparams.replace(lr=lr, weight_decay=wd)
        result = train(hp, preset, seed=seed, data=data, progress=True)
        path.write_text(result.to_json(indent=1))
        print(f"lr={lr:g} wd={wd:g} seed={seed}: acc={result.test_acc} {result.wall_time:.0f}s")


def load(lr, wd, seed):
    return json.loads(path_for(lr, wd, seed).read_text())


def report() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    preset = get_preset("cpu-mini")
    hp = preset.hparams
    defaults = [load(hp.lr, hp.weight_decay, s) for s in SEEDS]
    accs = [r["test_acc"] for r in defaults]
    mean, std = statistics.mean(accs), statistics.stdev(accs)
    grid = np.full((len(WDS), len(LRS)), np.nan)
    for i, wd in enumerate(WDS):
        for j, lr in enumerate(LRS):
            r = load(lr, wd, 0)
            grid[i, j] = np.nan if r["diverged"] else 100 * r["test_acc"]
    walls = [load(lr, wd, s)["wall_time"] for lr, wd, s in plan(preset)]
    summary = {"defaults": {"lr": hp.lr, "weight_decay": hp.weight_decay, "accs": accs,
                            "mean": mean, "std": std,
                            "wall_times": [r["wall_time"] for r in defaults]},
               "slice": {"lr": LRS, "weight_decay": WDS, "test_acc_pct": grid.tolist()},
               "wall_time_median": statistics.median(walls)}
    (OUT.parent / "cpu_mini_calibration.json").write_text(json.dumps(summary, indent=1))

    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    im = ax.imshow(grid, cmap="viridis", vmin=np.nanmax(grid) - 10, vmax=np.nanmax(grid))
    for i in range(len(WDS)):
        for j in range(len(LRS)):
            text = "div" if np.isnan(grid[i, j]) else f"{grid[i, j]:.1f}"
            ax.text(j, i, text, ha="center", va="center", color="w", fontsize=9)
    ax.set_xticks(range(len(LRS)), [f"{x:g}" for x in LRS])
    ax.set_yticks(range(len(WDS)), [f"{x:g}" for x in WDS])
    ax.set_xlabel("lr λ (peak)")
    ax.set_ylabel("weight_decay α")
    ax.set_title(f"cpu-mini test accuracy %, seed 0 (defaults: {100 * mean:.2f}±{100 * std:.2f})")
    fig.colorbar(im, ax=ax, label="%")
    fig.tight_layout()
    (DOC / "figures").mkdir(parents=True, exist_ok=True)
    fig.savefig(DOC / "figures" / "cpu_mini_slice.png", dpi=120)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--report", action="store_true", help="summarise finished runs")
    args = ap.parse_args()
    report() if args.report else run_all()
