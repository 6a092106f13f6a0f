"""LVIS v1 instances as scribble-to-mask training samples (REFERENCE.md f.4).

The reference trains S2M on the static image/mask sets (used twice) plus every LVIS v1 train
instance larger than 50 x 50 px. This module provides

* :class:`LVISInstances` -- the annotation index: the JSON is read once; targets are the
  instances with ``area > 50 * 50``; for every image it also keeps the instances with
  ``area > 30 * 30`` (the candidates of the "LVIS extras");
* :class:`LVISS2MDataset` -- samples with exactly the keys, shapes and dtypes of
  :class:`dataset.static_dataset.S2MDataset` (so both can be put in one ConcatDataset), built
  with the same augmentation, existing-mask and scribble helpers, the LVIS scale range 0.8-1.0
  and the LVIS extras.

Annotation format (COCO style)::

    {"images": [{"id", "file_name" or "coco_url", "height", "width"}, ...],
     "annotations": [{"id", "image_id", "category_id", "area", "bbox",
                      "segmentation": [[x1, y1, x2, y2, ...], ...]}, ...]}

Polygons are rasterised with ``cv2.fillPoly`` (no pycocotools); uncompressed RLE
(``{"size": [h, w], "counts": [int, ...]}``) is accepted too, compressed (string) RLE is not.

Image files: ``file_name`` when present, else the last part of ``coco_url``. They are looked up
as ``<image_root>/<name>`` and, when ``coco_url`` names a folder (``train2017`` / ``val2017``;
LVIS v1 train uses images of both), ``<image_root>/<folder>/<name>``; so ``image_root`` may be
the COCO ``train2017`` folder itself or the COCO root holding ``train2017`` and ``val2017``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from torch.utils.data import Dataset

from dataset.common import (
    CorruptFileError,
    DatasetError,
    MissingFileError,
    SizeMismatchError,
    read_image,
    sample_rng,
)
from dataset.mask_perturb import perturb_mask
from dataset.scribble_sim import scribbles_from_errors
from dataset.static_dataset import s2m_augmentation, s2m_sample

logger = logging.getLogger(__name__)

__all__ = [
    "LVISInstances",
    "LVISS2MDataset",
    "Instance",
    "rasterize_segmentation",
    "TARGET_MIN_AREA",
    "EXTRA_MIN_AREA",
]

TARGET_MIN_AREA = 50 * 50
EXTRA_MIN_AREA = 30 * 30
SUPERSAMPLE = 4

LVIS_LAYOUT_HINT = ("expected a COCO-style LVIS JSON (images / annotations with polygon "
                    "segmentations) and a COCO image folder (train2017 / val2017, or their parent)")


# ----------------------------------------------------------------------------- rasterisation


def rasterize_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """H x W bool mask of a COCO segmentation (list of polygons, or uncompressed RLE).

    Polygon coordinates are pixel-edge coordinates (a pixel ``(x, y)`` covers
    ``[x, x + 1) x [y, y + 1)``); each polygon is filled ``SUPERSAMPLE`` (4) times finer over its
    bounding box and a pixel is in the mask when at least half of it is covered, so a polygon
    that outlines whole pixels fills exactly them (``cv2.fillPoly`` alone includes both
    boundary rows and columns). Several polygons make a union.
    """
    h, w = int(height), int(width)
    mask = np.zeros((h, w), np.uint8)
    if isinstance(segmentation, dict):
        counts = segmentation.get("counts")
        if not isinstance(counts, list):
            raise ValueError("compressed (string) RLE segmentations are not supported")
        size = segmentation.get("size", [h, w])
        rh, rw = int(size[0]), int(size[1])
        flat = np.zeros(rh * rw, np.uint8)
        pos, val = 0, 0
        for c in counts:
            c = int(c)
            if val:
                flat[pos:pos + c] = 1
            pos += c
            val ^= 1
        m = flat.reshape(rw, rh).T  # RLE runs are column-major
        if (rh, rw) != (h, w):
            m = cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST)
        return m > 0
    polys = [np.asarray(p, np.float64).reshape(-1, 2) for p in segmentation]
    polys = [p for p in polys if len(p) >= 3]
    if not polys:
        return mask > 0
    pts = np.concatenate(polys)
    x0, y0 = max(int(np.floor(pts[:, 0].min())) - 1, 0), max(int(np.floor(pts[:, 1].min())) - 1, 0)
    x1, y1 = min(int(np.ceil(pts[:, 0].max())) + 1, w), min(int(np.ceil(pts[:, 1].max())) + 1, h)
    if x1 <= x0 or y1 <= y0:
        return mask > 0
    # draw SUPERSAMPLE x finer over the polygons' box, keep pixels at least half covered
    f = SUPERSAMPLE
    canvas = np.zeros(((y1 - y0) * f, (x1 - x0) * f), np.uint8)
    for p in polys:  # one by one: overlapping polygons are a union, not even-odd
        q = ((p - (x0, y0)) * f - 0.5) * 8  # sub-pixel centres, 3 fractional bits
        cv2.fillPoly(canvas, [np.round(q).astype(np.int32)], 255, lineType=cv2.LINE_8, shift=3)
    small = cv2.resize(canvas, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
    mask[y0:y1, x0:x1] = small >= 128
    return mask > 0


def _polygon_area(segmentation: Any) -> float:
    """Area of a polygon list (shoelace), used when an annotation has no ``area``."""
    if isinstance(segmentation, dict):
        counts = segmentation.get("counts")
        return float(sum(counts[1::2])) if isinstance(counts, list) else 0.0
    total = 0.0
    for poly in segmentation:
        p = np.asarray(poly, np.float64).reshape(-1, 2)
        if len(p) >= 3:
            total += 0.5 * abs(np.dot(p[:, 0], np.roll(p[:, 1], -1))
                               - np.dot(p[:, 1], np.roll(p[:, 0], -1)))
    return total


# ----------------------------------------------------------------------------- index


@dataclass(frozen=True)
class Instance:
    """One annotation: its id, image index (into ``LVISInstances.images``), area and polygons."""

    ann_id: int
    image: int
    area: float
    segmentation: Any  # list of float32 arrays (polygons) or an uncompressed RLE dict


@dataclass(frozen=True)
class ImageEntry:
    image_id: int
    names: tuple[str, ...]  # relative candidate paths, first = preferred
    height: int
    width: int


class LVISInstances:
    """Index of an LVIS (COCO-style) annotation file.

    Args:
        image_root: COCO image folder (``train2017`` itself, or the folder holding
            ``train2017`` / ``val2017``).
        json_path: the annotation JSON (e.g. ``lvis_v1_train.json``).
        target_min_area: instances with ``area`` strictly above this are targets (50 x 50).
        extra_min_area: instances with ``area`` strictly above this are extras candidates
            (30 x 30).

    Attributes:
        images: list of :class:`ImageEntry` (only images with at least one target).
        targets: list of :class:`Instance`, sorted by (image, annotation id).
        candidates: per image index, the list of :class:`Instance` with area > extra_min_area
            (targets included), sorted by annotation id.

    Raises:
        MissingFileError: the JSON or the image folder does not exist (named).
        CorruptFileError: the JSON cannot be parsed or lacks ``images`` / ``annotations``.
        DatasetError: no instance is large enough to be a target.
    """

    def __init__(self, image_root: str | os.PathLike, json_path: str | os.PathLike,
                 target_min_area: float = TARGET_MIN_AREA,
                 extra_min_area: float = EXTRA_MIN_AREA):
        self.image_root = Path(image_root)
        self.json_path = Path(json_path)
        if not self.json_path.is_file():
            raise MissingFileError(f"LVIS annotation file not found: {self.json_path} "
                                   f"({LVIS_LAYOUT_HINT})", self.json_path)
        if not self.image_root.is_dir():
            raise MissingFileError(f"LVIS image folder not found: {self.image_root} "
                                   f"({LVIS_LAYOUT_HINT})", self.image_root)
        try:
            with open(self.json_path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorruptFileError(f"cannot parse LVIS annotation file {self.json_path}: {exc}",
                                   self.json_path) from exc
        if (not isinstance(data, dict) or not isinstance(data.get("images"), list)
                or not isinstance(data.get("annotations"), list)):
            raise CorruptFileError(f"{self.json_path} has no 'images' / 'annotations' lists "
                                   f"({LVIS_LAYOUT_HINT})", self.json_path)
        self._build(data, float(target_min_area), float(extra_min_area))
        del data
        if not self.targets:
            raise DatasetError(f"{self.json_path}: no instance has an area above "
                               f"{target_min_area:g} px", self.json_path)
        logger.info("LVIS %s: %d target instances in %d images", self.json_path,
                    len(self.targets), len(self.images))

    def _build(self, data: dict, target_min: float, extra_min: float) -> None:
        raw_images: dict[int, dict] = {}
        for im in data["images"]:
            try:
                raw_images[int(im["id"])] = im
            except (KeyError, TypeError, ValueError) as exc:
                raise CorruptFileError(f"{self.json_path}: bad image entry {im!r}",
                                       self.json_path) from exc
        per_image: dict[int, list[Instance]] = {}
        has_target: set[int] = set()
        for ann in data["annotations"]:
            try:
                image_id = int(ann["image_id"])
                seg = ann["segmentation"]
                area = float(ann["area"]) if ann.get("area") is not None else _polygon_area(seg)
                ann_id = int(ann["id"])
            except (KeyError, TypeError, ValueError) as exc:
                raise CorruptFileError(f"{self.json_path}: bad annotation entry "
                                       f"{str(ann)[:200]}", self.json_path) from exc
            if area <= extra_min:
                continue
            if image_id not in raw_images:
                raise CorruptFileError(f"{self.json_path}: annotation {ann_id} refers to unknown "
                                       f"image {image_id}", self.json_path)
            if not isinstance(seg, dict):
                seg = tuple(np.asarray(p, np.float32) for p in seg)
            per_image.setdefault(image_id, []).append(Instance(ann_id, -1, area, seg))
            if area > target_min:
                has_target.add(image_id)

        self.images: list[ImageEntry] = []
        self.targets: list[Instance] = []
        self.candidates: list[list[Instance]] = []
        for image_id in sorted(has_target):
            im = raw_images[image_id]
            idx = len(self.images)
            self.images.append(self._image_entry(im))
            cands = [Instance(a.ann_id, idx, a.area, a.segmentation)
                     for a in sorted(per_image[image_id], key=lambda a: a.ann_id)]
            self.candidates.append(cands)
            self.targets.extend(a for a in cands if a.area > target_min)

    def _image_entry(self, im: dict) -> ImageEntry:
        try:
            h, w = int(im["height"]), int(im["width"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptFileError(f"{self.json_path}: image {im.get('id')} has no height/width",
                                   self.json_path) from exc
        url = str(im.get("coco_url") or "")
        url_parts = [p for p in url.replace("\\", "/").split("/") if p]
        name = im.get("file_name") or (url_parts[-1] if url_parts else None)
        if not name:
            raise CorruptFileError(f"{self.json_path}: image {im.get('id')} has neither "
                                   f"file_name nor coco_url", self.json_path)
        names = [str(name)]
        base = Path(str(name)).name
        if len(url_parts) >= 2:
            names.append(f"{url_parts[-2]}/{base}")
        if base not in names:
            names.append(base)
        return ImageEntry(int(im["id"]), tuple(dict.fromkeys(names)), h, w)

    def __len__(self) -> int:
        return len(self.targets)

    def image_path(self, image: int) -> Path:
        """Path of image ``image`` (index into :attr:`images`); MissingFileError if absent."""
        entry = self.images[image]
        tried = [self.image_root / n for n in entry.names]
        for p in tried:
            if p.is_file():
                return p
        raise MissingFileError(f"LVIS image {entry.image_id} not found: {tried[0]}"
                               + (f" (also tried {', '.join(map(str, tried[1:]))})"
                                  if len(tried) > 1 else ""), tried[0])

    def mask(self, inst: Instance) -> np.ndarray:
        """H x W bool mask of an instance, at its image's annotated size."""
        entry = self.images[inst.image]
        try:
            return rasterize_segmentation(inst.segmentation, entry.height, entry.width)
        except ValueError as exc:
            raise CorruptFileError(f"{self.json_path}: annotation {inst.ann_id}: {exc}",
                                   self.json_path) from exc


