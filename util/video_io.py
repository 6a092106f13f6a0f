"""Reading frames from a folder or a video file, and writing masks / overlays.

Reading
-------
:class:`FrameSource` is one random-access interface over

* a folder of frames (``.jpg``, ``.jpeg``, ``.png``, ``.bmp``), sorted naturally
  (``2.jpg`` before ``10.jpg``); frame names are the file stems;
* a video file, decoded with OpenCV (``cv2.VideoCapture``) or, if OpenCV cannot decode it, with
  PyAV; frame names are ``00000``, ``00001``, ...

Frames come out as RGB ``uint8`` arrays of shape H x W x 3, optionally resized so that the
shorter side equals ``resolution`` (bicubic; the longer side becomes
``int(long * resolution / short)``, as torchvision's ``Resize(int)`` does; ``-1`` keeps the
original size). Frames are decoded lazily and kept in a bounded LRU cache, or all at once with
:meth:`FrameSource.load_all`.

Writing
-------
:func:`save_masks` (DAVIS palette PNGs), :func:`overlay` (colour blend with dark contours),
:func:`write_overlay_video` (mp4v through OpenCV, falling back to a folder of PNGs) and
:func:`write_overlay_frames`.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from util.errors import InputError
from util.filecheck import check_image
from util.fileio import atomic_save_image, atomic_write, ensure_dir
from util.palette import DAVIS_PALETTE_RGB, write_palette_png

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp")
VIDEO_EXTENSIONS: tuple[str, ...] = (
    ".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".gif",
)


class FrameSourceError(InputError, RuntimeError):
    """A frame folder or a video cannot be read (the message names the file and the problem)."""


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------


def natural_sort_key(name: str) -> list[Any]:
    """Sort key that orders embedded numbers numerically: ``f2`` < ``f10``."""
    parts = re.split(r"(\d+)", name)
    return [(0, int(p), p) if p.isdigit() else (1, p.lower(), p) for p in parts]


def list_frame_files(folder: PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files directly inside ``folder`` (no recursion, hidden files skipped), natural order.

    Raises:
        FileNotFoundError: ``folder`` does not exist or is not a folder.
    """
    d = Path(folder)
    if not d.is_dir():
        raise FileNotFoundError(f"frame folder not found: {d}")
    exts = {e.lower() for e in extensions}
    files = [
        p for p in d.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in exts
    ]
    return sorted(files, key=lambda p: natural_sort_key(p.name))


def resized_hw(height: int, width: int, shorter: int) -> tuple[int, int]:
    """Output (H, W) when the shorter side of an (height, width) image is scaled to ``shorter``.

    ``shorter <= 0`` (e.g. -1) keeps the size. The longer side is ``int(long * shorter / short)``.
    """
    if shorter is None or shorter <= 0:
        return height, width
    if height <= width:
        return shorter, int(width * shorter / height)
    return int(height * shorter / width), shorter


def resize_shorter_side(image: np.ndarray, shorter: int) -> np.ndarray:
    """Bicubic resize of an H x W x C uint8 image so that min(H, W) == ``shorter`` (-1: no-op)."""
    h, w = image.shape[:2]
    nh, nw = resized_hw(h, w, shorter)
    if (nh, nw) == (h, w):
        return image
    return cv2.resize(image, (nw, nh), interpolation=cv2.INTER_CUBIC)


def _read_image_rgb(path: Path) -> np.ndarray:
    """Decode one image file into H x W x 3 RGB uint8; raise FrameSourceError naming the file."""
    try:
        with Image.open(path) as img:
            img.load()  # strict: a truncated file raises instead of returning grey rows
            if img.mode != "RGB":
                img = img.convert("RGB")
            arr = np.asarray(img, dtype=np.uint8)
    except FileNotFoundError as exc:
        raise FrameSourceError(f"{path}: frame file disappeared") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise FrameSourceError(
            f"{path}: cannot decode frame ({type(exc).__name__}: {exc})"
        ) from exc
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise FrameSourceError(f"{path}: decoded to an unexpected shape {arr.shape}")
    return np.ascontiguousarray(arr)


