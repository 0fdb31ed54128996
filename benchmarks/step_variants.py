"""Can the training step itself beat Page's? Every candidate issue #15 names, timed alike.

The eager step is the same program as the peer's (the same aten kernels in the same order), so
a training ratio above ~1.1× needs a faster *step*. This times the pure step (forward + loss +
backward + fused SGD on one fixed batch, bf16 autocast, channels_last) at the issue's job
(width ¼, N=512) and at cpu-mini (N=64), and the 10k-image evaluation, under each variant:

- ``eager``: ridgeline's step as ``train()`` runs it, malloc thresholds included (the
  baseline; until 575e90d its pooled blocks ran Page's order, conv → BN → ReLU → pool);
- ``omp-active`` / ``omp-passive``: oneDNN/OpenMP thread waiting (``OMP_WAIT_POLICY``);
- ``omp-bind``: OpenMP threads pinned one per core (``OMP_PROC_BIND=close OMP_PLACES=cores``);
- ``thp``: malloc'd memory on transparent huge pages (``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``,
  glibc ≥ 2.35; fewer TLB misses on the activations);
- ``thp-torch``: the same through PyTorch's own CPU allocator switch (``THP_MEM_ALLOC_ENABLE=1``,
  huge pages for tensors ≥ 2 MB);
- ``fpmath-bf16``: an fp32 model whose convs oneDNN runs in bf16
  (``torch.backends.mkldnn.fp32_precision = "bf16"``: BatchNorm and ReLU stay fp32);
- ``pool-before-relu`` / ``relu-before-pool``: the pooled blocks in either order, the same
  function (ReLU commutes with max-pool); pool first runs ReLU on 4× fewer elements and is
  ridgeline's order now, so ``pool-before-relu`` repeats ``eager``: a check of the noise;
- ``compile-default`` / ``compile-max-autotune``: ``torch.compile`` of the model (inductor
  fuses BN + ReLU + pool into generated kernels; the convs stay oneDNN);
- evaluation also with conv-BN folded (``ridgeline.cifar.model.fold_batchnorm``, which
  ``train()`` now uses): the only conv-BN-ReLU fusion there is on a CPU, since training-mode
  BN needs the batch statistics.

The ``eager`` child also profiles the N=512 step (torch.profiler, self CPU time by op), which
gives the shares a fusion could save at most: BatchNorm, ReLU, pool, and the weight casts
(autocast casts each weight once per forward and caches it: "weight casting once per step" is
what already happens).

Each variant runs in a fresh process (environment variables differ), one at a time, the order
rotated every round; ``foreign_cpu_s`` records other processes' CPU meanwhile. Results:
benchmarks/results/step_variants.json (CPU model and flags, threads, versions).

    flock /tmp/ridgeline-cpu.lock python benchmarks/step_variants.py --rounds 3   # ~15 min
    flock /tmp/ridgeline-cpu.lock python benchmarks/step_variants.py --ab 12      # ~3 min
    flock /tmp/ridgeline-cpu.lock python benchmarks/step_variants.py --variants eager,thp \
        --rounds 6 --out benchmarks/results/step_variants_thp.json               # ~6 min
    flock /tmp/ridgeline-cpu.lock python benchmarks/step_variants.py --variants eager,thp-torch \
        --rounds 6 --out benchmarks/results/step_variants_thp_torch.json         # ~6 min
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm
from vs_cifar10_fast import cpu_flags, cpu_name, git_commit, run_child  # benchmarks/ on sys.path

from ridgeline.cifar.model import ConvBN, ResNet9, fold_batchnorm
from ridgeline.cifar.train import evaluate, keep_freed_memory, make_optimizer
from ridgeline.presets import get_preset
from ridgeline.versions import versions

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "step_variants.json"
AB_OUT = ROOT / "benchmarks" / "results" / "step_variants_ab.json"
VARIANTS = {  # name: (environment, child options)
    "eager": ({}, {}),
    "omp-active": ({"OMP_WAIT_POLICY": "ACTIVE"}, {}),
    "omp-passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, {}),
    "omp-bind": ({"OMP_PROC_BIND": "close", "OMP_PLACES": "cores"}, {}),
    "thp": ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, {}),
    "thp-torch": ({"THP_MEM_ALLOC_ENABLE": "1"}, {}),
    "fpmath-bf16": ({}, {"fpmath_bf16": True}),
    "pool-before-relu": ({}, {"pool_first": True}),
    "relu-before-pool": ({}, {"pool_first": False}),
    "compile-default": ({}, {"compile": "default"}),
    "compile-max-autotune": ({}, {"compile": "max-autotune-no-cudagraphs"}),
}
BATCHES = {512: (4, 6), 64: (5, 20)}  # batch size: (repeats, steps per repeat)


def order_pool(model: nn.Module, pool_first: bool) -> nn.Module:
    """Put MaxPool before (or after) ReLU in every pooled ConvBN: the same function."""
    for m in model.modules():
        if isinstance(m, ConvBN) and len(m) == 4:
            pool, relu = (m[2], m[3]) if isinstance(m[2], nn.MaxPool2d) else (m[3], m[2])
            m[2], m[3] = (pool, relu) if pool_first else (relu, pool)
    return model


def build(width: float, opts: dict, hp) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = ResNet9(width).to(memory_format=torch.channels_last)
    if "pool_first" in opts:
        order_pool(model, opts["pool_first"])
    opt = make_optimizer(model, hp)
    opt.param_groups[0]["lr"] = 1e-3
    if opts.get("compile"):
        torch.compiler.reset()
        model.compile(mode=opts["compile"])
    return model, opt


def time_steps(model, opt, batch: int, amp, repeats: int, steps: int) -> list[float]:
    """Seconds per step, one mean per repeat, after 3 warm-up steps (compilation included)."""
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp is not None):
            out = model(x)
        F.cross_entropy(out.float(), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t = time.perf_counter()
    for _ in range(3):
        step()
    warm = time.perf_counter() - t
    per = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(steps):
            step()
        per.append((time.perf_counter() - t) / steps)
    return [warm] + per


def time_eval(model, amp, n: int = 10_000, repeats: int = 3) -> list[float]:
    """Seconds for one evaluation of ``n`` prepared images at batch EVAL_BATCH (first: warm)."""
    x = torch.randn(n, 3, 32, 32, dtype=amp or torch.float32).contiguous(
        memory_format=torch.channels_last)
    y = torch.randint(0, 10, (n,))
    out = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        evaluate(model, x, y, torch.device("cpu"), amp)
        out.append(time.perf_counter() - t)
    return out


def op_profile(model, opt, batch: int, amp, steps: int = 3) -> dict:
    """Self CPU time by aten op over ``steps`` steps, grouped into what a fusion could touch."""
    from torch.profiler import ProfilerActivity, profile

    time_steps(model, opt, batch, amp, 1, 1)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        time_steps(model, opt, batch, amp, 1, steps)
    ops = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
    groups = {"conv": ("convolution", "conv"), "batch_norm": ("batch_norm",),
              "relu": ("relu", "clamp_min", "threshold_backward"), "max_pool": ("max_pool",),
              "weight_cast": ("_to_copy", "copy_"), "optimizer": ("sgd",)}
    total = sum(ops.values())
    share = {g: sum(s for k, s in ops.items() if any(w in k for w in words)) / total
             for g, words in groups.items()}
    share["other"] = 1 - sum(share.values())
    top = sorted(ops.items(), key=lambda kv: -kv[1])[:15]
    return {"steps": 3, "total_self_s": total, "share": share,
            "top_ops_s": {k: round(v, 4) for k, v in top}}


def child(name: str) -> dict:
    env, opts = VARIANTS[name]
    preset = get_preset("cpu-mini")
    malloc_tuned = keep_freed_memory()  # as train() does on a CPU: no page faults per step
    if opts.get("fpmath_bf16"):
        torch.backends.mkldnn.fp32_precision = "bf16"  # oneDNN convs/matmuls in bf16
    amp = None if opts.get("fpmath_bf16") else torch.bfloat16
    res = {"variant": name, "env": env, "threads": torch.get_num_threads(),
           "malloc_tuned": malloc_tuned, "step_s": {}}
    for batch, (repeats, steps) in BATCHES.items():
        model, opt = build(preset.width, opts, preset.hparams.replace(batch_size=batch))
        res["step_s"][batch] = time_steps(model, opt, batch, amp, repeats, steps)
        if batch == 512:  # the job evaluates this model (compiled: a second shape)
            res["eval_s"] = time_eval(model, amp)
            if name == "eager":
                res["profile_n512"] = op_profile(model, opt, batch, amp)
                res["eval_folded_s"] = time_eval(fold_batchnorm(model), amp)
    res["anon_huge_kb"] = _anon_huge_kb()
    return res


def _anon_huge_kb() -> int | None:
    """This process's memory on transparent huge pages (did ``thp`` take effect?)."""
    try:
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
            if line.startswith("AnonHugePages:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def summarise(rounds: list[list[dict]]) -> dict:
    """Median over rounds of each variant's median step time, and its ratio to eager's."""
    by: dict[str, dict[str, list[float]]] = {}
    for rnd in rounds:
        for r in rnd:
            d = by.setdefault(r["variant"], {})
            for b, ts in r["step_s"].items():
                d.setdefault(f"step_{b}_ms", []).append(1e3 * statistics.median(ts[1:]))
            d.setdefault("eval_s", []).append(min(r["eval_s"][1:]))
            if "eval_folded_s" in r:
                d.setdefault("eval_folded_s", []).append(min(r["eval_folded_s"][1:]))
    med = {v: {k: statistics.median(x) for k, x in d.items()} for v, d in by.items()}
    base = med.get("eager", {})
    for m in med.values():
        for k in list(m):
            if k in base and not k.endswith("_vs_eager"):
                m[f"{k}_vs_eager"] = base[k] / m[k]  # > 1: faster than eager
    return med


def ab_pool_order(reps: int) -> dict:
    """Both pool orders, then evaluation with and without BN folded, in one process,
    alternating: the drift of a shared host between processes (±20 % over minutes here)
    cancels within each adjacent pair."""
    preset, out = get_preset("cpu-mini"), {"malloc_tuned": keep_freed_memory()}
    for batch, steps in ((512, 3), (64, 15)):
        hp = preset.hparams.replace(batch_size=batch)
        models = {o: build(preset.width, {"pool_first": o == "pool-first"}, hp)
                  for o in ("relu-first", "pool-first")}
        times = {o: [] for o in models}
        for _ in tqdm(range(reps), desc=f"A/B N={batch}"):
            for o, (m, opt) in models.items():
                times[o].append(statistics.median(time_steps(m, opt, batch, torch.bfloat16,
                                                             1, steps)[1:]))
        out[str(batch)] = {"steps_per_rep": steps, "ms": {o: [round(1e3 * t, 2) for t in ts]
                                                          for o, ts in times.items()}}
        out[str(batch)] |= _ab_ratios(times["relu-first"], times["pool-first"], "pool_first")
    model = build(preset.width, {}, preset.hparams)[0]
    model(torch.randn(64, 3, 32, 32).contiguous(memory_format=torch.channels_last))  # BN stats
    model.eval()
    times = {"bn": [], "folded": []}
    for _ in tqdm(range(reps), desc="A/B eval"):
        times["bn"].append(min(time_eval(model, torch.bfloat16, repeats=1)))
        times["folded"].append(min(time_eval(fold_batchnorm(model), torch.bfloat16, repeats=1)))
    out["eval_10k"] = {"s": {k: [round(t, 3) for t in v] for k, v in times.items()}}
    out["eval_10k"] |= _ab_ratios(times["bn"], times["folded"], "folded")
    return out


def _ab_ratios(base: list[float], new: list[float], name: str) -> dict:
    """Median of the per-rep time ratios base/new (> 1: ``name`` faster), and how often."""
    ratios = [a / b for a, b in zip(base, new, strict=True)]
    return {"ratio_median": statistics.median(ratios),
            f"reps_{name}_faster": sum(r > 1 for r in ratios), "reps": len(ratios)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="rounds over all variants")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma-separated, of: {', '.join(VARIANTS)}")
    p.add_argument("--ab", type=int, metavar="REPS",
                   help="instead: time both pool orders, then evaluation with and without BN"
                        " folded, alternately in one process, REPS times"
                        f" (writes {AB_OUT.relative_to(ROOT)})")
    p.add_argument("--out", type=Path, default=OUT, help="results file of the variant rounds")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        a.child_out.write_text(json.dumps(child(a.child)))
        return
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": git_commit(ROOT), "cpu": cpu_name(), "cpu_flags": cpu_flags(),
            "threads": torch.get_num_threads(), "versions": versions()}
    if a.ab is not None:
        if a.ab < 1:
            p.error(f"--ab must be >= 1, got {a.ab}")
        write(meta | {"pool_order": ab_pool_order(a.ab)}, AB_OUT)
        return
    names = a.variants.split(",")
    bad = [n for n in names if n not in VARIANTS]
    if bad or a.rounds < 1:
        p.error(f"unknown variant {bad[0]!r}; allowed: {', '.join(VARIANTS)}" if bad
                else f"--rounds must be >= 1, got {a.rounds}")
    out = meta | {"batches": {str(b): {"repeats": r, "steps": s}
                              for b, (r, s) in BATCHES.items()}, "rounds": []}
    with tqdm(total=a.rounds * len(names), desc="variants") as bar:
        for i in range(a.rounds):
            rnd = []
            for name in names[i % len(names):] + names[:i % len(names)]:  # rotate the order
                bar.set_postfix_str(name)
                with tempfile.TemporaryDirectory() as tmp:
                    res, log = Path(tmp) / "out.json", Path(tmp) / "log"
                    meter = run_child([sys.executable, __file__, "--child", name,
                                       "--child-out", str(res)],
                                      os.environ | VARIANTS[name][0], log, check=False)
                    ok = meter["rc"] == 0
                    rnd.append(json.loads(res.read_text()) | {"cpu_meter": meter} if ok
                               else {"variant": name, "error": log.read_text()[-2000:]})
                bar.update()
            out["rounds"].append(rnd)
            ok = [[r for r in rn if "error" not in r] for rn in out["rounds"]]
            out["summary"] = summarise(ok)
            write(out, a.out)
    print(json.dumps(out["summary"], indent=1))


def write(out: dict, path: Path) -> None:
    """Atomic: a crash mid-write keeps the previous file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    main()
