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
:class:`InferenceCore` interaction on the first frame of the end-to-end clip propagated forward
(no fusion; each architecture's defaults: top-k 50 and the previous frame as temporary memory
for mivos, top-k 20 and no temporary memory for stcn), fp32. Rows: ms per frame and ms per
frame per object; ``ratios``: stcn / mivos of the per-object cost at each K, and of the marginal
cost of one more object ((ms per frame at the largest K - at the smallest K) / (K difference)).
STCN's keys do not depend on the masks, so one key encoding and one affinity per frame serve
every object, and an object adds only a value encoding (ResNet-18), its read and its decoder.
The variants run interleaved within each round (at least one warm-up round, then
``--arch-repeats`` rounds, median).

Baselines measured in the same run (``baseline_ms``; ``ratio`` = ms / baseline_ms, so a ratio
below 1 means faster than the baseline):

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

    python benchmark.py --quick                                  # < 1 min smoke run, CPU
    python benchmark.py --device cpu --threads 2 \\
        --json docs/benchmark_cpu.json --markdown docs/BENCHMARKS.md
    python benchmark.py --device all --json bench_gpu.json       # CPU, then CUDA if present
    python benchmark.py --from-json docs/benchmark_cpu.json --markdown docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from inference.inference_core import InferenceConfig, InferenceCore
from model.presets import PROPAGATION_ARCHS, build_fusion, build_propagation, build_s2m
from util.amp import autocast, long_amp_name
from util.tensor_util import pad_divide_by

ROOT = Path(__file__).resolve().parent
DEFAULT_INFERENCE_MEMORY_JSON = ROOT / "docs" / "inference_memory.json"

FULL_DEFAULTS = dict(height=480, width=854, memory_frames=10, presets=["mivos", "lite"],
                     repeats=5, warmup=1, e2e_frames=10, e2e_objects=2, e2e_repeats=1,
                     arch_repeats=3)
QUICK_DEFAULTS = dict(height=128, width=224, memory_frames=3, presets=["lite"],
                      repeats=1, warmup=0, e2e_frames=4, e2e_objects=2, e2e_repeats=1,
                      arch_repeats=2)
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


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


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


def machine_info() -> dict:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "ram_gib": _ram_gib(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


# ------------------------------------------------------------------------------ measuring


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
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
    ms_bwd, mem_bwd = meter(lambda: core.interact(_label_map(h, w, k, shift=w // 16), n - 1))
    return (ms_fwd, mem_fwd, n - 1), (ms_bwd, mem_bwd, n - 2)


def e2e_rows(preset: str, device, precisions: list[str], s: dict, log) -> list[dict]:
    prop = build_propagation(preset).eval().to(device)
    fusion = build_fusion(preset).eval().to(device)
    meter = Meter(device)
    n, k = s["e2e_frames"], s["e2e_objects"]
    frames = _clip(n, s["height"], s["width"])
    rows = []
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
            per = [ms / (frames_done * k) for ms, _, frames_done in runs]
            rows.append({"module": module, **common,
                         "ms_per_frame_per_object": statistics.median(per),
                         "frames_propagated": runs[0][2], "what": what,
                         "samples_ms": per, "parts": {},
                         **_merge_mem([mem for _, mem, _ in runs])})
    return rows


# ------------------------------------------------------------------------------ architectures


def arch_rows(preset: str, device, s: dict, log) -> list[dict]:
    """Per-object cost of multi-object propagation for each architecture of ``s["archs"]``
    (see the module docstring): one row per (architecture, K)."""
    n, h, w = s["e2e_frames"], s["height"], s["width"]
    frames = _clip(n, h, w)
    fns: dict[str, Callable[[], object]] = {}
    configs = {}
    nets = {}
    for arch in s["archs"]:
        torch.manual_seed(0)
        nets[arch] = build_propagation(preset, arch=arch).eval().to(device)
        configs[arch] = InferenceConfig.for_arch(arch, fusion="none")
    for k in s["arch_objects"]:  # architectures interleaved at each K
        for arch in s["archs"]:
            def run(net=nets[arch], cfg=configs[arch], k=k):
                core = InferenceCore(net, None, frames, num_objects=k, config=cfg, device=device)
                return core.interact(_label_map(h, w, k), 0)

            fns[f"{arch}/{k}"] = run
    warmup = max(1, s["warmup"])  # the first calls of a network pay one-time costs
    log(f"  architectures {preset} on {device.type}: {len(fns)} runs x ({warmup} warm-up + "
        f"{s['arch_repeats']} timed) rounds")
    res = run_rounds(fns, Meter(device), warmup, s["arch_repeats"], log)
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
                        "stcn_over_mivos": sm / mm if mm > 0 else None})
    return out


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
    lines = [
        "# Speed benchmark (the paper's Table 3)",
        "",
        f"Produced by `python benchmark.py {' '.join(s.get('argv', []))}`"
        + (" (quick smoke sizes, not representative)" if s.get("quick") else "") + ".",
        "",
        f"* machine: {m['cpu']}, {m['cores']} logical cores ({m.get('usable_cores')} usable), "
        f"{m.get('ram_gib')} GiB RAM, torch {m['torch']}, python {m.get('python')}, "
        f"{s.get('threads')} torch threads{gpu}",
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
        "`amp-fp16` = autocast float16 (CUDA only)",
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
                  "| pass | preset | device | precision | frames x objects | "
                  "ms / frame / object | AMP/fp32 | peak MiB |",
                  "|---|---|---|---|---:|---:|---:|---:|"]
        for r in e2e:
            label = "forward, no fusion" if r["module"] == "e2e_propagation" else \
                "backward, with fusion"
            if "error" in r:
                lines.append(f"| {label} | {r['preset']} | {r['device']} | {r['precision']} | "
                             "- | failed (see the notes) | - | - |")
                continue
            lines.append(
                f"| {label} | {r['preset']} | {r['device']} | {r['precision']} | "
                f"{r['frames_propagated']} x {r['objects']} | "
                f"{_fmt(r['ms_per_frame_per_object'])} | {_fmt(r.get('amp_over_fp32'), 2)} | "
                f"{_mem_text(r)} |")
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
                        "4-frame clip (every row type, well under a minute on 2 CPU cores)")
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
    p.add_argument("--no-arch", action="store_true",
                   help="skip the architecture comparison")
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
             arch_objects=sorted(set(args.arch_objects)))
    for key in ("height", "width", "memory_frames", "repeats", "e2e_frames", "e2e_objects",
                "e2e_repeats", "arch_repeats"):
        if s[key] < 1:
            raise SystemExit(f"--{key.replace('_', '-')} must be >= 1")
    if s["warmup"] < 0:
        raise SystemExit("--warmup must be >= 0")
    if s["e2e_frames"] < 3:
        raise SystemExit("--e2e-frames must be >= 3 (one pass each way)")
    if min(s["arch_objects"]) < 1:
        raise SystemExit("--arch-objects must be >= 1")
    return s


