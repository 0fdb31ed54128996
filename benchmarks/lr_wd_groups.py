"""Why is the λα ridge only partly flat at cpu-mini? Split λ×4, α÷4 by parameter group.

Theory experiment (b) (docs/theory.md) moved the whole net along λα = const: λ×4, α÷4 lost
1.3 pp at cpu-mini. The flatness argument only covers the scale-invariant weights (the convs
that feed a BatchNorm). This script applies λ×4, α÷4 to one group at a time, keeping the other
at the preset's λ, α:

* ``convs``: only the BN-fed conv weights move (the theory says: no change in accuracy);
* ``rest``: only the BN affine parameters and the final linear layer move.

If ``convs`` matches the baseline and ``rest`` carries the loss, the partial flatness comes from
the parameters that are not scale-invariant, and the λα ridge would be flat at this scale with
their λ, α held fixed. Results: benchmarks/results/lr_wd_groups.json.

    RIDGELINE_DATA=../shared/data python benchmarks/lr_wd_groups.py [--seeds 0 1] \
        [--groups convs rest]
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

OUT = Path(__file__).parent / "results" / "lr_wd_groups.json"
K = 4.0  # λ×K, α÷K on the moved group


def groups_for(moved: str, weight_decay: float):
    """The ``setup`` callable of train(): SGD groups where ``moved`` gets λ×K and α÷K (the
    symmetry experiment's groups at r = √K, without rescaling the weights)."""

    def not_convs(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
        convs = {id(w) for _, w in conv_weights(model)}
        return [(n, p) for n, p in model.named_parameters() if id(p) not in convs]

    def setup(model: torch.nn.Module) -> list[dict]:
        select = conv_weights if moved == "convs" else not_convs
        return symmetric_param_groups(model, weight_decay, math.sqrt(K), select)

    return setup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--groups", nargs="+", default=["convs", "rest"],
                        choices=["convs", "rest"])
    parser.add_argument("--preset", default="cpu-mini")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    preset = get_preset(args.preset)
    data = load_cifar10()
    old = json.loads(args.out.read_text()) if args.out.exists() else {}
    runs = old.get("runs", {})
    for moved in args.groups:
        for seed in args.seeds:
            key = f"{moved}|{seed}"
            if key in runs:  # resumable: a finished run is kept, never repeated
                continue
            r = train(preset.hparams, preset, seed=seed, data=data,
                      setup=groups_for(moved, preset.hparams.weight_decay))
            runs[key] = {"moved": moved, "seed": seed, "test_acc": r.test_acc,
                         "diverged": r.diverged, "wall_time": r.wall_time}
            print(f"{moved} λ×{K:g} α÷{K:g}, seed {seed}: {100 * r.test_acc:.2f}%", flush=True)
            args.out.write_text(json.dumps({
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds"),
                "preset": preset.name, "k": K, "hparams": preset.hparams.to_dict(),
                "versions": versions(), "torch_threads": torch.get_num_threads(),
                "runs": runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
