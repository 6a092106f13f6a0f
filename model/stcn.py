"""STCN-style propagation network (the MiVOS-STCN branch, REFERENCE.md j), stateless.

Strides: ``f16`` / ``f8`` / ``f4`` are features at 1/16, 1/8 and 1/4 of the (padded) input
size; h x w below means H/16 x W/16, K the number of objects, B the number of frames (clips).

Sub-modules (names and state-dict order match ``stcn.pth``, ``propagation_stcn.tsv``)::

    value_encoder  ResNet (conv biases; layers 1-3) on [RGB, mask, others] (5 ch; 4 ch when
                   single_object), then ``fuser`` on [its layer3 output, the key encoder's f16]:
                   block1 = ResBlock(-> CV), x + CBAM(x), block2 = ResBlock(CV -> CV)
    key_encoder    RGB ResNet up to layer3 (layer1 registered as ``res2``), shared by memory
                   and query frames -> f16, f8, f4
    key_proj       ``key_proj.key_proj``: 3x3 conv f16 -> CK (64), orthogonal init, zero bias
    key_comp       3x3 conv f16 -> CV (512): the query-side value fed to the decoder
    decoder        compress [readout, key_comp value] -> refine with f8, f4 -> 1 logit per
                   object (upsampling blocks with a single ``skip_conv``)

How it differs from :class:`model.propagation.PropagationNetwork`
-----------------------------------------------------------------
* Keys come from the image alone, so a memory frame's key *is* its query key: one key per
  frame, shared by all objects; values are per object.
* The affinity is the negative squared L2 distance ``-|k_M - k_Q|^2 / sqrt(CK)``
  (:func:`model.memory.read_memory` with ``similarity="l2"``), and it is computed **once per
  query frame** for all K objects: the K objects' values are stacked along the channel axis of
  one read (see ``model/memory.py``, "One affinity for several objects").
* Top-k default at inference: :data:`STCN_TOP_K` (20). Training uses the full softmax.

Interface (for the inference core and the trainers)
---------------------------------------------------
::

    feats = net.encode_key(image)                  # image B x 3 x H x W (normalised, padded)
    # -> STCNQueryFeatures(key B x CK x h x w, value B x CV x h x w (key_comp),
    #                      f16 B x C16 x h x w, f8, f4)
    values = net.encode_value(image, feats.f16, masks, others=None)
    # masks B x K x H x W object probabilities; others B x K x H x W ("others" of each object;
    # None = the direct sum of the other objects, REFERENCE.md b.6; must be None when
    # single_object) -> values B x K x CV x h x w
    logits = net.segment(feats, mem_key, mem_value, top_k=STCN_TOP_K)
    # mem_key   B x CK x T x h x w  (or B x CK x N, N = T*h*w, frame-major)
    # mem_value B x K x CV x T x h x w  (or B x K x CV x N)
    # -> logits B x K x H x W (sigmoid per object, then model.aggregate.aggregate over dim 1)
    attn = net.attention_transfer(mem_key, query_key, diff)
    # mem_key / query_key B x CK x h x w (keys of the interacted and the target frame),
    # diff B x C x H x W (e.g. all K+1 channels of D+ and of D-) -> B x C x H x W;
    # one W (full softmax over memory positions, L2 affinity) for all C channels

An inference core uses it with B = 1 (REFERENCE.md j.2):

* cache ``encode_key`` of every frame (key, value, f16, f8, f4): the query pass needs all of
  them and memorising needs ``key`` and ``f16``, so no frame is ever encoded twice;
* memorising frame t with aggregated probabilities ``prob`` ((K+1) x H x W) appends
  ``feats_t.key`` to a shared key bank (1 x CK x T x h x w) and
  ``encode_value(image_t, feats_t.f16, prob[1:].unsqueeze(0))`` to the value bank
  (1 x K x CV x T x h x w);
* ``segment(feats_t, keys, values, top_k=STCN_TOP_K)[0]`` gives the K logits of frame t; a
  frame decoded more than once keeps ``with_decoder_skips(feats_t)`` (the decoder's skip
  outputs in place of f8 / f4) and decodes from it without running the skip branches again;
* the MiVOS-STCN schedule memorises a frame when ``abs(t - last memorised) >= mem_freq`` and
  keeps no temporary previous-frame memory;
* fusion: ``attention_transfer(key of the interacted frame, key of the target frame,
  [D+ of all K+1 channels, D- of all K+1 channels])``, channel k of each half for object k.
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
from model.propagation import (
    Decoder,
    DecoderSkips,
    QueryEncoder,
    ResBlock,
    expand_rows,
    others_masks,
)
from util.tensor_util import channels_last_for_autocast

logger = logging.getLogger(__name__)

__all__ = [
    "STCN_TOP_K",
    "STCNConfig",
    "STCNQueryFeatures",
    "STCNNetwork",
    "ChannelGate",
    "SpatialGate",
    "CBAM",
    "FeatureFusionBlock",
    "ValueEncoder",
    "KeyProjection",
    "SkipUpsampleBlock",
    "align_differences",
]

#: Top-k of the memory read at inference (REFERENCE.md j.1).
STCN_TOP_K = 20


@dataclass(frozen=True)
class STCNConfig:
    """Widths of the STCN network. Defaults are the original's (54,434,180 parameters)."""

    key_backbone: str = "resnet50"
    value_backbone: str = "resnet18"
    key_dim: int = 64
    value_dim: int = 512
    cbam_reduction: int = 16  # channel-gate hidden width = value_dim // cbam_reduction
    decoder_channels: tuple[int, int, int] = (512, 256, 256)  # compress, up_16_8, up_8_4
    memory_budget: int | None = None  # max affinity elements per chunk (None: read_memory's)


