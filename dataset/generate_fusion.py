"""Pre-compute fusion training data: propagations of ground-truth masks (REFERENCE.md f.3).

For every video and every reference frame ``r = 0, s, 2s, ...`` (``s`` = ``--separation``):
the objects with more than ``--min-pixels`` (100) pixels in the ground truth of ``r`` (at most
the first ``--max-objects`` (5), by label) are propagated from the ground-truth mask of ``r``
(aggregated with background, REFERENCE.md 0.3) forwards and backwards with the propagation network,
using the inference memory rule of its architecture (``--arch``: mivos = reference frame + every
``--mem-every``-th frame of the pass + the previous frame as temporary memory, top-k 50; stcn =
the same without the temporary memory, top-k 20, REFERENCE.md j.2; ``--top-k`` overrides), over
the whole video or over ``r +- --range`` frames. Each object's probability at every reached
frame (the reference frame included) is stored as an 8-bit PNG (probability x 255)::

    <output>/<video>/<r:05d>/<label:05d>/<frame:05d>.png

``label`` is the object's ground-truth label (= object index + 1 for labels 1..K). The run
folder ``<output>`` also gets ``fusion_run.json`` (the settings) and, per finished video,
``<video>/done.json`` (references, their objects and frame ranges). Finished videos are skipped
on a re-run (resumable); a video interrupted half-way is redone. Several runs with different
settings can sit side by side as sibling run folders; :class:`dataset.fusion_dataset.
FusionDataset` reads one run folder or a folder of them.

Command line::

    python -m dataset.generate_fusion --data ROOT --prop-model F --preset P --output DIR \\
        [--arch mivos|stcn --separation S --range R --mem-every M --top-k K --device D]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from tqdm import tqdm

from dataset.common import MissingFileError, read_image, read_label_mask
from dataset.vos_dataset import VideoEntry, _image_path, list_videos
from inference.arch import defaults_for
from inference.inference_core import InferenceConfig, InferenceCore
from model.aggregate import aggregate
from model.checkpoint import load_propagation_weights
from model.presets import build_propagation
from util.device import resolve_device
from util.errors import InputError, error_line, require_output_dir
from util.filecheck import prescan
from util.fileio import atomic_save_json, atomic_write_bytes

logger = logging.getLogger(__name__)

__all__ = ["FusionGenerationSettings", "generate_fusion_data", "RUN_FILE", "DONE_FILE", "main"]

RUN_FILE = "fusion_run.json"
DONE_FILE = "done.json"
FORMAT_VERSION = 1


class FusionGenerationSettings(dict):
    """The settings that define a run folder (stored in ``fusion_run.json``)."""

    KEYS = ("separation", "range", "mem_every", "top_k", "min_pixels", "max_objects",
            "preset", "arch", "prop_model_sha1", "version")
    #: the value of a key that run folders written before it existed hold implicitly
    IMPLIED = {"arch": "mivos"}

    def matches(self, other: dict[str, Any]) -> bool:
        return all(self.get(k) == other.get(k, self.IMPLIED.get(k)) for k in self.KEYS)


def file_sha1(path: str | os.PathLike, limit: int | None = None) -> str:
    """SHA-1 of a file (of its first ``limit`` bytes when given)."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        remaining = limit
        while True:
            n = 1 << 20 if remaining is None else min(1 << 20, remaining)
            chunk = f.read(n)
            if not chunk:
                break
            h.update(chunk)
            if remaining is not None:
                remaining -= len(chunk)
                if remaining <= 0:
                    break
    return h.hexdigest()


class _LazyFrames:
    """Frames ``lo..hi-1`` of a video, read on demand (H x W x 3 uint8 RGB)."""

    def __init__(self, video: VideoEntry, lo: int, hi: int):
        self.video, self.lo, self.hi = video, lo, hi

    def __len__(self) -> int:
        return self.hi - self.lo

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(i)
        return read_image(_image_path(self.video, self.video.frames[self.lo + i]))


def reference_objects(labels: np.ndarray, min_pixels: int, max_objects: int,
                      void: Sequence[int] = (255,)) -> list[int]:
    """Labels with more than ``min_pixels`` pixels (void labels excluded: 255, and 254 in
    DAVIS), the first ``max_objects`` of them in label order."""
    values, counts = np.unique(labels, return_counts=True)
    keep = [int(v) for v, c in zip(values, counts)
            if v != 0 and int(v) not in void and c > min_pixels]
    return keep[:max_objects]


