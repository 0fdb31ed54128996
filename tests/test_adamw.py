"""AdamW beside Page's SGD (issue #18): HParams and the sweep identities, the trainer, the
placeholder preset, the CLI, ``transfer --optimizer adamw`` and ``invariants="adamw"``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest
import torch
from torch import nn

import ridgeline
from ridgeline.cifar.model import ResNet9
from ridgeline.cifar.train import make_optimizer, train
from ridgeline.cli import main, parse
from ridgeline.errors import HParamError, RidgelineError, TuneError
from ridgeline.hparams import HParams
from ridgeline.presets import get_preset
from ridgeline.reproduce import plan as planning
from ridgeline.runs import ledger
from ridgeline.science import theory
from ridgeline.tuner.sampler import INVARIANT_SETS
from ridgeline.tuner.transfer import ADAMW_KEEP, describe_transfer
from tests.synthetic import fake_cifar

optuna.logging.set_verbosity(optuna.logging.ERROR)
JOURNAL = Path(__file__).parent.parent / "benchmarks/results/landscapes/ridgeline.journal"
KNOWN = HParams(lr=0.2, momentum=0.85, weight_decay=1e-3, batch_size=64, epochs=3,
                warmup_epochs=1.0)


# ------------------------------------------------------------------ SGD identities unchanged


def test_an_sgd_points_key_params_and_dict_are_todays():
    """Computed before AdamW existed (main at f3c4433): stored sweep points must still match."""
    assert ledger.point_key(KNOWN, "cpu-mini", 1) == (
        "cpu-mini|lr=0.2|momentum=0.85|weight_decay=0.001|batch_size=64|epochs=3|"
        "warmup_epochs=1|seed=1")
    assert ledger.point_key(HParams(), "paper", 0) == (
        "paper|lr=0.4|momentum=0.9|weight_decay=0.0005|batch_size=512|epochs=24|"
        "warmup_epochs=5|seed=0")
    assert ledger.point_params(KNOWN, 1) == {"lr": 0.2, "momentum": 0.85, "weight_decay": 0.001,
                                             "batch_size": 64, "seed": 1}
    assert KNOWN.to_dict() == {"lr": 0.2, "momentum": 0.85, "weight_decay": 0.001,
                               "batch_size": 64, "epochs": 3, "warmup_epochs": 1.0}
    assert list(KNOWN.derived()) == ["lr/batch_size", "lr/(1-momentum)", "lr*weight_decay",
                                     "lr*weight_decay/(1-momentum)"]
    assert KNOWN.replace(optimizer="sgd") == KNOWN  # "sgd" is the default, not a new point


def test_every_committed_sweep_point_keeps_its_key_and_params():
    """The committed journal's trials, re-keyed from their stored hparams by today's code."""
    checked = 0
    for line in JOURNAL.read_text().splitlines():
        op = json.loads(line)
        attrs = op.get("user_attrs") or {}
        if ledger.KEY_ATTR not in attrs:
            continue
        hp = HParams(**attrs["hparams"])
        assert hp.to_dict() == attrs["hparams"]
        assert ledger.point_key(hp, attrs["preset"], attrs["seed"]) == attrs[ledger.KEY_ATTR]
        fixed = op.get("system_attrs", {}).get("fixed_params")
        if fixed is not None:
            assert ledger.point_params(hp, attrs["seed"]) == fixed
        checked += 1
    assert checked > 100


# ------------------------------------------------------------------ HParams for AdamW


def test_an_adamw_points_dict_and_key_name_the_optimizer_and_both_betas():
    hp = KNOWN.replace(optimizer="adamw", lr=2e-3, weight_decay=0.5)
    d = hp.to_dict()
    assert (d["optimizer"], d["beta1"], d["beta2"]) == ("adamw", 0.9, 0.999)
    assert HParams(**d) == hp
    assert ledger.point_key(hp, "cpu-mini-adamw", 0) == (
        "cpu-mini-adamw|lr=0.002|momentum=0.85|weight_decay=0.5|batch_size=64|epochs=3|"
        "warmup_epochs=1|optimizer=adamw|beta1=0.9|beta2=0.999|seed=0")
    assert ledger.point_key(hp.replace(beta1=0.95), "x", 0) != ledger.point_key(hp, "x", 0)
    # ρ is not AdamW's: its derived coordinates are λ/N and ηλ only
    assert hp.derived() == {"lr/batch_size": 2e-3 / 64, "lr*weight_decay": pytest.approx(1e-3)}


def test_sgd_with_a_non_default_beta_keeps_it_so_the_dict_round_trips():
    hp = KNOWN.replace(beta1=0.5)
    assert hp.to_dict() == {**KNOWN.to_dict(), "beta1": 0.5} and HParams(**hp.to_dict()) == hp


@pytest.mark.parametrize("bad, field, allowed", [
    ({"optimizer": "adam"}, "optimizer", "one of sgd, adamw"),
    ({"optimizer": "SGD"}, "optimizer", "one of sgd, adamw"),
    ({"beta1": 1.0}, "beta1", "in [0, 1)"),
    ({"beta1": -0.1}, "beta1", "in [0, 1)"),
    ({"beta2": 1.0}, "beta2", "in [0, 1)"),
    ({"beta2": float("nan")}, "beta2", "in [0, 1)"),
])
def test_bad_optimizer_or_beta_is_a_one_line_error_naming_value_and_range(bad, field, allowed):
    with pytest.raises(HParamError) as e:
        HParams(**bad)
    msg = str(e.value)
    assert msg.startswith(f"{field}={next(iter(bad.values()))!r} is not allowed")
    assert allowed in msg and "\n" not in msg


# ------------------------------------------------------------------ the trainer


def test_adamw_is_torchs_with_betas_and_decoupled_decay_scaled_by_the_lr():
    hp = HParams(lr=1e-3, weight_decay=0.5, optimizer="adamw", beta1=0.8, beta2=0.99)
    net = ResNet9(0.125)
    opt = make_optimizer(net, hp)
    assert type(opt) is torch.optim.AdamW
    assert opt.defaults["betas"] == (0.8, 0.99) and opt.defaults["weight_decay"] == 0.5
    # A zero gradient leaves Adam's step at 0: what remains is the decay w ← w·(1 − ηλ),
    # torch's convention (λ alone would be w·(1 − λ)); coupled L2 would give no change at all.
    before = [p.detach().clone() for p in net.parameters()]
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.param_groups[0]["lr"] = 0.1
    opt.step()
    for b, p in zip(before, net.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), b * (1 - 0.1 * 0.5), rtol=1e-6, atol=1e-7)


def test_fused_adamw_steps_like_torchs_default_loop():
    """The same gradients into both (Adam turns rounding-level differences of a near-zero
    gradient into ±lr steps, so gradients recomputed per net would compare the nets' chaos)."""
    hp = HParams(lr=1e-3, weight_decay=0.5, optimizer="adamw", beta1=0.8, beta2=0.99)
    nets = [ResNet9(0.125) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    start = [p.detach().clone() for p in nets[0].parameters()]
    fused = make_optimizer(nets[0], hp)
    plain = torch.optim.AdamW(nets[1].parameters(), lr=0.0, betas=(0.8, 0.99),
                              weight_decay=0.5)
    assert fused.defaults["fused"] and not plain.defaults["fused"]
    g = torch.Generator().manual_seed(0)
    for step in range(4):
        grads = [torch.randn(p.shape, generator=g) for p in start]
        for net, opt in zip(nets, (fused, plain), strict=True):
            for p, grad in zip(net.parameters(), grads, strict=True):
                p.grad = grad.clone()
            opt.param_groups[0]["lr"] = 1e-3 * (step + 1)
            opt.step()
    for a, b, c in zip(nets[0].parameters(), nets[1].parameters(), start, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
        assert float((a.detach() - c).abs().max()) > 1e-3  # the steps did move the weights


def test_sgd_is_still_pages_fused_nesterov_sgd():
    opt = make_optimizer(ResNet9(0.125), get_preset("cpu-mini").hparams)
    assert type(opt) is torch.optim.SGD and opt.defaults["nesterov"]
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["weight_decay"] == 5e-4


def test_adamw_per_group_decay_and_lr_scale_are_kept():
    net = nn.Linear(4, 2)
    groups = [{"params": [net.weight], "weight_decay": 0.0, "lr_scale": 2.0},
              {"params": [net.bias]}]
    opt = make_optimizer(net, HParams(lr=1e-3, weight_decay=0.1, optimizer="adamw"), groups)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 0.1]
    assert opt.param_groups[0]["lr_scale"] == 2.0


@pytest.fixture(scope="module")
def data():
    return fake_cifar(n_train=256, n_test=100)


def test_an_adamw_run_records_its_optimizer_and_ignores_momentum(data):
    hp = get_preset("tiny").hparams.replace(lr=2e-3, weight_decay=0.5, optimizer="adamw",
                                            beta1=0.85)
    a = train(hp, preset="tiny", data=data, seed=0, device="cpu")
    b = train(hp.replace(momentum=0.3), preset="tiny", data=data, seed=0, device="cpu")
    sgd = train(preset="tiny", data=data, seed=0, device="cpu")
    assert not a.diverged and math.isfinite(a.train_loss)
    assert a.hparams["optimizer"] == "adamw" and a.hparams["beta1"] == 0.85
    assert a.hparams["beta2"] == 0.999 and HParams(**a.hparams) == hp
    assert "optimizer" not in sgd.hparams  # an SGD record is as before
    # momentum is not AdamW's: changing it changes nothing but the record
    assert [e["train_loss"] for e in a.epochs] == [e["train_loss"] for e in b.epochs]
    assert a.test_acc == b.test_acc
    # Page's schedule for both optimisers, scaled to each one's peak lr
    for ea, es in zip(a.epochs, sgd.epochs, strict=True):
        assert ea["lr"] / hp.lr == pytest.approx(es["lr"] / sgd.hparams["lr"], rel=1e-12)


# ------------------------------------------------------------------ the placeholder preset


def test_cpu_mini_adamw_is_cpu_mini_with_adamw_calibrated_on_the_slice():
    mini, adamw = get_preset("cpu-mini"), get_preset("cpu-mini-adamw")
    assert (adamw.width, adamw.train_size) == (mini.width, mini.train_size)
    same = ("batch_size", "epochs", "warmup_epochs")
    assert [getattr(adamw.hparams, k) for k in same] == [getattr(mini.hparams, k) for k in same]
    assert adamw.hparams.optimizer == "adamw" and adamw.noise_std == pytest.approx(0.0015)
    assert adamw.run_seconds > 0 and adamw.notes["calibrated"] is True
    # a cell of the slice's grid (2e-3·√2 · 2^k), so its stored runs are the preset's
    assert math.log2(adamw.hparams.lr / (2e-3 * math.sqrt(2))) == pytest.approx(2, abs=1e-8)
    # the reasoning in presets.py: 1/(ηλ) = 707 steps = 4.5 epochs, inside the 12-epoch run
    hp = adamw.hparams
    steps_per_epoch = mini.train_size // hp.batch_size
    assert theory.adamw_ema_timescale(hp.lr, hp.weight_decay) == pytest.approx(707.1, abs=0.1)
    assert 1 <= theory.adamw_ema_timescale(hp.lr, hp.weight_decay, steps_per_epoch) <= hp.epochs


def test_reproduce_refuses_an_adamw_preset_in_one_line():
    with pytest.raises(RidgelineError, match="reproduce runs Page's SGD experiments.*adamw"):
        planning.ladder("cpu-mini-adamw", "3h", 95.0, "t")


# ------------------------------------------------------------------ the CLI


def test_train_flags_set_the_optimizer_and_betas():
    args = parse(["train", "--preset", "tiny", "--optimizer", "adamw", "--beta1", "0.8",
                  "--beta2", "0.95", "--lr", "1e-3"])
    from ridgeline.cli import hparams_from_args

    _, hp = hparams_from_args(args)
    assert (hp.optimizer, hp.beta1, hp.beta2, hp.lr) == ("adamw", 0.8, 0.95, 1e-3)
    _, hp = hparams_from_args(parse(["train", "--preset", "cpu-mini-adamw"]))
    assert hp == get_preset("cpu-mini-adamw").hparams
    _, hp = hparams_from_args(parse(["train", "--preset", "cpu-mini-adamw", "--optimizer",
                                     "sgd"]))
    assert hp.optimizer == "sgd" and hp.lr == get_preset("cpu-mini-adamw").hparams.lr  # only
    # the optimiser changed


@pytest.mark.parametrize("argv, needle", [
    (["train", "--optimizer", "adam"], "invalid choice: 'adam'"),
    (["train", "--beta1", "1"], "beta1=1.0 is not allowed: it must be in [0, 1)"),
    (["train", "--beta2", "-0.5"], "beta2=-0.5 is not allowed: it must be in [0, 1)"),
    (["tune", "--preset", "cpu-mini-adamw"], "--optimizer adamw is not supported yet"),
    (["tune", "--optimizer", "adamw"], "invariants='adamw'"),
    (["sweep", "--slice", "lr-momentum", "--preset", "cpu-mini-adamw", "--dry-run"],
     "axis momentum is not used by optimizer 'adamw'"),
    (["reproduce", "--preset", "cpu-mini-adamw", "--dry-run"], "reproduce runs Page's SGD"),
    (["sweep", "--slice", "lr-beta1", "--preset", "cpu-mini", "--dry-run"],
     "axis beta1 is not used by optimizer 'sgd' (momentum is its momentum)"),
    (["sweep", "--slice", "lr-beta1", "--preset", "cpu-mini-adamw", "--steps", "3", "9",
      "--dry-run"], "1-beta1 would reach 1.6 > 1 about beta1=0.9"),
])
def test_adamw_cli_errors_are_one_line(capsys, argv, needle):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and "\n" not in err


def test_sweep_dry_run_of_an_adamw_lr_wd_slice(capsys):
    code = main(["sweep", "--slice", "lr-wd", "--preset", "cpu-mini-adamw", "--steps", "3",
                 "--lr", "2e-3", "--weight-decay", "1", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0 and "lr-wd on cpu-mini-adamw: 9 runs" in out
    assert "lr: 0.001, 0.002, 0.004" in out and "weight_decay: 0.5, 1, 2" in out


def test_sweep_dry_run_of_an_adamw_lr_beta1_slice_grids_one_minus_beta1(capsys):
    code = main(["sweep", "--slice", "lr-beta1", "--preset", "cpu-mini-adamw", "--steps", "3",
                 "--lr", "2e-3", "--beta1", "0.9", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0 and "lr-beta1 on cpu-mini-adamw: 9 runs" in out
    assert "beta1: 0.95, 0.9, 0.8" in out


def test_an_lr_beta1_grid_fits_eta_against_the_angle_s_beta1_factor():
    from ridgeline.landscape import plots
    from ridgeline.landscape.grid import make_grid

    base = get_preset("tiny").hparams.replace(optimizer="adamw", lr=2e-3, weight_decay=0.5)
    spec = make_grid("lr-beta1", "tiny", base=base, steps=(7, 3))
    points = {}
    for p in spec.points():  # a ridge along η(1−β₁)/(1+β₁) = 1e-4: the theory's angle
        x = p.hparams.lr * (1 - p.hparams.beta1) / (1 + p.hparams.beta1)
        points.setdefault(p.index, []).append(0.9 - 0.01 * math.log2(x / 1e-4) ** 2)
    g = plots._grid_from_cells("g", spec, points)
    assert g.row_axis == "beta1" and list(g.row_coord) == sorted(g.row_coord)
    fit = plots.grid_fit(g)
    assert fit.slope == pytest.approx(1.0, abs=0.05) and fit.x_name == "(1+β₁)/(1−β₁)"


# ------------------------------------------------------------------ transfer --optimizer adamw


PLACEHOLDER = ("--from", "lr=2e-3", "weight_decay=1")  # round numbers on cpu-mini-adamw


def transfer_cli(capsys, *args):
    code = main(["transfer", *args])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err.strip()


def test_transfer_of_an_adamw_preset_keeps_eta_lambda(capsys):
    code, lines, _ = transfer_cli(capsys, "--preset", "cpu-mini-adamw", *PLACEHOLDER,
                                      "--weight-decay", "0.5")
    assert code == 0
    assert lines[0] == "from  lr=0.002 weight_decay=1 batch_size=64 beta1=0.9"
    assert lines[1] == f"keep  {ADAMW_KEEP[0]}"
    assert lines[2] == "to    lr=0.004 weight_decay=0.5 batch_size=64 beta1=0.9"
    assert lines[3] == ("  lr 0.002 → 0.004: keeps lr*weight_decay = 2.00e-03 as "
                        "weight_decay 1 → 0.5")


@pytest.mark.parametrize("args, to", [
    (["--lr", "4e-3"], "lr=0.004 weight_decay=0.5 batch_size=64 beta1=0.9"),
    (["--beta1", "0.99"], "lr=0.002 weight_decay=1 batch_size=64 beta1=0.99"),
    (["--batch-size", "128"], "lr=0.002 weight_decay=1 batch_size=128 beta1=0.9"),
    (["--batch-size", "128", "--keep", "lr*weight_decay/batch_size", "--keep", "lr"],
     "lr=0.002 weight_decay=2 batch_size=128 beta1=0.9"),  # τ in epochs kept, λ ∝ N
])
def test_transfer_adamw_moves(capsys, args, to):
    code, lines, _ = transfer_cli(capsys, "--preset", "cpu-mini-adamw", *PLACEHOLDER, *args)
    assert code == 0 and lines[2] == f"to    {to}"


def test_transfer_optimizer_flag_overrides_the_presets(capsys):
    code, lines, _ = transfer_cli(capsys, "--preset", "paper", "--optimizer", "adamw",
                                  "--from", "lr=1e-3", "beta1=0.95", "--lr", "2e-3")
    assert code == 0 and lines[0] == "from  lr=0.001 weight_decay=0.0005 batch_size=512 beta1=0.95"
    assert lines[2] == "to    lr=0.002 weight_decay=0.00025 batch_size=512 beta1=0.95"
    code, lines, _ = transfer_cli(capsys, "--preset", "paper", "--lr", "0.8")  # still Page's
    assert code == 0 and "momentum" in lines[0]


@pytest.mark.parametrize("args, needle", [
    (["--preset", "cpu-mini-adamw", "--momentum", "0.99"],
     "--momentum is not a parameter of adamw"),
    (["--preset", "cpu-mini", "--beta1", "0.99"], "--beta1 is not a parameter of sgd"),
    (["--preset", "cpu-mini-adamw"], "nothing to transfer: give the new value of one or more of "
                                     "--lr, --weight-decay, --batch-size, --beta1"),
    (["--preset", "cpu-mini-adamw", "--from", "momentum=0.5", "--lr", "1e-3"],
     "NAME one of lr, weight_decay, batch_size, beta1"),
    (["--preset", "cpu-mini-adamw", "--beta1", "1"], "beta1=1.0 is not allowed"),
    (["--optimizer", "adam", "--lr", "1"], "invalid choice: 'adam'"),
])
def test_transfer_adamw_bad_input_is_one_line(capsys, args, needle):
    code, lines, err = transfer_cli(capsys, *args)
    assert code == 2 and not lines and needle in err and "\n" not in err


def test_describe_transfer_rejects_an_unknown_optimizer():
    with pytest.raises(RidgelineError, match="optimizer 'adam' is not allowed"):
        describe_transfer({"lr": 1.0}, {"lr": 2.0}, optimizer="adam")


# ------------------------------------------------------------------ invariants="adamw"

ADAMW_START = {"lr": 1e-4, "weight_decay": 0.05, "beta1": 0.5}


def eta_lambda(p):
    return p["lr"] * p["weight_decay"]


def adamw_landscape(p):
    """Steep in ηλ, shallow along λ and 1−β₁ at fixed ηλ; peak 0 at ηλ=2e-3, λ=1, β₁=0.9."""
    return -(math.log2(eta_lambda(p) / 2e-3) ** 2 + 0.2 * math.log2(p["weight_decay"]) ** 2
             + 0.2 * math.log2((1 - p["beta1"]) / 0.1) ** 2)


def adamw_objective(trial):
    return adamw_landscape({
        "lr": trial.suggest_float("lr", 1e-7, 10, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-6, 100, log=True),
        "beta1": trial.suggest_float("beta1", 0.0, 0.9999),
        "seed": trial.suggest_int("seed", 0, 100)})


def test_named_set_adamw_tunes_eta_lambda_then_lambda_and_one_minus_beta1():
    s = ridgeline.FlatDirectionSampler(start=ADAMW_START, invariants="adamw", seed=0)
    assert s._system.names == ("lr*weight_decay", "weight_decay", "1-beta1")
    s = ridgeline.FlatDirectionSampler(start={"lr": 1e-3, "weight_decay": 0.1},
                                       invariants="adamw", seed=0)
    assert s._system.names == ("lr*weight_decay", "weight_decay")
    assert INVARIANT_SETS["sgd"][0] == ("lr*weight_decay/(1-momentum)",)


def test_named_set_adamw_holds_eta_lambda_on_other_moves_and_finds_the_peak():
    sampler = ridgeline.FlatDirectionSampler(start=ADAMW_START, invariants="adamw",
                                             min_improvement=0.0, max_level=1, seed=0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(adamw_objective, n_trials=150)
    held = 0
    for a, b in zip(study.trials, study.trials[1:], strict=False):
        k = math.log2(eta_lambda(b.params) / eta_lambda(ADAMW_START))
        assert abs(k - round(k)) < 1e-9  # on the lattice of ηλ
        moved = (a.params["weight_decay"] != b.params["weight_decay"]
                 or a.params["beta1"] != b.params["beta1"])
        if moved and eta_lambda(a.params) == pytest.approx(eta_lambda(b.params), rel=1e-12):
            held += 1
    assert held >= 2  # λ or β₁ moved at fixed ηλ
    best = study.best_params
    assert eta_lambda(best) == pytest.approx(2e-3, rel=0.5)
    assert study.best_value > -1.0


@pytest.mark.parametrize("invariants, start, match", [
    ("adam", {"lr": 1e-3, "weight_decay": 0.1},
     "invariants='adam' is neither a named set (one of sgd, adamw) nor a monomial"),
    ("lr+weight_decay", {"lr": 1e-3, "weight_decay": 0.1}, "neither a named set"),
    ("adamw", {"lr": 1e-3, "beta1": 0.9}, "start must name weight_decay too"),
])
def test_unknown_named_set_is_a_one_line_error(invariants, start, match):
    with pytest.raises(TuneError) as e:
        ridgeline.FlatDirectionSampler(start=start, invariants=invariants)
    assert match in str(e.value) and "\n" not in str(e.value)


def test_a_single_monomial_string_is_one_invariant():
    s = ridgeline.FlatDirectionSampler(start={"lr": 1e-3, "weight_decay": 0.1},
                                       invariants="lr*weight_decay", seed=0)
    assert s._system.names == ("lr*weight_decay", "weight_decay")
