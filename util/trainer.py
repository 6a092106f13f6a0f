"""A small iteration-based trainer with hooks, optional DDP, AMP and exact resuming.

Structure (detectron2-like):

* :class:`Trainer` owns the loop. :meth:`Trainer.run_step` does one optimisation step: next
  batch -> ``task.step`` (forward and loss, under autocast) -> backward (GradScaler for fp16 on
  CUDA) -> optional gradient clipping -> optimizer step. Everything else is a hook.
* Hooks (:class:`HookBase`: ``before_train``, ``before_step``, ``after_step``, ``after_train``):
  :class:`LRSchedulerHook` (steps the scheduler every iteration), :class:`MetricsHook`
  (averaged scalars to the log and TensorBoard), :class:`ImageDumpHook` (visual grids),
  :class:`CheckpointHook` (periodic and final checkpoints), :class:`ProgressHook` (tqdm, rank 0).
* A :class:`TrainTask` adapts one module: it turns a batch into a :class:`StepOutput` (loss,
  scalars, detached visuals), draws the image grid and puts the network in training mode
  (e.g. frozen BatchNorm).

Checkpoints (written atomically, by rank 0):

* ``<name>_<iter>.pth``: the network's plain state dict (no ``module.`` prefix), loadable by
  :func:`model.checkpoint.load_weights` / ``python -m model.checkpoint``;
* ``<name>_checkpoint.pth``: ``{iteration, network, optimizer, scheduler, scaler, config,
  rng, data, world_size, git}`` where ``rng`` holds the torch / numpy / python / CUDA generator
  states of every rank and ``data`` the data stream position (epoch and batches consumed in it).

Exact resuming: data order is a function of ``(seed, epoch)`` (:class:`ShardedSampler`) and
augmentation of ``(seed, epoch, index)`` (the datasets), the loader's worker seeds come from a
private generator, and the global RNGs are restored, so N steps + resume to 2N equals 2N
straight on the CPU.

Distributed: launched by ``torchrun`` (``WORLD_SIZE`` > 1) :func:`init_distributed` starts
the process group (NCCL on CUDA, gloo on CPU); every rank reads a disjoint shard of each
epoch's permutation; the model is wrapped in ``DistributedDataParallel(broadcast_buffers=
False)``. A single process needs no launcher.

Entry: :func:`run_training` is the ``main`` of every trainer. It parses the command line into
the trainer's configuration (a :class:`util.config.StagedConfig` dataclass, e.g.
:class:`train.s2m.S2MTrainConfig`), and the trainer's ``build`` callback returns the
:class:`TrainingParts` (train wrapper, network, task, dataset). This module knows no network and
no dataset: it imports nothing from ``model/``, ``dataset/`` or ``inference/``.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import random
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler, Subset
from tqdm import tqdm

from util.amp import autocast, canonical_amp
from util.config import (
    ConfigError,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    resolve_config,
    save_config,
)
from util.device import resolve_device
from util.errors import InputError, error_line, require_output_dir
from util.filecheck import prescan
from util.fileio import atomic_torch_save
from util.logger import Integrator, TensorBoardWriter, git_hash, save_image_grid, setup_logging

logger = logging.getLogger(__name__)

__all__ = [
    "sync_batchnorm",
    "DistInfo",
    "init_distributed",
    "cleanup_distributed",
    "resolve_device",
    "seed_everything",
    "capture_rng_state",
    "restore_rng_state",
    "ShardedSampler",
    "DataStream",
    "StepOutput",
    "TrainTask",
    "HookBase",
    "LRSchedulerHook",
    "MetricsHook",
    "ImageDumpHook",
    "CheckpointHook",
    "ProgressHook",
    "Trainer",
    "build_optimizer",
    "find_resume_checkpoint",
    "load_resume_checkpoint",
    "to_device",
    "RunContext",
    "start_run",
    "make_trainer",
    "finish_run",
    "on_main_first",
    "prescan_dataset",
    "run_training",
    "save_network_weights",
    "TrainingParts",
]


# ============================================================================ distributed


@dataclass(frozen=True)
class DistInfo:
    """Process-group facts of this process (a single process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str | None) -> tuple[DistInfo, torch.device]:
    """Start the process group when launched by torchrun (``WORLD_SIZE`` > 1).

    Returns the :class:`DistInfo` and this process's device. NCCL on CUDA, gloo on CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), resolve_device(device_name)
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    info = DistInfo(rank=rank, world_size=world, local_rank=local_rank)
    logger.info("distributed: rank %d of %d (%s, %s)", rank, world, backend, device)
    return info, device


def cleanup_distributed() -> None:
    """Destroy the process group if one was started."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for all ranks (no-op in a single process)."""
    if info.distributed and dist.is_initialized():
        dist.barrier()


