"""ridgeline's trainer against Page's own code (cifar10-fast's dawn.py) on the same CPU job.

Runs the peer harness (``cifar10_fast_cpu.py``, see its README) and ``ridgeline train``
alternately, A B A B, each in a fresh process and never two at once, on the job of issue #15:
ResNet-9 at width ¼, the first 10,000 training images, 10 epochs, N=512, λ=0.4 (warm-up 5/24 of
the run), ρ=0.9, α=5e-4, bf16 autocast, channels_last, evaluated on the 10k test images after
every epoch. Each pair's ratios (peer time / ridgeline time, so > 1 means ridgeline is faster;
test accuracy difference) are merged into benchmarks/results/vs_cifar10_fast.json with the
machine (CPU model, threads), versions and both commits, so pairs can be collected over several
invocations. ``--cpu-mini-seeds`` instead runs ridgeline's own ``cpu-mini`` preset (N=64; the
peer hard-codes N=512) for the accuracy check, into the same file.

    export PEER_MIRRORS=/work/.mirror RIDGELINE_DATA=../shared/data
    python benchmarks/vs_cifar10_fast.py --pairs 1 --label after      # one pair, ~2.5 min
    python benchmarks/vs_cifar10_fast.py --cpu-mini-seeds 0 1 2 --label after
    python benchmarks/vs_cifar10_fast.py --summary                     # the table, no runs

On shared cores wrap each invocation in ``flock /tmp/ridgeline-cpu.lock``. Every run records
the CPU seconds that other processes used meanwhile (``foreign_cpu_s``): compare pairs where it
is small. ``--ridgeline-src`` runs another checkout's ``src`` (e.g. the code before a change).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "vs_cifar10_fast.json"
DEFAULT_PEER = ROOT / ".." / "shared" / "peers" / "cifar10_fast_cpu.py"
PEER_ARGS = ["--width-scale", "0.25", "--train-size", "10000", "--epochs", "10", "--bf16",
             "--channels-last"]
OURS_ARGS = ["--preset", "cpu-mini", "--batch-size", "512", "--lr", "0.4", "--epochs", "10",
             "--warmup-epochs", "2.0833", "--eval-each-epoch", "--quiet"]
# ISA flags that decide whether oneDNN has bf16 kernels here (ridgeline.cifar.train.
# cpu_has_fast_bf16): pairs measured on CPUs with and without them are not comparable.
ISA_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_bf16", "amx_bf16")


def job_args(precision: str) -> tuple[list[str], list[str]]:
    """The peer's and ridgeline's arguments for the job in ``precision`` (bf16 or fp32)."""
    if precision == "bf16":
        return PEER_ARGS, [*OURS_ARGS, "--precision", "bf16"]
    return [a for a in PEER_ARGS if a != "--bf16"], [*OURS_ARGS, "--precision", "fp32"]


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in ISA_FLAGS if f in have]
    except OSError:
        pass
    return []


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _busy_s() -> float:
    """The machine's CPU seconds so far, all processes, idle and iowait excluded."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def run_child(cmd: list[str], env: dict, log: Path, check: bool = True) -> dict:
    """Run ``cmd`` to completion; its wall time, CPU time, page faults, and the CPU seconds the
    rest of the machine used meanwhile. A failure exits with the log's tail (``check``) or is
    returned as ``rc``."""
    busy0, t0 = _busy_s(), time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, ru = os.wait4(proc.pid, 0)
    wall, busy = time.perf_counter() - t0, _busy_s() - busy0
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0 and check:
        sys.exit(f"error: {' '.join(cmd)} exited with {rc}; see {log}:\n"
                 + log.read_text()[-2000:])
    own = ru.ru_utime + ru.ru_stime
    return {"wall_s": round(wall, 3), "user_s": round(ru.ru_utime, 3),
            "sys_s": round(ru.ru_stime, 3), "minor_faults": ru.ru_minflt,
            "foreign_cpu_s": round(max(0.0, busy - own), 3), "rc": rc}


def git_commit(cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ".", ":!benchmarks/results"],  # results change as it runs
                               cwd=cwd, text=True, capture_output=True).stdout.strip()
        return out + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def run_peer(a, tmp: Path, args: list[str]) -> dict:
    out = tmp / "peer.json"
    cmd = [sys.executable, str(a.peer), *args, "--json", str(out)]
    load = os.getloadavg()[0]
    proc = run_child(cmd, dict(os.environ), tmp / "peer.log")
    r = json.loads(out.read_text())
    return {"side": "cifar10-fast", "train_s": r["train_s"], "eval_s": r["eval_s"],
            "test_acc": r["test_acc"], "threads": r.get("num_threads"), "cpu": r.get("cpu"),
            "peer_commit": r.get("peer_commit"), "torch": r.get("torch"),
            **proc, "loadavg_before": load}


