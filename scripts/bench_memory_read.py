"""Micro-benchmark of the memory read (REFERENCE.md b.4), per object per frame (batch 1).

Compares
  (a) the original dense top-k read: full N x M affinity, top-k over the memory axis, the k
      weights scattered into a zeroed N x M matrix, then a dense ``CV x N`` by ``N x M`` product;
  (b) ``model.memory.read_memory``: where the native top-k kernel is available (model/native.py)
      the streamed read (affinity in cache-sized slabs of memory positions, each merged into
      every column's running top-k), else query-chunked affinity and the grouped top-k; then
      the sparse gather readout;
  (c) the same with the kernel turned off (``MIVOS_NATIVE=0``): the query-chunked read, also
      with a budget of about four chunks;
  (d) the affinity product alone (``torch.bmm``, M x CK by CK x N), the floor of any read.

For each memory length T it reports the time of the whole read and of the readout step alone
(from the top-k indices and weights to the ``CV x M`` result), the theoretical size of the
largest intermediate, the max abs difference between (a) and (b), and the speed-up ratios.
A second, smaller table compares the full-softmax (training) path unchunked vs chunked.

    python scripts/bench_memory_read.py --json docs/bench_memory_read.json \
        --markdown docs/BENCH_MEMORY_READ.md
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import native  # noqa: E402
from model.memory import (  # noqa: E402
    DEFAULT_MAX_ELEMENTS,
    NATIVE_TOPK_MIN_RATIO,
    STREAM_SLAB_ELEMENTS,
    _gather_readout,
    _value_rows,
    query_chunk_size,
    read_memory,
)
from util.device import cpu_model  # noqa: E402

FULL = {"h": 30, "w": 54, "ck": 128, "cv": 512, "t_values": [5, 20]}
QUICK = {"h": 12, "w": 20, "ck": 64, "cv": 128, "t_values": [5]}


# ------------------------------------------------------------------------------ the original


def dense_topk_weights(mem_key, query_key, top_k):
    """Original-style dense weights ``B x N x M`` (top-k scattered into a zeroed buffer)."""
    ck = mem_key.shape[1]
    aff = torch.einsum("bcn,bcm->bnm", mem_key, query_key / math.sqrt(ck))
    values, indices = torch.topk(aff, k=top_k, dim=1)
    weights = torch.exp(values - values[:, :1])  # each column's own maximum
    weights /= weights.sum(dim=1, keepdim=True)
    return aff.zero_().scatter_(1, indices, weights)  # reuse the affinity buffer


def dense_read(mem_key, mem_value, query_key, top_k):
    return torch.bmm(mem_value, dense_topk_weights(mem_key, query_key, top_k))


def dense_readout(mem_value, indices, weights, n_mem):
    """Readout step of the original: scatter into a dense N x M matrix, then bmm."""
    batch, _, m = indices.shape
    dense = torch.zeros(batch, n_mem, m, dtype=weights.dtype, device=weights.device)
    return torch.bmm(mem_value, dense.scatter_(1, indices, weights))


def sparse_readout(mem_value, indices_qm, weights_qm, n_mem):
    """Readout step of model.memory: weighted sum of the k value rows per query position."""
    batch, cv, _ = mem_value.shape
    rows = mem_value.transpose(1, 2).reshape(batch * n_mem, cv).contiguous()  # N x CV copy
    out = _gather_readout(rows, indices_qm, weights_qm, n_mem)
    return out.view(batch, -1, cv).transpose(1, 2)


def native_readout(mem_value, indices_qm, weights_qm, n_mem):
    """The streamed read's readout (model.native.readout): the same sums, written straight
    into ``B x CV x M``; values as the bank keeps them (no layout copy when they are rows)."""
    rows, step = _value_rows(mem_value)
    return native.readout(rows, step, indices_qm, weights_qm, n_mem)


def dense_full_softmax(mem_key, mem_value, query_key):
    ck = mem_key.shape[1]
    aff = torch.einsum("bcn,bcm->bnm", mem_key, query_key / math.sqrt(ck))
    return torch.bmm(mem_value, torch.softmax(aff, dim=1))


@contextlib.contextmanager
def kernel_off():
    """The native top-k kernel turned off (``MIVOS_NATIVE=0``) inside the block."""
    old = os.environ.get(native.NATIVE_ENV)
    os.environ[native.NATIVE_ENV] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(native.NATIVE_ENV, None)
        else:
            os.environ[native.NATIVE_ENV] = old


def chunked_read(*args, **kwargs):
    with kernel_off():
        return read_memory(*args, **kwargs)


# ------------------------------------------------------------------------------ timing


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_many(fns, device, repeats):
    """Wall time in ms of each function: ``{name: (median, min)}``.

    One warm-up call each, then ``repeats`` rounds in which every function runs once, so that
    load changes on a shared machine affect all variants alike.
    """
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    _sync(device)
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: (statistics.median(t), min(t)) for name, t in times.items()}


def peak_bytes(fn, device):
    """Measured peak extra allocation on CUDA; None on CPU (not measurable cheaply)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def machine_info(device):
    info = {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    if hasattr(os, "getloadavg"):
        info["load_average_1min_at_start"] = round(os.getloadavg()[0], 2)
    return info


# ------------------------------------------------------------------------------ benchmark


def bench_one(cfg, t_frames, top_k, device, repeats, seed):
    h, w, ck, cv = cfg["h"], cfg["w"], cfg["ck"], cfg["cv"]
    n_mem, m_query = t_frames * h * w, h * w
    gen = torch.Generator().manual_seed(seed)
    mem_key = torch.randn(1, ck, n_mem, generator=gen).to(device)
    mem_value = torch.randn(1, cv, n_mem, generator=gen).to(device)
    query_key = torch.randn(1, ck, m_query, generator=gen).to(device)
    # the same values stored N x CV and passed as a transposed view (no copy in the read)
    mem_value_ncv = mem_value.transpose(1, 2).contiguous().transpose(1, 2)
    elt = mem_key.element_size()
    small_budget = max(1, n_mem * m_query // 4)  # about four query chunks

    with torch.no_grad():
        ref = dense_read(mem_key, mem_value, query_key, top_k)
        ours = read_memory(mem_key, mem_value, query_key, top_k=top_k)
        diff = (ref - ours).abs()
        diff_chunked = float((ref - chunked_read(mem_key, mem_value, query_key, top_k=top_k,
                                                 max_elements=small_budget)).abs().max())
        streamed_equals_chunked = bool(torch.equal(
            ours, chunked_read(mem_key, mem_value, query_key, top_k=top_k)))
        scaled_query_t = (query_key / math.sqrt(ck)).transpose(1, 2)

        # shared top-k for timing the readout step alone
        aff_nm = torch.einsum("bcn,bcm->bnm", mem_key, query_key / math.sqrt(ck))
        vals, idx = torch.topk(aff_nm, k=top_k, dim=1)
        wts = torch.softmax(vals, dim=1)
        del aff_nm
        idx_qm = idx.transpose(1, 2).contiguous()
        wts_qm = wts.transpose(1, 2).contiguous()
        # do both layouts select the same top-k sets? (they can differ only on near-ties)
        aff_mn = torch.bmm((query_key / math.sqrt(ck)).transpose(1, 2), mem_key)
        idx_ours = torch.topk(aff_mn, k=top_k, dim=2).indices
        del aff_mn
        mismatch = int((idx_ours.sort(dim=2).values
                        != idx_qm.sort(dim=2).values).any(dim=2).sum())
        readout_diff = float(
            (dense_readout(mem_value, idx, wts, n_mem)
             - sparse_readout(mem_value, idx_qm, wts_qm, n_mem)).abs().max()
        )

        def run_dense():
            return dense_read(mem_key, mem_value, query_key, top_k)

        def run_ours():
            return read_memory(mem_key, mem_value, query_key, top_k=top_k)

        totals = time_many({
            "dense": run_dense,
            "ours": run_ours,
            "gemm": lambda: torch.bmm(scaled_query_t, mem_key),
            "ours_no_kernel": lambda: chunked_read(mem_key, mem_value, query_key, top_k=top_k),
            "ours_4_chunks": lambda: chunked_read(mem_key, mem_value, query_key, top_k=top_k,
                                                  max_elements=small_budget),
            "ours_values_ncv": lambda: read_memory(mem_key, mem_value_ncv, query_key,
                                                   top_k=top_k),
        }, device, repeats)
        readout_fns = {
            "dense": lambda: dense_readout(mem_value, idx, wts, n_mem),
            "ours": lambda: sparse_readout(mem_value, idx_qm, wts_qm, n_mem),
            "ours_values_ncv": lambda: sparse_readout(mem_value_ncv, idx_qm, wts_qm, n_mem),
        }
        native_equal = None
        if (device.type == "cpu" and native.topk_library() is not None
                and native.readout_matches_library()):
            readout_fns["native_values_ncv"] = lambda: native_readout(mem_value_ncv, idx_qm,
                                                                      wts_qm, n_mem)
            native_equal = bool(torch.equal(
                native_readout(mem_value_ncv, idx_qm, wts_qm, n_mem),
                sparse_readout(mem_value_ncv, idx_qm, wts_qm, n_mem)))
        readouts = time_many(readout_fns, device, repeats)
        dense_peak = peak_bytes(run_dense, device)
        ours_peak = peak_bytes(run_ours, device)

    chunk = min(m_query, query_chunk_size(1, n_mem, None))
    streamed = (native.topk_library() is not None and device.type == "cpu"
                and n_mem >= NATIVE_TOPK_MIN_RATIO * top_k)
    slab = min(n_mem, max(64, STREAM_SLAB_ELEMENTS // m_query // 64 * 64))
    row = {
        "streamed": streamed,
        "slab_positions": slab if streamed else None,
        "T": t_frames,
        "N": n_mem,
        "M": m_query,
        "CK": ck,
        "CV": cv,
        "top_k": top_k,
        "query_chunk": chunk,
        "small_budget": small_budget,
        "small_budget_query_chunk": query_chunk_size(1, n_mem, small_budget),
    }
    for name, (med, low) in totals.items():
        row[f"{name}_total_ms_median"] = med
        row[f"{name}_total_ms_min"] = low
    for name, (med, low) in readouts.items():
        row[f"{name}_readout_ms_median"] = med
        row[f"{name}_readout_ms_min"] = low
    row.update({
        "total_speedup": totals["dense"][0] / totals["ours"][0],
        "ours_over_gemm": totals["ours"][0] / totals["gemm"][0],
        "ours_values_ncv_over_gemm": totals["ours_values_ncv"][0] / totals["gemm"][0],
        "no_kernel_over_gemm": totals["ours_no_kernel"][0] / totals["gemm"][0],
        "streamed_equals_chunked": streamed_equals_chunked,
        "readout_speedup": readouts["dense"][0] / readouts["ours"][0],
        "total_speedup_values_ncv": totals["dense"][0] / totals["ours_values_ncv"][0],
        "readout_speedup_values_ncv": readouts["dense"][0] / readouts["ours_values_ncv"][0],
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "topk_set_mismatch_columns": mismatch,
        "max_abs_diff_4_chunks": diff_chunked,
        "readout_max_abs_diff": readout_diff,
        "native_readout_equals_embedding_bag": native_equal,
        "dense_readout_gflop": 2.0 * n_mem * m_query * cv / 1e9,
        "sparse_readout_gflop": 2.0 * top_k * m_query * cv / 1e9,
        "affinity_gflop": 2.0 * n_mem * m_query * ck / 1e9,
        # theoretical largest single intermediate
        "dense_largest_intermediate_bytes": n_mem * m_query * elt,  # N x M affinity/weights
        "ours_largest_intermediate_bytes": max(
            (slab * m_query if streamed else chunk * n_mem) * elt,  # affinity slab / block
            n_mem * cv * elt,  # values laid out N x CV
            m_query * cv * elt,  # readout
        ),
        "ours_4_chunks_largest_intermediate_bytes": max(
            row["small_budget_query_chunk"] * n_mem * elt, n_mem * cv * elt, m_query * cv * elt
        ),
        "dense_peak_bytes_measured": dense_peak,
        "ours_peak_bytes_measured": ours_peak,
    })
    return row


def bench_full_softmax(cfg, t_frames, device, repeats, seed):
    """Training path (no top-k): unchunked dense vs chunked read_memory, forward only."""
    h, w, ck, cv = cfg["h"], cfg["w"], cfg["ck"], cfg["cv"]
    n_mem, m_query = t_frames * h * w, h * w
    gen = torch.Generator().manual_seed(seed + 1)
    mk = torch.randn(1, ck, n_mem, generator=gen).to(device)
    mv = torch.randn(1, cv, n_mem, generator=gen).to(device)
    qk = torch.randn(1, ck, m_query, generator=gen).to(device)
    budget = max(1, n_mem * m_query // 4)  # force about four chunks
    with torch.no_grad():
        diff = float((dense_full_softmax(mk, mv, qk)
                      - read_memory(mk, mv, qk, max_elements=budget)).abs().max())
        times = time_many({
            "unchunked": lambda: dense_full_softmax(mk, mv, qk),
            "chunked": lambda: read_memory(mk, mv, qk, max_elements=budget),
        }, device, repeats)
        dense_ms, ours_ms = times["unchunked"], times["chunked"]
    return {
        "T": t_frames,
        "N": n_mem,
        "M": m_query,
        "max_elements": budget,
        "query_chunk": query_chunk_size(1, n_mem, budget),
        "unchunked_ms_median": dense_ms[0],
        "chunked_ms_median": ours_ms[0],
        "ratio": dense_ms[0] / ours_ms[0],
        "max_abs_diff": diff,
    }


def _mib(x):
    return "n/a" if x is None else f"{x / 2**20:.1f}"


def to_markdown(result):
    info, rows, full = result["machine"], result["topk"], result["full_softmax"]
    cfg = result["config"]
    out = [
        "# Memory read benchmark (per object per frame)",
        "",
        "Produced by `python scripts/bench_memory_read.py"
        + (" --quick" if result["quick"] else "")
        + " --json docs/bench_memory_read.json --markdown docs/BENCH_MEMORY_READ.md`"
        + " (raw numbers, including minima, in the JSON).",
        "",
        f"* machine: {info['cpu_model']}, {info['logical_cpus']} logical CPUs visible, "
        f"torch threads {info['torch_threads']}, torch {info['torch_version']}, "
        f"python {info['python']}, device `{info['device']}`"
        + (f" ({info['gpu']})" if "gpu" in info else "")
        + (f"; 1-minute load average {info['load_average_1min_at_start']} at the start and "
           f"{info.get('load_average_1min_at_end')} at the end (the machine is shared, so "
           "absolute times are noisy; the ratios compare variants run in the same rounds)"
           if "load_average_1min_at_start" in info else ""),
        f"* shapes: query grid {cfg['h']} x {cfg['w']} (M = {cfg['h'] * cfg['w']}), "
        f"CK {cfg['ck']}, CV {cfg['cv']}, top-k {result['top_k']}, batch 1 (one object), "
        f"float32, random keys and values; times are medians of {result['repeats']} rounds "
        "after one warm-up, the variants interleaved within each round",
        "* **dense** = the original algorithm: full N x M affinity, top-k over memory, the k "
        "weights scattered into a zeroed N x M matrix, dense `CV x N @ N x M` product",
        f"* **ours** = `model.memory.read_memory(..., top_k={result['top_k']})`: "
        + ", ".join(f"T={r['T']}: " + (f"streamed, slabs of {r['slab_positions']} memory "
                                        "positions x all query positions" if r.get("streamed")
                                        else "chunked (no native kernel)") for r in rows)
        + "; then the sparse readout. **GEMM** = the affinity product alone (`torch.bmm`, "
        "its output allocated by the call). **no kernel** = the same read with "
        f"`MIVOS_NATIVE=0`: the default budget of {DEFAULT_MAX_ELEMENTS} affinity elements per "
        "query chunk ("
        + ", ".join(f"T={r['T']}: {-(-r['M'] // r['query_chunk'])} chunk(s)" for r in rows)
        + ") and the grouped top-k where N >= 256 k; **4 chunks** = that with a budget of "
        "N*M/4; **N x CV values** = ours with the values passed as a transposed view of an "
        "`N x CV` tensor (as the memory bank keeps them), which saves the layout copy",
        "* **readout** = the step from the top-k indices and weights to the `CV x M` result "
        "(dense: zero + scatter + bmm; ours: copy of the values into `N x CV` layout + fused "
        "gather and weighted sum via `embedding_bag`)",
        "* largest intermediate = theoretical size of the largest single tensor created "
        "(not measured on CPU: tracemalloc does not see torch allocations)",
        "",
        "Whole read:",
        "",
        "| T | N | dense ms | ours ms | speed-up | GEMM ms | ours / GEMM | no kernel ms "
        "| no kernel / GEMM | no kernel, 4 chunks ms | ours, N x CV values ms "
        "| speed-up (N x CV values) | ours, N x CV values / GEMM "
        "| largest intermediate MiB dense / ours / 4 chunks "
        "| max abs diff dense vs ours (4 chunks) | ours = no kernel, bit for bit |",
        "|---" * 16 + "|",
    ]
    for r in rows:
        out.append(
            f"| {r['T']} | {r['N']} | {r['dense_total_ms_median']:.1f} "
            f"| {r['ours_total_ms_median']:.1f} | {r['total_speedup']:.2f}x "
            f"| {r['gemm_total_ms_median']:.1f} | {r['ours_over_gemm']:.2f}x "
            f"| {r['ours_no_kernel_total_ms_median']:.1f} | {r['no_kernel_over_gemm']:.2f}x "
            f"| {r['ours_4_chunks_total_ms_median']:.1f} "
            f"| {r['ours_values_ncv_total_ms_median']:.1f} "
            f"| {r['total_speedup_values_ncv']:.2f}x "
            f"| {r['ours_values_ncv_over_gemm']:.2f}x "
            f"| {_mib(r['dense_largest_intermediate_bytes'])} / "
            f"{_mib(r['ours_largest_intermediate_bytes'])} / "
            f"{_mib(r['ours_4_chunks_largest_intermediate_bytes'])} "
            f"| {r['max_abs_diff']:.1e} ({r['max_abs_diff_4_chunks']:.1e}) "
            f"| {'yes' if r['streamed_equals_chunked'] else 'no'} |"
        )
    out += [
        "",
        "Readout step alone (same top-k indices and weights for all). **native** = "
        "`model.native.readout`, the streamed read's readout (N x CV values, written straight "
        "into `CV x M`), where this machine's check finds it equal to `embedding_bag` bit for "
        "bit:",
        "",
        "| T | N | GFLOP dense / ours | dense ms | ours ms | speed-up | ours, N x CV values ms "
        "| speed-up (N x CV values) | native ms | speed-up (native) | native = embedding_bag "
        "| max abs diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        nat = r.get("native_values_ncv_readout_ms_median")
        out.append(
            f"| {r['T']} | {r['N']} "
            f"| {r['dense_readout_gflop']:.2f} / {r['sparse_readout_gflop']:.3f} "
            f"| {r['dense_readout_ms_median']:.1f} | {r['ours_readout_ms_median']:.1f} "
            f"| {r['readout_speedup']:.1f}x | {r['ours_values_ncv_readout_ms_median']:.1f} "
            f"| {r['readout_speedup_values_ncv']:.1f}x "
            + (f"| {nat:.1f} | {r['dense_readout_ms_median'] / nat:.1f}x "
               f"| {'yes' if r['native_readout_equals_embedding_bag'] else 'no'} "
               if nat else "| - | - | - ")
            + f"| {r['readout_max_abs_diff']:.1e} |"
        )
    if any(r["dense_peak_bytes_measured"] is not None for r in rows):
        out += ["", "Measured peak extra CUDA memory (MiB), dense / ours: "
                + ", ".join(f"T={r['T']}: {_mib(r['dense_peak_bytes_measured'])} / "
                            f"{_mib(r['ours_peak_bytes_measured'])}" for r in rows)]
    out += [
        "",
        "Full-softmax (training) path, forward only: unchunked dense vs `read_memory` forced "
        "into about four query chunks.",
        "",
        "| T | N | query chunk | unchunked ms | chunked ms | unchunked / chunked "
        "| max abs diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in full:
        out.append(
            f"| {r['T']} | {r['N']} | {r['query_chunk']} "
            f"| {r['unchunked_ms_median']:.1f} | {r['chunked_ms_median']:.1f} "
            f"| {r['ratio']:.2f} | {r['max_abs_diff']:.1e} |"
        )
    out += [
        "",
        "Reading the numbers:",
        "",
        "* The sparse readout does `2*k*CV` flops per query position instead of `2*N*CV`; "
        "a large part of what is left of its time is the copy of the values into `N x CV` "
        "layout (the difference between the two \"ours\" readout columns). A memory bank "
        "that stores values channel-last and passes a permuted view avoids that copy "
        "(`InferenceCore`'s bank does); the streamed read's native readout then also writes "
        "the `CV x M` result without a transposing copy (\"native\").",
        "* After the readout is made sparse, the affinity product (`2*N*M*CK` flops, "
        "the same in both) and the top-k over N dominate the read. The streamed read "
        "writes each slab of the product into a cache-sized buffer and selects from it "
        "while it is still in the cache, so it costs little more than the product alone "
        "(\"ours, N x CV values / GEMM\"; \"ours / GEMM\" adds the values' layout copy); "
        "the chunked read writes and reads back blocks larger than the "
        "cache and runs a separate top-k (\"no kernel / GEMM\"). Both return the same "
        "tensor (last column).",
        "* \"max abs diff\" compares the two reads on the same inputs. Query columns whose "
        "top-k sets differ between the two affinity layouts (possible only on near-ties): "
        + ", ".join(f"T={r['T']}: {r['topk_set_mismatch_columns']} of {r['M']}" for r in rows)
        + ".",
        "",
    ]
    return "\n".join(out)


def _write_atomic(path, text):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="small shapes (12 x 20 grid, CK 64, CV 128, T=5)")
    parser.add_argument("--json", metavar="OUT", help="write the results as JSON here")
    parser.add_argument("--markdown", metavar="OUT", help="write a Markdown table here")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per measurement (default 5, --quick 2)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads value (default: torch's own default)")
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--T", type=int, nargs="+", default=None, dest="t_values",
                        help="memory lengths in frames (default 5 20, --quick 5)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    device = torch.device(args.device)
    cfg = dict(QUICK if args.quick else FULL)
    if args.t_values:
        cfg["t_values"] = args.t_values
    repeats = args.repeats if args.repeats is not None else (2 if args.quick else 5)

    result = {
        "machine": machine_info(device),
        "quick": args.quick,
        "config": {k: cfg[k] for k in ("h", "w", "ck", "cv")},
        "top_k": args.top_k,
        "repeats": repeats,
        "topk": [],
        "full_softmax": [],
    }
    for t_frames in cfg["t_values"]:
        row = bench_one(cfg, t_frames, args.top_k, device, repeats, args.seed)
        result["topk"].append(row)
        print(f"top-k T={t_frames}: dense {row['dense_total_ms_median']:.1f} ms, "
              f"ours {row['ours_total_ms_median']:.1f} ms; readout "
              f"{row['dense_readout_ms_median']:.1f} vs {row['ours_readout_ms_median']:.1f} ms; "
              f"max abs diff {row['max_abs_diff']:.2e}", flush=True)
        row = bench_full_softmax(cfg, t_frames, device, repeats, args.seed)
        result["full_softmax"].append(row)
        print(f"full softmax T={t_frames}: unchunked {row['unchunked_ms_median']:.1f} ms, "
              f"chunked {row['chunked_ms_median']:.1f} ms", flush=True)

    if hasattr(os, "getloadavg"):
        result["machine"]["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    text = to_markdown(result)
    if args.json:
        _write_atomic(args.json, json.dumps(result, indent=2) + "\n")
    if args.markdown:
        _write_atomic(args.markdown, text)
    if not args.json and not args.markdown:
        print(text)
    return result


if __name__ == "__main__":
    main()
