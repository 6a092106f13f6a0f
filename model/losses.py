"""Training losses: bootstrapped cross-entropy with warm-up (REFERENCE.md f.1) and IoU bookkeeping.

Bootstrapped CE: before ``start_warm`` iterations it is the ordinary mean pixel cross-entropy.
From ``start_warm`` on, only the hardest fraction ``p`` of the pixels count: the per-pixel losses
are computed, the largest ``floor(N p)`` of them (N = all pixels of the batch) are averaged, and
``p`` falls linearly from 1 at ``start_warm`` to ``top_p`` at ``end_warm``::

    p = top_p + (1 - top_p) * (end_warm - it) / (end_warm - start_warm)   (start <= it <= end)
    p = top_p                                                              (it > end_warm)

Warm-up windows of the three modules (iterations counted from 0 in every stage):

* propagation: 20K -> 70K (:data:`PROPAGATION_WARMUP`), applied per sample;
* S2M: 10K -> 30K (:data:`S2M_WARMUP`), applied once over the whole batch;
* fusion: 0.2 x iterations -> 0.5 x iterations (:func:`fusion_warmup`; stage 0 6K -> 15K,
  stage 1 2K -> 5K), applied per sample.

The logits fed to the loss are the aggregation logits of ``model.aggregate.aggregate_logits``
(log-odds of the clamped sigmoid probabilities, background channel first).
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn
import torch.nn.functional as F

logger = logging.getLogger(__name__)

__all__ = [
    "TOP_P",
    "PROPAGATION_WARMUP",
    "S2M_WARMUP",
    "fusion_warmup",
    "BootstrappedCE",
    "per_sample_bootstrapped_ce",
    "compute_iou",
]

TOP_P = 0.15
#: (start_warm, end_warm) of the propagation module.
PROPAGATION_WARMUP: tuple[int, int] = (20_000, 70_000)
#: (start_warm, end_warm) of S2M.
S2M_WARMUP: tuple[int, int] = (10_000, 30_000)


def fusion_warmup(iterations: int) -> tuple[int, int]:
    """(start_warm, end_warm) of the fusion module: 20 % and 50 % of the stage's iterations."""
    return int(0.2 * iterations), int(0.5 * iterations)


class BootstrappedCE(nn.Module):
    """Cross-entropy over the hardest pixels, with a linear warm-up of the kept fraction.

    Args:
        start_warm: first iteration that uses bootstrapping (plain CE before).
        end_warm: iteration at which the kept fraction reaches ``top_p``.
        top_p: final fraction of pixels kept (0.15).
    """

    def __init__(self, start_warm: int, end_warm: int, top_p: float = TOP_P):
        super().__init__()
        if end_warm <= start_warm:
            raise ValueError(f"end_warm ({end_warm}) must be after start_warm ({start_warm})")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        self.start_warm = int(start_warm)
        self.end_warm = int(end_warm)
        self.top_p = float(top_p)

    def fraction(self, it: int) -> float:
        """Kept fraction p at iteration ``it`` (1.0 before ``start_warm``)."""
        if it < self.start_warm:
            return 1.0
        if it > self.end_warm:
            return self.top_p
        span = self.end_warm - self.start_warm
        return self.top_p + (1 - self.top_p) * (self.end_warm - it) / span

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, it: int
    ) -> tuple[torch.Tensor, float]:
        """logits: B x C x H x W; target: B x H x W int64 in [0, C). Returns (loss, p)."""
        if it < self.start_warm:
            return F.cross_entropy(logits, target), 1.0
        raw = F.cross_entropy(logits, target, reduction="none").reshape(-1)
        p = self.fraction(it)
        num_hardest = max(int(raw.numel() * p), 1)
        hardest, _ = torch.topk(raw, num_hardest, sorted=False)
        return hardest.mean(), p

    def extra_repr(self) -> str:
        return f"start_warm={self.start_warm}, end_warm={self.end_warm}, top_p={self.top_p}"


def per_sample_bootstrapped_ce(
    criterion: BootstrappedCE,
    logits: torch.Tensor,
    target: torch.Tensor,
    it: int,
    selector: torch.Tensor | None = None,
) -> tuple[torch.Tensor, float]:
    """Bootstrapped CE applied to each sample separately and averaged over the batch.

    Used by propagation and fusion (REFERENCE.md f.1). With a ``selector`` (B x 2, second column > 0.5
    when the sample has a second object), samples without a second object are scored on the
    first two logit channels only (background, object 1).

    Args:
        logits: B x C x H x W aggregation logits (C = 3 for two objects).
        target: B x H x W int64 class map.
        selector: optional B x 2 (or B x K) object selector.

    Returns:
        (mean loss over the batch, p of this iteration).
    """
    b = logits.shape[0]
    total = logits.new_zeros(())
    p = 1.0
    for i in range(b):
        lg = logits[i:i + 1]
        if selector is not None and logits.shape[1] > 2 and float(selector[i, 1]) <= 0.5:
            lg = lg[:, :2]
        loss, p = criterion(lg, target[i:i + 1], it)
        total = total + loss / b
    return total, p


def compute_iou(pred: torch.Tensor, gt: torch.Tensor, per_sample: bool = False) -> torch.Tensor:
    """Intersection over union of binary maps (non-zero / True = foreground).

    pred, gt: same shape, B x ... (any trailing dims). With ``per_sample`` the IoU of each
    sample is returned (shape B), else one IoU over all pixels of the batch.

    Empty-mask convention: 1.0 when both pred and gt are empty (nothing to find, nothing found),
    0.0 when exactly one of them is empty.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and gt {tuple(gt.shape)} differ in shape")
    p, g = pred != 0, gt != 0
    if per_sample:
        p, g = p.reshape(p.shape[0], -1), g.reshape(g.shape[0], -1)
        inter = (p & g).sum(dim=1).double()
        union = (p | g).sum(dim=1).double()
    else:
        inter = (p & g).sum().double()
        union = (p | g).sum().double()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    return iou.float()
