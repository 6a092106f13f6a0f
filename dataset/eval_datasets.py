"""Readers for semi-supervised evaluation (reference spec, section g).

Each reader lists the sequences of a split and builds :class:`VideoSequence` objects lazily
(one at a time, when indexed or iterated). A sequence carries what an evaluation script needs to
run the propagation, write the masks in the benchmark's layout and score them:

* frame names and a lazy :class:`util.video_io.FrameSource` (RGB uint8, optionally resized);
* the annotated frames: ``annotations[t]`` is an H0 x W0 uint8 label map at the original size,
  labels remapped to ``1..K`` (``label_to_original`` restores the dataset's ids, so
  non-contiguous ids such as 1 and 3 are written back as 1 and 3); void labels (255, and 254 in
  DAVIS) are never objects and become background;
* the objects given at every annotated frame, the original size, and the relative output path
  of every frame that must be written (``None`` for frames that are not written).

Readers:

* :class:`DAVIS2017Reader` - ``root/JPEGImages/480p/<seq>/*.jpg``, ``root/Annotations/480p/<seq>``,
  ``root/ImageSets/2017/<split>.txt`` (``val`` or ``test-dev``); annotations are read as the
  official tools read them (stored ids of palette / grayscale PNGs; RGB refused); objects = the
  non-void ids of the first frame's annotation (an object that first appears later is not
  given, and is scored as davis2017-evaluation scores it, see :mod:`util.metrics`); frames
  must be numbered consecutively (a gap is a missing file); output ``<seq>/<frame>.png`` for
  every frame (palette PNGs).
* :class:`DAVIS2016Reader` - same folders, split list ``ImageSets/2016/val.txt`` (as in the 2017
  trainval release) or the 2016 release's ``ImageSets/480p/val.txt``; masks binarised (one
  object, 0/255 -> 1); output ``<seq>/<frame>.png`` as 0/255 grayscale PNGs (no palette).
* :class:`YouTubeVOSReader` - ``root/valid/{JPEGImages,Annotations,meta.json}`` and, when
  present, the all-frames release ``root/valid_all_frames/JPEGImages``. Objects may first appear
  mid-video; every annotation PNG is loaded. Output ``Annotations/<seq>/<frame>.png`` for every
  frame from the first annotated frame onward, named like the JPEGs.
* :class:`GenericReader` - any frame folder or video file with one first-frame mask file or a
  folder of masks named like the frames; output ``<name>/<frame>.png`` from the first annotated
  frame onward.

Nothing is ever downloaded: missing data raises :class:`DatasetNotFoundError` saying what is
expected and where to get it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from util.errors import InputError
from util.fileio import atomic_save_image
from util.palette import (
    DAVIS_VOID_LABELS,
    VOID_LABEL,
    object_ids,
    read_annotation,
    read_mask,
    write_palette_png,
)
from util.video_io import FrameSource, list_frame_files, natural_sort_key

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

MASK_EXTENSIONS: tuple[str, ...] = (".png", ".bmp", ".jpg", ".jpeg")

DAVIS_URL = "https://davischallenge.org/davis2017/code.html"
DAVIS2016_URL = "https://davischallenge.org/davis2016/code.html"
YOUTUBEVOS_URL = "https://youtube-vos.org/dataset/"


class DatasetNotFoundError(InputError, FileNotFoundError):
    """A dataset folder, split list or file is missing (the message names the expected path)."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        InputError.__init__(self, message, path)


class DatasetFormatError(InputError):
    """The data is present but inconsistent (the message names the offending files)."""


def _download_hint(url: str) -> str:
    return f"download it yourself from the official site ({url}); this code never downloads data"


# ----------------------------------------------------------------------------------------------
# sequence container
# ----------------------------------------------------------------------------------------------


