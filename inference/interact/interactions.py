"""Interaction-to-mask modules behind one interface.

Every interaction turns (frame, current probabilities) into new probabilities for that frame::

    new_prob = interaction.apply(image, prob)

image: 3 x H x W RGB in [0, 1]; prob: (K+1) x H x W probabilities with background (channel 0);
the result has the same shape. The inference core then shows the result (``update_mask_only``)
or commits and propagates it (``interact``).

* :class:`ScribbleInteraction`: scribbles through S2M (positive = this object's strokes,
  negative = every other label, 3x3 dilation, existing mask = current hard mask);
* :class:`ClickInteraction`: positive / negative clicks drawn as small disks and fed to S2M the
  same way, so clicks need no other network;
* :class:`FreeHandInteraction`: paint or erase a region of one object's mask directly;
* :class:`LocalControl`: a region of interest is cropped, resized to S2M's working size,
  segmented by an inner interaction and pasted back inside the region only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from inference.interact.s2m_controller import S2MController, dilate3x3
from util.tensor_util import argmax_labels

NO_SCRIBBLE = -1


def _hard_labels(prob: torch.Tensor) -> torch.Tensor:
    return argmax_labels(prob).long()


def _check_frame(image: torch.Tensor, prob: torch.Tensor) -> None:
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be 3 x H x W, got {tuple(image.shape)}")
    if prob.dim() != 3 or prob.shape[-2:] != image.shape[-2:]:
        raise ValueError(
            f"probabilities must be (K+1) x H x W with the image's size {tuple(image.shape[-2:])}, "
            f"got {tuple(prob.shape)}"
        )


class Interaction(ABC):
    """One user interaction on one frame."""

    @abstractmethod
    def apply(self, image: torch.Tensor, prob: torch.Tensor) -> torch.Tensor:
        """(K+1) x H x W new probabilities from the frame and its current probabilities."""

    @abstractmethod
    def crop(self, box: tuple[int, int, int, int], size: tuple[int, int]) -> Interaction:
        """The same interaction expressed inside box = (top, left, bottom, right) (inclusive),
        resized to size = (height, width). Used by :class:`LocalControl`."""


def scribble_maps(labels: torch.Tensor, num_objects: int, dilate: bool = True
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-object positive and negative maps from a scribble label map.

    labels: H x W int, -1 = no scribble, 0 = background stroke, k = stroke of object k.
    Returns pos, neg: K x H x W in {0, 1}. pos_k = strokes of k; neg_k = strokes of any other
    label (background and other objects).
    """
    labels = torch.as_tensor(labels).long()
    ids = torch.arange(1, num_objects + 1).view(-1, 1, 1)
    pos = (labels.unsqueeze(0) == ids).float()
    neg = ((labels.unsqueeze(0) != ids) & (labels.unsqueeze(0) != NO_SCRIBBLE)).float()
    if dilate:
        pos, neg = dilate3x3(pos), dilate3x3(neg)
    return pos, neg


