"""Synthetic "existing masks" for S2M training: the ground truth degraded to a target IoU.

Each round picks 4 random axis-aligned rectangles. Inside each rectangle, with probability
0.1 the centre pixel is set to a random value (0 or 255), which seeds a new hole or blob, and then
the rectangle is either dilated or eroded (50/50) with a random structuring element (rectangle,
ellipse, half-height ellipse or half-width ellipse) whose size is uniform in 3..9. After each
round the IoU with the ground truth is measured; the loop stops as soon as it falls below the
target, or after ``max_rounds`` (250) rounds.

The helpers :func:`random_structure` and :func:`random_rect` are shared with the scribble
simulation (its sub-rectangle erosions use the same random elements).
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["perturb_mask", "random_structure", "random_rect", "binary_iou"]

STRUCTURE_KINDS = ("rect", "ellipse", "half_height_ellipse", "half_width_ellipse")


def binary_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two binary maps (non-zero = foreground); 1.0 when both are empty."""
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    union = np.count_nonzero(a | b)
    if union == 0:
        return 1.0
    return np.count_nonzero(a & b) / union


def random_structure(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random ``uint8`` structuring element of nominal size ``size``.

    Kind (uniform): ``size x size`` rectangle, ``size x size`` ellipse, an ellipse of half the
    height (``size`` wide, ``size // 2`` tall) or of half the width.
    """
    size = max(int(size), 1)
    half = max(size // 2, 1)
    kind = STRUCTURE_KINDS[int(rng.integers(len(STRUCTURE_KINDS)))]
    if kind == "rect":
        return np.ones((size, size), np.uint8)
    if kind == "ellipse":
        return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    if kind == "half_height_ellipse":
        return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, half))  # (width, height)
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (half, size))


def random_rect(rng: np.random.Generator, h: int, w: int) -> tuple[int, int, int, int]:
    """A random non-empty rectangle (y0, y1, x0, x1), half-open, inside an ``h x w`` image.

    The top-left corner is uniform over the image; the bottom-right corner is uniform among the
    positions below and to the right of it.
    """
    x0 = int(rng.integers(0, w))
    y0 = int(rng.integers(0, h))
    x1 = int(rng.integers(x0 + 1, w + 1))
    y1 = int(rng.integers(y0 + 1, h + 1))
    return y0, y1, x0, x1


def perturb_mask(
    mask: np.ndarray,
    target_iou: float,
    rng: np.random.Generator,
    max_rounds: int = 250,
    rects_per_round: int = 4,
    size_range: tuple[int, int] = (3, 9),
    seed_prob: float = 0.1,
) -> np.ndarray:
    """Degrade a binary mask until its IoU with the input drops below ``target_iou``.

    Args:
        mask: H x W, non-zero = foreground (bool, 0/1 or 0/255).
        target_iou: stop as soon as IoU(result, mask) < target_iou (the reference range is [0.4, 0.95]).
        rng: the sample's generator (the only randomness used).
        max_rounds: at most this many rounds of ``rects_per_round`` rectangles.
        size_range: inclusive range of structuring-element sizes.
        seed_prob: probability of flipping the rectangle's centre pixel to a random value.

    Returns:
        H x W ``bool`` mask. May still have IoU >= target after ``max_rounds`` (e.g. an empty or
        tiny input, where nothing can be eroded); images with a side <= 2 are returned as is.
    """
    gt = np.asarray(mask) > 0
    h, w = gt.shape
    seg = gt.astype(np.uint8) * 255
    if h <= 2 or w <= 2:
        return gt.copy()
    lo, hi = int(size_range[0]), int(size_range[1])
    for _ in range(max_rounds):
        for _ in range(rects_per_round):
            y0, y1, x0, x1 = random_rect(rng, h, w)
            if rng.random() < seed_prob:
                seg[(y0 + y1) // 2, (x0 + x1) // 2] = 255 * int(rng.integers(2))
            kernel = random_structure(rng, int(rng.integers(lo, hi + 1)))
            roi = seg[y0:y1, x0:x1]
            if rng.random() < 0.5:
                seg[y0:y1, x0:x1] = cv2.dilate(roi, kernel)
            else:
                seg[y0:y1, x0:x1] = cv2.erode(roi, kernel)
        if binary_iou(seg, gt) < target_iou:
            break
    return seg > 0
