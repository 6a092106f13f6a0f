"""Confidence intervals for differences between ablation rows.

The unit of resampling is the sequence: rows of an ablation are run on the same sequences (and
the same robot scribbles), so their per-sequence scores are paired, and the objects and frames
of one sequence are not independent of each other. A row's score is the mean over all its
(sequence, scribble, object) entries, as the official summary averages them; the bootstrap
resamples sequences with replacement and recomputes that weighted mean for both rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairedDifference:
    """``mean(a) - mean(b)`` over sequences with a percentile bootstrap interval."""

    difference: float
    low: float
    high: float
    sequences: int
    resamples: int

    @property
    def contains_zero(self) -> bool:
        return self.low <= 0.0 <= self.high

    def describe(self) -> str:
        verdict = "the interval contains 0: no difference shown" if self.contains_zero else (
            "a is higher" if self.difference > 0 else "b is higher")
        return (f"{self.difference:+.3f} [{self.low:+.3f}, {self.high:+.3f}] "
                f"({self.sequences} sequences; {verdict})")


def paired_bootstrap(a: Mapping[str, tuple[float, int]], b: Mapping[str, tuple[float, int]],
                     resamples: int = 10000, seed: int = 0, level: float = 0.95) -> PairedDifference:
    """Paired bootstrap interval of ``score(a) - score(b)``.

    a, b: sequence -> (sum of the entry scores, number of entries) for two rows run on the same
    sequences; a row's score is sum / count over the chosen sequences. Sequences present in only
    one row are an error (the rows would not be paired).
    """
    if set(a) != set(b):
        only = sorted(set(a) ^ set(b))
        raise ValueError(f"rows are not paired: sequences {only} are in one row only")
    if not a:
        raise ValueError("no sequence to compare")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    names = sorted(a)
    sa = np.array([a[n][0] for n in names], dtype=np.float64)
    ca = np.array([a[n][1] for n in names], dtype=np.float64)
    sb = np.array([b[n][0] for n in names], dtype=np.float64)
    cb = np.array([b[n][1] for n in names], dtype=np.float64)
    diff = sa.sum() / ca.sum() - sb.sum() / cb.sum()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(names), size=(resamples, len(names)))
    boot = sa[idx].sum(1) / ca[idx].sum(1) - sb[idx].sum(1) / cb[idx].sum(1)
    tail = (1 - level) / 2
    low, high = np.quantile(boot, [tail, 1 - tail])
    return PairedDifference(float(diff), float(low), float(high), len(names), resamples)
