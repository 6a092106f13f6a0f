"""Mixed precision (autocast): one spelling and one helper for every inference and training path.

Canonical names are ``None`` (float32), ``"bf16"`` and ``"fp16"``. The long spellings
``"bfloat16"`` / ``"float16"`` (used by older configurations, e.g. ``InferenceConfig.amp``) and
``"none"`` (the trainers' spelling of float32) are accepted everywhere and mean the same. The
trainers' ``--amp`` also takes ``"auto"`` (:data:`AMP_FLAG_CHOICES`), resolved per device by
:func:`auto_amp` before training starts.

* :func:`canonical_amp` checks a name and returns its canonical spelling;
* :func:`amp_dtype` gives the autocast dtype (None for float32);
* :func:`autocast` is the context the networks run under. With ``amp=None`` it *disables*
  autocast, so that an outer autocast context cannot change a float32 computation;
* :func:`native_bf16` tells whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), i.e.
  whether bf16 autocast is likely to speed a CPU run up rather than emulate it;
* :func:`auto_amp` is what ``--amp auto`` means on a device: fp16 on CUDA, bf16 on a CPU with
  native bf16, float32 otherwise.

This module imports nothing from ``model/``, ``dataset/`` or ``inference/``.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["AMP_CHOICES", "AMP_DTYPES", "AMP_FLAG_CHOICES", "amp_dtype", "auto_amp", "autocast",
           "canonical_amp", "native_bf16"]

#: the canonical names (None = float32)
AMP_CHOICES: tuple[str | None, ...] = (None, "bf16", "fp16")

#: the trainers' ``--amp`` values: float32 spelled ``"none"``, and ``"auto"`` (:func:`auto_amp`)
AMP_FLAG_CHOICES: tuple[str, ...] = ("none", "bf16", "fp16", "auto")

#: every accepted spelling -> autocast dtype
AMP_DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}

_CANONICAL = {"bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "float16": "fp16", "none": None}


def canonical_amp(amp: str | None) -> str | None:
    """The canonical name of ``amp`` (None, ``"bf16"`` or ``"fp16"``); ValueError if unknown."""
    if amp is None:
        return None
    if not isinstance(amp, str) or amp not in _CANONICAL:
        raise ValueError(
            f"amp must be None or one of {sorted(_CANONICAL)} (canonical: None, 'bf16', 'fp16'), "
            f"got {amp!r}"
        )
    return _CANONICAL[amp]


#: canonical name -> the long spelling that configurations and fingerprints record
_LONG = {"bf16": "bfloat16", "fp16": "float16"}


def long_amp_name(amp: str | None) -> str | None:
    """``"bfloat16"`` / ``"float16"`` / None for any accepted spelling of ``amp``: the spelling
    ``InferenceConfig.amp`` and the evaluations' run fingerprints record (kept so that earlier
    runs resume)."""
    name = canonical_amp(amp)
    return None if name is None else _LONG[name]


def amp_dtype(amp: str | None) -> torch.dtype | None:
    """The autocast dtype of ``amp`` (None for float32)."""
    name = canonical_amp(amp)
    return None if name is None else AMP_DTYPES[name]


def autocast(device: torch.device | str, amp: str | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device``'s type in ``amp``'s dtype; disabled when ``amp`` is None."""
    kind = torch.device(device).type
    dtype = amp_dtype(amp)
    if dtype is None:
        return torch.autocast(kind, enabled=False)
    return torch.autocast(kind, dtype=dtype)


def _cpu_flags() -> set[str]:
    """The CPU feature flags of Linux's /proc/cpuinfo (empty elsewhere or when unreadable)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512 with BF16, or AMX).

    ``torch.backends.cpu.get_cpu_capability()`` names the vector level torch dispatches to. A
    level naming AMX or BF16 answers yes; a level below AVX512 (e.g. ``AVX2``, ``DEFAULT``)
    answers no; for plain ``AVX512`` the CPU flags decide (``avx512_bf16`` or ``amx_bf16``).
    """
    level = torch.backends.cpu.get_cpu_capability().upper()
    if "AMX" in level or "BF16" in level:
        return True
    if not level.startswith("AVX512"):
        return False
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


def auto_amp(device: torch.device | str | None) -> str | None:
    """What ``--amp auto`` means on ``device`` (None: CUDA when available, else the CPU):
    ``"fp16"`` on CUDA, ``"bf16"`` on a CPU with native bf16 (:func:`native_bf16`), else None
    (float32: emulated bf16 would slow a CPU down)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    kind = torch.device(device).type
    if kind == "cuda":
        return "fp16"
    if kind == "cpu" and native_bf16():
        return "bf16"
    return None
