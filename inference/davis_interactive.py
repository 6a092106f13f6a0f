"""DAVIS interactive-track driver: the official robot and metrics, our S2M + propagation + fusion.

Protocol (MiVOS's): each sample (sequence x initial scribble) gets up to 8 interactions. The
robot's scribbles are rasterised with the official ``scribbles2mask`` and turned into a mask by
S2M on the scribbled frame. Only after the 3rd, 6th and 8th interaction is the mask committed
and propagated (with fusion); after the others only that frame is updated and the robot is sent
back to the same frame (candidate list ``[frame]``), so three frames get annotated per sample.

Two variants of the per-interaction arithmetic (``DavisEvalConfig.protocol``):

``mivos`` (default): exactly what the original driver computes (REFERENCE.md e.2), quirks
included. Everything happens at the padded size (multiples of 16): the scribbles are rasterised
at the padded size (so they are stretched over the padding instead of shifted by it), dilated
there, and fed to S2M uncropped; the "existing mask" is the padded hard mask, whose padding
carries object labels after a propagation; S2M's padded output, padding included, is what the
core shows or commits (so the memory of the interacted frame sees it). When the robot returns
an empty scribble, the interaction falls on the last frame of the video with empty maps (S2M
still runs) and the robot is sent there.

``corrected``: our corrections of those quirks. (1) Scribbles are rasterised at the image size,
so they land where the robot drew them. (2) S2M's inputs are zero in the padding: no strokes and
no labels there. (3) S2M's output is cropped to the image and the committed mask carries no
probability in the padding (every channel, background included, is zero there). (4) An empty
robot scribble keeps the last scribbled frame and its mask; S2M does not run.

Timing: the session times each interaction from ``get_scribbles`` to ``submit_masks``. As in the
original, every sequence is loaded before the session starts, so no disk I/O is timed; the
bookkeeping of a finished sample (its report rows, its PNGs) is done between samples, outside
the timed interval. The timed interval holds the construction of the sample's inference core
(as the original's), S2M, and propagation with fusion.

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
from inference.interact.interactions import ScribbleInteraction, scribble_maps
from inference.interact.s2m_controller import S2MController
from util.davis_compat import ensure_compat
from util.fileio import atomic_save_json, atomic_write_text

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
    protocol: str = "mivos"  # mivos (the original's arithmetic) | corrected (see the module doc)
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


PROTOCOLS = ("mivos", "corrected")


class DavisSampleProcessor:
    """Our pipeline on one sample: S2M on the scribbled frame, propagation on schedule."""

    def __init__(self, frames: np.ndarray, gt: np.ndarray, num_objects: int, prop_net, fusion_net,
                 s2m_net, config: DavisEvalConfig, device: torch.device):
        if config.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {config.protocol!r}")
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
        self.padded = config.protocol == "mivos"

    def rasterise(self, scribbles: dict) -> tuple[int, np.ndarray]:
        """(frame index, label map with -1 = no scribble) of the latest scribble.

        ``mivos``: the map is at the padded size (``scribbles2mask`` given the padded size) and
        an empty scribble falls on the last frame of the video. ``corrected``: the map is at the
        image size and an empty scribble falls on the last scribbled frame.
        """
        ensure_compat()
        from davisinteractive.utils.scribbles import annotated_frames, scribbles2mask

        size = (self.core.ph, self.core.pw) if self.padded else (self.h, self.w)
        frames = annotated_frames(scribbles)
        if not frames:
            if self.padded:
                t = len(scribbles["scribbles"]) - 1
            elif self.last_frame is None:
                raise ValueError("the first scribble of a sample is empty")
            else:
                t = self.last_frame
            return t, np.full(size, -1, dtype=np.int64)
        if len(frames) != 1:
            raise ValueError(f"expected the latest scribble on one frame, got frames {frames}")
        t = frames[0]
        self.last_frame = t
        # rasterise only that frame (the whole video's maps would be T times the work)
        one = {**scribbles, "scribbles": [scribbles["scribbles"][t]]}
        return t, scribbles2mask(one, size)[0].astype(np.int64)

    def _s2m(self, t: int, labels: np.ndarray) -> tuple[torch.Tensor, bool]:
        """New probabilities of frame t from its scribble map: (probabilities, padded?)."""
        if self.config.oracle or self.controller is None:
            return torch.from_numpy(self.gt[t].astype(np.int64)), False
        if self.padded:
            pos, neg = scribble_maps(torch.from_numpy(labels), self.k)
            existing = torch.from_numpy(self.core.get_padded_mask(t).astype(np.int64))
            return self.controller.forward_padded(self.core.image(t), existing, pos, neg), True
        image = torch.from_numpy(self.frames[t]).permute(2, 0, 1).float() / 255
        current = torch.nn.functional.one_hot(torch.from_numpy(self.core.get_mask(t).astype(np.int64)),
                                              self.k + 1).permute(2, 0, 1).float()
        if (labels == -1).all():
            log.info("empty scribble on frame %d; keeping the current mask", t)
            return current, False
        return ScribbleInteraction(torch.from_numpy(labels), self.controller).apply(image, current), False

    def step(self, scribbles: dict) -> tuple[np.ndarray, list[int] | None]:
        """One interaction -> (T x H x W masks to submit, next frame candidates)."""
        t, labels = self.rasterise(scribbles)
        self.count += 1
        new, padded = self._s2m(t, labels)
        if self.count in self.config.propagate_after:
            return self.core.interact(new, t, padded=padded), None
        self.core.update_mask_only(new, t, padded=padded)
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
        # every sequence is loaded before the session's clock runs, as the original does
        sequences = {seq: load_sequence(root, seq) for seq in dict.fromkeys(s[0] for s in sess.samples)}
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
            # A new sample starts when the session has no scribble for it yet. The previous
            # sample's bookkeeping happens here, before get_scribbles starts the timer.
            starting = sess.interaction_nb == 0 and sess.sample_scribbles is None
            if starting:
                if current is not None:
                    finish(current)
                    finished_now += 1
                current = tuple(sess.samples[sess.sample_idx])
                if progress is not None:
                    progress(current[0], finished_now, len(sess.samples))
            seq, scribbles, new_sample = sess.get_scribbles(only_last=True)
            if new_sample != starting:
                raise RuntimeError("davisinteractive's session changed sample unexpectedly; "
                                   "this driver supports davisinteractive 1.0.4")
            if new_sample:
                # timed, as in the original: building the sample's processor
                frames, gt = sequences[seq]
                num_objects = int(gt[0].max()) if gt[0].max() > 0 else int(gt.max())
                processor = DavisSampleProcessor(frames, gt, num_objects, prop_net, fusion_net,
                                                 None if config.oracle else s2m_net, config, device)
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
