"""FrameSource (folders and videos), atomic file helpers, mask saving and overlays."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from util.fileio import (
    atomic_save_image,
    atomic_save_json,
    atomic_torch_save,
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    ensure_dir,
)
from util.video_io import (
    FrameSource,
    FrameSourceError,
    natural_sort_key,
    overlay,
    resized_hw,
    save_masks,
    write_overlay_frames,
    write_overlay_video,
)

H, W = 36, 48


def _frame(t: int, h: int = H, w: int = W) -> np.ndarray:
    """A frame whose mean encodes t (flat colour + small gradient)."""
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = 10 + 20 * t
    img[..., 1] = np.linspace(0, 100, w, dtype=np.uint8)[None, :]
    img[..., 2] = 200 - 10 * t
    return img


def _write_png_folder(folder: Path, n: int, names=None) -> list[np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    frames = [_frame(t) for t in range(n)]
    for t, f in enumerate(frames):
        name = names[t] if names else f"{t:05d}.png"
        Image.fromarray(f).save(folder / name)
    return frames


def _write_video(path: Path, n: int, fourcc: str = "mp4v") -> bool:
    wr = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10.0, (W, H))
    if not wr.isOpened():
        return False
    for t in range(n):
        wr.write(cv2.cvtColor(_frame(t), cv2.COLOR_RGB2BGR))
    wr.release()
    return path.is_file() and path.stat().st_size > 0


# ---------------------------------------------------------------------------- fileio


def test_atomic_helpers_write_complete_files(tmp_path):
    d = ensure_dir(tmp_path / "a" / "b")
    assert d.is_dir()
    atomic_write_bytes(d / "x.bin", b"\x00\x01")
    assert (d / "x.bin").read_bytes() == b"\x00\x01"
    atomic_write_text(d / "s.csv", "a,b\n1,2\n")
    assert (d / "s.csv").read_text() == "a,b\n1,2\n"
    atomic_save_json(d / "j.json", {"v": np.float32(0.5), "arr": np.arange(3)})
    assert json.loads((d / "j.json").read_text()) == {"v": 0.5, "arr": [0, 1, 2]}
    img = np.random.default_rng(0).integers(0, 255, (8, 9, 3), dtype=np.uint8)
    atomic_save_image(d / "i.png", img)
    assert np.array_equal(np.array(Image.open(d / "i.png")), img)
    atomic_torch_save(d / "t.pth", {"w": torch.arange(4)})
    assert torch.equal(torch.load(d / "t.pth", weights_only=True)["w"], torch.arange(4))
    # no temporary files are left behind
    assert sorted(p.name for p in d.iterdir()) == ["i.png", "j.json", "s.csv", "t.pth", "x.bin"]


def test_atomic_write_failure_keeps_old_file(tmp_path):
    target = tmp_path / "keep.txt"
    target.write_text("old")

    def broken(tmp: str) -> None:
        Path(tmp).write_text("partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
    with pytest.raises(NotADirectoryError):
        ensure_dir(target)


# ---------------------------------------------------------------------------- folders


def test_natural_sort_and_folder_source(tmp_path):
    names = ["f10.png", "f2.png", "f1.png"]
    frames = _write_png_folder(tmp_path / "seq", 3, names)
    assert sorted(names, key=natural_sort_key) == ["f1.png", "f2.png", "f10.png"]
    (tmp_path / "seq" / "notes.txt").write_text("ignored")
    src = FrameSource(tmp_path / "seq")
    assert len(src) == 3 and not src.is_video
    assert src.names == ["f1", "f2", "f10"]
    assert src.original_size == (H, W) and src.size == (H, W)
    # f1 was frame 2, f2 frame 1, f10 frame 0 of the written list
    for t, orig in enumerate([2, 1, 0]):
        out = src[t]
        assert out.dtype == np.uint8 and out.shape == (H, W, 3)
        assert np.array_equal(out, frames[orig])
    assert np.array_equal(src[-1], frames[0])
    with pytest.raises(IndexError):
        src[3]
    allf = src.load_all()
    assert allf.shape == (3, H, W, 3) and allf.flags.writeable


def test_jpg_frames_are_rgb(tmp_path):
    d = tmp_path / "jpgs"
    d.mkdir()
    img = np.zeros((H, W, 3), np.uint8)
    img[..., 0] = 250  # pure red in RGB
    cv2.imwrite(str(d / "00000.jpg"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    out = FrameSource(d)[0]
    assert out[..., 0].mean() > 240 and out[..., 2].mean() < 15


def test_resize_shorter_side(tmp_path):
    _write_png_folder(tmp_path / "seq", 2)
    src = FrameSource(tmp_path / "seq", resolution=18)
    assert src.size == (18, 24) and src.original_size == (H, W)
    out = src[1]
    assert out.shape == (18, 24, 3)
    ref = cv2.resize(_frame(1), (24, 18), interpolation=cv2.INTER_CUBIC)
    assert np.array_equal(out, ref)
    assert resized_hw(100, 50, 480) == (960, 480)
    assert resized_hw(480, 854, 480) == (480, 854)
    assert resized_hw(720, 1280, 480) == (480, 853)  # int(), like torchvision Resize(int)
    assert resized_hw(7, 9, -1) == (7, 9)
    assert FrameSource(tmp_path / "seq", resolution=-1).size == (H, W)


def test_lru_cache_is_bounded(tmp_path):
    _write_png_folder(tmp_path / "seq", 6)
    src = FrameSource(tmp_path / "seq", cache_size=2)
    for t in range(6):
        src[t]
    info = src.cache_info()
    assert info["size"] == 2 and info["indices"] == [4, 5] and info["misses"] == 6
    src[4]  # hit, becomes most recent
    src[0]  # miss, evicts 5
    info = src.cache_info()
    assert info["indices"] == [4, 0] and info["hits"] == 1 and info["misses"] == 7
    nocache = FrameSource(tmp_path / "seq", cache_size=0)
    nocache[0]
    nocache[0]
    assert nocache.cache_info()["size"] == 0 and nocache.cache_info()["misses"] == 2
    unbounded = FrameSource(tmp_path / "seq", cache_size=None)
    unbounded.load_all()
    assert unbounded.cache_info()["size"] == 6
    with pytest.raises(ValueError):
        FrameSource(tmp_path / "seq", cache_size=-1)


def test_mixed_sizes_error_names_file(tmp_path):
    d = tmp_path / "mixed"
    _write_png_folder(d, 2)
    Image.fromarray(_frame(2, h=H + 2)).save(d / "00002.png")
    with pytest.raises(FrameSourceError, match=r"00002\.png.*differs"):
        FrameSource(d)
    # without the up-front header scan the error comes when the frame is decoded
    src = FrameSource(d, check_sizes=False)
    src[0]
    with pytest.raises(FrameSourceError, match=r"00002\.png"):
        src[2]


def test_corrupt_and_truncated_jpg_name_the_file(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    cv2.imwrite(str(d / "00000.jpg"), _frame(0))
    noise = np.random.default_rng(1).integers(0, 255, (H, W, 3), dtype=np.uint8)
    ok, enc = cv2.imencode(".jpg", noise, [cv2.IMWRITE_JPEG_QUALITY, 100])
    (d / "00001.jpg").write_bytes(enc.tobytes()[: len(enc) * 3 // 4])  # truncated body
    (d / "00002.jpg").write_bytes(b"this is not a jpeg")
    # the scan at construction reads headers and file ends: the truncated file is found first
    with pytest.raises(FrameSourceError, match=r"00001\.jpg: truncated JPEG"):
        FrameSource(d)
    (d / "00001.jpg").rename(d / "00003.jpg")
    with pytest.raises(FrameSourceError, match=r"00002\.jpg: not a readable frame"):
        FrameSource(d)
    (d / "00002.jpg").unlink()
    src = FrameSource(d, check_sizes=False)  # without the scan, decoding names the file
    src[0]
    with pytest.raises(FrameSourceError, match=r"00003\.jpg.*cannot decode"):
        src[1]


def test_empty_and_missing_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(FrameSourceError, match="no frames found"):
        FrameSource(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        FrameSource(tmp_path / "nowhere")


# ---------------------------------------------------------------------------- videos


@pytest.fixture
def video(tmp_path) -> Path:
    path = tmp_path / "clip.mp4"
    if not _write_video(path, 10):
        path = tmp_path / "clip.avi"
        if not _write_video(path, 10, "MJPG"):
            pytest.skip("no OpenCV encoder (mp4v or MJPG) available to write a test video")
    return path


def _close(a: np.ndarray, b: np.ndarray, tol: float = 12.0) -> bool:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean()) < tol


@pytest.mark.parametrize("backend", ["opencv", "pyav"])
def test_video_source(video, backend):
    src = FrameSource(video, backend=backend, cache_size=3)
    assert src.is_video and len(src) == 10 and src.backend == backend
    assert src.names[0] == "00000" and src.names[-1] == "00009"
    assert src.original_size == (H, W)
    assert src.fps == pytest.approx(10.0, rel=0.05)
    for t in range(10):  # forward
        f = src[t]
        assert f.shape == (H, W, 3) and f.dtype == np.uint8
        assert _close(f, _frame(t)), t
    for t in range(9, -1, -1):  # backward: restarts decoding, still correct
        assert _close(src[t], _frame(t)), t
    assert src.cache_info()["size"] <= 3
    # random access
    assert _close(src[7], _frame(7)) and _close(src[2], _frame(2))
    src.close()


def test_video_resize_and_load_all(video):
    with FrameSource(video, resolution=18, cache_size=None) as src:
        allf = src.load_all()
    assert allf.shape == (10, 18, 24, 3)
    assert _close(allf[4], cv2.resize(_frame(4), (24, 18), interpolation=cv2.INTER_CUBIC))


def test_undecodable_video(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 64 + b"not a video at all" * 20)
    with pytest.raises(FrameSourceError, match=r"broken\.mp4.*cannot be decoded"):
        FrameSource(bad)


# ---------------------------------------------------------------------------- writing


def _two_object_mask() -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[5:20, 5:20] = 1
    m[22:32, 25:45] = 2
    return m


def test_save_masks_palette(tmp_path):
    from util.palette import read_mask

    masks = np.stack([_two_object_mask(), np.zeros((H, W), np.uint8)])
    paths = save_masks(tmp_path / "out", masks, ["00000.jpg", "00001"])
    assert [p.name for p in paths] == ["00000.png", "00001.png"]
    img = Image.open(paths[0])
    assert img.mode == "P"
    assert np.array_equal(read_mask(paths[0]), masks[0])
    with pytest.raises(ValueError, match="2 masks but 1 names"):
        save_masks(tmp_path / "out", masks, ["a"])


def test_overlay_changes_only_object_pixels():
    from util.palette import DAVIS_PALETTE_RGB

    img = _frame(3)
    mask = _two_object_mask()
    out = overlay(img, mask, alpha=0.5, contour=True)
    assert out.shape == img.shape and out.dtype == np.uint8
    bg = mask == 0
    assert np.array_equal(out[bg], img[bg])
    # interior pixel of object 1 is the 50 % blend with the palette colour of label 1
    expect = np.rint(0.5 * img[10, 10].astype(np.float32) + 0.5 * DAVIS_PALETTE_RGB[1]).astype(np.uint8)
    assert np.array_equal(out[10, 10], expect)
    # contour pixels are black and lie inside the objects
    assert np.array_equal(out[5, 10], [0, 0, 0]) and np.array_equal(out[22, 30], [0, 0, 0])
    black = np.all(out == 0, axis=-1) & ~np.all(img == 0, axis=-1)
    assert black.any() and not (black & bg).any()
    no_contour = overlay(img, mask, alpha=0.5, contour=False)
    assert np.array_equal(no_contour[5, 10], np.rint(0.5 * img[5, 10].astype(np.float32)
                                                     + 0.5 * DAVIS_PALETTE_RGB[1]).astype(np.uint8))
    assert np.array_equal(overlay(img, np.zeros_like(mask)), img)
    with pytest.raises(ValueError, match="differs"):
        overlay(img, mask[:-1])


def test_write_overlay_frames_and_video(tmp_path):
    frames = [_frame(t) for t in range(5)]
    masks = [_two_object_mask() for _ in range(5)]
    paths = write_overlay_frames(tmp_path / "ov", frames, masks)
    assert [p.name for p in paths] == [f"{t:05d}.png" for t in range(5)]
    assert np.array_equal(np.array(Image.open(paths[2])), overlay(frames[2], masks[2]))
    out = write_overlay_video(tmp_path / "ov.mp4", frames, masks, fps=5)
    if out.suffix == ".mp4":
        back = FrameSource(out)
        assert len(back) == 5
        assert _close(back[1], overlay(frames[1], masks[1]), tol=15)
    else:  # no encoder: PNG fallback
        assert out.is_dir() and len(list(out.glob("*.png"))) == 5
    assert not list(tmp_path.glob(".*tmp*"))
    with pytest.raises(ValueError, match="5 frames but 4 masks"):
        write_overlay_video(tmp_path / "x.mp4", frames, masks[:4])


def test_write_overlay_video_fallback_without_encoder(tmp_path, caplog):
    frames = [_frame(t) for t in range(3)]
    masks = [_two_object_mask() for _ in range(3)]
    out = write_overlay_video(tmp_path / "vis.mp4", frames, masks, fourcc="ZZZZ")
    if out.suffix:  # this OpenCV build accepted the bogus codec; nothing to check
        pytest.skip("OpenCV opened an encoder for a bogus fourcc")
    assert out == tmp_path / "vis" and len(list(out.glob("*.png"))) == 3
    assert not (tmp_path / "vis.mp4").exists()
