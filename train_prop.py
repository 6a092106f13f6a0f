"""Train the propagation network (REFERENCE.md f.2), one stage per run.

Stages (``--stage``):

* ``s0``: static images turned into 3-frame clips, **single-object** network (4-channel
  memory encoder), batch 7, 300K iterations, LR 1e-5, step at 250K. Its weights are checked
  with ``python -m model.checkpoint --kind propagation --single-object --preset P FILE``;
* ``s1``: BL30K, two objects, batch 4, 500K iterations, step at 450K, max_jump curriculum;
* ``s2``: DAVIS 2017 train (x5) + YouTubeVOS train, two objects, batch 4, 150K iterations,
  step at 125K, curriculum;
* ``s02``: stage 2 right after stage 0 (300K iterations).

Each stage starts from the previous one's weights with ``--load`` (the iteration counter
restarts at 0); loading single-object s0 weights into the multi-object network widens the
memory-encoder stem from 4 to 5 channels (the new "others" slice orthogonally initialised).
The networks stay in eval mode for BatchNorm (frozen statistics, affine parameters train).

``--arch stcn`` trains the STCN network (``model.stcn``, REFERENCE.md j.1) on the same data,
loss and curriculum with STCN's recipe: s0 batch 8, 300K iterations, LR step 150K; s1 500K /
400K; s2 (after s1) 300K / 250K; s02 (after s0) 150K / 125K; LR 1e-5; AMP ``auto`` (fp16 on
CUDA, bf16 only on a CPU with native bf16); checkpoints ``stcn_<stage>_*.pth``, checked with
``python -m model.checkpoint --kind propagation-stcn``. The key encoder is initialised by
``--imagenet`` (ResNet-50), the value encoder by ``--imagenet-value`` (ResNet-18).

Examples::

    # CPU smoke runs on generated data (lite network)
    python train_prop.py --preset lite --data synthetic --stage s0 --iterations 200 --output runs/p0
    python train_prop.py --preset lite --data synthetic --stage s2 --iterations 200 \\
        --load runs/p0/prop_s0_final.pth --output runs/p02

    # the paper's stage 1 on 2 GPUs
    torchrun --nproc_per_node 2 train_prop.py --stage s1 --bl30k-root ../BL30K \\
        --load runs/s0/prop_s0_final.pth --output runs/s1

    # STCN, lite, on generated data
    python train_prop.py --arch stcn --preset lite --data synthetic --stage s0 --iterations 200 \\
        --output runs/stcn0

Output: ``<output>/<name>_<it>.pth`` / ``<name>_final.pth`` (plain state dicts),
``<name>_checkpoint.pth`` (resumable: ``--resume auto``), ``config.json``, ``train.log``,
``tb/``, ``images/``.
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

logger = logging.getLogger("train_prop")

DESCRIPTION = __doc__


class PropagationTask(TrainTask):
    """Batch -> unrolled 3-frame forward -> per-sample bootstrapped CE of frames 1 and 2."""

    def __init__(self, start_warm: int, end_warm: int, top_p: float):
        from model.losses import BootstrappedCE

        self.criterion = BootstrappedCE(start_warm, end_warm, top_p)

    def step(self, model: nn.Module, batch: Mapping[str, Any], it: int) -> StepOutput:
        from model.train_wrappers import propagation_loss
        from util.tensor_util import normalize_image

        out = model(normalize_image(batch["rgb"]), batch["gt"], batch.get("sec_gt"),
                    batch.get("selector"))
        loss, scalars = propagation_loss(self.criterion, out, batch["cls_gt"], it,
                                         batch.get("selector"))
        return StepOutput(loss=loss, scalars=scalars,
                          visuals=tuple(p.detach().argmax(dim=1) for p in out.prob))

    def visualize(self, batch: Mapping[str, Any], out: StepOutput) -> torch.Tensor:
        """Per sample (up to 2): a row of the 3 frames with the ground truth, then a row with
        the ground truth of frame 0 and the predictions of frames 1 and 2."""
        from util.logger import grid_from_rows, overlay

        rows = []
        for i in range(min(2, batch["rgb"].shape[0])):
            frames, gt = batch["rgb"][i], batch["cls_gt"][i]
            rows.append([overlay(frames[f], gt[f]) for f in range(3)])
            rows.append([overlay(frames[0], gt[0])]
                        + [overlay(frames[f + 1], out.visuals[f][i]) for f in range(2)])
        return grid_from_rows(rows)

    def set_train_mode(self, model: nn.Module) -> None:
        model.train_mode()


def _require(root: Path | None, what: str, flag: str) -> Path:
    from util.config import ConfigError

    if root is None:
        raise ConfigError(f"{what} is needed: give {flag} DIR or --data-root DIR (or --data "
                          "synthetic)")
    return root


def build_dataset(cfg, info):
    """The training set of ``cfg.stage`` (see the module docstring)."""
    from torch.utils.data import ConcatDataset

    from dataset.static_dataset import StaticClipDataset
    from dataset.vos_dataset import VOSClipDataset
    from util.config import STATIC_REPEATS, STATIC_SUBDIRS
    from util.trainer import synthetic_static_root, synthetic_video_root

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
            base = _require(cfg.real_root(None, "static"), "static image data", "--static-roots")
            roots = [base / s for s in STATIC_SUBDIRS]
            repeats = list(cfg.static_repeats) or list(STATIC_REPEATS)
        return StaticClipDataset(roots, repeats, size=size, seed=seed)

    if cfg.data == "synthetic":
        root = synthetic_video_root(cfg.synthetic_root(), cfg.synthetic_preset, seed, info)
        return VOSClipDataset(root, subset=root / "ImageSets" / "2017" / "train.txt", size=size,
                              seed=seed, bl30k=cfg.stage == "s1", max_tries=cfg.max_tries,
                              scale=scale)
    if cfg.stage == "s1":
        root = _require(cfg.real_root(cfg.bl30k_root, "BL30K"), "the BL30K root", "--bl30k-root")
        return VOSClipDataset(root, size=size, seed=seed, bl30k=True, layout="plain",
                              max_tries=cfg.max_tries, scale=scale)
    davis = _require(cfg.real_root(cfg.davis_root, "DAVIS/2017/trainval"), "the DAVIS root",
                     "--davis-root")
    parts = [VOSClipDataset(davis, subset=davis / "ImageSets" / "2017" / "train.txt", size=size,
                            seed=seed, repeat=cfg.davis_repeat, layout="davis",
                            max_tries=cfg.max_tries, scale=scale)]
    if cfg.use_youtube:
        yt = _require(cfg.real_root(cfg.youtube_root, "YouTube/train_480p"),
                      "the YouTubeVOS root", "--youtube-root")
        parts.append(VOSClipDataset(yt, size=size, seed=seed + 1,
                                    jump_divisor=cfg.youtube_jump_divisor, layout="plain",
                                    max_tries=cfg.max_tries, scale=scale))
    return ConcatDataset(parts) if len(parts) > 1 else parts[0]


def curriculum(cfg, data) -> Any:
    """``on_epoch`` callback setting ``max_jump`` of every video dataset (REFERENCE.md f.2)."""
    from dataset.vos_dataset import VOSClipDataset, max_jump_for_epoch
    from util.trainer import iter_datasets

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


def load_imagenet(net, key_file, value_file=None) -> None:
    """Initialise the encoders from local torchvision-format ImageNet ResNet files: MiVOS's
    memory encoder (stem widened to the mask channels) and query encoder from ``key_file``;
    STCN's key encoder from ``key_file`` and value encoder (its ``fuser`` kept) from
    ``value_file`` (default ``key_file``)."""
    from model.checkpoint import imagenet_resnet, keep_network, load_weights
    from model.propagation import QueryEncoder

    query = imagenet_resnet(rename=QueryEncoder.TORCHVISION_NAMES)
    if net.arch == "stcn":
        load_weights(net.key_encoder, key_file, adapt=query)
        load_weights(net.value_encoder, value_file or key_file,
                     adapt=[keep_network("fuser."), imagenet_resnet()])
    else:
        load_weights(net.mask_rgb_encoder, key_file, adapt=imagenet_resnet())
        load_weights(net.rgb_encoder, key_file, adapt=query)


def build_network(cfg, ctx):
    """The ``--arch`` propagation network with the requested initialisation (skipped when
    resuming)."""
    from model.checkpoint import load_propagation_weights
    from model.presets import build_propagation, get_preset
    from util.config import ConfigError

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


def main(argv: Sequence[str] | None = None) -> int:
    """Train one propagation stage; 0 on success, 2 for bad input (message names it)."""
    from model.presets import PROPAGATION_KINDS
    from model.train_wrappers import PropagationTrainWrapper, STCNTrainWrapper
    from util.config import PropTrainConfig
    from util.trainer import TrainingParts, run_training

    def build(ctx) -> TrainingParts:
        cfg = ctx.config
        dataset = build_dataset(cfg, ctx.dist)
        net = build_network(cfg, ctx)

        def configure(data) -> None:
            data.on_epoch = curriculum(cfg, data)

        wrapper_cls = STCNTrainWrapper if cfg.arch == "stcn" else PropagationTrainWrapper
        wrapper = wrapper_cls(net, cfg.batchnorm)
        if cfg.batchnorm == "train" and cfg.sync_bn:
            wrapper = sync_batchnorm(wrapper, ctx.dist, ctx.device)
            net = wrapper.net
        return TrainingParts(model=wrapper.to(ctx.device), network=net,
                             task=PropagationTask(cfg.start_warm, cfg.end_warm, cfg.top_p),
                             dataset=dataset, configure_data=configure)

    def after(ctx) -> None:
        cfg = ctx.config
        if cfg.single_object and ctx.dist.is_main:
            logger.info("single-object weights: check them with python -m model.checkpoint "
                        "--kind %s --single-object --preset %s FILE",
                        PROPAGATION_KINDS[cfg.arch], cfg.preset)

    return run_training(PropTrainConfig, argv, prog="train_prop.py", description=DESCRIPTION,
                        build=build, after=after)


if __name__ == "__main__":
    sys.exit(main())
