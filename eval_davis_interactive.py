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

Architectures: --arch mivos (default; weights saves/propagation_model.pth and saves/fusion.pth,
top-k 50, the previous frame as temporary memory) or --arch stcn (MiVOS-STCN, REFERENCE.md j.2;
weights saves/stcn.pth and saves/fusion_stcn.pth, top-k 20, no temporary memory). An option
given on the command line overrides the architecture's default; the architecture is part of
the run fingerprint.

Examples::

    python eval_davis_interactive.py --davis ../DAVIS/2017/trainval --output out/davis
    python eval_davis_interactive.py --arch stcn --davis ../DAVIS/2017/trainval --output out/stcn
    python eval_davis_interactive.py --davis data/tiny --preset lite --random-weights \\
        --output out/tiny --device cpu
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict, replace
from pathlib import Path

import torch
from tqdm import tqdm

from dataset.synthetic import register_if_synthetic
from inference.arch import defaults_for
from inference.davis_interactive import (
    DavisEvalConfig,
    check_davis_root,
    empty_scribble_rule,
    per_interaction_scores,
    plot_curve,
    run_davis_interactive,
)
from inference.inference_core import InferenceConfig
from model.checkpoint import load_weights
from model.presets import DEFAULT_ARCH, build_fusion, build_propagation, build_s2m
from util.amp import resolve_amp
from util.cli import add_config_arguments, config_from_args, given
from util.errors import InputError, MissingInputError, report, require_output_dir
from util.fingerprint import make_fingerprint, weights_entry

log = logging.getLogger("eval_davis_interactive")

#: the namespace attribute of --arch (a field of the nested inference config)
ARCH_DEST = "inference.arch"


