"""What the three trainers share: the base configuration, the static data recipe, the
synthetic data, and two pieces of the training forwards.

* :class:`TrainConfig`: the fields of every trainer (data, optimisation, initialisation,
  resuming, run control) with their help texts, the lite training defaults (:meth:`lite`) and
  the resolved ``--amp`` (``auto``, and a bf16 / fp16 that the CPU would emulate). Each
  network's module in ``train/`` subclasses it with its stage presets (REFERENCE.md f.0-f.4:
  Adam with weight decay 1e-7, MultiStepLR with gamma 0.1 stepped every iteration,
  bootstrapped CE with top_p 0.15; batch sizes per process);
* :data:`STATIC_SUBDIRS` / :data:`STATIC_REPEATS`: the static image sets under
  ``<data-root>/static`` (S2M and propagation stage 0);
* :func:`synthetic_static_root` / :func:`synthetic_video_root`: generated data for
  ``--data synthetic`` (:mod:`dataset.synthetic`, cached, made by rank 0);
* :func:`freeze_bn` and :func:`object_probs`: BatchNorm in eval mode, and per-object
  probabilities of object-major logits (propagation and fusion forwards).

The generic loop, hooks, checkpoints and DDP are :mod:`util.trainer`; the command line comes from
the fields through :mod:`util.config`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn as nn

from dataset.synthetic import generate_static_pairs, write_dataset
from util.amp import AMP_FLAG_CHOICES, auto_amp, resolve_amp
from util.config import ConfigError, StagedConfig, opt
from util.trainer import DistInfo, on_main_first

logger = logging.getLogger(__name__)

__all__ = [
    "STATIC_REPEATS",
    "STATIC_SUBDIRS",
    "TrainConfig",
    "freeze_bn",
    "object_probs",
    "require_root",
    "synthetic_static_root",
    "synthetic_video_root",
]

DATA_SOURCES = ("real", "synthetic")
ARCH_PRESETS = ("mivos", "lite")  # model.presets.PRESETS, spelled out for the --help text

#: Sub-folders of the static datasets under <data_root>/static (REFERENCE.md f.2 / f.4) and
#: their repeats.
STATIC_SUBDIRS = ("fss", "DUTS-TR", "DUTS-TE", "ecssd", "BIG_small", "HRSOD_small")
STATIC_REPEATS = (1, 1, 1, 1, 5, 5)

C = TypeVar("C", bound="TrainConfig")


# ============================================================================ configuration


@dataclass
class TrainConfig(StagedConfig):
    """Fields shared by the three trainers (see the subclasses for their stage presets)."""

    # ---- identity / architecture
    stage: str = opt("main", "training stage preset; sets the defaults of all other options")
    preset: str = opt("mivos", "architecture preset of the network: 'mivos' (the paper's) or "
                      "'lite' (ResNet-18, narrow heads; also selects small crops and batches "
                      "for CPU training)", choices=ARCH_PRESETS)
    name: str = opt("run", "run id: prefix of the checkpoint files (<name>_<iter>.pth, "
                    "<name>_checkpoint.pth)")
    output: str = opt("", "run directory (checkpoints, config.json, logs, TensorBoard events, "
                      "image dumps); required", metavar="DIR")
    config: str | None = opt(None, "start from this saved config.json (e.g. of an earlier run); "
                             "flags given on the command line override its values",
                             metavar="FILE")

    # ---- data
    data: str = opt("real", "'real': read the datasets given by the root options; 'synthetic': "
                    "generate (once, cached) a small procedural dataset with dataset.synthetic "
                    "under --data-root (default <output>/data) and train on it",
                    choices=DATA_SOURCES)
    data_root: str | None = opt(None, "base folder of the datasets. Real data: default parent of "
                                "the per-dataset roots (static/, BL30K/, DAVIS/2017/trainval/, "
                                "YouTube/train_480p/, fusion_data/). Synthetic data: where it is "
                                "generated (default <output>/data)", metavar="DIR")
    synthetic_preset: str = opt("train-small", "video preset of dataset.synthetic used with "
                                "--data synthetic ('tiny' is a 3-video test fixture)",
                                choices=("tiny", "train-small", "train-quarter"))
    synthetic_static_count: int = opt(200, "number of static image/mask pairs generated with "
                                      "--data synthetic (static stages)")
    synthetic_static_size: int = opt(256, "side of the generated static images (pixels)")
    crop_size: int = opt(384, "training crop size S (S x S; a multiple of 16)")
    num_workers: int = opt(4, "DataLoader worker processes per training process (0 = load in "
                           "the main process)")

    # ---- optimisation
    iterations: int = opt(100_000, "number of training iterations (optimizer steps)")
    batch_size: int = opt(8, "batch size per process (per GPU); the effective batch is "
                          "batch_size x world size")
    lr: float = opt(1e-4, "Adam learning rate")
    lr_steps: tuple[int, ...] = opt((), "iterations at which the LR is multiplied by "
                                    "--lr-gamma (MultiStepLR, stepped every iteration)",
                                    metavar="IT")
    lr_gamma: float = opt(0.1, "LR decay factor at each of --lr-steps")
    weight_decay: float = opt(1e-7, "Adam weight decay")
    start_warm: int = opt(10_000, "bootstrapped CE: first iteration that keeps only the hardest "
                          "pixels (plain CE before)")
    end_warm: int = opt(30_000, "bootstrapped CE: iteration at which the kept fraction reaches "
                        "--top-p")
    top_p: float = opt(0.15, "bootstrapped CE: final fraction of the hardest pixels kept")
    scale_schedule: bool = opt(True, "when --iterations differs from the stage preset, scale "
                               "--lr-steps and the warm-up window by the same factor (unless "
                               "they are given explicitly)")
    grad_clip: float | None = opt(None, "clip the global gradient norm to this value (none = "
                                  "no clipping)", metavar="NORM")
    amp: str = opt("none", "mixed precision: none, bf16 (autocast) or fp16 (autocast + "
                   "GradScaler on CUDA); auto = fp16 on CUDA, bf16 on a CPU with native bf16 "
                   "(AVX512_BF16 or AMX), else none (decided for the --device; the resolved "
                   "mode is what config.json records). On a CPU without native bf16 (fp16: "
                   "AVX512_FP16 or AMX_FP16) an explicit bf16 (fp16) would be emulated many "
                   "times slower, so it falls back to none with a warning; "
                   "MIVOS_ALLOW_EMULATED_BF16=1 (_FP16=1) keeps it. The MiVOS reference trains "
                   "in fp32, STCN with AMP", choices=AMP_FLAG_CHOICES)

    # ---- initialisation / resuming
    load: str | None = opt(None, "load network weights only (previous stage or official "
                           "file); the iteration counter starts at 0", metavar="FILE")
    imagenet: str | None = opt(None, "initialise the ResNet encoder(s) from a local "
                               "torchvision-format ImageNet state dict", metavar="FILE")
    resume: str | None = opt(None, "resume from a resumable checkpoint: a path, or 'auto' for "
                             "<output>/<name>_checkpoint.pth when it exists (network, optimizer, "
                             "scheduler, iteration, RNG and data position are restored; the "
                             "checkpoint's config is used, flags given here override it; a "
                             "larger --iterations extends the run without rescaling the "
                             "schedule)",
                             metavar="PATH|auto")

    # ---- run control
    seed: int = opt(14159265, "seed of torch / numpy / random, data order and augmentation")
    device: str | None = opt(None, "device (cpu, cuda, cuda:1, ...); default cuda when "
                             "available. Under torchrun each process uses cuda:<LOCAL_RANK>")
    save_interval: int = opt(20_000, "write <name>_<iter>.pth and <name>_checkpoint.pth every "
                             "this many iterations (and always at the end)")
    log_interval: int = opt(100, "log averaged losses / metrics every this many iterations")
    image_interval: int = opt(1000, "dump an image grid (input / GT / prediction overlays) "
                              "every this many iterations (0 = never)")
    stop_at: int | None = opt(None, "stop after this iteration with a resumable checkpoint "
                              "(the schedule still follows --iterations; for pre-emptible jobs "
                              "and tests)", metavar="IT")
    num_threads: int | None = opt(None, "torch intra-op CPU threads of each training process "
                                  "(none = torch's choice). The lite preset uses 1: its small "
                                  "convolutions gain little from more threads, the DataLoader "
                                  "workers need the other cores, and on a busy CPU OpenMP "
                                  "spinning makes 2 threads several times slower than 1",
                                  metavar="N")
    tensorboard: bool = opt(True, "write TensorBoard events under <output>/tb")
    progress: bool = opt(True, "show a tqdm progress bar (rank 0)")
    save_rank_weights: bool = opt(False, "debugging DDP: every rank also writes "
                                  "<name>_rank<r>_final.pth at the end")

    # Subclass interface -------------------------------------------------------------------
    STAGES: ClassVar[dict[str, str]] = {}  # stage name -> constructor name
    DEFAULT_STAGE: ClassVar[str] = "main"
    VARIANTS: ClassVar[dict[str, tuple[str, ...]]] = {"preset": ("lite",)}

    @classmethod
    def defaults_for(cls: type[C], given: Mapping[str, Any]) -> C:
        """The stage preset of ``given["stage"]``, adapted to the propagation architecture
        ``given["arch"]`` (:meth:`for_arch`), then to the lite training defaults when
        ``given["preset"]`` is ``"lite"``."""
        base = cls.for_stage(given.get("stage", cls.DEFAULT_STAGE)).for_arch(given.get("arch"))
        return base.lite() if given.get("preset") == "lite" else base

    def for_arch(self: C, arch: str | None) -> C:
        """The recipe of propagation architecture ``arch`` for this stage (None or "mivos":
        unchanged). Only trainers with an ``arch`` field override it."""
        return self

    def lite(self: C) -> C:
        """Training defaults for the lite preset (overridden by subclasses)."""
        return replace(self, preset="lite", crop_size=96, batch_size=4, num_workers=2,
                       num_threads=1, log_interval=10, image_interval=100)

    def schedule_fields(self) -> tuple[str, ...]:
        """Fields scaled with ``iterations`` when ``scale_schedule`` is on."""
        return ("lr_steps", "start_warm", "end_warm")

    def resolved(self: C) -> C:
        """``--amp`` replaced by the mode used on ``--device`` (float32 is spelled ``"none"``),
        so that ``config.json`` records it: ``auto`` by :func:`util.amp.auto_amp`; an explicit
        bf16 / fp16 that a CPU would emulate falls back to ``"none"`` with a warning
        (:func:`util.amp.resolve_amp`; ``MIVOS_ALLOW_EMULATED_BF16=1`` keeps it)."""
        if self.amp == "auto":
            mode = auto_amp(self.device) or "none"
            logger.info("--amp auto on %s: %s", self.device or "the default device", mode)
            return replace(self, amp=mode)
        if self.amp in ("bf16", "fp16") and resolve_amp(
                self.amp, self.device, what="training") is None:
            return replace(self, amp="none")
        return self

    def summary(self) -> str:
        """One line describing the optimisation schedule (for logs)."""
        steps = ", ".join(str(s) for s in self.lr_steps) or "none"
        return (f"{type(self).__name__} stage {self.stage}: {self.iterations} iterations, "
                f"batch {self.batch_size}/process, crop {self.crop_size}, lr {self.lr:g} "
                f"(steps {steps}, gamma {self.lr_gamma:g}), wd {self.weight_decay:g}, warm-up "
                f"{self.start_warm} -> {self.end_warm} (top_p {self.top_p:g}), amp {self.amp}")

    def validate(self) -> None:
        """Raise :class:`ConfigError` for inconsistent values."""
        if self.stage not in self.STAGES:
            raise ConfigError(f"--stage must be one of {', '.join(self.STAGES)}, got "
                              f"{self.stage!r}")
        if not self.output:
            raise ConfigError("--output (the run directory) is required")
        if self.crop_size <= 0 or self.crop_size % 16:
            raise ConfigError(f"--crop-size must be a positive multiple of 16, got "
                              f"{self.crop_size}")
        for name in ("iterations", "batch_size", "save_interval", "log_interval"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got "
                                  f"{getattr(self, name)}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigError(f"--num-threads must be >= 1, got {self.num_threads}")
        if self.image_interval < 0 or self.num_workers < 0:
            raise ConfigError("--image-interval and --num-workers must be >= 0")
        if self.lr <= 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        if list(self.lr_steps) != sorted(self.lr_steps):
            raise ConfigError(f"--lr-steps must be increasing, got {list(self.lr_steps)}")
        if self.end_warm <= self.start_warm:
            raise ConfigError(f"--end-warm ({self.end_warm}) must be after --start-warm "
                              f"({self.start_warm})")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"--grad-clip must be > 0, got {self.grad_clip}")
        if self.stop_at is not None and not 0 < self.stop_at <= self.iterations:
            raise ConfigError(f"--stop-at must be in 1..{self.iterations}, got {self.stop_at}")
        if self.load and self.resume and self.resume != "auto":
            raise ConfigError("--load and --resume PATH exclude each other (resume restores the "
                              "weights)")

    # Paths ----------------------------------------------------------------------------------
    def synthetic_root(self) -> Path:
        """Folder of generated synthetic data (``<data_root or output/data>/synthetic``)."""
        base = Path(self.data_root) if self.data_root else Path(self.output) / "data"
        return base / "synthetic"

    def real_root(self, explicit: str | None, default_sub: str) -> Path | None:
        """A dataset root: the explicit one, else ``<data_root>/<default_sub>``, else None."""
        if explicit:
            return Path(explicit)
        if self.data_root:
            return Path(self.data_root) / default_sub
        return None


def require_root(root: Path | None, what: str, flag: str) -> Path:
    """``root``, or a ConfigError naming the option that gives it."""
    if root is None:
        raise ConfigError(f"{what} is needed: give {flag} DIR or --data-root DIR (or --data "
                          "synthetic)")
    return root


# ============================================================================ synthetic data


def synthetic_static_root(root: Path, count: int, size: int, seed: int, info: DistInfo) -> Path:
    """Static image/mask pairs from :mod:`dataset.synthetic` under ``root/static`` (cached)."""
    out = Path(root) / "static"

    def make() -> None:
        logger.info("synthetic static pairs: %d x %d px in %s", count, size, out)
        generate_static_pairs(out, count, size, seed)

    on_main_first(info, make)
    return out


def synthetic_video_root(root: Path, preset: str, seed: int, info: DistInfo) -> Path:
    """A DAVIS-layout synthetic video set (``dataset.synthetic`` preset) under
    ``root/<preset>`` (cached: finished sequences are skipped)."""
    out = Path(root) / preset

    def make() -> None:
        logger.info("synthetic videos (%s preset) in %s", preset, out)
        write_dataset(out, preset, seed=seed)

    on_main_first(info, make)
    return out


# ============================================================================ forward pieces


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


def object_probs(logits: torch.Tensor, batch: int, selector: torch.Tensor | None
                 ) -> torch.Tensor:
    """Per-object sigmoid probabilities: logits (K*B) x 1 x H x W, object-major ->
    B x K x H x W (float32), multiplied by the selector (B x K) when given."""
    num_objects = logits.shape[0] // batch
    prob = torch.sigmoid(logits.float()).view(num_objects, batch, *logits.shape[-2:])
    prob = prob.transpose(0, 1)
    if selector is not None:
        prob = prob * selector.to(prob.dtype)[:, :, None, None]
    return prob
