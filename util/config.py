"""Typed training configurations, named stage presets and a command line generated from them.

One dataclass per trainer (:class:`S2MTrainConfig`, :class:`PropTrainConfig`,
:class:`FusionTrainConfig`), all sharing :class:`TrainConfig`. Every field carries its help text
in its metadata; :func:`build_parser` turns the fields into ``--flags`` and :func:`resolve_config`
combines, in this order:

1. the **stage preset** (a named constructor, e.g. ``PropTrainConfig.s1()``) chosen by
   ``--stage`` (or the stage stored in ``--config FILE.json``), adapted to the propagation
   architecture's recipe by :meth:`TrainConfig.for_arch` (``--arch stcn``: REFERENCE.md j.1);
2. the **lite** training defaults (smaller crops and batches) when ``--preset lite``;
3. the fields of ``--config FILE.json`` (a saved ``config.json`` of an earlier run);
4. the flags given on the command line (only those actually given).

When ``--iterations`` is changed and ``scale_schedule`` is on, the LR milestones and the
bootstrapping warm-up window are scaled by the same factor unless they are given explicitly
(so ``--iterations 2000`` keeps the shape of the schedule).

Hyper-parameters of the presets follow the reference spec, sections f.0-f.4: Adam with weight
decay 1e-7, MultiStepLR with gamma 0.1 stepped every iteration, bootstrapped CE with top_p 0.15;
batch sizes are per process (per GPU).

The resolved configuration is written as ``config.json`` into the run directory and stored in
every resumable checkpoint (see :mod:`util.trainer`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from model.presets import PROPAGATION_ARCHS
from util.amp import AMP_FLAG_CHOICES, auto_amp

logger = logging.getLogger(__name__)

__all__ = [
    "ConfigError",
    "TrainConfig",
    "S2MTrainConfig",
    "PropTrainConfig",
    "FusionTrainConfig",
    "opt",
    "build_parser",
    "resolve_config",
    "apply_overrides",
    "config_to_dict",
    "config_from_dict",
    "save_config",
    "load_config_file",
]
DATA_SOURCES = ("real", "synthetic")
ARCH_PRESETS = ("mivos", "lite")

C = TypeVar("C", bound="TrainConfig")


class ConfigError(ValueError):
    """An invalid configuration value (message names the field / flag)."""


def opt(default: Any, help: str, *, choices: Sequence[Any] | None = None,
        metavar: str | None = None, flag: str | None = None, cli: bool = True) -> Any:
    """A dataclass field with CLI metadata.

    Args:
        default: default value (immutable: use tuples for sequences).
        help: help text shown by ``--help``.
        choices: allowed values.
        metavar: name shown in the usage.
        flag: the long option (default ``--`` + field name with ``-`` for ``_``).
        cli: False to keep the field out of the command line (set programmatically).
    """
    meta = {"help": help, "choices": choices, "metavar": metavar, "flag": flag, "cli": cli}
    return field(default=default, metadata=meta)


# ============================================================================ base configuration


@dataclass
class TrainConfig:
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
                   "mode is what config.json records). The MiVOS reference trains in fp32, "
                   "STCN with AMP", choices=AMP_FLAG_CHOICES)

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
    KIND: ClassVar[str] = ""  # network kind for model.checkpoint (s2m / propagation / fusion)

    @classmethod
    def for_stage(cls: type[C], stage: str) -> C:
        """The named stage preset (raises ConfigError for an unknown stage)."""
        if stage not in cls.STAGES:
            raise ConfigError(
                f"unknown stage {stage!r} for {cls.__name__}; valid: {', '.join(cls.STAGES)}")
        return getattr(cls, cls.STAGES[stage])()

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
                raise ConfigError(f"--{_flag_name(name)} must be >= 1, got {getattr(self, name)}")
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


def _flag_name(name: str) -> str:
    return name.replace("_", "-")


# ============================================================================ S2M


#: Sub-folders of the static datasets under <data_root>/static (REFERENCE.md f.2 / f.4) and their repeats.
STATIC_SUBDIRS = ("fss", "DUTS-TR", "DUTS-TE", "ecssd", "BIG_small", "HRSOD_small")
STATIC_REPEATS = (1, 1, 1, 1, 5, 5)


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

    STAGES: ClassVar[dict[str, str]] = {"main": "main"}
    DEFAULT_STAGE: ClassVar[str] = "main"
    KIND: ClassVar[str] = "s2m"

    @classmethod
    def main(cls) -> S2MTrainConfig:
        """REFERENCE.md f.4: batch 16 per GPU, 80K iterations, LR 1e-4 constant, warm-up 10K -> 30K,
        crop 480, saves every 20K."""
        return cls(stage="main", name="s2m", iterations=80_000, batch_size=16, lr=1e-4,
                   lr_steps=(), start_warm=10_000, end_warm=30_000, crop_size=480,
                   save_interval=20_000)

    def lite(self) -> S2MTrainConfig:
        return replace(super().lite(), crop_size=96, batch_size=8)


# ============================================================================ propagation


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
    KIND: ClassVar[str] = "propagation"

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


# ============================================================================ fusion


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
    KIND: ClassVar[str] = "fusion"

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


# ============================================================================ (de)serialisation


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _split_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _coerce(name: str, tp: Any, value: Any) -> Any:
    """Convert a JSON value to the field type ``tp`` (lists -> tuples, ints -> floats)."""
    base, optional = _split_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"field {name!r} may not be null")
    if typing.get_origin(base) is tuple:
        elem = typing.get_args(base)[0]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"field {name!r} must be a list, got {value!r}")
        return tuple(_coerce(name, elem, v) for v in value)
    if base is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"field {name!r} must be true/false, got {value!r}")
        return value
    if base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"field {name!r} must be a number, got {value!r}")
        return float(value)
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"field {name!r} must be an integer, got {value!r}")
        return value
    if base is str:
        if not isinstance(value, str):
            raise ConfigError(f"field {name!r} must be a string, got {value!r}")
        return value
    raise ConfigError(f"field {name!r} has an unsupported type {tp!r}")


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """JSON-ready dict of all fields (tuples become lists), plus ``_type`` (the class name)."""
    out: dict[str, Any] = {"_type": type(cfg).__name__}
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def config_from_dict(cls: type[C], data: Mapping[str, Any], source: str = "config") -> C:
    """Build ``cls`` from a dict written by :func:`config_to_dict`.

    Unknown fields raise ConfigError (naming ``source``); missing fields take the default of
    the stored stage's preset.
    """
    data = dict(data)
    typ = data.pop("_type", cls.__name__)
    if typ != cls.__name__:
        raise ConfigError(f"{source} holds a {typ}, not a {cls.__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{source}: unknown fields {unknown}")
    stage = data.get("stage", cls.DEFAULT_STAGE)
    base = cls.for_stage(stage).for_arch(data.get("arch"))
    if data.get("preset") == "lite":
        base = base.lite()
    hints = _hints(cls)
    values = {k: _coerce(k, hints[k], v) for k, v in data.items()}
    return replace(base, **values)


def save_config(cfg: TrainConfig, path: str | os.PathLike) -> None:
    """Write the config as JSON atomically."""
    from util.fileio import atomic_save_json

    atomic_save_json(path, config_to_dict(cfg))


def load_config_file(cls: type[C], path: str | os.PathLike) -> C:
    """Read a JSON config file written by :func:`save_config`."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = json.loads(p.read_text())
    except ValueError as e:
        raise ConfigError(f"config file {p} is not valid JSON: {e}") from e
    return config_from_dict(cls, data, source=str(p))


