"""Fusion training (REFERENCE.md f.3; STCN: j.2): the stage presets, the data recipe, the frozen
attention readers, the training forward and its loss, in the order a run uses them.
``train_fusion.py`` is the entry point.

* **Stages** (:class:`FusionTrainConfig`): ``s0`` BL30K videos + their fusion data, ``s1``
  DAVIS 2017 + its fusion data (from the s0 weights); ``--arch stcn`` when the propagation
  model is an STCN network.
* **Data** (:func:`build_dataset`): the videos and the propagation results made beforehand by
  ``python -m dataset.generate_fusion`` (:class:`dataset.fusion_dataset.FusionDataset`); with
  ``--data synthetic``, generated videos and fusion data made here from ``--prop-model``
  (:func:`synthetic_fusion_data`, cached per model file).
* **Initialisation** (:func:`build_wrapper`): FusionNet from ``--load``; the attention reader
  from ``--prop-model`` through the one loader, the propagation file's decoder (STCN: also
  its value encoder and ``key_comp``) dropped (:func:`model.checkpoint.drop_keys`).
* **Forward and loss** (:class:`AttentionReader`, :class:`STCNAttentionReader`,
  :class:`FusionTrainWrapper`, :func:`fusion_loss`): the frozen reader aligns the mask
  differences D+ / D- at the second reference frame to the target frame with a full-softmax
  affinity (REFERENCE.md c.3; STCN: one L2 affinity for both objects); FusionNet runs per
  object, the selector zeroes a missing second object, wbg aggregation; per-sample
  bootstrapped cross-entropy on the 3 aggregation logits.

Images given to the wrappers are ImageNet-normalised (``util.tensor_util.normalize_image``)
and their H, W are multiples of 16.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from dataset.fusion_dataset import FusionDataset
from dataset.generate_fusion import file_sha1, generate_fusion_data
from model.aggregate import aggregate
from model.checkpoint import drop_keys, load_weights
from model.fusion import FusionNet
from model.losses import BootstrappedCE, compute_iou, per_sample_bootstrapped_ce
from model.presets import PROPAGATION_ARCHS, build_fusion, get_preset
from model.propagation import PropagationConfig, PropagationNetwork, QueryEncoder
from model.stcn import KeyProjection, STCNConfig, align_differences
from train.common import TrainConfig, object_probs, synthetic_video_root
from util.config import ConfigError, opt
from util.logger import grid_from_rows, overlay
from util.tensor_util import normalize_image
from util.trainer import (
    DistInfo,
    RunContext,
    StepOutput,
    TrainingParts,
    TrainTask,
    on_main_first,
    run_training,
)

logger = logging.getLogger(__name__)

__all__ = ["AttentionReader", "FusionOutput", "FusionTask", "FusionTrainConfig",
           "FusionTrainWrapper", "STCNAttentionReader", "build_dataset", "build_wrapper",
           "fusion_loss", "main", "synthetic_fusion_data"]


# ============================================================================ stage presets


@dataclass
class FusionTrainConfig(TrainConfig):
    """Fusion training (REFERENCE.md f.3): s0 on BL30K, s1 on DAVIS, with a frozen propagation model.
    ``--arch stcn``: the propagation model is an STCN network (REFERENCE.md j.2)."""

    arch: str = opt("mivos", "architecture of the --prop-model network: 'mivos' or 'stcn'. With "
                    "'stcn' the attention reader is STCN's frozen key encoder + key_proj with "
                    "one L2 affinity for both objects, AMP is auto (as in the MiVOS-STCN "
                    "branch) and checkpoints are named fusion_stcn_<stage>",
                    choices=PROPAGATION_ARCHS)
    prop_model: str | None = opt(None, "trained (multi-object) propagation weights for the "
                                 "frozen attention reader; required. Decoder tensors are "
                                 "ignored, everything else must match", metavar="FILE")
    video_root: str | None = opt(None, "frames and annotations of the videos (s0: BL30K root, "
                                 "default <data-root>/BL30K; s1: DAVIS 2017 trainval root, "
                                 "default <data-root>/DAVIS/2017/trainval)", metavar="DIR")
    fusion_root: str | None = opt(None, "generated propagation data (python -m "
                                  "dataset.generate_fusion): a run folder or a folder of run "
                                  "folders; default <data-root>/fusion_data/{bl,davis}. With "
                                  "--data synthetic: fusion data of the generated videos "
                                  "(default: generated from --prop-model; required with --arch "
                                  "stcn, whose inference is not part of the generator yet)",
                                  metavar="DIR")
    samples_per_video: int = opt(100, "dataset length = this x number of videos per epoch")
    max_samples_tries: int = opt(20, "attempts to draw a sample; the first 15 reject pairs of "
                                 "nearly identical propagations")
    generate_separation: int = opt(10, "--data synthetic: reference spacing s of the generated "
                                   "fusion data")
    generate_range: int | None = opt(10, "--data synthetic: propagate r +- this many frames "
                                     "(none = whole video)")
    generate_max_videos: int | None = opt(8, "--data synthetic: generate fusion data for the "
                                          "first N training videos only (none = all; the "
                                          "cached run folder is completed when N grows)")

    STAGES: ClassVar[dict[str, str]] = {"s0": "s0", "s1": "s1"}
    DEFAULT_STAGE: ClassVar[str] = "s0"
    VARIANTS: ClassVar[dict[str, tuple[str, ...]]] = {"preset": ("lite",), "arch": ("stcn",)}

    @classmethod
    def _base(cls, iterations: int, **kw: Any) -> FusionTrainConfig:
        start, end = int(0.2 * iterations), int(0.5 * iterations)
        return cls(iterations=iterations, lr=1e-4, batch_size=12, crop_size=384,
                   start_warm=start, end_warm=end, save_interval=5_000, **kw)

    @classmethod
    def s0(cls) -> FusionTrainConfig:
        """BL30K + fusion_data/bl: batch 12, 30K iterations, LR 1e-4, steps [20K], warm-up
        6K -> 15K."""
        return cls._base(30_000, stage="s0", name="fusion_s0", lr_steps=(20_000,))

    @classmethod
    def s1(cls) -> FusionTrainConfig:
        """DAVIS + fusion_data/davis (from the s0 weights, --load): batch 12, 10K iterations,
        steps [7.5K], warm-up 2K -> 5K."""
        return cls._base(10_000, stage="s1", name="fusion_s1", lr_steps=(7_500,))

    def for_arch(self, arch: str | None) -> FusionTrainConfig:
        """``arch="stcn"``: AMP auto and checkpoint names ``fusion_stcn_<stage>``; the rest of
        the recipe is MiVOS's (REFERENCE.md j.2)."""
        if arch in (None, "mivos"):
            return self
        if arch != "stcn":
            raise ConfigError(f"--arch must be one of {', '.join(PROPAGATION_ARCHS)}, got "
                              f"{arch!r}")
        return replace(self, arch="stcn", name=f"fusion_stcn_{self.stage}", amp="auto")

    def lite(self) -> FusionTrainConfig:
        return replace(super().lite(), crop_size=96, batch_size=8)


