"""STM-style mask propagation network (MiVOS main branch), stateless.

Strides: ``f16`` / ``f8`` / ``f4`` are features at 1/16, 1/8 and 1/4 of the (padded) input
size; h x w below means H/16 x W/16.

Sub-modules (names match the official ``propagation_model.pth``)::

    mask_rgb_encoder  memory encoder: ResNet with conv biases on [RGB, mask, others]
                      (5 ch; 4 ch when single_object), up to layer3 -> f16
    rgb_encoder       query encoder: RGB ResNet up to layer3 (layer1 registered as ``res2``)
                      -> f16, f8, f4
    kv_m_f16          memory key / value projections of f16 (3x3 convs)
    kv_q_f16          query key / value projections of f16 (3x3 convs)
    decoder           compress [readout, query value] -> refine with f8, f4 -> 1 logit

The network holds no per-video state: memory keys and values are produced by
:meth:`PropagationNetwork.encode_memory` and passed back into :meth:`~PropagationNetwork.segment`
by the caller (the inference memory bank or the training loop). The memory read is
:func:`model.memory.read_memory` (scaled dot product, softmax over memory, optional top-k).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.backbone import ResNet
from model.memory import read_memory
from util.tensor_util import channels_last_for_autocast

logger = logging.getLogger(__name__)


def others_masks(masks: torch.Tensor) -> torch.Tensor:
    """The "others" input of the memory encoder: for each object, the sum of the other objects.

    masks: K x ... per-object (soft) masks. Returns a tensor of the same shape whose row i is
    the sum of the rows j != i in increasing order of j (all zeros when K = 1). The sum is formed
    directly, as the original code does, and never as ``total - self``: that would differ by
    rounding (about 1e-7), enough to move memory keys by up to 1e-3.
    """
    num_objects = masks.shape[0]
    if num_objects == 1:
        return torch.zeros_like(masks)
    rows = [torch.sum(masks[[j for j in range(num_objects) if j != i]], dim=0, keepdim=True)
            for i in range(num_objects)]
    return torch.cat(rows, dim=0)


@dataclass(frozen=True)
class PropagationConfig:
    """Widths of the propagation network. Defaults are the paper's (53,685,953 parameters)."""

    backbone: str = "resnet50"
    key_dim: int = 128
    value_dim: int = 512
    decoder_channels: tuple[int, int, int] = (512, 256, 256)  # after compress, up_16_8, up_8_4
    memory_budget: int | None = None  # max affinity elements per chunk (None: read_memory default)


#: the outputs of the decoder's two skip branches for one frame: (on f8, on f4), see
#: :meth:`Decoder.skips`
DecoderSkips = tuple[torch.Tensor, torch.Tensor]


def expand_rows(t: torch.Tensor | None, batch: int) -> torch.Tensor | None:
    """``t`` (batch 1 or ``batch``) viewed with ``batch`` rows (no copy); None stays None."""
    return None if t is None else t.expand(batch, *t.shape[1:])


@dataclass
class QueryFeatures:
    """Query-encoder outputs of one frame (batch 1, or one row per object).

    f16: B x C16 x H/16 x W/16, f8: B x C8 x H/8 x W/8, f4: B x C4 x H/4 x W/4 (layer3/2/1);
    key: B x CK x H/16 x W/16; value: B x CV x H/16 x W/16.

    skips: the decoder's skip-branch outputs of these frames (:meth:`Decoder.skips`), computed
    once by :meth:`PropagationNetwork.with_decoder_skips` so that every later decoding of the
    frame reuses them; f8 and f4 are then None (the decoder needs nothing else from them).
    """

    f16: torch.Tensor
    f8: torch.Tensor | None
    f4: torch.Tensor | None
    key: torch.Tensor
    value: torch.Tensor
    skips: DecoderSkips | None = None

    @property
    def batch_size(self) -> int:
        return self.key.shape[0]

    def expand(self, batch: int) -> QueryFeatures:
        """The same features viewed ``batch`` times (no copy); needs batch_size 1 or ``batch``."""
        if self.batch_size == batch:
            return self
        if self.batch_size != 1:
            raise ValueError(f"cannot expand query features of batch {self.batch_size} to {batch}")
        skips = None if self.skips is None else tuple(expand_rows(s, batch) for s in self.skips)
        return QueryFeatures(*(expand_rows(t, batch) for t in
                               (self.f16, self.f8, self.f4, self.key, self.value)), skips=skips)


