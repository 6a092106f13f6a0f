// The two native steps of the top-k memory read: an exact top-k along the rows of a float32
// matrix whose columns arrive in slabs, and the weighted sum of the selected value rows.
//
// Top-k. The memory read computes its affinity a slab of memory positions at a time (small enough
// to stay in the cache) and hands each slab here. Every row keeps its k+1 largest values so far in
// a min-heap (the "state"). For a slab, each row:
//   * with a full heap, compares every block of 64 entries with the heap's smallest value (vector
//     compares into a bit mask, which also note a NaN) and looks one by one only at the entries
//     above it, each replacing the smallest;
//   * with room in the heap, takes the maxima of blocks of B entries, then as threshold the
//     (k+1)-th largest of the block maxima and the heap's values together (each stands for a
//     distinct entry at or above it, so k+1 entries reach it), and cuts the entries at or above
//     it, with the heap's, to the k+1 largest.
// At the end the state is sorted. The top k is trusted only where the order is unique: the k values
// strictly decreasing and the k-th strictly above the (k+1)-th (the largest value outside the
// top k). A row with a tie there, or with a NaN, is reported (ok = 0) and left to the caller's
// library top-k, whose order among equal values is the one to follow.
//
// Readout. For every query column, the sum of its k weighted value rows, written straight into
// the CV x M layout the decoder takes (see mivos_readout_f32).
//
// Plain C ABI, loaded with ctypes by model/native.py.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct Candidate {
  float value;
  int64_t index;
};

// "a ranks below b": std's heap functions with it keep the smallest value at the front (a type,
// not a function, so that the std algorithms inline it)
struct GreaterValue {
  bool operator()(const Candidate& a, const Candidate& b) const { return a.value > b.value; }
};
constexpr GreaterValue greater_value{};

// A row's running state: a min-heap of at most `keep` (= k + 1) candidates.
struct RowState {
  Candidate* heap;
  int64_t* count;
  uint8_t* bad;
  int64_t keep;

  bool full() const { return *count == keep; }
  float smallest() const { return heap[0].value; }

  // on a full heap: the smallest candidate gives way to a larger one (sift down)
  void replace_smallest(Candidate c) {
    const int64_t n = keep;
    int64_t i = 0;
    for (;;) {
      int64_t child = 2 * i + 1;
      if (child >= n) break;
      if (child + 1 < n && heap[child + 1].value < heap[child].value) ++child;
      if (!(heap[child].value < c.value)) break;
      heap[i] = heap[child];
      i = child;
    }
    heap[i] = c;
  }
};

// ---- vectors -----------------------------------------------------------------------------

// The few vector operations both steps use, for the widest instruction set the build has
// (-march=native): AVX-512 or AVX2 with FMA; without them the scalar loops below are used.
#if defined(__AVX512F__)
#define MIVOS_VEC 1
constexpr int kLanes = 16;
using Vec = __m512;
inline Vec vzero() { return _mm512_setzero_ps(); }
inline Vec vset(float w) { return _mm512_set1_ps(w); }
inline Vec vload(const float* p) { return _mm512_loadu_ps(p); }
inline void vstore(float* p, Vec v) { _mm512_storeu_ps(p, v); }
inline Vec vfma(Vec w, Vec x, Vec acc) { return _mm512_fmadd_ps(w, x, acc); }
// bit j of the result: lane j > t (Strict) or >= t; a NaN lane gives 0
template <bool Strict>
inline uint32_t vabove(Vec v, Vec t) {
  return _mm512_cmp_ps_mask(v, t, Strict ? _CMP_GT_OQ : _CMP_GE_OQ);
}
inline uint32_t vnan(Vec v) { return _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q); }
constexpr int kChunkVectors = 16;  // readout: 256 channels in 16 of the 32 registers
#elif defined(__AVX2__) && defined(__FMA__)
#define MIVOS_VEC 1
constexpr int kLanes = 8;
using Vec = __m256;
inline Vec vzero() { return _mm256_setzero_ps(); }
inline Vec vset(float w) { return _mm256_set1_ps(w); }
inline Vec vload(const float* p) { return _mm256_loadu_ps(p); }
inline void vstore(float* p, Vec v) { _mm256_storeu_ps(p, v); }
inline Vec vfma(Vec w, Vec x, Vec acc) { return _mm256_fmadd_ps(w, x, acc); }
template <bool Strict>
inline uint32_t vabove(Vec v, Vec t) {
  return static_cast<uint32_t>(
      _mm256_movemask_ps(_mm256_cmp_ps(v, t, Strict ? _CMP_GT_OQ : _CMP_GE_OQ)));
}
inline uint32_t vnan(Vec v) {
  return static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
}
constexpr int kChunkVectors = 8;  // readout: 64 channels in 8 of the 16 registers
#endif

