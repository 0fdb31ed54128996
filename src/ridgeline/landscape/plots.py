"""Landscape heatmaps, tables and ridge fits of a sweep study (Page part 5, figures 1-3).

Orientation. The heatmap's vertical axis is λ; its horizontal axis is the *ridge coordinate* of
the other hyperparameter, chosen so the paper's flat direction is a line of slope +1 in log-log
axes: N for batch size (λ/N constant), 1−ρ for momentum (λ/(1−ρ) constant) and 1/α for weight
decay (λα constant). The fitted slope is therefore directly comparable with the theory's +1.

Ridge fit. For each value x of the other hyperparameter (a row of the grid), the best λ is the
vertex of the parabola through the best cell and its two λ-neighbours in log2 λ. Rows whose
best cell sits on the edge of the λ range, or beside a diverged/missing cell, cannot locate a
maximum and are shown but not fitted. A weighted least-squares line through (log x, log λ*)
follows, each point weighted by 1/Var(vertex) per unit cell noise (sharp peaks locate the ridge
better than flat ones); the residual scatter sets the noise scale, and the 95% CI of the slope
uses Student's t with n−2 degrees of freedom.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from optuna.trial import TrialState

from ridgeline.errors import RidgelineError
from ridgeline.figures import new_figure, save
from ridgeline.landscape.grid import SPEC_ATTR, GridSpec
from ridgeline.presets import SYMBOLS
from ridgeline.runs import ledger

# name → (symbol of the ridge coordinate, transform, axis label): theory slope +1 against it.
RIDGE_COORD = {
    "lr": ("λ", lambda v: v, "λ (peak learning rate)"),
    "batch_size": ("N", lambda v: v, "N (batch size)"),
    "momentum": ("1−ρ", lambda v: 1 - v, "1−ρ (ρ = momentum)"),
    "weight_decay": ("1/α", lambda v: 1 / v, "1/α (α = weight decay)"),
}


# AdamW's names for the same axes (docs/adamw.md): η the lr, λ the decoupled weight decay; its
# ridge ηλ = const is slope +1 against 1/λ, as SGD's λα is against 1/α. For β₁ the theory's
# equilibrium angle √(2ηλ(1−β₁)/(1+β₁)) is constant along η ∝ (1+β₁)/(1−β₁) at fixed λ.
ADAMW_COORD = {
    "lr": ("η", lambda v: v, "η (peak learning rate)"),
    "weight_decay": ("1/λ", lambda v: 1 / v, "1/λ (λ = decoupled weight decay)"),
    "beta1": ("(1+β₁)/(1−β₁)", lambda v: (1 + v) / (1 - v),
              "(1+β₁)/(1−β₁) (β₁ = AdamW's first-moment decay)"),
}


def ridge_coord(axis: str, optimizer: str = "sgd") -> tuple:
    """(symbol, transform, label) of an axis's ridge coordinate under ``optimizer``."""
    if optimizer == "adamw" and axis in ADAMW_COORD:
        return ADAMW_COORD[axis]
    return RIDGE_COORD[axis]


def _label(axis: str, vs_lr: bool, optimizer: str = "sgd") -> str:
    sym, _, text = ridge_coord(axis, optimizer)
    lr = ridge_coord("lr", optimizer)[0]
    return text + (f"; theory {lr} ∝ {sym}, slope +1" if vs_lr and axis != "lr" else "")


@dataclass
class Grid:
    """Seed-averaged accuracies, rows = the other hyperparameter (ordered by increasing ridge
    coordinate), columns = λ (or the first axis when λ is not gridded)."""

    name: str
    col_axis: str
    row_axis: str
    col_values: np.ndarray
    row_values: np.ndarray
    mean: np.ndarray  # [rows, cols], NaN where no seed finished without diverging
    std: np.ndarray
    n: np.ndarray  # finished, non-diverged seeds per cell
    n_diverged: np.ndarray
    seeds: int = 1
    optimizer: str = "sgd"  # names the axes: λ, α (sgd) or η, λ (adamw)

    def coord(self, axis: str) -> tuple:
        return ridge_coord(axis, self.optimizer)

    @property
    def row_coord(self) -> np.ndarray:
        return np.array([self.coord(self.row_axis)[1](v) for v in self.row_values], float)

    @property
    def col_coord(self) -> np.ndarray:
        return np.array([self.coord(self.col_axis)[1](v) for v in self.col_values], float)

    @property
    def diverged(self) -> np.ndarray:
        return (self.n == 0) & (self.n_diverged > 0)

    def best(self) -> tuple[int, int] | None:
        if np.all(np.isnan(self.mean)):
            return None
        return tuple(int(i) for i in np.unravel_index(np.nanargmax(self.mean), self.mean.shape))


