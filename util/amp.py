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
* :func:`native_fp16` tells the same of float16 (AVX512-FP16 or AMX-FP16);
* :func:`auto_amp` is what ``--amp auto`` means on a device: fp16 on CUDA, bf16 on a CPU with
  native bf16, float32 otherwise;
* :func:`resolve_amp` is what an *explicit* setting means on a device: unchanged on CUDA (and any
  other accelerator) and on a CPU that computes the dtype natively; on a CPU that would emulate
  it (torch's generic kernels are 12-186x slower than float32 there), float32 with an
  :class:`EmulatedPrecisionWarning` naming the reason, unless emulation is asked for
  (``allow_emulated=True`` or the environment variable :data:`ALLOW_EMULATED_ENV` of the dtype,
  ``MIVOS_ALLOW_EMULATED_BF16=1`` / ``MIVOS_ALLOW_EMULATED_FP16=1``). Every place where a device
  and an AMP setting meet (the trainers' configuration, ``InferenceCore``,
  ``SemiVOSPropagator``, the GUI session, the evaluations' fingerprints) goes through it.

This module imports nothing from ``model/``, ``dataset/`` or ``inference/``.
"""

from __future__ import annotations

import contextlib
import os
import warnings

import torch

from util.device import cpu_flags

__all__ = ["ALLOW_EMULATED_ENV", "AMP_CHOICES", "AMP_DTYPES", "AMP_FLAG_CHOICES",
           "EmulatedPrecisionWarning", "amp_dtype", "auto_amp", "autocast", "canonical_amp",
           "native_bf16", "native_fp16", "resolve_amp"]

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
    """The CPU feature flags (:func:`util.device.cpu_flags`; the tests replace this)."""
    return cpu_flags()


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


def native_fp16() -> bool:
    """Whether this CPU computes float16 natively (AVX512-FP16 or AMX-FP16 in the CPU flags, or
    oneDNN's own float16 check where torch has it, e.g. Arm CPUs with half-precision arithmetic).

    Without it torch's float16 convolutions run a generic path that is about 100x slower than
    float32 (measured on an AVX512-BF16 CPU without AVX512-FP16).
    """
    return bool(_cpu_flags() & {"avx512_fp16", "amx_fp16"}) or _onednn_fp16()


def _onednn_fp16() -> bool:
    """oneDNN's float16 device check (False where this torch build lacks it)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):
        return False


class EmulatedPrecisionWarning(UserWarning):
    """An AMP setting was dropped for float32 because this CPU would emulate its dtype."""


#: canonical name -> the environment variable that keeps an emulated CPU autocast (``1``)
ALLOW_EMULATED_ENV: dict[str, str] = {"bf16": "MIVOS_ALLOW_EMULATED_BF16",
                                      "fp16": "MIVOS_ALLOW_EMULATED_FP16"}

#: canonical name -> the instructions a CPU computes it natively with (for the warning)
_NATIVE_ISA = {"bf16": "AVX512-BF16 or AMX", "fp16": "AVX512-FP16 or AMX-FP16"}

#: canonical name -> the slowdown of emulated autocast against float32 (convolutions; bf16 on
#: AVX2-only CPUs, fp16 measured on an AVX512-BF16 CPU without AVX512-FP16)
_SLOWDOWN = {"bf16": "12-186x", "fp16": "about 100x"}


def _env_allows(name: str) -> bool:
    value = os.environ.get(ALLOW_EMULATED_ENV[name], "")
    return value.strip().lower() in ("1", "true", "yes", "on")


def resolve_amp(amp: str | None, device: torch.device | str | None = None, *,
                allow_emulated: bool | None = None, what: str = "autocast") -> str | None:
    """The AMP mode actually used for an explicit setting ``amp`` on ``device`` (None: CUDA
    when available, else the CPU): its canonical name, or None (float32).

    CUDA (and any device other than the CPU) and float32 pass through unchanged. On a CPU,
    bf16 is kept where :func:`native_bf16` says yes and fp16 where :func:`native_fp16` says yes;
    elsewhere torch would emulate the dtype, many times slower than float32, so None is
    returned and an :class:`EmulatedPrecisionWarning` says why (the CPU capability torch
    reports) and how to keep it: ``allow_emulated=True`` or, when ``allow_emulated`` is None,
    the environment variable ``MIVOS_ALLOW_EMULATED_BF16=1`` (``..._FP16=1`` for fp16).
    ``what`` names the caller in the warning (e.g. ``"InferenceCore"``, ``"train_prop.py
    --amp"``). Raises ValueError for an unknown name (:func:`canonical_amp`).
    """
    name = canonical_amp(amp)
    if name is None:
        return None
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(device).type != "cpu":
        return name
    if native_bf16() if name == "bf16" else native_fp16():
        return name
    if allow_emulated is None:
        allow_emulated = _env_allows(name)
    if allow_emulated:
        return name
    long_name = _LONG[name]
    env = ALLOW_EMULATED_ENV[name]
    warnings.warn(
        f"{what}: amp {amp!r} asks for {long_name} autocast, but this CPU has no native {name} "
        f"({_NATIVE_ISA[name]}; torch reports CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}), so {long_name} would be emulated, "
        f"{_SLOWDOWN[name]} slower than float32: running in float32 instead. To use emulated "
        f"{name} anyway, set {env}=1 (in Python: allow_emulated=True).",
        EmulatedPrecisionWarning, stacklevel=2)
    return None
