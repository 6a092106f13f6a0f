"""The compatibility shim makes the official davisinteractive 1.0.4 robot, metrics, local
session and summary run on NumPy 2 / pandas 3 / networkx 3 (util/davis_compat.py)."""

from __future__ import annotations

import numpy as np
import pytest

from util.davis_compat import ensure_compat, is_patched
from util.palette import read_mask

ensure_compat()  # before any davisinteractive import (test collection imports below)

from davisinteractive.dataset import Davis  # noqa: E402
from davisinteractive.metrics import batched_f_measure, batched_jaccard  # noqa: E402
from davisinteractive.robot import InteractiveScribblesRobot  # noqa: E402
from davisinteractive.session import DavisInteractiveSession  # noqa: E402

from dataset import synthetic as S  # noqa: E402


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_compat")
    S.write_dataset(root, "tiny", seed=1)
    return root


def _two_objects(T=4, H=40, W=56):
    gt = np.zeros((T, H, W), np.uint8)
    for t in range(T):
        gt[t, 5:25, 4 + t:30 + t] = 1  # 20 x 26 rectangle
        gt[t, 26:38, 30:52] = 2
    return gt


def test_ensure_compat_is_idempotent_and_leaves_numpy_alone():
    import numpy
    import davisinteractive.evaluation.service as service
    import davisinteractive.robot.interactive_robot as robot_mod

    ensure_compat()
    ensure_compat()
    assert is_patched()
    # Nothing is added to NumPy itself ...
    for name in ("int", "float", "trapz"):
        assert name not in numpy.__dict__
    # ... davisinteractive's modules see the old names through their own ``np``.
    assert service.np.trapz is numpy.trapezoid
    assert robot_mod.np.int is int and robot_mod.np.float is float
    assert robot_mod.np.uint8 is numpy.uint8
    assert hasattr(robot_mod.nx, "from_scipy_sparse_matrix")
    # wrappers are applied once only
    wrapped = service.EvaluationService.summarize_report
    ensure_compat()
    assert service.EvaluationService.summarize_report is wrapped
    assert not hasattr(wrapped.__wrapped__, "__wrapped__")


def test_mask_api_encodes_and_decodes():
    """The compiled COCO-RLE mask API round-trips label maps (decoding needs patch 7)."""
    from davisinteractive.third_party import mask_api

    gt = _two_objects()
    enc = mask_api.encode_batch_masks(gt)
    assert len(enc["frames"]) == len(gt) and enc["size"] == list(gt.shape)
    for _ in range(3):  # repeated decodes: the decoded buffers are freed correctly
        dec = mask_api.decode_batch_masks(enc)
        assert dec.shape == gt.shape and np.array_equal(dec, gt)
    assert np.array_equal(mask_api.decode_mask(mask_api.encode_mask(gt[0])), gt[0])


def test_official_metrics():
    gt = _two_objects()
    pred = gt.copy()
    assert np.allclose(batched_jaccard(gt, pred), 1.0)
    assert np.allclose(batched_f_measure(gt, pred), 1.0)
    empty = np.zeros_like(gt)
    assert np.allclose(batched_jaccard(gt, empty), 0.0)
    assert np.allclose(batched_f_measure(gt, empty), 0.0)
    # half of object 1 predicted: J = 0.5 for it, 1 for object 2
    half = gt.copy()
    half[:, 5:15][half[:, 5:15] == 1] = 0
    j = batched_jaccard(gt, half, average_over_objects=False, nb_objects=2)
    assert j.shape == (4, 2)
    assert np.allclose(j[:, 0], 0.5) and np.allclose(j[:, 1], 1.0)
    f = batched_f_measure(gt, half, average_over_objects=False, nb_objects=2)
    assert np.all((f[:, 0] > 0.2) & (f[:, 0] < 1.0)) and np.allclose(f[:, 1], 1.0)


