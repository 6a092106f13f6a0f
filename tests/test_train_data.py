"""Training datasets, mask perturbation and scribble / click simulation on tiny generated data."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dataset.common import (
    CorruptFileError,
    DatasetError,
    MissingFileError,
    SizeMismatchError,
    list_image_mask_pairs,
    sample_rng,
)
from dataset.mask_perturb import binary_iou, perturb_mask
from dataset.scribble_sim import (
    _DRAW,
    Click,
    clicks_to_maps,
    robot_scribbles,
    sample_clicks,
    scribbles_from_errors,
    synthetic_scribbles,
)
from dataset.static_dataset import S2MDataset, StaticClipDataset
from dataset.vos_dataset import (
    CURRICULUM_FRACTIONS_BL30K,
    CURRICULUM_FRACTIONS_MAIN,
    VOSClipDataset,
    max_jump_for_epoch,
    sample_frame_indices,
)

S = 64


# ----------------------------------------------------------------------------- data builders


def _write_jpg(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 95])


def _static_image(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Dark textured background, bright ellipse (the object); mask 0/255."""
    g = np.random.default_rng(seed)
    img = g.integers(15, 60, size=(h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, (w // 2 + int(g.integers(-5, 6)), h // 2), (w // 4, h // 3), 20, 0, 360, 255, -1)
    img[mask > 0] = (235, 225, 215)
    return img, mask


def make_flat(root: Path, n: int = 3, h: int = 72, w: int = 88) -> Path:
    for i in range(n):
        img, mask = _static_image(h, w, i)
        _write_jpg(root / f"img{i:02d}.jpg", img)
        cv2.imwrite(str(root / f"img{i:02d}.png"), mask)
    return root


def make_fss(root: Path) -> Path:
    for c, cls in enumerate(("cat", "dog")):
        for i in range(2):
            img, mask = _static_image(70, 70, 10 * c + i)
            _write_jpg(root / cls / f"{i + 1}.jpg", img)
            cv2.imwrite(str(root / cls / f"{i + 1}.png"), mask)
    return root


def _frame(t: int, h: int, w: int, n_objects: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed * 1000 + t)
    img = g.integers(15, 60, size=(h, w, 3), dtype=np.uint8)
    lab = np.zeros((h, w), np.uint8)
    if n_objects >= 1:
        x = 8 + 2 * t
        lab[12:40, x:x + 26] = 1
    if n_objects >= 2:
        cv2.circle(lab, (w - 22 - t, h - 20), 13, 2, -1)
    img[lab == 1] = (235, 230, 220)
    img[lab == 2] = (200, 190, 185)
    return img, lab


def make_videos(root: Path, layout: str, videos: dict[str, tuple[int, int]], h: int = 64,
                w: int = 96) -> Path:
    """videos: name -> (number of frames, number of objects)."""
    from util.palette import write_palette_png

    sub = ("480p",) if layout == "davis" else ()
    for v, (name, (n_frames, n_obj)) in enumerate(videos.items()):
        for t in range(n_frames):
            img, lab = _frame(t, h, w, n_obj, v)
            _write_jpg(root.joinpath("JPEGImages", *sub, name, f"{t:05d}.jpg"), img)
            write_palette_png(root.joinpath("Annotations", *sub, name, f"{t:05d}.png"), lab)
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("data")
    make_flat(base / "flat")
    make_fss(base / "fss")
    make_videos(base / "davis", "davis", {"two": (10, 2), "one": (6, 1), "none": (4, 0),
                                          "short": (2, 1)})
    (base / "davis" / "ImageSets" / "2017").mkdir(parents=True)
    (base / "davis" / "ImageSets" / "2017" / "train.txt").write_text("two\none\n")
    make_videos(base / "ytvos", "plain", {"a": (7, 2), "b": (5, 1)})
    return base


def brightness(rgb: torch.Tensor) -> torch.Tensor:
    return rgb.mean(dim=-3)


# ----------------------------------------------------------------------------- listing / errors


def test_list_pairs_flat_and_fss(data_root):
    flat = list_image_mask_pairs(data_root / "flat")
    assert [p[0].name for p in flat] == ["img00.jpg", "img01.jpg", "img02.jpg"]
    assert all(m.suffix == ".png" and m.stem == i.stem for i, m in flat)
    fss = list_image_mask_pairs(data_root / "fss")
    assert [f"{i.parent.name}/{i.name}" for i, _ in fss] == ["cat/1.jpg", "cat/2.jpg", "dog/1.jpg",
                                                               "dog/2.jpg"]


def test_missing_and_empty_roots_name_the_path_and_layout(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(MissingFileError, match="nowhere.*expected"):
        StaticClipDataset([missing], size=S)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"empty.*expected .*\.jpg"):
        list_image_mask_pairs(tmp_path / "empty")
    with pytest.raises(MissingFileError, match="JPEGImages"):
        VOSClipDataset(missing)
    with pytest.raises(MissingFileError, match="Annotations"):
        (tmp_path / "vid" / "JPEGImages").mkdir(parents=True)
        VOSClipDataset(tmp_path / "vid")


def test_image_without_mask_names_both(tmp_path):
    root = make_flat(tmp_path / "flat", n=2)
    (root / "img01.png").unlink()
    with pytest.raises(MissingFileError, match=r"img01\.jpg has no mask: expected .*img01\.png"):
        S2MDataset([root], size=S)


def test_corrupt_files_and_size_mismatch_name_the_file(tmp_path):
    root = make_flat(tmp_path / "flat", n=2)
    (root / "img00.jpg").write_bytes(b"this is not a jpeg")
    ds = StaticClipDataset([root], size=S)
    with pytest.raises(CorruptFileError, match=r"img00\.jpg"):
        ds[0]
    (root / "img01.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(CorruptFileError, match=r"img01\.png"):
        ds[1]
    make_flat(root, n=2)
    cv2.imwrite(str(root / "img01.png"), np.zeros((10, 12), np.uint8))
    with pytest.raises(SizeMismatchError, match=r"img01\.jpg.*img01\.png"):
        ds[1]


def test_video_frame_without_annotation_named(tmp_path):
    root = make_videos(tmp_path / "yt", "plain", {"a": (4, 1)})
    (root / "Annotations" / "a" / "00002.png").unlink()
    with pytest.raises(MissingFileError, match=r"00002\.jpg has no annotation"):
        VOSClipDataset(root, size=S)
    with pytest.raises(MissingFileError, match="list.txt"):
        VOSClipDataset(root, subset=tmp_path / "list.txt")


# ----------------------------------------------------------------------------- static clips


def test_static_clip_shapes_ranges_targets(data_root):
    ds = StaticClipDataset([data_root / "flat", data_root / "fss"], repeats=[2, 1], size=S, seed=3)
    assert len(ds) == 2 * 3 + 4
    for i in (0, 5, 9):
        s = ds[i]
        assert s["rgb"].shape == (3, 3, S, S) and s["rgb"].dtype == torch.float32
        assert s["gt"].shape == (3, 1, S, S) and s["cls_gt"].shape == (3, S, S)
        assert s["cls_gt"].dtype == torch.int64
        assert 0 <= s["rgb"].min() and s["rgb"].max() <= 1
        assert 0 <= s["gt"].min() and s["gt"].max() <= 1
        assert torch.equal(s["cls_gt"], (s["gt"][:, 0] > 0.5).long())
        # the bright object of the image is where the mask is, in every frame
        for t in range(3):
            fg = s["cls_gt"][t] > 0
            assert fg.sum() > 50
            b = brightness(s["rgb"][t])
            assert b[fg].mean() > b[~fg].mean() + 0.3
        # per-frame augmentation makes the frames differ
        assert not torch.equal(s["gt"][0], s["gt"][1])
    soft = ((ds[0]["gt"] > 0.05) & (ds[0]["gt"] < 0.95)).any()
    assert soft  # bicubic mask resampling gives soft values for frame-0 memory


def test_static_clip_reproducible_per_seed_epoch_index(data_root):
    ds = StaticClipDataset([data_root / "flat"], size=S, seed=7)
    a, b = ds[1], ds[1]
    assert torch.equal(a["rgb"], b["rgb"]) and torch.equal(a["gt"], b["gt"])
    ds.set_epoch(1)
    assert not torch.equal(ds[1]["rgb"], a["rgb"])
    ds.set_epoch(0)
    assert torch.equal(ds[1]["rgb"], a["rgb"])
    other = StaticClipDataset([data_root / "flat"], size=S, seed=8)
    assert not torch.equal(other[1]["rgb"], a["rgb"])


def test_worker_count_does_not_change_samples(data_root):
    ds = StaticClipDataset([data_root / "flat"], size=S, seed=1)
    direct = torch.stack([ds[i]["rgb"] for i in range(len(ds))])
    loader = DataLoader(ds, batch_size=3, num_workers=2, shuffle=False)
    (batch,) = list(loader)
    assert torch.equal(batch["rgb"], direct)
    assert batch["info"]["name"][0] == "flat/img00"


# ----------------------------------------------------------------------------- S2M


def test_s2m_samples(data_root):
    ds = S2MDataset([data_root / "flat", data_root / "fss"], size=S, seed=0, robot_prob=0.0)
    seen_zero = seen_perturbed = False
    for i in range(len(ds)):
        s = ds[i]
        assert s["rgb"].shape == (3, S, S) and 0 <= s["rgb"].min() and s["rgb"].max() <= 1
        for k in ("gt", "prev_mask", "pos", "neg"):
            assert s[k].shape == (1, S, S) and s[k].dtype == torch.float32
            assert set(s[k].unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(s["cls_gt"], s["gt"][0].long())
        gt, pos, neg = s["gt"] > 0, s["pos"] > 0, s["neg"] > 0
        assert not (pos & ~gt).any() and not (neg & gt).any()
        assert pos.any() or neg.any()
        if s["info"]["from_zero"]:
            seen_zero = True
            assert not s["prev_mask"].any()
        else:
            seen_perturbed = True
            assert s["info"]["prev_iou"] < 0.95
        b = brightness(s["rgb"])
        assert b[gt[0]].mean() > b[~gt[0]].mean() + 0.3
    assert seen_zero and seen_perturbed
    again = ds[2]
    assert torch.equal(again["pos"], ds[2]["pos"]) and torch.equal(again["rgb"], ds[2]["rgb"])


def test_s2m_with_robot_branch(data_root):
    pytest.importorskip("davisinteractive", reason="davisinteractive not installed")
    if importlib.util.find_spec("util.davis_compat") is None:
        pytest.skip("util/davis_compat.py not written yet")
    ds = S2MDataset([data_root / "flat"], size=S, seed=0, robot_prob=1.0, empty_prob=0.0)
    s = ds[0]
    assert not s["info"]["from_zero"]
    assert not ((s["pos"] > 0) & (s["gt"] == 0)).any()
    assert not ((s["neg"] > 0) & (s["gt"] > 0)).any()


# ----------------------------------------------------------------------------- mask perturbation


def _disk_mask(h: int = 96, w: int = 96) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    cv2.circle(m, (w // 2, h // 2), min(h, w) // 3, 255, -1)
    return m


@pytest.mark.parametrize("target", [0.4, 0.6, 0.8, 0.95])
def test_perturb_mask_reaches_target_iou(target):
    gt = _disk_mask()
    for seed in range(3):
        out = perturb_mask(gt, target, np.random.default_rng(seed))
        assert out.shape == gt.shape and out.dtype == bool
        assert binary_iou(out, gt) < target
        assert binary_iou(out, gt) > 0.1  # degraded, not destroyed


def test_perturb_mask_deterministic_and_degenerate_inputs():
    gt = _disk_mask()
    a = perturb_mask(gt, 0.7, np.random.default_rng(4))
    b = perturb_mask(gt, 0.7, np.random.default_rng(4))
    assert np.array_equal(a, b)
    tiny = perturb_mask(np.ones((2, 5), np.uint8), 0.5, np.random.default_rng(0))
    assert tiny.all()


# ----------------------------------------------------------------------------- scribbles


def _errors() -> tuple[np.ndarray, np.ndarray]:
    """gt: disk; mask: shifted rectangle; large FN and FP regions."""
    gt = np.zeros((96, 96), np.uint8)
    cv2.circle(gt, (56, 48), 30, 1, -1)
    mask = np.zeros_like(gt)
    mask[8:88, 6:50] = 1
    return gt > 0, mask > 0


def _dilate(x: np.ndarray, k: int) -> np.ndarray:
    return cv2.dilate(x.astype(np.uint8), np.ones((k, k), np.uint8)) > 0


def test_synthetic_scribbles_lie_in_error_regions():
    gt, mask = _errors()
    fn, fp = gt & ~mask, mask & ~gt
    n_pos = n_neg = 0
    for seed in range(12):
        pos, neg = synthetic_scribbles(gt, mask, np.random.default_rng(seed), extra_prob=0.0)
        # opening, thinning and the disk-dilated Bezier clip stay within a few px of the region
        assert not (pos & ~_dilate(fn, 7)).any() and not (neg & ~_dilate(fp, 7)).any()
        if pos.any():
            n_pos += 1
            assert (pos & fn).sum() >= 0.6 * pos.sum()
        if neg.any():
            n_neg += 1
            assert (neg & fp).sum() >= 0.6 * neg.sum()
    assert n_pos >= 9 and n_neg >= 9  # large error regions nearly always get scribbles


@pytest.mark.parametrize("kind", sorted(_DRAW))
def test_each_scribble_type(kind):
    comp = np.zeros((160, 160), np.uint8)
    cv2.ellipse(comp, (80, 80), (65, 45), 30, 0, 360, 1, -1)
    hits = 0
    for seed in range(6):
        out = _DRAW[kind](comp, np.random.default_rng(seed))
        assert out.dtype == bool and out.shape == comp.shape
        assert not (out & ~_dilate(comp > 0, 7)).any()
        hits += bool(out.any())
    assert hits >= 3


def test_scribbles_from_errors_clipped_and_from_zero():
    gt, mask = _errors()
    for seed in range(6):
        pos, neg = scribbles_from_errors(gt, mask, np.random.default_rng(seed), robot_prob=0.0)
        assert pos.dtype == np.float32 and set(np.unique(pos)) <= {0.0, 1.0}
        assert not (pos.astype(bool) & ~gt).any() and not (neg.astype(bool) & gt).any()
    # from zero: only positive scribbles in the object, plus extra curves in the background
    empty = np.zeros_like(mask)
    pos, neg = scribbles_from_errors(gt, empty, np.random.default_rng(0), robot_prob=1.0)
    assert pos.any() and not (pos.astype(bool) & ~gt).any()
    # nothing wrong at all: extra curves on gt / complement are always drawn
    pos, neg = scribbles_from_errors(gt, gt, np.random.default_rng(1), robot_prob=0.0)
    assert pos.any() and neg.any()


def test_tamed_robot_scribbles():
    pytest.importorskip("davisinteractive", reason="davisinteractive not installed")
    if importlib.util.find_spec("util.davis_compat") is None:
        pytest.skip("util/davis_compat.py not written yet (needed before importing the robot)")
    gt, mask = _errors()
    fn, fp = gt & ~mask, mask & ~gt
    pos, neg = robot_scribbles(gt, mask)
    assert pos.any() and neg.any()
    assert (pos & fn).sum() >= 0.8 * pos.sum()
    assert (neg & fp).sum() >= 0.8 * neg.sum()
    p2, n2 = scribbles_from_errors(gt, mask, np.random.default_rng(0), robot_prob=1.0)
    assert p2.any() and not (p2.astype(bool) & ~gt).any() and not (n2.astype(bool) & gt).any()


def test_clicks_in_interior_of_largest_error_region():
    gt = np.zeros((64, 64), bool)
    gt[10:50, 10:50] = True
    pred = np.zeros_like(gt)
    pred[10:50, 10:30] = True  # FN: 40 x 20 block at x 30..49
    pred[55:60, 55:60] = True  # small FP
    clicks = sample_clicks(gt, pred, np.random.default_rng(0), n=3)
    assert len(clicks) == 2
    first, second = clicks
    assert first.positive and 10 <= first.y < 50 and 38 <= first.x <= 41 and 20 <= first.y <= 39
    assert not second.positive and 55 <= second.y < 60 and 55 <= second.x < 60
    pos, neg = clicks_to_maps(clicks, gt.shape, radius=3)
    assert pos[first.y, first.x] == 1 and neg[second.y, second.x] == 1
    assert pos.sum() == pytest.approx(np.pi * 9, rel=0.4) and not (pos * neg).any()
    assert sample_clicks(gt, gt, np.random.default_rng(0), n=2) == []
    assert clicks_to_maps([Click(0, 0, True)], (5, 5), 1)[0][0, 0] == 1


# ----------------------------------------------------------------------------- video clips


def test_frame_index_rule():
    rng = np.random.default_rng(0)
    for n in (3, 4, 7, 20, 60):
        for max_jump in (1, 2, 5, 10, 25):
            j = min(n, max_jump)
            for _ in range(60):
                f0, f1, f2 = sample_frame_indices(n, max_jump, rng, reverse_prob=0.0)
                assert 0 <= f0 <= f1 <= f2 < n
                assert f1 - f0 <= j + 1 and f2 - f1 <= j + 1
                if f0 < n - j:  # the rule repeats a frame only when the start is at its maximum
                    assert f1 > f0
                if j >= 2:
                    assert f2 > f1
    # strict order for the usual case (long video, small jump) and reversal ~ 50 %
    flips = 0
    for _ in range(400):
        idx = sample_frame_indices(50, 5, rng)
        if idx[0] > idx[-1]:
            flips += 1
            idx = idx[::-1]
        if idx[0] < 45:
            assert idx[0] < idx[1] < idx[2]
    assert 150 < flips < 250


def test_curriculum_schedule():
    e = 100
    got = [max_jump_for_epoch(i, e, CURRICULUM_FRACTIONS_BL30K) for i in range(e)]
    assert got[:10] == [5] * 10 and got[10:20] == [10] * 10 and got[20:30] == [15] * 10
    assert got[30:40] == [20] * 10 and got[40:80] == [25] * 40 and got[80:] == [5] * 20
    main = [max_jump_for_epoch(i, e, CURRICULUM_FRACTIONS_MAIN) for i in range(e)]
    assert main[79:91] == [25] * 11 + [5]
    # few epochs: switches at round(0.7)=1, round(1.4)=1, round(2.1)=2, round(2.8)=3, round(5.6)=6
    assert [max_jump_for_epoch(i, 7) for i in range(7)] == [5, 15, 20, 25, 25, 25, 5]


def test_vos_clip_shapes_and_targets(data_root):
    ds = VOSClipDataset(data_root / "davis", subset=data_root / "davis/ImageSets/2017/train.txt",
                        size=S, seed=0, max_jump=3)
    assert [v.name for v in ds.videos] == ["two", "one"]
    n_two_obj = 0
    for i in range(8):
        ds.set_epoch(i)
        for idx in range(len(ds)):
            s = ds[idx]
            assert s["rgb"].shape == (3, 3, S, S) and 0 <= s["rgb"].min() and s["rgb"].max() <= 1
            assert s["gt"].shape == (3, 1, S, S) and s["sec_gt"].shape == (3, 1, S, S)
            assert s["cls_gt"].shape == (3, S, S) and s["cls_gt"].dtype == torch.int64
            assert torch.equal(s["cls_gt"] == 1, s["gt"][:, 0] > 0)
            assert torch.equal(s["cls_gt"] == 2, s["sec_gt"][:, 0] > 0)
            assert not ((s["gt"] > 0) & (s["sec_gt"] > 0)).any()
            assert s["gt"][0].any()  # the target is visible in the first frame
            sel = s["selector"].tolist()
            if s["info"]["name"] == "one":
                assert sel == [1.0, 0.0] and not s["sec_gt"].any()
            if sel == [1.0, 1.0]:
                n_two_obj += 1
                assert s["sec_gt"][0].any()
            else:
                assert not s["sec_gt"].any()
            assert s["info"]["num_objects"] == int(sum(sel))
            # image and mask stay aligned: objects are bright, the background dark
            fg = s["cls_gt"] > 0
            b = brightness(s["rgb"])
            assert b[fg].mean() > b[~fg].mean() + 0.25
            frames = [int(f) for f in s["info"]["frames"]]
            if frames[0] > frames[2]:
                frames = frames[::-1]
            assert frames[0] <= frames[1] <= frames[2]
            assert frames[2] - frames[0] <= 2 * (3 + 1)
    assert n_two_obj >= 4


def test_vos_no_object_gives_empty_masks(data_root):
    ds = VOSClipDataset(data_root / "davis", subset=["none"], size=S, seed=0)
    s = ds[0]
    assert s["selector"].tolist() == [1.0, 0.0]
    assert not s["gt"].any() and not s["sec_gt"].any() and not s["cls_gt"].any()
    assert s["info"]["num_objects"] == 0


def test_vos_plain_layout_divisor_determinism_and_collate(data_root):
    ds = VOSClipDataset(data_root / "ytvos", size=S, seed=5, max_jump=25, jump_divisor=5, repeat=2)
    assert len(ds) == 4 and ds.effective_max_jump == 5
    ds.max_jump = 5
    assert ds.effective_max_jump == 1
    a, b = ds[1], ds[1]
    assert torch.equal(a["rgb"], b["rgb"]) and torch.equal(a["cls_gt"], b["cls_gt"])
    assert a["info"] == b["info"]
    batch = next(iter(DataLoader(ds, batch_size=2, num_workers=0)))
    assert batch["rgb"].shape == (2, 3, 3, S, S) and batch["selector"].shape == (2, 2)


def test_vos_short_videos_skipped(data_root):
    ds = VOSClipDataset(data_root / "davis", size=S)
    assert "short" not in [v.name for v in ds.videos]


def test_bl30k_object_size_rules(data_root):
    ds = VOSClipDataset(data_root / "ytvos", size=S, bl30k=True)
    assert ds.shared_geometry.transforms[1].scale == (0.25, 1.0)
    m = np.zeros((3, 64, 64), np.uint8)
    m[0, :5, :5] = 1          # 25 px: too small
    m[0, 20:60, 20:60] = 2    # 1600 px: large, kept
    m[0, 0:15, 45:60] = 3     # 225 px and still small later: kept
    m[1, 0:15, 45:60] = 3
    m[0, 5:20, 5:20] = 4      # 225 px but much larger in frame 2: dropped
    m[2, 20:64, 0:30] = 4
    assert ds.usable_labels(list(m)) == [2, 3]
    ds.bl30k = False
    assert ds.usable_labels(list(m)) == [1, 2, 3, 4]


def test_datasets_leave_global_rng_alone(data_root):
    np_state, torch_state, py_state = np.random.get_state(), torch.get_rng_state(), random.getstate()
    StaticClipDataset([data_root / "flat"], size=S)[0]
    S2MDataset([data_root / "flat"], size=S, robot_prob=0.0)[1]
    VOSClipDataset(data_root / "ytvos", size=S)[0]
    after = np.random.get_state()
    assert np.array_equal(np_state[1], after[1]) and np_state[2:] == after[2:]
    assert torch.equal(torch_state, torch.get_rng_state()) and py_state == random.getstate()


def test_sample_rng_is_pure():
    a = sample_rng(1, 2, 3).random(4)
    assert np.array_equal(a, sample_rng(1, 2, 3).random(4))
    assert not np.array_equal(a, sample_rng(1, 2, 4).random(4))
    assert not np.array_equal(a, sample_rng(1, 3, 3).random(4))
