"""The formulas of science.theory: values, scaling relations, and a toy model that reaches the
predicted rotational equilibrium; plus the exact scale symmetry with per-group lr/wd."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from ridgeline.errors import RidgelineError
from ridgeline.hparams import HParams
from ridgeline.science import theory
from ridgeline.science.diagnostics import WeightNormHook
from ridgeline.science.param_groups import rescale_scale_invariant, symmetric_param_groups


@pytest.fixture
def one_thread():
    """The toy loops are thousands of tiny ops: one thread is faster and spares shared cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------ formula values


def test_equilibrium_angle_values():
    # √(2·0.2·5e-4/1.9) = 0.010260..., the cpu-mini preset at peak lr
    assert theory.equilibrium_angular_update(0.2, 5e-4, 0.9) == pytest.approx(0.0102598, rel=1e-5)
    assert theory.equilibrium_angular_update(0.1, 0.01, 0.0) == pytest.approx(math.sqrt(2e-3))
    # Nesterov: (1+2ρ−2ρ³) = 1.342 at ρ=0.9, so the angle is √1.342 = 1.1585× larger
    ratio = (theory.equilibrium_angular_update(0.2, 5e-4, 0.9, nesterov=True)
             / theory.equilibrium_angular_update(0.2, 5e-4, 0.9))
    assert ratio == pytest.approx(math.sqrt(1.342), rel=1e-12)
    assert theory.momentum_noise_factor(0.0, nesterov=True) == 1.0


@given(rho=st.floats(0.0, 0.99))
def test_momentum_noise_factor_matches_its_filter(rho):
    """(1−ρ)·Σh² computed from the impulse responses of heavy ball and torch's Nesterov."""
    k = np.arange(5000)
    heavy = rho**k
    nesterov = np.concatenate([[1 + rho], rho ** (k[1:] + 1)])
    assert heavy.sum() == pytest.approx(1 / (1 - rho), rel=1e-6)  # total contribution λ/(1−ρ)
    assert nesterov.sum() == pytest.approx(1 / (1 - rho), rel=1e-6)
    assert theory.momentum_noise_factor(rho) == pytest.approx((1 - rho) * (heavy**2).sum(),
                                                              rel=1e-6)
    assert theory.momentum_noise_factor(rho, True) == pytest.approx(
        (1 - rho) * (nesterov**2).sum(), rel=1e-6)


def test_total_lr_and_effective_lr():
    assert theory.total_lr(0.4, 0.9) == pytest.approx(4.0)
    assert theory.total_lr(0.4, 0.9) == pytest.approx(HParams(lr=0.4, momentum=0.9).lr_total)
    assert theory.effective_lr(0.4, 2.0) == pytest.approx(0.1)
    assert theory.effective_lr(0.4, 2.0, momentum=0.9) == pytest.approx(1.0)


@given(lr=st.floats(1e-3, 10), wd=st.floats(1e-6, 1e-2), rho=st.floats(0, 0.99),
       k=st.floats(0.05, 20))
def test_scaling_relations(lr, wd, rho, k):
    base = (lr, wd, rho)
    # λα fixed: angle and relaxation time unchanged, ‖w‖ scales as k^½ when λ×k, α÷k
    a0 = theory.equilibrium_angular_update(lr, wd, rho)
    assert theory.equilibrium_angular_update(lr * k, wd / k, rho) == pytest.approx(a0, rel=1e-9)
    assert theory.equilibration_steps(lr * k, wd / k, rho) == pytest.approx(
        theory.equilibration_steps(*base), rel=1e-9)
    assert theory.equilibrium_norm_ratio(base, (lr * k, wd / k, rho)) == pytest.approx(
        math.sqrt(k), rel=1e-9)
    # λ×k alone: ‖w‖ ×k^¼, the effective lr λ/‖w‖² ×k^½, the angle ×k^½
    assert theory.equilibrium_norm_ratio(base, (lr * k, wd, rho)) == pytest.approx(k**0.25,
                                                                                   rel=1e-9)
    g = 3.0
    n0, n1 = (theory.equilibrium_norm(lr, wd, rho, g), theory.equilibrium_norm(lr * k, wd, rho, g))
    assert n1 / n0 == pytest.approx(k**0.25, rel=1e-9)
    assert theory.effective_lr(lr * k, n1) / theory.effective_lr(lr, n0) == pytest.approx(
        math.sqrt(k), rel=1e-9)
    # symmetry: λr², α/r² keeps λα
    lr2, wd2 = theory.scale_symmetry(lr, wd, k)
    assert lr2 * wd2 == pytest.approx(lr * wd, rel=1e-12)


