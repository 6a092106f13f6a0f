"""Train the difference-aware fusion network (REFERENCE.md f.3) with a frozen propagation model.

Stages (``--stage``):

* ``s0``: BL30K videos + their fusion data (``fusion_data/bl``), batch 12, 30K iterations,
  LR 1e-4, step at 20K, bootstrapping warm-up 6K -> 15K;
* ``s1``: DAVIS 2017 videos + ``fusion_data/davis``, from the s0 weights (``--load``), 10K
  iterations, step at 7.5K, warm-up 2K -> 5K.

The propagation checkpoint (``--prop-model``, multi-object) provides the frozen encoders and
key projections of the attention reader; its decoder tensors are ignored. The fusion data is
made beforehand with ``python -m dataset.generate_fusion`` (with ``--data synthetic`` this
script generates both the videos and their fusion data, cached under ``--data-root``, unless
``--fusion-root`` names fusion data of those videos).

``--arch stcn``: ``--prop-model`` is an STCN propagation network (``python -m model.checkpoint
--kind propagation-stcn``); the attention reader is its frozen key encoder + ``key_proj``, with
one L2 affinity for both objects (REFERENCE.md j.2), AMP ``auto`` and checkpoints
``fusion_stcn_<stage>_*.pth``. The fusion data generator does not run STCN yet: give fusion data
made with ``dataset.generate_fusion`` (e.g. from a MiVOS propagation model) with
``--fusion-root``, also with ``--data synthetic``.

Examples::

    # CPU smoke run on generated data (lite networks)
    python train_fusion.py --preset lite --data synthetic --iterations 200 \\
        --prop-model runs/p02/prop_s2_final.pth --output runs/fusion_lite

    # the paper's stage 0 on 2 GPUs
    python -m dataset.generate_fusion --data ../BL30K --prop-model propagation_model.pth \\
        --output ../fusion_data/bl/run0 --range 25
    torchrun --nproc_per_node 2 train_fusion.py --stage s0 --prop-model propagation_model.pth \\
        --video-root ../BL30K --fusion-root ../fusion_data/bl --output runs/fusion_s0

    # STCN: fusion data from any propagation model, attention from the STCN network
    python train_fusion.py --arch stcn --stage s0 --prop-model stcn.pth --video-root ../BL30K \\
        --fusion-root ../fusion_data/bl --output runs/fusion_stcn_s0

Output: ``<output>/<name>_<it>.pth`` / ``<name>_final.pth`` (plain FusionNet state dicts:
``python -m model.checkpoint --kind fusion --preset P FILE``), ``<name>_checkpoint.pth``
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

from util.trainer import StepOutput, TrainTask

logger = logging.getLogger("train_fusion")

DESCRIPTION = __doc__


def _labels(prob2: torch.Tensor) -> torch.Tensor:
    """2 x H x W object probabilities -> H x W labels (wbg aggregation, argmax)."""
    from model.aggregate import aggregate

    return aggregate(prob2.float(), dim=0).argmax(dim=0)


class FusionTask(TrainTask):
    """Batch -> attention reader + FusionNet per object -> per-sample bootstrapped CE."""

    def __init__(self, start_warm: int, end_warm: int, top_p: float):
        from model.losses import BootstrappedCE

        self.criterion = BootstrappedCE(start_warm, end_warm, top_p)

    def step(self, model: nn.Module, batch: Mapping[str, Any], it: int) -> StepOutput:
        from model.train_wrappers import fusion_loss
        from util.tensor_util import normalize_image

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
        from util.logger import grid_from_rows, overlay

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


def synthetic_fusion_data(cfg, info, device: torch.device) -> tuple[Path, Path]:
    """Synthetic videos + their fusion data from ``--prop-model`` (cached per model file)."""
    from dataset.generate_fusion import file_sha1, generate_fusion_data
    from util.trainer import on_main_first, synthetic_video_root

    videos = synthetic_video_root(cfg.synthetic_root(), cfg.synthetic_preset, cfg.seed, info)
    model = Path(cfg.prop_model)
    tag = (f"{model.stem}-{file_sha1(model)[:10]}-s{cfg.generate_separation}"
           f"-r{cfg.generate_range if cfg.generate_range is not None else 'all'}")
    run = cfg.synthetic_root() / "fusion" / cfg.synthetic_preset / tag

    def make() -> None:
        generate_fusion_data(videos, model, run, preset=cfg.preset,
                             separation=cfg.generate_separation, range_=cfg.generate_range,
                             max_videos=cfg.generate_max_videos,
                             device=str(device),
                             progress=cfg.progress)

    on_main_first(info, make)
    return videos, run


def build_dataset(cfg, info, device: torch.device):
    """The fusion training set of ``cfg.stage`` (see the module docstring)."""
    from dataset.fusion_dataset import FusionDataset
    from util.config import ConfigError

    subset = None
    if cfg.data == "synthetic":
        if cfg.fusion_root:
            from util.trainer import synthetic_video_root

            video_root = synthetic_video_root(cfg.synthetic_root(), cfg.synthetic_preset,
                                              cfg.seed, info)
            fusion_root = Path(cfg.fusion_root)
        elif cfg.arch == "stcn":
            raise ConfigError(
                "--arch stcn --data synthetic needs --fusion-root DIR: the fusion data "
                "generator does not run STCN networks yet; make the data with python -m "
                "dataset.generate_fusion (e.g. from a MiVOS propagation model) for the "
                f"synthetic videos under {cfg.synthetic_root() / cfg.synthetic_preset}")
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


def build_wrapper(cfg, ctx):
    """FusionNet (initialised from ``--load`` unless resuming) + the frozen attention reader."""
    from model.checkpoint import load_weights
    from model.presets import build_fusion, get_preset
    from model.train_wrappers import AttentionReader, FusionTrainWrapper, STCNAttentionReader
    from util.config import ConfigError

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


def main(argv: Sequence[str] | None = None) -> int:
    """Train FusionNet; 0 on success, 2 for bad input (the message names the problem)."""
    from util.config import ConfigError, FusionTrainConfig
    from util.trainer import TrainingParts, run_training

    def build(ctx) -> TrainingParts:
        cfg = ctx.config
        if not cfg.prop_model:
            raise ConfigError("--prop-model FILE (trained propagation weights) is required")
        if not Path(cfg.prop_model).is_file():
            raise FileNotFoundError(f"--prop-model: file not found: {cfg.prop_model}")
        wrapper = build_wrapper(cfg, ctx).to(ctx.device)
        dataset = build_dataset(cfg, ctx.dist, ctx.device)
        return TrainingParts(model=wrapper, network=wrapper.fusion, dataset=dataset,
                             task=FusionTask(cfg.start_warm, cfg.end_warm, cfg.top_p))

    return run_training(FusionTrainConfig, argv, prog="train_fusion.py", description=DESCRIPTION,
                        build=build)


if __name__ == "__main__":
    sys.exit(main())
