"""Does bf16 autocast pay on this CPU? matmul and cpu-mini step, bf16 against fp32.

oneDNN has bf16 kernels only on CPUs with AVX-512 (BW/VL/DQ) or AVX-512-BF16/AMX; elsewhere a
bf16 conv falls back to ``slow_conv2d`` and torch's reference bf16 gemm. This measures both
precisions on the machine it runs on (1024² matmul, GFLOP/s; the cpu-mini training step at
N=64, ms, best of ``--steps`` after 2 warm-up steps) and merges the result, with the CPU's ISA
flags and what ``precision='auto'`` picks here, into benchmarks/results/cpu_bf16_probe.json
under the CPU's flags. About a minute on an AVX2-only 2-core EPYC; run it under
``flock /tmp/ridgeline-cpu.lock`` on shared cores.

    python benchmarks/cpu_bf16_probe.py
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ridgeline.cifar.model import ResNet9
from ridgeline.cifar.train import (
    cpu_has_fast_bf16,
    keep_freed_memory,
    make_optimizer,
    resolve_precision,
)
from ridgeline.hparams import HParams

OUT = Path(__file__).parent / "results" / "cpu_bf16_probe.json"
ISA = ("avx2", "avx512f", "avx512bw", "avx512_bf16", "amx_bf16")


def cpu_info() -> tuple[str, list[str]]:
    name, flags = "unknown", []
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and name == "unknown":
            name = line.split(":", 1)[1].strip()
        if line.startswith("flags") and not flags:
            have = set(line.split(":", 1)[1].split())
            flags = [f for f in ISA if f in have]
    return name, flags


def matmul_gflops(dtype: torch.dtype, n: int = 1024, reps: int = 3) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def step_ms(amp: torch.dtype | None, steps: int, batch: int = 64) -> float:
    torch.manual_seed(0)
    model = ResNet9(0.25).to(memory_format=torch.channels_last)
    opt = make_optimizer(model, HParams(batch_size=batch))
    opt.param_groups[0]["lr"] = 1e-3
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    times = []
    for _ in range(2 + steps):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None):
            out = model(x)
        F.cross_entropy(out.float(), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    return 1e3 * min(times[2:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=10, help="timed steps per precision")
    a = p.parse_args()
    keep_freed_memory()  # as train() does on CPU
    name, flags = cpu_info()
    busy0 = _busy()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    r = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
         "cpu": name, "cpu_flags": flags, "threads": torch.get_num_threads(),
         "torch": torch.__version__, "onednn_bf16": cpu_has_fast_bf16(),
         "auto_precision_on_cpu": str(resolve_precision("auto", torch.device("cpu"))),
         "matmul_gflop_s": {"fp32": matmul_gflops(torch.float32),
                            "bf16": matmul_gflops(torch.bfloat16)},
         "cpu_mini_step_ms_n64": {"fp32": step_ms(None, a.steps),
                                  "bf16": step_ms(torch.bfloat16, max(2, a.steps // 4))}}
    wall = time.perf_counter() - t0
    r["foreign_cpu_s"] = round(max(0.0, _busy() - busy0 - (time.process_time() - cpu0)), 2)
    r["wall_s"] = round(wall, 1)
    res = json.loads(OUT.read_text()) if OUT.exists() else {}
    res[" ".join([name, *flags])] = r
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(r, indent=1))


def _busy() -> float:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    main()
