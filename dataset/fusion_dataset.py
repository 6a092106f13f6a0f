"""Fusion training samples from pre-computed propagations (REFERENCE.md f.3).

Input folders:

* ``video_root``: the videos (DAVIS layout or plain BL30K layout, see
  :mod:`dataset.vos_dataset`) with their ground-truth annotations;
* ``fusion_root``: one run folder written by :mod:`dataset.generate_fusion` (it contains
  ``fusion_run.json``) or a folder of such run folders. Only finished videos (``done.json``)
  that also exist under ``video_root`` are used.

One sample (all choices from the sample's own generator, :func:`dataset.common.sample_rng`):

1. a video (the index's video for the first 5 tries, a random one later) and a run holding it;
2. a first reference ``r1`` (the previously interacted frame t_c), an object propagated from
   it, a second reference ``r2`` (the current interaction t_r) inside r1's propagated range
   from which the object was also propagated, and a target frame ``t`` reached from both;
   a second object valid at both references when there is one (selector [1, 1], else [1, 0]);
3. ``seg1`` = propagation from r1 at t, ``seg2`` = from r2 at t, ``before`` = from r1 at r2,
   ``after`` = ground truth at r2 (a perfect interaction); ``dist`` = [|r1 - t| / |r1 - r2|,
   |r2 - t| / |r1 - r2|] = [n_c, n_r] (t need not lie between r1 and r2, so values can exceed 1);
4. augmentation shared by every image and mask: horizontal flip, random S x S crop (no resize,
   padded when the frame is smaller), colour jitter (0.1, 0.03, 0.03, 0.01) of both images;
5. during the first 15 of ``max_tries`` (20) tries the sample is rejected unless seg1 and seg2
   of the first object differ by more than 0.1 on at least 100 pixels of the crop.

Each item is a dict:

* ``rgb``: 3 x S x S target frame in [0, 1]; ``ref_rgb``: 3 x S x S frame r2;
* ``seg1``, ``seg2``, ``before``, ``after``: 2 x S x S float32 in [0, 1] (objects 1, 2; the
  second slot is zero without a second object);
* ``cls_gt``: S x S int64 (0 background, 1 first object, 2 second object) at t;
* ``dist``: float32 [n_c, n_r]; ``selector``: float32 [1, 1] or [1, 0];
* ``info``: {"name", "run", "r1", "r2", "t", "objects": [label1, label2 or 0]}.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from dataset import transforms as T
from dataset.common import DatasetError, MissingFileError, read_image, read_label_mask, sample_rng
from dataset.generate_fusion import DONE_FILE, RUN_FILE
from dataset.vos_dataset import VideoEntry, _image_path, list_videos

logger = logging.getLogger(__name__)

__all__ = ["FusionDataset", "find_fusion_runs"]

MIN_DIFF_PIXELS = 100
DIFF_THRESHOLD = 0.1
REJECT_TRIES = 15
INDEX_VIDEO_TRIES = 5


def find_fusion_runs(fusion_root: str | os.PathLike) -> list[Path]:
    """Run folders (holding ``fusion_run.json``) at or directly below ``fusion_root``."""
    root = Path(fusion_root)
    if not root.is_dir():
        raise MissingFileError(
            f"fusion data root {root} does not exist (generate it with python -m "
            "dataset.generate_fusion)", root)
    if (root / RUN_FILE).is_file():
        return [root]
    runs = sorted(p for p in root.iterdir() if p.is_dir() and (p / RUN_FILE).is_file())
    if not runs:
        raise DatasetError(f"no fusion run under {root}: expected {root}/{RUN_FILE} or "
                           f"{root}/<run>/{RUN_FILE} (python -m dataset.generate_fusion)", root)
    return runs


@dataclass(frozen=True)
class _Reference:
    frame: int
    objects: tuple[int, ...]
    lo: int
    hi: int  # inclusive

    def covers(self, t: int) -> bool:
        return self.lo <= t <= self.hi


@dataclass(frozen=True)
class _RunVideo:
    """One video in one run: its references and the usable (r1, object) -> r2 choices."""

    run: Path
    refs: dict[int, _Reference]
    # r1 -> object -> list of r2
    choices: dict[int, dict[int, list[int]]]


def _partners(refs: dict[int, _Reference]) -> dict[int, dict[int, list[int]]]:
    out: dict[int, dict[int, list[int]]] = {}
    for r1, ref1 in refs.items():
        per_obj: dict[int, list[int]] = {}
        for obj in ref1.objects:
            r2s = [r2 for r2, ref2 in refs.items()
                   if r2 != r1 and ref1.covers(r2) and obj in ref2.objects]
            if r2s:
                per_obj[obj] = sorted(r2s)
        if per_obj:
            out[r1] = per_obj
    return out


class FusionDataset(Dataset):
    """Pairs of propagations for fusion training (see the module docstring).

    Args:
        video_root: frames and annotations (DAVIS or plain layout).
        fusion_root: a generate_fusion run folder or a folder of run folders.
        size: crop size S (384 in the recipes).
        seed: base seed of the per-sample generators.
        samples_per_video: dataset length = this x number of usable videos (100).
        max_tries: attempts per sample (20; the first 15 apply the rejection rule).
        subset: optional video list of ``video_root`` (file or names).
    """

    def __init__(self, video_root: str | os.PathLike, fusion_root: str | os.PathLike,
                 size: int = 384, seed: int = 0, samples_per_video: int = 100,
                 max_tries: int = 20, subset: str | os.PathLike | Sequence[str] | None = None):
        self.size = int(size)
        self.seed = int(seed)
        self.epoch = 0
        self.samples_per_video = int(samples_per_video)
        if max_tries < 1:
            raise ValueError(f"max_tries must be >= 1, got {max_tries}")
        self.max_tries = int(max_tries)
        videos = {v.name: v for v in list_videos(video_root, subset, min_frames=2)}
        self.runs = find_fusion_runs(fusion_root)
        entries: dict[str, list[_RunVideo]] = {}
        for run in self.runs:
            for marker in sorted(run.glob(f"*/{DONE_FILE}")):
                name = marker.parent.name
                if name not in videos:
                    continue
                rec = json.loads(marker.read_text())
                refs = {int(r): _Reference(int(r), tuple(int(o) for o in v["objects"]),
                                           int(v["frames"][0]), int(v["frames"][1]))
                        for r, v in rec["references"].items()}
                choices = _partners(refs)
                if choices:
                    entries.setdefault(name, []).append(_RunVideo(run, refs, choices))
        if not entries:
            raise DatasetError(
                f"no usable fusion data: {fusion_root} has no finished video of {video_root} "
                "with two references that share an object (generate more with a smaller "
                "--separation, or check that both roots refer to the same videos)",
                Path(fusion_root))
        self.names = sorted(entries)
        self.videos: list[VideoEntry] = [videos[n] for n in self.names]
        self.entries = [entries[n] for n in self.names]
        logger.info("fusion data: %d videos in %d run(s)", len(self.names), len(self.runs))
        self.geometry = T.Compose([T.RandomHorizontalFlip(0.5), T.RandomCrop(self.size)])
        self.colour = T.ColorJitter(0.1, 0.03, 0.03, 0.01)

    def set_epoch(self, epoch: int) -> None:
        """Select the sampling stream of ``epoch`` (call before each epoch)."""
        self.epoch = int(epoch)

    def input_files(self) -> list:
        """Every frame and annotation of the videos used (checked before step 0)."""
        return [g for v in self.videos for g in v.input_files()]

    def __len__(self) -> int:
        return self.samples_per_video * len(self.names)

    # ------------------------------------------------------------------ reading
    @staticmethod
    def _prob(run: Path, video: str, r: int, obj: int, t: int) -> np.ndarray:
        path = run / video / f"{r:05d}" / f"{obj:05d}" / f"{t:05d}.png"
        arr = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if arr is None:
            raise MissingFileError(f"fusion data file missing or unreadable: {path}", path)
        return arr

    def _draw(self, rng: np.random.Generator, vi: int) -> dict[str, Any]:
        entry = self.entries[vi][int(rng.integers(len(self.entries[vi])))]
        r1s = sorted(entry.choices)
        r1 = r1s[int(rng.integers(len(r1s)))]
        objs = sorted(entry.choices[r1])
        obj = objs[int(rng.integers(len(objs)))]
        r2s = entry.choices[r1][obj]
        r2 = r2s[int(rng.integers(len(r2s)))]
        ref1, ref2 = entry.refs[r1], entry.refs[r2]
        lo, hi = max(ref1.lo, ref2.lo), min(ref1.hi, ref2.hi)
        t = int(rng.integers(lo, hi + 1))
        others = [o for o in ref1.objects if o != obj and o in ref2.objects]
        sec = others[int(rng.integers(len(others)))] if others else 0
        return {"entry": entry, "r1": r1, "r2": r2, "t": t, "obj": obj, "sec": sec}

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = sample_rng(self.seed, self.epoch, index)
        n = len(self.names)
        for attempt in range(self.max_tries):
            vi = index % n if attempt < INDEX_VIDEO_TRIES else int(rng.integers(n))
            video = self.videos[vi]
            d = self._draw(rng, vi)
            run, r1, r2, t, obj, sec = (d["entry"].run, d["r1"], d["r2"], d["t"], d["obj"],
                                        d["sec"])
            img_t = read_image(_image_path(video, video.frames[t]))
            img_r = read_image(_image_path(video, video.frames[r2]))
            gt_t = read_label_mask(video.mask_dir / f"{video.frames[t]}.png")
            gt_r = read_label_mask(video.mask_dir / f"{video.frames[r2]}.png")
            masks = [gt_t, gt_r]
            for o in (obj, sec):
                if o:
                    masks += [self._prob(run, video.name, r1, o, t),
                              self._prob(run, video.name, r2, o, t),
                              self._prob(run, video.name, r1, o, r2)]
                else:
                    masks += [np.zeros_like(gt_t)] * 3
            (img_t, img_r), masks = self.geometry([img_t, img_r], masks, rng)
            seg1, seg2 = masks[2], masks[3]
            if attempt < REJECT_TRIES:
                diff = np.abs(seg1.astype(np.int16) - seg2.astype(np.int16))
                if int(np.count_nonzero(diff > DIFF_THRESHOLD * 255)) < MIN_DIFF_PIXELS:
                    continue
            break
        (img_t, img_r), _ = self.colour([img_t, img_r], [], rng)

        gt_t, gt_r = masks[0], masks[1]

        def stack(i: int) -> torch.Tensor:
            """Objects 1 and 2 of mask kind i (0 seg1, 1 seg2, 2 before): 2 x S x S in [0, 1]."""
            return torch.from_numpy(np.stack([masks[2 + i], masks[5 + i]]).astype(np.float32) / 255)

        after = np.stack([gt_r == obj, (gt_r == sec) if sec else np.zeros_like(gt_r, bool)])
        cls_gt = np.zeros(gt_t.shape, np.int64)
        cls_gt[gt_t == obj] = 1
        if sec:
            cls_gt[gt_t == sec] = 2
        span = abs(r1 - r2)
        return {
            "rgb": T.to_tensor(img_t),
            "ref_rgb": T.to_tensor(img_r),
            "seg1": stack(0),
            "seg2": stack(1),
            "before": stack(2),
            "after": torch.from_numpy(after.astype(np.float32)),
            "cls_gt": torch.from_numpy(cls_gt),
            "dist": torch.tensor([abs(r1 - t) / span, abs(r2 - t) / span], dtype=torch.float32),
            "selector": torch.tensor([1.0, 1.0 if sec else 0.0]),
            "info": {"name": video.name, "run": run.name, "r1": r1, "r2": r2, "t": t,
                     "objects": [obj, sec]},
        }
