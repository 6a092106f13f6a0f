"""The compute device of a process: one rule for every script.

:func:`resolve_device` turns a ``--device`` value into a :class:`torch.device`: None means CUDA
when available, else the CPU; ``cuda`` without an index becomes ``cuda:<local_rank>`` (the
process's GPU under torchrun). Asking for CUDA where there is none is a ValueError naming the
option.

This module imports nothing from ``model/``, ``dataset/`` or ``inference/``.
"""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(name: str | None, local_rank: int = 0) -> torch.device:
    """``name`` as a device (None: CUDA when available, else CPU); ``cuda`` without an index
    becomes ``cuda:<local_rank>``. Raises ValueError when CUDA is requested but unavailable."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device
