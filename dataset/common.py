"""File listing and reading helpers shared by the training datasets.

Every failure raises a :class:`DatasetError` subclass whose message names the offending file (and,
for layout problems, the layout that was expected), so a broken dataset is diagnosed from the
first line of the traceback.

Static image + mask layouts (see :func:`list_image_mask_pairs`)::

    flat (ECSSD, DUTS-TR, DUTS-TE, BIG, HRSOD as prepared for MiVOS):
        root/<stem>.jpg  root/<stem>.png          (image and mask side by side)
    fss (FSS-1000):
        root/<class>/<NNN>.jpg  root/<class>/<NNN>.png

Random generators: :func:`sample_rng` derives the per-sample generator used by all datasets.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from util.errors import InputError
from util.palette import MaskReadError, read_annotation

logger = logging.getLogger(__name__)

__all__ = [
    "DatasetError",
    "MissingFileError",
    "CorruptFileError",
    "SizeMismatchError",
    "IMAGE_EXTS",
    "FLAT_LAYOUT_HINT",
    "FSS_LAYOUT_HINT",
    "list_image_mask_pairs",
    "read_image",
    "read_gray_mask",
    "read_label_mask",
    "read_pair",
    "expand_roots",
    "sample_rng",
]

IMAGE_EXTS = (".jpg", ".jpeg", ".JPG", ".JPEG")
MASK_EXT = ".png"

FLAT_LAYOUT_HINT = "expected <root>/<name>.jpg with its mask <root>/<name>.png next to it"
FSS_LAYOUT_HINT = "expected <root>/<class>/<NNN>.jpg with masks <root>/<class>/<NNN>.png (FSS-1000)"


class DatasetError(InputError):
    """Base class of dataset problems; ``path`` is the file or folder concerned."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message, path)
        self.path = None if path is None else Path(path)


