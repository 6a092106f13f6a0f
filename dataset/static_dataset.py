"""Training samples made from static image + mask datasets (FSS-1000, DUTS, ECSSD, BIG, HRSOD).

* :class:`StaticClipDataset` -- propagation stage 0 (REFERENCE.md f.2): one image and its mask become a
  synthetic 3-frame clip.
* :class:`S2MDataset` -- S2M training (REFERENCE.md f.4): one augmented image, its mask, a synthetic
  existing mask and synthetic corrective scribbles.

Folder layouts are those of :func:`dataset.common.list_image_mask_pairs`; each dataset takes a
list of roots with one repeat factor per root (BIG and HRSOD are repeated 5x in the recipes).

Randomness and reproducibility: ``__getitem__(i)`` builds its own generator from
``(seed, epoch, i)`` with :func:`dataset.common.sample_rng` and uses nothing else; see that
function for why this is safe with several DataLoader workers and DDP ranks. Call
``set_epoch(e)`` every epoch (as for DistributedSampler) to get fresh augmentations; the same
(seed, epoch, index) always gives the same sample.

Samples are dicts of tensors (what ``torch.utils.data.default_collate`` batches); images are RGB
in [0, 1] and are *not* ImageNet-normalised here (the trainer calls
``util.tensor_util.normalize_image``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dataset import transforms as T
from dataset.common import expand_roots, list_image_mask_pairs, read_pair, sample_rng
from dataset.mask_perturb import perturb_mask
from dataset.scribble_sim import scribbles_from_errors
from util.filecheck import FileGroup

logger = logging.getLogger(__name__)

__all__ = ["StaticClipDataset", "S2MDataset", "static_pairs"]

RootsArg = Sequence[str | os.PathLike] | str | os.PathLike


def static_pairs(roots: RootsArg, repeats: Sequence[int] | int | None = None,
                 layout: str = "auto") -> list[tuple[Path, Path]]:
    """(image, mask) pairs of all roots, each root's list repeated by its factor."""
    pairs: list[tuple[Path, Path]] = []
    for root, rep in expand_roots(roots, repeats):
        found = list_image_mask_pairs(root, layout=layout)
        logger.info("static data %s: %d images x %d", root, len(found), rep)
        pairs.extend(found * rep)
    return pairs


