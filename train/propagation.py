"""Propagation training (REFERENCE.md f.2; STCN: j.1): the stage presets, the data recipe, the
initialisation, the training forwards and their loss, in the order a run uses them.
``train_prop.py`` is the entry point.

* **Stages** (:class:`PropTrainConfig`): ``s0`` static images as 3-frame clips, single-object
  network (4-channel memory encoder); ``s1`` BL30K; ``s2`` DAVIS + YouTubeVOS; ``s02`` stage 2
  right after stage 0. ``--arch stcn`` applies STCN's recipe to each stage
  (:meth:`PropTrainConfig.for_arch`).
* **Data** (:func:`build_dataset`, :func:`curriculum`): static clips
  (:class:`dataset.static_dataset.StaticClipDataset`) or video clips
  (:class:`dataset.vos_dataset.VOSClipDataset`), the max_jump curriculum set per epoch; or
  generated data with ``--data synthetic``.
* **Initialisation** (:func:`build_network`, :func:`load_imagenet`): ``--imagenet`` (and
  ``--imagenet-value`` for STCN's value encoder) and ``--load`` through the one loader; a
  single-object stage-0 file widens the mask-dependent stem to 5 channels
  (:func:`model.checkpoint.load_propagation_weights`).
* **Forwards and loss** (:class:`PropagationTrainWrapper`, :class:`STCNTrainWrapper`,
  :func:`propagation_loss`): three frames; frame 0 is memorised with its ground-truth soft
  masks, frame 1 segmented (full softmax), memorised with its predicted, aggregated and **not
  detached** probabilities, frame 2 segmented from frames 0 and 1; per-sample bootstrapped
  cross-entropy of frames 1 and 2 on the aggregation logits (REFERENCE.md 0.3, f.1).
  Multi-object: two object slots with a selector; single-object (stage 0): one. BatchNorm is
  frozen (the recipe) or trains (``--batchnorm train``, the lite default).

Images given to the wrappers are ImageNet-normalised (``util.tensor_util.normalize_image``)
and their H, W are multiples of 16.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn as nn
from torch.utils.data import ConcatDataset, Dataset

from dataset.static_dataset import StaticClipDataset
from dataset.vos_dataset import VOSClipDataset, max_jump_for_epoch
from model.aggregate import aggregate
from model.checkpoint import imagenet_resnet, keep_network, load_propagation_weights, load_weights
from model.losses import BootstrappedCE, compute_iou, per_sample_bootstrapped_ce
from model.presets import PROPAGATION_ARCHS, PROPAGATION_KINDS, build_propagation, get_preset
from model.propagation import PropagationNetwork, QueryEncoder, QueryFeatures
from model.stcn import STCNNetwork
from train.common import (
    STATIC_REPEATS,
    STATIC_SUBDIRS,
    TrainConfig,
    freeze_bn,
    object_probs,
    require_root,
    synthetic_static_root,
    synthetic_video_root,
)
from util.config import ConfigError, opt
from util.logger import grid_from_rows, overlay
from util.tensor_util import normalize_image
from util.trainer import (
    DataStream,
    DistInfo,
    RunContext,
    StepOutput,
    TrainingParts,
    TrainTask,
    iter_datasets,
    run_training,
    sync_batchnorm,
)

logger = logging.getLogger(__name__)

__all__ = ["PropTrainConfig", "PropagationOutput", "PropagationTask", "PropagationTrainWrapper",
           "STCNTrainWrapper", "build_dataset", "build_network", "curriculum", "load_imagenet",
           "main", "propagation_loss"]


# ============================================================================ stage presets


@dataclass
class PropTrainConfig(TrainConfig):
    """Propagation training (REFERENCE.md f.2): stages s0 (static), s1 (BL30K), s2 (DAVIS + YouTubeVOS),
    s02 (s2 after s0, 300K iterations). ``--arch stcn`` trains the STCN network with its recipe
    (:meth:`for_arch`)."""

    arch: str = opt("mivos", "propagation architecture: 'mivos' (MiVOS's STM-style network, "
                    "checkpoint kind 'propagation') or 'stcn' (shared key encoder, L2 affinity; "
                    "kind 'propagation-stcn'). 'stcn' also selects the STCN recipe: s0 batch 8, "
                    "300K iterations, LR step 150K; s1 500K / 400K; s2 (after s1) 300K / 250K; "
                    "s02 (after s0) 150K / 125K; AMP auto; checkpoints stcn_<stage>",
                    choices=PROPAGATION_ARCHS)
    single_object: bool = opt(False, "single-object network with a 4-channel memory encoder "
                              "(stage s0). Its weights are checked with "
                              "'python -m model.checkpoint --kind propagation --single-object'")
    static_roots: tuple[str, ...] = opt((), "s0: static image/mask dataset folders; default "
                                        "<data-root>/static/{fss, DUTS-TR, DUTS-TE, ecssd, "
                                        "BIG_small, HRSOD_small}", metavar="DIR")
    static_repeats: tuple[int, ...] = opt((), "s0: repeat factor of each static root (default 1, "
                                          "BIG and HRSOD 5)", metavar="N")
    bl30k_root: str | None = opt(None, "s1: BL30K root (JPEGImages/<video>, Annotations/<video>);"
                                 " default <data-root>/BL30K", metavar="DIR")
    davis_root: str | None = opt(None, "s2: DAVIS 2017 trainval root (JPEGImages/480p, "
                                 "Annotations/480p, ImageSets/2017/train.txt); default "
                                 "<data-root>/DAVIS/2017/trainval", metavar="DIR")
    davis_repeat: int = opt(5, "s2: the DAVIS train videos are repeated this many times")
    youtube_root: str | None = opt(None, "s2: YouTubeVOS train root resized to 480p "
                                   "(JPEGImages, Annotations); default "
                                   "<data-root>/YouTube/train_480p", metavar="DIR")
    use_youtube: bool = opt(True, "s2: include YouTubeVOS (--no-use-youtube: DAVIS only; "
                            "always off with --data synthetic)")
    youtube_jump_divisor: int = opt(5, "s2: max_jump is divided by this for YouTubeVOS (its "
                                    "frames are every 5th frame)")
    curriculum_fractions: tuple[float, ...] = opt(
        (), "max_jump curriculum: fractions of the epochs at which the next value of "
        "--curriculum-values starts (empty: constant max_jump)", metavar="F")
    curriculum_values: tuple[int, ...] = opt((5, 10, 15, 20, 25, 5), "max_jump curriculum "
                                             "values (one more than the fractions)", metavar="J")
    max_tries: int = opt(5, "video clips: attempts to find a usable object before using empty "
                         "masks")
    crop_scale: tuple[float, ...] = opt((), "video clips: RandomResizedCrop area range MIN MAX "
                                        "as fractions of the frame (empty: the recipe's "
                                        "0.36-1.0, BL30K 0.25-1.0). With crops much smaller "
                                        "than the frames (e.g. lite crops of 96 on 240-high "
                                        "frames) the recipe's range shrinks objects about 3x "
                                        "below their size at inference; a range of about "
                                        "(S / H)^2 x (0.6, 1.5) keeps them near it",
                                        metavar="F")
    batchnorm: str = opt("frozen", "BatchNorm during training: 'frozen' keeps every BN layer in "
                         "eval mode (running statistics fixed, affine parameters train), as the "
                         "reference recipe does for its ImageNet-initialised encoders; 'train' "
                         "uses batch statistics, which a randomly initialised network needs "
                         "(default of --preset lite)", choices=("frozen", "train"))
    sync_bn: bool = opt(True, "with --batchnorm train: SyncBatchNorm under DDP (CUDA only; "
                        "per-process BatchNorm on CPU)")
    imagenet_value: str | None = opt(None, "--arch stcn: local torchvision-format ImageNet "
                                     "ResNet-18 state dict for the value encoder (--imagenet "
                                     "initialises the key encoder; it serves both when their "
                                     "depths are equal, as with --preset lite)", metavar="FILE")

    STAGES: ClassVar[dict[str, str]] = {"s0": "s0", "s1": "s1", "s2": "s2", "s02": "s02"}
    DEFAULT_STAGE: ClassVar[str] = "s0"
    VARIANTS: ClassVar[dict[str, tuple[str, ...]]] = {"preset": ("lite",), "arch": ("stcn",)}

    @classmethod
    def _base(cls, **kw: Any) -> PropTrainConfig:
        common = dict(lr=1e-5, lr_gamma=0.1, weight_decay=1e-7, start_warm=20_000,
                      end_warm=70_000, crop_size=384, save_interval=50_000)
        common.update(kw)
        return cls(**common)

    @classmethod
    def s0(cls) -> PropTrainConfig:
        """Static-image pre-training: single object (4-channel memory encoder), batch 7,
        300K iterations, LR steps [250K]."""
        return cls._base(stage="s0", name="prop_s0", single_object=True, batch_size=7,
                         iterations=300_000, lr_steps=(250_000,))

    @classmethod
    def s1(cls) -> PropTrainConfig:
        """BL30K: two objects, batch 4, 500K iterations, LR steps [450K], curriculum switches at
        10/20/30/40/80 % of the epochs."""
        return cls._base(stage="s1", name="prop_s1", batch_size=4, iterations=500_000,
                         lr_steps=(450_000,), curriculum_fractions=(0.1, 0.2, 0.3, 0.4, 0.8))

    @classmethod
    def s2(cls) -> PropTrainConfig:
        """DAVIS + YouTubeVOS: two objects, batch 4, 150K iterations, LR steps [125K],
        curriculum switches at 10/20/30/40/90 % of the epochs."""
        return cls._base(stage="s2", name="prop_s2", batch_size=4, iterations=150_000,
                         lr_steps=(125_000,), curriculum_fractions=(0.1, 0.2, 0.3, 0.4, 0.9))

    @classmethod
    def s02(cls) -> PropTrainConfig:
        """Stage 2 directly after stage 0 (the "s02" model): 300K iterations. The LR step of
        this variant is not recorded; [250K] keeps stage 2's 5/6 position (unsure)."""
        return replace(cls.s2(), stage="s02", name="prop_s02", iterations=300_000,
                       lr_steps=(250_000,))

    #: STCN recipe per stage (REFERENCE.md j.1): batch, iterations, LR steps. STCN's stage 2
    #: ("main training after BL30K") is our s2, its stage 3 ("after static images only") s02.
    STCN_STAGES: ClassVar[dict[str, tuple[int, int, tuple[int, ...]]]] = {
        "s0": (8, 300_000, (150_000,)),
        "s1": (4, 500_000, (400_000,)),
        "s2": (4, 300_000, (250_000,)),
        "s02": (4, 150_000, (125_000,)),
    }

    def for_arch(self, arch: str | None) -> PropTrainConfig:
        """``arch="stcn"``: the STCN recipe of this stage (REFERENCE.md j.1): batch, iterations
        and LR step of :data:`STCN_STAGES`, AMP auto, checkpoint names ``stcn_<stage>``; LR
        1e-5, warm-up, data and curriculum stay those of Mask-Propagation."""
        if arch in (None, "mivos"):
            return self
        if arch != "stcn":
            raise ConfigError(f"--arch must be one of {', '.join(PROPAGATION_ARCHS)}, got "
                              f"{arch!r}")
        batch, iterations, steps = self.STCN_STAGES[self.stage]
        return replace(self, arch="stcn", name=f"stcn_{self.stage}", batch_size=batch,
                       iterations=iterations, lr_steps=steps, amp="auto")

    def lite(self) -> PropTrainConfig:
        return replace(super().lite(), crop_size=96, batch_size=4, batchnorm="train")

    def validate(self) -> None:
        super().validate()
        if self.imagenet_value and self.arch != "stcn":
            raise ConfigError("--imagenet-value only applies to --arch stcn (the STCN value "
                              "encoder)")
        if self.curriculum_fractions and (
                len(self.curriculum_values) != len(self.curriculum_fractions) + 1):
            raise ConfigError("--curriculum-values needs exactly one more value than "
                              "--curriculum-fractions")
        if self.stage == "s0" and not self.single_object:
            logger.warning("stage s0 with a multi-object network: frame 0 memorises no 'others'")
        if self.crop_scale and (len(self.crop_scale) != 2
                                or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1):
            raise ConfigError(f"--crop-scale needs MIN MAX with 0 < MIN <= MAX <= 1, got "
                              f"{list(self.crop_scale)}")
        if self.stage != "s0" and self.single_object:
            raise ConfigError("--single-object is only for stage s0 (static images)")


