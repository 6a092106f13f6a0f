"""Per-video interactive inference: bidirectional propagation and difference-aware fusion.

One :class:`InferenceCore` owns everything about one video (frames, per-object probabilities,
interacted frames, permanent memory, caches); the networks it is given stay stateless.

Schedule of one interaction on frame ``r`` (``interact``):

1. ``D = new mask - stored probabilities of r`` gives the positive / negative differences;
   the new mask replaces the stored probabilities of ``r``, and ``r`` is encoded into the
   permanent memory (every interacted frame stays in memory for the rest of the session).
2. A forward pass over ``r+1 .. c-1`` (``c`` = next interacted frame, or the end) and a backward
   pass over ``r-1 .. c+1`` (``c`` = previous interacted frame, or -1). A pass never overwrites an
   interacted frame. Its memory is the permanent memory plus every ``mem_every``-th frame of the
   pass counted from ``r`` plus (``include_last``, MiVOS) the previous frame as a temporary
   entry; it is discarded after the pass.
3. In a pass that stops at an earlier interacted frame ``c``, each new result is fused with the
   stored result of the previous round (``fusion='diff'``: FusionNet with the differences of ``r``
   aligned to the frame through the memory affinity; ``'linear'``: blend by temporal distance;
   ``'none'``: the newest propagation overwrites).

The network calls, the caches, autocast, the "others" input of the memory encoder and the
memory-write rule of a pass are those of :class:`inference.engine.PropagationEngine`, which the
semi-supervised propagator drives too; this module decides the passes, the stored results and
the fusion.

Architectures (:mod:`inference.arch`): the core runs a MiVOS or an STCN propagation network
alike. ``InferenceConfig.arch`` must name the network's architecture;
:meth:`InferenceConfig.for_arch` gives its defaults (MiVOS: top-k 50, the previous frame as
temporary memory; MiVOS-STCN, REFERENCE.md j.2: top-k 20, no temporary memory, one memory key
per frame shared by the objects, fusion attention from the shared keys).

Memory options (results do not depend on them except where noted):

* ``storage_device`` keeps frames and results off the compute device (e.g. CPU while computing
  on a GPU); ``prob_dtype`` stores results compactly (``float16``; ``uint8`` quantises to 1/255,
  so masks can differ where two labels are within 1/255 of each other);
* frames can be any sequence of ``H x W x 3`` uint8 arrays (e.g. a lazy reader of a folder or
  a video file), of which at most ``image_cache`` padded, normalised copies are kept;
* query features are cached up to ``feature_cache_mb``; the memory read processes query positions
  in chunks of at most ``memory_budget`` affinity elements;
* ``result_storage="disk"`` keeps the per-frame probabilities and label maps in an anonymous
  temporary file (:mod:`inference.frame_store`, in ``result_dir`` or the system's temporary
  directory) instead of in memory, so that memory use does not grow with the length of the
  video beyond the memory bank. ``masks`` is then a lazy, array-like view (index it per frame,
  or ``np.asarray`` it for the whole video) and ``prob`` is not available (use
  :meth:`InferenceCore.raw_prob` / :meth:`InferenceCore.set_raw_prob`).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from inference.arch import arch_default_text, arch_of, defaults_for
from inference.engine import PropagationEngine, frame_sequence
from inference.frame_store import CroppedFrames, DiskFrames
from inference.memory_bank import MemoryBank
from model.aggregate import aggregate
from model.presets import PROPAGATION_ARCHS, check_arch
from util.amp import canonical_amp, resolve_amp
from util.amp import long_amp_name as _long_amp_name
from util.cli import cli_field
from util.config import parse_top_k
from util.tensor_util import argmax_labels, pad_divide_by, unpad

log = logging.getLogger(__name__)

FUSION_MODES = ("diff", "linear", "none")
PROB_DTYPES = {"float32": torch.float32, "float16": torch.float16, "uint8": torch.uint8}
RESULT_STORAGES = ("memory", "disk")
_PROB_ON_DISK = ("the probabilities are in a file (result_storage='disk'): read and write them "
                 "frame by frame with raw_prob(t) / get_prob(t) and set_raw_prob(t, p)")

ProgressFn = Callable[[int, int], None]


def positive_int(text: str) -> int:
    """An integer >= 1 (command-line parser)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def long_amp_name(text: str) -> str:
    """``bf16`` / ``fp16`` -> ``"bfloat16"`` / ``"float16"`` (the spelling the interactive
    evaluation records in its configuration and fingerprint)."""
    if text not in ("bf16", "fp16"):
        raise argparse.ArgumentTypeError(f"--amp must be bf16 or fp16, got {text!r}")
    return _long_amp_name(text)


