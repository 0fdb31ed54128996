"""benchmarks/tuner_adamw.py on a small fake AdamW η×λ study (no training)."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from ridgeline.hparams import HParams
from ridgeline.runs import ledger as st
from ridgeline.runs.objectives import as_result

PATH = Path(__file__).parents[1] / "benchmarks" / "tuner_adamw.py"
spec = importlib.util.spec_from_file_location("tuner_adamw", PATH)
ta = sys.modules["tuner_adamw"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ta)

BASE = HParams(lr=1e-3, momentum=0.9, weight_decay=0.25, batch_size=64, epochs=12,
               warmup_epochs=2.5, optimizer="adamw", beta1=0.9, beta2=0.999)


def accuracy(i, j):
    """%: a ridge along ηλ = 4e-3 (i + j = 4), falling along it towards large λ (j)."""
    return 80 - 3 * (i + j - 4) ** 2 - 0.5 * j


@pytest.fixture
def journal(tmp_path):
    path = tmp_path / "adamw.journal"
    study = st.open_study(ta.STUDY, str(path))
    for i in range(5):
        for j in range(5):
            hp = BASE.replace(lr=1e-3 * 2.0**i, weight_decay=0.25 * 2.0**j)
            result = as_result(accuracy(i, j) / 100, hp, "cpu-mini-adamw", 0, 1.0)
            study.add_trial(create_trial(state=TrialState.COMPLETE, value=result["test_acc"],
                                         user_attrs=st.result_to_attrs(result)))
    return path


def test_table_reads_the_sweep_onto_its_log2_grid(journal):
    table = ta.Table(journal, ta.STUDY)
    assert table.shape == (5, 5) and len(table.cells) == 25
    assert table.best == pytest.approx(80.0)
    assert table.value({"lr": 16e-3 * 1.1, "weight_decay": 0.25}) == pytest.approx(80.0)
    assert math.isnan(table.value({"lr": 1e-3 / 4, "weight_decay": 0.25}))  # off the grid
    box = table.box()
    assert box["lr"] == pytest.approx((1e-3 / math.sqrt(2), 16e-3 * math.sqrt(2)))


def test_on_a_diagonal_ridge_the_flat_sampler_beats_raw_coordinates(journal):
    table = ta.Table(journal, ta.STUDY)
    start = table.point((4, 4))  # the worst corner
    flat, raw, rand = (ta.run(m, table, 0.1, start, 0, 12, target=0.3) for m in
                       (ta.METHODS[0], ta.METHODS[1], "random"))
    assert flat["runs_to_target"] is not None
    assert flat["epochs_to_target"] == 12 * flat["runs_to_target"]
    # one-at-a-time moves in (η, λ) cross a narrow diagonal ridge and lose on both sides
    assert raw["runs_to_target"] is None or raw["runs_to_target"] > flat["runs_to_target"]
    assert rand["runs_total"] == ta.CAP
    sampler = ta.make_sampler(ta.METHODS[0], start, 0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(ta.objective(table, 0.1, 0, True), n_trials=15)
    keys = [table.key(t.user_attrs["point"]) for t in study.trials]
    # from the corner the first moves are ηλ at λ = 4 (j fixed), then λ along the ridge
    assert any(i + j == 4 for i, j in keys) and keys[1][1] == 4


def test_main_writes_json_and_figure(journal, tmp_path, monkeypatch):
    out = tmp_path / "t.json"
    monkeypatch.setattr(sys, "argv", [
        "tuner_adamw.py", "--journal", str(journal), "--reps", "2", "--slow-reps", "1",
        "--sigma", "0.1", "--out-json", str(out), "--out-png", str(tmp_path / "t.png"),
        "--methods", ta.METHODS[0], "random"])
    ta.main()
    report = json.loads(out.read_text())
    assert report["config"]["target_pp"] == ta.TARGET and report["config"]["cells"] == 25
    assert set(report["results"]) == {"worst cell", "AdamW default, clamped", "placeholder"}
    assert set(report["results"]["worst cell"]) == {ta.METHODS[0], "random"}
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