class _StaticBase(Dataset):
    def __init__(self, roots: RootsArg, repeats: Sequence[int] | int | None, size: int, seed: int,
                 layout: str):
        self.pairs = static_pairs(roots, repeats, layout)
        self.size = int(size)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch`` (call before each epoch)."""
        self.epoch = int(epoch)

    def input_files(self) -> list[FileGroup]:
        """Every image and its grey-level mask (checked before step 0)."""
        return [FileGroup(img, (mask,), label_masks=False) for img, mask in dict.fromkeys(self.pairs)]

    def __len__(self) -> int:
        return len(self.pairs)

    def _info(self, index: int) -> dict[str, Any]:
        img_path, _ = self.pairs[index]
        return {"name": f"{img_path.parent.name}/{img_path.stem}", "index": index}


class StaticClipDataset(_StaticBase):
    """Three-frame pseudo clips from single images (propagation stage 0, REFERENCE.md f.2).

    Augmentation:

    * shared by all frames: affine (no rotation, scale 0.8-1.5, nearest for image and mask),
      horizontal flip, colour jitter (0.1, 0.05, 0.05, 0.05), grayscale p = 0.05;
    * per frame: affine (rotation +-20 deg, scale 0.9-1.1, shear 10, bicubic for image *and*
      mask, so the mask becomes soft), resize shorter side to ``size`` (bicubic image, nearest
      mask), random ``size x size`` crop (padded if needed), colour jitter (0.1, 0.05, 0.05, 0),
      then with probability ``tps_prob`` a thin-plate-spline warp (12 points, sigma 0.02;
      image bilinear, mask nearest).

    Each item is a dict:

    * ``rgb``: T x 3 x S x S float32 in [0, 1];
    * ``gt``: T x 1 x S x S float32 soft mask in [0, 1] (frame 0's is what gets memorised);
    * ``cls_gt``: T x S x S int64, the class target ``gt > 0.5`` (0 / 1);
    * ``info``: {"name": "<folder>/<stem>", "index": i}.
    """

    def __init__(self, roots: RootsArg, repeats: Sequence[int] | int | None = None,
                 size: int = 384, seed: int = 0, num_frames: int = 3, tps_prob: float = 0.33,
                 layout: str = "auto"):
        super().__init__(roots, repeats, size, seed, layout)
        self.num_frames = int(num_frames)
        self.shared_geometry = T.Compose([
            T.RandomAffine(degrees=0, scale=(0.8, 1.5), image_interp="nearest",
                           mask_interp="nearest"),
            T.RandomHorizontalFlip(0.5),
        ])
        self.shared_colour = T.Compose([
            T.ColorJitter(0.1, 0.05, 0.05, 0.05),
            T.RandomGrayscale(0.05),
        ])
        self.frame_geometry = T.Compose([
            T.RandomAffine(degrees=20, scale=(0.9, 1.1), shear=10, image_interp="bicubic",
                           mask_interp="bicubic"),
            T.ResizeShorter(self.size, image_interp="bicubic", mask_interp="nearest"),
            T.RandomCrop(self.size),
        ])
        self.frame_colour = T.ColorJitter(0.1, 0.05, 0.05, 0.0)
        self.frame_tps = T.RandomApply(T.RandomThinPlateSpline(12, 0.02, "bilinear", "nearest"),
                                       tps_prob)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = sample_rng(self.seed, self.epoch, index)
        img_path, mask_path = self.pairs[index]
        img, mask = read_pair(img_path, mask_path)

        # the shared part is identical for every frame, so it is computed once
        (img,), (mask,) = self.shared_geometry([img], [mask], rng)
        (img,), _ = self.shared_colour([img], [], rng)

        rgbs, gts = [], []
        for _ in range(self.num_frames):
            (fi,), (fm,) = self.frame_geometry([img], [mask], rng)
            (fi,), _ = self.frame_colour([fi], [], rng)
            (fi,), (fm,) = self.frame_tps([fi], [fm], rng)
            rgbs.append(T.to_tensor(fi))
            gts.append(T.mask_to_tensor(fm))
        rgb = torch.stack(rgbs)
        gt = torch.stack(gts)
        return {
            "rgb": rgb,
            "gt": gt,
            "cls_gt": (gt[:, 0] > 0.5).long(),
            "info": self._info(index),
        }


def s2m_sample(img: np.ndarray, gt: np.ndarray, prev: np.ndarray, pos: np.ndarray,
               neg: np.ndarray, info: dict[str, Any]) -> dict[str, Any]:
    """One S2M training sample as tensors: rgb 3 x S x S in [0, 1]; gt, prev_mask, pos, neg
    1 x S x S float in {0, 1}; cls_gt S x S int64 (the class target)."""
    gt_t = torch.from_numpy(gt.astype(np.float32))[None]
    return {
        "rgb": T.to_tensor(img),
        "gt": gt_t,
        "cls_gt": gt_t[0].long(),
        "prev_mask": torch.from_numpy(prev.astype(np.float32))[None],
        "pos": torch.from_numpy(pos)[None],
        "neg": torch.from_numpy(neg)[None],
        "info": info,
    }


def s2m_augmentation(size: int, scale: tuple[float, float]) -> tuple[T.Compose, T.Compose]:
    """The S2M training augmentation (REFERENCE.md f.4): a geometric part shared by the image and
    its masks (affine, shorter side to ``size``, random crop, flip) and an image-only colour part.
    ``scale`` is the affine scale range (0.8-1.25 for static sets, 0.8-1.0 for LVIS)."""
    geometry = T.Compose([
        T.RandomAffine(degrees=20, scale=scale, shear=10, image_interp="bilinear",
                       mask_interp="nearest"),
        T.ResizeShorter(size, image_interp="bicubic", mask_interp="nearest"),
        T.RandomCrop(size),
        T.RandomHorizontalFlip(0.5),
    ])
    colour = T.Compose([T.ColorJitter(0.1, 0.03, 0.03, 0.0), T.RandomGrayscale(0.05)])
    return geometry, colour


class S2MDataset(_StaticBase):
    """Scribble-to-mask samples from static images (REFERENCE.md f.4).

    Augmentation: affine (rotation +-20 deg, scale ``scale`` (0.8-1.25 static), shear 10;
    bilinear image, nearest mask), resize shorter side to ``size`` (bicubic image, nearest
    mask), random ``size x size`` crop (padded if needed), horizontal flip; image-only colour
    jitter (0.1, 0.03, 0.03, 0) and grayscale p = 0.05. The ground truth is the augmented mask
    thresholded at 128 (of 255).

    Existing mask: empty with probability ``empty_prob`` (0.33, "from zero"); otherwise the
    ground truth perturbed (:func:`dataset.mask_perturb.perturb_mask`) until its IoU drops below
    a target uniform in ``iou_range`` ([0.4, 0.95]). Scribbles come from
    :func:`dataset.scribble_sim.scribbles_from_errors` (tamed DAVIS robot with probability
    ``robot_prob`` when not from zero; needs davisinteractive unless ``robot_prob`` is 0).

    Each item is a dict of float32 tensors (values in {0, 1} unless said otherwise):

    * ``rgb``: 3 x S x S in [0, 1];
    * ``gt``: 1 x S x S; ``cls_gt``: S x S int64 (0 / 1);
    * ``prev_mask``: 1 x S x S, the existing mask;
    * ``pos`` / ``neg``: 1 x S x S positive / negative scribbles;
    * ``info``: {"name", "index", "from_zero" (bool), "prev_iou" (float)}.
    """

    def __init__(self, roots: RootsArg, repeats: Sequence[int] | int | None = None,
                 size: int = 480, seed: int = 0, scale: tuple[float, float] = (0.8, 1.25),
                 empty_prob: float = 0.33, iou_range: tuple[float, float] = (0.4, 0.95),
                 robot_prob: float = 0.75, extra_prob: float = 0.3, layout: str = "auto"):
        super().__init__(roots, repeats, size, seed, layout)
        self.empty_prob = float(empty_prob)
        self.iou_range = (float(iou_range[0]), float(iou_range[1]))
        self.robot_prob = float(robot_prob)
        self.extra_prob = float(extra_prob)
        self.geometry, self.colour = s2m_augmentation(self.size, scale)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = sample_rng(self.seed, self.epoch, index)
        img_path, mask_path = self.pairs[index]
        img, mask = read_pair(img_path, mask_path)
        (img,), (mask,) = self.geometry([img], [mask], rng)
        (img,), _ = self.colour([img], [], rng)
        gt = mask >= 128

        from_zero = bool(rng.random() < self.empty_prob)
        if from_zero:
            prev = np.zeros_like(gt)
        else:
            prev = perturb_mask(gt, rng.uniform(*self.iou_range), rng)
        pos, neg = scribbles_from_errors(gt, prev, rng, from_zero=from_zero,
                                         robot_prob=self.robot_prob, extra_prob=self.extra_prob)
        inter = np.count_nonzero(gt & prev)
        union = np.count_nonzero(gt | prev)
        info = self._info(index)
        info.update(from_zero=from_zero, prev_iou=float(inter / union) if union else 1.0)
        return s2m_sample(img, gt, prev, pos, neg, info)
