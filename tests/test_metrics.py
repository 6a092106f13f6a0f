"""J / F metrics (through vos_benchmark), sequence and folder evaluation, score CSVs."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest

from util.metrics import (
    CSV_COLUMNS,
    ScoreTable,
    boundary_f,
    evaluate_folder,
    evaluate_sequence,
    frame_scores,
    per_frame_scores,
    read_scores_csv,
    region_j,
    write_object_scores_csv,
    write_scores_csv,
)
from util.palette import write_palette_png

H, W = 60, 80


def _gt_sequence(T: int = 5) -> np.ndarray:
    g = np.zeros((T, H, W), np.uint8)
    for t in range(T):
        g[t, 10 + t:40 + t, 10:40] = 1  # moving square
        cv2.circle(g[t], (60, 30), 12, 2, -1)
    return g


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    u = np.logical_or(a, b).sum()
    return 1.0 if u == 0 else np.logical_and(a, b).sum() / u


def test_perfect_prediction_scores_one():
    g = _gt_sequence()
    s = evaluate_sequence(g, g.copy(), name="perfect")
    assert s.object_ids == [1, 2]
    assert s.j == {1: 1.0, 2: 1.0} and s.f == {1: 1.0, 2: 1.0}
    assert s.jf_mean == 1.0 and s.frames == [1, 2, 3]
    assert s.j_frames.shape == (3, 2)


def test_damaged_prediction_scores_lower_and_j_is_iou():
    g = _gt_sequence()
    p = g.copy()
    cut = p[:, :, 10:22]
    cut[cut == 1] = 0  # remove the left 12 columns of object 1
    s = evaluate_sequence(g, p, skip_first_last=True)
    assert 0.0 < s.j[1] < 1.0 and 0.0 < s.f[1] < 1.0
    assert s.j[2] == 1.0 and s.f[2] == 1.0
    direct = np.mean([_iou(g[t] == 1, p[t] == 1) for t in (1, 2, 3)])
    assert s.j[1] == pytest.approx(direct, abs=1e-12)
    J, F, ids = per_frame_scores(g, p)
    assert ids == [1, 2] and J.shape == (5, 2)
    for t in range(5):
        assert J[t, 0] == pytest.approx(_iou(g[t] == 1, p[t] == 1))
        assert J[t, 0] == pytest.approx(region_j(g[t] == 1, p[t] == 1))
        assert F[t, 0] == pytest.approx(boundary_f(g[t] == 1, p[t] == 1))
    # a prediction further off scores lower still
    far = np.roll(g, 15, axis=2)
    s_far = evaluate_sequence(g, far)
    assert s_far.j[1] < s.j[1] and s_far.f[1] < s.f[1]
    assert s_far.j[2] < 1.0 and s_far.f[2] < 1.0
    # a 3-px erosion keeps most of the area but every boundary pixel is beyond the
    # ceil(0.008 * diagonal) = 1 px tolerance
    eroded = g.copy()
    for t in range(len(g)):
        inner = cv2.erode((g[t] == 1).astype(np.uint8), np.ones((7, 7), np.uint8))
        eroded[t][(g[t] == 1) & (inner == 0)] = 0
    s_ero = evaluate_sequence(g, eroded)
    assert 0.5 < s_ero.j[1] < 1.0 and s_ero.f[1] == 0.0


def test_boundary_tolerance():
    g = np.zeros((H, W), np.uint8)
    g[20:40, 20:50] = 1
    shifted = np.roll(g, 1, axis=1)  # 1 px off: inside the 1-px boundary tolerance
    assert boundary_f(g, shifted) == pytest.approx(1.0)
    assert region_j(g, shifted) < 1.0
    far = np.roll(g, 12, axis=1)
    assert boundary_f(g, far) < 0.7


def test_empty_objects_follow_davis_convention():
    z = np.zeros((H, W), np.uint8)
    j, f = frame_scores(z, z, [1])
    assert j == {1: 1.0} and f == {1: 1.0}
    one = z.copy()
    one[5:15, 5:15] = 1
    j, f = frame_scores(one, z, [1])  # missed object
    assert j == {1: 0.0} and f == {1: 0.0}
    j, f = frame_scores(z, one, [1])  # false positive
    assert j == {1: 0.0} and f == {1: 0.0}
    # an object absent from one frame in both masks counts as 1 there
    g = _gt_sequence(4)
    g[1][g[1] == 2] = 0
    s = evaluate_sequence(g, g.copy(), skip_first_last=False)
    assert s.j[2] == 1.0 and s.f[2] == 1.0
    # predicted labels outside the scored objects are ignored
    p = g.copy()
    p[:, 0:3, 0:3] = 9
    assert evaluate_sequence(g, p, skip_first_last=False).j == {1: 1.0, 2: 1.0}


def test_bad_inputs():
    g = _gt_sequence(2)
    with pytest.raises(ValueError, match="at least 3"):
        evaluate_sequence(g, g, name="short")
    with pytest.raises(ValueError, match="must be equal"):
        per_frame_scores(g, g[:, :-1])
    with pytest.raises(ValueError, match="2 ground-truth frames but 1"):
        evaluate_sequence(g, g[:1], skip_first_last=False)


def _write_seq(folder, masks):
    for t, m in enumerate(masks):
        write_palette_png(folder / f"{t:05d}.png", m)


def test_evaluate_folder_and_csv(tmp_path):
    gt_root, pred_root = tmp_path / "gt", tmp_path / "pred"
    g1 = _gt_sequence(5)
    g2 = np.zeros((4, H, W), np.uint8)
    g2[:, 5:30, 5:30] = 1
    _write_seq(gt_root / "a", g1)
    _write_seq(gt_root / "b", g2)
    _write_seq(pred_root / "a", g1)  # perfect
    p2 = g2.copy()
    p2[:, 5:30, 5:17] = 0  # about half of the object
    _write_seq(pred_root / "b", p2)
    table = evaluate_folder(gt_root, pred_root)
    assert [s.name for s in table.sequences] == ["a", "b"]
    a, b = table.sequences
    assert a.j_mean == 1.0 and b.j_mean == pytest.approx(_iou(g2[1] == 1, p2[1] == 1))
    # overall = mean over the 3 objects, not over the 2 sequences
    assert table.num_objects == 3
    assert table.j_mean == pytest.approx((1 + 1 + b.j[1]) / 3)
    assert table.jf_mean == pytest.approx((table.j_mean + table.f_mean) / 2)

    out = write_scores_csv(tmp_path / "res" / "scores.csv", table)
    rows = list(csv.reader(out.open()))
    assert tuple(rows[0]) == CSV_COLUMNS and rows[-1][0] == "overall" and len(rows) == 4
    back = read_scores_csv(out)
    assert back["b"]["J-Mean"] == pytest.approx(b.j_mean, abs=1e-6)
    assert back["overall"]["objects"] == 3
    assert back["overall"]["J&F-Mean"] == pytest.approx(table.jf_mean, abs=1e-6)
    obj = list(csv.DictReader(write_object_scores_csv(tmp_path / "obj.csv", table).open()))
    assert [(r["sequence"], r["object"]) for r in obj] == [("a", "1"), ("a", "2"), ("b", "1")]


def test_evaluate_folder_errors(tmp_path):
    gt_root, pred_root = tmp_path / "gt", tmp_path / "pred"
    g = _gt_sequence(4)
    _write_seq(gt_root / "a", g)
    _write_seq(gt_root / "b", g)
    _write_seq(pred_root / "a", g[:3])
    with pytest.raises(FileNotFoundError, match=r"pred/a/00003\.png"):
        evaluate_folder(gt_root, pred_root, sequences=["a"])
    write_palette_png(pred_root / "a" / "00003.png", np.zeros((H, W + 2), np.uint8))
    with pytest.raises(ValueError, match=r"pred/a/00003\.png.*gt/a/00003\.png"):
        evaluate_folder(gt_root, pred_root, sequences=["a"])
    write_palette_png(pred_root / "a" / "00003.png", g[3])
    with pytest.raises(FileNotFoundError, match=r"pred/b"):
        evaluate_folder(gt_root, pred_root)
    table = evaluate_folder(gt_root, pred_root, strict=False)
    assert [s.name for s in table.sequences] == ["a"]
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        evaluate_folder(tmp_path / "missing_dir", pred_root)


def test_binary_0_255_masks_are_read_as_one(tmp_path):
    from PIL import Image

    gt_root, pred_root = tmp_path / "gt", tmp_path / "pred"
    (gt_root / "s").mkdir(parents=True)
    (pred_root / "s").mkdir(parents=True)
    g = _gt_sequence(3)
    for t in range(3):
        Image.fromarray(((g[t] == 1) * 255).astype(np.uint8)).save(gt_root / "s" / f"{t:05d}.png")
        Image.fromarray(((g[t] == 1) * 255).astype(np.uint8)).save(pred_root / "s" / f"{t:05d}.png")
    table = evaluate_folder(gt_root, pred_root)
    assert table.sequences[0].object_ids == [1] and table.j_mean == 1.0
    assert isinstance(table, ScoreTable)
