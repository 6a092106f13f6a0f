"""Space-time memory read (REFERENCE.md b.4): the one implementation used for training and inference.

Shapes
------
* memory keys ``mem_key``     ``B x CK x N``  (N = T*h*w memory positions)
* memory values ``mem_value`` ``B x CV x N``
* query keys ``query_key``    ``B x CK x M``  (M = h*w query positions)
* readout                     ``B x CV x M``

The affinity is ``F = k_M^T k_Q / sqrt(CK)`` (``N x M`` per batch item) and it is normalised over
the *memory* axis: one distribution over the N memory positions per query column.

Similarities (``similarity=``)
------------------------------
* ``"dot"`` (default; MiVOS / STM): ``F = k_M^T k_Q / sqrt(CK)``. The query keys are divided by
  ``sqrt(CK)`` (:func:`scale_query`) before the product, as the original code does.
* ``"l2"`` (STCN as the MiVOS-STCN branch computes it, REFERENCE.md j.1): the negative squared
  Euclidean distance ``F = -|k_M - k_Q|^2 / sqrt(CK)``, formed as
  ``(2 k_M^T k_Q - |k_M|^2 - |k_Q|^2) / sqrt(CK)``: the three terms are combined in that order and
  the sum is *divided* by ``sqrt(CK)`` (no reciprocal multiplication, no pre-scaled query).
  STCN itself drops the ``|k_Q|^2`` term, which is constant per query column and so cancels in
  every normalisation below; keeping it only changes rounding. In half / bfloat16 the three terms
  cancel heavily, so this affinity (and its normalisation) is always formed in at least float32;
  the weights are cast back to the values' dtype for the readout.

Every normalisation mode, chunking and the top-k gather work the same for both similarities.

One affinity for several objects
--------------------------------
The values of one batch item may hold any number of channels. A caller whose keys do not depend
on the object (STCN) reads ``K`` objects with one affinity by stacking their values along the
channel axis (``B x (K*CV) x N``) and splitting the readout again (``B x K x CV x M``); the
weights are computed once per query column and shared by all objects.

Normalisation modes
-------------------
* ``top_k=None`` (training, ``--no_top``): softmax over all N entries of the column.
* ``top_k=k``: per column keep the k largest affinities, subtract that column's own maximum,
  exponentiate and divide by the sum over the k (a softmax restricted to the top-k set). The
  maximum is taken per column and per batch item, so any batch size is handled correctly.
  ``k >= N`` is the full softmax.
* ``km_sigma=s`` (kernelized memory, ``--use_km``; the official value is 5.6 grid cells at
  stride 16): for every memory position n the query position with the highest affinity
  ``argmax_m F[n, m]`` is found, and an unnormalised 2-D Gaussian
  ``exp(-((y_m - y_c)^2 + (x_m - x_c)^2) / (2 s^2))`` over the ``h x w`` query grid is centred
  there. The column-wise ``exp(F - max_n F)`` is multiplied by it, the top-k (or, with
  ``top_k=None``, all) entries of the product are kept and renormalised to sum to one. Any
  constant factor in front of the Gaussian cancels in the renormalisation. If every kept
  product of a column underflows to zero, that column's weights are zero (instead of NaN).

How :func:`read_memory` works
-----------------------------
Query positions are processed in chunks of ``m`` columns so that the affinity block
(``B x m x N``, stored query-major so that the reduction over memory runs along the contiguous
axis) has at most ``max_elements`` elements; ``m`` is ``max_elements // (B*N)`` (at least 1).
The default budget :data:`DEFAULT_MAX_ELEMENTS` is ``2**24`` elements, i.e. 64 MiB in float32
for the block itself: at 480p (1,620 query positions) with 10-20 memory frames that makes 2-4
chunks, each block written by the product and read by the top-k right after. Measured on 2 cores
(AVX512, L3 32 MiB), top-k 50, T = 20, blocks in the scratch buffers below: 2**24 took 131-138 ms,
2**23 139-163 ms, 2**22 147-191 ms, 2**25 112-144 ms (three interleaved runs, medians of 9).

On the CPU without autograd or autocast, the blocks and the top-k's group maxima are written
into per-thread scratch buffers kept from call to call (``out=``), so a read allocates almost
nothing; :func:`release_scratch` frees them. Fresh memory is mapped page by page on first touch:
in ``docs/BENCHMARKS.md`` the affinity product into a fresh output takes 7-23 % longer than into
a reused one.

Streamed top-k read (the inference path on the CPU)
---------------------------------------------------
With top-k on the CPU without autograd, without kernelized memory, with at least ``128 k`` memory
positions and room for 64 of them per slab in the budget, in float32 (under CPU autocast the
keys are compared in float32 too), the read goes the other way round (``_read_streamed``): the
affinity is made a *slab of memory positions* at a time, for all query columns (at most
:data:`STREAM_SLAB_ELEMENTS` = 2**21 elements, 8 MiB, so the slab is still in the cache when it
is read back), and the native kernel of :mod:`model.native` merges each slab into every column's
running top-k (vector compares of blocks of 64 against the column's current (k+1)-th value; only
the few entries that beat it are looked at one by one). The full ``M x N`` affinity is never held, and each slab is written
once and read once from the cache instead of from memory. A slab's product gives every affinity
bit for bit what the whole product gives, so the selection is the one ``torch.topk`` makes on
whole rows; a column whose order is not unique (tied values at or above its k-th, a NaN) is
recomputed as a whole row and given to ``torch.topk``. The weights are those of the chunked
path; the readout is the native one (:func:`model.native.readout`: the same sums as the
``embedding_bag`` below, bit for bit where :func:`model.native.readout_matches_library` says so,
else that ``embedding_bag`` itself), written straight into the ``B x CV x M`` result. So the two
paths return the same tensor (``tests/test_native.py``). At 480p on 2 cores
this read takes 0.92x (``lite``, CK 64) and 1.05x (``mivos``, CK 128) the time of its affinity
product alone with 10 memory frames (``docs/BENCHMARKS.md``; 1.01x and 1.37x with the kernel's
first form, 2.01x and 1.55x for the chunked read), and, ``mivos`` shapes with the values in the
bank's layout, 1.07x with 5 frames and 1.14x with 20 (``docs/BENCH_MEMORY_READ.md``). Without a
compiler, or with ``MIVOS_NATIVE=0``, the chunked path below is used.

The top-k over the N memory positions of the chunked path (the library's selection reads every
entry into a heap of (value, index) pairs) runs on long rows as :func:`topk_grouped`: maxima of
groups of 8 entries, of groups of 8 groups, and the library top-k on the 400 candidates this
leaves per column. The values, indices and order are those of ``torch.topk``; a row whose result
the grouping cannot prove (equal values, NaN) is redone with ``torch.topk``. At T = 20 it is 1.9x
faster than ``torch.topk`` on the same block.
Transient memory is a small multiple of the block: the full-softmax path
holds the block and its softmax, the kernelized path the block, the Gaussian and their product.
Every query column is independent of the others, so the chunked result equals the unchunked one
up to floating-point rounding of the matrix products.

With top-k the readout never forms the dense ``N x M`` weight matrix: for every query column
the k selected value vectors (rows of the values laid out ``N x CV``) are summed with their k
weights by one fused gather-and-weighted-sum kernel (``torch.nn.functional.embedding_bag`` in
``sum`` mode with per-sample weights, which is differentiable w.r.t. both the values and the
weights). The gathered ``k x CV`` vectors are never materialised, so the readout needs only its
``(B*m) x CV`` output. It costs ``2*k*CV`` flops per query column instead of the ``2*N*CV`` of the
dense product. The values are needed as rows (``N x CV`` per batch item), which costs one
transposing copy per call (at 480p with T = 20 this copy, not the arithmetic, dominates the
readout). A caller that keeps its values as ``B x N x CV`` rows and passes
``values.transpose(1, 2)`` avoids the copy, also when the batch items' rows lie apart in a larger
buffer (a memory bank with room for more frames: each batch item's rows are then found at its own
row offset) and when one batch item is broadcast.

Kernelized memory needs, for every memory position, the arg-max over *all* query positions,
which a single chunk cannot see. It is therefore computed in a first pass over the same query
chunks (running maximum, first occurrence wins on ties), and the chunked read runs as a second
pass. That costs one extra affinity computation.

Autograd: all paths are differentiable w.r.t. keys and values (the top-k selection and the
kernel centres are piecewise constant, as in any top-k). Under autograd the chunked path is used
unchanged. Values and gradients are the same as unchunked, but each chunk keeps its own saved
tensors for the backward pass, so the saved activations add up to roughly one full affinity
(small at training sizes). Wrap the call in ``torch.utils.checkpoint`` if that ever matters.

:func:`affinity`, :func:`softmax_topk` and :func:`softmax_topk_km` are dense reference
versions (``B x N x M``) kept for tests and for small one-off uses.
"""