# ============================================================================ randomness


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy's global generator and ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def capture_rng_state() -> dict[str, Any]:
    """Global generator states of this process, as tensors and plain values
    (loadable with ``torch.load(weights_only=True)``)."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {
            "version": int(py_version),
            "internal": torch.tensor(py_internal, dtype=torch.int64),
            "gauss": py_gauss,
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    npst = state["numpy"]
    np.random.set_state(("MT19937", npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["internal"].tolist()), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def _worker_init(worker_id: int) -> None:
    # Datasets use their own per-sample generators; seed the global ones anyway so that
    # third-party code inside a worker is reproducible too.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


# ============================================================================ data


class ShardedSampler(Sampler[int]):
    """DistributedSampler-equivalent with a resumable position.

    Epoch ``e`` uses the permutation ``randperm(n)`` of a generator seeded with ``seed + e``
    (identity when not shuffling), truncated to a multiple of ``num_replicas`` (``drop_last``)
    or padded by repetition; rank ``r`` takes every ``num_replicas``-th index starting at
    ``r``, and skips the first ``start`` of them (:meth:`set_start`, used when resuming inside
    an epoch).
    """

    def __init__(self, length: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = True):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} out of range for {num_replicas} replicas")
        self.length = int(length)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.epoch = 0
        self.start = 0
        if drop_last:
            self.num_samples = self.length // self.num_replicas
        else:
            self.num_samples = math.ceil(self.length / self.num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` indices of this rank's share of the current epoch."""
        self.start = int(start)

    def indices(self) -> list[int]:
        """This rank's indices of the current epoch (before skipping ``start``)."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.length, generator=g).tolist()
        else:
            order = list(range(self.length))
        total = self.num_samples * self.num_replicas
        if total > len(order):
            order = (order * math.ceil(total / max(len(order), 1)))[:total]
        order = order[:total]
        return order[self.rank:total:self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.start:])

    def __len__(self) -> int:
        return max(self.num_samples - self.start, 0)


def iter_datasets(dataset: Dataset) -> Iterator[Dataset]:
    """``dataset`` and every dataset nested in it (ConcatDataset parts, Subset sources)."""
    yield dataset
    if isinstance(dataset, ConcatDataset):
        for d in dataset.datasets:
            yield from iter_datasets(d)
    elif isinstance(dataset, Subset):
        yield from iter_datasets(dataset.dataset)


class DataStream:
    """Endless batches over epochs with a resumable position.

    Before each epoch ``e`` it calls ``set_epoch(e)`` on every (nested) dataset that has it,
    ``on_epoch(e)`` (e.g. the max_jump curriculum) and the sampler's ``set_epoch``; then it
    iterates a DataLoader over the epoch's shard. ``state_dict()`` = ``{epoch, position}``
    (batches consumed in the epoch); after ``load_state_dict`` the next batch is the one that
    followed in the original run.

    Args:
        dataset: the map-style dataset.
        batch_size: per process.
        info: distributed facts (sharding).
        seed: seed of the order and of the worker seeds.
        num_workers, pin_memory: passed to the DataLoader.
        on_epoch: callback before each epoch.
    """

    def __init__(self, dataset: Dataset, batch_size: int, info: DistInfo = DistInfo(),
                 seed: int = 0, num_workers: int = 0, pin_memory: bool = False,
                 on_epoch: Callable[[int], None] | None = None, shuffle: bool = True):
        self.dataset = dataset
        self.batch_size = int(batch_size)
        n = len(dataset)  # type: ignore[arg-type]
        self.sampler = ShardedSampler(n, info.world_size, info.rank, shuffle=shuffle, seed=seed,
                                      drop_last=True)
        self.batches_per_epoch = self.sampler.num_samples // self.batch_size
        if self.batches_per_epoch < 1:
            raise ValueError(
                f"the training set has {n} samples, fewer than one batch "
                f"({self.batch_size} per process x {info.world_size} processes)")
        self.on_epoch = on_epoch
        self.seed = int(seed)
        self.rank = info.rank
        self.num_workers = int(num_workers)
        self.pin_memory = pin_memory
        self.epoch = 0
        self.position = 0
        self._iter: Iterator | None = None

    def epochs_for(self, iterations: int) -> int:
        """Number of (possibly partial) epochs needed for ``iterations`` batches."""
        return math.ceil(iterations / self.batches_per_epoch)

    def _start_epoch(self) -> None:
        for ds in iter_datasets(self.dataset):
            if hasattr(ds, "set_epoch"):
                ds.set_epoch(self.epoch)
        if self.on_epoch is not None:
            self.on_epoch(self.epoch)
        self.sampler.set_epoch(self.epoch)
        self.sampler.set_start(self.position * self.batch_size)
        g = torch.Generator()
        g.manual_seed(self.seed * 1000 + 100 * self.rank + self.epoch)
        loader = DataLoader(
            self.dataset, batch_size=self.batch_size, sampler=self.sampler,
            num_workers=self.num_workers, pin_memory=self.pin_memory, drop_last=True,
            worker_init_fn=_worker_init if self.num_workers > 0 else None, generator=g,
        )
        self._iter = iter(loader)

    def __iter__(self) -> DataStream:
        return self

    def __next__(self) -> Any:
        if self.position >= self.batches_per_epoch:
            self.epoch += 1
            self.position = 0
            self._iter = None
        if self._iter is None:
            self._start_epoch()
        batch = next(self._iter)  # type: ignore[arg-type]
        self.position += 1
        return batch

    def close(self) -> None:
        """Stop the DataLoader's worker processes now. Left to the garbage collector, an
        iterator with workers is shut down whenever a collection finds it, which can be much
        later (in a process that goes on to other work, e.g. the quickstart) and then waits
        for its workers there."""
        it, self._iter = self._iter, None
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._iter = None


def to_device(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Move every tensor of a (nested) batch to ``device``; other values are kept."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device, non_blocking) for v in batch)
    return batch


def save_network_weights(network: nn.Module, path: str | os.PathLike) -> None:
    """Write ``network``'s plain CPU state dict atomically: the ``<name>_<iter>.pth`` files,
    which :func:`model.checkpoint.load_weights` reads (the network is never the DDP wrapper)."""
    state = {k: v.detach().cpu() for k, v in network.state_dict().items()}
    atomic_torch_save(path, state)
    logger.info("saved %d tensors to %s", len(state), os.fspath(path))


# ============================================================================ task / hooks


@dataclass
class StepOutput:
    """What a task returns for one batch.

    loss: scalar tensor to minimise; scalars: metrics to average and log (floats or 0-dim
    tensors); visuals: detached tensors for :meth:`TrainTask.visualize` (anything).
    """

    loss: torch.Tensor
    scalars: dict[str, float | torch.Tensor] = field(default_factory=dict)
    visuals: Any = None


class TrainTask:
    """Adapter between the generic trainer and one module (subclass and override)."""

    def step(self, model: nn.Module, batch: Mapping[str, Any], it: int) -> StepOutput:
        """Forward + loss for ``batch`` at iteration ``it`` (0-based); runs under autocast."""
        raise NotImplementedError

    def visualize(self, batch: Mapping[str, Any], out: StepOutput) -> torch.Tensor | None:
        """A 3 x H x W image grid in [0, 1] of the last batch (None: nothing to show)."""
        return None

    def set_train_mode(self, model: nn.Module) -> None:
        """Put the (unwrapped) train wrapper in training mode."""
        model.train()


class HookBase:
    """Called by :class:`Trainer`; ``self.trainer`` is set when registered."""

    trainer: Trainer

    def before_train(self) -> None:
        pass

    def before_step(self) -> None:
        pass

    def after_step(self) -> None:
        pass

    def after_train(self) -> None:
        pass


class LRSchedulerHook(HookBase):
    """Steps the LR scheduler after every optimizer step."""

    def after_step(self) -> None:
        if self.trainer.scheduler is not None:
            self.trainer.scheduler.step()


class MetricsHook(HookBase):
    """Averages the step scalars over ``interval`` iterations and all ranks, then logs them
    (rank 0) and writes them to TensorBoard under ``train/``."""

    def __init__(self, interval: int, writer: TensorBoardWriter):
        self.interval = max(int(interval), 1)
        self.writer = writer
        self.integrator = Integrator()
        self._t0 = time.perf_counter()
        self._steps = 0

    def after_step(self) -> None:
        t = self.trainer
        out = t.last_output
        values = {"loss": out.loss.detach(), **out.scalars}
        self.integrator.add(values)
        self.integrator.add({"time/data": t.data_time, "time/step": t.step_time})
        self._steps += 1
        if t.iter % self.interval == 0 or t.iter == t.stop_iter:
            summary = self.integrator.summary(t.device)
            self.integrator.reset()
            elapsed = time.perf_counter() - self._t0
            it_s = self._steps / elapsed if elapsed > 0 else float("nan")
            self._t0, self._steps = time.perf_counter(), 0
            lr = t.optimizer.param_groups[0]["lr"]
            if t.dist.is_main:
                text = " ".join(f"{k}={v:.4g}" for k, v in summary.items()
                                if not k.startswith("time/"))
                logger.info("it %d/%d %s lr=%.3g %.3f it/s (data %.3fs/it)", t.iter,
                            t.max_iter, text, lr, it_s, summary.get("time/data", float("nan")))
                self.writer.scalars(summary, t.iter, prefix="train/")
                self.writer.scalar("train/lr", lr, t.iter)
                self.writer.scalar("train/it_per_s", it_s, t.iter)

    def after_train(self) -> None:
        self.writer.flush()


class ImageDumpHook(HookBase):
    """Every ``interval`` iterations (rank 0): the task's image grid to TensorBoard and to
    ``<run>/images/it_<iter>.png``."""

    def __init__(self, interval: int, writer: TensorBoardWriter, folder: Path):
        self.interval = int(interval)
        self.writer = writer
        self.folder = Path(folder)

    def after_step(self) -> None:
        t = self.trainer
        if self.interval <= 0 or t.iter % self.interval != 0 or not t.dist.is_main:
            return
        with torch.no_grad():
            grid = t.task.visualize(t.last_batch, t.last_output)
        if grid is None:
            return
        self.writer.image("train/visual", grid, t.iter)
        save_image_grid(self.folder / f"it_{t.iter:07d}.png", grid)


class CheckpointHook(HookBase):
    """Writes ``<name>_<iter>.pth`` + ``<name>_checkpoint.pth`` every ``interval`` iterations
    and at the end; at the end of the full schedule also ``<name>_final.pth``."""

    def __init__(self, interval: int):
        self.interval = max(int(interval), 1)

    def after_step(self) -> None:
        t = self.trainer
        if t.iter % self.interval == 0 and t.iter < t.stop_iter:
            t.save_checkpoint()

    def after_train(self) -> None:
        t = self.trainer
        t.save_checkpoint(final=t.iter >= t.max_iter)


class ProgressHook(HookBase):
    """tqdm progress bar on rank 0 (loss in the postfix)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bar = None

    def before_train(self) -> None:
        t = self.trainer
        if self.enabled and t.dist.is_main:
            self.bar = tqdm(total=t.stop_iter, initial=t.iter, desc=t.name, unit="it",
                            dynamic_ncols=True)

    def after_step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{float(self.trainer.last_output.loss.detach()):.4f}",
                                 refresh=False)

    def after_train(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# ============================================================================ trainer


def build_optimizer(params: Sequence[nn.Parameter] | Iterator[nn.Parameter], lr: float,
                    weight_decay: float, lr_steps: Sequence[int], gamma: float
                    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Adam (default betas / eps) + MultiStepLR stepped per iteration (REFERENCE.md f.0)."""
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ValueError("no trainable parameters")
    optimizer = torch.optim.Adam(trainable, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(lr_steps), gamma)
    return optimizer, scheduler


def find_resume_checkpoint(output: str | os.PathLike, name: str) -> Path | None:
    """``<output>/<name>_checkpoint.pth`` if it exists."""
    p = Path(output) / f"{name}_checkpoint.pth"
    return p if p.is_file() else None


def load_resume_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a resumable checkpoint on the CPU (``weights_only=True``)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"resume checkpoint not found: {p}")
    ckpt = torch.load(p, map_location="cpu", weights_only=True)
    missing = [k for k in ("iteration", "network", "optimizer", "config") if k not in ckpt]
    if missing:
        raise ValueError(f"{p} is not a resumable checkpoint (missing {missing}); "
                         "use --load for weights-only files")
    return ckpt


class Trainer:
    """Iteration-based training loop.

    Args:
        name: run id (checkpoint file prefix).
        model: the train wrapper (an ``nn.Module`` whose forward the task calls); wrapped in
            DDP here when distributed.
        network: the module whose weights are saved (e.g. ``model.net``).
        task: a :class:`TrainTask`.
        optimizer, scheduler: see :func:`build_optimizer`.
        data: a :class:`DataStream`.
        run_dir: output folder.
        device: this process's device.
        dist_info: distributed facts.
        iterations: total schedule length; ``stop_at``: stop earlier (resumable).
        amp: an autocast name of :mod:`util.amp` (``"none"`` / None, ``"bf16"``, ``"fp16"``);
            ``grad_clip``: max global norm or None.
        config: JSON-ready config dict stored in every resumable checkpoint.
        hooks: hooks in call order (see :meth:`default_hooks`).
    """

    def __init__(self, *, name: str, model: nn.Module, network: nn.Module, task: TrainTask,
                 optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler | None, data: DataStream,
                 run_dir: str | os.PathLike, device: torch.device,
                 dist_info: DistInfo = DistInfo(), iterations: int, stop_at: int | None = None,
                 amp: str = "none", grad_clip: float | None = None,
                 config: Mapping[str, Any] | None = None, hooks: Sequence[HookBase] = ()):
        self.name = name
        self.module = model
        self.network = network
        self.task = task
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.data = data
        self.run_dir = Path(run_dir)
        self.device = device
        self.dist = dist_info
        self.max_iter = int(iterations)
        self.stop_iter = int(stop_at) if stop_at is not None else self.max_iter
        self.grad_clip = grad_clip
        self.config = dict(config or {})
        self.git = git_hash()
        self.iter = 0
        self.last_output: StepOutput | None = None
        self.last_batch: Any = None
        self.data_time = 0.0
        self.step_time = 0.0

        self.amp = canonical_amp(amp)  # None (float32), "bf16" or "fp16"
        use_scaler = self.amp == "fp16" and device.type == "cuda"
        if self.amp == "fp16" and not use_scaler:
            logger.warning("fp16 autocast on %s runs without a GradScaler", device.type)
        self.scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)

        if self.dist.distributed:
            ids = [device.index] if device.type == "cuda" else None
            with warnings.catch_warnings():
                # newer torch suggests forward_sync_buffers, which still syncs buffers at init;
                # the reference semantics are broadcast_buffers=False
                warnings.filterwarnings("ignore", message=".*broadcast_buffers.*")
                self.model: nn.Module = nn.parallel.DistributedDataParallel(
                    model, device_ids=ids, broadcast_buffers=False)
        else:
            self.model = model
        self._hooks: list[HookBase] = []
        self.register_hooks(hooks)

    # -------------------------------------------------------------- hooks
    def register_hooks(self, hooks: Sequence[HookBase]) -> None:
        for h in hooks:
            h.trainer = self
            self._hooks.append(h)

    @staticmethod
    def default_hooks(*, writer: TensorBoardWriter, run_dir: Path, log_interval: int,
                      image_interval: int, save_interval: int, progress: bool
                      ) -> list[HookBase]:
        """Scheduler, metrics, image dumps, checkpoints, progress bar (in this order)."""
        return [
            LRSchedulerHook(),
            MetricsHook(log_interval, writer),
            ImageDumpHook(image_interval, writer, Path(run_dir) / "images"),
            CheckpointHook(save_interval),
            ProgressHook(progress),
        ]

    # -------------------------------------------------------------- loop
    def train(self) -> None:
        """Run from the current iteration to ``stop_iter`` (then the after_train hooks)."""
        self.task.set_train_mode(self.module)
        logger.info("training %s from iteration %d to %d (schedule: %d)", self.name, self.iter,
                    self.stop_iter, self.max_iter)
        for h in self._hooks:
            h.before_train()
        while self.iter < self.stop_iter:
            for h in self._hooks:
                h.before_step()
            self.run_step()
            self.iter += 1
            for h in self._hooks:
                h.after_step()
        for h in self._hooks:
            h.after_train()
        self.check_replicas()

    def run_step(self) -> None:
        """One optimisation step on the next batch (iteration index ``self.iter``)."""
        t0 = time.perf_counter()
        batch = to_device(next(self.data), self.device, non_blocking=True)
        t1 = time.perf_counter()
        with autocast(self.device, self.amp):
            out = self.task.step(self.model, batch, self.iter)
        loss = out.loss
        if not torch.isfinite(loss.detach()).all():
            raise FloatingPointError(f"loss is {float(loss)} at iteration {self.iter}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
            out.scalars["grad_norm"] = norm.detach()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.last_output = out
        self.last_batch = batch
        self.data_time = t1 - t0
        self.step_time = time.perf_counter() - t0

    # -------------------------------------------------------------- checkpoints
    def _gather_rng(self) -> list[dict[str, Any]]:
        mine = capture_rng_state()
        if not self.dist.distributed:
            return [mine]
        gathered: list[Any] = [None] * self.dist.world_size
        dist.all_gather_object(gathered, mine)
        return gathered

    def checkpoint_state(self) -> dict[str, Any]:
        """The resumable state (collective when distributed: call on every rank)."""
        return {
            "iteration": self.iter,
            "network": {k: v.detach().cpu() for k, v in self.network.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "config": self.config,
            "rng": self._gather_rng(),
            "data": self.data.state_dict(),
            "world_size": self.dist.world_size,
            "git": self.git,
        }

    def save_checkpoint(self, final: bool = False) -> None:
        """Weights ``<name>_<iter>.pth`` and resumable ``<name>_checkpoint.pth`` (rank 0
        writes; every rank must call). ``final`` adds ``<name>_final.pth``."""
        state = self.checkpoint_state()
        if self.dist.is_main:
            weights = self.run_dir / f"{self.name}_{self.iter}.pth"
            save_network_weights(self.network, weights)
            atomic_torch_save(self.run_dir / f"{self.name}_checkpoint.pth", state)
            if final:
                final_path = self.run_dir / f"{self.name}_final.pth"
                tmp = final_path.with_name(f".{final_path.name}.tmp")
                shutil.copyfile(weights, tmp)
                os.replace(tmp, final_path)
            logger.info("iteration %d: saved %s%s", self.iter, weights,
                        " (final)" if final else "")
        barrier(self.dist)

    def resume(self, path: str | os.PathLike) -> None:
        """Restore network, optimizer, scheduler, scaler, iteration, data position, RNG."""
        ckpt = load_resume_checkpoint(path)
        self.network.load_state_dict(ckpt["network"], strict=True)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and ckpt.get("scheduler") is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler") is not None and self.scaler.is_enabled():
            self.scaler.load_state_dict(ckpt["scaler"])
        self.iter = int(ckpt["iteration"])
        saved_world = int(ckpt.get("world_size", 1))
        if saved_world != self.dist.world_size:
            logger.warning("%s was written by %d processes, resuming with %d: the data order "
                           "after this point differs from an uninterrupted run", path,
                           saved_world, self.dist.world_size)
        if ckpt.get("data") is not None:
            self.data.load_state_dict(ckpt["data"])
        rngs = ckpt.get("rng") or []
        if rngs:
            restore_rng_state(rngs[self.dist.rank] if self.dist.rank < len(rngs) else rngs[0])
        logger.info("resumed from %s at iteration %d (epoch %d, batch %d)", path, self.iter,
                    self.data.epoch, self.data.position)
        if self.iter >= self.stop_iter:
            logger.warning("the checkpoint is already at iteration %d >= %d: nothing to train",
                           self.iter, self.stop_iter)

    def check_replicas(self) -> bool:
        """Distributed: compare a checksum of every parameter across ranks; False (and a
        warning) when the replicas differ."""
        if not self.dist.distributed:
            return True
        sums = torch.stack([p.detach().double().sum() for p in self.network.parameters()])
        gathered = [torch.zeros_like(sums) for _ in range(self.dist.world_size)]
        dist.all_gather(gathered, sums)
        same = all(torch.equal(gathered[0], g) for g in gathered[1:])
        if not same:
            logger.warning("DDP replicas hold different weights after training")
        return same


# ============================================================================ script helpers


#: Config fields that control one invocation; a resumed run does not take them from the
#: checkpoint's stored config (they come from the new command line or the defaults).
RUNTIME_FIELDS = ("stop_at", "resume", "device", "progress", "save_rank_weights", "config",
                  "num_threads")


@dataclass
class RunContext:
    """Everything a training script sets up before building its model.

    config: the resolved config (e.g. a :class:`train.common.TrainConfig`); overrides: the
    flags given on the command line; dist / device: see :func:`init_distributed`; run_dir:
    ``config.output``; resume_path: the checkpoint to resume from (None: fresh start);
    writer: TensorBoard writer (a no-op except on rank 0).
    """

    config: Any
    overrides: dict[str, Any]
    dist: DistInfo
    device: torch.device
    run_dir: Path
    resume_path: Path | None
    writer: TensorBoardWriter


def start_run(config_cls: type, argv: Sequence[str] | None, *, prog: str, description: str,
              epilog: str | None = None) -> RunContext:
    """Parse the command line, pick the resume checkpoint (whose stored config then replaces
    the presets, with the given flags on top), start the process group, create the run
    directory, configure logging, seed the RNGs and save ``config.json`` (rank 0).

    Raises SystemExit for malformed flags, ConfigError / FileNotFoundError for bad values.
    """
    cfg, overrides = resolve_config(config_cls, argv, prog=prog, description=description,
                                    epilog=epilog)
    resume_path: Path | None = None
    if cfg.resume:
        if cfg.resume == "auto":
            resume_path = find_resume_checkpoint(cfg.output, cfg.name)
        else:
            resume_path = Path(cfg.resume)
            if not resume_path.is_file():
                raise FileNotFoundError(f"--resume: checkpoint not found: {resume_path}")
        if resume_path is not None:
            stored = dict(load_resume_checkpoint(resume_path)["config"])
            for key in RUNTIME_FIELDS:  # per-invocation controls do not carry over
                stored.pop(key, None)
            cfg = apply_overrides(config_from_dict(config_cls, stored, str(resume_path)),
                                  overrides, scale=False)
            cfg.validate()
    require_output_dir(cfg.output)
    info, device = init_distributed(cfg.device)
    run_dir = Path(cfg.output)
    run_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(run_dir, info.rank)
    if cfg.resume and resume_path is None:
        logger.info("--resume auto: no %s_checkpoint.pth in %s, starting from scratch",
                    cfg.name, run_dir)
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    seed_everything(cfg.seed)
    logger.info("%s", cfg.summary())
    logger.info("device %s, %d process(es), git %s", device, info.world_size, git_hash())
    if info.is_main:
        save_config(cfg, run_dir / "config.json")
    writer = TensorBoardWriter(run_dir / "tb", enabled=cfg.tensorboard and info.is_main)
    writer.text("config", "\n".join(f"    {k}: {v}" for k, v in config_to_dict(cfg).items()))
    return RunContext(cfg, overrides, info, device, run_dir, resume_path, writer)


def make_trainer(ctx: RunContext, *, model: nn.Module, network: nn.Module, task: TrainTask,
                 data: DataStream) -> Trainer:
    """Adam + MultiStepLR over the network's trainable parameters, default hooks, and the
    resume checkpoint restored when there is one."""
    cfg = ctx.config
    optimizer, scheduler = build_optimizer(network.parameters(), cfg.lr, cfg.weight_decay,
                                           cfg.lr_steps, cfg.lr_gamma)
    hooks = Trainer.default_hooks(writer=ctx.writer, run_dir=ctx.run_dir,
                                  log_interval=cfg.log_interval,
                                  image_interval=cfg.image_interval,
                                  save_interval=cfg.save_interval, progress=cfg.progress)
    trainer = Trainer(name=cfg.name, model=model, network=network, task=task,
                      optimizer=optimizer, scheduler=scheduler, data=data, run_dir=ctx.run_dir,
                      device=ctx.device, dist_info=ctx.dist, iterations=cfg.iterations,
                      stop_at=cfg.stop_at, amp=cfg.amp, grad_clip=cfg.grad_clip,
                      config=config_to_dict(cfg), hooks=hooks)
    if ctx.resume_path is not None:
        trainer.resume(ctx.resume_path)
    return trainer


def finish_run(ctx: RunContext, trainer: Trainer) -> None:
    """Optional per-rank weights (``--save-rank-weights``), close TensorBoard."""
    if ctx.config.save_rank_weights:
        save_network_weights(trainer.network,
                             ctx.run_dir / f"{ctx.config.name}_rank{ctx.dist.rank}_final.pth")
    ctx.writer.close()


@dataclass
class TrainingParts:
    """What a training script builds for one run (the rest is common to all trainers).

    configure_data: optional callback given the :class:`DataStream` before training (e.g. to
    install the propagation curriculum as its ``on_epoch``).
    """

    model: nn.Module
    network: nn.Module
    task: TrainTask
    dataset: Dataset
    configure_data: Callable[[DataStream], None] | None = None


def prescan_dataset(dataset: Dataset, info: DistInfo = DistInfo()) -> int:
    """Check every file a training set will read, once, before step 0 (fast header checks,
    :func:`util.filecheck.prescan`): a missing, empty, truncated or undecodable file, a mask of
    another size than its image, an RGB annotation. Datasets take part by providing
    ``input_files() -> list[util.filecheck.FileGroup]``. Under DDP each rank checks a share and
    every rank raises the first problem found by any. Returns the number of files checked here."""
    groups = [g for ds in iter_datasets(dataset) if hasattr(ds, "input_files")
              for g in ds.input_files()]
    groups = list(dict.fromkeys(groups))
    error: InputError | None = None
    checked = 0
    try:
        checked = prescan(groups[info.rank::info.world_size])
    except InputError as exc:
        error = exc
    if info.distributed and dist.is_initialized():
        messages: list[Any] = [None] * info.world_size
        dist.all_gather_object(messages, None if error is None else (str(error), error.path))
        first = next((m for m in messages if m is not None), None)
        if first is not None and error is None:
            error = InputError(first[0], first[1])
    if error is not None:
        raise error
    return checked


def run_training(config_cls: type, argv: Sequence[str] | None, *, prog: str, description: str,
                 build: Callable[[RunContext], TrainingParts],
                 after: Callable[[RunContext], None] | None = None) -> int:
    """The entry point shared by the three trainers: start the run, ``build`` its parts,
    check the training files (:func:`prescan_dataset`), train, finish. Returns 0 on success and
    2 for bad input (config, data, checkpoint, a missing file, an output path that is a file),
    reported as one line ``error: <file>: <problem>``; the process group is always torn down."""
    data: DataStream | None = None
    try:
        ctx = start_run(config_cls, argv, prog=prog, description=description)
        parts = build(ctx)
        prescan_dataset(parts.dataset, ctx.dist)
        cfg = ctx.config
        data = DataStream(parts.dataset, cfg.batch_size, ctx.dist, seed=cfg.seed,
                          num_workers=cfg.num_workers, pin_memory=ctx.device.type == "cuda")
        if parts.configure_data is not None:
            parts.configure_data(data)
        trainer = make_trainer(ctx, model=parts.model, network=parts.network, task=parts.task,
                               data=data)
        trainer.train()
        finish_run(ctx, trainer)
        if after is not None:
            after(ctx)
        return 0
    except (ConfigError, InputError, FileNotFoundError) as e:
        line = error_line(e)
        logging.getLogger(prog.removesuffix(".py")).error("%s", line.removeprefix("error: "))
        logging.getLogger(prog.removesuffix(".py")).debug("bad input", exc_info=True)
        print(line, file=sys.stderr)
        return 2
    finally:
        if data is not None:
            data.close()
        cleanup_distributed()


def on_main_first(info: DistInfo, fn: Callable[[], Any]) -> None:
    """Run ``fn`` on rank 0 only (e.g. data generation) while the other ranks wait."""
    if info.is_main:
        fn()
    barrier(info)


def sync_batchnorm(wrapper: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """``wrapper`` with SyncBatchNorm layers when training under DDP on CUDA (batch statistics
    over all processes, identical running statistics on every rank). Elsewhere the wrapper is
    returned unchanged: SyncBatchNorm needs CUDA, so CPU processes keep their own statistics
    (rank 0's are the ones saved)."""
    if not info.distributed:
        return wrapper
    if device.type != "cuda":
        logger.warning("SyncBatchNorm needs CUDA; using per-process BatchNorm on %s", device)
        return wrapper
    return nn.SyncBatchNorm.convert_sync_batchnorm(wrapper)
