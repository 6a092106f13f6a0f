"""Space-time memory read: scaled dot-product affinity, optional top-k filtering, readout.

Shapes: memory keys ``B x CK x N`` (N = T*H*W memory positions), memory values ``B x CV x N``,
query keys ``B x CK x M`` (M = H*W query positions). The affinity is normalised over the
memory axis (one distribution per query position).

This is the plain reference implementation; see the optimised version for large inputs.
"""

from __future__ import annotations

import math

import torch


def affinity(mem_key: torch.Tensor, query_key: torch.Tensor) -> torch.Tensor:
    """Scaled dot product ``k_M^T k_Q / sqrt(CK)``: B x N x M."""
    ck = mem_key.shape[1]
    return torch.einsum("bcn,bcm->bnm", mem_key, query_key) / math.sqrt(ck)


def softmax_topk(aff: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """Softmax over dim 1 (memory), restricted to the ``top_k`` largest entries per column."""
    if top_k is None or top_k >= aff.shape[1]:
        return torch.softmax(aff, dim=1)
    values, indices = torch.topk(aff, k=top_k, dim=1)
    weights = torch.softmax(values, dim=1)
    return torch.zeros_like(aff).scatter_(1, indices, weights)


def read_memory(
    mem_key: torch.Tensor,
    mem_value: torch.Tensor,
    query_key: torch.Tensor,
    top_k: int | None = None,
    max_elements: int | None = None,
) -> torch.Tensor:
    """Readout ``v_M W``: B x CV x M. ``max_elements`` bounds the affinity block size."""
    w = softmax_topk(affinity(mem_key, query_key), top_k)
    return torch.bmm(mem_value, w)
