"""Synthetic corrective scribbles (S2M training) and clicks, drawn in the error regions.

Given a ground-truth mask ``gt`` and an existing mask ``mask`` (both H x W, non-zero =
foreground), the false negatives ``gt & ~mask`` receive *positive* scribbles and the false
positives ``mask & ~gt`` receive *negative* scribbles.

Two generators, as in the S2M recipe (REFERENCE.md f.4):

* :func:`robot_scribbles` -- the official DAVIS interactive robot
  (``davisinteractive.robot.InteractiveScribblesRobot``, imported lazily through
  :func:`util.davis_compat.ensure_compat`) "tamed" by its constructor arguments: kernel_size
  0.15, max kernel radius 16, no minimum node count. It runs on the error maps at half
  resolution, draws one scribble per skeleton component, its paths are rasterised at full
  resolution (:func:`util.scribble_raster.scribbles_to_labels`, the pixels of
  ``davisinteractive.utils.scribbles.scribbles2mask``) and dilated 3x3.
* :func:`synthetic_scribbles` -- the hand-made generator: open each error map with a disk of
  diameter 5..19; for every connected component larger than a random threshold (10..99 px)
  draw one scribble type chosen uniformly among *boundary*, *thinning* and *Bezier* (with
  probability 0.3 a second one); with probability 0.3, or always when nothing was drawn, add
  2-4 Bezier curves of >= 100 px on the ground truth (positive) and on its complement
  (negative).

:func:`scribbles_from_errors` picks between them (robot with probability 0.75, never when the
existing mask is empty). All randomness comes from the ``np.random.Generator`` passed in; the
robot itself is deterministic.

Deviation (documented): by default the final maps are clipped so that positive scribbles lie
inside ``gt`` and negative ones outside it (``clip_to_gt``). Dilations (3x3 after thinning and
after the robot, the disk-dilated clip region of the Bezier curves) can otherwise push a few
boundary pixels onto the wrong side, which would label them with the wrong class.

Disk sizes are kernel *diameters*: OpenCV elliptical structuring elements of that width and
height.

Clicks (for a click interaction trained later): :func:`sample_clicks` puts each click at the
interior point (distance-transform maximum) of the largest error region, and
:func:`clicks_to_maps` rasterises clicks as disks.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import cv2
import numpy as np
from skimage.morphology import skeletonize  # Zhang-Suen thinning for 2-D input

from dataset.mask_perturb import random_rect, random_structure
from util.davis_compat import ensure_compat
from util.scribble_raster import scribbles_to_labels

logger = logging.getLogger(__name__)

__all__ = [
    "Click",
    "scribbles_from_errors",
    "synthetic_scribbles",
    "robot_scribbles",
    "bezier_scribble",
    "sample_clicks",
    "clicks_to_maps",
]

ROBOT_PROB = 0.75
SECOND_TYPE_PROB = 0.3
EXTRA_CURVES_PROB = 0.3
EXTRA_CURVE_MIN_PIXELS = 100
SCRIBBLE_TYPES = ("boundary", "thinning", "bezier")

_KERNEL3 = np.ones((3, 3), np.uint8)


def _disk(diameter: int) -> np.ndarray:
    d = max(int(diameter), 1)
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (d, d))


def _binary(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"expected an H x W mask, got shape {x.shape}")
    return x > 0


# ----------------------------------------------------------------------------- drawing helpers


def _quadratic_bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray) -> np.ndarray:
    """Points (x, y) along the quadratic Bezier curve with control points p0, p1, p2."""
    length = np.linalg.norm(p1 - p0) + np.linalg.norm(p2 - p1)
    n = max(int(length) + 2, 2)
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def bezier_scribble(region: np.ndarray, rng: np.random.Generator, thickness: int = 3,
                    clip: np.ndarray | None = None) -> np.ndarray:
    """One quadratic Bezier curve whose 3 control points are random pixels of ``region``.

    The curve passes through the first and last control points only. It is drawn
    ``thickness`` px thick and intersected with ``clip`` (default: ``region``).
    Returns an H x W bool map (all False if the region is empty).
    """
    region = _binary(region)
    ys, xs = np.nonzero(region)
    out = np.zeros(region.shape, np.uint8)
    if len(ys) == 0:
        return out.astype(bool)
    idx = rng.integers(0, len(ys), size=3)
    pts = np.stack([xs[idx], ys[idx]], axis=1).astype(np.float64)
    curve = _quadratic_bezier(pts[0], pts[1], pts[2])
    cv2.polylines(out, [np.round(curve).astype(np.int32).reshape(-1, 1, 2)], False, 1,
                  thickness=thickness)
    clip = region if clip is None else _binary(clip)
    return (out > 0) & clip


def _sub_rect_erosions(scribble: np.ndarray, rng: np.random.Generator, n: int = 4,
                       size_range: tuple[int, int] = (5, 9)) -> np.ndarray:
    """Erode ``scribble`` (uint8) inside ``n`` random image sub-rectangles (breaks it up)."""
    h, w = scribble.shape
    for _ in range(n):
        y0, y1, x0, x1 = random_rect(rng, h, w)
        kernel = random_structure(rng, int(rng.integers(size_range[0], size_range[1] + 1)))
        scribble[y0:y1, x0:x1] = cv2.erode(scribble[y0:y1, x0:x1], kernel)
    return scribble


def _boundary_type(comp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    inner = cv2.erode(comp, _disk(int(rng.integers(3, 50))))
    edge = cv2.morphologyEx(inner, cv2.MORPH_GRADIENT, _KERNEL3)
    return _sub_rect_erosions(edge, rng) > 0


def _thinning_type(comp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    skel = skeletonize(comp > 0).astype(np.uint8)
    skel = cv2.dilate(skel, _KERNEL3)
    return _sub_rect_erosions(skel, rng) > 0


def _bezier_type(comp: np.ndarray, rng: np.random.Generator, n_candidates: int = 10) -> np.ndarray:
    clip = cv2.dilate(comp, _disk(int(rng.integers(3, 7)))) > 0
    candidates = [bezier_scribble(comp, rng, clip=clip) for _ in range(n_candidates)]
    n_keep = int(rng.integers(2, 4))
    order = np.argsort([-int(c.sum()) for c in candidates], kind="stable")
    out = np.zeros(comp.shape, bool)
    for i in order[:n_keep]:
        out |= candidates[i]
    return out


_DRAW = {"boundary": _boundary_type, "thinning": _thinning_type, "bezier": _bezier_type}


def _region_scribbles(region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scribbles for one error map (bool H x W) by the hand-made generator."""
    out = np.zeros(region.shape, bool)
    opened = cv2.morphologyEx(region.astype(np.uint8), cv2.MORPH_OPEN,
                              _disk(int(rng.integers(5, 20))))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(opened, connectivity=8)
    min_area = int(rng.integers(10, 100))
    for i in range(1, n):
        if stats[i, cv2.CC_STAT_AREA] <= min_area:
            continue
        comp = (labels == i).astype(np.uint8)
        kinds = [SCRIBBLE_TYPES[int(rng.integers(3))]]
        if rng.random() < SECOND_TYPE_PROB:
            kinds.append(SCRIBBLE_TYPES[int(rng.integers(3))])
        for kind in kinds:
            out |= _DRAW[kind](comp, rng)
    return out