def _image_header_size(path: Path) -> tuple[int, int]:
    """(H, W) from an image header without decoding the pixels, after checking that the file
    is complete (:func:`util.filecheck.check_image`: empty, truncated JPEG / PNG)."""
    try:
        head = check_image(path, "frame")
    except InputError as exc:
        raise FrameSourceError(str(exc), path) from exc
    return head.height, head.width


# ----------------------------------------------------------------------------------------------
# sequential video decoders
# ----------------------------------------------------------------------------------------------


class _OpenCVDecoder:
    """Sequential decoding with cv2.VideoCapture (BGR -> RGB)."""

    name = "opencv"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.cap = cv2.VideoCapture(str(path))
        if not self.cap.isOpened():
            self.cap.release()
            raise FrameSourceError(f"{path}: OpenCV cannot open the video")

    def fps(self) -> float:
        return float(self.cap.get(cv2.CAP_PROP_FPS) or 0.0)

    def declared_frames(self) -> int:
        return max(int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0), 0)

    def read(self) -> np.ndarray | None:
        ok, frame = self.cap.read()
        if not ok or frame is None:
            return None
        if frame.ndim == 2:
            return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

    def skip(self) -> bool:
        return bool(self.cap.grab())

    def close(self) -> None:
        self.cap.release()


class _PyAVDecoder:
    """Sequential decoding with PyAV (first video stream, rgb24)."""

    name = "pyav"

    def __init__(self, path: Path) -> None:
        import av  # optional backend (PyAV): only for video files that OpenCV cannot read

        self.path = path
        try:
            self.container = av.open(str(path))
        except Exception as exc:  # PyAV raises a family of FFmpeg errors
            raise FrameSourceError(
                f"{path}: PyAV cannot open the video ({type(exc).__name__}: {exc})"
            ) from exc
        if not self.container.streams.video:
            self.container.close()
            raise FrameSourceError(f"{path}: the file has no video stream")
        self.stream = self.container.streams.video[0]
        self._frames = self.container.decode(self.stream)

    def fps(self) -> float:
        rate = self.stream.average_rate or self.stream.base_rate
        return float(rate) if rate else 0.0

    def declared_frames(self) -> int:
        return int(self.stream.frames or 0)

    def read(self) -> np.ndarray | None:
        try:
            frame = next(self._frames)
        except StopIteration:
            return None
        except Exception as exc:
            raise FrameSourceError(
                f"{self.path}: PyAV decoding failed ({type(exc).__name__}: {exc})"
            ) from exc
        return np.ascontiguousarray(frame.to_ndarray(format="rgb24"))

    def skip(self) -> bool:
        try:
            next(self._frames)
        except StopIteration:
            return False
        except Exception as exc:
            raise FrameSourceError(
                f"{self.path}: PyAV decoding failed ({type(exc).__name__}: {exc})"
            ) from exc
        return True

    def close(self) -> None:
        self.container.close()


_DECODERS: dict[str, type] = {"opencv": _OpenCVDecoder, "pyav": _PyAVDecoder}


# ----------------------------------------------------------------------------------------------
# FrameSource
# ----------------------------------------------------------------------------------------------


