"""The one ResNet of the project (ResNet-18 / ResNet-50), with torchvision's parameter names.

Every encoder in MiVOS is a ResNet truncated after ``layer3`` or ``layer4``:

* S2M: ResNet-50 (ResNet-18 for ``lite``), 6 input channels, dilation instead of stride in
  ``layer4`` (output stride 16).
* Propagation memory encoder: ResNet-50 with a bias on every convolution, 5 input channels
  (4 for single-object training), up to ``layer3``.
* Propagation query encoder: plain RGB ResNet-50 up to ``layer3``.

Parameter names follow torchvision (``conv1``, ``bn1``, ``layer1``..``layer4``, blocks with
``conv1/bn1/conv2/bn2[/conv3/bn3]`` and ``downsample.0`` (1x1 conv) / ``downsample.1`` (BN)),
so ImageNet state dicts in torchvision format load by name (the one loader,
:func:`model.checkpoint.load_weights`, with :func:`model.checkpoint.imagenet_resnet`).
There is no ``avgpool`` / ``fc``. Bottlenecks are "v1.5": the stride sits on the 3x3 conv.

Strides: the stem (``conv1`` stride 2 + 3x3/2 max-pool) gives stride 4; ``layer1`` keeps it,
``layer2``..``layer4`` halve it unless the layer is dilated (then the first block of that layer
uses stride 1 and the *previous* dilation, the other blocks the doubled dilation).

:func:`adapt_input_conv` widens a stem to more input channels (masks next to the image); the
checkpoint adapters use it. Nothing here reads or downloads a file.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

# Blocks per layer for each supported depth.
_ARCHS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}
STEM_CHANNELS = 64
EXTRA_CHANNEL_INITS = ("orthogonal", "zeros")


class StemMaxPool(nn.MaxPool2d):
    """The stem's 3x3 max-pool, stride 2, padding 1 (an ``nn.MaxPool2d``; no parameters).

    Without autograd on a CPU tensor in the default (NCHW) layout, the same values are computed
    as a maximum over three rows and then over three columns, each an element-wise maximum of
    strided views of the input, the window's rows (columns) beyond the border left out instead
    of padded: the library's NCHW kernel takes a scalar loop per output element, and a copy
    padded with ``F.pad`` costs more than the maxima (measured on 2 cores, 64 x 240 x 432
    float32, interleaved, medians of 9-15 rounds: library 44-49 ms, maxima of a padded copy
    52 ms, these maxima 9-19 ms; bfloat16: library 31-49 ms, these 6-8 ms). A maximum is exact
    in any order, so the values are identical. Where a gradient is needed
    (training), on other devices or layouts, the library's operator runs: its gradient goes to
    one input of each window, where a maximum of views would split it between tied inputs.
    """

    def __init__(self) -> None:
        super().__init__(kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type != "cpu" or x.dim() != 4 or not x.is_contiguous()
                or (torch.is_grad_enabled() and x.requires_grad)):
            return super().forward(x)
        return _max3_stride2(_max3_stride2(x, 2), 3)


def _max3_stride2(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Maximum over windows of 3 along ``dim`` centred on every second position (0, 2, ...),
    the window cut at the borders: a 3-wide max-pool, stride 2, padding 1, along one axis."""
    n = x.shape[dim]
    out_len = (n - 1) // 2 + 1
    even = x.unfold(dim, 1, 2).squeeze(-1)  # positions 0, 2, ... (out_len of them)
    after = n // 2  # windows with a position 2i + 1 inside
    if not after:
        return even.clone()
    odd = x.narrow(dim, 1, 2 * after - 1).unfold(dim, 1, 2).squeeze(-1)  # 1, 3, ...
    shape = list(even.shape)
    out = x.new_empty(shape)
    torch.maximum(even.narrow(dim, 0, after), odd, out=out.narrow(dim, 0, after))
    if out_len > after:  # n odd: the last window holds no position 2i + 1
        out.narrow(dim, after, 1).copy_(even.narrow(dim, after, 1))
    if out_len > 1:  # position 2i - 1 for i >= 1: the same odd positions, one window later
        tail = out.narrow(dim, 1, out_len - 1)
        torch.maximum(tail, odd.narrow(dim, 0, out_len - 1), out=tail)
    return out


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (ResNet-18/34). Output width = ``planes``."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        first_dilation: int | None = None,
        downsample: nn.Module | None = None,
        conv_bias: bool = False,
    ) -> None:
        super().__init__()
        d0 = dilation if first_dilation is None else first_dilation
        self.conv1 = nn.Conv2d(
            inplanes, planes, 3, stride=stride, padding=d0, dilation=d0, bias=conv_bias
        )
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(
            planes, planes, 3, padding=dilation, dilation=dilation, bias=conv_bias
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries stride and dilation), 1x1 expand x4, residual (ResNet-50)."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        first_dilation: int | None = None,
        downsample: nn.Module | None = None,
        conv_bias: bool = False,
    ) -> None:
        super().__init__()
        # In a bottleneck only the 3x3 conv is dilated; ``first_dilation`` applies to it.
        d = dilation if first_dilation is None else first_dilation
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=conv_bias)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, 3, stride=stride, padding=d, dilation=d, bias=conv_bias
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=conv_bias)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


