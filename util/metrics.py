"""Region (J) and boundary (F) scores for video object segmentation, DAVIS protocol.

The per-frame, per-object numbers come from ``vos_benchmark`` (the package behind the STCN /
XMem benchmark scripts, a port of the davis2017-evaluation measures):

* J = IoU through ``vos_benchmark.evaluator.get_iou`` (1 when both masks are empty);
* F = boundary F-measure through ``vos_benchmark.evaluator.Evaluator.feed_frame``: 1-px boundary
  maps, each dilated by a disk of radius ``ceil(0.008 * image diagonal)``, precision/recall of
  the matched boundary pixels, F = 1 when both boundaries are empty and 0 when only one is.
  ``vos_benchmark`` has no stand-alone function for F: the boundary matching lives inside
  ``Evaluator.feed_frame``, so this module drives an ``Evaluator`` per sequence (its object set
  pre-seeded so that objects absent from a frame are scored as well) and reads the per-frame
  lists it accumulates. Nothing of the matching is re-implemented here.

All scores are fractions in [0, 1] (``vos_benchmark``'s own summaries use percent).

Aggregation follows the davis2017-evaluation toolkit: a sequence's object is scored by the mean
over the evaluated frames (first and last frame skipped in the semi-supervised protocol); the
dataset J-Mean is the mean over *all objects* of all sequences (not over sequences); J&F-Mean =
(J-Mean + F-Mean) / 2.

Void pixels (ground-truth label 255, and 254 in DAVIS, see ``util.palette``) are ignored as
davis2017-evaluation ignores them: they are removed from both the ground truth and the
prediction before J and F are computed, and a void label is never an object.

Object sets (``object_rule`` of :func:`evaluate_folder`):

* ``"davis"``: as davis2017-evaluation counts them (``davis2017/davis.py``,
  ``get_all_masks(separate_objects_masks=True)``): the objects are ids ``1..N`` with ``N`` the
  largest id of the *first* ground-truth frame after void removal. So ids 1 and 3 on the first
  frame make 3 objects (object 2, absent everywhere, scores 1 when it is never predicted), and
  an object first appearing later counts only when its id is at most ``N``. (That toolkit is
  not a dependency of this project; ``davisinteractive``, which is, scores ids ``1..num_objects``
  of its DAVIS metadata, the same ``N`` for DAVIS 2017.)
* ``"all"`` (default): every non-void id found in the ground truth, as ``vos_benchmark``
  counts them (its ``Evaluator.objects_in_gt``).

CSV layout (:func:`write_scores_csv`), one header and one row per sequence then ``overall``::

    sequence,objects,J-Mean,F-Mean,J&F-Mean
    bike-packing,2,0.812345,0.876543,0.844444
    ...
    overall,61,0.817000,0.874000,0.845500

where ``objects`` is the number of scored objects and a sequence row holds the mean over its
own objects. :func:`write_object_scores_csv` writes one row per (sequence, object) instead
(columns ``sequence,object,J-Mean,F-Mean,J&F-Mean``).
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from util.fileio import atomic_write_text
from util.palette import read_annotation, read_mask
from util.video_io import natural_sort_key

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

BOUNDARY_THRESHOLD = 0.008
CSV_COLUMNS = ("sequence", "objects", "J-Mean", "F-Mean", "J&F-Mean")
OBJECT_CSV_COLUMNS = ("sequence", "object", "J-Mean", "F-Mean", "J&F-Mean")


# ----------------------------------------------------------------------------------------------
# per-frame scores
# ----------------------------------------------------------------------------------------------


def _as_labels(arr: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.dtype == np.bool_:
        return a.astype(np.uint8)
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{what}: label maps must hold integers, got {a.dtype}")
    return a


def _restrict(labels: np.ndarray, object_ids: Sequence[int],
              void: np.ndarray | None = None) -> np.ndarray:
    """Set every label that is not in ``object_ids`` to 0 (does not change per-object masks),
    and every pixel of the boolean ``void`` map."""
    keep = np.isin(labels, np.asarray(object_ids, dtype=labels.dtype))
    if void is not None:
        keep &= ~void
    return np.where(keep, labels, 0).astype(np.int32)


def _void_map(gt: np.ndarray, void: Sequence[int]) -> np.ndarray | None:
    if not void:
        return None
    m = np.isin(gt, np.asarray(list(void), dtype=np.int64))
    return m if m.any() else None


def region_j(gt: np.ndarray, pred: np.ndarray) -> float:
    """Region similarity (IoU) of two binary masks (H x W, bool or 0/1); 1.0 when both are empty."""
    # vos-benchmark is needed only for scoring, and slow to import: loaded on first use
    from vos_benchmark.evaluator import get_iou

    g = np.asarray(gt).astype(bool)
    p = np.asarray(pred).astype(bool)
    if g.shape != p.shape:
        raise ValueError(f"region_j: shapes differ, gt {g.shape} vs prediction {p.shape}")
    inter = int(np.count_nonzero(g & p))
    return float(get_iou(inter, int(np.count_nonzero(g)) + int(np.count_nonzero(p))))


def _new_evaluator(object_ids: Iterable[int], bound_th: float):
    # vos-benchmark is needed only for scoring, and slow to import: loaded on first use
    from vos_benchmark.evaluator import Evaluator

    ev = Evaluator(boundary=bound_th)
    # score these objects in every frame, even where neither mask contains them
    ev.objects_in_gt.update(int(o) for o in object_ids)
    return ev


def per_frame_scores(
    gt_masks: np.ndarray | Sequence[np.ndarray],
    pred_masks: np.ndarray | Sequence[np.ndarray],
    object_ids: Sequence[int] | None = None,
    bound_th: float = BOUNDARY_THRESHOLD,
    void: Sequence[int] = (255,),
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """J and F of every frame and object (no frame skipped; as the interactive track counts).

    Args:
        gt_masks: T label maps (T x H x W), 0 = background.
        pred_masks: T predicted label maps of the same sizes.
        object_ids: objects to score; default: every non-zero, non-void label found in
            ``gt_masks``. Predicted labels outside this set are ignored.
        bound_th: boundary tolerance as a fraction of the image diagonal.
        void: ground-truth labels whose pixels are ignored (removed from both masks).

    Returns:
        ``(J, F, object_ids)``: J and F are float64 arrays T x K in [0, 1], columns in the order
        of the returned ``object_ids``.
    """
    if len(gt_masks) != len(pred_masks):
        raise ValueError(f"{len(gt_masks)} ground-truth frames but {len(pred_masks)} predictions")
    if object_ids is None:
        found: set[int] = set()
        for g in gt_masks:
            u = np.unique(np.asarray(g))
            found.update(int(v) for v in u if v != 0 and int(v) not in void)
        object_ids = sorted(found)
    ids = [int(o) for o in object_ids]
    if any(o <= 0 for o in ids):
        raise ValueError(f"object ids must be positive, got {ids}")
    T, K = len(gt_masks), len(ids)
    J = np.zeros((T, K), dtype=np.float64)
    F = np.zeros((T, K), dtype=np.float64)
    if K == 0:
        return J, F, ids
    ev = _new_evaluator(ids, bound_th)
    for t in range(T):
        g = _as_labels(gt_masks[t], f"ground truth frame {t}")
        p = _as_labels(pred_masks[t], f"prediction frame {t}")
        if g.ndim != 2 or g.shape != p.shape:
            raise ValueError(
                f"frame {t}: ground truth {g.shape} and prediction {p.shape} must be equal H x W"
            )
        vm = _void_map(g, void)
        ev.feed_frame(_restrict(p, ids, vm), _restrict(g, ids, vm))
    for k, o in enumerate(ids):
        J[:, k] = ev.object_iou[o]
        F[:, k] = ev.boundary_f[o]
    return J, F, ids


def frame_scores(
    gt: np.ndarray,
    pred: np.ndarray,
    object_ids: Sequence[int] | None = None,
    bound_th: float = BOUNDARY_THRESHOLD,
) -> tuple[dict[int, float], dict[int, float]]:
    """J and F of one frame (H x W label maps) per object: ``({id: J}, {id: F})``."""
    J, F, ids = per_frame_scores([gt], [pred], object_ids, bound_th)
    return (
        {o: float(J[0, k]) for k, o in enumerate(ids)},
        {o: float(F[0, k]) for k, o in enumerate(ids)},
    )


def boundary_f(gt: np.ndarray, pred: np.ndarray, bound_th: float = BOUNDARY_THRESHOLD) -> float:
    """Boundary F-measure of two binary masks (H x W); 1.0 when both are empty."""
    g = np.asarray(gt).astype(bool).astype(np.uint8)
    p = np.asarray(pred).astype(bool).astype(np.uint8)
    if g.shape != p.shape:
        raise ValueError(f"boundary_f: shapes differ, gt {g.shape} vs prediction {p.shape}")
    _, F, _ = per_frame_scores([g], [p], [1], bound_th)
    return float(F[0, 0])


# ----------------------------------------------------------------------------------------------
# sequences and tables
# ----------------------------------------------------------------------------------------------


@dataclass
class SequenceScore:
    """Scores of one sequence.

    Attributes:
        name: sequence name.
        object_ids: scored objects (order of the per-frame columns).
        j: object id -> mean J over the evaluated frames, in [0, 1].
        f: object id -> mean F over the evaluated frames, in [0, 1].
        j_frames, f_frames: per-frame scores, evaluated frames x objects.
        frames: indices (into the given sequence) of the evaluated frames.
    """

    name: str
    object_ids: list[int]
    j: dict[int, float]
    f: dict[int, float]
    j_frames: np.ndarray = field(repr=False)
    f_frames: np.ndarray = field(repr=False)
    frames: list[int] = field(repr=False)

    @property
    def j_mean(self) -> float:
        """Mean J over this sequence's objects (nan without objects)."""
        return float(np.mean(list(self.j.values()))) if self.j else float("nan")

    @property
    def f_mean(self) -> float:
        """Mean F over this sequence's objects (nan without objects)."""
        return float(np.mean(list(self.f.values()))) if self.f else float("nan")

    @property
    def jf_mean(self) -> float:
        """(J-Mean + F-Mean) / 2."""
        return (self.j_mean + self.f_mean) / 2


