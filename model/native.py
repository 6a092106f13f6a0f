"""Optional native kernels: compiled on first use with the system's C++ compiler.

``csrc/topk_select.cpp`` holds the two native steps of the top-k memory read
(:func:`model.memory.read_memory`: its streamed path, and :func:`model.memory.topk_last`):

* the exact top-k along the rows of a float32 matrix whose columns may arrive in slabs
  (:class:`TopkStream`). Each row keeps its k+1 largest values so far; a slab is compared a
  block of 64 entries at a time with the row's (k+1)-th value (vector compares into a bit
  mask), and only the entries above it are looked at one by one. A row whose order is not
  unique (a tie among its k values or at the k-th, or a NaN) is reported and left to
  ``torch.topk``, so the result is always ``torch.topk``'s;
* the readout (:func:`readout`): the weighted sum of the k selected value rows of every query
  column, with the arithmetic of ``F.embedding_bag`` (so the same bits, checked on the machine
  by :func:`readout_matches_library`), written straight into the ``B x CV x M`` layout.

The measured effect on the read is in ``docs/BENCHMARKS.md`` and ``docs/BENCH_MEMORY_READ.md``.

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
import torch.nn.functional as F

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
    "readout",
    "readout_matches_library",
    "topk_library",
    "topk_rows",
]

#: ``0`` turns the native kernels off.
NATIVE_ENV = "MIVOS_NATIVE"
#: Directory for the compiled libraries (default: ``$XDG_CACHE_HOME/mivos-rebuilt/native``).
CACHE_ENV = "MIVOS_NATIVE_CACHE"

ABI_VERSION = 4
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
    lib.mivos_readout_f32.restype = _INT
    lib.mivos_readout_f32.argtypes = [_POINTER, _I64, _I64, _I64, _POINTER, _POINTER, _I64, _I64,
                                      _I64, _I64, _POINTER, _INT]
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
    descending at :meth:`finish`. Each row keeps its k+1 largest values so far; a slab is
    compared with them a block at a time, and only entries that change them are looked at one
    by one.
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


def readout(values_rows: torch.Tensor, item_offset: int, idx: torch.Tensor,
            weights: torch.Tensor, n: int, lib: ctypes.CDLL | None = None) -> torch.Tensor:
    """The top-k read's weighted sum of value rows, ``B x CV x M`` (float32, contiguous).

    values_rows: float32 rows of CV on the CPU (unit column stride); batch item b's memory
    position j is row ``b * item_offset + j`` (``item_offset`` 0: one set of rows shared by
    all items). idx, weights: ``B x M x k`` (int64 indices in ``[0, n)``, float32 weights).
    Each column is summed as ``F.embedding_bag(..., mode="sum", per_sample_weights=...)`` sums
    it (one fused multiply-add per element, in the order of the k selections), so the result is
    that call's, transposed, where :func:`readout_matches_library` holds.
    """
    lib = lib or topk_library()
    if lib is None:
        raise NativeBuildError("the native kernels are not available")
    if values_rows.dim() != 2 or values_rows.dtype != torch.float32 or values_rows.stride(1) != 1:
        raise ValueError(f"values_rows must be 2-D float32 rows with unit column stride, got "
                         f"{tuple(values_rows.shape)} {values_rows.dtype} "
                         f"strides {values_rows.stride()}")
    if idx.dim() != 3 or weights.shape != idx.shape:
        raise ValueError(f"idx and weights must both be B x M x k, got {tuple(idx.shape)} and "
                         f"{tuple(weights.shape)}")
    batch, m, k = idx.shape
    cv = values_rows.shape[1]
    if n < 1 or (batch - 1) * item_offset + n > values_rows.shape[0]:
        raise ValueError(f"{batch} item(s) of {n} rows {item_offset} apart do not fit in "
                         f"{values_rows.shape[0]} rows")
    out = torch.empty(batch, cv, m, dtype=torch.float32)
    if out.numel() == 0:
        return out
    if k == 0:
        return out.zero_()
    if values_rows.shape[0] > 1 and values_rows.stride(0) < cv:  # overlapping rows
        values_rows = values_rows.contiguous()
    idx = idx.to(torch.int64).contiguous()
    weights = weights.to(torch.float32).contiguous()
    status = lib.mivos_readout_f32(values_rows.data_ptr(), max(cv, values_rows.stride(0)),
                                   item_offset, n, idx.data_ptr(), weights.data_ptr(), batch, m,
                                   k, cv, out.data_ptr(), _threads())
    if status == -2:
        raise IndexError(f"an index of the readout lies outside [0, {n})")
    if status != 0:
        raise RuntimeError(f"native readout refused B={batch} M={m} k={k} CV={cv}")
    return out


def readout_matches_library(lib: ctypes.CDLL | None = None) -> bool:
    """Whether :func:`readout` gives ``F.embedding_bag``'s sums bit for bit on this machine
    (checked once per process on a few random problems: channel counts with and without a
    vector tail, k = 1 and 50, two batch items). The streamed read uses the native readout only
    then, so that it returns the chunked read's tensor."""
    lib = lib or topk_library()
    if lib is None:
        return False
    key = ("readout_ok", id(lib))
    with _LOCK:
        if key not in _STATE:
            _STATE[key] = _check_readout(lib)
        return bool(_STATE[key])


def _check_readout(lib: ctypes.CDLL) -> bool:
    # the reference restates model.memory._gather_readout (which imports this module)
    gen = torch.Generator().manual_seed(0)
    for batch, n, m, cv, k in ((2, 300, 37, 512, 50), (1, 90, 20, 100, 1), (2, 64, 33, 7, 5)):
        values = torch.randn(batch * n, cv, generator=gen)
        idx = torch.randint(0, n, (batch, m, k), generator=gen)
        weights = torch.rand(batch, m, k, generator=gen)
        flat = (idx + torch.arange(batch).mul(n).view(batch, 1, 1)).view(batch * m, k)
        with torch.no_grad(), torch.autocast("cpu", enabled=False):
            expected = F.embedding_bag(flat, values, mode="sum",
                                       per_sample_weights=weights.view(batch * m, k))
        got = readout(values, n, idx, weights, n, lib)
        if not torch.equal(got, expected.view(batch, m, cv).transpose(1, 2)):
            return False
    return True

