"""Opt-in instrumentation of the weight norms and angular updates that the theory is about.

``WeightNormHook`` is a train.TrainHook: every ``every`` steps it snapshots each scale-invariant
conv weight before the optimiser step and compares after it, so ‖w‖, the angle ∠(wₜ, wₜ₊₁) and
the effective learning rates can be checked against ridgeline.science.theory. On the other steps it
returns at once, and on logged steps it keeps the numbers on the device (no host sync), so the
overhead stays far below the 5% budget (measured in benchmarks/theory_experiments.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ridgeline.cifar.model import scale_invariant_convs
from ridgeline.errors import RidgelineError

HOOK_NAME = "weight_norms"

Selector = Callable[[nn.Module], list[tuple[str, torch.Tensor]]]


def conv_weights(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The weights of the convs that feed BatchNorm: the ones whose ‖w‖ the loss ignores."""
    return [(name, conv.weight) for name, conv in scale_invariant_convs(model)]


def angle_between(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """∠(a, b) in radians, as 2·atan2(‖â−b̂‖, ‖â+b̂‖): unlike acos of the cosine it stays
    accurate for the ~1e-3 rad angles of one step, where cos ≈ 1 − θ²/2 loses the digits."""
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a / a.norm(), b / b.norm()
    return 2 * torch.atan2((a - b).norm(), (a + b).norm())


class WeightNormHook:
    """Logs, every ``every`` steps and per scale-invariant layer: ‖wₜ‖ (before the step), the
    angle ∠(wₜ, wₜ₊₁), λₜ/‖wₜ‖² and λₜ/((1−ρ)‖wₜ‖²). ``select`` picks other weights (tests use
    toy models); by default it is every conv of a ResNet9."""

    name = HOOK_NAME

    def __init__(self, every: int = 10, select: Selector = conv_weights):
        if every < 1:
            raise RidgelineError(f"every={every!r} is not allowed: log every >= 1 steps")
        self.every = every
        self.select = select
        self._weights: list[tuple[str, torch.Tensor]] = []
        self._snap: list[torch.Tensor] | None = None
        self._rows: list[torch.Tensor] = []
        self._steps: list[int] = []
        self._lrs: list[float] = []
        self._meta: dict = {}
        self._lr_scale = 1.0

    def on_train_start(self, model, optimizer, hparams, total_steps: int) -> None:
        self._weights = self.select(model)
        self._snap, self._rows, self._steps, self._lrs = None, [], [], []
        group = _group_of(optimizer, self._weights[0][1]) if self._weights else {}
        self._lr_scale = float(group.get("lr_scale", 1.0))  # see symmetric_param_groups
        self._meta = {
            "momentum": float(group.get("momentum", hparams.momentum)),
            "weight_decay": float(group.get("weight_decay", hparams.weight_decay)),
            "nesterov": bool(group.get("nesterov", False)),
            "peak_lr": float(hparams.lr) * self._lr_scale,
            "total_steps": int(total_steps),
            "warmup_steps": hparams.warmup_epochs * total_steps / hparams.epochs,
        }

    def before_step(self, step: int, model, lr: float) -> None:
        if step % self.every:
            return
        self._snap = [w.detach().clone() for _, w in self._weights]

    @torch.no_grad()
    def after_step(self, step: int, model, lr: float, loss=None) -> None:
        if self._snap is None:
            return
        olds, self._snap = self._snap, None
        norms = torch.stack([o.double().norm() for o in olds])
        angles = torch.stack([angle_between(o, w) for o, (_, w) in zip(olds, self._weights,
                                                                         strict=True)])
        self._rows.append(torch.stack([norms, angles]))  # stays on the device: no sync
        self._steps.append(step)
        self._lrs.append(lr * self._lr_scale)

    def result(self) -> dict:
        names = [n for n, _ in self._weights]
        rows = torch.stack(self._rows).cpu() if self._rows else torch.zeros(0, 2, len(names))
        rho, lrs = self._meta.get("momentum", 0.0), torch.tensor(self._lrs, dtype=torch.float64)
        norm, angle = rows[:, 0, :], rows[:, 1, :]
        eff = lrs[:, None] / norm**2 if len(lrs) else norm

        def per_layer(t: torch.Tensor) -> dict[str, list[float]]:
            return {n: t[:, i].tolist() for i, n in enumerate(names)}

        return {"every": self.every, "layers": names,
                "numel": {n: w.numel() for n, w in self._weights},
                "steps": list(self._steps), "lr": list(self._lrs), **self._meta,
                "norm": per_layer(norm), "angle": per_layer(angle),
                "eff_lr": per_layer(eff), "eff_lr_total": per_layer(eff / (1 - rho))}


def _group_of(optimizer, weight: torch.Tensor) -> dict:
    """The optimiser's parameter group holding ``weight``: its lr, momentum and decay apply."""
    for group in optimizer.param_groups:
        if any(p is weight for p in group["params"]):
            return group
    return optimizer.param_groups[0]


def diagnostics_of(run: dict) -> dict:
    """The hook's record from a RunResult dict, or a clear error if the run was not hooked."""
    diag = run.get("extras", {}).get(HOOK_NAME)
    if not diag:
        raise RidgelineError(f"the run has no extras[{HOOK_NAME!r}]: produce it with "
                             "`ridgeline diagnose --out run.json` (train with WeightNormHook)")
    return diag


def load_diagnostics(path: str | Path) -> dict:
    """Read a saved RunResult JSON (``ridgeline diagnose --out``) back to its hook record."""
    try:
        run = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RidgelineError(f"no such file {str(path)!r}: pass a RunResult JSON") from None
    except json.JSONDecodeError as e:
        raise RidgelineError(f"{str(path)!r} is not JSON ({e.msg}): pass a RunResult JSON"
                             ) from None
    return diagnostics_of(run)


def plot_diagnostics(diag: dict, path: str | Path, tol: float = 0.1) -> Path:
    """PNG: angular update per layer against the quasi-static prediction along the schedule,
    their ratio with the ±tol band, and the ‖w‖ trajectories per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ridgeline.science import theory

    steps, layers = diag["steps"], diag["layers"]
    ratios = theory.angle_ratios(diag)
    fig, axes = plt.subplots(3, 1, figsize=(8, 10), sharex=True)
    for i, name in enumerate(layers):
        axes[0].plot(steps, diag["angle"][name], lw=0.8, label=name)
        axes[1].plot(steps, ratios[i], lw=0.8)
        axes[2].plot(steps, diag["norm"][name], lw=1.0)
    axes[0].plot(steps, theory.predicted_angles(diag), "k--", lw=2,
                 label="√(2λₜα·f(ρ))" + (" (Nesterov)" if diag.get("nesterov") else ""))
    if diag.get("nesterov"):
        axes[0].plot(steps, theory.predicted_angles(diag, nesterov=False), "k:", lw=1.5,
                     label="√(2λₜα/(1+ρ)) (heavy ball)")
    axes[1].axhspan(1 - tol, 1 + tol, color="0.85")
    axes[1].axhline(1, color="k", lw=1)
    _label(axes, diag, tol)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _label(axes, diag: dict, tol: float) -> None:
    axes[0].set(ylabel="angle ∠(wₜ, wₜ₊₁) [rad]", yscale="log",
                title=f"λ={diag['peak_lr']:g}, α={diag['weight_decay']:g}, "
                      f"ρ={diag['momentum']:g}, logged every {diag['every']} steps")
    axes[0].legend(fontsize=7, ncol=2)
    axes[1].set(ylabel="measured / predicted", ylim=(0, 2.5))
    axes[1].text(0.01, 0.92, f"±{tol:.0%}", transform=axes[1].transAxes, fontsize=8)
    axes[2].set(ylabel="‖w‖ per layer", yscale="log", xlabel="step")
    for ax in axes:
        ax.axvline(diag["warmup_steps"], color="0.5", ls=":", lw=1)


# --------------------------------------------------------------------------------------------
# The exact scale symmetry, for experiments that train with per-group lr/wd multipliers.


@torch.no_grad()
def rescale_scale_invariant(model: nn.Module, r: float, scale_bn_eps: bool = True,
                            select: Selector = conv_weights) -> None:
    """w → r·w for the selected (scale-invariant) weights, in place. With ``scale_bn_eps``
    every BatchNorm's ε and running variance are multiplied by r² too, because BN(r·x; r²ε)
    equals BN(x; ε) exactly; this assumes every BatchNorm follows a selected weight (true for
    ResNet9). Without it the symmetry is broken at O(ε/Var) relative."""
    for _, w in select(model):
        w.mul_(r)
    if scale_bn_eps:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eps *= r**2
                if m.running_var is not None:
                    m.running_var.mul_(r**2)


def symmetric_param_groups(model: nn.Module, weight_decay: float, r: float,
                           select: Selector = conv_weights) -> list[dict]:
    """SGD parameter groups for the symmetry partner of a run rescaled by r: the selected
    weights get lr×r² (as ``lr_scale``, applied to the schedule each step) and α/r²; every
    other parameter (BN affine, the linear layer) keeps λ and α, since it is not
    scale-invariant."""
    chosen = [w for _, w in select(model)]
    ids = {id(w) for w in chosen}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return [{"params": chosen, "lr": 0.0, "lr_scale": r**2, "weight_decay": weight_decay / r**2},
            {"params": rest, "lr": 0.0, "lr_scale": 1.0, "weight_decay": weight_decay}]


def report(diag: dict, plot_path: str | Path, tol: float = 0.1) -> str:
    """What ``ridgeline diagnose`` prints: the predictions, the per-phase verdicts, the figure."""
    from ridgeline.science import theory

    if not diag["steps"]:
        raise RidgelineError("the log is empty: train for at least one step with --every "
                             "smaller than the run")
    lr, wd, rho = diag["peak_lr"], diag["weight_decay"], diag["momentum"]
    nest = diag.get("nesterov", False)
    lines = [
        f"peak λ={lr:g}, α={wd:g}, ρ={rho:g} ({'Nesterov' if nest else 'heavy ball'}); "
        f"{len(diag['layers'])} scale-invariant layers, logged every {diag['every']} steps",
        f"equilibrium angle at peak λ: {theory.equilibrium_angular_update(lr, wd, rho, nest):.4g}"
        f" rad (heavy-ball √(2λα/(1+ρ)) = {theory.equilibrium_angular_update(lr, wd, rho):.4g})",
        f"relaxation time (1−ρ)/(4λα) at peak λ: "
        f"{theory.equilibration_steps(lr, wd, rho):.0f} steps of {diag['total_steps']}",
        theory.format_status(theory.equilibrium_status(diag, tol=tol), tol),
        f"figure: {plot_diagnostics(diag, plot_path, tol)}",
    ]
    return "\n".join(lines)
