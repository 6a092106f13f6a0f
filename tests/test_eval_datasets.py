"""Semi-supervised evaluation readers on tiny generated DAVIS / YouTubeVOS / generic layouts."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from dataset.eval_datasets import (
    DAVIS2016Reader,
    DAVIS2017Reader,
    DatasetFormatError,
    DatasetNotFoundError,
    GenericReader,
    YouTubeVOSReader,
    remap_labels,
)
from util.palette import read_mask, write_palette_png

H, W = 24, 40


def _img(t: int, h: int = H, w: int = W) -> np.ndarray:
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0] = 20 * t
    a[..., 1] = 100
    return a


def _jpgs(folder: Path, names: list[str], h: int = H, w: int = W) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for t, n in enumerate(names):
        cv2.imwrite(str(folder / f"{n}.jpg"), cv2.cvtColor(_img(t, h, w), cv2.COLOR_RGB2BGR))


def _labels(ids: list[int], h: int = H, w: int = W) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    for k, i in enumerate(ids):
        m[2:10, 2 + 10 * k:9 + 10 * k] = i
    return m


def _names(n: int, step: int = 1) -> list[str]:
    return [f"{t * step:05d}" for t in range(n)]


# ---------------------------------------------------------------------------- DAVIS 2017


@pytest.fixture
def davis17(tmp_path) -> Path:
    root = tmp_path / "DAVIS"
    for seq, ids in (("bike", [1, 2]), ("cat", [1])):
        _jpgs(root / "JPEGImages" / "480p" / seq, _names(4))
        write_palette_png(root / "Annotations" / "480p" / seq / "00000.png", _labels(ids))
        write_palette_png(root / "Annotations" / "480p" / seq / "00001.png", _labels(ids))
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("bike\ncat\n")
    (root / "ImageSets" / "2017" / "test-dev.txt").write_text("cat\n")
    return root


def test_davis2017_reader(davis17, tmp_path):
    reader = DAVIS2017Reader(davis17, "val")
    assert len(reader) == 2 and reader.sequence_names == ["bike", "cat"]
    seq = reader["bike"]
    assert seq.frame_names == _names(4) and len(seq) == 4
    assert seq.annotated_frames == [0] and seq.first_annotated_frame == 0
    assert seq.num_objects == 2 and seq.object_ids == [1, 2]
    assert seq.objects_per_frame == {0: [1, 2]}
    assert seq.label_to_original == {1: 1, 2: 2}
    assert seq.original_size == (H, W) and seq.size == (H, W)
    assert np.array_equal(seq.annotations[0], _labels([1, 2]))
    assert seq.output_paths == [f"bike/{n}.png" for n in _names(4)]
    assert seq.image(2).shape == (H, W, 3)
    x = seq.image_tensor(1)
    assert isinstance(x, torch.Tensor) and x.shape == (3, H, W) and 0.0 <= x.min() and x.max() <= 1.0
    assert reader.gt_root == davis17 / "Annotations" / "480p"
    # writing in the benchmark layout
    out = seq.write_prediction(tmp_path / "out", 3, _labels([2, 1]))
    assert out == tmp_path / "out" / "bike" / "00003.png"
    assert Image.open(out).mode == "P" and np.array_equal(read_mask(out), _labels([2, 1]))
    assert [s.name for s in reader] == ["bike", "cat"]
    assert DAVIS2017Reader(davis17, "test-dev").sequence_names == ["cat"]


def test_davis2017_errors(davis17, tmp_path):
    with pytest.raises(DatasetNotFoundError, match="nothere.*download it yourself"):
        DAVIS2017Reader(tmp_path / "nothere")
    with pytest.raises(DatasetNotFoundError, match=r"ImageSets/2017/train\.txt"):
        DAVIS2017Reader(davis17, "train")
    with pytest.raises(DatasetNotFoundError, match="not in the split"):
        DAVIS2017Reader(davis17, sequences=["dog"])
    (davis17 / "ImageSets" / "2017" / "val.txt").write_text("bike\ncat\ndog\n")
    reader = DAVIS2017Reader(davis17)
    with pytest.raises(DatasetNotFoundError, match=r"JPEGImages/480p/dog"):
        reader["dog"]
    # image / annotation size mismatch names both files
    write_palette_png(davis17 / "Annotations" / "480p" / "cat" / "00000.png", _labels([1], h=H + 4))
    with pytest.raises(DatasetFormatError, match=r"cat/00000\.png.*cat/00000\.jpg"):
        reader["cat"]
    (davis17 / "Annotations" / "480p" / "cat" / "00000.png").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"first-frame annotation.*cat/00000\.png"):
        reader["cat"]
    import shutil

    shutil.rmtree(davis17 / "Annotations")
    with pytest.raises(DatasetNotFoundError, match=r"Annotations/480p"):
        DAVIS2017Reader(davis17)


# ---------------------------------------------------------------------------- DAVIS 2016


def test_davis2016_reader_binary(tmp_path):
    root = tmp_path / "DAVIS2016"
    _jpgs(root / "JPEGImages" / "480p" / "blackswan", _names(3))
    ann = root / "Annotations" / "480p" / "blackswan"
    ann.mkdir(parents=True)
    Image.fromarray((_labels([1]) * 255).astype(np.uint8)).save(ann / "00000.png")  # 0/255 gray
    with pytest.raises(DatasetNotFoundError, match=r"ImageSets/2016/val\.txt.*ImageSets/480p/val\.txt"):
        DAVIS2016Reader(root)
    (root / "ImageSets" / "480p").mkdir(parents=True)
    (root / "ImageSets" / "480p" / "val.txt").write_text(
        "/JPEGImages/480p/blackswan/00000.jpg /Annotations/480p/blackswan/00000.png\n"
        "/JPEGImages/480p/blackswan/00001.jpg /Annotations/480p/blackswan/00001.png\n"
    )
    reader = DAVIS2016Reader(root)
    assert reader.sequence_names == ["blackswan"]
    seq = reader[0]
    assert seq.num_objects == 1 and seq.binary_output
    assert set(np.unique(seq.annotations[0]).tolist()) == {0, 1}
    assert np.array_equal(seq.annotations[0], _labels([1]))
    out = seq.write_prediction(tmp_path / "out", 1, _labels([1]))
    saved = np.array(Image.open(out))
    assert Image.open(out).mode == "L" and set(np.unique(saved).tolist()) == {0, 255}
    # the 2017-style list is preferred when present, and an explicit list works
    (root / "ImageSets" / "2016").mkdir()
    (root / "ImageSets" / "2016" / "val.txt").write_text("blackswan\n")
    assert DAVIS2016Reader(root).split_file == root / "ImageSets" / "2016" / "val.txt"
    custom = tmp_path / "list.txt"
    custom.write_text("blackswan\n")
    assert DAVIS2016Reader(root, split_file=custom).sequence_names == ["blackswan"]


# ---------------------------------------------------------------------------- YouTubeVOS


def _youtube(tmp_path: Path, all_frames: bool = True) -> Path:
    root = tmp_path / "YouTube"
    valid = root / "valid"
    all_names = _names(11)  # 00000 .. 00010
    sampled = all_names[::5]  # 00000, 00005, 00010
    _jpgs(valid / "JPEGImages" / "vid", sampled)
    if all_frames:
        _jpgs(root / "valid_all_frames" / "JPEGImages" / "vid", all_names)
    ann = valid / "Annotations" / "vid"
    write_palette_png(ann / "00000.png", _labels([3]))
    late = np.zeros((H, W), np.uint8)
    late[14:20, 20:30] = 7  # object 7 appears at frame 00005
    write_palette_png(ann / "00005.png", late)
    meta = {"videos": {"vid": {"objects": {
        "3": {"category": "cat", "frames": ["00000", "00005", "00010"]},
        "7": {"category": "dog", "frames": ["00005", "00010"]},
    }}}}
    (valid / "meta.json").write_text(json.dumps(meta))
    return root


def test_youtubevos_reader(tmp_path):
    root = _youtube(tmp_path)
    reader = YouTubeVOSReader(root, resolution=12)
    assert reader.all_frames and reader.sequence_names == ["vid"]
    seq = reader["vid"]
    assert seq.frame_names == _names(11) and len(seq) == 11
    assert seq.annotated_frames == [0, 5]
    assert seq.label_to_original == {1: 3, 2: 7}
    assert seq.objects_per_frame == {0: [1], 5: [2]}
    assert seq.first_frame_of_object == {1: 0, 2: 5}
    assert set(np.unique(seq.annotations[5]).tolist()) == {0, 2}
    assert seq.original_size == (H, W) and seq.size == (12, 20)
    assert seq.image(3).shape == (12, 20, 3)
    small = seq.annotation_resized(5)
    assert small.shape == (12, 20) and set(np.unique(small).tolist()) == {0, 2}
    assert seq.output_paths[0] == "Annotations/vid/00000.png"
    assert seq.output_paths[7] == "Annotations/vid/00007.png"
    assert seq.output_frame_indices == list(range(11))
    pred = np.zeros((H, W), np.uint8)
    pred[:5, :5] = 1
    pred[-5:, -5:] = 2
    out = seq.write_prediction(tmp_path / "sub", 7, pred)
    assert out == tmp_path / "sub" / "Annotations" / "vid" / "00007.png"
    restored = read_mask(out)
    assert restored[0, 0] == 3 and restored[-1, -1] == 7 and restored[12, 12] == 0
    with pytest.raises(ValueError, match="outside 0..2"):
        seq.to_original_labels(np.full((2, 2), 5, np.uint8))
    # sampled frames only
    sampled = YouTubeVOSReader(root, all_frames=False)["vid"]
    assert sampled.frame_names == ["00000", "00005", "00010"]
    assert sampled.annotated_frames == [0, 1]
    assert sampled.size == (480, 800)  # protocol default: shorter side 480


def test_youtubevos_late_first_frame_outputs(tmp_path):
    root = _youtube(tmp_path)
    ann = root / "valid" / "Annotations" / "vid"
    (ann / "00000.png").unlink()
    meta_path = root / "valid" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["videos"]["vid"]["objects"]["3"]["frames"] = ["00005", "00010"]
    m = np.zeros((H, W), np.uint8)
    m[2:8, 2:8] = 3
    m[14:20, 20:30] = 7
    write_palette_png(ann / "00005.png", m)
    meta_path.write_text(json.dumps(meta))
    seq = YouTubeVOSReader(root, resolution=-1)["vid"]
    assert seq.first_annotated_frame == 5
    assert seq.output_paths[:5] == [None] * 5
    assert seq.output_paths[5] == "Annotations/vid/00005.png"
    assert seq.output_frame_indices == list(range(5, 11))
    assert seq.objects_per_frame == {5: [1, 2]}


def test_youtubevos_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="youtube-vos.org"):
        YouTubeVOSReader(tmp_path / "none")
    root = _youtube(tmp_path, all_frames=False)
    with pytest.raises(DatasetNotFoundError, match="valid_all_frames"):
        YouTubeVOSReader(root, all_frames=True)
    reader = YouTubeVOSReader(root)  # auto -> sampled frames
    assert not reader.all_frames and reader["vid"].frame_names == ["00000", "00005", "00010"]
    meta_path = root / "valid" / "meta.json"
    good = meta_path.read_text()
    # a frame listed in meta.json that is not among the JPEGs
    meta = json.loads(good)
    meta["videos"]["vid"]["objects"]["7"]["frames"].append("00015")
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DatasetFormatError, match=r"meta\.json.*00015"):
        YouTubeVOSReader(root)["vid"]
    # the first-appearance annotation is missing
    meta = json.loads(good)
    meta["videos"]["vid"]["objects"]["9"] = {"frames": ["00010"]}
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DatasetNotFoundError, match=r"object 9.*vid/00010\.png"):
        YouTubeVOSReader(root)["vid"]
    # the annotation exists but lacks the object
    write_palette_png(root / "valid" / "Annotations" / "vid" / "00010.png", _labels([3]))
    with pytest.raises(DatasetFormatError, match=r"00010\.png does not contain label 9"):
        YouTubeVOSReader(root)["vid"]
    meta_path.write_text("{not json")
    with pytest.raises(DatasetFormatError, match="not valid JSON"):
        YouTubeVOSReader(root)
    meta_path.write_text(good)
    (root / "valid" / "Annotations" / "vid" / "00010.png").unlink()
    write_palette_png(root / "valid" / "Annotations" / "vid" / "00005.png", _labels([7], h=H - 2))
    with pytest.raises(DatasetFormatError, match=r"00005\.png.*00005\.jpg"):
        YouTubeVOSReader(root)["vid"]


# ---------------------------------------------------------------------------- generic


def test_generic_first_frame_mask_file(tmp_path):
    _jpgs(tmp_path / "frames", _names(5))
    mask = tmp_path / "first.png"
    Image.fromarray((_labels([1]) * 255).astype(np.uint8)).save(mask)  # 0/255 grayscale
    reader = GenericReader(tmp_path / "frames", mask, name="clip")
    assert len(reader) == 1
    seq = reader[0]
    assert seq.name == "clip" and seq.annotated_frames == [0] and seq.num_objects == 1
    assert np.array_equal(seq.annotations[0], _labels([1]))
    assert seq.output_paths == [f"clip/{n}.png" for n in _names(5)]


def test_generic_mask_folder_and_video(tmp_path):
    _jpgs(tmp_path / "frames", _names(6))
    masks = tmp_path / "masks"
    write_palette_png(masks / "00002.png", _labels([4]))
    write_palette_png(masks / "00004.png", _labels([4, 9]))
    seq = GenericReader(tmp_path / "frames", masks)[0]
    assert seq.name == "frames"
    assert seq.annotated_frames == [2, 4] and seq.label_to_original == {1: 4, 2: 9}
    assert seq.objects_per_frame == {2: [1], 4: [1, 2]}
    assert seq.output_paths[:2] == [None, None] and seq.output_paths[2] == "frames/00002.png"

    # a video as the frame source, with masks named like its frames (00000, 00001, ...)
    video = tmp_path / "clip.mp4"
    wr = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (W, H))
    if not wr.isOpened():
        pytest.skip("no mp4v encoder to write a test video")
    for t in range(4):
        wr.write(_img(t))
    wr.release()
    vseq = GenericReader(video, masks / "00002.png")[0]
    assert len(vseq) == 4 and vseq.frames.is_video and vseq.annotated_frames == [2]


def test_generic_errors(tmp_path):
    _jpgs(tmp_path / "frames", _names(3))
    with pytest.raises(DatasetNotFoundError, match="nomask"):
        GenericReader(tmp_path / "frames", tmp_path / "nomask")
    with pytest.raises(DatasetNotFoundError, match="noframes"):
        GenericReader(tmp_path / "noframes", tmp_path / "frames")
    masks = tmp_path / "masks"
    write_palette_png(masks / "00007.png", _labels([1]))
    with pytest.raises(DatasetFormatError, match=r"00007\.png does not match"):
        GenericReader(tmp_path / "frames", masks)[0]
    (masks / "00007.png").unlink()
    with pytest.raises(DatasetNotFoundError, match="no mask files"):
        GenericReader(tmp_path / "frames", masks)[0]
    write_palette_png(masks / "00000.png", np.zeros((H, W), np.uint8))
    with pytest.raises(DatasetFormatError, match="no object"):
        GenericReader(tmp_path / "frames", masks)[0]
    write_palette_png(masks / "00000.png", _labels([1], w=W + 1))
    with pytest.raises(DatasetFormatError, match=r"masks/00000\.png.*frames/00000\.jpg"):
        GenericReader(tmp_path / "frames", masks)[0]
    # non-DAVIS RGB colours are rejected by read_mask with the file name
    Image.fromarray(np.full((H, W, 3), (12, 34, 56), np.uint8)).save(masks / "00000.png")
    with pytest.raises(ValueError, match=r"00000\.png"):
        GenericReader(tmp_path / "frames", masks)[0]


def test_remap_labels():
    maps = {0: _labels([3]), 4: _labels([3, 7])}
    out, mapping = remap_labels(maps)
    assert mapping == {1: 3, 2: 7}
    assert set(np.unique(out[4]).tolist()) == {0, 1, 2}
    out, mapping = remap_labels(maps, order=[7])
    assert mapping == {1: 7} and set(np.unique(out[0]).tolist()) == {0}
