"""Semi-supervised VOS evaluation: DAVIS 2016 / 2017, YouTubeVOS 2018 / 2019, or your own videos.

Propagates the ground-truth masks of the annotated frames (DAVIS: the first frame; YouTubeVOS:
every frame on which an object first appears) forward through each video with the propagation
network (reference spec, section g: top-k 50, a permanent memory frame every 5 frames, the
previous frame as temporary memory, soft aggregation of the objects), writes the masks in each
benchmark's layout, scores them when the ground truth of every frame is available, and measures
the speed.

Architectures: --arch mivos (default, the schedule above) or --arch stcn (an STCN network,
REFERENCE.md j.1: top-k 20; a frame is memorised when its absolute index is a multiple of
--mem-every; no temporary previous-frame memory). Each option given on the command line
overrides the architecture's default.

Outputs (under --output OUT; every file is written atomically):

  davis2017   OUT/<seq>/<frame>.png               palette PNGs, the dataset's object ids
  davis2016   OUT/<seq>/<frame>.png               0/255 grayscale PNGs (single object)
  youtube*    OUT/Annotations/<video>/<frame>.png palette PNGs for every frame from the video's
                                                  first annotated frame on (the submission
                                                  layout: zip the Annotations folder)
  generic     OUT/<seq>/<frame>.png               palette PNGs from the first annotated frame on
  OUT/scores.csv      J-Mean, F-Mean, J&F-Mean per sequence and an 'overall' row (DAVIS with
                      full ground truth, or generic with --gt); first and last frames excluded
  OUT/run_info.json   options, FPS, per-sequence frames / seconds / FPS, scores
  OUT/fingerprint.json  the run fingerprint (util.fingerprint): every option that changes the
                      masks (dataset, root, split, --davis-res, --youtube-frames, --size,
                      --preset, --arch, --top-k, --mem-every, --include-last, --mem-anchor,
                      --km-sigma, --amp as used: float32 where the CPU would emulate it,
                      generic --masks/--gt) and the SHA-256 of the --prop-model file (or the
                      --random-weights seed)
  OUT/.done/<seq>.json  completion marker, written after the sequence's last PNG

Resuming: a rerun with the same fingerprint skips the sequences whose marker is present and
whose files all exist, and recomputes the others (a run killed half-way continues); when all
are finished it only rebuilds scores.csv and run_info.json. A rerun with another fingerprint
stops (exit status 2) with a message naming what differs; --restart deletes the earlier
outputs and starts over. Options that do not change the masks are not part of the
fingerprint: --output, --device, --threads, --writers, --sequences, --no-score, progress and
logging.

Object sets: void labels (255, and 254 in DAVIS) are never objects. DAVIS 2017 objects are the
ids of the first frame, written back with their own ids (1 and 3 stay 1 and 3), and scored as
davis2017-evaluation scores them (ids 1..max id of the first frame; see util.metrics).
YouTubeVOS and generic mask folders: an object starts at the first annotated frame holding it.
Bad input (unreadable, truncated or missing files, masks of another size, RGB DAVIS
annotations, a first frame without objects, a checkpoint of another kind or preset, an output
path that is a file) stops with exit status 2 and one line "error: <file>: <problem>".

Speed: FPS = total frames / total compute time, timed per frame from the model input to the
label map on the CPU (CUDA-synchronised; reading frames and writing PNGs excluded). YouTubeVOS
counts frames from each video's first annotated frame.

Several processes: start the script with torchrun (it reads RANK / WORLD_SIZE / LOCAL_RANK). Each
rank takes the sequences whose index modulo the world size equals its rank (gloo on CPU, nccl on
CUDA, device cuda:LOCAL_RANK); rank 0 waits for all ranks at a barrier, then scores and writes the
one merged scores.csv and run_info.json. OUT must be a folder every rank can see.

Examples:

  python eval_semi_vos.py --dataset davis2017 --root ../DAVIS/2017/trainval --split val \\
      --prop-model saves/propagation_model.pth --output out/d17
  python eval_semi_vos.py --dataset youtube2018 --root ../YouTube2018 --split val \\
      --prop-model saves/propagation_model.pth --output out/yv18 --amp fp16
  torchrun --nproc_per_node 4 eval_semi_vos.py --dataset davis2017 --root ... --output ...
  python eval_semi_vos.py --dataset generic --root my_video.mp4 --masks first_mask.png \\
      --prop-model saves/propagation_model.pth --output out/mine --size 480
  python eval_semi_vos.py --dataset davis2017 --root tiny --preset lite --random-weights \\
      --output out/smoke --device cpu
  python eval_semi_vos.py --arch stcn --dataset davis2017 --root ../DAVIS/2017/trainval \\
      --prop-model saves/stcn.pth --output out/d17-stcn
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from dataset.eval_datasets import (
    MASK_EXTENSIONS,
    DatasetNotFoundError,
    DAVIS2016Reader,
    DAVIS2017Reader,
    GenericReader,
    YouTubeVOSReader,
)
from inference.semi_vos import SemiVOSConfig, SemiVOSPropagator
from model.checkpoint import load_weights
from model.presets import DEFAULT_ARCH, build_propagation
from util.amp import long_amp_name, resolve_amp
from util.cli import add_config_arguments, config_from_args, given
from util.device import resolve_device
from util.errors import InputError, error_line, require_output_dir
from util.fileio import atomic_save_json
from util.fingerprint import (
    FINGERPRINT_FILE,
    FingerprintMismatch,
    check_fingerprint,
    digest,
    load_fingerprint,
    make_fingerprint,
    save_fingerprint,
    weights_entry,
)
from util.metrics import evaluate_folder, write_scores_csv
from util.palette import DAVIS_VOID_LABELS, VOID_LABEL
from util.video_io import VIDEO_EXTENSIONS, list_frame_files, natural_sort_key

log = logging.getLogger("eval_semi_vos")

DATASETS = ("davis2016", "davis2017", "youtube2018", "youtube2019", "generic")
DEFAULT_SIZE = {"davis2016": -1, "davis2017": -1, "youtube2018": 480, "youtube2019": 480,
                "generic": -1}
DONE_DIR = ".done"
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------


def _size(value: str) -> int:
    try:
        v = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must be an integer (-1 = original), got {value!r}") from None
    if v == 0 or v < -1:
        raise argparse.ArgumentTypeError(f"--size must be a positive integer or -1, got {value!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (``--help`` explains every option)."""
    p = argparse.ArgumentParser(
        prog="eval_semi_vos.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    groups = {"data": p.add_argument_group("data")}
    g = groups["data"]
    g.add_argument("--dataset", required=True, choices=DATASETS,
                   help="benchmark layout of --root. davis2017: root holds JPEGImages/<res>, "
                        "Annotations/<res>, ImageSets/2017/<split>.txt. davis2016: the same folders "
                        "with ImageSets/2016/<split>.txt (DAVIS 2017 trainval) or "
                        "ImageSets/480p/<split>.txt (DAVIS 2016 release); masks are binarised. "
                        "youtube2018/youtube2019: root holds valid/{JPEGImages,Annotations,meta.json} "
                        "and optionally valid_all_frames/JPEGImages. generic: see --root and --masks")
    g.add_argument("--root", required=True,
                   help="dataset root. For --dataset generic: a folder of frames or a video file "
                        "(one sequence), or a folder whose sub-folders / video files are the "
                        "sequences")
    g.add_argument("--split", default="val",
                   help="DAVIS: image set name, e.g. val or test-dev (default val). YouTubeVOS: "
                        "val means the 'valid' folder (test -> 'test'). Ignored for generic")
    g.add_argument("--davis-res", default="480p",
                   help="DAVIS resolution folder under JPEGImages/Annotations (480p or "
                        "Full-Resolution; default 480p, the protocol's)")
    g.add_argument("--youtube-frames", choices=("auto", "all", "sampled"), default="auto",
                   help="YouTubeVOS frames: all = <split>_all_frames/JPEGImages (protocol; every "
                        "frame is written), sampled = <split>/JPEGImages (every 5th frame), auto = "
                        "all when that folder exists (default)")
    g.add_argument("--masks", default=None,
                   help="generic only, required: for a single sequence, one mask file (for the frame "
                        "with the same name, else the first frame) or a folder of masks named like "
                        "the frames (every mask is an annotated frame). For a folder of sequences, a "
                        "folder holding per sequence <name>/ (masks named like the frames) or "
                        "<name>.png. Palette PNGs, 0/255 or small-label grayscale, DAVIS-coloured RGB")
    g.add_argument("--name", default=None,
                   help="generic only: sequence name of a single sequence (default: the folder or "
                        "video file name)")
    g.add_argument("--gt", default=None,
                   help="generic only: ground-truth folder <gt>/<seq>/<frame>.png; when given, the "
                        "outputs are scored against the frames present there")
    g.add_argument("--sequences", default=None,
                   help="comma-separated subset of sequence names (default: the whole split)")

    g = groups["model"] = p.add_argument_group("model")
    g.add_argument("--prop-model", default=None,
                   help="propagation weights (official propagation_model.pth, stcn.pth for "
                        "--arch stcn, or one of ours), loaded strictly into the --preset "
                        "network of --arch; required unless --random-weights or --score-only")
    g.add_argument("--preset", default="mivos", choices=("mivos", "lite"),
                   help="network architecture (default mivos; the official weights need mivos)")
    g.add_argument("--random-weights", action="store_true",
                   help="run randomly initialised networks without --prop-model (smoke tests and "
                        "timing only; the masks are meaningless)")
    g.add_argument("--seed", type=int, default=0,
                   help="random seed of the --random-weights initialisation (default 0)")

    g = groups["inference"] = p.add_argument_group("inference")
    # --arch, --top-k, --mem-every, --include-last, --mem-anchor, --km-sigma, --amp
    add_config_arguments(p, SemiVOSConfig, groups=groups)
    g.add_argument("--size", type=_size, default=None,
                   help="shorter side of the network input in pixels, -1 = the stored size. Frames "
                        "are resized bicubically, annotations nearest; outputs are resized back "
                        "bilinearly (probabilities) to the stored size. Default: -1 for DAVIS and "
                        "generic, 480 for YouTubeVOS")
    g.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu; under "
                        "torchrun, cuda means cuda:LOCAL_RANK)")
    g.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch (default 0: torch's default)")

    g = p.add_argument_group("output")
    g.add_argument("--output", required=True, help="output folder OUT (created if needed)")
    g.add_argument("--no-score", action="store_true",
                   help="only write the masks; do not compute J / F")
    g.add_argument("--score-only", action="store_true",
                   help="do not run the network: score the masks already in OUT (no model needed)")
    g.add_argument("--restart", "--no-resume", dest="restart", action="store_true",
                   help="delete the outputs of an earlier run in OUT and recompute every sequence "
                        "(needed when the earlier run used other options or weights; --no-resume "
                        "is the old name)")
    g.add_argument("--keep-going", action="store_true",
                   help="on an error in one sequence, log it and continue with the next (exit "
                        "status 1 at the end); default: stop at the first error")
    g.add_argument("--writers", type=int, default=2,
                   help="background threads writing PNGs (default 2; 0 = write in the main thread)")
    g.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    g.add_argument("--dist-timeout", type=float, default=24.0,
                   help="hours a rank waits for the others at the final barrier (default 24)")
    g.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def semi_config(args: argparse.Namespace) -> SemiVOSConfig:
    """The run's :class:`SemiVOSConfig`: the defaults of --arch
    (:meth:`SemiVOSConfig.for_arch`) with the options given on the command line."""
    base = SemiVOSConfig.for_arch(given(args, "arch", DEFAULT_ARCH))
    return config_from_args(SemiVOSConfig, args, base)


def resolve_precision(args: argparse.Namespace, device: torch.device | str) -> None:
    """Set ``args.amp`` (in place) to the precision used on ``device``: unchanged, or float32
    (None) with a warning where the CPU would emulate it (:func:`util.amp.resolve_amp`), so
    that the run fingerprint, ``run_info.json`` and the propagator all see the one used."""
    amp = getattr(args, "amp", None)
    if amp is not None and resolve_amp(amp, device, what="eval_semi_vos.py --amp") is None:
        args.amp = None


def _check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject inconsistent options before any work (argparse error, exit status 2)."""
    try:
        semi_config(args).validate()
    except ValueError as exc:
        p.error(str(exc))
    generic = args.dataset == "generic"
    if generic and not args.masks:
        p.error("--dataset generic needs --masks (the annotated frames' masks)")
    if not generic:
        for opt in ("masks", "name", "gt"):
            if getattr(args, opt) is not None:
                p.error(f"--{opt} only applies to --dataset generic")
    if args.score_only and args.no_score:
        p.error("--score-only and --no-score contradict each other")
    if args.score_only:
        return
    if args.prop_model is not None and args.random_weights:
        p.error("--prop-model and --random-weights exclude each other")
    if args.prop_model is None and not args.random_weights:
        p.error("--prop-model is required (or --random-weights for a smoke test with random networks)")
    if args.prop_model is not None:
        path = Path(args.prop_model)
        if not path.exists():
            p.error(f"checkpoint file not found: {path} (--prop-model)")
        if not path.is_file():
            p.error(f"--prop-model {path} is not a file")
    if args.writers < 0:
        p.error("--writers must be >= 0")
    if args.threads < 0:
        p.error("--threads must be >= 0")


# ----------------------------------------------------------------------------------------------
# datasets
# ----------------------------------------------------------------------------------------------


class GenericSet:
    """Generic input: one sequence (frames folder / video + --masks) or a folder of sequences.

    Attributes:
        sequence_names: the sequences, natural order.
        gt_root: --gt folder or None.
    """

    dataset = "generic"

    def __init__(self, root: str | os.PathLike, masks: str | os.PathLike, name: str | None,
                 resolution: int, gt: str | None, sequences: Sequence[str] | None) -> None:
        self.root, self.masks = Path(root), Path(masks)
        self.resolution = resolution
        self.gt_root = Path(gt) if gt else None
        if not self.root.exists():
            raise DatasetNotFoundError(f"--root not found: {self.root}")
        if not self.masks.exists():
            raise DatasetNotFoundError(f"--masks not found: {self.masks}")
        if self.gt_root is not None and not self.gt_root.is_dir():
            raise DatasetNotFoundError(f"--gt folder not found: {self.gt_root}")
        entries: dict[str, tuple[Path, Path]] = {}
        single = self.root.is_file() or bool(list_frame_files(self.root))
        if single:
            entries[name or self.root.stem] = (self.root, self.masks)
        else:
            if name is not None:
                raise ValueError("--name only applies to a single sequence; --root is a folder of sequences")
            if not self.masks.is_dir():
                raise DatasetNotFoundError(
                    f"--root {self.root} is a folder of sequences, so --masks must be a folder "
                    f"holding <name>/ or <name>.png per sequence; got the file {self.masks}"
                )
            for child in sorted(self.root.iterdir(), key=lambda c: natural_sort_key(c.name)):
                if child.name.startswith("."):
                    continue
                if child.is_dir():
                    seq = child.name
                elif child.is_file() and child.suffix.lower() in VIDEO_EXTENSIONS:
                    seq = child.stem
                else:
                    continue
                candidates = [self.masks / seq] + [self.masks / f"{seq}{e}" for e in MASK_EXTENSIONS]
                found = next((c for c in candidates if c.exists()), None)
                if found is None:
                    raise DatasetNotFoundError(
                        f"no mask for sequence {seq!r}: expected {self.masks / seq}/ or "
                        f"{self.masks / (seq + '.png')}"
                    )
                entries[seq] = (child, found)
            if not entries:
                raise DatasetNotFoundError(
                    f"{self.root}: no frames, no sequence sub-folders and no video files found"
                )
        names = list(entries)
        if sequences is not None:
            unknown = [s for s in sequences if s not in entries]
            if unknown:
                raise DatasetNotFoundError(f"generic: sequences not found in {self.root}: {', '.join(unknown)}")
            names = [s for s in names if s in set(sequences)]
        self.entries = entries
        self.sequence_names = names

    def load(self, name: str):
        frames, masks = self.entries[name]
        return GenericReader(frames, masks, name=name, resolution=self.resolution,
                             cache_size=2).load(name)


def open_dataset(args: argparse.Namespace, size: int):
    """The reader of ``args.dataset`` (an object with ``sequence_names``, ``load(name)``, ``gt_root``)."""
    subset = [s.strip() for s in args.sequences.split(",") if s.strip()] if args.sequences else None
    if args.dataset == "davis2017":
        return DAVIS2017Reader(args.root, args.split, res=args.davis_res, resolution=size,
                               cache_size=2, sequences=subset)
    if args.dataset == "davis2016":
        return DAVIS2016Reader(args.root, args.split, res=args.davis_res, resolution=size,
                               cache_size=2, sequences=subset)
    if args.dataset.startswith("youtube"):
        split = {"val": "valid"}.get(args.split, args.split)
        frames = {"auto": "auto", "all": True, "sampled": False}[args.youtube_frames]
        return YouTubeVOSReader(args.root, split, all_frames=frames, resolution=size,
                                cache_size=2, sequences=subset)
    return GenericSet(args.root, args.masks, args.name, size, args.gt, subset)


# ----------------------------------------------------------------------------------------------
# scoring
# ----------------------------------------------------------------------------------------------


def ground_truth_complete(dataset: Any, names: Sequence[str]) -> tuple[bool, str]:
    """Whether every frame of every sequence has a ground-truth PNG (DAVIS val: yes; test-dev: no).

    Returns (complete, reason when not).
    """
    gt_root = getattr(dataset, "gt_root", None)
    if gt_root is None:
        return False, "no ground truth"
    image_root = getattr(dataset, "image_root", None)
    for name in names:
        gdir = Path(gt_root) / name
        if not gdir.is_dir():
            return False, f"no ground-truth folder {gdir}"
        have = {p.stem for p in list_frame_files(gdir, (".png",))}
        if image_root is None:  # generic --gt: sparse ground truth is scored where present
            if not have:
                return False, f"no ground-truth PNGs in {gdir}"
            continue
        frames = [p.stem for p in list_frame_files(Path(image_root) / name)]
        missing = [f for f in frames if f not in have]
        if missing:
            return False, (f"ground truth of {name} covers {len(frames) - len(missing)} of "
                           f"{len(frames)} frames (e.g. {missing[0]}.png missing)")
    return True, ""


def score_outputs(gt_root: str | os.PathLike, out_root: str | os.PathLike, names: Sequence[str],
                  binary: bool = False, davis: bool = False):
    """J / F of the predicted PNGs ``out_root/<seq>/<frame>.png`` against ``gt_root/<seq>/``.

    DAVIS protocol through :mod:`util.metrics` (first and last ground-truth frame skipped, dataset
    means over all objects, void pixels ignored). ``binary`` (DAVIS 2016): ground truth and
    prediction are binarised (any object = 1) and scored as one object. ``davis`` (DAVIS 2017):
    objects and void as davis2017-evaluation defines them (ids 1..max id of the first frame;
    254 and 255 void); otherwise every non-void id of the ground truth (255 void). Returns a
    :class:`util.metrics.ScoreTable`.
    """
    return evaluate_folder(gt_root, out_root, sequences=list(names), binary=binary,
                           object_rule="davis" if davis else "all",
                           void=DAVIS_VOID_LABELS if davis else (VOID_LABEL,))


def format_table(table: Any) -> str:
    """The score table as text (fractions in [0, 1])."""
    rows = table.rows()
    width = max([len("sequence")] + [len(str(r["sequence"])) for r in rows])
    lines = [f"{'sequence':<{width}}  objects  J-Mean  F-Mean  J&F-Mean"]
    for r in rows:
        if r["sequence"] == "overall":
            lines.append("-" * len(lines[0]))
        lines.append(f"{r['sequence']:<{width}}  {r['objects']:>7}  {r['J-Mean']:.4f}  "
                     f"{r['F-Mean']:.4f}  {r['J&F-Mean']:>8.4f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# resumable outputs
# ----------------------------------------------------------------------------------------------


def marker_path(out_root: Path, name: str) -> Path:
    """Completion marker of a sequence: ``OUT/.done/<name>.json``."""
    return out_root / DONE_DIR / f"{name}.json"


def read_done_marker(out_root: Path, name: str, fingerprint: str) -> dict | None:
    """The marker of a finished sequence, or None when the sequence must be (re)computed.

    ``fingerprint`` is the run's digest (:func:`util.fingerprint.digest`); a marker written
    with another one raises :class:`util.fingerprint.FingerprintMismatch`.
    """
    path = marker_path(out_root, name)
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        log.warning("%s: unreadable completion marker %s; recomputing", name, path)
        return None
    if info.get("fingerprint") != fingerprint:
        raise FingerprintMismatch(
            f"{path}: sequence {name} was finished by a run with other settings or weights "
            f"(fingerprint {info.get('fingerprint')!r}, this run {fingerprint!r}); use another "
            "--output, or --restart to discard the earlier outputs", path)
    missing = [p for p in info.get("outputs", []) if not (out_root / p).is_file()]
    if missing:
        log.warning("%s: %d output files of the earlier run are missing (e.g. %s); recomputing",
                    name, len(missing), missing[0])
        return None
    return info


class _Writer:
    """PNG writes on a few background threads (bounded queue); ``wait`` re-raises the first error."""

    def __init__(self, workers: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="png") if workers else None
        self._pending: list[Future] = []
        self._limit = 4 * max(workers, 1)

    def submit(self, fn, *args) -> None:
        if self._pool is None:
            fn(*args)
            return
        self._pending.append(self._pool.submit(fn, *args))
        if len(self._pending) >= self._limit:
            self._pending.pop(0).result()

    def wait(self) -> None:
        pending, self._pending = self._pending, []
        first: BaseException | None = None
        for f in pending:
            exc = f.exception()
            if exc is not None and first is None:
                first = exc
        if first is not None:
            raise first

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def process_sequence(propagator: Any, seq: Any, out_root: Path, writer: _Writer,
                     fingerprint: str, progress: Any = None) -> dict[str, Any]:
    """Segment one sequence, write its masks, then its completion marker. Returns its info."""
    marker = marker_path(out_root, seq.name)
    if marker.exists():
        marker.unlink()  # the outputs are about to change: not complete until the new marker
    frames, seconds = 0, 0.0
    outputs: list[str] = []
    for res in propagator.segment_sequence(seq):
        rel = seq.output_paths[res.index]
        if rel is not None:
            writer.submit(seq.write_prediction, out_root, res.index, res.labels)
            outputs.append(rel)
        frames += 1
        seconds += res.seconds
        if progress is not None:
            progress.update(1)
    writer.wait()
    info = {
        "sequence": seq.name,
        "frames": frames,
        "seconds": seconds,
        "fps": frames / seconds if seconds > 0 else None,
        "objects": seq.num_objects,
        "first_frame": seq.first_annotated_frame,
        "annotated_frames": len(seq.annotated_frames),
        "processing_size": list(seq.size),
        "original_size": list(seq.original_size),
        "outputs": outputs,
        "fingerprint": fingerprint,
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    atomic_save_json(marker, info)
    return info


# ----------------------------------------------------------------------------------------------
# distributed helpers
# ----------------------------------------------------------------------------------------------


def dist_env() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when started by torchrun (RANK / WORLD_SIZE set), else None."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    return rank, world, local


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------


def _resolved(path: str | None) -> str | None:
    return None if path is None else str(Path(path).resolve())


def run_fingerprint(args: argparse.Namespace, size: int, dataset: Any = None) -> dict[str, Any]:
    """The run fingerprint: every option that determines the masks, fully resolved (the
    architecture and its schedule included), and the hash of the weights (a resumed run must
    match it; see the module docstring)."""
    semi = semi_config(args)
    config: dict[str, Any] = {
        "dataset": args.dataset, "root": _resolved(args.root), "split": args.split,
        "size": size, "preset": args.preset, "arch": semi.arch, "top_k": semi.top_k,
        "mem_every": semi.mem_every, "include_last": semi.include_last,
        "mem_anchor": semi.mem_anchor, "km_sigma": semi.km_sigma, "amp": semi.amp,
    }
    if args.dataset.startswith("davis"):
        config["davis_res"] = args.davis_res
    if args.dataset.startswith("youtube"):
        # the frames actually used ("auto" resolved by the reader)
        all_frames = getattr(dataset, "all_frames", None)
        config["youtube_frames"] = (("all" if all_frames else "sampled") if all_frames is not None
                                    else args.youtube_frames)
    if args.dataset == "generic":
        config.update(masks=_resolved(args.masks), name=args.name, gt=_resolved(args.gt))
    weights = {"propagation": weights_entry(None if args.random_weights else args.prop_model,
                                            random_seed=args.seed)}
    return make_fingerprint(config, weights, kind="eval_semi_vos")


def prepare_output(out_root: Path, fingerprint: dict[str, Any], restart: bool, write: bool) -> None:
    """Compare the run fingerprint with the one stored in ``out_root`` (stop on a difference
    unless ``restart``); with ``restart`` delete the earlier run's outputs; with ``write``
    store this run's fingerprint."""
    done_dir = out_root / DONE_DIR
    markers = sorted(done_dir.glob("*.json")) if done_dir.is_dir() else []
    stored = load_fingerprint(out_root)
    if not restart:
        if stored is None and markers:
            raise FingerprintMismatch(
                f"{out_root} holds finished sequences without a run fingerprint (an older "
                "version's run); use another --output, or --restart to discard them", out_root)
        check_fingerprint(stored, fingerprint, out_root, "--restart")
    elif write:
        removed = 0
        for marker in markers:
            try:
                outputs = json.loads(marker.read_text(encoding="utf-8")).get("outputs", [])
            except (OSError, ValueError):
                outputs = []
            marker.unlink()
            for rel in outputs:
                f = out_root / rel
                if f.is_file():
                    f.unlink()
                    removed += 1
        for name in ("scores.csv", "run_info.json", FINGERPRINT_FILE):
            if (out_root / name).is_file():
                (out_root / name).unlink()
        if markers:
            log.info("--restart: removed %d finished sequences (%d files) of the earlier run",
                     len(markers), removed)
    if write:
        save_fingerprint(out_root, fingerprint)


def _build_propagator(args: argparse.Namespace, device):
    config = semi_config(args)
    if args.random_weights:
        torch.manual_seed(args.seed)
        net = build_propagation(args.preset, arch=config.arch)
        log.warning("running RANDOMLY INITIALISED %s %s networks (seed %d): the masks are "
                    "meaningless", args.preset, config.arch, args.seed)
    else:
        net = build_propagation(args.preset, arch=config.arch)
        load_weights(net, args.prop_model, strict=True)
    return SemiVOSPropagator(net, config, device)


def _run_shard(args: argparse.Namespace, dataset: Any, names: list[str], out_root: Path,
               fingerprint: str, device, rank: int) -> dict[str, Any]:
    """Segment this rank's sequences. Returns {'sequences': {name: info}, 'failed': {name: msg}}."""
    todo, infos = [], {}
    for name in names:
        info = read_done_marker(out_root, name, fingerprint)
        if info is not None:
            info = {**info, "resumed": True}
            infos[name] = info
            log.info("%s: already finished (%s); skipped", name, marker_path(out_root, name))
        else:
            todo.append(name)
    failed: dict[str, str] = {}
    if not todo:
        return {"sequences": infos, "failed": failed}

    propagator = _build_propagator(args, device)
    writer = _Writer(args.writers)
    bar = tqdm(total=len(todo), desc=f"rank {rank} sequences" if args._world > 1 else "sequences",
               unit="seq", disable=args.no_progress, position=2 * rank, dynamic_ncols=True)
    try:
        for name in todo:
            try:
                seq = dataset.load(name)
                with tqdm(total=len(seq) - seq.first_annotated_frame, desc=name, unit="frame",
                          leave=False, disable=args.no_progress, position=2 * rank + 1,
                          dynamic_ncols=True) as fbar:
                    info = process_sequence(propagator, seq, out_root, writer, fingerprint, fbar)
            except Exception as exc:  # noqa: BLE001 - reported per sequence, re-raised below
                try:
                    writer.wait()
                except Exception:  # noqa: BLE001 - the first error is the one reported
                    pass
                if not args.keep_going:
                    raise
                log.error("%s failed: %s: %s", name, type(exc).__name__, exc)
                failed[name] = f"{type(exc).__name__}: {exc}"
                continue
            info["resumed"] = False
            infos[name] = info
            bar.update(1)
            bar.set_postfix_str(f"{name} {info['fps']:.1f} fps" if info["fps"] else name)
            log.info("%s: %d frames, %.2f s, %.2f FPS", name, info["frames"], info["seconds"],
                     info["fps"] or float("nan"))
    finally:
        bar.close()
        writer.close()
    return {"sequences": infos, "failed": failed}


def _finalize(args: argparse.Namespace, dataset: Any, names: list[str], out_root: Path,
              results: list[dict[str, Any]], device, size: int, world: int) -> int:
    """Rank 0, after every rank finished without error: merge the ranks' results, score, write
    scores.csv and run_info.json, print the table and the FPS. Returns the exit status."""
    code = EXIT_OK
    infos: dict[str, dict] = {}
    failed: dict[str, str] = {}
    for r in results:
        infos.update(r.get("sequences", {}))
        failed.update(r.get("failed", {}))
    missing = [n for n in names if n not in infos]
    if failed:
        code = max(code, EXIT_FAILED)
        print(f"error: {len(failed)} sequence(s) failed: " +
              "; ".join(f"{k}: {v}" for k, v in failed.items()), file=sys.stderr)

    total_frames = sum(i["frames"] for i in infos.values())
    total_seconds = sum(i["seconds"] for i in infos.values())
    new = [i for i in infos.values() if not i.get("resumed")]
    run_frames = sum(i["frames"] for i in new)
    run_seconds = sum(i["seconds"] for i in new)
    fps = total_frames / total_seconds if total_seconds > 0 else None

    table, score_note = None, ""
    if args.no_score:
        score_note = "not scored (--no-score)"
    elif missing:
        score_note = f"not scored: {len(missing)} sequence(s) not finished"
    elif args.dataset.startswith("youtube"):
        score_note = ("not scored: YouTubeVOS has no public validation ground truth; submit "
                      f"{out_root / 'Annotations'} (zipped) to the evaluation server")
    else:
        complete, reason = ground_truth_complete(dataset, names)
        if not complete:
            score_note = f"not scored: {reason}"
        else:
            try:
                table = score_outputs(dataset.gt_root, out_root, names,
                                      binary=args.dataset == "davis2016",
                                      davis=args.dataset == "davis2017")
                write_scores_csv(out_root / "scores.csv", table)
                score_note = f"scored {len(names)} sequences: {out_root / 'scores.csv'}"
            except (FileNotFoundError, ValueError) as exc:
                score_note = f"scoring failed: {error_line(exc).removeprefix('error: ')}"
                print(f"error: {score_note}", file=sys.stderr)
                # unreadable ground truth is bad input; a missing prediction is a failure
                code = max(code, EXIT_BAD_INPUT if isinstance(exc, InputError) else EXIT_FAILED)

    if not args.score_only:
        semi = semi_config(args)
        # the options as given, with the propagator's options resolved (architecture defaults)
        options = {k: v for k, v in vars(args).items() if not k.startswith("_")}
        options.update((k, v) for k, v in asdict(semi).items() if k != "record_memory")
        run_info = {
            "options": options,
            "resolved": {"size": size, "device": str(device), "world_size": world,
                         "amp_dtype": long_amp_name(semi.amp)},
            "environment": {"torch": torch.__version__, "python": platform.python_version(),
                            "host": platform.node(),
                            "gpu": (torch.cuda.get_device_name(device)
                                    if getattr(device, "type", "") == "cuda" else None)},
            "fps": fps,
            "total_frames": total_frames,
            "total_seconds": total_seconds,
            "fps_this_run": run_frames / run_seconds if run_seconds > 0 else None,
            "frames_this_run": run_frames,
            "sequences": {
                n: {k: infos[n].get(k) for k in ("frames", "seconds", "fps", "objects",
                                                  "first_frame", "resumed", "rank")}
                for n in names if n in infos
            },
            "failed": failed,
            "score_note": score_note,
            "scores": None,
            "finished": datetime.datetime.now().isoformat(timespec="seconds"),
        }
        if table is not None:
            run_info["scores"] = {
                "overall": {"J": table.j_mean, "F": table.f_mean, "J&F": table.jf_mean},
                "sequences": {s.name: {"J": s.j_mean, "F": s.f_mean, "J&F": s.jf_mean}
                              for s in table.sequences},
            }
        atomic_save_json(out_root / "run_info.json", run_info)

    if table is not None:
        print(format_table(table))
    print(score_note)
    if not args.score_only:
        if fps is not None:
            extra = (f"; this run {run_frames} frames at {run_frames / run_seconds:.2f} FPS"
                     if run_seconds > 0 and run_frames != total_frames else "")
            print(f"FPS: {fps:.2f} ({total_frames} frames in {total_seconds:.2f} s of compute on "
                  f"{device}{extra})")
        print(f"outputs: {out_root}")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the evaluation; returns the exit status (0 ok, 1 failures, 2 bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)

    denv = dist_env()
    rank, world, local_rank = denv if denv is not None else (0, 1, None)
    args._world = world
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=(f"[rank {rank}] " if denv else "") + "%(levelname)s %(name)s: %(message)s",
        force=True,
    )

    bad_input = (InputError, FileNotFoundError)
    try:
        require_output_dir(args.output)
    except InputError as exc:
        print(error_line(exc), file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device, local_rank or 0)
        if device.type == "cuda":
            torch.cuda.set_device(device)
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not args.score_only:
        resolve_precision(args, device)
    size = args.size if args.size is not None else DEFAULT_SIZE[args.dataset]
    out_root = Path(args.output)

    initialised = False
    if denv is not None and world > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(hours=args.dist_timeout))
        initialised = True
        log.info("process group: %s, rank %d of %d, device %s", backend, rank, world, device)

    status: dict[str, Any] = {"rank": rank, "code": EXIT_OK, "error": None,
                              "sequences": {}, "failed": {}}
    dataset, names = None, []
    t_start = time.perf_counter()
    try:
        dataset = open_dataset(args, size)
        names = list(dataset.sequence_names)
        if not names:
            raise DatasetNotFoundError("no sequences to evaluate")
        mine = [n for i, n in enumerate(names) if i % world == rank]
        if args.score_only:
            if not out_root.is_dir():
                raise FileNotFoundError(f"--score-only: output folder not found: {out_root}")
            for n in names:
                status["sequences"][n] = {"frames": 0, "seconds": 0.0, "resumed": True}
        else:
            fingerprint = run_fingerprint(args, size, dataset)
            out_root.mkdir(parents=True, exist_ok=True)
            # every rank checks (read only); rank 0 clears a --restart and writes the fingerprint
            prepare_output(out_root, fingerprint, args.restart, write=rank == 0)
            if initialised:
                dist.barrier()
            log.info("%s: %d sequences, this rank %d; output %s; device %s; size %s",
                     args.dataset, len(names), len(mine), out_root, device, size)
            res = _run_shard(args, dataset, mine, out_root, digest(fingerprint), device, rank)
            for info in res["sequences"].values():
                info["rank"] = rank
            status["sequences"], status["failed"] = res["sequences"], res["failed"]
    except bad_input as exc:
        log.debug("bad input", exc_info=True)
        status.update(code=EXIT_BAD_INPUT, error=error_line(exc).removeprefix("error: "))
    except Exception as exc:  # noqa: BLE001 - every rank must reach the barrier
        log.exception("rank %d failed", rank)
        status.update(code=EXIT_FAILED, error=f"{type(exc).__name__}: {exc}")
    log.debug("rank %d done in %.1f s", rank, time.perf_counter() - t_start)

    if initialised:
        dist.barrier()
        results: list[Any] = [None] * world
        dist.all_gather_object(results, status)
    else:
        results = [status]

    code = status["code"]
    if rank == 0:
        errors = [r for r in results if r["error"]]
        if errors:
            for r in errors:
                where = f"rank {r['rank']}: " if world > 1 else ""
                print(f"error: {where}{r['error']}", file=sys.stderr)
            code = max(r["code"] for r in results)
        else:
            code = max(code, _finalize(args, dataset, names, out_root, results, device, size, world))
    elif status["error"]:
        print(f"error: rank {rank}: {status['error']}", file=sys.stderr)
    if initialised:
        dist.destroy_process_group()
    return code


if __name__ == "__main__":
    sys.exit(main())
