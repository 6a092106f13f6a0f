"""DAVIS interactive-track driver: the official robot and metrics, our S2M + propagation + fusion.

Protocol (MiVOS's): each sample (sequence x initial scribble) gets up to 8 interactions. The
robot's scribbles are rasterised (:func:`util.scribble_raster.scribbles_to_labels`: the pixels of
the official ``scribbles2mask``, vectorised) and turned into a mask by
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

The empty-scribble rule can be set on its own (``DavisEvalConfig.empty_scribble``,
``--empty-scribble last-frame|keep``; default: the protocol's rule). The perfect-interaction
row of the ablation (``oracle``) runs ``mivos`` with ``keep``: with the ground truth on the
interacted frame the robot finds nothing to correct there and returns an empty scribble, and
``last-frame`` would then move the perfect interaction to the last frame of the video (whose
ground truth may be empty), so that row would measure the rule rather than the interaction.

Timing: the session times each interaction from ``get_scribbles`` to ``submit_masks``. As in the
original, every sequence is loaded before the session starts, so no disk I/O is timed; the
bookkeeping of a finished sample (its report rows, its PNGs) is done between samples, outside
the timed interval. The timed interval holds the construction of the sample's inference core
(as the original's), S2M, and propagation with fusion.

Resuming: the report rows of every finished sample are saved to ``<output>/samples/``
(``<seq>__<idx>.csv``), and the run fingerprint (:mod:`util.fingerprint`: the resolved settings
and the hash of every weight file) to ``<output>/fingerprint.json``. A rerun with the same
fingerprint removes the finished samples from the official session's sample list; at the end
the summary is computed by the official service from the merged report of all runs. When every
sample is finished, the summary is rebuilt without starting the session. A rerun with another
fingerprint stops with a message naming the differences (``--restart`` discards the earlier
results).

Objects: the session, the robot and the metrics use object ids 1..``num_objects`` of
davisinteractive's metadata for the sequence, so the driver does too; 254 and 255 are void.
:func:`validate_davis_data` checks the data against that metadata before the session starts.

Architectures: ``DavisEvalConfig.inference.arch`` (``--arch``) names the propagation network
(:mod:`inference.arch`); the protocol is the same for both.

``davisinteractive`` is imported lazily, through :mod:`util.davis_compat` (it needs the
compatibility patches first).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from inference.inference_core import InferenceConfig, InferenceCore
from inference.interact.interactions import ScribbleInteraction, scribble_maps
from inference.interact.s2m_controller import S2MController
from util.cli import cli_field
from util.davis_compat import ensure_compat
from util.errors import InputError, MissingInputError, require_output_dir
from util.filecheck import check_image, check_mask
from util.fileio import atomic_save_json, atomic_write, atomic_write_text
from util.fingerprint import (
    FINGERPRINT_FILE,
    FingerprintMismatch,
    check_fingerprint,
    load_fingerprint,
    make_fingerprint,
    save_fingerprint,
)
from util.palette import (
    DAVIS_VOID_LABELS,
    object_ids,
    read_annotation,
    read_mask,
    write_palette_png,
)
from util.scribble_raster import scribbles_to_labels
from util.video_io import FrameSource, list_frame_files

log = logging.getLogger(__name__)

REPORT_COLUMNS = ["sequence", "scribble_idx", "interaction", "object_id", "frame", "jaccard",
                  "contour", "j_and_f", "timing"]


PROTOCOLS = ("mivos", "corrected")

#: what an empty robot scribble does (``DavisEvalConfig.empty_scribble``): the interaction falls
#: on the last frame of the video, or stays on the last scribbled frame
EMPTY_SCRIBBLE_RULES = ("last-frame", "keep")

#: each protocol's own rule for an empty scribble
PROTOCOL_EMPTY_SCRIBBLE = {"mivos": "last-frame", "corrected": "keep"}


@dataclass
class DavisEvalConfig:
    """Settings of one DAVIS interactive evaluation run (each field's metadata is its
    command-line option, :mod:`util.cli`; the inference options are those of
    :class:`~inference.inference_core.InferenceConfig`)."""

    davis_root: str = cli_field(
        help="DAVIS 2017 root (JPEGImages/480p, Annotations/480p, ImageSets/2017, Scribbles), "
        "or a synthetic stand-in made by `python -m dataset.synthetic`", flag="--davis")
    output: str = cli_field(help="output folder (summary.json, report.csv, plot)")
    subset: str = cli_field("val", "DAVIS subset evaluated by the session")
    max_interactions: int = cli_field(8, "interactions per sample")
    seconds_per_interaction: float = cli_field(
        30.0, "the session's time budget is this x max-interactions per object")
    propagate_after: tuple[int, ...] = cli_field(
        (3, 6, 8), "1-based interaction numbers that propagate", cli=False)
    oracle: bool = cli_field(
        False, "the ground-truth mask replaces S2M's output (the paper's 'perfect interaction')",
        action="store_true")
    protocol: str = cli_field(
        "mivos", "mivos: the original driver's arithmetic, quirks included: "
        "scribbles rasterised at the padded size (stretched over the padding), dilated there and "
        "fed to S2M uncropped; S2M's existing-mask input is the padded hard mask (labels in the "
        "padding); S2M's output is committed with its padding; an empty robot scribble falls on "
        "the last frame of the video. corrected: (1) scribbles rasterised at the image size; "
        "(2) S2M inputs zero in the padding; (3) the committed mask has no probability in the "
        "padding; (4) an empty robot scribble keeps the last scribbled frame and its mask (S2M "
        "does not run)", choices=PROTOCOLS)
    empty_scribble: str | None = cli_field(
        None, "what an empty robot scribble does. last-frame: the interaction falls on the last "
        "frame of the video (the original driver's rule); keep: it stays on the last scribbled "
        "frame. The ablation's perfect-interaction row uses keep: with the ground truth on the "
        "interacted frame the robot has nothing left to correct there, and last-frame would move "
        "the perfect interaction to the last frame of the video", choices=EMPTY_SCRIBBLE_RULES,
        default_text="the protocol's rule: mivos last-frame, corrected keep")
    save_masks: bool = cli_field(False, "write palette PNGs of every sample",
                                 action="store_true")
    resume: bool = cli_field(
        True, "discard the results of an earlier run in --output and start over (needed when "
        "it used other settings or weights; --no-resume is the old name)",
        flag="--restart", aliases=("--no-resume",), action="store_false",
        default_text="off: a rerun with the same settings resumes")
    inference: InferenceConfig = cli_field(default_factory=InferenceConfig, cli=False)


def check_davis_root(root: str | Path, subset: str = "val") -> Path:
    """Fail early, with what is missing and where to get it, instead of letting the official
    package try to download DAVIS."""
    root = Path(root)
    hint = ("Download DAVIS 2017 trainval (480p) and the interactive scribbles from "
            "https://davischallenge.org/davis2017/code.html and point --davis at the folder that "
            "holds JPEGImages/, Annotations/, ImageSets/ and Scribbles/; or generate a synthetic "
            "stand-in with `python -m dataset.synthetic --out DIR --preset davis-val`.")
    if not root.is_dir():
        raise MissingInputError(f"DAVIS root {root} does not exist. {hint}", root)
    needed = [root / "JPEGImages" / "480p", root / "Annotations" / "480p", root / "Scribbles",
              root / "ImageSets" / "2017" / f"{subset}.txt"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        what = "is an empty folder" if not any(root.iterdir()) else "is incomplete"
        raise MissingInputError(f"DAVIS root {root} {what}; missing: {', '.join(missing)}. {hint}",
                                root)
    return root


def load_sequence(root: Path, seq: str) -> tuple[np.ndarray, np.ndarray]:
    """Frames T x H x W x 3 uint8 and ground-truth label maps T x H x W uint8 of one sequence."""
    frames = FrameSource(root / "JPEGImages" / "480p" / seq, cache_size=0).load_all()
    ann_dir = root / "Annotations" / "480p" / seq
    files = sorted(ann_dir.glob("*.png"))
    if len(files) != len(frames):
        raise FileNotFoundError(f"{ann_dir}: {len(files)} annotations for {len(frames)} frames")
    gt = np.stack([read_mask(f) for f in files])
    if gt.shape[1:] != frames.shape[1:3]:
        raise ValueError(f"{ann_dir}: annotations are {gt.shape[1:]}, frames {frames.shape[1:3]}")
    return frames, gt


def empty_scribble_rule(config: DavisEvalConfig) -> str:
    """The empty-scribble rule in force: ``config.empty_scribble``, else the protocol's own
    (:data:`PROTOCOL_EMPTY_SCRIBBLE`)."""
    rule = config.empty_scribble or PROTOCOL_EMPTY_SCRIBBLE[config.protocol]
    if rule not in EMPTY_SCRIBBLE_RULES:
        raise ValueError(f"empty_scribble must be one of {EMPTY_SCRIBBLE_RULES}, got {rule!r}")
    return rule


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
        self.empty_rule = empty_scribble_rule(config)

    def rasterise(self, scribbles: dict) -> tuple[int, np.ndarray]:
        """(frame index, label map with -1 = no scribble) of the latest scribble.

        ``mivos``: the map is at the padded size (rasterised as ``scribbles2mask`` would at the
        padded size);
        ``corrected``: at the image size. An empty scribble falls on the last frame of the video
        (rule ``last-frame``, mivos's) or on the last scribbled frame (``keep``, corrected's;
        :func:`empty_scribble_rule`).
        """
        ensure_compat()
        from davisinteractive.utils.scribbles import annotated_frames

        size = (self.core.ph, self.core.pw) if self.padded else (self.h, self.w)
        frames = annotated_frames(scribbles)
        if not frames:
            if self.empty_rule == "last-frame":
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
        return t, scribbles_to_labels(one, size)[0]

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


SAMPLE_RE = re.compile(r"^(?P<seq>[^.].*)__(?P<idx>\d+)\.csv$")


def _sample_file(out: Path, seq: str, scribble_idx: int) -> Path:
    return out / "samples" / f"{seq}__{scribble_idx}.csv"


def _finished_samples(out: Path) -> set[tuple[str, int]]:
    """The samples whose report rows are saved: files ``<seq>__<idx>.csv`` exactly (hidden and
    temporary files never match)."""
    done = set()
    folder = out / "samples"
    if not folder.is_dir():
        return done
    for f in folder.iterdir():
        m = SAMPLE_RE.match(f.name)
        if m and f.is_file():
            done.add((m["seq"], int(m["idx"])))
    return done


def session_samples(subset: str) -> list[tuple[str, int]]:
    """The samples of the official session for ``subset``, in its order: every sequence of
    davisinteractive's ``Davis.sets[subset]`` x scribble index 1..``num_scribbles`` (as
    ``EvaluationService`` builds them)."""
    ensure_compat()
    from davisinteractive.dataset.davis import Davis

    if subset not in Davis.sets:
        raise InputError(f"subset {subset!r} is not one of davisinteractive's subsets "
                         f"({', '.join(sorted(Davis.sets))})")
    return [(seq, i) for seq in Davis.sets[subset]
            for i in range(1, int(Davis.dataset[seq]["num_scribbles"]) + 1)]


def num_objects_of(seq: str) -> int:
    """The object count of a sequence in davisinteractive's metadata (``davis.json``, or the
    entries a synthetic stand-in registered): the session, the robot and the metrics all use
    object ids 1..this number, so the driver does too."""
    ensure_compat()
    from davisinteractive.dataset.davis import Davis

    return int(Davis.dataset[seq]["num_objects"])


def _check_scribble_file(path: Path, seq: str, num_frames: int, num_objects: int) -> None:
    """A scribble file as the session reads it (``Davis.load_scribble``) and uses it."""
    if not path.is_file():
        raise MissingInputError(f"{path}: scribble file not found", path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path}: malformed scribble JSON ({exc})", path) from exc
    if not isinstance(data, dict) or not isinstance(data.get("scribbles"), list):
        raise InputError(f"{path}: malformed scribble JSON (expected an object with a "
                         "'scribbles' list)", path)
    if data.get("sequence") != seq:
        raise InputError(f"{path}: malformed scribble JSON ('sequence' is "
                         f"{data.get('sequence')!r}, expected {seq!r})", path)
    frames = data["scribbles"]
    if len(frames) != num_frames:
        raise InputError(f"{path}: malformed scribble JSON ({len(frames)} frames of scribbles, "
                         f"the sequence has {num_frames})", path)
    for t, strokes in enumerate(frames):
        if not isinstance(strokes, list):
            raise InputError(f"{path}: malformed scribble JSON (frame {t} is not a list)", path)
        for s in strokes:
            ok = (isinstance(s, dict) and isinstance(s.get("path"), list)
                  and isinstance(s.get("object_id"), int) and 0 <= s["object_id"] <= num_objects
                  and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in s["path"]))
            if not ok:
                raise InputError(f"{path}: malformed scribble JSON (frame {t}: a stroke needs a "
                                 f"'path' of [x, y] points and an 'object_id' in 0..{num_objects})",
                                 path)


def validate_davis_data(root: Path, sequences: list[str]) -> None:
    """Check the files of ``sequences`` before the session starts, against davisinteractive's
    metadata, so that bad data stops with one message naming the file instead of a traceback
    inside the official package:

    * frames ``JPEGImages/480p/<seq>/00000.jpg ...``: as many as the metadata's
      ``num_frames``, consecutive, complete (no truncated or empty file), one size;
    * annotations ``Annotations/480p/<seq>/00000.png ...``: one per frame, the frame's size,
      palette or grayscale (RGB refused: the official tools read the stored values), ids as the
      official tools define them: every non-void id within 1..``num_objects`` of the metadata
      (254 and 255 are void), and at least one object in the sequence. An object may first
      appear after frame 0 (the robot scribbles it when it is missed);
    * scribbles ``Scribbles/<seq>/001.json ...`` (``num_scribbles`` of them): valid JSON in the
      official layout, one list of strokes per frame, object ids within 0..``num_objects``.

    Raises :class:`util.errors.InputError` (naming the file) for the first problem.
    """
    ensure_compat()
    from davisinteractive.dataset.davis import Davis

    for seq in sequences:
        meta = Davis.dataset[seq]
        n_frames, n_obj = int(meta["num_frames"]), int(meta["num_objects"])
        img_dir = root / "JPEGImages" / "480p" / seq
        ann_dir = root / "Annotations" / "480p" / seq
        if not img_dir.is_dir():
            raise MissingInputError(f"{img_dir}: frame folder of sequence {seq!r} not found", img_dir)
        files = list_frame_files(img_dir, (".jpg", ".jpeg"))
        if not files:
            raise InputError(f"{img_dir}: empty folder (no .jpg frames)", img_dir)
        have = {p.stem for p in files}
        for t in range(n_frames):
            if f"{t:05d}" not in have:
                missing = img_dir / f"{t:05d}.jpg"
                raise MissingInputError(f"{missing}: frame missing (sequence {seq!r} has "
                                        f"{n_frames} frames in davisinteractive's metadata)",
                                        missing)
        if len(files) != n_frames:
            raise InputError(f"{img_dir}: {len(files)} frames, but davisinteractive's metadata "
                             f"lists {n_frames} for {seq!r}", img_dir)
        size = None
        present: set[int] = set()
        for t in range(n_frames):
            head = check_image(img_dir / f"{t:05d}.jpg", "frame")
            if size is None:
                size = (head.width, head.height)
            elif (head.width, head.height) != size:
                raise InputError(f"{head.path}: frame is {head.width}x{head.height}, frame 0 is "
                                 f"{size[0]}x{size[1]} (WxH)", head.path)
            ann = ann_dir / f"{t:05d}.png"
            if not ann.is_file():
                raise MissingInputError(f"{ann}: annotation missing", ann)
            mhead = check_mask(ann)
            if (mhead.width, mhead.height) != size:
                raise InputError(f"{ann}: annotation is {mhead.width}x{mhead.height} but its "
                                 f"frame is {size[0]}x{size[1]} (WxH)", ann)
            ids = object_ids(read_annotation(ann), DAVIS_VOID_LABELS)
            extra = [i for i in ids if i > n_obj]
            if extra:
                raise InputError(f"{ann}: holds object ids {ids}, but davisinteractive's metadata "
                                 f"lists {n_obj} object(s) for {seq!r} (ids 1..{n_obj})", ann)
            present.update(ids)
        if not present:
            first = ann_dir / "00000.png"
            raise InputError(f"{first}: sequence {seq!r} holds no object in any annotation "
                             "(254 and 255 are void)", first)
        for i in range(1, int(meta["num_scribbles"]) + 1):
            _check_scribble_file(root / "Scribbles" / seq / f"{i:03d}.json", seq, n_frames, n_obj)


def _summarize(root: Path, config: DavisEvalConfig, report, service=None) -> dict:
    """The official summary of a merged report (``EvaluationService.summarize_report``). Without
    a running session's service, one is made as the session would make it (no robot runs)."""
    if service is None:
        ensure_compat()
        from davisinteractive.evaluation.service import EvaluationService

        max_time = config.max_interactions * config.seconds_per_interaction
        service = EvaluationService(config.subset, davis_root=str(root),
                                    max_t=min(max_time, 10 * 60),
                                    max_i=min(config.max_interactions, 16))
    summary = service.summarize_report(report)
    return json.loads(json.dumps(summary, default=float))


