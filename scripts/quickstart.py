"""The project's main job in one command, on generated data: train the three MiVOS modules and
run the DAVIS interactive ablation (the paper's Table 5 layout) with them.

Nothing is downloaded. On a CPU machine::

    python scripts/quickstart.py --output runs/quickstart

runs these steps, each skipped when its output already exists (a re-run continues where an
interrupted one stopped; the trainers also resume from their last resumable checkpoint):

1. ``data``: synthetic training data (the ``train-quarter`` videos, 120 x 216, and static
   image/mask pairs, where the trainers' ``--data synthetic`` mode expects them) and a separate
   synthetic validation set in the DAVIS layout at the same size (subset ``val``, with robot
   scribbles), which the evaluation registers with the official ``davisinteractive`` tables.
   The lite crop (96) is a quarter of the recipe's 384, so the frames are a quarter of DAVIS
   480p: the crops then show objects at about their size in the evaluated frames;
2. ``s2m``: the lite S2M network (Adam LR ``--s2m-lr``, 4e-4 by default; bf16 autocast on a CPU
   with native bf16);
3. ``prop_s0`` / ``prop_s2``: the lite propagation network, static-image stage then video stage
   (loading the stage-0 weights);
4. ``fusion``: the lite fusion network with the trained propagation network frozen (Adam LR
   ``--fusion-lr``, 4e-4 by default, constant);
5. ``ablation``: ``scripts/ablation.py`` on the validation set (official robot and session,
   8 interactions), every row of Table 5, several rows at a time in their own processes
   (``--ablation-jobs``, default ``--num-threads`` with one thread each; the J&F does not
   depend on it);
6. ``report``: ``OUT/report.md`` with the table, the J&F-vs-time curves, an overlay grid of the
   difference-aware row's final masks, the final J&F and the time of every step.

Resuming: ``OUT/fingerprint.json`` records the resolved settings of the run (everything below
that changes a result; not ``--device``, ``--num-threads``, ``--num-workers``, ``--rows``,
``--ablation-jobs``). A
rerun with the same fingerprint skips every finished step (the ablation skips its finished
rows and rebuilds its table) and continues an interrupted one; a rerun with another
fingerprint stops with exit status 2 and names what differs; ``--restart`` deletes the earlier
run's data, checkpoints, evaluations and report and starts over.

The iteration counts (s2m 500, prop_s0 250, prop_s2 700, fusion 600: the whole job takes
about 15 minutes on 2 CPU cores, measured in ``docs/QUICKSTART_RESULTS.md``) are multiplied by
``--scale`` and can be set one by one. ``--mini`` is the CI variant: tiny data, a few
iterations, 3 interactions, rows ``diff`` and ``oracle`` (well under 2 minutes).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# iteration counts of the full run (before --scale) and of --mini
FULL_ITERATIONS = {"s2m": 500, "prop_s0": 250, "prop_s2": 700, "fusion": 600}
MINI_ITERATIONS = {"s2m": 2, "prop_s0": 2, "prop_s2": 2, "fusion": 2}
ROW_KEYS = ("no_topk", "topk", "linear", "diff", "oracle")
DEFAULT_ARCH = "stcn"
#: Adam LR of the lite S2M trained from random weights (the recipe's 1e-4 fine-tunes ImageNet
#: weights)
S2M_LR = 4e-4
#: Adam LR of the lite fusion network trained from random weights (the recipe's 1e-4)
FUSION_LR = 4e-4
#: the training stage of the video step after the static stage, per architecture (STCN calls
#: its "after static images only" stage s02; MiVOS's s2 preset is the same data and recipe)
VIDEO_STAGE = {"mivos": "s2", "stcn": "s02"}
STEPS = ("data", "s2m", "prop_s0", "prop_s2", "fusion", "ablation", "report")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="runs/quickstart",
                   help="run folder (data, checkpoints, evaluations, report.md)")
    p.add_argument("--mini", action="store_true",
                   help="CI variant: tiny data, a few iterations, 3 interactions, rows diff "
                        "and oracle")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply every default iteration count by this")
    for key in FULL_ITERATIONS:
        p.add_argument(f"--{key.replace('_', '-')}-iterations", type=int, default=None,
                       help=f"iterations of the {key} training (default: "
                            f"{FULL_ITERATIONS[key]} x --scale; --mini: {MINI_ITERATIONS[key]})")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the data generation and of the trainers")
    p.add_argument("--num-threads", type=int, default=2,
                   help="torch CPU threads of training and evaluation (2 fits a 2-core machine: "
                        "the DataLoader workers mostly wait)")
    p.add_argument("--prop-lr", type=float, default=1e-4,
                   help="Adam LR of both propagation stages. The recipe's 1e-5 fine-tunes "
                        "ImageNet-initialised encoders; the lite networks start from random "
                        "weights and barely move at 1e-5 in a few hundred iterations")
    p.add_argument("--s2m-lr", type=float, default=S2M_LR,
                   help=f"Adam LR of S2M (default: {S2M_LR:g}). The recipe's 1e-4 is for a "
                        "ResNet-50 from ImageNet weights; the lite S2M starts from random weights "
                        "and learns faster at this LR in the CPU budget (measured in "
                        "docs/QUICKSTART_RESULTS.md)")
    p.add_argument("--fusion-lr", type=float, default=FUSION_LR,
                   help=f"Adam LR of the fusion network (default: {FUSION_LR:g}; the recipe's "
                        "1e-4 starts from random weights too, and gave a fusion no better than "
                        "linear fusion; measured in "
                        "docs/QUICKSTART_RESULTS.md)")
    p.add_argument("--s2m-amp", choices=["none", "bf16", "auto"], default="auto",
                   help="precision of the S2M training (train_s2m.py --amp; default: auto = "
                        "bf16 autocast on a CPU with native bf16, fp32 elsewhere)")
    p.add_argument("--ablation-jobs", type=int, default=None,
                   help="ablation rows evaluated at the same time, each in its own process with "
                        "max(1, --num-threads / jobs) torch threads (scripts/ablation.py --jobs; "
                        "the J&F after each interaction does not change; the last row, which "
                        "ends alone, gets the threads of every job). Default: --num-threads, "
                        "one thread per row; --mini: 1")
    p.add_argument("--num-workers", type=int, default=None,
                   help="DataLoader workers of the trainers (default: the cores left over by "
                        "--num-threads, at most 2: none on a 2-core machine, where workers "
                        "competing with the torch threads made training 12-22%% slower; "
                        "--mini: 0). The samples do not depend on it")
    p.add_argument("--crop-size", type=int, default=None,
                   help="training crop size (default: 96; --mini: 64)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="training batch size (default: the lite preset's 8; --mini: 2)")
    p.add_argument("--s2m-instances", type=int, default=None,
                   help="generated multi-object frames whose instances S2M trains on besides "
                        "the static pairs, through the LVIS loader (train_s2m.py "
                        "--synthetic-instances; the stand-in for LVIS; default: 400; --mini: 6)")
    p.add_argument("--val-sequences", type=int, default=None,
                   help="validation sequences (default: 20, many short ones so that the "
                        "intervals between rows are tighter; --mini: 2)")
    p.add_argument("--val-frames", type=int, default=None,
                   help="frames per validation sequence (default: 16; --mini: 6-8)")
    p.add_argument("--val-height", type=int, default=None,
                   help="default 120 (the training videos' size, a quarter of DAVIS 480p, as "
                        "the lite crop of 96 is a quarter of the recipe's 384); --mini: 48")
    p.add_argument("--val-width", type=int, default=None, help="default 216; --mini: 64")
    p.add_argument("--max-interactions", type=int, default=None,
                   help="interactions per sample (default: 8; --mini: 3)")
    p.add_argument("--rows", nargs="+", choices=ROW_KEYS, default=None,
                   help="ablation rows (default: all; --mini: diff oracle)")
    p.add_argument("--arch", choices=["mivos", "stcn"], default=DEFAULT_ARCH,
                   help="propagation architecture trained and evaluated. stcn (the default): "
                        "the MiVOS-STCN network, whose memory and query keys come from one "
                        "shared key encoder, so a pixel matches itself from the first step and "
                        "the lite network learns in the CPU budget; mivos: the paper's STM-style "
                        "network. Either way the ablation rows run the MiVOS protocol (S2M, "
                        "top-k, fusion modes, perfect interaction)")
    p.add_argument("--device", default="cpu", help="device of training and evaluation")
    p.add_argument("--restart", action="store_true",
                   help="delete the earlier run in --output (needed when it was made with other "
                        "settings) and start over")
    return p


#: settings that do not change a result (left out of the fingerprint)
RUNTIME_SETTINGS = ("num_workers", "rows", "ablation_jobs")


def run_fingerprint(args, cfg: dict) -> dict:
    """Everything that changes the quickstart's results: the resolved settings, seed and LR."""
    from util.fingerprint import make_fingerprint

    config = {k: v for k, v in cfg.items() if k not in RUNTIME_SETTINGS}
    config.update(seed=args.seed, prop_lr=args.prop_lr)
    return make_fingerprint(config, kind="quickstart")