class FrameSource:
    """Random access to the frames of an image folder or a video file.

    Args:
        source: a folder of frames or a video file.
        resolution: target length of the shorter side (bicubic); ``-1`` keeps the original size.
        cache_size: number of decoded (resized) frames kept in an LRU cache; ``None`` keeps every
            decoded frame, ``0`` disables the cache.
        backend: video decoder, ``"auto"`` (OpenCV, then PyAV), ``"opencv"`` or ``"pyav"``.
            Ignored for folders.
        check_sizes: for folders, read every image header at construction and fail early when
            the sizes differ (decoded frames are always checked as well).

    Attributes:
        path: the source path.
        is_video: whether ``path`` is a video file.
        names: frame names (file stems for folders, ``%05d`` indices for videos).
        files: frame files (folders only; empty for videos).
        original_size: (H, W) of the stored frames.
        size: (H, W) of the frames returned (after resizing).
        fps: frame rate of the video (0.0 when unknown or for folders).

    Indexing ``src[t]`` (negative ``t`` allowed) returns an H x W x 3 RGB ``uint8`` array; the
    returned array is shared with the cache and must not be modified in place. Access is
    thread-safe. Videos are decoded sequentially: reading forward is cheap; reading backwards
    restarts decoding from the start, and the frames decoded on the way that fit in the cache
    are kept so that a backward sweep restarts only once per ``cache_size`` frames.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        FrameSourceError: empty folder, unreadable frame, frames of different sizes, or a video
            that cannot be decoded (the message names the file).
    """

    def __init__(
        self,
        source: PathLike,
        *,
        resolution: int = -1,
        cache_size: int | None = 64,
        backend: str = "auto",
        check_sizes: bool = True,
    ) -> None:
        self.path = Path(source)
        if not self.path.exists():
            raise FileNotFoundError(f"frame source not found: {self.path}")
        if cache_size is not None and cache_size < 0:
            raise ValueError(f"cache_size must be None or >= 0, got {cache_size}")
        if backend not in ("auto", *_DECODERS):
            raise ValueError(f"unknown video backend {backend!r}; use auto, opencv or pyav")
        self.resolution = int(resolution) if resolution is not None else -1
        self.cache_size = cache_size
        self.backend = backend
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.RLock()
        self._decoder: Any = None
        self._next_index = 0
        self._hits = 0
        self._misses = 0
        self.fps = 0.0
        self.files: list[Path] = []

        if self.path.is_dir():
            self.is_video = False
            self._init_folder(check_sizes)
        else:
            self.is_video = True
            self._init_video()
        self.size = resized_hw(*self.original_size, self.resolution)
        logger.debug(
            "FrameSource %s: %d frames, original %s, output %s",
            self.path, len(self), self.original_size, self.size,
        )

    # ---- construction ------------------------------------------------------------------------

    def _init_folder(self, check_sizes: bool) -> None:
        self.files = list_frame_files(self.path)
        if not self.files:
            raise FrameSourceError(
                f"{self.path}: no frames found (expected files with extensions "
                f"{', '.join(IMAGE_EXTENSIONS)})"
            )
        self.names = [p.stem for p in self.files]
        if len(set(self.names)) != len(self.names):
            seen: dict[str, Path] = {}
            for p in self.files:
                if p.stem in seen:
                    raise FrameSourceError(
                        f"{self.path}: two frames share the name {p.stem!r}: "
                        f"{seen[p.stem].name} and {p.name}"
                    )
                seen[p.stem] = p
        self.original_size = _image_header_size(self.files[0])
        if check_sizes:
            for p in self.files[1:]:
                hw = _image_header_size(p)
                if hw != self.original_size:
                    raise FrameSourceError(self._size_message(p, hw))

    def _init_video(self) -> None:
        order = ["opencv", "pyav"] if self.backend == "auto" else [self.backend]
        errors = []
        for name in order:
            try:
                dec = _DECODERS[name](self.path)
            except (FrameSourceError, ImportError) as exc:
                errors.append(str(exc))
                continue
            try:
                first = dec.read()
                if first is None:
                    errors.append(f"{name}: no frame could be decoded")
                    continue
                count = 1
                while dec.skip():
                    count += 1
                self.fps = dec.fps()
                declared = dec.declared_frames()
            except FrameSourceError as exc:
                errors.append(str(exc))
                continue
            finally:
                dec.close()
            if declared and declared != count:
                logger.warning(
                    "%s: the container declares %d frames but %d could be decoded (%s); "
                    "using %d", self.path, declared, count, name, count,
                )
            self.backend = name
            self.original_size = (int(first.shape[0]), int(first.shape[1]))
            self.names = [f"{i:05d}" for i in range(count)]
            return
        raise FrameSourceError(f"{self.path}: the video cannot be decoded ({'; '.join(errors)})")

    def _size_message(self, where: Path | str, hw: tuple[int, int]) -> str:
        first = self.files[0] if self.files else f"{self.path} frame 0"
        return (
            f"{where}: frame size {hw[1]}x{hw[0]} (WxH) differs from "
            f"{self.original_size[1]}x{self.original_size[0]} of {first}; "
            "all frames of a sequence must have the same size"
        )

    # ---- reading -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[np.ndarray]:
        for t in range(len(self)):
            yield self[t]

    def __getitem__(self, index: int) -> np.ndarray:
        if isinstance(index, slice):
            raise TypeError("FrameSource does not support slices; use load_all() or a loop")
        t = int(index)
        n = len(self)
        if t < 0:
            t += n
        if not 0 <= t < n:
            raise IndexError(f"frame index {index} out of range for {n} frames of {self.path}")
        with self._lock:
            cached = self._cache.get(t)
            if cached is not None:
                self._cache.move_to_end(t)
                self._hits += 1
                return cached
            self._misses += 1
            frame = self._decode_video(t) if self.is_video else self._decode_file(t)
            self._remember(t, frame)
            return frame

    def _remember(self, t: int, frame: np.ndarray) -> None:
        if self.cache_size == 0:
            return
        self._cache[t] = frame
        self._cache.move_to_end(t)
        if self.cache_size is not None:
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    def _finish(self, raw: np.ndarray, where: Path | str) -> np.ndarray:
        hw = (int(raw.shape[0]), int(raw.shape[1]))
        if hw != self.original_size:
            raise FrameSourceError(self._size_message(where, hw))
        out = resize_shorter_side(raw, self.resolution)
        out.setflags(write=False)
        return out

    def _decode_file(self, t: int) -> np.ndarray:
        path = self.files[t]
        return self._finish(_read_image_rgb(path), path)

    def _decode_video(self, t: int) -> np.ndarray:
        if self._decoder is None or t < self._next_index:
            if self._decoder is not None:
                self._decoder.close()
            self._decoder = None
            self._decoder = _DECODERS[self.backend](self.path)
            self._next_index = 0
        # frames decoded on the way to t that would still be in the cache after t is stored
        if self.cache_size is None:
            keep_from = 0
        elif self.cache_size == 0:
            keep_from = t
        else:
            keep_from = t - self.cache_size + 1
        while True:
            idx = self._next_index
            want = idx == t or (idx >= keep_from and idx not in self._cache)
            if want:
                raw = self._decoder.read()
                ok = raw is not None
            else:
                raw = None
                ok = self._decoder.skip()
            if not ok:
                self._decoder.close()
                self._decoder = None
                raise FrameSourceError(
                    f"{self.path}: decoding stopped at frame {idx} but the video was counted "
                    f"with {len(self)} frames"
                )
            self._next_index += 1
            if idx == t:
                return self._finish(raw, f"{self.path} frame {idx}")
            if want:
                self._remember(idx, self._finish(raw, f"{self.path} frame {idx}"))

    def load_all(self) -> np.ndarray:
        """Decode every frame; returns a T x H x W x 3 uint8 array (a new array, writable)."""
        out = np.empty((len(self), *self.size, 3), dtype=np.uint8)
        for t in range(len(self)):
            out[t] = self[t]
        return out

    def cache_info(self) -> dict[str, Any]:
        """Cache statistics: ``size`` (frames held), ``capacity``, ``hits``, ``misses``, ``indices``."""
        with self._lock:
            return {
                "size": len(self._cache),
                "capacity": self.cache_size,
                "hits": self._hits,
                "misses": self._misses,
                "indices": list(self._cache.keys()),
            }

    def clear_cache(self) -> None:
        """Drop every cached frame."""
        with self._lock:
            self._cache.clear()

    def close(self) -> None:
        """Release the video decoder (if any) and the cache; the source can still be read later."""
        with self._lock:
            if self._decoder is not None:
                self._decoder.close()
                self._decoder = None
            self._next_index = 0
            self._cache.clear()

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        dec = getattr(self, "_decoder", None)
        if dec is not None:
            try:
                dec.close()
            except Exception:
                pass

    def __repr__(self) -> str:
        kind = "video" if self.is_video else "folder"
        return (
            f"FrameSource({kind} {str(self.path)!r}, frames={len(self)}, size={self.size}, "
            f"cache={self.cache_size})"
        )


