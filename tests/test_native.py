"""Tests for model/native.py and its kernel (csrc/topk_select.cpp): the top-k it returns is
``torch.topk``'s, it hands back every row whose order is not unique, the streamed memory read
equals the chunked one, and a missing compiler or a bad source falls back with a clear reason."""

from __future__ import annotations

import os
import shutil
import warnings

import pytest
import torch

import model.memory as memory
from model import native

needs_compiler = pytest.mark.skipif(native.find_compiler() is None, reason="no C++ compiler")


@pytest.fixture
def lib(monkeypatch):
    monkeypatch.delenv(native.NATIVE_ENV, raising=False)
    loaded = native.topk_library()
    if loaded is None:
        pytest.skip("native kernel unavailable")
    return loaded


def _affinity_rows(rows, n, seed, ck=16):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, ck, generator=gen) @ torch.randn(ck, n, generator=gen)


@needs_compiler
@pytest.mark.parametrize("rows,n,k", [(37, 12_800, 50), (5, 4_099, 7), (64, 700, 1),
                                      (3, 130, 50), (1, 2_000, 20), (9, 51, 50)])
def test_topk_rows_is_the_library_topk(lib, rows, n, k):
    x = _affinity_rows(rows, n, seed=n + k)
    ref_v, ref_i = torch.topk(x, k, dim=1)
    vals, idx, ok = native.topk_rows(x, k, lib)
    assert ok.all()  # distinct values: nothing left to the library
    assert torch.equal(vals, ref_v) and torch.equal(idx, ref_i)


@needs_compiler
def test_topk_rows_reads_strided_rows(lib):
    wide = _affinity_rows(20, 9_000, seed=3)
    x = wide[:, 1_000:8_000]  # row stride 9000, unit column stride
    ref_v, ref_i = torch.topk(x, 30, dim=1)
    vals, idx, ok = native.topk_rows(x, 30, lib)
    assert ok.all() and torch.equal(vals, ref_v) and torch.equal(idx, ref_i)
    vals, idx, ok = native.topk_rows(x.t().contiguous().t(), 30, lib)  # column-major: copied
    assert ok.all() and torch.equal(vals, ref_v) and torch.equal(idx, ref_i)


@needs_compiler
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_stream_over_uneven_slabs_in_any_order(lib, threads):
    x = _affinity_rows(33, 10_000, seed=threads)
    ref_v, ref_i = torch.topk(x, 25, dim=1)
    bounds = [0, 1, 64, 700, 701, 5_000, 10_000]
    slabs = list(zip(bounds[:-1], bounds[1:], strict=True))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        forward = native.TopkStream(33, 25, lib)
        for start, stop in slabs:
            forward.update(x[:, start:stop])
        backward = native.TopkStream(33, 25, lib)
        for start, stop in reversed(slabs):
            backward.update(x[:, start:stop], start)
        results = [forward.finish(), backward.finish()]
    finally:
        torch.set_num_threads(before)
    for vals, idx, ok in results:
        assert ok.all() and torch.equal(vals, ref_v) and torch.equal(idx, ref_i)


@needs_compiler
def test_rows_without_a_unique_order_are_handed_back(lib):
    k = 6
    x = _affinity_rows(8, 3_000, seed=11)
    top = torch.topk(x, k + 2, dim=1).values
    x[0, 2_999] = top[0, k - 1]  # tie at the k-th place
    x[1, 2_998] = top[1, 2]  # tie inside the top k
    x[2, 2_997] = top[2, k + 1]  # tie below the (k+1)-th place: harmless
    x[3, 1_234] = float("nan")
    x[4] = float("-inf")  # every value equal
    x[5, 17] = float("inf")  # one infinite value: a unique order
    vals, idx, ok = native.topk_rows(x, k, lib)
    assert ok.tolist() == [False, False, True, False, False, True, True, True]
    ref_v, ref_i = torch.topk(x, k, dim=1)
    assert torch.equal(vals[ok], ref_v[ok]) and torch.equal(idx[ok], ref_i[ok])
    # topk_last redoes the handed-back rows with the library: torch.topk's result everywhere
    got_v, got_i = memory.topk_last(x, k)
    ref_v, ref_i = torch.topk(x, k, dim=1)
    assert torch.equal(got_v.nan_to_num(), ref_v.nan_to_num()) and torch.equal(got_i, ref_i)