# ============================================================================ data


def synthetic_fusion_data(cfg: FusionTrainConfig, info: DistInfo, device: torch.device
                          ) -> tuple[Path, Path]:
    """Synthetic videos + their fusion data from ``--prop-model`` (cached per model file)."""
    videos = synthetic_video_root(cfg.synthetic_root(), cfg.synthetic_preset, cfg.seed, info)
    model = Path(cfg.prop_model)
    tag = (f"{model.stem}-{file_sha1(model)[:10]}-{cfg.arch}-s{cfg.generate_separation}"
           f"-r{cfg.generate_range if cfg.generate_range is not None else 'all'}")
    run = cfg.synthetic_root() / "fusion" / cfg.synthetic_preset / tag

    def make() -> None:
        generate_fusion_data(videos, model, run, preset=cfg.preset,
                             separation=cfg.generate_separation, range_=cfg.generate_range,
                             max_videos=cfg.generate_max_videos, arch=cfg.arch,
                             device=str(device),
                             progress=cfg.progress)

    on_main_first(info, make)
    return videos, run


def build_dataset(cfg: FusionTrainConfig, info: DistInfo, device: torch.device) -> Dataset:
    """The fusion training set of ``cfg.stage`` (see the module docstring)."""
    subset = None
    if cfg.data == "synthetic":
        if cfg.fusion_root:
            video_root = synthetic_video_root(cfg.synthetic_root(), cfg.synthetic_preset,
                                              cfg.seed, info)
            fusion_root = Path(cfg.fusion_root)
        else:
            video_root, fusion_root = synthetic_fusion_data(cfg, info, device)
        subset = video_root / "ImageSets" / "2017" / "train.txt"
    else:
        default_video = "BL30K" if cfg.stage == "s0" else "DAVIS/2017/trainval"
        default_fusion = "fusion_data/bl" if cfg.stage == "s0" else "fusion_data/davis"
        video_root = cfg.real_root(cfg.video_root, default_video)
        fusion_root = cfg.real_root(cfg.fusion_root, default_fusion)
        if video_root is None or fusion_root is None:
            raise ConfigError("fusion training needs --video-root DIR and --fusion-root DIR "
                              "(or --data-root DIR, or --data synthetic)")
    return FusionDataset(video_root, fusion_root, size=cfg.crop_size, seed=cfg.seed,
                         samples_per_video=cfg.samples_per_video,
                         max_tries=cfg.max_samples_tries, subset=subset)