def run_ours(a, tmp: Path, args: list[str], seed: int) -> dict:
    out = tmp / "ours.json"
    env = dict(os.environ, PYTHONPATH=str(a.ridgeline_src))
    cmd = [sys.executable, "-m", "ridgeline.cli", "train", *args, "--seed", str(seed),
           "--out", str(out)]
    load = os.getloadavg()[0]
    proc = run_child(cmd, env, tmp / "ours.log")
    r = json.loads(out.read_text())
    run = r["extras"].get("run", {})
    if "eval_time_total" in run:
        eval_s, eval_kind = run["eval_time_total"], "measured"
    else:  # code from before eval_time_total: wall = set-up + training + evaluations
        eval_s, eval_kind = r["wall_time"] - r["train_time"], "upper bound (wall - train)"
    return {"side": "ridgeline", "train_s": round(r["train_time"], 3), "eval_s": round(eval_s, 3),
            "eval_s_kind": eval_kind, "test_acc": r["test_acc"], "diverged": r["diverged"],
            "precision": r.get("precision"),
            "threads": r.get("threads"), "seed": seed, "torch": r["versions"].get("torch"),
            "ridgeline_wall_time": round(r["wall_time"], 3), **proc, "loadavg_before": load}


def load_results() -> dict:
    if OUT.exists():
        return json.loads(OUT.read_text())
    return {"job": {"peer_args": PEER_ARGS, "ridgeline_args": OURS_ARGS}, "pairs": [],
            "cpu_mini": [], "summary": {}}


FOREIGN_MAX = 0.10  # a side whose foreign CPU exceeds this share of its training time is noisy


def clean(pair: dict) -> bool:
    """True if neither side of ``pair`` shared the cores much (foreign CPU ≤ FOREIGN_MAX of its
    training time): the pairs to compare when the machine was not quiet throughout."""
    return all(pair[side]["foreign_cpu_s"] <= FOREIGN_MAX * pair[side]["train_s"]
               for side in ("peer", "ridgeline"))


def summarise(res: dict) -> dict:
    summary = {}
    for label in sorted({p["label"] for p in res["pairs"]}):
        ps = [p for p in res["pairs"] if p["label"] == label]
        tr = [p["ratios"]["train"] for p in ps]
        ev = [p["ratios"]["eval"] for p in ps]
        summary[f"pairs/{label}"] = {
            "n": len(ps), "train_ratio": tr, "eval_ratio": ev,
            "train_ratio_min": min(tr), "train_ratio_median": statistics.median(tr),
            "eval_ratio_min": min(ev), "eval_ratio_median": statistics.median(ev),
            "acc_diff_pp": [p["ratios"]["acc_diff_pp"] for p in ps],
            "foreign_cpu_s": [[p["peer"]["foreign_cpu_s"], p["ridgeline"]["foreign_cpu_s"]]
                              for p in ps],
            "clean": [clean(p) for p in ps],
            "train_ratio_clean": [t for t, p in zip(tr, ps, strict=True) if clean(p)],
            "precision": [p.get("precision", "bf16") for p in ps],
            "cpu_flags": [p.get("cpu_flags") for p in ps],
            # issue #15: ≥1.0× in every pair (training and evaluation), 1.15× training as goal
            "targets": {"train_every_pair_ge_1.0": min(tr) >= 1.0,
                        "eval_every_pair_ge_1.0": min(ev) >= 1.0,
                        "train_goal_every_pair_ge_1.15": min(tr) >= 1.15}}
    for label in sorted({r["label"] for r in res["cpu_mini"]}):
        rs = [r for r in res["cpu_mini"] if r["label"] == label]
        accs = [r["test_acc"] for r in rs]
        summary[f"cpu_mini/{label}"] = {
            "n": len(rs), "seeds": [r["seed"] for r in rs], "test_acc": accs,
            "mean_pp": 100 * statistics.mean(accs),
            "std_pp": 100 * statistics.stdev(accs) if len(accs) > 1 else None,
            "train_s": [r["train_s"] for r in rs]}
    return summary


def save(res: dict) -> None:
    res["summary"] = summarise(res)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(res, indent=1) + "\n")
    tmp.replace(OUT)


def machine(a) -> dict:
    import numpy
    import torch

    from ridgeline.cifar.train import cpu_has_fast_bf16

    return {"cpu": cpu_name(), "cpu_flags": cpu_flags(), "onednn_bf16": cpu_has_fast_bf16(),
            "cpu_count": os.cpu_count(), "torch_threads":
            torch.get_num_threads(), "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version(),
            "ridgeline_commit": a.src_commit or (git_commit(ROOT) if a.ridgeline_src == ROOT / "src"
                                                 else None),
            "ridgeline_src": os.path.relpath(a.ridgeline_src, ROOT)}


