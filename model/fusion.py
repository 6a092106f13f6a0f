"""Difference-aware fusion network (FusionNet).

Fuses, for one object on a target frame t_i, the previous-round probability with the newly
propagated one, guided by the aligned interaction differences A+ / A- (computed by
:meth:`model.propagation.PropagationNetwork.attention_transfer`) and the temporal distances to
the two interacted frames. Full resolution throughout, no normalisation layers.

Input channels (the official weights' order): [image (3, normalised), prev, curr, A+, A-,
n_c plane, n_r plane] = 9. Layers (names as in the official ``fusion.pth``)::

    conv1       3x3 conv 9 -> C, ReLU
    conv2       x = ReLU(x + conv(ReLU(conv(x))))       (Sequential indices 0 and 2)
    conv3       same
    final_conv  3x3 conv C -> 1 logit
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

FUSION_IN_CHANNELS = 9


@dataclass(frozen=True)
class FusionConfig:
    """Width of FusionNet. The default is the paper's (39,905 parameters)."""

    width: int = 32


def _residual_branch(c: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(c, c, 3, padding=1)
    )


class FusionNet(nn.Module):
    """Five-layer residual fusion network (six convolutions)."""

    def __init__(self, config: FusionConfig | None = None) -> None:
        super().__init__()
        self.config = config or FusionConfig()
        c = self.config.width
        self.conv1 = nn.Sequential(
            nn.Conv2d(FUSION_IN_CHANNELS, c, 3, padding=1), nn.ReLU(inplace=True)
        )
        self.conv2 = _residual_branch(c)
        self.conv3 = _residual_branch(c)
        self.final_conv = nn.Conv2d(c, 1, 3, padding=1)

    def forward(
        self,
        image: torch.Tensor,
        prev_prob: torch.Tensor,
        curr_prob: torch.Tensor,
        attn: torch.Tensor,
        dist: torch.Tensor,
    ) -> torch.Tensor:
        """Fuse two probabilities of one object.

        image: B x 3 x H x W normalised RGB of the target frame;
        prev_prob: B x 1 x H x W previous-round probability in [0, 1] (M^{r-1});
        curr_prob: B x 1 x H x W newly propagated probability in [0, 1] (M^{r'});
        attn: B x 2 x H x W aligned differences [A+, A-] in [0, 1];
        dist: B x 2 temporal distances [n_c, n_r] (>= 0, summing to 1 at inference).
        Returns logits B x 1 x H x W (sigmoid -> fused probability).
        """
        b, _, h, w = image.shape
        if dist.shape != (b, 2):
            raise ValueError(f"dist must be B x 2 = {b} x 2, got {tuple(dist.shape)}")
        planes = dist.to(image.dtype)[:, :, None, None].expand(b, 2, h, w)
        x = torch.cat([image, prev_prob, curr_prob, attn, planes], dim=1)
        if x.shape[1] != FUSION_IN_CHANNELS:
            raise ValueError(
                f"FusionNet inputs give {x.shape[1]} channels, expected {FUSION_IN_CHANNELS} "
                "(image 3, prev 1, curr 1, attn 2, dist 2)"
            )
        x = self.conv1(x)
        x = F.relu(x + self.conv2(x))
        x = F.relu(x + self.conv3(x))
        return self.final_conv(x)
