"""Procedural synthetic videos (and static image/mask pairs) in the DAVIS 2017 layout.

The generator makes a small, learnable but not trivial video object segmentation task that
needs no download: textured objects (ellipses, random polygons, blobs with smoothed random
radii) of varied sizes move on smooth trajectories with rotation and scale change, occlude one
another (fixed z-order per sequence), enter and leave the frame, over procedural backgrounds
(fractal noise, gradients, stripes, checkers, marbling, plus static object-like distractors)
seen by a moving camera (global translation and zoom) under drifting lighting (brightness,
contrast, colour gain and a moving illumination gradient) with sensor noise.  Object colours
are kept away from the background's hue, but every surface is a multi-colour texture, never a
constant colour.

Everything is deterministic given the seed: all randomness comes from
``numpy.random.Generator`` objects built from explicit seed words (never global seeding), and
each frame has its own generator, so frames can be rendered in any order or process.

Conventions of the generated sequences

* every object is visible in frame 0 (at least 30 % of its area and a minimum pixel count;
  some objects start partly outside the frame and enter it): as in DAVIS, frame 0 holds every
  object, which the semi-supervised protocol and the interactive driver (K = number of labels
  in frame 0) rely on; objects may leave the frame (entirely) later;
* labels: 0 = background, k = object k (1..K); ``Annotations`` are DAVIS palette PNGs;
* initial scribbles (``Scribbles/<seq>/NNN.json``) are drawn by the official
  ``davisinteractive`` robot (``InteractiveScribblesRobot.interact`` with the evaluation
  service's parameters) from the ground truth against an empty prediction, on the frames where
  the objects are most visible (one frame per file, files on different frames).  The robot's
  wall-clock ``start_time``/``end_time`` stamps are replaced by fixed values so that output
  files are byte-identical for a given seed.

Output layout (under ``--out``)::

    JPEGImages/480p/<seq>/00000.jpg ...      RGB frames (JPEG quality 90)
    Annotations/480p/<seq>/00000.png ...     palette PNG label maps
    Scribbles/<seq>/001.json ...             official scribble format
    ImageSets/2017/train.txt, val.txt        sequence lists
    synthetic.json                           generator parameters + davis.json-style metadata
    .synthetic/<seq>.json                    per-sequence completion markers (resumability)

Presets

* ``tiny``: 3 sequences (``tiny-000``..``tiny-002``), 10 / 8 / 12 frames, 64 x 96 (H x W),
  1 / 2 / 3 objects, 1 / 2 / 3 scribble files; a test fixture, listed in both ``train.txt``
  and ``val.txt``.  :func:`register_with_davisinteractive` (or :func:`register_if_synthetic`,
  which does nothing for real DAVIS and for ``davis-val``) adds it to davisinteractive's
  tables so that the official session runs on it.
* ``davis-val``: the 30 DAVIS 2017 val sequences with the names, frame counts, image sizes,
  object counts and scribble counts of davisinteractive's bundled ``davis.json`` (the
  ``Davis.dataset`` table), so that the unmodified ``DavisInteractiveSession(davis_root=out,
  subset='val')`` runs on it.  1999 frames, mostly 854 x 480.
* ``train-small``: 16 train + 4 val sequences of 30 frames, 240 x 432, 1-3 objects, 2
  scribble files each (smoke training).
* ``train-quarter``: the same layout at 120 x 216, a quarter of DAVIS's 480p, with 48 train
  videos (the first 16 have the layout of ``train-small``'s), for lite networks, whose 96-px training crops are a quarter of the recipe's 384 (so crops show objects
  at about the size they have in these frames, as the recipe's crops do on 480p).
* ``static``: :func:`generate_static_pairs` (200 pairs of 256 x 256 by default), written as
  ``NNNNN.jpg`` + ``NNNNN.png`` (0/255 mask) directly under ``--out``.

Command line: ``python -m dataset.synthetic --out DIR --preset tiny --seed 0`` (``--help``).
"""

from __future__ import annotations

import argparse
import colorsys
import hashlib
import importlib.util
import io
import json
import logging
import math
import os
import shutil
import sys
import zlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from util.davis_compat import ensure_compat
from util.errors import InputError, report, require_output_dir
from util.palette import (
    DAVIS_VOID_LABELS,
    atomic_write_bytes,
    object_ids,
    read_annotation,
    write_palette_png,
)

logger = logging.getLogger(__name__)

__all__ = [
    "GENERATOR_VERSION",
    "PRESETS",
    "DavisRegistration",
    "SequenceSpec",
    "SyntheticSequence",
    "draw_initial_scribbles",
    "generate_instance_set",
    "generate_sequence",
    "generate_static_pair",
    "generate_static_pairs",
    "main",
    "preset_specs",
    "register_if_synthetic",
    "register_with_davisinteractive",
    "sequence_metadata",
    "write_dataset",
    "write_sequence",
]

#: Bumped whenever the output for a given seed changes (invalidates completion markers).
#: 2: objects cover 4-16 % of the frame (scaled down when there are 3 or more; 1.5-8 % in 1).
GENERATOR_VERSION = 2

PRESETS = ("tiny", "davis-val", "train-small", "train-quarter", "static")

IMAGES_DIR = Path("JPEGImages") / "480p"
ANNOTATIONS_DIR = Path("Annotations") / "480p"
SCRIBBLES_DIR = Path("Scribbles")
IMAGESETS_DIR = Path("ImageSets") / "2017"
MARKER_DIR = ".synthetic"
MANIFEST = "synthetic.json"
JPEG_QUALITY = 90

#: Nominal object area as a fraction of the frame (before the shape's fill, the per-frame scale
#: change, occlusion and clipping), scaled by min(1, 2.5 / (K + 0.5)) for K objects. With
#: 120 x 216 frames the median visible object then covers about 3 % of the frame (1.3 % in
#: version 1, whose many objects under 100 px were smaller than one cell of the networks'
#: stride-16 feature grid).
OBJECT_AREA = (0.04, 0.16)

# Frame-0 visibility requirements for every object.
_MIN_VISIBLE_FRACTION = 0.3
_MIN_VISIBLE_PX = 24


# ============================================================================ specifications


@dataclass(frozen=True)
class SequenceSpec:
    """What one synthetic sequence must look like (sizes in pixels, H x W)."""

    name: str
    num_frames: int
    height: int
    width: int
    num_objects: int
    num_scribbles: int = 3
    subset: str = "val"

    def __post_init__(self):
        if self.num_frames < 1 or self.height < 16 or self.width < 16:
            raise ValueError(f"invalid sequence size for {self.name!r}")
        if not 1 <= self.num_objects <= 255:
            raise ValueError(f"num_objects must be in 1..255 for {self.name!r}")
        if self.num_scribbles < 0:
            raise ValueError(f"num_scribbles must be >= 0 for {self.name!r}")
        if self.num_scribbles > self.num_frames:
            raise ValueError(f"more scribble files than frames for {self.name!r}")

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height), the order used by davisinteractive's tables."""
        return (self.width, self.height)

    def davis_entry(self) -> dict[str, Any]:
        """This sequence as an entry of davisinteractive's ``Davis.dataset`` table."""
        return {
            "attributes": [],
            "eval_t": False,
            "name": self.name,
            "num_frames": self.num_frames,
            "num_objects": self.num_objects,
            "set": self.subset,
            "year": 2017,
            "image_size": [self.width, self.height],
            "num_scribbles": self.num_scribbles,
        }


@dataclass
class SyntheticSequence:
    """A rendered sequence: frames, label maps and per-frame visibility statistics."""

    spec: SequenceSpec
    images: np.ndarray  # T x H x W x 3 uint8 (RGB)
    masks: np.ndarray  # T x H x W uint8 labels (0 = background, 1..K)
    visible_px: np.ndarray  # T x K visible (unoccluded, in-frame) pixel counts
    full_px: np.ndarray  # T x K area each object would cover unoccluded and unclipped

    @property
    def visibility(self) -> np.ndarray:
        """T x K visible fraction of every object (0..1)."""
        return np.clip(self.visible_px / np.maximum(self.full_px, 1.0), 0.0, 1.0)


