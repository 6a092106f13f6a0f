// Exact top-k along the rows of a float32 matrix whose columns arrive in slabs.
//
// The memory read computes its affinity a slab of memory positions at a time (small enough to stay
// in the cache) and hands each slab here. Every row keeps its k+1 largest values so far in a
// min-heap (the "state"). For a slab, each row:
//   * reads its entries once for the maxima of blocks of B entries (vectorised), and notes a NaN;
//   * with a full heap, looks again only at the blocks whose maximum beats the heap's smallest
//     value, and there only at the entries above it, each replacing the smallest;
//   * with room in the heap, takes as threshold the (k+1)-th largest of the block maxima and the
//     heap's values together (each stands for a distinct entry at or above it, so k+1 entries
//     reach it) and cuts the entries at or above it, with the heap's, to the k+1 largest.
// At the end the state is sorted. The top k is trusted only where the order is unique: the k values
// strictly decreasing and the k-th strictly above the (k+1)-th (the largest value outside the
// top k). A row with a tie there, or with a NaN, is reported (ok = 0) and left to the caller's
// library top-k, whose order among equal values is the one to follow.
//
// Plain C ABI, loaded with ctypes by model/native.py.

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct Candidate {
  float value;
  int64_t index;
};

// "a ranks below b": std's heap functions with it keep the smallest value at the front
bool greater_value(const Candidate& a, const Candidate& b) { return a.value > b.value; }

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

// Bit j set where p[j] > t (above = true) or p[j] >= t, for the B <= 64 entries of a block.
template <int B>
inline uint64_t mask_of(const float* p, float t, bool above) {
  uint64_t mask = 0;
  if (above) {
    for (int j = 0; j < B; ++j) mask |= static_cast<uint64_t>(p[j] > t) << j;
  } else {
    for (int j = 0; j < B; ++j) mask |= static_cast<uint64_t>(p[j] >= t) << j;
  }
  return mask;
}

// A slab on a full heap: one pass; a block is looked at again only if its maximum beats the
// heap's smallest value (which only grows), and then only at the entries above it.
void update_full(const float* x, int64_t n, int64_t offset, RowState& s) {
  constexpr int B = 64;
  int nan = 0;
  const int64_t full = n / B;
  for (int64_t b = 0; b < full; ++b) {
    const float* p = x + b * B;
    const float m = block_max<B>(p, nan);
    if (nan) break;
    if (!(m > s.smallest())) continue;
    for (uint64_t mask = mask_of<B>(p, s.smallest(), true); mask; mask &= mask - 1) {
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
  list.assign(s.heap, s.heap + count);
  for (int64_t b = 0; b < full; ++b) {
    if (!(maxima[b] >= threshold)) continue;
    const float* p = x + b * B;
    for (uint64_t mask = mask_of<B>(p, threshold, false); mask; mask &= mask - 1) {
      const int j = __builtin_ctzll(mask);
      list.push_back(Candidate{p[j], offset + b * B + j});
    }
  }
  for (int64_t j = full * B; j < n; ++j) {
    if (x[j] >= threshold) list.push_back(Candidate{x[j], offset + j});
  }
  int64_t kept = static_cast<int64_t>(list.size());
  if (kept > s.keep) {
    std::nth_element(list.begin(), list.begin() + (s.keep - 1), list.end(), greater_value);
    kept = s.keep;
  }
  std::copy(list.begin(), list.begin() + kept, s.heap);
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

}  // namespace

extern "C" {

// Version of this interface; model/native.py refuses a library that reports another.
int mivos_topk_abi_version() { return 3; }

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

}  // extern "C"
