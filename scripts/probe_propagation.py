"""Probe what a trained propagation network has learnt, on three-frame clips of real videos.

The training forward (:class:`train.propagation.PropagationTrainWrapper`, full softmax, the
same computation as in training) is run on clips taken from whole frames of a DAVIS-layout set
instead of training crops, and the IoU of each object is measured on frames 1 and 2 of the
clip. Two kinds of clip:

* ``copy``: the same frame three times. The memory frame, with its ground-truth mask, is also
  the query, so a network whose memory read matches a pixel to itself reproduces the mask
  (IoU near 1). A low IoU means the keys of the memory encoder and of the query encoder are not
  aligned yet: the read spreads over the whole frame.
* ``gap G``: frames t, t + G, t + 2G (objects moved a little).

The table starts with a baseline row, ``mask of frame t``: the ground truth of the first frame
of each clip taken as the answer for frames 1 and 2 (no network). On the copy probe it scores 1;
on small gaps it shows how far the objects moved.

Each probe is run at the frames' own size and, with ``--sizes``, resized (e.g. ``96x176``, the
scale of lite training crops on 240-high frames). One object is the target, the next one (if
any) the second slot, as in training; ``--single`` leaves the second slot empty.

Example (the figures in docs/QUICKSTART_RESULTS.md)::

    python scripts/probe_propagation.py --root runs/quickstart/data/synthetic/train-quarter \\
        --split train --sequences 8 --preset lite \\
        --model quickstart=runs/quickstart/train/prop_s2/prop_s2_final.pth \\
        --json out/probe.json

Prints a Markdown table (mean IoU over every object and frame of the probe).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: the project's packages are beside scripts/
    sys.path.insert(0, str(REPO))

from dataset.common import read_image, read_label_mask  # noqa: E402
from model.checkpoint import load_propagation_weights  # noqa: E402
from model.presets import build_propagation  # noqa: E402
from train.propagation import PropagationTrainWrapper  # noqa: E402
from util.fileio import atomic_save_json  # noqa: E402
from util.tensor_util import normalize_image, pad_divide_by, unpad  # noqa: E402

BASELINE = "mask of frame t"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="DAVIS-layout root (JPEGImages/480p, "
                                                  "Annotations/480p, ImageSets/2017)")
    p.add_argument("--split", default="val", help="ImageSets/2017/<split>.txt (default val)")
    p.add_argument("--sequences", type=int, default=8,
                   help="the first N sequences of the split (default 8)")
    p.add_argument("--model", action="append", required=True, metavar="NAME=FILE",
                   help="a propagation checkpoint (single-object stage-0 weights are widened); "
                        "repeat for several")
    p.add_argument("--preset", default="mivos", choices=("mivos", "lite"))
    p.add_argument("--gaps", type=int, nargs="+", default=[0, 2],
                   help="frame gaps G (0 = the copy probe); default 0 2")
    p.add_argument("--starts", type=int, nargs="+", default=[0, 5],
                   help="first frames t of the clips (default 0 5)")
    p.add_argument("--sizes", nargs="+", default=["full"],
                   help="'full' and/or HxW to resize the frames to (padded to multiples of 16, "
                        "as in inference)")
    p.add_argument("--single", action="store_true", help="leave the second object slot empty")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--json", default=None, help="also write the results here")
    return p


def _parse_size(text: str) -> tuple[int, int] | None:
    if text == "full":
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"error: --sizes takes 'full' or HxW, got {text!r}") from None
    if h <= 0 or w <= 0:
        raise SystemExit(f"error: --sizes {text}: H and W must be positive")
    return h, w


def load_clip(root: Path, seq: str, frames: list[int], size):
    """Frames (3 x 3 x H x W, normalised) and label maps (3 x H x W int64) of one clip."""
    imgs, labels = [], []
    for t in frames:
        img = read_image(root / "JPEGImages" / "480p" / seq / f"{t:05d}.jpg")
        imgs.append(torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 255)
        labels.append(torch.from_numpy(
            read_label_mask(root / "Annotations" / "480p" / seq / f"{t:05d}.png")
            .astype(np.int64)))
    x, y = torch.stack(imgs), torch.stack(labels)
    if size is not None:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        y = F.interpolate(y[:, None].float(), size=size, mode="nearest")[:, 0].long()
    return normalize_image(x), y


def probe(wrapper, root: Path, seqs: list[str], gap: int, starts: list[int], size,
          single: bool) -> tuple[float, int]:
    """Mean IoU of the target object on frames 1 and 2 over every clip and object
    (``wrapper`` None: the baseline, frame t's ground truth as the answer)."""
    ious = []
    for seq in seqs:
        n = len(list((root / "JPEGImages" / "480p" / seq).glob("*.jpg")))
        for t in starts:
            frames = [t, t + gap, t + 2 * gap]
            if frames[-1] >= n:
                continue
            x, y = load_clip(root, seq, frames, size)
            x, pad = pad_divide_by(x, 16)  # zero padding, removed from the answers below
            num_objects = int(y[0].max())
            for a in range(1, num_objects + 1):
                b = 0 if single or num_objects == 1 else a % num_objects + 1
                gt = pad_divide_by((y == a).float(), 16)[0][None, :, None]
                sec = (pad_divide_by((y == b).float(), 16)[0][None, :, None] if b
                       else torch.zeros_like(gt))
                sel = torch.tensor([[1.0, 1.0 if b else 0.0]])
                out = None
                if wrapper is not None:
                    with torch.no_grad():
                        out = wrapper(x[None], gt, sec, sel)
                for i in (0, 1):
                    target = y[i + 1] == a
                    if not target.any():
                        continue
                    pred = ((y[0] == a) if out is None
                            else unpad(out.prob[i].argmax(dim=1)[0] == 1, pad))
                    ious.append(float((pred & target).sum()) / float((pred | target).sum()))
    return (sum(ious) / len(ious) if ious else float("nan")), len(ious)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    root = Path(args.root)
    listing = root / "ImageSets" / "2017" / f"{args.split}.txt"
    if not listing.is_file():
        print(f"error: {listing}: no such sequence list", file=sys.stderr)
        return 2
    seqs = [s.strip() for s in listing.read_text().splitlines() if s.strip()][:args.sequences]
    sizes = [(s, _parse_size(s)) for s in args.sizes]
    models = []
    for item in args.model:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item).stem, item
        models.append((name, path))

    results = []
    models.insert(0, (BASELINE, None))
    for name, path in models:
        wrapper = None
        if path is not None:
            net = build_propagation(args.preset)
            load_propagation_weights(net, path)
            wrapper = PropagationTrainWrapper(net).eval()
        for label, size in sizes:
            for gap in args.gaps:
                miou, count = probe(wrapper, root, seqs, gap, args.starts, size, args.single)
                results.append({"model": name, "file": str(path) if path else None, "size": label,
                                "probe": "copy" if gap == 0 else f"gap {gap}",
                                "mean_iou": miou, "count": count})
                print(f"{name} {label} {results[-1]['probe']}: {miou:.3f} ({count})",
                      file=sys.stderr, flush=True)

    probes = list(dict.fromkeys(r["probe"] for r in results))
    print("| model | size | " + " | ".join(probes) + " |")
    print("|---|---|" + "---:|" * len(probes))
    for name, _ in models:
        for label, _ in sizes:
            cells = [next(f"{r['mean_iou']:.3f}" for r in results if r["model"] == name
                          and r["size"] == label and r["probe"] == p) for p in probes]
            print(f"| {name} | {label} | " + " | ".join(cells) + " |")
    if args.json:
        atomic_save_json(args.json, {"root": str(root), "split": args.split, "sequences": seqs,
                                     "single": args.single, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
