"""Runs the S2M network on one frame for every object and aggregates the results."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.aggregate import aggregate
from util.tensor_util import normalize_image, pad_divide_by, unpad


def dilate3x3(maps: torch.Tensor) -> torch.Tensor:
    """One binary dilation with a 3x3 all-ones kernel. maps: ... x H x W in {0, 1}."""
    shape = maps.shape
    x = maps.reshape(-1, 1, shape[-2], shape[-1]).float()
    x = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
    return x.reshape(shape)


class S2MController:
    """S2M on one frame: per-object forward, sigmoid, (hard) soft aggregation with background.

    Args:
        net: a :class:`model.s2m.S2M` in eval mode.
        device: where the network runs.
        hard: hard aggregation (logits x 1000), as the DAVIS driver and the GUI use for S2M.
    """

    def __init__(self, net: torch.nn.Module, device: torch.device | str = "cpu", hard: bool = True):
        self.net = net
        self.device = torch.device(device)
        self.hard = hard

    @torch.inference_mode()
    def __call__(self, image: torch.Tensor, labels: torch.Tensor, pos: torch.Tensor,
                 neg: torch.Tensor) -> torch.Tensor:
        """New probabilities of one frame.

        image: 3 x H x W RGB in [0, 1]; labels: H x W current hard mask (0..K);
        pos, neg: K x H x W scribble maps in {0, 1} (already rasterised / dilated).
        Returns (K+1) x H x W probabilities (channel 0 = background) on the CPU.
        """
        if image.shape[-2:] != labels.shape[-2:] or pos.shape[-2:] != labels.shape[-2:]:
            raise ValueError(
                f"image {tuple(image.shape[-2:])}, mask {tuple(labels.shape[-2:])} and scribbles "
                f"{tuple(pos.shape[-2:])} must have the same size"
            )
        dev = self.device
        img = normalize_image(image.to(dev).float()).unsqueeze(0)
        img, pad = pad_divide_by(img, 16)
        maps = torch.cat([labels.to(dev).unsqueeze(0).float(), pos.to(dev).float(),
                          neg.to(dev).float()], dim=0)
        maps, _ = pad_divide_by(maps, 16)  # zeros in the padding: no label, no stroke
        k = pos.shape[0]
        out = self.forward_padded(img, maps[0].long(), maps[1:k + 1], maps[k + 1:])
        return unpad(out, pad).cpu()

    @torch.inference_mode()
    def forward_padded(self, image: torch.Tensor, labels: torch.Tensor, pos: torch.Tensor,
                       neg: torch.Tensor) -> torch.Tensor:
        """S2M on inputs that are already at a size divisible by 16.

        image: 1 x 3 x Hp x Wp normalised (e.g. ``InferenceCore.image(t)``); labels: Hp x Wp
        hard mask (0..K); pos, neg: K x Hp x Wp in {0, 1}. Returns (K+1) x Hp x Wp probabilities
        on the compute device, padding included (the original DAVIS driver works this way).
        """
        k = pos.shape[0]
        if image.dim() != 4 or image.shape[0] != 1 or image.shape[-2:] != labels.shape[-2:] \
                or pos.shape[-2:] != labels.shape[-2:] or neg.shape != pos.shape:
            raise ValueError(
                f"image {tuple(image.shape)}, mask {tuple(labels.shape)}, scribbles "
                f"{tuple(pos.shape)} / {tuple(neg.shape)} must share one padded size"
            )
        if image.shape[-2] % 16 or image.shape[-1] % 16:
            raise ValueError(f"padded inputs must be multiples of 16, got {tuple(image.shape[-2:])}")
        dev = self.device
        ids = torch.arange(1, k + 1, device=dev).view(k, 1, 1)
        existing = (labels.to(dev).long().unsqueeze(0) == ids).float()
        x = torch.cat([image.to(dev).float().expand(k, -1, -1, -1), existing.unsqueeze(1),
                       pos.to(dev).float().unsqueeze(1), neg.to(dev).float().unsqueeze(1)], dim=1)
        # one object per forward, as the original runs S2M (same arithmetic as batch 1)
        prob = torch.cat([torch.sigmoid(self.net(x[i:i + 1]))[:, 0] for i in range(k)])  # K x Hp x Wp
        return aggregate(prob, dim=0, hard=self.hard)
