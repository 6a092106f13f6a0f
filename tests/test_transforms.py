"""Paired augmentations: alignment of image and masks, determinism, no global RNG use."""

from __future__ import annotations

import random

import cv2
import numpy as np
import pytest
import torch

from dataset import transforms as T

RED = (220, 20, 20)


def scene(h: int = 64, w: int = 80, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A textured, non-red background with a red polygon; the mask is the polygon (0/1)."""
    g = np.random.default_rng(seed)
    img = g.integers(20, 110, size=(h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    pts = np.array([[w * 0.2, h * 0.25], [w * 0.75, h * 0.15], [w * 0.65, h * 0.8],
                    [w * 0.3, h * 0.7]], np.int32)
    cv2.fillPoly(mask, [pts], 1)
    img[mask > 0] = RED
    return img, mask


def red_region(img: np.ndarray) -> np.ndarray:
    """Pixels that are clearly red (recovers the mask from the image)."""
    x = img.astype(np.int32)
    return (x[..., 0] > 160) & (x[..., 1] < 80) & (x[..., 2] < 80)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return np.count_nonzero(a & b) / max(np.count_nonzero(a | b), 1)


GEOMETRIC = {
    "affine": lambda i, m: T.RandomAffine(degrees=30, translate=(0.1, 0.1), scale=(0.7, 1.3),
                                          shear=15, image_interp=i, mask_interp=m),
    "perspective": lambda i, m: T.RandomPerspective(0.4, p=1.0, image_interp=i, mask_interp=m),
    "flip": lambda i, m: T.RandomHorizontalFlip(p=1.0),
    "resize_shorter": lambda i, m: T.ResizeShorter(48, image_interp=i, mask_interp=m),
    "crop": lambda i, m: T.RandomCrop(40),
    "crop_padded": lambda i, m: T.RandomCrop((72, 96)),
    "resized_crop": lambda i, m: T.RandomResizedCrop(56, scale=(0.3, 1.0), image_interp=i,
                                                     mask_interp=m),
    "tps": lambda i, m: T.RandomThinPlateSpline(12, 0.05, image_interp=i, mask_interp=m),
}


@pytest.mark.parametrize("name", sorted(GEOMETRIC))
def test_geometry_keeps_image_and_mask_aligned_exactly(name):
    img, mask = scene()
    t = GEOMETRIC[name]("nearest", "nearest")
    for seed in range(3):
        (out_img,), (out_mask,) = t([img], [mask], np.random.default_rng(seed))
        assert out_img.shape[:2] == out_mask.shape
        assert out_img.dtype == np.uint8 and out_mask.dtype == np.uint8
        assert out_mask.any()
        # nearest sampling on both targets with the same parameters: identical geometry
        np.testing.assert_array_equal(red_region(out_img), out_mask > 0)


@pytest.mark.parametrize("name", sorted(GEOMETRIC))
def test_geometry_aligned_with_smooth_image_interpolation(name):
    img, mask = scene(96, 112)
    t = GEOMETRIC[name]("bicubic", "nearest")
    (out_img,), (out_mask,) = t([img], [mask * 255], np.random.default_rng(5))
    assert iou(red_region(out_img), out_mask) > 0.85


def test_geometric_transforms_actually_move_things():
    img, mask = scene()
    for name in ("affine", "perspective", "flip", "tps"):
        (_,), (out,) = GEOMETRIC[name]("nearest", "nearest")([img], [mask], np.random.default_rng(1))
        assert not np.array_equal(out, mask), name


def test_same_parameters_for_every_image_and_mask():
    img, mask = scene()
    img2 = img.copy()
    mask2 = mask * 7  # another label value, same shape
    pipe = T.Compose([GEOMETRIC["affine"]("nearest", "nearest"), T.RandomHorizontalFlip(0.5),
                      GEOMETRIC["tps"]("nearest", "nearest"), T.ColorJitter(0.2, 0.2, 0.2, 0.1)])
    (a, b), (ma, mb) = pipe([img, img2], [mask, mask2], np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ma * 7, mb)


def test_affine_fill_colour_and_mask_fill():
    img, mask = scene()
    t = T.RandomAffine(degrees=0, scale=(0.5, 0.5), image_interp="bilinear")
    (out,), (m,) = t([img], [mask], np.random.default_rng(0))
    assert tuple(out[0, 0]) == T.FILL_RGB and m[0, 0] == 0
    (outf,), _ = t([img.astype(np.float32) / 255], [], np.random.default_rng(0))
    np.testing.assert_allclose(outf[0, 0], np.array(T.FILL_RGB) / 255, atol=1e-6)
    (padded,), (pm,) = T.RandomCrop(100)([img], [mask], np.random.default_rng(0))
    assert padded.shape == (100, 100, 3) and pm.shape == (100, 100)
    assert (padded.reshape(-1, 3) == T.FILL_RGB).all(axis=1).sum() >= 100 * 100 - 64 * 80
    assert pm.sum() == mask.sum()


def test_bicubic_mask_gives_soft_values_in_range():
    img, mask = scene()
    t = T.RandomAffine(degrees=20, scale=(0.9, 1.1), shear=10, image_interp="bicubic",
                       mask_interp="bicubic")
    (_,), (m8, mf) = t([img], [mask * 255, mask.astype(np.float32)], np.random.default_rng(0))
    assert m8.dtype == np.uint8 and mf.dtype == np.float32
    assert 0.0 <= mf.min() and mf.max() <= 1.0
    soft = (mf > 0.02) & (mf < 0.98)
    assert soft.any()
    np.testing.assert_allclose(m8 / 255.0, mf, atol=0.02)


def test_resized_crop_and_resize_sizes():
    img, mask = scene(60, 90)
    (a,), (m,) = T.ResizeShorter(30)([img], [mask], np.random.default_rng(0))
    assert a.shape == (30, 45, 3) and m.shape == (30, 45)
    (a,), (m,) = T.RandomResizedCrop(33, scale=(0.36, 1.0))([img], [mask], np.random.default_rng(0))
    assert a.shape == (33, 33, 3) and m.shape == (33, 33)
    assert set(np.unique(m)) <= {0, 1}


def test_photometric_only_touches_images():
    img, mask = scene()
    pipe = T.Compose([T.ColorJitter(0.4, 0.4, 0.4, 0.2), T.RandomGrayscale(1.0)])
    (out,), (m,) = pipe([img], [mask], np.random.default_rng(0))
    assert m is mask or np.array_equal(m, mask)
    assert out.dtype == np.uint8
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    (outf,), _ = T.ColorJitter(0.5, 0.5, 0.5, 0.5)([img.astype(np.float32) / 255], [],
                                                   np.random.default_rng(1))
    assert outf.dtype == np.float32 and 0.0 <= outf.min() and outf.max() <= 1.0
    assert not np.allclose(outf, img / 255.0)


def test_hue_shift_rotates_colour():
    img = np.zeros((4, 4, 3), np.float32)
    img[..., 0] = 1.0  # pure red
    jitter = T.ColorJitter(hue=0.5)
    params = [("hue", 1.0 / 3.0)]  # +120 degrees: red -> green
    out = jitter.apply_image(img, params)
    np.testing.assert_allclose(out[0, 0], [0, 1, 0], atol=1e-4)


def full_pipeline() -> T.Compose:
    return T.Compose([
        T.RandomAffine(20, scale=(0.9, 1.1), shear=10, image_interp="bicubic", mask_interp="bicubic"),
        T.RandomPerspective(0.3, p=0.5),
        T.RandomHorizontalFlip(),
        T.ResizeShorter(48),
        T.RandomCrop(48),
        T.RandomResizedCrop(40, scale=(0.5, 1.0)),
        T.ColorJitter(0.1, 0.05, 0.05, 0.05),
        T.RandomGrayscale(0.3),
        T.RandomApply(T.RandomThinPlateSpline(), 0.5),
    ])


def test_same_seed_same_output_different_seed_different():
    img, mask = scene()
    pipe = full_pipeline()
    a = pipe([img], [mask * 255], np.random.default_rng(11))
    b = pipe([img], [mask * 255], np.random.default_rng(11))
    c = pipe([img], [mask * 255], np.random.default_rng(12))
    np.testing.assert_array_equal(a[0][0], b[0][0])
    np.testing.assert_array_equal(a[1][0], b[1][0])
    assert not np.array_equal(a[0][0], c[0][0])


def test_global_rng_untouched():
    img, mask = scene()
    np_state = np.random.get_state()
    torch_state = torch.get_rng_state()
    py_state = random.getstate()
    pipe = full_pipeline()
    for s in range(5):
        pipe([img, img], [mask, mask], np.random.default_rng(s))
    after = np.random.get_state()
    assert np_state[0] == after[0] and np.array_equal(np_state[1], after[1])
    assert np_state[2:] == after[2:]
    assert torch.equal(torch_state, torch.get_rng_state())
    assert py_state == random.getstate()


def test_mismatched_sizes_rejected():
    img, mask = scene()
    with pytest.raises(ValueError, match="share H x W"):
        T.RandomHorizontalFlip()([img], [mask[:10]], np.random.default_rng(0))


def test_to_tensor():
    img, mask = scene(8, 10)
    t = T.to_tensor(img)
    assert t.shape == (3, 8, 10) and t.dtype == torch.float32
    assert 0.0 <= t.min() and t.max() <= 1.0
    np.testing.assert_allclose(t[:, 2, 3].numpy(), img[2, 3] / 255.0, atol=1e-6)
    m = T.mask_to_tensor(mask.astype(bool))
    assert m.shape == (1, 8, 10) and set(m.unique().tolist()) <= {0.0, 1.0}
    f = T.to_tensor(img.astype(np.float32) / 255.0)
    torch.testing.assert_close(f, t)
