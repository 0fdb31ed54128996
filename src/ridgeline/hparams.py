"""The hyperparameters of one training run, validated, with the paper's derived coordinates.

Convention (fixed across ridgeline): the loss is the *mean* over the batch, ``lr`` is the peak
learning rate λ in that convention, and ``weight_decay`` α is coupled L2 decay as in
``torch.optim.SGD(weight_decay=α)``. Page's original code summed the loss and used lr λ/N with
weight decay α·N; the gradient of the sum is N× the mean's, so the update
``(λ/N)·(N·g + α·N·w) = λ·(g + α·w)`` is identical (tested in tests/test_train.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from ridgeline.errors import HParamError


@dataclass(frozen=True)
class HParams:
    lr: float = 0.4  # λ, peak learning rate
    momentum: float = 0.9  # ρ, Nesterov momentum
    weight_decay: float = 5e-4  # α, coupled L2
    batch_size: int = 512  # N
    epochs: int = 24
    warmup_epochs: float = 5.0  # linear 0 → λ over these epochs, then linear λ → 0

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

    def replace(self, **changes) -> HParams:
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)

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
        return {
            "lr/batch_size": self.lr_over_batch,
            "lr/(1-momentum)": self.lr_total,
            "lr*weight_decay": self.lr_wd,
            "lr*weight_decay/(1-momentum)": self.lr_wd_total,
        }


def _check(ok: bool, name: str, value, allowed: str) -> None:
    if not ok:
        raise HParamError(f"{name}={value!r} is not allowed: it must be {allowed}")
