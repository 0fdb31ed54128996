"""benchmarks/tuner_tabular.py on a small fake grid study (no training)."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState, create_trial

from ridgeline.hparams import HParams
from ridgeline.runs import ledger as st
from ridgeline.runs.objectives import as_result

PATH = Path(__file__).parents[1] / "benchmarks" / "tuner_tabular.py"
spec = importlib.util.spec_from_file_location("tuner_tabular", PATH)
tab = sys.modules["tuner_tabular"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tab)

CENTRE = {"lr": 0.2, "momentum": 0.9, "weight_decay": 5e-4}  # cpu-mini's
K_LR, K_MOM, K_WD = range(-2, 3), range(-1, 2), range(-2, 3)
MISSING = (4, 2, 4)  # λ = 0.8, 1−ρ = 0.2, α = 2e-3 never run: scores as diverged


def accuracy(k_lr, k_mom, k_wd, seed):
    """% ; best at u = λα/(1−ρ) one doubling above the centre's; λ = 0.8 with 1−ρ = 0.05
    diverges."""
    if k_lr == 2 and k_mom == -1:
        return None
    x_u = k_lr + k_wd - k_mom - 1
    return 85 - 1.5 * x_u**2 - 0.2 * k_mom**2 - 0.2 * (k_wd - 1) ** 2 + 0.2 * (-1) ** seed


def _value(result) -> float:
    value = st.result_value(result)
    return st.DIVERGED_VALUE if value is None else value


@pytest.fixture(scope="module")
def storage():
    """A study as real sweeps would leave it: RunResult attrs on COMPLETE trials, 2 seeds."""
    study = optuna.create_study(study_name="grid3-cpu-mini", direction="maximize")
    base = HParams(lr=0.2, momentum=0.9, weight_decay=5e-4, batch_size=64, epochs=12,
                   warmup_epochs=2.5)
    for i, k_lr in enumerate(K_LR):
        for j, k_mom in enumerate(K_MOM):
            for k, k_wd in enumerate(K_WD):
                if (i, j, k) == MISSING:
                    continue
                hp = base.replace(lr=0.2 * 2.0**k_lr, momentum=1 - 0.1 * 2.0**k_mom,
                                  weight_decay=5e-4 * 2.0**k_wd)
                for seed in (0, 1):
                    acc = accuracy(k_lr, k_mom, k_wd, seed)
                    result = as_result(None if acc is None else acc / 100, hp, "cpu-mini",
                                       seed, 1.0)
                    study.add_trial(create_trial(
                        state=TrialState.COMPLETE, value=_value(result),
                        user_attrs=st.result_to_attrs(result)))
    return study._storage


@pytest.fixture(scope="module")
def table(storage):
    return tab.load_table(storage, ["grid3-cpu-mini"], "cpu-mini")


def test_table_is_read_onto_its_grid(table):
    assert [len(c) for c in table.logs] == [5, 3, 5]
    assert len(table.cells) == 74 and table.best == pytest.approx(85.0)
    assert table.noise_std() == pytest.approx(math.sqrt(2) * 0.2)
    centre = table.index(CENTRE)
    assert table.mean(centre) == pytest.approx(85 - 1.5 - 0.2)
    near = {"lr": 0.2 * 2**0.4, "momentum": 0.9, "weight_decay": 5e-4 * 2**-0.4}
    assert table.index(near) == centre
    assert table.index({**CENTRE, "lr": 0.2 * 2**2.6}) is None  # > half a step outside


def test_lookup_objective(table):
    objective = tab.cd_objective(table, rep=0)
    assert objective(CENTRE, 0) == objective(CENTRE, 0)  # a re-run point gives the same value
    assert objective({**CENTRE, "lr": 0.2 * 2**3}, 0) is None  # outside the grid
    assert objective({"lr": 0.8, "momentum": 0.95, "weight_decay": 5e-4}, 0) is None  # diverged
    assert objective({"lr": 0.8, "momentum": 0.8, "weight_decay": 2e-3}, 0) is None  # missing


def test_every_method_runs_and_coordinate_descent_finds_the_target(table):
    starts = {"centre": CENTRE, "corner": {"lr": 0.05, "momentum": 0.8, "weight_decay": 2e-3},
              "outside": {"lr": 0.001, "momentum": 0.5, "weight_decay": 0.01}}
    results = tab.run_all(table, starts, threshold=0.1, reps=2, cap=25)
    assert set(results) == {"centre", "corner"}  # the start outside the grid is skipped
    assert set(results["centre"]) == {"reparam CD", "reparam CD, double",
                                      "reparam CD, double, threshold σ", "raw CD", "TPE",
                                      "random", "CMA-ES"}
    for start in results.values():
        assert start["reparam CD"]["success_rate"] == 1.0
        assert all(len(m["runs"]) == 2 for m in start.values())


def test_main_writes_json_and_figure(storage, tmp_path, monkeypatch):
    monkeypatch.setattr(tab.st, "open_storage", lambda ref=None, **kw: storage)
    out_json, out_png = tmp_path / "t.json", tmp_path / "t.png"
    tab.main(["--reps", "2", "--cap", "15", "--out-json", str(out_json),
              "--out-png", str(out_png)])
    report = json.loads(out_json.read_text())
    assert report["config"]["skipped_starts"] == ["bad"]  # Page's bad start is off this grid
    assert report["config"]["cd_min_improvement_pp"] == pytest.approx(0.1 * math.sqrt(2))
    assert set(report["results"]) == {"sensible"}
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_grid_starts_lie_in_the_grid(table):
    starts = tab.grid_starts(table, tab.get_preset("cpu-mini"))
    assert list(starts) == ["bad", "paper, clamped", "sensible"]
    worst = 85 - 1.5 * 6**2 - 0.2 - 0.2 * 3**2  # x_u = −6 at the λ, α floor and 1−ρ ceiling
    assert table.mean(table.index(starts["bad"])) == pytest.approx(worst)
    # Page's λ=0.001, ρ=0.5, α=0.01 is below the grid in λ and above it in 1−ρ and α: the
    # corner cell λ=0.05, 1−ρ=0.2, α=2e-3.
    assert table.index(starts["paper, clamped"]) == (0, 2, 4)
    assert starts["paper, clamped"]["lr"] == pytest.approx(0.05)
    assert table.index(starts["sensible"]) == table.index(CENTRE)


def test_added_noise_is_fixed_per_point_for_cd_and_moves_the_threshold(storage, tmp_path,
                                                                       monkeypatch):
    noisy = tab.load_table(storage, ["grid3-cpu-mini"], "cpu-mini")
    noisy.added_noise = 1.0
    objective = tab.cd_objective(noisy, rep=0)
    values = [objective(CENTRE, 0), objective(CENTRE, 0), objective(CENTRE, 1)]
    assert values[0] == values[1]  # the same (point, seed) gives the same value
    assert values[0] != values[2]
    assert abs(values[0] - noisy.mean(noisy.index(CENTRE))) < 5  # around the cell's value
    others = [tab.cd_objective(noisy, rep=r)(CENTRE, 0) for r in range(40)]
    clean = [tab.cd_objective(tab.load_table(storage, ["grid3-cpu-mini"], "cpu-mini"),
                              rep=r)(CENTRE, 0) for r in range(40)]
    residual = np.array(others) - np.array(clean)
    assert 0.6 < residual.std() < 1.5  # N(0, 1) on top of the seed's value

    monkeypatch.setattr(tab.st, "open_storage", lambda ref=None, **kw: storage)
    out_json = tmp_path / "t.json"
    tab.main(["--reps", "1", "--cap", "10", "--add-noise", "0.5", "--out-json", str(out_json),
              "--out-png", str(tmp_path / "t.png")])
    config = json.loads(out_json.read_text())["config"]
    assert config["added_noise_pp"] == 0.5
    assert config["noise_std_pp"] == pytest.approx(math.hypot(0.2 * math.sqrt(2), 0.5))
