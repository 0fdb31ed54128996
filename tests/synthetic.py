"""Tiny in-memory CIFAR-shaped data for tests: no files, no network."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ridgeline.cifar.data import Cifar10


def fake_cifar(n_train: int = 320, n_test: int = 100, seed: int = 0) -> Cifar10:
    """Random images whose class is written into a bright patch, so a net can learn something."""
    g = torch.Generator().manual_seed(seed)

    def split(n: int):
        labels = torch.arange(n) % 10
        images = torch.randint(0, 128, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
        for c in range(10):
            images[labels == c, c % 3, 4 * c // 3:4 * c // 3 + 8, 8:24] = 255
        return images, labels

    return Cifar10(*split(n_train), *split(n_test))


def call_log(prefix: str) -> Path | None:
    """For fake objectives that count their calls: the file named by $PREFIX_LOG (None when
    unset). Raises KeyboardInterrupt instead of running call number $PREFIX_STOP_AT, counted
    as the lines already in the file, to simulate a kill mid-run."""
    log = os.environ.get(f"{prefix}_LOG")
    path = Path(log) if log else None
    done = path.read_text().count("\n") if path and path.is_file() else 0
    if done + 1 == int(os.environ.get(f"{prefix}_STOP_AT", "0")):
        raise KeyboardInterrupt
    return path


def log_call(path: Path | None, *values) -> None:
    """Append one finished call (its values' reprs) to ``path``, if there is one."""
    if path is not None:
        with open(path, "a") as f:
            f.write(" ".join(map(repr, values)) + "\n")