def open_frames(source: PathLike, **kwargs: Any) -> FrameSource:
    """Shorthand for :class:`FrameSource` (``source``: a frame folder or a video file)."""
    return FrameSource(source, **kwargs)


# ----------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------


def _palette_rgb() -> np.ndarray:
    return np.asarray(DAVIS_PALETTE_RGB, dtype=np.uint8).reshape(256, 3)


def _check_label_map(mask: np.ndarray, what: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"{what}: expected an H x W label map, got shape {m.shape}")
    if m.dtype != np.uint8:
        if m.dtype == np.bool_:
            return m.astype(np.uint8)
        if not np.issubdtype(m.dtype, np.integer):
            raise ValueError(f"{what}: label map must hold integers, got {m.dtype}")
        if m.size and (m.min() < 0 or m.max() > 255):
            raise ValueError(f"{what}: labels must lie in 0..255")
        m = m.astype(np.uint8)
    return m


def _png_name(name: str) -> str:
    """``name`` with a known image/mask extension replaced by ``.png`` (or ``.png`` appended)."""
    p = Path(str(name))
    if p.suffix.lower() in IMAGE_EXTENSIONS:
        return p.stem + ".png"
    return p.name + ".png"


def save_masks(
    out_dir: PathLike, masks: Iterable[np.ndarray], names: Sequence[str]
) -> list[Path]:
    """Write label maps as DAVIS palette PNGs ``out_dir/<name>.png`` (atomic, folder created).

    Args:
        out_dir: destination folder.
        masks: T label maps (H x W integer, 0 = background, values <= 255) or a T x H x W array.
        names: T frame names; an image extension (``.jpg``, ``.png``, ...) is replaced by ``.png``.

    Returns:
        The written paths, in order.
    """
    out = ensure_dir(out_dir)
    mask_list = list(masks)
    if len(mask_list) != len(names):
        raise ValueError(f"save_masks({out}): {len(mask_list)} masks but {len(names)} names")
    paths = []
    for mask, name in zip(mask_list, names, strict=True):
        p = out / _png_name(name)
        write_palette_png(p, _check_label_map(mask, str(p)))
        paths.append(p)
    return paths


