"""Bootstrapped cross-entropy schedule, per-sample variant and IoU conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.aggregate import aggregate_logits
from model.losses import (
    PROPAGATION_WARMUP,
    S2M_WARMUP,
    BootstrappedCE,
    compute_iou,
    fusion_warmup,
    per_sample_bootstrapped_ce,
)


def batch(b: int = 2, c: int = 3, h: int = 12, w: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, c, h, w, generator=g)
    target = torch.randint(0, c, (b, h, w), generator=g)
    return logits, target


def test_plain_ce_before_warmup():
    logits, target = batch()
    ce = BootstrappedCE(100, 200)
    loss, p = ce(logits, target, 99)
    assert p == 1.0
    torch.testing.assert_close(loss, F.cross_entropy(logits, target))


def test_top_fraction_after_end_warm_matches_sort():
    logits, target = batch(3, 3, 16, 16)
    ce = BootstrappedCE(100, 200, top_p=0.15)
    loss, p = ce(logits, target, 500)
    assert p == pytest.approx(0.15)
    raw = F.cross_entropy(logits, target, reduction="none").flatten()
    k = math.floor(raw.numel() * 0.15)
    expected = torch.sort(raw, descending=True).values[:k].mean()
    torch.testing.assert_close(loss, expected)


def test_mid_warmup_matches_sort_and_schedule_is_linear():
    ce = BootstrappedCE(1000, 3000, top_p=0.15)
    assert ce.fraction(999) == 1.0
    assert ce.fraction(1000) == pytest.approx(1.0)
    assert ce.fraction(2000) == pytest.approx((1 + 0.15) / 2)
    assert ce.fraction(3000) == pytest.approx(0.15)
    assert ce.fraction(10_000) == pytest.approx(0.15)
    its = np.arange(1000, 3001, 250)
    ps = np.array([ce.fraction(int(i)) for i in its])
    np.testing.assert_allclose(np.diff(ps), np.diff(ps)[0])  # constant slope
    np.testing.assert_allclose(np.diff(ps)[0], -(1 - 0.15) * 250 / 2000)

    logits, target = batch(2, 2, 20, 20, seed=3)
    loss, p = ce(logits, target, 1500)
    raw = F.cross_entropy(logits, target, reduction="none").flatten()
    k = int(raw.numel() * p)
    torch.testing.assert_close(loss, torch.sort(raw, descending=True).values[:k].mean())
    # at start_warm bootstrapping keeps every pixel: same as plain CE
    torch.testing.assert_close(ce(logits, target, 1000)[0], F.cross_entropy(logits, target))


def test_loss_has_gradient_on_aggregation_logits():
    prob = torch.rand(2, 2, 8, 8, requires_grad=True)
    logits = aggregate_logits(prob, dim=1)
    target = torch.randint(0, 3, (2, 8, 8))
    loss, _ = BootstrappedCE(0, 10)(logits, target, 20)
    loss.backward()
    assert prob.grad is not None and torch.isfinite(prob.grad).all()


def test_per_sample_variant_uses_two_channels_without_second_object():
    logits, target = batch(2, 3, 8, 8, seed=1)
    target[1].clamp_(max=1)  # sample 1 has no second object
    selector = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    ce = BootstrappedCE(10, 20)
    for it in (0, 15, 30):
        loss, p = per_sample_bootstrapped_ce(ce, logits, target, it, selector)
        l0, _ = ce(logits[0:1], target[0:1], it)
        l1, _ = ce(logits[1:2, :2], target[1:2], it)
        torch.testing.assert_close(loss, (l0 + l1) / 2)
        assert p == ce.fraction(it)
    # without selector every sample uses all channels
    loss, _ = per_sample_bootstrapped_ce(ce, logits, target, 0)
    expected = (ce(logits[0:1], target[0:1], 0)[0] + ce(logits[1:2], target[1:2], 0)[0]) / 2
    torch.testing.assert_close(loss, expected)


def test_warmup_constants():
    assert PROPAGATION_WARMUP == (20_000, 70_000)
    assert S2M_WARMUP == (10_000, 30_000)
    assert fusion_warmup(30_000) == (6_000, 15_000)
    assert fusion_warmup(10_000) == (2_000, 5_000)
    with pytest.raises(ValueError):
        BootstrappedCE(10, 10)


def test_compute_iou_conventions():
    a = torch.zeros(2, 1, 4, 4)
    b = torch.zeros(2, 1, 4, 4)
    assert compute_iou(a, b).item() == 1.0  # both empty
    a[0, 0, :2] = 1
    assert compute_iou(a, b).item() == 0.0  # only one empty
    b[0, 0, :1] = 1
    assert compute_iou(a, b).item() == pytest.approx(0.5)
    per = compute_iou(a, b, per_sample=True)
    assert per.shape == (2,)
    assert per[0].item() == pytest.approx(0.5) and per[1].item() == 1.0
    assert compute_iou(a > 0.5, b > 0.5).item() == pytest.approx(0.5)
