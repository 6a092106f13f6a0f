"""Optional native kernels: compiled on first use with the system's C++ compiler.

One kernel so far, ``csrc/topk_select.cpp``: the exact top-k along the rows of a float32 matrix
whose columns may arrive in slabs (:class:`TopkStream`), used by the memory read
(:func:`model.memory.read_memory`: its streamed path, and :func:`model.memory.topk_last`). Each
row keeps its k+1 largest values so far; a slab is read once for the maxima of blocks of 64
entries, and only the blocks whose maximum beats the row's (k+1)-th value are looked at again.
A row whose order is not unique (a tie among its k values or at the k-th, or a NaN) is reported
and left to ``torch.topk``, so the result is always ``torch.topk``'s. The measured effect on the
read is in ``docs/BENCHMARKS.md`` and ``docs/BENCH_MEMORY_READ.md``.

Building
--------
The source is compiled once per machine into a shared library (plain C ABI, loaded with
:mod:`ctypes`; no PyTorch headers, so it builds in about a second) with
``-O3 -march=native``. The library is kept in :func:`cache_dir` under a name that hashes the
source, the flags, the compiler's version and the CPU's feature flags, so a changed source, a
new compiler or another CPU builds a new one. It is written under a temporary name and renamed,
so processes building at once never load a half-written file.

* ``MIVOS_NATIVE=0`` turns the kernels off (the pure PyTorch paths are used; results are the
  same).
* ``MIVOS_NATIVE_CACHE=DIR`` puts the libraries in ``DIR``.
* ``CXX`` names the compiler (default ``c++``, then ``g++``, then ``clang++``).

Without a compiler, or if the build fails, the PyTorch paths are used and one warning says why.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch

from util.device import cpu_flags

__all__ = [
    "CACHE_ENV",
    "NATIVE_ENV",
    "NativeBuildError",
    "TopkStream",
    "build_library",
    "cache_dir",
    "enabled",
    "library_path",
    "topk_library",
    "topk_rows",
]

#: ``0`` turns the native kernels off.
NATIVE_ENV = "MIVOS_NATIVE"
#: Directory for the compiled libraries (default: ``$XDG_CACHE_HOME/mivos-rebuilt/native``).
CACHE_ENV = "MIVOS_NATIVE_CACHE"

ABI_VERSION = 3
SOURCE = Path(__file__).resolve().parent / "csrc" / "topk_select.cpp"
FLAGS = ("-O3", "-march=native", "-fopenmp", "-std=c++17", "-shared", "-fPIC")


class NativeBuildError(RuntimeError):
    """The compiler is missing or the source did not compile; the message says which."""


def enabled() -> bool:
    """False when ``MIVOS_NATIVE=0``."""
    return os.environ.get(NATIVE_ENV, "1").strip() != "0"


def cache_dir() -> Path:
    """Where the compiled libraries are kept."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mivos-rebuilt" / "native"


