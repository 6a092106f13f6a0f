"""Atomic file writing and small path helpers.

Everything that must survive an interruption (masks, checkpoints, score tables, JSON summaries)
is written through :func:`atomic_write`: the payload goes to a temporary file in the *same*
folder as the target, is flushed and fsync'ed, and is then moved over the target with
``os.replace`` (atomic on POSIX and on Windows for files on the same volume). A reader therefore
sees either the old file or the complete new one, never a half-written file. If the writer
raises, the temporary file is removed and the target is left untouched.

Temporary files never match a result glob: their names start with ``.`` and end with ``.tmp``
(``.00000.png.k3j2x9.tmp``), so a leftover from a killed process is neither ``*.png`` nor
``*.csv`` and is skipped by the hidden-file rule as well. Writers that need the extension to
pick a format (OpenCV's video writer) ask for ``keep_suffix=True``: ``.x.mp4.k3j2x9.tmp.mp4``
(still hidden). :func:`is_temp_name` recognises both forms.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from util.errors import OutputPathError

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

_UMASK: int | None = None


def _current_umask() -> int:
    """The process umask (read once, lazily; ``os.umask`` can only be read by setting it)."""
    global _UMASK
    if _UMASK is None:
        old = os.umask(0o022)
        os.umask(old)
        _UMASK = old
    return _UMASK


def ensure_dir(path: PathLike) -> Path:
    """Create folder ``path`` (and its parents) if needed and return it as a :class:`Path`.

    Raises:
        util.errors.OutputPathError (a ``NotADirectoryError``): ``path`` exists and is not a
        folder.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputPathError(f"{p} exists and is not a folder", p)
    p.mkdir(parents=True, exist_ok=True)
    return p


def is_temp_name(name: str) -> bool:
    """Whether a file name is one of :func:`atomic_write`'s temporary files (or any hidden file)."""
    return name.startswith(".") or name.endswith(".tmp") or ".tmp." in name


def atomic_write(path: PathLike, writer: Callable[[str], Any], *, fsync: bool = True,
                 keep_suffix: bool = False) -> Path:
    """Write ``path`` atomically through a callback.

    Args:
        path: final file path. Its parent folder is created if missing.
        writer: called once with the path (str) of a fresh temporary file in the same folder;
            it must write the complete content there (it may overwrite/recreate that file,
            e.g. ``PIL.Image.save`` or ``torch.save``).
        fsync: flush the temporary file to disk before the rename.
        keep_suffix: end the temporary name with the target's extension (for writers that
            pick the format from the name); it is hidden either way.

    Returns:
        The final path.

    Raises:
        Whatever ``writer`` raises (the target is then unchanged and the temporary file removed);
        ``RuntimeError`` when the writer produced no file.
    """
    target = Path(path)
    ensure_dir(target.parent)
    fd, tmp = tempfile.mkstemp(
        dir=str(target.parent), prefix=f".{target.name}.",
        suffix=f".tmp{target.suffix}" if keep_suffix else ".tmp"
    )
    os.close(fd)
    try:
        writer(tmp)
        if not os.path.exists(tmp):
            raise RuntimeError(f"writing {target}: the writer did not create the temporary file")
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        # mkstemp creates files with mode 0600; give the result the usual permissions
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass
        raise
    return target


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Atomically write raw ``data`` to ``path``."""

    def _write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    return atomic_write(path, _write)


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Atomically write ``text`` to ``path`` (no newline translation: ``\\n`` stays ``\\n``)."""

    def _write(tmp: str) -> None:
        with open(tmp, "w", encoding=encoding, newline="") as fh:
            fh.write(text)

    return atomic_write(path, _write)


def atomic_save_json(path: PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Atomically write ``obj`` as JSON (numpy scalars/arrays are converted to Python types)."""

    def _default(o: Any) -> Any:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"cannot serialise {type(o).__name__} to JSON for {path}")

    text = json.dumps(obj, indent=indent, default=_default)
    return atomic_write_text(path, text + "\n")


def atomic_save_image(path: PathLike, image: Any, **save_kwargs: Any) -> Path:
    """Atomically save an image with PIL; the format follows the extension of ``path``.

    Args:
        path: target file (``.png``, ``.jpg``, ...).
        image: a ``PIL.Image.Image`` or a uint8 numpy array (H x W gray or H x W x 3 RGB).
        save_kwargs: passed on to ``PIL.Image.Image.save``.
    """
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"saving {path}: expected a uint8 array, got {image.dtype}")
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
            raise ValueError(f"saving {path}: expected H x W or H x W x 3/4, got {image.shape}")
        image = Image.fromarray(image)
    fmt = save_kwargs.pop("format", None) or Image.registered_extensions().get(
        Path(path).suffix.lower()
    )
    if fmt is None:
        raise ValueError(f"saving {path}: unknown image extension {Path(path).suffix!r}")
    return atomic_write(path, lambda tmp: image.save(tmp, format=fmt, **save_kwargs))


def atomic_torch_save(path: PathLike, obj: Any) -> Path:
    """Atomically ``torch.save`` ``obj`` (checkpoints, optimizer states)."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))