@needs_compiler
def test_topk_last_sends_long_float32_rows_to_the_kernel(lib, monkeypatch):
    calls = []
    real = native.topk_rows
    monkeypatch.setattr(native, "topk_rows",
                        lambda *a, **kw: calls.append(tuple(a[0].shape)) or real(*a, **kw))
    x = _affinity_rows(4, 128 * 5, seed=2).view(2, 2, -1)
    vals, idx = memory.topk_last(x, 5)
    ref_v, ref_i = torch.topk(x, 5, dim=-1)
    assert calls == [(4, 640)] and torch.equal(vals, ref_v) and torch.equal(idx, ref_i)
    memory.topk_last(x[..., :639], 5)  # shorter than NATIVE_TOPK_MIN_RATIO * k
    memory.topk_last(x.double(), 5)
    memory.topk_last(x.bfloat16(), 5)
    with torch.enable_grad():
        memory.topk_last(x.clone().requires_grad_(), 5)
    assert len(calls) == 1


def _read(mk, mv, q, k, similarity, native_on, monkeypatch, max_elements):
    monkeypatch.setenv(native.NATIVE_ENV, "1" if native_on else "0")
    with torch.no_grad():
        return memory.read_memory(mk, mv, q, top_k=k, similarity=similarity,
                                  max_elements=max_elements)


@needs_compiler
@pytest.mark.parametrize("similarity", ["dot", "l2"])
@pytest.mark.parametrize("batch,cv", [(1, 8), (3, 8), (2, 300)])
def test_streamed_read_equals_the_chunked_read(lib, monkeypatch, similarity, batch, cv):
    gen = torch.Generator().manual_seed(batch)
    n = 3_000
    mk = torch.randn(batch, 16, n, generator=gen)
    mk[:, :, 2_000:2_100] = mk[:, :, 100:200]  # repeated memory positions: tied affinities
    mv = torch.randn(batch, n, cv, generator=gen).transpose(1, 2)  # the bank's row layout
    q = torch.randn(1, 16, 77, generator=gen)  # one query broadcast to the batch
    native_readout = native.readout_matches_library(lib)  # (its check calls readout)
    spy, readouts = [], []
    real, real_readout = native.TopkStream.update, native.readout
    monkeypatch.setattr(native.TopkStream, "update",
                        lambda self, x, offset=None: spy.append(x.shape) or real(self, x, offset))
    monkeypatch.setattr(native, "readout",
                        lambda *a, **kw: readouts.append(1) or real_readout(*a, **kw))
    streamed = _read(mk, mv, q, 10, similarity, True, monkeypatch, 2**14)
    assert len(spy) > 1 and all(s[0] == batch * 77 for s in spy)  # several slabs, all columns
    assert readouts == ([1] if native_readout else [])
    chunked = _read(mk, mv, q, 10, similarity, False, monkeypatch, 2**22)
    assert torch.equal(streamed, chunked)
    assert streamed.is_contiguous() and streamed.shape == (batch, cv, 77)


@needs_compiler
def test_streamed_read_without_the_native_readout_is_the_same(lib, monkeypatch):
    gen = torch.Generator().manual_seed(11)
    mk = torch.randn(2, 16, 3_000, generator=gen)
    mv = torch.randn(2, 3_000, 40, generator=gen).transpose(1, 2)
    q = torch.randn(2, 16, 50, generator=gen)
    with_readout = _read(mk, mv, q, 10, "dot", True, monkeypatch, 2**14)
    native.readout_matches_library(lib)  # checked before readout is taken away
    monkeypatch.setattr(native, "readout_matches_library", lambda lib=None: False)
    monkeypatch.setattr(native, "readout", None)  # would fail if called
    without = _read(mk, mv, q, 10, "dot", True, monkeypatch, 2**14)
    assert torch.equal(with_readout, without)


def _bag_readout(values, offset, idx, weights):
    """The chunked read's readout (embedding_bag), as B x CV x M."""
    batch, m, _ = idx.shape
    return memory._gather_readout(values, idx, weights, offset).view(batch, m, -1).transpose(1, 2)