def _crop_resize_labels(labels: torch.Tensor, box, size) -> torch.Tensor:
    top, left, bottom, right = box
    sub = labels[top:bottom + 1, left:right + 1].numpy().astype(np.int32)
    out = cv2.resize(sub, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    return torch.from_numpy(out)


@dataclass
class ScribbleInteraction(Interaction):
    """Scribbles on one frame, segmented by S2M.

    labels: H x W int map (-1 none, 0 background, k object k); controller: S2M runner;
    dilate: grow the strokes once with a 3x3 kernel (rasterised robot scribbles are 1 px wide).
    """

    labels: torch.Tensor
    controller: S2MController
    dilate: bool = True

    def apply(self, image: torch.Tensor, prob: torch.Tensor) -> torch.Tensor:
        _check_frame(image, prob)
        labels = torch.as_tensor(self.labels)
        if labels.shape != prob.shape[-2:]:
            raise ValueError(f"scribble map is {tuple(labels.shape)}, frame is {tuple(prob.shape[-2:])}")
        k = prob.shape[0] - 1
        bad = sorted(set(torch.unique(labels).tolist()) - set(range(-1, k + 1)))
        if bad:
            raise ValueError(f"scribbles name unknown objects {bad}; the frame has objects 1..{k}")
        if not (labels != NO_SCRIBBLE).any():
            raise ValueError("empty interaction: the scribble map has no stroke")
        pos, neg = scribble_maps(labels, k, self.dilate)
        return self.controller(image, _hard_labels(prob), pos, neg)

    def crop(self, box, size) -> ScribbleInteraction:
        return ScribbleInteraction(_crop_resize_labels(torch.as_tensor(self.labels), box, size),
                                   self.controller, self.dilate)


@dataclass
class Click:
    """A click at pixel (y, x) for object ``object_id``; positive adds, negative removes."""

    y: int
    x: int
    object_id: int
    positive: bool = True


@dataclass
class ClickInteraction(Interaction):
    """Clicks turned into disk-shaped scribbles and segmented by S2M.

    A positive click of object k paints label k, a negative click paints background, each as a
    disk of ``radius`` pixels. A dedicated click model can replace this class later behind the
    same interface.
    """

    clicks: list[Click]
    controller: S2MController
    radius: int = 5

    def to_labels(self, height: int, width: int) -> torch.Tensor:
        labels = np.full((height, width), NO_SCRIBBLE, dtype=np.int32)
        for c in self.clicks:
            if not (0 <= c.y < height and 0 <= c.x < width):
                raise ValueError(f"click at ({c.y}, {c.x}) is outside the {height}x{width} frame")
            value = c.object_id if c.positive else 0
            cv2.circle(labels, (int(c.x), int(c.y)), int(self.radius), int(value), thickness=-1)
        return torch.from_numpy(labels)

    def apply(self, image: torch.Tensor, prob: torch.Tensor) -> torch.Tensor:
        _check_frame(image, prob)
        if not self.clicks:
            raise ValueError("empty interaction: no clicks")
        k = prob.shape[0] - 1
        for c in self.clicks:
            if not 1 <= c.object_id <= k:
                raise ValueError(f"click for unknown object {c.object_id}; the frame has objects 1..{k}")
        labels = self.to_labels(*prob.shape[-2:])
        return ScribbleInteraction(labels, self.controller, dilate=False).apply(image, prob)

    def crop(self, box, size) -> ClickInteraction:
        top, left, bottom, right = box
        sy = size[0] / (bottom - top + 1)
        sx = size[1] / (right - left + 1)
        inside = [c for c in self.clicks if top <= c.y <= bottom and left <= c.x <= right]
        moved = [Click(min(int((c.y - top) * sy), size[0] - 1), min(int((c.x - left) * sx), size[1] - 1),
                       c.object_id, c.positive) for c in inside]
        return ClickInteraction(moved, self.controller, self.radius)


@dataclass
class FreeHandInteraction(Interaction):
    """Paint (or erase) a region of one object's mask directly, without a network.

    region: H x W bool; painting sets the region to object ``object_id`` (one-hot), erasing moves
    the object's probability in the region to the background. Pixels outside the region keep
    their probabilities exactly.
    """

    region: torch.Tensor
    object_id: int
    erase: bool = False

    def apply(self, image: torch.Tensor, prob: torch.Tensor) -> torch.Tensor:
        _check_frame(image, prob)
        region = torch.as_tensor(self.region).bool()
        if region.shape != prob.shape[-2:]:
            raise ValueError(f"free-hand region is {tuple(region.shape)}, frame is {tuple(prob.shape[-2:])}")
        k = prob.shape[0] - 1
        if not 1 <= self.object_id <= k:
            raise ValueError(f"unknown object {self.object_id}; the frame has objects 1..{k}")
        if not region.any():
            raise ValueError("empty interaction: the free-hand region is empty")
        out = prob.clone()
        if self.erase:
            out[0] = torch.where(region, out[0] + out[self.object_id], out[0])
            out[self.object_id] = torch.where(region, torch.zeros_like(out[0]), out[self.object_id])
        else:
            one_hot = torch.zeros_like(out)
            one_hot[self.object_id] = 1
            out = torch.where(region.unsqueeze(0), one_hot, out)
        return out

    def crop(self, box, size) -> FreeHandInteraction:
        region = _crop_resize_labels(torch.as_tensor(self.region).to(torch.int32), box, size)
        return FreeHandInteraction(region.bool(), self.object_id, self.erase)


@dataclass
class LocalControl(Interaction):
    """Run an inner interaction on a region of interest at S2M's working size.

    box: (top, left, bottom, right), inclusive pixel bounds in frame coordinates. The crop is
    resized so that its shorter side is ``work_size`` (aspect kept), segmented by ``inner``
    (expressed in frame coordinates; it is cropped along), resized back and pasted inside the
    box only. As in the original GUI, a box larger than 6 px on both sides drops a ``margin``
    of 3 px on each side when pasting, so that border effects of the crop are not pasted.
    """

    box: tuple[int, int, int, int]
    inner: Interaction
    work_size: int = 480
    margin: int = 3

    def apply(self, image: torch.Tensor, prob: torch.Tensor) -> torch.Tensor:
        _check_frame(image, prob)
        h, w = prob.shape[-2:]
        top, left, bottom, right = (int(v) for v in self.box)
        if not (0 <= top <= bottom < h and 0 <= left <= right < w):
            raise ValueError(f"local-control box {self.box} is not inside the {h}x{w} frame")
        bh, bw = bottom - top + 1, right - left + 1
        scale = self.work_size / min(bh, bw)
        size = (max(int(round(bh * scale)), 1), max(int(round(bw * scale)), 1))

        img_crop = image[:, top:bottom + 1, left:right + 1].unsqueeze(0).float()
        prob_crop = prob[:, top:bottom + 1, left:right + 1].unsqueeze(0).float()
        img_work = F.interpolate(img_crop, size=size, mode="bilinear", align_corners=False)[0]
        prob_work = F.interpolate(prob_crop, size=size, mode="bilinear", align_corners=False)[0]
        result = self.inner.crop((top, left, bottom, right), size).apply(img_work, prob_work)
        back = F.interpolate(result.unsqueeze(0).float(), size=(bh, bw), mode="bilinear",
                             align_corners=False)[0]
        back = back / back.sum(0, keepdim=True).clamp_min(1e-7)

        m = self.margin if (right - left) > 6 and (bottom - top) > 6 else 0
        out = prob.clone()
        out[:, top + m:bottom + 1 - m, left + m:right + 1 - m] = back[:, m:bh - m, m:bw - m].to(out.dtype)
        return out

    def crop(self, box, size) -> LocalControl:
        raise NotImplementedError("local control cannot be nested")
