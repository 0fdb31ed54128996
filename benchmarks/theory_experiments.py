"""Check the paper's explanation of its flat directions on real training runs.

Experiments (docs/theory.md explains what each one tests and why):

- overhead: train a short run with and without WeightNormHook; the hook must cost <= 5%.
- a (symmetry), b (λα fixed), c (λ/(1−ρ) fixed): the flatness experiments of
  ``ridgeline.science.experiments`` (described there), which ``ridgeline reproduce`` runs too. This
  script runs them in one process (a MemoryCache: (b) and (c) share the preset's own runs).

    python benchmarks/theory_experiments.py --preset cpu-mini --seeds 3      # real run
    python benchmarks/theory_experiments.py --preset tiny --synthetic --seeds 2 \\
        --out /tmp/t.json --figures /tmp/figs                                 # smoke test

Results go to benchmarks/results/theory_experiments.json (rewritten after each experiment) and
figures to docs/figures/theory_*.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from ridgeline.cifar.train import train
from ridgeline.hparams import HParams
from ridgeline.presets import Preset, get_preset
from ridgeline.science import experiments
from ridgeline.science.diagnose import HOOK_NAME
from ridgeline.science.diagnostics import WeightNormHook
from ridgeline.versions import versions

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="cpu-mini")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 for every setting")
    p.add_argument("--experiments", default="overhead,a,b,c",
                   help="comma-separated subset of: overhead, a, b, c")
    p.add_argument("--every", type=int, default=10, help="WeightNormHook logging interval")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="auto", help="for b, c and overhead (a is fp32)")
    p.add_argument("--data", help="CIFAR-10 folder (default: $RIDGELINE_DATA)")
    p.add_argument("--synthetic", action="store_true", help="random data, for smoke tests")
    p.add_argument("--overhead-epochs", type=int, default=2)
    p.add_argument("--overhead-repeats", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/theory_experiments.json"))
    p.add_argument("--figures", default=str(ROOT / "docs/figures"))
    return p.parse_args(argv)


def load(args, preset: Preset):
    if not args.synthetic:
        from ridgeline.cifar.data import load_cifar10

        return load_cifar10(args.data)
    from ridgeline.cifar.data import Cifar10

    g = torch.Generator().manual_seed(0)

    def split(n):
        labels = torch.arange(n) % 10
        images = torch.randint(0, 128, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
        for c in range(10):  # a learnable bright patch per class
            images[labels == c, c % 3, 3 * c:3 * c + 6, 8:24] = 255
        return images, labels

    return Cifar10(*split(max(2048, preset.train_size or 50_000)), *split(500))


# ------------------------------------------------------------------------------- overhead


def short_hparams(hp: HParams, epochs: int) -> HParams:
    return hp.replace(epochs=epochs, warmup_epochs=hp.warmup_epochs * epochs / hp.epochs)


class TimedHook(WeightNormHook):
    """WeightNormHook that also clocks its own calls: on a CPU they run synchronously, so
    this measures the overhead directly, free of the run-to-run noise of shared cores. (On a
    GPU the hook queues work asynchronously and this clock would undercount.)"""

    seconds = 0.0

    def before_step(self, step, model, lr):
        t0 = time.perf_counter()
        super().before_step(step, model, lr)
        self.seconds += time.perf_counter() - t0

    def after_step(self, step, model, lr, loss=None):
        t0 = time.perf_counter()
        super().after_step(step, model, lr, loss)
        self.seconds += time.perf_counter() - t0


def measure_overhead(preset: Preset, data, args) -> dict:
    """Two measures of the hook's cost on a short run: the time spent inside it as a share of
    the plain loop, and the best-of-N end-to-end training time with vs without it (conditions
    alternate, so a slow spell on the shared cores hits all of them alike)."""
    hp = short_hparams(preset.hparams, args.overhead_epochs)
    configs = {"plain": None, f"every={args.every}": args.every, "every=1": 1}
    times: dict[str, list[float]] = {k: [] for k in configs}
    inside: dict[str, list[float]] = {k: [] for k in configs if k != "plain"}
    for _ in range(args.overhead_repeats):
        for label, every in configs.items():
            hooks = [] if every is None else [TimedHook(every)]
            r = train(hp, preset, seed=0, device=args.device, data=data, hooks=hooks,
                      precision=args.precision)
            times[label].append(r.train_time)
            if hooks:
                inside[label].append(hooks[0].seconds)
    best = {k: min(v) for k, v in times.items()}
    return {"hparams": hp.to_dict(), "steps": r.extras[HOOK_NAME]["total_steps"],
            "train_time_s": times, "best_s": best, "hook_seconds": inside,
            "overhead_in_hook": {k: min(v) / best["plain"] for k, v in inside.items()},
            "overhead_end_to_end": {k: best[k] / best["plain"] - 1 for k in best
                                    if k != "plain"}}


# ---------------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    args = parse_args(argv)
    preset = get_preset(args.preset)
    data = load(args, preset)
    figures, out_path = Path(args.figures), Path(args.out)
    wanted = {e.strip() for e in args.experiments.split(",")}
    results = {"meta": {"preset": preset.name, "seeds": args.seeds, "device": args.device,
                        "precision": args.precision, "every": args.every,
                        "synthetic": args.synthetic, "versions": versions(),
                        "torch_threads": torch.get_num_threads(),
                        "date": time.strftime("%Y-%m-%d %H:%M:%S")}}
    setup = experiments.Setup(preset, data, args.seeds, args.every, args.device, args.precision)
    cache = experiments.MemoryCache()
    steps = {"overhead": lambda: measure_overhead(preset, data, args)}
    steps.update({kind: lambda kind=kind: experiments.run(kind, setup, cache, figures)
                  for kind in experiments.EXPERIMENTS})
    keys = {"overhead": "overhead", **experiments.EXPERIMENTS}
    for exp, run in steps.items():
        if exp in wanted:
            t0 = time.perf_counter()
            results[keys[exp]] = run()
            results[keys[exp]]["seconds"] = time.perf_counter() - t0
            _write(results, out_path)
            print(f"{keys[exp]} done in {results[keys[exp]]['seconds']:.0f} s -> {out_path}")
    return results


def _write(results: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=_jsonable))


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON-able: {type(x)}")


if __name__ == "__main__":
    main()