def discard_run(paths: "Paths") -> None:
    """--restart: delete what an earlier run wrote (only the quickstart's own files)."""
    import shutil

    from util.fingerprint import FINGERPRINT_FILE

    for d in (paths.data, paths.train, paths.ablation):
        if d.is_dir():
            shutil.rmtree(d)
    for f in (paths.report, paths.timings, paths.overlay, paths.out / FINGERPRINT_FILE):
        if f.is_file():
            f.unlink()


# ============================================================================ settings


def default_workers(num_threads: int) -> int:
    """DataLoader workers on the cores the torch threads leave over, at most 2. With none
    left, the trainers load data in their own process: on 2 cores and 2 threads two workers
    made training 12 % (S2M) and 22 % (propagation) slower, with the same samples (they are
    drawn from each sample's own seed; docs/QUICKSTART_RESULTS.md)."""
    from util.device import usable_cores

    return max(0, min(2, usable_cores() - num_threads))


def settings(args) -> dict:
    """Everything a step needs, with the --mini / full defaults filled in."""
    mini = args.mini
    iterations = {}
    for key in FULL_ITERATIONS:
        given = getattr(args, f"{key}_iterations")
        if given is not None:
            iterations[key] = given
        elif mini:
            iterations[key] = MINI_ITERATIONS[key]
        else:
            iterations[key] = max(1, int(round(FULL_ITERATIONS[key] * args.scale)))

    def pick(value, full, small):
        return value if value is not None else (small if mini else full)

    return {
        "mini": mini,
        "arch": args.arch,
        "iterations": iterations,
        "train_preset": "tiny" if mini else "train-quarter",
        "static_count": 8 if mini else 200,
        "static_size": 64 if mini else 256,
        "s2m_instances": pick(args.s2m_instances, 400, 6),
        "crop_size": pick(args.crop_size, 96, 64),
        "batch_size": pick(args.batch_size, None, 2),
        "num_workers": pick(args.num_workers, default_workers(args.num_threads), 0),
        "ablation_jobs": pick(args.ablation_jobs, args.num_threads, 1),
        "s2m_lr": args.s2m_lr,
        "fusion_lr": args.fusion_lr,
        "s2m_amp": args.s2m_amp,
        "val_sequences": pick(args.val_sequences, 20, 2),
        "val_frames": pick(args.val_frames, 16, 6),
        "val_height": pick(args.val_height, 120, 48),
        "val_width": pick(args.val_width, 216, 64),
        "max_interactions": pick(args.max_interactions, 8, 3),
        "rows": list(args.rows) if args.rows else (["diff", "oracle"] if mini else
                                                     list(ROW_KEYS)),
        "generate": (["--generate-separation", "3", "--generate-range", "4",
                      "--generate-max-videos", "2"] if mini else []),
    }


