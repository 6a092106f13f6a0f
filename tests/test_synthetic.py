"""Tests for the procedural synthetic data generator (dataset/synthetic.py) and util/palette.py."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from dataset import synthetic as S
from util.palette import (
    DAVIS_PALETTE,
    DAVIS_PALETTE_RGB,
    MaskReadError,
    colorize,
    read_mask,
    write_palette_png,
)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    summary = S.write_dataset(root, "tiny", seed=0)
    assert len(summary["generated"]) == 3
    return root


def _load_seq(root, name):
    imgs = sorted((root / "JPEGImages" / "480p" / name).glob("*.jpg"))
    anns = sorted((root / "Annotations" / "480p" / name).glob("*.png"))
    return imgs, anns


# ----------------------------------------------------------------------------- palette / masks


def test_davis_palette_values():
    assert len(DAVIS_PALETTE) == 768
    expected = [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128),
                (128, 0, 128), (0, 128, 128), (128, 128, 128), (64, 0, 0), (192, 0, 0),
                (64, 128, 0)]
    assert [tuple(c) for c in DAVIS_PALETTE_RGB[:11].tolist()] == expected
    assert len({tuple(c) for c in DAVIS_PALETTE_RGB.tolist()}) == 256  # all distinct


def test_write_palette_png_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, size=(13, 17)).astype(np.uint8)
    path = tmp_path / "sub" / "m.png"
    write_palette_png(path, labels)
    assert os.listdir(path.parent) == ["m.png"]  # no temporary files left behind
    with Image.open(path) as im:
        assert im.mode == "P"
        assert bytes(im.getpalette()[:768]) == DAVIS_PALETTE[: len(im.getpalette()[:768])]
        assert np.array_equal(np.array(im), labels)
    assert np.array_equal(read_mask(path), labels)
    with pytest.raises(ValueError):
        write_palette_png(tmp_path / "bad.png", np.full((2, 2), 300))


def test_read_mask_variants(tmp_path):
    labels = np.zeros((10, 12), np.uint8)
    labels[2:5, 2:6] = 1
    labels[6:9, 7:11] = 3
    # RGB coloured with the palette -> labels
    Image.fromarray(colorize(labels)).save(tmp_path / "rgb.png")
    assert np.array_equal(read_mask(tmp_path / "rgb.png"), labels)
    # grayscale 0/255 -> 0/1
    binary = (labels > 0).astype(np.uint8)
    Image.fromarray(binary * 255).save(tmp_path / "gray.png")
    out = read_mask(tmp_path / "gray.png")
    assert out.dtype == np.uint8 and np.array_equal(out, binary)
    # black/white RGB -> 0/1
    Image.fromarray(np.repeat((binary * 255)[..., None], 3, axis=2)).save(tmp_path / "bw.png")
    assert np.array_equal(read_mask(tmp_path / "bw.png"), binary)
    # grayscale holding small labels directly
    Image.fromarray(labels).save(tmp_path / "lab.png")
    assert np.array_equal(read_mask(tmp_path / "lab.png"), labels)


def test_read_mask_errors_name_the_file(tmp_path):
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    with pytest.raises(MaskReadError, match="corrupt.png"):
        read_mask(bad)
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[0, 0] = (12, 34, 56)
    Image.fromarray(rgb).save(tmp_path / "odd.png")
    with pytest.raises(MaskReadError, match=r"odd\.png.*\(12, 34, 56\)"):
        read_mask(tmp_path / "odd.png")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_mask(tmp_path / "missing.png")


# ----------------------------------------------------------------------------- generator


def test_generator_is_deterministic_by_seed():
    spec = S.SequenceSpec("det", 5, 48, 64, 2, 1)
    a = S.generate_sequence(spec, 7)
    b = S.generate_sequence(spec, 7)
    c = S.generate_sequence(spec, 8)
    assert a.images.dtype == np.uint8 and a.images.shape == (5, 48, 64, 3)
    assert a.masks.shape == (5, 48, 64)
    assert a.images.tobytes() == b.images.tobytes()
    assert a.masks.tobytes() == b.masks.tobytes()
    assert not np.array_equal(a.images, c.images)


def test_sequences_are_nontrivial():
    spec = S.SequenceSpec("nt", 12, 96, 128, 3, 1)
    seq = S.generate_sequence(spec, 3)
    img = seq.images.astype(np.float32)
    for k in range(1, 4):
        sel = seq.masks == k
        assert sel.sum() > 0
        obj = img[sel]
        # textured: not a constant colour
        assert obj.std(axis=0).max() > 8
        # distinguishable from the background on average
        bg = img[seq.masks == 0]
        assert np.abs(obj.mean(axis=0) - bg.mean(axis=0)).max() > 5
    # every object visible in frame 0 (DAVIS convention)
    assert set(np.unique(seq.masks[0])) == {0, 1, 2, 3}
    # the background moves / changes between frames (camera + lighting)
    assert np.abs(img[0] - img[-1]).mean() > 2


def test_tiny_layout_and_files(tiny_root):
    root = tiny_root
    val = (root / "ImageSets" / "2017" / "val.txt").read_text().split()
    train = (root / "ImageSets" / "2017" / "train.txt").read_text().split()
    assert val == ["tiny-000", "tiny-001", "tiny-002"] and train == val
    meta = json.loads((root / "synthetic.json").read_text())["sequences"]
    for name in val:
        imgs, anns = _load_seq(root, name)
        assert len(imgs) == len(anns) == meta[name]["num_frames"]
        assert [p.stem for p in imgs] == [f"{i:05d}" for i in range(len(imgs))]
        sizes = set()
        for ip, ap in zip(imgs, anns):
            with Image.open(ip) as im:
                assert im.mode == "RGB"
                sizes.add(im.size)
            with Image.open(ap) as am:
                assert am.mode == "P"
                assert bytes(am.getpalette()[:12]) == DAVIS_PALETTE[:12]
                sizes.add(am.size)
        assert sizes == {tuple(meta[name]["image_size"])}  # one size per sequence, (W, H)


def test_tiny_objects_visible_and_moving(tiny_root):
    meta = json.loads((tiny_root / "synthetic.json").read_text())["sequences"]
    for name, entry in meta.items():
        _, anns = _load_seq(tiny_root, name)
        masks = np.stack([read_mask(p) for p in anns])
        k_max = entry["num_objects"]
        assert int(masks.max()) == k_max
        for k in range(1, k_max + 1):
            present = [(m == k).any() for m in masks]
            assert present[0], f"{name}: object {k} missing from frame 0"
            frames = [i for i, p in enumerate(present) if p]
            first, last = frames[0], frames[-1]
            assert not np.array_equal(masks[first] == k, masks[last] == k), f"{name}: {k} static"


def test_tiny_scribbles_official_format(tiny_root):
    from util.davis_compat import ensure_compat

    ensure_compat()
    from davisinteractive.utils.scribbles import scribbles2mask

    meta = json.loads((tiny_root / "synthetic.json").read_text())["sequences"]
    inside_total = count_total = 0
    for name, entry in meta.items():
        _, anns = _load_seq(tiny_root, name)
        gt = np.stack([read_mask(p) for p in anns])
        files = sorted((tiny_root / "Scribbles" / name).glob("*.json"))
        assert [f.name for f in files] == [f"{i:03d}.json" for i in
                                           range(1, entry["num_scribbles"] + 1)]
        used_frames = []
        for f in files:
            data = json.loads(f.read_text())
            assert data["sequence"] == name
            assert len(data["scribbles"]) == entry["num_frames"]
            annotated = [i for i, s in enumerate(data["scribbles"]) if s]
            assert len(annotated) == 1
            frame = annotated[0]
            used_frames.append(frame)
            for path in data["scribbles"][frame]:
                assert set(path) == {"path", "object_id", "start_time", "end_time"}
                pts = np.asarray(path["path"])
                assert pts.ndim == 2 and pts.shape[1] == 2
                assert pts.min() >= 0 and pts.max() <= 1
            assert {p["object_id"] for p in data["scribbles"][frame]} == set(
                range(1, entry["num_objects"] + 1))
            h, w = gt.shape[1:]
            rast = scribbles2mask(data, (h, w))
            for k in range(1, entry["num_objects"] + 1):
                px = rast[frame] == k
                assert px.sum() > 0
                inside = (gt[frame][px] == k).mean()
                assert inside >= 0.5, f"{name} {f.name} object {k}: {inside:.2f} inside"
                inside_total += int((gt[frame][px] == k).sum())
                count_total += int(px.sum())
        assert len(set(used_frames)) == len(used_frames)  # different frames per file
    assert inside_total / count_total >= 0.85


def test_resumable_and_safe(tiny_root, tmp_path):
    again = S.write_dataset(tiny_root, "tiny", seed=0)
    assert again["generated"] == [] and len(again["skipped"]) == 3
    # An interrupted sequence (incomplete marker, missing files) is redone, identically.
    ann = tiny_root / "Annotations" / "480p" / "tiny-001" / "00003.png"
    before = ann.read_bytes()
    marker = tiny_root / ".synthetic" / "tiny-001.json"
    info = json.loads(marker.read_text())
    marker.write_text(json.dumps({**info, "complete": False}))
    ann.unlink()
    out = S.write_dataset(tiny_root, "tiny", seed=0)
    assert out["generated"] == ["tiny-001"]
    assert ann.read_bytes() == before
    # Folders not written by the generator are never overwritten.
    foreign = tmp_path / "foreign"
    (foreign / "JPEGImages" / "480p" / "tiny-000").mkdir(parents=True)
    with pytest.raises(FileExistsError):
        S.write_sequence(foreign, S.preset_specs("tiny")[0], [0])


def test_metadata_scan_matches_manifest(tiny_root, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_root, copy)
    (copy / "synthetic.json").unlink()
    scanned = S.sequence_metadata(copy)
    manifest = json.loads((tiny_root / "synthetic.json").read_text())["sequences"]
    assert scanned == manifest


def test_davis_val_preset_mirrors_official_tables(tmp_path):
    from util.davis_compat import ensure_compat

    ensure_compat()
    from davisinteractive.dataset import Davis

    specs = S.preset_specs("davis-val")
    assert len(specs) == 30
    assert sum(s.num_frames for s in specs) == 1999
    assert sum(s.num_objects for s in specs) == 61
    assert sum(s.num_scribbles for s in specs) == 90
    for s in specs:
        e = Davis.dataset[s.name]
        assert e["set"] == "val"
        assert (s.num_frames, s.num_objects, s.num_scribbles) == (
            e["num_frames"], e["num_objects"], e["num_scribbles"])
        assert list(s.image_size) == list(e["image_size"])
    # One real-size sequence passes davisinteractive's own checks and loaders.
    judo = next(s for s in specs if s.name == "judo")  # 34 frames, 854 x 480, 2 objects
    S.write_dataset(tmp_path, "davis-val", seed=0, specs=[judo])
    davis = Davis(davis_root=str(tmp_path))
    assert davis.check_files(["judo"])
    ann = davis.load_annotations("judo")
    assert ann.shape == (34, 480, 854) and int(ann.max()) == 2
    assert davis.load_images("judo").shape == (34, 480, 854, 3)
    assert davis.load_scribble("judo", 3)["sequence"] == "judo"


def test_train_quarter_is_train_small_at_a_quarter_of_480p():
    small, quarter = S.preset_specs("train-small", 3), S.preset_specs("train-quarter", 3)
    # the first 16 train videos have train-small's layout; then 32 more, then the 4 val
    assert [(q.name, q.num_objects, q.subset, q.num_frames) for q in quarter[:16]] == [
        (s.name, s.num_objects, s.subset, s.num_frames) for s in small[:16]]
    assert {(q.height, q.width) for q in quarter} == {(120, 216)}
    assert sum(q.subset == "train" for q in quarter) == 48
    assert [q.name for q in quarter if q.subset == "val"] == [f"val-{i:03d}" for i in range(4)]
    with pytest.raises(ValueError, match="train-quarter"):
        S.preset_specs("quarter")


def test_static_pairs(tmp_path):
    stems = S.generate_static_pairs(tmp_path / "a", 3, (40, 56), seed=5)
    assert stems == ["00000", "00001", "00002"]
    for stem in stems:
        with Image.open(tmp_path / "a" / f"{stem}.jpg") as im:
            assert im.mode == "RGB" and im.size == (56, 40)
        with Image.open(tmp_path / "a" / f"{stem}.png") as m:
            mask = np.array(m)
        assert set(np.unique(mask)) == {0, 255}
        assert 0.03 < (mask > 0).mean() < 0.9
        assert np.array_equal(read_mask(tmp_path / "a" / f"{stem}.png"), (mask > 0))
    S.generate_static_pairs(tmp_path / "b", 3, (40, 56), seed=5)
    for stem in stems:
        for ext in ("jpg", "png"):
            assert ((tmp_path / "a" / f"{stem}.{ext}").read_bytes()
                    == (tmp_path / "b" / f"{stem}.{ext}").read_bytes())
    img1, _ = S.generate_static_pair(np.random.default_rng(1), 32)
    img2, _ = S.generate_static_pair(np.random.default_rng(2), 32)
    assert not np.array_equal(img1, img2)


def test_cli(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        S.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "--preset" in text and "davis-val" in text and "--workers" in text
    assert S.main(["--out", str(tmp_path), "--preset", "static", "--count", "2",
                   "--size", "32x48", "--no-progress"]) == 0
    assert sorted(p.name for p in tmp_path.glob("0000*")) == [
        "00000.jpg", "00000.png", "00001.jpg", "00001.png"]
