"""Tiny in-memory CIFAR-shaped data for tests: no files, no network."""

from __future__ import annotations

import torch

from ridgeline.data import Cifar10


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
