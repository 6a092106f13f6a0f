"""Training logs: ``logging`` setup, TensorBoard, a rank-aware metric integrator, image grids.

* :func:`setup_logging` configures the root logger once per process: rank 0 logs INFO to the
  console and to ``<run>/train.log``; other ranks log warnings only (to ``train_rank<r>.log``).
* :class:`TensorBoardWriter` wraps ``torch.utils.tensorboard.SummaryWriter`` (imported lazily;
  a no-op on ranks other than 0, when disabled, or when tensorboard is not installed).
* :class:`Integrator` accumulates running sums of scalar metrics between two log points and
  averages them over all ranks (``all_reduce``) when ``torch.distributed`` is initialised.
* :func:`overlay`, :func:`make_grid` build visualisations without torchvision.
* :func:`git_hash` records the code version (None outside a git checkout).
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from util.fileio import atomic_save_image

logger = logging.getLogger(__name__)

__all__ = [
    "setup_logging",
    "git_hash",
    "TensorBoardWriter",
    "Integrator",
    "overlay",
    "make_grid",
    "grid_from_rows",
    "save_image_grid",
]

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_HANDLER_TAG = "_mivos_train_handler"


def setup_logging(run_dir: str | os.PathLike | None = None, rank: int = 0,
                  level: int = logging.INFO) -> None:
    """Configure the root logger for a training process (idempotent).

    Rank 0: ``level`` to stderr and ``<run_dir>/train.log``. Other ranks: WARNING and above to
    stderr and ``<run_dir>/train_rank<r>.log``. Handlers added by an earlier call, and plain
    console handlers (e.g. from ``logging.basicConfig``), are replaced.
    """
    root = logging.getLogger()
    for h in list(root.handlers):
        # our own earlier handlers, and plain console handlers of an earlier basicConfig (when
        # several tools run in one process), which would print every line twice
        console = type(h) is logging.StreamHandler and h.stream in (sys.stderr, sys.stdout)
        if getattr(h, _HANDLER_TAG, False) or console:
            root.removeHandler(h)
            if not console:
                h.close()
    console_level = level if rank == 0 else logging.WARNING
    fmt = logging.Formatter(_FORMAT if rank == 0 else f"[rank {rank}] {_FORMAT}",
                            datefmt="%H:%M:%S")
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(console_level)
    console.setFormatter(fmt)
    setattr(console, _HANDLER_TAG, True)
    root.addHandler(console)
    if run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        name = "train.log" if rank == 0 else f"train_rank{rank}.log"
        fh = logging.FileHandler(Path(run_dir) / name)
        fh.setLevel(console_level)
        fh.setFormatter(fmt)
        setattr(fh, _HANDLER_TAG, True)
        root.addHandler(fh)
    root.setLevel(console_level)
    # davisinteractive's robot logs one INFO line per scribble through absl
    logging.getLogger("absl").setLevel(logging.WARNING)


def git_hash(path: str | os.PathLike | None = None) -> str | None:
    """``HEAD`` commit of the repository containing ``path`` (default: this file), with a
    ``-dirty`` suffix when tracked files are modified; None when git or the repository is
    unavailable."""
    folder = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None
        commit = head.stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=folder, capture_output=True, text=True, timeout=10)
        if status.returncode == 0 and status.stdout.strip():
            commit += "-dirty"
        return commit
    except (OSError, subprocess.SubprocessError):
        return None


class TensorBoardWriter:
    """Scalars and images to TensorBoard from rank 0 (no-op elsewhere or when disabled).

    Args:
        log_dir: event folder (created on first write).
        enabled: False for a no-op writer (other ranks, ``--no-tensorboard``).
    """

    def __init__(self, log_dir: str | os.PathLike, enabled: bool = True):
        self.log_dir = Path(log_dir)
        self._writer = None
        if enabled:
            try:  # optional dependency, and slow to import: only when enabled
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:  # tensorboard is optional at run time
                logger.warning("TensorBoard unavailable (%s); scalars go to the log only", e)
            else:
                self._writer = SummaryWriter(log_dir=str(self.log_dir))

    @property
    def enabled(self) -> bool:
        return self._writer is not None

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self._writer is not None:
            self._writer.add_scalar(tag, float(value), step)

    def scalars(self, values: Mapping[str, float], step: int, prefix: str = "") -> None:
        for k, v in values.items():
            self.scalar(f"{prefix}{k}", v, step)

    def image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """image: 3 x H x W float in [0, 1]."""
        if self._writer is not None:
            self._writer.add_image(tag, image.detach().float().clamp(0, 1).cpu(), step)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        if self._writer is not None:
            self._writer.add_text(tag, text, step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class Integrator:
    """Running averages of scalar metrics, averaged across ranks on :meth:`summary`.

    ``add({"loss": t, ...}, weight)`` accumulates ``value * weight`` and ``weight`` per key;
    :meth:`summary` returns the weighted means (all ranks together when distributed: every rank
    must call it at the same point, with the same keys) and :meth:`reset` clears the sums.
    """

    def __init__(self, distributed: bool | None = None):
        self._sums: dict[str, float] = {}
        self._weights: dict[str, float] = {}
        self._distributed = distributed

    def add(self, values: Mapping[str, float | torch.Tensor], weight: float = 1.0) -> None:
        for k, v in values.items():
            x = float(v.detach().float().mean()) if isinstance(v, torch.Tensor) else float(v)
            if not math.isfinite(x):
                logger.warning("metric %s is not finite (%s)", k, x)
            self._sums[k] = self._sums.get(k, 0.0) + x * weight
            self._weights[k] = self._weights.get(k, 0.0) + weight

    def _is_distributed(self) -> bool:
        if self._distributed is not None:
            return self._distributed and dist.is_available() and dist.is_initialized()
        return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    def summary(self, device: torch.device | str = "cpu") -> dict[str, float]:
        """Weighted means of everything added since the last reset (over all ranks)."""
        keys = sorted(self._sums)
        if self._is_distributed():
            # ranks may have seen different keys; agree on the union first
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, keys)
            keys = sorted({k for ks in gathered for k in ks})
            buf = torch.tensor([[self._sums.get(k, 0.0), self._weights.get(k, 0.0)]
                                for k in keys], dtype=torch.float64, device=device)
            if buf.numel():
                dist.all_reduce(buf)
            sums = {k: float(buf[i, 0]) for i, k in enumerate(keys)}
            weights = {k: float(buf[i, 1]) for i, k in enumerate(keys)}
        else:
            sums, weights = self._sums, self._weights
        return {k: sums[k] / weights[k] for k in keys if weights.get(k, 0.0) > 0}

    def reset(self) -> None:
        self._sums.clear()
        self._weights.clear()


# ============================================================================ images

_PALETTE = torch.tensor([
    [0, 0, 0], [230, 40, 40], [40, 200, 60], [50, 90, 230], [240, 200, 30], [200, 60, 220],
    [40, 210, 220], [250, 130, 30],
], dtype=torch.float32) / 255


def overlay(image: torch.Tensor, labels: torch.Tensor | None = None, alpha: float = 0.5,
            prob: torch.Tensor | None = None) -> torch.Tensor:
    """Colour a label map (or a soft foreground map) over an image.

    image: 3 x H x W in [0, 1]; labels: H x W integer labels (0 = background, left as is);
    prob: H x W in [0, 1], drawn in red with opacity ``alpha * prob`` (when labels is None).
    Returns 3 x H x W in [0, 1] on the CPU.
    """
    img = image.detach().float().cpu().clamp(0, 1)
    if labels is not None:
        lab = labels.detach().long().cpu() % len(_PALETTE)
        colour = _PALETTE[lab].permute(2, 0, 1)  # 3 x H x W
        a = (lab > 0).float() * alpha
        return img * (1 - a) + colour * a
    if prob is not None:
        p = prob.detach().float().cpu().clamp(0, 1) * alpha
        red = _PALETTE[1].view(3, 1, 1)
        return img * (1 - p) + red * p
    return img


def make_grid(images: Sequence[torch.Tensor], nrow: int, pad: int = 2,
              fill: float = 1.0) -> torch.Tensor:
    """Tile 3 x H x W images (same size) into a grid with ``nrow`` images per row."""
    if not images:
        raise ValueError("make_grid needs at least one image")
    c, h, w = images[0].shape
    ncol = max(1, min(nrow, len(images)))
    nrows = math.ceil(len(images) / ncol)
    grid = torch.full((c, nrows * (h + pad) + pad, ncol * (w + pad) + pad), fill)
    for i, img in enumerate(images):
        r, col = divmod(i, ncol)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, y:y + h, x:x + w] = img.detach().float().cpu()
    return grid


def grid_from_rows(rows: Sequence[Sequence[torch.Tensor]], pad: int = 2) -> torch.Tensor:
    """Grid with one row per list (shorter rows are padded with blank tiles)."""
    ncol = max(len(r) for r in rows)
    blank = torch.ones_like(rows[0][0])
    flat = [img for r in rows for img in list(r) + [blank] * (ncol - len(r))]
    return make_grid(flat, ncol, pad=pad)


def save_image_grid(path: str | os.PathLike, grid: torch.Tensor) -> None:
    """Write a 3 x H x W [0, 1] tensor as a PNG, atomically."""
    arr = (grid.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5)
    atomic_save_image(path, arr.astype(np.uint8))
