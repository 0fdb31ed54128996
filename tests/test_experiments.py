"""benchmarks/theory_experiments.py, now a thin wrapper over ridgeline.science.experiments."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from ridgeline.errors import RidgelineError
from ridgeline.presets import get_preset
from ridgeline.science import experiments

PATH = Path(__file__).parents[1] / "benchmarks" / "theory_experiments.py"
spec = importlib.util.spec_from_file_location("theory_experiments", PATH)
bench = sys.modules["theory_experiments"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_benchmark_script_keeps_its_flags_and_output(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = bench.main(["--preset", "tiny", "--synthetic", "--seeds", "1",
                              "--experiments", "c", "--out", str(tmp_path / "t.json"),
                              "--figures", str(tmp_path / "figs")])
    finally:
        torch.set_num_threads(threads)
    saved = json.loads((tmp_path / "t.json").read_text())
    assert set(saved) == set(results) == {"meta", "momentum"}
    assert saved["meta"]["preset"] == "tiny" and saved["meta"]["synthetic"] is True
    settings = saved["momentum"]["settings"]
    assert list(settings) == ["rho=0.8, lr=0.4", "rho=0.9, lr=0.2", "rho=0.95, lr=0.1"]
    assert all(len(s["test_accs"]) == 1 and s["seed0"]["status"] for s in settings.values())
    assert saved["momentum"]["seconds"] > 0
    assert (tmp_path / "figs" / "theory_momentum.png").read_bytes()[:4] == b"\x89PNG"


def test_unknown_experiment_is_an_error():
    setup = experiments.Setup(get_preset("tiny"), None)
    with pytest.raises(RidgelineError, match="unknown experiment 'd'"):
        experiments.run("d", setup, experiments.MemoryCache())