def _salt(text: str) -> int:
    return zlib.crc32(text.encode("utf-8")) & 0xFFFFFFFF


def _seed_words(seed: int | Sequence[int]) -> list[int]:
    if isinstance(seed, (int, np.integer)):
        words = [int(seed)]
    else:
        words = [int(s) for s in seed]
    if not words or any(w < 0 for w in words):
        raise ValueError("seed must be a non-negative int or a sequence of them")
    return words


def _tiny_specs() -> list[SequenceSpec]:
    frames, objects, scribbles = (10, 8, 12), (1, 2, 3), (1, 2, 3)
    return [
        SequenceSpec(f"tiny-{i:03d}", frames[i], 64, 96, objects[i], scribbles[i], "val")
        for i in range(3)
    ]


def _train_small_specs(seed: int, height: int = 240, width: int = 432,
                       train: int = 16) -> list[SequenceSpec]:
    rng = np.random.default_rng([seed, _salt("train-small-layout")])
    specs = []
    for i in range(train + 4):
        subset = "train" if i < train else "val"
        name = f"{subset}-{i if i < train else i - train:03d}"
        specs.append(SequenceSpec(name, 30, height, width, int(rng.integers(1, 4)), 2, subset))
    return specs


def _davis_val_specs() -> list[SequenceSpec]:
    # davisinteractive's bundled davis.json (the file behind ``Davis.dataset``), read from
    # disk so that registrations made in this process cannot leak into the preset.
    spec = importlib.util.find_spec("davisinteractive")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the davis-val preset needs the davisinteractive package")
    pkg_dir = Path(list(spec.submodule_search_locations)[0])
    table = json.loads((pkg_dir / "dataset" / "davis.json").read_text())["sequences"]
    names = sorted(n for n, e in table.items() if e["set"] == "val")
    specs = []
    for name in names:
        e = table[name]
        w, h = e["image_size"]
        specs.append(SequenceSpec(name, int(e["num_frames"]), int(h), int(w),
                                  int(e["num_objects"]), int(e["num_scribbles"]), "val"))
    return specs


def preset_specs(preset: str, seed: int = 0) -> list[SequenceSpec]:
    """The sequence specifications of a video preset (``tiny``, ``davis-val``, ``train-small``,
    ``train-quarter``)."""
    if preset == "tiny":
        return _tiny_specs()
    if preset == "davis-val":
        return _davis_val_specs()
    if preset == "train-small":
        return _train_small_specs(seed)
    if preset == "train-quarter":
        return _train_small_specs(seed, 120, 216, train=48)
    raise ValueError(f"unknown video preset {preset!r} (expected tiny, davis-val, train-small, "
                     "train-quarter)")


# ============================================================================ textures


def _fbm(rng: np.random.Generator, h: int, w: int, feature: float, octaves: int = 4,
         persistence: float = 0.5) -> np.ndarray:
    """Fractal value noise in [0, 1]: bicubically upsampled random grids, ``octaves`` scales."""
    out = np.zeros((h, w), np.float32)
    amp, norm, size = 1.0, 0.0, max(float(feature), 2.0)
    for _ in range(octaves):
        if size < 1.5:
            break
        gh, gw = int(math.ceil(h / size)) + 3, int(math.ceil(w / size)) + 3
        grid = rng.random((gh, gw), dtype=np.float32)
        up = cv2.resize(grid, (int(gw * size), int(gh * size)), interpolation=cv2.INTER_CUBIC)
        oy = int(rng.integers(0, up.shape[0] - h + 1))
        ox = int(rng.integers(0, up.shape[1] - w + 1))
        out += amp * up[oy:oy + h, ox:ox + w]
        norm += amp
        amp *= persistence
        size /= 2.0
    out /= max(norm, 1e-6)
    lo, hi = float(out.min()), float(out.max())
    return (out - lo) / max(hi - lo, 1e-6)


def _rotated_coords(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    ang = rng.uniform(0, math.pi)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return xs * math.cos(ang) + ys * math.sin(ang), -xs * math.sin(ang) + ys * math.cos(ang)


_FIELD_KINDS = ("noise", "stripes", "checker", "gradient", "spots", "marble")


def _field(rng: np.random.Generator, h: int, w: int, kind: str, feature: float) -> np.ndarray:
    """A scalar pattern in [0, 1] of the given kind and characteristic size (pixels)."""
    feature = max(float(feature), 2.0)
    if kind == "noise":
        return _fbm(rng, h, w, feature, octaves=int(rng.integers(2, 5)))
    u, v = _rotated_coords(rng, h, w)
    if kind == "stripes":
        warp = _fbm(rng, h, w, feature * 3, octaves=2)
        phase = rng.uniform(0, 2 * math.pi)
        f = 0.5 + 0.5 * np.sin(2 * math.pi * u / feature + phase + rng.uniform(0.5, 3) * warp)
        return f.astype(np.float32)
    if kind == "checker":
        c = ((np.floor(u / feature) + np.floor(v / feature)) % 2).astype(np.float32)
        c = cv2.GaussianBlur(c, (0, 0), 0.6)
        return np.clip(0.8 * c + 0.2 * _fbm(rng, h, w, feature, 2), 0, 1)
    if kind == "gradient":
        span = max(float(u.max() - u.min()), 1.0)
        g = (u - u.min()) / span
        return np.clip(0.7 * g + 0.3 * _fbm(rng, h, w, feature, 3), 0, 1).astype(np.float32)
    if kind == "spots":
        n = _fbm(rng, h, w, feature, octaves=3)
        thr = rng.uniform(0.45, 0.6)
        return np.clip((n - thr) * 6 + 0.5, 0, 1).astype(np.float32)
    if kind == "marble":
        n = _fbm(rng, h, w, feature * 2, octaves=4)
        f = 0.5 + 0.5 * np.sin(2 * math.pi * u / (feature * 2) + rng.uniform(3, 8) * n)
        return f.astype(np.float32)
    raise ValueError(f"unknown texture kind {kind!r}")


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)),
                                        float(np.clip(v, 0, 1))), np.float32)


