import math
import runpy
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "examples" / "tune_your_model.py"
START = {"lr": 1e-3, "momentum": 0.5, "weight_decay": 1e-2}

try:
    import ridgeline.tuner.sampler  # noqa: F401
except ImportError:  # the sampler branch not merged yet
    pytest.skip("ridgeline.tuner.sampler is not importable yet", allow_module_level=True)


def test_example_tunes_a_small_cnn_at_tiny_size(monkeypatch, capsys):
    import optuna

    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--tiny"])
    study = runpy.run_path(str(SCRIPT), run_name="__main__")["study"]
    trials = study.trials
    assert len(trials) == 12
    assert trials[0].params == pytest.approx(START)
    u0 = START["lr"] * START["weight_decay"] / (1 - START["momentum"])
    for t in trials:  # every point on the sampler's lattice of powers of 2 from the start
        p = t.params
        for v in (p["lr"] * p["weight_decay"] / (1 - p["momentum"]) / u0,
                  (1 - p["momentum"]) / (1 - START["momentum"]),
                  p["weight_decay"] / START["weight_decay"]):
            assert abs(math.log2(v) - round(math.log2(v))) < 1e-6
    assert trials[0].state == optuna.trial.TrialState.COMPLETE
    assert study.best_value > trials[0].value  # the search moved off the bad start
    for t in trials:  # a pruned run stopped after its report, and was never proposed again
        if t.state == optuna.trial.TrialState.PRUNED:
            assert len(t.intermediate_values) < 2
    assert "best " in capsys.readouterr().out