class ResNet(nn.Module):
    """Truncated ResNet-18/50 returning the outputs of ``layer1`` .. ``layer<last_layer>``.

    Args:
        arch: ``"resnet18"`` or ``"resnet50"``.
        in_channels: input channels of ``conv1`` (3 = RGB; more for extra mask/scribble planes).
        conv_bias: give every convolution a bias (the propagation memory encoder does).
        replace_stride_with_dilation: three flags for ``layer2``..``layer4`` (as torchvision).
        last_layer: build ``layer1`` .. ``layer<last_layer>`` (1..4); later layers do not exist.

    Attributes:
        out_channels: channels of each returned feature (e.g. 256, 512, 1024, 2048 for R-50).
        out_strides: stride of each returned feature w.r.t. the input (e.g. 4, 8, 16, 16).
    """

    def __init__(
        self,
        arch: str = "resnet50",
        in_channels: int = 3,
        conv_bias: bool = False,
        replace_stride_with_dilation: Sequence[bool] = (False, False, False),
        last_layer: int = 4,
    ) -> None:
        super().__init__()
        if arch not in _ARCHS:
            raise ValueError(f"unknown ResNet arch {arch!r}; valid: {', '.join(sorted(_ARCHS))}")
        if not 1 <= last_layer <= 4:
            raise ValueError(f"last_layer must be in 1..4, got {last_layer}")
        if len(replace_stride_with_dilation) != 3:
            raise ValueError("replace_stride_with_dilation needs three flags (layer2..layer4)")
        kind, blocks = _ARCHS[arch]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.arch = arch
        self.in_channels = in_channels
        self.conv_bias = conv_bias
        self.last_layer = last_layer

        self.conv1 = nn.Conv2d(in_channels, STEM_CHANNELS, 7, stride=2, padding=3, bias=conv_bias)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = StemMaxPool()

        self._inplanes = STEM_CHANNELS
        self._dilation = 1
        stride_now = 4
        self.out_channels: list[int] = []
        self.out_strides: list[int] = []
        dilate_flags = (False, *replace_stride_with_dilation)
        for i in range(last_layer):
            planes = STEM_CHANNELS * 2**i
            stride = 1 if i == 0 else 2
            layer = self._make_layer(block, planes, blocks[i], stride, dilate_flags[i], conv_bias)
            self.add_module(f"layer{i + 1}", layer)
            if stride == 2 and not dilate_flags[i]:
                stride_now *= 2
            self.out_channels.append(planes * block.expansion)
            self.out_strides.append(stride_now)

        self._init_weights()

    def _make_layer(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        planes: int,
        num_blocks: int,
        stride: int,
        dilate: bool,
        conv_bias: bool,
    ) -> nn.Sequential:
        previous_dilation = self._dilation
        if dilate:
            self._dilation *= stride
            stride = 1
        out_planes = planes * block.expansion
        downsample = None
        if stride != 1 or self._inplanes != out_planes:
            downsample = nn.Sequential(
                nn.Conv2d(self._inplanes, out_planes, 1, stride=stride, bias=conv_bias),
                nn.BatchNorm2d(out_planes),
            )
        layers = [
            block(
                self._inplanes,
                planes,
                stride=stride,
                dilation=self._dilation,
                first_dilation=previous_dilation,
                downsample=downsample,
                conv_bias=conv_bias,
            )
        ]
        self._inplanes = out_planes
        for _ in range(1, num_blocks):
            layers.append(
                block(self._inplanes, planes, dilation=self._dilation, conv_bias=conv_bias)
            )
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def layers(self) -> list[nn.Module]:
        """``[layer1, ..., layer<last_layer>]``."""
        return [getattr(self, f"layer{i + 1}") for i in range(self.last_layer)]

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """conv1 + bn1 + ReLU + max-pool: B x in_channels x H x W -> B x 64 x H/4 x W/4."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: B x in_channels x H x W -> features of layer1..layer<last_layer>.

        Feature i has ``out_channels[i]`` channels at stride ``out_strides[i]``
        (sizes rounded up by the strided convolutions).
        """
        x = self.stem(x)
        feats = []
        for layer in self.layers():
            x = layer(x)
            feats.append(x)
        return feats


def adapt_input_conv(
    weight: torch.Tensor, in_channels: int, extra_init: str = "orthogonal"
) -> torch.Tensor:
    """Widen a conv weight along its input-channel axis (dim 1).

    weight: C_out x C_in x kh x kw. Returns C_out x in_channels x kh x kw whose first C_in
    input slices are a copy of ``weight``; the appended ``in_channels - C_in`` slices are
    initialised with ``torch.nn.init.orthogonal_`` on a C_out x n_extra x kh x kw tensor
    (``extra_init="orthogonal"``) or with zeros (``"zeros"``). Narrowing is refused.
    """
    if extra_init not in EXTRA_CHANNEL_INITS:
        raise ValueError(f"extra_init must be one of {EXTRA_CHANNEL_INITS}, got {extra_init!r}")
    if weight.dim() != 4:
        raise ValueError(f"expected a 4-D conv weight, got shape {tuple(weight.shape)}")
    c_out, c_in, kh, kw = weight.shape
    n_extra = in_channels - c_in
    if n_extra < 0:
        raise ValueError(f"cannot narrow a conv from {c_in} to {in_channels} input channels")
    extra = torch.zeros(c_out, n_extra, kh, kw, dtype=weight.dtype, device=weight.device)
    if n_extra > 0 and extra_init == "orthogonal":
        nn.init.orthogonal_(extra)
    return torch.cat([weight.detach(), extra], dim=1)
