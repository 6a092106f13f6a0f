"""Unrolled training forwards of the three modules and their losses.

The networks expose named stages (``encode_query`` / ``encode_memory`` / ``segment`` ...); the
wrappers here unroll them the way the reference training code does, and return the
**aggregation logits** (REFERENCE.md 0.3: log-odds of the clamped per-object probabilities, background
first) that the bootstrapped cross-entropy is computed on (REFERENCE.md f.1).

* :class:`S2MTrainWrapper` (REFERENCE.md f.4): [image, existing mask, positive, negative] -> one logit
  -> 2-channel (bg, object) aggregation logits. Trains in train mode (SyncBatchNorm under DDP).
* :class:`PropagationTrainWrapper` (REFERENCE.md f.2): three frames; frame 0 is memorised with its
  ground-truth soft masks, frame 1 segmented (full softmax), memorised with its predicted,
  aggregated and **not detached** probabilities, frame 2 segmented from frames 0 and 1.
  Multi-object: two object slots with a selector; single-object (stage 0): 4-channel memory
  encoder. The network stays in eval mode for BatchNorm (:func:`freeze_bn`), BN affine
  parameters still train.
* :class:`AttentionReader` (REFERENCE.md c.3): the frozen encoders and key projections of a trained
  propagation network; aligns the differences D+ / D- of the second reference frame to the
  target frame with a full-softmax affinity (:meth:`PropagationNetwork.attention_transfer`).
* :class:`FusionTrainWrapper` (REFERENCE.md c.4): FusionNet per object, selector, wbg aggregation.
* :class:`STCNTrainWrapper` / :class:`STCNAttentionReader` (REFERENCE.md j): the same two
  roles for the STCN propagation network (:mod:`model.stcn`): one key per frame shared by the
  objects, values per object; the reader holds only the frozen key encoder and ``key_proj`` and
  aligns the differences of both objects with one affinity.

Images given to the wrappers are ImageNet-normalised (``util.tensor_util.normalize_image``)
and their H, W are multiples of 16.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.nn as nn

from model.aggregate import aggregate
from model.checkpoint import drop_keys, load_propagation_weights, load_weights
from model.fusion import FusionNet
from model.losses import BootstrappedCE, compute_iou, per_sample_bootstrapped_ce
from model.propagation import (
    PropagationConfig,
    PropagationNetwork,
    QueryEncoder,
    QueryFeatures,
)
from model.s2m import S2M
from model.stcn import KeyProjection, STCNConfig, STCNNetwork, align_differences

logger = logging.getLogger(__name__)

__all__ = [
    "freeze_bn",
    "S2MTrainWrapper",
    "S2MOutput",
    "s2m_loss",
    "PropagationTrainWrapper",
    "PropagationOutput",
    "propagation_loss",
    "load_propagation_weights",
    "AttentionReader",
    "FusionTrainWrapper",
    "FusionOutput",
    "fusion_loss",
    "STCNTrainWrapper",
    "STCNAttentionReader",
]

def freeze_bn(module: nn.Module) -> int:
    """Put every BatchNorm layer of ``module`` in eval mode (running statistics frozen).

    Affine parameters keep ``requires_grad`` and still train. Call after ``module.train()``
    (which would switch them back). Returns the number of BatchNorm layers frozen.
    """
    n = 0
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            n += 1
    return n


def _object_probs(logits: torch.Tensor, batch: int, selector: torch.Tensor | None
                  ) -> torch.Tensor:
    """Per-object sigmoid probabilities: logits (K*B) x 1 x H x W, object-major ->
    B x K x H x W (float32), multiplied by the selector (B x K) when given."""
    k = logits.shape[0] // batch
    prob = torch.sigmoid(logits.float()).view(k, batch, *logits.shape[-2:]).transpose(0, 1)
    if selector is not None:
        prob = prob * selector.to(prob.dtype)[:, :, None, None]
    return prob


def _repeat_query(q: QueryFeatures, n: int) -> QueryFeatures:
    """Query features of B frames repeated for n object slots (object-major, n*B rows)."""
    if n == 1:
        return q
    return QueryFeatures(*(torch.cat([t] * n, dim=0) for t in (q.f16, q.f8, q.f4, q.key,
                                                                 q.value)))


# ============================================================================ S2M


@dataclass
class S2MOutput:
    """logits: B x 1 x H x W raw network output; agg_logits: B x 2 x H x W aggregation logits
    (bg, object); prob: B x 2 x H x W aggregated probabilities."""

    logits: torch.Tensor
    agg_logits: torch.Tensor
    prob: torch.Tensor


class S2MTrainWrapper(nn.Module):
    """S2M training forward (REFERENCE.md f.4)."""

    def __init__(self, net: S2M):
        super().__init__()
        self.net = net

    def train_mode(self) -> None:
        """S2M trains with BatchNorm in train mode."""
        self.train()

    def forward(self, image: torch.Tensor, prev_mask: torch.Tensor, pos: torch.Tensor,
                neg: torch.Tensor) -> S2MOutput:
        """image: B x 3 x H x W normalised; prev_mask / pos / neg: B x 1 x H x W in {0, 1}."""
        logits = self.net(torch.cat([image, prev_mask, pos, neg], dim=1))
        prob = torch.sigmoid(logits.float())
        agg_logits, agg_prob = aggregate(prob, dim=1, return_logits=True)
        return S2MOutput(logits=logits, agg_logits=agg_logits, prob=agg_prob)


def s2m_loss(criterion: BootstrappedCE, out: S2MOutput, cls_gt: torch.Tensor, it: int
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
    """Bootstrapped CE over the whole batch on the 2-channel aggregation logits.

    cls_gt: B x H x W int64 (0/1). Returns (loss, {"p", "iou"}).
    """
    loss, p = criterion(out.agg_logits, cls_gt, it)
    iou = compute_iou(out.agg_logits.argmax(dim=1) == 1, cls_gt == 1)
    return loss, {"p": p, "iou": iou}


# ============================================================================ propagation


@dataclass
class PropagationOutput:
    """Aggregation logits (B x C x H x W, C = 2 single-object / 3 with two slots) and
    aggregated probabilities (same shape) of frames 1 and 2."""

    logits: tuple[torch.Tensor, torch.Tensor]
    prob: tuple[torch.Tensor, torch.Tensor]


class PropagationTrainWrapper(nn.Module):
    """Three-frame unrolled propagation forward (REFERENCE.md f.2).

    Single-object networks (``net.single_object``, stage 0) use one object slot and the
    4-channel memory encoder; multi-object networks use two slots, the second one zeroed by
    the selector when the clip has a single object.
    """

    def __init__(self, net: PropagationNetwork, batchnorm: str = "frozen"):
        super().__init__()
        if batchnorm not in ("frozen", "train"):
            raise ValueError(f"batchnorm must be 'frozen' or 'train', got {batchnorm!r}")
        self.net = net
        self.batchnorm = batchnorm

    def train_mode(self) -> None:
        """Training mode. With ``batchnorm='frozen'`` (the reference recipe, whose encoders
        start from ImageNet weights) BatchNorm keeps its running statistics: the reference
        keeps the whole network in eval mode, and with no dropout that is the same. With
        ``'train'`` BatchNorm normalises with batch statistics, which a randomly initialised
        network needs to train at all in a few thousand iterations."""
        self.train()
        if self.batchnorm == "frozen":
            freeze_bn(self.net)

    def forward(self, frames: torch.Tensor, gt: torch.Tensor, sec_gt: torch.Tensor | None = None,
                selector: torch.Tensor | None = None) -> PropagationOutput:
        """frames: B x 3 x 3 x H x W normalised; gt: B x 3 x 1 x H x W target-object masks in
        [0, 1] (only frame 0 is used as input); sec_gt: B x 3 x 1 x H x W second object
        (multi-object networks; None = no second object); selector: B x 2 ([1, 1] or [1, 0]).
        """
        b, t = frames.shape[:2]
        if t != 3:
            raise ValueError(f"expected 3 frames per clip, got {t}")
        single = self.net.single_object
        # one query encoder pass over frames 1 and 2 of every clip
        q = self.net.encode_query(frames[:, 1:].flatten(0, 1))  # (B*2) x ...
        q1 = QueryFeatures(*(x.view(b, 2, *x.shape[1:])[:, 0]
                             for x in (q.f16, q.f8, q.f4, q.key, q.value)))
        q2 = QueryFeatures(*(x.view(b, 2, *x.shape[1:])[:, 1]
                             for x in (q.f16, q.f8, q.f4, q.key, q.value)))

        if single:
            k0, v0 = self.net.encode_memory(frames[:, 0], gt[:, 0])
            n_obj = 1
            sel = None
        else:
            if sec_gt is None:
                sec_gt = torch.zeros_like(gt)
            if selector is None:
                selector = gt.new_tensor([1.0, 0.0]).expand(b, 2)
            sel = selector
            img0 = torch.cat([frames[:, 0]] * 2, dim=0)
            k0, v0 = self.net.encode_memory(img0, torch.cat([gt[:, 0], sec_gt[:, 0]], dim=0),
                                            torch.cat([sec_gt[:, 0], gt[:, 0]], dim=0))
            n_obj = 2

        # frame 1 from frame 0 (full softmax)
        logits1 = self.net.segment(_repeat_query(q1, n_obj), k0.unsqueeze(2), v0.unsqueeze(2))
        agg_logits1, agg1 = aggregate(_object_probs(logits1, b, sel), dim=1, return_logits=True)

        # memorise frame 1 with its own (aggregated, not detached) prediction
        if single:
            k1, v1 = self.net.encode_memory(frames[:, 1], agg1[:, 1:2])
        else:
            img1 = torch.cat([frames[:, 1]] * 2, dim=0)
            masks = torch.cat([agg1[:, 1:2], agg1[:, 2:3]], dim=0)
            others = torch.cat([agg1[:, 2:3], agg1[:, 1:2]], dim=0)
            k1, v1 = self.net.encode_memory(img1, masks, others)

        # frame 2 from frames 0 and 1
        mem_k = torch.stack([k0, k1], dim=2)  # (K*B) x CK x 2 x h x w
        mem_v = torch.stack([v0, v1], dim=2)
        logits2 = self.net.segment(_repeat_query(q2, n_obj), mem_k, mem_v)
        agg_logits2, agg2 = aggregate(_object_probs(logits2, b, sel), dim=1, return_logits=True)
        return PropagationOutput(logits=(agg_logits1, agg_logits2), prob=(agg1, agg2))


def propagation_loss(criterion: BootstrappedCE, out: PropagationOutput, cls_gt: torch.Tensor,
                     it: int, selector: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
    """Per-sample bootstrapped CE of frames 1 and 2 (summed), REFERENCE.md f.1 / f.2.

    cls_gt: B x 3 x H x W int64 (0 bg, 1 target, 2 second object). Returns (loss, scalars
    {"loss_f1", "loss_f2", "p", "iou"}), IoU of the target object over frames 1 and 2.
    """
    sel = None
    if out.logits[0].shape[1] > 2:
        b = out.logits[0].shape[0]
        sel = selector if selector is not None else cls_gt.new_tensor([1.0, 0.0]).expand(b, 2)
    total = out.logits[0].new_zeros(())
    scalars: dict[str, torch.Tensor | float] = {}
    ious = []
    p = 1.0
    for i, logits in enumerate(out.logits, start=1):
        loss, p = per_sample_bootstrapped_ce(criterion, logits, cls_gt[:, i], it, sel)
        total = total + loss
        scalars[f"loss_f{i}"] = loss.detach()
        ious.append(compute_iou(logits.argmax(dim=1) == 1, cls_gt[:, i] == 1))
    scalars["p"] = p
    scalars["iou"] = torch.stack(ious).mean()
    return total, scalars


# ============================================================================ fusion


class AttentionReader(PropagationNetwork):
    """Frozen propagation encoders used to align interaction differences (REFERENCE.md c.3).

    Holds ``mask_rgb_encoder``, ``rgb_encoder``, ``kv_m_f16`` and ``kv_q_f16`` of a
    multi-object :class:`PropagationNetwork` (no decoder); every parameter has
    ``requires_grad=False`` and the module stays in eval mode (:meth:`train` is not
    overridden: the fusion wrapper calls ``reader.eval()`` explicitly).
    """

    def __init__(self, config: PropagationConfig | None = None):
        super().__init__(config, single_object=False)
        del self.decoder
        self.requires_grad_(False)
        self.eval()

    def segment(self, *args, **kwargs):  # noqa: D102 - no decoder here
        raise RuntimeError("AttentionReader has no decoder; it only computes attention maps")

    def load_from_propagation(self, path: str | os.PathLike) -> None:
        """Load the encoders / projections from a multi-object propagation checkpoint: the one
        loader with its ``decoder.*`` tensors dropped; everything else must match exactly
        (:class:`model.checkpoint.CheckpointMismatchError` otherwise, e.g. for the 4-channel
        stem of a single-object file: the reader needs the "others" channel)."""
        load_weights(self, path, adapt=drop_keys("decoder."))

    @torch.no_grad()
    def forward(self, ref_image: torch.Tensor, before: torch.Tensor, after: torch.Tensor,
                target_image: torch.Tensor) -> torch.Tensor:
        """Aligned differences [A+, A-] of two objects.

        ref_image: B x 3 x H x W (normalised) second reference frame; before / after:
        B x 2 x H x W masks of the two objects at that frame before (propagated) and after
        (ground truth) the interaction; target_image: B x 3 x H x W (normalised).
        Returns B x 2 (objects) x 2 ([A+, A-]) x H x W in [0, 1].
        """
        b = ref_image.shape[0]
        diff = after - before
        d_pos, d_neg = diff.clamp(0, 1), (-diff).clamp(0, 1)
        # object-major rows: object 1 of every sample, then object 2
        img = torch.cat([ref_image, ref_image], dim=0)
        mask = torch.cat([after[:, 0:1], after[:, 1:2]], dim=0)
        others = torch.cat([after[:, 1:2], after[:, 0:1]], dim=0)
        mem_key, _ = self.encode_memory(img, mask, others)  # 2B x CK x h x w
        f16 = self.rgb_encoder(target_image)[0]
        q_key = self.kv_q_f16.key_proj(f16)  # B x CK x h x w
        d = torch.cat([torch.stack([d_pos[:, 0], d_neg[:, 0]], dim=1),
                       torch.stack([d_pos[:, 1], d_neg[:, 1]], dim=1)], dim=0)  # 2B x 2 x H x W
        attn = self.attention_transfer(mem_key, torch.cat([q_key, q_key], dim=0), d)
        return attn.view(2, b, 2, *attn.shape[-2:]).transpose(0, 1)


@dataclass
class FusionOutput:
    """agg_logits: B x 3 x H x W (bg, o1, o2); prob: B x 3 x H x W; attn: B x 2 x 2 x H x W."""

    agg_logits: torch.Tensor
    prob: torch.Tensor
    attn: torch.Tensor


class FusionTrainWrapper(nn.Module):
    """Fusion training forward (REFERENCE.md c.4) with a frozen :class:`AttentionReader` (or
    :class:`STCNAttentionReader`)."""

    def __init__(self, fusion: FusionNet, reader: AttentionReader | STCNAttentionReader):
        super().__init__()
        self.fusion = fusion
        self.reader = reader
        self.reader.requires_grad_(False)

    def train_mode(self) -> None:
        """FusionNet in train mode (it has no BatchNorm); the reader always in eval mode."""
        self.fusion.train()
        self.reader.eval()

    def forward(self, image: torch.Tensor, ref_image: torch.Tensor, seg1: torch.Tensor,
                seg2: torch.Tensor, before: torch.Tensor, after: torch.Tensor,
                dist: torch.Tensor, selector: torch.Tensor) -> FusionOutput:
        """image: B x 3 x H x W target frame (normalised); ref_image: B x 3 x H x W second
        reference frame; seg1 / seg2: B x 2 x H x W propagations from the first / second
        reference at the target (previous / current); before / after: B x 2 x H x W masks at
        the second reference; dist: B x 2 [n_c, n_r]; selector: B x 2."""
        b = image.shape[0]
        attn = self.reader(ref_image, before, after, image)  # B x 2 x 2 x H x W
        rows = lambda x: torch.cat([x[:, 0:1], x[:, 1:2]], dim=0)  # noqa: E731  B x 2 -> 2B x 1
        logits = self.fusion(torch.cat([image, image], dim=0), rows(seg1), rows(seg2),
                             torch.cat([attn[:, 0], attn[:, 1]], dim=0),
                             torch.cat([dist, dist], dim=0))  # 2B x 1 x H x W
        prob = _object_probs(logits, b, selector)
        agg_logits, agg = aggregate(prob, dim=1, return_logits=True)
        return FusionOutput(agg_logits=agg_logits, prob=agg, attn=attn)


def fusion_loss(criterion: BootstrappedCE, out: FusionOutput, cls_gt: torch.Tensor, it: int,
                selector: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
    """Per-sample bootstrapped CE on the 3 aggregation logits (REFERENCE.md f.3).

    cls_gt: B x H x W int64 (0/1/2). Returns (loss, {"p", "iou"}).
    """
    loss, p = per_sample_bootstrapped_ce(criterion, out.agg_logits, cls_gt, it, selector)
    iou = compute_iou(out.agg_logits.argmax(dim=1) == 1, cls_gt == 1)
    return loss, {"p": p, "iou": iou}


# ============================================================================ STCN


class STCNTrainWrapper(PropagationTrainWrapper):
    """Three-frame unrolled forward of the STCN network (REFERENCE.md j.1, f.2).

    All three frames go through the key encoder once (keys do not depend on masks, so a memory
    frame's key is its query key). Frame 0 is memorised with its ground-truth soft masks,
    frame 1 segmented (full softmax, one affinity for all objects), memorised with its
    predicted, aggregated and **not detached** probabilities, frame 2 segmented from frames 0
    and 1. Objects, selector, BatchNorm modes and the output are those of
    :class:`PropagationTrainWrapper` (same :func:`propagation_loss`).
    """

    def __init__(self, net: STCNNetwork, batchnorm: str = "frozen"):
        super().__init__(net, batchnorm)  # type: ignore[arg-type]

    def forward(self, frames: torch.Tensor, gt: torch.Tensor, sec_gt: torch.Tensor | None = None,
                selector: torch.Tensor | None = None) -> PropagationOutput:
        """frames: B x 3 x 3 x H x W normalised; gt: B x 3 x 1 x H x W target-object masks in
        [0, 1] (only frame 0 is used as input); sec_gt: B x 3 x 1 x H x W second object
        (multi-object networks; None = no second object); selector: B x 2 ([1, 1] or [1, 0]).
        """
        b, t = frames.shape[:2]
        if t != 3:
            raise ValueError(f"expected 3 frames per clip, got {t}")
        net = self.net
        feats = net.encode_key(frames.flatten(0, 1))  # (B*3) x ...
        f0, f1, f2 = (feats.map(lambda x, i=i: x.view(b, 3, *x.shape[1:])[:, i])
                      for i in range(3))

        if net.single_object:
            masks0 = gt[:, 0]  # B x 1 x H x W
            sel = None
        else:
            if sec_gt is None:
                sec_gt = torch.zeros_like(gt)
            if selector is None:
                selector = gt.new_tensor([1.0, 0.0]).expand(b, 2)
            sel = selector
            masks0 = torch.cat([gt[:, 0], sec_gt[:, 0]], dim=1)  # B x 2 x H x W

        def aggregated(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            prob = torch.sigmoid(logits.float())  # B x K x H x W
            if sel is not None:
                prob = prob * sel.to(prob.dtype)[:, :, None, None]
            return aggregate(prob, dim=1, return_logits=True)

        # frame 1 from frame 0 (full softmax); the others masks are the direct sums
        v0 = net.encode_value(frames[:, 0], f0.f16, masks0)  # B x K x CV x h x w
        agg_logits1, agg1 = aggregated(net.segment(f1, f0.key.unsqueeze(2), v0.unsqueeze(3)))

        # memorise frame 1 with its own (aggregated, not detached) prediction
        v1 = net.encode_value(frames[:, 1], f1.f16, agg1[:, 1:])

        # frame 2 from frames 0 and 1
        mem_k = torch.stack([f0.key, f1.key], dim=2)  # B x CK x 2 x h x w
        mem_v = torch.stack([v0, v1], dim=3)  # B x K x CV x 2 x h x w
        agg_logits2, agg2 = aggregated(net.segment(f2, mem_k, mem_v))
        return PropagationOutput(logits=(agg_logits1, agg_logits2), prob=(agg1, agg2))


class STCNAttentionReader(nn.Module):
    """Frozen STCN key encoder + ``key_proj`` aligning interaction differences (REFERENCE.md
    j.2): one L2 affinity between the second reference frame and the target frame (full
    softmax over memory positions) serves both objects and both signs.

    Same call as :class:`AttentionReader`; parameters have ``requires_grad=False`` and the
    module stays in eval mode (the fusion wrapper calls ``reader.eval()``).
    """

    KEPT = ("key_encoder.", "key_proj.")
    IGNORED = ("value_encoder.", "key_comp.", "decoder.")

    def __init__(self, config: STCNConfig | None = None):
        super().__init__()
        self.config = config or STCNConfig()
        self.memory_budget = self.config.memory_budget
        self.key_encoder = QueryEncoder(self.config.key_backbone)
        self.key_proj = KeyProjection(self.key_encoder.out_channels[-1], self.config.key_dim)
        self.requires_grad_(False)
        self.eval()

    def load_from_propagation(self, path: str | os.PathLike) -> None:
        """Load ``key_encoder.*`` and ``key_proj.*`` from an STCN propagation checkpoint
        (single- or multi-object): the one loader with the value encoder, ``key_comp`` and
        decoder dropped. Any other difference raises
        :class:`model.checkpoint.CheckpointMismatchError`."""
        load_weights(self, path, adapt=drop_keys(*self.IGNORED))

    @torch.no_grad()
    def forward(self, ref_image: torch.Tensor, before: torch.Tensor, after: torch.Tensor,
                target_image: torch.Tensor) -> torch.Tensor:
        """Aligned differences [A+, A-] of two objects.

        ref_image: B x 3 x H x W (normalised) second reference frame; before / after:
        B x 2 x H x W masks of the two objects at that frame before (propagated) and after
        (ground truth) the interaction; target_image: B x 3 x H x W (normalised).
        Returns B x 2 (objects) x 2 ([A+, A-]) x H x W in [0, 1].
        """
        b = ref_image.shape[0]
        diff = after - before
        keys = self.key_proj(self.key_encoder(torch.cat([ref_image, target_image], dim=0))[0])
        # B x 4 x H x W: [D+ object 1, D- object 1, D+ object 2, D- object 2], one W for all
        d = torch.stack([diff.clamp(0, 1), (-diff).clamp(0, 1)], dim=2).flatten(1, 2)
        attn = align_differences(keys[:b], keys[b:], d, self.memory_budget)
        return attn.view(b, 2, 2, *attn.shape[-2:])