@dataclass
class ScoreTable:
    """Per-sequence scores and the overall row (mean over all objects of all sequences)."""

    sequences: list[SequenceScore]

    @property
    def num_objects(self) -> int:
        return sum(len(s.object_ids) for s in self.sequences)

    def _all(self, attr: str) -> list[float]:
        return [v for s in self.sequences for v in getattr(s, attr).values()]

    @property
    def j_mean(self) -> float:
        """Overall J-Mean: mean over all objects of their per-object mean J."""
        vals = self._all("j")
        return float(np.mean(vals)) if vals else float("nan")

    @property
    def f_mean(self) -> float:
        """Overall F-Mean: mean over all objects of their per-object mean F."""
        vals = self._all("f")
        return float(np.mean(vals)) if vals else float("nan")

    @property
    def jf_mean(self) -> float:
        """Overall J&F-Mean = (J-Mean + F-Mean) / 2."""
        return (self.j_mean + self.f_mean) / 2

    def rows(self) -> list[dict[str, object]]:
        """Table rows (dicts keyed by :data:`CSV_COLUMNS`), sequences then ``overall``."""
        out: list[dict[str, object]] = []
        for s in self.sequences:
            out.append({"sequence": s.name, "objects": len(s.object_ids), "J-Mean": s.j_mean,
                        "F-Mean": s.f_mean, "J&F-Mean": s.jf_mean})
        out.append({"sequence": "overall", "objects": self.num_objects, "J-Mean": self.j_mean,
                    "F-Mean": self.f_mean, "J&F-Mean": self.jf_mean})
        return out