class MissingFileError(DatasetError, FileNotFoundError):
    """A required file or folder does not exist (missing root, image without mask, ...)."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        DatasetError.__init__(self, message, path)


class CorruptFileError(DatasetError, ValueError):
    """A file exists but cannot be decoded."""


class SizeMismatchError(DatasetError, ValueError):
    """An image and its mask (or frames of one clip) have different sizes."""


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """Generator for one sample, a pure function of (seed, epoch, index).

    Datasets call this at the top of ``__getitem__``. The dataset index is unique across
    DataLoader workers and DDP ranks (a DistributedSampler hands each rank disjoint indices),
    so no two workers ever share a stream, and the augmentation of sample ``index`` in
    ``epoch`` does not depend on which worker or rank processes it, on the number of workers,
    or on global RNG state. ``epoch`` is the dataset's ``epoch`` attribute, set by the trainer
    through ``set_epoch`` (with the default non-persistent workers the DataLoader re-pickles
    the dataset at every epoch, so the workers see the new value).
    """
    if seed < 0 or epoch < 0 or index < 0:
        raise ValueError(f"seed, epoch and index must be >= 0, got {(seed, epoch, index)}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), int(index)]))


# ----------------------------------------------------------------------------- listing


def _check_root(root: Path, hint: str) -> None:
    if not root.exists():
        raise MissingFileError(f"dataset root {root} does not exist ({hint})", root)
    if not root.is_dir():
        raise MissingFileError(f"dataset root {root} is not a folder ({hint})", root)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in IMAGE_EXTS)


def _pairs_in(folder: Path) -> list[tuple[Path, Path]]:
    pairs = []
    for img in _images_in(folder):
        mask = img.with_suffix(MASK_EXT)
        if not mask.is_file():
            raise MissingFileError(f"image {img} has no mask: expected {mask}", img)
        pairs.append((img, mask))
    return pairs


def list_image_mask_pairs(root: str | os.PathLike, layout: str = "auto") -> list[tuple[Path, Path]]:
    """List (image, mask) paths of a static segmentation dataset, sorted.

    Args:
        root: dataset folder.
        layout: ``"flat"`` (images and masks directly in ``root``), ``"fss"`` (one sub-folder
            per class) or ``"auto"`` (flat if ``root`` holds any .jpg, else fss).

    Raises:
        MissingFileError: ``root`` is missing, or an image has no ``.png`` mask beside it.
        DatasetError: no image was found (the message shows the expected layout).
    """
    root = Path(root)
    if layout not in ("auto", "flat", "fss"):
        raise ValueError(f"layout must be 'auto', 'flat' or 'fss', got {layout!r}")
    _check_root(root, f"{FLAT_LAYOUT_HINT}; or {FSS_LAYOUT_HINT}")
    if layout == "auto":
        layout = "flat" if _images_in(root) else "fss"
    if layout == "flat":
        pairs = _pairs_in(root)
        hint = FLAT_LAYOUT_HINT
    else:
        pairs = []
        for sub in sorted(p for p in root.iterdir() if p.is_dir()):
            pairs.extend(_pairs_in(sub))
        hint = FSS_LAYOUT_HINT
    if not pairs:
        raise DatasetError(f"no .jpg images found under {root} ({hint})", root)
    logger.debug("%s: %d image/mask pairs (%s layout)", root, len(pairs), layout)
    return pairs


# ----------------------------------------------------------------------------- reading


def _read_bytes(path: Path) -> np.ndarray:
    if not path.is_file():
        raise MissingFileError(f"file not found: {path}", path)
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise CorruptFileError(f"cannot read {path}: {exc}", path) from exc
    if data.size == 0:
        raise CorruptFileError(f"{path} is empty (0 bytes)", path)
    return data


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as H x W x 3 ``uint8`` RGB (grey and RGBA inputs are converted).

    Raises MissingFileError / CorruptFileError naming the file.
    """
    path = Path(path)
    data = _read_bytes(path)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise CorruptFileError(f"cannot decode image {path} (corrupt or not an image)", path)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_gray_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a foreground mask as H x W ``uint8`` grey levels 0..255 (soft edges kept).

    Grey / RGB masks are converted to luma; palette masks (DAVIS style) are turned into
    255 for every non-zero label, so a palette PNG with label 1 is not read as dark grey.
    Raises MissingFileError / CorruptFileError naming the file.
    """
    path = Path(path)
    _read_bytes(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "P":
                arr = (np.asarray(im) > 0).astype(np.uint8) * 255
            else:
                arr = np.asarray(im.convert("L"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CorruptFileError(f"cannot decode mask {path} ({type(exc).__name__}: {exc})",
                               path) from exc
    return np.ascontiguousarray(arr)


def read_label_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a video annotation (palette or grayscale PNG of object ids) as H x W ``uint8``
    labels (0 = background, void labels kept), as the official tools read it.

    Uses :func:`util.palette.read_annotation` (RGB images are refused); its errors are
    re-raised as MissingFileError / CorruptFileError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"mask file not found: {path}", path)
    try:
        return read_annotation(path)
    except MaskReadError as exc:
        raise CorruptFileError(str(exc), path) from exc


def read_pair(
    image_path: str | os.PathLike, mask_path: str | os.PathLike
) -> tuple[np.ndarray, np.ndarray]:
    """Read an RGB image and its grey mask, checking that their sizes agree.

    Returns (H x W x 3 uint8, H x W uint8). Raises SizeMismatchError naming both files.
    """
    img = read_image(image_path)
    mask = read_gray_mask(mask_path)
    if img.shape[:2] != mask.shape:
        raise SizeMismatchError(
            f"image {image_path} is {img.shape[1]}x{img.shape[0]} but its mask {mask_path} is "
            f"{mask.shape[1]}x{mask.shape[0]} (width x height)", mask_path)
    return img, mask


def expand_roots(roots: Sequence[str | os.PathLike] | str | os.PathLike,
                 repeats: Sequence[int] | int | None) -> list[tuple[Path, int]]:
    """Normalise ``roots`` / ``repeats`` arguments into a list of (root, repeat) pairs."""
    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    roots = [Path(r) for r in roots]
    if repeats is None:
        repeats = [1] * len(roots)
    elif isinstance(repeats, int):
        repeats = [repeats] * len(roots)
    if len(repeats) != len(roots):
        raise ValueError(f"got {len(roots)} roots but {len(repeats)} repeat factors")
    if any(int(r) < 1 for r in repeats):
        raise ValueError(f"repeat factors must be >= 1, got {list(repeats)}")
    return [(r, int(n)) for r, n in zip(roots, repeats)]
