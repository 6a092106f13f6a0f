"""Paired data augmentation driven by an explicit ``np.random.Generator``.

Every transform here follows one pattern: it draws *all* of its random parameters once from the
generator it is given, then applies the same parameters to every image and every mask of the
sample. Nothing touches the global ``random`` / ``numpy`` / ``torch`` generators, so two
transforms never need to be "synchronised" by reseeding: geometry is shared because the
parameters are shared.

Data conventions
----------------
* Images: ``H x W x 3`` RGB, either ``uint8`` (0..255) or float (``float32``, [0, 1]). The
  output keeps the input dtype (float64 is turned into float32).
* Masks: ``H x W``, either ``uint8`` (label maps, or 0/255 grey masks) or ``float32`` in
  [0, 1] (soft masks); ``bool`` is turned into ``uint8`` 0/1. Masks are never colour-jittered.
* All images and masks of one call must have the same ``H x W``.

A transform is called as ``images, masks = t(images, masks, rng)`` with *lists* of arrays, so
that one call can move several frames together (parameters shared across frames) or a single
frame (parameters drawn per frame). :class:`Compose` chains transforms; :class:`RandomApply`
applies one with a probability.

Fill values: image borders created by geometric transforms (affine, perspective, padding) are
filled with the dataset mean colour RGB (124, 116, 104) (scaled to [0, 1] for float images);
masks are filled with 0.

Interpolation is set per target (``image_interp`` / ``mask_interp``) from
``"nearest" | "bilinear" | "bicubic"``. Bicubic on a mask yields soft values (uint8 0..255 or
float32 clipped to [0, 1]), which is what the static-image clip pipeline wants.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = [
    "FILL_RGB",
    "PairedTransform",
    "Compose",
    "RandomApply",
    "RandomAffine",
    "RandomPerspective",
    "RandomHorizontalFlip",
    "ResizeShorter",
    "RandomCrop",
    "RandomResizedCrop",
    "ColorJitter",
    "RandomGrayscale",
    "RandomThinPlateSpline",
    "to_tensor",
    "mask_to_tensor",
]

#: Border fill colour of images (RGB, 0..255); masks are filled with 0.
FILL_RGB: tuple[int, int, int] = (124, 116, 104)

_INTERP = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
}
# For plain resizing, INTER_NEAREST_EXACT samples at pixel centres (same grid as the linear and
# cubic kernels); INTER_NEAREST would shift the mask by half a pixel relative to the image.
_RESIZE_INTERP = {
    "nearest": cv2.INTER_NEAREST_EXACT,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
}

Images = list[np.ndarray]
Masks = list[np.ndarray]


# ----------------------------------------------------------------------------- array helpers


def _check_interp(name: str) -> str:
    if name not in _INTERP:
        raise ValueError(f"unknown interpolation {name!r}; use one of {sorted(_INTERP)}")
    return name


def _as_image(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be H x W x 3, got shape {img.shape}")
    if img.dtype == np.uint8 or img.dtype == np.float32:
        return img
    if np.issubdtype(img.dtype, np.floating):
        return img.astype(np.float32)
    raise TypeError(f"image must be uint8 or float, got {img.dtype}")


def _as_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be H x W, got shape {mask.shape}")
    if mask.dtype == np.uint8 or mask.dtype == np.float32:
        return mask
    if mask.dtype == np.bool_:
        return mask.astype(np.uint8)
    if np.issubdtype(mask.dtype, np.floating):
        return mask.astype(np.float32)
    if np.issubdtype(mask.dtype, np.integer):
        if mask.size == 0 or (mask.min() >= 0 and mask.max() <= 255):
            return mask.astype(np.uint8)
    raise TypeError(f"mask must be uint8 / float32 / bool (labels 0..255), got {mask.dtype}")


def _image_fill(img: np.ndarray) -> tuple[float, float, float]:
    if img.dtype == np.uint8:
        return tuple(float(c) for c in FILL_RGB)  # type: ignore[return-value]
    return tuple(c / 255.0 for c in FILL_RGB)  # type: ignore[return-value]


def _finish_float(out: np.ndarray) -> np.ndarray:
    """Clip float results (cubic kernels overshoot) back into [0, 1]."""
    if out.dtype == np.float32:
        np.clip(out, 0.0, 1.0, out=out)
    return out


def _common_size(images: Images, masks: Masks) -> tuple[int, int]:
    shapes = {a.shape[:2] for a in list(images) + list(masks)}
    if not shapes:
        raise ValueError("a transform needs at least one image or mask")
    if len(shapes) > 1:
        raise ValueError(f"images and masks of one sample must share H x W, got {sorted(shapes)}")
    (h, w), = shapes
    return int(h), int(w)


# ----------------------------------------------------------------------------- base classes


class PairedTransform:
    """Base class: draw parameters once with :meth:`sample`, apply them to every target.

    Subclasses implement ``sample(rng, h, w) -> params`` and ``apply_image(img, params)`` /
    ``apply_mask(mask, params)``. The default :meth:`apply_mask` returns the mask unchanged
    (photometric transforms).
    """

    def sample(self, rng: np.random.Generator, h: int, w: int) -> Any:
        raise NotImplementedError

    def apply_image(self, img: np.ndarray, params: Any) -> np.ndarray:
        raise NotImplementedError

    def apply_mask(self, mask: np.ndarray, params: Any) -> np.ndarray:
        return mask

    def __call__(
        self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], rng: np.random.Generator
    ) -> tuple[Images, Masks]:
        """Apply to lists of images (H x W x 3) and masks (H x W) with one parameter draw."""
        images = [_as_image(i) for i in images]
        masks = [_as_mask(m) for m in masks]
        h, w = _common_size(images, masks)
        params = self.sample(rng, h, w)
        return (
            [self.apply_image(i, params) for i in images],
            [self.apply_mask(m, params) for m in masks],
        )

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


Transform = Callable[[Sequence[np.ndarray], Sequence[np.ndarray], np.random.Generator],
                     tuple[Images, Masks]]


class Compose:
    """Apply transforms in order; each draws its own parameters from the shared generator."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(
        self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], rng: np.random.Generator
    ) -> tuple[Images, Masks]:
        images, masks = list(images), list(masks)
        for t in self.transforms:
            images, masks = t(images, masks, rng)
        return images, masks

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(t) for t in self.transforms)
        return f"Compose([\n  {inner}\n])"


