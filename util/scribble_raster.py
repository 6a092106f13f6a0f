"""Rasterise DAVIS-format scribbles into label maps, vectorised.

The DAVIS interactive robot returns each scribble as a polyline in normalised image
coordinates. The official ``davisinteractive.utils.scribbles.scribbles2mask`` turns it into
pixels by scaling the points to ``(W - 1, H - 1)``, truncating them to integers and joining
consecutive points with Bresenham lines, one Python loop iteration per pixel. A robot scribble
has thousands of pixels, so on small frames that loop costs more than the networks.

:func:`scribbles_to_labels` gives the same label maps (tested pixel for pixel against the
official function, ``tests/test_scribble_raster.py``) with the lines computed in NumPy:

* the line from ``(x0, y0)`` to ``(x1, y1)`` steps ``L = max(|dx|, |dy|)`` times along its major
  axis (the y axis when ``|dx| == |dy|``, as in the official loop) and, at step ``k``, has moved
  ``floor((2 m k + L) / (2 L))`` pixels along the minor axis (``m`` = the minor extent): the
  closed form of the official error-term recurrence (``D >= 0`` steps, ``D`` starting at
  ``2 m - L``);
* every segment of a path is drawn at once; paths are written in their order, later paths over
  earlier ones, like the official function.

A path with non-finite points, or one that leaves the frame (normalised coordinates outside
[0, 1]), is refused with a ``ValueError`` naming it (the official function wraps negative
coordinates around to the other side of the frame and fails with an ``IndexError`` on large
ones).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def bresenham_path(points: np.ndarray) -> np.ndarray:
    """The pixels of the polyline through integer ``points`` (N x 2, (x, y)), segment by
    segment, each segment's pixels from its first point to its last (a shared end point
    appears twice, as in the official function). Fewer than 2 points: returned as they are."""
    points = np.asarray(points, dtype=np.int64)
    if len(points) < 2:
        return points
    x0, y0 = points[:-1, 0], points[:-1, 1]
    dx, dy = points[1:, 0] - x0, points[1:, 1] - y0
    xs = np.where(dx > 0, 1, -1)
    ys = np.where(dy > 0, 1, -1)
    adx, ady = np.abs(dx), np.abs(dy)
    steep = adx <= ady  # the official loop steps along y unless |dx| > |dy|
    major = np.where(steep, ady, adx)
    minor = np.where(steep, adx, ady)
    counts = major + 1
    seg = np.repeat(np.arange(len(counts)), counts)
    starts = np.cumsum(counts) - counts
    k = np.arange(int(counts.sum()), dtype=np.int64) - starts[seg]
    L, m = major[seg], minor[seg]
    moved = np.where(L > 0, (2 * m * k + L) // np.maximum(2 * L, 1), 0)
    st = steep[seg]
    out = np.empty((len(k), 2), dtype=np.int64)
    out[:, 0] = x0[seg] + np.where(st, moved, k) * xs[seg]
    out[:, 1] = y0[seg] + np.where(st, k, moved) * ys[seg]
    return out


def scribbles_to_labels(scribbles: dict[str, Any], size: tuple[int, int],
                        default: int = -1) -> np.ndarray:
    """(T x H x W) int64 label maps of DAVIS-format ``scribbles`` at ``size`` = (H, W): each
    path's pixels hold its ``object_id``, the rest ``default``. The same maps as
    ``scribbles2mask(scribbles, size, default_value=default)`` (Bresenham on, no Bezier)."""
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"invalid output size {size}")
    h, w = int(size[0]), int(size[1])
    frames = scribbles["scribbles"]
    maps = np.full((len(frames), h, w), default, dtype=np.int64)
    scale = np.array([w - 1, h - 1], dtype=np.float64)
    for t, paths in enumerate(frames):
        for i, p in enumerate(paths):
            path = np.asarray(p["path"], dtype=np.float64)
            if path.ndim != 2 or path.shape[1] != 2:
                raise ValueError(f"scribble path {i} of frame {t} is not a list of (x, y) "
                                 f"points (shape {path.shape})")
            if not np.isfinite(path).all():
                raise ValueError(f"scribble path {i} of frame {t} has non-finite coordinates")
            pixels = bresenham_path((path * scale).astype(np.int64))
            if len(pixels) and ((pixels < 0).any() or (pixels[:, 0] >= w).any()
                                or (pixels[:, 1] >= h).any()):
                # the official function wraps negative indices around and fails on large ones
                raise ValueError(f"scribble path {i} of frame {t} leaves the {w} x {h} frame "
                                 "(normalised coordinates outside [0, 1])")
            maps[t][pixels[:, 1], pixels[:, 0]] = p["object_id"]
    return maps
