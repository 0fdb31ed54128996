"""Opt-in instrumentation of the weight norms and angular updates that the theory is about.

``WeightNormHook`` is a train.TrainHook: every ``every`` steps it snapshots each scale-invariant
conv weight before the optimiser step and compares after it, so ‖w‖, the angle ∠(wₜ, wₜ₊₁) and
the effective learning rates can be checked against ridgeline.science.theory. On the other steps it
returns at once, and on logged steps it keeps the numbers on the device (no host sync), so the
overhead stays far below the 5% budget (measured in benchmarks/theory_experiments.py).

Its record is read and reported by science.diagnose, drawn by science.diagnostics_plot; the
parameter groups of the scale symmetry are in science.param_groups.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ridgeline.cifar.model import scale_invariant_convs
from ridgeline.errors import RidgelineError
from ridgeline.science.diagnose import HOOK_NAME

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
        self._lr_scale = float(group.get("lr_scale", 1.0))  # param_groups.symmetric_param_groups
        adamw = "betas" in group  # AdamW: its prediction is theory's AdamW branch
        self._meta = {
            "optimizer": "adamw" if adamw else "sgd",
            **({"beta1": float(group["betas"][0])} if adamw else {}),
            "momentum": float(group.get("momentum", 0.0 if adamw else hparams.momentum)),
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
