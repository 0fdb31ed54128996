"""Ridge fits on synthetic landscapes, grids from studies, and the plot/table outputs."""

import csv
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st_

from ridgeline.cli import main
from ridgeline.landscape import plots
from ridgeline.landscape.grid import make_grid

LR = 2.0 ** np.arange(-8, 8.5, 0.5)  # λ grid, half-octave steps
X = 2.0 ** np.arange(-2, 3)  # ridge coordinate of the other hyperparameter


def landscape(slope, b=-1.0, peak=0.94, c=0.01, lr=LR, x=X):
    """acc = peak − c·(log2 λ − s·log2 x − b)²: a ridge of slope s in log-log."""
    u, v = np.log2(lr)[None, :], np.log2(x)[:, None]
    return peak - c * (u - slope * v - b) ** 2


@pytest.mark.parametrize("slope", [1.0, 0.5])
def test_fit_recovers_a_known_slope(slope):
    fit = plots.fit_ridge(LR, X, landscape(slope))
    assert fit.slope == pytest.approx(slope, abs=1e-6)
    assert fit.intercept == pytest.approx(-1.0, abs=1e-6)
    assert fit.n_points == 5 and fit.ci[0] <= slope <= fit.ci[1]
    assert [p.lr for p in fit.points] == pytest.approx(2 ** (slope * np.log2(X) - 1.0))


@settings(max_examples=25, deadline=None)
@given(slope=st_.floats(-1.5, 1.5), b=st_.floats(-1.0, 1.0))
def test_fit_recovers_any_slope_off_the_grid(slope, b):
    fit = plots.fit_ridge(LR, X, landscape(slope, b))
    assert fit.slope == pytest.approx(slope, abs=1e-5)


def test_noisy_fit_has_a_ci_covering_the_truth():
    rng = np.random.default_rng(0)
    x = 2.0 ** np.arange(-3, 4)
    acc = landscape(1.0, x=x, c=0.004) + rng.normal(0, 0.002, (len(x), len(LR)))
    fit = plots.fit_ridge(LR, x, acc)
    assert fit.ci[0] < 1.0 < fit.ci[1] and fit.ci[1] - fit.ci[0] > 0
    assert abs(fit.slope - 1.0) < 0.3


def test_rows_with_edge_or_blocked_maxima_are_shown_not_fitted():
    acc = landscape(1.0)
    acc[0, :] = np.linspace(0.5, 0.9, len(LR))  # increasing: max at the top edge
    r = int(np.argmax(acc[1]))
    acc[1, r + 1] = np.nan  # the λ above the max diverged
    fit = plots.fit_ridge(LR, X, acc)
    reasons = [p.reason for p in fit.points if not p.fitted]
    assert fit.n_points == 3 and len(reasons) == 2
    assert "edge" in reasons[0] and "diverged" in reasons[1]


def test_too_few_rows_gives_no_slope():
    fit = plots.fit_ridge(LR, X[:1], landscape(1.0, x=X[:1]))
    assert fit.slope is None and "too few" in fit.describe()
    two = plots.fit_ridge(LR, X[:2], landscape(1.0, x=X[:2]))
    assert two.slope == pytest.approx(1.0) and two.ci is None


def _grid(spec, fn):
    """A Grid as load_grid would build it, from fn(hp) per point (None = diverged)."""
    cells = {}
    for p in spec.points():
        cells.setdefault(p.index, []).append(fn(p.hparams))
    return plots._grid_from_cells("g", spec, cells)


def _ridge_acc(hp, slope=1.0):  # a λα ridge at the tiny preset's centre
    off = math.log2(hp.lr) - slope * math.log2(1 / hp.weight_decay) + 13.3
    return None if hp.lr > 1.5 else 0.93 - 0.01 * off**2


