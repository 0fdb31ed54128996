"""Sweep throughput against the number of workers on this machine: does splitting the cores
between parallel runs beat giving every core to one run at a time?

Runs the same small lr-wd sweep (default: 8 points of a 1-epoch cpu-mini on synthetic
CIFAR-shaped data, 10,000 training images, so each run takes about 10 s on one core) several
times, each time into a fresh journal:

  * ``inprocess``: 1 worker in this process, torch threads = all cores (the default),
  * ``processes-1``: 1 spawned worker, all cores (the cost of the executor machinery),
  * ``processes-N``: N spawned workers, cores // N torch threads each (N = --workers),
  * ``ray-N``: N Ray tasks on a local cluster (only with --ray and Ray installed).

For each it records the sweep's wall time, runs per hour, and the mean wall time per run as
the runs measured it themselves. Writes benchmarks/results/scaling.json with the date, CPU,
core count, torch version and the load average at the start. Not a test: run it on an
otherwise idle machine (it warns when the load average says the machine is busy).

    python benchmarks/scaling.py                   # ~4 min on 2 cores
    python benchmarks/scaling.py --ray             # also through Ray
    python benchmarks/scaling.py --smoke --out /tmp/scaling.json   # seconds: checks it runs
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ridgeline.hparams import HParams
from ridgeline.landscape import sweep
from ridgeline.landscape.grid import make_grid
from ridgeline.presets import get_preset
from ridgeline.runs import ledger as st

OUT = Path(__file__).parent / "results" / "scaling.json"
_DATA = None  # each worker process builds its synthetic set once


def synthetic_cifar(n_train: int, n_test: int = 1000, seed: int = 0):
    """Random uint8 images whose class is a bright patch: training does real work and can
    learn, with no dataset files (the timing is the point, not the accuracy)."""
    import torch

    from ridgeline.cifar.data import Cifar10

    g = torch.Generator().manual_seed(seed)

    def split(n: int):
        labels = torch.arange(n) % 10
        images = torch.randint(0, 128, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
        for c in range(10):
            images[labels == c, c % 3, 3 * c:3 * c + 6, 8:24] = 255
        return images, labels

    return Cifar10(*split(n_train), *split(n_test))


@dataclass
class SyntheticTrain:
    """The sweep objective: ridgeline.cifar.train.train on synthetic data, on the CPU."""

    n_train: int

    def __call__(self, hp: HParams, preset: str, seed: int):
        global _DATA
        from ridgeline.cifar.train import train

        if _DATA is None:
            _DATA = synthetic_cifar(self.n_train)
        return train(hp, preset, seed=seed, device="cpu", data=_DATA, precision="auto")


def measure(mode: str, workers: int, spec, objective, journal: Path) -> dict:
    """One sweep of ``spec`` under ``mode`` into a fresh journal: timings and run stats."""
    t0 = time.perf_counter()
    report = sweep.run_sweep(spec, journal, objective=objective, executor=mode,
                             workers=workers, progress=False)
    wall = time.perf_counter() - t0
    study = st.open_study(spec.default_study_name(), journal, create=False)
    results = [st.trial_to_result(t) for t in study.trials]
    runs = [r.wall_time for r in results if r is not None]
    if report.complete != report.total:
        raise SystemExit(f"{mode}-{workers}: only {report.complete}/{report.total} completed")
    return {"mode": mode, "workers": workers, "executor": report.executor, "runs": len(runs),
            "sweep_wall_s": round(wall, 2), "runs_per_hour": round(len(runs) / wall * 3600, 1),
            "run_wall_s_mean": round(statistics.fmean(runs), 2),
            "img_per_s_mean": round(statistics.fmean(r.images_per_sec for r in results), 1)}


def plan(args) -> list[tuple[str, int]]:
    modes = [("inprocess", 1), ("processes", 1), ("processes", args.workers)]
    if args.ray:
        modes.append(("ray", args.workers))
    return modes


def machine() -> dict:
    import torch

    load = os.getloadavg()[0]
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": torch.__version__, "python": platform.python_version(),
            "load_avg_1m_at_start": round(load, 2)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2,
                   help="workers of the parallel modes (default: one per core)")
    p.add_argument("--steps", type=int, nargs=2, default=(4, 2), metavar=("LR", "WD"),
                   help="grid points along lr and wd (default 4 2: 8 runs)")
    p.add_argument("--epochs", type=float, default=1, help="epochs per run (default 1)")
    p.add_argument("--ray", action="store_true", help="also measure the Ray executor")
    p.add_argument("--smoke", action="store_true",
                   help="the tiny preset and 2 runs: checks the script, measures nothing")
    p.add_argument("--out", type=Path, default=OUT)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    preset = "tiny" if args.smoke else "cpu-mini"
    steps = (2, 1) if args.smoke else tuple(args.steps)
    base = get_preset(preset).hparams.replace(epochs=args.epochs,
                                              warmup_epochs=args.epochs / 4)
    n_train = get_preset(preset).train_size  # the preset's subset, all synthetic
    spec = make_grid("lr-wd", preset, base, steps)
    info = machine()
    if info["load_avg_1m_at_start"] > 0.5 and not args.smoke:
        print(f"warning: load average {info['load_avg_1m_at_start']}: the machine is busy, "
              f"the numbers will be too", file=sys.stderr)
    global _DATA
    _DATA = synthetic_cifar(n_train)  # as the CLI loads data before a sweep: not timed in-process
    rows = []
    for mode, workers in plan(args):
        with tempfile.TemporaryDirectory() as tmp:
            row = measure(mode, workers, spec, SyntheticTrain(n_train), Path(tmp, "j.journal"))
        print(json.dumps(row), flush=True)
        rows.append(row)
    base_rate = rows[0]["runs_per_hour"]
    for row in rows:
        row["speedup_vs_inprocess"] = round(row["runs_per_hour"] / base_rate, 3)
    result = {**info, "preset": preset, "epochs": args.epochs, "train_images": n_train,
              "runs_per_sweep": len(spec.points()), "smoke": args.smoke, "modes": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