@dataclass
class InferenceConfig:
    """Options of the inference core (defaults follow the paper and the official code).

    The defaults are MiVOS's; :meth:`for_arch` gives those of another architecture. The
    metadata of each field is its command-line option (:mod:`util.cli`; ``cli=False``: set in
    code only).
    """

    top_k: int | None = cli_field(
        50, "top-k filtering of the memory read (int), or 'none' for a full softmax",
        parse=parse_top_k, metavar="K|none", default_text=arch_default_text("top_k"))
    mem_every: int = cli_field(
        5, "memory frame interval of a pass: a propagated frame becomes permanent memory every "
        "N frames, counted from the interacted frame", parse=positive_int, metavar="N")
    include_last: bool = cli_field(
        True, "keep the previous frame as temporary memory (MiVOS); off: only the permanent "
        "frames (MiVOS-STCN)", default_text=arch_default_text("include_last"))
    fusion: str = cli_field(
        "diff", "diff: difference-aware fusion (paper); linear: blend by temporal distance; "
        "none: the newest propagation overwrites", choices=FUSION_MODES)
    prob_dtype: str = cli_field(
        "float32", "storage of per-frame probabilities: float32 | float16 | uint8", cli=False)
    result_storage: str = cli_field(
        "memory", "where per-frame probabilities and label maps are kept: memory | disk (an "
        "anonymous temporary file; flat memory use on long videos)", cli=False)
    result_dir: str | None = cli_field(
        None, "directory of the result file with result_storage='disk' (None: the system's "
        "temporary directory)", cli=False)
    image_cache: int = cli_field(
        128, "padded, normalised frames kept on the compute device", cli=False)
    feature_cache_mb: float = cli_field(
        2048.0, "query-encoder features kept for reuse across passes (MiB)", cli=False)
    memory_budget: int | None = cli_field(
        None, "max affinity elements per chunk of the memory read (None = read default)",
        cli=False)
    amp: str | None = cli_field(
        None, "autocast the networks in bfloat16 (bf16) or float16 (fp16); on a CPU without "
        "native bf16 (AVX512_BF16 or AMX; fp16: AVX512_FP16 or AMX_FP16) it would be emulated "
        "many times slower, so it falls back to float32 with a warning "
        "(MIVOS_ALLOW_EMULATED_BF16=1 / MIVOS_ALLOW_EMULATED_FP16=1 keeps it); in code: None, "
        "'bf16' / 'bfloat16' or 'fp16' / 'float16' (util.amp)",
        parse=long_amp_name, metavar="{bf16,fp16}", default_text="float32")
    arch: str = cli_field(
        "mivos", "propagation architecture: mivos (STM-style network, the paper's) or stcn "
        "(MiVOS-STCN: shared keys, no temporary memory); sets the defaults of --top-k and "
        "--include-last and the default checkpoint names", choices=PROPAGATION_ARCHS)

    @classmethod
    def for_arch(cls, arch: str, **overrides: Any) -> InferenceConfig:
        """The defaults of architecture ``arch`` (:data:`inference.arch.ARCH_DEFAULTS`: top-k,
        temporary memory), with ``overrides`` applied."""
        d = defaults_for(arch)
        values = {"arch": arch, "top_k": d.top_k, "include_last": d.include_last, **overrides}
        return cls(**values)

    def validate(self) -> None:
        if self.fusion not in FUSION_MODES:
            raise ValueError(f"fusion must be one of {FUSION_MODES}, got {self.fusion!r}")
        if self.prob_dtype not in PROB_DTYPES:
            raise ValueError(f"prob_dtype must be one of {tuple(PROB_DTYPES)}, got {self.prob_dtype!r}")
        if self.result_storage not in RESULT_STORAGES:
            raise ValueError(f"result_storage must be one of {RESULT_STORAGES}, "
                             f"got {self.result_storage!r}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be a positive int or None, got {self.top_k}")
        if self.mem_every < 1:
            raise ValueError(f"mem_every must be >= 1, got {self.mem_every}")
        canonical_amp(self.amp)  # raises ValueError naming the accepted spellings
        check_arch(self.arch)