@dataclass
class STCNQueryFeatures:
    """Key-encoder outputs of B frames.

    key: B x CK x h x w (``key_proj``); value: B x CV x h x w (``key_comp``); f16: B x C16 x h x
    w, f8: B x C8 x 2h x 2w, f4: B x C4 x 4h x 4w (key encoder layer3 / layer2 / res2).

    skips: the decoder's skip-branch outputs of these frames
    (:meth:`model.propagation.Decoder.skips`), computed once by
    :meth:`STCNNetwork.with_decoder_skips` so that every later decoding of the frame reuses
    them; f8 and f4 are then None (the decoder needs nothing else from them).
    """

    key: torch.Tensor
    value: torch.Tensor
    f16: torch.Tensor
    f8: torch.Tensor | None
    f4: torch.Tensor | None
    skips: DecoderSkips | None = None

    FIELDS: ClassVar[tuple[str, ...]] = ("key", "value", "f16", "f8", "f4")

    @property
    def batch_size(self) -> int:
        return self.key.shape[0]

    def map(self, fn) -> STCNQueryFeatures:
        """The same features with ``fn`` applied to every tensor (None stays None; the skip
        outputs too)."""
        def apply(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else fn(t)

        skips = None if self.skips is None else tuple(apply(t) for t in self.skips)
        return STCNQueryFeatures(*(apply(getattr(self, name)) for name in self.FIELDS),
                                 skips=skips)

    def expand(self, batch: int) -> STCNQueryFeatures:
        """Batch-1 features viewed ``batch`` times (no copy); a no-op for batch ``batch``."""
        if self.batch_size == batch:
            return self
        if self.batch_size != 1:
            raise ValueError(f"cannot expand query features of batch {self.batch_size} to {batch}")
        return self.map(lambda t: expand_rows(t, batch))


# ============================================================================ building blocks


class ChannelGate(nn.Module):
    """CBAM channel attention: x * sigmoid(mlp(avg-pool x) + mlp(max-pool x)).

    ``mlp`` = Flatten, Linear(C -> C/r), ReLU, Linear(C/r -> C) (tensor names ``mlp.1``,
    ``mlp.3``).
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(
            nn.Flatten(), nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        att = self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3)))
        return x * torch.sigmoid(att)[:, :, None, None]


class _Conv(nn.Module):
    """A module holding one conv as ``conv`` (the original's naming of the spatial-gate conv)."""

    def __init__(self, c_in: int, c_out: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, padding=(kernel - 1) // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class SpatialGate(nn.Module):
    """CBAM spatial attention: x * sigmoid(conv7x7([max over channels, mean over channels]))."""

    def __init__(self, kernel: int = 7) -> None:
        super().__init__()
        self.spatial = _Conv(2, 1, kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(pooled))


class CBAM(nn.Module):
    """Channel gate followed by spatial gate (sub-modules ``ChannelGate``, ``SpatialGate``)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.ChannelGate = ChannelGate(channels, reduction)  # noqa: N815 - checkpoint names
        self.SpatialGate = SpatialGate()  # noqa: N815

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.SpatialGate(self.ChannelGate(x))


class FeatureFusionBlock(nn.Module):
    """Value features fused with the key encoder's f16: cat -> ResBlock -> x + CBAM(x) ->
    ResBlock. forward(x B x Cx x h x w, f16 B x C16 x h x w) -> B x c_out x h x w."""

    def __init__(self, c_in: int, c_out: int, reduction: int = 16) -> None:
        super().__init__()
        self.block1 = ResBlock(c_in, c_out)
        self.attention = CBAM(c_out, reduction)
        self.block2 = ResBlock(c_out, c_out)

    def forward(self, x: torch.Tensor, f16: torch.Tensor) -> torch.Tensor:
        x = self.block1(torch.cat([x, f16], dim=1))  # value features first, then f16
        return self.block2(x + self.attention(x))


class ValueEncoder(nn.Module):
    """ResNet (biased convs) layers 1-3 on [RGB, mask(, others)], fused with the key f16.

    forward(x B x in_channels x H x W, f16 B x C16 x h x w) -> B x value_dim x h x w.
    """

    def __init__(
        self, arch: str, in_channels: int, f16_channels: int, value_dim: int, reduction: int
    ) -> None:
        super().__init__()
        net = ResNet(arch, in_channels=in_channels, conv_bias=True, last_layer=3)
        self.arch = arch
        self.in_channels = in_channels
        self.conv1 = net.conv1
        self.bn1 = net.bn1
        self.relu = net.relu
        self.maxpool = net.maxpool
        self.layer1 = net.layer1
        self.layer2 = net.layer2
        self.layer3 = net.layer3
        self.fuser = FeatureFusionBlock(net.out_channels[-1] + f16_channels, value_dim, reduction)

    def forward(self, x: torch.Tensor, f16: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fuser(x, f16)


class KeyProjection(nn.Module):
    """3x3 conv f16 -> CK, registered as ``key_proj`` (orthogonal weight, zero bias)."""

    def __init__(self, c_in: int, key_dim: int) -> None:
        super().__init__()
        self.key_proj = nn.Conv2d(c_in, key_dim, 3, padding=1)
        nn.init.orthogonal_(self.key_proj.weight)
        nn.init.zeros_(self.key_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.key_proj(x)


class SkipUpsampleBlock(nn.Module):
    """STCN's upsampling block: skip_conv(skip) + x2 bilinear upsampled coarse -> out_conv.

    forward(skip B x skip_c x 2h x 2w, up B x up_c x h x w) -> B x out_c x 2h x 2w.
    """

    def __init__(self, skip_c: int, up_c: int, out_c: int) -> None:
        super().__init__()
        self.skip_conv = nn.Conv2d(skip_c, up_c, 3, padding=1)
        self.out_conv = ResBlock(up_c, out_c)

    def skip(self, skip: torch.Tensor) -> torch.Tensor:
        """The skip branch alone (it depends only on the frame): B x up_c x 2h x 2w."""
        return self.skip_conv(skip)

    def fuse(self, skipped: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """The rest of :meth:`forward` from the skip branch's output (batch 1 broadcasts over
        the rows of ``up``)."""
        x = skipped + F.interpolate(up, size=skipped.shape[-2:], mode="bilinear",
                                    align_corners=False)
        return self.out_conv(x)

    def forward(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.skip(skip), up)


def _repeat_rows(t: torch.Tensor, k: int) -> torch.Tensor:
    """B x ... -> (B*k) x ..., each row repeated k times consecutively (b-major)."""
    if k == 1:
        return t
    return t.unsqueeze(1).expand(t.shape[0], k, *t.shape[1:]).reshape(-1, *t.shape[1:])


# ============================================================================ the network


class STCNNetwork(nn.Module):
    """STCN propagation (stateless; see the module docstring for the interface).

    Args:
        config: widths (default: the original's).
        single_object: 4-channel value encoder [RGB, mask] (stage-0 training) instead of 5.

    Attributes:
        key_dim (CK), value_dim (CV): key / value channels.
        memory_budget: passed to :func:`read_memory` as ``max_elements`` (None = its default
            budget); may be changed on the instance.
    """

    arch: ClassVar[str] = "stcn"
    #: the first conv of the mask-dependent encoder (widened 4 -> 5 channels after stage 0)
    MEMORY_STEM_KEY: ClassVar[str] = "value_encoder.conv1.weight"
    SIMILARITY: ClassVar[str] = "l2"

    def __init__(self, config: STCNConfig | None = None, single_object: bool = False) -> None:
        super().__init__()
        self.config = config or STCNConfig()
        self.single_object = single_object
        self.key_dim = self.config.key_dim
        self.value_dim = self.config.value_dim
        self.memory_budget = self.config.memory_budget

        key_encoder = QueryEncoder(self.config.key_backbone)
        f4_c, f8_c, f16_c = key_encoder.out_channels
        # registration order = the original state-dict order (value encoder first)
        self.value_encoder = ValueEncoder(
            self.config.value_backbone, 4 if single_object else 5, f16_c, self.value_dim,
            self.config.cbam_reduction,
        )
        self.key_encoder = key_encoder
        self.key_proj = KeyProjection(f16_c, self.key_dim)
        self.key_comp = nn.Conv2d(f16_c, self.value_dim, 3, padding=1)
        self.decoder = Decoder(2 * self.value_dim, f8_c, f4_c, self.config.decoder_channels,
                               upsample=SkipUpsampleBlock)

    # ---------------------------------------------------------------- encoders

    def encode_key(self, image: torch.Tensor) -> STCNQueryFeatures:
        """image: B x 3 x H x W (normalised, H, W multiples of 16) -> :class:`STCNQueryFeatures`."""
        f16, f8, f4 = self.key_encoder(channels_last_for_autocast(image))
        return STCNQueryFeatures(key=self.key_proj(f16), value=self.key_comp(f16), f16=f16,
                                 f8=f8, f4=f4)

    def with_decoder_skips(self, query: STCNQueryFeatures) -> STCNQueryFeatures:
        """The same features holding the decoder's skip-branch outputs instead of f8 / f4.

        The skip branches depend only on the frame, so a caller that decodes a frame more than
        once (an inference cache) computes them here once; :meth:`segment` then skips them and
        gives the same logits. Features that already hold them are returned as they are.
        """
        if query.skips is not None:
            return query
        return STCNQueryFeatures(key=query.key, value=query.value, f16=query.f16, f8=None,
                                 f4=None, skips=self.decoder.skips(query.f8, query.f4))

    def encode_value(
        self,
        image: torch.Tensor,
        f16: torch.Tensor,
        masks: torch.Tensor,
        others: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Memory values of K objects in B frames.

        image: B x 3 x H x W (normalised; batch 1 is shared by all rows of ``masks``);
        f16: B x C16 x h x w, the key encoder's f16 of the same frames (``encode_key(...).f16``);
        masks: B x K x H x W object probabilities in [0, 1];
        others: B x K x H x W, for each object the sum of the other objects' probabilities
        (None = formed from ``masks`` as the direct sum, :func:`model.propagation.others_masks`;
        must be None for a single-object network).
        Returns B x K x CV x h x w.
        """
        if masks.dim() != 4:
            raise ValueError(f"masks must be B x K x H x W, got {tuple(masks.shape)}")
        b, k = masks.shape[:2]
        for name, t in (("image", image), ("f16", f16)):
            if t.dim() != 4 or t.shape[0] not in (1, b):
                raise ValueError(f"{name} must be 1 or {b} x C x H x W, got {tuple(t.shape)}")
        image = image.expand(b, *image.shape[1:])
        f16 = f16.expand(b, *f16.shape[1:])
        planes = [_repeat_rows(image, k), masks.reshape(b * k, 1, *masks.shape[2:])]
        if self.single_object:
            if others is not None:
                raise ValueError("a single-object network takes no 'others' mask")
        else:
            if others is None:
                others = others_masks(masks.transpose(0, 1)).transpose(0, 1)
            if others.shape != masks.shape:
                raise ValueError(f"others {tuple(others.shape)} must match masks "
                                 f"{tuple(masks.shape)}")
            planes.append(others.reshape(b * k, 1, *others.shape[2:]))
        value = self.value_encoder(channels_last_for_autocast(torch.cat(planes, dim=1)),
                                   _repeat_rows(f16, k))
        return value.view(b, k, *value.shape[1:])

    # ---------------------------------------------------------------- memory read and decoding

    def read(
        self,
        query_key: torch.Tensor,
        mem_key: torch.Tensor,
        mem_value: torch.Tensor,
        top_k: int | None = None,
        memory_budget: int | None = None,
    ) -> torch.Tensor:
        """Readout of K objects with one affinity per frame.

        query_key: B x CK x h x w; mem_key: B x CK x T x h' x w' (or B x CK x N); mem_value:
        B x K x CV x T x h' x w' (or B x K x CV x N). A batch of 1 in the keys is broadcast.
        Returns B x K x CV x h x w.
        """
        if mem_value.dim() != mem_key.dim() + 1 or mem_key.dim() not in (3, 5):
            raise ValueError(
                "memory keys/values must be B x CK x T x h x w and B x K x CV x T x h x w (or "
                f"B x CK x N and B x K x CV x N), got {tuple(mem_key.shape)} and "
                f"{tuple(mem_value.shape)}")
        b, _, h, w = query_key.shape
        nb, k, cv = mem_value.shape[:3]
        # objects -> channels; a view for the inference memory bank, whose values are laid out
        # N x K x CV, so the top-k read gathers (K*CV)-wide rows without copying them
        values = mem_value.flatten(start_dim=3).reshape(nb, k * cv, -1)
        if top_k is None and k > 1:
            # the dense product reads several objects' values as one contiguous block, as it
            # always has (the layout of an operand can change the rounding of the product)
            values = values.contiguous()
        readout = read_memory(
            mem_key.flatten(start_dim=2),
            values,
            query_key.flatten(start_dim=2),
            top_k=top_k,
            max_elements=self.memory_budget if memory_budget is None else memory_budget,
            similarity=self.SIMILARITY,
        )
        return readout.view(readout.shape[0], k, cv, h, w)

    def segment(
        self,
        query: STCNQueryFeatures,
        mem_key: torch.Tensor,
        mem_value: torch.Tensor,
        top_k: int | None = None,
        memory_budget: int | None = None,
    ) -> torch.Tensor:
        """Segment B query frames from memory: logits B x K x H x W.

        query: features of B frames (batch 1 is expanded to the memory's batch); with the
        decoder's skip outputs (:meth:`with_decoder_skips`) the skip branches are not run again;
        mem_key: B x CK x T x h x w (or B x CK x N, N = T*h*w frame-major);
        mem_value: B x K x CV x T x h x w (or B x K x CV x N).
        top_k: keep the top-k affinities per query position (None = full softmax, training;
        :data:`STCN_TOP_K` at inference).
        memory_budget: affinity elements per chunk of this read (None = ``self.memory_budget``).
        The affinity is computed once per frame; every object reads its values with it.
        """
        batch = max(query.batch_size, mem_key.shape[0], mem_value.shape[0])
        query = query.expand(batch)
        readout = self.read(query.key, mem_key, mem_value, top_k, memory_budget)
        k = readout.shape[1]
        x = channels_last_for_autocast(
            torch.cat([readout.flatten(0, 1), _repeat_rows(query.value, k)], dim=1))
        if batch == 1:
            # one frame: the skip branches (skip_conv on f8 / f4) run once for all objects and
            # their sum with the upsampled object features broadcasts over the objects, as in
            # the original; repeating f8 / f4 would run them once per object
            logits = self.decoder(x, query.f8, query.f4, skips=query.skips)
        elif query.skips is not None:
            logits = self.decoder(x, None, None,
                                  skips=tuple(_repeat_rows(s, k) for s in query.skips))
        else:
            logits = self.decoder(x, _repeat_rows(query.f8, k), _repeat_rows(query.f4, k))
        return logits.view(batch, k, *logits.shape[-2:])

    def attention_transfer(
        self,
        mem_key: torch.Tensor,
        query_key: torch.Tensor,
        diff: torch.Tensor,
        memory_budget: int | None = None,
    ) -> torch.Tensor:
        """Align difference maps of an interacted frame to a target frame (fusion input A).

        mem_key: B x CK x h x w key of the interacted frame; query_key: 1 or B x CK x h x w key
        of the target frame; diff: B x C x H x W maps on the interacted frame (e.g. D+ and D- of
        every channel), H = 16h. One W = softmax over memory positions of the L2 affinity (no
        top-k) serves all C channels: the maps are area-downsampled to h x w, multiplied as
        d W and upsampled bilinearly to H x W. Returns B x C x H x W (convex combinations of
        the downsampled maps).
        """
        return align_differences(
            mem_key, query_key, diff,
            self.memory_budget if memory_budget is None else memory_budget)


def align_differences(
    mem_key: torch.Tensor,
    query_key: torch.Tensor,
    diff: torch.Tensor,
    memory_budget: int | None = None,
) -> torch.Tensor:
    """:meth:`STCNNetwork.attention_transfer` as a function of the keys (also used by the
    fusion-training attention reader, which holds only the key encoder and ``key_proj``)."""
    b, _, h, w = mem_key.shape
    if query_key.shape[0] not in (1, b) or diff.shape[0] != b:
        raise ValueError(f"batch sizes differ: mem_key {b}, query_key {query_key.shape[0]}, "
                         f"diff {diff.shape[0]}")
    small = F.interpolate(diff, size=(h, w), mode="area")  # B x C x h x w
    aligned = read_memory(
        mem_key.flatten(start_dim=2), small.flatten(start_dim=2),
        query_key.expand(b, *query_key.shape[1:]).flatten(start_dim=2), top_k=None,
        max_elements=memory_budget, similarity=STCNNetwork.SIMILARITY,
    ).view(b, -1, h, w)
    return F.interpolate(aligned, size=diff.shape[-2:], mode="bilinear", align_corners=False)