// ---- top-k ---------------------------------------------------------------------------------

template <int B>
inline float block_max(const float* p, int& nan) {
  float m = kNegInf;
  int bad = 0;
#pragma omp simd reduction(max : m) reduction(| : bad)
  for (int j = 0; j < B; ++j) {
    m = p[j] > m ? p[j] : m;
    bad |= p[j] != p[j];
  }
  nan |= bad;
  return m;
}

inline float tail_max(const float* p, int64_t len, int& nan) {
  float m = kNegInf;
  for (int64_t j = 0; j < len; ++j) {
    m = p[j] > m ? p[j] : m;
    nan |= p[j] != p[j];
  }
  return m;
}

// Bit j set where p[j] > t (Strict) or p[j] >= t, for the B <= 64 entries of a block; a NaN
// entry never sets its bit.
template <int B, bool Strict>
inline uint64_t mask_of(const float* p, float t) {
  uint64_t mask = 0;
#if defined(MIVOS_VEC)
  if constexpr (B % kLanes == 0) {
    const Vec vt = vset(t);
    for (int j = 0; j < B; j += kLanes) {
      mask |= static_cast<uint64_t>(vabove<Strict>(vload(p + j), vt)) << j;
    }
    return mask;
  }
#endif
  for (int j = 0; j < B; ++j) {
    mask |= static_cast<uint64_t>(Strict ? p[j] > t : p[j] >= t) << j;
  }
  return mask;
}

// One block of 64 entries against t: returns the bits of the entries above t (as mask_of) and
// sets nan when the block holds a NaN. Each entry is loaded once for both.
inline uint64_t scan64(const float* p, float t, int& nan) {
#if defined(MIVOS_VEC)
  const Vec vt = vset(t);
  uint64_t mask = 0;
  uint32_t unordered = 0;
  for (int j = 0; j < 64; j += kLanes) {
    const Vec v = vload(p + j);
    mask |= static_cast<uint64_t>(vabove<true>(v, vt)) << j;
    unordered |= vnan(v);
  }
  nan |= unordered != 0;
  return mask;
#else
  block_max<64>(p, nan);  // for its NaN note
  return mask_of<64, true>(p, t);
#endif
}

// A slab on a full heap: one pass over blocks of 64; only the entries above the heap's smallest
// value (which only grows) are looked at one by one.
void update_full(const float* x, int64_t n, int64_t offset, RowState& s) {
  constexpr int B = 64;
  int nan = 0;
  const int64_t full = n / B;
  for (int64_t b = 0; b < full; ++b) {
    const float* p = x + b * B;
    uint64_t mask = scan64(p, s.smallest(), nan);
    if (nan) break;
    for (; mask; mask &= mask - 1) {
      const int j = __builtin_ctzll(mask);
      if (p[j] > s.smallest()) s.replace_smallest(Candidate{p[j], offset + b * B + j});
    }
  }
  if (!nan) {
    for (int64_t j = full * B; j < n; ++j) {
      nan |= x[j] != x[j];
      if (x[j] > s.smallest()) s.replace_smallest(Candidate{x[j], offset + j});
    }
  }
  if (nan) *s.bad = 1;
}