def _extra_curves(region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(region.shape, bool)
    for _ in range(int(rng.integers(2, 5))):
        curve = bezier_scribble(region, rng)
        if curve.sum() >= EXTRA_CURVE_MIN_PIXELS:
            out |= curve
    return out


# ----------------------------------------------------------------------------- generators


def synthetic_scribbles(gt: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                        extra_prob: float = EXTRA_CURVES_PROB) -> tuple[np.ndarray, np.ndarray]:
    """Hand-made scribbles (the non-robot branch of REFERENCE.md f.4).

    Args:
        gt, mask: H x W, non-zero = foreground.
        extra_prob: probability of the extra ground-truth / complement curves (always added
            when the error scribbles are both empty). Set 0 to draw in the error regions only.

    Returns:
        (positive, negative) H x W bool maps; positive is drawn from the false negatives and
        the extra GT curves, negative from the false positives and the extra complement curves.
    """
    gt, mask = _binary(gt), _binary(mask)
    pos = _region_scribbles(gt & ~mask, rng)
    neg = _region_scribbles(mask & ~gt, rng)
    both_empty = not pos.any() and not neg.any()
    # the draw is made every time so the stream does not depend on the empty test
    if rng.random() < extra_prob or both_empty:
        pos |= _extra_curves(gt, rng)
        neg |= _extra_curves(~gt, rng)
    return pos, neg


_ROBOT_LOCK = threading.Lock()
_ROBOT = None


def _robot():
    """The official robot with the "tamed" settings (built once per process, lazily)."""
    global _ROBOT
    with _ROBOT_LOCK:
        if _ROBOT is None:
            try:
                ensure_compat()
                # optional dependency, imported after ensure_compat() has adapted it
                from davisinteractive.robot import InteractiveScribblesRobot
            except ImportError as exc:
                raise ImportError(
                    "the tamed-robot scribbles need davisinteractive (see scripts/install.sh); "
                    "use robot_prob=0 to train with the hand-made scribbles only"
                ) from exc

            _ROBOT = InteractiveScribblesRobot(kernel_size=0.15, max_kernel_radius=16,
                                               min_nb_nodes=0)
        return _ROBOT


def robot_scribbles(gt: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scribbles of the official DAVIS robot on the error regions (the "tamed robot").

    The robot sees a one-frame, one-object sequence at half resolution (nearest-neighbour
    downsampling): its object-1 error map is the false negatives and its background error map
    the false positives. It returns one path per skeleton component; the paths are rasterised
    at full resolution (the pixels of ``scribbles2mask``) and dilated with a 3x3 square.

    Returns (positive, negative) H x W bool maps. Raises ImportError when davisinteractive is
    not installed.
    """
    gt, mask = _binary(gt), _binary(mask)
    h, w = gt.shape
    hh, hw = max(h // 2, 1), max(w // 2, 1)
    small_gt = cv2.resize(gt.astype(np.uint8), (hw, hh), interpolation=cv2.INTER_NEAREST_EXACT)
    small_pred = cv2.resize(mask.astype(np.uint8), (hw, hh),
                            interpolation=cv2.INTER_NEAREST_EXACT)
    robot = _robot()
    scribbles = robot.interact("s2m", small_pred[None].astype(np.int64),
                               small_gt[None].astype(np.int64), nb_objects=1, frame=0)
    labels = scribbles_to_labels(scribbles, (h, w))[0]
    pos = cv2.dilate((labels == 1).astype(np.uint8), _KERNEL3) > 0
    neg = cv2.dilate((labels == 0).astype(np.uint8), _KERNEL3) > 0
    return pos, neg


def scribbles_from_errors(
    gt: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    from_zero: bool | None = None,
    robot_prob: float = ROBOT_PROB,
    extra_prob: float = EXTRA_CURVES_PROB,
    clip_to_gt: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Positive / negative scribble maps for S2M training (REFERENCE.md f.4).

    Args:
        gt, mask: H x W, non-zero = foreground; ``mask`` is the existing (input) mask.
        from_zero: the existing mask is the empty "from zero" case (robot never used);
            default: ``not mask.any()``.
        robot_prob: probability of the robot branch when not from zero.
        extra_prob: see :func:`synthetic_scribbles`.
        clip_to_gt: keep positive pixels inside gt and negative pixels outside it.

    Returns:
        (positive, negative): H x W ``float32`` maps with values in {0, 1}.
    """
    gt, mask = _binary(gt), _binary(mask)
    if gt.shape != mask.shape:
        raise ValueError(f"gt {gt.shape} and mask {mask.shape} differ in size")
    if from_zero is None:
        from_zero = not mask.any()
    use_robot = rng.random() < robot_prob and not from_zero
    if use_robot:
        pos, neg = robot_scribbles(gt, mask)
    else:
        pos, neg = synthetic_scribbles(gt, mask, rng, extra_prob=extra_prob)
    if clip_to_gt:
        pos &= gt
        neg &= ~gt
    return pos.astype(np.float32), neg.astype(np.float32)


# ----------------------------------------------------------------------------- clicks


@dataclass(frozen=True)
class Click:
    """One click at pixel (y, x); ``positive`` marks foreground."""

    y: int
    x: int
    positive: bool


def sample_clicks(
    gt: np.ndarray, pred: np.ndarray, rng: np.random.Generator, n: int = 1
) -> list[Click]:
    """Up to ``n`` corrective clicks, each in the interior of the largest error region.

    For each click, the false-negative and false-positive maps of the current prediction are
    split into 8-connected components; the largest component (by area) is chosen and the click
    goes to its distance-transform maximum (the point farthest from the region's border, the
    image border counting as border), ties broken at random. A click in a false negative is
    positive. The prediction is then assumed corrected on that whole component before the next
    click (a perfect response), so successive clicks visit successive error regions. Fewer than
    ``n`` clicks are returned when no error is left.
    """
    gt = _binary(gt)
    cur = _binary(pred).copy()
    clicks: list[Click] = []
    for _ in range(n):
        best = None
        for positive, err in ((True, gt & ~cur), (False, cur & ~gt)):
            if not err.any():
                continue
            _, labels, stats, _ = cv2.connectedComponentsWithStats(err.astype(np.uint8),
                                                                   connectivity=8)
            i = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
            area = int(stats[i, cv2.CC_STAT_AREA])
            if best is None or area > best[0]:
                best = (area, positive, labels == i)
        if best is None:
            break
        _, positive, comp = best
        padded = np.pad(comp.astype(np.uint8), 1)
        dist = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]
        ys, xs = np.nonzero(dist >= dist.max() - 1e-6)
        j = int(rng.integers(len(ys)))
        clicks.append(Click(int(ys[j]), int(xs[j]), positive))
        cur[comp] = positive
    return clicks


def clicks_to_maps(
    clicks: list[Click], shape: tuple[int, int], radius: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise clicks as filled disks of ``radius`` px.

    Returns (positive, negative) H x W float32 maps with values in {0, 1}.
    """
    pos = np.zeros(shape, np.uint8)
    neg = np.zeros(shape, np.uint8)
    for c in clicks:
        cv2.circle(pos if c.positive else neg, (int(c.x), int(c.y)), int(radius), 1, thickness=-1)
    return pos.astype(np.float32), neg.astype(np.float32)