@needs_compiler
@pytest.mark.parametrize("batch,n,m,cv,k,layout", [
    (1, 5_000, 40, 512, 50, "rows"),      # the mivos read's channel count
    (3, 200, 17, 300, 7, "spaced"),       # vector chunks, single vectors and a scalar tail
    (2, 90, 33, 3, 1, "shared"),          # one set of rows for both items, k = 1
    (2, 64, 16, 16, 64, "rows"),          # a full tile, k = n
])
def test_readout_is_embedding_bag_bit_for_bit(lib, batch, n, m, cv, k, layout):
    if not native.readout_matches_library(lib):
        pytest.skip("this machine's embedding_bag sums differently; the read does not use it")
    gen = torch.Generator().manual_seed(n + cv)
    offset = {"rows": n, "spaced": n + 13, "shared": 0}[layout]
    values = torch.randn((batch - 1) * offset + n, cv, generator=gen)
    idx = torch.randint(0, n, (batch, m, k), generator=gen)
    weights = torch.rand(batch, m, k, generator=gen)
    got = native.readout(values, offset, idx, weights, n, lib)
    assert got.shape == (batch, cv, m) and got.is_contiguous()
    assert torch.equal(got, _bag_readout(values, offset, idx, weights))


@needs_compiler
def test_readout_reads_value_rows_with_a_wider_stride(lib):
    if not native.readout_matches_library(lib):
        pytest.skip("this machine's embedding_bag sums differently")
    gen = torch.Generator().manual_seed(2)
    wide = torch.randn(500, 40, generator=gen)
    values = wide[:, :32]  # row stride 40
    idx = torch.randint(0, 500, (1, 21, 9), generator=gen)
    weights = torch.rand(1, 21, 9, generator=gen)
    got = native.readout(values, 500, idx, weights, 500, lib)
    assert torch.equal(got, _bag_readout(values.contiguous(), 500, idx, weights))


@needs_compiler
def test_readout_matches_the_library_on_x86(lib):
    import platform
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("checked where the library's embedding_bag uses fused multiply-adds")
    assert native.readout_matches_library(lib)


@needs_compiler
def test_readout_refuses_bad_input(lib):
    values = torch.randn(100, 8)
    idx = torch.zeros(1, 4, 3, dtype=torch.int64)
    weights = torch.rand(1, 4, 3)
    with pytest.raises(IndexError, match=r"\[0, 100\)"):
        native.readout(values, 100, idx.index_fill(2, torch.tensor([1]), 100), weights, 100, lib)
    with pytest.raises(IndexError, match=r"\[0, 100\)"):
        native.readout(values, 100, idx - 1, weights, 100, lib)
    with pytest.raises(ValueError, match="do not fit"):
        native.readout(values, 60, torch.zeros(2, 4, 3, dtype=torch.int64),
                       torch.rand(2, 4, 3), 50, lib)
    with pytest.raises(ValueError, match="float32"):
        native.readout(values.double(), 100, idx, weights, 100, lib)
    with pytest.raises(ValueError, match="B x M x k"):
        native.readout(values, 100, idx, weights[:, :2], 100, lib)


@needs_compiler
def test_streamed_read_redoes_tied_columns_from_whole_rows(lib, monkeypatch):
    gen = torch.Generator().manual_seed(5)
    base = torch.randn(1, 16, 700, generator=gen)
    mk = base.repeat(1, 1, 2)  # every affinity twice: every column handed back
    mv = torch.randn(1, 1_400, 4, generator=gen).transpose(1, 2)
    q = torch.randn(1, 16, 3, generator=gen)  # fewer columns than the padding to 8
    streamed = _read(mk, mv, q, 5, "dot", True, monkeypatch, None)
    chunked = _read(mk, mv, q, 5, "dot", False, monkeypatch, None)
    assert torch.equal(streamed, chunked)


def test_native_switch_turns_the_kernel_off(monkeypatch):
    monkeypatch.setenv(native.NATIVE_ENV, "0")
    assert not native.enabled() and native.topk_library() is None
    with pytest.raises(native.NativeBuildError, match="not available"):
        native.topk_rows(torch.randn(2, 100), 3)


def test_missing_compiler_falls_back_with_one_warning(monkeypatch):
    monkeypatch.delenv(native.NATIVE_ENV, raising=False)
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    monkeypatch.setattr(native, "_STATE", {})
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        assert native.topk_library() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.topk_library() is None  # decided once per process
    gen = torch.Generator().manual_seed(0)
    mk, q = torch.randn(1, 8, 2_000, generator=gen), torch.randn(1, 8, 9, generator=gen)
    mv = torch.randn(1, 4, 2_000, generator=gen)
    got = memory.read_memory(mk, mv, q, top_k=5)
    monkeypatch.setenv(native.NATIVE_ENV, "0")
    assert torch.equal(got, memory.read_memory(mk, mv, q, top_k=5))