#: the frame-sequence check, kept under its old name (:func:`inference.engine.frame_sequence`)
_as_frame_sequence = frame_sequence


class InferenceCore:
    """Interactive propagation state of one video.

    Args:
        prop_net: a :class:`model.propagation.PropagationNetwork` or a
            :class:`model.stcn.STCNNetwork` (eval mode).
        fusion_net: a :class:`model.fusion.FusionNet`, or None when ``config.fusion`` is not
            ``'diff'``.
        images: the frames (see :func:`inference.engine.frame_sequence`), RGB.
        num_objects: K, the number of objects (labels 1..K).
        config: :class:`InferenceConfig` of the network's architecture (default: that
            architecture's defaults, :meth:`InferenceConfig.for_arch`).
        device: where the networks run.
        storage_device: where probabilities live (default: ``device``).
        allow_emulated: keep ``config.amp`` on a CPU that would emulate its dtype (default:
            the environment variable ``MIVOS_ALLOW_EMULATED_BF16`` / ``_FP16``); otherwise
            such a core runs in float32 with a warning (:func:`util.amp.resolve_amp`).

    The options of ``config`` are read when the core is built (its engine keeps them). The
    autocast mode actually used is ``amp`` (canonical name, None = float32).
    """

    def __init__(
        self,
        prop_net: torch.nn.Module,
        fusion_net: torch.nn.Module | None,
        images: Any,
        num_objects: int,
        config: InferenceConfig | None = None,
        device: torch.device | str = "cpu",
        storage_device: torch.device | str | None = None,
        *,
        allow_emulated: bool | None = None,
    ):
        self.config = config or InferenceConfig.for_arch(arch_of(prop_net))
        self.config.validate()
        if self.config.arch != arch_of(prop_net):
            raise ValueError(
                f"the inference config is for arch {self.config.arch!r} but the propagation "
                f"network is {arch_of(prop_net)!r}: use InferenceConfig.for_arch"
                f"({arch_of(prop_net)!r}, ...) (on the command line: --arch)")
        if self.config.fusion == "diff" and fusion_net is None:
            raise ValueError("fusion='diff' needs a fusion network")
        if num_objects < 1:
            raise ValueError(f"num_objects must be >= 1, got {num_objects}")
        self.prop_net = prop_net
        self.fusion_net = fusion_net
        self.device = torch.device(device)
        self.storage_device = torch.device(storage_device) if storage_device is not None else self.device
        self.frames, self.num_frames, self.height, self.width = frame_sequence(images)
        self.k = num_objects
        cfg = self.config
        # the precision actually used: float32 where this CPU would emulate cfg.amp
        self.amp = resolve_amp(cfg.amp, self.device, allow_emulated=allow_emulated,
                               what="InferenceCore")
        self.engine = PropagationEngine(
            prop_net, (self.height, self.width), self.device, self.frames, top_k=cfg.top_k,
            memory_budget=cfg.memory_budget, amp=self.amp, mem_every=cfg.mem_every,
            include_last=cfg.include_last, image_cache=cfg.image_cache,
            feature_cache_mb=cfg.feature_cache_mb,
        )
        self.pad, self.ph, self.pw = self.engine.pad, self.engine.ph, self.engine.pw

        self.prob_dtype = PROB_DTYPES[cfg.prob_dtype]
        left, right, top, bottom = self.pad
        self._prob: torch.Tensor | None = None
        self._prob_file: DiskFrames | None = None
        if cfg.result_storage == "disk":
            self._prob_file = self._new_prob_file()
            # label maps at the padded size in a file; ``masks`` crops them on access
            self.padded_masks = DiskFrames(self.num_frames, (self.ph, self.pw), np.uint8,
                                           directory=cfg.result_dir)
            self.masks = CroppedFrames(self.padded_masks, top, left, self.height, self.width)
        else:
            # (K+1) x T x Hp x Wp; background starts at a tiny positive value, objects at zero
            self._prob = torch.zeros(self.k + 1, self.num_frames, self.ph, self.pw,
                                     dtype=self.prob_dtype, device=self.storage_device)
            self._prob[0] = self._initial_background()
            # hard label maps at the padded size (the padding carries labels too, as in the
            # original core: the DAVIS driver's S2M reads them there); ``masks`` is the
            # unpadded view
            self.padded_masks = np.zeros((self.num_frames, self.ph, self.pw), dtype=np.uint8)
            self.masks = self.padded_masks[:, top:top + self.height, left:left + self.width]

        self.interacted: list[int] = []  # in interaction order
        # one entry per interaction, in interaction order (STCN: one shared key per frame)
        self.permanent = self.engine.new_bank()

    # ------------------------------------------------------------------ storage helpers
    @property
    def prob(self) -> torch.Tensor:
        """All stored probabilities, (K+1) x T x Hp x Wp in the storage dtype (memory storage
        only; with ``result_storage='disk'`` use :meth:`raw_prob` / :meth:`set_raw_prob`)."""
        if self._prob is None:
            raise AttributeError(_PROB_ON_DISK)
        return self._prob

    @prob.setter
    def prob(self, value: torch.Tensor) -> None:
        if self._prob is None:
            raise AttributeError(_PROB_ON_DISK)
        self._prob = value

    def _initial_background(self) -> float:
        """Stored background of a frame never written (objects start at zero)."""
        return 0 if self.prob_dtype == torch.uint8 else 1e-7

    def _new_prob_file(self) -> DiskFrames:
        initial = np.zeros((self.k + 1, self.ph, self.pw),
                           torch.empty(0, dtype=self.prob_dtype).numpy().dtype)
        initial[0] = self._initial_background()
        return DiskFrames(self.num_frames, initial.shape, initial.dtype, initial=initial,
                          directory=self.config.result_dir)

    def raw_prob(self, t: int) -> torch.Tensor:
        """Stored probabilities of frame t as stored: (K+1) x Hp x Wp in the storage dtype
        (uint8 is 1/255 steps), on the storage device (CPU for disk storage)."""
        if self._prob_file is not None:
            return torch.from_numpy(self._prob_file.read(t))
        return self._prob[:, t]

    def set_raw_prob(self, t: int, prob: torch.Tensor) -> None:
        """Replace the stored probabilities of frame t with ``prob`` ((K+1) x Hp x Wp, already
        in the storage dtype's scale: 0..255 for uint8)."""
        if self._prob_file is not None:
            self._prob_file.write(t, prob.to("cpu", self.prob_dtype).numpy())
        else:
            self._prob[:, t] = prob.to(self.storage_device, self.prob_dtype)

    def _store_prob(self, t: int, prob: torch.Tensor) -> None:
        """prob: (K+1) x Hp x Wp float on any device."""
        if self.prob_dtype == torch.uint8:
            prob = (prob.clamp(0, 1) * 255).round()
        self.set_raw_prob(t, prob)

    def _load_prob(self, t: int) -> torch.Tensor:
        """Stored probabilities of frame t: (K+1) x Hp x Wp float32 on the compute device."""
        p = self.raw_prob(t).to(self.device)
        if p.dtype == torch.uint8:
            return p.float() / 255
        return p.float()

    def _store_mask(self, t: int, prob: torch.Tensor) -> None:
        """Hard labels of frame t from padded (K+1) x Hp x Wp probabilities (argmax first, then
        the unpadded view crops it)."""
        self.padded_masks[t] = argmax_labels(prob).to("cpu", torch.uint8).numpy()

    def image(self, t: int) -> torch.Tensor:
        """Padded, normalised frame t: 1 x 3 x Hp x Wp on the compute device (bounded cache)."""
        return self.engine.image(t)

    def _autocast(self):
        return self.engine.autocast()

    def query_features(self, t: int):
        """Query-encoder outputs of frame t (cached up to ``feature_cache_mb``)."""
        return self.engine.query_features(t)

    # ------------------------------------------------------------------ network calls
    def _encode_memory(self, t: int, prob: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory key/value of frame t with its (K+1)-channel probabilities prob."""
        return self.engine.encode_memory(t, prob)

    def _segment(self, t: int, bank: MemoryBank) -> torch.Tensor:
        """Propagated (K+1) x Hp x Wp probabilities of frame t from the memory in bank
        (aggregated over all K objects)."""
        return self.engine.segment(t, [bank])

    def _fuse(self, t: int, prev: torch.Tensor, curr: torch.Tensor, t_c: int, t_r: int,
              diff: torch.Tensor, ref_key: torch.Tensor) -> torch.Tensor:
        """Combine the previous round's result prev and the new propagation curr at frame t.

        prev, curr: (K+1) x Hp x Wp; diff: K x 2 x Hp x Wp ([D+, D-] at t_r); ref_key: memory
        key of t_r (K x CK x h x w, or 1 x CK x h x w shared by the objects for STCN). Returns
        (K+1) x Hp x Wp.
        """
        mode = self.config.fusion
        if mode == "none":
            return curr
        n_c = abs(t_c - t) / abs(t_c - t_r)
        n_r = abs(t_r - t) / abs(t_c - t_r)
        if mode == "linear":
            return n_r * prev + n_c * curr
        attn = self.engine.attention_transfer(ref_key, t, diff)
        dist = torch.tensor([[n_c, n_r]], device=self.device).expand(self.k, -1)
        image = self.image(t).expand(self.k, -1, -1, -1)
        with self._autocast():
            logits = self.fusion_net(image, prev[1:].unsqueeze(1), curr[1:].unsqueeze(1), attn, dist)
        return aggregate(torch.sigmoid(logits.float())[:, 0], dim=0)

    # ------------------------------------------------------------------ passes
    def _pass(self, r: int, step: int, ref_key: torch.Tensor, diff: torch.Tensor,
              progress: ProgressFn | None, done: int, total: int) -> int:
        """Propagate from interacted frame r in direction step (+1 / -1). Returns frames done."""
        stop = self._pass_stop(r, step)
        fuse_with = stop if 0 <= stop < self.num_frames else None
        targets = list(range(r + step, stop, step))
        if not targets:
            return done

        # room for every frame the pass memorises (one per mem_every, and the temporary slot):
        # the bank is allocated once
        bank = self.permanent.copy(extra_frames=len(targets) // self.config.mem_every + 2)
        rule = self.engine.write_rule(r)
        for i, t in enumerate(targets):
            out = self._segment(t, bank)
            # memorised with the propagated (pre-fusion) result
            self.engine.memorise(t, out, [bank], rule.decide(t, last=i == len(targets) - 1))
            if fuse_with is not None:
                out = self._fuse(t, self._load_prob(t), out, fuse_with, r, diff, ref_key)
            self._store_prob(t, out)
            self._store_mask(t, out)
            done += 1
            if progress is not None:
                progress(done, total)
        return done

    def _to_prob(self, mask: torch.Tensor | np.ndarray, what: str, padded: bool = False) -> torch.Tensor:
        """Accept an H x W label map (0..K) or (K+1) x H x W probabilities; return padded
        (K+1) x Hp x Wp float probabilities on the compute device.

        padded: the input is already (K+1) x Hp x Wp probabilities at the padded size (its
        padding is kept as given, as the original DAVIS driver does with S2M's output).
        """
        m = torch.as_tensor(mask)
        if padded:
            if m.dim() != 3 or m.shape != (self.k + 1, self.ph, self.pw):
                raise ValueError(
                    f"{what}: padded probabilities must be {(self.k + 1, self.ph, self.pw)} "
                    f"(K+1 channels at the padded size), got {tuple(m.shape)}"
                )
            return m.to(self.device).float()
        if m.dim() == 2:
            if m.shape != (self.height, self.width):
                raise ValueError(f"{what}: label map is {tuple(m.shape)}, expected {(self.height, self.width)}")
            if m.is_floating_point():
                raise ValueError(f"{what}: a 2-D mask must be an integer label map")
            labels = m.long()
            if labels.min() < 0 or labels.max() > self.k:
                bad = sorted(set(torch.unique(labels).tolist()) - set(range(self.k + 1)))
                raise ValueError(f"{what}: unknown object ids {bad}; this video has objects 1..{self.k}")
            m = F.one_hot(labels, self.k + 1).permute(2, 0, 1).float()
        elif m.dim() == 3:
            if m.shape != (self.k + 1, self.height, self.width):
                raise ValueError(
                    f"{what}: probabilities are {tuple(m.shape)}, expected "
                    f"{(self.k + 1, self.height, self.width)} (K+1 channels, background first)"
                )
            m = m.float()
        else:
            raise ValueError(f"{what}: mask must be H x W or (K+1) x H x W, got {tuple(m.shape)}")
        padded, _ = pad_divide_by(m.to(self.device), 16)
        return padded

    def _check_index(self, idx: int) -> None:
        if not 0 <= idx < self.num_frames:
            raise IndexError(f"frame {idx} out of range: the video has {self.num_frames} frames")

    # ------------------------------------------------------------------ public API
    @torch.inference_mode()
    def interact(self, mask: torch.Tensor | np.ndarray, idx: int,
                 progress: ProgressFn | None = None, padded: bool = False) -> np.ndarray:
        """Commit a new mask on frame idx and propagate it through the video.

        mask: H x W label map (0 = background, 1..K) or (K+1) x H x W probabilities at the
        original resolution; with ``padded=True``, (K+1) x Hp x Wp probabilities at the padded
        size. Returns the T x H x W uint8 label maps of the whole video.
        """
        self._check_index(idx)
        new = self._to_prob(mask, f"mask for frame {idx}", padded)
        delta = (new - self._load_prob(idx))[1:]  # K x Hp x Wp
        diff = torch.stack([delta.clamp(0, 1), (-delta).clamp(0, 1)], dim=1)  # K x 2 x Hp x Wp

        self.interacted.append(idx)
        self._store_prob(idx, new)
        self._store_mask(idx, new)
        ref_key, ref_value = self._encode_memory(idx, new)
        self.permanent.add_permanent(ref_key, ref_value, idx)

        total = self._pass_length(idx, +1) + self._pass_length(idx, -1)
        done = self._pass(idx, +1, ref_key, diff, progress, 0, total)
        self._pass(idx, -1, ref_key, diff, progress, done, total)
        return self.masks

    def _pass_stop(self, r: int, step: int) -> int:
        """Where a pass from r in direction step stops (exclusive): the nearest interacted frame
        in that direction, or one past the end of the video (T or -1)."""
        if step > 0:
            return min((i for i in self.interacted if i > r), default=self.num_frames)
        return max((i for i in self.interacted if i < r), default=-1)

    def _pass_length(self, r: int, step: int) -> int:
        return abs(self._pass_stop(r, step) - r) - 1

    @torch.inference_mode()
    def update_mask_only(self, mask: torch.Tensor | np.ndarray, idx: int,
                         padded: bool = False) -> np.ndarray:
        """Show a new mask on frame idx without propagating (instant feedback).

        The stored probabilities are left as they are, so the difference of the next committed
        interaction is still measured against the last propagated result. ``padded`` as in
        :meth:`interact`. Returns the H x W label map of frame idx.
        """
        self._check_index(idx)
        new = self._to_prob(mask, f"mask for frame {idx}", padded)
        self._store_mask(idx, new)
        return self.masks[idx]

    def get_prob(self, idx: int) -> torch.Tensor:
        """Stored (K+1) x H x W probabilities of frame idx at the original resolution (CPU)."""
        self._check_index(idx)
        return unpad(self._load_prob(idx), self.pad).cpu()

    def get_mask(self, idx: int) -> np.ndarray:
        """H x W uint8 label map of frame idx."""
        self._check_index(idx)
        return self.masks[idx]

    def get_padded_mask(self, idx: int) -> np.ndarray:
        """Hp x Wp uint8 label map of frame idx at the padded size (labels in the padding too)."""
        self._check_index(idx)
        return self.padded_masks[idx]

    @torch.inference_mode()
    def add_objects(self, n: int = 1) -> int:
        """Add n new (empty) objects; returns the new K. Existing memory entries are re-encoded
        for the new objects so that later reads see them as empty."""
        if n < 1:
            raise ValueError("n must be >= 1")
        old_k = self.k
        self.k += n
        if self._prob_file is not None:
            old, self._prob_file = self._prob_file, self._new_prob_file()
            for t in old.written_frames():
                p = old.read(t)
                extra = np.zeros((n, *p.shape[1:]), p.dtype)
                self._prob_file.write(t, np.concatenate([p, extra]))
            old.close()
        else:
            extra = torch.zeros(n, self.num_frames, self.ph, self.pw, dtype=self.prob_dtype,
                                device=self.storage_device)
            self._prob = torch.cat([self._prob, extra], dim=0)
        if self.interacted:
            # permanent memory holds one entry per interaction, in interaction order
            keys, values = [], []
            for t in self.interacted:
                key, value = self.engine.encode_memory(t, self._load_prob(t),
                                                       objects=range(old_k + 1, self.k + 1))
                keys.append(key)
                values.append(value)
            self.permanent.add_objects(torch.stack(keys, 2), torch.stack(values, 2))
        return self.k

    def clear_caches(self) -> None:
        """Drop cached images and query features (frees memory; results are unaffected)."""
        self.engine.clear_caches()
