"""The propagation engine: what every propagation schedule does with the network, in one place.

Both schedules, the interactive one (:class:`inference.inference_core.InferenceCore`: passes in
both directions from an interacted frame, fusion) and the semi-supervised one
(:class:`inference.semi_vos.SemiVOSPropagator`: one forward pass, objects that appear mid-video),
drive one :class:`PropagationEngine` per video. The engine owns

* **frame preparation**: an ``H x W x 3`` uint8 array (or a ``3 x H x W`` tensor, uint8 or float
  in [0, 1]) becomes a padded, ImageNet-normalised ``1 x 3 x Hp x Wp`` tensor on the compute
  device (:meth:`PropagationEngine.prepare`), kept in a bounded cache (``image_cache`` frames);
* the **query-feature cache** (up to ``feature_cache_mb``; the most recent frame's features are
  always kept, so that memorising the frame just segmented never encodes it again). Once a
  frame is segmented, its entry holds the decoder's skip-branch outputs in place of the f8 / f4
  features they are computed from (:meth:`PropagationEngine.decoder_features`): they depend only
  on the frame, so every later pass over it (fusion passes, later interactions, several memory
  banks of one frame) decodes without running them again. The cache counts the bytes of what it
  holds, skip outputs included;
* **autocast** (:func:`util.amp.autocast`; memory keys / values and probabilities leave the
  networks in float32);
* **memory encoding** with the "others" mask (:func:`model.propagation.others_masks`: each
  object's memory sees the sum of all other objects' masks), for all objects or a subset, and
  the **memory banks** of the architecture's layout (:meth:`PropagationEngine.new_bank`: keys per
  object, or one key per frame shared by all objects);
* **segmenting** a frame from one or more memory banks (object groups): the per-object sigmoid
  outputs are soft-aggregated with background (:func:`model.aggregate.aggregate`) over either all
  objects (``objects=None``) or the listed (enabled) ones, whose other channels stay exactly 0;
* the **memory-write rule** (:class:`MemoryWriteRule`): after a propagated frame, write it as a
  permanent entry when ``|t - last_permanent| >= mem_every`` (``mem_anchor="start"``; or when
  ``t`` is a multiple of ``mem_every``, ``mem_anchor="zero"``), else into the temporary slot
  when ``include_last``; never for the last frame of a pass. ``last_permanent`` starts at the
  frame the pass starts from (interacted / annotated frame), which is always permanent.

Every network call goes through the architecture's adapter (:mod:`inference.arch`, chosen from
the network by :func:`inference.arch.adapter_for`); the architectures' schedules differ only in
the settings of the write rule. The memory *read* itself is :func:`model.memory.read_memory`
(through the network's ``segment``). What a schedule decides on its own: which frames it visits,
what it does with a result (fusion, storage, output resizing) and which objects are enabled.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from inference.arch import MEM_ANCHORS, adapter_for
from inference.memory_bank import MemoryBank
from model.aggregate import aggregate
from model.propagation import others_masks
from util import amp as amp_util
from util.tensor_util import normalize_image, pad_divide_by

__all__ = ["PERMANENT", "TEMPORARY", "MemoryWriteRule", "PropagationEngine", "frame_sequence"]

#: what :meth:`MemoryWriteRule.decide` answers (None: the frame is not written)
PERMANENT = "permanent"
TEMPORARY = "temporary"


class MemoryWriteRule:
    """Which propagated frames of a pass enter memory (the one rule of every schedule).

    A pass starts from a frame that is permanent memory (an interacted or annotated frame):
    ``start``. After each propagated frame ``t``, :meth:`decide` answers

    * ``None`` for the last frame of the pass (nothing reads it);
    * :data:`PERMANENT` when ``|t - last_permanent| >= mem_every`` (``last_permanent`` becomes
      ``t``): frames ``start ± mem_every, ± 2 mem_every, ...`` counted from ``start``; with
      ``anchor="zero"`` instead when ``t`` is a multiple of ``mem_every`` (absolute frame
      indices, STCN's semi-supervised schedule);
    * :data:`TEMPORARY` otherwise when ``include_last``: the previous frame stays readable in the
      temporary slot until the next write replaces it;
    * ``None`` otherwise.

    :meth:`restart` starts the count again from a new permanent frame (a frame annotated in the
    middle of a semi-supervised pass; no effect on the count with ``anchor="zero"``).
    """

    def __init__(self, mem_every: int, include_last: bool, start: int,
                 anchor: str = "start") -> None:
        if mem_every < 1:
            raise ValueError(f"mem_every must be >= 1, got {mem_every}")
        if anchor not in MEM_ANCHORS:
            raise ValueError(f"anchor must be one of {MEM_ANCHORS}, got {anchor!r}")
        self.mem_every = mem_every
        self.include_last = include_last
        self.anchor = anchor
        self.last_permanent = start

    def restart(self, t: int) -> None:
        """Frame t was written as a permanent frame outside the rule (interacted / annotated)."""
        self.last_permanent = t

    def decide(self, t: int, last: bool) -> str | None:
        """Where propagated frame t goes: :data:`PERMANENT`, :data:`TEMPORARY` or None."""
        if last:
            return None
        if self.anchor == "zero":
            due = t % self.mem_every == 0
        else:
            due = abs(t - self.last_permanent) >= self.mem_every
        if due:
            self.last_permanent = t
            return PERMANENT
        if self.include_last:
            return TEMPORARY
        return None


def frame_sequence(images: Any) -> tuple[Sequence, int, int, int]:
    """Accept T x 3 x H x W float [0,1] / uint8 tensors, T x H x W x 3 uint8 arrays, or any
    sequence of H x W x 3 uint8 frames. Returns (sequence, T, H, W)."""
    if isinstance(images, torch.Tensor):
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"image tensor must be T x 3 x H x W, got {tuple(images.shape)}")
        return images, images.shape[0], images.shape[2], images.shape[3]
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[3] != 3:
            raise ValueError(f"image array must be T x H x W x 3, got {images.shape}")
        return images, images.shape[0], images.shape[1], images.shape[2]
    if len(images) == 0:
        raise ValueError("the video has no frames")
    first = np.asarray(images[0])
    if first.ndim != 3 or first.shape[2] != 3:
        raise ValueError(f"frames must be H x W x 3, frame 0 is {first.shape}")
    return images, len(images), first.shape[0], first.shape[1]


def _nbytes(features: Any) -> int:
    """Bytes held by the tensors of a features object (e.g. QueryFeatures), tensors in tuples
    (the decoder's skip outputs) included."""
    total = 0
    for v in vars(features).values():
        for t in v if isinstance(v, tuple) else (v,):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


class PropagationEngine:
    """Network calls, caches and the memory-write rule for one video.

    Args:
        prop_net: a :class:`model.propagation.PropagationNetwork` (or any network with
            ``encode_query``, ``encode_memory``, ``segment`` and ``attention_transfer``) or a
            :class:`model.stcn.STCNNetwork`; driven through :func:`inference.arch.adapter_for`.
        size: (H, W) of the frames (every frame must have it).
        device: where the networks run.
        frames: the video's frames for :meth:`image` (lazy sequences are fine); None when the
            driver hands each frame in through :meth:`prepare`.
        top_k, memory_budget, km_sigma: options of the memory read (``memory_budget`` and
            ``km_sigma`` are passed to the network only when set).
        amp: autocast name (:mod:`util.amp`).
        mem_every, include_last, mem_anchor: the memory-write rule (:class:`MemoryWriteRule`).
        image_cache: padded, normalised frames kept (0: none).
        feature_cache_mb: query features (with the decoder's skip outputs once a frame is
            segmented) kept for reuse (0: none).
        channels_last: convert the network's image encoders to channels-last memory format (in
            place, :meth:`inference.arch.MivosAdapter.encoders_channels_last`): faster on some
            CPUs, but results differ from the default by rounding, so off by default.
    """

    def __init__(
        self,
        prop_net: torch.nn.Module,
        size: tuple[int, int],
        device: torch.device | str = "cpu",
        frames: Sequence | None = None,
        *,
        top_k: int | None = 50,
        memory_budget: int | None = None,
        km_sigma: float | None = None,
        amp: str | None = None,
        mem_every: int = 5,
        include_last: bool = True,
        mem_anchor: str = "start",
        image_cache: int = 0,
        feature_cache_mb: float = 0.0,
        channels_last: bool = False,
    ) -> None:
        self.prop_net = prop_net
        self.adapter = adapter_for(prop_net)
        self.channels_last = channels_last
        if channels_last:
            self.adapter.encoders_channels_last()
        self.device = torch.device(device)
        self.frames = frames
        self.height, self.width = int(size[0]), int(size[1])
        self.top_k = top_k
        self.memory_budget = memory_budget
        self.km_sigma = km_sigma
        self.amp = amp_util.canonical_amp(amp)
        self.mem_every = mem_every
        self.include_last = include_last
        if mem_anchor not in MEM_ANCHORS:
            raise ValueError(f"mem_anchor must be one of {MEM_ANCHORS}, got {mem_anchor!r}")
        self.mem_anchor = mem_anchor
        self.image_cache = image_cache
        self.feature_cache_mb = feature_cache_mb

        _, self.pad = pad_divide_by(torch.zeros(1, 1, self.height, self.width), 16)
        left, right, top, bottom = self.pad
        self.ph, self.pw = self.height + top + bottom, self.width + left + right
        self._images: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._features: OrderedDict[int, Any] = OrderedDict()
        self._feature_bytes = 0
        self._last_features: tuple[int, Any] | None = None  # the most recent frame, always kept

    @property
    def arch(self) -> str:
        """The architecture of the network (:mod:`inference.arch`)."""
        return self.adapter.arch

    # ------------------------------------------------------------------ autocast
    def autocast(self) -> contextlib.AbstractContextManager:
        """The context every network call runs under."""
        return amp_util.autocast(self.device, self.amp)

    # ------------------------------------------------------------------ frames and features
    def prepare(self, t: int, frame: Any) -> torch.Tensor:
        """Frame t (H x W x 3 uint8 array, or 3 x H x W tensor, uint8 or float in [0, 1]) ->
        padded, normalised 1 x 3 x Hp x Wp float on the compute device; cached as frame t."""
        if isinstance(frame, torch.Tensor):
            img = frame.to(self.device)
            img = img.float() / 255 if img.dtype == torch.uint8 else img.float()
        else:
            arr = np.asarray(frame)
            if arr.shape != (self.height, self.width, 3):
                raise ValueError(
                    f"frame {t} has shape {arr.shape}, expected {(self.height, self.width, 3)}: "
                    "all frames of a video must have the same size"
                )
            if arr.dtype != np.uint8:
                raise ValueError(f"frame {t}: expected uint8 RGB, got {arr.dtype}")
            if not arr.flags.writeable or not arr.flags.c_contiguous:
                arr = np.array(arr, copy=True)  # e.g. cached frames of a lazy reader
            img = torch.from_numpy(arr).to(self.device).permute(2, 0, 1).float() / 255
        if img.shape[-2:] != (self.height, self.width):
            raise ValueError(
                f"frame {t} is {tuple(img.shape[-2:])}, expected {(self.height, self.width)}: "
                "all frames of a video must have the same size"
            )
        img, _ = pad_divide_by(normalize_image(img).unsqueeze(0), 16)
        if self.image_cache > 0:
            self._images[t] = img
            self._images.move_to_end(t)
            while len(self._images) > self.image_cache:
                self._images.popitem(last=False)
        return img

    def image(self, t: int) -> torch.Tensor:
        """Padded, normalised frame t: 1 x 3 x Hp x Wp on the compute device (bounded cache)."""
        cached = self._images.get(t)
        if cached is not None:
            self._images.move_to_end(t)
            return cached
        if self.frames is None:
            raise RuntimeError(f"frame {t} was not prepared and the engine has no frame source")
        return self.prepare(t, self.frames[t])

    def query_features(self, t: int) -> Any:
        """Query-encoder outputs of frame t (cached up to ``feature_cache_mb``; the most recent
        frame's are always kept)."""
        cached = self._features.get(t)
        if cached is not None:
            self._features.move_to_end(t)
            return cached
        if self._last_features is not None and self._last_features[0] == t:
            return self._last_features[1]
        with self.autocast():
            feats = self.adapter.encode_query(self.image(t))
        self._last_features = (t, feats)
        if self.feature_cache_mb > 0:
            self._features[t] = feats
            self._feature_bytes += _nbytes(feats)
            self._evict()
        return feats

    def decoder_features(self, t: int) -> Any:
        """Frame t's query features holding the decoder's skip-branch outputs (computed on the
        first call, then kept in the frame's cache entry in place of f8 / f4; the cache's byte
        count follows). Networks that cannot split their decoder get :meth:`query_features`."""
        feats = self.query_features(t)
        with self.autocast():
            ready = self.adapter.decoder_features(feats)
        if ready is feats:
            return feats
        if self._last_features is not None and self._last_features[0] == t:
            self._last_features = (t, ready)
        old = self._features.get(t)
        if old is not None:
            self._features[t] = ready
            self._features.move_to_end(t)
            self._feature_bytes += _nbytes(ready) - _nbytes(old)
            self._evict()
        return ready

    def _evict(self) -> None:
        """Drop the least recently used features until the cache fits ``feature_cache_mb`` (the
        most recent entry stays)."""
        budget = self.feature_cache_mb * 2**20
        while self._feature_bytes > budget and len(self._features) > 1:
            _, old = self._features.popitem(last=False)
            self._feature_bytes -= _nbytes(old)

    def clear_caches(self) -> None:
        """Drop cached frames and query features (results are unaffected)."""
        self._images.clear()
        self._features.clear()
        self._feature_bytes = 0
        self._last_features = None

    # ------------------------------------------------------------------ memory
    def _read_options(self) -> dict[str, Any]:
        """Keyword options of every memory read that are passed only when set."""
        options: dict[str, Any] = {}
        if self.memory_budget is not None:
            options["memory_budget"] = self.memory_budget
        return options

    def new_bank(self, num_objects: int | None = None, frames: int = 8) -> MemoryBank:
        """An empty memory bank in the architecture's layout (keys per object, or one key per
        frame shared by all objects); ``num_objects``: its rows, when known before the first
        entry (needed when one encoding is split over several banks); ``frames``: the frames it
        has room for before its buffers grow (the frames a caller expects to memorise)."""
        return MemoryBank(initial_capacity=frames, num_objects=num_objects,
                          shared_key=self.adapter.shared_key)

    def encode_memory(self, t: int, prob: torch.Tensor,
                      objects: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory key / value of frame t from its (K+1) x Hp x Wp probabilities.

        objects: the object ids (1..K) to encode, in this order (None: all K). Each object's
        "others" input is the sum of all other objects' channels (objects not enabled hold exact
        zeros and add nothing). Returns float32 values n x CV x h x w and keys n x CK x h x w
        (per object), or 1 x CK x h x w where one key serves all objects (STCN: the frame's
        query key, taken from the query-feature cache).
        """
        masks = prob[1:].unsqueeze(1)  # K x 1 x Hp x Wp
        others = others_masks(masks)
        if objects is not None:
            rows = torch.as_tensor(list(objects), device=prob.device) - 1
            masks, others = masks[rows], others[rows]
        with self.autocast():
            key, value = self.adapter.encode_memory(self.image(t), masks, others,
                                                    lambda: self.query_features(t))
        return key.float(), value.float()

    @staticmethod
    def store(banks: Sequence[MemoryBank], key: torch.Tensor, value: torch.Tensor, kind: str,
              frame: int | None = None) -> None:
        """Write one frame's keys / values into banks (value rows split over the banks in order,
        by each bank's ``num_objects``; a single bank takes every row; per-object keys are split
        alike, a shared key goes to every bank) as ``kind``."""
        if kind not in (PERMANENT, TEMPORARY):
            raise ValueError(f"kind must be {PERMANENT!r} or {TEMPORARY!r}, got {kind!r}")
        start = 0
        for bank in banks:
            n = value.shape[0] - start if len(banks) == 1 else bank.num_objects
            if n is None:
                raise ValueError("a bank among several needs its number of objects")
            k = key if bank.shared_key else key[start:start + n]
            v = value[start:start + n]
            start += n
            if kind == PERMANENT:
                bank.add_permanent(k, v, frame)
            else:
                bank.set_temporary(k, v, frame)
        if start != value.shape[0]:
            raise ValueError(f"{value.shape[0]} memory rows for banks holding {start} objects")

    def memorise(self, t: int, prob: torch.Tensor, banks: Sequence[MemoryBank], kind: str | None,
                 objects: Sequence[int] | None = None) -> None:
        """Encode frame t (see :meth:`encode_memory`) and :meth:`store` it as ``kind``; nothing
        when ``kind`` is None or no object is listed."""
        if kind is None or (objects is not None and len(objects) == 0):
            return
        key, value = self.encode_memory(t, prob, objects)
        self.store(banks, key, value, kind, t)

    def write_rule(self, start: int) -> MemoryWriteRule:
        """The memory-write rule of a pass starting from permanent frame ``start``."""
        return MemoryWriteRule(self.mem_every, self.include_last, start, self.mem_anchor)

    # ------------------------------------------------------------------ reading
    def segment(self, t: int, banks: Sequence[MemoryBank], objects: Sequence[int] | None = None,
                num_objects: int | None = None) -> torch.Tensor:
        """Propagated probabilities of frame t from the memory in banks (one read per bank, the
        bank's objects as the batch, the query features shared).

        objects: None: the banks' rows are objects 1..K in order, and the result is their
        (K+1)-channel soft aggregation. Otherwise the object ids of the rows, in bank order (the
        enabled objects): the aggregation runs over them only, the result has
        ``num_objects + 1`` channels and the other objects' channels are exactly 0 (no object
        enabled: background 1). Returns (K+1) x Hp x Wp float32.
        """
        query = self.query_features(t)
        if objects is not None:
            prob = torch.zeros(num_objects + 1, self.ph, self.pw, device=self.device)
            if len(objects) == 0:
                prob[0] = 1.0
                return prob
        query = self.decoder_features(t)
        options = self._read_options()
        if self.km_sigma is not None:
            options["km_sigma"] = self.km_sigma
        per_object = []
        for bank in banks:
            mem_key, mem_value = bank.read_tensors()
            with self.autocast():
                logits = self.adapter.segment(query, mem_key, mem_value, self.top_k, **options)
            per_object.append(torch.sigmoid(logits.float()))  # K_g x Hp x Wp
        obj = per_object[0] if len(per_object) == 1 else torch.cat(per_object, dim=0)
        agg = aggregate(obj, dim=0)
        if objects is None:
            return agg
        prob[0] = agg[0]
        prob[torch.as_tensor(list(objects), device=self.device)] = agg[1:]
        return prob

    def attention_transfer(self, ref_key: torch.Tensor, t: int, diff: torch.Tensor) -> torch.Tensor:
        """The differences ``diff`` (K x C x Hp x Wp) of the frame with memory key ``ref_key``
        (as :meth:`encode_memory` returned it) aligned to frame t through the memory affinity
        (REFERENCE.md c.2; STCN: one affinity for every object's maps, j.2); float32."""
        query = self.query_features(t)
        with self.autocast():
            attn = self.adapter.attention(ref_key, query, diff, **self._read_options())
        return attn.float()
