"""The hyperparameters of one training run, validated, with the paper's derived coordinates.

Convention (fixed across ridgeline): the loss is the *mean* over the batch, ``lr`` is the peak
learning rate λ in that convention, and ``weight_decay`` α is coupled L2 decay as in
``torch.optim.SGD(weight_decay=α)``. Page's original code summed the loss and used lr λ/N with
weight decay α·N; the gradient of the sum is N× the mean's, so the update
``(λ/N)·(N·g + α·N·w) = λ·(g + α·w)`` is identical (tested in tests/test_train.py).

``optimizer="adamw"`` (issue #18) trains with ``torch.optim.AdamW`` instead: ``beta1`` β₁ and
``beta2`` β₂ are its moment decays, ``momentum`` is *not used* (β₁ plays its part), the lr
schedule is still Page's, and ``weight_decay`` is AdamW's *decoupled* λ in torch's convention:
each step multiplies w by (1 − ηₜ·λ), ηₜ the scheduled lr, so the decay per step is ηλ and not
λ alone (Loshchilov & Hutter's paper writes it unscaled; torch scales it by the lr).

For ``optimizer="sgd"`` (the default), ``to_dict`` leaves out the AdamW fields at their defaults,
so an SGD point's dict, and the sweep-point keys made from it (runs.ledger.point_key), are what
they were before AdamW existed; an AdamW point's dict names the optimizer and both betas.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

from ridgeline.errors import HParamError


@dataclass(frozen=True)
class HParams:
    lr: float = 0.4  # λ, peak learning rate
    momentum: float = 0.9  # ρ, Nesterov momentum (sgd only: adamw does not use it)
    weight_decay: float = 5e-4  # α, coupled L2
    batch_size: int = 512  # N
    epochs: int = 24
    warmup_epochs: float = 5.0  # linear 0 → λ over these epochs, then linear λ → 0
    # New fields go last, so an SGD point's dict keeps its order (see the module docstring).
    optimizer: str = "sgd"  # "sgd" (Page's Nesterov SGD) or "adamw" (torch.optim.AdamW)
    beta1: float = 0.9  # β₁, AdamW's first-moment decay (its momentum); unused by sgd
    beta2: float = 0.999  # β₂, AdamW's second-moment decay; unused by sgd

    def __post_init__(self) -> None:
        _check(self.lr > 0 and math.isfinite(self.lr), "lr", self.lr, "a finite number > 0")
        _check(0 <= self.momentum < 1, "momentum", self.momentum, "in [0, 1)")
        _check(
            self.weight_decay >= 0 and math.isfinite(self.weight_decay),
            "weight_decay", self.weight_decay, "a finite number >= 0",
        )
        _check(
            isinstance(self.batch_size, int) and self.batch_size >= 1,
            "batch_size", self.batch_size, "an integer >= 1",
        )
        _check(
            isinstance(self.epochs, int) and self.epochs >= 1,
            "epochs", self.epochs, "an integer >= 1",
        )
        _check(
            0 <= self.warmup_epochs <= self.epochs,
            "warmup_epochs", self.warmup_epochs, f"in [0, epochs={self.epochs}]",
        )
        _check(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer,
               f"one of {', '.join(OPTIMIZERS)}")
        _check(0 <= self.beta1 < 1, "beta1", self.beta1, "in [0, 1)")
        _check(0 <= self.beta2 < 1, "beta2", self.beta2, "in [0, 1)")

    def replace(self, **changes) -> HParams:
        return replace(self, **changes)

    def to_dict(self) -> dict:
        """The fields as a dict; for sgd without the AdamW fields that are at their defaults
        (so SGD points keep their pre-AdamW identity), for adamw with all of them."""
        d = asdict(self)
        if self.optimizer == "sgd":
            for k in ADAMW_FIELDS:
                if d[k] == _DEFAULTS[k]:
                    del d[k]
        return d

    # Derived coordinates: the directions along which the paper's landscapes are flat.
    @property
    def lr_over_batch(self) -> float:  # λ/N
        return self.lr / self.batch_size

    @property
    def lr_total(self) -> float:  # λ/(1−ρ): a gradient's total contribution with momentum
        return self.lr / (1 - self.momentum)

    @property
    def lr_wd(self) -> float:  # λα: sets the equilibrium effective step
        return self.lr * self.weight_decay

    @property
    def lr_wd_total(self) -> float:  # λα/(1−ρ): the tuner's first coordinate
        return self.lr * self.weight_decay / (1 - self.momentum)

    def derived(self) -> dict[str, float]:
        """The derived coordinates recorded with a run. AdamW's flat direction is ηλ alone
        (science.theory.adamw_equilibrium_angular_update); ρ is not used, so the ρ ones are
        left out for it."""
        if self.optimizer == "adamw":
            return {"lr/batch_size": self.lr_over_batch, "lr*weight_decay": self.lr_wd}
        return {
            "lr/batch_size": self.lr_over_batch,
            "lr/(1-momentum)": self.lr_total,
            "lr*weight_decay": self.lr_wd,
            "lr*weight_decay/(1-momentum)": self.lr_wd_total,
        }


OPTIMIZERS = ("sgd", "adamw")
ADAMW_FIELDS = ("optimizer", "beta1", "beta2")  # left out of an SGD point's dict at defaults
_DEFAULTS = {f.name: f.default for f in fields(HParams)}


def _check(ok: bool, name: str, value, allowed: str) -> None:
    if not ok:
        raise HParamError(f"{name}={value!r} is not allowed: it must be {allowed}")
