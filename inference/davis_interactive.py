"""DAVIS interactive-track driver: the official robot and metrics, our S2M + propagation + fusion.

Protocol (MiVOS's): each sample (sequence x initial scribble) gets up to 8 interactions. The
robot's scribbles are rasterised with the official ``scribbles2mask`` and turned into a mask by
S2M on the scribbled frame. Only after the 3rd, 6th and 8th interaction is the mask committed
and propagated (with fusion); after the others only that frame is updated and the robot is sent
back to the same frame (candidate list ``[frame]``), so three frames get annotated per sample.

Resuming: the report rows of every finished sample are saved to ``<output>/samples/``. On a
restart the finished samples are removed from the official session's sample list, and at the
end the summary is computed by the official service from the merged report of all runs.

``davisinteractive`` is imported lazily, through :mod:`util.davis_compat`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from inference.inference_core import InferenceConfig, InferenceCore
from inference.interact.interactions import ScribbleInteraction
from inference.interact.s2m_controller import S2MController
from util.fileio import atomic_save_json, atomic_write_text
from util.tensor_util import compute_pad

log = logging.getLogger(__name__)

REPORT_COLUMNS = ["sequence", "scribble_idx", "interaction", "object_id", "frame", "jaccard",
                  "contour", "j_and_f", "timing"]


@dataclass
class DavisEvalConfig:
    """Settings of one DAVIS interactive evaluation run."""

    davis_root: str
    output: str
    subset: str = "val"
    max_interactions: int = 8
    seconds_per_interaction: float = 30.0  # the session's max_time is this x max_interactions
    propagate_after: tuple[int, ...] = (3, 6, 8)  # 1-based interaction numbers that propagate
    oracle: bool = False  # ground truth replaces S2M's output ("perfect interaction")
    padded_scribbles: bool = False  # rasterise scribbles at the padded size (original quirk)
    save_masks: bool = False
    resume: bool = True
    inference: InferenceConfig = field(default_factory=InferenceConfig)


def check_davis_root(root: str | Path, subset: str = "val") -> Path:
    """Fail early, with what is missing and where to get it, instead of letting the official
    package try to download DAVIS."""
    root = Path(root)
    hint = ("Download DAVIS 2017 trainval (480p) and the interactive scribbles from "
            "https://davischallenge.org/davis2017/code.html and point --davis at the folder that "
            "holds JPEGImages/, Annotations/, ImageSets/ and Scribbles/; or generate a synthetic "
            "stand-in with `python -m dataset.synthetic --out DIR --preset davis-val`.")
    if not root.is_dir():
        raise FileNotFoundError(f"DAVIS root {root} does not exist. {hint}")
    needed = [root / "JPEGImages" / "480p", root / "Annotations" / "480p", root / "Scribbles",
              root / "ImageSets" / "2017" / f"{subset}.txt"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise FileNotFoundError(f"DAVIS root {root} is incomplete; missing: {', '.join(missing)}. {hint}")
    return root


def load_sequence(root: Path, seq: str) -> tuple[np.ndarray, np.ndarray]:
    """Frames T x H x W x 3 uint8 and ground-truth label maps T x H x W uint8 of one sequence."""
    from util.palette import read_mask
    from util.video_io import FrameSource

    frames = FrameSource(root / "JPEGImages" / "480p" / seq, cache_size=0).load_all()
    ann_dir = root / "Annotations" / "480p" / seq
    files = sorted(ann_dir.glob("*.png"))
    if len(files) != len(frames):
        raise FileNotFoundError(f"{ann_dir}: {len(files)} annotations for {len(frames)} frames")
    gt = np.stack([read_mask(f) for f in files])
    if gt.shape[1:] != frames.shape[1:3]:
        raise ValueError(f"{ann_dir}: annotations are {gt.shape[1:]}, frames {frames.shape[1:3]}")
    return frames, gt


class DavisSampleProcessor:
    """Our pipeline on one sample: S2M on the scribbled frame, propagation on schedule."""

    def __init__(self, frames: np.ndarray, gt: np.ndarray, num_objects: int, prop_net, fusion_net,
                 s2m_net, config: DavisEvalConfig, device: torch.device):
        self.config = config
        self.frames = frames
        self.gt = gt
        self.k = num_objects
        self.core = InferenceCore(prop_net, fusion_net if config.inference.fusion == "diff" else None,
                                  frames, num_objects, config.inference, device=device)
        self.controller = S2MController(s2m_net, device) if s2m_net is not None else None
        self.count = 0
        self.last_frame: int | None = None
        self.h, self.w = frames.shape[1:3]

    def rasterise(self, scribbles: dict) -> tuple[int, np.ndarray]:
        """(frame index, H x W label map with -1 = no scribble) of the latest scribble.

        The robot returns an empty scribble when it finds no error to correct; that interaction
        then acts on the last scribbled frame with an empty map (the mask stays as it is).
        """
        from util.davis_compat import ensure_compat

        ensure_compat()
        from davisinteractive.utils.scribbles import annotated_frames, scribbles2mask

        frames = annotated_frames(scribbles)
        if not frames:
            if self.last_frame is None:
                raise ValueError("the first scribble of a sample is empty")
            return self.last_frame, np.full((self.h, self.w), -1, dtype=np.int64)
        if len(frames) != 1:
            raise ValueError(f"expected the latest scribble on one frame, got frames {frames}")
        t = frames[0]
        self.last_frame = t
        if self.config.padded_scribbles:
            left, right, top, bottom = compute_pad(self.h, self.w)
            full = scribbles2mask(scribbles, (self.h + top + bottom, self.w + left + right))[t]
            labels = full[top:top + self.h, left:left + self.w]
        else:
            labels = scribbles2mask(scribbles, (self.h, self.w))[t]
        return t, labels.astype(np.int64)

    def step(self, scribbles: dict) -> tuple[np.ndarray, list[int] | None]:
        """One interaction -> (T x H x W masks to submit, next frame candidates)."""
        t, labels = self.rasterise(scribbles)
        self.count += 1
        if self.config.oracle or self.controller is None:
            new = self.gt[t].astype(np.int64)
        else:
            image = torch.from_numpy(self.frames[t]).permute(2, 0, 1).float() / 255
            current = torch.nn.functional.one_hot(torch.from_numpy(self.core.get_mask(t).astype(np.int64)),
                                                  self.k + 1).permute(2, 0, 1).float()
            if (labels == -1).all():
                log.info("empty scribble on frame %d; keeping the current mask", t)
                new = current
            else:
                new = ScribbleInteraction(torch.from_numpy(labels), self.controller).apply(image, current)
        if self.count in self.config.propagate_after:
            masks = self.core.interact(new, t)
            return masks, None
        self.core.update_mask_only(new, t)
        return self.core.masks, [t]


def _sample_file(out: Path, seq: str, scribble_idx: int) -> Path:
    return out / "samples" / f"{seq}__{scribble_idx}.csv"


def _finished_samples(out: Path) -> set[tuple[str, int]]:
    done = set()
    for f in (out / "samples").glob("*__*.csv"):
        seq, idx = f.stem.rsplit("__", 1)
        done.add((seq, int(idx)))
    return done


def run_davis_interactive(config: DavisEvalConfig, prop_net, fusion_net, s2m_net,
                          device: torch.device | str = "cpu",
                          progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Run the official session; returns the official global summary (also written to
    ``<output>/summary.json``)."""
    import pandas as pd

    from util.davis_compat import ensure_compat

    ensure_compat()
    from davisinteractive.session import DavisInteractiveSession

    root = check_davis_root(config.davis_root, config.subset)
    out = Path(config.output)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    done = _finished_samples(out) if config.resume else set()
    if not config.resume:
        for f in (out / "samples").glob("*.csv"):
            f.unlink()

    session = DavisInteractiveSession(
        davis_root=str(root), subset=config.subset,
        max_nb_interactions=config.max_interactions,
        max_time=config.max_interactions * config.seconds_per_interaction,
        report_save_dir=str(out / "session"))
    with session as sess:
        all_samples = list(sess.samples)
        sess.samples = [s for s in all_samples if (s[0], int(s[1])) not in done]
        if done:
            log.info("resuming: %d of %d samples already finished", len(all_samples) - len(sess.samples),
                     len(all_samples))
        processor = None
        current = None
        finished_now = 0

        def finish(sample):
            seq, idx = sample
            rep = sess.get_report()
            rows = rep[(rep["sequence"] == seq) & (rep["scribble_idx"] == idx)][REPORT_COLUMNS]
            atomic_write_text(_sample_file(out, seq, idx), rows.to_csv(index=False))
            if config.save_masks and processor is not None:
                from util.palette import write_palette_png
                for t, m in enumerate(processor.core.masks):
                    write_palette_png(out / "masks" / seq / str(idx) / f"{t:05d}.png", m)

        while sess.next():
            seq, scribbles, new_sample = sess.get_scribbles(only_last=True)
            if new_sample:
                if current is not None:
                    finish(current)
                    finished_now += 1
                current = tuple(sess.samples[sess.sample_idx])
                frames, gt = load_sequence(root, seq)
                num_objects = int(gt[0].max()) if gt[0].max() > 0 else int(gt.max())
                processor = DavisSampleProcessor(frames, gt, num_objects, prop_net, fusion_net,
                                                 None if config.oracle else s2m_net, config, device)
                if progress is not None:
                    progress(seq, finished_now, len(sess.samples))
            masks, candidates = processor.step(scribbles)
            sess.submit_masks(masks.astype(np.int64), next_scribble_frame_candidates=candidates)
        if current is not None:
            finish(current)

        frames = [pd.read_csv(f) for f in sorted((out / "samples").glob("*.csv"))]
        report = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=REPORT_COLUMNS)
        summary = sess.connector.service.summarize_report(report)

    summary = json.loads(json.dumps(summary, default=float))
    atomic_write_text(out / "report.csv", report.to_csv(index=False))
    atomic_save_json(out / "summary.json", summary)
    cfg = asdict(config)
    atomic_save_json(out / "config.json", cfg)
    return summary


def per_interaction_scores(summary: dict, metric: str = "J_AND_F") -> list[float]:
    """The metric after each interaction (the curve without its (0, 0) start and final point)."""
    values = summary["curve"][metric]
    return [float(v) for v in values[1:-1]]


def plot_curve(summary: dict, path: str | Path, metric: str = "J_AND_F", label: str | None = None) -> None:
    """J&F against cumulative time, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(summary["curve"]["time"], summary["curve"][metric], marker="o", label=label)
    ax.axvline(60, color="gray", linestyle="--", linewidth=0.8)
    ax.set_xlabel("time (s)")
    ax.set_ylabel(metric.replace("_AND_", "&"))
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(f"AUC {summary['auc']:.3f}, @60s {summary['metric_at_threshold'][metric]:.3f}")
    if label:
        ax.legend()
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
