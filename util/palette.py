"""DAVIS colour palette and label-mask I/O.

DAVIS (like PASCAL VOC) stores segmentation masks as 8-bit palette ("P" mode) PNGs whose pixel
values are object labels (0 = background, 1..K = objects).  The colour of label ``l`` follows
the usual "bitget" rule: the bits of ``l`` are dealt out three at a time to red, green and
blue, starting from the most significant bit of each channel.  Label 1 is (128, 0, 0),
2 is (0, 128, 0), 3 is (128, 128, 0), 4 is (0, 0, 128), ... 8 is (64, 0, 0), and so on.

Public API
----------
``DAVIS_PALETTE``            flat ``bytes`` of length 768 (R, G, B for labels 0..255), ready
                             for ``PIL.Image.putpalette``.
``DAVIS_PALETTE_RGB``        read-only ``uint8`` array of shape (256, 3), row ``l`` = colour of l.
``colorize(label_map)``      H x W labels -> H x W x 3 RGB using the palette.
``write_palette_png(path, label_map)``  atomic write of a palette PNG.
``read_mask(path)``          any supported mask file -> H x W ``uint8`` label map.
``read_annotation(path)``    a benchmark annotation read as the official tools read it (the
                             stored indices of a palette or 8-bit grayscale PNG; RGB refused).
``object_ids(label_map, void)``  the object ids of a label map, void labels excluded.
``VOID_LABEL``, ``DAVIS_VOID_LABELS``  the labels that are "void", not objects.
``MaskReadError``            raised (naming the file) when a mask cannot be decoded.
``atomic_write_bytes(path, data)``  temp file in the same folder + ``os.replace``.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from util.errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "DAVIS_PALETTE",
    "DAVIS_PALETTE_RGB",
    "DAVIS_VOID_LABELS",
    "MaskReadError",
    "VOID_LABEL",
    "atomic_write_bytes",
    "colorize",
    "object_ids",
    "read_annotation",
    "read_mask",
    "write_palette_png",
]


def _bitget_palette(n: int = 256) -> bytes:
    """Build the VOC/DAVIS colour map for labels ``0..n-1`` as flat RGB bytes."""
    out = bytearray()
    for label in range(n):
        rgb = [0, 0, 0]
        rest = label
        shift = 7
        while rest and shift >= 0:
            for channel in range(3):
                rgb[channel] |= ((rest >> channel) & 1) << shift
            rest >>= 3
            shift -= 1
        out.extend(rgb)
    return bytes(out)


#: Flat R, G, B bytes for labels 0..255 (length 768), as stored in DAVIS annotation PNGs.
DAVIS_PALETTE: bytes = _bitget_palette(256)

#: The same palette as a read-only (256, 3) uint8 array.
DAVIS_PALETTE_RGB: np.ndarray = np.frombuffer(DAVIS_PALETTE, dtype=np.uint8).reshape(256, 3)


#: Label of "void" pixels (object boundaries, unlabelled regions) in DAVIS, YouTubeVOS and the
#: training sets: never an object, ignored by the metrics.
VOID_LABEL = 255
#: DAVIS treats 254 as void as well (both are excluded from its object sets and scores).
DAVIS_VOID_LABELS: tuple[int, ...] = (254, 255)


class MaskReadError(InputError):
    """A mask file could not be decoded into a label map (the message names the file)."""


def object_ids(label_map: np.ndarray, void: tuple[int, ...] = (VOID_LABEL,)) -> list[int]:
    """Sorted object ids of a label map: its non-zero labels that are not void."""
    values = np.unique(np.asarray(label_map))
    return [int(v) for v in values if v != 0 and int(v) not in void]


def read_annotation(path: str | os.PathLike) -> np.ndarray:
    """Read a benchmark annotation (DAVIS, YouTubeVOS) the way the official tools do.

    The official toolkits read ``np.array(Image.open(path))``: the stored indices of a palette
    ("P") PNG, or the values of an 8-bit grayscale ("L") or 1-bit image, used as labels as they
    are (so a 0/255 image holds only void). Returns an H x W ``uint8`` label map, void labels
    kept (see :func:`object_ids`).

    Raises:
        MaskReadError: missing, empty, truncated or undecodable file, or an RGB / RGBA image
            (its colours would have to be guessed; the official tools cannot read it).
    """
    p = Path(path)
    if not p.is_file():
        raise MaskReadError(f"{p}: annotation file not found", p)
    if p.stat().st_size == 0:
        raise MaskReadError(f"{p}: empty file (0 bytes)", p)
    try:
        with Image.open(p) as img:
            img.load()
            mode = img.mode
            if mode in ("P", "L", "1"):
                return np.array(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise MaskReadError(f"{p}: cannot read the annotation ({type(exc).__name__}: {exc})",
                            p) from exc
    if mode in ("RGB", "RGBA", "RGBX"):
        raise MaskReadError(f"{p}: {mode} image; annotations must be palette (indexed) or 8-bit "
                            "grayscale PNGs holding object ids", p)
    raise MaskReadError(f"{p}: unsupported image mode {mode!r} for an annotation", p)


def _as_label_map(label_map: np.ndarray) -> np.ndarray:
    arr = np.asarray(label_map)
    if arr.ndim != 2:
        raise ValueError(f"label map must be 2-D (H x W), got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"label map must hold integers, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError("label values must lie in 0..255 to be stored in a palette PNG")
    return arr.astype(np.uint8)


def colorize(label_map: np.ndarray) -> np.ndarray:
    """Return the H x W x 3 ``uint8`` RGB rendering of a label map with the DAVIS palette."""
    return DAVIS_PALETTE_RGB[_as_label_map(label_map)]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder + ``os.replace``).

    Parent folders are created when missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_palette_png(path: str | os.PathLike, label_map: np.ndarray) -> None:
    """Write ``label_map`` (H x W, values 0..255) as a DAVIS palette PNG, atomically.

    The image is encoded in memory, written to a temporary file in the destination folder and
    moved into place with ``os.replace``, so readers never see a half-written mask.  Parent
    folders are created when missing.
    """


    labels = np.ascontiguousarray(_as_label_map(label_map))
    # Wrap the raw indices as a "P" image directly (no colour quantisation involved).
    img = Image.frombytes("P", (labels.shape[1], labels.shape[0]), labels.tobytes())
    img.putpalette(DAVIS_PALETTE)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def _binary_from_gray(gray: np.ndarray) -> np.ndarray:
    return (gray >= 128).astype(np.uint8)


def _labels_from_gray(gray: np.ndarray) -> np.ndarray:
    """Grayscale rule: 0/255 (or anything reaching >= 128) is a binary mask, else raw labels."""
    if gray.size == 0:
        return gray.astype(np.uint8)
    if gray.max() >= 128:
        return _binary_from_gray(gray)
    return gray.astype(np.uint8)


def _labels_from_rgb(rgb: np.ndarray, path: Path) -> np.ndarray:
    h, w, _ = rgb.shape
    flat = rgb.reshape(-1, 3).astype(np.int64)
    codes = (flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2]
    uniq, inverse = np.unique(codes, return_inverse=True)
    white, black = 0xFFFFFF, 0
    if set(uniq.tolist()) <= {black, white}:
        # A black/white RGB image is a binary mask (white is not a palette colour).
        return (codes == white).astype(np.uint8).reshape(h, w)
    pal = DAVIS_PALETTE_RGB.astype(np.int64)
    pal_codes = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
    lookup = {int(c): i for i, c in reversed(list(enumerate(pal_codes.tolist())))}
    labels = np.empty(len(uniq), dtype=np.int64)
    unknown = []
    for i, c in enumerate(uniq.tolist()):
        if c in lookup:
            labels[i] = lookup[c]
        else:
            unknown.append(c)
            labels[i] = -1
    if unknown:
        r, g, b = flat[:, 0], flat[:, 1], flat[:, 2]
        if np.array_equal(r, g) and np.array_equal(g, b):
            # Grayscale data stored as RGB (e.g. an anti-aliased 0-255 mask).
            return _labels_from_gray(rgb[..., 0])
        shown = ", ".join(f"({c >> 16}, {(c >> 8) & 255}, {c & 255})" for c in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise MaskReadError(
            f"{path}: RGB mask holds colours that are not in the DAVIS palette: {shown}{more}"
        )
    return labels[inverse.reshape(-1)].astype(np.uint8).reshape(h, w)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a mask file and return an H x W ``uint8`` label map (0 = background).

    Accepted inputs:

    * palette ("P") PNGs, DAVIS style: the stored indices are the labels;
    * grayscale ("L", "LA", "I", "I;16", "1") images: if any value reaches 128 the image is a
      binary 0/255 mask (possibly anti-aliased or JPEG-compressed) and is thresholded at 128
      to 0/1; otherwise (all values < 128) the values are taken as labels directly;
    * RGB / RGBA images coloured with the DAVIS palette: colours are mapped back to labels
      (alpha is ignored).  Pure black/white RGB images are binary masks (0/1); grayscale data
      stored as RGB follows the grayscale rule.

    Raises ``FileNotFoundError`` for a missing file and :class:`MaskReadError` (naming the
    file) for a file that cannot be decoded, an unsupported image mode or colours outside the
    palette.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"mask file not found: {p}")
    try:
        with Image.open(p) as img:
            img.load()
            mode = img.mode
            if mode == "P":
                return np.array(img, dtype=np.uint8)
            if mode == "1":
                return np.array(img, dtype=np.uint8)
            if mode in ("L", "LA"):
                return _labels_from_gray(np.array(img.getchannel(0), dtype=np.uint8))
            if mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                arr = np.array(img)
                if arr.size and arr.max() > 255:
                    # 16-bit 0/65535 style binary masks.
                    return (arr >= (arr.max() + 1) // 2).astype(np.uint8)
                return _labels_from_gray(arr.astype(np.uint8))
            if mode in ("RGB", "RGBA", "RGBX"):
                return _labels_from_rgb(np.array(img.convert("RGB"), dtype=np.uint8), p)
    except MaskReadError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise MaskReadError(f"{p}: cannot read mask ({type(exc).__name__}: {exc})") from exc
    raise MaskReadError(f"{p}: unsupported image mode {mode!r} for a mask")
