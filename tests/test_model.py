import copy

import pytest
import torch

from ridgeline.cifar.model import (
    ConvBN,
    ResNet9,
    count_params,
    flops_per_image,
    fold_batchnorm,
    scale_invariant_convs,
)


def test_width_1_has_paper_parameter_count():
    assert count_params(ResNet9(1.0)) == pytest.approx(6.57e6, rel=0.005)


def test_layout_is_pages_resnet9():
    m = ResNet9(1.0)
    widths = [conv.out_channels for _, conv in scale_invariant_convs(m)]
    assert widths == [64, 128, 128, 128, 256, 512, 512, 512]
    assert m.linear.bias is None and m.logit_scale == 0.125
    assert isinstance(m.pool, torch.nn.AdaptiveMaxPool2d)


def test_forward_shape_and_logit_scale():
    m = ResNet9(0.125).eval()
    x = torch.randn(4, 3, 32, 32)
    out = m(x)
    assert out.shape == (4, 10)
    m.logit_scale = 1.0
    torch.testing.assert_close(m(x), out * 8)


def test_flop_count_matches_paper_budget():
    # 50k images x 24 epochs x (forward + 2x backward) ~= 2.7 PFLOP, as the GPU issue states.
    total = 50_000 * 24 * 3 * flops_per_image(1.0)
    assert 2.6e15 < total < 2.8e15


def _relu_then_pool(m: ResNet9) -> ResNet9:
    """The same net in Page's order (conv → BN → ReLU → pool) and with the same weights."""
    for block in m.modules():
        if isinstance(block, ConvBN) and isinstance(block[2], torch.nn.MaxPool2d):
            block[2], block[3] = block[3], block[2]
    return m


def test_relu_after_pool_is_pages_function_and_gradient():
    torch.manual_seed(0)
    ours = ResNet9(0.125)
    assert [type(b[2]).__name__ for b in (ours.layer1[0], ours.layer2)] == ["MaxPool2d"] * 2
    pages = _relu_then_pool(copy.deepcopy(ours))
    assert isinstance(pages.layer1[0][2], torch.nn.ReLU)
    x = torch.randn(8, 3, 32, 32)
    y = torch.randint(0, 10, (8,))
    for m in (ours, pages):
        torch.nn.functional.cross_entropy(m(x) * 100, y).backward()  # ×100: large gradients
    torch.testing.assert_close(ours(x), pages(x), rtol=0, atol=0)
    for a, b in zip(ours.parameters(), pages.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("fmt", [torch.channels_last, torch.contiguous_format])
def test_folded_batchnorm_predicts_like_eval_mode(fmt):
    torch.manual_seed(1)
    m = ResNet9(0.125).to(memory_format=fmt)
    with torch.no_grad():  # non-trivial running statistics and affine parameters
        m(torch.randn(64, 3, 32, 32) * 3 + 1)
        for bn in (b for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)):
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.uniform_(-0.5, 0.5)
    folded = fold_batchnorm(m)
    assert m.training and not folded.training  # the original is left as it was
    assert not any(isinstance(b, torch.nn.BatchNorm2d) for b in folded.modules())
    assert folded.prep[0].weight.is_contiguous(memory_format=fmt)
    x = torch.randn(32, 3, 32, 32).to(memory_format=fmt)
    with torch.no_grad():
        expected = m.eval()(x)
        torch.testing.assert_close(folded(x), expected, rtol=1e-4, atol=1e-5)
    assert (folded(x).argmax(1) == expected.argmax(1)).all()


def test_relu_after_pool_trains_bit_identically_in_bf16():
    """Under bf16 autocast too: max and ReLU are exact, so SGD steps give the very same weights."""
    torch.manual_seed(2)
    ours = ResNet9(0.125).to(memory_format=torch.channels_last)
    pages = _relu_then_pool(copy.deepcopy(ours))
    start = ours.prep[0].weight.detach().clone()
    x = torch.randn(16, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (16,))
    for m in (ours, pages):
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                              weight_decay=5e-4)
        for _ in range(3):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(m(x).float(), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    for a, b in zip(ours.parameters(), pages.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(ours.prep[0].weight, start)  # the steps moved the weights