from __future__ import annotations

import math
import threading

import torch
import torch.nn.functional as F

from model import native

__all__ = [
    "DEFAULT_MAX_ELEMENTS",
    "SIMILARITIES",
    "affinity",
    "softmax_topk",
    "softmax_topk_km",
    "query_chunk_size",
    "read_memory",
    "release_scratch",
    "topk_grouped",
    "topk_last",
]

#: Default bound on the number of elements of one affinity block (2**24 = 64 MiB in float32).
DEFAULT_MAX_ELEMENTS = 2**24

#: Key similarities of :func:`read_memory`: scaled dot product (MiVOS) or negative squared L2
#: distance (STCN).
SIMILARITIES = ("dot", "l2")


# --------------------------------------------------------------------------------------------
# dense reference pieces
# --------------------------------------------------------------------------------------------


def scale_query(query_key: torch.Tensor) -> torch.Tensor:
    """Query keys ``B x CK x ...`` divided by ``sqrt(CK)``.

    A division, not a multiplication by ``1/sqrt(CK)``: the two round differently, and with
    large logits one ulp moves affinities enough to change a top-k set. Every affinity of the
    code base (inference, training, fusion attention) goes through this function.
    """
    return query_key / math.sqrt(query_key.shape[1])


def affinity(
    mem_key: torch.Tensor, query_key: torch.Tensor, similarity: str = "dot"
) -> torch.Tensor:
    """Dense affinity ``B x N x M`` (memory x query).

    ``"dot"``: scaled dot product ``k_M^T k_Q / sqrt(CK)``; the query keys are divided by
    ``sqrt(CK)`` before the product, as the original code does (and as :func:`read_memory`
    does, so that both compute the same rounded affinities).
    ``"l2"``: ``(2 k_M^T k_Q - |k_M|^2 - |k_Q|^2) / sqrt(CK)`` (see the module docstring).
    """
    _check_similarity(similarity)
    if similarity == "dot":
        return torch.einsum("bcn,bcm->bnm", mem_key, scale_query(query_key))
    ab = torch.einsum("bcn,bcm->bnm", mem_key, query_key)
    mem_sq = mem_key.pow(2).sum(dim=1).unsqueeze(2)  # B x N x 1
    query_sq = query_key.pow(2).sum(dim=1).unsqueeze(1)  # B x 1 x M
    return (2 * ab - mem_sq - query_sq) / math.sqrt(mem_key.shape[1])