def _colour_ramp(f: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Map a [0, 1] field through a piecewise-linear ramp of ``colours`` (n x 3)."""
    pos = np.linspace(0.0, 1.0, len(colours))
    flat = f.reshape(-1)
    out = np.stack([np.interp(flat, pos, colours[:, c]) for c in range(3)], axis=-1)
    return out.reshape(f.shape + (3,)).astype(np.float32)


def _hue_distance(a: float, b: float) -> float:
    d = abs(a - b) % 1.0
    return min(d, 1.0 - d)


def _texture(rng: np.random.Generator, h: int, w: int, hue: float, sat: tuple[float, float],
             val: tuple[float, float], feature: float, n_kinds: int = 1,
             grain: float = 0.02, min_spread: float = 0.25) -> np.ndarray:
    """A multi-colour texture around ``hue`` (H x W x 3 float32 in [0, 1])."""
    kinds = rng.choice(len(_FIELD_KINDS), size=n_kinds, replace=False)
    f = np.zeros((h, w), np.float32)
    weights = rng.dirichlet(np.ones(n_kinds)) if n_kinds > 1 else np.ones(1)
    for k, wgt in zip(kinds, weights):
        f += np.float32(wgt) * _field(rng, h, w, _FIELD_KINDS[int(k)],
                                      feature * rng.uniform(0.7, 1.4))
    n_col = int(rng.integers(2, 4))
    vals = rng.uniform(val[0], val[1], n_col)
    lo, hi = int(np.argmin(vals)), int(np.argmax(vals))
    if vals[hi] - vals[lo] < min_spread:  # never a (nearly) constant colour
        vals[lo] = max(val[0], vals[hi] - min_spread)
        vals[hi] = min(val[1], vals[lo] + min_spread)
    colours = []
    for i in range(n_col):
        dh = rng.normal(0, 0.04)
        if rng.random() < 0.25:  # an accent colour from elsewhere on the wheel
            dh += rng.uniform(0.15, 0.35) * rng.choice([-1, 1])
        colours.append(_hsv(hue + dh, rng.uniform(*sat), vals[i]))
    tex = _colour_ramp(f, np.stack(colours))
    if grain > 0:
        tex += rng.normal(0, grain, size=tex.shape).astype(np.float32)
    return np.clip(tex, 0, 1)


# ============================================================================ shapes / sprites


def _shape_polygon(rng: np.random.Generator, kind: str) -> np.ndarray:
    """Outline of a shape in unit coordinates (max radius about 1), N x 2 (x, y)."""
    if kind == "ellipse":
        # Not circular: the robot's medial-axis scribble of a disc is a single point.
        a, b = 1.0, rng.uniform(0.4, 0.8)
        t = np.linspace(0, 2 * math.pi, 96, endpoint=False)
        pts = np.stack([a * np.cos(t), b * np.sin(t)], axis=1)
    elif kind == "polygon":
        n = int(rng.integers(3, 9))
        ang = np.sort(rng.uniform(0, 2 * math.pi, n))
        if n <= 4:  # keep few-vertex polygons from degenerating
            ang = np.linspace(0, 2 * math.pi, n, endpoint=False) + rng.normal(0, 0.25, n)
        r = rng.uniform(0.55, 1.0, n)
        pts = np.stack([r * np.cos(ang), r * np.sin(ang)], axis=1)
    elif kind == "blob":
        n = 32
        radii = rng.uniform(0.35, 1.0, n)
        sigma = rng.uniform(1.2, 2.5)
        offsets = np.arange(-8, 9)
        kern = np.exp(-0.5 * (offsets / sigma) ** 2)
        kern /= kern.sum()
        smooth = np.array([np.dot(kern, np.take(radii, np.arange(i - 8, i + 9), mode="wrap"))
                           for i in range(n)])
        t = np.linspace(0, 2 * math.pi, 128, endpoint=False)
        r = np.interp(t, np.linspace(0, 2 * math.pi, n + 1),
                      np.concatenate([smooth, smooth[:1]]))
        r /= r.max()
        pts = np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
    else:
        raise ValueError(f"unknown shape {kind!r}")
    rot = rng.uniform(0, 2 * math.pi)
    c, s = math.cos(rot), math.sin(rot)
    return pts @ np.array([[c, s], [-s, c]], np.float64)


_SHAPES = ("ellipse", "polygon", "blob")


@dataclass
class _Sprite:
    """An object's appearance in its own (local) pixel frame, ``q`` local px per image px."""

    alpha: np.ndarray  # L x L float32 coverage in [0, 1]
    texture: np.ndarray  # L x L x 3 float32
    q: float
    area: float  # coverage sum in local pixels


def _make_sprite(rng: np.random.Generator, radius: float, hue: float,
                 sat: tuple[float, float], val: tuple[float, float], q: float = 1.5) -> _Sprite:
    shape = _SHAPES[int(rng.integers(len(_SHAPES)))]
    pts = _shape_polygon(rng, shape)
    size = int(math.ceil(2 * radius * q * 1.05)) + 4
    centre = (size - 1) / 2.0
    ss = 4  # supersampling for anti-aliased coverage
    canvas = np.zeros((size * ss, size * ss), np.uint8)
    poly = ((pts * radius * q + centre + 0.5) * ss - 0.5).round().astype(np.int32)
    cv2.fillPoly(canvas, [poly], 255)
    alpha = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
    alpha /= 255.0
    feature = radius * q * rng.uniform(0.15, 0.6)
    tex = _texture(rng, size, size, hue, sat, val, feature,
                   n_kinds=int(rng.integers(1, 3)), grain=0.02)
    # Directional shading across the object.
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    d = rng.normal(size=2)
    d /= np.linalg.norm(d) + 1e-9
    shade = 1.0 + rng.uniform(0.0, 0.35) * ((xs - centre) * d[0] + (ys - centre) * d[1]) / (
        radius * q + 1e-6)
    tex = np.clip(tex * shade[..., None], 0, 1).astype(np.float32)
    return _Sprite(alpha=alpha, texture=tex, q=q, area=float(alpha.sum()))


# ============================================================================ motion


def _affine(a: float = 1.0, b: float = 0.0, c: float = 0.0, d: float = 0.0, e: float = 1.0,
            f: float = 0.0) -> np.ndarray:
    return np.array([[a, b, c], [d, e, f], [0, 0, 1]], np.float64)


def _translate(x: float, y: float) -> np.ndarray:
    return _affine(c=x, f=y)


def _rot_scale(angle: float, scale: float) -> np.ndarray:
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    return _affine(c, -s, 0, s, c, 0)


@dataclass
class _Track:
    pos: np.ndarray  # T x 2 world (= frame-0 screen) coordinates of the centre
    angle: np.ndarray  # T radians
    scale: np.ndarray  # T (1 at frame 0)


def _wobble(rng: np.random.Generator, t: np.ndarray, amp: float, cycles=(0.3, 1.5)) -> np.ndarray:
    n = max(len(t), 2)
    omega = 2 * math.pi * rng.uniform(*cycles) / n
    phase = rng.uniform(0, 2 * math.pi)
    return amp * (np.sin(omega * t + phase) - math.sin(phase))


def _make_track(rng: np.random.Generator, T: int, H: int, W: int, radius: float, mode: str,
                others: list[np.ndarray], other_r: list[float]) -> _Track:
    t = np.arange(T, dtype=np.float64)
    u = t / max(T - 1, 1)
    extent = min(H, W)
    diag = math.hypot(H, W)
    if mode == "enter":
        side = int(rng.integers(4))
        out = radius * rng.uniform(0.0, 0.4)  # centre at most 0.4 r outside the border
        m = min(radius, 0.45 * extent)
        if side == 0:
            p0, normal = np.array([-out, rng.uniform(m, H - m)]), np.array([1.0, 0])
        elif side == 1:
            p0, normal = np.array([W + out, rng.uniform(m, H - m)]), np.array([-1.0, 0])
        elif side == 2:
            p0, normal = np.array([rng.uniform(m, W - m), -out]), np.array([0, 1.0])
        else:
            p0, normal = np.array([rng.uniform(m, W - m), H + out]), np.array([0, -1.0])
        ang = math.atan2(normal[1], normal[0]) + rng.uniform(-0.6, 0.6)
        direction = np.array([math.cos(ang), math.sin(ang)])
        travel = rng.uniform(0.3, 0.7) * extent
    else:
        margin = min(radius * 0.9, 0.45 * extent)
        p0 = None
        for _ in range(40):  # spread the objects out in frame 0
            cand = np.array([rng.uniform(margin, W - margin), rng.uniform(margin, H - margin)])
            if all(np.linalg.norm(cand - o) >= 0.75 * (radius + r)
                   for o, r in zip(others, other_r)):
                p0 = cand
                break
        if p0 is None:
            p0 = cand
        if mode == "leave":
            targets = [np.array([-1.0, 0]), np.array([1.0, 0]), np.array([0, -1.0]),
                       np.array([0, 1.0])]
            dists = [p0[0], W - p0[0], p0[1], H - p0[1]]
            side = int(rng.integers(4))
            ang = math.atan2(targets[side][1], targets[side][0]) + rng.uniform(-0.3, 0.3)
            direction = np.array([math.cos(ang), math.sin(ang)])
            travel = (dists[side] + 1.3 * radius) / max(math.cos(ang - math.atan2(
                targets[side][1], targets[side][0])), 0.5) + rng.uniform(0, 0.2) * extent
        else:
            ang = rng.uniform(0, 2 * math.pi)
            direction = np.array([math.cos(ang), math.sin(ang)])
            travel = rng.uniform(0.1, 0.5) * extent
    travel = min(travel, 0.03 * diag * max(T - 1, 1))
    e = rng.uniform(-0.8, 0.8)  # non-uniform speed (monotone progress)
    prog = u + e * np.sin(2 * math.pi * u) / (2 * math.pi)
    wob_amp = rng.uniform(0.0, 0.04) * extent
    pos = p0[None, :] + travel * prog[:, None] * direction[None, :]
    pos = pos + np.stack([_wobble(rng, t, wob_amp), _wobble(rng, t, wob_amp)], axis=1)
    angle = rng.uniform(-1, 1) * (math.pi / 2) * u + _wobble(rng, t, rng.uniform(0, 0.3))
    scale = np.exp(rng.uniform(-0.35, 0.35) * u + _wobble(rng, t, rng.uniform(0, 0.1)))
    return _Track(pos=pos, angle=angle, scale=scale)


# ============================================================================ scene


@dataclass
class _Scene:
    spec: SequenceSpec
    seed_words: list[int]
    bg: np.ndarray  # canvas H' x W' x 3 float32
    bg_origin: np.ndarray  # world coordinates of canvas pixel (0, 0)
    zoom: np.ndarray  # T
    shift: np.ndarray  # T x 2
    sprites: list[_Sprite]
    tracks: list[_Track]
    z_order: list[int]  # drawing order (object indices, last on top)
    brightness: np.ndarray  # T
    contrast: np.ndarray  # T
    gains: np.ndarray  # T x 3
    light_dir: np.ndarray  # T x 2
    light_strength: np.ndarray  # T
    noise_sigma: float
    meta: dict = field(default_factory=dict)

    def camera(self, t: int) -> np.ndarray:
        """World -> screen: screen = z (world - shift - c) + c, c = frame centre."""
        H, W = self.spec.height, self.spec.width
        cx, cy = (W - 1) / 2.0, (H - 1) / 2.0
        z = float(self.zoom[t])
        sx, sy = self.shift[t]
        return _affine(z, 0, cx - z * (cx + sx), 0, z, cy - z * (cy + sy))

    def object_matrix(self, k: int, t: int) -> np.ndarray:
        """Sprite-local pixel -> screen pixel for object k at frame t."""
        sp, tr = self.sprites[k], self.tracks[k]
        c = (sp.alpha.shape[0] - 1) / 2.0
        return (self.camera(t) @ _translate(*tr.pos[t])
                @ _rot_scale(float(tr.angle[t]), float(tr.scale[t]) / sp.q) @ _translate(-c, -c))

    def frame_rng(self, t: int) -> np.random.Generator:
        return np.random.default_rng(self.seed_words + [0x5EED, int(t)])

    def render(self, t: int, with_image: bool = True):
        """Render frame t -> (image uint8 H x W x 3 or None, labels uint8 H x W, visible, full)."""
        H, W = self.spec.height, self.spec.width
        K = len(self.sprites)
        cam = self.camera(t)
        img = None
        if with_image:
            m = (cam @ _translate(*self.bg_origin))[:2]
            img = cv2.warpAffine(self.bg, m, (W, H), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_REFLECT)
        labels = np.zeros((H, W), np.uint8)
        for k in self.z_order:
            sp = self.sprites[k]
            mat = self.object_matrix(k, t)
            L = sp.alpha.shape[0]
            corners = np.array([[0, 0, 1], [L, 0, 1], [0, L, 1], [L, L, 1]], np.float64).T
            sc = mat @ corners
            x0 = max(int(math.floor(sc[0].min())) - 1, 0)
            y0 = max(int(math.floor(sc[1].min())) - 1, 0)
            x1 = min(int(math.ceil(sc[0].max())) + 2, W)
            y1 = min(int(math.ceil(sc[1].max())) + 2, H)
            if x1 <= x0 or y1 <= y0:
                continue
            mb = (_translate(-x0, -y0) @ mat)[:2]
            size = (x1 - x0, y1 - y0)
            a = cv2.warpAffine(sp.alpha, mb, size, flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            labels[y0:y1, x0:x1][a > 0.5] = k + 1
            if with_image:
                tex = cv2.warpAffine(sp.texture, mb, size, flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_REPLICATE)
                region = img[y0:y1, x0:x1]
                a3 = a[..., None]
                region *= 1.0 - a3
                region += tex * a3
        visible = np.bincount(labels.reshape(-1), minlength=K + 1)[1:K + 1].astype(np.float64)
        full = np.array([self.sprites[k].area * (self.tracks[k].scale[t] * self.zoom[t]
                                                  / self.sprites[k].q) ** 2 for k in range(K)])
        if not with_image:
            return None, labels, visible, full
        img = self._light(img, t)
        return img, labels, visible, full

    def _light(self, img: np.ndarray, t: int) -> np.ndarray:
        """Brightness/contrast drift, colour gains, illumination gradient, sensor noise."""
        H, W = self.spec.height, self.spec.width
        rng = self.frame_rng(t)
        c = np.float32(self.contrast[t])
        img *= c
        img += np.float32(0.5 - 0.5 * float(c) + float(self.brightness[t]))
        ys = (np.arange(H, dtype=np.float32) - (H - 1) / 2) / max(H, W)
        xs = (np.arange(W, dtype=np.float32) - (W - 1) / 2) / max(H, W)
        d = self.light_dir[t]
        illum = 1.0 + np.float32(self.light_strength[t]) * (
            xs[None, :] * np.float32(d[0]) + ys[:, None] * np.float32(d[1]))
        img *= illum[..., None] * self.gains[t].astype(np.float32)[None, None, :]
        noise = rng.standard_normal(img.shape, dtype=np.float32)
        noise *= np.float32(self.noise_sigma)
        img += noise
        img *= np.float32(255.0)
        img += np.float32(0.5)
        np.clip(img, 0, 255, out=img)
        return img.astype(np.uint8)


def _smooth_series(rng: np.random.Generator, T: int, drift: float, wobble: float) -> np.ndarray:
    t = np.arange(T, dtype=np.float64)
    u = t / max(T - 1, 1)
    return rng.uniform(-drift, drift) * u + _wobble(rng, t, rng.uniform(0, wobble))


def _pick_hues(rng: np.random.Generator, bg_hue: float, bg_sat: float, n: int) -> list[float]:
    hues: list[float] = []
    for _ in range(n):
        best, best_score = None, -1.0
        for _ in range(64):
            h = float(rng.random())
            d_bg = _hue_distance(h, bg_hue) if bg_sat > 0.2 else 0.5
            d_obj = min((_hue_distance(h, o) for o in hues), default=0.5)
            score = min(d_bg / 0.15, d_obj / 0.08, 1.0)
            if score > best_score:
                best, best_score = h, score
            if score >= 1.0:
                break
        hues.append(best)
    return hues


def _build_scene(spec: SequenceSpec, seed_words: list[int], attempt: int) -> _Scene:
    rng = np.random.default_rng(seed_words + [attempt])
    T, H, W, K = spec.num_frames, spec.height, spec.width, spec.num_objects
    extent = min(H, W)
    t = np.arange(T, dtype=np.float64)
    u = t / max(T - 1, 1)

    # Camera: slow pan + zoom (identity at frame 0) with a little shake.
    pan = np.array([rng.uniform(-0.15, 0.15) * W, rng.uniform(-0.1, 0.1) * H])
    shake = 0.004 * extent
    shift = pan[None, :] * u[:, None] + np.stack([_wobble(rng, t, shake, (1, 4)),
                                                  _wobble(rng, t, shake, (1, 4))], axis=1)
    zoom = np.exp(rng.uniform(-0.2, 0.2) * u + _wobble(rng, t, 0.03))

    # Background canvas covering every frame's view in world coordinates.
    cx, cy = (W - 1) / 2.0, (H - 1) / 2.0
    corners = np.array([[0, 0], [W, 0], [0, H], [W, H]], np.float64)
    pts = [(corners - [cx, cy]) / zoom[i] + [cx, cy] + shift[i] for i in range(T)]
    allp = np.concatenate(pts)
    lo = np.floor(allp.min(axis=0)) - 4
    hi = np.ceil(allp.max(axis=0)) + 4
    bw, bh = int(hi[0] - lo[0]), int(hi[1] - lo[1])
    bg_hue = float(rng.random())
    bg_sat_hi = rng.uniform(0.1, 0.6)
    bg = _texture(rng, bh, bw, bg_hue, (0.02, bg_sat_hi), (0.2, 0.85),
                  feature=extent * rng.uniform(0.04, 0.25), n_kinds=int(rng.integers(1, 3)),
                  grain=0.03)

    hues = _pick_hues(rng, bg_hue, bg_sat_hi, K)

    # Static distractors painted into the background (object-like, unlabelled).
    for _ in range(int(rng.integers(0, 3))):
        r = math.sqrt(rng.uniform(0.004, 0.03) * H * W / math.pi)
        d_hue = float(rng.choice(hues)) + rng.normal(0, 0.1) if rng.random() < 0.5 else float(
            rng.random())
        sp = _make_sprite(rng, r, d_hue, (0.2, 0.7), (0.25, 0.9), q=1.0)
        L = sp.alpha.shape[0]
        x = int(rng.integers(0, max(bw - L, 1)))
        y = int(rng.integers(0, max(bh - L, 1)))
        a = sp.alpha[: bh - y, : bw - x, None]
        reg = bg[y:y + a.shape[0], x:x + a.shape[1]]
        reg *= 1.0 - a
        reg += sp.texture[: a.shape[0], : a.shape[1]] * a

    # Objects.
    area_scale = min(1.0, 2.5 / (K + 0.5))
    sprites, tracks = [], []
    positions: list[np.ndarray] = []
    radii: list[float] = []
    for k in range(K):
        area = rng.uniform(*OBJECT_AREA) * area_scale * H * W
        radius = math.sqrt(area / math.pi)
        sprites.append(_make_sprite(rng, radius, hues[k], (0.45, 0.95), (0.35, 1.0)))
        p = rng.random()
        mode = "enter" if p < 0.25 else ("leave" if p < 0.5 else "wander")
        tr = _make_track(rng, T, H, W, radius, mode, positions, radii)
        positions.append(tr.pos[0])
        radii.append(radius)
        tracks.append(tr)
    z_order = [int(i) for i in rng.permutation(K)]

    brightness = rng.uniform(-0.05, 0.05) + _smooth_series(rng, T, 0.12, 0.05)
    contrast = np.exp(rng.uniform(-0.1, 0.1) + _smooth_series(rng, T, 0.25, 0.08))
    gains = np.exp(np.stack([_smooth_series(rng, T, 0.08, 0.03) for _ in range(3)], axis=1))
    light_ang = rng.uniform(0, 2 * math.pi) + _smooth_series(rng, T, 1.5, 0.3)
    light_dir = np.stack([np.cos(light_ang), np.sin(light_ang)], axis=1)
    light_strength = rng.uniform(0.0, 0.3) + np.zeros(T)
    noise_sigma = float(rng.uniform(0.004, 0.02))

    return _Scene(spec=spec, seed_words=list(seed_words), bg=bg, bg_origin=lo, zoom=zoom,
                  shift=shift, sprites=sprites, tracks=tracks, z_order=z_order,
                  brightness=brightness, contrast=contrast, gains=gains, light_dir=light_dir,
                  light_strength=light_strength, noise_sigma=noise_sigma,
                  meta={"attempt": attempt})


def _scene_for(spec: SequenceSpec, seed: int | Sequence[int], max_attempts: int = 30) -> _Scene:
    words = _seed_words(seed)
    best, best_score = None, -1.0
    min_px = min(_MIN_VISIBLE_PX, 0.002 * spec.height * spec.width + 4)
    for attempt in range(max_attempts):
        scene = _build_scene(spec, words, attempt)
        _, _, vis, full = scene.render(0, with_image=False)
        frac = vis / np.maximum(full, 1.0)
        if np.all(frac >= _MIN_VISIBLE_FRACTION) and np.all(vis >= min_px):
            return scene
        score = float(np.min(frac))
        if score > best_score:
            best, best_score = scene, score
    logger.warning("%s: no layout met the frame-0 visibility rule in %d attempts; using the "
                   "best one (min visible fraction %.2f)", spec.name, max_attempts, best_score)
    return best


def generate_sequence(spec: SequenceSpec, seed: int | Sequence[int]) -> SyntheticSequence:
    """Render a whole sequence in memory (deterministic in ``spec`` and ``seed``).

    ``seed`` is an int or a sequence of non-negative ints (``numpy.random.SeedSequence``
    entropy); the writer uses ``(seed, crc32(preset), sequence index)``.
    """
    scene = _scene_for(spec, seed)
    T, H, W, K = spec.num_frames, spec.height, spec.width, spec.num_objects
    images = np.empty((T, H, W, 3), np.uint8)
    masks = np.empty((T, H, W), np.uint8)
    visible = np.empty((T, K))
    full = np.empty((T, K))
    for t in range(T):
        images[t], masks[t], visible[t], full[t] = scene.render(t)
    return SyntheticSequence(spec=spec, images=images, masks=masks, visible_px=visible,
                             full_px=full)


# ============================================================================ scribbles


def _frame_ranking(visible_px: np.ndarray, full_px: np.ndarray):
    """Per frame: number of well-visible objects and a visibility quality score."""
    frac = np.clip(visible_px / np.maximum(full_px, 1.0), 0, 1)
    well = (visible_px >= 16) & (frac >= 0.1)
    return well.sum(axis=1), frac.mean(axis=1) + 0.5 * frac.min(axis=1)


def draw_initial_scribbles(masks: np.ndarray, sequence: str, num_scribbles: int,
                           num_objects: int | None = None,
                           visible_px: np.ndarray | None = None,
                           full_px: np.ndarray | None = None) -> list[dict]:
    """Draw ``num_scribbles`` initial scribbles with the official robot (one frame each).

    The frames are those where the objects are most visible: candidates are ranked by the
    number of well-visible objects (>= 16 px and >= 10 % of their area visible), then by
    being at least ``T // (2 num_scribbles)`` frames away from frames already used, then by
    mean + 0.5 x minimum visible fraction (``visible_px`` / ``full_px``; without them, pixel
    counts relative to each object's largest).  On a candidate frame
    ``InteractiveScribblesRobot(**ROBOT_DEFAULT_PARAMETERS).interact`` (the evaluation
    service's robot) runs against an empty prediction, so it scribbles inside every object
    and nowhere on the background.  A frame where the robot leaves an object without a
    scribble (e.g. a sliver) is passed over for the next candidate (up to 12 tries; then
    the try that covered most objects is kept, with a warning).  Each file uses a different
    frame.  Returns dicts in the official format
    ``{"scribbles": [[path dicts] per frame], "sequence": name}``; the robot's time stamps are
    replaced by fixed values (path i: start ``i``, end ``i + 0.5``) for reproducible files.
    """
    ensure_compat()
    # imported only after ensure_compat() has adapted davisinteractive (util.davis_compat)
    from davisinteractive.evaluation.service import ROBOT_DEFAULT_PARAMETERS
    from davisinteractive.robot import InteractiveScribblesRobot

    masks = np.asarray(masks)
    T = masks.shape[0]
    K = int(num_objects) if num_objects is not None else int(masks.max())
    if num_scribbles > T:
        raise ValueError(f"{sequence}: {num_scribbles} scribble files need as many frames")
    if visible_px is None or full_px is None:
        counts = np.stack([(masks == k + 1).reshape(T, -1).sum(axis=1) for k in range(K)],
                          axis=1).astype(np.float64)
        visible_px, full_px = counts, np.maximum(counts.max(axis=0, keepdims=True), 1.0)
    n_well, quality = _frame_ranking(np.asarray(visible_px, np.float64),
                                     np.asarray(full_px, np.float64))
    robot = InteractiveScribblesRobot(**ROBOT_DEFAULT_PARAMETERS)
    gap = max(T // (2 * max(num_scribbles, 1)), 1)
    wanted = set(range(1, K + 1))
    chosen: list[int] = []
    out: list[dict] = []
    for _ in range(num_scribbles):
        def key(f: int):
            far = all(abs(f - c) >= gap for c in chosen)
            return (-int(n_well[f]), not far, -float(quality[f]), f)

        cands = sorted((f for f in range(T) if f not in chosen), key=key)
        best = None  # (number of objects scribbled, frame, paths)
        for f in cands[:12]:
            gt = masks[f:f + 1].astype(np.int64)
            res = robot.interact(sequence, np.zeros_like(gt), gt, nb_objects=K, frame=0)
            paths = res["scribbles"][0]
            n_got = len({p["object_id"] for p in paths} & wanted)
            if best is None or n_got > best[0]:
                best = (n_got, f, paths)
            if n_got == K:
                break
        n_got, f, paths = best
        if n_got < K:
            logger.warning("%s: the robot scribbled on %d of %d objects on frame %d",
                           sequence, n_got, K, f)
        chosen.append(f)
        frames: list[list[dict]] = [[] for _ in range(T)]
        for i, p in enumerate(paths):
            frames[f].append({"path": p["path"], "object_id": int(p["object_id"]),
                              "start_time": float(i), "end_time": float(i) + 0.5})
        out.append({"scribbles": frames, "sequence": sequence})
    return out


# ============================================================================ writing


def _encode_jpeg(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=None, sort_keys=False).encode("utf-8"))


def _marker_key(spec: SequenceSpec, seed_words: list[int]) -> str:
    payload = json.dumps({"version": GENERATOR_VERSION, "spec": asdict(spec),
                          "seed": seed_words, "jpeg_quality": JPEG_QUALITY}, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _sequence_dirs(root: Path, name: str) -> list[Path]:
    return [root / IMAGES_DIR / name, root / ANNOTATIONS_DIR / name, root / SCRIBBLES_DIR / name]


def _is_complete(root: Path, spec: SequenceSpec, key: str) -> bool:
    marker = root / MARKER_DIR / f"{spec.name}.json"
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if info.get("key") != key or not info.get("complete", False):
        return False
    img_dir, ann_dir, scr_dir = _sequence_dirs(root, spec.name)
    last = spec.num_frames - 1
    return ((img_dir / f"{last:05d}.jpg").is_file() and (ann_dir / f"{last:05d}.png").is_file()
            and all((scr_dir / f"{i:03d}.json").is_file()
                    for i in range(1, spec.num_scribbles + 1)))


def write_sequence(root: str | os.PathLike, spec: SequenceSpec, seed: int | Sequence[int],
                   force: bool = False) -> bool:
    """Generate one sequence into the DAVIS layout under ``root``; return False if skipped.

    A sequence is skipped when its marker (``.synthetic/<name>.json``) says complete and
    matches the generator version, spec and seed.  The marker is written (as incomplete)
    before any file of the sequence, so an interrupted sequence is redone on the next run.
    Sequence folders that exist without any marker are never overwritten (they may be real
    data) unless ``force`` is set.
    """
    root = Path(root)
    words = _seed_words(seed)
    key = _marker_key(spec, words)
    if not force and _is_complete(root, spec, key):
        logger.debug("%s: complete, skipped", spec.name)
        return False
    marker = root / MARKER_DIR / f"{spec.name}.json"
    dirs = _sequence_dirs(root, spec.name)
    if any(d.exists() for d in dirs):
        if not marker.exists() and not force:
            raise FileExistsError(
                f"{root}: sequence folders for {spec.name!r} exist but were not written by this "
                "generator; refusing to overwrite them (use force=True / --force)")
        for d in dirs:
            if d.exists():
                shutil.rmtree(d)
    # Claim the folders first: an interrupted run leaves an incomplete marker behind, which
    # lets the next run recognise them as its own and redo them.
    _write_json(marker, {"key": key, "name": spec.name, "complete": False})

    seq = generate_sequence(spec, words)
    img_dir, ann_dir, scr_dir = dirs
    for t in range(spec.num_frames):
        atomic_write_bytes(img_dir / f"{t:05d}.jpg", _encode_jpeg(seq.images[t]))
        write_palette_png(ann_dir / f"{t:05d}.png", seq.masks[t])
    scribbles = draw_initial_scribbles(seq.masks, spec.name, spec.num_scribbles,
                                       spec.num_objects, seq.visible_px, seq.full_px)
    scr_dir.mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(scribbles, start=1):
        _write_json(scr_dir / f"{i:03d}.json", s)
    frames = [int(next(f for f, p in enumerate(s["scribbles"]) if p)) for s in scribbles
              if any(s["scribbles"])]
    _write_json(marker, {"key": key, "name": spec.name, "complete": True,
                         "scribble_frames": frames})
    return True


def sequence_metadata(root: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """davis.json-style metadata of the sequences under ``root``.

    Read from ``synthetic.json`` when present, else found by scanning the folders (frame
    count, image size and object count from the annotations, scribble file count; set from
    the ImageSets lists, ``val`` when listed there).
    """
    root = Path(root)
    manifest = root / MANIFEST
    if manifest.is_file():
        return json.loads(manifest.read_text())["sequences"]
    val = set()
    val_list = root / IMAGESETS_DIR / "val.txt"
    if val_list.is_file():
        val = {ln.strip() for ln in val_list.read_text().splitlines() if ln.strip()}
    meta = {}
    ann_root = root / ANNOTATIONS_DIR
    if not ann_root.is_dir():
        raise FileNotFoundError(f"{root}: no {ANNOTATIONS_DIR} folder")
    for d in sorted(p for p in ann_root.iterdir() if p.is_dir()):
        pngs = sorted(d.glob("*.png"))
        if not pngs:
            continue
        labels = [read_annotation(p) for p in pngs]  # as the official tools read them
        h, w = labels[0].shape
        # the largest object id (254 and 255 are void in DAVIS, never objects)
        n_obj = max((max(object_ids(m, DAVIS_VOID_LABELS), default=0) for m in labels), default=0)
        n_scr = len(list((root / SCRIBBLES_DIR / d.name).glob("*.json")))
        meta[d.name] = SequenceSpec(d.name, len(pngs), h, w, max(n_obj, 1), n_scr,
                                    "val" if (not val or d.name in val) else "train"
                                    ).davis_entry()
    return meta


def _write_lists(root: Path, specs: list[SequenceSpec], preset: str, seed: int) -> None:
    train = [s.name for s in specs if s.subset == "train" or preset == "tiny"]
    val = [s.name for s in specs if s.subset == "val"]
    for name, items in (("train.txt", train), ("val.txt", val)):
        atomic_write_bytes(root / IMAGESETS_DIR / name,
                           "".join(f"{n}\n" for n in items).encode("utf-8"))
    _write_json(root / MANIFEST, {
        "generator": "dataset.synthetic", "version": GENERATOR_VERSION, "preset": preset,
        "seed": seed, "sequences": {s.name: s.davis_entry() for s in specs}})


def _write_one(args) -> tuple[str, bool]:
    root, spec, words, force = args
    return spec.name, write_sequence(root, spec, words, force=force)


def write_dataset(out: str | os.PathLike, preset: str, seed: int = 0, workers: int = 1,
                  progress: bool = False, force: bool = False,
                  specs: list[SequenceSpec] | None = None) -> dict[str, Any]:
    """Write a video preset (or explicit ``specs``) in the DAVIS layout under ``out``.

    Sequence ``i`` uses the seed words ``(seed, crc32(preset), i)``, so the output does not
    depend on ``workers``.  Complete sequences are skipped (resumable).  Returns a summary
    ``{"generated": [...], "skipped": [...], "root": str}``.
    """
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    specs = list(specs) if specs is not None else preset_specs(preset, seed)
    jobs = [(root, s, [int(seed), _salt(preset), i], force) for i, s in enumerate(specs)]
    generated, skipped = [], []
    bar = None
    if progress:
        bar = tqdm(total=len(jobs), desc=f"synthetic {preset}", unit="seq")
    try:
        if workers <= 1:
            results: Iterable = map(_write_one, jobs)
            for name, done in results:
                (generated if done else skipped).append(name)
                if bar is not None:
                    bar.update(1)
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(_write_one, j) for j in jobs]
                for fut in as_completed(futures):
                    name, done = fut.result()
                    (generated if done else skipped).append(name)
                    if bar is not None:
                        bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    _write_lists(root, specs, preset, seed)
    logger.info("%s: %d sequences generated, %d already complete", root, len(generated),
                len(skipped))
    return {"root": str(root), "generated": sorted(generated), "skipped": sorted(skipped)}


# ============================================================================ static pairs


def generate_static_pair(rng: np.random.Generator, size: int | tuple[int, int] = 256
                         ) -> tuple[np.ndarray, np.ndarray]:
    """One image with a single salient textured object: (H x W x 3 uint8, H x W 0/255 mask)."""
    H, W = (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    bg_hue = float(rng.random())
    bg_sat = rng.uniform(0.05, 0.5)
    bg = _texture(rng, H, W, bg_hue, (0.02, bg_sat), (0.2, 0.85),
                  feature=min(H, W) * rng.uniform(0.04, 0.25), n_kinds=int(rng.integers(1, 3)),
                  grain=0.03)
    hue = _pick_hues(rng, bg_hue, bg_sat, 1)[0]
    area = rng.uniform(0.08, 0.35) * H * W
    radius = math.sqrt(area / math.pi)
    sp = _make_sprite(rng, radius, hue, (0.45, 0.95), (0.35, 1.0))
    L = sp.alpha.shape[0]
    c = (L - 1) / 2.0
    centre = np.array([W / 2 + rng.normal(0, 0.12) * W, H / 2 + rng.normal(0, 0.12) * H])
    mat = (_translate(*centre) @ _rot_scale(rng.uniform(0, 2 * math.pi), 1.0 / sp.q)
           @ _translate(-c, -c))[:2]
    a = cv2.warpAffine(sp.alpha, mat, (W, H), flags=cv2.INTER_LINEAR, borderValue=0)
    tex = cv2.warpAffine(sp.texture, mat, (W, H), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)
    img = bg * (1 - a[..., None]) + tex * a[..., None]
    img = (img - 0.5) * rng.uniform(0.85, 1.15) + 0.5 + rng.uniform(-0.08, 0.08)
    img += rng.normal(0, rng.uniform(0.004, 0.02), size=img.shape)
    img = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
    mask = np.where(a > 0.5, 255, 0).astype(np.uint8)
    return img, mask


def generate_static_pairs(out_dir: str | os.PathLike, n: int, size: int | tuple[int, int] = 256,
                          seed: int = 0) -> list[str]:
    """Write ``n`` pairs ``NNNNN.jpg`` + ``NNNNN.png`` (0/255 grayscale mask) in ``out_dir``.

    Pair ``i`` uses the seed words ``(seed, crc32('static'), i)``.  Existing pairs written with
    the same parameters (recorded in ``synthetic_static.json``) are kept; returns the stems.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hw = [size, size] if isinstance(size, (int, np.integer)) else [int(size[0]), int(size[1])]
    params = {"version": GENERATOR_VERSION, "seed": int(seed), "size": hw,
              "jpeg_quality": JPEG_QUALITY}
    manifest = out / "synthetic_static.json"
    same = False
    if manifest.is_file():
        try:
            same = json.loads(manifest.read_text()).get("params") == params
        except (OSError, ValueError):
            same = False
    stems = []
    for i in range(n):
        stem = f"{i:05d}"
        stems.append(stem)
        jpg, png = out / f"{stem}.jpg", out / f"{stem}.png"
        if same and jpg.is_file() and png.is_file():
            continue
        rng = np.random.default_rng([int(seed), _salt("static"), i])
        img, mask = generate_static_pair(rng, tuple(hw))
        atomic_write_bytes(jpg, _encode_jpeg(img))
        buf = io.BytesIO()
        Image.fromarray(mask).save(buf, format="PNG")
        atomic_write_bytes(png, buf.getvalue())
    _write_json(manifest, {"params": params, "count": n})
    return stems


#: the file name the LVIS loader looks for (``dataset.lvis_dataset``, ``<root>/lvis_v1_train.json``)
INSTANCE_JSON = "lvis_v1_train.json"


def _rle_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE of a boolean mask: run lengths of the column-major pixel order,
    starting with a (possibly empty) run of zeros."""
    flat = np.asarray(mask, bool).T.ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return runs if not flat[0] else [0] + runs


def generate_instance_set(out_dir: str | os.PathLike, n: int, height: int, width: int,
                          seed: int = 0, max_objects: int = 4) -> Path:
    """Write ``n`` multi-object synthetic frames as a COCO/LVIS-format instance set in
    ``out_dir``: ``NNNNN.jpg`` and :data:`INSTANCE_JSON` (one annotation per visible
    object, uncompressed RLE, ``area`` in pixels). It is the generated stand-in of the LVIS
    instances of S2M training (REFERENCE.md f.4): a target object among other objects and
    object-like distractors, read through the real LVIS loader. Frame ``i`` is the first frame
    of a sequence with ``1 + i % max_objects`` objects, seed words ``(seed, crc32('instances'),
    i)``. A set written with the same parameters (recorded in the JSON) is kept; returns the
    JSON path.
    """
    out = Path(out_dir)
    json_path = out / INSTANCE_JSON
    params = {"version": GENERATOR_VERSION, "seed": int(seed), "count": int(n),
              "size": [int(height), int(width)], "max_objects": int(max_objects),
              "jpeg_quality": JPEG_QUALITY}
    if json_path.is_file():
        try:
            if json.loads(json_path.read_text()).get("synthetic_params") == params:
                return json_path
        except (OSError, ValueError):
            pass
    out.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(int(n)):
        spec = SequenceSpec(f"instances-{i:05d}", 1, int(height), int(width),
                            1 + i % int(max_objects), 0, "train")
        seq = generate_sequence(spec, [int(seed), _salt("instances"), i])
        name = f"{i:05d}.jpg"
        atomic_write_bytes(out / name, _encode_jpeg(seq.images[0]))
        images.append({"id": i + 1, "file_name": name, "height": int(height),
                       "width": int(width)})
        for k in range(1, spec.num_objects + 1):
            m = seq.masks[0] == k
            area = int(m.sum())
            if area == 0:
                continue
            ys, xs = np.nonzero(m)
            bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                    int(ys.max() - ys.min() + 1)]
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1,
                                "category_id": 1, "area": area, "bbox": bbox,
                                "segmentation": {"size": [int(height), int(width)],
                                                 "counts": _rle_counts(m)}})
    _write_json(json_path, {"synthetic_params": params, "images": images,
                            "annotations": annotations,
                            "categories": [{"id": 1, "name": "object"}]})
    return json_path


# ============================================================================ davisinteractive


class DavisRegistration:
    """Handle returned by :func:`register_with_davisinteractive`; ``restore()`` undoes it.

    Usable as a context manager (restores on exit).
    """

    def __init__(self, added: dict[str, Any], previous_entries: dict[str, Any],
                 previous_sets: dict[str, list[str]]):
        self.sequences = sorted(added)
        self._added = added
        self._previous_entries = previous_entries
        self._previous_sets = previous_sets
        self._active = True

    def restore(self) -> None:
        if not self._active:
            return
        # after ensure_compat() (called when registering), as every davisinteractive import
        from davisinteractive.dataset.davis import Davis

        for name in self._added:
            if self._previous_entries.get(name) is None:
                Davis.dataset.pop(name, None)
            else:
                Davis.dataset[name] = self._previous_entries[name]
        for subset, names in self._previous_sets.items():
            Davis.sets[subset] = names
        self._active = False

    def __enter__(self) -> DavisRegistration:
        return self

    def __exit__(self, *exc) -> bool:
        self.restore()
        return False


def _subset_metadata(root: Path, subset: str) -> dict[str, dict[str, Any]]:
    """Metadata of the sequences of ``root`` listed in ``ImageSets/2017/<subset>.txt``.

    Without that list, the sequences whose ``set`` is ``subset``, or all of them.
    """
    meta = sequence_metadata(root)
    listing = root / IMAGESETS_DIR / f"{subset}.txt"
    if listing.is_file():
        names = [ln.strip() for ln in listing.read_text().splitlines() if ln.strip()]
    else:
        names = [n for n, e in meta.items() if e.get("set") == subset] or list(meta)
    wanted = {n: meta[n] for n in names if n in meta}
    if not wanted:
        raise ValueError(f"{root}: no sequences listed for subset {subset!r}")
    return wanted


def _same_metadata(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two ``Davis.dataset`` entries agree on what the session relies on."""
    keys = ("num_frames", "num_objects", "num_scribbles")
    return (all(int(a[k]) == int(b[k]) for k in keys)
            and [int(v) for v in a["image_size"]] == [int(v) for v in b["image_size"]])


def register_with_davisinteractive(root_or_metadata: str | os.PathLike | dict[str, dict],
                                   subset: str = "val", exclusive: bool = True
                                   ) -> DavisRegistration:
    """Make the official ``DavisInteractiveSession`` see synthetic sequences.

    davisinteractive keeps its knowledge of DAVIS in two class attributes of
    ``davisinteractive.dataset.davis.Davis`` (shared by every instance and module; they are
    the module-level tables built from the bundled ``davis.json`` at import):

    * ``Davis.dataset``: dict sequence name -> metadata (``num_frames``, ``num_objects``,
      ``image_size`` = [width, height], ``num_scribbles``, ``set``, ``year``, ``attributes``,
      ``eval_t``, ``name``).  ``Davis.check_files``, ``load_annotations``/``load_images``,
      ``EvaluationService`` (samples = sequence x scribble index, summaries),
      ``LocalStorage`` and ``DavisInteractiveSession`` (time budget = max_time x
      num_objects) all read it.
    * ``Davis.sets``: dict subset name -> list of sequence names; ``EvaluationService``
      evaluates ``Davis.sets[subset]`` (the local connector accepts ``train``, ``val`` and
      ``trainval``).

    This function adds one ``Davis.dataset`` entry per sequence (given a root: the
    sequences listed in its ``ImageSets/2017/<subset>.txt``, with metadata from
    ``synthetic.json`` or a folder scan, see :func:`sequence_metadata`; or a dict name ->
    entry), with ``set`` = ``subset``, and sets ``Davis.sets[subset]`` to the synthetic sequences (``exclusive=True``,
    so the session does not also expect the real DAVIS files) or appends them
    (``exclusive=False``); ``Davis.sets['trainval']`` is updated to train + val.  Entries of
    real DAVIS sequences are not replaced by different metadata (``ValueError``).  The
    returned :class:`DavisRegistration` restores the previous tables (``restore()`` or
    ``with``).  Call it after :func:`util.davis_compat.ensure_compat` (it does so itself).
    """
    ensure_compat()
    # imported only after ensure_compat() has adapted davisinteractive (util.davis_compat)
    from davisinteractive.dataset.davis import Davis

    if isinstance(root_or_metadata, dict):
        meta = root_or_metadata
    else:
        meta = _subset_metadata(Path(root_or_metadata), subset)
    if not meta:
        raise ValueError("no sequences to register")
    added: dict[str, Any] = {}
    previous_entries: dict[str, Any] = {}
    for name, entry in meta.items():
        e = dict(entry)
        e["name"] = name
        e["set"] = subset
        e.setdefault("year", 2017)
        e.setdefault("attributes", [])
        e.setdefault("eval_t", False)
        old = Davis.dataset.get(name)
        if old is not None:
            if not _same_metadata(old, e):
                raise ValueError(f"sequence {name!r} already exists in davisinteractive's "
                                 "tables with different metadata")
        previous_entries[name] = old
        added[name] = e
    previous_sets = {s: list(Davis.sets[s]) for s in (subset, "trainval") if s in Davis.sets}
    for name, e in added.items():
        Davis.dataset[name] = e
    names = sorted(added)
    if exclusive:
        Davis.sets[subset] = names
    else:
        Davis.sets[subset] = list(Davis.sets[subset]) + [n for n in names
                                                         if n not in Davis.sets[subset]]
    Davis.sets["trainval"] = list(Davis.sets["train"]) + list(Davis.sets["val"])
    logger.info("registered %d synthetic sequences with davisinteractive (subset %s)",
                len(names), subset)
    return DavisRegistration(added, previous_entries, previous_sets)


def register_if_synthetic(root: str | os.PathLike, subset: str = "val"
                          ) -> DavisRegistration | None:
    """Register a generated root with davisinteractive when its tables do not describe it.

    Returns ``None`` for a root without ``synthetic.json`` (real DAVIS) and for a root whose
    ``subset`` sequences all match the bundled DAVIS tables already (the ``davis-val``
    preset); otherwise registers the sequences listed in ``ImageSets/2017/<subset>.txt``
    (exclusively, see :func:`register_with_davisinteractive`) and returns the handle.
    """
    root = Path(root)
    if not (root / MANIFEST).is_file():
        return None
    wanted = _subset_metadata(root, subset)

    ensure_compat()
    # imported only after ensure_compat() has adapted davisinteractive (util.davis_compat)
    from davisinteractive.dataset.davis import Davis

    official = list(Davis.sets.get(subset, []))
    if sorted(official) == sorted(wanted) and all(
            _same_metadata(Davis.dataset[n], wanted[n]) for n in wanted):
        return None
    return register_with_davisinteractive(wanted, subset=subset, exclusive=True)


# ============================================================================ CLI


def _parse_size(text: str) -> tuple[int, int]:
    parts = text.lower().replace("x", " ").split()
    if len(parts) == 1:
        return int(parts[0]), int(parts[0])
    if len(parts) == 2:
        return int(parts[0]), int(parts[1])
    raise argparse.ArgumentTypeError(f"size must be N or HxW, got {text!r}")


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dataset.synthetic",
        description=(
            "Generate procedural synthetic data in the DAVIS 2017 layout "
            "(JPEGImages/480p, Annotations/480p palette PNGs, ImageSets/2017/{train,val}.txt, "
            "Scribbles/<seq>/NNN.json drawn by the official davisinteractive robot). "
            "Deterministic for a seed; re-running skips complete sequences."),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "presets:\n"
            "  tiny         3 sequences, 8-12 frames, 64x96, 1-3 objects (tests)\n"
            "  davis-val    the 30 DAVIS 2017 val sequences' names, lengths, sizes, object and\n"
            "               scribble counts: the unmodified DavisInteractiveSession(\n"
            "               davis_root=OUT, subset='val') runs on it (~2000 frames at 480p)\n"
            "  train-small  16 train + 4 val sequences, 30 frames, 240x432 (smoke training)\n"
            "  train-quarter  48 train + 4 val sequences at 120x216 (lite training at a\n"
            "               quarter of 480p)\n"
            "  static       image/mask pairs NNNNN.jpg + NNNNN.png (0/255) directly in OUT\n"))
    p.add_argument("--out", required=True, help="output root folder")
    p.add_argument("--preset", required=True, choices=PRESETS, help="what to generate")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes generating sequences in parallel (default 1)")
    p.add_argument("--count", type=int, default=200, help="static preset: number of pairs")
    p.add_argument("--size", type=_parse_size, default=(256, 256),
                   help="static preset: image size N or HxW (default 256)")
    p.add_argument("--force", action="store_true",
                   help="regenerate complete sequences and overwrite foreign folders")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    """Generate a preset; 0 on success, 2 for bad input (e.g. --out is a file), one line."""
    args = _build_parser().parse_args(argv)
    try:
        require_output_dir(args.out, "--out")
        return _main(args)
    except (InputError, FileExistsError) as exc:
        return report(exc)


def _main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        try:  # the official robot logs every call at INFO through absl (optional dependency)
            from absl import logging as absl_logging

            absl_logging.set_verbosity(absl_logging.WARNING)
        except ImportError:
            pass
    if args.workers > 1:
        cv2.setNumThreads(1)
    if args.preset == "static":
        if args.count < 0:
            raise SystemExit("--count must be >= 0")
        stems = generate_static_pairs(args.out, args.count, args.size, args.seed)
        logger.info("%s: %d static pairs", args.out, len(stems))
        return 0
    summary = write_dataset(args.out, args.preset, seed=args.seed, workers=args.workers,
                            progress=not args.no_progress, force=args.force)
    logger.info("done: %d generated, %d skipped", len(summary["generated"]),
                len(summary["skipped"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
