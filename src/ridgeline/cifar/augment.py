"""Batched augmentation on the training device: reflect-pad 4 + random crop, flip, 8×8 cutout.

Everything is a whole-batch tensor op driven by one ``torch.Generator``, so an epoch's draws are
reproducible from (seed, epoch) and cost a few vectorised passes instead of a Python loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PAD = 4
CUTOUT = 8


def pad(images: torch.Tensor, pad: int = PAD) -> torch.Tensor:
    """Reflect-pad once per run; crops of the padded images are then drawn each epoch."""
    return F.pad(images, (pad, pad, pad, pad), mode="reflect")


def random_crop(padded: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """An independent size×size window of each padded image (a gather, no loop)."""
    n, _, h, w = padded.shape
    dev = padded.device
    dy = torch.randint(0, h - size + 1, (n,), generator=gen, device=dev)
    dx = torch.randint(0, w - size + 1, (n,), generator=gen, device=dev)
    ar = torch.arange(size, device=dev)
    rows = (dy[:, None] + ar)[:, None, :, None]  # n,1,size,1
    cols = (dx[:, None] + ar)[:, None, None, :]  # n,1,1,size
    idx = torch.arange(n, device=dev)[:, None, None, None]
    ch = torch.arange(padded.shape[1], device=dev)[None, :, None, None]
    return padded[idx, ch, rows, cols]


def random_flip(images: torch.Tensor, gen: torch.Generator, p: float = 0.5) -> torch.Tensor:
    flip = torch.rand(images.shape[0], generator=gen, device=images.device) < p
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def cutout(images: torch.Tensor, gen: torch.Generator, size: int = CUTOUT) -> torch.Tensor:
    """Zero one size×size square per image, placed wholly inside it (as in cifar10-fast)."""
    n, _, h, w = images.shape
    dev = images.device
    y0 = torch.randint(0, h - size + 1, (n, 1, 1), generator=gen, device=dev)
    x0 = torch.randint(0, w - size + 1, (n, 1, 1), generator=gen, device=dev)
    ys = torch.arange(h, device=dev)[None, :, None]
    xs = torch.arange(w, device=dev)[None, None, :]
    hole = (ys >= y0) & (ys < y0 + size) & (xs >= x0) & (xs < x0 + size)  # n,h,w
    return images.masked_fill(hole[:, None], 0)


def augment(padded: torch.Tensor, gen: torch.Generator, size: int = 32) -> torch.Tensor:
    """One epoch's augmented copy of the (already padded) training images."""
    return cutout(random_flip(random_crop(padded, size, gen), gen), gen)
