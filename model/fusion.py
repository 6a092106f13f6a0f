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

from collections.abc import Callable
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


def _blocked_layout_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether FusionNet may run in oneDNN's blocked layout: fp32 inference on a CPU with
    oneDNN, outside autocast, nothing that needs gradients."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and not torch.is_autocast_enabled("cpu")
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
    )


def _autocast_inference_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether FusionNet runs under CPU autocast for inference (nothing needs gradients)."""
    return (
        x.device.type == "cpu"
        and torch.is_autocast_enabled("cpu")
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
    )


def _torch_picks_onednn(convs: list[nn.Conv2d], b: int, h: int, w: int) -> bool:
    """Whether torch computes each of these convolutions (same padding, stride 1) on a
    b x C x h x w input with oneDNN. It does not always (small single images go to its own
    im2col kernel, which rounds differently); only then is the blocked layout bit-identical."""
    select = getattr(torch._C, "_select_conv_backend", None)
    mkldnn = getattr(getattr(torch._C, "_ConvBackend", None), "Mkldnn", None)
    if select is None or mkldnn is None:
        return False
    for conv in convs:
        probe = conv.weight.new_empty(b, conv.in_channels, h, w)  # never read
        backend = select(probe, conv.weight, conv.bias, list(conv.stride), list(conv.padding),
                         list(conv.dilation), False, [0, 0], conv.groups, None)
        if backend != mkldnn:
            return False
    return True


class FusionNet(nn.Module):
    """Five-layer residual fusion network (six convolutions).

    At fp32 inference on the CPU the layers run on oneDNN's blocked tensors
    (``Tensor.to_mkldnn``): a plain NCHW convolution is computed by the same oneDNN kernel
    between two reorders of its input and output, so keeping the blocked layout from the first
    layer to the last gives the same bits without those reorders (1.6x faster at 480p for the
    full network). Several objects run one at a time there (also the same bits).
    ``blocked_layout = False`` turns it off. Under CPU autocast (bf16) inference runs in
    channels-last, one object at a time (``channels_last_autocast``).
    """

    #: run fp32 CPU inference in oneDNN's blocked layout (bit-identical to the plain layout)
    blocked_layout: bool = True
    #: run CPU inference under autocast in channels-last, one object at a time (reduced
    #: precision either way; this layout only changes which kernels round)
    channels_last_autocast: bool = True

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

    def _convs(self) -> list[nn.Conv2d]:
        return [m for m in self.modules() if isinstance(m, nn.Conv2d)]

    def _onednn_plan(self, b: int, h: int, w: int) -> tuple[bool, bool]:
        """(blocked layout for the batch, one object at a time) for a b x 9 x h x w input.
        Torch's choice depends on the shape and the thread count only, so it is asked once per
        (b, h, w, threads) and kept (not in the state dict)."""
        key = (b, h, w, torch.get_num_threads())
        plan = self.__dict__.setdefault("_plans", {}).get(key)
        if plan is None:
            convs = self._convs()
            blocked = _torch_picks_onednn(convs, b, h, w)
            plan = (blocked, blocked and b > 1 and _torch_picks_onednn(convs, 1, h, w))
            self._plans[key] = plan
        return plan

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
        pieces = [image, prev_prob, curr_prob, attn, planes]
        channels = sum(p.shape[1] for p in pieces)
        if channels != FUSION_IN_CHANNELS:
            raise ValueError(
                f"FusionNet inputs give {channels} channels, expected {FUSION_IN_CHANNELS} "
                "(image 3, prev 1, curr 1, attn 2, dist 2)"
            )
        # one pixel of the input: its dtype, device and autograd state decide the layout
        probe = torch.cat([p[:1, :, :1, :1] for p in pieces], dim=1)
        if (self.channels_last_autocast
                and _autocast_inference_applies(probe, self.final_conv.weight)):
            # autocast on the CPU: channels-last, one object at a time. oneDNN's reduced-
            # precision convolutions take NHWC without reorders; in NCHW each of the six layers
            # reorders its input and output (measured on 2 cores, AVX512-BF16, 2 objects at
            # 480p: lite 212 -> 88 ms, full network 646 -> 308 ms; bf16 rounding either way)
            return self._by_rows(pieces, [slice(i, i + 1) for i in range(b)],
                                 lambda x: x.contiguous(memory_format=torch.channels_last),
                                 lambda y: y).contiguous()
        blocked, per_object = (
            self._onednn_plan(b, h, w)
            if self.blocked_layout and _blocked_layout_applies(probe, self.final_conv.weight)
            else (False, False))
        if not blocked:
            return self._layers(torch.cat(pieces, dim=1))
        # oneDNN's own layout end to end: no layout change between the layers. One object at a
        # time where that is also computed by oneDNN (the same bits), each object's input
        # assembled on its own: at full resolution the per-object tensors stay smaller, which is
        # faster at width 16 and no slower at 32
        rows = [slice(i, i + 1) for i in range(b)] if per_object else [slice(None)]
        return self._by_rows(pieces, rows, torch.Tensor.to_mkldnn, torch.Tensor.to_dense)

    def _by_rows(self, pieces: list[torch.Tensor], rows: list[slice],
                 enter: Callable[[torch.Tensor], torch.Tensor],
                 leave: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The layers on each group of rows (objects) of the inputs on its own: each group's
        input assembled from ``pieces``, put into a layout by ``enter``, its logits taken out
        of it by ``leave``; the groups' logits concatenated."""
        return torch.cat([leave(self._layers(enter(torch.cat([p[r] for p in pieces], dim=1))))
                          for r in rows])

    def _layers(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = F.relu(x + self.conv2(x))
        x = F.relu(x + self.conv3(x))
        return self.final_conv(x)