# ============================================================================ data


def build_dataset(cfg: PropTrainConfig, info: DistInfo) -> Dataset:
    """The training set of ``cfg.stage`` (see the module docstring)."""
    size, seed = cfg.crop_size, cfg.seed
    scale = tuple(cfg.crop_scale) or None  # None: the dataset's recipe default
    if cfg.stage == "s0":
        if cfg.data == "synthetic":
            roots = [synthetic_static_root(cfg.synthetic_root(), cfg.synthetic_static_count,
                                           cfg.synthetic_static_size, seed, info)]
            repeats = [1]
        elif cfg.static_roots:
            roots = [Path(r) for r in cfg.static_roots]
            repeats = list(cfg.static_repeats) or [1] * len(roots)
        else:
            base = require_root(cfg.real_root(None, "static"), "static image data",
                                "--static-roots")
            roots = [base / s for s in STATIC_SUBDIRS]
            repeats = list(cfg.static_repeats) or list(STATIC_REPEATS)
        return StaticClipDataset(roots, repeats, size=size, seed=seed)

    if cfg.data == "synthetic":
        root = synthetic_video_root(cfg.synthetic_root(), cfg.synthetic_preset, seed, info)
        return VOSClipDataset(root, subset=root / "ImageSets" / "2017" / "train.txt", size=size,
                              seed=seed, bl30k=cfg.stage == "s1", max_tries=cfg.max_tries,
                              scale=scale)
    if cfg.stage == "s1":
        root = require_root(cfg.real_root(cfg.bl30k_root, "BL30K"), "the BL30K root",
                            "--bl30k-root")
        return VOSClipDataset(root, size=size, seed=seed, bl30k=True, layout="plain",
                              max_tries=cfg.max_tries, scale=scale)
    davis = require_root(cfg.real_root(cfg.davis_root, "DAVIS/2017/trainval"), "the DAVIS root",
                         "--davis-root")
    parts = [VOSClipDataset(davis, subset=davis / "ImageSets" / "2017" / "train.txt", size=size,
                            seed=seed, repeat=cfg.davis_repeat, layout="davis",
                            max_tries=cfg.max_tries, scale=scale)]
    if cfg.use_youtube:
        yt = require_root(cfg.real_root(cfg.youtube_root, "YouTube/train_480p"),
                          "the YouTubeVOS root", "--youtube-root")
        parts.append(VOSClipDataset(yt, size=size, seed=seed + 1,
                                    jump_divisor=cfg.youtube_jump_divisor, layout="plain",
                                    max_tries=cfg.max_tries, scale=scale))
    return ConcatDataset(parts) if len(parts) > 1 else parts[0]


