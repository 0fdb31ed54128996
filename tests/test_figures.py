"""Every figure, made from two threads at once: figures are pyplot-free (ridgeline.figures), and
reports are made in threads, so two figures at once must not share state."""

import math
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import optuna
import pytest

from ridgeline.landscape import plots
from ridgeline.landscape.grid import make_grid
from ridgeline.science import experiments
from ridgeline.science.diagnose import HOOK_NAME
from ridgeline.science.diagnostics_plot import plot_diagnostics
from ridgeline.tuner import report as tuner_report
from ridgeline.tuner.tune import tune

optuna.logging.set_verbosity(optuna.logging.WARNING)
PNG = b"\x89PNG\r\n\x1a\n"
START = {"lr": 0.4, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 512}


def _grid(slice_name: str) -> plots.Grid:
    """A λα ridge over the tiny preset's slice, built as load_grid builds it."""
    spec = make_grid(slice_name, "tiny", steps=(4, 5))
    cells = {}
    for p in spec.points():
        off = math.log2(p.hparams.lr * p.hparams.weight_decay) + 13
        cells.setdefault(p.index, []).append(0.93 - 0.01 * off**2)
    return plots._grid_from_cells(slice_name, spec, cells)


def _diag(k: float = 1.0) -> dict:
    """A WeightNormHook record of two layers over a warm-up and decay of 40 steps."""
    steps = list(range(0, 40, 2))
    lr = [0.4 * min((s + 1) / 8, (40 - s) / 32) for s in steps]
    norm = {n: [k * (2 + i + s / 40) for s in steps] for i, n in enumerate("ab")}
    angle = {n: [0.02 * math.sqrt(v) for v in lr] for n in "ab"}
    eff = {n: [v / w**2 for v, w in zip(lr, norm[n], strict=True)] for n in "ab"}
    return {"every": 2, "layers": ["a", "b"], "steps": steps, "lr": lr, "momentum": 0.9,
            "weight_decay": 5e-4, "nesterov": True, "peak_lr": 0.4, "total_steps": 40,
            "warmup_steps": 8.0, "norm": norm, "angle": angle, "eff_lr": eff,
            "eff_lr_total": {n: [v * 10 for v in e] for n, e in eff.items()}}


def _tune_result():
    bowl = lambda params, seed: -math.log2(params["lr"] / 0.8) ** 2  # noqa: E731
    return tune(bowl, START, max_evals=6)


FIGURES = {
    "heatmap": lambda path: plots.plot_grid(_grid("lr-wd"), path, fit=plots.grid_fit(
        _grid("lr-wd"))),
    "trajectory": lambda path: tuner_report.trajectory_figure(
        _tune_result(), path, {"weight_decay": _grid("wd-lr")}),
    "diagnostics": lambda path: plot_diagnostics(_diag(), path),
    "trajectories": lambda path: experiments.plot_trajectories(
        {f"k={k}": [{"extras": {HOOK_NAME: _diag(k)}}] for k in (0.5, 1, 2)}, path, "t"),
    "symmetry": lambda path: experiments.plot_symmetry(
        {**{label: [np.abs(np.sin(np.arange(30.0))) * 1e-6]
            for label, _, _ in experiments.SYMMETRY_VARIANTS},
         "seed noise": [np.zeros(30), np.full(30, 1e-3)]}, path),
}


@pytest.mark.parametrize("name", FIGURES)
def test_each_figure_is_made_by_two_threads_at_once_without_pyplot(name, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # any pyplot import fails
    paths = [tmp_path / str(i) / f"{name}.png" for i in range(2)]  # folders made by save()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(FIGURES[name], paths))
    for path in paths:
        assert path.read_bytes()[:8] == PNG
    assert paths[0].read_bytes() == paths[1].read_bytes()  # neither drew into the other
