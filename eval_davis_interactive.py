"""DAVIS interactive-track evaluation with the official robot, session and metrics.

Runs the official ``davisinteractive`` session (8 interactions per sample, 30 s per interaction
and object) on DAVIS 2017 val, or on a synthetic stand-in in the same layout, with our S2M,
propagation and fusion networks and MiVOS's protocol (propagate only after the 3rd, 6th and 8th
interaction). Writes the official summary (AUC and J&F@60s) to OUT/summary.json, the merged
report to OUT/report.csv, a J&F-vs-time plot, and prints a table.

Resuming: OUT/fingerprint.json records the resolved settings and the SHA-256 of every weight
file. A rerun with the same fingerprint skips the finished samples (OUT/samples/); when all are
finished it rebuilds the summary without starting the session. A rerun with another
fingerprint stops with exit status 2 and names what differs; --restart discards the earlier
results. Bad input (data that does not match davisinteractive's metadata, unreadable files,
malformed scribbles, checkpoints of another kind or preset, an output path that is a file)
stops with exit status 2 and one line "error: <file>: <problem>".

Examples::

    python eval_davis_interactive.py --davis ../DAVIS/2017/trainval --output out/davis
    python eval_davis_interactive.py --davis data/tiny --preset lite --random-weights \\
        --output out/tiny --device cpu
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from util.config import parse_top_k

log = logging.getLogger("eval_davis_interactive")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--davis", required=True,
                   help="DAVIS 2017 root (JPEGImages/480p, Annotations/480p, ImageSets/2017, Scribbles), "
                        "or a synthetic stand-in made by `python -m dataset.synthetic`")
    p.add_argument("--output", required=True, help="output folder (summary.json, report.csv, plot)")
    p.add_argument("--s2m-model", default="saves/s2m.pth", help="S2M weights (official s2m.pth)")
    p.add_argument("--prop-model", default="saves/propagation_model.pth",
                   help="propagation weights (official propagation_model.pth)")
    p.add_argument("--fusion-model", default="saves/fusion.pth", help="fusion weights (official fusion.pth)")
    p.add_argument("--preset", default="mivos", choices=["mivos", "lite"],
                   help="network sizes; the official weights need mivos")
    p.add_argument("--random-weights", action="store_true",
                   help="use randomly initialised networks instead of checkpoints (smoke tests only)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")
    p.add_argument("--top-k", type=parse_top_k, default=50,
                   help="top-k filtering of the memory read (int), or 'none' for a full softmax")
    p.add_argument("--fusion", choices=["diff", "linear", "none"], default="diff",
                   help="diff: difference-aware fusion (paper); linear: blend by temporal distance; "
                        "none: the newest propagation overwrites")
    p.add_argument("--oracle", action="store_true",
                   help="the ground-truth mask replaces S2M's output (the paper's 'perfect interaction')")
    p.add_argument("--mem-every", type=int, default=5, help="memory frame interval of a pass")
    p.add_argument("--max-interactions", type=int, default=8, help="interactions per sample")
    p.add_argument("--seconds-per-interaction", type=float, default=30.0,
                   help="the session's time budget is this x max-interactions per object")
    p.add_argument("--protocol", choices=["mivos", "corrected"], default="mivos",
                   help="mivos (default): the original driver's arithmetic, quirks included: "
                        "scribbles rasterised at the padded size (stretched over the padding), "
                        "dilated there and fed to S2M uncropped; S2M's existing-mask input is the "
                        "padded hard mask (labels in the padding); S2M's output is committed with "
                        "its padding; an empty robot scribble falls on the last frame of the video. "
                        "corrected: (1) scribbles rasterised at the image size; (2) S2M inputs zero "
                        "in the padding; (3) the committed mask has no probability in the padding; "
                        "(4) an empty robot scribble keeps the last scribbled frame and its mask "
                        "(S2M does not run)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--amp", choices=["bf16", "fp16"], default=None, help="autocast for inference")
    p.add_argument("--save-masks", action="store_true", help="write palette PNGs of every sample")
    p.add_argument("--restart", "--no-resume", dest="restart", action="store_true",
                   help="discard the results of an earlier run in --output and start over (needed "
                        "when it used other settings or weights; --no-resume is the old name)")
    p.add_argument("--subset", default="val", help="DAVIS subset evaluated by the session")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def checkpoint_paths(args) -> dict[str, str | None]:
    """The weight file of every network this run uses (None with --random-weights); a missing
    file is bad input naming the option."""
    from util.errors import MissingInputError

    used = {"s2m": args.s2m_model, "propagation": args.prop_model, "fusion": args.fusion_model}
    if args.oracle:
        used.pop("s2m")
    if args.fusion != "diff":
        used.pop("fusion")
    if args.random_weights:
        return {k: None for k in used}
    for kind, path in used.items():
        if not Path(path).is_file():
            flag = f"--{'prop' if kind == 'propagation' else kind}-model"
            raise MissingInputError(
                f"{kind} checkpoint {path} not found: pass {flag} PATH (the official MiVOS weights "
                "are s2m.pth, propagation_model.pth and fusion.pth), or --random-weights for a "
                "smoke test", path)
    return used


def run_fingerprint(args, config) -> dict:
    """Every setting that changes the results, resolved, and the hash of each weight file.

    Not included: --output, --device, --save-masks, --restart, -v (they do not change scores).
    """
    from dataclasses import asdict

    from util.fingerprint import make_fingerprint, weights_entry

    cfg = {k: v for k, v in asdict(config).items() if k not in ("output", "save_masks", "resume")}
    cfg["davis_root"] = str(Path(args.davis).resolve())
    cfg["preset"] = args.preset
    weights = {kind: weights_entry(path, random_seed=args.seed)
               for kind, path in checkpoint_paths(args).items()}
    return make_fingerprint(cfg, weights, kind="davis_interactive")


def load_networks(args, device: torch.device):
    """Build the three networks of the chosen preset and load their weights strictly."""
    from model.checkpoint import load_weights
    from model.presets import build_fusion, build_propagation, build_s2m

    torch.manual_seed(args.seed)
    nets = {
        "s2m": (build_s2m(args.preset), args.s2m_model),
        "propagation": (build_propagation(args.preset), args.prop_model),
        "fusion": (build_fusion(args.preset), args.fusion_model),
    }
    if args.oracle:
        nets.pop("s2m")
    if args.fusion != "diff":
        nets.pop("fusion")
    out = {}
    torch.manual_seed(args.seed)
    for kind, (net, path) in nets.items():
        if not args.random_weights:
            if not Path(path).is_file():
                raise FileNotFoundError(
                    f"{kind} checkpoint {path} not found: pass --{'prop' if kind == 'propagation' else kind}"
                    "-model PATH (the official MiVOS weights are s2m.pth, propagation_model.pth and "
                    "fusion.pth), or --random-weights for a smoke test")
            load_weights(net, path)
        out[kind] = net.to(device).eval()
    return out.get("propagation"), out.get("fusion"), out.get("s2m")


def print_table(summary: dict, file=None) -> None:
    from inference.davis_interactive import per_interaction_scores

    file = file if file is not None else sys.stdout  # the stream of the call, not of the import

    scores = per_interaction_scores(summary)
    print(f"AUC-J&F   {summary['auc']:.4f}", file=file)
    print(f"J&F@60s   {summary['metric_at_threshold']['J_AND_F']:.4f}", file=file)
    print("J&F after each interaction:", file=file)
    print("  " + "  ".join(f"{i + 1}:{s:.4f}" for i, s in enumerate(scores)), file=file)


def main(argv: list[str] | None = None) -> int:
    """Run the evaluation: 0 on success, 2 for bad input (one line naming the file: data,
    checkpoints, an output path that is a file, or earlier results made with other settings)."""
    from util.errors import InputError, report

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return _main(args)
    except (InputError, FileNotFoundError) as exc:
        logging.getLogger("eval_davis_interactive").debug("bad input", exc_info=True)
        return report(exc)


def _main(args) -> int:
    from inference.davis_interactive import DavisEvalConfig, plot_curve, run_davis_interactive
    from inference.inference_core import InferenceConfig
    from util.errors import require_output_dir

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    inference = InferenceConfig(top_k=args.top_k, mem_every=args.mem_every, fusion=args.fusion,
                                amp={"bf16": "bfloat16", "fp16": "float16", None: None}[args.amp])
    config = DavisEvalConfig(
        davis_root=args.davis, output=args.output, subset=args.subset,
        max_interactions=args.max_interactions, seconds_per_interaction=args.seconds_per_interaction,
        oracle=args.oracle, protocol=args.protocol, save_masks=args.save_masks,
        resume=not args.restart, inference=inference)
    from inference.davis_interactive import check_davis_root

    require_output_dir(args.output)
    check_davis_root(args.davis, args.subset)
    from dataset.synthetic import register_if_synthetic

    fingerprint = run_fingerprint(args, config)

    from tqdm import tqdm

    bar = tqdm(desc="DAVIS interactive", unit="sample")

    def progress(seq, done, total):
        bar.total = total
        bar.n = done
        bar.set_postfix_str(seq)
        bar.refresh()

    # a generated stand-in that is not the davis-val mirror is added to the official tables
    registration = register_if_synthetic(args.davis, args.subset)
    try:
        summary = run_davis_interactive(config, None, None, None, device=device, progress=progress,
                                        fingerprint=fingerprint,
                                        networks=lambda: load_networks(args, device))
    finally:
        if registration is not None:
            registration.restore()
        bar.close()
    plot_curve(summary, Path(args.output) / "jf_vs_time.png")
    print_table(summary)
    print(f"summary: {Path(args.output) / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
