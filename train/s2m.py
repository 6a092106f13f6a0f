"""S2M training (REFERENCE.md f.4): the stage preset, the data recipe, the initialisation, the
training forward and its loss, in the order a run uses them. ``train_s2m.py`` is the entry point.

* **Stage** (:class:`S2MTrainConfig`): one, ``main``: batch 16 per GPU, 80K iterations, LR 1e-4
  constant, bootstrapping warm-up 10K -> 30K, crops of 480.
* **Data** (:func:`build_dataset`): the static image/mask sets (FSS-1000, DUTS-TR, DUTS-TE,
  ECSSD, BIG, HRSOD) used twice, with ``--lvis-root`` the LVIS v1 train instances; or generated
  static pairs with ``--data synthetic``. Existing masks and scribbles are synthesised per
  sample (:class:`dataset.static_dataset.S2MDataset`).
* **Initialisation** (:func:`build_network`): ``--imagenet`` (the backbone), ``--deeplab`` (a
  VainF DeepLabV3+ file), ``--load`` (S2M weights), through the one loader
  (:func:`model.checkpoint.load_weights`).
* **Forward and loss** (:class:`S2MTrainWrapper`, :func:`s2m_loss`): [image, existing mask,
  positive, negative] -> one logit -> 2-channel (background, object) aggregation logits
  (REFERENCE.md 0.3), bootstrapped cross-entropy over the whole batch (REFERENCE.md f.1).
  BatchNorm trains (SyncBatchNorm under DDP on CUDA).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn as nn
from torch.utils.data import ConcatDataset, Dataset

from dataset.lvis_dataset import EXTRA_MIN_AREA, TARGET_MIN_AREA, LVISInstances, LVISS2MDataset
from dataset.static_dataset import S2MDataset
from dataset.synthetic import INSTANCE_JSON, generate_instance_set, preset_specs
from model.aggregate import aggregate
from model.checkpoint import deeplab_s2m, imagenet_resnet, load_weights
from model.losses import BootstrappedCE, compute_iou
from model.presets import build_s2m
from model.s2m import S2M
from train.common import (
    STATIC_REPEATS,
    STATIC_SUBDIRS,
    TrainConfig,
    synthetic_static_root,
)
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
    sync_batchnorm,
)

logger = logging.getLogger(__name__)

__all__ = ["S2MOutput", "S2MTask", "S2MTrainConfig", "S2MTrainWrapper", "build_dataset",
           "build_network", "main", "s2m_loss"]


# ============================================================================ stage preset


@dataclass
class S2MTrainConfig(TrainConfig):
    """Scribble-to-mask training (REFERENCE.md f.4): one stage, 80K iterations, LR 1e-4 constant."""

    static_roots: tuple[str, ...] = opt((), "static image/mask dataset folders (flat or FSS "
                                        "layout); default <data-root>/static/{fss, DUTS-TR, "
                                        "DUTS-TE, ecssd, BIG_small, HRSOD_small}", metavar="DIR")
    static_repeats: tuple[int, ...] = opt((), "repeat factor of each static root (default: 2 "
                                          "each, BIG and HRSOD 10: the static set used twice)",
                                          metavar="N")
    deeplab: str | None = opt(None, "initialise from a VainF DeepLabV3+ ResNet-50 checkpoint "
                              "(model_state dict); the stem is widened to 6 channels",
                              metavar="FILE")
    empty_prob: float = opt(0.33, "probability that the existing-mask input is empty")
    robot_prob: float = opt(0.75, "probability of scribbles from the tamed DAVIS robot (when "
                            "the existing mask is not empty)")
    sync_bn: bool = opt(True, "SyncBatchNorm under DDP (CUDA only; plain BatchNorm on CPU)")
    lvis_root: str | None = opt(None, "add LVIS v1 train instances (area > 50x50) to the static "
                                "sets: the COCO image folder (train2017, or the folder holding "
                                "train2017 / val2017)", metavar="DIR")
    lvis_json: str | None = opt(None, "the LVIS annotation JSON (default "
                                "<lvis-root>/lvis_v1_train.json)", metavar="FILE")
    synthetic_instances: int = opt(0, "with --data synthetic: also generate this many "
                                   "multi-object frames (the --synthetic-preset's frame size) as "
                                   "an LVIS-format instance set and train on its instances "
                                   "through the LVIS loader, the stand-in for LVIS (area "
                                   "thresholds 50x50 / 30x30 scaled from a 640x480 image to the "
                                   "frame); 0: static pairs only", metavar="N")

    STAGES: ClassVar[dict[str, str]] = {"main": "main"}
    DEFAULT_STAGE: ClassVar[str] = "main"

    @classmethod
    def main(cls) -> S2MTrainConfig:
        """REFERENCE.md f.4: batch 16 per GPU, 80K iterations, LR 1e-4 constant, warm-up 10K -> 30K,
        crop 480, saves every 20K."""
        return cls(stage="main", name="s2m", iterations=80_000, batch_size=16, lr=1e-4,
                   lr_steps=(), start_warm=10_000, end_warm=30_000, crop_size=480,
                   save_interval=20_000)

    def lite(self) -> S2MTrainConfig:
        return replace(super().lite(), crop_size=96, batch_size=8)


# ============================================================================ data


def build_dataset(cfg: S2MTrainConfig, info: DistInfo) -> Dataset:
    """The S2M training set for ``cfg``: synthetic static pairs or the real static sets (used
    twice), plus the LVIS instances when ``--lvis-root`` is given."""
    if cfg.data == "synthetic":
        root = synthetic_static_root(cfg.synthetic_root(), cfg.synthetic_static_count,
                                     cfg.synthetic_static_size, cfg.seed, info)
        roots, repeats = [root], [1]
    else:
        if cfg.static_roots:
            roots = [Path(r) for r in cfg.static_roots]
            repeats = list(cfg.static_repeats) or [2] * len(roots)
        elif cfg.data_root:
            roots = [Path(cfg.data_root) / "static" / s for s in STATIC_SUBDIRS]
            repeats = list(cfg.static_repeats) or [2 * r for r in STATIC_REPEATS]
        else:
            raise ConfigError("S2M training needs --static-roots DIR ... or --data-root DIR "
                              "(or --data synthetic)")
    static = S2MDataset(roots, repeats, size=cfg.crop_size, seed=cfg.seed,
                        empty_prob=cfg.empty_prob, robot_prob=cfg.robot_prob)
    if cfg.data == "synthetic" and cfg.synthetic_instances > 0:
        if cfg.lvis_root is not None:
            raise ConfigError("give --synthetic-instances (generated instances) or --lvis-root "
                              "(the real LVIS), not both")
        lvis = synthetic_instance_dataset(cfg, info, index_offset=len(static))
        logger.info("S2M data: %d static + %d synthetic instances", len(static), len(lvis))
        return ConcatDataset([static, lvis])
    if cfg.lvis_root is None:
        if cfg.lvis_json is not None:
            raise ConfigError("--lvis-json needs --lvis-root (the COCO image folder)")
        return static
    json_path = cfg.lvis_json or Path(cfg.lvis_root) / "lvis_v1_train.json"
    lvis = LVISS2MDataset(cfg.lvis_root, json_path, size=cfg.crop_size, seed=cfg.seed,
                          empty_prob=cfg.empty_prob, robot_prob=cfg.robot_prob,
                          index_offset=len(static))
    logger.info("S2M data: %d static + %d LVIS samples", len(static), len(lvis))
    return ConcatDataset([static, lvis])


#: the image area the LVIS thresholds (50 x 50 target, 30 x 30 extras) are meant for
LVIS_REFERENCE_AREA = 640 * 480


def synthetic_instance_dataset(cfg: S2MTrainConfig, info: DistInfo,
                               index_offset: int = 0) -> LVISS2MDataset:
    """``cfg.synthetic_instances`` generated multi-object frames (cached under
    ``<synthetic root>/instances``) through the LVIS loader, at the video preset's frame size,
    with the LVIS area thresholds scaled to that frame."""
    spec = preset_specs(cfg.synthetic_preset, cfg.seed)[0]
    root = Path(cfg.synthetic_root()) / "instances"
    json_path = root / INSTANCE_JSON

    def make() -> None:
        logger.info("synthetic instances: %d frames of %d x %d in %s", cfg.synthetic_instances,
                    spec.height, spec.width, root)
        generate_instance_set(root, cfg.synthetic_instances, spec.height, spec.width, cfg.seed)

    on_main_first(info, make)
    ratio = spec.height * spec.width / LVIS_REFERENCE_AREA
    index = LVISInstances(root, json_path, target_min_area=TARGET_MIN_AREA * ratio,
                          extra_min_area=EXTRA_MIN_AREA * ratio)
    return LVISS2MDataset(index=index, size=cfg.crop_size, seed=cfg.seed,
                          empty_prob=cfg.empty_prob, robot_prob=cfg.robot_prob,
                          index_offset=index_offset)


# ============================================================================ initialisation


def build_network(cfg: S2MTrainConfig, ctx: RunContext) -> S2M:
    """S2M with the requested initialisation (skipped when resuming)."""
    net = build_s2m(cfg.preset)
    if ctx.resume_path is None:
        if cfg.imagenet:
            load_weights(net.backbone, cfg.imagenet, adapt=imagenet_resnet())
        if cfg.deeplab:
            load_weights(net, cfg.deeplab, adapt=deeplab_s2m())
        if cfg.load:
            load_weights(net, cfg.load, strict=True)
    return net


# ============================================================================ forward and loss


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


class S2MTask(TrainTask):
    """Batch -> S2M forward -> bootstrapped CE over the batch (REFERENCE.md f.4)."""

    def __init__(self, start_warm: int, end_warm: int, top_p: float):
        self.criterion = BootstrappedCE(start_warm, end_warm, top_p)

    def step(self, model: nn.Module, batch: Mapping[str, Any], it: int) -> StepOutput:
        out = model(normalize_image(batch["rgb"]), batch["prev_mask"], batch["pos"], batch["neg"])
        loss, scalars = s2m_loss(self.criterion, out, batch["cls_gt"], it)
        return StepOutput(loss=loss, scalars=scalars, visuals=out.prob.detach())

    def visualize(self, batch: Mapping[str, Any], out: StepOutput) -> torch.Tensor:
        """Rows (up to 4 samples): image + scribbles (positive green, negative red), existing
        mask, ground truth, prediction."""
        rows = []
        for i in range(min(4, batch["rgb"].shape[0])):
            img = batch["rgb"][i]
            scribbles = (batch["pos"][i, 0] > 0.5).long() * 2 + (batch["neg"][i, 0] > 0.5).long()
            scribbles = torch.where(scribbles >= 2, 2, scribbles)  # 2 = green, 1 = red
            rows.append([overlay(img, scribbles, alpha=0.9),
                         overlay(img, batch["prev_mask"][i, 0].long()),
                         overlay(img, batch["cls_gt"][i]),
                         overlay(img, out.visuals[i].argmax(dim=0))])
        return grid_from_rows(rows)

    def set_train_mode(self, model: nn.Module) -> None:
        model.train_mode()


# ============================================================================ entry point


def main(argv: Sequence[str] | None = None, *, prog: str = "train_s2m.py",
         description: str | None = None) -> int:
    """Train S2M; returns 0 on success, 2 for bad input (the message names the problem)."""

    def build(ctx: RunContext) -> TrainingParts:
        cfg = ctx.config
        dataset = build_dataset(cfg, ctx.dist)
        net = build_network(cfg, ctx)
        wrapper = S2MTrainWrapper(net)
        if cfg.sync_bn:
            wrapper = sync_batchnorm(wrapper, ctx.dist, ctx.device)
            net = wrapper.net
        return TrainingParts(model=wrapper.to(ctx.device), network=net, dataset=dataset,
                             task=S2MTask(cfg.start_warm, cfg.end_warm, cfg.top_p))

    return run_training(S2MTrainConfig, argv, prog=prog, description=description or __doc__,
                        build=build)