def _write_png(path: Path, arr: np.ndarray) -> None:

    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise OSError(f"cannot encode {path}")
    atomic_write_bytes(path, buf.tobytes())


@torch.inference_mode()
def generate_video(net: torch.nn.Module, video: VideoEntry, out_dir: Path,
                   settings: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Propagate from every reference frame of one video; returns its ``done.json`` record."""

    n = len(video.frames)
    sep, rng_ = int(settings["separation"]), settings["range"]
    refs: dict[str, Any] = {}
    for r in range(0, n, sep):
        labels = read_label_mask(video.mask_dir / f"{video.frames[r]}.png")
        objects = reference_objects(labels, settings["min_pixels"], settings["max_objects"],
                                    video.void_labels)
        if not objects:
            continue
        lo, hi = (0, n) if rng_ is None else (max(0, r - rng_), min(n, r + rng_ + 1))
        frames = _LazyFrames(video, lo, hi)
        # the architecture's schedule (temporary memory for mivos only)
        cfg = InferenceConfig.for_arch(settings.get("arch", "mivos"), top_k=settings["top_k"],
                                       mem_every=settings["mem_every"], fusion="none",
                                       image_cache=8, feature_cache_mb=256.0)
        core = InferenceCore(net, None, frames, len(objects), cfg, device=device)
        onehot = torch.from_numpy(np.stack([labels == lab for lab in objects]).astype(np.float32))
        core.interact(aggregate(onehot, dim=0), r - lo)
        for t in range(lo, hi):
            prob = core.get_prob(t - lo)  # (K+1) x H x W
            q = (prob[1:].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
            for k, lab in enumerate(objects):
                _write_png(out_dir / f"{r:05d}" / f"{lab:05d}" / f"{t:05d}.png", q[k])
        refs[str(r)] = {"objects": objects, "frames": [lo, hi - 1]}
        del core
    return {"video": video.name, "num_frames": n, "frame_names": list(video.frames),
            "references": refs}


def generate_fusion_data(data_root: str | os.PathLike, prop_model: str | os.PathLike,
                         output: str | os.PathLike, preset: str = "mivos",
                         separation: int = 10, range_: int | None = None, mem_every: int = 5,
                         top_k: int | None | str = "arch", min_pixels: int = 100,
                         max_objects: int = 5,
                         subset: str | os.PathLike | Sequence[str] | None = "auto",
                         device: str | torch.device | None = None, progress: bool = True,
                         max_videos: int | None = None, arch: str = "mivos") -> dict[str, Any]:
    """Generate (or complete) one run folder of fusion data; returns a summary.

    Args:
        data_root: DAVIS-layout or plain (BL30K / YouTubeVOS) dataset root.
        prop_model: multi-object propagation weights of architecture ``arch`` (strictly
            loaded; a single-object stage-0 file is widened like ``train_prop --load`` does,
            which is logged).
        arch: the propagation architecture (``mivos`` or ``stcn``): the network built and its
            inference schedule (:mod:`inference.arch`).
        top_k: the memory read's top-k, None for a full softmax, ``"arch"`` for the
            architecture's default (50 for mivos, 20 for stcn).
        output: the run folder.
        subset: video list (file or names); ``"auto"`` = ``ImageSets/2017/train.txt`` when
            the root has one (DAVIS: train split only), else all videos; None = all videos.
        range_: None = whole video, else r +- range_ frames.
    """

    if top_k == "arch":
        top_k = defaults_for(arch).top_k
    if separation < 1 or mem_every < 1:
        raise ValueError("--separation and --mem-every must be >= 1")
    if range_ is not None and range_ < 1:
        raise ValueError("--range must be >= 1 (or omitted for the whole video)")
    root = Path(data_root)
    if subset == "auto":
        split = root / "ImageSets" / "2017" / "train.txt"
        subset = split if split.is_file() else None
    videos = list_videos(root, subset)
    if max_videos is not None:
        videos = videos[:max_videos]
    model_path = Path(prop_model)
    if not model_path.is_file():
        raise MissingFileError(f"{model_path}: propagation model not found (--prop-model)",
                               model_path)

    require_output_dir(output)
    # every frame and annotation, checked once before any work (names the first bad file)
    prescan([g for v in videos for g in v.input_files()], what="fusion data videos")

    settings = FusionGenerationSettings(
        separation=int(separation), range=None if range_ is None else int(range_),
        mem_every=int(mem_every), top_k=None if top_k is None else int(top_k),
        min_pixels=int(min_pixels), max_objects=int(max_objects), preset=preset, arch=arch,
        prop_model_sha1=file_sha1(model_path), version=FORMAT_VERSION)
    out = Path(output)
    run_file = out / RUN_FILE
    if run_file.is_file():
        old = json.loads(run_file.read_text())
        if not settings.matches(old):
            raise ValueError(f"{out} already holds fusion data generated with other settings "
                             f"({ {k: old.get(k) for k in settings.KEYS} }); choose another "
                             "--output")
    record = dict(settings)
    record.update(prop_model=str(model_path), data_root=str(root))
    atomic_save_json(run_file, record)

    dev = resolve_device(None if device is None else str(device))
    net = build_propagation(preset, single_object=False, arch=arch)
    load_propagation_weights(net, model_path)
    net.to(dev).eval()

    done, skipped = [], []
    bar = None
    if progress:

        bar = tqdm(total=len(videos), desc="fusion data", unit="video")
    try:
        for video in videos:
            vdir = out / video.name
            marker = vdir / DONE_FILE
            if marker.is_file():
                skipped.append(video.name)
            else:
                rec = generate_video(net, video, vdir, settings, dev)
                atomic_save_json(marker, rec)
                done.append(video.name)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    logger.info("fusion data %s: %d videos generated, %d already complete", out, len(done),
                len(skipped))
    return {"output": str(out), "generated": done, "skipped": skipped}


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dataset.generate_fusion",
        description="Propagate ground-truth masks from every s-th frame with a trained "
                    "propagation network and store the per-object probabilities as 8-bit "
                    "PNGs (fusion training data, REFERENCE.md f.3). Resumable: finished videos are "
                    "skipped.")
    p.add_argument("--data", required=True, metavar="ROOT",
                   help="dataset root: DAVIS layout (JPEGImages/480p, Annotations/480p; the "
                        "train split of ImageSets/2017/train.txt is used) or plain layout "
                        "(BL30K, YouTubeVOS: JPEGImages/<video>, Annotations/<video>)")
    p.add_argument("--prop-model", required=True, metavar="FILE",
                   help="trained multi-object propagation weights (.pth) of --arch")
    p.add_argument("--arch", default="mivos", choices=("mivos", "stcn"),
                   help="propagation architecture of --prop-model (default: mivos); sets the "
                        "memory schedule (stcn: no temporary memory) and the default --top-k")
    p.add_argument("--preset", default="mivos", choices=("mivos", "lite"),
                   help="architecture preset of the propagation weights (default: mivos)")
    p.add_argument("--output", required=True, metavar="DIR",
                   help="run folder: <DIR>/<video>/<r>/<label>/<frame>.png")
    p.add_argument("--separation", type=int, default=10,
                   help="spacing s of the reference frames r = 0, s, 2s, ... (default: 10; the "
                        "value behind the released fusion_data is not recorded)")
    p.add_argument("--range", type=int, default=None, dest="range_",
                   help="propagate only r +- this many frames (BL30K); default: the whole "
                        "video (DAVIS)")
    p.add_argument("--mem-every", type=int, default=5,
                   help="a frame becomes permanent memory every this many frames of a pass "
                        "(default: 5)")
    p.add_argument("--top-k", type=int, default=None,
                   help="top-k memory read; 0 = full softmax (default: 50, with --arch stcn 20)")
    p.add_argument("--min-pixels", type=int, default=100,
                   help="objects need more than this many pixels at the reference frame "
                        "(default: 100)")
    p.add_argument("--max-objects", type=int, default=5,
                   help="at most this many objects per reference, by label (default: 5)")
    p.add_argument("--subset", default="auto",
                   help="video list file; 'auto' = ImageSets/2017/train.txt if present, 'all' "
                        "= every video (default: auto)")
    p.add_argument("--max-videos", type=int, default=None,
                   help="only the first N videos (smoke tests)")
    p.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--num-threads", type=int, default=None,
                   help="torch intra-op CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (0 = success, 2 = bad input)."""
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    subset = None if args.subset == "all" else args.subset
    if args.num_threads is not None:
        torch.set_num_threads(max(1, args.num_threads))
    try:
        generate_fusion_data(
            args.data, args.prop_model, args.output, preset=args.preset,
            separation=args.separation, range_=args.range_, mem_every=args.mem_every,
            top_k="arch" if args.top_k is None else (args.top_k if args.top_k > 0 else None),
            min_pixels=args.min_pixels, max_objects=args.max_objects, subset=subset,
            device=args.device, progress=not args.no_progress, max_videos=args.max_videos,
            arch=args.arch)
    except (InputError, FileNotFoundError, ValueError) as e:
        print(error_line(e), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
