import torch

from ridgeline.cifar import augment


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_crops_are_true_subwindows_of_the_padded_image():
    n = 64
    images = torch.arange(n * 3 * 32 * 32, dtype=torch.float64).reshape(n, 3, 32, 32)
    padded = augment.pad(images)
    assert padded.shape == (n, 3, 40, 40)
    crops = augment.random_crop(padded, 32, _gen())
    offsets = set()
    for i in range(n):
        # The padded image's top-left values are unique per position: locate the crop's origin.
        hits = (padded[i, 0] == crops[i, 0, 0, 0]).nonzero()
        found = [(y, x) for y, x in hits.tolist() if y <= 8 and x <= 8
                 and torch.equal(crops[i], padded[i, :, y:y + 32, x:x + 32])]
        assert found, f"crop {i} is not a window of its padded image"
        offsets.add(found[0])
    assert len(offsets) > 20  # offsets really vary across the batch


def test_reflect_padding_mirrors_the_border():
    img = torch.arange(32.0).repeat(1, 3, 32, 1)  # value = column index
    padded = augment.pad(img)
    assert padded[0, 0, 10, :4].tolist() == [4.0, 3.0, 2.0, 1.0]


def test_flip_rate_is_one_half():
    n = 20_000
    images = torch.zeros(n, 1, 1, 2)
    images[..., 1] = 1.0  # [0, 1] flipped is [1, 0]
    flipped = augment.random_flip(images, _gen())
    rate = (flipped[:, 0, 0, 0] == 1).double().mean().item()
    assert abs(rate - 0.5) < 4 * (0.25 / n) ** 0.5
    assert torch.equal(flipped.sum(-1), images.sum(-1))  # flips only permute pixels


def test_cutout_zeroes_one_8x8_square_inside_the_image():
    images = torch.ones(500, 3, 32, 32)
    out = augment.cutout(images, _gen())
    holes = out[:, 0] == 0
    assert (holes.sum((1, 2)) == 64).all()
    assert torch.equal(out[:, 0] == 0, out[:, 2] == 0)  # same square in every channel
    rows, cols = holes.any(2), holes.any(1)
    assert (rows.sum(1) == 8).all() and (cols.sum(1) == 8).all()  # a square, not scattered


def test_draws_are_reproducible_from_the_seed_and_new_each_epoch():
    padded = augment.pad(torch.randn(16, 3, 32, 32))
    g = _gen(7)
    epoch1, epoch2 = augment.augment(padded, g), augment.augment(padded, g)
    assert not torch.equal(epoch1, epoch2)
    g = _gen(7)
    assert torch.equal(augment.augment(padded, g), epoch1)


def test_epoch_is_augment_then_shuffle_in_one_gather_bit_for_bit():
    # augment.epoch (train()'s fast path) makes the same draws in the same order as augment()
    # followed by the loop's old torch.randperm, and returns exactly those images and labels.
    n = 300
    padded = augment.pad(torch.randn(n, 3, 32, 32)).to(torch.bfloat16)
    labels = torch.randint(0, 10, (n,), generator=_gen(1))
    for fmt in (torch.channels_last, torch.contiguous_format):
        g_old, g_new = _gen(5), _gen(5)
        old = augment.augment(padded, g_old)
        order = torch.randperm(n, generator=g_old)
        x, y = augment.epoch(augment.mirrored_pair(padded, fmt), labels, g_new, memory_format=fmt)
        assert torch.equal(x, old[order]) and torch.equal(y, labels[order])
        assert x.is_contiguous(memory_format=fmt) and x.dtype == torch.bfloat16
        assert torch.equal(g_old.get_state(), g_new.get_state())  # the next epoch's draws too
        batch = x[64:128]  # what the loop trains on: a view, already in the model's layout
        assert batch.is_contiguous(memory_format=fmt) and batch.data_ptr() != x.data_ptr()