# ============================================================================ attention readers


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


# ============================================================================ forward and loss


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
        prob = object_probs(logits, b, selector)
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


def _labels(prob2: torch.Tensor) -> torch.Tensor:
    """2 x H x W object probabilities -> H x W labels (wbg aggregation, argmax)."""
    return aggregate(prob2.float(), dim=0).argmax(dim=0)


class FusionTask(TrainTask):
    """Batch -> attention reader + FusionNet per object -> per-sample bootstrapped CE."""

    def __init__(self, start_warm: int, end_warm: int, top_p: float):
        self.criterion = BootstrappedCE(start_warm, end_warm, top_p)

    def step(self, model: nn.Module, batch: Mapping[str, Any], it: int) -> StepOutput:
        out = model(normalize_image(batch["rgb"]), normalize_image(batch["ref_rgb"]),
                    batch["seg1"], batch["seg2"], batch["before"], batch["after"],
                    batch["dist"], batch["selector"])
        loss, scalars = fusion_loss(self.criterion, out, batch["cls_gt"], it, batch["selector"])
        return StepOutput(loss=loss, scalars=scalars,
                          visuals={"pred": out.prob.detach().argmax(dim=1),
                                   "attn": out.attn.detach()})

    def visualize(self, batch: Mapping[str, Any], out: StepOutput) -> torch.Tensor:
        """Per sample (up to 3): reference frame with before / after masks, target with
        seg1, seg2, A+ / A- of object 1, ground truth and the fused prediction."""
        rows = []
        for i in range(min(3, batch["rgb"].shape[0])):
            img, ref = batch["rgb"][i], batch["ref_rgb"][i]
            attn = out.visuals["attn"][i, 0]
            rows.append([overlay(ref, _labels(batch["before"][i])),
                         overlay(ref, _labels(batch["after"][i])),
                         overlay(img, _labels(batch["seg1"][i])),
                         overlay(img, _labels(batch["seg2"][i])),
                         overlay(img, prob=attn[0]), overlay(img, prob=attn[1]),
                         overlay(img, batch["cls_gt"][i]),
                         overlay(img, out.visuals["pred"][i])])
        return grid_from_rows(rows)

    def set_train_mode(self, model: nn.Module) -> None:
        model.train_mode()


# ============================================================================ initialisation


def build_wrapper(cfg: FusionTrainConfig, ctx: RunContext) -> FusionTrainWrapper:
    """FusionNet (initialised from ``--load`` unless resuming) + the frozen attention reader."""
    if cfg.imagenet:
        raise ConfigError("--imagenet does not apply to FusionNet (it has no ResNet); the "
                          "attention reader's encoders come from --prop-model")
    fusion = build_fusion(cfg.preset)
    if ctx.resume_path is None and cfg.load:
        load_weights(fusion, cfg.load, strict=True)
    if cfg.arch == "stcn":
        reader = STCNAttentionReader(get_preset(cfg.preset).stcn)
    else:
        reader = AttentionReader(get_preset(cfg.preset).propagation)
    reader.load_from_propagation(cfg.prop_model)
    return FusionTrainWrapper(fusion, reader)


# ============================================================================ entry point


def main(argv: Sequence[str] | None = None, *, prog: str = "train_fusion.py",
         description: str | None = None) -> int:
    """Train FusionNet; 0 on success, 2 for bad input (the message names the problem)."""

    def build(ctx: RunContext) -> TrainingParts:
        cfg = ctx.config
        if not cfg.prop_model:
            raise ConfigError("--prop-model FILE (trained propagation weights) is required")
        if not Path(cfg.prop_model).is_file():
            raise FileNotFoundError(f"--prop-model: file not found: {cfg.prop_model}")
        wrapper = build_wrapper(cfg, ctx).to(ctx.device)
        dataset = build_dataset(cfg, ctx.dist, ctx.device)
        return TrainingParts(model=wrapper, network=wrapper.fusion, dataset=dataset,
                             task=FusionTask(cfg.start_warm, cfg.end_warm, cfg.top_p))

    return run_training(FusionTrainConfig, argv, prog=prog, description=description or __doc__,
                        build=build)
