"""The thin command-line layer: each command parses flags and calls one public function.

Any RidgelineError becomes one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ridgeline.errors import RidgelineError
from ridgeline.presets import PRESETS, SYMBOLS, get_preset


def add_hparam_flags(p: argparse.ArgumentParser) -> None:
    """Every hyperparameter as a flag; unset flags keep the preset's value."""
    p.add_argument("--preset", default="cpu-mini", help=f"one of: {', '.join(PRESETS)}")
    p.add_argument("--lr", type=float, help=f"{SYMBOLS['lr']}: peak learning rate (mean loss)")
    p.add_argument("--momentum", type=float, help=f"{SYMBOLS['momentum']}: Nesterov momentum")
    p.add_argument("--weight-decay", type=float,
                   help=f"{SYMBOLS['weight_decay']}: coupled L2 weight decay")
    p.add_argument("--batch-size", type=int, help=f"{SYMBOLS['batch_size']}: images per step")
    p.add_argument("--epochs", type=int)
    p.add_argument("--warmup-epochs", type=float)


def add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="CIFAR-10 folder or tarball (default: $RIDGELINE_DATA)")
    p.add_argument("--download", action="store_true", help="download CIFAR-10 if not found")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", default="auto", help="auto (bf16), bf16, fp16 or fp32")


def hparams_from_args(args: argparse.Namespace):
    preset = get_preset(args.preset)
    overrides = {k: getattr(args, k) for k in
                 ("lr", "momentum", "weight_decay", "batch_size", "epochs", "warmup_epochs")
                 if getattr(args, k, None) is not None}
    if "epochs" in overrides and "warmup_epochs" not in overrides:
        # Keep the preset's warm-up fraction when only the run length changes.
        frac = preset.hparams.warmup_epochs / preset.hparams.epochs
        overrides["warmup_epochs"] = frac * overrides["epochs"]
    return preset, preset.hparams.replace(**overrides)


def load_data(args: argparse.Namespace):
    from ridgeline.data import load_cifar10

    return load_cifar10(args.data, download=args.download)


def cmd_train(args: argparse.Namespace) -> None:
    from ridgeline.train import train

    preset, hp = hparams_from_args(args)
    result = train(hp, preset, seed=args.seed, device=args.device, data=load_data(args),
                   progress=not args.quiet, eval_each_epoch=args.eval_each_epoch,
                   precision=args.precision)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(result.to_json(indent=2))
    if result.diverged:
        print(f"diverged: non-finite loss in epoch {len(result.epochs)} "
              f"(lr={hp.lr:g}, momentum={hp.momentum:g}, weight_decay={hp.weight_decay:g})")
    else:
        print(f"test accuracy {result.test_acc:.2%} | final train loss {result.train_loss:.4f} "
              f"| {result.wall_time:.1f} s | {result.images_per_sec:.0f} img/s "
              f"| {preset.name} seed {args.seed} on {result.device} ({result.precision})")
    if args.json:
        print(json.dumps(result.to_dict()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ridgeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train ResNet-9 once and report test accuracy")
    add_hparam_flags(p)
    add_run_flags(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the RunResult JSON here")
    p.add_argument("--eval-each-epoch", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="also print the RunResult as JSON")
    p.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except RidgelineError as e:
        print(f"ridgeline: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ridgeline: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