def test_equilibrium_angle_and_norm_are_consistent():
    """θ = λ‖g‖/‖w‖·√(Σh²) with ‖g‖ = G/‖w‖ at the equilibrium norm gives back the angle."""
    lr, wd, rho, g = 0.2, 5e-4, 0.9, 7.0
    n = theory.equilibrium_norm(lr, wd, rho, g)
    angle = lr * g / n**2 / math.sqrt(1 - rho**2)
    assert angle == pytest.approx(theory.equilibrium_angular_update(lr, wd, rho), rel=1e-12)


def test_norm_ratio_when_lr_times_4():
    assert theory.equilibrium_norm_ratio((0.2, 5e-4, 0.9), (0.8, 5e-4, 0.9)) == pytest.approx(
        math.sqrt(2))
    assert theory.equilibrium_norm_ratio((0.2, 5e-4, 0.9), (0.8, 1.25e-4, 0.9)) == pytest.approx(
        2.0)


def test_equilibration_steps_says_which_time_it_is():
    lr, wd, rho = 0.2, 5e-4, 0.9
    assert theory.equilibration_steps(lr, wd, rho) == pytest.approx(250)
    assert theory.equilibration_steps(lr, wd, rho, "norm_sq_decay") == pytest.approx(500)
    assert theory.equilibration_steps(lr, wd, rho, "norm_decay") == pytest.approx(1000)
    with pytest.raises(RidgelineError, match="unknown quantity 'x'"):
        theory.equilibration_steps(lr, wd, rho, "x")


# ------------------------------------------------------------------------ toy equilibrium