def val_specs(cfg: dict):
    """The validation sequences: 1-3 objects, 1-2 scribble files, subset ``val``."""
    from dataset.synthetic import SequenceSpec

    specs = []
    for i in range(cfg["val_sequences"]):
        frames = cfg["val_frames"] + (2 * (i % 2) if cfg["mini"] else 0)
        objects = 1 + i % 3 if not cfg["mini"] else 1 + i % 2
        scribbles = 1 + i % 2 if not cfg["mini"] else 1
        specs.append(SequenceSpec(f"qs-val-{i:03d}", frames, cfg["val_height"], cfg["val_width"],
                                  objects, min(scribbles, frames), "val"))
    return specs


class Paths:
    def __init__(self, out: Path):
        self.out = out
        self.data = out / "data"                       # --data-root of the trainers
        self.synthetic = self.data / "synthetic"       # where --data synthetic looks
        self.val = self.data / "val"
        self.data_done = self.data / "quickstart_data.json"
        self.train = out / "train"
        self.s2m = self.train / "s2m" / "s2m_final.pth"
        self.prop_s0 = self.train / "prop_s0" / "prop_s0_final.pth"
        self.prop_s2 = self.train / "prop_s2" / "prop_s2_final.pth"
        self.fusion = self.train / "fusion" / "fusion_s0_final.pth"
        self.ablation = out / "ablation"
        self.table = self.ablation / "table5.json"
        self.overlay = out / "overlay_diff.png"
        self.report = out / "report.md"
        self.timings = out / "timings.json"