def curriculum(cfg: PropTrainConfig, data: DataStream) -> Callable[[int], None] | None:
    """``on_epoch`` callback setting ``max_jump`` of every video dataset (REFERENCE.md f.2)."""
    if not cfg.curriculum_fractions:
        return None
    total = data.epochs_for(cfg.iterations)

    def on_epoch(epoch: int) -> None:
        jump = max_jump_for_epoch(epoch, total, cfg.curriculum_fractions, cfg.curriculum_values)
        for ds in iter_datasets(data.dataset):
            if isinstance(ds, VOSClipDataset):
                if ds.max_jump != jump:
                    logger.info("epoch %d/%d: max_jump %d", epoch, total, jump)
                ds.max_jump = jump

    return on_epoch


# ============================================================================ initialisation


def load_imagenet(net: PropagationNetwork | STCNNetwork, key_file: str,
                  value_file: str | None = None) -> None:
    """Initialise the encoders from local torchvision-format ImageNet ResNet files: MiVOS's
    memory encoder (stem widened to the mask channels) and query encoder from ``key_file``;
    STCN's key encoder from ``key_file`` and value encoder (its ``fuser`` kept) from
    ``value_file`` (default ``key_file``)."""
    query = imagenet_resnet(rename=QueryEncoder.TORCHVISION_NAMES)
    if net.arch == "stcn":
        load_weights(net.key_encoder, key_file, adapt=query)
        load_weights(net.value_encoder, value_file or key_file,
                     adapt=[keep_network("fuser."), imagenet_resnet()])
    else:
        load_weights(net.mask_rgb_encoder, key_file, adapt=imagenet_resnet())
        load_weights(net.rgb_encoder, key_file, adapt=query)


