"""Page's `paper` preset (ResNet-9, 24 epochs, N=512) on one CUDA device: variants, then seeds.

1. Measures the device's dense bf16 (and fp16) matmul rate.
2. Variants, one seed each: eager bf16 against fp16 autocast, channels_last on and off, and
   torch.compile (default, max-autotune) against eager.
3. ``--seeds`` runs of one configuration: the fastest variant whose accuracy is within
   ``--acc-tolerance`` of the best one (``--seed-config auto``), or the one named.

Every run warms up first (compilation, autotuning, cuDNN algorithm search, first-call set-up),
reported as warmup_s; train_s is the training loop alone and eval_s the final test evaluation;
data loading is reported once, apart. The JSON is rewritten atomically after every run, so a
killed call still leaves every finished run; ``--resume`` reuses finished runs of an earlier
JSON. One progress line per run. Needs torch, not Optuna.

    PYTHONPATH=src python benchmarks/gpu_paper.py --data DIR                     # on a GPU
    PYTHONPATH=src python benchmarks/gpu_paper.py --preset tiny --device cpu \\
        --data DIR --out /tmp/gpu_paper.json                                    # smoke test

benchmarks/gpu_paper.md: staging CIFAR-10 onto the device machine and the exact device calls.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import traceback
import uuid
from pathlib import Path

import torch

from ridgeline.cifar.data import Cifar10, load_cifar10
from ridgeline.cifar.model import flops_per_image
from ridgeline.cifar.train import resolve_device, train, versions
from ridgeline.errors import RidgelineError
from ridgeline.presets import get_preset

try:  # imported as benchmarks.gpu_paper (tests)
    from benchmarks import gpu_stage
    from benchmarks.throughput import _cpu_name, matmul_peak
except ImportError:  # run as a script: benchmarks/ is sys.path[0]
    import gpu_stage
    from throughput import _cpu_name, matmul_peak

OUT = Path(__file__).parent / "results" / "gpu_paper.json"
SCRIPT = "benchmarks/gpu_paper.py"
# name: train() settings. cudnn_benchmark is torch.backends.cudnn.benchmark (Page's code sets it).
VARIANTS = {
    "eager-bf16": {"precision": "bf16", "channels_last": True, "compile_mode": None},
    "eager-fp16": {"precision": "fp16", "channels_last": True, "compile_mode": None},
    "eager-bf16-nchw": {"precision": "bf16", "channels_last": False, "compile_mode": None},
    "compile-bf16": {"precision": "bf16", "channels_last": True, "compile_mode": "default"},
    "autotune-bf16": {"precision": "bf16", "channels_last": True,
                      "compile_mode": "max-autotune"},
    # not run unless named in --variants:
    "autotune-nocg-bf16": {"precision": "bf16", "channels_last": True,
                           "compile_mode": "max-autotune-no-cudagraphs"},
    "eager-bf16-nobench": {"precision": "bf16", "channels_last": True, "compile_mode": None,
                           "cudnn_benchmark": False},
    "graphs-bf16": {"precision": "bf16", "channels_last": True, "compile_mode": None,
                    "cuda_graphs": True},
}
DEFAULT_VARIANTS = ["eager-bf16", "eager-fp16", "eager-bf16-nchw", "compile-bf16",
                    "autotune-bf16"]
BASELINE = "eager-bf16"
TARGETS = {"mean_test_acc": 0.94, "train_s": 8.0}  # issue #16, for the paper preset


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="CIFAR-10 folder or archive (required unless --prewarm)")
    p.add_argument("--join-from", type=Path, metavar="STAGE",
                   help="first rebuild --data from gpu_stage parts in STAGE, md5-checked")
    p.add_argument("--allow-unofficial", action="store_true",
                   help="skip the official md5 sums (tests' fake CIFAR-10)")
    p.add_argument("--preset", default="paper")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    p.add_argument("--seeds", type=int, default=5, help="seed runs: seeds 0..N-1 (5)")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=DEFAULT_VARIANTS)
    p.add_argument("--skip-variants", action="store_true")
    p.add_argument("--variant-seed", type=int, default=0)
    p.add_argument("--seed-config", default="auto",
                   help=f"auto or a variant name ({', '.join(VARIANTS)})")
    p.add_argument("--acc-tolerance", type=float, default=0.005,
                   help="auto: eligible variants are within this of the best accuracy (0.005)")
    p.add_argument("--compile-backend", default=None,
                   help="torch.compile backend (default inductor; on cpu compile variants are "
                        "skipped unless one is given, e.g. eager)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="start no run that would end after this many minutes from the start")
    p.add_argument("--matmul-sizes", type=int, nargs="+", default=None,
                   help="n of the n×n matmuls timed (default 4096 8192 16384 on cuda, 1024 "
                        "on cpu); the best rate counts")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--mirror", type=Path, help="also write the JSON here after every run")
    p.add_argument("--resume", type=Path, help="reuse the finished runs of this earlier JSON")
    p.add_argument("--prewarm", action="store_true",
                   help="compile the compiled variants on random data of the preset's shapes "
                        "(fills inductor's caches; no --data needed), then stop")
    args = p.parse_args(argv)
    if args.seed_config != "auto" and args.seed_config not in VARIANTS:
        p.error(f"--seed-config {args.seed_config!r}: use auto or one of {', '.join(VARIANTS)}")
    if args.data is None and not args.prewarm:
        p.error("--data DIR is required (the CIFAR-10 folder) unless --prewarm")
    if args.seeds < 0:
        p.error("--seeds must be >= 0")
    return args


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write_json(path: Path, obj: dict) -> None:
    """Atomic: a reader (or a kill mid-write) sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(json.dumps(obj, indent=1))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def log(msg: str) -> None:
    print(f"[gpu_paper] {msg}", flush=True)


def driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
        return out.strip().splitlines()[0] if out.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def device_info(dev: torch.device) -> dict:
    info = {"type": dev.type, "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available()
            else None, "host_cpu": _cpu_name(), "cpu_count": os.cpu_count(),
            "platform": platform.platform()}
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        info.update(name=props.name, capability=f"{props.major}.{props.minor}",
                    memory_gib=props.total_memory / 2**30, sm_count=props.multi_processor_count,
                    driver=driver_version())
    else:
        info.update(name=_cpu_name(), threads=torch.get_num_threads())
    return info


def measure_matmul(dev: torch.device, sizes: list[int]) -> dict:
    """Best TFLOP/s over ``sizes`` per dtype (fp16 only on CUDA), each the best of 3 timings."""
    dtypes = {"bf16": torch.bfloat16, **({"fp16": torch.float16} if dev.type == "cuda" else {})}
    out = {}
    for name, dtype in dtypes.items():
        by_n = {}
        for n in sizes:
            reps = max(3, min(200, int(1e14 / (2 * n**3)))) if dev.type == "cuda" else 3
            by_n[str(n)] = max(matmul_peak(dtype, n, reps, device=dev) for _ in range(3)) / 1e3
        out[name] = {"tflop_s": max(by_n.values()), "by_n": by_n}
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return out