# ============================================================================ steps


def step_data(cfg: dict, paths: Paths, seed: int) -> None:
    from dataset.synthetic import generate_static_pairs, write_dataset
    from util.fileio import atomic_save_json

    # the same folders and parameters as the trainers' --data synthetic mode, so they reuse it
    write_dataset(paths.synthetic / cfg["train_preset"], cfg["train_preset"], seed=seed)
    generate_static_pairs(paths.synthetic / "static", cfg["static_count"], cfg["static_size"],
                          seed)
    specs = val_specs(cfg)
    write_dataset(paths.val, "quickstart-val", seed=seed, specs=specs)
    atomic_save_json(paths.data_done, {"train_preset": cfg["train_preset"],
                                       "val": [s.name for s in specs]})


def common_train_args(cfg: dict, paths: Paths, args) -> list[str]:
    out = ["--preset", "lite", "--data", "synthetic", "--data-root", str(paths.data),
           "--synthetic-preset", cfg["train_preset"],
           "--synthetic-static-count", str(cfg["static_count"]),
           "--synthetic-static-size", str(cfg["static_size"]),
           "--crop-size", str(cfg["crop_size"]), "--num-workers", str(cfg["num_workers"]),
           "--num-threads", str(args.num_threads), "--seed", str(args.seed),
           "--device", args.device, "--no-tensorboard", "--no-progress",
           "--image-interval", "0", "--resume", "auto"]
    if cfg["batch_size"] is not None:
        out += ["--batch-size", str(cfg["batch_size"])]
    return out


def run_trainer(module_name: str, argv: list[str], final: Path) -> None:
    import importlib

    module = importlib.import_module(module_name)
    rc = module.main(argv)
    if rc != 0 or not final.is_file():
        raise RuntimeError(f"{module_name} failed (exit code {rc}); see {final.parent}/train.log")