def _toy_run(lr, wd, rho, nesterov, steps=300, every=2, seed=0):
    """Linear(64→10) → BatchNorm1d(no affine): the weight is exactly scale-invariant (per row).
    Fresh random inputs and labels each step make the gradient pure noise, the regime of the
    theory. Returns the hook record."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 10, bias=False), nn.BatchNorm1d(10, affine=False))
    hp = HParams(lr=lr, momentum=rho, weight_decay=wd, batch_size=32, epochs=1, warmup_epochs=0)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=rho, nesterov=nesterov,
                          weight_decay=wd)
    return _measure(model, opt, hp, lr, steps, every, seed)


def _measure(model, opt, hp, lr, steps, every, seed):
    """Train the toy on random batches, with WeightNormHook measuring its scale-invariant
    layer."""
    hook = WeightNormHook(every=every, select=lambda m: [("fc", m[0].weight)])
    hook.on_train_start(model, opt, hp, steps)
    g = torch.Generator().manual_seed(seed + 1)
    for s in range(steps):
        x, y = torch.randn(32, 64, generator=g), torch.randint(0, 10, (32,), generator=g)
        hook.before_step(s, model, lr)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        hook.after_step(s, model, lr)
    return hook.result()


def _late_mean(values):
    return float(np.mean(values[len(values) // 2:]))


@pytest.mark.parametrize("nesterov", [False, True])
def test_toy_reaches_the_predicted_angular_update(one_thread, nesterov):
    # τ = (1−ρ)/(4λα) = 25 steps: 300 steps is 12τ; the second half is averaged.
    lr, wd, rho = 0.1, 0.01, 0.9
    diag = _toy_run(lr, wd, rho, nesterov)
    measured = _late_mean(diag["angle"]["fc"])
    predicted = theory.equilibrium_angular_update(lr, wd, rho, nesterov=nesterov)
    assert measured == pytest.approx(predicted, rel=0.10)
    if nesterov:  # the heavy-ball formula is off by 16% for torch's Nesterov SGD
        assert measured / theory.equilibrium_angular_update(lr, wd, rho) > 1.12
    assert diag["nesterov"] is nesterov
    status = theory.equilibrium_status(diag, tol=0.1, n_decay=1)
    assert [s.phase for s in status] == ["decay"]  # no warm-up in this toy


def test_toy_norm_ratio_follows_lambda_over_alpha(one_thread):
    """λ×4, α÷4: the same angle, ‖w‖ twice as large (λα, hence τ, unchanged)."""
    base = _toy_run(0.05, 0.02, 0.9, nesterov=False)
    big = _toy_run(0.2, 0.005, 0.9, nesterov=False)
    ratio = _late_mean(big["norm"]["fc"]) / _late_mean(base["norm"]["fc"])
    assert ratio == pytest.approx(2.0, rel=0.10)
    assert _late_mean(big["angle"]["fc"]) == pytest.approx(_late_mean(base["angle"]["fc"]),
                                                           rel=0.10)


# ------------------------------------------------------------------------ AdamW


def test_adamw_equilibrium_angle_values():
    # √(2·2e-3·1.0·0.1/1.9) = 0.014510...: cpu-mini-adamw's former placeholder at peak lr
    assert theory.adamw_equilibrium_angular_update(2e-3, 1.0, 0.9) == pytest.approx(
        0.0145095, rel=1e-5)
    assert theory.adamw_equilibrium_angular_update(0.01, 0.5, 0.0) == pytest.approx(0.1)
    # β₁ enters as (1−β₁)/(1+β₁): 1/19 of the β₁=0 angle² at β₁=0.9
    ratio = (theory.adamw_equilibrium_angular_update(1e-3, 0.1, 0.9)
             / theory.adamw_equilibrium_angular_update(1e-3, 0.1, 0.0))
    assert ratio == pytest.approx(math.sqrt(0.1 / 1.9), rel=1e-12)
    assert theory.adamw_equilibrium_angular_update(1e-3, 0.0) == 0.0
    assert theory.adamw_equilibrium_norm(0.01, 0.5, 640) == pytest.approx(math.sqrt(6.4))
    assert theory.adamw_equilibrium_norm(0.01, 0.0, 640) == math.inf


def test_adamw_ema_timescale_values():
    assert theory.adamw_ema_timescale(2e-3, 1.0) == pytest.approx(500.0)
    assert theory.adamw_ema_timescale(2e-3, 1.0, steps_per_epoch=156) == pytest.approx(500 / 156)
    assert theory.adamw_ema_timescale(1e-3, 0.0) == math.inf


@given(lr=st.floats(1e-6, 1.0), wd=st.floats(1e-4, 10.0), b1=st.floats(0.0, 0.999),
       k=st.floats(1e-3, 1e3))
def test_adamw_angle_and_timescale_depend_on_lr_and_wd_only_through_their_product(lr, wd, b1, k):
    angle = theory.adamw_equilibrium_angular_update(lr, wd, b1)
    assert theory.adamw_equilibrium_angular_update(lr * k, wd / k, b1) == pytest.approx(
        angle, rel=1e-9)
    assert theory.adamw_ema_timescale(lr * k, wd / k) == pytest.approx(
        theory.adamw_ema_timescale(lr, wd), rel=1e-9)
    # ... while η alone moves the angle (√k) and the norm goes as √(η/λ) (k)
    assert theory.adamw_equilibrium_angular_update(lr * k, wd, b1) == pytest.approx(
        angle * math.sqrt(k), rel=1e-9)
    assert theory.adamw_equilibrium_norm(lr * k, wd / k, 100) == pytest.approx(
        k * theory.adamw_equilibrium_norm(lr, wd, 100), rel=1e-9)
    # β₁ is SGD's heavy-ball ρ with the EMA's (1−β₁) scaling of the step
    assert angle == pytest.approx(
        theory.equilibrium_angular_update(lr, wd, b1) * math.sqrt(1 - b1), rel=1e-9)


def _toy_adamw_run(lr, wd, beta1, steps=1000, every=2, seed=0):
    """The SGD toy (Linear → BatchNorm1d without affine, pure-noise gradients) under
    train.make_optimizer's AdamW at a constant lr."""
    from ridgeline.cifar.train import make_optimizer

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 10, bias=False), nn.BatchNorm1d(10, affine=False))
    hp = HParams(lr=lr, weight_decay=wd, batch_size=32, epochs=1, warmup_epochs=0,
                 optimizer="adamw", beta1=beta1, beta2=0.99)
    opt = make_optimizer(model, hp)
    opt.param_groups[0]["lr"] = lr
    return _measure(model, opt, hp, lr, steps, every, seed)