@dataclass
class VideoSequence:
    """One video to segment.

    Attributes:
        name: sequence name.
        frame_names: T frame names (file stems, e.g. ``00000``).
        frames: lazy frame reader; ``frames[t]`` is H x W x 3 RGB uint8 at the processing size
            ``frames.size`` (the original size unless a resolution was requested).
        annotations: frame index -> H0 x W0 uint8 label map at the original size, labels in
            ``0..K`` after remapping (0 = background).
        annotation_files: frame index -> the annotation file it came from.
        objects_per_frame: frame index -> remapped object ids present in that annotation.
        label_to_original: remapped id (1..K) -> the dataset's own object id.
        original_size: (H0, W0) of the frames and annotations on disk.
        output_paths: T relative POSIX paths (``None`` = frame not written) under an output root.
        binary_output: write 0/255 grayscale PNGs instead of palette PNGs (DAVIS 2016).
        dataset: reader name, for logs.
    """

    name: str
    frame_names: list[str]
    frames: FrameSource
    annotations: dict[int, np.ndarray]
    annotation_files: dict[int, Path]
    objects_per_frame: dict[int, list[int]]
    label_to_original: dict[int, int]
    original_size: tuple[int, int]
    output_paths: list[str | None]
    binary_output: bool = False
    dataset: str = ""
    _restore_lut: np.ndarray | None = field(default=None, init=False, repr=False)

    def __len__(self) -> int:
        return len(self.frame_names)

    @property
    def num_objects(self) -> int:
        """K, the number of objects (after remapping)."""
        return len(self.label_to_original)

    @property
    def object_ids(self) -> list[int]:
        """Remapped object ids ``[1, ..., K]``."""
        return sorted(self.label_to_original)

    @property
    def annotated_frames(self) -> list[int]:
        """Indices of the frames with an annotation, ascending."""
        return sorted(self.annotations)

    @property
    def first_annotated_frame(self) -> int:
        """Index of the first annotated frame (propagation starts here)."""
        return min(self.annotations)

    @property
    def first_frame_of_object(self) -> dict[int, int]:
        """Remapped object id -> index of the first annotated frame that contains it."""
        out: dict[int, int] = {}
        for t in self.annotated_frames:
            for o in self.objects_per_frame[t]:
                out.setdefault(o, t)
        return out

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the frames returned by ``frames`` (the processing size)."""
        return self.frames.size

    @property
    def output_frame_indices(self) -> list[int]:
        """Indices of the frames whose output must be written."""
        return [t for t, p in enumerate(self.output_paths) if p is not None]

    def image(self, t: int) -> np.ndarray:
        """Frame ``t`` as H x W x 3 RGB uint8 at the processing size."""
        return self.frames[t]

    def image_tensor(self, t: int):
        """Frame ``t`` as a float32 torch tensor 3 x H x W in [0, 1] (not normalised)."""
        # frames from the cache are read-only: copy before handing them to torch
        return torch.from_numpy(np.array(self.frames[t], copy=True)).permute(2, 0, 1).float() / 255.0

    def annotation_resized(self, t: int) -> np.ndarray:
        """Annotation of frame ``t`` resized (nearest) to the processing size; H x W uint8."""
        if t not in self.annotations:
            raise KeyError(f"{self.name}: frame {t} ({self.frame_names[t]}) has no annotation")
        ann = self.annotations[t]
        h, w = self.size
        if ann.shape == (h, w):
            return ann
        return cv2.resize(ann, (w, h), interpolation=cv2.INTER_NEAREST)

    def to_original_labels(self, label_map: np.ndarray) -> np.ndarray:
        """Map remapped labels (0..K) back to the dataset's ids; returns uint8 of the same shape.

        Raises:
            ValueError: the map holds a label outside 0..K.
        """
        if self._restore_lut is None:
            lut = np.zeros(256, dtype=np.uint8)
            for k, orig in self.label_to_original.items():
                lut[k] = orig
            self._restore_lut = lut
        m = np.asarray(label_map)
        if m.size and (int(m.min()) < 0 or int(m.max()) > self.num_objects):
            raise ValueError(
                f"{self.name}: label map holds labels outside 0..{self.num_objects}: "
                f"{sorted(set(np.unique(m).tolist()) - set(range(self.num_objects + 1)))}"
            )
        return self._restore_lut[m.astype(np.intp)]

    def write_prediction(self, out_root: PathLike, t: int, label_map: np.ndarray) -> Path:
        """Write the prediction of frame ``t`` in the benchmark layout and return its path.

        Args:
            out_root: output root; the file goes to ``out_root / output_paths[t]``.
            t: frame index (must have an output path).
            label_map: H0 x W0 label map with remapped labels 0..K at the original size.
        """
        rel = self.output_paths[t]
        if rel is None:
            raise ValueError(f"{self.name}: frame {t} ({self.frame_names[t]}) is not written")
        m = np.asarray(label_map)
        if m.shape != tuple(self.original_size):
            raise ValueError(
                f"{self.name} frame {self.frame_names[t]}: prediction is {m.shape}, expected the "
                f"original size {tuple(self.original_size)}"
            )
        path = Path(out_root) / rel
        if self.binary_output:
            atomic_save_image(path, ((m > 0) * 255).astype(np.uint8))
        else:
            write_palette_png(path, self.to_original_labels(m))
        return path


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def _require_dir(path: Path, what: str, url: str | None) -> Path:
    if not path.is_dir():
        hint = f"; {_download_hint(url)}" if url else ""
        raise DatasetNotFoundError(f"{what} not found: expected a folder at {path}{hint}")
    return path


def _require_file(path: Path, what: str, url: str | None) -> Path:
    if not path.is_file():
        hint = f"; {_download_hint(url)}" if url else ""
        raise DatasetNotFoundError(f"{what} not found: expected a file at {path}{hint}")
    return path


def _read_split_list(path: Path) -> list[str]:
    """Sequence names from a split file: plain names, or DAVIS 2016 ``/JPEGImages/480p/<seq>/x.jpg
    /Annotations/...`` lines (the sequence is the image's folder). Duplicates removed, order kept."""
    names: list[str] = []
    seen: set[str] = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        token = line.split()[0]
        name = Path(token).parent.name if "/" in token else token
        if not name:
            raise DatasetFormatError(f"{path}: cannot parse a sequence name from line {line!r}")
        if name not in seen:
            seen.add(name)
            names.append(name)
    if not names:
        raise DatasetFormatError(f"{path}: the split list is empty")
    return names


def _open_frames(folder: Path, seq: str, resolution: int, cache_size: int | None,
                 url: str | None) -> FrameSource:
    if not folder.exists():
        hint = f"; {_download_hint(url)}" if url else ""
        raise DatasetNotFoundError(f"frames of sequence {seq!r} not found: expected {folder}{hint}")
    return FrameSource(folder, resolution=resolution, cache_size=cache_size)


def _frame_desc(frames: FrameSource, t: int) -> str:
    return str(frames.files[t]) if frames.files else f"{frames.path} frame {t}"


def _load_annotation(path: Path, frames: FrameSource, t: int, strict: bool = False) -> np.ndarray:
    """Read a mask and check its size against frame ``t``'s original size.

    ``strict``: a benchmark annotation, read as the official tools read it
    (:func:`util.palette.read_annotation`: stored ids, RGB refused); otherwise
    :func:`util.palette.read_mask` (0/255 grayscale -> 1, DAVIS-coloured RGB accepted).
    """
    mask = read_annotation(path) if strict else read_mask(path)
    if mask.shape != tuple(frames.original_size):
        raise DatasetFormatError(
            f"size mismatch: annotation {path} is {mask.shape[1]}x{mask.shape[0]} but image "
            f"{_frame_desc(frames, t)} is {frames.original_size[1]}x{frames.original_size[0]} (WxH)"
        )
    return mask


def remap_labels(
    maps: dict[int, np.ndarray], order: Sequence[int] | None = None,
    void: Sequence[int] = (VOID_LABEL,),
) -> tuple[dict[int, np.ndarray], dict[int, int]]:
    """Remap the non-zero, non-void labels of several label maps to ``1..K``.

    Args:
        maps: frame index -> uint8 label map with the dataset's ids.
        order: original ids in the order they get 1..K (default: all ids found, ascending,
            void labels excluded); ids not listed (void among them) become background.
        void: labels that are never objects.

    Returns:
        ``(remapped maps, label_to_original)`` with ``label_to_original[k] = original id``.
    """
    if order is None:
        found: set[int] = set()
        for m in maps.values():
            found.update(object_ids(m, tuple(void)))
        order = sorted(found)
    lut = np.zeros(256, dtype=np.uint8)
    mapping: dict[int, int] = {}
    for k, orig in enumerate(order, start=1):
        lut[int(orig)] = k
        mapping[k] = int(orig)
    return {t: lut[m] for t, m in maps.items()}, mapping


def _objects_in(maps: dict[int, np.ndarray], void: Sequence[int] = (VOID_LABEL,)
                ) -> dict[int, list[int]]:
    return {t: object_ids(m, tuple(void)) for t, m in maps.items()}


def check_consecutive_frames(frames: FrameSource, what: str) -> None:
    """DAVIS frames are numbered ``00000, 00001, ...``: a gap is a missing file, named.

    Raises DatasetNotFoundError for the first missing number (only when every frame name is a
    number; other naming schemes are not checked).
    """
    names = list(frames.names)
    if not names or not all(n.isdigit() for n in names):
        return
    numbers = [int(n) for n in names]
    width = len(names[0])
    ext = frames.files[0].suffix if frames.files else ".jpg"
    for prev, cur in zip(numbers, numbers[1:], strict=False):
        if cur != prev + 1:
            missing = frames.path / f"{prev + 1:0{width}d}{ext}"
            raise DatasetNotFoundError(
                f"{missing}: frame missing ({what}: frames {names[0]}..{names[-1]} must be "
                "consecutive)", missing)


class _Reader:
    """Common list-like behaviour: ``len``, iteration and indexing by position or name."""

    dataset = ""

    def __init__(self, sequences: list[str], only: Sequence[str] | None) -> None:
        if only is not None:
            unknown = [s for s in only if s not in sequences]
            if unknown:
                raise DatasetNotFoundError(
                    f"{self.dataset}: sequences not in the split: {', '.join(unknown)}"
                )
            sequences = [s for s in sequences if s in set(only)]
        self.sequence_names = sequences

    def __len__(self) -> int:
        return len(self.sequence_names)

    def __iter__(self) -> Iterator[VideoSequence]:
        for name in self.sequence_names:
            yield self.load(name)

    def __getitem__(self, key: int | str) -> VideoSequence:
        if isinstance(key, str):
            if key not in self.sequence_names:
                raise KeyError(f"{self.dataset}: no sequence named {key!r}")
            return self.load(key)
        return self.load(self.sequence_names[key])

    def load(self, name: str) -> VideoSequence:  # pragma: no cover - overridden
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------
# DAVIS
# ----------------------------------------------------------------------------------------------


class DAVIS2017Reader(_Reader):
    """DAVIS 2017 semi-supervised evaluation (``val`` from trainval, or ``test-dev``).

    Args:
        root: dataset root holding ``JPEGImages/<res>``, ``Annotations/<res>``, ``ImageSets/2017``.
        split: ``val`` or ``test-dev`` (any ``ImageSets/2017/<split>.txt`` works).
        res: resolution folder name (``480p`` or ``Full-Resolution``).
        resolution: shorter side for the frames (-1 keeps the stored size, as in the protocol).
        cache_size: frames kept by each sequence's FrameSource (None = all).
        sequences: optional subset of the split.

    Attributes:
        gt_root: ``root/Annotations/<res>``, the ground-truth root for ``util.metrics.evaluate_folder``.
    """

    dataset = "DAVIS 2017"
    url = DAVIS_URL

    def __init__(
        self,
        root: PathLike,
        split: str = "val",
        res: str = "480p",
        resolution: int = -1,
        cache_size: int | None = 64,
        sequences: Sequence[str] | None = None,
    ) -> None:
        self.root = _require_dir(Path(root), f"{self.dataset} root", self.url)
        self.image_root = _require_dir(self.root / "JPEGImages" / res, f"{self.dataset} images", self.url)
        self.gt_root = _require_dir(self.root / "Annotations" / res, f"{self.dataset} annotations", self.url)
        self.split_file = self._split_file(split)
        self.split = split
        self.resolution = resolution
        self.cache_size = cache_size
        super().__init__(_read_split_list(self.split_file), sequences)
        logger.info("%s %s: %d sequences from %s", self.dataset, split, len(self), self.root)

    def _split_file(self, split: str) -> Path:
        return _require_file(
            self.root / "ImageSets" / "2017" / f"{split}.txt", f"{self.dataset} split list", self.url
        )

    def _first_annotation(self, name: str, frames: FrameSource) -> tuple[Path, np.ndarray]:
        ann_dir = _require_dir(self.gt_root / name, f"annotations of sequence {name!r}", self.url)
        path = ann_dir / f"{frames.names[0]}.png"
        if not path.is_file():
            raise DatasetNotFoundError(
                f"first-frame annotation of sequence {name!r} not found: expected {path}"
            )
        return path, _load_annotation(path, frames, 0, strict=True)

    def _open(self, name: str) -> FrameSource:
        frames = _open_frames(self.image_root / name, name, self.resolution, self.cache_size, self.url)
        check_consecutive_frames(frames, f"sequence {name!r}")
        ann_dir = self.gt_root / name
        if ann_dir.is_dir():  # an annotation without its frame: the frame is missing
            have = set(frames.names)
            for p in list_frame_files(ann_dir, (".png",)):
                if p.stem not in have:
                    missing = frames.path / f"{p.stem}{frames.files[0].suffix if frames.files else '.jpg'}"
                    raise DatasetNotFoundError(
                        f"{missing}: frame missing (its annotation {p} exists)", missing)
        return frames

    def load(self, name: str) -> VideoSequence:
        frames = self._open(name)
        path, mask = self._first_annotation(name, frames)
        if not object_ids(mask, DAVIS_VOID_LABELS):
            void = " (254 and 255 are void)" if (mask > 0).any() else ""
            raise DatasetFormatError(f"{path}: the first-frame annotation contains no object{void}",
                                     path)
        # DAVIS: the objects are the ids of the first frame (void excluded); ids need not be
        # contiguous, they are mapped to 1..K here and written back as they were
        maps, mapping = remap_labels({0: mask}, void=DAVIS_VOID_LABELS)
        return VideoSequence(
            name=name,
            frame_names=list(frames.names),
            frames=frames,
            annotations=maps,
            annotation_files={0: path},
            objects_per_frame=_objects_in(maps, DAVIS_VOID_LABELS),
            label_to_original=mapping,
            original_size=tuple(frames.original_size),
            output_paths=[f"{name}/{n}.png" for n in frames.names],
            binary_output=False,
            dataset=self.dataset,
        )


class DAVIS2016Reader(DAVIS2017Reader):
    """DAVIS 2016 (single object): masks binarised (any non-zero label / 0/255 -> 1), K = 1.

    The split list is ``split_file`` if given, else the first that exists of
    ``root/ImageSets/2016/<split>.txt`` and ``root/ImageSets/480p/<split>.txt``. Output masks
    are 0/255 grayscale PNGs (``binary_output``).
    """

    dataset = "DAVIS 2016"
    url = DAVIS2016_URL

    def __init__(
        self,
        root: PathLike,
        split: str = "val",
        res: str = "480p",
        resolution: int = -1,
        cache_size: int | None = 64,
        sequences: Sequence[str] | None = None,
        split_file: PathLike | None = None,
    ) -> None:
        self._explicit_split = Path(split_file) if split_file is not None else None
        super().__init__(root, split, res, resolution, cache_size, sequences)

    def _split_file(self, split: str) -> Path:
        if self._explicit_split is not None:
            return _require_file(self._explicit_split, f"{self.dataset} split list", self.url)
        candidates = [
            self.root / "ImageSets" / "2016" / f"{split}.txt",
            self.root / "ImageSets" / "480p" / f"{split}.txt",
        ]
        for c in candidates:
            if c.is_file():
                return c
        raise DatasetNotFoundError(
            f"{self.dataset} split list not found: expected one of "
            f"{', '.join(str(c) for c in candidates)} (or pass split_file=; the 2016 list ships "
            f"in the DAVIS 2017 trainval ImageSets/2016); {_download_hint(self.url)}"
        )

    def _first_annotation(self, name: str, frames: FrameSource) -> tuple[Path, np.ndarray]:
        # DAVIS 2016 annotations are 0/255 grayscale: 255 is the object here, not void
        ann_dir = _require_dir(self.gt_root / name, f"annotations of sequence {name!r}", self.url)
        path = ann_dir / f"{frames.names[0]}.png"
        if not path.is_file():
            raise DatasetNotFoundError(
                f"first-frame annotation of sequence {name!r} not found: expected {path}", path)
        return path, _load_annotation(path, frames, 0)

    def load(self, name: str) -> VideoSequence:
        frames = self._open(name)
        path, mask = self._first_annotation(name, frames)
        binary = (mask > 0).astype(np.uint8)
        if not binary.any():
            raise DatasetFormatError(f"{path}: the first-frame annotation contains no object")
        return VideoSequence(
            name=name,
            frame_names=list(frames.names),
            frames=frames,
            annotations={0: binary},
            annotation_files={0: path},
            objects_per_frame={0: [1]},
            label_to_original={1: 1},
            original_size=tuple(frames.original_size),
            output_paths=[f"{name}/{n}.png" for n in frames.names],
            binary_output=True,
            dataset=self.dataset,
        )


# ----------------------------------------------------------------------------------------------
# YouTubeVOS
# ----------------------------------------------------------------------------------------------


class YouTubeVOSReader(_Reader):
    """YouTubeVOS 2018 / 2019 validation.

    Args:
        root: folder holding ``<split>/`` (``JPEGImages``, ``Annotations``, ``meta.json``) and,
            optionally, ``<split>_all_frames/JPEGImages``.
        split: ``valid`` (or ``test``).
        all_frames: ``True`` - frames from ``<split>_all_frames`` (required); ``False`` - the
            sampled ``<split>/JPEGImages``; ``"auto"`` - all-frames when present.
        resolution: shorter side of the frames (480 in the protocol; -1 keeps the size).
        cache_size: frames kept by each sequence's FrameSource.
        sequences: optional subset (default: every video of ``meta.json``, sorted).

    Labels are remapped to 1..K in ascending order of the original ids. Every annotation PNG of
    a sequence is loaded (frame index -> map); ``meta.json`` is checked: each object's first
    listed frame must have an annotation containing it and every listed frame must exist among
    the JPEGs.
    """

    dataset = "YouTubeVOS"
    url = YOUTUBEVOS_URL

    def __init__(
        self,
        root: PathLike,
        split: str = "valid",
        all_frames: bool | str = "auto",
        resolution: int = 480,
        cache_size: int | None = 64,
        sequences: Sequence[str] | None = None,
    ) -> None:
        self.root = _require_dir(Path(root), f"{self.dataset} root", self.url)
        split_dir = _require_dir(self.root / split, f"{self.dataset} {split} folder", self.url)
        self.ann_root = _require_dir(split_dir / "Annotations", f"{self.dataset} annotations", self.url)
        self.meta_file = _require_file(split_dir / "meta.json", f"{self.dataset} meta.json", self.url)
        all_dir = self.root / f"{split}_all_frames" / "JPEGImages"
        if all_frames == "auto":
            all_frames = all_dir.is_dir()
            logger.info("%s: using %s frames", self.dataset, "all" if all_frames else "sampled")
        if all_frames:
            self.image_root = _require_dir(all_dir, f"{self.dataset} all-frames images", self.url)
        else:
            self.image_root = _require_dir(split_dir / "JPEGImages", f"{self.dataset} images", self.url)
        self.all_frames = bool(all_frames)
        self.split = split
        self.resolution = resolution
        self.cache_size = cache_size
        self.gt_root = None  # scored by the evaluation server
        try:
            meta = json.loads(self.meta_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetFormatError(f"{self.meta_file}: not valid JSON ({exc})") from exc
        videos = meta.get("videos") if isinstance(meta, dict) else None
        if not isinstance(videos, dict):
            raise DatasetFormatError(f"{self.meta_file}: expected a top-level 'videos' object")
        self.meta: dict[str, dict] = videos
        super().__init__(sorted(videos), sequences)
        logger.info("%s %s: %d sequences from %s", self.dataset, split, len(self), self.root)

    def _meta_objects(self, name: str) -> dict[int, list[str]]:
        entry = self.meta[name]
        objs = entry.get("objects") if isinstance(entry, dict) else None
        if not isinstance(objs, dict) or not objs:
            raise DatasetFormatError(f"{self.meta_file}: video {name!r} lists no objects")
        out: dict[int, list[str]] = {}
        for key, info in objs.items():
            try:
                oid = int(key)
            except ValueError as exc:
                raise DatasetFormatError(
                    f"{self.meta_file}: video {name!r} has a non-integer object id {key!r}"
                ) from exc
            frames = info.get("frames") if isinstance(info, dict) else None
            if not isinstance(frames, list) or not frames:
                raise DatasetFormatError(
                    f"{self.meta_file}: object {key} of video {name!r} lists no frames"
                )
            out[oid] = [str(f) for f in frames]
        return out

    def load(self, name: str) -> VideoSequence:
        meta_objects = self._meta_objects(name)
        frames = _open_frames(self.image_root / name, name, self.resolution, self.cache_size, self.url)
        index = {n: t for t, n in enumerate(frames.names)}
        frame_dir = self.image_root / name

        listed = sorted({f for fl in meta_objects.values() for f in fl}, key=natural_sort_key)
        missing = [f for f in listed if f not in index]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise DatasetFormatError(
                f"{self.meta_file}: video {name!r} lists frames that are not in {frame_dir}: {shown}"
            )

        ann_dir = _require_dir(self.ann_root / name, f"annotations of sequence {name!r}", self.url)
        ann_files = list_frame_files(ann_dir, (".png",))
        if not ann_files:
            raise DatasetNotFoundError(f"no annotation PNGs in {ann_dir}")
        raw: dict[int, np.ndarray] = {}
        files: dict[int, Path] = {}
        for p in ann_files:
            if p.stem not in index:
                raise DatasetFormatError(f"annotation {p} has no matching frame in {frame_dir}")
            t = index[p.stem]
            raw[t] = _load_annotation(p, frames, t, strict=True)
            files[t] = p

        found = _objects_in(raw)
        first_seen: dict[int, int] = {}
        for t in sorted(found):
            for o in found[t]:
                first_seen.setdefault(o, t)
        for oid, flist in meta_objects.items():
            t0 = index[flist[0]]
            if t0 not in raw:
                raise DatasetNotFoundError(
                    f"object {oid} of video {name!r} first appears at frame {flist[0]} in "
                    f"{self.meta_file}, but its annotation {ann_dir / (flist[0] + '.png')} is missing"
                )
            if oid not in found[t0]:
                raise DatasetFormatError(
                    f"object {oid} of video {name!r} first appears at frame {flist[0]} in "
                    f"{self.meta_file}, but {files[t0]} does not contain label {oid}"
                )
        extra = sorted(set(first_seen) - set(meta_objects))
        if extra:
            logger.warning("%s: labels %s in %s are not listed in %s", name, extra, ann_dir, self.meta_file)

        order = sorted(first_seen)
        maps, mapping = remap_labels(raw, order)
        first = min(maps)
        return VideoSequence(
            name=name,
            frame_names=list(frames.names),
            frames=frames,
            annotations=maps,
            annotation_files=files,
            objects_per_frame=_objects_in(maps),
            label_to_original=mapping,
            original_size=tuple(frames.original_size),
            output_paths=[
                f"Annotations/{name}/{n}.png" if t >= first else None
                for t, n in enumerate(frames.names)
            ],
            binary_output=False,
            dataset=self.dataset,
        )


# ----------------------------------------------------------------------------------------------
# generic
# ----------------------------------------------------------------------------------------------


class GenericReader(_Reader):
    """A single sequence from any frame folder or video plus its mask(s).

    Args:
        frames: a folder of frames or a video file.
        masks: one mask file (for the frame of the same name, else the first frame) or a folder
            of masks named like the frames (each becomes an annotated frame).
        name: sequence name (default: the frames' folder/file stem).
        resolution: shorter side of the frames (-1 keeps the size).
        cache_size: frames kept by the FrameSource.

    Masks are read with ``util.palette.read_mask`` (palette PNGs, 0/255 grayscale -> 1, DAVIS
    coloured RGB); labels are remapped to 1..K in ascending order. Output paths are
    ``<name>/<frame>.png`` from the first annotated frame onward.
    """

    dataset = "generic"

    def __init__(
        self,
        frames: PathLike,
        masks: PathLike,
        name: str | None = None,
        resolution: int = -1,
        cache_size: int | None = 64,
    ) -> None:
        self.frames_path = Path(frames)
        self.masks_path = Path(masks)
        if not self.frames_path.exists():
            raise DatasetNotFoundError(f"frames not found: expected a folder or a video at {self.frames_path}")
        if not self.masks_path.exists():
            raise DatasetNotFoundError(
                f"masks not found: expected a mask file or a folder of masks at {self.masks_path}"
            )
        self.name = name or self.frames_path.stem
        self.resolution = resolution
        self.cache_size = cache_size
        self.gt_root = None
        super().__init__([self.name], None)

    def load(self, name: str) -> VideoSequence:
        frames = FrameSource(self.frames_path, resolution=self.resolution, cache_size=self.cache_size)
        index = {n: t for t, n in enumerate(frames.names)}
        raw: dict[int, np.ndarray] = {}
        files: dict[int, Path] = {}
        if self.masks_path.is_dir():
            mask_files = list_frame_files(self.masks_path, MASK_EXTENSIONS)
            if not mask_files:
                raise DatasetNotFoundError(
                    f"no mask files in {self.masks_path} (expected {', '.join(MASK_EXTENSIONS)})"
                )
            for p in mask_files:
                if p.stem not in index:
                    raise DatasetFormatError(
                        f"mask {p} does not match any frame name of {self.frames_path} "
                        f"(frames are named {frames.names[0]} ... {frames.names[-1]})"
                    )
                t = index[p.stem]
                if t in raw:
                    raise DatasetFormatError(f"two masks for frame {p.stem}: {files[t]} and {p}")
                raw[t], files[t] = _load_annotation(p, frames, t), p
        else:
            t = index.get(self.masks_path.stem, 0)
            if self.masks_path.stem not in index:
                logger.info("%s: mask %s taken as the first frame's", self.name, self.masks_path)
            raw[t], files[t] = _load_annotation(self.masks_path, frames, t), self.masks_path
        if not any(object_ids(m) for m in raw.values()):
            void = " (255 is void)" if any((m > 0).any() for m in raw.values()) else ""
            raise DatasetFormatError(f"{self.masks_path}: the masks contain no object{void}",
                                     self.masks_path)
        maps, mapping = remap_labels(raw)
        first = min(maps)
        return VideoSequence(
            name=self.name,
            frame_names=list(frames.names),
            frames=frames,
            annotations=maps,
            annotation_files=files,
            objects_per_frame=_objects_in(maps),
            label_to_original=mapping,
            original_size=tuple(frames.original_size),
            output_paths=[
                f"{self.name}/{n}.png" if t >= first else None for t, n in enumerate(frames.names)
            ],
            binary_output=False,
            dataset=self.dataset,
        )