def fake_data(preset) -> Cifar10:
    """Random uint8 images with the shapes a run of ``preset`` sees (for --prewarm)."""
    g = torch.Generator().manual_seed(0)
    n_train = max(preset.train_size or 0, 2 * preset.hparams.batch_size)
    images = torch.randint(0, 256, (n_train + 1000, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.arange(n_train + 1000) % 10
    return Cifar10(images[:n_train], labels[:n_train], images[n_train:], labels[n_train:])


class Bench:
    """One invocation: its report, rewritten after every run, and the runs themselves."""

    def __init__(self, args, argv):
        self.args = args
        self.t0 = time.perf_counter()
        self.deadline = None if args.max_minutes is None else self.t0 + 60 * args.max_minutes
        self.dev = resolve_device(args.device)
        self.preset = get_preset(args.preset)
        self.flops_per_train_image = 3 * flops_per_image(self.preset.width)  # fwd + 2x bwd
        self.previous = self._load_previous(args.resume)
        self.report = {
            "status": "running", "started": now(), "updated": now(),
            "command": shlex.join(["python", SCRIPT, *argv]), "argv": list(argv),
            "python": sys.executable, "cwd": os.getcwd(),
            "env": {k: os.environ.get(k) for k in
                    ("PYTHONPATH", "RIDGELINE_CACHE", "CUDA_VISIBLE_DEVICES")},
            "device": device_info(self.dev), "versions": versions(),
            "preset": {"name": self.preset.name, "hparams": self.preset.hparams.to_dict(),
                       "width": self.preset.width, "train_size": self.preset.train_size},
            "flops_per_train_image": self.flops_per_train_image,
            "timing_note": "train_s: training loop only; eval_s: final test evaluation; "
                           "warmup_s: compilation/autotuning/first-call set-up before training; "
                           "data load and matmul measurement reported apart",
            "data": {}, "matmul": {}, "variants": [], "seed_config": None, "seeds": [],
            "summary": None, "targets": dict(TARGETS), "elapsed_s": 0.0,
        }

    def _load_previous(self, path: Path | None) -> dict:
        if path is None or not path.is_file():
            return {}
        old = json.loads(path.read_text())
        if old.get("preset", {}).get("name") != self.preset.name:
            return {}
        return {(r["phase"], r["label"], r["seed"]): r
                for r in old.get("variants", []) + old.get("seeds", []) + old.get("prewarm", [])
                if r.get("status") in ("ok", "diverged")}

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def save(self) -> None:
        self.report["updated"] = now()
        self.report["elapsed_s"] = self.elapsed()
        for path in filter(None, (self.args.out, self.args.mirror)):
            write_json(path, self.report)

    def estimate(self, label: str) -> float | None:
        """Seconds the next run of ``label`` should take: its last wall time, if any."""
        runs = [r for r in self.report["variants"] + self.report["seeds"]
                if r["label"] == label and r.get("wall_s")]
        return runs[-1]["wall_s"] if runs else None

    def skip_reason(self, phase: str, label: str, config: dict) -> str | None:
        args = self.args
        if config["precision"] == "fp16" and self.dev.type != "cuda":
            return "fp16 autocast is CUDA-only"
        if config.get("cuda_graphs") and self.dev.type != "cuda":
            return "cuda_graphs needs a CUDA device"
        if config["compile_mode"] and self.dev.type == "cpu" and args.compile_backend is None:
            return ("inductor's CPU compile takes minutes on a small CPU: pass "
                    "--compile-backend eager to exercise the compile path")
        if self.deadline is not None:
            # A run must fit in what is left; a variant must also leave the seed runs their
            # time, counted at the baseline's pace (the seeds are what the targets are about).
            left, need = self.deadline - time.perf_counter(), self.estimate(label) or 0.0
            base = self.estimate(BASELINE)
            if phase == "variant" and label != BASELINE and base:
                need += base * max(0, args.seeds - 1)
            if left <= 0 or need > left:
                return (f"time budget (--max-minutes {args.max_minutes}): {max(left, 0):.0f} s "
                        f"left, {need:.0f} s needed (this label's last run, and for a variant "
                        f"the seed runs at the {BASELINE} pace)")
        return None

    def run(self, phase: str, label: str, seed: int, data, hparams=None) -> dict:
        config = {"cudnn_benchmark": True, **VARIANTS[label]}
        rec = {"phase": phase, "label": label, "seed": seed, "config": config}
        key = (phase, label, seed)
        if key in self.previous and self.previous[key].get("config") == config:
            rec = {**self.previous[key], "resumed": True}
            log(f"{phase} {label} seed {seed}: resumed from {self.args.resume}")
            return rec
        if reason := self.skip_reason(phase, label, config):
            log(f"{phase} {label} seed {seed}: skipped: {reason}")
            return {**rec, "status": "skipped", "reason": reason}
        torch.backends.cudnn.benchmark = config["cudnn_benchmark"]
        if config["compile_mode"]:
            torch._dynamo.reset()  # each compiled run compiles its own model, as a user's would
        if self.dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.dev)
        try:
            r = train(hparams or self.preset.hparams, self.preset, seed=seed,
                      device=self.args.device, data=data, precision=config["precision"],
                      channels_last=config["channels_last"], compile_mode=config["compile_mode"],
                      compile_backend=self.args.compile_backend or "inductor", warmup=True,
                      cuda_graphs=config.get("cuda_graphs", False))
        except Exception as e:  # record it and go on: one bad variant must not cost the rest
            traceback.print_exc()
            msg = " ".join(f"{type(e).__name__}: {e}".split())[:500]
            log(f"{phase} {label} seed {seed}: error: {msg}")
            return {**rec, "status": "error", "reason": msg}
        finally:
            gc.collect()
            if self.dev.type == "cuda":
                torch.cuda.empty_cache()
        rec.update(self.summarise(r))
        acc = "diverged" if r.diverged else f"acc {r.test_acc:.4f}"
        frac = rec["fraction_of_bf16_matmul"]
        log(f"{phase} {label} seed {seed}: {acc}, train {rec['train_s']:.2f} s, eval "
            f"{rec['eval_s']:.2f} s, warm-up {rec['warmup_s']:.1f} s, {rec['img_s']:.0f} img/s"
            + (f" ({100 * frac:.1f}% of bf16 matmul)" if frac is not None else ""))
        return rec

    def summarise(self, r) -> dict:
        run = r.extras["run"]
        tflop_s = r.images_per_sec * self.flops_per_train_image / 1e12
        peaks = self.report["matmul"]
        bf16 = peaks.get("bf16", {}).get("tflop_s")
        own = peaks.get({"bfloat16": "bf16", "float16": "fp16"}.get(r.precision, ""), {})
        return {
            "status": "diverged" if r.diverged else "ok", "test_acc": r.test_acc,
            "train_s": r.train_time, "eval_s": run["eval_time"], "warmup_s": run["warmup_time"],
            "wall_s": r.wall_time, "img_s": r.images_per_sec, "train_tflop_s": tflop_s,
            "fraction_of_bf16_matmul": tflop_s / bf16 if bf16 else None,
            "fraction_of_own_matmul": tflop_s / own["tflop_s"] if own.get("tflop_s") else None,
            "max_memory_gib": torch.cuda.max_memory_allocated(self.dev) / 2**30
            if self.dev.type == "cuda" else None,
            "epoch_s": [e["seconds"] for e in r.epochs], "result": r.to_dict(),
        }

    def choose_seed_config(self) -> dict:
        args = self.args
        if args.seed_config != "auto":
            return {"label": args.seed_config, "why": "named by --seed-config"}
        ok = [v for v in self.report["variants"]
              if v["status"] == "ok" and v["test_acc"] is not None]
        if not ok:
            return {"label": BASELINE, "why": "no variant finished: the eager bf16 baseline"}
        best = max(v["test_acc"] for v in ok)
        pick = min((v for v in ok if v["test_acc"] >= best - args.acc_tolerance),
                   key=lambda v: v["train_s"])
        return {"label": pick["label"],
                "why": f"fastest training ({pick['train_s']:.2f} s) among the variants within "
                       f"{args.acc_tolerance} of the best accuracy ({best:.4f})"}

    def summary(self) -> dict | None:
        runs = [r for r in self.report["seeds"] if r["status"] == "ok"]
        if not runs:
            return None
        accs, secs = [r["test_acc"] for r in runs], [r["train_s"] for r in runs]
        s = {"label": runs[0]["label"], "n": len(runs), "seeds": [r["seed"] for r in runs],
             "mean_test_acc": statistics.fmean(accs),
             "std_test_acc": statistics.stdev(accs) if len(accs) > 1 else None,
             "min_test_acc": min(accs), "max_test_acc": max(accs),
             "mean_train_s": statistics.fmean(secs), "max_train_s": max(secs),
             "mean_eval_s": statistics.fmean(r["eval_s"] for r in runs),
             "mean_img_s": statistics.fmean(r["img_s"] for r in runs),
             "diverged": sum(r["status"] == "diverged" for r in self.report["seeds"])}
        if self.preset.name == "paper":
            s["meets_acc_target"] = s["mean_test_acc"] >= TARGETS["mean_test_acc"]
            s["meets_time_target"] = s["max_train_s"] <= TARGETS["train_s"]
        return s


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    bench = Bench(args, argv)
    report = bench.report
    bench.save()
    log(f"{report['device']['name']} ({bench.dev}), torch {torch.__version__}, "
        f"CUDA {torch.version.cuda}, preset {args.preset}")
    try:
        sizes = args.matmul_sizes or ([4096, 8192, 16384] if bench.dev.type == "cuda" else [1024])
        report["matmul"] = measure_matmul(bench.dev, sizes)
        log("matmul: " + ", ".join(f"{k} {v['tflop_s']:.1f} TFLOP/s"
                                     for k, v in report["matmul"].items()))
        bench.save()
        if args.prewarm:
            data, hp = fake_data(bench.preset), bench.preset.hparams.replace(
                epochs=1, warmup_epochs=min(1.0, bench.preset.hparams.warmup_epochs))
            report["data"] = {"prewarm": "random data of the preset's shapes, 1 epoch"}
            report["prewarm"] = []
            for label in args.variants:
                if VARIANTS[label]["compile_mode"]:
                    report["prewarm"].append(bench.run("prewarm", label, 0, data, hp))
                    bench.save()
            report["status"] = "done"
            return report
        if args.join_from is not None:
            t = time.perf_counter()
            joined = gpu_stage.join(args.join_from, Path(args.data),
                                    official=not args.allow_unofficial)
            report["data"]["join"] = {**joined, "seconds": time.perf_counter() - t}
            log(f"joined {len(joined['files'])} files into {args.data}, md5 checked")
        t = time.perf_counter()
        data = load_cifar10(args.data, file_md5s={} if args.allow_unofficial else None)
        report["data"].update(dir=str(args.data), load_s=time.perf_counter() - t,
                              train_images=len(data.train_labels),
                              test_images=len(data.test_labels),
                              md5="unchecked" if args.allow_unofficial else "official")
        log(f"data: {len(data.train_labels)} train / {len(data.test_labels)} test images "
            f"in {report['data']['load_s']:.1f} s")
        bench.save()
        if not args.skip_variants:
            for label in args.variants:
                report["variants"].append(bench.run("variant", label, args.variant_seed, data))
                bench.save()
        choice = bench.choose_seed_config()
        report["seed_config"] = choice
        log(f"seed runs: {choice['label']} ({choice['why']})")
        for seed in range(args.seeds):
            same = [v for v in report["variants"] if v["label"] == choice["label"]
                    and v["seed"] == seed and v["status"] in ("ok", "diverged")]
            if same:  # the variant run is this seed's run: the same settings and seed
                rec = {**same[0], "phase": "seed", "reused_variant_run": True}
                log(f"seed {choice['label']} seed {seed}: the variant run, reused")
            else:
                rec = bench.run("seed", choice["label"], seed, data)
            report["seeds"].append(rec)
            report["summary"] = bench.summary()
            bench.save()
        report["status"] = "done"
        s = report["summary"]
        if s:
            log(f"summary: {s['n']} seeds, mean acc {s['mean_test_acc']:.4f}, train "
                f"{s['mean_train_s']:.2f} s mean / {s['max_train_s']:.2f} s max")
        return report
    except KeyboardInterrupt:
        report["status"] = "interrupted"
        raise
    except RidgelineError as e:
        report["status"] = "error"
        report["error"] = str(e)
        raise
    finally:
        bench.save()


if __name__ == "__main__":
    try:
        main()
    except RidgelineError as e:
        print(f"gpu_paper: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
