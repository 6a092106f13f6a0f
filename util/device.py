"""The compute device of a process: one rule for every script.

:func:`resolve_device` turns a ``--device`` value into a :class:`torch.device`: None means CUDA
when available, else the CPU; ``cuda`` without an index becomes ``cuda:<local_rank>`` (the
process's GPU under torchrun). Asking for CUDA where there is none is a ValueError naming the
option. :func:`usable_cores` is the number of CPU cores the process may run on, :func:`cpu_model`
the processor's name and :func:`cpu_flags` its feature flags.

This module imports nothing from ``model/``, ``dataset/`` or ``inference/``.
"""

from __future__ import annotations

import os
import platform

import torch

__all__ = ["cpu_flags", "cpu_model", "resolve_device", "usable_cores"]


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo``; elsewhere what :mod:`platform` reports)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_flags() -> set[str]:
    """The CPU's feature flags (``/proc/cpuinfo``, first processor; empty elsewhere or when
    unreadable)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def usable_cores() -> int:
    """CPU cores this process may run on: its affinity mask where the OS reports one (a
    container or ``taskset`` may allow fewer than the machine has), else the CPU count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


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
