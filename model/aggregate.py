"""Soft aggregation of independent per-object probabilities into one multi-object distribution.

Each object probability ``p_i`` comes from its own sigmoid. The background probability is either
``prod_i (1 - p_i)`` ("with background", used almost everywhere) or fixed at 0.5 ("static
background", used for click / free-hand / local-control results). All K+1 values are clamped,
turned into log-odds and passed through a softmax over the object axis, so the result sums to one.
``hard=True`` sharpens the softmax (logits x 1000) into an almost one-hot map.
"""

from __future__ import annotations

import torch

EPS = 1e-7
HARD_SCALE = 1000.0


def aggregate_logits(prob: torch.Tensor, dim: int = 0, static_bg: bool = False) -> torch.Tensor:
    """Log-odds of the K+1 channels (background first) along ``dim``.

    prob: K per-object probabilities along ``dim`` (any other shape).
    returns: K+1 logits along ``dim``; a softmax over ``dim`` gives the aggregated probabilities.
    """
    if static_bg:
        shape = list(prob.shape)
        shape[dim] = 1
        bg = torch.full(shape, 0.5, dtype=prob.dtype, device=prob.device)
    else:
        bg = torch.prod(1 - prob, dim=dim, keepdim=True)
    new_prob = torch.cat([bg, prob], dim=dim).clamp(EPS, 1 - EPS)
    return torch.log(new_prob / (1 - new_prob))


def aggregate(
    prob: torch.Tensor,
    dim: int = 0,
    static_bg: bool = False,
    hard: bool = False,
    return_logits: bool = False,
):
    """Soft aggregation (with background by default).

    prob: K per-object probabilities in [0, 1] along ``dim``.
    returns: (K+1) probabilities along ``dim`` (channel 0 = background) that sum to one, or the
    pair (logits, probabilities) when ``return_logits``.
    """
    logits = aggregate_logits(prob, dim=dim, static_bg=static_bg)
    scaled = logits * HARD_SCALE if hard else logits
    out = torch.softmax(scaled, dim=dim)
    if return_logits:
        return logits, out
    return out
