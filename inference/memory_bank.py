"""Key/value memory of one propagation pass: permanent frames plus one temporary slot.

Keys and values are kept per object (the memory encoder sees each object's own mask), in
growable buffers laid out position-major (``K x capacity*h*w x C``), so adding a frame is a copy
into pre-allocated space and reading is a view: nothing is concatenated per query frame. Keys and
values have the same capacity, allocated ahead and doubled when full; the top-k read gathers each
object's value rows where they lie in the buffer (:func:`model.memory.read_memory`), so no read
copies them. A pass knows how many frames it will memorise and asks for that room when it copies
the permanent memory (:meth:`MemoryBank.copy`), so its bank is allocated once and never copied
while it grows: its peak memory is its final size.

* permanent entries: the interacted frames (copied in from the video's permanent memory) and the
  frames memorised every ``mem_every`` frames during the pass;
* the temporary slot: the frame just before the query frame, when it is not permanent. Writing a
  new temporary frame replaces the previous one; :meth:`promote` turns it into a permanent entry.

A bank can also record which video frame each entry came from (``permanent_frames``,
``temporary_frame``; None where the writer gave no index), and may be told its number of objects
(rows) before its first entry, so that one encoding of several objects can be split over banks
(:func:`inference.engine.PropagationEngine.store`).

Shared keys (``shared_key=True``, the STCN layout, REFERENCE.md j.2): keys do not depend on the
objects, so the bank holds one key row per frame (``1 x capacity*h*w x CK``) beside the
per-object values; adding objects grows only the values. The values are laid out
``capacity*h*w x K x CV`` (position-major, the objects inside a position): the network reads all
K objects with one affinity by stacking their values along the channel axis, and the read needs
them as one ``N x (K*CV)`` block of rows, which the visible part of this buffer is (a view:
nothing is copied per query frame), so these values are allocated ahead like the keys.
"""

from __future__ import annotations

import torch


