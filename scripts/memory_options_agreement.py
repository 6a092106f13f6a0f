"""How much each memory option of the inference core changes the masks.

For every sequence of a DAVIS-layout folder, two interactions are committed with the ground
truth (frame 0, then the last frame, so the second round runs difference-aware fusion over the
whole video), once with the default settings and once per memory option. The script reports,
per option, the share of pixels (all frames, all sequences) whose label differs from the
default run, and the largest number of differing pixels in one frame.

Options: lazy frames (a bounded frame reader), a one-frame image cache, no feature cache, a
chunked memory read (a small affinity budget), float16 and uint8 probability storage, results
kept on disk, and bf16 autocast (only on a CPU with native bf16).

    python scripts/memory_options_agreement.py --root data/synthetic-davis --preset lite \\
        --prop-model runs/quickstart/prop_s2/prop_s2_final.pth \\
        --fusion-model runs/quickstart/fusion/fusion_final.pth --markdown out.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from inference.inference_core import InferenceConfig, InferenceCore  # noqa: E402
from model.checkpoint import load_weights  # noqa: E402
from model.presets import build_fusion, build_propagation  # noqa: E402
from util.amp import native_bf16  # noqa: E402
from util.palette import read_mask  # noqa: E402
from util.video_io import FrameSource  # noqa: E402

#: option name -> (InferenceConfig overrides, lazy frames?)
OPTIONS: dict[str, tuple[dict, bool]] = {
    "lazy frames (4-frame reader cache)": ({}, True),
    "image cache 1": ({"image_cache": 1}, False),
    "no feature cache": ({"feature_cache_mb": 0.0}, False),
    "chunked read (budget 4096 elements)": ({"memory_budget": 4096}, False),
    "prob_dtype float16": ({"prob_dtype": "float16"}, False),
    "prob_dtype uint8": ({"prob_dtype": "uint8"}, False),
    "results on disk": ({"result_storage": "disk"}, False),
    "amp bf16": ({"amp": "bfloat16"}, False),
}
#: options measured only where the CPU computes them natively (elsewhere the core would fall
#: back to float32 and the row would show nothing)
NEEDS_NATIVE_BF16 = {"amp bf16"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="DAVIS-layout folder (JPEGImages/480p, Annotations/480p)")
    p.add_argument("--sequences", type=int, default=0, help="first N sequences (0 = all)")
    p.add_argument("--preset", default="lite", choices=["mivos", "lite"])
    p.add_argument("--arch", default="mivos", choices=["mivos", "stcn"], help="propagation architecture")
    p.add_argument("--prop-model", help="propagation weights")
    p.add_argument("--fusion-model", help="fusion weights")
    p.add_argument("--random-weights", action="store_true", help="random networks (most pixels are then near-ties)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="write the measured figures here")
    p.add_argument("--markdown", help="write a Markdown table here")
    return p


def run_sequence(prop, fusion, frames, gt, k, overrides, arch) -> np.ndarray:
    config = replace(InferenceConfig.for_arch(arch), **overrides)
    core = InferenceCore(prop, fusion, frames, k, config)
    core.interact(gt[0].astype(np.int64), 0)
    core.interact(gt[-1].astype(np.int64), len(gt) - 1)
    return core.masks.copy()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    prop = build_propagation(args.preset, arch=args.arch).eval()
    fusion = build_fusion(args.preset).eval()
    if not args.random_weights:
        if not (args.prop_model and args.fusion_model):
            raise SystemExit("error: give --prop-model and --fusion-model, or --random-weights")
        load_weights(prop, args.prop_model)
        load_weights(fusion, args.fusion_model)
    root = Path(args.root)
    seqs = sorted(p.name for p in (root / "JPEGImages" / "480p").iterdir() if p.is_dir())
    if args.sequences:
        seqs = seqs[: args.sequences]
    options = {name: v for name, v in OPTIONS.items()
               if name not in NEEDS_NATIVE_BF16 or native_bf16()}
    skipped = sorted(set(OPTIONS) - set(options))
    if skipped:
        print(f"skipped (no native bf16 on this CPU): {', '.join(skipped)}", file=sys.stderr)
    diff = {name: 0 for name in OPTIONS}
    worst = {name: 0 for name in OPTIONS}
    pixels = 0
    t0 = time.perf_counter()
    for seq in seqs:
        folder = root / "JPEGImages" / "480p" / seq
        frames = FrameSource(folder, cache_size=0).load_all()
        gt = np.stack([read_mask(f) for f in sorted((root / "Annotations" / "480p" / seq).glob("*.png"))])
        k = int(gt.max())
        if k == 0:
            continue
        base = run_sequence(prop, fusion, frames, gt, k, {}, args.arch)
        pixels += base.size
        for name, (overrides, lazy) in options.items():
            source = FrameSource(folder, cache_size=4) if lazy else frames
            masks = run_sequence(prop, fusion, source, gt, k, overrides, args.arch)
            d = masks != base
            diff[name] += int(d.sum())
            worst[name] = max(worst[name], int(d.reshape(len(d), -1).sum(1).max()))
        print(f"{seq}: done", file=sys.stderr)
    rows = [{"option": name, "pixels_differing": diff[name], "share": diff[name] / max(1, pixels),
             "worst_frame_pixels": worst[name]} for name in options]
    result = {"root": str(root), "sequences": len(seqs), "pixels": pixels, "preset": args.preset,
              "arch": args.arch,
              "weights": "random" if args.random_weights else [args.prop_model, args.fusion_model],
              "seconds": round(time.perf_counter() - t0, 1), "rows": rows, "skipped": skipped}
    lines = ["| option | pixels that differ from the default run | share | most in one frame |",
             "|---|---:|---:|---:|"]
    lines += [f"| {r['option']} | {r['pixels_differing']} | {100 * r['share']:.4f}% | "
              f"{r['worst_frame_pixels']} |" for r in rows]
    table = "\n".join(lines)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
