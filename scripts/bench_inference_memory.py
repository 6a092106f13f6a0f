"""Whole-process peak memory of interactive propagation against video length and resolution.

Every configuration runs in a fresh subprocess (so peak RSS is its own) on a procedurally
generated video that is produced frame by frame on demand (as a lazy reader of a folder would;
no frame is held unless a cache keeps it), with K objects and the chosen preset (random weights:
memory does not depend on the weights).

Two storage setups are compared:

* ``original``: what the original implementation keeps: every padded float32 frame cached,
  float32 probabilities, a large query-feature cache, and the affinity of a whole memory read
  materialised at once;
* ``bounded``: this project's memory options: frames read lazily (2 cached), uint8
  probabilities, a 256 MiB feature cache, a chunked memory read (2^24 affinity elements per
  chunk).

Two kinds of run:

* ``full``: one interaction on frame 0 propagated through the whole video;
* ``probe``: the state at the end of a long pass, built directly: the probability storage of the
  whole video is allocated, the memory bank is filled with as many frames as a full pass from
  frame 0 would hold at its end (1 + (T-1) // mem_every), and the last ``--probe-frames`` frames
  are then propagated for real. It measures the same peak as a full run (the bank, the
  storage and the largest memory read all peak at the end of the pass) without the quadratic
  compute of the whole pass, which a 2-core CPU cannot afford at 1000 frames. Runs of both kinds
  at the same size check that they agree.

Usage::

    python scripts/bench_inference_memory.py --json docs/inference_memory.json \\
        --markdown docs/INFERENCE_MEMORY.md
    python scripts/bench_inference_memory.py --quick   # small sizes, a couple of minutes
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: the project's packages are beside scripts/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.inference_core import InferenceConfig, InferenceCore  # noqa: E402
from model.presets import build_fusion, build_propagation  # noqa: E402
from util.device import cpu_model  # noqa: E402

RESOLUTIONS = {"480p": (480, 854), "1080p": (1080, 1920), "240p": (240, 427), "120p": (120, 214)}
SETUPS = {
    "original": dict(prob_dtype="float32", image_cache=100000, feature_cache_mb=1e9,
                     memory_budget=2**62),
    "bounded": dict(prob_dtype="uint8", image_cache=2, feature_cache_mb=256.0, memory_budget=2**24),
}


class ProceduralFrames:
    """A video of T frames of H x W, each made on request from a fixed texture (lazy reader)."""

    def __init__(self, t: int, h: int, w: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        small = rng.integers(0, 255, size=(h // 8 + 2, (w + t) // 8 + 2, 3), dtype=np.uint8)
        self.texture = cv2.resize(small, ((w + t) + 16, h + 16), interpolation=cv2.INTER_LINEAR)
        self.t, self.h, self.w = t, h, w

    def __len__(self) -> int:
        return self.t

    def __getitem__(self, i: int):
        if not 0 <= i < self.t:
            raise IndexError(i)
        return self.texture[: self.h, i: i + self.w]


def first_mask(h: int, w: int, num_objects: int):
    m = np.zeros((h, w), np.int64)
    for obj in range(1, num_objects + 1):
        y0 = h // 4 + (obj - 1) * h // (3 * num_objects)
        m[y0: y0 + h // (3 * num_objects), w // 4 + obj * 10: w // 2 + obj * 10] = obj
    return m


def child(spec: dict) -> dict:
    """Run one configuration in this process and report its measurements."""
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    h, w = RESOLUTIONS[spec["resolution"]]
    t, num_objects = spec["frames"], spec["objects"]
    prop = build_propagation(spec["preset"]).eval()
    fusion = build_fusion(spec["preset"]).eval()
    frames = ProceduralFrames(t, h, w)
    cfg = InferenceConfig(top_k=50, **SETUPS[spec["setup"]])
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    core = InferenceCore(prop, fusion, frames, num_objects=num_objects, config=cfg)
    propagated = 0
    if spec["kind"] == "full":
        core.interact(first_mask(h, w, num_objects), 0)
        propagated = t - 1
    else:
        n = min(spec["probe_frames"], t - 2)
        start_idx = t - n - 1
        bank_frames = 1 + (t - 1) // cfg.mem_every
        hh, ww = core.ph // 16, core.pw // 16
        with torch.inference_mode():
            for _ in range(bank_frames - 1):
                key = torch.randn(num_objects, prop.key_dim, hh, ww)
                value = torch.randn(num_objects, prop.value_dim, hh, ww)
                core.permanent.add_permanent(key, value)
        core.interacted.append(start_idx - 1)  # stops the backward pass: only the tail runs
        core.interact(first_mask(h, w, num_objects), start_idx)
        propagated = n
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        **spec,
        "peak_rss_gib": peak / 2**20,
        "model_rss_gib": base_rss / 2**20,
        "seconds": elapsed,
        "frames_propagated": propagated,
        "seconds_per_frame": elapsed / max(propagated, 1),
    }


def estimate_original_gib(spec: dict) -> float:
    """Memory the original needs at the end of a pass, before the networks' own activations:
    padded float32 frames, float32 (K+1)-channel probabilities, uint8 masks, and the affinity of
    one whole memory read (K x N x HW float32, N = memory positions). Used to skip runs that
    cannot fit on the machine."""
    h, w = RESOLUTIONS[spec["resolution"]]
    hp, wp = -(-h // 16) * 16, -(-w // 16) * 16
    t, num_objects = spec["frames"], spec["objects"]
    frames = t * 3 * hp * wp * 4
    prob = (num_objects + 1) * t * hp * wp * 4
    masks = t * h * w
    hw16 = (hp // 16) * (wp // 16)
    memory_frames = 2 + (t - 1) // 5  # permanent frames at the end of a pass + the temporary one
    affinity = num_objects * memory_frames * hw16 * hw16 * 4
    return (frames + prob + masks + affinity) / 2**30


def run_child(spec: dict, timeout: float, max_gib: float = 18.0) -> dict:
    if spec["setup"] == "original":
        need = estimate_original_gib(spec)
        if need > max_gib:
            return {**spec, "error": f"not run: frames, probabilities and one whole-affinity read "
                                     f"need {need:.1f} GiB (> {max_gib:.0f} GiB limit of this benchmark)"}
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    try:
        res = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                             capture_output=True, text=True, timeout=timeout, env=env, cwd=root)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout:.0f} s"}
    if res.returncode != 0:
        tail = (res.stderr or "").strip().splitlines()[-3:]
        reason = "killed (out of memory?)" if res.returncode in (-9, 137) else " | ".join(tail)
        return {**spec, "error": f"exit {res.returncode}: {reason}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def machine() -> str:
    cpu = cpu_model()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM"


def plan(args) -> list[dict]:
    common = dict(preset=args.preset, objects=args.objects, threads=args.threads,
                  probe_frames=args.probe_frames)
    runs = []
    if args.quick:
        for setup in SETUPS:
            runs.append(dict(common, setup=setup, kind="full", frames=12, resolution="120p"))
            runs.append(dict(common, setup=setup, kind="probe", frames=12, resolution="120p"))
        return runs
    for res in args.resolutions:
        for t in args.lengths:
            for setup in SETUPS:
                runs.append(dict(common, setup=setup, kind="probe", frames=t, resolution=res))
    for res, t in args.full:
        for setup in SETUPS:
            runs.append(dict(common, setup=setup, kind="full", frames=t, resolution=res))
    return runs


def to_markdown(results: list[dict], info: dict) -> str:
    lines = [
        "# Peak memory of interactive propagation",
        "",
        f"Machine: {info['machine']}; torch {info['torch']}; preset `{info['preset']}` "
        f"(random weights), {info['objects']} objects, top-k 50, {info['threads']} threads.",
        "Measured by `scripts/bench_inference_memory.py`: whole-process peak RSS of a fresh "
        "process per row (the networks included).",
        "",
        "`original` keeps what the original implementation keeps (every padded float32 frame, "
        "float32 probabilities, a large feature cache, whole-affinity reads); `bounded` uses "
        "this project's options (lazy frames, uint8 probabilities, 256 MiB feature cache, "
        "chunked reads). `probe` rows build the state at the end of a pass from frame 0 "
        "(storage for all frames, a memory bank of 1 + (T-1)/5 frames) and propagate the last "
        "frames for real; `full` rows propagate the whole video.",
        "",
        "| frames | resolution | run | setup | peak RSS (GiB) | s / frame (at the end of the pass) | note |",
        "|---:|---|---|---|---:|---:|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['frames']} | {r['resolution']} | {r['kind']} | {r['setup']} | - | - | {r['error']} |")
        else:
            lines.append(f"| {r['frames']} | {r['resolution']} | {r['kind']} | {r['setup']} | "
                         f"{r['peak_rss_gib']:.2f} | {r['seconds_per_frame']:.2f} | |")
    lines += [
        "",
        "Reading the table:",
        "",
        "* `bounded` holds at every size: 13.2 GiB at 1000 frames of 1080p, where the original's "
        "layout would need about 148 GiB (frames, probabilities and one whole-affinity read). "
        "Most of that 13.2 GiB is the uint8 probabilities of 1000 padded frames (6.3 GiB) and the "
        "label maps (2 GiB); the memory bank holds 200 frames for 2 objects (2.5 GiB).",
        "* For `bounded`, a probe agrees with the full run (200 frames at 480p: 1.02 vs 1.28 GiB), "
        "because its caches are bounded. For `original` a probe undercounts: its feature cache "
        "grows with every processed frame and a probe processes only a few (200 frames at 480p: "
        "2.44 GiB probe, 6.01 GiB full run). The `original` setup caches every frame's features; "
        "the original implementation capped that buffer at 105 frames, so beyond 105 frames this "
        "setup overstates the original's cache by (T-105)/T.",
        "* Seconds per frame are wall time on a shared machine (other jobs were running), for "
        "orientation only. For probe rows it is the cost at the end of the pass, where the memory "
        "is largest; full rows give the mean over the pass. At 1000 frames of 1080p, the top-k "
        "read over 200 memory frames dominates (about 9 minutes per frame on 2 CPU cores), so "
        "propagating such a video fits in memory but is a GPU job.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="tiny sizes only (CI smoke run)")
    p.add_argument("--preset", default="lite", choices=["lite", "mivos"])
    p.add_argument("--objects", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lengths", type=int, nargs="+", default=[50, 200, 1000])
    p.add_argument("--resolutions", nargs="+", default=["480p", "1080p"], choices=sorted(RESOLUTIONS))
    p.add_argument("--full", nargs="*", type=lambda s: (s.split(":")[0], int(s.split(":")[1])),
                   default=[("480p", 50)], metavar="RES:FRAMES",
                   help="configurations to also run in full (default 480p:50)")
    p.add_argument("--probe-frames", type=int, default=3, help="frames propagated by a probe run")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per configuration")
    p.add_argument("--max-gib", type=float, default=18.0,
                   help="skip 'original' runs whose frames, probabilities and affinity exceed this")
    p.add_argument("--json", help="write the results as JSON")
    p.add_argument("--markdown", help="write a Markdown table")
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0

    info = {"machine": machine(), "torch": torch.__version__, "preset": args.preset,
            "objects": args.objects, "threads": args.threads}
    results = []
    for spec in plan(args):
        r = run_child(spec, args.timeout, args.max_gib)
        results.append(r)
        msg = r.get("error") or f"{r['peak_rss_gib']:.2f} GiB, {r['seconds_per_frame']:.2f} s/frame"
        print(f"{spec['frames']:5d} frames {spec['resolution']:>5} {spec['kind']:5} {spec['setup']:8}: {msg}",
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"info": info, "results": results}, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(to_markdown(results, info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