class RandomApply:
    """Apply ``transform`` with probability ``p`` (one draw per call, shared by all targets)."""

    def __init__(self, transform: Transform, p: float):
        self.transform = transform
        self.p = float(p)

    def __call__(
        self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], rng: np.random.Generator
    ) -> tuple[Images, Masks]:
        if rng.random() < self.p:
            return self.transform(images, masks, rng)
        return [_as_image(i) for i in images], [_as_mask(m) for m in masks]

    def __repr__(self) -> str:
        return f"RandomApply({self.transform!r}, p={self.p})"


# ----------------------------------------------------------------------------- geometry


def _range(
    value: float | Sequence[float] | None, name: str, centre: float = 0.0
) -> tuple[float, float]:
    """``x`` -> (centre - x, centre + x); a pair is taken as is; None -> (centre, centre)."""
    if value is None:
        return centre, centre
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"{name} must be non-negative, got {value}")
        return centre - float(value), centre + float(value)
    lo, hi = (float(v) for v in value)
    if lo > hi:
        raise ValueError(f"{name} range must be (low, high), got {value}")
    return lo, hi


class RandomAffine(PairedTransform):
    """Random rotation / scale / shear / translation about the image centre (output size kept).

    Args:
        degrees: rotation range in degrees, ``d`` -> uniform in (-d, d), or a (low, high) pair.
        translate: maximal absolute shift as fractions (fx, fy) of the width / height.
        scale: (low, high) isotropic scale range, or None for 1.
        shear: shear angle in degrees along x, ``s`` -> uniform in (-s, s); a pair is an x range;
            four values (x_lo, x_hi, y_lo, y_hi) add a y shear.
        image_interp / mask_interp: "nearest" | "bilinear" | "bicubic".
    """

    def __init__(
        self,
        degrees: float | Sequence[float] = 0.0,
        translate: Sequence[float] | None = None,
        scale: Sequence[float] | None = None,
        shear: float | Sequence[float] | None = None,
        image_interp: str = "bilinear",
        mask_interp: str = "nearest",
    ):
        self.degrees = _range(degrees, "degrees")
        self.translate = None if translate is None else (float(translate[0]), float(translate[1]))
        self.scale = (1.0, 1.0) if scale is None else (float(scale[0]), float(scale[1]))
        if shear is not None and not isinstance(shear, (int, float)) and len(shear) == 4:
            self.shear_x = (float(shear[0]), float(shear[1]))
            self.shear_y = (float(shear[2]), float(shear[3]))
        else:
            self.shear_x = _range(shear, "shear")
            self.shear_y = (0.0, 0.0)
        self.image_interp = _check_interp(image_interp)
        self.mask_interp = _check_interp(mask_interp)

    def sample(self, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
        """Returns the 2 x 3 forward matrix (input pixel -> output pixel)."""
        angle = rng.uniform(*self.degrees)
        if self.translate is not None:
            tx = rng.uniform(-self.translate[0], self.translate[0]) * w
            ty = rng.uniform(-self.translate[1], self.translate[1]) * h
        else:
            tx = ty = 0.0
        s = rng.uniform(*self.scale)
        shx = rng.uniform(*self.shear_x)
        shy = rng.uniform(*self.shear_y)
        return affine_matrix(h, w, angle, (tx, ty), s, (shx, shy))

    def apply_image(self, img: np.ndarray, m: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        out = cv2.warpAffine(img, m, (w, h), flags=_INTERP[self.image_interp],
                             borderMode=cv2.BORDER_CONSTANT, borderValue=_image_fill(img))
        return _finish_float(out)

    def apply_mask(self, mask: np.ndarray, m: np.ndarray) -> np.ndarray:
        h, w = mask.shape[:2]
        out = cv2.warpAffine(mask, m, (w, h), flags=_INTERP[self.mask_interp],
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return _finish_float(out)


def affine_matrix(
    h: int,
    w: int,
    angle: float,
    translate: tuple[float, float] = (0.0, 0.0),
    scale: float = 1.0,
    shear: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """2 x 3 forward affine matrix about the image centre.

    output = centre + translate + R(angle) @ Shear(shear) @ (scale * (input - centre)), with
    angles in degrees (positive angle = counter-clockwise on screen) and
    Shear = [[1, tan(shx)], [tan(shy), 1]].
    """
    cx, cy = (w - 1) * 0.5, (h - 1) * 0.5
    a = math.radians(angle)
    # image y points down, so a counter-clockwise turn on screen uses -a in (x, y) coordinates
    rot = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    sh = np.array([[1.0, math.tan(math.radians(shear[0]))],
                   [math.tan(math.radians(shear[1])), 1.0]])
    lin = rot @ sh * scale
    centre = np.array([cx, cy])
    offset = centre + np.asarray(translate, dtype=np.float64) - lin @ centre
    return np.concatenate([lin, offset[:, None]], axis=1)


class RandomPerspective(PairedTransform):
    """Random perspective warp: each corner moves inwards by up to ``distortion`` x half size.

    Applied with probability ``p`` (the draw is part of the shared parameters).
    """

    def __init__(self, distortion: float = 0.5, p: float = 0.5, image_interp: str = "bilinear",
                 mask_interp: str = "nearest"):
        if not 0.0 <= distortion <= 1.0:
            raise ValueError(f"distortion must be in [0, 1], got {distortion}")
        self.distortion = float(distortion)
        self.p = float(p)
        self.image_interp = _check_interp(image_interp)
        self.mask_interp = _check_interp(mask_interp)

    def sample(self, rng: np.random.Generator, h: int, w: int) -> np.ndarray | None:
        """Returns the 3 x 3 forward homography, or None when not applied."""
        if rng.random() >= self.p:
            return None
        dx, dy = self.distortion * (w - 1) / 2, self.distortion * (h - 1) / 2
        src = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], dtype=np.float32)
        jx = rng.uniform(0, dx, size=4) if dx > 0 else np.zeros(4)
        jy = rng.uniform(0, dy, size=4) if dy > 0 else np.zeros(4)
        inward = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], dtype=np.float64)
        dst = (src + inward * np.stack([jx, jy], axis=1)).astype(np.float32)
        return cv2.getPerspectiveTransform(src, dst)

    def apply_image(self, img: np.ndarray, m: np.ndarray | None) -> np.ndarray:
        if m is None:
            return img
        h, w = img.shape[:2]
        out = cv2.warpPerspective(img, m, (w, h), flags=_INTERP[self.image_interp],
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=_image_fill(img))
        return _finish_float(out)

    def apply_mask(self, mask: np.ndarray, m: np.ndarray | None) -> np.ndarray:
        if m is None:
            return mask
        h, w = mask.shape[:2]
        out = cv2.warpPerspective(mask, m, (w, h), flags=_INTERP[self.mask_interp],
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return _finish_float(out)


class RandomHorizontalFlip(PairedTransform):
    """Mirror left-right with probability ``p``."""

    def __init__(self, p: float = 0.5):
        self.p = float(p)

    def sample(self, rng: np.random.Generator, h: int, w: int) -> bool:
        return bool(rng.random() < self.p)

    def apply_image(self, img: np.ndarray, flip: bool) -> np.ndarray:
        return np.ascontiguousarray(img[:, ::-1]) if flip else img

    def apply_mask(self, mask: np.ndarray, flip: bool) -> np.ndarray:
        return np.ascontiguousarray(mask[:, ::-1]) if flip else mask


class ResizeShorter(PairedTransform):
    """Resize so that the shorter side is ``size`` (the longer side is truncated to an int)."""

    def __init__(self, size: int, image_interp: str = "bicubic", mask_interp: str = "nearest"):
        self.size = int(size)
        self.image_interp = _check_interp(image_interp)
        self.mask_interp = _check_interp(mask_interp)

    def sample(self, rng: np.random.Generator, h: int, w: int) -> tuple[int, int]:
        if h <= w:
            return self.size, max(1, int(self.size * w / h))
        return max(1, int(self.size * h / w)), self.size

    def apply_image(self, img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
        if img.shape[:2] == hw:
            return img
        return _finish_float(cv2.resize(img, (hw[1], hw[0]),
                                        interpolation=_RESIZE_INTERP[self.image_interp]))

    def apply_mask(self, mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
        if mask.shape[:2] == hw:
            return mask
        return _finish_float(cv2.resize(mask, (hw[1], hw[0]),
                                        interpolation=_RESIZE_INTERP[self.mask_interp]))


class RandomCrop(PairedTransform):
    """Random ``size x size`` crop (or ``(h, w)``); a side shorter than the crop is padded first.

    When padding is needed the content is placed at a random offset inside the padded canvas
    (image border = fill colour, mask border = 0).
    """

    def __init__(self, size: int | tuple[int, int]):
        if isinstance(size, int):
            self.size = (int(size), int(size))
        else:
            self.size = (int(size[0]), int(size[1]))

    def sample(self, rng: np.random.Generator, h: int, w: int) -> tuple[int, int, int, int]:
        """Returns (pad_top, pad_left, crop_y0, crop_x0)."""
        ch, cw = self.size
        pad_t = int(rng.integers(0, ch - h + 1)) if h < ch else 0
        pad_l = int(rng.integers(0, cw - w + 1)) if w < cw else 0
        y0 = int(rng.integers(0, h - ch + 1)) if h > ch else 0
        x0 = int(rng.integers(0, w - cw + 1)) if w > cw else 0
        return pad_t, pad_l, y0, x0

    def _apply(self, arr: np.ndarray, params: tuple[int, int, int, int], fill: Any) -> np.ndarray:
        pad_t, pad_l, y0, x0 = params
        ch, cw = self.size
        h, w = arr.shape[:2]
        if h < ch or w < cw:
            pad_b = max(ch - h, 0) - pad_t
            pad_r = max(cw - w, 0) - pad_l
            arr = cv2.copyMakeBorder(arr, pad_t, pad_b, pad_l, pad_r, cv2.BORDER_CONSTANT,
                                     value=fill)
        return np.ascontiguousarray(arr[y0:y0 + ch, x0:x0 + cw])

    def apply_image(self, img: np.ndarray, params: tuple[int, int, int, int]) -> np.ndarray:
        return self._apply(img, params, _image_fill(img))

    def apply_mask(self, mask: np.ndarray, params: tuple[int, int, int, int]) -> np.ndarray:
        return self._apply(mask, params, 0)


class RandomResizedCrop(PairedTransform):
    """Crop a random region (area fraction in ``scale``, aspect ratio w/h log-uniform in
    ``ratio``) and resize it to ``size x size``.

    Up to 10 draws are tried for a region that fits inside the image; otherwise the largest
    central crop whose aspect ratio is clamped to ``ratio`` is used.
    """

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        image_interp: str = "bicubic",
        mask_interp: str = "nearest",
    ):
        self.size = int(size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.image_interp = _check_interp(image_interp)
        self.mask_interp = _check_interp(mask_interp)

    def sample(self, rng: np.random.Generator, h: int, w: int) -> tuple[int, int, int, int]:
        """Returns the crop box (y0, x0, crop_h, crop_w) in input pixels."""
        area = h * w
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(log_lo, log_hi))
            cw = int(round(math.sqrt(target * aspect)))
            ch = int(round(math.sqrt(target / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                y0 = int(rng.integers(0, h - ch + 1))
                x0 = int(rng.integers(0, w - cw + 1))
                return y0, x0, ch, cw
        in_ratio = w / h
        if in_ratio < self.ratio[0]:
            cw, ch = w, int(round(w / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            ch, cw = h, int(round(h * self.ratio[1]))
        else:
            cw, ch = w, h
        return (h - ch) // 2, (w - cw) // 2, ch, cw

    def _apply(self, arr: np.ndarray, box: tuple[int, int, int, int], interp: str) -> np.ndarray:
        y0, x0, ch, cw = box
        crop = arr[y0:y0 + ch, x0:x0 + cw]
        if crop.shape[:2] == (self.size, self.size):
            return np.ascontiguousarray(crop)
        return _finish_float(cv2.resize(crop, (self.size, self.size),
                                        interpolation=_RESIZE_INTERP[interp]))

    def apply_image(self, img: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        return self._apply(img, box, self.image_interp)

    def apply_mask(self, mask: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        return self._apply(mask, box, self.mask_interp)


# ----------------------------------------------------------------------------- thin-plate spline


def _tps_kernel(r2: np.ndarray) -> np.ndarray:
    """Radial basis U(r) = r^2 log(r^2), with U(0) = 0 (r2 = squared distance)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = r2 * np.log(r2)
    out[r2 <= 0] = 0.0
    return out


def fit_tps(src: np.ndarray, dst: np.ndarray, reg: float = 1e-8) -> np.ndarray:
    """Fit a 2-D thin-plate spline f with f(src_i) = dst_i.

    src, dst: N x 2 point sets. Returns (N + 3) x 2 coefficients: N radial weights then the
    affine part (constant, x, y), for :func:`eval_tps`.
    """
    n = len(src)
    d2 = ((src[:, None, :] - src[None, :, :]) ** 2).sum(-1)
    k = _tps_kernel(d2) + reg * np.eye(n)
    p = np.concatenate([np.ones((n, 1)), src], axis=1)
    a = np.zeros((n + 3, n + 3))
    a[:n, :n], a[:n, n:], a[n:, :n] = k, p, p.T
    b = np.zeros((n + 3, 2))
    b[:n] = dst
    try:
        return np.linalg.solve(a, b)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(a, b, rcond=None)[0]


def eval_tps(coef: np.ndarray, ctrl: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Evaluate the spline fitted on control points ``ctrl`` at ``pts`` (M x 2) -> M x 2."""
    n = len(ctrl)
    d2 = ((pts[:, None, :] - ctrl[None, :, :]) ** 2).sum(-1)
    return _tps_kernel(d2) @ coef[:n] + coef[n] + pts @ coef[n + 1:]


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """n_out x n_in linear-interpolation weights from n_in samples spanning [0, 1] (end points
    included) to n_out samples spanning the same range."""
    if n_in == 1 or n_out == 1:
        return np.full((n_out, n_in), 1.0 / n_in)
    pos = np.linspace(0.0, n_in - 1.0, n_out)
    i0 = np.minimum(np.floor(pos).astype(np.int64), n_in - 2)
    frac = pos - i0
    w = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    w[rows, i0] = 1.0 - frac
    w[rows, i0 + 1] = frac
    return w


class RandomThinPlateSpline(PairedTransform):
    """Smooth random warp: ``n_points`` random control points (uniform over the image) are
    displaced by Gaussian noise of std ``sigma`` x image size, and the image is warped by the
    thin-plate spline through these displacements (content at each control point moves to its
    displaced position). Defaults: 12 points, sigma 0.02, image bilinear, mask nearest.

    The spline is evaluated on a grid every ``grid_step`` pixels (corners included) and
    interpolated bilinearly in between (a fraction of a pixel from the exact spline; image and
    masks use the same maps, so they stay aligned exactly); ``grid_step=1`` evaluates every pixel.
    """

    def __init__(self, n_points: int = 12, sigma: float = 0.02, image_interp: str = "bilinear",
                 mask_interp: str = "nearest", grid_step: int = 4):
        self.n_points = int(n_points)
        self.sigma = float(sigma)
        self.grid_step = max(int(grid_step), 1)
        self.image_interp = _check_interp(image_interp)
        self.mask_interp = _check_interp(mask_interp)

    def sample(self, rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """Returns the backward sampling maps (map_x, map_y), each H x W float32."""
        ctrl = rng.uniform(0.0, 1.0, size=(self.n_points, 2))
        moved = ctrl + rng.normal(0.0, self.sigma, size=ctrl.shape)
        # backward map: for each output location find where to read in the input, i.e. the
        # spline that sends the displaced points back to the original ones
        coef = fit_tps(moved, ctrl)
        # the spline is smooth at this scale: evaluate it on a coarse grid (corners included)
        # and interpolate bilinearly to every pixel
        gh = min(h, max(2, -(-(h - 1) // self.grid_step) + 1))
        gw = min(w, max(2, -(-(w - 1) // self.grid_step) + 1))
        gy, gx = np.meshgrid(np.linspace(0.0, 1.0, gh), np.linspace(0.0, 1.0, gw), indexing="ij")
        src = eval_tps(coef, moved, np.stack([gx.ravel(), gy.ravel()], axis=1))
        wy, wx = _interp_matrix(h, gh), _interp_matrix(w, gw)
        map_x = wy @ (src[:, 0].reshape(gh, gw) * max(w - 1, 1)) @ wx.T
        map_y = wy @ (src[:, 1].reshape(gh, gw) * max(h - 1, 1)) @ wx.T
        return map_x.astype(np.float32), map_y.astype(np.float32)

    def apply_image(self, img: np.ndarray, maps: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        out = cv2.remap(img, maps[0], maps[1], _INTERP[self.image_interp],
                        borderMode=cv2.BORDER_CONSTANT, borderValue=_image_fill(img))
        return _finish_float(out)

    def apply_mask(self, mask: np.ndarray, maps: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        out = cv2.remap(mask, maps[0], maps[1], _INTERP[self.mask_interp],
                        borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return _finish_float(out)


# ----------------------------------------------------------------------------- photometric


def _to_float(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)


def _from_float(out: np.ndarray, like: np.ndarray) -> np.ndarray:
    out = np.clip(out, 0.0, 1.0)
    if like.dtype == np.uint8:
        return (out * 255.0 + 0.5).astype(np.uint8)
    return out.astype(np.float32)


def _gray(img: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma of a float RGB image, H x W."""
    return img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114


class ColorJitter(PairedTransform):
    """Random brightness / contrast / saturation / hue, in a random order, on images only.

    Factors are drawn uniformly from [max(0, 1 - x), 1 + x] for brightness, contrast and
    saturation, and the hue shift from [-hue, hue] (fraction of a full turn, hue <= 0.5).
    Brightness scales the RGB values, contrast blends with the mean grey level of the image,
    saturation blends with the grey image, hue rotates the HSV hue. Masks are untouched.
    """

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0,
                 hue: float = 0.0):
        if not 0.0 <= hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {hue}")
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.saturation = float(saturation)
        self.hue = float(hue)

    def sample(self, rng: np.random.Generator, h: int, w: int) -> list[tuple[str, float]]:
        """Returns the ordered list of (operation, factor) actually applied."""
        strengths = (("brightness", self.brightness), ("contrast", self.contrast),
                     ("saturation", self.saturation), ("hue", self.hue))
        ops: list[tuple[str, float]] = []
        for i in rng.permutation(4):
            name, x = strengths[i]
            if x <= 0:
                continue
            if name == "hue":
                ops.append((name, rng.uniform(-x, x)))
            else:
                ops.append((name, rng.uniform(max(0.0, 1 - x), 1 + x)))
        return ops

    def apply_image(self, img: np.ndarray, ops: list[tuple[str, float]]) -> np.ndarray:
        if not ops:
            return img
        x = _to_float(img)
        for name, f in ops:
            if name == "brightness":
                x = np.clip(x * f, 0.0, 1.0)
            elif name == "contrast":
                x = np.clip(x * f + (1 - f) * float(_gray(x).mean()), 0.0, 1.0)
            elif name == "saturation":
                x = np.clip(x * f + (1 - f) * _gray(x)[..., None], 0.0, 1.0)
            else:  # hue; OpenCV's float HSV has H in degrees [0, 360)
                hsv = cv2.cvtColor(np.ascontiguousarray(x, dtype=np.float32), cv2.COLOR_RGB2HSV)
                hsv[..., 0] = np.mod(hsv[..., 0] + f * 360.0, 360.0)
                x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        return _from_float(x, img)


class RandomGrayscale(PairedTransform):
    """With probability ``p`` replace images by their luma repeated over 3 channels."""

    def __init__(self, p: float = 0.1):
        self.p = float(p)

    def sample(self, rng: np.random.Generator, h: int, w: int) -> bool:
        return bool(rng.random() < self.p)

    def apply_image(self, img: np.ndarray, gray: bool) -> np.ndarray:
        if not gray:
            return img
        g = _gray(_to_float(img))
        return _from_float(np.repeat(g[..., None], 3, axis=2), img)


# ----------------------------------------------------------------------------- tensors


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """H x W x C or H x W array -> float32 tensor C x H x W (1 x H x W) in [0, 1].

    uint8 is divided by 255; float input is taken as already in [0, 1] (and clipped).
    """
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f"expected H x W or H x W x C, got shape {arr.shape}")
    # converted with NumPy: small torch ops pay a thread-pool overhead in loader workers
    if arr.dtype == np.uint8:
        out = arr.transpose(2, 0, 1).astype(np.float32) * np.float32(1.0 / 255.0)
    else:
        out = np.clip(arr.transpose(2, 0, 1).astype(np.float32), 0.0, 1.0)
    return torch.from_numpy(np.ascontiguousarray(out))


def mask_to_tensor(mask: np.ndarray) -> torch.Tensor:
    """H x W mask -> 1 x H x W float32 in [0, 1] (uint8 0..255 grey -> /255, bool -> 0/1)."""
    mask = np.asarray(mask)
    if mask.dtype == np.bool_:
        mask = mask.astype(np.float32)
    return to_tensor(mask)