# ----------------------------------------------------------------------------- dataset


class LVISS2MDataset(Dataset):
    """Scribble-to-mask samples from LVIS instances (REFERENCE.md f.4).

    Item ``i`` is target instance ``i`` of the index. Augmentation, existing-mask synthesis and
    scribbles are those of :class:`dataset.static_dataset.S2MDataset` (same transforms and
    helpers, same sample dict) except the affine scale range (0.8-1.0) and the LVIS extras:
    when the existing mask is not empty, with probability ``lvis_extra_prob`` (0.75) a random
    instance of the same image with area > 30 x 30 is picked (uniformly among the image's
    candidates, the target included: picking the target skips the extra, no re-draw); then
    with probability ``neg_scribble_prob`` (0.5) negative scribbles are drawn on it (the
    from-zero scribble routine with the other instance as ground truth; its positive
    scribbles, outside the target, are added to ``neg``), otherwise a copy of it perturbed to
    IoU < ``extra_iou`` (0.6) is added to the existing mask before the target's scribbles are
    drawn (its false positives then get negative scribbles too).

    The random draws of the extras are made for every sample (whatever the outcome), so the
    stream of a sample does not depend on earlier branches. ``index_offset`` is added to the
    index given to :func:`dataset.common.sample_rng`; set it to the number of samples before
    this dataset in a ConcatDataset so its streams differ from those of the static samples.

    Each item: ``rgb`` 3 x S x S, ``gt`` / ``prev_mask`` / ``pos`` / ``neg`` 1 x S x S float32,
    ``cls_gt`` S x S int64, ``info`` {"name": "lvis/<image stem>/<ann id>", "index",
    "from_zero", "prev_iou"}. :meth:`sample_with_details` also returns what the extras did.
    """

    def __init__(self, image_root: str | os.PathLike | None = None,
                 json_path: str | os.PathLike | None = None, *,
                 index: LVISInstances | None = None, size: int = 480, seed: int = 0,
                 scale: tuple[float, float] = (0.8, 1.0), empty_prob: float = 0.33,
                 iou_range: tuple[float, float] = (0.4, 0.95), robot_prob: float = 0.75,
                 extra_prob: float = 0.3, lvis_extra_prob: float = 0.75,
                 neg_scribble_prob: float = 0.5, extra_iou: float = 0.6,
                 index_offset: int = 0):
        if index is None:
            if image_root is None or json_path is None:
                raise ValueError("give image_root and json_path, or index")
            index = LVISInstances(image_root, json_path)
        self.index = index
        self.size = int(size)
        self.seed = int(seed)
        self.epoch = 0
        self.empty_prob = float(empty_prob)
        self.iou_range = (float(iou_range[0]), float(iou_range[1]))
        self.robot_prob = float(robot_prob)
        self.extra_prob = float(extra_prob)
        self.lvis_extra_prob = float(lvis_extra_prob)
        self.neg_scribble_prob = float(neg_scribble_prob)
        self.extra_iou = float(extra_iou)
        self.index_offset = int(index_offset)
        # the transforms of S2MDataset, with the LVIS scale range
        self.geometry, self.colour = s2m_augmentation(self.size, scale)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch`` (call before each epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.sample_with_details(index)[0]

    def _read(self, inst: Instance) -> tuple[np.ndarray, Path]:
        path = self.index.image_path(inst.image)
        img = read_image(path)
        entry = self.index.images[inst.image]
        if img.shape[:2] != (entry.height, entry.width):
            raise SizeMismatchError(
                f"image {path} is {img.shape[1]}x{img.shape[0]} but {self.index.json_path} says "
                f"{entry.width}x{entry.height} (width x height)", path)
        return img, path

    def sample_with_details(self, index: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """The sample and ``{"extra": None | "skipped_self" | "negative" | "perturbed",
        "other_ann_id": int | None, "other_mask": S x S bool | None}`` (what the extras did)."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} LVIS instances")
        rng = sample_rng(self.seed, self.epoch, index + self.index_offset)
        inst = self.index.targets[index]
        cands = self.index.candidates[inst.image]
        # extras decisions, drawn up front (always) so that only the picked instance is
        # rasterised and augmented
        want_extra = bool(rng.random() < self.lvis_extra_prob)
        other = cands[int(rng.integers(len(cands)))]
        negative_branch = bool(rng.random() < self.neg_scribble_prob)

        img, path = self._read(inst)
        masks = [self.index.mask(inst).astype(np.uint8) * 255]
        use_other = want_extra and other.ann_id != inst.ann_id
        if use_other:
            masks.append(self.index.mask(other).astype(np.uint8) * 255)
        (img,), masks = self.geometry([img], masks, rng)
        (img,), _ = self.colour([img], [], rng)
        gt = masks[0] >= 128

        from_zero = bool(rng.random() < self.empty_prob)
        details: dict[str, Any] = {"extra": None, "other_ann_id": None, "other_mask": None}
        if from_zero:
            prev = np.zeros_like(gt)
        else:
            prev = perturb_mask(gt, rng.uniform(*self.iou_range), rng)
            if want_extra:
                details["extra"] = "skipped_self"
        other_mask = masks[1] >= 128 if use_other else None
        extra_neg = None
        if not from_zero and use_other:
            details.update(other_ann_id=other.ann_id, other_mask=other_mask)
            if negative_branch:
                details["extra"] = "negative"
                other_pos, _ = scribbles_from_errors(
                    other_mask, np.zeros_like(other_mask), rng, from_zero=True,
                    robot_prob=self.robot_prob, extra_prob=self.extra_prob)
                extra_neg = (other_pos > 0) & ~gt
            else:
                details["extra"] = "perturbed"
                prev = prev | perturb_mask(other_mask, self.extra_iou, rng)
        pos, neg = scribbles_from_errors(gt, prev, rng, from_zero=from_zero,
                                         robot_prob=self.robot_prob, extra_prob=self.extra_prob)
        if extra_neg is not None:
            neg = np.maximum(neg, extra_neg.astype(np.float32))

        inter = np.count_nonzero(gt & prev)
        union = np.count_nonzero(gt | prev)
        info = {"name": f"lvis/{path.stem}/{inst.ann_id}", "index": index,
                "from_zero": from_zero, "prev_iou": float(inter / union) if union else 1.0}
        return s2m_sample(img, gt, prev, pos, neg, info), details