def test_toy_reaches_adamws_predicted_equilibrium_and_eta_lambda_is_flat(one_thread):
    """1/(ηλ) = 200 steps, 1000 steps run, the second half averaged. η×2, λ÷2: the same
    angle (ηλ unchanged), ‖w‖ twice as large (√(η/λ)×2), as Kosson et al. predict."""
    base = _toy_adamw_run(0.01, 0.5, 0.9)
    moved = _toy_adamw_run(0.02, 0.25, 0.9)
    predicted = theory.adamw_equilibrium_angular_update(0.01, 0.5, 0.9)
    assert _late_mean(base["angle"]["fc"]) == pytest.approx(predicted, rel=0.05)
    assert _late_mean(moved["angle"]["fc"]) == pytest.approx(predicted, rel=0.05)
    assert _late_mean(base["norm"]["fc"]) == pytest.approx(
        theory.adamw_equilibrium_norm(0.01, 0.5, 640), rel=0.10)
    ratio = _late_mean(moved["norm"]["fc"]) / _late_mean(base["norm"]["fc"])
    assert ratio == pytest.approx(2.0, rel=0.05)
    # and SGD's formula with ρ=β₁ would be off by 1/√(1−β₁) = 3.2×
    assert _late_mean(base["angle"]["fc"]) < 0.5 * theory.equilibrium_angular_update(0.01, 0.5,
                                                                                     0.9)
    # the hook's record says AdamW, so diagnose's per-phase check uses AdamW's prediction
    assert (base["optimizer"], base["beta1"]) == ("adamw", 0.9)
    late = dict(base)
    late["steps"] = base["steps"][len(base["steps"]) // 2:]
    late["lr"] = base["lr"][len(base["lr"]) // 2:]
    late["angle"] = {"fc": base["angle"]["fc"][len(base["steps"]) // 2:]}
    [status] = theory.equilibrium_status({**late, "warmup_steps": 0}, tol=0.05, n_decay=1)
    assert status.in_equilibrium and status.median_ratio == pytest.approx(1.0, abs=0.05)
    assert not theory.equilibrium_status({**late, "warmup_steps": 0, "optimizer": "sgd",
                                          "momentum": 0.9}, tol=0.05, n_decay=1)[0].in_equilibrium


# ------------------------------------------------------------------------ equilibrium_status


def _fake_diag(angles_fn, steps=200, warm=50, every=5):
    lr_at = lambda s: 0.4 * min((s + 1) / warm, (steps - s - 1) / (steps - warm))  # noqa: E731
    logged = list(range(0, steps, every))
    lrs = [lr_at(s) for s in logged]
    pred = [theory.equilibrium_angular_update(lr, 5e-4, 0.9, nesterov=True) for lr in lrs]
    return {"layers": ["a", "b"], "steps": logged, "lr": lrs, "momentum": 0.9,
            "weight_decay": 5e-4, "nesterov": True, "warmup_steps": warm, "total_steps": steps,
            "angle": {n: [angles_fn(s, p) for s, p in zip(logged, pred, strict=True)]
                      for n in ("a", "b")}}


def test_status_splits_phases_and_flags_out_of_equilibrium():
    # exact in warm-up and the first decay third, 2× too large in the last
    diag = _fake_diag(lambda s, p: p * (2.0 if s >= 150 else 1.0))
    status = theory.equilibrium_status(diag, tol=0.1)
    assert [s.phase for s in status] == ["warm-up", "decay 1/3", "decay 2/3", "decay 3/3"]
    assert [(s.start_step, s.end_step) for s in status] == [(0, 50), (50, 100), (100, 150),
                                                            (150, 200)]
    assert [s.in_equilibrium for s in status] == [True, True, True, False]
    assert status[-1].median_ratio == pytest.approx(2.0)
    assert status[0].frac_within == 1.0 and status[0].per_layer == {"a": 1.0, "b": 1.0}
    text = theory.format_status(status, 0.1)
    assert "OUT decay 3/3" in text and "IN  warm-up" in text


def test_status_uses_given_hparams_and_skips_zero_lr():
    diag = _fake_diag(lambda s, p: p)
    # a 4× larger α doubles the prediction, so the measured/predicted ratio halves
    status = theory.equilibrium_status(diag, {"momentum": 0.9, "weight_decay": 2e-3}, tol=0.1)
    assert all(s.median_ratio == pytest.approx(0.5) for s in status)
    diag["lr"] = [0.0] * len(diag["lr"])
    assert all(math.isnan(s.median_ratio) and not s.in_equilibrium
               for s in theory.equilibrium_status(diag))


# ------------------------------------------------------------------------ exact symmetry


def _conv_bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6),
                         nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1, bias=False),
                         nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 10)).double()


