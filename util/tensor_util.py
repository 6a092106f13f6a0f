"""Padding to multiples of 16 and small tensor helpers shared by inference and training."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_image(img: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalise an RGB tensor in [0, 1] with channels at dim -3 (..., 3, H, W)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=img.dtype, device=img.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=img.dtype, device=img.device).view(3, 1, 1)
    return (img - mean) / std


def denormalize_image(img: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalize_image` (for visualisation)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=img.dtype, device=img.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=img.dtype, device=img.device).view(3, 1, 1)
    return img * std + mean


def compute_pad(h: int, w: int, d: int = 16) -> tuple[int, int, int, int]:
    """Padding (left, right, top, bottom) that makes (h, w) multiples of ``d``.

    The extra pixels are split floor/ceil: the smaller half goes before (left / top).
    """
    def split(length: int) -> tuple[int, int]:
        r = length % d
        if r == 0:
            return 0, 0
        extra = d - r
        return extra // 2, extra - extra // 2

    lw, uw = split(w)
    lh, uh = split(h)
    return lw, uw, lh, uh


def pad_divide_by(x: torch.Tensor, d: int = 16) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Zero-pad the last two dims of ``x`` to multiples of ``d``; returns (padded, pad)."""
    pad = compute_pad(x.shape[-2], x.shape[-1], d)
    if any(pad):
        x = F.pad(x, pad)
    return x, pad


def unpad(x: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    """Crop what :func:`pad_divide_by` added (works on tensors and NumPy arrays)."""
    left, right, top, bottom = pad
    h, w = x.shape[-2], x.shape[-1]
    return x[..., top:h - bottom, left:w - right]


def argmax_labels(prob: torch.Tensor) -> torch.Tensor:
    """``torch.argmax(prob, dim=0)`` as uint8 labels, for ``C x ...`` scores with C <= 256.

    The first maximum wins, as with ``torch.argmax`` (for scores without NaN). Computed as a
    running maximum over the C channels, each step an element-wise comparison: on a CPU
    ``argmax`` over the outer axis of ``(K+1) x H x W`` takes a strided scalar loop (measured
    on 2 cores, 3 x 480 x 864 float32: 70 ms against 2 ms).
    """
    if prob.shape[0] > 256:
        return torch.argmax(prob, dim=0)
    best = prob[0].clone()
    labels = torch.zeros(prob.shape[1:], dtype=torch.uint8, device=prob.device)
    for c in range(1, prob.shape[0]):
        better = prob[c] > best
        labels.masked_fill_(better, c)
        torch.maximum(best, prob[c], out=best)
    return labels


def channels_last_for_autocast(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels-last layout under CPU autocast without autograd, else ``x`` itself.

    oneDNN's bfloat16 convolutions work in NHWC; given NCHW, each layer reorders its input and
    output. A network input in channels-last keeps every layer after it in NHWC (measured on 2
    cores, AVX512-BF16, 480p, bf16 over fp32: lite query encoder 1.95x -> 2.28x, memory encoder
    1.76x -> 1.96x, decoder 1.72x -> 2.01x, S2M 2.11x -> 2.23x; mivos S2M 2.01x -> 2.25x).
    Values are those of the same bf16 convolutions in another order of accumulation; fp32 and
    training are untouched. Used by the propagation networks and S2M at their inputs.
    """
    if (x.dim() == 4 and x.device.type == "cpu" and not torch.is_grad_enabled()
            and torch.is_autocast_enabled("cpu")):
        return x.contiguous(memory_format=torch.channels_last)
    return x