// A slab on a heap with room: block maxima first; the (k+1)-th largest of them and of the heap's
// values is a threshold that k+1 distinct entries reach, so nothing below it can be kept. The
// entries at or above it and the heap's are cut to the k+1 largest at once.
template <int B>
void update_filling(const float* x, int64_t n, int64_t offset, RowState& s,
                    std::vector<float>& maxima, std::vector<float>& pool,
                    std::vector<Candidate>& list) {
  const int64_t blocks = (n + B - 1) / B;
  const int64_t full = n / B;
  maxima.resize(blocks);
  int nan = 0;
  for (int64_t b = 0; b < full; ++b) maxima[b] = block_max<B>(x + b * B, nan);
  if (full < blocks) maxima[full] = tail_max(x + full * B, n - full * B, nan);
  if (nan) {
    *s.bad = 1;
    return;
  }
  const int64_t count = *s.count;
  float threshold = kNegInf;
  if (blocks + count >= s.keep) {
    pool.assign(maxima.begin(), maxima.end());
    for (int64_t i = 0; i < count; ++i) pool.push_back(s.heap[i].value);
    std::nth_element(pool.begin(), pool.begin() + (s.keep - 1), pool.end(),
                     [](float a, float b) { return a > b; });
    threshold = pool[s.keep - 1];
  }
  // room for the heap's candidates and every entry of the slab; written without push_back
  if (static_cast<int64_t>(list.size()) < count + n) list.resize(count + n);
  Candidate* out = list.data();
  std::copy(s.heap, s.heap + count, out);
  int64_t kept = count;
  for (int64_t b = 0; b < full; ++b) {
    if (!(maxima[b] >= threshold)) continue;
    const float* p = x + b * B;
    for (uint64_t mask = mask_of<B, false>(p, threshold); mask; mask &= mask - 1) {
      const int j = __builtin_ctzll(mask);
      out[kept++] = Candidate{p[j], offset + b * B + j};
    }
  }
  for (int64_t j = full * B; j < n; ++j) {
    if (x[j] >= threshold) out[kept++] = Candidate{x[j], offset + j};
  }
  if (kept > s.keep) {
    std::nth_element(out, out + (s.keep - 1), out + kept, greater_value);
    kept = s.keep;
  }
  std::copy(out, out + kept, s.heap);
  std::make_heap(s.heap, s.heap + kept, greater_value);
  *s.count = kept;
}

struct UpdateArgs {
  const float* x;
  int64_t n, stride, offset, keep;
  Candidate* heaps;
  int64_t* counts;
  uint8_t* bad;
};

void update_rows(const UpdateArgs& a, int64_t begin, int64_t end) {
  std::vector<float> maxima, pool;
  std::vector<Candidate> list;
  for (int64_t r = begin; r < end; ++r) {
    if (a.bad[r]) continue;
    RowState s{a.heaps + r * a.keep, a.counts + r, a.bad + r, a.keep};
    const float* x = a.x + r * a.stride;
    if (s.full()) {
      update_full(x, a.n, a.offset, s);
    } else if (a.n >= 64 * a.keep) {  // blocks small enough that k+1 of them exist
      update_filling<64>(x, a.n, a.offset, s, maxima, pool, list);
    } else if (a.n >= 32 * a.keep) {
      update_filling<32>(x, a.n, a.offset, s, maxima, pool, list);
    } else if (a.n >= 16 * a.keep) {
      update_filling<16>(x, a.n, a.offset, s, maxima, pool, list);
    } else {
      update_filling<8>(x, a.n, a.offset, s, maxima, pool, list);
    }
  }
}

// One contiguous range of rows per thread, on the process's OpenMP pool: the library is linked
// against libgomp, which resolves to the copy PyTorch has already loaded, so the threads that
// ran the product just before take the selection (separate threads would compete with them
// while they spin).
template <typename Fn>
void run_parallel(int64_t rows, int threads, Fn fn) {
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(threads, rows));
  const int64_t per = (rows + workers - 1) / workers;
#pragma omp parallel for num_threads(workers) schedule(static, 1)
  for (int64_t w = 0; w < workers; ++w) {
    const int64_t begin = std::min(rows, w * per);
    const int64_t end = std::min(rows, begin + per);
    if (begin < end) fn(begin, end);
  }
}

// ---- readout ------------------------------------------------------------------------------

