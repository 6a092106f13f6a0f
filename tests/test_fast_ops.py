"""Exact faster forms of library operators: the stem's max-pool and the hard labels."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("size", [(16, 16), (17, 31), (1, 1), (2, 3), (60, 108)])
def test_stem_max_pool_equals_library_operator(dtype, size):
    """The stem's max-pool without autograd gives the library operator's values exactly, ties
    (ReLU zeros) and odd sizes included; with autograd it is the library operator."""
    from model.backbone import StemMaxPool

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, *size, generator=gen).clamp_min(0).to(dtype)  # many tied zeros
    x[0, 0, -1, -1] = float("-inf")  # a window of -inf at the border stays -inf
    x[1, 2, 0, -1] = float("nan")  # and a NaN reaches the windows that hold it
    pool = StemMaxPool()
    ref = torch.nn.functional.max_pool2d(x, 3, 2, 1)
    with torch.no_grad():
        assert torch.equal(pool(x).nan_to_num(), ref.nan_to_num())
        assert torch.equal(pool(x).isnan(), ref.isnan())
    with torch.inference_mode():
        assert torch.equal(pool(x).nan_to_num(), ref.nan_to_num())
    assert torch.equal(pool(x.contiguous(memory_format=torch.channels_last)).nan_to_num(),
                       ref.nan_to_num())
    x = x.nan_to_num(nan=0.0, neginf=0.0)  # the gradient check needs finite values
    xg = x.double().requires_grad_()
    pool(xg).sum().backward()
    xr = x.double().requires_grad_()
    torch.nn.functional.max_pool2d(xr, 3, 2, 1).sum().backward()
    assert torch.equal(xg.grad, xr.grad)  # one input per window gets the gradient


@pytest.mark.parametrize("channels", [1, 2, 3, 9])
def test_argmax_labels_equals_argmax(channels):
    """uint8 labels equal torch.argmax over the first axis, the first maximum on ties."""
    from util.tensor_util import argmax_labels

    gen = torch.Generator().manual_seed(channels)
    p = torch.rand(channels, 33, 47, generator=gen)
    p[:, :10] = (p[:, :10] * 4).round() / 4  # many ties
    got = argmax_labels(p)
    assert got.dtype == torch.uint8
    assert torch.equal(got.long(), torch.argmax(p, dim=0))