def test_grid_puts_lr_on_columns_and_sorts_rows_by_ridge_coordinate():
    spec = make_grid("wd-lr", "tiny", steps=(3, 9))
    g = _grid(spec, _ridge_acc)
    assert g.col_axis == "lr" and g.row_axis == "weight_decay"
    assert list(g.row_coord) == sorted(g.row_coord)  # 1/α increasing = α decreasing
    assert g.mean.shape == (3, 9) and g.diverged[:, -1].all()
    fit = plots.grid_fit(g)
    assert fit.slope == pytest.approx(1.0, abs=1e-6) and fit.x_name == "1/α"


def test_outputs(tmp_path):
    spec = make_grid("lr-wd", "tiny", steps=(9, 4), seeds=2)
    g = _grid(spec, _ridge_acc)
    g.n[0, 0], g.mean[0, 0] = 0, np.nan  # one cell not run yet
    fit = plots.grid_fit(g)
    png = plots.plot_grid(g, tmp_path / "g.png", floor_pp=3, fit=fit)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(plots.write_csv(g, tmp_path / "g.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 36 and {r["status"] for r in rows} == {"ok", "diverged", "missing"}
    md = plots.markdown_table(g, fit)
    assert md.count("\n| ") == 4 and "×" in md and "—" in md and "**" in md
    assert "ridge slope" in md


def test_sweep_then_plot_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_DIVERGE_LR", "1.5")
    monkeypatch.delenv("FAKE_LOG", raising=False)
    monkeypatch.delenv("FAKE_FAIL_DIR", raising=False)
    journal, out = str(tmp_path / "r.journal"), tmp_path / "out"
    assert main(["sweep", "--slice", "lr-wd", "--preset", "tiny", "--steps", "7", "3",
                 "--objective", "tests.test_sweep:fake_objective", "--storage", journal,
                 "--quiet"]) == 0
    assert main(["plot", "--storage", journal, "--out", str(out), "--floor", "5"]) == 0
    printed = capsys.readouterr().out
    assert "21/21 points complete" in printed and "ridge slope" in printed
    for suffix in (".png", ".csv", ".md"):
        assert (out / f"lr-wd-tiny{suffix}").stat().st_size > 0
    fits = json.loads((out / "fits.json").read_text())
    fit = fits["lr-wd-tiny"]["fit"]
    assert fit["slope"] == pytest.approx(1.0, abs=1e-3) and fit["n_points"] >= 3
    assert fits["lr-wd-tiny"]["cells_done"] == 21


def test_plot_of_an_empty_storage_is_one_line(tmp_path, capsys):
    assert main(["plot", "--storage", str(tmp_path / "none.journal"),
                 "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_grid_without_lr_is_plotted_without_a_fit(tmp_path):
    spec = make_grid("momentum-wd", "tiny", steps=3)
    g = _grid(spec, lambda hp: 0.9 - 0.01 * math.log2((1 - hp.momentum) / hp.weight_decay) ** 2)
    assert plots.grid_fit(g) is None
    assert plots.plot_grid(g, tmp_path / "m.png").stat().st_size > 0
    assert "momentum" in plots.markdown_table(g)


def test_an_adamw_grid_names_its_axes_eta_and_lambda():
    from ridgeline.presets import get_preset

    base = get_preset("tiny").hparams.replace(optimizer="adamw", lr=2e-3, weight_decay=0.5)
    spec = make_grid("lr-wd", "tiny", steps=(5, 3), base=base)
    g = _grid(spec, lambda hp: 0.9 - 0.01 * math.log2(hp.lr * hp.weight_decay / 1e-3) ** 2)
    assert g.optimizer == "adamw"
    fit = plots.grid_fit(g)
    assert fit.slope == pytest.approx(1.0, abs=1e-6)
    assert "log η* vs log 1/λ" in fit.describe()
    assert plots.markdown_table(g, fit).startswith("| weight_decay (1/λ) \\ lr (η) |")
    assert plots._label("weight_decay", True, g.optimizer).endswith("theory η ∝ 1/λ, slope +1")