def _merged_report(out: Path, samples: list[tuple[str, int]]):
    frames = [pd.read_csv(_sample_file(out, seq, idx)) for seq, idx in samples
              if _sample_file(out, seq, idx).is_file()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=REPORT_COLUMNS)


def _discard_results(out: Path) -> None:
    """--restart: remove what an earlier run wrote to ``out``."""
    for name in ("samples", "masks", "session"):
        if (out / name).is_dir():
            shutil.rmtree(out / name)
    for name in ("summary.json", "report.csv", "config.json", "jf_vs_time.png", FINGERPRINT_FILE):
        if (out / name).is_file():
            (out / name).unlink()


def run_davis_interactive(config: DavisEvalConfig, prop_net, fusion_net, s2m_net,
                          device: torch.device | str = "cpu",
                          progress: Callable[[str, int, int], None] | None = None,
                          fingerprint: dict | None = None,
                          networks: Callable[[], tuple] | None = None) -> dict:
    """Run the official session; returns the official global summary (also written to
    ``<output>/summary.json``).

    Resuming (``config.resume``): ``fingerprint`` (:mod:`util.fingerprint`; default: the
    config) is compared with the one stored in the output folder by an earlier run; a
    difference raises :class:`util.fingerprint.FingerprintMismatch` before anything is written.
    With the same fingerprint, finished samples are skipped; when none is left, the summary is
    rebuilt from the saved report rows without starting the session or building a network.
    ``config.resume=False`` discards the earlier results first. ``networks``, when given, is
    called for ``(prop_net, fusion_net, s2m_net)`` only when a sample has to run.
    """
    root = check_davis_root(config.davis_root, config.subset)
    out = Path(config.output)
    require_output_dir(out)
    device = torch.device(device)
    if fingerprint is None:
        fingerprint = make_fingerprint({k: v for k, v in asdict(config).items()
                                        if k not in ("output", "save_masks", "resume")},
                                       kind="davis_interactive")
    all_samples = session_samples(config.subset)
    if not config.resume:
        _discard_results(out)
    finished = _finished_samples(out)
    stored = load_fingerprint(out)
    if stored is None and finished:
        raise FingerprintMismatch(
            f"{out} holds finished samples without a run fingerprint (an older version's run); "
            "use another --output, or --restart to discard them", out)
    check_fingerprint(stored, fingerprint, out, "--restart")
    (out / "samples").mkdir(parents=True, exist_ok=True)
    save_fingerprint(out, fingerprint)
    atomic_save_json(out / "config.json", asdict(config))
    done = finished & set(all_samples)
    todo = [s for s in all_samples if s not in done]
    if done:
        log.info("resuming: %d of %d samples already finished", len(done), len(all_samples))

    if not todo:  # everything finished earlier: rebuild the summary, no session, no network
        report = _merged_report(out, all_samples)
        summary = _summarize(root, config, report)
        atomic_write_text(out / "report.csv", report.to_csv(index=False))
        atomic_save_json(out / "summary.json", summary)
        return summary

    validate_davis_data(root, list(dict.fromkeys(s[0] for s in todo)))
    if networks is not None:
        prop_net, fusion_net, s2m_net = networks()

    from davisinteractive.session import DavisInteractiveSession

    session = DavisInteractiveSession(
        davis_root=str(root), subset=config.subset,
        max_nb_interactions=config.max_interactions,
        max_time=config.max_interactions * config.seconds_per_interaction,
        report_save_dir=str(out / "session"))
    with session as sess:
        sess.samples = [s for s in sess.samples if (s[0], int(s[1])) not in done]
        # every sequence is loaded before the session's clock runs, as the original does
        sequences = {seq: load_sequence(root, seq) for seq in dict.fromkeys(s[0] for s in sess.samples)}
        processor = None
        current = None
        finished_now = 0

        def finish(sample):
            seq, idx = sample
            rep = sess.get_report()
            rows = rep[(rep["sequence"] == seq) & (rep["scribble_idx"] == idx)][REPORT_COLUMNS]
            if config.save_masks and processor is not None:
                for t, m in enumerate(processor.core.masks):
                    write_palette_png(out / "masks" / seq / str(idx) / f"{t:05d}.png", m)
            # the report rows last: a sample counts as finished once its file exists
            atomic_write_text(_sample_file(out, seq, idx), rows.to_csv(index=False))

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
                # timed, as in the original: building the sample's processor; the object count
                # is the session's (metadata), not the largest label of an annotation
                frames, gt = sequences[seq]
                processor = DavisSampleProcessor(frames, gt, num_objects_of(seq), prop_net,
                                                 fusion_net, None if config.oracle else s2m_net,
                                                 config, device)
            masks, candidates = processor.step(scribbles)
            sess.submit_masks(masks.astype(np.int64), next_scribble_frame_candidates=candidates)
        if current is not None:
            finish(current)

        report = _merged_report(out, all_samples)
        summary = _summarize(root, config, report, sess.connector.service)

    atomic_write_text(out / "report.csv", report.to_csv(index=False))
    atomic_save_json(out / "summary.json", summary)
    return summary


def per_interaction_scores(summary: dict, metric: str = "J_AND_F") -> list[float]:
    """The metric after each interaction (the curve without its (0, 0) start and final point)."""
    values = summary["curve"][metric]
    return [float(v) for v in values[1:-1]]


def plot_curve(summary: dict, path: str | Path, metric: str = "J_AND_F", label: str | None = None) -> None:
    """J&F against cumulative time, as a PNG."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
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
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
