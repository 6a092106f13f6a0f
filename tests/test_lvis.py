"""LVIS index, polygon rasterisation and LVIS S2M samples on a tiny fake LVIS (REFERENCE.md f.4)."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import ConcatDataset, DataLoader

import train_s2m
from dataset.common import CorruptFileError, MissingFileError, SizeMismatchError
from dataset.lvis_dataset import LVISInstances, LVISS2MDataset, rasterize_segmentation
from dataset.static_dataset import S2MDataset
from tests.test_train_data import make_flat

S = 64
H, W = 120, 160

# image id -> (file entry, annotations: ann id -> (polygon list, colour))
RECT_A = [[10, 20, 70, 20, 70, 70, 10, 70]]            # 60 x 50 = 3000 px: target
TRI_B = [[90, 10, 150, 10, 120, 60]]                   # ~1500 px: extras candidate only
SMALL_C = [[100, 80, 120, 80, 120, 100, 100, 100]]     # 400 px: dropped
BIG_D = [[5, 5, 80, 5, 80, 90, 5, 90]]                 # 6375 px: target
POLY_E = [[90, 30, 155, 30, 155, 110, 120, 80, 90, 110]]  # target
SMALL_F = [[10, 10, 30, 10, 30, 30, 10, 30]]           # image 3: nothing large enough

COLOURS = {1: (240, 60, 60), 2: (60, 240, 60), 3: (60, 60, 240), 4: (240, 240, 60),
           5: (60, 240, 240), 6: (240, 60, 240)}


def _poly_area(poly: list[float]) -> float:
    p = np.asarray(poly, np.float64).reshape(-1, 2)
    return 0.5 * abs(np.dot(p[:, 0], np.roll(p[:, 1], -1)) - np.dot(p[:, 1], np.roll(p[:, 0], -1)))


def make_lvis(base: Path) -> tuple[Path, Path]:
    """COCO root with train2017/ and val2017/; image 1 named by file_name, 2 and 3 by coco_url."""
    coco = base / "coco"
    images = [
        {"id": 1, "file_name": "train2017/000000000001.jpg", "height": H, "width": W},
        {"id": 2, "coco_url": "http://images.cocodataset.org/val2017/000000000002.jpg",
         "height": H, "width": W},
        {"id": 3, "coco_url": "http://images.cocodataset.org/train2017/000000000003.jpg",
         "height": H, "width": W},
    ]
    anns = [(1, 1, RECT_A), (2, 1, TRI_B), (3, 1, SMALL_C), (4, 2, BIG_D), (5, 2, POLY_E),
            (6, 3, SMALL_F)]
    files = {1: coco / "train2017" / "000000000001.jpg", 2: coco / "val2017" / "000000000002.jpg",
             3: coco / "train2017" / "000000000003.jpg"}
    canvases = {i: np.random.default_rng(i).integers(10, 50, (H, W, 3), dtype=np.uint8)
                for i in files}
    for ann_id, image_id, seg in anns:
        pts = [np.asarray(p, np.int32).reshape(-1, 2) for p in seg]
        cv2.fillPoly(canvases[image_id], pts, COLOURS[ann_id])
    for i, path in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(path), canvases[i][..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    js = {"images": images, "categories": [{"id": 7, "name": "thing"}], "annotations": [
        {"id": a, "image_id": i, "category_id": 7, "segmentation": seg,
         "area": sum(_poly_area(p) for p in seg), "bbox": [0, 0, 1, 1]}
        for a, i, seg in anns]}
    json_path = base / "lvis_v1_train.json"
    json_path.write_text(json.dumps(js))
    return coco, json_path


@pytest.fixture(scope="module")
def lvis(tmp_path_factory) -> tuple[Path, Path]:
    return make_lvis(tmp_path_factory.mktemp("lvis"))


@pytest.fixture(scope="module")
def flat(tmp_path_factory) -> Path:
    return make_flat(tmp_path_factory.mktemp("static") / "flat")


def _ds(lvis, **kw) -> LVISS2MDataset:
    kw.setdefault("robot_prob", 0.0)
    return LVISS2MDataset(*lvis, size=S, **kw)


# ----------------------------------------------------------------------------- index


def test_index_filters_by_area(lvis):
    idx = LVISInstances(*lvis)
    assert [t.ann_id for t in idx.targets] == [1, 4, 5]
    assert [e.image_id for e in idx.images] == [1, 2]  # image 3 has no target
    assert [[c.ann_id for c in cands] for cands in idx.candidates] == [[1, 2], [4, 5]]
    assert idx.image_path(0) == lvis[0] / "train2017" / "000000000001.jpg"
    assert idx.image_path(1) == lvis[0] / "val2017" / "000000000002.jpg"  # from coco_url
    # the train2017 folder itself works as the root for image 1
    only_train = LVISInstances(lvis[0] / "train2017", lvis[1])
    assert only_train.image_path(0).name == "000000000001.jpg"


def test_rasterisation_matches_drawn_shape(lvis):
    rect = rasterize_segmentation(RECT_A, H, W)
    expected = np.zeros((H, W), bool)
    expected[20:70, 10:70] = True  # pixel-edge coordinates: exactly these pixels
    assert np.array_equal(rect, expected)
    idx = LVISInstances(*lvis)
    for inst in idx.targets + idx.candidates[0]:
        m = idx.mask(inst)
        drawn = np.zeros((H, W), np.uint8)
        seg = [np.asarray(p, np.int32).reshape(-1, 2) for p in inst.segmentation]
        cv2.fillPoly(drawn, seg, 1)
        inter, union = np.count_nonzero(m & (drawn > 0)), np.count_nonzero(m | (drawn > 0))
        assert inter / union > 0.93, inst.ann_id
        assert abs(m.sum() - inst.area) < 0.1 * inst.area
    # uncompressed RLE (column-major runs) of the same rectangle
    flat_f = expected.T.reshape(-1)
    change = np.flatnonzero(np.diff(flat_f.astype(np.int8))) + 1
    bounds = np.concatenate([[0], change, [flat_f.size]])
    counts = np.diff(bounds).tolist()
    if flat_f[0]:
        counts = [0] + counts
    assert np.array_equal(rasterize_segmentation({"size": [H, W], "counts": counts}, H, W),
                          expected)


def test_errors_name_the_file(lvis, tmp_path):
    coco, json_path = lvis
    missing_json = tmp_path / "nope_lvis.json"
    with pytest.raises(MissingFileError, match="nope_lvis.json"):
        LVISInstances(coco, missing_json)
    with pytest.raises(MissingFileError, match="no_coco_here"):
        LVISInstances(tmp_path / "no_coco_here", json_path)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CorruptFileError, match="bad.json"):
        LVISInstances(coco, bad)
    # an image folder without image 2: the error names the missing file
    part = tmp_path / "partial"
    (part / "train2017").mkdir(parents=True)
    (part / "train2017" / "000000000001.jpg").write_bytes(
        (coco / "train2017" / "000000000001.jpg").read_bytes())
    ds = _ds((part, json_path))
    ds[0]
    with pytest.raises(MissingFileError, match="000000000002.jpg"):
        ds[1]
    # annotated size differs from the file
    wrong = json.loads(json_path.read_text())
    wrong["images"][0]["height"] = H + 8
    wrong_path = tmp_path / "wrong.json"
    wrong_path.write_text(json.dumps(wrong))
    with pytest.raises(SizeMismatchError, match="000000000001.jpg"):
        _ds((coco, wrong_path))[0]


# ----------------------------------------------------------------------------- samples


def test_samples_match_s2m_format(lvis, flat):
    ds = _ds(lvis)
    ref = S2MDataset([flat], size=S, robot_prob=0.0)[0]
    assert len(ds) == 3
    for i in range(len(ds)):
        s = ds[i]
        assert s.keys() == ref.keys() and s["info"].keys() == ref["info"].keys()
        for k, v in ref.items():
            if isinstance(v, torch.Tensor):
                assert s[k].shape == v.shape and s[k].dtype == v.dtype, k
        for k, v in ref["info"].items():
            assert type(s["info"][k]) is type(v), k
        assert 0 <= s["rgb"].min() and s["rgb"].max() <= 1
        for k in ("gt", "prev_mask", "pos", "neg"):
            assert set(s[k].unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(s["cls_gt"], s["gt"][0].long())
        gt = s["gt"] > 0
        assert gt.any() and not ((s["pos"] > 0) & ~gt).any() and not ((s["neg"] > 0) & gt).any()
        assert s["info"]["name"].startswith("lvis/")
    # a mixed batch collates (the trainer concatenates both)
    both = ConcatDataset([S2MDataset([flat], size=S, robot_prob=0.0), ds])
    batch = next(iter(DataLoader(both, batch_size=len(both), shuffle=False)))
    assert batch["rgb"].shape == (len(both), 3, S, S)


def test_target_colour_under_gt(lvis):
    ds = _ds(lvis, empty_prob=1.0)
    s = ds[0]  # the red rectangle (ann 1)
    gt = s["gt"][0] > 0
    rgb = s["rgb"]
    red = rgb[0] - rgb[1]
    # colour jitter / grayscale may change colours: compare brightness contrast unless grey
    assert (rgb[:, gt].mean() - rgb[:, ~gt].mean()) > 0.15 or red[gt].mean() > 0.3


def test_deterministic_by_seed_and_epoch(lvis):
    a, b = _ds(lvis, seed=3), _ds(lvis, seed=3)
    for i in range(len(a)):
        sa, sb = a[i], b[i]
        for k in ("rgb", "gt", "prev_mask", "pos", "neg"):
            assert torch.equal(sa[k], sb[k]), k
    c = _ds(lvis, seed=4)
    assert any(not torch.equal(a[i]["rgb"], c[i]["rgb"]) for i in range(len(a)))
    b.set_epoch(1)
    assert any(not torch.equal(a[i]["rgb"], b[i]["rgb"]) for i in range(len(a)))
    off = _ds(lvis, seed=3, index_offset=5)
    assert not torch.equal(a[0]["rgb"], off[0]["rgb"])


def _extras(lvis, neg_prob: float, n_seeds: int = 6):
    out = []
    for seed in range(n_seeds):
        ds = _ds(lvis, seed=seed, empty_prob=0.0, lvis_extra_prob=1.0,
                 neg_scribble_prob=neg_prob, extra_prob=0.0)
        for i in range(len(ds)):
            out.append(ds.sample_with_details(i))
    return out


def test_extras_negative_scribbles_on_other_instance(lvis):
    got = _extras(lvis, neg_prob=1.0)
    kinds = {d["extra"] for _, d in got}
    assert kinds == {"negative", "skipped_self"}
    hits = 0
    for s, d in got:
        if d["extra"] != "negative":
            assert d["other_mask"] is None
            continue
        assert d["other_ann_id"] in (1, 2, 4, 5)
        other = torch.from_numpy(d["other_mask"])
        neg, gt = s["neg"][0] > 0, s["gt"][0] > 0
        assert not (neg & gt).any()
        if other.any():
            hits += int((neg & other & ~gt).any())
    assert hits >= 3


def test_extras_perturbed_copy_in_input_mask(lvis):
    got = _extras(lvis, neg_prob=0.0)
    assert {d["extra"] for _, d in got} == {"perturbed", "skipped_self"}
    hits = 0
    for s, d in got:
        if d["extra"] != "perturbed":
            continue
        other = torch.from_numpy(d["other_mask"]) & ~(s["gt"][0] > 0)
        prev = s["prev_mask"][0] > 0
        if other.sum() > 50:
            assert (prev & other).sum() > 0.2 * other.sum()
            hits += 1
    assert hits >= 3
    # without extras the input mask stays near the target
    ds = _ds(lvis, seed=0, empty_prob=0.0, lvis_extra_prob=0.0)
    assert all(ds.sample_with_details(i)[1]["extra"] is None for i in range(len(ds)))


# ----------------------------------------------------------------------------- training


def test_train_s2m_with_lvis(lvis, tmp_path, capsys):
    coco, json_path = lvis
    base = ["--preset", "lite", "--data", "synthetic", "--data-root", str(tmp_path / "data"),
            "--synthetic-static-count", "4", "--synthetic-static-size", "96",
            "--crop-size", "32", "--batch-size", "2", "--num-workers", "0", "--no-progress",
            "--no-tensorboard", "--image-interval", "0", "--log-interval", "1",
            "--iterations", "2", "--robot-prob", "0", "--lvis-root", str(coco)]
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train_s2m.main(base + ["--lvis-json", str(json_path),
                                      "--output", str(tmp_path / "run")]) == 0
        assert (tmp_path / "run" / "s2m_final.pth").is_file()
        cfg = json.loads((tmp_path / "run" / "config.json").read_text())
        assert cfg["lvis_root"] == str(coco)
        assert "S2M data: 4 static + 3 LVIS samples" in (tmp_path / "run" / "train.log").read_text()
        # default JSON location <lvis-root>/lvis_v1_train.json is missing here: named
        rc = train_s2m.main(base + ["--output", str(tmp_path / "run2")])
        assert rc == 2 and str(coco / "lvis_v1_train.json") in capsys.readouterr().err
    finally:
        torch.set_num_threads(n)


# ----------------------------------------------------------------------------- synthetic stand-in


def test_synthetic_instance_set_round_trips_through_the_loader(tmp_path):
    from dataset.synthetic import SequenceSpec, generate_instance_set, generate_sequence

    json_path = generate_instance_set(tmp_path / "inst", 5, 48, 64, seed=3, max_objects=3)
    data = json.loads(json_path.read_text())
    assert [im["file_name"] for im in data["images"]] == [f"{i:05d}.jpg" for i in range(5)]
    index = LVISInstances(tmp_path / "inst", json_path, target_min_area=0, extra_min_area=0)
    # every visible object of every frame is an instance, and its RLE decodes to its label
    by_image: dict[int, list] = {}
    for inst in index.targets:
        by_image.setdefault(inst.image, []).append(inst)
    for i in range(5):
        spec = SequenceSpec(f"instances-{i:05d}", 1, 48, 64, 1 + i % 3, 0, "train")
        labels = generate_sequence(spec, [3, zlib.crc32(b"instances"), i]).masks[0]
        present = [k for k in range(1, spec.num_objects + 1) if (labels == k).any()]
        insts = by_image[i]
        assert len(insts) == len(present)
        for inst, k in zip(insts, present, strict=True):
            mask = index.mask(inst)
            assert np.array_equal(mask, labels == k)
            assert inst.area == mask.sum()
    # a second call with the same parameters keeps the set; another seed rewrites it
    before = json_path.stat().st_mtime_ns
    assert generate_instance_set(tmp_path / "inst", 5, 48, 64, seed=3, max_objects=3) == json_path
    assert json_path.stat().st_mtime_ns == before
    generate_instance_set(tmp_path / "inst", 5, 48, 64, seed=4, max_objects=3)
    assert json.loads(json_path.read_text())["synthetic_params"]["seed"] == 4


def test_train_s2m_synthetic_instances(tmp_path):
    from train.s2m import LVIS_REFERENCE_AREA

    base = ["--preset", "lite", "--data", "synthetic", "--data-root", str(tmp_path / "data"),
            "--synthetic-preset", "tiny", "--synthetic-static-count", "4",
            "--synthetic-static-size", "64", "--synthetic-instances", "6",
            "--crop-size", "32", "--batch-size", "2", "--num-workers", "0", "--no-progress",
            "--no-tensorboard", "--image-interval", "0", "--log-interval", "1",
            "--iterations", "2", "--robot-prob", "0", "--output", str(tmp_path / "run")]
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train_s2m.main(base) == 0
    finally:
        torch.set_num_threads(n)
    inst_root = tmp_path / "data" / "synthetic" / "instances"
    data = json.loads((inst_root / "lvis_v1_train.json").read_text())
    assert len(data["images"]) == 6
    # the thresholds are LVIS's scaled to the tiny preset's frame: count what they keep
    from dataset.synthetic import preset_specs
    spec = preset_specs("tiny")[0]
    ratio = spec.height * spec.width / LVIS_REFERENCE_AREA
    index = LVISInstances(inst_root, inst_root / "lvis_v1_train.json",
                          target_min_area=2500 * ratio, extra_min_area=900 * ratio)
    expected = sum(1 for a in data["annotations"] if a["area"] > 2500 * ratio)
    assert len(index) == expected > 0
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"S2M data: 4 static + {expected} synthetic instances" in log
