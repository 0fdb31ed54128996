"""A second real lookup table: a small conv-BN-ReLU CNN (not ResNet-9) on a CIFAR-10 subset.

Network (defined here, not in src): three blocks conv3x3-BN-ReLU of widths 16/32/64, a 2x2
max-pool after the first two, global average pool, linear 64→10. Data: a stratified subset of
the CIFAR-10 training set (TRAIN images) and a stratified 2,000-image test subset, both
2x2-average-pooled to 16x16 pixels (4x cheaper runs); augmentation reflect-pad 2 + random
16x16 crop + flip (ridgeline.cifar.augment). Training: SGD Nesterov, coupled
weight decay on every parameter, mean cross-entropy, lr linear 0 → λ over the first epoch then
→ 0 at the end (ridgeline.cifar.train.lr_schedule), fp32, EPOCHS epochs. Test accuracy is
measured after every epoch (so pruners can be replayed on the table) and train loss per epoch.

Grid: λ × (1−ρ) × α, each axis a run of powers of 2 times Page's bad start (λ=0.001, ρ=0.5,
α=0.01), 2 seeds per cell. Results are written after every run to
benchmarks/results/bn_table.json (atomic replace); a rerun skips the runs already there, and
``--max-seconds`` ends a chunk cleanly so long jobs can be split:

    flock /tmp/ridgeline-cpu.lock python benchmarks/bn_table.py --max-seconds 420   # repeat
    python benchmarks/bn_table.py --probe 0.1 0.9 5e-4     # time one run at a point
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ridgeline.cifar import augment
from ridgeline.cifar.data import Cifar10, load_cifar10, stratified_subset
from ridgeline.cifar.train import lr_schedule, normalise
from ridgeline.hparams import HParams
from ridgeline.versions import versions

ROOT = Path(__file__).parents[1]
OUT = ROOT / "benchmarks" / "results" / "bn_table.json"
TRAIN, TEST, EPOCHS, BATCH, THREADS = 3000, 2000, 4, 100, 2
SIZE, PAD = 16, 2  # images 2x2 average-pooled to 16x16; crop padding
WIDTHS = (16, 32, 64)
# log2 exponents k on each axis, value = bad-start value * 2**k (the bad start is k = 0)
LR_K = range(0, 10)          # 0.001 .. 0.512
OMR_K = range(0, -5, -1)     # 1-ρ: 0.5 .. 0.03125
WD_K = range(0, -7, -1)      # 0.01 .. 1.5625e-4
BAD = {"lr": 1e-3, "momentum": 0.5, "weight_decay": 1e-2}
SEEDS = (0, 1)


class SmallBNNet(nn.Module):
    def __init__(self, widths=WIDTHS):
        super().__init__()
        layers, c_in = [], 3
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(c_in, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            c_in = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, 10)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def small_data(root: str | None = None) -> Cifar10:
    data = load_cifar10(root)
    tr = stratified_subset(data.train_labels, TRAIN, seed=0)
    te = stratified_subset(data.test_labels, TEST, seed=0)
    return Cifar10(downsample(data.train_images[tr]), data.train_labels[tr],
                   downsample(data.test_images[te]), data.test_labels[te])


def downsample(images: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW 32x32 → 16x16 by 2x2 averaging (rounded), so a run costs ~4x less."""
    return F.avg_pool2d(images.float(), 32 // SIZE).round().to(torch.uint8)


@torch.no_grad()
def accuracy(model, images, labels) -> float:
    model.eval()
    correct = sum((model(normalise(images[i:i + 500], torch.float32)).argmax(1)
                   == labels[i:i + 500]).sum().item() for i in range(0, len(images), 500))
    model.train()
    return correct / len(images)


def run(data: Cifar10, lr: float, momentum: float, weight_decay: float, seed: int,
        epochs: int = EPOCHS, on_epoch=None) -> dict:
    """One training run; ``on_epoch(epoch, test_acc, train_loss)`` may raise to stop it."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = SmallBNNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=momentum,
                          nesterov=momentum > 0, weight_decay=weight_decay)
    hp = HParams(lr=lr, momentum=momentum, weight_decay=weight_decay, epochs=epochs,
                 warmup_epochs=1, batch_size=BATCH)
    n = len(data.train_labels)
    spe = n // BATCH
    lr_at = lr_schedule(hp, spe)
    padded = augment.pad(normalise(data.train_images, torch.float32), PAD)
    test_x = data.test_images
    accs, losses, step = [], [], 0
    for epoch in range(epochs):
        x_all = augment.random_flip(augment.random_crop(padded, SIZE, gen), gen)
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for b in range(spe):
            idx = order[b * BATCH:(b + 1) * BATCH]
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            loss = F.cross_entropy(model(x_all[idx]), data.train_labels[idx])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            total += loss.item()
            step += 1
            if not math.isfinite(total):
                break
        if not math.isfinite(total):
            losses.append(None)
            accs.append(None)
            break
        losses.append(total / spe)
        accs.append(accuracy(model, test_x, data.test_labels))
        if on_epoch is not None:
            on_epoch(epoch + 1, accs[-1], losses[-1])
    diverged = accs[-1] is None
    return {"acc": None if diverged else accs[-1], "epochs": len(accs), "curve": accs,
            "loss": losses, "seconds": time.perf_counter() - t0}


def axes() -> dict:
    return {"lr": [BAD["lr"] * 2.0 ** k for k in LR_K],
            "one_minus_momentum": [(1 - BAD["momentum"]) * 2.0 ** k for k in OMR_K],
            "weight_decay": [BAD["weight_decay"] * 2.0 ** k for k in WD_K]}


def key(i: int, j: int, k: int) -> str:
    return f"{i},{j},{k}"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def seed_std(cells: dict) -> float | None:
    """Pooled seed-to-seed std over cells with two finished seeds: sqrt(mean((a-b)^2 / 2))."""
    d = [(c["acc"][0] - c["acc"][1]) ** 2 / 2 for c in cells.values()
         if len(c["acc"]) == 2 and None not in c["acc"]]
    return math.sqrt(statistics.fmean(d)) if d else None


def save(doc: dict, path: Path) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)


def describe() -> dict:
    return {"network": f"3 x (conv3x3-BN-ReLU) widths {list(WIDTHS)}, maxpool2 after blocks 1-2, "
                       "global avg pool, linear 64->10 (benchmarks/bn_table.py SmallBNNet)",
            "data": f"CIFAR-10 stratified subsets: {TRAIN} train (seed 0), {TEST} test (seed 0), "
                    f"2x2 average-pooled to {SIZE}x{SIZE}; augment reflect-pad {PAD} + crop + flip",
            "training": f"{EPOCHS} epochs, batch {BATCH}, SGD Nesterov, coupled weight decay on "
                        "all params, mean cross-entropy, lr linear 0->λ over epoch 1 then ->0, "
                        "fp32; diverged = non-finite loss (acc None)",
            "epochs": EPOCHS, "batch_size": BATCH, "train_size": TRAIN, "test_size": TEST,
            "seeds": list(SEEDS), "bad_start": BAD}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=os.environ.get("RIDGELINE_DATA", "/work/shared/data"))
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--max-seconds", type=float, default=420.0)
    p.add_argument("--threads", type=int, default=THREADS)
    p.add_argument("--probe", type=float, nargs=3, metavar=("LR", "MOMENTUM", "WD"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    data = small_data(a.data)
    if a.probe:
        for seed in SEEDS:
            r = run(data, *a.probe, seed=seed)
            print(f"lr={a.probe[0]} rho={a.probe[1]} wd={a.probe[2]} seed={seed}: "
                  f"acc={r['acc']} curve={r['curve']} {r['seconds']:.2f}s")
        return 0
    doc = json.loads(a.out.read_text()) if a.out.is_file() else {"cells": {}, "timings": {}}
    ax = axes()
    if doc.get("axes", ax) != ax or doc.get("description", describe()) != describe():
        print(f"{a.out} holds a different grid or setup: move it away first", file=sys.stderr)
        return 2
    doc.update(axes=ax, description=describe(), cpu=cpu_model(), threads=a.threads,
               versions=versions(), axis_exponents={"lr": list(LR_K), "omr": list(OMR_K),
                                                    "wd": list(WD_K)})
    cells = doc["cells"]
    t_chunk, ran = time.perf_counter(), 0
    # cells nearest the bad start / the low-u corner first is no better than any order; walk
    # seeds outermost so a partial table already has one seed everywhere
    for seed in SEEDS:
        for i, lr in enumerate(ax["lr"]):
            for j, omr in enumerate(ax["one_minus_momentum"]):
                for k, wd in enumerate(ax["weight_decay"]):
                    c = cells.setdefault(key(i, j, k), {"lr": lr, "momentum": 1 - omr,
                                                        "weight_decay": wd, "acc": [],
                                                        "epochs": [], "curve": [], "loss": [],
                                                        "seconds": []})
                    if len(c["acc"]) > seed:
                        continue
                    if time.perf_counter() - t_chunk > a.max_seconds:
                        print(f"chunk ended after {ran} runs; rerun to continue")
                        return 0
                    r = run(data, lr, 1 - omr, wd, seed)
                    for f in ("acc", "epochs", "curve", "loss", "seconds"):
                        c[f].append(r[f])
                    ran += 1
                    secs = [s for cc in cells.values() for s in cc["seconds"]]
                    doc["timings"] = {"runs": len(secs), "total_seconds": sum(secs),
                                      "mean_run_seconds": statistics.fmean(secs)}
                    doc["seed_std"] = seed_std(cells)
                    doc["date"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
                    doc["complete"] = all(len(cc["acc"]) == len(SEEDS) for cc in cells.values()) \
                        and len(cells) == len(LR_K) * len(OMR_K) * len(WD_K)
                    save(doc, a.out)
    print(f"table complete: {len(cells)} cells, seed std {doc.get('seed_std')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
