"""What the annotation tool needs from an :class:`InferenceCore` beyond its public methods.

The core's public API covers interacting, showing a mask and reading results. The tool also
needs to

* take back a propagation that the user cancelled (:class:`PropagationSnapshot`): the core has
  no cancel hook, so the tool raises from the progress callback and puts back what the
  interaction changed (a uint8 copy of the frames it may write, taken when it starts);
* write results into the core without propagating, for masks loaded from disk and for a
  reopened session (:func:`write_stored_prob`), and put an interacted frame back into the
  permanent memory (:func:`restore_interacted`).

These helpers rely on the core's storage (``raw_prob`` / ``set_raw_prob``, ``masks``,
``interacted``, ``permanent``) and its storage helpers; they live in one place so that a change of the core
breaks one tested module.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from inference.inference_core import InferenceCore
from inference.memory_bank import MemoryBank


def affected_range(core: InferenceCore, idx: int) -> tuple[int, int]:
    """Inclusive frame range that ``core.interact(mask, idx)`` writes: idx itself and the two
    passes, which stop before the nearest interacted frame on each side (or at the ends)."""
    after = [i for i in core.interacted if i > idx]
    before = [i for i in core.interacted if i < idx]
    hi = min(after) - 1 if after else core.num_frames - 1
    lo = max(before) + 1 if before else 0
    return lo, hi


def _label_maps(core: InferenceCore) -> np.ndarray:
    """The array behind ``core.masks`` (padded label maps where the core keeps them)."""
    padded = getattr(core, "padded_masks", None)
    return padded if padded is not None else core.masks


@dataclass
class PropagationSnapshot:
    """The part of a core's state that one interaction on ``idx`` can change.

    The probabilities are kept as uint8 (exact for a core that stores uint8, within 1/255
    otherwise), so the copy costs at most (K+1) bytes per pixel of the frames the propagation
    may write, half of the float16 storage; the label maps are kept exactly.
    """

    lo: int
    hi: int
    prob: torch.Tensor  # (K+1) x (hi-lo+1) x Hp x Wp uint8, on the core's storage device
    masks: np.ndarray  # (hi-lo+1) x H x W (or x Hp x Wp: the core's padded label maps)
    interacted: list[int]
    permanent: MemoryBank
    num_objects: int

    @classmethod
    @torch.inference_mode()
    def take(cls, core: InferenceCore, idx: int) -> PropagationSnapshot:
        lo, hi = affected_range(core, idx)
        prob = None
        for i, t in enumerate(range(lo, hi + 1)):  # frame by frame: no float32 copy of the range
            src = core.raw_prob(t)
            if prob is None:
                prob = torch.empty((src.shape[0], hi + 1 - lo, *src.shape[1:]), dtype=torch.uint8,
                                   device=src.device)
            if src.dtype == torch.uint8:
                prob[:, i] = src
            else:
                prob[:, i] = (src.float().clamp(0, 1) * 255).round().to(torch.uint8)
        return cls(lo, hi, prob, _label_maps(core)[lo:hi + 1].copy(), list(core.interacted),
                   core.permanent.copy(), core.k)

    @torch.inference_mode()
    def restore(self, core: InferenceCore) -> None:
        """Put the state back (the number of objects must not have changed since)."""
        if core.k != self.num_objects:
            raise RuntimeError("objects were added after the snapshot; it cannot be restored")
        for i in range(self.prob.shape[1]):
            p = self.prob[:, i]
            core.set_raw_prob(self.lo + i, p if core.prob_dtype == torch.uint8 else p.float() / 255)
        _label_maps(core)[self.lo:self.hi + 1] = self.masks
        core.interacted[:] = self.interacted
        core.permanent = self.permanent

    @property
    def nbytes(self) -> int:
        return self.prob.numel() + self.masks.nbytes


@torch.inference_mode()
def write_stored_prob(core: InferenceCore, idx: int, prob: torch.Tensor | np.ndarray,
                      labels: np.ndarray | None = None) -> None:
    """Make ``prob`` ((K+1) x H x W probabilities or an H x W label map) the stored result of
    frame ``idx``, as if a pass had written it (no propagation, no memory). ``labels`` (H x W)
    replaces the label map derived from it (e.g. a saved one, exact where quantised
    probabilities tie)."""
    padded = core._to_prob(prob, f"stored mask for frame {idx}")
    core._store_prob(idx, padded)
    core._store_mask(idx, padded)
    if labels is not None:
        core.masks[idx] = labels


@torch.inference_mode()
def restore_interacted(core: InferenceCore, frames: list[int]) -> None:
    """Mark ``frames`` (in interaction order) as interacted and encode each with its stored
    probabilities into the permanent memory, as ``interact`` did when they were committed."""
    for idx in frames:
        if idx in core.interacted:
            continue
        prob = core._load_prob(idx)
        key, value = core._encode_memory(idx, prob)
        core.permanent.add_permanent(key, value)
        core.interacted.append(idx)