@needs_compiler
def test_build_is_cached_per_source_and_a_bad_source_names_the_error(tmp_path):
    compiler = native.find_compiler()
    first = native.build_library(compiler, directory=tmp_path)
    stamp = first.stat().st_mtime_ns
    assert native.build_library(compiler, directory=tmp_path) == first
    assert first.stat().st_mtime_ns == stamp  # reused, not rebuilt
    changed = tmp_path / "topk_select.cpp"
    shutil.copy(native.SOURCE, changed)
    changed.write_text(changed.read_text() + "\n// changed\n")
    assert native.library_path(compiler, changed, tmp_path) != first
    broken = tmp_path / "broken.cpp"
    broken.write_text("this is not C++\n")
    with pytest.raises(native.NativeBuildError, match="broken.cpp"):
        native.build_library(compiler, broken, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no debris


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(native.CACHE_ENV, str(tmp_path / "libs"))
    assert native.cache_dir() == tmp_path / "libs"
    monkeypatch.delenv(native.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert native.cache_dir() == tmp_path / "mivos-rebuilt" / "native"


@needs_compiler
def test_bad_arguments_are_refused(lib):
    with pytest.raises(ValueError, match="float32"):
        native.topk_rows(torch.randn(2, 100, dtype=torch.float64), 3, lib)
    with pytest.raises(ValueError, match="k must be"):
        native.topk_rows(torch.randn(2, 10), 11, lib)
    stream = native.TopkStream(4, 3, lib)
    with pytest.raises(ValueError, match="4 rows"):
        stream.update(torch.randn(5, 100))
    assert native.topk_rows(torch.randn(0, 100), 3, lib)[2].numel() == 0


def test_library_builds_where_it_is_asked_for(tmp_path, monkeypatch):
    if native.find_compiler() is None:
        pytest.skip("no C++ compiler")
    monkeypatch.setenv(native.CACHE_ENV, str(tmp_path))
    path = native.build_library()
    assert path.parent == tmp_path and path.suffix == ".so" and os.path.getsize(path) > 0


@needs_compiler
@pytest.mark.parametrize("similarity", ["dot", "l2"])
def test_read_under_cpu_autocast_compares_keys_in_float32(lib, monkeypatch, similarity):
    gen = torch.Generator().manual_seed(7)
    mk = torch.randn(2, 16, 2_000, generator=gen).bfloat16()
    mv = torch.randn(2, 2_000, 8, generator=gen).bfloat16().transpose(1, 2)
    q = torch.randn(2, 16, 40, generator=gen).bfloat16()
    monkeypatch.delenv(native.NATIVE_ENV, raising=False)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = memory.read_memory(mk, mv, q, top_k=10, similarity=similarity)
    with torch.no_grad():
        ref = memory.read_memory(mk.float(), mv, q.float(), top_k=10, similarity=similarity)
    assert got.dtype == torch.bfloat16 and torch.equal(got, ref)
    # the library path (no kernel) keeps autocast's bfloat16 product; it stays close
    monkeypatch.setenv(native.NATIVE_ENV, "0")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        plain = memory.read_memory(mk, mv, q, top_k=10, similarity=similarity)
    assert plain.dtype == torch.bfloat16
    assert (plain.float() - got.float()).abs().mean() < 0.1


@needs_compiler
def test_a_budget_below_64_positions_per_slab_keeps_the_chunked_read(lib, monkeypatch):
    gen = torch.Generator().manual_seed(9)
    mk = torch.randn(2, 8, 1_500, generator=gen)
    mv = torch.randn(2, 4, 1_500, generator=gen)
    q = torch.randn(2, 8, 30, generator=gen)
    assert memory._stream_width(2, 30, 60 * 63) == 0  # 63 positions of 60 rows: too few
    assert memory._stream_width(2, 30, 60 * 130) == 128
    assert memory._stream_width(2, 30, None) == memory.STREAM_SLAB_ELEMENTS // 60 // 64 * 64
    spy = []
    real = native.TopkStream.update
    monkeypatch.setattr(native.TopkStream, "update",
                        lambda self, x, offset=None: spy.append(x.shape) or real(self, x, offset))
    small = _read(mk, mv, q, 5, "dot", True, monkeypatch, 60 * 63)
    assert spy and all(shape[1] == 1_500 for shape in spy)  # whole rows: topk_last's chunks
    assert torch.equal(small, _read(mk, mv, q, 5, "dot", False, monkeypatch, 60 * 63))