class QueryEncoder(nn.Module):
    """RGB ResNet up to layer3, with layer1 registered as ``res2`` (official naming).

    forward(image B x 3 x H x W) -> (f16, f8, f4).
    """

    #: its top-level names that differ from torchvision's (for
    #: :func:`model.checkpoint.imagenet_resnet`)
    TORCHVISION_NAMES: ClassVar[dict[str, str]] = {"res2": "layer1"}

    def __init__(self, arch: str) -> None:
        super().__init__()
        net = ResNet(arch, in_channels=3, last_layer=3)
        self.conv1 = net.conv1
        self.bn1 = net.bn1
        self.relu = net.relu
        self.maxpool = net.maxpool
        self.res2 = net.layer1
        self.layer2 = net.layer2
        self.layer3 = net.layer3
        self.out_channels = list(net.out_channels)  # f4, f8, f16

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(image))))
        f4 = self.res2(x)
        f8 = self.layer2(f4)
        f16 = self.layer3(f8)
        return f16, f8, f4


class KeyValue(nn.Module):
    """Key and value projections: B x C x h x w -> (B x CK x h x w, B x CV x h x w)."""

    def __init__(self, c_in: int, key_dim: int, value_dim: int) -> None:
        super().__init__()
        self.key_proj = nn.Conv2d(c_in, key_dim, 3, padding=1)
        self.val_proj = nn.Conv2d(c_in, value_dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.key_proj(x), self.val_proj(x)


class ResBlock(nn.Module):
    """out = shortcut(x) + conv2(ReLU(conv1(ReLU(x)))); 3x3-conv shortcut when widths differ."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        # Registered first so the state-dict order matches the official files.
        self.downsample = nn.Conv2d(c_in, c_out, 3, padding=1) if c_in != c_out else None
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.conv2(F.relu(self.conv1(F.relu(x))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return shortcut + r


class UpsampleBlock(nn.Module):
    """Fuse a skip feature with a coarser feature upsampled x2.

    forward(skip B x skip_c x 2h x 2w, up B x up_c x h x w) -> B x out_c x 2h x 2w.
    """

    def __init__(self, skip_c: int, up_c: int, out_c: int) -> None:
        super().__init__()
        self.skip_conv1 = nn.Conv2d(skip_c, up_c, 3, padding=1)
        self.skip_conv2 = ResBlock(up_c, up_c)
        self.out_conv = ResBlock(up_c, out_c)

    def skip(self, skip: torch.Tensor) -> torch.Tensor:
        """The skip branch alone (it depends only on the frame): B x up_c x 2h x 2w."""
        return self.skip_conv2(self.skip_conv1(skip))

    def fuse(self, skipped: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """The rest of :meth:`forward` from the skip branch's output (batch 1 broadcasts over
        the rows of ``up``)."""
        x = skipped + F.interpolate(up, size=skipped.shape[-2:], mode="bilinear",
                                    align_corners=False)
        return self.out_conv(x)

    def forward(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.skip(skip), up)


class Decoder(nn.Module):
    """[readout, query value] at stride 16 + f8 + f4 -> logits B x 1 x H x W (x4 of f4).

    ``upsample``: the class of the two upsampling blocks, called as ``upsample(skip_c, up_c,
    out_c)`` (:class:`UpsampleBlock` here; STCN's has a single skip conv, ``model.stcn``); a
    block has ``skip(feature)`` (its skip branch) and ``fuse(skipped, up)`` (the rest).

    The skip branches depend only on the frame: :meth:`skips` computes them once, and
    ``forward(x, f8, f4, skips=...)`` decodes from them (f8 / f4 are then not used), with the
    same result as ``forward(x, f8, f4)``.
    """

    def __init__(
        self,
        c_in: int,
        f8_c: int,
        f4_c: int,
        widths: tuple[int, int, int],
        upsample: type[nn.Module] = UpsampleBlock,
    ) -> None:
        super().__init__()
        c16, c8, c4 = widths
        self.compress = ResBlock(c_in, c16)
        self.up_16_8 = upsample(f8_c, c16, c8)
        self.up_8_4 = upsample(f4_c, c8, c4)
        self.pred = nn.Conv2d(c4, 1, 3, padding=1)

    def skips(self, f8: torch.Tensor, f4: torch.Tensor) -> DecoderSkips:
        """The two skip branches' outputs: (on f8, on f4), with the batch of f8 / f4."""
        return self.up_16_8.skip(f8), self.up_8_4.skip(f4)

    def forward(self, x: torch.Tensor, f8: torch.Tensor | None, f4: torch.Tensor | None,
                skips: DecoderSkips | None = None) -> torch.Tensor:
        """x: B x c_in x h x w; f8, f4 (or their ``skips``) with batch B or 1 (broadcast over
        the rows of x) -> logits B x 1 x 16h x 16w."""
        s8, s4 = self.skips(f8, f4) if skips is None else skips
        x = self.compress(x)
        x = self.up_16_8.fuse(s8, x)
        x = self.up_8_4.fuse(s4, x)
        x = self.pred(F.relu(x))
        return F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)