@dataclass
class RidgePoint:
    x: float  # ridge coordinate of the row
    lr: float  # fitted best λ (or the best cell's λ when not fitted)
    weight: float
    fitted: bool  # False: the max is at the λ edge or beside a diverged/missing cell
    reason: str = ""


@dataclass
class RidgeFit:
    slope: float | None
    ci: tuple[float, float] | None  # 95% CI of the slope (None with fewer than 3 points)
    intercept: float | None  # log2 λ* at x = 1
    n_points: int
    theory_slope: float = 1.0
    x_name: str = ""
    points: list[RidgePoint] = field(default_factory=list)
    y_name: str = "λ"  # the lr's symbol (η for AdamW)

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        if self.slope is None:
            return f"ridge: too few fitted rows ({self.n_points}) for a slope"
        ci = ("" if self.ci is None
              else f", 95% CI [{self.ci[0]:.2f}, {self.ci[1]:.2f}]")
        return (f"ridge slope of log {self.y_name}* vs log {self.x_name}: {self.slope:.2f}{ci}, "
                f"n={self.n_points} (theory {self.theory_slope:+g})")


# ----------------------------------------------------------------------------- data

def load_grid(study, spec: GridSpec | None = None) -> Grid:
    """Aggregate a study's COMPLETE trials onto its (latest) sweep grid."""
    if spec is None:
        if SPEC_ATTR not in study.user_attrs:
            raise RidgelineError(f"study {study.study_name!r} was not made by `ridgeline sweep`")
        spec = GridSpec.from_dict(study.user_attrs[SPEC_ATTR])
    where = {p.key: p.index for p in spec.points()}
    accs: dict[tuple[int, int], list] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        idx = where.get(t.user_attrs.get(ledger.KEY_ATTR))
        if idx is not None:
            accs.setdefault(idx, []).append(
                None if t.user_attrs.get("diverged") else t.user_attrs.get("test_acc"))
    return _grid_from_cells(study.study_name, spec, accs)


def _grid_from_cells(name: str, spec: GridSpec, accs: dict) -> Grid:
    shape = (len(spec.values[0]), len(spec.values[1]))
    mean, std = np.full(shape, np.nan), np.full(shape, np.nan)
    n, n_div = np.zeros(shape, int), np.zeros(shape, int)
    for idx, vals in accs.items():
        ok = [v for v in vals if v is not None]
        n[idx], n_div[idx] = len(ok), len(vals) - len(ok)
        if ok:
            mean[idx], std[idx] = np.mean(ok), np.std(ok, ddof=1) if len(ok) > 1 else 0.0
    cols, rows = 0, 1  # axes[0] on columns unless λ is the second axis
    if spec.axes[1] == "lr":
        cols, rows = 1, 0
    t = (lambda a: a.T) if cols == 0 else (lambda a: a)  # → [rows, cols]
    grid = Grid(name, spec.axes[cols], spec.axes[rows], np.array(spec.values[cols], float),
                np.array(spec.values[rows], float), t(mean), t(std), t(n), t(n_div),
                len(spec.seeds), spec.base.optimizer)
    return _sort_rows(grid)


def _sort_rows(g: Grid) -> Grid:
    order = np.argsort(g.row_coord)
    for name in ("row_values", "mean", "std", "n", "n_diverged"):
        setattr(g, name, getattr(g, name)[order])
    return g


# ----------------------------------------------------------------------------- ridge fit

def fit_ridge(lr_values, x_values, acc, theory_slope: float = 1.0, x_name: str = "x",
              y_name: str = "λ") -> RidgeFit:
    """Fit log λ* = s·log x + b across rows of ``acc`` [len(x), len(lr)] (NaN = no value)."""
    lr_values, x_values = np.asarray(lr_values, float), np.asarray(x_values, float)
    acc = np.asarray(acc, float)
    points = [_row_peak(np.log2(lr_values), row, x) for x, row in zip(x_values, acc, strict=True)]
    points = [p for p in points if p is not None]
    used = [p for p in points if p.fitted]
    fit = RidgeFit(None, None, None, len(used), theory_slope, x_name, points, y_name)
    if len(used) >= 2:
        v = np.log2([p.x for p in used])
        u = np.log2([p.lr for p in used])
        fit.slope, fit.intercept, fit.ci = _wls(v, u, np.array([p.weight for p in used]))
    return fit