def test_official_robot():
    gt = _two_objects()
    robot = InteractiveScribblesRobot(kernel_size=0.2, max_kernel_radius=16, min_nb_nodes=4,
                                      nb_points=1000)
    out = robot.interact("seq", np.zeros_like(gt), gt, nb_objects=2, frame=2)
    assert out["sequence"] == "seq" and len(out["scribbles"]) == 4
    assert [len(s) for i, s in enumerate(out["scribbles"]) if i != 2] == [0, 0, 0]
    assert {p["object_id"] for p in out["scribbles"][2]} == {1, 2}
    # Predicting object 1 everywhere: the robot draws a background (id 0) correction and,
    # without a frame, picks the worst frame itself.
    pred = np.ones_like(gt)
    out = robot.interact("seq", pred, gt, nb_objects=2)
    ids = {p["object_id"] for s in out["scribbles"] for p in s}
    assert 0 in ids


def test_robot_is_deterministic():
    """skimage >= 0.19 breaks medial-axis ties with an unseeded generator; the shim restores
    the old fixed RandomState(0) tie-breaking, so the same input gives the same scribbles."""
    from skimage.morphology import medial_axis

    import davisinteractive.robot.interactive_robot as robot_mod

    mask = np.zeros((40, 56), bool)
    mask[5:25, 4:30] = True
    assert robot_mod.medial_axis(mask).tobytes() == robot_mod.medial_axis(mask).tobytes()
    assert np.array_equal(robot_mod.medial_axis(mask), medial_axis(mask, rng=_Legacy()))
    gt = _two_objects()
    robot = InteractiveScribblesRobot(kernel_size=0.2, max_kernel_radius=16, min_nb_nodes=4,
                                      nb_points=1000)
    runs = [robot.interact("seq", np.zeros_like(gt), gt, nb_objects=2, frame=1)
            for _ in range(3)]
    paths = [[(p["object_id"], p["path"]) for p in r["scribbles"][1]] for r in runs]
    assert paths[0] == paths[1] == paths[2]


def test_medial_axis_tables_are_remembered_without_changing_skeletons():
    """The robot's medial_axis remembers skimage's look-up tables for the call only: the
    skeletons and distances are those of the plain call, and skimage's module is restored."""
    import cv2
    import skimage.morphology._skeletonize as skel_mod
    from scipy import ndimage
    from skimage.morphology import medial_axis

    import davisinteractive.robot.interactive_robot as robot_mod

    rng = np.random.default_rng(3)
    pattern_of = skel_mod._pattern_of
    for _ in range(20):
        mask = np.zeros((50, 70), np.uint8)
        for _e in range(3):
            centre = (int(rng.integers(5, 65)), int(rng.integers(5, 45)))
            axes = (int(rng.integers(2, 25)), int(rng.integers(2, 18)))
            cv2.ellipse(mask, centre, axes, float(rng.integers(0, 180)), 0, 360, 1, -1)
        ours, dist = robot_mod.medial_axis(mask > 0, return_distance=True)
        plain, plain_dist = medial_axis(mask > 0, return_distance=True, rng=_Legacy())
        assert np.array_equal(ours, plain) and np.array_equal(dist, plain_dist)
        assert skel_mod.ndi is ndimage and skel_mod._pattern_of is pattern_of
    # outside the call skimage's own function is back: fresh, writeable patterns
    assert skel_mod._pattern_of(5).flags.writeable


class _Legacy(np.random.Generator):
    """Independent re-statement of old scikit-image's tie-breaker (RandomState(0))."""

    def __init__(self):
        super().__init__(np.random.PCG64(1))

    def permutation(self, x, axis=0):
        return np.random.RandomState(0).permutation(x)


def _run_session(root, submit, report_dir, max_nb_interactions=2):
    with DavisInteractiveSession(davis_root=str(root), subset="val",
                                 max_nb_interactions=max_nb_interactions,
                                 report_save_dir=str(report_dir)) as sess:
        n_samples = 0
        while sess.next():
            seq, scribbles, new_seq = sess.get_scribbles(only_last=True)
            n_samples += int(new_seq)
            e = Davis.dataset[seq]
            gt = np.stack([read_mask(root / "Annotations" / "480p" / seq / f"{t:05d}.png")
                           for t in range(e["num_frames"])])
            assert gt.shape[1:] == (e["image_size"][1], e["image_size"][0])
            sess.submit_masks(submit(gt))
        report = sess.get_report()
        summary = sess.get_global_summary(save_file=str(report_dir / "summary.json"))
    return n_samples, report, summary