def find_compiler() -> str | None:
    """The C++ compiler: ``$CXX``, else the first of ``c++``, ``g++``, ``clang++`` found."""
    if os.environ.get("CXX"):
        return shutil.which(os.environ["CXX"])
    for name in ("c++", "g++", "clang++"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _cpu_flags() -> str:
    """The CPU's feature flags (``-march=native`` builds for them), as one string."""
    return " ".join(sorted(cpu_flags())) or f"{platform.machine()} {platform.processor()}"


def _compiler_version(compiler: str) -> str:
    try:
        done = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise NativeBuildError(f"cannot run the C++ compiler {compiler}: {exc}") from exc
    return done.stdout.splitlines()[0] if done.stdout else ""


def library_path(compiler: str, source: Path = SOURCE, directory: Path | None = None) -> Path:
    """The cached library's path for this source, compiler and CPU."""
    digest = hashlib.sha256()
    for part in (source.read_bytes(), " ".join(FLAGS).encode(),
                 _compiler_version(compiler).encode(), _cpu_flags().encode()):
        digest.update(part)
        digest.update(b"\0")
    return (directory or cache_dir()) / f"{source.stem}-{digest.hexdigest()[:16]}.so"


def build_library(compiler: str | None = None, source: Path = SOURCE,
                  directory: Path | None = None) -> Path:
    """Compile ``source`` unless its library is cached; the library's path."""
    compiler = compiler or find_compiler()
    if compiler is None:
        raise NativeBuildError("no C++ compiler found (set CXX, or install g++)")
    target = library_path(compiler, source, directory)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}-", suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        cmd = [compiler, *FLAGS, str(source), "-o", tmp]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as exc:
            raise NativeBuildError(f"{' '.join(cmd)}: {exc}") from exc
        if done.returncode != 0:
            raise NativeBuildError(
                f"{' '.join(cmd)} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


_POINTER, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    lib.mivos_topk_abi_version.restype = ctypes.c_int
    if lib.mivos_topk_abi_version() != ABI_VERSION:
        raise NativeBuildError(f"{path}: interface version {lib.mivos_topk_abi_version()}, "
                               f"expected {ABI_VERSION}")
    lib.mivos_topk_update_f32.restype = _INT
    lib.mivos_topk_update_f32.argtypes = [_POINTER, _I64, _I64, _I64, _I64, _I64, _POINTER,
                                          _POINTER, _POINTER, _INT]
    lib.mivos_topk_finish_f32.restype = _INT
    lib.mivos_topk_finish_f32.argtypes = [_I64, _I64, _POINTER, _POINTER, _POINTER, _POINTER,
                                          _POINTER, _POINTER, _INT]
    lib.mivos_topk_state_bytes.restype = _I64
    return lib


_LOCK = threading.Lock()
_STATE: dict[str, object] = {}


def topk_library() -> ctypes.CDLL | None:
    """The loaded top-k library, built on the first call; None when turned off or unavailable
    (then one warning gives the reason)."""
    if not enabled():
        return None
    with _LOCK:
        if "lib" not in _STATE:
            try:
                _STATE["lib"] = _load(build_library())
            except (NativeBuildError, OSError) as exc:
                _STATE["lib"] = None
                warnings.warn(f"native top-k kernel unavailable, using torch.topk paths "
                              f"({NATIVE_ENV}=0 silences this): {exc}", RuntimeWarning,
                              stacklevel=2)
        return _STATE["lib"]  # type: ignore[return-value]


class TopkStream:
    """Exact top-k of ``rows`` rows whose columns arrive in slabs (:meth:`update`), sorted
    descending at :meth:`finish`. Each row keeps its k+1 largest values so far; a slab is read
    once for block maxima, and only blocks that can change the kept values are looked at again.
    """

    def __init__(self, rows: int, k: int, lib: ctypes.CDLL | None = None) -> None:
        self.lib = lib or topk_library()
        if self.lib is None:
            raise NativeBuildError("the native top-k kernel is not available")
        if rows < 0 or k < 1:
            raise ValueError(f"need rows >= 0 and k >= 1, got rows={rows}, k={k}")
        self.rows, self.k, self.columns = rows, k, 0
        # per row a heap of k+1 (value, index) records, laid out by the library
        self.state = torch.empty(rows * (k + 1) * self.lib.mivos_topk_state_bytes(),
                                 dtype=torch.uint8)
        self.counts = torch.zeros(rows, dtype=torch.int64)
        self.bad = torch.zeros(rows, dtype=torch.uint8)

    def update(self, x: torch.Tensor, offset: int | None = None) -> None:
        """Merge the slab ``x`` (``rows x n`` float32 on the CPU, unit column stride) holding
        columns ``offset .. offset + n - 1`` (default: right after the previous slab)."""
        if x.dim() != 2 or x.dtype != torch.float32 or x.device.type != "cpu":
            raise ValueError(f"expected a 2-D float32 CPU tensor, got {tuple(x.shape)} "
                             f"{x.dtype} on {x.device}")
        if x.shape[0] != self.rows:
            raise ValueError(f"slab has {x.shape[0]} rows, the stream has {self.rows} rows")
        n = x.shape[1]
        offset = self.columns if offset is None else int(offset)
        if n == 0 or self.rows == 0:
            return
        if x.stride(1) != 1 or (self.rows > 1 and x.stride(0) < n):
            x = x.contiguous()
        status = self.lib.mivos_topk_update_f32(
            x.data_ptr(), self.rows, n, x.stride(0) if self.rows > 1 else n, offset,
            self.k + 1, self.state.data_ptr(), self.counts.data_ptr(), self.bad.data_ptr(),
            _threads())
        if status != 0:
            raise RuntimeError(f"native top-k refused a slab of {self.rows} x {n} at {offset}")
        self.columns = max(self.columns, offset + n)

    def finish(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``values`` (``rows x k``), ``indices`` (``rows x k`` int64) and ``ok`` (``rows``
        bool). Where ``ok`` is True the row's values and indices are ``torch.topk``'s over all
        the columns seen; elsewhere (a tie at or above the k-th place, a NaN, fewer than k
        columns) they are undefined and the caller must compute the row itself."""
        values = torch.empty(self.rows, self.k, dtype=torch.float32)
        indices = torch.empty(self.rows, self.k, dtype=torch.int64)
        ok = torch.empty(self.rows, dtype=torch.uint8)
        if self.rows:
            status = self.lib.mivos_topk_finish_f32(
                self.rows, self.k + 1, self.state.data_ptr(), self.counts.data_ptr(),
                self.bad.data_ptr(), values.data_ptr(),
                indices.data_ptr(), ok.data_ptr(), _threads())
            if status != 0:
                raise RuntimeError("native top-k refused to finish")
        return values, indices, ok.bool()


def _threads() -> int:
    return max(1, torch.get_num_threads())


def topk_rows(x: torch.Tensor, k: int, lib: ctypes.CDLL | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k of every row of ``x`` (``R x n`` float32 on the CPU), sorted descending: one
    :class:`TopkStream` slab. Returns ``values``, ``indices`` and ``ok`` as
    :meth:`TopkStream.finish` does."""
    if x.dim() != 2:
        raise ValueError(f"expected a 2-D tensor, got {tuple(x.shape)}")
    if not 1 <= k <= x.shape[1]:
        raise ValueError(f"k must be in [1, {x.shape[1]}], got {k}")
    stream = TopkStream(x.shape[0], k, lib)
    stream.update(x, 0)
    return stream.finish()