def overlay(
    image: np.ndarray,
    mask: np.ndarray,
    alpha: float = 0.5,
    contour: bool = True,
    contour_color: tuple[int, int, int] = (0, 0, 0),
    contour_width: int = 1,
) -> np.ndarray:
    """DAVIS-style visualisation of a label map over an image.

    Object pixels (label l > 0) become ``(1 - alpha) * image + alpha * palette[l]`` (DAVIS
    palette colours, rounded); with ``contour`` the inner boundary of every object
    (``contour_width`` pixels thick, 8-connected, image borders excluded) is drawn in
    ``contour_color`` (black by default). Background pixels are left untouched.

    Args:
        image: H x W x 3 RGB uint8.
        mask: H x W integer label map (0 = background, values <= 255).
        alpha: colour weight in [0, 1].

    Returns:
        H x W x 3 RGB uint8 (a new array).
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"overlay: image must be H x W x 3 uint8, got {img.shape} {img.dtype}")
    m = _check_label_map(mask, "overlay mask")
    if m.shape != img.shape[:2]:
        raise ValueError(f"overlay: mask size {m.shape} differs from image size {img.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay: alpha must lie in [0, 1], got {alpha}")
    out = img.copy()
    fg = m > 0
    if not fg.any():
        return out
    colours = _palette_rgb()[m[fg]].astype(np.float32)
    blended = (1.0 - alpha) * img[fg].astype(np.float32) + alpha * colours
    out[fg] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    if contour and contour_width > 0:
        kernel = np.ones((3, 3), np.uint8)
        edge = np.zeros(m.shape, dtype=bool)
        for label in np.unique(m[fg]):
            obj = (m == label).astype(np.uint8)
            # the default border value of erode is "+inf": the image border is not a contour
            inner = cv2.erode(obj, kernel, iterations=int(contour_width))
            edge |= (obj > 0) & (inner == 0)
        out[edge] = np.asarray(contour_color, dtype=np.uint8)
    return out


def _frame_mask_pairs(
    frames: Iterable[np.ndarray], masks: Sequence[np.ndarray] | np.ndarray, where: str
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield (t, frame, mask), checking that the counts agree."""
    n_masks = len(masks)
    if hasattr(frames, "__len__") and len(frames) != n_masks:  # type: ignore[arg-type]
        raise ValueError(f"{where}: {len(frames)} frames but {n_masks} masks")  # type: ignore[arg-type]
    count = 0
    for t, frame in enumerate(frames):
        if t >= n_masks:
            raise ValueError(f"{where}: more frames than the {n_masks} masks")
        count += 1
        yield t, np.asarray(frame), np.asarray(masks[t])
    if count != n_masks:
        raise ValueError(f"{where}: {count} frames but {n_masks} masks")