def build_parser() -> argparse.ArgumentParser:
    """The command line: the options of :class:`DavisEvalConfig` and its
    :class:`InferenceConfig` (generated from their fields), the weights and the runtime."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(p, DavisEvalConfig)
    arch = {a: defaults_for(a) for a in ("mivos", "stcn")}
    p.add_argument("--s2m-model", default="saves/s2m.pth",
                   help="S2M weights (official s2m.pth; default: saves/s2m.pth)")
    p.add_argument("--prop-model", default=None,
                   help="propagation weights (official propagation_model.pth, or stcn.pth for "
                        f"--arch stcn; default: saves/{arch['mivos'].prop_model}, with --arch "
                        f"stcn saves/{arch['stcn'].prop_model})")
    p.add_argument("--fusion-model", default=None,
                   help="fusion weights (official fusion.pth, or fusion_stcn.pth for --arch "
                        f"stcn; default: saves/{arch['mivos'].fusion_model}, with --arch stcn "
                        f"saves/{arch['stcn'].fusion_model})")
    p.add_argument("--preset", default="mivos", choices=["mivos", "lite"],
                   help="network sizes; the official weights need mivos (default: mivos)")
    p.add_argument("--random-weights", action="store_true",
                   help="use randomly initialised networks instead of checkpoints (smoke tests only)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the random initialisation (default: 0)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--num-threads", type=int, default=None,
                   help="torch CPU threads (default: torch's own choice). The J&F does not "
                        "depend on it; the measured times do")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    return p


def arch_of_args(args: argparse.Namespace) -> str:
    """The --arch given, else the default architecture."""
    return given(args, ARCH_DEST, DEFAULT_ARCH)


def resolve_weights(args: argparse.Namespace) -> None:
    """Fill the default weight paths of the chosen architecture (in place)."""
    defaults = defaults_for(arch_of_args(args))
    if args.prop_model is None:
        args.prop_model = f"saves/{defaults.prop_model}"
    if args.fusion_model is None:
        args.fusion_model = f"saves/{defaults.fusion_model}"


def eval_config(args: argparse.Namespace) -> DavisEvalConfig:
    """The run's :class:`DavisEvalConfig`: the architecture's defaults
    (:meth:`InferenceConfig.for_arch`) with the options given on the command line."""
    base_inference = InferenceConfig.for_arch(arch_of_args(args))
    base = DavisEvalConfig(davis_root=args.davis_root, output=args.output,
                           inference=base_inference)
    return config_from_args(DavisEvalConfig, args, base)


def resolve_precision(config: DavisEvalConfig, device: torch.device | str) -> DavisEvalConfig:
    """``config`` with ``--amp`` as it runs on ``device``: unchanged, or float32 (None) with a
    warning where the CPU would emulate it (:func:`util.amp.resolve_amp`), so that the run
    fingerprint records the precision used (the spelling is kept: ``"bfloat16"``)."""
    amp = config.inference.amp
    if amp is None or resolve_amp(amp, device, what="eval_davis_interactive.py --amp"):
        return config
    return replace(config, inference=replace(config.inference, amp=None))


def checkpoint_paths(args, config: DavisEvalConfig | None = None) -> dict[str, str | None]:
    """The weight file of every network this run uses (None with --random-weights); a missing
    file is bad input naming the option."""
    config = config if config is not None else eval_config(args)
    resolve_weights(args)
    used = {"s2m": args.s2m_model, "propagation": args.prop_model, "fusion": args.fusion_model}
    if config.oracle:
        used.pop("s2m")
    if config.inference.fusion != "diff":
        used.pop("fusion")
    if args.random_weights:
        return {k: None for k in used}
    names = defaults_for(config.inference.arch)
    for kind, path in used.items():
        if not Path(path).is_file():
            flag = f"--{'prop' if kind == 'propagation' else kind}-model"
            raise MissingInputError(
                f"{kind} checkpoint {path} not found: pass {flag} PATH (the official "
                f"{config.inference.arch} weights are s2m.pth, {names.prop_model} and "
                f"{names.fusion_model}), or --random-weights for a smoke test", path)
    return used


def run_fingerprint(args, config: DavisEvalConfig) -> dict:
    """Every setting that changes the results, resolved (the architecture included, as
    ``inference.arch``; ``inference.amp`` as :func:`resolve_precision` leaves it), and the hash
    of each weight file.

    Not included: --output, --device, --save-masks, --restart, -v (they do not change scores).
    """
    cfg = {k: v for k, v in asdict(config).items() if k not in ("output", "save_masks", "resume")}
    cfg["davis_root"] = str(Path(config.davis_root).resolve())
    cfg["empty_scribble"] = empty_scribble_rule(config)  # the rule in force, however spelled
    cfg["preset"] = args.preset
    weights = {kind: weights_entry(path, random_seed=args.seed)
               for kind, path in checkpoint_paths(args, config).items()}
    return make_fingerprint(cfg, weights, kind="davis_interactive")


def load_networks(args, device: torch.device, config: DavisEvalConfig | None = None):
    """Build the three networks of the chosen preset and architecture and load their weights
    strictly."""
    config = config if config is not None else eval_config(args)
    paths = checkpoint_paths(args, config)
    torch.manual_seed(args.seed)
    nets = {
        "s2m": build_s2m(args.preset),
        "propagation": build_propagation(args.preset, arch=config.inference.arch),
        "fusion": build_fusion(args.preset),
    }
    out = {}
    torch.manual_seed(args.seed)
    for kind, path in paths.items():
        net = nets[kind]
        if path is not None:
            load_weights(net, path)
        out[kind] = net.to(device).eval()
    return out.get("propagation"), out.get("fusion"), out.get("s2m")


def print_table(summary: dict, file=None) -> None:
    file = file if file is not None else sys.stdout  # the stream of the call, not of the import

    scores = per_interaction_scores(summary)
    print(f"AUC-J&F   {summary['auc']:.4f}", file=file)
    print(f"J&F@60s   {summary['metric_at_threshold']['J_AND_F']:.4f}", file=file)
    print("J&F after each interaction:", file=file)
    print("  " + "  ".join(f"{i + 1}:{s:.4f}" for i, s in enumerate(scores)), file=file)


def main(argv: list[str] | None = None) -> int:
    """Run the evaluation: 0 on success, 2 for bad input (one line naming the file: data,
    checkpoints, an output path that is a file, or earlier results made with other settings)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.num_threads is not None and args.num_threads < 1:
        parser.error(f"--num-threads must be at least 1, got {args.num_threads}")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return _main(args)
    except (InputError, FileNotFoundError) as exc:
        logging.getLogger("eval_davis_interactive").debug("bad input", exc_info=True)
        return report(exc)


def _main(args) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)
    config = eval_config(args)
    config.inference.validate()
    config = resolve_precision(config, device)
    require_output_dir(config.output)
    check_davis_root(config.davis_root, config.subset)

    fingerprint = run_fingerprint(args, config)

    bar = tqdm(desc="DAVIS interactive", unit="sample")

    def progress(seq, done, total):
        bar.total = total
        bar.n = done
        bar.set_postfix_str(seq)
        bar.refresh()

    # a generated stand-in that is not the davis-val mirror is added to the official tables
    registration = register_if_synthetic(config.davis_root, config.subset)
    try:
        summary = run_davis_interactive(config, None, None, None, device=device, progress=progress,
                                        fingerprint=fingerprint,
                                        networks=lambda: load_networks(args, device, config))
    finally:
        if registration is not None:
            registration.restore()
        bar.close()
    plot_curve(summary, Path(config.output) / "jf_vs_time.png")
    print_table(summary)
    print(f"summary: {Path(config.output) / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
