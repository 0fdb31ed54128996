"""What a tune leaves behind: Page's table of runs (printed, markdown, CSV) and a trajectory figure.

Table. One row per run the search needed, in order: run, λ, ρ, α, λα/(1−ρ) and test accuracy,
as in the paper's table of tuning runs, plus the step that produced it; a run that became the
new best is marked.

Figure. The path in the (1/α, λ) and (1−ρ, λ) planes, the axes of `ridgeline plot`'s lr-wd and
lr-momentum heatmaps, on which the paper's ridges are lines of slope +1; every run is numbered
with its accuracy and the runs that became the best are joined. Where the storage holds a
landscape study of the same preset (`ridgeline sweep --slice lr-wd`), its heatmap is drawn
underneath. A heatmap is a slice at that sweep's other hyperparameters, while the tuner moves
all three, so the path is a projection onto it. A third panel shows accuracy per run.
"""

from __future__ import annotations

import csv
import math
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from matplotlib import patheffects

from ridgeline.figures import new_figure, save
from ridgeline.landscape import plots
from ridgeline.landscape.grid import SPEC_ATTR, GridSpec
from ridgeline.runs import ledger
from ridgeline.tuner.tune import Run, TuneResult

U = "lr*weight_decay/(1-momentum)"
COLUMNS = ("run", "step", "lr", "momentum", "weight_decay", U, "test_acc", "diverged",
           "accepted", "replayed")
HEADER = ("run", "step", "λ", "ρ", "α", "λα/(1−ρ)", "test accuracy")  # of table()
PLANES = (("weight_decay", "lr-wd"), ("momentum", "lr-momentum"))  # non-λ axis, sweep slice


def step_label(run: Run) -> str:
    if run.coordinate is None:
        return "start"
    factor = run.factor if run.factor >= 1 else 1 / run.factor
    return f"{run.coordinate} {'×' if run.factor >= 1 else '÷'}{factor:g}"


def rows(result: TuneResult) -> list[dict]:
    """The table as dicts keyed by COLUMNS; test_acc is the mean over replicates, None if
    any diverged."""
    out = []
    for r in result.history:
        p = r.params
        out.append(dict(zip(COLUMNS, (
            r.run, step_label(r), p["lr"], p["momentum"], p["weight_decay"],
            p["lr"] * p["weight_decay"] / (1 - p["momentum"]),
            None if r.diverged else r.value, r.diverged, r.accepted, r.replayed), strict=True)))
    return out


def _acc(value: float | None) -> str:
    return "diverged" if value is None else f"{100 * value:.2f} %"


def table(result: TuneResult, *, accuracy: Callable[[float | None], str] = _acc,
          new_best: str = "**{}** *") -> list[list[str]]:
    """Page's table as text cells under HEADER, the one formatting of it: ``accuracy``
    formats a test accuracy (None: diverged) and ``new_best`` wraps that of a run that became
    the best, so that each document keeps its own precision and emphasis."""
    return [[str(r["run"]), r["step"], f"{r['lr']:.4g}", f"{r['momentum']:.6g}",
             f"{r['weight_decay']:.4g}", f"{r[U]:.4g}",
             new_best.format(accuracy(r["test_acc"])) if r["accepted"]
             else accuracy(r["test_acc"])]
            for r in rows(result)]


def markdown_table(result: TuneResult) -> str:
    """Page's table; runs that became the best in bold with a ``*``."""
    lines = ["| " + " | ".join(HEADER) + " |", "|---" * len(HEADER) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in table(result)]
    return "\n".join(lines) + "\n"


def summary(result: TuneResult) -> str:
    """One line: how the search ended and the best setting."""
    b = result.best
    ended = {"converged": "converged", "max_evals": "stopped at --max-evals"}.get(
        result.stopped, result.stopped)
    epochs = f", {result.epochs} epochs trained in all" if result.epochs else ""
    return (f"{ended} after {result.n_runs} runs ({result.n_replayed} replayed from the "
            f"study, {result.n_speculative} parallel runs unused{epochs}): best "
            f"{_acc(None if math.isinf(result.best_value) else result.best_value)} at "
            f"lr={b['lr']:.4g}, momentum={b['momentum']:.6g}, weight_decay={b['weight_decay']:.4g}")


