"""Paired bootstrap intervals between ablation rows (util/stats.py)."""

from __future__ import annotations

import numpy as np
import pytest

from util.stats import paired_bootstrap


def rows(values, counts=None):
    counts = counts or [1] * len(values)
    return {f"s{i}": (float(v) * c, c) for i, (v, c) in enumerate(zip(values, counts, strict=True))}


def test_identical_rows_give_zero_and_an_interval_at_zero():
    a = rows([0.2, 0.5, 0.9, 0.4])
    d = paired_bootstrap(a, a)
    assert d.difference == 0 and d.low == 0 and d.high == 0 and d.contains_zero
    assert "contains 0" in d.describe()


def test_a_constant_shift_is_exact_and_excludes_zero():
    base = [0.2, 0.5, 0.9, 0.4, 0.3]
    d = paired_bootstrap(rows([v + 0.1 for v in base]), rows(base))
    assert d.difference == pytest.approx(0.1)
    assert d.low == pytest.approx(0.1) and d.high == pytest.approx(0.1)
    assert not d.contains_zero and "a is higher" in d.describe()


def test_noisy_difference_interval_matches_a_direct_resampling():
    rng = np.random.default_rng(3)
    b = rng.uniform(0.3, 0.8, 12)
    a = b + rng.normal(0.02, 0.05, 12)
    counts = list(rng.integers(1, 4, 12))
    ra, rb = rows(a, counts), rows(b, counts)
    d = paired_bootstrap(ra, rb, resamples=4000, seed=7)
    w = np.array(counts, float)
    assert d.difference == pytest.approx((a * w).sum() / w.sum() - (b * w).sum() / w.sum())
    # the same resampling written out directly
    idx = np.random.default_rng(7).integers(0, 12, size=(4000, 12))
    names = sorted(ra)
    sa = np.array([ra[n][0] for n in names]); sb = np.array([rb[n][0] for n in names])
    c = np.array([ra[n][1] for n in names], float)
    boot = sa[idx].sum(1) / c[idx].sum(1) - sb[idx].sum(1) / c[idx].sum(1)
    assert (d.low, d.high) == pytest.approx(tuple(np.quantile(boot, [0.025, 0.975])))
    assert d.low < d.difference < d.high


def test_unpaired_rows_are_refused():
    with pytest.raises(ValueError, match="not paired"):
        paired_bootstrap(rows([0.1, 0.2]), {"s0": (0.1, 1)})
    with pytest.raises(ValueError, match="no sequence"):
        paired_bootstrap({}, {})