def evaluate_sequence(
    gt_masks: np.ndarray | Sequence[np.ndarray],
    pred_masks: np.ndarray | Sequence[np.ndarray],
    object_ids: Sequence[int] | None = None,
    skip_first_last: bool = True,
    name: str = "",
    bound_th: float = BOUNDARY_THRESHOLD,
    void: Sequence[int] = (255,),
) -> SequenceScore:
    """Score one sequence.

    Args:
        gt_masks: T x H x W ground-truth label maps (0 = background).
        pred_masks: T x H x W predicted label maps.
        object_ids: objects to score; default: every non-zero, non-void label in ``gt_masks``.
        void: ground-truth labels whose pixels are ignored.
        skip_first_last: drop the first and the last frame (DAVIS semi-supervised protocol);
            needs T >= 3.
        name: sequence name stored in the result.

    Returns:
        A :class:`SequenceScore` (per-object means over the evaluated frames).
    """
    T = len(gt_masks)
    if T != len(pred_masks):
        raise ValueError(f"sequence {name!r}: {T} ground-truth frames but {len(pred_masks)} predictions")
    if object_ids is None:
        found: set[int] = set()
        for g in gt_masks:
            found.update(int(v) for v in np.unique(np.asarray(g)) if v != 0 and int(v) not in void)
        object_ids = sorted(found)
    if skip_first_last:
        if T < 3:
            raise ValueError(
                f"sequence {name!r}: {T} frames; skipping the first and last frame needs at least 3"
            )
        frames = list(range(1, T - 1))
    else:
        if T == 0:
            raise ValueError(f"sequence {name!r}: no frames")
        frames = list(range(T))
    J, F, ids = per_frame_scores(
        [gt_masks[t] for t in frames], [pred_masks[t] for t in frames], object_ids, bound_th,
        void,
    )
    return SequenceScore(
        name=name,
        object_ids=ids,
        j={o: float(J[:, k].mean()) for k, o in enumerate(ids)},
        f={o: float(F[:, k].mean()) for k, o in enumerate(ids)},
        j_frames=J,
        f_frames=F,
        frames=frames,
    )