def write_csv(result: TuneResult, path) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        w.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows(result))
    return Path(path)


class Progress:
    """A line per run, as the search judges it (``tune(on_run=...)``)."""

    def __init__(self, max_evals: int, stream=None) -> None:
        self.max_evals, self.stream = max_evals, stream or sys.stdout

    def __call__(self, run: Run) -> None:
        p = run.params
        tags = (" new best" if run.accepted else "") + (" (replayed)" if run.replayed else "")
        print(f"run {run.run:>3}/{self.max_evals}  {step_label(run):<34} lr={p['lr']:<10.4g} "
              f"momentum={p['momentum']:<9.6g} weight_decay={p['weight_decay']:<10.4g} "
              f"{_acc(None if run.diverged else run.value)}{tags}",
              file=self.stream, flush=True)


# ----------------------------------------------------------------------------- landscapes

def find_landscapes(storage, preset: str) -> dict[str, plots.Grid]:
    """The preset's lr-wd and lr-momentum sweep heatmaps in ``storage``, keyed by their non-λ
    axis; sweep's default study name (lr-wd-PRESET) wins when several qualify."""
    names = plots.sweep_studies(storage)
    found: dict[str, plots.Grid] = {}
    for axis, slice_name in PLANES:
        preferred = f"{slice_name}-{preset}"
        for name in sorted(names, key=lambda n, p=preferred: n != p):
            grid = _landscape(storage, name, preset, axis)
            if grid is not None:
                found[axis] = grid
                break
    return found


def _landscape(storage, name: str, preset: str, axis: str) -> plots.Grid | None:
    study = ledger.open_study(name, storage, read_only=True)
    spec = GridSpec.from_dict(study.user_attrs[SPEC_ATTR])
    if spec.preset != preset or set(spec.axes) != {"lr", axis}:
        return None
    grid = plots.load_grid(study, spec)
    return grid if grid.best() is not None else None


# ----------------------------------------------------------------------------- figure

def trajectory_figure(result: TuneResult, path, landscapes: Mapping[str, plots.Grid] = (),
                      floor_pp: float = 3.0, title: str = "") -> Path:
    """The path over the (1/α, λ) and (1−ρ, λ) planes (heatmaps underneath where given), and
    accuracy per run."""
    landscapes = dict(landscapes)
    fig, axes = new_figure((18, 6), 1, 3, gridspec_kw={"width_ratios": [1.2, 1.2, 1]})
    for ax, (axis, _) in zip(axes, PLANES, strict=False):
        grid = landscapes.get(axis)
        if grid is not None:
            plots.draw_heatmap(fig, ax, grid, floor_pp, values=False, alpha=0.45)
            ax.set_title(f"over {grid.name} (a slice: the path is projected)", fontsize=8)
        _draw_path(ax, result, axis, grid is not None)
    _draw_progress(axes[2], result)
    fig.suptitle(title or summary(result), fontsize=9)
    return save(fig, path, dpi=120)


# where best-run numbers go (offset points): alternating sides along the path, so neighbours
# on the red line do not cover each other
_BEST_OFFSETS = ((7, 5), (-7, -5))