// Sums of the selected value rows, a chunk of channels at a time with the partial sums held in
// vector registers: dst[c] = sum_i w[i] * row_i[c], built as acc = fma(w[i], row_i[c], acc) from
// acc = 0 in the order of the k selections. That is one fused multiply-add per element in the
// library's order (embedding_bag, sum mode with per-sample weights), so the sums are the same
// bit for bit; model/native.py checks this on the machine before it uses them.

// The rows of the next selections are prefetched this many selections ahead.
constexpr int64_t kAhead = 4;

#if defined(MIVOS_VEC)
template <int W>
inline void sum_chunk(const float* base, int64_t stride, const int64_t* idx, const float* w,
                      int64_t k, float* dst) {
  Vec acc[W];
#pragma GCC unroll 16
  for (int j = 0; j < W; ++j) acc[j] = vzero();
  for (int64_t i = 0; i < k; ++i) {
    if (i + kAhead < k) {
      const float* next = base + idx[i + kAhead] * stride;
      for (int j = 0; j < W * kLanes; j += 16) __builtin_prefetch(next + j);
    }
    const float* row = base + idx[i] * stride;
    const Vec wi = vset(w[i]);
#pragma GCC unroll 16
    for (int j = 0; j < W; ++j) acc[j] = vfma(wi, vload(row + j * kLanes), acc[j]);
  }
#pragma GCC unroll 16
  for (int j = 0; j < W; ++j) vstore(dst + j * kLanes, acc[j]);
}
#endif

// One query column: dst[c] for c < cv (base: its batch item's first value row).
inline void sum_column(const float* base, int64_t stride, const int64_t* idx, const float* w,
                       int64_t k, int64_t cv, float* dst) {
  int64_t c = 0;
#if defined(MIVOS_VEC)
  for (; c + kChunkVectors * kLanes <= cv; c += kChunkVectors * kLanes) {
    sum_chunk<kChunkVectors>(base + c, stride, idx, w, k, dst + c);
  }
  for (; c + kLanes <= cv; c += kLanes) sum_chunk<1>(base + c, stride, idx, w, k, dst + c);
#endif
  for (; c < cv; ++c) {
    float acc = 0.0f;
    for (int64_t i = 0; i < k; ++i) acc = std::fma(w[i], base[idx[i] * stride + c], acc);
    dst[c] = acc;
  }
}

struct ReadoutArgs {
  const float* values;
  int64_t value_stride, item_offset, n;
  const int64_t* idx;
  const float* weights;
  int64_t batch, m, k, cv;
  float* out;
};

// Query columns are taken TILE at a time: their sums are made as rows in a small buffer and then
// written into the CV x M output, a tile-wide run per channel. Returns false on an index outside
// [0, n).
bool readout_tiles(const ReadoutArgs& a, int64_t first_tile, int64_t last_tile,
                   std::vector<float>& acc) {
  constexpr int64_t TILE = 16;
  const int64_t tiles_per_item = (a.m + TILE - 1) / TILE;
  acc.resize(TILE * a.cv);
  for (int64_t t = first_tile; t < last_tile; ++t) {
    const int64_t b = t / tiles_per_item;
    const int64_t m0 = (t % tiles_per_item) * TILE;
    const int64_t cols = std::min(TILE, a.m - m0);
    const float* item_values = a.values + b * a.item_offset * a.value_stride;
    const int64_t first = (b * a.m + m0) * a.k;  // this tile's selections
    const int64_t end = first + cols * a.k;
    for (int64_t s = first; s < end; ++s) {
      if (a.idx[s] < 0 || a.idx[s] >= a.n) return false;
    }
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t sel = first + c * a.k;
      sum_column(item_values, a.value_stride, a.idx + sel, a.weights + sel, a.k, a.cv,
                 acc.data() + c * a.cv);
    }
    float* out = a.out + b * a.cv * a.m + m0;
    for (int64_t ch = 0; ch < a.cv; ++ch) {
      for (int64_t c = 0; c < cols; ++c) out[ch * a.m + c] = acc[c * a.cv + ch];
    }
  }
  return true;
}

}  // namespace

