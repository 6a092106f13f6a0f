"""Forward-only propagation for semi-supervised VOS (reference spec, section g).

:class:`SemiVOSPropagator` segments a video from the ground-truth masks of its annotated frames
with a stateless :class:`model.propagation.PropagationNetwork`, in one forward pass from the first
annotated frame to the last frame. Only the current frame's probabilities are kept, so a video of
any length needs the memory of its memory bank plus one frame; every frame's label map is handed
out (a generator) as soon as it is computed.

Schedule
--------
Let ``r`` be the first annotated frame. For every frame ``t = r, r+1, ..., T-1``:

1. ``t > r``: the query features of ``t`` are read against the memory, one object group at a time
   (below); the per-object sigmoid outputs of the *enabled* objects are soft-aggregated with
   background (:func:`model.aggregate.aggregate`, REFERENCE.md 0.3). Objects not yet seen are exactly 0.
2. ``t`` has a ground-truth file (always true at ``r``): the objects listed in it are
   "interacted": on the pixels of the listed objects every object channel is set to 0, each
   listed object's channel becomes its ground-truth mask (so it is 0 elsewhere), the frame is
   re-aggregated over the enabled objects, and it is memorised as a *permanent* frame for every
   enabled object. Listed objects that were not enabled yet are enabled here. The permanent
   counter restarts at ``t`` (the propagation that follows is a new segment).
3. Otherwise, unless ``t`` is the last frame, ``t`` is memorised with its propagated
   probabilities: as a permanent frame if ``t - last_permanent >= mem_every`` (so frames
   ``r + 5, r + 10, ...`` with the default 5, counted from the segment's start; with
   ``mem_anchor="zero"``: if ``t`` is a multiple of ``mem_every``), else into the temporary slot
   (the previous frame, replaced by the next frame's write) when ``include_last``.
4. Output (REFERENCE.md 0.2, semi-supervised order): crop the (K+1)-channel probabilities to the
   processing size, resize them bilinearly (``align_corners=False``) to the output size when it
   differs, argmax, copy to the CPU.

For DAVIS (everything annotated on frame 0) this is the usual single pass: first-frame mask,
every 5th frame plus the previous frame in memory, top-k read.

Architectures (:mod:`inference.arch`; ``SemiVOSConfig.arch`` must name the network's):
``mivos`` follows Mask-Propagation (above: top-k 50, the previous frame kept). ``stcn`` follows
STCN's semi-supervised schedule (REFERENCE.md j.1; :meth:`SemiVOSConfig.for_arch`): a frame is
memorised when its absolute index is a multiple of ``mem_every`` (``mem_anchor="zero"``), no
temporary previous-frame memory (unless ``include_last``), top-k 20; one key per frame serves
every object of a group, and memorising a frame reuses its query key (only the value encoder
runs).

Steps 1 and 3 (the read, the aggregation over the enabled objects, the memory encoding with its
"others" input, the memory-write rule, autocast and frame preparation) are those of
:class:`inference.engine.PropagationEngine`, which the interactive core drives too; this module
decides which frames are annotated, the overwrite of step 2 and the output of step 4.

Per-object memory
-----------------
Every object has its own memory keys/values (the memory encoder sees that object's mask and the
sum of the other enabled objects' masks as "others"), and an object only has memory from its
first appearance on. Objects that are enabled on the same frame have identical memory timelines
from then on (they are memorised on the same frames), so they share one
:class:`inference.memory_bank.MemoryBank` with one row per object: a *group*. A group is created
at each annotated frame that introduces new objects; it persists for the rest of the video (its
permanent entries are never dropped). A read runs the network once per group with the group's
objects as the batch (``B = K_g``) and the query features of the frame shared (expanded). For
DAVIS there is exactly one group; for YouTubeVOS one per frame on which new objects appear. This
equals keeping one bank per object (the memory read is independent per object) without paying a
network call per object.

Aggregation is over the enabled objects only; the channels of objects that have not appeared
yet stay exactly 0 (the reference implementation aggregates over all K channels, which gives
those objects a probability of about 1e-7; the argmax is the same).

Timing
------
Each :class:`FrameResult` carries ``seconds``: the wall time from the frame's uint8 array entering
the model input path (conversion, normalisation, padding, transfer) to the label map on the CPU,
CUDA-synchronised when the device is CUDA. Reading frames from disk and whatever the consumer
does with a result (writing PNGs) are excluded. FPS over a set = total frames / total seconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from inference.arch import MEM_ANCHORS, arch_default_text, arch_of, defaults_for
from inference.engine import PERMANENT, PropagationEngine
from inference.inference_core import positive_int
from inference.memory_bank import MemoryBank
from model.aggregate import aggregate
from model.presets import PROPAGATION_ARCHS, check_arch
from util.amp import AMP_DTYPES, canonical_amp, resolve_amp
from util.cli import cli_field
from util.config import parse_top_k
from util.tensor_util import argmax_labels, pad_divide_by, unpad

logger = logging.getLogger(__name__)

__all__ = ["AMP_DTYPES", "FrameResult", "SemiVOSConfig", "SemiVOSPropagator"]


@dataclass
class SemiVOSConfig:
    """Options of the semi-supervised propagator (defaults follow the reference protocol of
    MiVOS's propagation, Mask-Propagation; :meth:`for_arch` gives another architecture's).

    Each field's metadata is its command-line option of ``eval_semi_vos.py`` (:mod:`util.cli`).

    Attributes:
        top_k: keep the top-k affinities per query position in the memory read (None = full
            softmax over the memory).
        mem_every: a propagated frame becomes permanent memory every ``mem_every`` frames,
            counted from the last annotated frame (``mem_anchor="start"``) or from frame 0.
        include_last: keep the previous frame as temporary memory.
        amp: autocast dtype for the network calls (:mod:`util.amp`): None, ``"bf16"`` or
            ``"fp16"`` (``"bfloat16"`` / ``"float16"`` too). On a CPU that would emulate it,
            the propagator runs in float32 with a warning (:func:`util.amp.resolve_amp`).
        record_memory: attach the memory layout used for each frame to its
            :class:`FrameResult` (for tests and debugging).
        km_sigma: kernelized memory read (sigma in stride-16 grid units; the original used 5.6
            for some YouTubeVOS / test-dev results); None = plain top-k read (mivos only).
        arch: the propagation architecture (must be the network's, :mod:`inference.arch`).
        mem_anchor: where the count of ``mem_every`` starts: ``"start"`` = the (last)
            annotated frame (Mask-Propagation), ``"zero"`` = frame 0, i.e. frames whose
            absolute index is a multiple of ``mem_every`` (STCN).
    """

    top_k: int | None = cli_field(
        50, "keep the k largest affinities per query position in the memory read; 'none' = "
        "full softmax over the memory", parse=parse_top_k, metavar="K|none",
        default_text=arch_default_text("top_k"), group="inference")
    mem_every: int = cli_field(
        5, "a propagated frame becomes permanent memory every N frames, counted as "
        "--mem-anchor says", parse=positive_int, metavar="N", group="inference")
    include_last: bool = cli_field(
        True, "keep the previous frame as temporary memory (Mask-Propagation); off: only the "
        "permanent frames (STCN)", default_text=arch_default_text("include_last"),
        group="inference")
    amp: str | None = cli_field(
        None, "autocast the networks in bfloat16 (bf16) or float16 (fp16); on a CPU without "
        "native bf16 (AVX512_BF16 or AMX; fp16: AVX512_FP16 or AMX_FP16) it would be emulated "
        "many times slower, so it falls back to float32 with a warning "
        "(MIVOS_ALLOW_EMULATED_BF16=1 / MIVOS_ALLOW_EMULATED_FP16=1 keeps it)",
        choices=("bf16", "fp16"), default_text="float32", group="inference")
    record_memory: bool = cli_field(
        False, "attach each frame's memory layout to its result", cli=False)
    km_sigma: float | None = cli_field(
        None, "kernelized memory read with this Gaussian sigma (stride-16 grid units; the "
        "original used 5.6 for some YouTubeVOS / test-dev results; --arch mivos only)",
        metavar="SIGMA", group="inference")
    arch: str = cli_field(
        "mivos", "propagation architecture of --prop-model: mivos (STM-style network) or stcn "
        "(STCN network); sets the defaults of --top-k, --include-last and --mem-anchor",
        choices=PROPAGATION_ARCHS, group="model")
    mem_anchor: str = cli_field(
        "start", "where the count of --mem-every starts: start = the (last) annotated frame "
        "(Mask-Propagation), zero = frame 0, i.e. the frames whose absolute index is a multiple "
        "of N (STCN)", choices=MEM_ANCHORS, default_text=arch_default_text("semi_mem_anchor"),
        group="inference")

    @classmethod
    def for_arch(cls, arch: str, **overrides: Any) -> SemiVOSConfig:
        """The defaults of architecture ``arch`` (:data:`inference.arch.ARCH_DEFAULTS`: top-k,
        temporary memory, memory anchor), with ``overrides`` applied."""
        d = defaults_for(arch)
        values = {"arch": arch, "top_k": d.top_k, "include_last": d.include_last,
                  "mem_anchor": d.semi_mem_anchor, **overrides}
        return cls(**values)

    def validate(self) -> None:
        """Raise ValueError on an invalid option."""
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise ValueError(f"top_k must be a positive int or None, got {self.top_k!r}")
        if not isinstance(self.mem_every, int) or self.mem_every < 1:
            raise ValueError(f"mem_every must be an int >= 1, got {self.mem_every!r}")
        canonical_amp(self.amp)  # raises ValueError naming the accepted spellings
        check_arch(self.arch)
        if self.mem_anchor not in MEM_ANCHORS:
            raise ValueError(f"mem_anchor must be one of {MEM_ANCHORS}, got {self.mem_anchor!r}")
        if self.km_sigma is not None and self.arch != "mivos":
            raise ValueError(f"km_sigma (the kernelized read) is available for arch 'mivos' "
                             f"only, not {self.arch!r}")


@dataclass
class FrameResult:
    """The segmentation of one frame.

    Attributes:
        index: frame index in the video.
        labels: H0 x W0 uint8 label map at the output size, labels 0..K (the video's remapped
            ids; 0 = background).
        seconds: compute time of this frame (see the module docstring).
        annotated: the frame had a ground-truth file (its listed objects were overwritten).
        memory: with ``record_memory``: one ``(object ids, permanent frames, temporary frame)``
            tuple per group, as the memory stood when the frame was segmented (empty for the
            first annotated frame, which is not segmented).
    """

    index: int
    labels: np.ndarray
    seconds: float
    annotated: bool = False
    memory: list[tuple[list[int], list[int], int | None]] = field(default_factory=list)


@dataclass
class _Group:
    """Objects that entered on the same frame and share one memory bank (one row each)."""

    objects: list[int]  # remapped ids, in the order of their rows
    bank: MemoryBank


class SemiVOSPropagator:
    """Semi-supervised propagation of ground-truth masks through a video (forward only).

    Args:
        prop_net: a :class:`model.propagation.PropagationNetwork` or a
            :class:`model.stcn.STCNNetwork` (put into eval mode here).
        config: :class:`SemiVOSConfig` of the network's architecture (default: that
            architecture's defaults, :meth:`SemiVOSConfig.for_arch`).
        device: where the network runs (the network is moved there).
        allow_emulated: keep ``config.amp`` on a CPU that would emulate its dtype (default:
            the environment variable ``MIVOS_ALLOW_EMULATED_BF16`` / ``_FP16``); otherwise
            the propagator runs in float32 with a warning (:func:`util.amp.resolve_amp`).

    The autocast mode actually used is ``amp`` (canonical name, None = float32).
    """

    def __init__(
        self,
        prop_net: torch.nn.Module,
        config: SemiVOSConfig | None = None,
        device: torch.device | str = "cpu",
        *,
        allow_emulated: bool | None = None,
    ) -> None:
        self.config = config or SemiVOSConfig.for_arch(arch_of(prop_net))
        self.config.validate()
        if self.config.arch != arch_of(prop_net):
            raise ValueError(
                f"the semi-supervised config is for arch {self.config.arch!r} but the "
                f"propagation network is {arch_of(prop_net)!r}: use SemiVOSConfig.for_arch"
                f"({arch_of(prop_net)!r}, ...) (on the command line: --arch)")
        self.device = torch.device(device)
        self.prop_net = prop_net.to(self.device).eval()
        # the precision actually used: float32 where this CPU would emulate config.amp
        self.amp = resolve_amp(self.config.amp, self.device, allow_emulated=allow_emulated,
                               what="SemiVOSPropagator")

    # ------------------------------------------------------------------ helpers
    def _frames_to_memorise(self, remaining: int) -> int:
        """Room for the memory of objects entering with ``remaining`` frames to go: one
        permanent frame per ``mem_every``, the entering frame and the temporary slot (later
        annotated frames grow the bank)."""
        return remaining // self.config.mem_every + 2

    def _engine(self, hw: tuple[int, int]) -> PropagationEngine:
        """The engine of one video: frames are handed in one at a time (the current frame is
        the only one cached); query features are computed once per frame, and only the current
        frame's are kept (STCN memorises a frame with its query key and f16)."""
        cfg = self.config
        return PropagationEngine(self.prop_net, hw, self.device, top_k=cfg.top_k,
                                 km_sigma=cfg.km_sigma, amp=self.amp, mem_every=cfg.mem_every,
                                 include_last=cfg.include_last, mem_anchor=cfg.mem_anchor,
                                 image_cache=1, feature_cache_mb=0)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _overwrite(self, prob: torch.Tensor | None, labels: torch.Tensor, listed: Sequence[int],
                   enabled: list[int], num_objects: int) -> torch.Tensor:
        """Put the ground truth of the listed objects into ``prob`` and re-aggregate.

        prob: (K+1) x Hp x Wp current probabilities or None (first annotated frame);
        labels: Hp x Wp long label map (0..K, padded with 0); enabled: the enabled objects
        *including* the listed ones. Returns the new (K+1) x Hp x Wp probabilities.
        """
        if prob is None:
            prob = torch.zeros(num_objects + 1, *labels.shape, device=self.device)
        obj = prob[1:].clone()
        if listed:
            ids = torch.as_tensor(list(listed), device=self.device)
            region = torch.isin(labels, ids)
            obj[:, region] = 0
            for o in listed:
                obj[o - 1] = (labels == o).float()
        out = torch.zeros_like(prob)
        if not enabled:
            out[0] = 1.0
            return out
        rows = torch.as_tensor([o - 1 for o in enabled], device=self.device)
        agg = aggregate(obj[rows], dim=0)
        out[0] = agg[0]
        out[rows + 1] = agg[1:]
        return out

    def _output(self, prob: torch.Tensor, pad: tuple[int, int, int, int],
                out_hw: tuple[int, int]) -> np.ndarray:
        """(K+1) x Hp x Wp -> H0 x W0 uint8 labels: crop, bilinear resize, argmax, to CPU."""
        p = unpad(prob, pad)
        if tuple(p.shape[-2:]) != tuple(out_hw):
            p = F.interpolate(p.unsqueeze(0), size=tuple(out_hw), mode="bilinear",
                              align_corners=False)[0]
        return argmax_labels(p).to(torch.uint8).cpu().numpy()

    # ------------------------------------------------------------------ public API
    def propagate(
        self,
        frames: Sequence[Any],
        annotations: Mapping[int, np.ndarray],
        num_objects: int,
        objects_per_frame: Mapping[int, Sequence[int]] | None = None,
        output_size: tuple[int, int] | None = None,
    ) -> Iterator[FrameResult]:
        """Segment a video; yields one :class:`FrameResult` per frame from the first annotated one.

        Args:
            frames: T frames, each H x W x 3 RGB uint8 at the processing size (e.g. a lazy
                :class:`util.video_io.FrameSource`; each frame is read once, in order).
            annotations: frame index -> H x W label map (0 = background, 1..K) at the
                processing size. At least one frame.
            num_objects: K.
            objects_per_frame: frame index -> the objects listed in that annotation (default:
                the non-zero labels of the map). Listed objects absent from a (downsized) map
                become empty masks.
            output_size: (H0, W0) of the returned label maps (default: the processing size).

        Yields:
            FrameResult for t = first annotated frame, ..., T-1, in order.
        """
        T = len(frames)
        if T == 0:
            raise ValueError("the video has no frames")
        if not annotations:
            raise ValueError("semi-supervised propagation needs at least one annotated frame")
        if num_objects < 0:
            raise ValueError(f"num_objects must be >= 0, got {num_objects}")
        bad = [t for t in annotations if not 0 <= t < T]
        if bad:
            raise ValueError(f"annotated frames {sorted(bad)} out of range for {T} frames")
        first_map = np.asarray(annotations[min(annotations)])
        hw = (int(first_map.shape[0]), int(first_map.shape[1]))
        out_hw = tuple(output_size) if output_size is not None else hw
        listed_at: dict[int, list[int]] = {}
        for t, m in annotations.items():
            m = np.asarray(m)
            if m.shape != hw:
                raise ValueError(f"annotation of frame {t} is {m.shape}, expected {hw}")
            listed = (
                [int(v) for v in np.unique(m) if v != 0]
                if objects_per_frame is None or t not in objects_per_frame
                else sorted(int(o) for o in objects_per_frame[t])
            )
            if any(not 1 <= o <= num_objects for o in listed) or (m.size and int(m.max()) > num_objects):
                raise ValueError(
                    f"annotation of frame {t} holds labels outside 1..{num_objects}: "
                    f"{sorted(set(np.unique(m).tolist()) | set(listed))}"
                )
            listed_at[t] = listed

        start = min(annotations)
        engine = self._engine(hw)
        rule = engine.write_rule(start)

        groups: list[_Group] = []
        enabled: list[int] = []  # the rows of the groups' banks, in order
        prob: torch.Tensor | None = None
        logger.debug("propagating %d frames (%d objects) from frame %d", T - start, num_objects, start)

        for t in range(start, T):
            frame = frames[t]  # disk I/O, not timed
            annotated = t in annotations
            label_np = np.asarray(annotations[t]) if annotated else None
            self._sync()
            tic = time.perf_counter()
            with torch.inference_mode():
                engine.prepare(t, frame)
                memory = []
                if self.config.record_memory and t > start:
                    memory = [(list(g.objects), list(g.bank.permanent_frames), g.bank.temporary_frame)
                              for g in groups]
                banks = [g.bank for g in groups]
                if t > start:
                    prob = engine.segment(t, banks, enabled, num_objects)
                if annotated:
                    listed = listed_at[t]
                    new = [o for o in listed if o not in enabled]
                    if new:
                        enabled.extend(new)
                        groups.append(_Group(objects=list(new),
                                             bank=engine.new_bank(
                                                 num_objects=len(new),
                                                 frames=self._frames_to_memorise(T - t))))
                        banks.append(groups[-1].bank)
                        logger.debug("frame %d: objects %s enter", t, new)
                    labels, _ = pad_divide_by(
                        torch.from_numpy(label_np.astype(np.int64)).to(self.device), 16
                    )
                    prob = self._overwrite(prob, labels, listed, enabled, num_objects)
                    engine.memorise(t, prob, banks, PERMANENT, enabled)
                    rule.restart(t)
                else:
                    engine.memorise(t, prob, banks, rule.decide(t, last=t == T - 1), enabled)
                labels_out = self._output(prob, engine.pad, out_hw)
            self._sync()
            seconds = time.perf_counter() - tic
            yield FrameResult(index=t, labels=labels_out, seconds=seconds, annotated=annotated,
                              memory=memory)

    def segment_sequence(self, seq: Any) -> Iterator[FrameResult]:
        """Segment a :class:`dataset.eval_datasets.VideoSequence`.

        Annotations are resized (nearest) to the sequence's processing size; the label maps come
        out at ``seq.original_size`` with the remapped ids 0..K (``seq.write_prediction`` maps
        them back). Yields a :class:`FrameResult` per frame from ``seq.first_annotated_frame``.
        """
        annotations = {t: seq.annotation_resized(t) for t in seq.annotated_frames}
        return self.propagate(
            seq.frames,
            annotations,
            seq.num_objects,
            objects_per_frame=seq.objects_per_frame,
            output_size=tuple(seq.original_size),
        )
