"""FusionNet's blocked-layout inference path gives the same bits as the plain layout; under
autocast, inference runs channels-last one object at a time."""

from __future__ import annotations

import pytest
import torch

from model.fusion import (
    FusionConfig,
    FusionNet,
    _autocast_inference_applies,
    _blocked_layout_applies,
    _torch_picks_onednn,
)

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(),
                                reason="oneDNN is not available in this torch build")


def _inputs(k: int, h: int = 40, w: int = 56, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(1, 3, h, w, generator=g).expand(k, -1, -1, -1)
    prev = torch.rand(k, 1, h, w, generator=g)
    curr = torch.rand(k, 1, h, w, generator=g)
    attn = torch.rand(k, 2, h, w, generator=g)
    dist = torch.tensor([[0.25, 0.75]]).expand(k, 2)
    return image, prev, curr, attn, dist


def _net(width: int = 32) -> FusionNet:
    torch.manual_seed(3)
    return FusionNet(FusionConfig(width=width)).eval()


@pytest.mark.parametrize("size", [(40, 56), (64, 80)])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("width", [8, 32])
def test_blocked_layout_is_bit_identical(k, width, size):
    """Both sizes: at 40 x 56 torch computes a single image's first layer with its own im2col
    kernel, so the blocked path must step aside there to stay exact."""
    net = _net(width)
    args = _inputs(k, *size)
    with torch.inference_mode():
        net.blocked_layout = False
        plain = net(*args)
        net.blocked_layout = True
        blocked = net(*args)
    assert blocked.layout == torch.strided and blocked.shape == (k, 1, *size)
    assert torch.equal(plain, blocked)
    if _torch_picks_onednn(net._convs(), 1, *size):
        # one object at a time gives the same bits too (the per-object loop of the original)
        with torch.no_grad():
            looped = torch.cat([net(*(a[i:i + 1] for a in args)) for i in range(k)])
        assert torch.equal(looped, blocked)


def test_torch_backend_probe():
    net = _net(8)
    assert _torch_picks_onednn(net._convs(), 3, 64, 80)
    # the probe asks torch: it must agree with what torch reports for a real input
    conv = net.conv1[0]
    x = torch.rand(1, 9, 40, 56)
    backend = torch._C._select_conv_backend(x, conv.weight, conv.bias, [1, 1], [1, 1], [1, 1],
                                            False, [0, 0], 1, None)
    assert _torch_picks_onednn([conv], 1, 40, 56) == (backend == torch._C._ConvBackend.Mkldnn)


def test_blocked_layout_only_where_it_applies():
    net = _net(8)
    x = torch.rand(1, 9, 8, 8)
    w = net.final_conv.weight
    with torch.no_grad():
        assert _blocked_layout_applies(x, w)
        assert not _blocked_layout_applies(x.double(), w)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not _blocked_layout_applies(x, w)
    # training: the weights need gradients, so the plain layout (autograd) is used
    assert not _blocked_layout_applies(x, w)


def test_training_backward_unchanged_by_the_option():
    net = _net(8).train()
    args = _inputs(2, 16, 24)
    grads = []
    for flag in (False, True):
        net.blocked_layout = flag
        net.zero_grad()
        net(*args).sum().backward()
        grads.append(net.conv1[0].weight.grad.clone())
    assert torch.equal(grads[0], grads[1]) and grads[0].abs().sum() > 0


@pytest.mark.parametrize("k", [1, 3])
def test_autocast_inference_runs_channels_last_per_object(k):
    """Under CPU bf16 autocast, inference runs channels-last one object at a time: the same
    logits as the plain NCHW autocast computation up to bf16 rounding, each object's own (a
    batch of one object equals the object's row), contiguous output; training and fp32 are
    not affected."""
    net = _net(16)
    args = _inputs(k, 24, 40)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert _autocast_inference_applies(args[0], net.final_conv.weight)
        net.channels_last_autocast = False
        plain = net(*args).float()
        net.channels_last_autocast = True
        fast = net(*args)
        single = net(*(a[-1:] for a in args))
    assert fast.is_contiguous() and fast.shape == (k, 1, 24, 40)
    torch.testing.assert_close(fast.float(), plain, atol=0.05, rtol=0.05)
    assert torch.equal(fast[-1:], single)
    w = net.final_conv.weight
    assert not _autocast_inference_applies(args[0], w)  # no autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not _autocast_inference_applies(args[0], w)  # training: weights need grads
