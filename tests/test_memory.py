"""Tests for model/memory.py: top-k semantics, chunking, sparse readout, gradients, KM."""

from __future__ import annotations

import json
import math

import pytest
import torch

import model.memory as memory
from model.memory import (
    DEFAULT_MAX_ELEMENTS,
    affinity,
    query_chunk_size,
    read_memory,
    softmax_topk,
    softmax_topk_km,
)
from tests._scripts import load_script


def _inputs(batch, ck=8, cv=5, n=24, m=12, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = torch.randn(batch, ck, n, generator=g, dtype=dtype)
    mv = torch.randn(batch, cv, n, generator=g, dtype=dtype)
    qk = torch.randn(batch, ck, m, generator=g, dtype=dtype)
    return mk, mv, qk


def _loop_reference(mk, mv, qk, top_k):
    """Column by column, in float64, straight from the definition in REFERENCE.md b.4."""
    mk, mv, qk = mk.double(), mv.double(), qk.double()
    batch, ck, n = mk.shape
    out = torch.zeros(batch, mv.shape[1], qk.shape[2], dtype=torch.float64)
    for b in range(batch):
        for j in range(qk.shape[2]):
            col = [float(mk[b, :, i] @ qk[b, :, j]) / math.sqrt(ck) for i in range(n)]
            order = sorted(range(n), key=lambda i: col[i], reverse=True)
            keep = order if top_k is None else order[:top_k]
            top = col[keep[0]]
            e = [math.exp(col[i] - top) for i in keep]
            total = sum(e)
            for i, ei in zip(keep, e):
                out[b, :, j] += (ei / total) * mv[b, :, i]
    return out


def _dense(mk, mv, qk, top_k):
    return torch.bmm(mv, softmax_topk(affinity(mk, qk), top_k))


# ------------------------------------------------------------------------------ semantics


@pytest.mark.parametrize("batch", [1, 2, 3])
@pytest.mark.parametrize("top_k", [None, 1, 3, 7])
def test_matches_loop_reference(batch, top_k):
    mk, mv, qk = _inputs(batch, n=20, m=9, seed=batch)
    ref = _loop_reference(mk, mv, qk, top_k)
    got = read_memory(mk, mv, qk, top_k=top_k)
    assert got.shape == (batch, 5, 9) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(_dense(mk, mv, qk, top_k).double(), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("batch", [2, 3])
def test_batch_equal_to_k_uses_each_columns_own_max(batch):
    # B == k is the case where the original code silently subtracted the wrong row
    mk, mv, qk = _inputs(batch, n=16, m=10, seed=7)
    # give the items very different affinity scales so a wrong max would blow up exp()
    mk = mk * torch.tensor([1.0, 30.0, 0.1][:batch]).view(batch, 1, 1)
    got = read_memory(mk, mv, qk, top_k=batch)
    assert torch.isfinite(got).all()
    for b in range(batch):
        alone = read_memory(mk[b : b + 1], mv[b : b + 1], qk[b : b + 1], top_k=batch)
        torch.testing.assert_close(got[b : b + 1], alone, atol=1e-6, rtol=0)
    ref = _loop_reference(mk, mv, qk, batch)
    torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("extra", [0, 1, 50])
def test_topk_at_least_n_is_full_softmax(extra):
    mk, mv, qk = _inputs(2, n=15)
    full = read_memory(mk, mv, qk, top_k=None)
    torch.testing.assert_close(read_memory(mk, mv, qk, top_k=15 + extra), full)
    aff = affinity(mk, qk)
    torch.testing.assert_close(softmax_topk(aff, 15 + extra), torch.softmax(aff, dim=1))


def test_dense_topk_weights_structure():
    mk, mv, qk = _inputs(2, n=20, m=6)
    w = softmax_topk(affinity(mk, qk), 4)
    assert ((w > 0).sum(dim=1) == 4).all()
    torch.testing.assert_close(w.sum(dim=1), torch.ones(2, 6))


def test_affinity_is_scaled_dot_product():
    mk, _, qk = _inputs(1, ck=16, n=5, m=3)
    expected = mk[0].t() @ qk[0] / 4.0
    torch.testing.assert_close(affinity(mk, qk)[0], expected)


@pytest.mark.parametrize("top_k", [None, 1, 4])
@pytest.mark.parametrize("km", [False, True])
def test_readout_of_constant_values_is_constant(top_k, km):
    mk, mv, qk = _inputs(2, n=18, m=12)
    const = torch.tensor([[1.5, -2.0, 0.25, 7.0, 0.0], [3.0, 1.0, -1.0, 2.0, 5.0]])
    mv = const.unsqueeze(2).expand(2, 5, 18)
    kw = {"km_sigma": 1.5, "query_hw": (3, 4)} if km else {}
    got = read_memory(mk, mv, qk, top_k=top_k, max_elements=40, **kw)
    torch.testing.assert_close(got, const.unsqueeze(2).expand(2, 5, 12), atol=1e-5, rtol=0)
    # with arbitrary values the readout stays inside each channel's range (convexity)
    mv = torch.randn(2, 5, 18)
    got = read_memory(mk, mv, qk, top_k=top_k, max_elements=40, **kw)
    assert (got <= mv.amax(dim=2, keepdim=True) + 1e-5).all()
    assert (got >= mv.amin(dim=2, keepdim=True) - 1e-5).all()


def test_ties_between_duplicate_memory_positions():
    # duplicated memory positions (same key and value) tie in every column; whichever copy
    # the top-k picks, the readout is the same, and it must match the definition
    mk, mv, qk = _inputs(2, n=8, m=7, seed=3)
    mk = torch.cat([mk, mk[:, :, :4]], dim=2)
    mv = torch.cat([mv, mv[:, :, :4]], dim=2)
    for k in (1, 2, 3, 5, 11):
        got = read_memory(mk, mv, qk, top_k=k, max_elements=12)
        torch.testing.assert_close(got.double(), _loop_reference(mk, mv, qk, k), atol=1e-5, rtol=0)


def test_all_equal_affinities():
    # every affinity equal: any k of them is a valid top-k set, all with weight 1/k
    mk = torch.zeros(1, 4, 10)
    qk = torch.randn(1, 4, 6)
    mv = torch.ones(1, 3, 10)
    torch.testing.assert_close(read_memory(mk, mv, qk, top_k=3), torch.ones(1, 3, 6))
    torch.testing.assert_close(read_memory(mk, mv, qk, top_k=None), torch.ones(1, 3, 6))


def test_float64_path():
    mk, mv, qk = _inputs(2, n=14, m=6, dtype=torch.float64, seed=5)
    for k in (None, 3):
        got = read_memory(mk, mv, qk, top_k=k, max_elements=14)
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, _loop_reference(mk, mv, qk, k), atol=1e-12, rtol=0)


def test_bfloat16_runs_and_stays_close():
    mk, mv, qk = _inputs(1, n=30, m=8, seed=6)
    low = [t.bfloat16() for t in (mk, mv, qk)]
    got = read_memory(*low, top_k=None, max_elements=60)
    assert got.dtype == torch.bfloat16 and torch.isfinite(got.float()).all()
    torch.testing.assert_close(got.float(), read_memory(mk, mv, qk), atol=5e-2, rtol=5e-2)
    # top-k in bfloat16: rounding may change the selected set, so only check it is a convex
    # combination of the (bfloat16) values
    got = read_memory(*low, top_k=4, max_elements=60)
    assert got.dtype == torch.bfloat16
    got = got.float()
    assert torch.isfinite(got).all()
    v = low[1].float()
    assert (got <= v.amax(dim=2, keepdim=True) + 2e-2).all()
    assert (got >= v.amin(dim=2, keepdim=True) - 2e-2).all()


def test_query_batch_broadcast_and_transposed_values():
    mk, mv, qk = _inputs(3, n=16, m=5)
    q1 = qk[:1]
    expected = read_memory(mk, mv, q1.expand(3, -1, -1).contiguous(), top_k=4)
    torch.testing.assert_close(read_memory(mk, mv, q1, top_k=4), expected)
    # values stored as B x N x CV and passed as a transposed view give the same result
    mv_nc = mv.transpose(1, 2).contiguous().transpose(1, 2)
    torch.testing.assert_close(read_memory(mk, mv_nc, q1, top_k=4), expected)


def test_values_read_in_place_from_a_larger_buffer():
    """Each batch item's value rows found at its own offset of a buffer with room for more
    positions (a memory bank), or broadcast from one item, give the result of contiguous
    values, and the rows the read gathers from are a view of the buffer, not a copy."""
    mk, mv, qk = _inputs(3, n=16, m=5)
    expected = read_memory(mk, mv, qk, top_k=4)
    buffer = torch.randn(3, 24, mv.shape[1])  # B x capacity x CV
    buffer[:, :16] = mv.transpose(1, 2)
    in_place = buffer[:, :16].transpose(1, 2)  # B x CV x N, batch items 24 rows apart
    rows, step = memory._value_rows(in_place)
    assert step == 24 and rows.data_ptr() == buffer.data_ptr()
    assert torch.equal(read_memory(mk, in_place, qk, top_k=4), expected)
    one = mv[:1].transpose(1, 2).contiguous().transpose(1, 2).expand(3, -1, -1)
    rows, step = memory._value_rows(one)
    assert step == 0 and rows.shape == (16, mv.shape[1])
    assert torch.equal(read_memory(mk, one, qk, top_k=4),
                       read_memory(mk, one.contiguous(), qk, top_k=4))
    # a layout that is not rows (B x CV x N contiguous) is copied once and read alike
    rows, step = memory._value_rows(mv)
    assert step == 16 and rows.shape == (48, mv.shape[1])


def test_empty_query_and_errors():
    mk, mv, qk = _inputs(2, n=10, m=0)
    assert read_memory(mk, mv, qk, top_k=3).shape == (2, 5, 0)
    mk, mv, qk = _inputs(2, n=10, m=6)
    with pytest.raises(ValueError):
        read_memory(mk, mv, qk, top_k=0)
    with pytest.raises(ValueError):
        read_memory(mk, mv, qk, max_elements=0)
    with pytest.raises(ValueError):
        read_memory(mk, mv, qk, km_sigma=2.0)
    with pytest.raises(ValueError):
        read_memory(mk, mv, qk, km_sigma=2.0, query_hw=(4, 2))
    with pytest.raises(ValueError):
        read_memory(mk, mv[:, :, :9], qk)
    with pytest.raises(ValueError):
        read_memory(mk, mv, qk[:, :5])
    with pytest.raises(ValueError):
        read_memory(mk, mv, torch.cat([qk, qk[:1]]))


# ------------------------------------------------------------------------------ chunking


def test_query_chunk_size():
    assert query_chunk_size(2, 100, 1000) == 5
    assert query_chunk_size(2, 100, 1) == 1
    assert query_chunk_size(1, 32400, None) == DEFAULT_MAX_ELEMENTS // 32400
    assert query_chunk_size(3, 7, 22) == 1


@pytest.mark.parametrize("top_k", [None, 1, 5])
@pytest.mark.parametrize("batch", [1, 3])
def test_chunked_equals_unchunked(top_k, batch):
    n, m = 21, 13
    mk, mv, qk = _inputs(batch, n=n, m=m, seed=11)
    whole = read_memory(mk, mv, qk, top_k=top_k, max_elements=batch * n * m)
    ref = _loop_reference(mk, mv, qk, top_k)
    torch.testing.assert_close(whole.double(), ref, atol=1e-5, rtol=0)
    # chunk sizes 1 (budget 1 and budget just below two columns), 2, 4 (13 % 4 != 0), 6, 12
    for budget in (1, 2 * batch * n - 1, 2 * batch * n, 4 * batch * n + 3, 6 * batch * n,
                   batch * n * m - 1, None):
        got = read_memory(mk, mv, qk, top_k=top_k, max_elements=budget)
        torch.testing.assert_close(got, whole, atol=1e-5, rtol=0)


def test_chunk_budget_limits_the_affinity_block(monkeypatch):
    # spy on torch.bmm to check the largest affinity block the read creates
    sizes = []
    real_bmm = torch.bmm

    def spy(a, b, *args, **kwargs):
        out = real_bmm(a, b, *args, **kwargs)
        sizes.append(out.numel())
        return out

    monkeypatch.setattr(memory.torch, "bmm", spy)
    mk, mv, qk = _inputs(2, n=30, m=17)
    for top_k in (None, 4):
        sizes.clear()
        read_memory(mk, mv, qk, top_k=top_k, max_elements=2 * 30 * 3)
        # affinity blocks are B x m x N with m <= 3; readout pieces are smaller still
        assert max(sizes) <= 2 * 30 * 3
    monkeypatch.undo()


# ------------------------------------------------------------------------------ gradients


@pytest.mark.parametrize("top_k", [None, 3])
def test_gradients_chunked_match_unchunked_and_dense(top_k):
    mk, mv, qk = _inputs(2, n=16, m=9, seed=13)
    proj = torch.randn(2, 5, 9)

    def grads(fn):
        leaves = [t.clone().requires_grad_(True) for t in (mk, mv, qk)]
        (fn(*leaves) * proj).sum().backward()
        return [t.grad for t in leaves]

    dense = grads(lambda a, b, c: _dense(a, b, c, top_k))
    whole = grads(lambda a, b, c: read_memory(a, b, c, top_k=top_k))
    chunked = grads(lambda a, b, c: read_memory(a, b, c, top_k=top_k, max_elements=2 * 16 * 2 + 1))
    for g_whole, g_chunk, g_dense in zip(whole, chunked, dense):
        assert g_whole is not None and g_whole.abs().sum() > 0
        torch.testing.assert_close(g_chunk, g_whole, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(g_whole, g_dense, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("top_k", [None, 2])
def test_gradcheck_float64(top_k):
    mk, mv, qk = (t.requires_grad_(True) for t in _inputs(2, ck=3, cv=2, n=6, m=5,
                                                            dtype=torch.float64, seed=17))
    assert torch.autograd.gradcheck(
        lambda a, b, c: read_memory(a, b, c, top_k=top_k, max_elements=12), (mk, mv, qk)
    )


def test_km_gradient_flows():
    mk, mv, qk = (t.requires_grad_(True) for t in _inputs(1, n=12, m=6))
    out = read_memory(mk, mv, qk, top_k=4, max_elements=12, km_sigma=1.0, query_hw=(2, 3))
    out.sum().backward()
    for t in (mk, mv, qk):
        assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


# ------------------------------------------------------------------------------ kernelized memory


@pytest.mark.parametrize("top_k", [None, 1, 4])
def test_km_huge_sigma_equals_plain(top_k):
    mk, mv, qk = _inputs(2, n=20, m=12, seed=19)
    plain = read_memory(mk, mv, qk, top_k=top_k)
    km = read_memory(mk, mv, qk, top_k=top_k, max_elements=45, km_sigma=1e6, query_hw=(3, 4))
    torch.testing.assert_close(km, plain, atol=1e-5, rtol=0)


def _km_loop_reference(mk, mv, qk, top_k, sigma, hw):
    """Kernelized memory straight from the definition, column by column, in float64."""
    aff = affinity(mk.double(), qk.double())  # B x N x M
    batch, n, m = aff.shape
    h, w = hw
    out = torch.zeros(batch, mv.shape[1], m, dtype=torch.float64)
    for b in range(batch):
        centre = [int(aff[b, i].argmax()) for i in range(n)]
        for j in range(m):
            top = float(aff[b, :, j].max())
            prod = []
            for i in range(n):
                dy = j // w - centre[i] // w
                dx = j % w - centre[i] % w
                gauss = math.exp(-(dy * dy + dx * dx) / (2 * sigma * sigma))
                prod.append(math.exp(float(aff[b, i, j]) - top) * gauss)
            order = sorted(range(n), key=lambda i: prod[i], reverse=True)
            keep = order if top_k is None else order[:top_k]
            total = sum(prod[i] for i in keep)
            for i in keep:
                out[b, :, j] += prod[i] / total * mv[b, :, i].double()
    return out


@pytest.mark.parametrize("top_k", [None, 3])
def test_km_matches_definition_and_chunking(top_k):
    hw, sigma = (3, 5), 1.2
    mk, mv, qk = _inputs(2, n=16, m=15, seed=23)
    ref = _km_loop_reference(mk, mv, qk, top_k, sigma, hw)
    dense = torch.bmm(mv, softmax_topk_km(affinity(mk, qk), top_k, sigma, hw))
    torch.testing.assert_close(dense.double(), ref, atol=1e-5, rtol=0)
    # budgets of 1, 2 and 4 query columns: the centres need the arg-max over all chunks
    for budget in (1, 2 * 16 * 2, 2 * 16 * 4, None):
        got = read_memory(mk, mv, qk, top_k=top_k, max_elements=budget, km_sigma=sigma,
                          query_hw=hw)
        torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=0)
    # and a small sigma really changes the result
    plain = read_memory(mk, mv, qk, top_k=top_k)
    assert (plain.double() - ref).abs().max() > 1e-3


def test_km_centre_found_in_a_later_chunk():
    # memory position 0 matches the last query position best; with one column per chunk the
    # kernel for that position must still be centred on the last position
    ck, hw = 4, (1, 6)
    qk = torch.zeros(1, ck, 6)
    qk[0, 0] = torch.linspace(0.0, 1.0, 6)
    mk = torch.zeros(1, ck, 3)
    mk[0, 0, 0] = 5.0   # affinity grows with the query index: centre at query 5
    mk[0, 0, 1] = -5.0  # centre at query 0
    mk[0, 0, 2] = 0.0   # all equal: first occurrence, query 0
    mv = torch.eye(3).unsqueeze(0)
    ref = _km_loop_reference(mk, mv, qk, 2, 0.7, hw)
    for budget in (1, 3, 18):
        got = read_memory(mk, mv, qk, top_k=2, max_elements=budget, km_sigma=0.7, query_hw=hw)
        torch.testing.assert_close(got.double(), ref, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------ benchmark script


def test_bench_script_quick(tmp_path):
    bench = load_script("bench_memory_read")
    out_json, out_md = tmp_path / "b.json", tmp_path / "b.md"
    bench.main(["--quick", "--repeats", "1", "--T", "2", "--json", str(out_json),
                "--markdown", str(out_md)])
    result = json.loads(out_json.read_text())
    (row,) = result["topk"]
    assert row["T"] == 2 and row["max_abs_diff"] < 1e-4 and row["dense_total_ms_median"] > 0
    assert "| 2 |" in out_md.read_text()


# ------------------------------------------------------------------ grouped top-k


@pytest.mark.parametrize("n,k,sizes", [(4096, 5, (8, 8)), (4099 + 64, 5, (8, 8)),
                                       (3000, 7, (4, 16)), (12800, 50, (8, 8)),
                                       (2000, 1, (16, 4))])
def test_grouped_topk_is_the_library_topk(n, k, sizes, monkeypatch):
    gen = torch.Generator().manual_seed(n + k)
    # affinity-like rows: products of random keys (distinct values)
    x = torch.randn(33, 16, generator=gen) @ torch.randn(16, n, generator=gen)
    ref_v, ref_i = torch.topk(x, k, dim=1)
    widths = []
    library_topk = torch.topk

    def spy(t, *args, **kwargs):
        widths.append(t.shape[-1])
        return library_topk(t, *args, **kwargs)

    monkeypatch.setattr(memory.torch, "topk", spy)
    vals, idx = memory.topk_grouped(x, k, sizes)
    assert torch.equal(vals, ref_v) and torch.equal(idx, ref_i)
    assert len(widths) == 3 and max(widths) < n // 4  # short rows only, no row redone


def test_grouped_topk_rows_with_ties_or_nan_follow_the_library():
    gen = torch.Generator().manual_seed(0)
    keys = torch.randn(16, 100, generator=gen)
    x = torch.randn(12, 16, generator=gen) @ keys.repeat(1, 41)  # every value 41 times
    x[3, 777] = float("nan")
    x[5] = torch.randn(4100, generator=gen)  # one row without ties
    ref_v, ref_i = torch.topk(x, 6, dim=1)
    vals, idx = memory.topk_grouped(x, 6)
    assert torch.equal(vals.nan_to_num(), ref_v.nan_to_num()) and torch.equal(idx, ref_i)
    # a tie exactly at the k-th place, the other copy in a group the search leaves out
    row = torch.randn(1, 4096, generator=gen)
    row[0, 4000] = row[0].topk(4).values[-1]
    ref_v, ref_i = torch.topk(row, 4, dim=1)
    vals, idx = memory.topk_grouped(row, 4)
    assert torch.equal(vals, ref_v) and torch.equal(idx, ref_i)
    with pytest.raises(ValueError, match="group sizes"):
        memory.topk_grouped(row, 4, (8, 1))


def test_topk_last_shapes_and_the_read_are_unchanged(monkeypatch):
    monkeypatch.setenv("MIVOS_NATIVE", "0")  # the grouped path (tests/test_native.py: the kernel)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 900, generator=gen)
    monkeypatch.setattr(memory, "GROUPED_TOPK_MIN_RATIO", 64)
    vals, idx = memory.topk_last(x, 5)  # 900 >= 64 * 5: grouped
    ref_v, ref_i = torch.topk(x, 5, dim=2)
    assert vals.shape == (2, 3, 5) and torch.equal(vals, ref_v) and torch.equal(idx, ref_i)
    mem_key = torch.randn(2, 8, 1200, generator=gen)
    mem_value = torch.randn(2, 4, 1200, generator=gen)
    query = torch.randn(2, 8, 50, generator=gen)
    grouped = memory.read_memory(mem_key, mem_value, query, top_k=4, max_elements=2000)
    monkeypatch.setattr(memory, "GROUPED_TOPK_MIN_RATIO", 10**9)
    plain = memory.read_memory(mem_key, mem_value, query, top_k=4, max_elements=2000)
    assert torch.equal(grouped, plain)


def test_topk_last_keeps_autograd_on_the_library_path(monkeypatch):
    monkeypatch.setattr(memory, "GROUPED_TOPK_MIN_RATIO", 1)
    x = torch.randn(2, 700, requires_grad=True)
    vals, _ = memory.topk_last(x, 3)
    vals.sum().backward()
    assert x.grad.sum().item() == 6.0


def test_scratch_buffers_serve_inference_mode_and_plain_no_grad():
    gen = torch.Generator().manual_seed(2)
    mem_key = torch.randn(1, 8, 300, generator=gen)
    mem_value = torch.randn(1, 4, 300, generator=gen)
    query = torch.randn(1, 8, 40, generator=gen)
    memory.release_scratch()
    with torch.inference_mode():
        a = memory.read_memory(mem_key, mem_value, query, top_k=5, max_elements=3000)
    with torch.no_grad():
        b = memory.read_memory(mem_key, mem_value, query, top_k=5, max_elements=3000)
    c = memory.read_memory(mem_key, mem_value, query, top_k=5, max_elements=3000)
    memory.release_scratch()
    d = memory.read_memory(mem_key.requires_grad_(), mem_value, query, top_k=5, max_elements=3000)
    assert torch.equal(a, b) and torch.equal(b, c) and torch.equal(c, d.detach())


def test_topk_last_leaves_low_precision_rows_to_the_library(monkeypatch):
    monkeypatch.setenv("MIVOS_NATIVE", "0")
    monkeypatch.setattr(memory, "GROUPED_TOPK_MIN_RATIO", 1)
    calls = []
    monkeypatch.setattr(memory, "topk_grouped",
                        lambda x, k, **kw: calls.append(x) or torch.topk(x, k, dim=1))
    x = torch.randn(3, 2000).bfloat16()
    vals, idx = memory.topk_last(x, 4)
    assert not calls and torch.equal(vals, torch.topk(x, 4).values)
    memory.topk_last(x.float(), 4)
    assert len(calls) == 1