def test_official_session_on_tiny_preset(tiny_root, tmp_path):
    reg = S.register_with_davisinteractive(tiny_root)
    try:
        assert Davis.sets["val"] == ["tiny-000", "tiny-001", "tiny-002"]
        n, report, summary = _run_session(tiny_root, lambda gt: gt, tmp_path / "gt")
        assert n == sum(Davis.dataset[s]["num_scribbles"] for s in reg.sequences)
        assert np.isclose(report["j_and_f"].mean(), 1.0)
        assert report["jaccard"].dtype.kind == "f" and report["interaction"].dtype.kind == "i"
        assert set(summary) >= {"auc", "metric_at_threshold", "curve"}
        assert summary["metric_at_threshold"]["threshold"] == 60
        assert summary["metric_at_threshold"]["J_AND_F"] == pytest.approx(1.0)
        assert 0.0 < summary["auc"] <= 1.0
        assert (tmp_path / "gt" / "summary.json").is_file()
        assert len(list((tmp_path / "gt").glob("result_*.csv"))) == 1

        _, report0, summary0 = _run_session(tiny_root, np.zeros_like, tmp_path / "empty")
        assert report0["j_and_f"].mean() < 0.2
        assert summary0["metric_at_threshold"]["J_AND_F"] < 0.2
        assert summary0["auc"] < summary["auc"]
    finally:
        reg.restore()
    assert len(Davis.sets["val"]) == 30 and "tiny-000" not in Davis.dataset


def test_summary_backfills_missing_interactions(tiny_root):
    """The pandas patch: an object-dtype report (as LocalStorage builds it) with a missing
    interaction is summarised; the gap is filled with the previous result at 0 s."""
    import pandas as pd
    from davisinteractive.evaluation.service import EvaluationService
    from davisinteractive.storage.local import LocalStorage

    with S.register_with_davisinteractive(tiny_root):
        service = EvaluationService("val", davis_root=str(tiny_root), max_i=2)
        storage = LocalStorage()
        for seq in service.sequences:
            e = Davis.dataset[seq]
            for idx in range(1, e["num_scribbles"] + 1):
                n = e["num_frames"] * e["num_objects"]
                objs = np.tile(np.arange(1, e["num_objects"] + 1), e["num_frames"])
                frames = np.repeat(np.arange(e["num_frames"]), e["num_objects"])
                storage.store_interactions_results("u", "s", seq, idx, 1, 0.5, objs.tolist(),
                                                   frames.tolist(), [0.8] * n, [0.6] * n)
        raw = storage.report
        assert raw["jaccard"].dtype == object  # what pandas 3 gives; the patch copes
        report = storage.get_report(session_id="s")
        assert report["jaccard"].dtype.kind == "f"
        summary = service.summarize_report(raw)
    curve = summary["curve"]
    assert curve["time"][:3] == pytest.approx([0.0, 0.5, 0.5])  # interaction 2 missing: 0 s
    assert curve["J_AND_F"][:3] == pytest.approx([0.0, 0.7, 0.7])
    assert isinstance(pd.DataFrame(summary["curve"]), pd.DataFrame)


def test_register_if_synthetic(tiny_root, tmp_path):
    import json

    assert S.register_if_synthetic(tmp_path) is None  # no synthetic.json: real DAVIS
    reg = S.register_if_synthetic(tiny_root)
    try:
        assert reg is not None and Davis.sets["val"] == reg.sequences
    finally:
        reg.restore()
    # A davis-val root matches the bundled tables: nothing to register.
    dv = tmp_path / "dv"
    (dv / "ImageSets" / "2017").mkdir(parents=True)
    specs = S.preset_specs("davis-val")
    (dv / "ImageSets" / "2017" / "val.txt").write_text("".join(f"{s.name}\n" for s in specs))
    (dv / "synthetic.json").write_text(json.dumps(
        {"preset": "davis-val", "sequences": {s.name: s.davis_entry() for s in specs}}))
    assert S.register_if_synthetic(dv) is None
    # Metadata that contradicts the official table is refused.
    meta = json.loads((tiny_root / "synthetic.json").read_text())
    entry = dict(meta["sequences"]["tiny-000"], name="judo")
    with pytest.raises(ValueError, match="judo"):
        S.register_with_davisinteractive({"judo": entry})
    assert len(Davis.sets["val"]) == 30