class PropagationNetwork(nn.Module):
    """Space-time memory propagation (stateless).

    Args:
        config: widths (default: the paper's).
        single_object: 4-channel memory encoder [RGB, mask] (stage-0 training) instead of 5.

    Attributes:
        key_dim (CK), value_dim (CV): key / value channels.
        memory_budget: passed to :func:`read_memory` as ``max_elements`` (None = its default
            budget); may be changed on the instance.
    """

    arch: ClassVar[str] = "mivos"  # model.presets.PROPAGATION_ARCHS
    #: the first conv of the mask-dependent encoder (widened 4 -> 5 channels after stage 0)
    MEMORY_STEM_KEY: ClassVar[str] = "mask_rgb_encoder.conv1.weight"

    def __init__(
        self, config: PropagationConfig | None = None, single_object: bool = False
    ) -> None:
        super().__init__()
        self.config = config or PropagationConfig()
        self.single_object = single_object
        self.key_dim = self.config.key_dim
        self.value_dim = self.config.value_dim
        self.memory_budget = self.config.memory_budget

        self.mask_rgb_encoder = ResNet(
            self.config.backbone,
            in_channels=4 if single_object else 5,
            conv_bias=True,
            last_layer=3,
        )
        self.rgb_encoder = QueryEncoder(self.config.backbone)
        f4_c, f8_c, f16_c = self.rgb_encoder.out_channels
        mem_f16_c = self.mask_rgb_encoder.out_channels[-1]
        self.kv_m_f16 = KeyValue(mem_f16_c, self.key_dim, self.value_dim)
        self.kv_q_f16 = KeyValue(f16_c, self.key_dim, self.value_dim)
        self.decoder = Decoder(2 * self.value_dim, f8_c, f4_c, self.config.decoder_channels)

    def encode_query(self, image: torch.Tensor) -> QueryFeatures:
        """image: B x 3 x H x W (normalised, H, W multiples of 16) -> :class:`QueryFeatures`."""
        f16, f8, f4 = self.rgb_encoder(channels_last_for_autocast(image))
        key, value = self.kv_q_f16(f16)
        return QueryFeatures(f16=f16, f8=f8, f4=f4, key=key, value=value)

    def with_decoder_skips(self, query: QueryFeatures) -> QueryFeatures:
        """The same features holding the decoder's skip-branch outputs instead of f8 / f4.

        The skip branches depend only on the frame, so a caller that decodes a frame more than
        once (an inference cache) computes them here once; :meth:`segment` then skips them and
        gives the same logits. Features that already hold them are returned as they are.
        """
        if query.skips is not None:
            return query
        return QueryFeatures(f16=query.f16, f8=None, f4=None, key=query.key, value=query.value,
                             skips=self.decoder.skips(query.f8, query.f4))

    def encode_memory(
        self, image: torch.Tensor, mask: torch.Tensor, others: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory key and value of one frame, one row per object.

        image: B x 3 x H x W (normalised); mask: B x 1 x H x W object probability in [0, 1];
        others: B x 1 x H x W sum of the other objects' probabilities (None = zeros; must be
        None for a single-object network).
        Returns key B x CK x h x w and value B x CV x h x w.
        """
        if self.single_object:
            if others is not None:
                raise ValueError("a single-object network takes no 'others' mask")
            x = torch.cat([image, mask], dim=1)
        else:
            if others is None:
                others = torch.zeros_like(mask)
            x = torch.cat([image, mask, others], dim=1)
        f16 = self.mask_rgb_encoder(channels_last_for_autocast(x))[-1]
        return self.kv_m_f16(f16)

    def read(
        self,
        query_key: torch.Tensor,
        mem_key: torch.Tensor,
        mem_value: torch.Tensor,
        top_k: int | None = None,
        km_sigma: float | None = None,
        memory_budget: int | None = None,
    ) -> torch.Tensor:
        """Memory readout: query_key B x CK x h x w, mem_key B x CK x T x h' x w' (or already
        flattened, B x CK x N), mem_value B x CV x T x h' x w' (or B x CV x N) -> B x CV x h x w."""
        b, _, h, w = query_key.shape
        readout = read_memory(
            mem_key.flatten(start_dim=2),  # B x CK x [T h' w']
            mem_value.flatten(start_dim=2),  # B x CV x [T h' w']
            query_key.flatten(start_dim=2),  # B x CK x [h w]
            top_k=top_k,
            max_elements=self.memory_budget if memory_budget is None else memory_budget,
            km_sigma=km_sigma,
            query_hw=(h, w) if km_sigma is not None else None,
        )
        return readout.reshape(b, -1, h, w)

    def segment(
        self,
        query: QueryFeatures,
        mem_key: torch.Tensor,
        mem_value: torch.Tensor,
        top_k: int | None = None,
        km_sigma: float | None = None,
        memory_budget: int | None = None,
    ) -> torch.Tensor:
        """Segment a query frame from memory, one row per object.

        query: features with batch 1 (shared by all objects, expanded) or B; with the decoder's
        skip outputs (:meth:`with_decoder_skips`) the skip branches are not run again.
        mem_key: B x CK x T x h x w; mem_value: B x CV x T x h x w (B = objects), or both
        flattened over the memory positions (B x CK x N, B x CV x N, N = T*h*w, frame-major).
        top_k: keep the top-k affinities per query position (None = full softmax, training).
        km_sigma: kernelized memory read (Gaussian sigma in stride-16 grid units, 5.6 in the
        original's YouTubeVOS / test-dev runs); None = plain read.
        memory_budget: affinity elements per chunk of this read (None = ``self.memory_budget``).
        Returns logits B x 1 x H x W (sigmoid -> probability per object).
        """
        if mem_key.dim() not in (3, 5) or mem_value.dim() != mem_key.dim():
            raise ValueError(
                "memory keys/values must be B x C x T x h x w or B x C x N, got "
                f"{tuple(mem_key.shape)} and {tuple(mem_value.shape)}"
            )
        shared = query.expand(mem_key.shape[0])
        readout = self.read(shared.key, mem_key, mem_value, top_k, km_sigma, memory_budget)
        x = channels_last_for_autocast(torch.cat([readout, shared.value], dim=1))  # B x 2CV x h x w
        # The skip features keep their own batch: for a frame shared by all objects (batch 1)
        # the decoder's skip branches run once per frame and their sum with the upsampled
        # object features broadcasts over the objects, as in the original (an expanded copy
        # would run them once per object).
        return self.decoder(x, query.f8, query.f4, skips=query.skips)

    def attention_transfer(
        self, mem_key: torch.Tensor, query_key: torch.Tensor, diff: torch.Tensor,
        memory_budget: int | None = None,
    ) -> torch.Tensor:
        """Align difference maps of an interacted frame to a target frame (fusion input A).

        mem_key: B x CK x h x w key of the interacted frame (memory encoder, new mask);
        query_key: 1 or B x CK x h x w query key of the target frame;
        diff: B x C x H x W maps in [0, 1] on the interacted frame (e.g. [D+, D-]), H = 16h.
        W = softmax over memory positions of k_M^T k_Q / sqrt(CK) (no top-k); the maps are
        area-downsampled to h x w, multiplied as d W and upsampled bilinearly to H x W.
        memory_budget: affinity elements per chunk (None = ``self.memory_budget``).
        Returns B x C x H x W, a convex combination of the downsampled diff values (so in
        [0, 1] when diff is).
        """
        b, _, h, w = mem_key.shape
        if query_key.shape[0] not in (1, b):
            raise ValueError(f"query_key batch {query_key.shape[0]} does not match {b}")
        small = F.interpolate(diff, size=(h, w), mode="area")  # B x C x h x w
        # one object at a time, each object's h w x h w affinity on its own: at 480p the
        # batched read measured slower from 2 objects on (docs/BENCHMARKS.md, fusion pass)
        aligned = torch.cat([
            self.read(query_key[i:i + 1] if query_key.shape[0] == b else query_key,
                      mem_key[i:i + 1].unsqueeze(2), small[i:i + 1].unsqueeze(2), top_k=None,
                      memory_budget=memory_budget)
            for i in range(b)
        ])
        return F.interpolate(aligned, size=diff.shape[-2:], mode="bilinear", align_corners=False)
