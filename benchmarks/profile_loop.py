"""Where a training run's time goes: line timers around every phase of ``train()``'s loop.

Runs one real ``train()`` with a :class:`ridgeline.cifar.train.Laps` (the phases of each epoch
sum to its wall time; exact on a CPU, where ops return when done), then times the pure step
(forward + loss + backward + optimiser on one fixed batch, no data pipeline) in the same
process. Prints a markdown table (ms per step, share of the training time) and merges the
profile into benchmarks/results/profile_loop.json under ``--label``.

    RIDGELINE_DATA=../shared/data python benchmarks/profile_loop.py --label after       # cpu-mini
    RIDGELINE_DATA=../shared/data python benchmarks/profile_loop.py --label after-n512 \\
        --batch-size 512 --lr 0.4 --epochs 10 --warmup-epochs 2.0833 --eval-each-epoch

On shared cores, run it under ``flock /tmp/ridgeline-cpu.lock`` and compare labels measured
close together: absolute times drift with the machine's load.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ridgeline.cifar.data import load_cifar10
from ridgeline.cifar.model import ResNet9
from ridgeline.cifar.train import Laps, make_optimizer, resolve_precision, train
from ridgeline.presets import get_preset
from ridgeline.versions import versions

OUT = Path(__file__).parent / "results" / "profile_loop.json"
STEP_PHASES = ("forward", "loss", "backward", "optimizer", "zero_grad")
ORDER = ("setup", "augment", "batch", "lr", "hooks", *STEP_PHASES, "accumulate", "host_sync",
         "other", "eval")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor()


class CpuMeter:
    """CPU seconds spent during a block: this process's (user, sys), its minor page faults, and
    everyone else's (``foreign``: the machine's busy time minus ours), to judge a timing."""

    @staticmethod
    def _busy() -> float:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait

    def __enter__(self) -> CpuMeter:
        self._b, self._r = self._busy(), resource.getrusage(resource.RUSAGE_SELF)
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        r = resource.getrusage(resource.RUSAGE_SELF)
        self.wall = time.perf_counter() - self._t
        self.user, self.sys = r.ru_utime - self._r.ru_utime, r.ru_stime - self._r.ru_stime
        self.minflt = r.ru_minflt - self._r.ru_minflt
        self.foreign = max(0.0, self._busy() - self._b - self.user - self.sys)

    def to_dict(self) -> dict:
        return {k: round(getattr(self, k), 3) for k in ("wall", "user", "sys", "foreign")} | {
            "minor_faults": self.minflt}


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def pure_step(preset, hp, steps: int, repeats: int = 3,
              amp: torch.dtype | None = torch.bfloat16) -> tuple[float, dict]:
    """Seconds per step of forward + loss + backward + optimiser + zero_grad on one fixed
    batch, the way train() runs it (``amp`` autocast, None: fp32; channels_last), and per
    phase: the best of ``repeats`` timings of ``steps`` steps."""
    torch.manual_seed(0)
    model = ResNet9(preset.width).to(memory_format=torch.channels_last)
    opt = make_optimizer(model, hp)
    opt.param_groups[0]["lr"] = 1e-3
    x = torch.randn(hp.batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (hp.batch_size,))

    def step(lap):
        with torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None):
            out = model(x)
        lap("forward")
        loss = F.cross_entropy(out.float(), y)
        lap("loss")
        loss.backward()
        lap("backward")
        opt.step()
        lap("optimizer")
        opt.zero_grad(set_to_none=True)
        lap("zero_grad")

    for _ in range(3):
        step(lambda phase: None)
    best, phases = float("inf"), {}
    for _ in range(repeats):
        laps = Laps()
        for _ in range(steps):
            step(laps.lap)
        total = sum(laps.seconds.values()) / steps
        if total < best:
            best, phases = total, {k: v / steps for k, v in laps.seconds.items()}
    return best, phases


def table(prof: dict) -> str:
    steps, train_s = prof["steps"], prof["train_time"]
    pure = prof.get("pure_step_phases_s", {})
    rows = ["| phase | s in the run | ms per step | share of training time | pure step, ms |",
            "|---|---|---|---|---|"]
    for ph in ORDER:
        s = prof["seconds"].get(ph)
        if s is None:
            continue
        share = f"{s / train_s:.1%}" if ph not in ("eval", "setup") else "(not training)"
        ref = f"{1e3 * pure[ph]:.3f}" if ph in pure else ""
        rows.append(f"| {ph} | {s:.2f} | {1e3 * s / steps:.3f} | {share} | {ref} |")
    for name, key in ((f"**step** ({' + '.join(STEP_PHASES)})", "step_s"),
                      ("**loop around the step**", "loop_s")):
        ref = f"{1e3 * prof['pure_step_s']:.3f}" if key == "step_s" else ""
        rows.append(f"| {name} | {prof[key]:.2f} | {1e3 * prof[key] / steps:.3f} "
                    f"| {prof[key] / train_s:.1%} | {ref} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--label", required=True, help="key in the results file, e.g. before/after")
    p.add_argument("--preset", default="cpu-mini")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--epochs", type=int)
    p.add_argument("--warmup-epochs", type=float)
    p.add_argument("--eval-each-epoch", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pure-steps", type=int, default=40, help="steps per pure-step timing")
    p.add_argument("--precision", default="auto", help="as train(): auto, bf16 or fp32")
    a = p.parse_args()
    preset = get_preset(a.preset)
    over = {k: v for k, v in {"batch_size": a.batch_size, "lr": a.lr, "epochs": a.epochs,
                              "warmup_epochs": a.warmup_epochs}.items() if v is not None}
    hp = preset.hparams.replace(**over)
    data = load_cifar10()
    laps = Laps()
    load0 = os.getloadavg()
    with CpuMeter() as meter:
        r = train(hp, preset, seed=a.seed, data=data, device="cpu",
                  eval_each_epoch=a.eval_each_epoch, laps=laps, precision=a.precision)
    amp = resolve_precision(a.precision, torch.device("cpu"))
    pure, pure_phases = pure_step(preset, hp, a.pure_steps, amp=amp)
    steps = laps.counts["forward"]
    seconds = dict(laps.seconds)
    step_s = sum(seconds.get(ph, 0.0) for ph in STEP_PHASES)
    prof = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(), "cpu": cpu_name(), "threads": torch.get_num_threads(),
        "versions": versions(), "loadavg_before": load0, "loadavg_after": os.getloadavg(),
        "preset": preset.name, "hparams": hp.to_dict(), "eval_each_epoch": a.eval_each_epoch,
        "precision": r.precision,
        "cpu_during_run": meter.to_dict(), "seed": a.seed, "test_acc": r.test_acc,
        "train_time": r.train_time,
        "wall_time": r.wall_time, "steps": steps, "seconds": seconds,
        "step_s": step_s, "loop_s": r.train_time - step_s,
        "loop_overhead_in_run": (r.train_time - step_s) / step_s,
        "pure_step_s": pure, "pure_step_phases_s": pure_phases,
        "overhead_over_pure_step": r.train_time / (steps * pure) - 1,
        "epoch_seconds": [e["seconds"] for e in r.epochs],
    }
    results = json.loads(OUT.read_text()) if OUT.exists() else {}
    results[a.label] = prof
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=1) + "\n")
    print(f"{a.label}: {prof['cpu']}, {prof['threads']} threads, torch {torch.__version__}, "
          f"load {load0[0]:.2f} -> {prof['loadavg_after'][0]:.2f}; during the run: "
          f"{meter.to_dict()}")
    print(f"train {r.train_time:.2f} s for {steps} steps, test acc {r.test_acc}, "
          f"loop overhead in run {prof['loop_overhead_in_run']:+.1%}, "
          f"vs pure step ({1e3 * pure:.2f} ms) {prof['overhead_over_pure_step']:+.1%}")
    print(table(prof))


if __name__ == "__main__":
    main()