def build_network(cfg: PropTrainConfig, ctx: RunContext) -> PropagationNetwork | STCNNetwork:
    """The ``--arch`` propagation network with the requested initialisation (skipped when
    resuming)."""
    net = build_propagation(cfg.preset, single_object=cfg.single_object, arch=cfg.arch)
    if ctx.resume_path is None:
        if cfg.arch == "stcn" and (cfg.imagenet or cfg.imagenet_value):
            widths = get_preset(cfg.preset).stcn
            value_file = cfg.imagenet_value
            if value_file is None and widths.value_backbone == widths.key_backbone:
                value_file = cfg.imagenet
            if not cfg.imagenet or not value_file:
                raise ConfigError(
                    f"--arch stcn --preset {cfg.preset}: --imagenet FILE initialises the key "
                    f"encoder ({widths.key_backbone}) and --imagenet-value FILE the value encoder "
                    f"({widths.value_backbone}); give both")
            load_imagenet(net, cfg.imagenet, value_file)
        elif cfg.imagenet:
            load_imagenet(net, cfg.imagenet)
        if cfg.load:
            load_propagation_weights(net, cfg.load)
    return net


# ============================================================================ forwards and loss


def repeat_query(q: QueryFeatures, n: int) -> QueryFeatures:
    """Query features of B frames repeated for n object slots (object-major, n*B rows)."""
    if n == 1:
        return q
    return QueryFeatures(*(torch.cat([t] * n, dim=0) for t in (q.f16, q.f8, q.f4, q.key,
                                                                 q.value)))