def _row_peak(u: np.ndarray, row: np.ndarray, x: float) -> RidgePoint | None:
    if np.all(np.isnan(row)):
        return None
    i = int(np.nanargmax(row))
    if i == 0 or i == len(row) - 1:
        return RidgePoint(x, float(2 ** u[i]), 0.0, False, "max at the edge of the λ range")
    y = row[i - 1:i + 2]
    if np.any(np.isnan(y)):
        return RidgePoint(x, float(2 ** u[i]), 0.0, False, "max beside a diverged/missing cell")
    vertex = parabola_vertex(u[i - 1:i + 2], y)
    if vertex is None:
        return RidgePoint(x, float(2 ** u[i]), 0.0, False, "flat: no curvature at the max")
    grad = [(parabola_vertex(u[i - 1:i + 2], y + d) - vertex) / 1e-6 for d in np.eye(3) * 1e-6]
    weight = 1.0 / max(float(np.sum(np.square(grad))), 1e-12)
    return RidgePoint(x, float(2**vertex), weight, True)


def parabola_vertex(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Arg-max of the parabola through three points (x₀ < x₁ < x₂); None unless every y is finite
    and it opens downwards. Near a maximum accuracy is quadratic in log-hyperparameters, so
    both the ridge fit (best λ of a row) and the tuner's bracketing line search use it."""
    if not all(math.isfinite(y) for y in ys):
        return None
    (x0, x1, x2), (y0, y1, y2) = xs, ys
    slope_a, slope_b = (y1 - y0) / (x1 - x0), (y2 - y1) / (x2 - x1)
    curvature = (slope_b - slope_a) / (x2 - x0)
    if not curvature < 0:
        return None
    return float((x0 + x1) / 2 - slope_a / (2 * curvature))


def _wls(v: np.ndarray, u: np.ndarray, w: np.ndarray):
    """Weighted least squares u = s·v + b; (s, b, 95% CI of s or None when n < 3)."""
    from scipy import stats

    w = w / w.sum()
    vm, um = np.sum(w * v), np.sum(w * u)
    sxx = np.sum(w * (v - vm) ** 2)
    slope = float(np.sum(w * (v - vm) * (u - um)) / sxx)
    intercept = float(um - slope * vm)
    n = len(v)
    if n < 3:
        return slope, intercept, None
    resid = u - (slope * v + intercept)
    se = math.sqrt(float(np.sum(w * resid**2)) / (n - 2) / sxx)
    half = float(stats.t.ppf(0.975, n - 2)) * se
    return slope, intercept, (slope - half, slope + half)


def grid_fit(grid: Grid) -> RidgeFit | None:
    """The ridge fit of a λ grid (None when λ is not one of its axes)."""
    if grid.col_axis != "lr":
        return None
    return fit_ridge(grid.col_values, grid.row_coord, grid.mean,
                     x_name=grid.coord(grid.row_axis)[0], y_name=grid.coord("lr")[0])


# ----------------------------------------------------------------------------- tables

def _fmt(v: float) -> str:
    return f"{v:.4g}"


def cell_status(grid: Grid, r: int, c: int) -> str:
    if grid.diverged[r, c]:
        return "diverged"
    if grid.n[r, c] == 0:
        return "missing"
    return "partly diverged" if grid.n_diverged[r, c] else "ok"


def write_csv(grid: Grid, path) -> Path:
    """One line per cell (long form, for pandas/spreadsheets)."""
    path = Path(path)
    coord = grid.coord(grid.row_axis)[0]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([grid.col_axis, grid.row_axis, coord, "mean_test_acc", "std_test_acc",
                    "n_seeds", "n_diverged", "status"])
        for r, (rv, x) in enumerate(zip(grid.row_values, grid.row_coord, strict=True)):
            for c, cv in enumerate(grid.col_values):
                m, s = grid.mean[r, c], grid.std[r, c]
                w.writerow([_fmt(cv), _fmt(rv), _fmt(x), "" if np.isnan(m) else f"{m:.5f}",
                            "" if np.isnan(s) else f"{s:.5f}", grid.n[r, c],
                            grid.n_diverged[r, c], cell_status(grid, r, c)])
    return path


def markdown_table(grid: Grid, fit: RidgeFit | None = None) -> str:
    """Rows = the other hyperparameter, columns = λ; the best cell of each row in bold."""
    sym = grid.coord(grid.col_axis)[0] if grid.col_axis == "lr" else SYMBOLS.get(grid.col_axis,
                                                                                   grid.col_axis)
    head = f"| {grid.row_axis} ({grid.coord(grid.row_axis)[0]}) \\ {grid.col_axis} ({sym}) | "
    head += " | ".join(_fmt(v) for v in grid.col_values) + " |"
    lines = [head, "|" + "---|" * (len(grid.col_values) + 1)]
    for r, (rv, x) in enumerate(zip(grid.row_values, grid.row_coord, strict=True)):
        best = np.nanmax(grid.mean[r]) if not np.all(np.isnan(grid.mean[r])) else None
        cells = [_md_cell(grid, r, c, best) for c in range(len(grid.col_values))]
        lines.append(f"| {_fmt(rv)} ({_fmt(x)}) | " + " | ".join(cells) + " |")
    notes = [f"\nTest accuracy (%), mean ± std over {grid.seeds} seed(s); "
             "× = diverged, — = not run yet."]
    if fit is not None:
        notes.append(fit.describe() + ".")
    return "\n".join(lines + notes) + "\n"


def _md_cell(grid: Grid, r: int, c: int, best) -> str:
    status = cell_status(grid, r, c)
    if status == "diverged":
        return "×"
    if status == "missing":
        return "—"
    m = grid.mean[r, c]
    text = f"{100 * m:.1f}" + (f" ± {100 * grid.std[r, c]:.1f}" if grid.n[r, c] > 1 else "")
    if grid.n_diverged[r, c]:
        text += f" ({grid.n_diverged[r, c]}×)"
    return f"**{text}**" if best is not None and m == best else text


# ----------------------------------------------------------------------------- heatmap

def _edges(values: np.ndarray) -> np.ndarray:
    """Cell edges at geometric midpoints (log axes), half a step beyond the ends."""
    lv = np.log2(values)
    if len(lv) == 1:
        return 2 ** np.array([lv[0] - 0.5, lv[0] + 0.5])
    mids = (lv[1:] + lv[:-1]) / 2
    return 2 ** np.concatenate([[2 * lv[0] - mids[0]], mids, [2 * lv[-1] - mids[-1]]])


def plot_grid(grid: Grid, path, floor_pp: float = 3.0, fit: RidgeFit | None = None) -> Path:
    """Heatmap PNG: colours clipped at best − floor_pp points, values annotated, × = diverged."""
    fig, ax = new_figure((1.1 * len(grid.row_values) + 3, 0.6 * len(grid.col_values) + 2.5))
    draw_heatmap(fig, ax, grid, floor_pp)
    if fit is not None:
        _draw_fit(ax, fit, grid.row_coord)
    title = f"{grid.name}: mean of {grid.seeds} seed(s)"
    ax.set_title(title + ("" if fit is None else "\n" + fit.describe()), fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        fig.legend(loc="lower center", ncol=2, fontsize=7, frameon=False)
    return save(fig, path, dpi=120, rect=(0, 0.07 if fit is not None else 0, 1, 1))


def draw_heatmap(fig, ax, grid: Grid, floor_pp: float = 3.0, values: bool = True,
                 alpha: float = 1.0) -> None:
    """The heatmap of ``grid`` on ``ax`` (cell values written in when ``values``), with its
    colour bar and log2 axes fixed to the grid (shared by :func:`plot_grid` and the tuner's
    trajectory figure, which mutes it with ``alpha`` and leaves the values out)."""
    import matplotlib

    x, y = grid.row_coord, grid.col_coord
    data = np.ma.masked_invalid(100 * grid.mean.T)  # [λ, x]
    best = float(np.nanmax(grid.mean)) * 100 if data.count() else 100.0
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    mesh = ax.pcolormesh(_edges(x), _edges(y), data, cmap=cmap, shading="flat",
                         vmin=best - floor_pp, vmax=best, alpha=alpha)
    fig.colorbar(mesh, ax=ax, label=f"test accuracy (%), clipped below best − {floor_pp:g}")
    if values:
        _annotate(ax, grid, mesh, x, y)
    _axes(ax, grid, x, y)


def _annotate(ax, grid: Grid, mesh, x, y) -> None:
    from matplotlib.patches import Rectangle

    xe, ye = _edges(x), _edges(y)
    for r in range(len(x)):
        for c in range(len(y)):
            status = cell_status(grid, r, c)
            if status == "diverged":
                ax.add_patch(Rectangle((xe[r], ye[c]), xe[r + 1] - xe[r], ye[c + 1] - ye[c],
                                       facecolor="0.75", hatch="xx", edgecolor="0.4", lw=0))
                ax.text(x[r], y[c], "×", ha="center", va="center", fontsize=12)
            elif status == "missing":
                ax.text(x[r], y[c], "—", ha="center", va="center", fontsize=7, color="0.5")
            else:
                m = 100 * grid.mean[r, c]
                dark = mesh.norm(m) < 0.5
                label = f"{m:.1f}" + ("" if not grid.n_diverged[r, c] else "\n(×)")
                ax.text(x[r], y[c], label, ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")


def _draw_fit(ax, fit: RidgeFit, x) -> None:
    lr = fit.y_name
    for fitted, label in ((True, f"best {lr} per column (fitted)"),
                          (False, f"best {lr} at an edge/gap (not fitted)")):
        pts = [p for p in fit.points if p.fitted is fitted]
        if pts:
            ax.plot([p.x for p in pts], [p.lr for p in pts], "o", ms=4, mec="red",
                    mfc="red" if fitted else "none", ls="none", label=label)
    if fit.slope is None:
        return
    used = [p for p in fit.points if p.fitted]
    w = np.array([p.weight for p in used])
    vm = np.average(np.log2([p.x for p in used]), weights=w)
    um = np.average(np.log2([p.lr for p in used]), weights=w)
    v = np.log2(np.array([x.min(), x.max()]))
    ax.plot(2**v, 2 ** (fit.intercept + fit.slope * v), "r-", lw=1.5,
            label=f"fitted ridge, slope {fit.slope:.2f}")
    from matplotlib import patheffects

    ax.plot(2**v, 2 ** (um + fit.theory_slope * (v - vm)), "w--", lw=1.5,
            path_effects=[patheffects.withStroke(linewidth=2.5, foreground="black")],
            label=f"theory, slope {fit.theory_slope:+g}")


def _axes(ax, grid: Grid, x, y) -> None:
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    for axis, vals in ((ax.xaxis, x), (ax.yaxis, y)):
        axis.set_major_locator(FixedLocator(vals))
        axis.set_major_formatter(FixedFormatter([_fmt(v) for v in vals]))
        axis.set_minor_locator(NullLocator())
    ax.set_xlim(_edges(x)[[0, -1]])
    ax.set_ylim(_edges(y)[[0, -1]])
    ax.set_xlabel(_label(grid.row_axis, grid.col_axis == "lr", grid.optimizer), fontsize=8)
    ax.set_ylabel(_label(grid.col_axis, False, grid.optimizer), fontsize=8)
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    ax.tick_params(axis="y", labelsize=7)


# ----------------------------------------------------------------------------- per study

def plot_study(study, out_dir, floor_pp: float = 3.0) -> dict:
    """PNG + CSV + MD for one sweep study; returns paths, counts, best cell and the ridge fit."""
    grid = load_grid(study)
    best = grid.best()
    if best is None:
        raise RidgelineError(f"study {study.study_name!r} has no finished, non-diverged point "
                             f"yet: run `ridgeline sweep` first")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fit = grid_fit(grid)
    base = out / study.study_name
    png = plot_grid(grid, base.with_suffix(".png"), floor_pp, fit)
    csv_path = write_csv(grid, base.with_suffix(".csv"))
    md = base.with_suffix(".md")
    md.write_text(f"# {study.study_name}\n\n" + markdown_table(grid, fit))
    r, c = best
    return {"study": study.study_name, "png": str(png), "csv": str(csv_path), "md": str(md),
            "cells_done": int(np.sum((grid.n + grid.n_diverged) > 0)),
            "cells": int(grid.mean.size),
            "best": {grid.col_axis: float(grid.col_values[c]),
                     grid.row_axis: float(grid.row_values[r]),
                     "test_acc": float(grid.mean[r, c])},
            "fit": None if fit is None else fit.to_dict()}


def sweep_studies(storage) -> list[str]:
    """Names of the studies in ``storage`` that `ridgeline sweep` made."""
    s = ledger.open_storage(storage, read_only=True)
    return [f.study_name for f in s.get_all_studies() if SPEC_ATTR in f.user_attrs]


def plot_all(storage, names: list[str] | None, out_dir, floor_pp: float = 3.0) -> dict:
    """Plot each named (default: every sweep) study and write ``fits.json`` beside them."""
    names = names or sweep_studies(storage)
    if not names:
        raise RidgelineError(f"no sweep studies in storage {ledger.storage_label(storage or '')!r}")
    results = {n: plot_study(ledger.open_study(n, storage, read_only=True), out_dir, floor_pp)
               for n in names}
    Path(out_dir, "fits.json").write_text(json.dumps(results, indent=2))
    return results
