"""Qt-free drawing of what the annotation window shows: overlays, strokes, clicks, ROI box.

Overlay modes (spec h):

* ``davis``: objects blended 50 % with their palette colour, black contours;
* ``fade``: as ``davis``, and the background darkened to 60 %;
* ``light``: 90 % image weight, contours kept;
* ``mask``: the palette colours alone;
* ``image``: the frame without the mask.

Object ``k`` has the DAVIS palette colour of label ``k`` (red, green, yellow, blue, ...), which
stays distinct well past nine objects.
"""

from __future__ import annotations

import cv2
import numpy as np

from util.palette import DAVIS_PALETTE_RGB, colorize
from util.video_io import overlay

OVERLAY_MODES = ("davis", "fade", "light", "mask", "image")
NEGATIVE_COLOUR = (255, 255, 255)
BOX_COLOUR = (255, 220, 0)


def object_colour(k: int) -> tuple[int, int, int]:
    """RGB colour of object ``k`` (1..255)."""
    r, g, b = DAVIS_PALETTE_RGB[int(k) % 256]
    return int(r), int(g), int(b)


def render_mask(image: np.ndarray, mask: np.ndarray, mode: str = "davis") -> np.ndarray:
    """H x W x 3 uint8 view of ``mask`` (H x W labels) over ``image`` (H x W x 3 RGB uint8)."""
    if mode == "davis":
        return overlay(image, mask, alpha=0.5)
    if mode == "fade":
        out = overlay(image, mask, alpha=0.5)
        bg = mask == 0
        out[bg] = (out[bg].astype(np.float32) * 0.6).astype(np.uint8)
        return out
    if mode == "light":
        return overlay(image, mask, alpha=0.1)
    if mode == "mask":
        return colorize(mask)
    if mode == "image":
        return np.array(image, copy=True)
    raise ValueError(f"unknown overlay mode {mode!r}; choose from {', '.join(OVERLAY_MODES)}")


def draw_scribbles(view: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """Paint the strokes of an open scribble interaction (H x W: -1 none, 0 background,
    k object k) onto ``view`` in place: object strokes in the object's colour, background
    strokes in white."""
    if labels is None:
        return view
    for value in np.unique(labels):
        if value < 0:
            continue
        colour = NEGATIVE_COLOUR if value == 0 else object_colour(int(value))
        view[labels == value] = colour
    return view


def draw_clicks(view: np.ndarray, clicks: list[tuple[int, int, int, bool]], radius: int = 3
                ) -> np.ndarray:
    """Draw clicks ``(y, x, object, positive)`` as filled dots (object colour or white) with a
    black ring, in place."""
    for y, x, k, positive in clicks:
        colour = object_colour(k) if positive else NEGATIVE_COLOUR
        cv2.circle(view, (int(x), int(y)), radius + 1, (0, 0, 0), thickness=-1)
        cv2.circle(view, (int(x), int(y)), radius, colour, thickness=-1)
    return view


def draw_box(view: np.ndarray, box: tuple[int, int, int, int] | None) -> np.ndarray:
    """Draw a local-control box ``(top, left, bottom, right)`` (inclusive) in place."""
    if box is None:
        return view
    top, left, bottom, right = (int(v) for v in box)
    cv2.rectangle(view, (left, top), (right, bottom), BOX_COLOUR, thickness=1)
    return view


def stroke_region(shape: tuple[int, int], points: list[tuple[int, int]], radius: float
                  ) -> np.ndarray:
    """H x W bool map of a brush stroke through ``points`` ((x, y) pixels) with ``radius``."""
    region = np.zeros(shape, np.uint8)
    draw_stroke(region, points, 1, radius)
    return region.astype(bool)


def draw_stroke(target: np.ndarray, points: list[tuple[int, int]], value: int, radius: float
                ) -> np.ndarray:
    """Rasterise a polyline of (x, y) points with a round brush of ``radius`` pixels (a radius
    below 1 draws 1-px lines) into ``target`` (H x W integer map) with ``value``, in place."""
    r = max(int(round(radius)), 0)
    pts = [(int(round(x)), int(round(y))) for x, y in points]
    for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:], strict=True):
        cv2.line(target, (x0, y0), (x1, y1), int(value), thickness=max(2 * r + 1, 1))
    for x, y in pts:
        if r > 0:
            cv2.circle(target, (x, y), r, int(value), thickness=-1)
        elif 0 <= y < target.shape[0] and 0 <= x < target.shape[1]:
            target[y, x] = value
    return target