def _precisions_for(device, requested: list[str]) -> list[str]:
    out = []
    for p in requested:
        names = (["amp-bf16"] if device.type == "cpu" else ["amp-fp16", "amp-bf16"]) \
            if p == "amp" else [p]
        for name in names:
            if name == "amp-fp16" and device.type == "cpu":
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
    notes: list[str] = []
    started = time.perf_counter()
    for device in devices:
        precisions = _precisions_for(device, requested_precisions)
        s.setdefault("precisions", {})[device.type] = precisions
        for preset in s["presets"]:
            log(f"{preset} on {device}: modules ({', '.join(precisions)})")
            rows += module_rows(preset, device, precisions, s, log, notes)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if s["e2e"]:
            for preset in s["presets"]:
                log(f"{preset} on {device}: end to end")
                rows += e2e_rows(preset, device, precisions, s, log)
        if s["arch"]:
            for preset in s["presets"]:
                log(f"{preset} on {device}: architectures {' '.join(s['archs'])}")
                archs += arch_rows(preset, device, s, log)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    add_ratios(rows)
    s["load_average_1min"]["end"] = load_average()
    s["seconds"] = round(time.perf_counter() - started, 1)
    first = next((r for r in rows if "padded_height" in r), {})
    s["padded_height"], s["padded_width"] = first.get("padded_height"), first.get("padded_width")
    s["memory_positions"] = next((r["memory_positions"] for r in rows
                                  if "memory_positions" in r), None)
    s["timing"] = ("CPU: time.perf_counter around each call; CUDA: CUDA events + "
                   "torch.cuda.synchronize; warm-up rounds then the median of the timed rounds, "
                   "functions interleaved within each round")
    machine = machine_info()
    result = {"machine": machine, "settings": s, "notes": notes, "rows": rows}
    if archs:
        result["architectures"] = {"rows": archs, "ratios": arch_ratios(archs)}
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
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        s["threads"] = torch.get_num_threads()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            result = run_benchmark(s, devices, args.precisions, log)
    finally:
        torch.set_num_threads(old_threads)

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
    if args.json:
        _write_atomic(args.json, json.dumps(result, indent=1, allow_nan=False) + "\n")
        log(f"wrote {args.json}")
    if args.markdown:
        _write_atomic(args.markdown, to_markdown(result, args.inference_memory_json))
        log(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