def softmax_topk(aff: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """Dense weights ``B x N x M``: softmax over dim 1 (memory), restricted to the top ``top_k``.

    Entries outside the top-k set of their column are zero. ``None`` or ``top_k >= N`` is the
    plain softmax.
    """
    top_k = _resolve_top_k(top_k, aff.shape[1])
    if top_k is None:
        return torch.softmax(aff, dim=1)
    values, indices = torch.topk(aff, k=top_k, dim=1)
    # subtract each column's own maximum (first entry of the sorted list), exp, normalise
    weights = torch.exp(values - values[:, :1])
    weights = weights / weights.sum(dim=1, keepdim=True)
    return torch.zeros_like(aff).scatter(1, indices, weights)


def softmax_topk_km(
    aff: torch.Tensor, top_k: int | None, sigma: float, query_hw: tuple[int, int]
) -> torch.Tensor:
    """Dense kernelized-memory weights ``B x N x M`` (see the module docstring)."""
    n_mem, m_query = aff.shape[1], aff.shape[2]
    h, w = _check_query_hw(query_hw, m_query)
    _check_sigma(sigma)
    top_k = _resolve_top_k(top_k, n_mem)
    with torch.no_grad():
        centres = aff.argmax(dim=2)  # B x N, query position with the highest affinity
    gauss = _gaussian(centres, torch.arange(m_query, device=aff.device), w, sigma, aff.dtype)
    gauss = gauss.transpose(1, 2)  # B x N x M
    prod = torch.exp(aff - aff.amax(dim=1, keepdim=True)) * gauss
    if top_k is None:
        return prod / _safe_sum(prod, dim=1)
    values, indices = torch.topk(prod, k=top_k, dim=1)
    return torch.zeros_like(aff).scatter(1, indices, values / _safe_sum(values, dim=1))


# --------------------------------------------------------------------------------------------
# chunked read
# --------------------------------------------------------------------------------------------


def query_chunk_size(batch: int, n_mem: int, max_elements: int | None = None) -> int:
    """Number of query columns per chunk so that ``batch * n_mem * chunk <= max_elements``.

    Always at least 1 (a single column is processed even if it alone exceeds the budget).
    """
    budget = DEFAULT_MAX_ELEMENTS if max_elements is None else int(max_elements)
    if budget < 1:
        raise ValueError(f"max_elements must be positive, got {max_elements}")
    return max(1, budget // max(1, batch * n_mem))


def read_memory(
    mem_key: torch.Tensor,
    mem_value: torch.Tensor,
    query_key: torch.Tensor,
    top_k: int | None = None,
    max_elements: int | None = None,
    *,
    km_sigma: float | None = None,
    query_hw: tuple[int, int] | None = None,
    similarity: str = "dot",
) -> torch.Tensor:
    """Memory readout ``v_M W``: ``B x CV x M``.

    Args:
        mem_key: ``B x CK x N`` memory keys.
        mem_value: ``B x CV x N`` memory values.
        query_key: ``B x CK x M`` query keys. A batch dimension of 1 in any of the three inputs
            is broadcast to the common batch size.
        top_k: keep the k largest affinities per query column (softmax restricted to them);
            ``None`` (or ``k >= N``) is the full softmax over all N memory positions.
        max_elements: bound on the elements of one ``B x chunk x N`` affinity block;
            ``None`` means :data:`DEFAULT_MAX_ELEMENTS`.
        km_sigma: kernelized-memory Gaussian width in query-grid cells (``None``: off).
        query_hw: ``(h, w)`` of the query grid, ``h*w == M``; required with ``km_sigma``.
        similarity: ``"dot"`` (scaled dot product) or ``"l2"`` (negative squared distance,
            STCN); see the module docstring.
    """
    _check_similarity(similarity)
    mem_key, mem_value, query_key = _broadcast_batch(mem_key, mem_value, query_key)
    batch, ck, n_mem = mem_key.shape
    cv = mem_value.shape[1]
    m_query = query_key.shape[2]
    top_k = _resolve_top_k(top_k, n_mem)
    chunk = query_chunk_size(batch, n_mem, max_elements)

    grid_w = 0
    centres = None
    if km_sigma is not None:
        _check_sigma(km_sigma)
        grid_w = _check_query_hw(query_hw, m_query)[1]
        centres = _km_centres(mem_key, query_key, chunk, similarity)

    if m_query == 0:
        return mem_value.new_zeros(batch, cv, 0)

    values_rows = row_stride = None
    if top_k is not None:
        values_rows, row_stride = _value_rows(mem_value)

    no_grad = not (torch.is_grad_enabled() and (mem_key.requires_grad or query_key.requires_grad))
    autocast = torch.is_autocast_enabled("cpu")
    if (top_k is not None and centres is None and no_grad and mem_key.device.type == "cpu"
            and n_mem >= NATIVE_TOPK_MIN_RATIO * top_k
            and _stream_width(batch, m_query, max_elements) > 0
            and (mem_key.dtype == query_key.dtype == torch.float32
                 or (autocast and mem_key.dtype in _LOW_PRECISION
                     and query_key.dtype in _LOW_PRECISION))):
        lib = native.topk_library()
        if lib is not None:
            # under CPU autocast too the keys are compared in float32 (exact from bfloat16 /
            # float16): the selection then sees distinct affinities instead of the many equal
            # ones of a bfloat16 product, and the float32 read is as fast (docs/BENCHMARKS.md);
            # the readout stays in the values' dtype
            with torch.autocast("cpu", enabled=False):
                keys = mem_key.float()
                return _read_streamed(lib, keys, query_key.float(), values_rows, row_stride,
                                      top_k, _squared_norms(keys) if similarity == "l2" else None,
                                      max_elements)

    mem_sq = _squared_norms(mem_key) if similarity == "l2" else None

    # on the CPU without autograd or autocast, the products and the top-k's group maxima are
    # written into per-thread scratch buffers kept from call to call (_SCRATCH): fresh pages cost
    # more than the top-k itself on the machines of docs/BENCHMARKS.md
    scratch = (mem_key.device.type == "cpu" and query_key.dtype == mem_key.dtype
               and not autocast and no_grad)
    pieces = []
    for start in range(0, m_query, chunk):
        stop = min(m_query, start + chunk)
        if mem_sq is None:
            q = scale_query(query_key[:, :, start:stop]).transpose(1, 2)
            if scratch:
                out = _SCRATCH.take("affinity", batch * (stop - start) * n_mem, mem_key.dtype)
                aff = torch.bmm(q, mem_key, out=out.view(batch, stop - start, n_mem))
            else:
                aff = torch.bmm(q, mem_key)  # B x m x N (query-major)
        else:
            aff = _l2_block(query_key[:, :, start:stop], mem_key, mem_sq)  # B x m x N
        if centres is not None:
            pos = torch.arange(start, stop, device=aff.device)
            gauss = _gaussian(centres, pos, grid_w, km_sigma, aff.dtype)
            prod = torch.exp(aff - aff.amax(dim=2, keepdim=True)) * gauss
            del aff, gauss
            if top_k is None:
                weights = prod / _safe_sum(prod, dim=2)
            else:
                vals, idx = topk_last(prod, top_k)
                weights = vals / _safe_sum(vals, dim=2)
            del prod
        elif top_k is None:
            weights = torch.softmax(aff, dim=2)
            del aff
        else:
            vals, idx = topk_last(aff, top_k, scratch=scratch)  # sorted, descending
            del aff
            # softmax restricted to the top-k set, with the original's arithmetic: subtract each
            # column's own maximum (vals[..., 0]), exponentiate, divide by the sum (torch.softmax
            # rounds differently)
            weights = torch.exp(vals - vals[..., :1])
            weights = weights / weights.sum(dim=2, keepdim=True)

        if mem_sq is not None:  # l2 weights are float32 or wider; read in the values' dtype
            weights = weights.to(mem_value.dtype)
        if top_k is None:
            pieces.append(torch.bmm(mem_value, weights.transpose(1, 2)))  # B x CV x m
        else:
            out = _gather_readout(values_rows, idx, weights, row_stride)
            pieces.append(out.view(batch, stop - start, cv).transpose(1, 2))
    return pieces[0].contiguous() if len(pieces) == 1 else torch.cat(pieces, dim=2)


#: dtypes whose keys the streamed read takes under CPU autocast (compared in float32)
_LOW_PRECISION = (torch.float32, torch.bfloat16, torch.float16)

#: Bound on the elements of one affinity slab of the streamed read (:func:`_read_streamed`):
#: 2**21 = 8 MiB in float32, which stays in the last-level cache between the product that
#: writes it and the selection that reads it.
STREAM_SLAB_ELEMENTS = 2**21


def _stream_width(batch: int, m_query: int, max_elements: int | None) -> int:
    """Memory positions per slab of the streamed read: a multiple of 64 (the kernel's block)
    with the slab within :data:`STREAM_SLAB_ELEMENTS` (or 64 positions, if more) and within
    ``max_elements``; 0 when not even 64 positions fit the budget (the chunked read is used)."""
    rows = max(1, batch * m_query)
    budget = DEFAULT_MAX_ELEMENTS if max_elements is None else int(max_elements)
    width = min(budget, max(STREAM_SLAB_ELEMENTS, 64 * rows)) // rows
    return width - width % 64 if width >= 64 else 0


def _l2_from_products_(ab: torch.Tensor, mem_sq: torch.Tensor, q_sq: torch.Tensor,
                       ck: int) -> torch.Tensor:
    """In place: the products ``k_M.k_Q`` (``... x m x n``) become the L2 affinity
    ``(2 k_M.k_Q - |k_M|^2 - |k_Q|^2) / sqrt(CK)`` in the order :func:`_l2_block` forms it
    (``mem_sq`` broadcast over the query rows, ``q_sq`` over the memory columns)."""
    return ab.mul_(2).sub_(mem_sq).sub_(q_sq).div_(math.sqrt(ck))


def _read_streamed(lib, mem_key: torch.Tensor, query_key: torch.Tensor,
                   values_rows: torch.Tensor, row_stride: int, top_k: int,
                   mem_sq: torch.Tensor | None, max_elements: int | None) -> torch.Tensor:
    """The top-k read with the affinity made a slab of memory positions at a time.

    Every query column's top-k is kept by the native kernel (:class:`model.native.TopkStream`)
    while the slabs (all query columns x a few hundred to a few thousand memory positions, at
    most :data:`STREAM_SLAB_ELEMENTS` elements, in a scratch buffer) are written by the product
    and read back while still in the cache. The product of a slab gives each affinity bit for bit
    what the whole product gives, so the selection is the one ``torch.topk`` makes on the whole
    rows; a column the kernel leaves undecided (a tie, a NaN) gets its whole row recomputed and
    ``torch.topk``. The weights and the readout are those of the chunked path.
    """
    batch, ck, n_mem = mem_key.shape
    cv, m_query = values_rows.shape[1], query_key.shape[2]
    width = _stream_width(batch, m_query, max_elements)
    q = scale_query(query_key).transpose(1, 2) if mem_sq is None else query_key
    q_sq = None if mem_sq is None else query_key.pow(2).sum(dim=1).unsqueeze(2)  # B x M x 1
    stream = native.TopkStream(batch * m_query, top_k, lib)
    buf = _SCRATCH.take("affinity", batch * m_query * min(width, n_mem), mem_key.dtype)
    for start in range(0, n_mem, width):
        stop = min(n_mem, start + width)
        out = buf[:batch * m_query * (stop - start)].view(batch, m_query, stop - start)
        if mem_sq is None:
            torch.bmm(q, mem_key[:, :, start:stop], out=out)
        else:
            torch.bmm(q.transpose(1, 2), mem_key[:, :, start:stop], out=out)
            _l2_from_products_(out, mem_sq[:, :, start:stop], q_sq, ck)
        stream.update(out.view(batch * m_query, stop - start), start)
    vals, idx, ok = stream.finish()
    if not bool(ok.all()):
        redo = (~ok).nonzero().squeeze(1)
        owner = redo.div(m_query, rounding_mode="floor")
        for b in owner.unique().tolist():
            rows = redo[owner == b]
            cols = rows - b * m_query
            # the product of a few rows takes another kernel of the library (other rounding)
            # than the slabs' product of all M rows; from 4 rows on they agree, so the rows
            # are padded to 8, or all M are taken (in their order) when M is smaller
            if m_query < 8:
                pick, first = torch.arange(m_query), cols
            else:
                pick = torch.cat([cols, cols[:1].expand(max(0, 8 - cols.numel()))])
                first = torch.arange(cols.numel())
            if mem_sq is None:
                aff = torch.mm(q[b].index_select(0, pick), mem_key[b])
            else:  # the slabs' arithmetic, on whole rows
                aff = torch.mm(query_key[b].t().index_select(0, pick), mem_key[b])
                _l2_from_products_(aff, mem_sq[b], q_sq[b].index_select(0, pick), ck)
            aff = aff.index_select(0, first)
            redo_vals, redo_idx = torch.topk(aff, top_k, dim=1)
            vals[rows], idx[rows] = redo_vals, redo_idx
    vals, idx = vals.view(batch, m_query, top_k), idx.view(batch, m_query, top_k)
    weights = torch.exp(vals - vals[..., :1])
    weights = weights / weights.sum(dim=2, keepdim=True)
    if values_rows.dtype == torch.float32 and native.readout_matches_library(lib):
        # the same sums as _gather_readout, written straight into the B x CV x M layout
        return native.readout(values_rows, row_stride, idx, weights, n_mem, lib)
    out = _gather_readout(values_rows, idx, weights, row_stride)
    return out.view(batch, m_query, cv).transpose(1, 2).contiguous()


# --------------------------------------------------------------------------------------------
# top-k over the memory axis
# --------------------------------------------------------------------------------------------

#: :func:`topk_last` narrows the search by group maxima when a row has at least this many
#: entries per kept entry (at top-k 50: 12,800 memory positions, about 8 frames at 480p);
#: below it the library top-k is as fast.
GROUPED_TOPK_MIN_RATIO = 256

#: :func:`topk_last` gives float32 rows of at least this many entries per kept entry to the native
#: kernel (at top-k 50: 6,400 memory positions, 4 frames at 480p; shorter rows have too few
#: blocks for a threshold, and ``torch.topk`` is as fast).
NATIVE_TOPK_MIN_RATIO = 128

#: group sizes of the two levels of :func:`topk_grouped` (measured on 2 cores, AVX512, at 480p
#: with 20 memory frames: 8 and 8 beat 16/4, 4/16 and 8/4)
GROUPED_TOPK_SIZES = (8, 8)


def topk_last(x: torch.Tensor, k: int, scratch: bool = False
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk(x, k, dim=-1)`` (sorted, descending): the same values and indices.

    Long float32 rows on the CPU without autograd go to the native kernel of
    :mod:`model.native` (one read of the row for block maxima, then only the blocks that can
    hold the top k); where it is off or unavailable, float32 / float64 rows go through
    :func:`topk_grouped`. Rows either leaves undecided (ties, NaN) are redone with
    ``torch.topk``. ``scratch``: :func:`topk_grouped`'s group maxima go to a per-thread buffer
    kept between calls (:func:`release_scratch`).
    """
    n = x.shape[-1]
    if (x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64)
            or (x.requires_grad and torch.is_grad_enabled())):
        return torch.topk(x, k, dim=-1)
    if x.dtype == torch.float32 and n >= NATIVE_TOPK_MIN_RATIO * k:
        lib = native.topk_library()
        if lib is not None:
            rows = x.reshape(-1, n)
            vals, idx, ok = native.topk_rows(rows, k, lib)
            vals, idx = _redo_rows(rows, k, vals, idx, ok)
            return vals.view(*x.shape[:-1], k), idx.view(*x.shape[:-1], k)
    # bfloat16 / float16 rows hold many equal values, which the grouping hands back to the
    # library top-k: no gain there
    if n < GROUPED_TOPK_MIN_RATIO * k:
        return torch.topk(x, k, dim=-1)
    rows = x.reshape(-1, n)
    vals, idx = topk_grouped(rows, k, scratch=scratch)
    return vals.view(*x.shape[:-1], k), idx.view(*x.shape[:-1], k)


def _redo_rows(x: torch.Tensor, k: int, vals: torch.Tensor, idx: torch.Tensor,
               exact: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``vals`` / ``idx`` with the rows where ``exact`` is False replaced by ``torch.topk``'s."""
    if bool(exact.all()):
        return vals, idx
    redo = (~exact).nonzero().squeeze(1)
    redo_vals, redo_idx = torch.topk(x.index_select(0, redo), k, dim=1)
    return vals.index_copy(0, redo, redo_vals), idx.index_copy(0, redo, redo_idx)


def topk_grouped(
    x: torch.Tensor, k: int, sizes: tuple[int, int] = GROUPED_TOPK_SIZES, scratch: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of every row of ``x`` (``R x n``), sorted: bit for bit ``torch.topk(x, k, dim=1)``.

    The positions are split into groups of ``s1`` (group j holds ``j, j + G1, j + 2 G1, ...``,
    so the maxima are elementwise maxima of ``s1`` contiguous slices), and the groups into
    super-groups of ``s2`` the same way. If an entry is among a row's k largest, its group's
    maximum is among the k largest group maxima (otherwise k other groups would hold k larger
    entries), and the same holds one level up. So the k largest super-groups give ``k*s2``
    candidate groups, their k largest give ``k*s1`` candidate entries, and the library top-k
    runs on those short rows only. The positions left over by the two divisions are candidates
    in every row.

    The selection is exact when the values are distinct; where they are not, the library's order
    among equal values (and its choice at the boundary) is what the readout sums follow. So a
    row is accepted only if its k values are strictly decreasing and its k-th value is strictly
    larger than everything it did not look at (bounded by the (k+1)-th largest maximum at each
    level and the (k+1)-th candidate); any other row, also one holding a NaN, is redone with
    ``torch.topk`` on the whole row.

    ``scratch`` (CPU): the ``R x G1`` group maxima are written into a per-thread buffer kept
    between calls instead of a fresh tensor.
    """
    s1, s2 = sizes
    if s1 < 2 or s2 < 2:
        raise ValueError(f"group sizes must be at least 2, got {sizes}")
    r, n = x.shape
    g1 = n // s1
    g2 = g1 // s2
    if k < 1 or g2 <= k:  # too few super-groups to leave any out
        return torch.topk(x, k, dim=1)
    x = x.contiguous()
    grouped = x[:, :g1 * s1].view(r, s1, g1)
    if scratch and x.device.type == "cpu":
        out = _SCRATCH.take("group_max", r * g1, x.dtype).view(r, g1)
        max1 = torch.amax(grouped, dim=1, out=out)  # R x G1
    else:
        max1 = grouped.amax(dim=1)
    max2 = max1[:, :g2 * s2].view(r, s2, g2).amax(dim=1)  # R x G2
    top2, sup = torch.topk(max2, k + 1, dim=1)
    groups = _members(sup[:, :k], s2, g2, g2 * s2, g1)
    top1, pick = torch.topk(torch.gather(max1, 1, groups), k + 1, dim=1)
    entries = _members(torch.gather(groups, 1, pick[:, :k]), s1, g1, g1 * s1, n)
    top, pick = torch.topk(torch.gather(x, 1, entries), k + 1, dim=1)
    vals = top[:, :k]
    idx = torch.gather(entries, 1, pick[:, :k])
    unseen = torch.maximum(torch.maximum(top2[:, k], top1[:, k]), top[:, k])
    exact = vals[:, k - 1] > unseen
    if k > 1:
        exact &= (vals[:, :-1] > vals[:, 1:]).all(dim=1)
    return _redo_rows(x, k, vals, idx, exact)


def _members(ids: torch.Tensor, size: int, stride: int, tail_start: int,
             tail_stop: int) -> torch.Tensor:
    """Positions of the groups ``ids`` (``R x c``; group j holds ``j + stride*i``, ``i < size``):
    ``R x (c*size)``, followed in every row by the left-over positions
    ``tail_start .. tail_stop - 1``."""
    r = ids.shape[0]
    pos = (ids.unsqueeze(-1) + torch.arange(size, device=ids.device) * stride).view(r, -1)
    if tail_stop > tail_start:
        tail = torch.arange(tail_start, tail_stop, device=ids.device).expand(r, -1)
        pos = torch.cat([pos, tail], dim=1)
    return pos


class _Scratch(threading.local):
    """Per-thread CPU buffers that :func:`read_memory` writes its affinity blocks and group maxima
    into, kept from call to call (grown when a larger one is needed, never shrunk). At 480p with
    20 memory frames and the default budget the chunked read's hold about 75 MB; the streamed
    read's one slab 8 MiB."""

    def __init__(self) -> None:
        self.buffers: dict[tuple[str, torch.dtype, bool], torch.Tensor] = {}

    def take(self, name: str, numel: int, dtype: torch.dtype) -> torch.Tensor:
        # a tensor made under inference mode cannot be written outside it: one set per mode
        key = (name, dtype, torch.is_inference_mode_enabled())
        buf = self.buffers.get(key)
        if buf is None or buf.numel() < numel:
            self.buffers.pop(key, None)  # let the old one go before the larger one is taken
            buf = torch.empty(numel, dtype=dtype)
            self.buffers[key] = buf
        return buf[:numel]


_SCRATCH = _Scratch()


def release_scratch() -> None:
    """Free this thread's scratch buffers of :func:`read_memory` (they are made again when
    needed)."""
    _SCRATCH.buffers.clear()


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _value_rows(mem_value: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The values ``B x CV x N`` as one 2-D block of rows (one row of CV per memory position)
    and the row offset between consecutive batch items.

    Without a copy where each batch item's values are already ``N x CV`` rows, whatever the
    distance between batch items (a multiple of CV: a buffer with room for more positions) or
    0 (one item broadcast); rows between batch items are never indexed. Otherwise a contiguous
    ``(B*N) x CV`` copy with offset N.
    """
    batch, cv, n_mem = mem_value.shape
    rows = mem_value.transpose(1, 2)  # B x N x CV
    if cv > 0 and rows.stride(2) == 1 and (rows.stride(1) == cv or n_mem == 1):
        step, rem = divmod(rows.stride(0), cv)
        if batch == 1:
            return rows.as_strided((n_mem, cv), (cv, 1)), n_mem
        if rem == 0 and (step == 0 or step >= n_mem):
            return rows.as_strided(((batch - 1) * step + n_mem, cv), (cv, 1)), step
    return rows.reshape(batch * n_mem, cv).contiguous(), n_mem


def _gather_readout(
    values_rows: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor, row_stride: int
) -> torch.Tensor:
    """Weighted sum of the selected value rows: ``(B*m) x CV``.

    values_rows: rows of CV (:func:`_value_rows`), batch item b's position n at row
    ``b*row_stride + n``; idx, weights: ``B x m x top_k`` (indices into N per batch item).
    """
    batch, m, top_k = idx.shape
    offsets = torch.arange(batch, device=idx.device).mul_(row_stride).view(batch, 1, 1)
    flat_idx = (idx + offsets).reshape(batch * m, top_k)
    # under autocast the weights can come out in a lower precision than the stored values
    per_sample = weights.reshape(batch * m, top_k).to(values_rows.dtype)
    return F.embedding_bag(flat_idx, values_rows, per_sample_weights=per_sample, mode="sum")


def _km_centres(
    mem_key: torch.Tensor, query_key: torch.Tensor, chunk: int, similarity: str = "dot"
) -> torch.Tensor:
    """First pass of kernelized memory: ``argmax_m F[b, n, m]`` over all M, as ``B x N`` long."""
    best_val = best_idx = None
    with torch.no_grad():
        mem_sq = _squared_norms(mem_key.detach()) if similarity == "l2" else None
        for start in range(0, query_key.shape[2], chunk):
            if mem_sq is None:
                q = scale_query(query_key[:, :, start : start + chunk].detach())
                aff = torch.bmm(q.transpose(1, 2), mem_key.detach())  # B x m x N
            else:
                aff = _l2_block(query_key[:, :, start : start + chunk].detach(),
                                mem_key.detach(), mem_sq)
            val, arg = aff.max(dim=1)  # first occurrence within the chunk
            arg = arg + start
            if best_val is None:
                best_val, best_idx = val, arg
            else:
                better = val > best_val  # strict: earlier chunks win ties
                best_val = torch.where(better, val, best_val)
                best_idx = torch.where(better, arg, best_idx)
    return best_idx


def _gaussian(
    centres: torch.Tensor, positions: torch.Tensor, grid_w: int, sigma: float, dtype: torch.dtype
) -> torch.Tensor:
    """``B x len(positions) x N`` Gaussian weights of query positions around memory centres.

    centres: ``B x N`` flat query indices; positions: flat query indices of the chunk.
    """
    cy = torch.div(centres, grid_w, rounding_mode="floor").to(dtype).unsqueeze(1)
    cx = (centres % grid_w).to(dtype).unsqueeze(1)
    py = torch.div(positions, grid_w, rounding_mode="floor").to(dtype).view(1, -1, 1)
    px = (positions % grid_w).to(dtype).view(1, -1, 1)
    d2 = (py - cy).square_() + (px - cx).square_()
    return torch.exp(d2.mul_(-0.5 / (sigma * sigma)))


def _wide(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 when it is half / bfloat16 (wider dtypes unchanged)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _squared_norms(mem_key: torch.Tensor) -> torch.Tensor:
    """``|k_M|^2`` per memory position, ``B x 1 x N`` (float32 or wider, autocast off)."""
    with torch.autocast(mem_key.device.type, enabled=False):
        return _wide(mem_key).pow(2).sum(dim=1, keepdim=True)


def _l2_block(q: torch.Tensor, mem_key: torch.Tensor, mem_sq: torch.Tensor) -> torch.Tensor:
    """Negative squared-distance affinity of one query chunk, query-major ``B x m x N``.

    q: ``B x CK x m`` query keys (unscaled); mem_key: ``B x CK x N``; mem_sq: ``B x 1 x N`` from
    :func:`_squared_norms`. ``(2 k_M.k_Q - |k_M|^2 - |k_Q|^2) / sqrt(CK)`` in float32 or wider
    (autocast off: the terms cancel heavily).
    """
    with torch.autocast(q.device.type, enabled=False):
        q, mk = _wide(q), _wide(mem_key)
        ab = torch.bmm(q.transpose(1, 2), mk)  # B x m x N
        q_sq = q.pow(2).sum(dim=1).unsqueeze(2)  # B x m x 1
        return (2 * ab - mem_sq - q_sq) / math.sqrt(q.shape[1])


def _check_similarity(similarity: str) -> None:
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")


def _safe_sum(x: torch.Tensor, dim: int) -> torch.Tensor:
    return x.sum(dim=dim, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)


def _resolve_top_k(top_k: int | None, n_mem: int) -> int | None:
    """``None`` for the full softmax, else the number of entries to keep (``1 <= k < N``)."""
    if top_k is None:
        return None
    top_k = int(top_k)
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    return None if top_k >= n_mem else top_k


def _check_query_hw(query_hw: tuple[int, int] | None, m_query: int) -> tuple[int, int]:
    if query_hw is None:
        raise ValueError("kernelized memory (km_sigma) needs query_hw=(h, w)")
    h, w = (int(v) for v in query_hw)
    if h * w != m_query:
        raise ValueError(f"query_hw {h}x{w} does not match {m_query} query positions")
    return h, w


def _check_sigma(sigma: float) -> None:
    if not sigma > 0:
        raise ValueError(f"km_sigma must be positive, got {sigma}")


def _broadcast_batch(
    mem_key: torch.Tensor, mem_value: torch.Tensor, query_key: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    for name, t in (("mem_key", mem_key), ("mem_value", mem_value), ("query_key", query_key)):
        if t.dim() != 3:
            raise ValueError(f"{name} must be 3-D (B x C x positions), got {tuple(t.shape)}")
    if mem_key.shape[1] != query_key.shape[1]:
        raise ValueError(
            f"key channels differ: memory {mem_key.shape[1]} vs query {query_key.shape[1]}"
        )
    if mem_key.shape[2] != mem_value.shape[2]:
        raise ValueError(
            f"memory positions differ: keys {mem_key.shape[2]} vs values {mem_value.shape[2]}"
        )
    if mem_key.shape[2] == 0:
        raise ValueError("the memory is empty (N == 0)")
    sizes = {mem_key.shape[0], mem_value.shape[0], query_key.shape[0]}
    batch = max(sizes)
    if sizes - {1, batch}:
        raise ValueError(f"batch sizes {sorted(sizes)} cannot be broadcast")
    return tuple(t.expand(batch, -1, -1) for t in (mem_key, mem_value, query_key))