def _draw_path(ax, result: TuneResult, axis: str, over_heatmap: bool) -> None:
    """Every run a marker; only the runs that became the best carry a label, their run
    number (the accuracies are listed in the progress panel), so labels never sit on the
    heatmap's values or on each other's text."""
    _, to_x, label = plots.RIDGE_COORD[axis]
    xs = np.array([to_x(r.params[axis]) for r in result.history])
    ys = np.array([r.params["lr"] for r in result.history])
    best = [i for i, r in enumerate(result.history) if r.accepted]
    ax.plot(xs[best], ys[best], "-", color="red", lw=1.8, zorder=3)
    groups: dict[tuple, list[int]] = {}
    for i in range(len(xs)):
        groups.setdefault((round(math.log2(xs[i]), 6), round(math.log2(ys[i]), 6)), []).append(i)
    n_best = 0
    halo = [patheffects.withStroke(linewidth=2.5, foreground="white")]
    for members in groups.values():
        runs = [result.history[i] for i in members]
        i = members[0]
        accepted = [r for r in runs if r.accepted]
        if all(r.diverged for r in runs):
            ax.plot(xs[i], ys[i], ls="none", marker="x", ms=7, mew=2, color="red", zorder=4)
        else:
            ax.plot(xs[i], ys[i], ls="none", marker="o", ms=7 if accepted else 4, zorder=4,
                    mfc="red" if accepted else "white", mec="black" if accepted else "0.4")
        if accepted:
            dx, dy = _BEST_OFFSETS[n_best % len(_BEST_OFFSETS)]
            n_best += 1
            ax.annotate(",".join(str(r.run) for r in accepted), (xs[i], ys[i]),
                        textcoords="offset points", xytext=(dx, dy), fontsize=8,
                        color="darkred", fontweight="bold", ha="left" if dx > 0 else "right",
                        va="center", zorder=6, annotation_clip=False, path_effects=halo)
    ax.plot([], [], "o-", color="red", mfc="red", mec="black", label="new best (run number)")
    ax.plot([], [], "o", mfc="white", mec="0.4", ls="none", ms=4, label="other runs")
    if any(r.diverged for r in result.history):
        ax.plot([], [], "x", color="red", ls="none", label="diverged")
    ax.legend(fontsize=7, loc="upper left", framealpha=0.9)
    if over_heatmap:
        _include(ax, xs, ys)
    else:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xlabel(label, fontsize=8)
        ax.set_ylabel("λ (peak learning rate)", fontsize=8)
        ax.margins(0.15)


def _include(ax, xs: np.ndarray, ys: np.ndarray) -> None:
    """Widen a heatmap's fixed limits so the whole path shows (half an octave of margin)."""
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    pad = 2**0.5
    ax.set_xlim(min(x0, xs.min() / pad), max(x1, xs.max() * pad))
    ax.set_ylim(min(y0, ys.min() / pad), max(y1, ys.max() * pad))


def _draw_progress(ax, result: TuneResult) -> None:
    runs = [r.run for r in result.history]
    acc = [math.nan if r.diverged else 100 * r.value for r in result.history]
    best = np.fmax.accumulate([a if r.accepted else math.nan
                               for a, r in zip(acc, result.history, strict=True)])
    ax.plot(runs, acc, "o", mfc="white", mec="black", ms=5, label="run")
    ax.step(runs, best, where="post", color="red", label="best so far")
    lowest = np.nanmin(acc) if not np.all(np.isnan(acc)) else 0.0
    diverged = [r.run for r in result.history if r.diverged]
    if diverged:
        ax.plot(diverged, [lowest] * len(diverged), "x", color="red", label="diverged")
    lines = ["new bests"]
    for r, a in zip(result.history, acc, strict=True):
        if r.accepted:
            ax.annotate(str(r.run), (r.run, a), textcoords="offset points", xytext=(0, 6),
                        ha="center", fontsize=7, color="darkred", fontweight="bold")
            lines.append(f"{r.run:>3}: {_acc(None if r.diverged else r.value):>8}  "
                         f"λ={r.params['lr']:.3g} ρ={r.params['momentum']:.4g} "
                         f"α={r.params['weight_decay']:.3g}")
    ax.text(0.98, 0.04, "\n".join(lines), transform=ax.transAxes, ha="right", va="bottom",
            fontsize=6.5, family="monospace", zorder=7,
            bbox=dict(boxstyle="round,pad=0.3", fc="white", ec="0.6", alpha=0.9))
    ax.set_xlabel("run (red numbers: the runs that became the best)", fontsize=8)
    ax.set_ylabel("test accuracy (%)", fontsize=8)
    ax.legend(fontsize=7, loc="upper left")


# ----------------------------------------------------------------------------- all outputs

def write_report(result: TuneResult, out_dir, name: str, storage=None, preset: str | None = None,
                 floor_pp: float = 3.0) -> dict[str, Path]:
    """``name``.md, .csv and .png in ``out_dir``; the figure is drawn over the preset's
    landscape heatmaps where ``storage`` holds them."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = out / name
    md = base.with_suffix(".md")
    md.write_text(f"# {name}\n\n{markdown_table(result)}\n{summary(result)}.\n")
    grids = find_landscapes(storage, preset) if preset else {}
    png = trajectory_figure(result, base.with_suffix(".png"), grids, floor_pp,
                            title=f"{name}: {summary(result)}")
    return {"md": md, "csv": write_csv(result, base.with_suffix(".csv")), "png": png}
