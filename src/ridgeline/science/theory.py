"""The paper's flat directions as formulas, and a check of where a run matches them.

Page ("How to train your ResNet 5: Hyperparameters", 2018) explains the flat directions of the
(λ, ρ, α) landscape by two facts about a BatchNorm ResNet: (1) with momentum ρ a gradient's total
contribution to the weights is λ/(1−ρ); (2) the loss is invariant to the scale of every weight
that feeds a BatchNorm, so weight decay only sets ‖w‖, and ‖w‖ settles where the *angular*
step per update depends on λα alone. Wan et al. (2021, arXiv:2006.08419, "Spherical Motion
Dynamics") and Kosson et al. (2024, arXiv:2305.17212, "Rotational Equilibrium") derive that
equilibrium for heavy-ball SGD with momentum. The derivations below (and in docs/theory.md) are
ours where marked; they assume the per-step gradients of a scale-invariant layer are mostly
noise, i.e. uncorrelated between steps, which is what makes momentum's bookkeeping simple.

Notation: λ learning rate, ρ momentum, α coupled L2 weight decay (torch SGD ``weight_decay``).

AdamW (issue #18) has formulas of its own, below the SGD ones, in its usual notation: η the
learning rate, λ the *decoupled* weight decay in torch's convention (w ← w·(1 − ηλ) before
Adam's step, so the decay per step is ηλ), β₁ the first-moment decay. Its flat direction is
ηλ, not η; measured on ResNet-9 in docs/adamw.md (it places the optimum where decay
equilibrates within the run, and only the scale-invariant convs are flat along it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ridgeline.errors import RidgelineError


def total_lr(lr: float, momentum: float) -> float:
    """λ/(1−ρ): a gradient's total contribution to the weights once momentum has spent it.

    Source: Page part 5, where this is the reason λ and ρ trade off along λ/(1−ρ).
    The momentum buffer feeds a gradient back with weights 1, ρ, ρ², … which sum to 1/(1−ρ);
    for Nesterov the weights are (1+ρ), ρ², ρ³, … with the same sum.
    """
    return lr / (1.0 - momentum)


def momentum_noise_factor(momentum: float, nesterov: bool = False) -> float:
    """(1−ρ)·Σₖhₖ² for the momentum filter h: how much of a *random* gradient's step is taken
    per update, relative to all of it at once. Heavy ball: 1/(1+ρ); Nesterov: (1+2ρ−2ρ³)/(1+ρ).

    Derivation (ours): a gradient g ⊥ w, uncorrelated with earlier ones, eventually moves w by
    λ/(1−ρ)·g, so it grows ‖w‖² by (λ‖g‖/(1−ρ))² whatever the filter; but the step taken in one
    update is λ·Σₖhₖgₜ₋ₖ, of squared size λ²‖g‖²Σₖhₖ². Heavy ball has hₖ = ρᵏ (Σh² = 1/(1−ρ²));
    torch's Nesterov has h₀ = 1+ρ, hₖ = ρᵏ⁺¹ (Σh² = (1+ρ)² + ρ⁴/(1−ρ²)). At ρ=0.9 the Nesterov
    factor is 1.342× the heavy-ball one, so its equilibrium angle is 1.158× larger.
    """
    rho = momentum
    if nesterov and rho > 0:
        return (1 + 2 * rho - 2 * rho**3) / (1 + rho)
    return 1.0 / (1 + rho)


def equilibrium_angular_update(lr: float, weight_decay: float, momentum: float,
                               nesterov: bool = False) -> float:
    """Angle (radians) between wₜ and wₜ₊₁ per step at equilibrium: √(2λα/(1+ρ)) (heavy ball).

    Source: Wan et al. 2021 (arXiv:2006.08419), the limit of the angular update under SGD with
    momentum and weight decay; Kosson et al. 2024 (arXiv:2305.17212), their analysis of SGD
    with momentum. Both are for heavy-ball momentum. ``nesterov=True`` applies our
    correction factor √(1+2ρ−2ρ³) (see ``momentum_noise_factor``), which ridgeline's training needs
    because train.make_optimizer uses torch's Nesterov SGD.

    Why: weight decay shrinks ‖w‖² by 2λα/(1−ρ)·‖w‖² per step while gradient noise grows it by
    λ²‖g‖²/(1−ρ)²; the balance fixes λ‖g‖/‖w‖, and with it the angle, in terms of λα only.
    """
    return math.sqrt(2 * lr * weight_decay * momentum_noise_factor(momentum, nesterov))


def equilibrium_norm(lr: float, weight_decay: float, momentum: float, grad_scale: float) -> float:
    """‖w‖ at equilibrium: (λG²/(2α(1−ρ)))^¼, with G = ‖∇L(w)‖·‖w‖ the gradient's scale-free
    size (for scale-invariant w the gradient norm scales as 1/‖w‖, so G does not depend on ‖w‖).

    Derivation (ours, consistent with Wan et al. 2021): set the growth λ²G²/((1−ρ)²‖w‖²) equal
    to the decay 2λα‖w‖²/(1−ρ). It holds for heavy ball and Nesterov alike.
    """
    if weight_decay == 0:
        return math.inf  # nothing opposes the growth: ‖w‖ grows as t^¼ forever
    return (lr * grad_scale**2 / (2 * weight_decay * (1 - momentum))) ** 0.25


def equilibrium_norm_ratio(base: tuple[float, float, float], other: tuple[float, float, float]
                           ) -> float:
    """‖w‖_other / ‖w‖_base for (λ, α, ρ) settings with the same gradient statistics:
    ((λ'/(α'(1−ρ')))/(λ/(α(1−ρ))))^¼. E.g. λ×4 alone gives √2; λ×4 with α÷4 gives 2.

    Source: follows from ``equilibrium_norm``; the λ/α dependence is in Wan et al. 2021.
    """
    (lr0, wd0, rho0), (lr1, wd1, rho1) = base, other
    return ((lr1 / (wd1 * (1 - rho1))) / (lr0 / (wd0 * (1 - rho0)))) ** 0.25


EQUILIBRATION_QUANTITIES = ("relaxation", "norm_sq_decay", "norm_decay")


def equilibration_steps(lr: float, weight_decay: float, momentum: float,
                        quantity: str = "relaxation") -> float:
    """Time constant (steps) of the approach to equilibrium; which one depends on ``quantity``.

    With effective decay rate a = 2λα/(1−ρ) per step (decay passes the momentum filter at its DC
    gain 1/(1−ρ)), ‖w‖² obeys d‖w‖²/dt = −a‖w‖² + b/‖w‖², so ‖w‖⁴ relaxes *exactly*
    exponentially at rate 2a (derivation ours; Wan et al. 2021 prove linear-rate convergence).

    - "relaxation": (1−ρ)/(4λα), the e-folding time of ‖w‖⁴ − ‖w*‖⁴, and of small deviations of
      ‖w‖ (or of the angular update) from equilibrium. 250 steps at λ=0.2, α=5e-4, ρ=0.9.
    - "norm_sq_decay": (1−ρ)/(2λα), the e-folding time of ‖w‖² under weight decay alone (the
      regime ‖w‖ ≫ ‖w*‖, where gradients are negligible). This is the figure in presets.py.
    - "norm_decay": (1−ρ)/(λα), the same for ‖w‖ itself; the "~1/(λα)" of the folklore, times
      (1−ρ) because momentum amplifies the decay term too.
    """
    base = (1 - momentum) / (lr * weight_decay) if lr * weight_decay > 0 else math.inf
    factors = {"relaxation": 0.25, "norm_sq_decay": 0.5, "norm_decay": 1.0}
    if quantity not in factors:
        raise RidgelineError(f"unknown quantity {quantity!r}: use one of "
                             f"{', '.join(EQUILIBRATION_QUANTITIES)}")
    return base * factors[quantity]


def effective_lr(lr: float, norm: float, momentum: float | None = None) -> float:
    """λ/‖w‖² (or λ/((1−ρ)‖w‖²) with ``momentum``): the step size that matters for a
    scale-invariant weight, since its gradient scales as 1/‖w‖ and its angle as step/‖w‖.

    Source: van Laarhoven 2017 (arXiv:1706.05350); Page part 5 for the 1/(1−ρ) factor.
    """
    eff = lr / norm**2
    return eff if momentum is None else eff / (1 - momentum)


def scale_symmetry(lr: float, weight_decay: float, r: float) -> tuple[float, float]:
    """(λr², α/r²): with w→rw on scale-invariant weights, training is exactly the same map.

    Why: ∇L(rw) = ∇L(w)/r, so λr²(∇L(w)/r + (α/r²)·rw) = r·λ(∇L(w) + αw), and the momentum
    buffer is 1/r of the original; every iterate is r× the original. Page part 5. Exact only if
    BatchNorm's ε is scaled by r² too (BN(rx; r²ε) = BN(x; ε)); with fixed ε the error is
    O(ε/Var) relative.
    """
    return lr * r**2, weight_decay / r**2


# --------------------------------------------------------------------------------------------
# AdamW: decoupled weight decay, torch's convention w ← w·(1 − ηλ) − η·m̂/(√v̂ + ε).


def adamw_equilibrium_angular_update(lr: float, weight_decay: float, beta1: float = 0.9
                                     ) -> float:
    """Angle (radians) between wₜ and wₜ₊₁ per step at equilibrium, for a scale-invariant
    weight under AdamW: √(2ηλ(1−β₁)/(1+β₁)). It depends on η and λ only through ηλ.

    Source: Kosson, Messmer & Jaggi, "Rotational Equilibrium: How Weight Decay Balances
    Learning Across Neural Networks", ICML 2024 (arXiv:2305.17212), their AdamW result, with
    λ in torch's convention (per-step decay ηλ), as in ``torch.optim.AdamW``.

    Why (their argument, in this module's terms): Adam normalises each coordinate, so a
    gradient's *total* contribution η·g/√v̂ has unit size per coordinate and grows ‖w‖² by
    ηC per step at random (C = numel), while the decay shrinks it by 2ηλ‖w‖²: ‖w‖² = ηC/(2λ)
    (``adamw_equilibrium_norm``). One step takes only part of that contribution, the EMA
    m = β₁m + (1−β₁)g having (1−β₁)²Σβ₁²ᵏ = (1−β₁)/(1+β₁), hence the angle above.
    Assumes gradients dominated by noise, v̂ tracking E[g²] and ε negligible; like SGD's, it
    is quasi-static: it lags when ηₜ changes faster than 1/(ηλ) (warm-up, the end of decay).
    """
    return math.sqrt(2 * lr * weight_decay * (1 - beta1) / (1 + beta1))


def adamw_equilibrium_norm(lr: float, weight_decay: float, numel: int) -> float:
    """‖w‖ at AdamW's equilibrium: √(ηC/(2λ)), C the weight's number of elements; so ‖w‖
    scales as √(η/λ) and, unlike the angle, is not a function of ηλ.

    Source: Kosson et al. 2024 (arXiv:2305.17212), AdamW's equilibrium norm; the balance of
    growth ηC and decay 2ηλ‖w‖² per step (see ``adamw_equilibrium_angular_update``).
    """
    if weight_decay == 0:
        return math.inf
    return math.sqrt(lr * numel / (2 * weight_decay))


def adamw_ema_timescale(lr: float, weight_decay: float,
                        steps_per_epoch: float | None = None) -> float:
    """AdamW's EMA time scale 1/(ηλ) in steps (in epochs with ``steps_per_epoch``: τ_epoch =
    1/(ηλM)): AdamW's weights are an exponential moving average of recent updates with this
    time scale, which is what transfers across model and data size.

    Source: Wang & Aitchison, "How to set AdamW's weight decay as you scale model and dataset
    size", ICML 2025 (arXiv:2405.13698): τ_iter = 1/(ηλ), τ_epoch = τ_iter/M, with the optimal
    τ_epoch roughly constant and between about one epoch and the whole run. It is also, to a
    constant, the time AdamW takes to reach the equilibrium above (Kosson et al. 2024).
    """
    tau = 1 / (lr * weight_decay) if lr * weight_decay > 0 else math.inf
    return tau if steps_per_epoch is None else tau / steps_per_epoch


# --------------------------------------------------------------------------------------------
# Where is a run in equilibrium?


@dataclass
class PhaseStatus:
    """Measured / predicted angular update over one phase of the schedule."""

    phase: str
    start_step: int
    end_step: int  # exclusive
    n_points: int  # (layer, logged step) pairs with a nonzero prediction
    median_ratio: float  # median over those pairs of measured/predicted (nan if none)
    frac_within: float  # share of pairs within tol of the prediction
    in_equilibrium: bool  # |median_ratio − 1| <= tol
    per_layer: dict[str, float] = field(default_factory=dict)  # median ratio per layer


def predicted_angles(diag: dict, nesterov: bool | None = None) -> np.ndarray:
    """Quasi-static prediction at each logged step, with λₜ (ηₜ) the current lr: √(2λₜα·f(ρ))
    for SGD; for an AdamW record (``optimizer`` "adamw") √(2ηₜλ(1−β₁)/(1+β₁))."""
    lrs = np.asarray(diag["lr"], dtype=float)
    if diag.get("optimizer") == "adamw":
        beta1 = diag["beta1"]
        return np.sqrt(2 * lrs * diag["weight_decay"] * (1 - beta1) / (1 + beta1))
    nest = diag.get("nesterov", False) if nesterov is None else nesterov
    factor = momentum_noise_factor(diag["momentum"], nest)
    return np.sqrt(2 * lrs * diag["weight_decay"] * factor)


def angle_ratios(diag: dict, nesterov: bool | None = None) -> np.ndarray:
    """[layer, logged step] measured/predicted angle; nan where the prediction is 0 (λₜ = 0)."""
    pred = predicted_angles(diag, nesterov)
    meas = np.array([diag["angle"][name] for name in diag["layers"]], dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(pred > 0, meas / pred, np.nan)


def phases(diag: dict, n_decay: int = 3) -> list[tuple[str, int, int]]:
    """Warm-up, then the decay split into ``n_decay`` equal parts (equilibrium is lost late in
    the decay, when λₜ, and with it 1/τ, goes to 0 faster than ‖w‖ can follow)."""
    warm, total = int(round(diag["warmup_steps"])), int(diag["total_steps"])
    out = [("warm-up", 0, warm)] if warm > 0 else []
    edges = np.linspace(warm, total, n_decay + 1).round().astype(int)
    for i in range(n_decay):
        label = "decay" if n_decay == 1 else f"decay {i + 1}/{n_decay}"
        out.append((label, int(edges[i]), int(edges[i + 1])))
    return out


def equilibrium_status(diag: dict, hparams=None, tol: float = 0.1, nesterov: bool | None = None,
                       n_decay: int = 3) -> list[PhaseStatus]:
    """Per phase, whether the measured angular update matches the quasi-static prediction.

    ``diag`` is a WeightNormHook result (RunResult.extras["weight_norms"]). ``hparams`` (an
    HParams or its dict) overrides the momentum and weight decay it recorded. A phase is "in
    equilibrium" when the median measured/predicted ratio is within ``tol`` of 1; the median
    over layers and steps keeps single noisy angles from deciding.
    """
    if hparams is not None:
        hp = hparams if isinstance(hparams, dict) else hparams.to_dict()
        diag = {**diag, "momentum": hp["momentum"], "weight_decay": hp["weight_decay"]}
    ratios = angle_ratios(diag, nesterov)
    steps = np.asarray(diag["steps"])
    return [_phase_status(name, a, b, ratios[:, (steps >= a) & (steps < b)], diag["layers"], tol)
            for name, a, b in phases(diag, n_decay)]


def _phase_status(name, start, end, r: np.ndarray, layers, tol) -> PhaseStatus:
    ok = np.isfinite(r)
    n = int(ok.sum())
    med = float(np.median(r[ok])) if n else math.nan
    per_layer = {lay: float(np.nanmedian(row)) if np.isfinite(row).any() else math.nan
                 for lay, row in zip(layers, r, strict=True)}
    within = float((np.abs(r[ok] - 1) <= tol).mean()) if n else math.nan
    return PhaseStatus(name, start, end, n, med, within, bool(n and abs(med - 1) <= tol),
                       per_layer)


def format_status(status: list[PhaseStatus], tol: float) -> str:
    """One line per phase, for ``ridgeline diagnose``."""
    lines = [f"angular update vs equilibrium prediction (in = median ratio within ±{tol:.0%})"]
    for s in status:
        verdict = "IN " if s.in_equilibrium else "OUT"
        worst = max(s.per_layer.items(), key=lambda kv: abs(kv[1] - 1)
                    if math.isfinite(kv[1]) else -1, default=("-", math.nan))
        lines.append(f"  {verdict} {s.phase:<11} steps {s.start_step:>6}-{s.end_step:<6} "
                     f"median ratio {s.median_ratio:6.3f}  within tol {s.frac_within:6.1%}  "
                     f"worst layer {worst[0]} ({worst[1]:.3f})")
    return "\n".join(lines)