def write_overlay_frames(
    out_dir: PathLike,
    frames: Iterable[np.ndarray],
    masks: Sequence[np.ndarray] | np.ndarray,
    names: Sequence[str] | None = None,
    alpha: float = 0.5,
    contour: bool = True,
) -> list[Path]:
    """Write ``overlay(frame, mask)`` of every frame as ``out_dir/<name>.png`` (RGB, atomic).

    Args:
        frames: T RGB uint8 frames (a list, an array or a :class:`FrameSource`).
        masks: T label maps with the frames' H x W.
        names: T names (default ``00000``, ``00001``, ...).

    Returns:
        The written paths.
    """
    out = ensure_dir(out_dir)
    where = f"write_overlay_frames({out})"
    if names is not None and len(names) != len(masks):
        raise ValueError(f"{where}: {len(names)} names but {len(masks)} masks")
    paths = []
    for t, frame, mask in _frame_mask_pairs(frames, masks, where):
        name = f"{t:05d}.png" if names is None else _png_name(names[t])
        try:
            vis = overlay(frame, mask, alpha=alpha, contour=contour)
        except ValueError as exc:
            raise ValueError(f"{where}: frame {t} ({name}): {exc}") from exc
        paths.append(atomic_save_image(out / name, vis))
    return paths


class _NoEncoder(RuntimeError):
    """OpenCV could not produce a video with the requested codec."""


def write_overlay_video(
    path: PathLike,
    frames: Iterable[np.ndarray],
    masks: Sequence[np.ndarray] | np.ndarray,
    fps: float = 25.0,
    alpha: float = 0.5,
    contour: bool = True,
    fourcc: str = "mp4v",
) -> Path:
    """Encode the overlays of all frames into a video with OpenCV (``mp4v`` by default).

    Frames are streamed (not all held in memory). The video is written under a temporary name
    in the same folder and renamed at the end. If OpenCV cannot open an encoder, the overlays
    are written instead as PNGs into the folder ``path`` without its extension (a warning is
    logged); when the encoder opens but produces an empty file the same fallback is used if
    ``frames`` can be iterated again (a list, an array, a :class:`FrameSource`), otherwise a
    ``RuntimeError`` is raised.

    Args:
        path: output file, e.g. ``out/overlay.mp4``.
        frames: T RGB uint8 frames of one size H x W.
        masks: T label maps of size H x W.
        fps: frame rate written in the container.

    Returns:
        The video path, or the fallback folder.
    """
    target = Path(path)
    where = f"write_overlay_video({target})"
    if len(masks) == 0:
        raise ValueError(f"{where}: no frames")

    def _encode(tmp: str) -> None:
        writer = None
        size = None
        try:
            for t, frame, mask in _frame_mask_pairs(frames, masks, where):
                try:
                    vis = overlay(frame, mask, alpha=alpha, contour=contour)
                except ValueError as exc:
                    raise ValueError(f"{where}: frame {t}: {exc}") from exc
                if writer is None:
                    size = vis.shape[:2]
                    writer = cv2.VideoWriter(
                        tmp, cv2.VideoWriter_fourcc(*fourcc), float(fps), (size[1], size[0])
                    )
                    if not writer.isOpened():
                        raise _NoEncoder(f"OpenCV cannot open a {fourcc!r} encoder for {target}")
                elif vis.shape[:2] != size:
                    raise ValueError(
                        f"{where}: frame {t} is {vis.shape[:2]} but frame 0 is {size}"
                    )
                writer.write(cv2.cvtColor(vis, cv2.COLOR_RGB2BGR))
        finally:
            if writer is not None:
                writer.release()
        if os.path.getsize(tmp) == 0:
            raise _NoEncoder(f"the {fourcc!r} encoder produced an empty file for {target}")

    try:
        return atomic_write(target, _encode, keep_suffix=True)
    except _NoEncoder as exc:
        if not isinstance(frames, (Sequence, np.ndarray, FrameSource)):
            raise RuntimeError(
                f"{exc}; cannot fall back to PNG frames because the frames were a one-shot "
                "iterator (pass a list, an array or a FrameSource)"
            ) from exc
        folder = target.with_suffix("")
        logger.warning("%s; writing PNG frames to %s instead", exc, folder)
        write_overlay_frames(folder, frames, masks, alpha=alpha, contour=contour)
        return folder