class MemoryBank:
    """Memory keys (K x CK x h x w per frame, or 1 x CK x h x w with ``shared_key``) and
    values (K x CV x h x w per frame)."""

    def __init__(self, initial_capacity: int = 8, num_objects: int | None = None,
                 shared_key: bool = False):
        self._capacity_frames = max(int(initial_capacity), 1)
        self.shared_key = shared_key
        self._keys: torch.Tensor | None = None  # K (shared_key: 1) x cap*hw x CK
        # K x value_frames*hw x CV; with shared keys cap*hw x K x CV (see the module docstring)
        self._values: torch.Tensor | None = None
        self._value_frames = 0  # frames the value buffer holds room for
        self._obj_axis = 1 if shared_key else 0  # the object axis of ``_values``
        self._hw: tuple[int, int] | None = None
        self._num_objects = num_objects
        self.num_permanent = 0
        self.has_temporary = False
        self.permanent_frames: list[int | None] = []  # video frame of each permanent entry
        self.temporary_frame: int | None = None  # video frame in the temporary slot

    # ------------------------------------------------------------------ bookkeeping
    @property
    def num_frames(self) -> int:
        """Frames visible to a read: permanent entries plus the temporary slot if filled."""
        return self.num_permanent + int(self.has_temporary)

    @property
    def hw(self) -> tuple[int, int] | None:
        return self._hw

    @property
    def num_objects(self) -> int | None:
        """Rows (objects) of every entry: as stored, or as declared when the bank is empty."""
        if self._values is not None:
            return self._values.shape[self._obj_axis]
        return self._num_objects

    def _new_values(self, num_objects: int, positions: int, cv: int,
                    like: torch.Tensor) -> torch.Tensor:
        """An empty value buffer in this bank's layout."""
        if self.shared_key:
            return like.new_empty(positions, num_objects, cv)
        return like.new_empty(num_objects, positions, cv)

    def _value_rows(self, start: int, stop: int, values: torch.Tensor | None = None) -> torch.Tensor:
        """Positions start..stop of a value buffer (default: the bank's) as K x n x CV (a
        view)."""
        values = self._values if values is None else values
        if self.shared_key:
            return values[start:stop].transpose(0, 1)
        return values[:, start:stop]

    def _ensure(self, key: torch.Tensor, value: torch.Tensor, frames_needed: int) -> None:
        kk, ck, h, w = key.shape
        k, cv = value.shape[:2]
        if kk != (1 if self.shared_key else k):
            raise ValueError(
                f"memory entry with {kk} key rows for {k} objects: a bank with "
                f"{'shared' if self.shared_key else 'per-object'} keys needs "
                f"{1 if self.shared_key else k}")
        if self._keys is None:
            if self._num_objects is not None and k != self._num_objects:
                raise ValueError(f"memory entry has {k} objects, the bank holds {self._num_objects}")
            self._hw = (h, w)
            cap = max(self._capacity_frames, frames_needed)
            self._keys = key.new_empty(kk, cap * h * w, ck)
            self._capacity_frames = cap
            self._value_frames = self._value_room(frames_needed)
            self._values = self._new_values(k, self._value_frames * h * w, cv, value)
            return
        if (h, w) != self._hw or k != self.num_objects or ck != self._keys.shape[2]:
            raise ValueError(
                f"memory entry of shape {tuple(key.shape)} does not match the bank "
                f"(objects {self.num_objects}, key dim {self._keys.shape[2]}, grid {self._hw})"
            )
        used = self.num_frames * h * w
        if frames_needed > self._capacity_frames:
            cap = max(frames_needed, 2 * self._capacity_frames)
            new_keys = self._keys.new_empty(kk, cap * h * w, ck)
            new_keys[:, :used] = self._keys[:, :used]
            self._keys, self._capacity_frames = new_keys, cap
        if frames_needed > self._value_frames:
            room = self._value_room(frames_needed)
            new_values = self._new_values(k, room * h * w, cv, self._values)
            self._value_rows(0, used, new_values).copy_(self._value_rows(0, used))
            self._values, self._value_frames = new_values, room

    def _value_room(self, frames_needed: int) -> int:
        """Frames of a (re)allocated value buffer: the keys' capacity."""
        return max(self._capacity_frames, frames_needed)

    def _write(self, slot: int, key: torch.Tensor, value: torch.Tensor) -> None:
        hw = key.shape[-2] * key.shape[-1]
        # K x C x h x w -> K x hw x C
        self._keys[:, slot * hw:(slot + 1) * hw] = key.flatten(2).transpose(1, 2)
        self._value_rows(slot * hw, (slot + 1) * hw).copy_(value.flatten(2).transpose(1, 2))

    # ------------------------------------------------------------------ writing
    def add_permanent(self, key: torch.Tensor, value: torch.Tensor, frame: int | None = None) -> None:
        """Append a permanent frame. key: K x CK x h x w (1 x CK x h x w with shared keys),
        value: K x CV x h x w; frame: the video frame it came from (bookkeeping only).

        A filled temporary slot is dropped (it always holds the frame before the current one,
        which is superseded once a newer frame is memorised).
        """
        self.clear_temporary()
        self._ensure(key, value, self.num_permanent + 1)
        self._write(self.num_permanent, key, value)
        self.num_permanent += 1
        self.permanent_frames.append(frame)

    def set_temporary(self, key: torch.Tensor, value: torch.Tensor, frame: int | None = None) -> None:
        """Fill (or replace) the temporary slot with one frame."""
        self._ensure(key, value, self.num_permanent + 1)
        self._write(self.num_permanent, key, value)
        self.has_temporary = True
        self.temporary_frame = frame

    def promote(self) -> None:
        """Make the temporary frame permanent."""
        if not self.has_temporary:
            raise RuntimeError("no temporary frame to promote")
        self.has_temporary = False
        self.num_permanent += 1
        self.permanent_frames.append(self.temporary_frame)
        self.temporary_frame = None

    def clear_temporary(self) -> None:
        self.has_temporary = False
        self.temporary_frame = None

    def copy(self, extra_frames: int = 8) -> MemoryBank:
        """A new bank holding this bank's permanent entries (the temporary slot is not copied),
        with room for ``extra_frames`` more frames before its buffers grow."""
        other = MemoryBank(initial_capacity=self.num_permanent + max(1, int(extra_frames)),
                           num_objects=self.num_objects, shared_key=self.shared_key)
        other.permanent_frames = list(self.permanent_frames)
        if self._keys is None or self.num_permanent == 0:
            return other
        hw = self._hw[0] * self._hw[1]
        used = self.num_permanent * hw
        kk, _, ck = self._keys.shape
        cap = other._capacity_frames
        other._hw = self._hw
        other._keys = self._keys.new_empty(kk, cap * hw, ck)
        other._value_frames = other._value_room(self.num_permanent)
        other._values = self._new_values(self.num_objects, other._value_frames * hw,
                                         self._values.shape[2], self._values)
        other._keys[:, :used] = self._keys[:, :used]
        other._value_rows(0, used).copy_(self._value_rows(0, used))
        other.num_permanent = self.num_permanent
        return other

    def add_objects(self, key: torch.Tensor, value: torch.Tensor) -> None:
        """Grow the object axis: concatenate per-frame entries of new objects.

        key: K_new x CK x num_permanent x h x w, value: K_new x CV x num_permanent x h x w
        (one entry per existing permanent frame). With shared keys only the values grow (the
        keys of the stored frames serve the new objects too; ``key`` is not used).
        """
        if self._keys is None:
            if self._num_objects is not None:
                self._num_objects += value.shape[0]
            return
        hw = self._hw[0] * self._hw[1]
        used = self.num_permanent * hw
        new_v = value.flatten(2).transpose(1, 2)  # K_new x (T*hw) x CV, T-major order
        cap = self._capacity_frames
        old_k = self.num_objects
        room = self._value_frames
        values = self._new_values(old_k + value.shape[0], room * hw, self._values.shape[2],
                                  self._values)
        rows = self._value_rows(0, used, values)  # K_all x used x CV view of the new buffer
        rows[:old_k] = self._value_rows(0, used)
        rows[old_k:] = new_v
        if not self.shared_key:
            new_k = key.flatten(2).transpose(1, 2)  # K_new x (T*hw) x CK
            keys = self._keys.new_empty(values.shape[0], cap * hw, self._keys.shape[2])
            keys[: self._keys.shape[0], :used] = self._keys[:, :used]
            keys[self._keys.shape[0]:, :used] = new_k
            self._keys = keys
        self._values, self._value_frames = values, room
        self.clear_temporary()

    # ------------------------------------------------------------------ reading
    def read_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of the visible memory: keys K x CK x N (1 x CK x N with shared keys), values
        K x CV x N (N = frames*h*w)."""
        if self._keys is None or self.num_frames == 0:
            raise RuntimeError("the memory bank is empty")
        hw = self._hw[0] * self._hw[1]
        n = self.num_frames * hw
        return self._keys[:, :n].transpose(1, 2), self._value_rows(0, n).transpose(1, 2)

    def frame_tensors(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Key K x CK x h x w (1 x CK x h x w with shared keys) and value K x CV x h x w of one
        stored frame."""
        if not 0 <= index < self.num_frames:
            raise IndexError(f"memory frame {index} out of range ({self.num_frames} stored)")
        h, w = self._hw
        hw = h * w
        k = self._keys[:, index * hw:(index + 1) * hw].transpose(1, 2)
        v = self._value_rows(index * hw, (index + 1) * hw).transpose(1, 2)
        return k.reshape(k.shape[0], k.shape[1], h, w), v.reshape(v.shape[0], v.shape[1], h, w)