def print_summary(res: dict) -> None:
    for key, s in res["summary"].items():
        if key.startswith("pairs/"):
            tr = ", ".join(f"{x:.2f}" for x in s["train_ratio"])
            print(f"{key}: n={s['n']} training-time ratio {tr} (min {s['train_ratio_min']:.2f})"
                  f" | eval ratio {', '.join(f'{x:.2f}' for x in s['eval_ratio'])}"
                  f" | acc diff pp {', '.join(f'{x:+.2f}' for x in s['acc_diff_pp'])}")
            print("    foreign CPU s (peer/ridgeline): "
                  + ", ".join(f"{a:.1f}/{b:.1f}" for a, b in s.get("foreign_cpu_s", []))
                  + f"; clean pairs (≤ {FOREIGN_MAX:.0%} foreign): training ratio "
                  + ", ".join(f"{x:.2f}" for x in s.get("train_ratio_clean", [])))
            print("    " + "; ".join(f"{k}: {'met' if v else 'missed'}"
                                     for k, v in s.get("targets", {}).items()))
        else:
            std = f"{s['std_pp']:.2f}" if s["std_pp"] is not None else "-"
            print(f"{key}: seeds {s['seeds']} acc {[round(100 * x, 2) for x in s['test_acc']]}"
                  f" mean {s['mean_pp']:.2f} std {std} pp; train s {s['train_s']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peer", type=Path, default=DEFAULT_PEER, help="cifar10_fast_cpu.py")
    p.add_argument("--pairs", type=int, default=1, help="pairs to run in this invocation")
    p.add_argument("--seed", type=int, default=None,
                   help="ridgeline's seed for the first pair (default: the pair's number)")
    p.add_argument("--label", default="current", help="groups pairs, e.g. before/after")
    p.add_argument("--ridgeline-src", type=Path, default=ROOT / "src",
                   help="the src folder of the ridgeline to run (default: this checkout's)")
    p.add_argument("--src-commit", help="the commit that --ridgeline-src holds, for the record")
    p.add_argument("--cpu-mini-seeds", type=int, nargs="+",
                   help="run ridgeline's cpu-mini preset at these seeds instead of pairs")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="both sides' precision: bf16 autocast (the job) or fp32; auto: bf16 "
                        "where oneDNN has bf16 kernels on this CPU, else fp32")
    p.add_argument("--summary", action="store_true", help="print the summary and exit")
    a = p.parse_args()
    a.ridgeline_src = a.ridgeline_src.resolve()
    res = load_results()
    if a.summary:
        save(res)  # the summary recomputed from the pairs
        print_summary(res)
        return
    if a.cpu_mini_seeds is None and not a.peer.is_file():
        sys.exit(f"error: no peer harness at {a.peer} (pass --peer)")
    env_info = machine(a)
    if a.precision == "auto":
        a.precision = "bf16" if env_info["onednn_bf16"] else "fp32"
    peer_args, ours_args = job_args(a.precision)
    print(f"{env_info['cpu']}, {env_info['torch_threads']} threads, torch {env_info['torch']}, "
          f"ridgeline {env_info['ridgeline_commit']} from {env_info['ridgeline_src']}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if a.cpu_mini_seeds is not None:
            for seed in a.cpu_mini_seeds:
                r = run_ours(a, tmp, ["--preset", "cpu-mini", "--quiet"], seed)
                res["cpu_mini"].append({"label": a.label, "date": _now(), **env_info, **r})
                save(res)
                print(f"cpu-mini seed {seed}: {100 * r['test_acc']:.2f}%, train {r['train_s']} s,"
                      f" foreign CPU {r['foreign_cpu_s']} s")
        else:
            for i in range(a.pairs):
                n = len(res["pairs"])
                seed = n if a.seed is None else a.seed + i
                peer = run_peer(a, tmp, peer_args)  # A
                ours = run_ours(a, tmp, ours_args, seed)  # B
                pair = {"label": a.label, "date": _now(), "order": "peer, ridgeline",
                        "precision": a.precision, **env_info, "peer": peer, "ridgeline": ours,
                        "ratios": {
                            "train": round(peer["train_s"] / ours["train_s"], 4),
                            "eval": round(peer["eval_s"] / ours["eval_s"], 4),
                            "acc_diff_pp": round(100 * (ours["test_acc"] - peer["test_acc"]), 2)}}
                res["pairs"].append(pair)
                save(res)
                print(f"pair {n}: train {peer['train_s']} s (peer) vs {ours['train_s']} s "
                      f"→ ×{pair['ratios']['train']:.2f}; eval {peer['eval_s']} vs "
                      f"{ours['eval_s']} → ×{pair['ratios']['eval']:.2f}; acc "
                      f"{100 * peer['test_acc']:.2f} vs {100 * ours['test_acc']:.2f}%; foreign "
                      f"CPU {peer['foreign_cpu_s']} / {ours['foreign_cpu_s']} s")
    print_summary(res)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


if __name__ == "__main__":
    main()
