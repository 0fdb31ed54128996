"""WeightNormHook on real (tiny) training runs, and the `ridgeline diagnose` command."""

import json
import math

import pytest
import torch

from ridgeline import cli
from ridgeline.cifar.model import ResNet9, scale_invariant_convs
from ridgeline.cifar.train import RunResult, train
from ridgeline.errors import RidgelineError
from ridgeline.presets import get_preset
from ridgeline.science import diagnose, theory
from ridgeline.science.diagnostics import WeightNormHook, angle_between
from tests.synthetic import fake_cifar


class Recorder:
    """A reference hook: copies every conv weight around every step, no cleverness."""

    name = "recorder"

    def on_train_start(self, model, optimizer, hparams, total_steps):
        self.convs = scale_invariant_convs(model)
        self.before, self.after, self.lrs = [], [], []

    def before_step(self, step, model, lr):
        self.before.append([c.weight.detach().double().clone() for _, c in self.convs])
        self.lrs.append(lr)

    def after_step(self, step, model, lr, loss=None):
        self.after.append([c.weight.detach().double().clone() for _, c in self.convs])

    def result(self):
        return {}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny convs on shared cores: one thread is faster than two that wait for each other."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def hooked_run(one_thread):
    data = fake_cifar(n_train=256, n_test=50)
    hook, ref = WeightNormHook(every=3), Recorder()
    result = train(preset="tiny", data=data, seed=0, device="cpu", hooks=[hook, ref])
    return result, ref


def test_hook_records_the_right_shapes(hooked_run):
    result, _ = hooked_run
    diag = result.extras["weight_norms"]
    hp = get_preset("tiny").hparams
    total = (256 // hp.batch_size) * hp.epochs  # 16 steps
    assert diag["steps"] == list(range(0, total, 3))
    assert diag["layers"] == [n for n, _ in scale_invariant_convs(ResNet9())] and \
        len(diag["layers"]) == 8
    for key in ("norm", "angle", "eff_lr", "eff_lr_total"):
        assert set(diag[key]) == set(diag["layers"])
        assert all(len(v) == len(diag["steps"]) for v in diag[key].values())
    assert len(diag["lr"]) == len(diag["steps"])
    assert diag["momentum"] == hp.momentum and diag["weight_decay"] == hp.weight_decay
    assert diag["nesterov"] is True and diag["total_steps"] == total
    assert diag["warmup_steps"] == pytest.approx(hp.warmup_epochs * total / hp.epochs)
    json.dumps(result.to_dict())  # JSON-able as it stands


def test_hook_matches_a_direct_computation(hooked_run):
    result, ref = hooked_run
    diag = result.extras["weight_norms"]
    rho = diag["momentum"]
    for i, step in enumerate(diag["steps"]):
        assert diag["lr"][i] == ref.lrs[step]
        for j, name in enumerate(diag["layers"]):
            w0, w1 = ref.before[step][j], ref.after[step][j]
            u0 = w0 / w0.norm()  # an independent formula: atan2 of the sine and cosine parts
            along = (w1 * u0).sum()
            angle = math.atan2((w1 - along * u0).norm().item(), along.item())
            norm = w0.norm().item()
            assert diag["norm"][name][i] == pytest.approx(norm, rel=1e-12)
            assert diag["angle"][name][i] == pytest.approx(angle, rel=1e-6, abs=1e-12)
            assert diag["eff_lr"][name][i] == pytest.approx(ref.lrs[step] / norm**2, rel=1e-12)
            assert diag["eff_lr_total"][name][i] == pytest.approx(
                ref.lrs[step] / ((1 - rho) * norm**2), rel=1e-12)


def test_hook_does_nothing_on_steps_it_does_not_log():
    hook = WeightNormHook(every=5)
    model = ResNet9(0.125)
    hook.on_train_start(model, torch.optim.SGD(model.parameters(), lr=0.1),
                        get_preset("tiny").hparams, 10)
    for step in (1, 2, 3, 4):
        hook.before_step(step, model, 0.1)
        assert hook._snap is None
        hook.after_step(step, model, 0.1)
    assert hook.result()["steps"] == []
    with pytest.raises(RidgelineError, match="every=0"):
        WeightNormHook(every=0)


def test_angle_between_is_accurate_for_tiny_angles():
    a = torch.tensor([1.0, 0.0])
    for theta in (1e-6, 1e-3, 0.5, 3.0):
        b = torch.tensor([math.cos(theta), math.sin(theta)]) * 7
        assert angle_between(a, b).item() == pytest.approx(theta, rel=1e-6)


def test_diagnose_from_saved_run_prints_status_and_plots(hooked_run, tmp_path, capsys):
    result, _ = hooked_run
    path = tmp_path / "run.json"
    path.write_text(result.to_json())
    png = tmp_path / "fig" / "d.png"
    assert cli.main(["diagnose", "--from", str(path), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "warm-up" in out and "decay 3/3" in out and "median ratio" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_diagnose_trains_with_the_hook(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "load_data", lambda args: fake_cifar(n_train=256, n_test=50))
    out_json, png = tmp_path / "run.json", tmp_path / "d.png"
    argv = ["diagnose", "--preset", "tiny", "--device", "cpu", "--every", "4", "--quiet",
            "--out", str(out_json), "--plot", str(png), "--epochs", "1"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "equilibrium angle" in out and png.exists()
    run = RunResult.from_dict(json.loads(out_json.read_text()))
    assert run.extras["weight_norms"]["steps"] == [0, 4]


def test_diagnose_an_adamw_run_uses_adamws_prediction(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "load_data", lambda args: fake_cifar(n_train=256, n_test=50))
    out_json = tmp_path / "run.json"
    argv = ["diagnose", "--preset", "tiny", "--optimizer", "adamw", "--lr", "2e-3",
            "--weight-decay", "0.5", "--beta1", "0.8", "--device", "cpu", "--every", "2",
            "--quiet", "--out", str(out_json), "--plot", str(tmp_path / "d.png"),
            "--epochs", "1"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "AdamW: peak η=0.002, decoupled λ=0.5, β₁=0.8" in out
    assert "EMA time scale 1/(ηλ) at peak η (Wang & Aitchison 2025): 1000 steps" in out
    diag = RunResult.from_dict(json.loads(out_json.read_text())).extras["weight_norms"]
    assert (diag["optimizer"], diag["beta1"]) == ("adamw", 0.8)
    lr = diag["lr"][0]
    assert diag["lr"][0] > 0 and theory.predicted_angles(diag)[0] == pytest.approx(
        theory.adamw_equilibrium_angular_update(lr, 0.5, 0.8))


def test_diagnose_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["diagnose", "--from", str(tmp_path / "missing.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"extras": {}}))
    assert cli.main(["diagnose", "--from", str(bare)]) == 2
    assert "has no extras['weight_norms']" in capsys.readouterr().err
    with pytest.raises(RidgelineError):
        diagnose.load_diagnostics(bare)