def _convs(m):
    return [(f"{i}", m[i].weight) for i in (0, 3)]


def _sgd_losses(model, r, steps=6, lr=0.2, wd=5e-3):
    opt = torch.optim.SGD(symmetric_param_groups(model, wd, r, select=_convs), lr=0.0,
                          momentum=0.9, nesterov=True)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        x = torch.randn(16, 3, 8, 8, generator=g, dtype=torch.float64)
        y = torch.randint(0, 10, (16,), generator=g)
        for group in opt.param_groups:
            group["lr"] = lr * group["lr_scale"]
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("r", [3.0, 0.5])
def test_scale_symmetry_with_param_groups_is_exact_in_float64(one_thread, r):
    """w×r, λ×r², α/r² on the convs only, BN ε×r²: the same losses and the same function, to
    ~1e-10, with BN's default ε (not a vanishing one) and momentum."""
    base, scaled = _conv_bn_net(), _conv_bn_net()
    rescale_scale_invariant(scaled, r, select=_convs)
    assert scaled[1].eps == pytest.approx(1e-5 * r**2)
    lb, ls = _sgd_losses(base, 1.0), _sgd_losses(scaled, r)
    assert np.max(np.abs(np.subtract(lb, ls))) < 1e-10
    for i in (0, 3):
        torch.testing.assert_close(scaled[i].weight / r, base[i].weight, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(scaled[8].weight, base[8].weight, rtol=1e-10, atol=1e-12)
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    for net in (base, scaled):
        net.eval()  # eval uses running statistics, which were rescaled too
    torch.testing.assert_close(scaled(x), base(x), rtol=1e-9, atol=1e-10)


def test_scale_symmetry_with_power_of_two_is_bit_exact_and_eps_matters(one_thread):
    base, exact, fixed_eps = _conv_bn_net(), _conv_bn_net(), _conv_bn_net()
    rescale_scale_invariant(exact, 2.0, select=_convs)
    rescale_scale_invariant(fixed_eps, 2.0, scale_bn_eps=False, select=_convs)
    lb = _sgd_losses(base, 1.0)
    assert _sgd_losses(exact, 2.0) == lb  # scaling by 2 commutes with rounding
    diff = np.max(np.abs(np.subtract(_sgd_losses(fixed_eps, 2.0), lb)))
    assert 1e-12 < diff < 1e-3  # ε breaks the symmetry, by O(ε/Var)
