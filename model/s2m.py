"""S2M (scribble-to-mask): DeepLabV3+ on a ResNet with 6 input channels, one output logit.

Input channels, in this order: ImageNet-normalised RGB (3), the existing binary mask of the
target object (1), its positive scribbles (1) and negative scribbles (1), all zero-padded to a
multiple of 16. One forward per object; callers apply a sigmoid and aggregate the objects.

Structure (names match the official ``s2m.pth``)::

    backbone     ResNet, layer4 dilated (output stride 16); returns layer1 (f4) and layer4 (f16)
    classifier   DeepLabV3+ head
      project    1x1 conv + BN + ReLU on f4 (low-level, 48 ch for mivos)
      aspp       ASPP on f16: 1x1, three dilated 3x3 (rates 6/12/18), image pooling; 1x1 project
      classifier 3x3 conv + BN + ReLU on [low-level, upsampled ASPP], then 1x1 conv -> 1 logit

The logit map (stride 4) is upsampled bilinearly (align_corners=False) to the input size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.backbone import ResNet
from util.tensor_util import channels_last_for_autocast


@dataclass(frozen=True)
class S2MConfig:
    """Widths of S2M. Defaults are the paper's (DeepLabV3+ ResNet-50, 39,766,113 parameters)."""

    backbone: str = "resnet50"
    in_channels: int = 6  # RGB + mask + positive + negative
    aspp_channels: int = 256
    aspp_rates: tuple[int, int, int] = (6, 12, 18)
    low_level_channels: int = 48  # projection of layer1
    head_channels: int = 256  # 3x3 conv of the final classifier
    dropout: float = 0.1  # after the ASPP projection


def _conv_bn_relu(c_in: int, c_out: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class ASPPPooling(nn.Sequential):
    """Image-pooling branch: global average -> 1x1 conv + BN + ReLU -> broadcast to h x w.

    Its BatchNorm sees one value per channel and sample, so training needs batch size > 1.
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = super().forward(x)
        return F.interpolate(pooled, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: B x c_in x h x w -> B x c_out x h x w."""

    def __init__(self, c_in: int, c_out: int, rates: Sequence[int], dropout: float) -> None:
        super().__init__()
        branches: list[nn.Module] = [_conv_bn_relu(c_in, c_out, 1)]
        branches += [_conv_bn_relu(c_in, c_out, 3, dilation=r) for r in rates]
        branches.append(ASPPPooling(c_in, c_out))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            nn.Conv2d(c_out * len(branches), c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


class DeepLabV3PlusHead(nn.Module):
    """Low-level projection + ASPP + classifier; returns stride-4 logits B x n_out x h4 x w4."""

    def __init__(
        self,
        in_channels: int,
        low_level_in: int,
        config: S2MConfig,
        n_out: int = 1,
    ) -> None:
        super().__init__()
        self.project = _conv_bn_relu(low_level_in, config.low_level_channels, 1)
        self.aspp = ASPP(in_channels, config.aspp_channels, config.aspp_rates, config.dropout)
        self.classifier = nn.Sequential(
            nn.Conv2d(
                config.low_level_channels + config.aspp_channels,
                config.head_channels, 3, padding=1, bias=False,
            ),
            nn.BatchNorm2d(config.head_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(config.head_channels, n_out, 1),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, low_level: torch.Tensor, high_level: torch.Tensor) -> torch.Tensor:
        low = self.project(low_level)
        aspp = F.interpolate(
            self.aspp(high_level), size=low.shape[-2:], mode="bilinear", align_corners=False
        )
        return self.classifier(torch.cat([low, aspp], dim=1))


class S2M(nn.Module):
    """Scribble-to-mask network (DeepLabV3+).

    ``forward(x)``: x is B x 6 x H x W = [normalised RGB, mask, positive, negative], H and W
    multiples of 16 (other sizes work; the output is resized to the input size) ->
    logits B x 1 x H x W (apply a sigmoid for the object probability).
    Training mode needs B > 1 (image-pooling BatchNorm).
    """

    def __init__(self, config: S2MConfig | None = None) -> None:
        super().__init__()
        self.config = config or S2MConfig()
        self.backbone = ResNet(
            self.config.backbone,
            in_channels=self.config.in_channels,
            replace_stride_with_dilation=(False, False, True),
            last_layer=4,
        )
        self.classifier = DeepLabV3PlusHead(
            self.backbone.out_channels[-1], self.backbone.out_channels[0], self.config
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"S2M expects B x {self.config.in_channels} x H x W input, got {tuple(x.shape)}"
            )
        feats = self.backbone(channels_last_for_autocast(x))  # layer1 (stride 4) .. layer4 (16)
        logits = self.classifier(feats[0], feats[-1])
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


#: the final 1x1 conv (one logit); a DeepLab initialisation replaces it
#: (:func:`model.checkpoint.deeplab_s2m`)
FINAL_CONV = "classifier.classifier.3"
