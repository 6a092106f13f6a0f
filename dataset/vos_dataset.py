"""Three-frame training clips from annotated videos: DAVIS, YouTube-VOS and BL30K (REFERENCE.md f.2).

Folder layouts (detected from ``root``)::

    DAVIS:        root/JPEGImages/480p/<video>/<frame>.jpg
                  root/Annotations/480p/<video>/<frame>.png     (palette PNGs, labels 0..K)
                  root/ImageSets/2017/train.txt                 (optional video list)
    YouTube-VOS / BL30K (plain):
                  root/JPEGImages/<video>/<frame>.jpg
                  root/Annotations/<video>/<frame>.png

Every listed frame must have its annotation (training splits are fully annotated); a missing one
is reported by name when the dataset is built. Videos with fewer than 3 frames are skipped.

Sampling (one item):

1. frames: :func:`sample_frame_indices` with the current ``max_jump`` (an attribute the trainer
   updates by the curriculum :func:`max_jump_for_epoch`; divided by ``jump_divisor``, 5 for
   YouTube-VOS whose training frames are every 5th frame); order reversed with p = 0.5;
2. augmentation shared by the 3 frames: horizontal flip, RandomResizedCrop to ``size`` (area
   ``scale``: 0.36-1.0, BL30K 0.25-1.0; aspect 3/4-4/3; bicubic image, nearest mask), colour
   jitter (0.1, 0.03, 0.03, 0), grayscale p = 0.05; per frame: affine (rotation +-15 deg, shear
   10; bicubic image, nearest mask), colour jitter (0.01, 0.01, 0.01, 0);
3. objects: labels present in the first sampled frame after augmentation; BL30K keeps only
   objects with > 100 px there, and among those with <= 900 px only the ones that stay
   < 400 px in the other two frames; target random, second object random among the rest;
4. steps 1-3 are retried (new frames, new augmentation) up to 5 times when no object is
   usable; then the last try is returned with empty masks and selector [1, 0].

Randomness: one generator per item from (seed, epoch, index), see
:func:`dataset.common.sample_rng`; call ``set_epoch`` every epoch. ``max_jump`` is read in the
worker process, so set it (like the epoch) before the epoch's DataLoader iterator is created
(non-persistent workers, the default, pick up the new value).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dataset import transforms as T
from dataset.common import (
    DatasetError,
    MissingFileError,
    SizeMismatchError,
    read_image,
    read_label_mask,
    sample_rng,
)
from util.filecheck import FileGroup
from util.palette import DAVIS_VOID_LABELS, VOID_LABEL

logger = logging.getLogger(__name__)

__all__ = [
    "VOSClipDataset",
    "VideoEntry",
    "sample_frame_indices",
    "max_jump_for_epoch",
    "CURRICULUM_VALUES",
    "CURRICULUM_FRACTIONS_BL30K",
    "CURRICULUM_FRACTIONS_MAIN",
    "DAVIS_LAYOUT_HINT",
    "PLAIN_LAYOUT_HINT",
]

#: max_jump values of the curriculum, the first one used from epoch 0.
CURRICULUM_VALUES: tuple[int, ...] = (5, 10, 15, 20, 25, 5)
#: Fractions of the epochs at which the next value starts (stage 1, BL30K).
CURRICULUM_FRACTIONS_BL30K: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.8)
#: Same for stage 2 (YouTube-VOS + DAVIS).
CURRICULUM_FRACTIONS_MAIN: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.9)

DAVIS_LAYOUT_HINT = ("DAVIS layout: <root>/JPEGImages/480p/<video>/*.jpg and "
                     "<root>/Annotations/480p/<video>/*.png")
PLAIN_LAYOUT_HINT = ("YouTube-VOS/BL30K layout: <root>/JPEGImages/<video>/*.jpg and "
                     "<root>/Annotations/<video>/*.png")



def max_jump_for_epoch(epoch: int, total_epochs: int,
                       fractions: Sequence[float] = CURRICULUM_FRACTIONS_BL30K,
                       values: Sequence[int] = CURRICULUM_VALUES) -> int:
    """Curriculum max_jump for ``epoch`` (0-based) out of ``total_epochs``.

    ``values[0]`` until the first switch; value ``values[i + 1]`` from epoch
    ``round(total_epochs * fractions[i])`` on (Python ``round``), i.e. 5 -> 10 -> 15 -> 20 ->
    25 -> 5 at 10/20/30/40/80 % (BL30K) or 90 % (YouTube-VOS + DAVIS) of the epochs. The
    dataset applies its own ``jump_divisor`` on top (YouTube-VOS: // 5).
    """
    if len(values) != len(fractions) + 1:
        raise ValueError("need exactly one more value than fractions")
    switches = [round(total_epochs * f) for f in fractions]
    passed = sum(1 for s in switches if epoch >= s)
    return int(values[passed])


def sample_frame_indices(n_frames: int, max_jump: int, rng: np.random.Generator,
                         reverse_prob: float = 0.5) -> list[int]:
    """Three frame indices of a clip (REFERENCE.md f.2), possibly reversed.

    With J = min(n_frames, max_jump): start s uniform in [0, N - J];
    f1 = min(s + U{0..J} + 1, N - J, N - 1); f2 = min(f1 + U{0..J} + 1, N - floor(J / 2), N - 1);
    then with probability ``reverse_prob`` the list is reversed.

    In the unreversed order 0 <= f0 <= f1 <= f2 < N and every gap is <= J + 1. Note that the
    rule can repeat a frame: f1 == f0 when s == N - J (so always when N <= max_jump), and with
    J == 1 also f2 == f1; this is the reference behaviour and is kept.
    """
    n = int(n_frames)
    if n < 1:
        raise ValueError(f"a clip needs frames, got n_frames={n}")
    j = min(n, max(int(max_jump), 1))
    f0 = int(rng.integers(0, n - j + 1))
    f1 = min(f0 + int(rng.integers(0, j + 1)) + 1, n - j, n - 1)
    f2 = min(f1 + int(rng.integers(0, j + 1)) + 1, n - j // 2, n - 1)
    idx = [f0, f1, f2]
    if rng.random() < reverse_prob:
        idx.reverse()
    return idx


@dataclass(frozen=True)
class VideoEntry:
    """One training video: its name, frame stems (sorted), the two folders and the layout
    (``davis`` or ``plain``), which decides the void labels (:meth:`void_labels`)."""

    name: str
    frames: tuple[str, ...]
    image_dir: Path
    mask_dir: Path
    layout: str = "plain"

    @property
    def void_labels(self) -> tuple[int, ...]:
        """Labels that are never objects: 255, and 254 in DAVIS."""
        return DAVIS_VOID_LABELS if self.layout == "davis" else (VOID_LABEL,)

    def input_files(self) -> list[FileGroup]:
        """Every frame with its annotation (for :func:`util.trainer.prescan_dataset`)."""
        return [FileGroup(_image_path(self, stem), (self.mask_dir / f"{stem}.png",))
                for stem in self.frames]


def _read_subset(subset: str | os.PathLike | Sequence[str] | None) -> list[str] | None:
    if subset is None:
        return None
    if isinstance(subset, (str, os.PathLike)):
        path = Path(subset)
        if not path.is_file():
            raise MissingFileError(f"video list {path} does not exist (one video name per line)",
                                   path)
        names = [ln.strip() for ln in path.read_text().splitlines()]
        return [n for n in names if n]
    return [str(n) for n in subset]


def _layout_dirs(root: Path, layout: str) -> tuple[Path, Path, str]:
    if not root.is_dir():
        raise MissingFileError(
            f"dataset root {root} does not exist or is not a folder "
            f"(expected {DAVIS_LAYOUT_HINT}; or {PLAIN_LAYOUT_HINT})", root)
    if layout == "auto":
        layout = "davis" if (root / "JPEGImages" / "480p").is_dir() else "plain"
    if layout == "davis":
        img, ann = root / "JPEGImages" / "480p", root / "Annotations" / "480p"
        hint = DAVIS_LAYOUT_HINT
    elif layout in ("plain", "youtube", "bl30k"):
        img, ann = root / "JPEGImages", root / "Annotations"
        hint = PLAIN_LAYOUT_HINT
    else:
        raise ValueError(f"layout must be 'auto', 'davis' or 'plain', got {layout!r}")
    for d in (img, ann):
        if not d.is_dir():
            raise MissingFileError(f"missing folder {d} ({hint})", d)
    return img, ann, layout


def list_videos(root: str | os.PathLike, subset: str | os.PathLike | Sequence[str] | None = None,
                layout: str = "auto", min_frames: int = 3) -> list[VideoEntry]:
    """Videos under ``root`` (optionally restricted to ``subset``), each with >= min_frames.

    Raises MissingFileError for a missing root / folder / listed video / annotation (naming it)
    and DatasetError when no usable video is left.
    """
    root = Path(root)
    img_root, ann_root, layout = _layout_dirs(root, layout)
    names = _read_subset(subset)
    if names is None:
        names = sorted(p.name for p in img_root.iterdir() if p.is_dir())
    videos = []
    skipped = 0
    for name in names:
        vid_img, vid_ann = img_root / name, ann_root / name
        if not vid_img.is_dir():
            raise MissingFileError(f"video {name!r} has no frame folder {vid_img}", vid_img)
        frames = sorted(p.stem for p in vid_img.iterdir() if p.suffix.lower() in (".jpg", ".jpeg")
                        and not p.name.startswith("."))
        if len(frames) < min_frames:
            skipped += 1
            continue
        if not vid_ann.is_dir():
            raise MissingFileError(f"video {name!r} has no annotation folder {vid_ann}", vid_ann)
        have = {p.stem for p in vid_ann.iterdir() if p.suffix.lower() == ".png"
                and not p.name.startswith(".")}
        for f in frames:
            if f not in have:
                raise MissingFileError(
                    f"frame {vid_img / f}.jpg has no annotation: expected {vid_ann / f}.png",
                    vid_ann / f"{f}.png")
        if layout == "davis":
            _check_davis_frames(vid_img, frames, have)
        videos.append(VideoEntry(name, tuple(frames), vid_img, vid_ann, layout))
    if skipped:
        logger.info("%s: skipped %d videos with fewer than %d frames", root, skipped, min_frames)
    if not videos:
        hint = DAVIS_LAYOUT_HINT if layout == "davis" else PLAIN_LAYOUT_HINT
        raise DatasetError(f"no video with >= {min_frames} frames under {img_root} ({hint})",
                           img_root)
    logger.info("%s: %d videos (%s layout)", root, len(videos), layout)
    return videos


def _check_davis_frames(img_dir: Path, frames: list[str], annotated: set[str]) -> None:
    """DAVIS frames are numbered 00000, 00001, ...: a gap, or an annotation without its frame,
    is a missing frame file (named)."""
    for stem in sorted(annotated - set(frames)):
        raise MissingFileError(f"{img_dir / stem}.jpg: frame missing (its annotation exists)",
                               img_dir / f"{stem}.jpg")
    if frames and all(f.isdigit() for f in frames):
        numbers = [int(f) for f in frames]
        for prev, cur in zip(numbers, numbers[1:], strict=False):
            if cur != prev + 1:
                missing = img_dir / f"{prev + 1:0{len(frames[0])}d}.jpg"
                raise MissingFileError(f"{missing}: frame missing (frames {frames[0]}.."
                                       f"{frames[-1]} must be consecutive)", missing)


def _image_path(video: VideoEntry, stem: str) -> Path:
    for ext in (".jpg", ".jpeg", ".JPG", ".JPEG"):
        p = video.image_dir / f"{stem}{ext}"
        if p.is_file():
            return p
    return video.image_dir / f"{stem}.jpg"


class VOSClipDataset(Dataset):
    """Three-frame clips with up to two objects (REFERENCE.md f.2 stages 1 and 2).

    Args:
        root: dataset root (DAVIS or plain layout, see the module docstring).
        subset: optional video list (a text file, one name per line, e.g.
            ``root/ImageSets/2017/train.txt``, or a sequence of names).
        size: crop size S (384 in the recipes).
        seed: base seed of the per-item generators.
        max_jump: curriculum value (mutable attribute; the trainer sets it every epoch).
        jump_divisor: the effective jump is ``max(1, max_jump // jump_divisor)`` (5 for
            YouTube-VOS, 1 otherwise).
        scale: RandomResizedCrop area range; default (0.25, 1.0) when ``bl30k`` else (0.36, 1.0).
        bl30k: apply the BL30K object-size rules.
        repeat: the video list is repeated this many times (DAVIS is used 5x in stage 2).
        max_tries: attempts before giving up on finding an object.

    Each item is a dict:

    * ``rgb``: 3 x 3 x S x S float32 in [0, 1] (T = 3 frames);
    * ``gt`` / ``sec_gt``: T x 1 x S x S float32 {0, 1}, target object / second object;
    * ``cls_gt``: T x S x S int64 (0 background, 1 target, 2 second object);
    * ``selector``: float32 [1, 1] with a second object, [1, 0] without;
    * ``info``: {"name": video, "frames": [3 frame stems, sampled order], "num_objects": 0..2}.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        subset: str | os.PathLike | Sequence[str] | None = None,
        size: int = 384,
        seed: int = 0,
        max_jump: int = 5,
        jump_divisor: int = 1,
        scale: tuple[float, float] | None = None,
        bl30k: bool = False,
        repeat: int = 1,
        max_tries: int = 5,
        layout: str = "auto",
    ):
        self.root = Path(root)
        self.videos = list_videos(self.root, subset, layout)
        if repeat < 1:
            raise ValueError(f"repeat must be >= 1, got {repeat}")
        self.repeat = int(repeat)
        self.size = int(size)
        self.seed = int(seed)
        self.epoch = 0
        self.max_jump = int(max_jump)
        self.jump_divisor = max(int(jump_divisor), 1)
        self.bl30k = bool(bl30k)
        if max_tries < 1:
            raise ValueError(f"max_tries must be >= 1, got {max_tries}")
        self.max_tries = int(max_tries)
        # BL30K object-size rules, in pixels of the S x S crop
        self.bl_min_pixels = 100
        self.bl_small_pixels = 900
        self.bl_small_max_other = 400
        scale = scale if scale is not None else ((0.25, 1.0) if bl30k else (0.36, 1.0))
        self.shared_geometry = T.Compose([
            T.RandomHorizontalFlip(0.5),
            T.RandomResizedCrop(self.size, scale=scale, ratio=(3 / 4, 4 / 3),
                                image_interp="bicubic", mask_interp="nearest"),
        ])
        self.shared_colour = T.Compose([T.ColorJitter(0.1, 0.03, 0.03, 0.0),
                                        T.RandomGrayscale(0.05)])
        self.frame_geometry = T.RandomAffine(degrees=15, shear=10, image_interp="bicubic",
                                             mask_interp="nearest")
        self.frame_colour = T.ColorJitter(0.01, 0.01, 0.01, 0.0)

    # -- bookkeeping
    def input_files(self) -> list[FileGroup]:
        """Every frame and annotation this dataset reads (checked before step 0)."""
        return [g for v in self.videos for g in v.input_files()]

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch`` (call before each epoch)."""
        self.epoch = int(epoch)

    @property
    def effective_max_jump(self) -> int:
        """``max(1, max_jump // jump_divisor)``, the J used by :func:`sample_frame_indices`."""
        return max(1, self.max_jump // self.jump_divisor)

    def __len__(self) -> int:
        return len(self.videos) * self.repeat

    # -- sampling
    def _load_clip(
        self, video: VideoEntry, idx: list[int]
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        images, masks = [], []
        for i in idx:
            stem = video.frames[i]
            img_path, mask_path = _image_path(video, stem), video.mask_dir / f"{stem}.png"
            img, mask = read_image(img_path), read_label_mask(mask_path)
            if img.shape[:2] != mask.shape:
                raise SizeMismatchError(
                    f"frame {img_path} is {img.shape[1]}x{img.shape[0]} but its annotation "
                    f"{mask_path} is {mask.shape[1]}x{mask.shape[0]}", mask_path)
            images.append(img)
            masks.append(mask)
        sizes = {m.shape for m in masks}
        if len(sizes) > 1:
            raise SizeMismatchError(f"frames of video {video.name} differ in size: {sorted(sizes)}",
                                    video.image_dir)
        return images, masks

    def _augment(self, images: list[np.ndarray], masks: list[np.ndarray],
                 rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray]]:
        images, masks = self.shared_geometry(images, masks, rng)
        images, _ = self.shared_colour(images, [], rng)
        out_i, out_m = [], []
        for img, mask in zip(images, masks):
            (img,), (mask,) = self.frame_geometry([img], [mask], rng)
            (img,), _ = self.frame_colour([img], [], rng)
            out_i.append(img)
            out_m.append(mask)
        return out_i, out_m

    def usable_labels(self, masks: list[np.ndarray],
                      void: tuple[int, ...] = (VOID_LABEL,)) -> list[int]:
        """Object labels of the first frame, void labels excluded (BL30K size rules applied
        when enabled)."""
        labels = [int(v) for v in np.unique(masks[0]) if v != 0 and int(v) not in void]
        if not self.bl30k:
            return labels
        keep = []
        for lab in labels:
            area = int(np.count_nonzero(masks[0] == lab))
            if area <= self.bl_min_pixels:
                continue
            if area > self.bl_small_pixels:
                keep.append(lab)
            elif max(int(np.count_nonzero(m == lab)) for m in masks[1:]) < self.bl_small_max_other:
                keep.append(lab)
        return keep

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = sample_rng(self.seed, self.epoch, index)
        video = self.videos[index % len(self.videos)]
        target = second = None
        for attempt in range(self.max_tries):
            idx = sample_frame_indices(len(video.frames), self.effective_max_jump, rng)
            images, masks = self._augment(*self._load_clip(video, idx), rng)
            labels = self.usable_labels(masks, video.void_labels)
            if labels:
                target = labels[int(rng.integers(len(labels)))]
                rest = [lab for lab in labels if lab != target]
                if rest:
                    second = rest[int(rng.integers(len(rest)))]
                break
            logger.debug("%s frames %s: no usable object (try %d)", video.name, idx, attempt + 1)
        else:
            logger.debug("%s: no usable object after %d tries, empty masks", video.name,
                         self.max_tries)

        lab = torch.from_numpy(np.stack(masks).astype(np.int64))  # T x S x S labels
        gt = (lab == target) if target is not None else torch.zeros_like(lab, dtype=torch.bool)
        sec = (lab == second) if second is not None else torch.zeros_like(lab, dtype=torch.bool)
        cls_gt = torch.zeros_like(lab)
        cls_gt[gt] = 1
        cls_gt[sec] = 2
        return {
            "rgb": torch.stack([T.to_tensor(i) for i in images]),
            "gt": gt.float()[:, None],
            "sec_gt": sec.float()[:, None],
            "cls_gt": cls_gt,
            "selector": torch.tensor([1.0, 1.0 if second is not None else 0.0]),
            "info": {
                "name": video.name,
                "frames": [video.frames[i] for i in idx],
                "num_objects": int(target is not None) + int(second is not None),
            },
        }