# ============================================================================ command line


def _parse_none(conv: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if text.lower() in ("none", "null", ""):
            return None
        return conv(text)

    parse.__name__ = getattr(conv, "__name__", "value")
    return parse


def _format_default(v: Any) -> str:
    if isinstance(v, tuple):
        return " ".join(_format_default(x) for x in v) if v else "(empty)"
    if isinstance(v, float):
        return f"{v:g}"
    if v is None:
        return "none"
    if v == "":
        return "(unset)"
    return str(v)


def _grouped(values: dict[str, str]) -> str:
    groups: dict[str, list[str]] = {}
    for stage, v in values.items():
        groups.setdefault(v, []).append(stage)
    if len(groups) == 1:
        return next(iter(groups))
    return ", ".join(f"{'/'.join(stages)}: {v}" for v, stages in groups.items())


def _default_text(cls: type[TrainConfig], name: str) -> str:
    """'default: X', listing per-stage and lite defaults where they differ."""
    if name == "stage":
        return f"default: {cls.DEFAULT_STAGE}"
    if name in ("preset", "arch"):
        return "default: mivos"
    mivos = {s: _format_default(getattr(cls.for_stage(s), name)) for s in cls.STAGES}
    lite = {s: _format_default(getattr(cls.for_stage(s).lite(), name)) for s in cls.STAGES}
    stcn = {s: _format_default(getattr(cls.for_stage(s).for_arch("stcn"), name))
            for s in cls.STAGES} if "arch" in _hints(cls) else mivos
    text = f"default: {_grouped(mivos)}"
    if lite != mivos:
        text += f"; with --preset lite: {_grouped(lite)}"
    if stcn != mivos:
        text += f"; with --arch stcn: {_grouped(stcn)}"
    return text


def build_parser(cls: type[TrainConfig], prog: str | None = None,
                 description: str | None = None, epilog: str | None = None
                 ) -> argparse.ArgumentParser:
    """An argparse parser with one option per CLI field of ``cls``.

    All defaults are ``argparse.SUPPRESS`` so that the parsed namespace holds only the flags
    actually given; the displayed defaults are those of the stage presets (and lite).
    """
    parser = argparse.ArgumentParser(
        prog=prog, description=description, epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter, argument_default=argparse.SUPPRESS)
    hints = _hints(cls)
    for f in fields(cls):
        meta = f.metadata
        if not meta.get("cli", True):
            continue
        flag = meta.get("flag") or f"--{_flag_name(f.name)}"
        base, optional = _split_optional(hints[f.name])
        help_text = f"{meta.get('help', '')} ({_default_text(cls, f.name)})"
        kw: dict[str, Any] = {"dest": f.name, "help": help_text}
        if f.name == "stage":
            kw["choices"] = list(cls.STAGES)
        elif meta.get("choices"):
            kw["choices"] = list(meta["choices"])
        if meta.get("metavar"):
            kw["metavar"] = meta["metavar"]
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
            continue
        if typing.get_origin(base) is tuple:
            elem = typing.get_args(base)[0]
            kw["nargs"] = "*"
            kw["type"] = elem
        else:
            kw["type"] = _parse_none(base) if optional else base
        parser.add_argument(flag, **kw)
    return parser


def _scale_schedule(cfg: C, base_iterations: int, explicit: set[str]) -> C:
    if cfg.iterations == base_iterations or not cfg.scale_schedule:
        return cfg
    factor = cfg.iterations / base_iterations
    changes: dict[str, Any] = {}
    for name in cfg.schedule_fields():
        if name in explicit:
            continue
        v = getattr(cfg, name)
        if isinstance(v, tuple):
            changes[name] = tuple(max(1, int(round(x * factor))) for x in v)
        else:
            changes[name] = int(round(v * factor))
    if changes.get("end_warm") is not None and changes.get("start_warm") is not None:
        if changes["end_warm"] <= changes["start_warm"]:
            changes["end_warm"] = changes["start_warm"] + 1
    if changes:
        logger.info("iterations %d -> %d: scaled %s", base_iterations, cfg.iterations,
                    ", ".join(f"{k}={_format_default(v)}" for k, v in changes.items()))
    return replace(cfg, **changes)


def apply_overrides(cfg: C, overrides: Mapping[str, Any], scale: bool = True) -> C:
    """``cfg`` with the given field values; when ``iterations`` changed (and ``scale`` and
    ``cfg.scale_schedule``), the schedule fields not given are scaled by the same factor.
    Resuming passes ``scale=False``: extending a run keeps its schedule."""
    hints = _hints(type(cfg))
    values = {}
    for k, v in overrides.items():
        if k not in hints:
            raise ConfigError(f"unknown option {k!r}")
        values[k] = tuple(v) if isinstance(v, list) else v
    base_iterations = cfg.iterations
    out = replace(cfg, **values)
    if "iterations" in values and scale:
        out = _scale_schedule(out, base_iterations, set(values))
    if out.amp == "auto":
        mode = auto_amp(out.device) or "none"
        logger.info("--amp auto on %s: %s", out.device or "the default device", mode)
        out = replace(out, amp=mode)
    return out


def resolve_config(cls: type[C], argv: Sequence[str] | None = None, *, prog: str | None = None,
                   description: str | None = None, epilog: str | None = None
                   ) -> tuple[C, dict[str, Any]]:
    """Parse ``argv`` into a validated config of type ``cls``.

    Returns ``(config, overrides)`` where ``overrides`` holds the values given on the command
    line (used again when resuming from a checkpoint's stored config).
    Raises SystemExit (argparse) for malformed flags and ConfigError for invalid values.
    """
    parser = build_parser(cls, prog=prog, description=description, epilog=epilog)
    ns = vars(parser.parse_args(argv))
    overrides = {k: v for k, v in ns.items()}
    if "config" in overrides and overrides["config"]:
        file_cfg = load_config_file(cls, overrides["config"])
        base = file_cfg
        if "stage" in overrides and overrides["stage"] != file_cfg.stage:
            base = cls.for_stage(overrides["stage"])
    else:
        base = cls.for_stage(overrides.get("stage", cls.DEFAULT_STAGE))
        base = base.for_arch(overrides.get("arch"))
        if overrides.get("preset") == "lite":
            base = base.lite()
    cfg = apply_overrides(base, overrides)
    cfg.validate()
    return cfg, overrides


def schedule_summary(cfg: TrainConfig) -> str:
    """One line describing the optimisation schedule (for logs)."""
    steps = ", ".join(str(s) for s in cfg.lr_steps) or "none"
    return (f"{type(cfg).__name__} stage {cfg.stage}: {cfg.iterations} iterations, "
            f"batch {cfg.batch_size}/process, crop {cfg.crop_size}, lr {cfg.lr:g} (steps {steps}, "
            f"gamma {cfg.lr_gamma:g}), wd {cfg.weight_decay:g}, warm-up {cfg.start_warm} -> "
            f"{cfg.end_warm} (top_p {cfg.top_p:g}), amp {cfg.amp}")


def parse_top_k(value: str) -> int | None:
    """``'none'`` (full softmax) or a positive integer."""
    if value.strip().lower() in ("none", "full"):
        return None
    try:
        k = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"top-k must be a positive integer or 'none', got {value!r}") from None
    if k < 1:
        raise argparse.ArgumentTypeError(f"top-k must be a positive integer or 'none', got {value!r}")
    return k