def clip_batch(frames: torch.Tensor) -> int:
    """The batch size of B x 3 x 3 x H x W training clips (both training forwards take three
    frames per clip)."""
    if frames.shape[1] != 3:
        raise ValueError(f"expected 3 frames per clip, got {frames.shape[1]}")
    return frames.shape[0]


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
        b = clip_batch(frames)
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
        logits1 = self.net.segment(repeat_query(q1, n_obj), k0.unsqueeze(2), v0.unsqueeze(2))
        agg_logits1, agg1 = aggregate(object_probs(logits1, b, sel), dim=1, return_logits=True)

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
        logits2 = self.net.segment(repeat_query(q2, n_obj), mem_k, mem_v)
        agg_logits2, agg2 = aggregate(object_probs(logits2, b, sel), dim=1, return_logits=True)
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
        """The inputs of :meth:`PropagationTrainWrapper.forward`."""
        b = clip_batch(frames)
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


class PropagationTask(TrainTask):
    """Batch -> unrolled 3-frame forward -> per-sample bootstrapped CE of frames 1 and 2."""

    def __init__(self, start_warm: int, end_warm: int, top_p: float):
        self.criterion = BootstrappedCE(start_warm, end_warm, top_p)

    def step(self, model: nn.Module, batch: Mapping[str, Any], it: int) -> StepOutput:
        out = model(normalize_image(batch["rgb"]), batch["gt"], batch.get("sec_gt"),
                    batch.get("selector"))
        loss, scalars = propagation_loss(self.criterion, out, batch["cls_gt"], it,
                                         batch.get("selector"))
        return StepOutput(loss=loss, scalars=scalars,
                          visuals=tuple(p.detach().argmax(dim=1) for p in out.prob))

    def visualize(self, batch: Mapping[str, Any], out: StepOutput) -> torch.Tensor:
        """Per sample (up to 2): a row of the 3 frames with the ground truth, then a row with
        the ground truth of frame 0 and the predictions of frames 1 and 2."""
        rows = []
        for i in range(min(2, batch["rgb"].shape[0])):
            frames, gt = batch["rgb"][i], batch["cls_gt"][i]
            rows.append([overlay(frames[f], gt[f]) for f in range(3)])
            rows.append([overlay(frames[0], gt[0])]
                        + [overlay(frames[f + 1], out.visuals[f][i]) for f in range(2)])
        return grid_from_rows(rows)

    def set_train_mode(self, model: nn.Module) -> None:
        model.train_mode()


# ============================================================================ entry point


def main(argv: Sequence[str] | None = None, *, prog: str = "train_prop.py",
         description: str | None = None) -> int:
    """Train one propagation stage; 0 on success, 2 for bad input (message names it)."""

    def build(ctx: RunContext) -> TrainingParts:
        cfg = ctx.config
        dataset = build_dataset(cfg, ctx.dist)
        net = build_network(cfg, ctx)

        def configure(data: DataStream) -> None:
            data.on_epoch = curriculum(cfg, data)

        wrapper_cls = STCNTrainWrapper if cfg.arch == "stcn" else PropagationTrainWrapper
        wrapper = wrapper_cls(net, cfg.batchnorm)
        if cfg.batchnorm == "train" and cfg.sync_bn:
            wrapper = sync_batchnorm(wrapper, ctx.dist, ctx.device)
            net = wrapper.net
        return TrainingParts(model=wrapper.to(ctx.device), network=net,
                             task=PropagationTask(cfg.start_warm, cfg.end_warm, cfg.top_p),
                             dataset=dataset, configure_data=configure)

    def after(ctx: RunContext) -> None:
        cfg = ctx.config
        if cfg.single_object and ctx.dist.is_main:
            logger.info("single-object weights: check them with python -m model.checkpoint "
                        "--kind %s --single-object --preset %s FILE",
                        PROPAGATION_KINDS[cfg.arch], cfg.preset)

    return run_training(PropTrainConfig, argv, prog=prog, description=description or __doc__,
                        build=build, after=after)
