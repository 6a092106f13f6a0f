"""Train the scribble-to-mask (S2M) network (REFERENCE.md f.4).

Examples::

    # CPU smoke run on generated data (lite network, minutes on a laptop)
    python train_s2m.py --preset lite --data synthetic --iterations 200 --output runs/s2m_lite

    # the paper's recipe (2 GPUs, batch 16 each, 80K iterations, DeepLab initialisation)
    torchrun --nproc_per_node 2 train_s2m.py --data-root .. \\
        --deeplab best_deeplabv3plus_resnet50_voc_os16.pth --output runs/s2m

    # resume an interrupted run (restores optimizer, schedule, RNG and data position)
    python train_s2m.py --output runs/s2m --resume auto

Data: the static image/mask sets (FSS-1000, DUTS-TR, DUTS-TE, ECSSD, BIG, HRSOD) used twice;
``--lvis-root DIR [--lvis-json FILE]`` adds the LVIS v1 train instances (as the reference
does). Output: ``<output>/s2m_<it>.pth`` and ``s2m_final.pth`` (plain state dicts:
``python -m model.checkpoint --kind s2m --preset PRESET FILE``), ``s2m_checkpoint.pth``
(resumable), ``config.json``, ``train.log``, ``tb/``, ``images/``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from util.trainer import StepOutput, TrainTask, sync_batchnorm

logger = logging.getLogger("train_s2m")

DESCRIPTION = __doc__


class S2MTask(TrainTask):
    """Batch -> S2M forward -> bootstrapped CE over the batch (REFERENCE.md f.4)."""

    def __init__(self, start_warm: int, end_warm: int, top_p: float):
        from model.losses import BootstrappedCE

        self.criterion = BootstrappedCE(start_warm, end_warm, top_p)

    def step(self, model: nn.Module, batch: Mapping[str, Any], it: int):
        from model.train_wrappers import s2m_loss
        from util.tensor_util import normalize_image

        out = model(normalize_image(batch["rgb"]), batch["prev_mask"], batch["pos"], batch["neg"])
        loss, scalars = s2m_loss(self.criterion, out, batch["cls_gt"], it)
        return StepOutput(loss=loss, scalars=scalars, visuals=out.prob.detach())

    def visualize(self, batch: Mapping[str, Any], out) -> torch.Tensor:
        """Rows (up to 4 samples): image + scribbles (positive green, negative red), existing
        mask, ground truth, prediction."""
        from util.logger import grid_from_rows, overlay

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


def build_dataset(cfg, info):
    """The S2M training set for ``cfg``: synthetic static pairs or the real static sets (used
    twice), plus the LVIS instances when ``--lvis-root`` is given."""
    from dataset.static_dataset import S2MDataset
    from util.config import STATIC_REPEATS, STATIC_SUBDIRS, ConfigError
    from util.trainer import synthetic_static_root

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
    if cfg.lvis_root is None:
        if cfg.lvis_json is not None:
            raise ConfigError("--lvis-json needs --lvis-root (the COCO image folder)")
        return static
    from torch.utils.data import ConcatDataset

    from dataset.lvis_dataset import LVISS2MDataset

    json_path = cfg.lvis_json or Path(cfg.lvis_root) / "lvis_v1_train.json"
    lvis = LVISS2MDataset(cfg.lvis_root, json_path, size=cfg.crop_size, seed=cfg.seed,
                          empty_prob=cfg.empty_prob, robot_prob=cfg.robot_prob,
                          index_offset=len(static))
    logger.info("S2M data: %d static + %d LVIS samples", len(static), len(lvis))
    return ConcatDataset([static, lvis])


def build_network(cfg, ctx):
    """S2M with the requested initialisation (skipped when resuming)."""
    from model.checkpoint import deeplab_s2m, imagenet_resnet, load_weights
    from model.presets import build_s2m

    net = build_s2m(cfg.preset)
    if ctx.resume_path is None:
        if cfg.imagenet:
            load_weights(net.backbone, cfg.imagenet, adapt=imagenet_resnet())
        if cfg.deeplab:
            load_weights(net, cfg.deeplab, adapt=deeplab_s2m())
        if cfg.load:
            load_weights(net, cfg.load, strict=True)
    return net


def main(argv: Sequence[str] | None = None) -> int:
    """Train S2M; returns 0 on success, 2 for bad input (the message names the problem)."""
    from model.train_wrappers import S2MTrainWrapper
    from util.config import S2MTrainConfig
    from util.trainer import TrainingParts, run_training

    def build(ctx) -> TrainingParts:
        cfg = ctx.config
        dataset = build_dataset(cfg, ctx.dist)
        net = build_network(cfg, ctx)
        wrapper = S2MTrainWrapper(net)
        if cfg.sync_bn:
            wrapper = sync_batchnorm(wrapper, ctx.dist, ctx.device)
            net = wrapper.net
        return TrainingParts(model=wrapper.to(ctx.device), network=net, dataset=dataset,
                             task=S2MTask(cfg.start_warm, cfg.end_warm, cfg.top_p))

    return run_training(S2MTrainConfig, argv, prog="train_s2m.py", description=DESCRIPTION,
                        build=build)


if __name__ == "__main__":
    sys.exit(main())
