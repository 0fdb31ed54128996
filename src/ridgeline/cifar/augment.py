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


def mirrored_pair(padded: torch.Tensor,
                  memory_format: torch.memory_format = torch.channels_last) -> torch.Tensor:
    """(2, n, c, h, w): the padded images and their left-right mirror images, each image laid out
    in ``memory_format``; made once per run for :func:`epoch` (twice the padded set's memory)."""
    n, c, h, w = padded.shape
    if memory_format == torch.channels_last:
        pair = padded.new_empty((2, n, h, w, c)).permute(0, 1, 4, 2, 3)
    else:
        pair = padded.new_empty((2, n, c, h, w))
    pair[0] = padded
    pair[1] = padded.flip(-1)
    return pair


def epoch(pair: torch.Tensor, labels: torch.Tensor, gen: torch.Generator, size: int = 32,
          memory_format: torch.memory_format = torch.channels_last,
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """One epoch's augmented training images and labels, already shuffled.

    The same draws from ``gen`` in the same order as :func:`augment` followed by
    ``torch.randperm(n, generator=gen)``, and the same result: ``epoch(mirrored_pair(padded),
    labels, gen)`` equals ``(augment(padded, gen)[order], labels[order])`` exactly. Faster:

    - trick "one gather per epoch": crop, flip and shuffle are a single indexed copy from a
      window view (``as_strided``, no copy) of the padded images and their mirror images (a
      flipped crop at column dx is the mirror image's crop at column w - size - dx), written
      straight into ``memory_format``. Each step's batch is then a contiguous slice, a view:
      no per-step gather.
    - trick "cutout writes only the squares": one ``index_put_`` of the 8×8 holes instead of
      a masked pass over every pixel.
    """
    _, n, c, h, w = pair.shape
    dev = pair.device
    dy = torch.randint(0, h - size + 1, (n,), generator=gen, device=dev)  # random_crop's draws
    dx = torch.randint(0, w - size + 1, (n,), generator=gen, device=dev)
    flip = torch.rand(n, generator=gen, device=dev) < 0.5  # random_flip's
    y0 = torch.randint(0, size - CUTOUT + 1, (n, 1, 1), generator=gen, device=dev)  # cutout's
    x0 = torch.randint(0, size - CUTOUT + 1, (n, 1, 1), generator=gen, device=dev)
    order = torch.randperm(n, generator=gen, device=dev)  # train()'s shuffle
    col = torch.where(flip, w - size - dx, dx)[order]
    s2, sn, sc, sh, sw = pair.stride()
    nh, nw = h - size + 1, w - size + 1
    if memory_format == torch.channels_last:  # windows as (…, row, col, channel) in memory
        win = pair.as_strided((2, n, nh, nw, size, size, c), (s2, sn, sh, sw, sh, sw, sc))
        x = win[flip[order].long(), order, dy[order], col].permute(0, 3, 1, 2)
    else:
        win = pair.as_strided((2, n, nh, nw, c, size, size), (s2, sn, sh, sw, sc, sh, sw))
        x = win[flip[order].long(), order, dy[order], col]
    x = x.contiguous(memory_format=memory_format)  # a no-op: the gather's output is laid out so
    ar = torch.arange(CUTOUT, device=dev)
    k = torch.arange(n, device=dev)[:, None, None]
    x[k, :, y0[order] + ar[:, None], x0[order] + ar[None, :]] = 0
    return x, labels[order]
