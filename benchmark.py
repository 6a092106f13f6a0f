"""Speed benchmark of the MiVOS modules: milliseconds per frame per object (the paper's Table 3).

What is timed (one object, batch 1, random weights and inputs: speed does not depend on them),
at 480p by default (854 x 480, zero-padded to 864 x 480 as every network input is):

* ``s2m``: one S2M forward of a 6-channel input [image, mask, positive, negative scribbles].
* ``propagation`` (full softmax) and ``propagation_topk`` (top-k, k = 50), with a memory of
  T frames (default 10): the work of one propagated frame = query encoding + memory read +
  decoder, plus the memory encoding of one frame (a frame is memorised at every step). Each
  part is timed on its own; the row's time is the sum of the part medians.
* ``fusion``: attention transfer (the interacted frame's differences aligned through the
  memory affinity) + FusionNet, for one object.
* ``e2e_propagation`` / ``e2e_propagation_fusion``: :class:`inference.inference_core.InferenceCore`
  on a short clip (default 10 frames, 2 objects): an interaction on the first frame propagated
  forward (no fusion), then one on the last frame propagated backward with difference-aware
  fusion. Time of the ``interact`` call divided by (frames propagated x objects).

Architectures side by side (JSON ``architectures``, its own Markdown section; ``--arch``):
for each propagation architecture (``mivos``: the STM-style network; ``stcn``: the MiVOS-STCN
network, REFERENCE.md j) and K = 1, 2 and 4 objects (``--arch-objects``), an
:class:`InferenceCore` interaction on the first frame of a clip of ``--arch-frames`` frames
(default 6) propagated forward (no fusion; each architecture's defaults: top-k 50 and the previous frame as temporary memory
for mivos, top-k 20 and no temporary memory for stcn), fp32. Rows: ms per frame and ms per
frame per object; ``ratios``: stcn / mivos of the per-object cost at each K, and of the marginal
cost of one more object ((ms per frame at the largest K - at the smallest K) / (K difference)).
STCN's keys do not depend on the masks, so one key encoding and one affinity per frame serve
every object, and an object adds only a value encoding (ResNet-18), its read and its decoder.
The variants run interleaved within each round (at least one warm-up round on the first 3
frames, then ``--arch-repeats`` rounds, median).

Machine peak (JSON ``peak``): an fp32 GEMM (``--peak-gemm``, default 2048 x 2048 x 2048) and a
3x3 convolution (``--peak-conv``, default 256 -> 256 channels at 60 x 108) timed with the run's
thread count, in GFLOP/s. The CPU model, the flags that matter (avx2, avx512f, avx512_bf16,
amx_bf16, ...), ``torch.backends.cpu.get_cpu_capability()`` and ``util.amp.native_bf16()`` are
recorded with the machine.

Stages (JSON ``stages``, fp32, the run's frame size and memory): query encoding, memorize (memory
encoding of one object), the affinity GEMM alone, the memory read (top-k), read + decode for
K = 1, 2, 4 objects (``--stage-objects``), the fusion pass (attention read of the difference maps
+ FusionNet) for the same K, and the S2M forward. Each gets its median ms, its FLOPs (2 x the
multiply-accumulates of every Conv / Linear call, counted with forward hooks, plus the reads'
affinity and readout counted analytically), GFLOP/s and the fraction of the measured GEMM and
conv peaks; the memory read also its time over the affinity GEMM alone (goal: <= 1.3). The
original structure restated simply runs in the same rounds as a baseline: the dense top-k read;
for read + decode a loop over the objects (dense top-k read, decoder with batch 1); for the fusion
pass a loop over the objects (dense softmax attention read, FusionNet with batch 1);
``baseline_over_ours`` >= 1 means ours is at least as fast.

Long videos (JSON ``long_video``, CPU): ``InferenceCore`` propagating one object from frame 0
through T = 20, 60, 200 frames (``--long-video-frames``; preset ``--long-video-preset``, default
lite; frame size ``--long-video-height/--long-video-width``, default the run's), frames from a lazy
reader, uint8 probabilities and label maps in a temporary file, bounded caches and a chunked read
(:data:`LONG_VIDEO_OPTIONS`). Each
T runs in a fresh ``python benchmark.py --long-video-worker SPEC`` process, which reports its ms
per frame and its whole-process peak RSS (``VmHWM`` of ``/proc/self/status``); the report gives
the longest / shortest ratios of both.

bf16: the CPU ``amp-bf16`` rows (``amp`` on CPU) run only where the CPU computes bf16 natively
(``util.amp.native_bf16()``: AVX512-BF16 or AMX), or with ``--force-emulated-bf16``; otherwise
they are skipped and the report says why.

Baselines of the module rows, measured in the same run (``baseline_ms``; ``ratio`` = ms /
baseline_ms, so a ratio below 1 means faster than the baseline):

* ``propagation_topk``: the same frame with the memory read replaced by the original's dense
  top-k read (:func:`baseline_dense_topk_read`: top-k, scatter into a dense N x M matrix, bmm);
* ``propagation``: the same frame with the original's dense full-softmax read
  (:func:`baseline_dense_softmax_read`);
* every other row: the fp32 time of the same module, so for AMP rows ``ratio`` is the AMP/fp32
  ratio (fp32 rows have ratio 1). Every row also carries ``amp_over_fp32``.

Timing: warm-up rounds, then ``--repeats`` rounds; in each round every timed function of one
preset runs once (variants interleaved, so that load changes on a shared machine affect them
alike); the median is reported. CPU: ``time.perf_counter``. CUDA: CUDA events around each call
and ``torch.cuda.synchronize``. Precisions: fp32 and autocast (CPU: bfloat16; CUDA: float16 and
bfloat16). Peak memory: CUDA ``torch.cuda.max_memory_allocated`` (absolute, and the increase
over what was allocated before the call); CPU the increase of the process peak RSS over the RSS
before the call (free heap trimmed with glibc ``malloc_trim``, peak reset through
``/proc/self/clear_refs``; allocator caching can still hide part of it). The
peak-memory-vs-length/resolution table of ``scripts/bench_inference_memory.py`` is included
in the Markdown when ``docs/inference_memory.json`` exists (it is not regenerated).

Examples::

    python benchmark.py --quick                                  # ~1 min smoke run, CPU
    python benchmark.py --device cpu --threads 2 \\
        --json docs/benchmark_cpu.json --markdown docs/BENCHMARKS.md
    python benchmark.py --device all --json bench_gpu.json       # CPU, then CUDA if present
    python benchmark.py --from-json docs/benchmark_cpu.json --markdown docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from inference.inference_core import InferenceConfig, InferenceCore
from model.presets import PROPAGATION_ARCHS, build_fusion, build_propagation, build_s2m
from util import HUGE_PAGES_ENV, transparent_huge_pages_mode
from util.amp import autocast, long_amp_name, native_bf16
from util.device import cpu_flags, cpu_model, usable_cores
from util.tensor_util import pad_divide_by

ROOT = Path(__file__).resolve().parent
DEFAULT_INFERENCE_MEMORY_JSON = ROOT / "docs" / "inference_memory.json"

FULL_DEFAULTS = dict(height=480, width=854, memory_frames=10, presets=["mivos", "lite"],
                     repeats=5, warmup=1, e2e_frames=10, e2e_objects=2, e2e_repeats=1,
                     arch_repeats=3, arch_frames=6, stage_repeats=3, read_repeats=15,
                     peak_gemm=2048, peak_conv=[256, 60, 108],
                     peak_repeats=5, long_video_frames=[20, 60, 200], long_video_preset="lite")
QUICK_DEFAULTS = dict(height=128, width=224, memory_frames=3, presets=["lite"],
                      repeats=1, warmup=0, e2e_frames=4, e2e_objects=2, e2e_repeats=1,
                      arch_repeats=2, arch_frames=4, stage_repeats=1, read_repeats=2,
                      peak_gemm=1024, peak_conv=[128, 30, 54],
                      peak_repeats=2, long_video_frames=[4, 8], long_video_preset="lite")
#: objects of the read + decode and fusion stage rows
STAGE_OBJECTS = (1, 2, 4)
#: the environment variable with which the inference cores keep an emulated CPU bf16 autocast
#: (util.amp); set while --force-emulated-bf16 runs
ALLOW_EMULATED_BF16_ENV = "MIVOS_ALLOW_EMULATED_BF16"
#: objects of the architecture comparison (per-object cost rows)
ARCH_OBJECTS = (1, 2, 4)

MODULE_ORDER = ["s2m", "propagation", "propagation_topk", "fusion",
                "e2e_propagation", "e2e_propagation_fusion"]
MODULE_TITLES = {
    "s2m": "S2M (interaction to mask)",
    "propagation": "propagation, full softmax",
    "propagation_topk": "propagation, top-k",
    "fusion": "fusion (attention transfer + FusionNet)",
    "e2e_propagation": "InferenceCore pass, no fusion",
    "e2e_propagation_fusion": "InferenceCore pass with fusion",
}
#: the benchmark's precision names -> the canonical AMP names of util.amp
AMP_PRECISIONS = {"amp-bf16": "bf16", "amp-fp16": "fp16"}


# ------------------------------------------------------------------------------ baselines


def baseline_dense_topk_read(query_key, mem_key, mem_value, top_k):
    """BASELINE: the original MiVOS top-k memory read, dense.

    The whole ``N x M`` affinity is formed, the top-k entries of every query column are kept
    and softmax-normalised, scattered back into a zeroed dense ``N x M`` matrix, and the readout
    is one dense ``CV x N`` by ``N x M`` product.
    query_key B x CK x h x w; mem_key B x CK x T x h x w; mem_value B x CV x T x h x w
    -> B x CV x h x w.
    """

    b, ck, h, w = query_key.shape
    keys = mem_key.flatten(start_dim=2)  # B x CK x N
    values = mem_value.flatten(start_dim=2)  # B x CV x N
    query = query_key.flatten(start_dim=2) / math.sqrt(ck)  # B x CK x M
    aff = torch.bmm(keys.transpose(1, 2), query)  # B x N x M
    top_vals, top_idx = torch.topk(aff, k=min(top_k, aff.shape[1]), dim=1)
    weights = torch.softmax(top_vals, dim=1).to(aff.dtype)
    dense = torch.zeros_like(aff).scatter_(1, top_idx, weights)
    return torch.bmm(values, dense).view(b, -1, h, w)


def baseline_dense_softmax_read(query_key, mem_key, mem_value):
    """BASELINE: the original full-softmax memory read (dense ``N x M`` affinity, softmax over
    memory, one dense product); shapes as :func:`baseline_dense_topk_read`."""

    b, ck, h, w = query_key.shape
    keys = mem_key.flatten(start_dim=2)
    values = mem_value.flatten(start_dim=2)
    query = query_key.flatten(start_dim=2) / math.sqrt(ck)
    weights = torch.softmax(torch.bmm(keys.transpose(1, 2), query), dim=1)
    return torch.bmm(values, weights.to(values.dtype)).view(b, -1, h, w)


# ------------------------------------------------------------------------------ machine


def _ram_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


#: CPU feature flags recorded with every run: the ones the fp32 and bf16 kernels' speed depends on
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_capability() -> str:
    """The vector instruction level torch dispatches its CPU kernels to (e.g. AVX2, AVX512)."""
    try:
        return torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        return "unknown"


def bf16_skip_reason() -> str | None:
    """None when this CPU computes bfloat16 natively (:func:`util.amp.native_bf16`); otherwise
    the reason the CPU bf16 autocast rows are skipped."""
    if native_bf16():
        return None
    flags = cpu_flags()
    have = [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return (f"this CPU has no native bf16: torch CPU capability {cpu_capability()}, flags "
            f"{', '.join(have) if have else 'none of avx512f / avx512_bf16 / amx_bf16'} "
            "(native bf16 needs AVX512-BF16 or AMX-BF16; elsewhere autocast emulates bf16, "
            "which is slower than fp32)")


def machine_info() -> dict:
    usable = usable_cores()
    flags = cpu_flags()
    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "ram_gib": _ram_gib(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_capability": cpu_capability(),
        "cpu_flags": {f: f in flags for f in CPU_FLAGS} if flags else None,
        "native_bf16": native_bf16(),
        # huge-page CPU allocations (util/__init__.py): the kernel's mode and the switch
        "transparent_huge_pages": transparent_huge_pages_mode(),
        HUGE_PAGES_ENV: os.environ.get(HUGE_PAGES_ENV),
    }
    return info


# ------------------------------------------------------------------------------ measuring


def parse_status_kib(text: str, field: str) -> int | None:
    """The value in KiB of ``field`` (e.g. ``VmHWM``, the peak RSS) in the text of
    ``/proc/<pid>/status``; None when absent or malformed."""
    for line in text.splitlines():
        if line.startswith(field + ":"):
            parts = line.split()
            try:
                value = int(parts[1])
            except (IndexError, ValueError):
                return None
            unit = parts[2].lower() if len(parts) > 2 else "kb"
            return value if unit == "kb" else None
    return None


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return parse_status_kib(f.read(), field)
    except OSError:
        return None


def _malloc_trim() -> None:
    """Give free heap memory back to the OS (glibc), so that RSS deltas see new allocations."""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC = None


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux); False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Meter:
    """Times one call on a device and records the peak memory it needed."""

    def __init__(self, device) -> None:
        self.torch = torch
        self.device = device
        self.cuda = device.type == "cuda"
        self.rss_ok = not self.cuda and _reset_peak_rss() and _proc_status_kib("VmHWM") is not None

    def __call__(self, fn: Callable[[], object]) -> tuple[float, dict]:
        torch = self.torch
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            torch.cuda.synchronize(self.device)
            ms = start.elapsed_time(end)
            peak = torch.cuda.max_memory_allocated(self.device)
            del out
            return ms, {"peak_mib": peak / 2**20, "peak_delta_mib": (peak - base) / 2**20}
        mem = {}
        before = None
        if self.rss_ok:
            _malloc_trim()
            before = _proc_status_kib("VmRSS")
            _reset_peak_rss()
        t0 = time.perf_counter()
        out = fn()
        ms = (time.perf_counter() - t0) * 1e3
        del out
        if before is not None:
            peak = _proc_status_kib("VmHWM")
            if peak is not None:
                mem["peak_rss_delta_mib"] = max(0, peak - before) / 1024
        return ms, mem


def run_rounds(fns: dict[str, Callable[[], object]], meter: Meter, warmup: int, repeats: int,
               log: Callable[[str], None]) -> dict[str, dict]:
    """Warm-up rounds, then ``repeats`` rounds in which every function runs once.

    Returns {name: {"median_ms", "min_ms", "samples_ms", memory fields (max over calls)}}.
    """
    samples: dict[str, list[float]] = {n: [] for n in fns}
    memory: dict[str, dict] = {n: {} for n in fns}
    for r in range(warmup + repeats):
        t0 = time.perf_counter()
        for name, fn in fns.items():
            ms, mem = meter(fn)
            for key, val in mem.items():
                memory[name][key] = max(val, memory[name].get(key, 0.0))
            if r >= warmup:
                samples[name].append(ms)
        kind = "warm-up" if r < warmup else "timed"
        log(f"    round {r + 1}/{warmup + repeats} ({kind}) {time.perf_counter() - t0:.1f} s")
    return {
        n: {"median_ms": statistics.median(s), "min_ms": min(s), "samples_ms": s, **memory[n]}
        for n, s in samples.items()
    }


def _autocast(device, precision: str):
    return autocast(device, AMP_PRECISIONS.get(precision))


def _wrap(fn: Callable[[], object], device, precision: str) -> Callable[[], object]:
    def call():
        with torch.inference_mode(), _autocast(device, precision):
            return fn()

    return call


# ------------------------------------------------------------------------------ module rows


def _module_functions(preset: str, device, precisions: list[str], s: dict, notes: list[str]):
    """Build the networks and inputs of one preset; return the named timed functions."""

    gen = torch.Generator().manual_seed(0)

    def rand(*shape, normal=False):
        t = torch.randn(*shape, generator=gen) if normal else torch.rand(*shape, generator=gen)
        return t.to(device)

    image, _ = pad_divide_by(rand(1, 3, s["height"], s["width"], normal=True), 16)
    hp, wp = image.shape[-2:]
    h, w = hp // 16, wp // 16
    mask = rand(1, 1, hp, wp)
    s2m_in = torch.cat([image, mask, rand(1, 1, hp, wp), rand(1, 1, hp, wp)], dim=1)

    s2m = build_s2m(preset).eval().to(device)
    prop = build_propagation(preset).eval().to(device)
    fusion = build_fusion(preset).eval().to(device)
    ck, cv, t_mem, k = prop.key_dim, prop.value_dim, s["memory_frames"], s["top_k"]
    # the memory bank is kept in float32 (as InferenceCore keeps it)
    mem_key = rand(1, ck, t_mem, h, w, normal=True)
    mem_value = rand(1, cv, t_mem, h, w, normal=True)
    ref_key = rand(1, ck, h, w, normal=True)  # key of the interacted frame (fusion)
    diff = rand(1, 2, hp, wp)
    prev, curr = rand(1, 1, hp, wp), rand(1, 1, hp, wp)
    dist = torch.tensor([[0.4, 0.6]], device=device)

    fns: dict[str, Callable[[], object]] = {}
    mem_dtypes: dict[str, str] = {}
    for p in precisions:
        with torch.inference_mode(), _autocast(device, p):
            query = prop.encode_query(image)
        mk, mv = mem_key, mem_value
        with torch.inference_mode(), _autocast(device, p):
            try:
                prop.read(query.key, mk, mv, top_k=k)
                mem_dtypes[p] = "float32"
            except RuntimeError as err:
                # the read refused a float32 memory under autocast: keep the memory in the
                # autocast dtype instead (the top-k and full-softmax reads both use it)
                mk, mv = mem_key.to(query.key.dtype), mem_value.to(query.key.dtype)
                mem_dtypes[p] = str(query.key.dtype).replace("torch.", "")
                notes.append(
                    f"{preset} {device.type} {p}: read_memory(top_k) failed with a float32 "
                    f"memory under autocast ({str(err).splitlines()[0][:400]}); the memory "
                    f"is kept in {mem_dtypes[p]} for this precision's propagation rows")
            readout = prop.read(query.key, mk, mv, top_k=k)

        def bind(fn, p=p):
            return _wrap(fn, device, p)

        fns[f"s2m/{p}"] = bind(lambda: s2m(s2m_in))
        fns[f"encode_query/{p}"] = bind(lambda: prop.encode_query(image))
        fns[f"read_full/{p}"] = bind(lambda q=query, a=mk, b=mv: prop.read(q.key, a, b, None))
        fns[f"read_topk/{p}"] = bind(lambda q=query, a=mk, b=mv: prop.read(q.key, a, b, k))
        fns[f"baseline_read_full/{p}"] = bind(
            lambda q=query, a=mk, b=mv: baseline_dense_softmax_read(q.key, a, b))
        fns[f"baseline_read_topk/{p}"] = bind(
            lambda q=query, a=mk, b=mv: baseline_dense_topk_read(q.key, a, b, k))
        fns[f"decoder/{p}"] = bind(  # as in segment(): [readout, query value] -> decoder
            lambda q=query, r=readout: prop.decoder(torch.cat([r, q.value], dim=1), q.f8, q.f4))
        fns[f"encode_memory/{p}"] = bind(lambda: prop.encode_memory(image, mask, None))
        fns[f"attention_transfer/{p}"] = bind(
            lambda q=query: prop.attention_transfer(ref_key, q.key, diff))
        attn = torch.rand(1, 2, hp, wp, generator=gen).to(device)
        fns[f"fusion_net/{p}"] = bind(
            lambda a=attn: fusion(image, prev, curr, a, dist))
    shapes = {"padded_height": hp, "padded_width": wp, "grid": [h, w],
              "memory_positions": t_mem * h * w, "key_dim": ck, "value_dim": cv}
    return fns, mem_dtypes, shapes


def _merge_mem(parts: list[dict]) -> dict:
    out = {}
    for part in parts:
        for key in ("peak_mib", "peak_delta_mib", "peak_rss_delta_mib"):
            if key in part:
                out[key] = max(out.get(key, 0.0), part[key])
    return out


def module_rows(preset: str, device, precisions: list[str], s: dict, log, notes) -> list[dict]:
    fns, mem_dtypes, shapes = _module_functions(preset, device, precisions, s, notes)
    meter = Meter(device)
    log(f"  {preset} on {device.type}: {len(fns)} timed functions x "
        f"({s['warmup']} warm-up + {s['repeats']} timed) rounds")
    res = run_rounds(fns, meter, s["warmup"], s["repeats"], log)
    rows = []
    common = {"preset": preset, "device": device.type, "height": s["height"],
              "width": s["width"], "padded_height": shapes["padded_height"],
              "padded_width": shapes["padded_width"], "objects": 1}

    def med(name, p):
        return res[f"{name}/{p}"]["median_ms"]

    for p in precisions:
        rows.append({"module": "s2m", **common, "precision": p,
                     "ms_per_frame_per_object": med("s2m", p), "parts": {},
                     "samples_ms": res[f"s2m/{p}"]["samples_ms"],
                     **_merge_mem([res[f"s2m/{p}"]])})
        shared = ["encode_query", "decoder", "encode_memory"]
        for module, read, base in (("propagation", "read_full", "baseline_read_full"),
                                   ("propagation_topk", "read_topk", "baseline_read_topk")):
            parts = {"encode_query_ms": med("encode_query", p), "read_ms": med(read, p),
                     "decoder_ms": med("decoder", p),
                     "encode_memory_ms": med("encode_memory", p)}
            total = sum(parts.values())
            base_total = total - parts["read_ms"] + med(base, p)
            row = {"module": module, **common, "precision": p,
                   "ms_per_frame_per_object": total, "parts": parts,
                   "memory_frames": s["memory_frames"],
                   "memory_positions": shapes["memory_positions"],
                   "top_k": s["top_k"] if module == "propagation_topk" else None,
                   "memory_dtype": mem_dtypes[p],
                   "baseline": ("original dense top-k read (topk -> scatter into dense N x M "
                                "-> bmm)" if module == "propagation_topk" else
                                "original dense full-softmax read"),
                   "baseline_ms": base_total,
                   "baseline_parts": {"read_ms": med(base, p)},
                   "read_ratio": parts["read_ms"] / med(base, p),
                   **_merge_mem([res[f"{n}/{p}"] for n in shared + [read]])}
            rows.append(row)
        parts = {"attention_transfer_ms": med("attention_transfer", p),
                 "fusion_net_ms": med("fusion_net", p)}
        rows.append({"module": "fusion", **common, "precision": p,
                     "ms_per_frame_per_object": sum(parts.values()), "parts": parts,
                     **_merge_mem([res[f"{n}/{p}"] for n in ("attention_transfer", "fusion_net")])})
    full = {r["precision"]: r for r in rows if r["module"] == "propagation"}
    for r in rows:
        if r["module"] == "propagation_topk":
            r["topk_over_full_softmax"] = (r["ms_per_frame_per_object"]
                                           / full[r["precision"]]["ms_per_frame_per_object"])
    return rows


# ------------------------------------------------------------------------------ end to end


def _clip(n: int, h: int, w: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(h, w + 4 * n, 3), dtype=np.uint8)
    return np.stack([base[:, 4 * i: 4 * i + w] for i in range(n)])  # a slow pan


def _label_map(h: int, w: int, k: int, shift: int = 0):
    m = np.zeros((h, w), np.int64)
    for obj in range(1, k + 1):
        y0 = (h * obj) // (k + 2)
        x0 = (w * obj) // (k + 3) + shift
        m[y0: y0 + h // (k + 2), x0: x0 + w // 4] = obj
    return m


def _e2e_once(prop, fusion, frames, k: int, precision: str, top_k: int, meter: Meter):
    n, h, w = frames.shape[:3]
    cfg = InferenceConfig(top_k=top_k, fusion="diff", amp=long_amp_name(AMP_PRECISIONS.get(precision)))
    core = InferenceCore(prop, fusion, frames, num_objects=k, config=cfg, device=meter.device)
    ms_fwd, mem_fwd = meter(lambda: core.interact(_label_map(h, w, k), 0))
    masks_fwd = np.array(core.masks)
    ms_bwd, mem_bwd = meter(lambda: core.interact(_label_map(h, w, k, shift=w // 16), n - 1))
    masks_bwd = np.array(core.masks)
    return (ms_fwd, mem_fwd, n - 1, masks_fwd), (ms_bwd, mem_bwd, n - 2, masks_bwd)


def e2e_rows(preset: str, device, precisions: list[str], s: dict, log) -> list[dict]:
    prop = build_propagation(preset).eval().to(device)
    fusion = build_fusion(preset).eval().to(device)
    meter = Meter(device)
    n, k = s["e2e_frames"], s["e2e_objects"]
    frames = _clip(n, s["height"], s["width"])
    rows = []
    fp32_masks: dict[str, np.ndarray] = {}  # label maps of the fp32 run, to compare AMP with
    for p in precisions:
        common = {"preset": preset, "device": device.type, "precision": p, "objects": k,
                  "clip_frames": n, "height": s["height"], "width": s["width"],
                  "top_k": s["top_k"]}
        try:
            t0 = time.perf_counter()
            for _ in range(s["warmup"]):
                _e2e_once(prop, fusion, frames[:3], k, p, s["top_k"], meter)
            fwd, bwd = [], []
            for _ in range(s["e2e_repeats"]):
                a, b = _e2e_once(prop, fusion, frames, k, p, s["top_k"], meter)
                fwd.append(a)
                bwd.append(b)
            log(f"  e2e {preset} {device.type} {p}: {time.perf_counter() - t0:.1f} s")
        except RuntimeError as err:
            msg = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
            log(f"  e2e {preset} {device.type} {p}: FAILED {msg}")
            for module in ("e2e_propagation", "e2e_propagation_fusion"):
                rows.append({"module": module, **common, "error": msg})
            continue
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        for module, runs, what in (
                ("e2e_propagation", fwd, "interaction on frame 0, forward pass, no fusion"),
                ("e2e_propagation_fusion", bwd,
                 "interaction on the last frame, backward pass with difference-aware fusion")):
            per = [ms / (frames_done * k) for ms, _, frames_done, _ in runs]
            masks = runs[-1][3]
            if p == "fp32":
                fp32_masks[module] = masks
            agree = (float((masks == fp32_masks[module]).mean())
                     if p != "fp32" and module in fp32_masks else None)
            rows.append({"module": module, **common,
                         "ms_per_frame_per_object": statistics.median(per),
                         "frames_propagated": runs[0][2], "what": what,
                         "samples_ms": per, "parts": {},
                         "labels_equal_fp32": agree,
                         **_merge_mem([mem for _, mem, _, _ in runs])})
    return rows


# ------------------------------------------------------------------------------ architectures


def arch_rows(preset: str, device, s: dict, log) -> list[dict]:
    """Per-object cost of multi-object propagation for each architecture of ``s["archs"]``
    (see the module docstring): one row per (architecture, K)."""
    n, h, w = s.get("arch_frames") or s["e2e_frames"], s["height"], s["width"]
    frames = _clip(n, h, w)
    fns: dict[str, Callable[[], object]] = {}
    warm: dict[str, Callable[[], object]] = {}
    configs = {}
    nets = {}
    for arch in s["archs"]:
        torch.manual_seed(0)
        nets[arch] = build_propagation(preset, arch=arch).eval().to(device)
        configs[arch] = InferenceConfig.for_arch(arch, fusion="none")
    for k in s["arch_objects"]:  # architectures interleaved at each K
        for arch in s["archs"]:
            def run(net=nets[arch], cfg=configs[arch], k=k, clip=frames):
                core = InferenceCore(net, None, clip, num_objects=k, config=cfg, device=device)
                return core.interact(_label_map(h, w, k), 0)

            fns[f"{arch}/{k}"] = run
            warm[f"{arch}/{k}"] = functools.partial(run, clip=frames[:min(3, n)])
    # the first calls of a network pay one-time costs: warm-up rounds on a 3-frame clip
    warmup = max(1, s["warmup"])
    log(f"  architectures {preset} on {device.type}: {len(fns)} runs x ({warmup} warm-up on 3 "
        f"frames + {s['arch_repeats']} timed on {n}) rounds")
    meter = Meter(device)
    run_rounds(warm, meter, 0, warmup, log)
    res = run_rounds(fns, meter, 0, s["arch_repeats"], log)
    rows = []
    for arch in s["archs"]:
        for k in s["arch_objects"]:
            r = res[f"{arch}/{k}"]
            ms_frame = r["median_ms"] / (n - 1)
            rows.append({"module": "arch_propagation", "arch": arch, "preset": preset,
                         "device": device.type, "precision": "fp32", "objects": k,
                         "clip_frames": n, "frames_propagated": n - 1, "height": h, "width": w,
                         "top_k": configs[arch].top_k,
                         "include_last": configs[arch].include_last,
                         "ms_per_frame": ms_frame, "ms_per_frame_per_object": ms_frame / k,
                         "samples_ms": r["samples_ms"], **_merge_mem([r])})
    return rows


def arch_ratios(rows: list[dict]) -> list[dict]:
    """stcn / mivos of the per-object cost at each K and of the marginal cost per object, per
    (preset, device), where both architectures were measured."""
    index = {(r["preset"], r["device"], r["arch"], r["objects"]): r for r in rows}
    out = []
    for preset, device in dict.fromkeys((r["preset"], r["device"]) for r in rows):
        have = {a for (p, d, a, _) in index if (p, d) == (preset, device)}
        if not {"mivos", "stcn"} <= have:
            continue
        ks = sorted({k for (p, d, _, k) in index if (p, d) == (preset, device)})
        for k in ks:
            m = index.get((preset, device, "mivos", k))
            st = index.get((preset, device, "stcn", k))
            if m is None or st is None:
                continue
            out.append({"preset": preset, "device": device, "objects": k,
                        "mivos_ms_per_frame_per_object": m["ms_per_frame_per_object"],
                        "stcn_ms_per_frame_per_object": st["ms_per_frame_per_object"],
                        "stcn_over_mivos": (st["ms_per_frame_per_object"]
                                            / m["ms_per_frame_per_object"])})
        if len(ks) > 1:
            lo, hi = ks[0], ks[-1]

            def marginal(arch, lo=lo, hi=hi, preset=preset, device=device):
                a, b = index[(preset, device, arch, lo)], index[(preset, device, arch, hi)]
                return (b["ms_per_frame"] - a["ms_per_frame"]) / (hi - lo)

            mm, sm = marginal("mivos"), marginal("stcn")
            out.append({"preset": preset, "device": device, "objects": f"marginal {lo}->{hi}",
                        "mivos_ms_per_frame_per_object": mm,
                        "stcn_ms_per_frame_per_object": sm,
                        # a marginal cost at or below 0 is timing noise: no ratio
                        "stcn_over_mivos": sm / mm if mm > 0 and sm > 0 else None})
    return out


# ------------------------------------------------------------------------------ FLOPs and peak


def module_flops(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    """FLOPs (2 x multiply-accumulates) of one forward call of a convolution or linear layer;
    bias additions are not counted, nor is anything else (0 for other modules).

    Convolution: every output element sums ``in_channels / groups x kernel area`` products;
    transposed convolution: every input element feeds ``out_channels / groups x kernel area``
    outputs; linear: every output element sums ``in_features`` products.
    """
    if isinstance(module, nn.Linear):
        return 2 * output.numel() * module.in_features
    if isinstance(module, _TRANSPOSED_CONVS):
        area = math.prod(module.kernel_size)
        return 2 * inputs[0].numel() * (module.out_channels // module.groups) * area
    if isinstance(module, _CONVS):
        area = math.prod(module.kernel_size)
        return 2 * output.numel() * (module.in_channels // module.groups) * area
    return 0


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED_CONVS = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
#: the layers :class:`FlopCounter` hooks
COUNTED_LAYERS = (nn.Linear, *_CONVS, *_TRANSPOSED_CONVS)


class FlopCounter:
    """While active, counts the FLOPs (:func:`module_flops`) of every convolution and linear
    layer of ``networks`` through forward hooks; ``flops`` holds the total, ``calls`` the number
    of layer calls. Work outside such layers (the memory read's products, pooling,
    interpolation, normalisation) is not seen: add it analytically (:func:`read_flops`)."""

    def __init__(self, *networks: nn.Module) -> None:
        self.networks = networks
        self.flops = 0
        self.calls = 0
        self._handles: list = []

    def _hook(self, module, inputs, output) -> None:
        self.flops += module_flops(module, inputs, output)
        self.calls += 1

    def __enter__(self) -> FlopCounter:
        seen: set[int] = set()
        for net in self.networks:
            for m in net.modules():
                if isinstance(m, COUNTED_LAYERS) and id(m) not in seen:
                    seen.add(id(m))
                    self._handles.append(m.register_forward_hook(self._hook))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def count_flops(fn: Callable[[], object], *networks: nn.Module) -> int:
    """FLOPs of the convolution and linear layers of ``networks`` during one call of ``fn``."""
    with FlopCounter(*networks) as counter:
        fn()
    return counter.flops


def read_flops(batch: int, key_dim: int, value_dim: int, n_mem: int, m_query: int,
               top_k: int | None) -> int:
    """FLOPs of one memory read, counted analytically per batch item and query column: the
    affinity GEMM (``2 CK N``) and the value readout (``2 CV k`` with top-k, ``2 CV N`` with a
    full softmax). The normalisation (top-k selection, exponentials) is not counted."""
    kept = n_mem if top_k is None else min(top_k, n_mem)
    return 2 * batch * m_query * (key_dim * n_mem + value_dim * kept)


def measure_peak(device, gemm_size: int, conv_shape: tuple[int, int, int], warmup: int,
                 repeats: int, log: Callable[[str], None]) -> dict:
    """The machine's fp32 throughput with the current thread count, measured now: an
    ``n x n`` by ``n x n`` GEMM (``torch.mm``) and a 3x3 convolution ``C -> C`` on a
    ``1 x C x H x W`` input (padding 1), interleaved in rounds. Returns per kernel its shape,
    FLOPs, median / min ms and GFLOP/s at the median (``gflops``, the figure the stage fractions
    use) and at the minimum (``best_gflops``)."""
    gen = torch.Generator().manual_seed(2)
    n = gemm_size
    c, h, w = conv_shape
    a = torch.randn(n, n, generator=gen).to(device)
    b = torch.randn(n, n, generator=gen).to(device)
    x = torch.randn(1, c, h, w, generator=gen).to(device)
    weight = (torch.randn(c, c, 3, 3, generator=gen) / math.sqrt(9 * c)).to(device)
    fns = {"gemm": _wrap(lambda: torch.mm(a, b), device, "fp32"),
           "conv3x3": _wrap(lambda: F.conv2d(x, weight, padding=1), device, "fp32")}
    flops = {"gemm": 2 * n ** 3, "conv3x3": 2 * c * c * 9 * h * w}
    shapes = {"gemm": f"{n} x {n} x {n}", "conv3x3": f"{c} -> {c} channels, {h} x {w}"}
    log(f"  peak on {device.type}: GEMM {shapes['gemm']}, conv 3x3 {shapes['conv3x3']}, "
        f"({warmup} warm-up + {repeats} timed) rounds")
    res = run_rounds(fns, Meter(device), warmup, repeats, log)
    out = {"device": device.type, "threads": torch.get_num_threads(), "dtype": "float32"}
    for name, r in res.items():
        out[name] = {"shape": shapes[name], "flops": flops[name], "median_ms": r["median_ms"],
                     "min_ms": r["min_ms"], "samples_ms": r["samples_ms"],
                     "gflops": flops[name] / (r["median_ms"] * 1e6),
                     "best_gflops": flops[name] / (r["min_ms"] * 1e6)}
    return out


# ------------------------------------------------------------------------------ stages

STAGE_ORDER = ["encode_query", "memorize", "affinity_gemm", "affinity_gemm_reused",
               "memory_read", "read_decode", "fusion_pass", "s2m"]
STAGE_TITLES = {
    "encode_query": "query encoding",
    "memorize": "memorize (memory encoding, one object)",
    "affinity_gemm": "affinity GEMM alone (k_M^T k_Q of the read)",
    "affinity_gemm_reused": "affinity GEMM alone, into a reused output",
    "memory_read": "memory read, top-k",
    "read_decode": "read + decode",
    "fusion_pass": "fusion pass (attention read + FusionNet)",
    "s2m": "S2M interaction forward",
}
#: the memory read's goal: at most this many times the time of its affinity GEMM alone
READ_OVER_GEMM_GOAL = 1.3


def read_decode(prop, query, mem_key, mem_value, top_k):
    """OURS: read + decode of K objects in one call (:meth:`PropagationNetwork.segment`: one
    batched read, the decoder's skip branches run once for the frame)."""
    return prop.segment(query, mem_key, mem_value, top_k=top_k)


def baseline_read_decode(prop, query, mem_key, mem_value, top_k):
    """BASELINE: read + decode as the original MiVOS structures it, one object at a time: for
    each object the dense top-k read (:func:`baseline_dense_topk_read`), then the decoder on
    [readout, query value] with the frame's skip features, batch 1.
    query: QueryFeatures of batch 1; mem_key K x CK x T x h x w; mem_value K x CV x T x h x w
    -> logits K x 1 x H x W."""
    out = []
    for i in range(mem_key.shape[0]):
        readout = baseline_dense_topk_read(query.key, mem_key[i:i + 1], mem_value[i:i + 1], top_k)
        out.append(prop.decoder(torch.cat([readout, query.value], dim=1), query.f8, query.f4))
    return torch.cat(out, dim=0)


def fusion_pass(prop, fusion, ref_key, query_key, diff, image, prev, curr, dist):
    """OURS, as ``InferenceCore`` fuses a frame: one attention transfer for the K objects (the
    target frame's query key broadcast), then one FusionNet call on the K objects.
    ref_key K x CK x h x w (interacted frame); query_key 1 x CK x h x w; diff K x 2 x H x W;
    image 1 x 3 x H x W; prev, curr K x 1 x H x W; dist K x 2 -> logits K x 1 x H x W."""
    k = ref_key.shape[0]
    attn = prop.attention_transfer(ref_key, query_key, diff)
    return fusion(image.expand(k, -1, -1, -1), prev, curr, attn, dist)


def baseline_fusion_pass(prop, fusion, ref_key, query_key, diff, image, prev, curr, dist):
    """BASELINE: the fusion pass one object at a time, as the original: area-downsample the
    object's differences, dense full-softmax attention read (:func:`baseline_dense_softmax_read`),
    bilinear upsampling, FusionNet with batch 1. Shapes as :func:`fusion_pass`."""
    h, w = ref_key.shape[-2:]
    out = []
    for i in range(ref_key.shape[0]):
        small = F.interpolate(diff[i:i + 1], size=(h, w), mode="area")
        aligned = baseline_dense_softmax_read(query_key, ref_key[i:i + 1].unsqueeze(2),
                                              small.unsqueeze(2))
        attn = F.interpolate(aligned, size=diff.shape[-2:], mode="bilinear", align_corners=False)
        out.append(fusion(image, prev[i:i + 1], curr[i:i + 1], attn, dist[i:i + 1]))
    return torch.cat(out, dim=0)


def _stage_entries(preset: str, device, s: dict) -> tuple[list[dict], tuple, dict]:
    """Networks, inputs and the timed calls of the stage rows of one preset (fp32, batch 1
    frame). Each entry: name, stage, objects, fn, extra_flops (work outside conv / linear
    layers, counted analytically), and for stages with a baseline baseline_fn / baseline."""
    gen = torch.Generator().manual_seed(1)

    def rand(*shape, normal=False):
        t = torch.randn(*shape, generator=gen) if normal else torch.rand(*shape, generator=gen)
        return t.to(device)

    image, _ = pad_divide_by(rand(1, 3, s["height"], s["width"], normal=True), 16)
    hp, wp = image.shape[-2:]
    h, w = hp // 16, wp // 16
    kmax = max(s["stage_objects"])
    s2m = build_s2m(preset).eval().to(device)
    prop = build_propagation(preset).eval().to(device)
    fusion = build_fusion(preset).eval().to(device)
    ck, cv, t_mem, k = prop.key_dim, prop.value_dim, s["memory_frames"], s["top_k"]
    n_mem, m_query = t_mem * h * w, h * w
    mask = rand(1, 1, hp, wp)
    s2m_in = torch.cat([image, mask, rand(1, 1, hp, wp), rand(1, 1, hp, wp)], dim=1)
    mem_key = rand(kmax, ck, t_mem, h, w, normal=True)  # one memory per object (MiVOS)
    mem_value = rand(kmax, cv, t_mem, h, w, normal=True)
    # ours reads keys and values as the memory bank keeps them, one row per memory position
    # (B x N x C, passed transposed); the baselines get the original's contiguous B x C x T x h x w
    bank_key = mem_key.flatten(start_dim=2).transpose(1, 2).contiguous().transpose(1, 2)
    bank_value = mem_value.flatten(start_dim=2).transpose(1, 2).contiguous().transpose(1, 2)
    ref_key = rand(kmax, ck, h, w, normal=True)  # interacted frame's memory keys (fusion)
    diff = rand(kmax, 2, hp, wp)
    prev, curr = rand(kmax, 1, hp, wp), rand(kmax, 1, hp, wp)
    dist = torch.tensor([[0.4, 0.6]], device=device).expand(kmax, 2)
    with torch.inference_mode():
        query = prop.encode_query(image)
        scaled_query = (query.key.flatten(start_dim=2) / math.sqrt(ck)).contiguous()
    keys_flat = bank_key[:1]  # 1 x CK x N
    gemm_out = torch.empty(1, m_query, n_mem, device=device)

    entries = [
        {"name": "encode_query", "stage": "encode_query", "objects": 1,
         "fn": lambda: prop.encode_query(image), "extra_flops": 0},
        {"name": "memorize", "stage": "memorize", "objects": 1,
         "fn": lambda: prop.encode_memory(image, mask, None), "extra_flops": 0},
        {"name": "affinity_gemm", "stage": "affinity_gemm", "objects": 1,
         # the read's affinity product alone, in the read's layout (query-major, M x N)
         "fn": lambda: torch.bmm(scaled_query.transpose(1, 2), keys_flat),
         "extra_flops": 2 * ck * n_mem * m_query},
        {"name": "affinity_gemm_reused", "stage": "affinity_gemm_reused", "objects": 1,
         # the same product written into an output allocated once: the arithmetic alone
         "fn": lambda: torch.bmm(scaled_query.transpose(1, 2), keys_flat, out=gemm_out),
         "extra_flops": 2 * ck * n_mem * m_query},
        {"name": "memory_read", "stage": "memory_read", "objects": 1,
         "fn": lambda: prop.read(query.key, bank_key[:1], bank_value[:1], top_k=k),
         "extra_flops": read_flops(1, ck, cv, n_mem, m_query, k),
         "baseline": "original dense top-k read (top-k, scatter into a dense N x M, bmm)",
         "baseline_fn": lambda: baseline_dense_topk_read(query.key, mem_key[:1], mem_value[:1],
                                                         k)},
    ]
    for kk in s["stage_objects"]:
        entries.append({
            "name": f"read_decode/{kk}", "stage": "read_decode", "objects": kk,
            "fn": lambda kk=kk: read_decode(prop, query, bank_key[:kk], bank_value[:kk], k),
            "extra_flops": read_flops(kk, ck, cv, n_mem, m_query, k),
            "baseline": "per object: dense top-k read, then the decoder (batch 1)",
            "baseline_fn": lambda kk=kk: baseline_read_decode(prop, query, mem_key[:kk],
                                                              mem_value[:kk], k)})
    for kk in s["stage_objects"]:
        args = (ref_key[:kk], query.key, diff[:kk], image, prev[:kk], curr[:kk], dist[:kk])
        entries.append({
            "name": f"fusion_pass/{kk}", "stage": "fusion_pass", "objects": kk,
            "fn": lambda a=args: fusion_pass(prop, fusion, *a),
            # attention read of the 2 difference maps: full softmax over the h x w positions
            "extra_flops": read_flops(kk, ck, 2, m_query, m_query, None),
            "baseline": "per object: dense softmax attention read, then FusionNet (batch 1)",
            "baseline_fn": lambda a=args: baseline_fusion_pass(prop, fusion, *a)})
    entries.append({"name": "s2m", "stage": "s2m", "objects": 1, "fn": lambda: s2m(s2m_in),
                    "extra_flops": 0})
    shapes = {"padded_height": hp, "padded_width": wp, "grid": [h, w], "key_dim": ck,
              "value_dim": cv, "memory_positions": n_mem, "query_positions": m_query}
    return entries, (s2m, prop, fusion), shapes


def stage_rows(preset: str, device, s: dict, log) -> list[dict]:
    """Per stage of one preset (fp32): median ms, FLOPs (conv / linear layers through forward
    hooks + the reads analytically), GFLOP/s, and the baseline's time in the same rounds."""
    entries, nets, shapes = _stage_entries(preset, device, s)
    fns: dict[str, Callable[[], object]] = {}
    for e in entries:  # ours and its baseline next to each other in every round
        fns[e["name"]] = _wrap(e["fn"], device, "fp32")
        if "baseline_fn" in e:
            fns["baseline:" + e["name"]] = _wrap(e["baseline_fn"], device, "fp32")
    flops = {}
    t0 = time.perf_counter()
    for e in entries:  # one counted call each, which also warms the networks up
        flops[e["name"]] = count_flops(fns[e["name"]], *nets) + e["extra_flops"]
    # the GEMM and read rows take tens of ms against seconds for the networks: they get rounds
    # of their own, more of them, interleaved with each other (their ratio is a goal)
    read_names = {"affinity_gemm", "affinity_gemm_reused", "memory_read",
                  "baseline:memory_read"}
    read_fns = {n: f for n, f in fns.items() if n in read_names}
    other_fns = {n: f for n, f in fns.items() if n not in read_names}
    read_repeats = s.get("read_repeats", s["stage_repeats"])
    log(f"  stages {preset} on {device.type}: FLOPs counted in {time.perf_counter() - t0:.1f} s; "
        f"{len(other_fns)} timed functions x ({s['warmup']} warm-up + {s['stage_repeats']} "
        f"timed) rounds, then {len(read_fns)} x ({s['warmup']} + {read_repeats})")
    res = run_rounds(other_fns, Meter(device), s["warmup"], s["stage_repeats"], log)
    res.update(run_rounds(read_fns, Meter(device), s["warmup"], read_repeats, log))
    gemm_ms = res["affinity_gemm"]["median_ms"]
    gemm_reused_ms = res["affinity_gemm_reused"]["median_ms"]
    rows = []
    for e in entries:
        r = res[e["name"]]
        row = {"stage": e["stage"], "preset": preset, "device": device.type,
               "precision": "fp32", "objects": e["objects"], "height": s["height"],
               "width": s["width"], "memory_frames": s["memory_frames"], "top_k": s["top_k"],
               "median_ms": r["median_ms"], "min_ms": r["min_ms"], "samples_ms": r["samples_ms"],
               "flops": flops[e["name"]],
               "gflops": flops[e["name"]] / (r["median_ms"] * 1e6),
               **_merge_mem([r])}
        if "baseline_fn" in e:
            b = res["baseline:" + e["name"]]
            row.update(baseline=e["baseline"], baseline_ms=b["median_ms"],
                       baseline_samples_ms=b["samples_ms"],
                       baseline_over_ours=b["median_ms"] / r["median_ms"])
        if e["stage"] == "memory_read":
            row.update(gemm_ms=gemm_ms, read_over_gemm=r["median_ms"] / gemm_ms,
                       gemm_min_ms=res["affinity_gemm"]["min_ms"],
                       read_over_gemm_min=r["min_ms"] / res["affinity_gemm"]["min_ms"],
                       read_over_gemm_goal=READ_OVER_GEMM_GOAL, gemm_reused_ms=gemm_reused_ms,
                       read_over_gemm_reused=r["median_ms"] / gemm_reused_ms)
        row.update({key: shapes[key] for key in ("padded_height", "padded_width",
                                                 "memory_positions", "query_positions",
                                                 "key_dim", "value_dim")})
        rows.append(row)
    return rows


def add_peak_fractions(rows: list[dict], peaks: dict) -> None:
    """Fill ``frac_gemm_peak`` / ``frac_conv_peak``: a stage's GFLOP/s over the GEMM and the
    3x3-convolution throughput measured on its device in the same run."""
    for r in rows:
        peak = peaks.get(r["device"])
        for key, kernel in (("frac_gemm_peak", "gemm"), ("frac_conv_peak", "conv3x3")):
            g = (peak or {}).get(kernel, {}).get("gflops")
            r[key] = r["gflops"] / g if g else None
        g = (peak or {}).get("gemm", {}).get("gflops")
        if r["stage"] == "memory_read" and g:
            # the read over its affinity product run at the measured GEMM peak
            gemm_flops = 2 * r["key_dim"] * r["memory_positions"] * r["query_positions"]
            r["read_over_gemm_at_peak"] = r["median_ms"] / (gemm_flops / (g * 1e6))


# ------------------------------------------------------------------------------ long videos

#: the memory options of the long-video rows (InferenceConfig fields; README "memory options"):
#: uint8 probabilities kept with the label maps in a temporary file, 2 prepared frames cached
#: (the frames themselves come from a lazy reader), a bounded query-feature cache and a chunked
#: memory read
LONG_VIDEO_OPTIONS = {"prob_dtype": "uint8", "result_storage": "disk", "image_cache": 2,
                      "feature_cache_mb": 64.0, "memory_budget": 2**24}


class LazyFrames:
    """A video of T frames of H x W x 3 uint8 made on request (a slow pan over a fixed random
    texture), none of them kept: what a lazy reader of a folder or a video file hands over."""

    def __init__(self, t: int, h: int, w: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.texture = rng.integers(0, 256, size=(h, w + 2 * t, 3), dtype=np.uint8)
        self.t, self.h, self.w = t, h, w

    def __len__(self) -> int:
        return self.t

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < self.t:
            raise IndexError(i)
        return np.ascontiguousarray(self.texture[:, 2 * i: 2 * i + self.w])


def long_video_worker(spec: dict) -> dict:
    """One long-video configuration in this process: one object marked on frame 0 and
    propagated forward through ``spec["frames"]`` frames by :class:`InferenceCore` with
    ``spec["options"]`` (CPU, fp32, no fusion). Returns ms per propagated frame (in all, in the
    memory read, and without it) and the process's peak RSS (``VmHWM``) after building the
    network and at the end, in MiB."""
    import model.propagation as propagation_module

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    t, h, w = spec["frames"], spec["height"], spec["width"]
    prop = build_propagation(spec["preset"]).eval()
    cfg = InferenceConfig(top_k=spec["top_k"], fusion="none", **spec["options"])
    frames = LazyFrames(t, h, w)
    model_kib = _proc_status_kib("VmHWM")
    core = InferenceCore(prop, None, frames, num_objects=1, config=cfg, device="cpu")

    # the memory read's share: its cost grows with the memory (linearly in T, as the method
    # says); the rest of a frame's cost should not grow with T. Timed around the network's
    # read calls (put back at the end: the tests call this worker in their own process)
    read_seconds = [0.0]
    untimed_read = propagation_module.read_memory

    def timed_read(*args, **kwargs):
        t0 = time.perf_counter()
        out = untimed_read(*args, **kwargs)
        read_seconds[0] += time.perf_counter() - t0
        return out

    propagation_module.read_memory = timed_read
    try:
        t0 = time.perf_counter()
        core.interact(_label_map(h, w, 1), 0)
        seconds = time.perf_counter() - t0
    finally:
        propagation_module.read_memory = untimed_read
    peak_kib = _proc_status_kib("VmHWM")
    per_frame = 1e3 / max(1, t - 1)
    return {**spec, "frames_propagated": t - 1, "seconds": seconds,
            "ms_per_frame": seconds * per_frame,
            "read_ms_per_frame": read_seconds[0] * per_frame,
            "ms_per_frame_without_read": (seconds - read_seconds[0]) * per_frame,
            "peak_rss_mib": None if peak_kib is None else peak_kib / 1024,
            "model_rss_mib": None if model_kib is None else model_kib / 1024}


def parse_worker_output(stdout: str) -> dict:
    """The result of a long-video worker: the last line of its output that is a JSON object."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("the worker printed no JSON result")


def run_long_video(spec: dict, timeout: float) -> dict:
    """Run :func:`long_video_worker` in a fresh ``python benchmark.py --long-video-worker``
    process, so that its peak RSS is its own. Failures become a row with ``error``."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--long-video-worker", json.dumps(spec)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout:.0f} s"}
    if res.returncode != 0:
        tail = " | ".join((res.stderr or "").strip().splitlines()[-3:])
        reason = "killed (out of memory?)" if res.returncode in (-9, 137) else tail
        return {**spec, "error": f"exit {res.returncode}: {reason}"}
    try:
        return parse_worker_output(res.stdout)
    except ValueError as err:
        return {**spec, "error": str(err)}


def long_video_section(s: dict, log) -> dict:
    """Long-video rows (one fresh process per T, CPU) and the last-T / first-T ratios."""
    rows = []
    for t in s["long_video_frames"]:
        spec = {"frames": t, "preset": s["long_video_preset"], "height": s["long_video_height"],
                "width": s["long_video_width"], "objects": 1, "top_k": s["top_k"],
                "threads": torch.get_num_threads(), "options": dict(LONG_VIDEO_OPTIONS)}
        t0 = time.perf_counter()
        row = run_long_video(spec, s["long_video_timeout"])
        rows.append(row)
        if "error" in row:
            log(f"  long video T = {t}: FAILED {row['error']}")
        else:
            log(f"  long video T = {t}: {row['ms_per_frame']:.1f} ms/frame, peak RSS "
                f"{row['peak_rss_mib']:.0f} MiB ({time.perf_counter() - t0:.1f} s)")
    return {"rows": rows, "options": dict(LONG_VIDEO_OPTIONS), "ratios": long_video_ratios(rows)}


def long_video_ratios(rows: list[dict]) -> dict | None:
    """ms per frame and peak RSS of the longest video over the shortest one (both measured)."""
    ok = sorted((r for r in rows if "error" not in r), key=lambda r: r["frames"])
    if len(ok) < 2:
        return None
    lo, hi = ok[0], ok[-1]
    peak = (hi["peak_rss_mib"] / lo["peak_rss_mib"]
            if hi.get("peak_rss_mib") and lo.get("peak_rss_mib") else None)
    without_read = (hi["ms_per_frame_without_read"] / lo["ms_per_frame_without_read"]
                    if hi.get("ms_per_frame_without_read") and lo.get("ms_per_frame_without_read")
                    else None)
    return {"short_frames": lo["frames"], "long_frames": hi["frames"],
            "ms_per_frame_ratio": hi["ms_per_frame"] / lo["ms_per_frame"],
            "ms_per_frame_without_read_ratio": without_read,
            "peak_rss_ratio": peak}


# ------------------------------------------------------------------------------ ratios


def add_ratios(rows: list[dict]) -> None:
    """Fill ``amp_over_fp32`` everywhere, and ``baseline``/``baseline_ms``/``ratio`` where no
    module-specific baseline was measured (the fp32 time of the same module)."""
    fp32 = {(r["module"], r["preset"], r["device"]): r for r in rows
            if r["precision"] == "fp32" and "error" not in r}
    for r in rows:
        if "error" in r:
            continue
        ref = fp32.get((r["module"], r["preset"], r["device"]))
        r["amp_over_fp32"] = (r["ms_per_frame_per_object"] / ref["ms_per_frame_per_object"]
                              if ref is not None else None)
        if "baseline_ms" not in r:
            r["baseline"] = "fp32 (same module)"
            r["baseline_ms"] = ref["ms_per_frame_per_object"] if ref is not None else None
        r["ratio"] = (r["ms_per_frame_per_object"] / r["baseline_ms"]
                      if r.get("baseline_ms") else None)


# ------------------------------------------------------------------------------ Markdown


def _fmt(x, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, float):
        if abs(x) >= 100:
            return f"{x:.0f}"
        return f"{x:.{digits}f}"
    return str(x)


def _parts_text(parts: dict) -> str:
    short = {"encode_query_ms": "enc. query", "read_ms": "read", "decoder_ms": "decoder",
             "encode_memory_ms": "enc. memory", "attention_transfer_ms": "attention transfer",
             "fusion_net_ms": "FusionNet"}
    return ", ".join(f"{short.get(k, k)} {_fmt(v)}" for k, v in parts.items())


def _mem_text(r: dict) -> str:
    if "peak_mib" in r:
        return f"{r['peak_mib']:.0f} (+{r['peak_delta_mib']:.0f})"
    if "peak_rss_delta_mib" in r:
        return f"+{r['peak_rss_delta_mib']:.0f}"
    return "-"


def _arch_markdown(section: dict | None) -> list[str]:
    """The architecture comparison (empty when the JSON has none)."""
    if not section or not section.get("rows"):
        return []
    rows, ratios = section["rows"], section.get("ratios", [])
    first = rows[0]
    lines = ["## Architectures: cost per object, MiVOS and STCN", "",
             f"InferenceCore, one interaction on frame 0 propagated forward through a "
             f"{first['clip_frames']}-frame clip at {first['width']} x {first['height']} (no "
             "fusion; each architecture's defaults: top-k and temporary memory as listed), fp32, "
             "the median of the rounds (architectures interleaved).", "",
             "| preset | device | arch | top-k | temporary memory | objects | ms / frame | "
             "ms / frame / object | peak MiB |",
             "|---|---|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['preset']} | {r['device']} | {r['arch']} | {r['top_k']} | "
                     f"{'yes' if r['include_last'] else 'no'} | {r['objects']} | "
                     f"{_fmt(r['ms_per_frame'])} | {_fmt(r['ms_per_frame_per_object'])} | "
                     f"{_mem_text(r)} |")
    lines.append("")
    if ratios:
        lines += ["| preset | device | objects | mivos ms / frame / object | "
                  "stcn ms / frame / object | stcn / mivos |", "|---|---|---|---:|---:|---:|"]
        for r in ratios:
            lines.append(f"| {r['preset']} | {r['device']} | {r['objects']} | "
                         f"{_fmt(r['mivos_ms_per_frame_per_object'])} | "
                         f"{_fmt(r['stcn_ms_per_frame_per_object'])} | "
                         f"{_fmt(r['stcn_over_mivos'], 2)} |")
        lines += ["", "The marginal row is the cost of one more object: (ms / frame at the "
                  "largest K - at the smallest K) / (difference in K).", ""]
    return lines


def _pct(frac) -> str:
    return "-" if frac is None else f"{100 * frac:.1f}%"


def _gflop(flops) -> str:
    """FLOPs in GFLOP with three significant digits (small stages stay readable)."""
    return "-" if flops is None else f"{flops / 1e9:.3g}"


def _cpu_features_text(m: dict) -> str:
    flags = m.get("cpu_flags")
    if flags is None and "cpu_capability" not in m:
        return "not recorded (JSON of an earlier version)"
    have = ", ".join(f for f in CPU_FLAGS if (flags or {}).get(f)) if flags else "unreadable"
    native = m.get("native_bf16")
    return (f"torch CPU capability `{m.get('cpu_capability', '?')}`; flags present (of "
            f"{', '.join(CPU_FLAGS)}): {have or 'none'}; native bf16: "
            f"{'yes' if native else 'no' if native is not None else '?'}"
            + (f"; huge-page allocations: kernel THP mode `{m['transparent_huge_pages']}`, "
               f"`{HUGE_PAGES_ENV}={m.get(HUGE_PAGES_ENV)}` (`util/__init__.py`)"
               if "transparent_huge_pages" in m else ""))


def _peak_markdown(peaks: dict | None, s: dict) -> list[str]:
    if not peaks:
        return []
    lines = ["## Machine peak, measured in this run", "",
             f"fp32 kernels with the run's {s.get('threads')} torch threads, "
             f"{max(1, s.get('warmup', 1))} warm-up round(s), then the median of "
             f"{s.get('peak_repeats')} rounds (the two kernels interleaved). GFLOP/s = FLOPs / "
             "median time; *best* = at the fastest round. The stage fractions below divide by "
             "the median figures.", "",
             "| device | kernel | shape | GFLOP | median ms | GFLOP/s | best GFLOP/s |",
             "|---|---|---|---:|---:|---:|---:|"]
    for device, peak in peaks.items():
        for kernel, title in (("gemm", "GEMM (`torch.mm`)"), ("conv3x3", "3x3 conv")):
            k = peak.get(kernel)
            if not k:
                continue
            lines.append(f"| {device} | {title} | {k['shape']} | {_gflop(k['flops'])} | "
                         f"{_fmt(k['median_ms'])} | {_fmt(k['gflops'])} | "
                         f"{_fmt(k['best_gflops'])} |")
    lines.append("")
    return lines


def _stages_markdown(section: dict | None, s: dict) -> list[str]:
    if not section or not section.get("rows"):
        return []
    rows = section["rows"]
    first = rows[0]
    lines = [
        "## Stages: time, FLOPs, fraction of peak, baseline", "",
        f"fp32, one frame at {first['width']} x {first['height']} (padded "
        f"{first.get('padded_width')} x {first.get('padded_height')}), memory of "
        f"T = {first['memory_frames']} frames ({first.get('memory_positions')} positions, one "
        f"memory per object), top-k {first['top_k']}; random weights and inputs. "
        f"{s.get('warmup')} warm-up round(s), then the median of {s.get('stage_repeats')} "
        "rounds; in each round every stage and its baseline run once, next to each other"
        + (f". The affinity GEMM and memory read rows (tens of ms each) run in "
           f"{s['read_repeats']} rounds of their own, interleaved with each other and the "
           "read's baseline." if "read_repeats" in s else "."), "",
        "* **FLOPs** = 2 x multiply-accumulates of every `Conv2d` / `Linear` call, counted with "
        "forward hooks during one call of the stage, plus the memory reads counted analytically "
        "(affinity `2 CK N M`, readout `2 CV k M` with top-k or `2 CV N M` with the fusion's "
        "full softmax). Softmax, top-k selection, pooling and interpolation are not counted. "
        "**% of peak** = the stage's GFLOP/s over the GEMM / 3x3-conv GFLOP/s measured above "
        "on the same device.",
        "* **query encoding**: the query encoder and its key / value projections; **memorize**: "
        "the memory encoder on [image, mask, others] and its projections, one object; "
        "**affinity GEMM alone**: the read's `k_Q^T k_M` product (`torch.bmm`, M x CK by "
        "CK x N) and nothing else, its output allocated by the call (**into a reused output**: "
        "`out=` a tensor allocated once); **memory read**: `PropagationNetwork.read` with top-k, "
        "one object, keys and values laid out as the memory bank keeps them (one row per memory "
        "position); **read + decode** (K objects): `segment` (one batched read; the decoder's "
        "skip branches run once for the frame); **fusion pass** (K objects): the attention "
        "read of the K objects' difference maps and FusionNet on the K objects, as "
        "`InferenceCore` fuses a frame; **S2M**: one forward on [image, mask, pos, neg].",
        "* **baselines** (the original MiVOS structure restated simply, in `benchmark.py`): "
        "memory read: the dense top-k read (`baseline_dense_topk_read`: top-k, scatter into a "
        "dense N x M matrix, bmm); read + decode: a loop over the objects, each a dense top-k "
        "read then the decoder with batch 1 (`baseline_read_decode`); fusion pass: a loop over "
        "the objects, each a dense softmax attention read then FusionNet with batch 1 "
        "(`baseline_fusion_pass`). **baseline / ours** >= 1 means ours is at least as fast. "
        "The other stages have the original's structure already (no baseline).",
        "",
        "| preset | device | stage | objects | ms | GFLOP | GFLOP/s | % of GEMM peak | "
        "% of conv peak | baseline ms | baseline / ours |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['preset']} | {r['device']} | {STAGE_TITLES.get(r['stage'], r['stage'])} | "
            f"{r['objects']} | {_fmt(r['median_ms'])} | {_gflop(r['flops'])} | "
            f"{_fmt(r['gflops'])} | {_pct(r.get('frac_gemm_peak'))} | "
            f"{_pct(r.get('frac_conv_peak'))} | {_fmt(r.get('baseline_ms'))} | "
            f"{_fmt(r.get('baseline_over_ours'), 2)} |")
    lines.append("")
    reads = [r for r in rows if r["stage"] == "memory_read" and r.get("read_over_gemm")]
    if reads:
        goal = reads[0].get("read_over_gemm_goal", READ_OVER_GEMM_GOAL)
        lines += [f"Memory read against its affinity GEMM alone (goal: at most {goal:g}x): "
                  + "; ".join(
                      f"{r['preset']} {r['device']} **{r['read_over_gemm']:.2f}x** (read "
                      f"{_fmt(r['median_ms'])} ms, GEMM {_fmt(r['gemm_ms'])} ms; "
                      f"{'meets' if r['read_over_gemm'] <= goal else 'misses'} the goal"
                      + (f"; fastest rounds {r['read_over_gemm_min']:.2f}x"
                         if r.get("read_over_gemm_min") else "") + ")"
                      for r in reads) + ".", ""]
        if any(r.get("read_over_gemm_reused") for r in reads):
            lines += ["The GEMM alone allocates its M x N output at every call, as `torch.bmm` "
                      "does; the read writes its product into a per-thread scratch block "
                      "kept between calls: on the CPU with the native kernel, slabs of memory "
                      "positions (8 MiB at 480p) from which each column's top-k is merged while "
                      "the slab is in the cache (`model/memory.py`, `model/native.py`). "
                      "Against the arithmetic alone: "
                      + "; ".join(
                          f"{r['preset']} {r['device']} {r['read_over_gemm_reused']:.2f}x the "
                          f"GEMM into a reused output ({_fmt(r['gemm_reused_ms'])} ms)"
                          + (f", {r['read_over_gemm_at_peak']:.2f}x the GEMM's FLOPs at the "
                             "measured GEMM peak" if r.get("read_over_gemm_at_peak") else "")
                          for r in reads) + ".", ""]
    return lines


def _long_video_markdown(section: dict | None, s: dict) -> list[str]:
    if not section or not section.get("rows"):
        return []
    rows = section["rows"]
    opts = section.get("options", {})
    first = rows[0]
    lines = [
        "## Long videos: ms per frame and peak memory", "",
        f"`InferenceCore` (preset `{first['preset']}`, {first['objects']} object, fp32, top-k "
        f"{first['top_k']}, no fusion) on a {first['width']} x {first['height']} video of T "
        "frames made on demand by a lazy reader: one interaction on frame 0 propagated forward "
        "through the whole video, so the memory grows to 1 + (T-1) / "
        f"{InferenceConfig().mem_every} frames (plus the temporary previous frame). Memory "
        "options on: "
        + ", ".join(f"`{k}={v}`" for k, v in opts.items())
        + ". Each T runs in a fresh process (`python benchmark.py --long-video-worker ...`) "
        f"with the run's {first.get('threads')} threads; peak RSS is that process's `VmHWM` "
        "(`/proc/self/status`), whole process, after building the network and at the end. "
        "ms / frame = the interaction's wall time / (T - 1); one run per T. The memory read's "
        "share (timed around the network's read calls) grows with the memory, as the method "
        "says; the rest of a frame's cost should not grow with T.", "",
        "| T | preset | frame size | ms / frame | of which memory read | ms / frame without the "
        "read | peak RSS (MiB) | RSS after building the network (MiB) | seconds |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        size = f"{r['width']} x {r['height']}"
        if "error" in r:
            lines.append(f"| {r['frames']} | {r['preset']} | {size} | failed: {r['error']} | - "
                         "| - | - | - | - |")
            continue
        lines.append(f"| {r['frames']} | {r['preset']} | {size} | {_fmt(r['ms_per_frame'])} | "
                     f"{_fmt(r.get('read_ms_per_frame'))} | "
                     f"{_fmt(r.get('ms_per_frame_without_read'))} | "
                     f"{_fmt(r.get('peak_rss_mib'))} | {_fmt(r.get('model_rss_mib'))} | "
                     f"{_fmt(r['seconds'])} |")
    lines.append("")
    ratio = section.get("ratios")
    if ratio:
        lines += [f"T = {ratio['long_frames']} against T = {ratio['short_frames']}: ms per frame "
                  f"x{_fmt(ratio['ms_per_frame_ratio'], 2)}, without the memory read "
                  f"**x{_fmt(ratio.get('ms_per_frame_without_read_ratio'), 2)}** (goal: at most "
                  f"x1.3), peak RSS **x{_fmt(ratio.get('peak_rss_ratio'), 2)}** (goal: at most "
                  "x1.2).", ""]
    return lines


def inference_memory_markdown(path: Path) -> list[str]:
    """The peak-memory-vs-length/resolution table of scripts/bench_inference_memory.py."""
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
        results = data["results"]
        info = data.get("info", {})
    except (OSError, ValueError, KeyError, TypeError):
        return [f"(`{path.name}` exists but could not be read.)", ""]
    lines = [
        "## Peak memory against video length and resolution",
        "",
        f"From `{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}`, produced by "
        "`scripts/bench_inference_memory.py` (see `docs/INFERENCE_MEMORY.md` for the full "
        "description), included here unchanged: whole-process peak RSS of a fresh process per "
        f"row; machine {info.get('machine', '?')}, preset `{info.get('preset', '?')}`, "
        f"{info.get('objects', '?')} objects. `original` keeps what the original implementation "
        "keeps (all frames, float32 probabilities, whole-affinity reads); `bounded` uses this "
        "project's memory options.",
        "",
        "| frames | resolution | run | setup | peak RSS (GiB) | s / frame | note |",
        "|---:|---|---|---|---:|---:|---|",
    ]
    for r in results:
        err = r.get("error")
        peak = "-" if err else _fmt(r.get("peak_rss_gib"), 2)
        spf = "-" if err else _fmt(r.get("seconds_per_frame"), 2)
        lines.append(f"| {r.get('frames', '?')} | {r.get('resolution', '?')} | "
                     f"{r.get('kind', '?')} | {r.get('setup', '?')} | {peak} | {spf} | "
                     f"{err or ''} |")
    lines.append("")
    return lines


def to_markdown(result: dict, inference_memory_json: Path | None) -> str:
    m, s, rows = result["machine"], result["settings"], result["rows"]
    load = s.get("load_average_1min", {})
    cores = m.get("usable_cores") or m.get("cores") or 1
    # the benchmark's own threads raise the load while it runs, so only the load found at the
    # start says whether other processes were competing for the cores
    shared = (load.get("start") or 0.0) > 0.75 * cores
    gpu = f"; CUDA device {m['cuda_device']}" if m.get("cuda_device") else "; no CUDA device"
    command = f"python benchmark.py {' '.join(s.get('argv', []))}".strip()
    took = (f" The run took {s['seconds'] / 60:.1f} min." if s.get("seconds") else "")
    lines = [
        "# Speed benchmark (the paper's Table 3)",
        "",
        f"Produced by `{command}`"
        + (" (quick smoke sizes, not representative)" if s.get("quick") else "") + "; the same "
        f"command regenerates this page and its JSON.{took} `python benchmark.py --from-json "
        "JSON --markdown MD` re-renders the page from the JSON without measuring.",
        "",
        f"* machine: {m['cpu']}, {m['cores']} logical cores ({m.get('usable_cores')} usable), "
        f"{m.get('ram_gib')} GiB RAM, torch {m['torch']}, python {m.get('python')}, "
        f"{s.get('threads')} torch threads{gpu}",
        f"* CPU features: {_cpu_features_text(m)}",
        f"* 1-minute load average: {load.get('start')} at the start, {load.get('end')} at the "
        "end" + (f" — **the machine was shared** (load from other processes at the start "
                 f"above 0.75 x the {cores} usable cores), so absolute CPU times are inflated and noisy; "
                 "ratios compare variants timed in the same interleaved rounds"
                 if shared else ""),
        f"* input {s['width']} x {s['height']} (zero-padded to {s.get('padded_width')} x "
        f"{s.get('padded_height')}), one object per module row, memory of "
        f"**T = {s['memory_frames']} frames** ({s.get('memory_positions')} positions for "
        f"`mivos`/`lite` alike), top-k {s['top_k']}; random weights and inputs",
        f"* timing: {s['warmup']} warm-up round(s), then the median of {s['repeats']} rounds; in "
        "each round every timed function of a preset runs once (interleaved); CPU wall clock "
        "(`time.perf_counter`), CUDA events with `torch.cuda.synchronize`",
        "* precisions: `fp32`; `amp-bf16` = `torch.autocast` with bfloat16 (CPU and CUDA), "
        "`amp-fp16` = autocast float16 (CUDA only). **bf16 figures need bf16 hardware**: on a "
        "CPU, AVX512-BF16 or AMX-BF16 (`util.amp.native_bf16`); without it autocast emulates "
        "bf16 and runs slower than fp32, so the CPU `amp-bf16` rows are skipped there (a note "
        "says so) unless `--force-emulated-bf16` is given"
        + (f"; in this run they were **skipped**: {s['bf16']['reason']}"
           if s.get("bf16", {}).get("cpu_rows_skipped") else
           "; in this run they ran with **emulated** bf16" if
           s.get("bf16", {}).get("forced_emulated") else ""),
        "",
        "What a row measures (ms per frame per object):",
        "",
        "* **s2m**: one S2M forward on `[image, mask, pos, neg]` (6 channels).",
        "* **propagation** / **propagation_topk**: one propagated frame = query encoding + memory "
        "read (full softmax, or top-k) + decoder, plus the memory encoding of one frame (a frame "
        "is memorised every step); the parts are timed separately and the total is their sum.",
        "* **fusion**: attention transfer (interacted frame's differences aligned through the "
        "memory affinity) + FusionNet.",
        f"* **e2e_***: `InferenceCore` on a {s['e2e_frames']}-frame clip at the same resolution "
        f"with {s['e2e_objects']} objects: `interact` on frame 0 (forward pass over the other "
        f"{s['e2e_frames'] - 1} frames, no fusion), then on the last frame (backward pass over "
        f"{s['e2e_frames'] - 2} frames with difference-aware fusion); wall time of the call / "
        "(frames x objects). It includes everything the core does (padding, aggregation, "
        "storage, memory management); the networks see all objects in one batch.",
        "",
        "Baselines (`ratio` = time / baseline time; below 1 = faster than the baseline):",
        "",
        "* **propagation_topk**: the same frame with the read replaced by the original's dense "
        "top-k read (`baseline_dense_topk_read` in `benchmark.py`: top-k, scatter into a dense "
        "N x M matrix, bmm); **propagation**: the original dense full-softmax read "
        "(`baseline_dense_softmax_read`). The read-only ratio is given as well.",
        "* everything else: the fp32 time of the same module, i.e. for AMP rows the AMP / fp32 "
        "ratio (fp32 rows: 1). The `AMP/fp32` column gives it for every row.",
        "* peak memory: CUDA `torch.cuda.max_memory_allocated` in MiB (in brackets: above what "
        "was allocated before the call); CPU: `+N` = increase of the process peak RSS over the "
        "RSS before the call, MiB (glibc `malloc_trim` first, then the peak is reset via "
        "`/proc/self/clear_refs`; memory the allocator still caches is not counted); max over "
        "the parts and calls of a row.",
        "",
        "Reference: the paper (Cheng, Tai, Tang, CVPR 2021) reports the running time of each "
        "module at 480p on an RTX 2080Ti in its Table 3; see the paper's Table 3 for the exact "
        "figures (they are not copied here). Ours run random weights with the same "
        "architectures; CPU numbers are not comparable with the paper's GPU numbers.",
        "",
    ]
    notes = list(result.get("notes", []))
    failures: dict[str, list[str]] = {}
    for r in rows:
        if "error" in r:
            failures.setdefault(r["error"], [])
            what = f"{r['module']} {r['preset']} {r['device']} {r['precision']}"
            failures[r["error"]].append(what)
    for err, which in failures.items():
        notes.append(f"failed ({', '.join(which)}): `{err}`")
    if any("per_sample_weights" in n for n in notes):
        notes.append(
            "the `per_sample_weights` failure comes from the top-k readout of "
            "`model/memory.py` (`embedding_bag`) under CPU bfloat16 autocast: the top-k weights "
            "are bfloat16 while `InferenceCore` keeps the memory values in float32. It happens "
            "only when the memory holds more than k positions, so small test videos do not "
            "show it. The module rows above therefore use a bfloat16 memory for AMP.")
    if notes:
        lines += ["Notes from this run:", ""] + [f"* {n}" for n in notes] + [""]
    missing = [name for name, key in (("machine peak", "peak"), ("stages", "stages"),
                                      ("long videos", "long_video")) if key not in result]
    if missing and "stage_repeats" not in s:
        lines += [f"(This JSON was written by an earlier version of `benchmark.py`: it has no "
                  f"{', '.join(missing)} section; run the command above to add them.)", ""]
    lines += _peak_markdown(result.get("peak"), s)
    lines += _stages_markdown(result.get("stages"), s)
    lines += _long_video_markdown(result.get("long_video"), s)

    # summary: one line per (preset, module), one column per (device, precision)
    combos = []
    for r in rows:
        c = (r["device"], r["precision"])
        if c not in combos:
            combos.append(c)
    lines += ["## Summary: ms per frame per object", "",
              "| preset | module | " + " | ".join(f"{d} {p}" for d, p in combos) + " |",
              "|---|---|" + "---:|" * len(combos)]
    presets = []
    for r in rows:
        if r["preset"] not in presets:
            presets.append(r["preset"])
    index = {(r["preset"], r["module"], r["device"], r["precision"]): r for r in rows}
    for preset in presets:
        for module in MODULE_ORDER:
            cells = []
            for d, p in combos:
                r = index.get((preset, module, d, p))
                cells.append("-" if r is None else
                             ("failed" if "error" in r else _fmt(r["ms_per_frame_per_object"])))
            if any(c != "-" for c in cells):
                label = MODULE_TITLES[module]
                if module.startswith("propagation"):
                    label += f", T = {s['memory_frames']}"
                lines.append(f"| {preset} | {label} | " + " | ".join(cells) + " |")
    lines.append("")

    lines += ["## Modules: parts, baselines, ratios, memory", "",
              "| module | preset | device | precision | ms / frame / object | parts (ms) | "
              "baseline | baseline ms | ratio | read-only ratio | AMP/fp32 | peak MiB |",
              "|---|---|---|---|---:|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["module"].startswith("e2e") or "error" in r:
            continue
        base = r.get("baseline", "")
        base = ("dense top-k read" if "top-k" in base else
                "dense softmax read" if "softmax" in base else base)
        module = r["module"]
        if module == "propagation_topk":
            module += f" (k = {r['top_k']})"
        if r.get("memory_dtype") not in (None, "float32"):
            module += f" [memory {r['memory_dtype']}]"
        lines.append(
            f"| {module} | {r['preset']} | {r['device']} | {r['precision']} | "
            f"{_fmt(r['ms_per_frame_per_object'])} | {_parts_text(r.get('parts', {}))} | "
            f"{base} | {_fmt(r.get('baseline_ms'))} | {_fmt(r.get('ratio'), 2)} | "
            f"{_fmt(r.get('read_ratio'), 2)} | {_fmt(r.get('amp_over_fp32'), 2)} | "
            f"{_mem_text(r)} |")
    lines.append("")
    topk = [r for r in rows if r["module"] == "propagation_topk" and "error" not in r]
    if topk:
        lines += ["Top-k vs full softmax (whole propagated frame, same run): " + "; ".join(
            f"{r['preset']} {r['device']} {r['precision']} {r['topk_over_full_softmax']:.2f}"
            for r in topk) + ".", ""]

    e2e = [r for r in rows if r["module"].startswith("e2e")]
    if e2e:
        lines += ["## End to end: InferenceCore", "",
                  "*AMP/fp32*: time of the AMP run over the fp32 run (below 1: AMP is faster). "
                  "*labels = fp32*: share of the label pixels of every frame, after the "
                  "interaction, that equal the fp32 run's (same inputs; with random weights many "
                  "pixels are near ties, which makes this stricter than with trained weights).",
                  "",
                  "| pass | preset | device | precision | frames x objects | "
                  "ms / frame / object | AMP/fp32 | labels = fp32 | peak MiB |",
                  "|---|---|---|---|---:|---:|---:|---:|---:|"]
        for r in e2e:
            label = "forward, no fusion" if r["module"] == "e2e_propagation" else \
                "backward, with fusion"
            if "error" in r:
                lines.append(f"| {label} | {r['preset']} | {r['device']} | {r['precision']} | "
                             "- | failed (see the notes) | - | - | - |")
                continue
            agree = r.get("labels_equal_fp32")
            lines.append(
                f"| {label} | {r['preset']} | {r['device']} | {r['precision']} | "
                f"{r['frames_propagated']} x {r['objects']} | "
                f"{_fmt(r['ms_per_frame_per_object'])} | {_fmt(r.get('amp_over_fp32'), 2)} | "
                f"{'-' if agree is None else f'{100 * agree:.3f} %'} | {_mem_text(r)} |")
        lines.append("")
    lines += _arch_markdown(result.get("architectures"))
    if inference_memory_json is not None:
        extra = inference_memory_markdown(Path(inference_memory_json))
        if extra:
            lines += extra
        else:
            lines += ["(The peak-memory-vs-length/resolution table of "
                      "`scripts/bench_inference_memory.py` is added here when "
                      "`docs/inference_memory.json` exists: re-run `python benchmark.py "
                      "--from-json docs/benchmark_cpu.json --markdown docs/BENCHMARKS.md`.)", ""]
    lines.append("Raw numbers (all samples, minima, parts): the JSON written with `--json`.")
    lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ main


def _write_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmark.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="tiny smoke sizes: 224 x 128, T = 3, lite only, 1 repeat, no warm-up, "
                        "4-frame clip, long videos of 4 and 8 frames, a 1024 GEMM peak (every "
                        "row type, about a minute on 2 idle CPU cores)")
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="cpu",
                   help="cpu, cuda, or all (CPU, then CUDA when torch.cuda.is_available())")
    p.add_argument("--presets", nargs="+", choices=["mivos", "lite"],
                   help="architecture presets (default: mivos lite; --quick: lite)")
    p.add_argument("--precisions", nargs="+", choices=["fp32", "amp", "amp-bf16", "amp-fp16"],
                   default=["fp32", "amp"],
                   help="fp32 and/or autocast; 'amp' = bf16 on CPU, fp16 and bf16 on CUDA "
                        "(amp-fp16 is skipped on CPU)")
    p.add_argument("--height", type=int, help="frame height (default 480; --quick 128)")
    p.add_argument("--width", type=int, help="frame width (default 854; --quick 224)")
    p.add_argument("--memory-frames", "-T", type=int,
                   help="frames in the propagation memory (default 10; --quick 3)")
    p.add_argument("--top-k", type=int, default=50, help="k of the top-k read (default 50)")
    p.add_argument("--repeats", type=int, help="timed rounds, median reported (default 5)")
    p.add_argument("--warmup", type=int, help="untimed warm-up rounds (default 1; --quick 0)")
    p.add_argument("--e2e-frames", type=int, help="frames of the end-to-end clip (default 10)")
    p.add_argument("--e2e-objects", type=int, help="objects of the end-to-end clip (default 2)")
    p.add_argument("--e2e-repeats", type=int, help="timed end-to-end runs (default 1)")
    p.add_argument("--no-e2e", action="store_true", help="skip the InferenceCore rows")
    p.add_argument("--arch", nargs="+", choices=list(PROPAGATION_ARCHS),
                   default=list(PROPAGATION_ARCHS), dest="archs",
                   help="propagation architectures of the per-object cost comparison (default: "
                        "mivos stcn, side by side with the stcn / mivos ratio)")
    p.add_argument("--arch-objects", nargs="+", type=int, default=list(ARCH_OBJECTS),
                   help="object counts of the comparison (default: 1 2 4)")
    p.add_argument("--arch-repeats", type=int,
                   help="timed rounds of the comparison, median reported (default 3; --quick 2)")
    p.add_argument("--arch-frames", type=int,
                   help="frames of the comparison's clip (default 6; --quick 4)")
    p.add_argument("--no-arch", action="store_true",
                   help="skip the architecture comparison")
    p.add_argument("--stage-objects", nargs="+", type=int, default=list(STAGE_OBJECTS),
                   help="objects of the read + decode and fusion-pass stage rows (default: "
                        "1 2 4)")
    p.add_argument("--stage-repeats", type=int,
                   help="timed rounds of the stage rows, median reported (default 3; --quick 1)")
    p.add_argument("--read-repeats", type=int,
                   help="timed rounds of the affinity GEMM and memory read stage rows, which "
                        "run in rounds of their own (default 15; --quick 2)")
    p.add_argument("--no-stages", action="store_true",
                   help="skip the stage rows (time, FLOPs, fraction of peak, baselines); the "
                        "machine peak is still measured")
    p.add_argument("--peak-gemm", type=int, metavar="N",
                   help="size of the peak GEMM, N x N by N x N fp32 (default 2048; --quick 1024)")
    p.add_argument("--peak-conv", type=int, nargs=3, metavar=("C", "H", "W"),
                   help="peak 3x3 convolution C -> C channels on C x H x W (default 256 60 108; "
                        "--quick 128 30 54)")
    p.add_argument("--peak-repeats", type=int,
                   help="timed rounds of the peak kernels (default 5; --quick 2)")
    p.add_argument("--long-video-frames", nargs="+", type=int, metavar="T",
                   help="video lengths of the long-video rows, each in a fresh process "
                        "(default 20 60 200; --quick 4 8)")
    p.add_argument("--long-video-preset", choices=["mivos", "lite"],
                   help="preset of the long-video rows (default lite)")
    p.add_argument("--long-video-height", type=int,
                   help="frame height of the long-video rows (default: --height)")
    p.add_argument("--long-video-width", type=int,
                   help="frame width of the long-video rows (default: --width)")
    p.add_argument("--long-video-timeout", type=float, default=3600.0,
                   help="seconds a long-video process may run (default 3600)")
    p.add_argument("--no-long-video", action="store_true", help="skip the long-video rows")
    p.add_argument("--force-emulated-bf16", action="store_true",
                   help="run the CPU amp-bf16 rows even where the CPU has no native bf16 "
                        "(AVX512-BF16 / AMX); by default they are skipped there, with a note")
    p.add_argument("--long-video-worker", metavar="SPEC_JSON", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int,
                   help="torch CPU threads (default: torch's own choice); restored on return")
    p.add_argument("--json", metavar="OUT.json", help="write machine, settings and rows as JSON")
    p.add_argument("--markdown", metavar="OUT.md", help="write the Markdown report")
    p.add_argument("--inference-memory-json", default=str(DEFAULT_INFERENCE_MEMORY_JSON),
                   help="JSON of scripts/bench_inference_memory.py to include in the Markdown "
                        "when it exists (default docs/inference_memory.json; never regenerated)")
    p.add_argument("--from-json", metavar="IN.json",
                   help="measure nothing: re-render --markdown from a JSON written earlier")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def _settings(args, argv) -> dict:
    defaults = QUICK_DEFAULTS if args.quick else FULL_DEFAULTS
    s = {key: getattr(args, key) if getattr(args, key, None) is not None else val
         for key, val in defaults.items()}
    s.update(top_k=args.top_k, quick=args.quick, argv=list(argv),
             e2e=not args.no_e2e, arch=not args.no_arch, archs=list(dict.fromkeys(args.archs)),
             arch_objects=sorted(set(args.arch_objects)), stages=not args.no_stages,
             stage_objects=sorted(set(args.stage_objects)), long_video=not args.no_long_video,
             long_video_height=args.long_video_height or s["height"],
             long_video_width=args.long_video_width or s["width"],
             long_video_timeout=args.long_video_timeout,
             force_emulated_bf16=args.force_emulated_bf16)
    s["peak_conv"] = list(s["peak_conv"])
    s["long_video_frames"] = sorted(set(s["long_video_frames"]))
    for key in ("height", "width", "memory_frames", "repeats", "e2e_frames", "e2e_objects",
                "e2e_repeats", "arch_repeats", "stage_repeats", "read_repeats", "peak_gemm",
                "peak_repeats",
                "arch_frames",
                "long_video_height", "long_video_width"):
        if s[key] < 1:
            raise SystemExit(f"--{key.replace('_', '-')} must be >= 1")
    if min(s["peak_conv"]) < 1:
        raise SystemExit("--peak-conv values must be >= 1")
    if min(s["stage_objects"]) < 1:
        raise SystemExit("--stage-objects must be >= 1")
    if min(s["long_video_frames"]) < 2:
        raise SystemExit("--long-video-frames must be >= 2")
    if s["warmup"] < 0:
        raise SystemExit("--warmup must be >= 0")
    if s["e2e_frames"] < 3:
        raise SystemExit("--e2e-frames must be >= 3 (one pass each way)")
    if s["arch_frames"] < 2:
        raise SystemExit("--arch-frames must be >= 2")
    if min(s["arch_objects"]) < 1:
        raise SystemExit("--arch-objects must be >= 1")
    return s


def _precisions_for(device, requested: list[str], cpu_bf16: bool = True) -> list[str]:
    """The precisions measured on ``device``: fp32 always; ``amp`` = bf16 on CPU, fp16 and
    bf16 on CUDA; fp16 never on CPU; bf16 on CPU only when ``cpu_bf16`` (native bf16, or
    forced)."""
    out = []
    for p in requested:
        names = (["amp-bf16"] if device.type == "cpu" else ["amp-fp16", "amp-bf16"]) \
            if p == "amp" else [p]
        for name in names:
            if name == "amp-fp16" and device.type == "cpu":
                continue
            if name == "amp-bf16" and device.type == "cpu" and not cpu_bf16:
                continue
            if name not in out:
                out.append(name)
    if "fp32" not in out:
        out.insert(0, "fp32")  # the AMP/fp32 ratio needs the fp32 time
    return out


def run_benchmark(s: dict, devices: list, requested_precisions: list[str], log) -> dict:
    s["load_average_1min"] = {"start": load_average()}
    rows: list[dict] = []
    archs: list[dict] = []
    stages: list[dict] = []
    peaks: dict[str, dict] = {}
    notes: list[str] = []
    started = time.perf_counter()
    sections: dict[str, float] = {}
    skip = bf16_skip_reason()
    cpu_bf16 = skip is None or s.get("force_emulated_bf16", False)
    s["bf16"] = {"native": skip is None, "forced_emulated": skip is not None and cpu_bf16,
                 "cpu_rows_skipped": False, "reason": skip}
    for device in devices:
        precisions = _precisions_for(device, requested_precisions, cpu_bf16)
        s.setdefault("precisions", {})[device.type] = precisions
        if device.type == "cpu" and skip is not None:
            wanted = _precisions_for(device, requested_precisions, True)
            if cpu_bf16:
                notes.append(f"the CPU amp-bf16 rows were run with emulated bf16 "
                             f"(--force-emulated-bf16): {skip}")
            elif "amp-bf16" in wanted:
                s["bf16"]["cpu_rows_skipped"] = True
                notes.append(f"the CPU amp-bf16 rows were skipped: {skip}. "
                             "`--force-emulated-bf16` runs them anyway")
        t0 = time.perf_counter()
        peaks[device.type] = measure_peak(device, s["peak_gemm"], tuple(s["peak_conv"]),
                                          max(1, s["warmup"]), s["peak_repeats"], log)
        sections[f"peak {device.type}"] = time.perf_counter() - t0
        if s.get("stages", True):
            for preset in s["presets"]:
                log(f"{preset} on {device}: stages")
                t0 = time.perf_counter()
                stages += stage_rows(preset, device, s, log)
                sections[f"stages {preset} {device.type}"] = time.perf_counter() - t0
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        for preset in s["presets"]:
            log(f"{preset} on {device}: modules ({', '.join(precisions)})")
            t0 = time.perf_counter()
            rows += module_rows(preset, device, precisions, s, log, notes)
            sections[f"modules {preset} {device.type}"] = time.perf_counter() - t0
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if s["e2e"]:
            for preset in s["presets"]:
                log(f"{preset} on {device}: end to end")
                t0 = time.perf_counter()
                rows += e2e_rows(preset, device, precisions, s, log)
                sections[f"e2e {preset} {device.type}"] = time.perf_counter() - t0
        if s["arch"]:
            for preset in s["presets"]:
                log(f"{preset} on {device}: architectures {' '.join(s['archs'])}")
                t0 = time.perf_counter()
                archs += arch_rows(preset, device, s, log)
                sections[f"architectures {preset} {device.type}"] = time.perf_counter() - t0
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    long_video = None
    if s.get("long_video", True) and any(d.type == "cpu" for d in devices):
        log(f"long videos: T = {' '.join(map(str, s['long_video_frames']))}, "
            f"{s['long_video_preset']}, {s['long_video_width']} x {s['long_video_height']}")
        t0 = time.perf_counter()
        long_video = long_video_section(s, log)
        sections["long videos"] = time.perf_counter() - t0
    add_ratios(rows)
    add_peak_fractions(stages, peaks)
    s["load_average_1min"]["end"] = load_average()
    s["seconds"] = round(time.perf_counter() - started, 1)
    first = next((r for r in rows if "padded_height" in r), {})
    s["padded_height"], s["padded_width"] = first.get("padded_height"), first.get("padded_width")
    s["memory_positions"] = next((r["memory_positions"] for r in rows
                                  if "memory_positions" in r), None)
    s["timing"] = ("CPU: time.perf_counter around each call; CUDA: CUDA events + "
                   "torch.cuda.synchronize; warm-up rounds then the median of the timed rounds, "
                   "functions interleaved within each round")
    s["section_seconds"] = {k: round(v, 1) for k, v in sections.items()}
    machine = machine_info()
    result = {"machine": machine, "settings": s, "notes": notes, "rows": rows, "peak": peaks}
    if stages:
        result["stages"] = {"rows": stages}
    if archs:
        result["architectures"] = {"rows": archs, "ratios": arch_ratios(archs)}
    if long_video is not None:
        result["long_video"] = long_video
    return result


def _check_json_safe(obj):
    """Replace non-finite floats by None so that the file is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _check_json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_check_json_safe(v) for v in obj]
    return obj


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.long_video_worker:
        print(json.dumps(_check_json_safe(long_video_worker(json.loads(args.long_video_worker))),
                         allow_nan=False), flush=True)
        return 0

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, flush=True)

    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
        if not args.markdown:
            raise SystemExit("--from-json needs --markdown")
        _write_atomic(args.markdown, to_markdown(result, args.inference_memory_json))
        log(f"wrote {args.markdown}")
        return 0

    s = _settings(args, argv)
    devices = []
    if args.device in ("cpu", "all"):
        devices.append(torch.device("cpu"))
    if args.device in ("cuda", "all"):
        if torch.cuda.is_available():
            devices.append(torch.device("cuda", torch.cuda.current_device()))
        elif args.device == "cuda":
            raise SystemExit("--device cuda: torch.cuda.is_available() is False")
        else:
            log("no CUDA device: CPU only")

    old_threads = torch.get_num_threads()
    old_env = os.environ.get(ALLOW_EMULATED_BF16_ENV)
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        s["threads"] = torch.get_num_threads()
        if args.force_emulated_bf16:
            # InferenceCore (the end-to-end rows) would otherwise run emulated bf16 in float32
            os.environ[ALLOW_EMULATED_BF16_ENV] = "1"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            result = run_benchmark(s, devices, args.precisions, log)
    finally:
        torch.set_num_threads(old_threads)
        if old_env is None:
            os.environ.pop(ALLOW_EMULATED_BF16_ENV, None)
        else:
            os.environ[ALLOW_EMULATED_BF16_ENV] = old_env

    result = _check_json_safe(result)
    for r in result["rows"]:
        if "error" in r:
            log(f"{r['module']:24s} {r['preset']:6s} {r['device']:5s} {r['precision']:9s} "
                f"FAILED {r['error']}")
        else:
            log(f"{r['module']:24s} {r['preset']:6s} {r['device']:5s} {r['precision']:9s} "
                f"{r['ms_per_frame_per_object']:10.1f} ms/frame/object  ratio "
                f"{_fmt(r.get('ratio'), 2)} vs {r.get('baseline')}")
    section = result.get("architectures", {})
    for r in section.get("rows", []):
        log(f"{'propagation ' + r['arch']:24s} {r['preset']:6s} {r['device']:5s} "
            f"{r['objects']} obj    {r['ms_per_frame_per_object']:10.1f} ms/frame/object "
            f"({r['ms_per_frame']:.1f} ms/frame)")
    for r in section.get("ratios", []):
        log(f"stcn/mivos per object    {r['preset']:6s} {r['device']:5s} {r['objects']}: "
            f"{_fmt(r['stcn_over_mivos'], 2)}")
    for device, peak in result.get("peak", {}).items():
        log(f"peak {device}: GEMM {_fmt(peak['gemm']['gflops'])} GFLOP/s, conv 3x3 "
            f"{_fmt(peak['conv3x3']['gflops'])} GFLOP/s")
    for r in result.get("stages", {}).get("rows", []):
        extra = (f"  baseline/ours {_fmt(r['baseline_over_ours'], 2)}"
                 if r.get("baseline_over_ours") else "")
        if r.get("read_over_gemm"):
            extra += f"  read/GEMM {_fmt(r['read_over_gemm'], 2)}"
        log(f"stage {r['stage']:18s} {r['preset']:6s} {r['device']:5s} {r['objects']} obj "
            f"{r['median_ms']:10.1f} ms {_fmt(r['gflops'])} GFLOP/s "
            f"({_pct(r.get('frac_conv_peak'))} of conv peak){extra}")
    for r in result.get("long_video", {}).get("rows", []):
        if "error" in r:
            log(f"long video T = {r['frames']}: FAILED {r['error']}")
        else:
            log(f"long video T = {r['frames']:<4d} {r['ms_per_frame']:10.1f} ms/frame, peak RSS "
                f"{_fmt(r.get('peak_rss_mib'))} MiB")
    log(f"benchmark: {result['settings']['seconds']:.0f} s ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in result["settings"]["section_seconds"].items())
        + ")")
    if args.json:
        _write_atomic(args.json, json.dumps(result, indent=1, allow_nan=False) + "\n")
        log(f"wrote {args.json}")
    if args.markdown:
        _write_atomic(args.markdown, to_markdown(result, args.inference_memory_json))
        log(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
