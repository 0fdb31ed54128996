"""The exact scale symmetry of training, for experiments that train with per-group lr/wd
multipliers: rescale the scale-invariant weights, and give them the partner's λ and α.

Experiment (a) (science.experiments) trains these partners; docs/theory.md says why the
symmetry is exact.
"""

from __future__ import annotations

import torch
from torch import nn

from ridgeline.science.diagnostics import Selector, conv_weights


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
