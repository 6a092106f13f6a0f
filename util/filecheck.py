"""Fast checks of image files without decoding their pixels.

:func:`check_image` reads an image's header (format, size, mode) and the last bytes of the
file, which is enough to catch what breaks a long job hours later: a missing or zero-byte file,
a file that is not an image, and a JPEG or PNG cut short by an interrupted copy (a JPEG must end
with its end-of-image marker, a PNG with its ``IEND`` chunk). :func:`check_mask` adds the mode
rule of benchmark annotations (palette or grayscale, never RGB). :func:`prescan` runs the
checks over a training set's files in a few threads before step 0 and raises one
:class:`util.errors.InputError` naming the first bad file.

Dependency-free apart from PIL.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from util.errors import InputError

logger = logging.getLogger(__name__)

_JPEG_EOI = b"\xff\xd9"
_PNG_IEND = b"IEND"
_TAIL = 64  # bytes read from the end of a file (room for trailing padding)


@dataclass(frozen=True)
class ImageHeader:
    """What the header of an image file says."""

    path: Path
    format: str
    width: int
    height: int
    mode: str


def _tail(path: Path, n: int = _TAIL) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - n))
        return fh.read()


def check_image(path: str | os.PathLike, what: str = "image") -> ImageHeader:
    """Header of an image file, after checking that the file is complete.

    Raises:
        InputError: missing or empty file, not an image, or a truncated JPEG / PNG (the message
            names the file and the problem).
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: {what} file not found", p)
    if p.stat().st_size == 0:
        raise InputError(f"{p}: empty {what} file (0 bytes)", p)
    try:
        with Image.open(p) as img:
            fmt, (w, h), mode = img.format or "", img.size, img.mode
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{p}: not a readable {what} ({type(exc).__name__}: {exc})", p) from exc
    tail = _tail(p)
    if fmt == "JPEG" and _JPEG_EOI not in tail:
        raise InputError(f"{p}: truncated JPEG (no end-of-image marker)", p)
    if fmt == "PNG" and _PNG_IEND not in tail:
        raise InputError(f"{p}: truncated PNG (no IEND chunk)", p)
    if w <= 0 or h <= 0:
        raise InputError(f"{p}: {what} has no pixels ({w}x{h})", p)
    return ImageHeader(p, fmt, int(w), int(h), mode)


def check_mask(path: str | os.PathLike, *, allow_rgb: bool = False) -> ImageHeader:
    """:func:`check_image` for a mask; with ``allow_rgb=False`` (benchmark annotations) an RGB
    image is refused: annotations are palette or grayscale images whose values are ids."""
    head = check_image(path, "mask")
    if not allow_rgb and head.mode not in ("P", "L", "1"):
        raise InputError(f"{head.path}: {head.mode} mask; annotations must be palette (indexed) "
                         "or 8-bit grayscale PNGs holding object ids", head.path)
    return head


@dataclass(frozen=True)
class FileGroup:
    """Files that belong together: an image and its mask(s), which must share one size.

    ``label_masks``: the masks hold object ids (palette / grayscale, RGB refused); otherwise
    they are grey-level foreground masks (any mode).
    """

    image: Path
    masks: tuple[Path, ...] = ()
    label_masks: bool = True


def check_group(group: FileGroup) -> None:
    """Check every file of a group and that the masks have the image's size."""
    img = check_image(group.image)
    for m in group.masks:
        head = check_mask(m, allow_rgb=not group.label_masks)
        if (head.width, head.height) != (img.width, img.height):
            raise InputError(
                f"{m}: mask is {head.width}x{head.height} but its image {group.image} is "
                f"{img.width}x{img.height} (WxH)", m)


def prescan(groups: Iterable[FileGroup], threads: int = 8, what: str = "training data") -> int:
    """Check all ``groups`` (each file once) with a few threads; returns the number of files.

    Raises the :class:`InputError` of the first bad group in list order.
    """
    unique: list[FileGroup] = list(dict.fromkeys(groups))
    if not unique:
        return 0
    t0 = time.perf_counter()

    def one(g: FileGroup) -> InputError | None:
        try:
            check_group(g)
        except InputError as exc:
            return exc
        return None

    if threads > 1 and len(unique) > 16:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="prescan") as pool:
            results: Sequence[InputError | None] = list(pool.map(one, unique, chunksize=64))
    else:
        results = [one(g) for g in unique]
    files = sum(1 + len(g.masks) for g in unique)
    bad = [r for r in results if r is not None]
    logger.info("%s: %d files checked in %.1f s, %d bad", what, files, time.perf_counter() - t0,
                len(bad))
    if bad:
        if len(bad) > 1:
            for exc in bad[1:20]:
                logger.error("%s", exc)
        raise bad[0]
    return files