extern "C" {

// Version of this interface; model/native.py refuses a library that reports another.
int mivos_topk_abi_version() { return 4; }

// Bytes of state per kept candidate (the caller allocates rows * keep of them).
int64_t mivos_topk_state_bytes() { return static_cast<int64_t>(sizeof(Candidate)); }

// Merges the slab x (rows x n, row r at x + r * stride; columns offset .. offset + n - 1 of the
// whole rows) into the state: heaps (rows * keep candidates), counts (rows, 0 at the start) and
// bad (rows, 0 at the start; set on a NaN). keep = k + 1. Returns 0, or -1 on bad arguments.
int mivos_topk_update_f32(const float* x, int64_t rows, int64_t n, int64_t stride,
                          int64_t offset, int64_t keep, void* heaps, int64_t* counts,
                          uint8_t* bad, int threads) {
  if (rows < 0 || n < 1 || keep < 2 || offset < 0 || (rows > 1 && stride < n) || threads < 1) {
    return -1;
  }
  const UpdateArgs a{x, n, stride, offset, keep, static_cast<Candidate*>(heaps), counts, bad};
  run_parallel(rows, threads, [&a](int64_t begin, int64_t end) { update_rows(a, begin, end); });
  return 0;
}

// The top keep - 1 of every row from its state, sorted descending, into out_values / out_indices
// (rows x (keep - 1)); ok[r] = 1 where the order is unique (see the top of this file). The state
// is reordered. Returns 0, or -1 on bad arguments.
int mivos_topk_finish_f32(int64_t rows, int64_t keep, void* heaps, const int64_t* counts,
                          const uint8_t* bad, float* out_values, int64_t* out_indices,
                          uint8_t* ok, int threads) {
  if (rows < 0 || keep < 2 || threads < 1) return -1;
  const int64_t k = keep - 1;
  Candidate* all = static_cast<Candidate*>(heaps);
  run_parallel(rows, threads, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      ok[r] = 0;
      const int64_t count = counts[r];
      if (bad[r] || count < k) continue;
      Candidate* list = all + r * keep;
      std::sort(list, list + count, greater_value);
      bool unique = true;
      for (int64_t i = 1; i < k && unique; ++i) unique = list[i - 1].value > list[i].value;
      // with a full heap the (k+1)-th largest value of the whole row is its last entry
      if (unique && count > k) unique = list[k - 1].value > list[k].value;
      if (!unique) continue;
      for (int64_t i = 0; i < k; ++i) {
        out_values[r * k + i] = list[i].value;
        out_indices[r * k + i] = list[i].index;
      }
      ok[r] = 1;
    }
  });
  return 0;
}

// The readout of the top-k read: out (batch x cv x m, contiguous) gets, for query column q of
// batch item b, the sum over its k selections i of weights[s] * value row
// (b * item_offset + idx[s]), s = (b * m + q) * k + i, with idx[s] in [0, n); value row r starts
// at values + r * value_stride. idx and weights are (batch * m) x k, contiguous. item_offset is
// 0 when all items share their rows. Returns 0, -1 on bad arguments, -2 on an index outside
// [0, n) (out is then incomplete).
int mivos_readout_f32(const float* values, int64_t value_stride, int64_t item_offset, int64_t n,
                      const int64_t* idx, const float* weights, int64_t batch, int64_t m,
                      int64_t k, int64_t cv, float* out, int threads) {
  if (batch < 0 || m < 0 || k < 1 || cv < 1 || n < 1 || value_stride < cv || item_offset < 0 ||
      threads < 1) {
    return -1;
  }
  const ReadoutArgs a{values, value_stride, item_offset, n, idx, weights, batch, m, k, cv, out};
  const int64_t tiles = batch * ((m + 15) / 16);
  std::atomic<bool> out_of_range{false};
  run_parallel(tiles, threads, [&](int64_t begin, int64_t end) {
    std::vector<float> acc;
    if (!readout_tiles(a, begin, end, acc)) out_of_range = true;
  });
  return out_of_range ? -2 : 0;
}

}  // extern "C"
