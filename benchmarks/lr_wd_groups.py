"""Why is the lr·wd ridge only partly flat at cpu-mini? Move along it by parameter group.

Theory experiment (b) (docs/theory.md) moved the whole net along λα = const: λ×4, α÷4 lost
1.3 pp at cpu-mini. The flatness argument only covers the scale-invariant weights (the convs
that feed a BatchNorm). This script applies lr×k, wd÷k to one group at a time, keeping the
other at the base point's lr, wd:

* ``convs``: only the BN-fed conv weights move (the theory says: no change in accuracy);
* ``rest``: only the BN affine parameters and the final linear layer move;
* ``all`` and ``none``: the whole net moved, and the base point, for the same seeds.

If ``convs`` matches the baseline and ``rest`` carries the loss, the partial flatness comes from
the parameters that are not scale-invariant, and the ridge would be flat at this scale with
their lr, wd held fixed. The same product is AdamW's flat direction (ηλ, docs/adamw.md), so
``--preset cpu-mini-adamw --k 0.25`` measures AdamW's ridge towards large λ, where the η×λ
slice loses accuracy. Results: benchmarks/results/lr_wd_groups.json (SGD, k = 4) and
benchmarks/results/adamw/lr_wd_groups.json (AdamW).

    RIDGELINE_DATA=../shared/data python benchmarks/lr_wd_groups.py [--seeds 0 1] \
        [--groups convs rest] [--preset cpu-mini-adamw --lr 5.66e-3 --weight-decay 0.25 --k 0.25]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
from pathlib import Path

import torch

from ridgeline.cifar.data import load_cifar10
from ridgeline.cifar.train import train
from ridgeline.presets import get_preset
from ridgeline.science.diagnostics import conv_weights
from ridgeline.science.param_groups import symmetric_param_groups
from ridgeline.versions import versions

RESULTS = Path(__file__).parent / "results"
GROUPS = ("convs", "rest", "all", "none")


def groups_for(moved: str, weight_decay: float, k: float):
    """The ``setup`` callable of train(): groups where ``moved`` gets lr×k and wd÷k (the
    symmetry experiment's groups at r = √k, without rescaling the weights; plain dicts with
    ``lr_scale``, so the same for SGD and AdamW). None for ``none``, the base point."""
    if moved == "none":
        return None

    def everything(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
        return list(model.named_parameters())

    def not_convs(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
        convs = {id(w) for _, w in conv_weights(model)}
        return [(n, p) for n, p in model.named_parameters() if id(p) not in convs]

    def setup(model: torch.nn.Module) -> list[dict]:
        select = {"convs": conv_weights, "rest": not_convs, "all": everything}[moved]
        return symmetric_param_groups(model, weight_decay, math.sqrt(k), select)

    return setup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--groups", nargs="+", default=["convs", "rest"], choices=GROUPS)
    parser.add_argument("--preset", default="cpu-mini")
    parser.add_argument("--lr", type=float, help="base lr (default: the preset's)")
    parser.add_argument("--weight-decay", type=float, help="base wd (default: the preset's)")
    parser.add_argument("--k", type=float, default=4.0, help="moved group: lr×k, wd÷k")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    preset = get_preset(args.preset)
    hp = preset.hparams.replace(lr=args.lr or preset.hparams.lr,
                                weight_decay=args.weight_decay or preset.hparams.weight_decay)
    out = args.out or (RESULTS / ("adamw" if hp.optimizer == "adamw" else "")
                       / "lr_wd_groups.json")
    old = json.loads(out.read_text()) if out.exists() else {}
    if old and (old["preset"], old["k"], old["hparams"]) != (preset.name, args.k, hp.to_dict()):
        raise SystemExit(f"{out} holds runs of another setting ({old['preset']}, k={old['k']}, "
                         f"{old['hparams']}); pass --out for a new file")
    data = load_cifar10()
    runs = old.get("runs", {})
    for moved in args.groups:
        for seed in args.seeds:
            key = f"{moved}|{seed}"
            if key in runs:  # resumable: a finished run is kept, never repeated
                continue
            r = train(hp, preset, seed=seed, data=data,
                      setup=groups_for(moved, hp.weight_decay, args.k))
            runs[key] = {"moved": moved, "seed": seed, "test_acc": r.test_acc,
                         "diverged": r.diverged, "wall_time": r.wall_time}
            print(f"{moved} lr×{args.k:g} wd÷{args.k:g}, seed {seed}: "
                  f"{100 * (r.test_acc or 0):.2f}%", flush=True)
            out.write_text(json.dumps({
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds"),
                "preset": preset.name, "k": args.k, "hparams": hp.to_dict(),
                "versions": versions(), "torch_threads": torch.get_num_threads(),
                "runs": runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
