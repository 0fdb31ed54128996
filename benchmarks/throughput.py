"""Throughput of the training step against the machine's measured matmul peak.

Measures, on the machine it runs on:
  * bf16 and fp32 matmul peak (GFLOP/s),
  * train-step throughput of the cpu-mini and paper networks (img/s, GFLOP/s from the analytic
    FLOP count: forward + 2× backward, as a fraction of the bf16 peak), in bf16 and fp32,
  * the end-to-end epoch time of ``train`` (augmentation, batching, lr setting, divergence
    checks) against the pure step time, as an overhead ratio.
Writes benchmarks/results/throughput.json (date, CPU, torch version). Not a test: run it on an
otherwise idle machine.

    RIDGELINE_DATA=../shared/data python benchmarks/throughput.py
"""

from __future__ import annotations

import datetime
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ridgeline.cifar import augment
from ridgeline.cifar.data import load_cifar10
from ridgeline.cifar.model import ResNet9, flops_per_image
from ridgeline.cifar.train import keep_freed_memory, make_optimizer, normalise, train
from ridgeline.presets import get_preset
from ridgeline.versions import versions

OUT = Path(__file__).parent / "results" / "throughput.json"


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 10, device="cpu") -> float:
    """GFLOP/s of ``reps`` n×n matmuls on ``device`` (synchronised there, on CUDA)."""
    dev = torch.device(device)
    a = torch.randn(n, n, dtype=dtype, device=dev)
    b = torch.randn(n, n, dtype=dtype, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else lambda: None
    for _ in range(2):
        a @ b
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def step_throughput(preset_name: str, amp: torch.dtype | None, steps: int, warmup: int = 3,
                    repeats: int = 3):
    """img/s of forward+backward+SGD on one fixed batch: the pure step, no data pipeline.
    Best of ``repeats`` timings, so a noisy spell on shared cores does not count."""
    preset = get_preset(preset_name)
    hp = preset.hparams
    torch.manual_seed(0)
    model = ResNet9(preset.width).to(memory_format=torch.channels_last)
    opt = make_optimizer(model, hp)
    x = torch.randn(hp.batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (hp.batch_size,))

    def step():
        with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            out = model(x)
        F.cross_entropy(out.float(), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(steps):
            step()
        best = min(best, time.perf_counter() - t)
    img_s = steps * hp.batch_size / best
    return img_s, img_s * 3 * flops_per_image(preset.width) / 1e9


def end_to_end_overhead(pure_img_s: float) -> dict:
    """Real cpu-mini epochs through ``train`` (best of 3 after the first) against the pure
    step rate: what augmentation, batching, lr setting and divergence checks cost."""
    preset = get_preset("cpu-mini")
    hp = preset.hparams.replace(epochs=4, warmup_epochs=1)
    # bf16, as the pure step it is compared with (auto is fp32 on CPUs without oneDNN bf16)
    r = train(hp, preset, seed=0, data=load_cifar10(), device="cpu", precision="bf16")
    epoch_img_s = max(e["images_per_sec"] for e in r.epochs[1:])
    # The pipeline's own cost, timed directly: one epoch of batched augmentation.
    data = load_cifar10().subset(preset.train_size)
    pair = augment.mirrored_pair(augment.pad(normalise(data.train_images, torch.bfloat16)))
    gen = torch.Generator().manual_seed(0)
    t = time.perf_counter()
    augment.epoch(pair, data.train_labels, gen)  # as train() does it
    augment_s = time.perf_counter() - t
    return {"epoch_img_s": epoch_img_s, "pure_step_img_s": pure_img_s,
            "overhead_ratio": pure_img_s / epoch_img_s - 1,
            "augment_s_per_epoch": augment_s,
            "augment_fraction_of_epoch": augment_s * epoch_img_s / len(data.train_labels)}


def main() -> None:
    keep_freed_memory()  # as train() does on CPU, so the pure step is timed the same way
    peaks = {"bf16": matmul_peak(torch.bfloat16), "fp32": matmul_peak(torch.float32)}
    nets = {}
    for name, steps in (("cpu-mini", 156), ("paper", 3)):
        for prec, amp in (("bf16", torch.bfloat16), ("fp32", None)):
            img_s, gflops = step_throughput(name, amp, steps)
            nets[f"{name}/{prec}"] = {"img_s": img_s, "gflop_s": gflops,
                                      "fraction_of_bf16_peak": gflops / peaks["bf16"],
                                      "fraction_of_own_peak": gflops / peaks[prec]}
            print(name, prec, f"{img_s:.0f} img/s, {gflops:.1f} GFLOP/s")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one worker per core: is a 2-worker sweep faster than 1×2 threads?
    one_thread = step_throughput("cpu-mini", torch.bfloat16, 156)
    nets["cpu-mini/bf16/1-thread"] = dict(zip(("img_s", "gflop_s"), one_thread, strict=True))
    torch.set_num_threads(threads)
    overhead = end_to_end_overhead(nets["cpu-mini/bf16"]["img_s"])
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_name(), "threads": torch.get_num_threads(), "versions": versions(),
        "machine": platform.machine(), "matmul_peak_gflop_s": peaks, "train_step": nets,
        "end_to_end": overhead,
        "paper_run_estimate_h": 24 * 50_000 / nets["paper/bf16"]["img_s"] / 3600,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