def _mask_files(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".png"
         and not p.name.startswith(".")),
        key=lambda p: natural_sort_key(p.name),
    )


def evaluate_folder(
    gt_dir: PathLike,
    pred_dir: PathLike,
    sequences: Sequence[str] | None = None,
    skip_first_last: bool = True,
    strict: bool = True,
    bound_th: float = BOUNDARY_THRESHOLD,
    binary: bool = False,
    object_rule: str = "all",
    void: Sequence[int] = (255,),
) -> ScoreTable:
    """Score a folder of predicted PNG sequences against a folder of ground-truth sequences.

    Layout: ``gt_dir/<sequence>/<frame>.png`` and ``pred_dir/<sequence>/<frame>.png`` (palette
    PNGs, or 0/255 grayscale for single-object data; read with ``util.palette.read_mask``).
    The frames evaluated are the ground-truth PNGs (natural order; first and last skipped with
    ``skip_first_last``); extra predicted PNGs are ignored, so sparse ground truth works. The
    objects of a sequence follow ``object_rule`` (module docstring): ``"all"`` = every non-void
    label of its ground-truth frames; ``"davis"`` = ids 1..N, N the largest non-void id of its
    first ground-truth frame (the ground truth is then read as the official tools read it,
    ``util.palette.read_annotation``).

    Args:
        sequences: sequences to score (default: every sub-folder of ``gt_dir``).
        strict: every ground-truth sequence must have a prediction folder; with ``False``
            sequences without predictions are skipped with a warning.
        binary: score foreground against background (any object = 1) as one object, as the
            DAVIS 2016 protocol does.
        object_rule: ``"all"`` or ``"davis"`` (see above).
        void: ground-truth labels that are void (ignored pixels, never objects).

    Raises:
        FileNotFoundError: a folder or a predicted frame is missing (the path is named).
        ValueError: a prediction and its ground truth differ in size (both files named).
    """
    if object_rule not in ("all", "davis"):
        raise ValueError(f"object_rule must be 'all' or 'davis', got {object_rule!r}")
    read_gt = read_annotation if object_rule == "davis" and not binary else read_mask
    gt_root, pred_root = Path(gt_dir), Path(pred_dir)
    for d, what in ((gt_root, "ground-truth"), (pred_root, "prediction")):
        if not d.is_dir():
            raise FileNotFoundError(f"{what} folder not found: {d}")
    if sequences is None:
        sequences = sorted(p.name for p in gt_root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not sequences:
        raise FileNotFoundError(f"no sequence folders in {gt_root}")
    results = []
    for seq in sequences:
        gdir, pdir = gt_root / seq, pred_root / seq
        if not gdir.is_dir():
            raise FileNotFoundError(f"ground-truth sequence folder not found: {gdir}")
        if not pdir.is_dir():
            if strict:
                raise FileNotFoundError(f"prediction folder missing for sequence {seq!r}: {pdir}")
            logger.warning("no prediction for sequence %s (%s); skipped", seq, pdir)
            continue
        gfiles = _mask_files(gdir)
        if not gfiles:
            raise FileNotFoundError(f"no ground-truth PNGs in {gdir}")
        gts, preds = [], []
        for gf in gfiles:
            pf = pdir / gf.name
            if not pf.is_file():
                raise FileNotFoundError(f"predicted mask missing: {pf} (ground truth {gf})")
            g, p = read_gt(gf), read_mask(pf)
            if g.shape != p.shape:
                raise ValueError(
                    f"size mismatch: prediction {pf} is {p.shape[1]}x{p.shape[0]} but ground "
                    f"truth {gf} is {g.shape[1]}x{g.shape[0]} (WxH)"
                )
            if binary:
                g, p = (g > 0).astype(np.uint8), (p > 0).astype(np.uint8)
            gts.append(g)
            preds.append(p)
        if binary:
            ids: list[int] | None = [1]
        elif object_rule == "davis":
            first = [int(v) for v in np.unique(gts[0]) if v != 0 and int(v) not in void]
            ids = list(range(1, max(first) + 1)) if first else []
        else:
            ids = None
        score = evaluate_sequence(gts, preds, ids, skip_first_last, name=seq,
                                  bound_th=bound_th, void=() if binary else tuple(void))
        logger.info("%s: J %.4f F %.4f (%d objects)", seq, score.j_mean, score.f_mean,
                    len(score.object_ids))
        results.append(score)
    return ScoreTable(results)


# ----------------------------------------------------------------------------------------------
# CSV
# ----------------------------------------------------------------------------------------------


def _fmt(v: float) -> str:
    return "nan" if v != v else f"{v:.6f}"


def write_scores_csv(path: PathLike, table: ScoreTable) -> Path:
    """Atomically write the per-sequence table (layout in the module docstring)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in table.rows():
        w.writerow([r["sequence"], r["objects"], _fmt(r["J-Mean"]), _fmt(r["F-Mean"]),
                    _fmt(r["J&F-Mean"])])
    return atomic_write_text(path, buf.getvalue())


def write_object_scores_csv(path: PathLike, table: ScoreTable) -> Path:
    """Atomically write one row per (sequence, object): ``sequence,object,J-Mean,F-Mean,J&F-Mean``."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(OBJECT_CSV_COLUMNS)
    for s in table.sequences:
        for o in s.object_ids:
            w.writerow([s.name, o, _fmt(s.j[o]), _fmt(s.f[o]), _fmt((s.j[o] + s.f[o]) / 2)])
    return atomic_write_text(path, buf.getvalue())


def read_scores_csv(path: PathLike) -> dict[str, dict[str, float]]:
    """Parse a file written by :func:`write_scores_csv`: sequence -> {column: value}.

    ``objects`` is returned as an int, the score columns as floats; ``overall`` is a key.
    """
    p = Path(path)
    with open(p, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
            raise ValueError(f"{p}: unexpected header {reader.fieldnames}, expected {CSV_COLUMNS}")
        out: dict[str, dict[str, float]] = {}
        for row in reader:
            out[row["sequence"]] = {
                "objects": int(row["objects"]),
                **{c: float(row[c]) for c in CSV_COLUMNS[2:]},
            }
    return out
