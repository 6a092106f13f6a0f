"""Per-frame results kept in a file instead of in memory (``InferenceConfig.result_storage``).

An :class:`~inference.inference_core.InferenceCore` keeps, for every frame of the video, its
probabilities ((K+1) x Hp x Wp) and its label map (Hp x Wp). In memory these grow with the
length of the video: at 480p a uint8 store costs about 0.8 MB per frame and object, so at a
few hundred frames they outweigh the networks. With ``result_storage="disk"`` both live in an
anonymous temporary file instead (:class:`DiskFrames`), and only the frame being worked on is
in memory.

The file is read and written with ``os.preadv`` / ``os.pwrite``, never memory-mapped: pages of
a mapped file that the process touched count towards its resident set, pages it merely wrote
through the page cache do not. The file is unlinked as soon as it is open, so it disappears
with the process even if that crashes; its directory is the system's temporary directory or
``result_dir``.

Frames never written read back as the store's initial frame (all zeros unless given), so
creating a store costs nothing, whatever the length of the video.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence

import numpy as np

__all__ = ["CroppedFrames", "DiskFrames"]


class DiskFrames:
    """``T`` arrays of one shape and dtype, stored frame after frame in a temporary file.

    Indexing works like a ``T x *frame_shape`` NumPy array along its first axis only: an int
    or a slice with step 1 reads (a new array) or writes.

    Args:
        num_frames: T.
        frame_shape: shape of one frame's array.
        dtype: NumPy dtype of the stored values.
        initial: value of every frame not yet written (``frame_shape``; default zeros).
        directory: where the temporary file is created (default: the system's).
    """

    def __init__(self, num_frames: int, frame_shape: Sequence[int], dtype, *,
                 initial: np.ndarray | None = None, directory: str | os.PathLike | None = None):
        if num_frames < 0:
            raise ValueError(f"num_frames must be >= 0, got {num_frames}")
        self.num_frames = int(num_frames)
        self.frame_shape = tuple(int(s) for s in frame_shape)
        self.dtype = np.dtype(dtype)
        self.frame_bytes = int(np.prod(self.frame_shape, dtype=np.int64)) * self.dtype.itemsize
        if initial is None:
            self.initial = np.zeros(self.frame_shape, self.dtype)
        else:
            self.initial = self._checked(initial, "initial frame").copy()
        self.written = np.zeros(self.num_frames, dtype=bool)
        if directory is not None and not os.path.isdir(directory):
            raise FileNotFoundError(f"result directory {os.fspath(directory)!r} does not exist")
        fd, path = tempfile.mkstemp(prefix="mivos-results-", suffix=".bin", dir=directory)
        self.path = path
        self._fd: int | None = fd
        try:
            os.unlink(path)  # removed with the process; the descriptor keeps it open
            self.path = None
        except OSError:  # a platform that cannot unlink an open file: removed by close()
            pass

    # ------------------------------------------------------------------ array-like interface
    @property
    def shape(self) -> tuple[int, ...]:
        return (self.num_frames, *self.frame_shape)

    def __len__(self) -> int:
        return self.num_frames

    def __iter__(self) -> Iterator[np.ndarray]:
        for t in range(self.num_frames):
            yield self.read(t)

    def __getitem__(self, index: int | slice) -> np.ndarray:
        if isinstance(index, slice):
            frames = self._frames(index)
            out = np.empty((len(frames), *self.frame_shape), self.dtype)
            for i, t in enumerate(frames):
                out[i] = self.read(t)
            return out
        return self.read(index)

    def __setitem__(self, index: int | slice, value) -> None:
        if isinstance(index, slice):
            frames = self._frames(index)
            value = np.asarray(value)
            if value.shape != (len(frames), *self.frame_shape):
                raise ValueError(f"cannot write an array of shape {value.shape} into frames "
                                 f"{frames.start}..{frames.stop - 1} of {self.frame_shape}")
            for i, t in enumerate(frames):
                self.write(t, value[i])
            return
        self.write(index, value)

    def copy(self) -> np.ndarray:
        """All frames as one in-memory array."""
        return self[:]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self.copy()
        return out if dtype is None else out.astype(dtype, copy=False)

    # ------------------------------------------------------------------ frames
    def read(self, t: int) -> np.ndarray:
        """Frame t (a new, writable array)."""
        t = self._index(t)
        if not self.written[t]:
            return self.initial.copy()
        out = np.empty(self.frame_shape, self.dtype)
        got = os.preadv(self._open_fd(), [memoryview(out).cast("B")], t * self.frame_bytes)
        if got != self.frame_bytes:
            raise OSError(f"result file: read {got} of {self.frame_bytes} bytes of frame {t}")
        return out

    def write(self, t: int, value) -> None:
        """Store frame t (converted to the store's dtype; the shape must match)."""
        t = self._index(t)
        data = np.ascontiguousarray(self._checked(value, f"frame {t}"))
        view = memoryview(data).cast("B")
        offset, done = t * self.frame_bytes, 0
        while done < self.frame_bytes:
            done += os.pwrite(self._open_fd(), view[done:], offset + done)
        self.written[t] = True

    def written_frames(self) -> list[int]:
        """The frames that were written (the others read as the initial frame)."""
        return np.flatnonzero(self.written).tolist()

    def close(self) -> None:
        """Release the file (reads and writes fail afterwards)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            if self.path is not None:
                try:
                    os.unlink(self.path)
                except OSError:
                    pass

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    # ------------------------------------------------------------------ helpers
    def _open_fd(self) -> int:
        if self._fd is None:
            raise ValueError("the result file is closed")
        return self._fd

    def _index(self, t: int) -> int:
        t = int(t)
        if t < 0:
            t += self.num_frames
        if not 0 <= t < self.num_frames:
            raise IndexError(f"frame {t} out of range: the store has {self.num_frames} frames")
        return t

    def _frames(self, index: slice) -> range:
        frames = range(*index.indices(self.num_frames))
        if frames.step != 1:
            raise IndexError("only slices with step 1 are supported")
        return frames

    def _checked(self, value, what: str) -> np.ndarray:
        arr = np.asarray(value)
        if arr.shape != self.frame_shape:
            raise ValueError(f"{what}: expected shape {self.frame_shape}, got {arr.shape}")
        return arr.astype(self.dtype, copy=False)


class CroppedFrames:
    """The same window ``[top:top+h, left:left+w]`` of every frame of a :class:`DiskFrames`
    of 2-D frames (e.g. the unpadded label maps inside the padded ones). Reads return new
    arrays; writes change the window and keep the rest of the frame."""

    def __init__(self, frames: DiskFrames, top: int, left: int, height: int, width: int):
        if len(frames.frame_shape) != 2:
            raise ValueError(f"CroppedFrames needs 2-D frames, got {frames.frame_shape}")
        self.frames = frames
        self.top, self.left, self.height, self.width = top, left, height, width
        self.dtype = frames.dtype

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.frames), self.height, self.width)

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self) -> Iterator[np.ndarray]:
        for t in range(len(self)):
            yield self[t]

    def _crop(self, frame: np.ndarray) -> np.ndarray:
        return frame[..., self.top:self.top + self.height, self.left:self.left + self.width]

    def __getitem__(self, index: int | slice) -> np.ndarray:
        return np.ascontiguousarray(self._crop(self.frames[index]))

    def __setitem__(self, index: int | slice, value) -> None:
        full = self.frames[index]
        self._crop(full)[...] = value
        self.frames[index] = full

    def copy(self) -> np.ndarray:
        return self[:]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self.copy()
        return out if dtype is None else out.astype(dtype, copy=False)