def step_ablation(cfg: dict, paths: Paths, args) -> None:
    import torch

    if str(REPO / "scripts") not in sys.path:
        sys.path.insert(0, str(REPO / "scripts"))
    import ablation

    torch.set_num_threads(args.num_threads)
    argv = ["--davis", str(paths.val), "--output", str(paths.ablation), "--preset", "lite",
            "--s2m-model", str(paths.s2m), "--prop-model", str(paths.prop_s2),
            "--fusion-model", str(paths.fusion), "--arch", cfg["arch"], "--rows", *cfg["rows"],
            "--jobs", str(cfg["ablation_jobs"]),
            "--threads-per-job", str(max(1, args.num_threads // cfg["ablation_jobs"])),
            "--", "--device", args.device, "--max-interactions", str(cfg["max_interactions"]),
            "--save-masks"]
    rc = ablation.main(argv)
    if rc != 0:
        raise RuntimeError(f"ablation failed (exit code {rc})")


def ablation_done(cfg: dict, paths: Paths) -> bool:
    try:
        results = load_results(paths)
    except ValueError:
        return False
    return all(r in results for r in cfg["rows"])


# ============================================================================ report


def _strip(tiles: list, gap: int = 4):
    """Tiles side by side with white gaps."""
    import numpy as np

    space = np.full((tiles[0].shape[0], gap, 3), 255, np.uint8)
    parts = []
    for tile in tiles:
        parts += [tile, space]
    return np.concatenate(parts[:-1], axis=1)


def overlay_grid(paths: Paths, row: str, path: Path, num_frames: int = 4) -> str | None:
    """Frames of one validation sequence: the row's final masks (top), ground truth (below)."""
    import numpy as np
    from PIL import Image

    from util.fileio import atomic_save_image
    from util.palette import read_mask
    from util.video_io import overlay

    masks_root = paths.ablation / row / "masks"
    seqs = sorted(d for d in masks_root.iterdir() if d.is_dir()) if masks_root.is_dir() else []
    for seq_dir in seqs:
        samples = sorted(d for d in seq_dir.iterdir() if d.is_dir())
        if not samples:
            continue
        files = sorted(samples[0].glob("*.png"))
        if not files:
            continue
        seq = seq_dir.name
        picks = sorted({int(round(x)) for x in np.linspace(0, len(files) - 1, num_frames)})
        top, bottom = [], []
        for t in picks:
            image = np.asarray(Image.open(paths.val / "JPEGImages" / "480p" / seq /
                                          f"{t:05d}.jpg").convert("RGB"))
            pred = read_mask(files[t])
            gt = read_mask(paths.val / "Annotations" / "480p" / seq / f"{t:05d}.png")
            top.append(overlay(image, pred))
            bottom.append(overlay(image, gt))
        a, b = _strip(top), _strip(bottom)
        grid = np.concatenate([a, np.full((4, a.shape[1], 3), 255, np.uint8), b], axis=0)
        atomic_save_image(path, grid)
        return (f"`{seq}`, scribble file {samples[0].name}, frames "
                + ", ".join(str(t) for t in picks))
    return None


def empty_prediction_floor(val_root: Path) -> float | None:
    """J&F of an all-background answer on the validation set, with the official metrics and
    the session report's weighting (every sample x object x frame). Frames where an object is
    absent score 1 for an empty answer, so this is the score of a network that does nothing."""
    import numpy as np

    from util.davis_compat import ensure_compat
    from util.palette import read_mask

    ensure_compat()
    from davisinteractive.metrics import batched_f_measure, batched_jaccard

    from dataset.synthetic import sequence_metadata

    listing = val_root / "ImageSets" / "2017" / "val.txt"
    if not listing.is_file():
        return None
    meta = sequence_metadata(val_root)
    scores = []
    for seq in listing.read_text().split():
        files = sorted((val_root / "Annotations" / "480p" / seq).glob("[0-9]*.png"))
        gt = np.stack([read_mask(f) for f in files])
        k = int(meta[seq]["num_objects"])  # the session's object count (its metadata)
        empty = np.zeros_like(gt)
        j = batched_jaccard(gt, empty, average_over_objects=False, nb_objects=k)
        f = batched_f_measure(gt, empty, average_over_objects=False, nb_objects=k)
        samples = max(1, len(list((val_root / "Scribbles" / seq).glob("*.json"))))
        scores += [float(x) for x in (0.5 * (j + f)).ravel()] * samples
    return float(np.mean(scores)) if scores else None


def load_results(paths: Paths) -> dict:
    """The ablation rows finished so far (``table5.json``), or {}."""
    return json.loads(paths.table.read_text()) if paths.table.is_file() else {}


def write_report(cfg: dict, paths: Paths, timings: dict, results: dict, floor: float | None,
                 caption: str | None) -> float | None:
    """Write ``report.md`` from the finished parts; returns the final J&F of the diff row.
    ``floor`` is :func:`empty_prediction_floor`, ``caption`` what :func:`overlay_grid` returned."""
    from inference.davis_interactive import per_interaction_scores
    from util.fileio import atomic_write_text

    lines = ["# MiVOS quickstart report", "",
             f"Mode: {'mini (CI)' if cfg['mini'] else 'full'}; propagation architecture "
             f"`{cfg['arch']}`"
             + (" (the MiVOS-STCN network: shared key encoder, L2 affinity; every ablation row "
                "runs the MiVOS protocol)" if cfg["arch"] == "stcn" else "")
             + "; lite networks trained on "
             f"synthetic `{cfg['train_preset']}` data; iterations "
             + ", ".join(f"{k} {v}" for k, v in cfg["iterations"].items()) + ".",
             f"Validation: {cfg['val_sequences']} synthetic sequences of "
             f"{cfg['val_height']} x {cfg['val_width']} in `{paths.val}` (official "
             f"davisinteractive robot and session, {cfg['max_interactions']} interactions).",
             ""]
    final = None
    if "diff" in results:
        final = per_interaction_scores(results["diff"])[-1]
        lines += [f"**J&F after the last interaction, difference-aware fusion: {final:.3f}** "
                  f"(AUC {results['diff']['auc']:.3f}, J&F@60s "
                  f"{results['diff']['metric_at_threshold']['J_AND_F']:.3f})", ""]
    if floor is not None:
        lines += [f"For scale: an all-background answer scores J&F {floor:.3f} on this "
                  "validation set (frames where an object is absent count 1).", ""]
    table_md = paths.ablation / "table5.md"
    if table_md.is_file():
        body = table_md.read_text().split("\n", 1)[1].strip()
        lines += ["## Ablation (layout of the paper's Table 5)", "", body, ""]
    curves = paths.ablation / "table5_curves.png"
    if curves.is_file():
        lines += ["## J&F against time and after each interaction", "",
                  f"![J&F vs time]({curves.relative_to(paths.out).as_posix()})", ""]
    if caption:
        lines += ["## Example frames (difference-aware fusion, final masks; ground truth below)",
                  "", caption, "", f"![overlay]({paths.overlay.name})", ""]
    lines += ["## Time per step", "", "| step | seconds | status |", "|---|---|---|"]
    for step in STEPS:
        if step in timings:
            t = timings[step]
            lines.append(f"| {step} | {t['seconds']:.1f} | {t['status']} |")
    total = sum(t["seconds"] for t in timings.values())
    lines += [f"| total | {total:.1f} | |", ""]
    atomic_write_text(paths.report, "\n".join(lines))
    return final


# ============================================================================ main


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from util.errors import InputError, report

    try:
        return _main(args)
    except (InputError, FileNotFoundError) as exc:
        return report(exc)


def _main(args) -> int:
    from util.errors import require_output_dir
    from util.fileio import atomic_save_json
    from util.fingerprint import check_fingerprint, load_fingerprint, save_fingerprint

    cfg = settings(args)
    paths = Paths(Path(args.output))
    require_output_dir(paths.out)
    fingerprint = run_fingerprint(args, cfg)
    if args.restart:
        discard_run(paths)
    else:
        stored = load_fingerprint(paths.out)
        if stored is None and paths.timings.is_file():
            from util.fingerprint import FingerprintMismatch

            raise FingerprintMismatch(
                f"{paths.out} holds a quickstart run without a fingerprint (an older version's "
                "run); use another --output, or --restart to delete it", paths.out)
        check_fingerprint(stored, fingerprint, paths.out, "--restart")
    paths.out.mkdir(parents=True, exist_ok=True)
    save_fingerprint(paths.out, fingerprint)
    timings: dict = json.loads(paths.timings.read_text()) if paths.timings.is_file() else {}
    common = common_train_args(cfg, paths, args)
    it = cfg["iterations"]

    def train_dir(final: Path) -> list[str]:
        # the run's own file names, whatever the trainer's default for the architecture
        return ["--output", str(final.parent), "--name", final.name[: -len("_final.pth")]]

    arch = ["--arch", cfg["arch"]]

    def save_every(n: int) -> list[str]:
        return ["--save-interval", str(max(1, min(100, n)))]

    steps = [
        ("data", lambda: paths.data_done.is_file(),
         lambda: step_data(cfg, paths, args.seed)),
        ("s2m", paths.s2m.is_file,
         lambda: run_trainer("train_s2m", common + train_dir(paths.s2m) + save_every(it["s2m"])
                             + ["--iterations", str(it["s2m"]), "--lr", str(cfg["s2m_lr"]),
                                "--amp", cfg["s2m_amp"],
                                "--synthetic-instances", str(cfg["s2m_instances"])], paths.s2m)),
        ("prop_s0", paths.prop_s0.is_file,
         lambda: run_trainer("train_prop", common + train_dir(paths.prop_s0)
                             + save_every(it["prop_s0"])
                             + arch + ["--stage", "s0", "--iterations", str(it["prop_s0"]),
                                       "--lr", str(args.prop_lr)],
                             paths.prop_s0)),
        ("prop_s2", paths.prop_s2.is_file,
         lambda: run_trainer("train_prop", common + train_dir(paths.prop_s2)
                             + save_every(it["prop_s2"])
                             + arch + ["--stage", VIDEO_STAGE[cfg["arch"]],
                                       "--iterations", str(it["prop_s2"]),
                                       "--lr", str(args.prop_lr), "--load", str(paths.prop_s0)],
                             paths.prop_s2)),
        # fusion: constant LR (no --lr-steps): at this length the recipe's step, scaled to
        # two thirds of the run, would leave most of the iterations at a tenth of the LR
        ("fusion", paths.fusion.is_file,
         lambda: run_trainer("train_fusion", common + train_dir(paths.fusion)
                             + save_every(it["fusion"])
                             + arch + ["--iterations", str(it["fusion"]), "--lr-steps",
                                       "--lr", str(cfg["fusion_lr"]),
                                "--prop-model", str(paths.prop_s2)] + cfg["generate"],
                             paths.fusion)),
        ("ablation", lambda: ablation_done(cfg, paths),
         lambda: step_ablation(cfg, paths, args)),
    ]
    start_all = time.time()
    for name, done, run in steps:
        if done():
            print(f"[quickstart] {name}: done earlier, skipped", flush=True)
            if name in timings:
                timings[name]["status"] = "done earlier"
            continue
        print(f"[quickstart] {name}: running (started {time.strftime('%H:%M:%S')})", flush=True)
        t0 = time.time()
        run()
        timings[name] = {"seconds": time.time() - t0, "status": "done"}
        atomic_save_json(paths.timings, timings)
        print(f"[quickstart] {name}: {timings[name]['seconds']:.1f} s", flush=True)
    # report: the floor and the overlay once, then the text (written again once the report's
    # own time is known, so that its table lists it)
    t0 = time.time()
    results = load_results(paths)
    floor = empty_prediction_floor(paths.val) if results else None
    caption = overlay_grid(paths, "diff", paths.overlay) if "diff" in results else None
    final = write_report(cfg, paths, timings, results, floor, caption)
    timings["report"] = {"seconds": time.time() - t0, "status": "done"}
    atomic_save_json(paths.timings, timings)
    write_report(cfg, paths, timings, results, floor, caption)
    if floor is not None:
        print(f"[quickstart] an all-background answer scores J&F {floor:.3f} on the "
              "validation set")
    if final is not None:
        print(f"[quickstart] J&F after the last interaction (difference-aware fusion): "
              f"{final:.3f}")
    print(f"[quickstart] finished in {time.time() - start_all:.1f} s; report: {paths.report}",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
