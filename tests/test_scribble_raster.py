"""util/scribble_raster.py draws the same pixels as davisinteractive's scribbles2mask."""

from __future__ import annotations

import json

import numpy as np
import pytest

from util.davis_compat import ensure_compat
from util.palette import read_mask
from util.scribble_raster import bresenham_path, scribbles_to_labels

ensure_compat()  # before any davisinteractive import

from davisinteractive.robot import InteractiveScribblesRobot  # noqa: E402
from davisinteractive.utils.operations import bresenham  # noqa: E402
from davisinteractive.utils.scribbles import scribbles2mask  # noqa: E402

from dataset import synthetic as S  # noqa: E402


def _same(scribbles, size):
    ours = scribbles_to_labels(scribbles, size)
    official = scribbles2mask(scribbles, size)
    assert ours.dtype == np.int64 and ours.shape == official.shape
    np.testing.assert_array_equal(ours, official)
    return ours


def test_segments_match_the_official_bresenham():
    # every direction, |dx| == |dy|, zero-length and one-pixel segments, repeated points
    pts = [(5, 5), (5, 5), (12, 5), (12, 13), (4, 5), (4, 4), (9, 9), (0, 9), (7, 2), (6, 3),
           (6, 3), (30, 1), (2, 20)]
    np.testing.assert_array_equal(bresenham_path(np.array(pts)), bresenham(np.array(pts)))
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = rng.integers(0, 60, size=(int(rng.integers(2, 12)), 2))
        np.testing.assert_array_equal(bresenham_path(p), bresenham(p))
    one = np.array([[3, 4]])
    np.testing.assert_array_equal(bresenham_path(one), one)


def test_random_polylines_match_the_official_maps():
    rng = np.random.default_rng(1)
    for _ in range(100):
        frames = []
        for _t in range(int(rng.integers(1, 3))):
            paths = []
            for _i in range(int(rng.integers(0, 4))):
                pts = rng.random((int(rng.integers(1, 30)), 2))
                if rng.random() < 0.3:  # points on a coarse grid: straight and diagonal runs
                    pts = np.round(pts * 4) / 4
                paths.append({"path": pts.tolist(), "object_id": int(rng.integers(1, 4))})
            frames.append(paths)
        size = (int(rng.integers(1, 70)), int(rng.integers(1, 70)))
        _same({"scribbles": frames, "sequence": "random"}, size)


def test_robot_scribbles_match_the_official_maps(tmp_path):
    root = tmp_path / "tiny"
    S.write_dataset(root, "tiny", seed=2)
    robot = InteractiveScribblesRobot(kernel_size=0.2, max_kernel_radius=16, min_nb_nodes=4,
                                      nb_points=1000)
    checked = 0
    for path in sorted((root / "Scribbles").glob("*/*.json")):
        first = json.loads(path.read_text())
        ann = sorted((root / "Annotations" / "480p" / path.parent.name).glob("*.png"))
        gt = np.stack([read_mask(p) for p in ann])
        labels = _same(first, gt.shape[1:])
        assert (labels >= 1).any()  # the files hold scribbles
        # a robot correction of an all-background answer: long skeleton paths
        pred = np.zeros_like(gt)
        t = int(np.argmax([(g > 0).sum() for g in gt]))
        correction = robot.interact(path.parent.name, pred, gt, nb_objects=int(gt.max()),
                                    frame=t)
        _same(correction, gt.shape[1:])
        _same(correction, (gt.shape[1] + 8, gt.shape[2] + 16))  # the padded size of mivos
        checked += 1
    assert checked >= 2


def test_malformed_path_is_refused():
    with pytest.raises(ValueError, match="path 0 of frame 0"):
        scribbles_to_labels({"scribbles": [[{"path": [], "object_id": 1}]]}, (8, 8))
    with pytest.raises(ValueError, match="path 1 of frame 0 leaves the 8 x 6 frame"):
        scribbles_to_labels({"scribbles": [[{"path": [[0.1, 0.1], [0.5, 0.5]], "object_id": 1},
                                            {"path": [[0.5, 0.5], [-0.5, 0.2]],
                                             "object_id": 2}]]}, (6, 8))
    with pytest.raises(ValueError, match="leaves"):
        scribbles_to_labels({"scribbles": [[{"path": [[1.3, 0.5]], "object_id": 1}]]}, (6, 8))
    with pytest.raises(ValueError, match="non-finite"):
        scribbles_to_labels({"scribbles": [[{"path": [[float("nan"), 0.5]], "object_id": 1}]]},
                            (6, 8))
    with pytest.raises(ValueError, match="invalid output size"):
        scribbles_to_labels({"scribbles": []}, (0, 8))
