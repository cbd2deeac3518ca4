// CSR times dense kernels (see csr.hpp). Two implementations of the row-range kernel:
//   generic: portable C++ (four partial sums for A x; two partial sums per output for A X),
//   avx2:    AVX2+FMA+F16C intrinsics (8-wide FMAs over gathered x for A x; FMAs over 8-wide
//            groups of batch columns for A X), compiled with a target pragma and chosen at run
//            time with __builtin_cpu_supports.
// A X is computed in tiles of 8 rows x 32 batch columns (rows_tiled), stored at once.
// float64 matrices always use the generic kernel (they are the reference format, not the fast one).

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "csr.hpp"
#include "csr_simd.hpp"
#include "errors.hpp"
#include "parallel.hpp"

namespace htcore {
namespace {

using namespace detail;

// Each thread gets at least this many multiply-adds ((nnz + rows) * k), so a product under twice
// this size runs on the calling thread with no fork/join. The product is one parallel region
// (for A X^T the transpose of X included), so its fork/join is paid once. While the worker still
// spins a region costs a few µs, so a second thread pays off from about twice this size; a worker
// that has gone to sleep (or whose core another process holds) costs a wake-up, and a smaller
// grain would expose more small products to it. Rows are split statically: dealing them out from
// an atomic counter was no better (the region's closing barrier still waits for a paused worker).
// Measured: docs/performance.md, "CSR kernels".
constexpr std::int64_t kParallelGrain = 1 << 13;

// A batch product (k > 1) whose matrix uses each input value fewer than kMinReuse times on
// average ((nnz + rows) / cols) runs on one thread whatever its size: every thread reads nearly
// all of X (or of the X^T the threads write together), so a second core spends as long fetching
// X from the first one's cache as it saves in multiply-adds. Measured on the demo's 784-32 layer
// at 3% (reuse 1): 2 threads 1.3-1.4x slower than 1 at batch 256 (benchmarks/results/contention.md).
constexpr std::int64_t kMinReuse = 8;

// A x prefetches kPrefetchAhead values ahead in its 16-value loop (the hardware prefetchers stop
// at 4 KiB pages, and each stream crosses one every 512-2048 values) when the matrix has at least
// kPrefetchBytes of values and indices (it comes from memory) and kPrefetchRow values per row on
// average: it helps long rows streamed from memory and costs a little on short rows and on
// matrices in cache (a guess at why rows matter: short rows leave the hardware prefetchers time).
// Measured: docs/performance.md, "CSR kernels".
constexpr std::int64_t kPrefetchBytes = std::int64_t(8) << 20, kPrefetchRow = 512, kPrefetchAhead = 512;

// Output tiles of the batch (k > 1) kernels: kTileRows rows x kTile batch columns.
constexpr std::int64_t kTile = 32, kTileRows = 8;

#ifdef HTCORE_CSR_X86
// dst[c * dst_stride + r] = src[r * src_stride + c] for r, c < 8 (AVX2; callers check the CPU).
__attribute__((target("avx2"))) void transpose8x8(const float* src, std::int64_t src_stride, float* dst,
                                                  std::int64_t dst_stride) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * src_stride);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + i * dst_stride, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(dst + (i + 4) * dst_stride, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}
#endif

// dst[c * dst_stride + r] = src[r * src_stride + c] for rows r < n and columns c0 <= c < c1,
// eight rows at a time: eight read streams and 8-value write runs. (Square tiles of 32 rows thrash
// L1 when the row stride is a multiple of 4 KiB.) With AVX2 (vectorised; float only), full 8 x 8
// blocks go through registers. Used for X^T (each thread transposes its share of the columns
// inside the product's parallel region, so a batch costs one fork/join and the workers never
// wait out a serial step) and to store output tiles for a transposed Y (see kChunkRows). Rows
// outer: columns outer was slower.
// Measured: docs/performance.md, "CSR kernels".
template <class T>
void transpose(const T* src, std::int64_t src_stride, std::int64_t n, std::int64_t c0, std::int64_t c1, T* dst,
               std::int64_t dst_stride, bool vectorised) {
  constexpr std::int64_t kBlock = 8;
  for (std::int64_t r0 = 0; r0 < n; r0 += kBlock) {
    const std::int64_t r1 = std::min(n, r0 + kBlock);
    std::int64_t c = c0;
#ifdef HTCORE_CSR_X86
    if constexpr (std::is_same<T, float>::value) {
      if (vectorised && r1 - r0 == kBlock)
        for (; c + kBlock <= c1; c += kBlock)
          transpose8x8(src + r0 * src_stride + c, src_stride, dst + c * dst_stride + r0, dst_stride);
    }
#endif
    for (; c < c1; ++c)
      for (std::int64_t r = r0; r < r1; ++r) dst[c * dst_stride + r] = src[r * src_stride + c];
  }
  (void)vectorised;
}

#ifdef HTCORE_CSR_X86
// dst[r * dst_stride + c] = src[r * src_stride + c] for r < n, c < w (AVX2; callers check the CPU).
// Source rows are read in whole groups of 8 (tile and chunk rows are that wide); stores past w
// are masked.
__attribute__((target("avx2"))) void copy_rows_avx2(const float* src, std::int64_t src_stride, std::int64_t n,
                                                    std::int64_t w, float* dst, std::int64_t dst_stride) {
  const __m256i tail =
      _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(w % 8)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  for (std::int64_t r = 0; r < n; ++r) {
    const float* s = src + r * src_stride;
    float* d = dst + r * dst_stride;
    std::int64_t c = 0;
    for (; c + 8 <= w; c += 8) _mm256_storeu_ps(d + c, _mm256_loadu_ps(s + c));
    if (c < w) _mm256_maskstore_ps(d + c, tail, _mm256_loadu_ps(s + c));
  }
}
#endif

// dst[r * dst_stride + c] = src[r * src_stride + c] for r < n, c < w: the tile's rows into a
// row-major Y. With AVX2 the copy is explicit: GCC turns a copy loop into a slow inline
// `rep movsq`, and a memcpy call per short row costs more than the copy.
// Measured: docs/performance.md, "CSR kernels".
template <class T>
void copy_rows(const T* src, std::int64_t src_stride, std::int64_t n, std::int64_t w, T* dst, std::int64_t dst_stride,
               bool vectorised) {
#ifdef HTCORE_CSR_X86
  if constexpr (std::is_same<T, float>::value) {
    if (vectorised) return copy_rows_avx2(src, src_stride, n, w, dst, dst_stride);
  }
#endif
  for (std::int64_t r = 0; r < n; ++r)
    std::memcpy(dst + r * dst_stride, src + r * src_stride, static_cast<std::size_t>(w) * sizeof(T));
  (void)vectorised;
}

// Everything a row-range kernel needs, typed.
template <class Ptr, class Idx, class V>
struct Job {
  using Acc = typename Values<V>::Acc;
  const Ptr* indptr;
  const Idx* indices;
  Values<V> vals;
  const Acc* x;
  std::int64_t k;
  const Acc* bias;
  Activation act;
  Acc* y;
  std::int64_t y_row_stride, y_col_stride;
  std::int64_t nnz;  // length of indices/data: a fixed-width chunk starting at p may read up to here
  bool vectorised;   // the AVX2 kernels run (and store tiles through AVX2 transposes)
  bool prefetch;     // A x reads the arrays ahead in software (see kPrefetchBytes)

  bool plain() const { return bias == nullptr && act == Activation::none; }
  void store(std::int64_t row, std::int64_t col, Acc v) const {
    y[row * y_row_stride + col * y_col_stride] = activate(bias ? v + bias[row] : v, act);
  }
  // Bias and activation over a tile of n rows x w columns (tile[r * kTile + t] is row i0 + r),
  // with the activation chosen once (the loops vectorise; a per-element store() cost more than
  // the sums at 1% density).
  void finish_tile(std::int64_t i0, std::int64_t n, std::int64_t w, Acc* tile) const {
    if (bias)
      for (std::int64_t r = 0; r < n; ++r)
        for (std::int64_t t = 0; t < w; ++t) tile[r * kTile + t] += bias[i0 + r];
    auto each = [&](auto f) {
      for (std::int64_t r = 0; r < n; ++r)
        for (std::int64_t t = 0; t < w; ++t) tile[r * kTile + t] = f(tile[r * kTile + t]);
    };
    switch (act) {
      case Activation::relu: each([](Acc v) { return activate(v, Activation::relu); }); break;
      case Activation::gelu: each([](Acc v) { return activate(v, Activation::gelu); }); break;
      case Activation::tanh: each([](Acc v) { return activate(v, Activation::tanh); }); break;
      case Activation::none: break;
    }
  }
  // Stores a finished tile (tile[r * kTile + t] is Y[i0 + r, j0 + t]). A transposed Y (row stride
  // 1) gets it through 8 x 8 transposes as runs of 8 contiguous values.
  void store_tile(std::int64_t i0, std::int64_t n, std::int64_t j0, std::int64_t w, const Acc* tile) const {
    Acc* out = y + i0 * y_row_stride + j0 * y_col_stride;
    if (y_row_stride == 1) return transpose(tile, kTile, n, 0, w, out, y_col_stride, vectorised);
    if (y_col_stride == 1) return copy_rows(tile, kTile, n, w, out, y_row_stride, vectorised);
    for (std::int64_t r = 0; r < n; ++r)
      for (std::int64_t t = 0; t < w; ++t) out[r * y_row_stride + t * y_col_stride] = tile[r * kTile + t];
  }
};

// X A^T (torch's Linear) writes Y transposed: row stride 1, column stride rows, so a tile's
// results for one batch column go to a row of Y, and the k rows of Y are 4 * rows bytes apart.
// Stored straight there, a tile's 32-byte pieces went to k cache lines that all fall in one L1
// set when 4 * rows is a multiple of 4 KiB (1024, 3072, 4096 rows; a second thread does not help).
// So tiles are transposed into a chunk buffer of kChunkRows columns whose row stride is off the
// 4 KiB grid, and each chunk goes to Y as k contiguous runs of whole cache lines. Each thread
// keeps its buffer between calls; past kChunkMaxBytes (k > 3276 in float32) tiles go straight to Y.
// Measured: docs/performance.md, "CSR kernels".
constexpr std::int64_t kChunkRows = 64, kChunkStride = kChunkRows + 16;
constexpr std::size_t kChunkMaxBytes = std::size_t(1) << 20;

template <class T>
T* chunk_buffer(std::int64_t k) {
  const std::size_t n = static_cast<std::size_t>(k) * kChunkStride;
  return n * sizeof(T) > kChunkMaxBytes ? nullptr : kept_buffer<struct OutputChunk, T>(n);
}

// A X (k > 1) in tiles of kTileRows rows x kTile columns: block(i0, n, j0, w, tile) sums rows
// i0..i0+n of A times columns j0..j0+w of X into tile[r * kTile + t], then the tile is finished
// and stored at once (into Y, or for a transposed Y into the chunk buffer, see kChunkRows).
template <class Job, class Block>
void rows_tiled(const Job& job, std::int64_t r0, std::int64_t r1, Block block) {
  using Acc = typename Job::Acc;
  alignas(32) Acc tile[kTileRows * kTile];
  Acc* chunk = job.y_row_stride == 1 ? chunk_buffer<Acc>(job.k) : nullptr;
  for (std::int64_t c0 = r0; c0 < r1; c0 += kChunkRows) {
    const std::int64_t c1 = std::min(r1, c0 + kChunkRows);
    for (std::int64_t i0 = c0; i0 < c1; i0 += kTileRows) {
      const std::int64_t n = std::min(kTileRows, c1 - i0);
      for (std::int64_t j0 = 0; j0 < job.k; j0 += kTile) {
        const std::int64_t w = std::min(kTile, job.k - j0);
        block(i0, n, j0, w, tile);
        job.finish_tile(i0, n, w, tile);
        if (chunk) transpose(tile, kTile, n, 0, w, chunk + j0 * kChunkStride + (i0 - c0), kChunkStride, job.vectorised);
        else job.store_tile(i0, n, j0, w, tile);
      }
    }
    if (chunk) copy_rows(chunk, kChunkStride, job.k, c1 - c0, job.y + c0, job.y_col_stride, job.vectorised);
  }
}

// A x, one row after another. Short rows (1% density: ~8 values) cost mostly branch mispredictions
// on the loop exits, so the last 0..3 values of a row are one fixed step of three lanes; lanes
// past the row end use a zero value (they read the next row's entries, which are valid columns);
// only near the end of the arrays does a scalar loop finish the row.
template <class Ptr, class Idx, class V>
void rows_generic_vec(const Job<Ptr, Idx, V>& job, std::int64_t r0, std::int64_t r1) {
  using Acc = typename Values<V>::Acc;
  const Idx* idx = job.indices;
  const Acc* x = job.x;
  std::int64_t begin = static_cast<std::int64_t>(job.indptr[r0]);
  for (std::int64_t i = r0; i < r1; ++i) {
    const std::int64_t end = static_cast<std::int64_t>(job.indptr[i + 1]);
    Acc s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    std::int64_t p = begin;
    for (; p + 4 <= end; p += 4) {
      s0 += job.vals(p) * x[idx[p]];
      s1 += job.vals(p + 1) * x[idx[p + 1]];
      s2 += job.vals(p + 2) * x[idx[p + 2]];
      s3 += job.vals(p + 3) * x[idx[p + 3]];
    }
    if (p < end && p + 3 <= job.nnz) {
      s0 += job.vals(p) * x[idx[p]];
      s1 += (p + 1 < end ? job.vals(p + 1) : Acc(0)) * x[idx[p + 1]];
      s2 += (p + 2 < end ? job.vals(p + 2) : Acc(0)) * x[idx[p + 2]];
    } else {
      for (; p < end; ++p) s0 += job.vals(p) * x[idx[p]];
    }
    job.store(i, 0, (s0 + s1) + (s2 + s3));
    begin = end;
  }
}

// A X: two partial sums per output (even and odd positions of the row), so consecutive
// multiply-adds into one accumulator do not wait on each other.
template <class Ptr, class Idx, class V>
void rows_generic(const Job<Ptr, Idx, V>& job, std::int64_t r0, std::int64_t r1) {
  using Acc = typename Values<V>::Acc;
  if (job.k == 1) return rows_generic_vec(job, r0, r1);
  const Idx* idx = job.indices;
  const std::int64_t k = job.k;
  auto row = [&](std::int64_t i, std::int64_t j0, std::int64_t w, Acc* out) {
    const std::int64_t begin = static_cast<std::int64_t>(job.indptr[i]),
                       end = static_cast<std::int64_t>(job.indptr[i + 1]);
    Acc a[kTile] = {}, b[kTile] = {};
    std::int64_t p = begin;
    for (; p + 2 <= end; p += 2) {
      const Acc va = job.vals(p), vb = job.vals(p + 1);
      const Acc* xa = job.x + static_cast<std::int64_t>(idx[p]) * k + j0;
      const Acc* xb = job.x + static_cast<std::int64_t>(idx[p + 1]) * k + j0;
      for (std::int64_t t = 0; t < w; ++t) {
        a[t] += va * xa[t];
        b[t] += vb * xb[t];
      }
    }
    if (p < end) {
      const Acc va = job.vals(p);
      const Acc* xa = job.x + static_cast<std::int64_t>(idx[p]) * k + j0;
      for (std::int64_t t = 0; t < w; ++t) a[t] += va * xa[t];
    }
    for (std::int64_t t = 0; t < w; ++t) out[t] = a[t] + b[t];
  };
  rows_tiled(job, r0, r1, [&](std::int64_t i0, std::int64_t n, std::int64_t j0, std::int64_t w, Acc* tile) {
    for (std::int64_t r = 0; r < n; ++r) row(i0 + r, j0, w, tile + r * kTile);
  });
}

#ifdef HTCORE_CSR_X86
HTCORE_AVX2_BEGIN
// A x. After the 16-wide loop and one optional 8-wide step, the last 0..7 values of a row are one
// masked 8-wide step (lanes past the row end get a zero value; they read the next row's entries,
// which are valid columns) instead of a scalar loop whose data-dependent exit mispredicts: short
// rows (1% density, ~8 values) were dominated by such mispredictions.
// Empty rows skip it. Within 8 values of the end of the arrays a scalar loop finishes the row.
// The alternatives tried (more masked steps or accumulators, hardware or AVX-512 gathers, one row
// per lane, rows bucketed by length) were slower: at ~8 values a row the gather and the sum are
// the limit, not the branches.
// Measured: docs/performance.md, "CSR kernels".
// Plain: no bias and no activation, so each sum is stored as it is (a plain A x: the epilogue's
// tests are a visible part of a row of a handful of multiply-adds).
// Prefetch: a big matrix with long rows (kPrefetchBytes).
template <bool Plain, bool Prefetch, class Ptr, class Idx, class V>
void rows_vec(const Job<Ptr, Idx, V>& job, std::int64_t r0, std::int64_t r1) {
  const Idx* idx = job.indices;
  const float* x = job.x;
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  std::int64_t begin = static_cast<std::int64_t>(job.indptr[r0]);
  for (std::int64_t i = r0; i < r1; ++i) {
    const std::int64_t end = static_cast<std::int64_t>(job.indptr[i + 1]);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    std::int64_t p = begin;
    for (; p + 16 <= end; p += 16) {
      if constexpr (Prefetch) {
        prefetch(job.vals.d, p + kPrefetchAhead);
        prefetch(idx, p + kPrefetchAhead);
      }
      acc0 = _mm256_fmadd_ps(load_val8(job.vals, p), gather8(x, idx + p), acc0);
      acc1 = _mm256_fmadd_ps(load_val8(job.vals, p + 8), gather8(x, idx + p + 8), acc1);
    }
    if (p + 8 <= end) {
      acc1 = _mm256_fmadd_ps(load_val8(job.vals, p), gather8(x, idx + p), acc1);
      p += 8;
    }
    float s = 0;
    if (p < end && p + 8 <= job.nnz) {  // p == end: empty rows (a third in top-k patterns at 1%)
      const __m256 m0 = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(end - p)), lane));
      acc0 = _mm256_fmadd_ps(_mm256_and_ps(load_val8(job.vals, p), m0), gather8(x, idx + p), acc0);
    } else {
      for (; p < end; ++p) s += load_val(job.vals, p) * x[idx[p]];
    }
    const float sum = hsum(_mm256_add_ps(acc0, acc1)) + s;
    if constexpr (Plain) job.y[i * job.y_row_stride] = sum;
    else job.store(i, 0, sum);
    begin = end;
  }
}

// Rows i0..i0+n of A times G groups of 8 columns of X (j0..j0+8G), into tile[r * kTile + ...];
// Masked: the last group is partial (masked loads never touch memory past X; the others are
// plain loads). Two sets of accumulators (even and odd positions of the row), so consecutive FMAs
// into one register do not wait on each other. The width is dispatched once per tile, not per
// row, so the row loop keeps its accumulators in registers: at 1% density (~8 values per row) a
// call per row, with its spills, cost as much as the sums.
template <int G, bool Masked, class Ptr, class Idx, class V>
void tile_block(const Job<Ptr, Idx, V>& job, std::int64_t i0, std::int64_t n, std::int64_t j0, std::int64_t w,
                float* tile) {
  const Idx* idx = job.indices;
  const std::int64_t k = job.k;
  const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(w - 8 * (G - 1))),
                                          _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  auto load = [&](const float* p, int g) {
    return Masked && g == G - 1 ? _mm256_maskload_ps(p, mask) : _mm256_loadu_ps(p);
  };
  for (std::int64_t r = 0; r < n; ++r) {
    __m256 a[G], b[G];
    for (int g = 0; g < G; ++g) a[g] = b[g] = _mm256_setzero_ps();
    const std::int64_t end = static_cast<std::int64_t>(job.indptr[i0 + r + 1]);
    std::int64_t p = static_cast<std::int64_t>(job.indptr[i0 + r]);
    for (; p + 2 <= end; p += 2) {
      const __m256 va = _mm256_set1_ps(load_val(job.vals, p)), vb = _mm256_set1_ps(load_val(job.vals, p + 1));
      const float* xa = job.x + static_cast<std::int64_t>(idx[p]) * k + j0;
      const float* xb = job.x + static_cast<std::int64_t>(idx[p + 1]) * k + j0;
      for (int g = 0; g < G; ++g) {
        a[g] = _mm256_fmadd_ps(va, load(xa + 8 * g, g), a[g]);
        b[g] = _mm256_fmadd_ps(vb, load(xb + 8 * g, g), b[g]);
      }
    }
    if (p < end) {
      const __m256 va = _mm256_set1_ps(load_val(job.vals, p));
      const float* xa = job.x + static_cast<std::int64_t>(idx[p]) * k + j0;
      for (int g = 0; g < G; ++g) a[g] = _mm256_fmadd_ps(va, load(xa + 8 * g, g), a[g]);
    }
    for (int g = 0; g < G; ++g) _mm256_store_ps(tile + r * kTile + 8 * g, _mm256_add_ps(a[g], b[g]));
  }
}

template <class Ptr, class Idx, class V>
void rows_avx2(const Job<Ptr, Idx, V>& job, std::int64_t r0, std::int64_t r1) {
  static_assert(kTile == 32, "tile_block covers a tile as four groups of 8 columns");
  if (job.k == 1) {
    if (job.prefetch) return job.plain() ? rows_vec<true, true>(job, r0, r1) : rows_vec<false, true>(job, r0, r1);
    return job.plain() ? rows_vec<true, false>(job, r0, r1) : rows_vec<false, false>(job, r0, r1);
  }
  rows_tiled(job, r0, r1, [&](std::int64_t i0, std::int64_t n, std::int64_t j0, std::int64_t w, float* tile) {
    const bool partial = w % 8 != 0;
    switch ((w + 7) / 8) {
      case 1:
        return partial ? tile_block<1, true>(job, i0, n, j0, w, tile) : tile_block<1, false>(job, i0, n, j0, w, tile);
      case 2:
        return partial ? tile_block<2, true>(job, i0, n, j0, w, tile) : tile_block<2, false>(job, i0, n, j0, w, tile);
      case 3:
        return partial ? tile_block<3, true>(job, i0, n, j0, w, tile) : tile_block<3, false>(job, i0, n, j0, w, tile);
      default:
        return partial ? tile_block<4, true>(job, i0, n, j0, w, tile) : tile_block<4, false>(job, i0, n, j0, w, tile);
    }
  });
}

HTCORE_AVX2_END
#endif  // HTCORE_CSR_X86

std::atomic<bool> g_avx2_enabled{true};

bool cpu_has_avx2() {
#ifdef HTCORE_CSR_X86
  static const bool ok =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  return ok && g_avx2_enabled.load(std::memory_order_relaxed);
#else
  return false;
#endif
}

// The buffer for X^T, at least n elements. Up to 4 MiB it is the calling thread's kept buffer
// (a fresh one's page faults would cost about as much as the transpose). Larger ones go in
// `owned`, freed when the call returns, so one big batch does not pin its memory for the life of
// the thread (and for those the page faults are a small part of the product).
template <class T>
T* transpose_buffer(std::size_t n, std::vector<T>& owned) {
  constexpr std::size_t kKeptBytes = std::size_t(4) << 20;
  if (n * sizeof(T) <= kKeptBytes) return kept_buffer<struct TransposedX, T>(n);
  owned.resize(n);
  return owned.data();
}

// The typed arguments of one call, passed down the dtype dispatch.
struct Call {
  const void* x;
  std::int64_t k;
  bool x_batch_major;
  const void* bias;
  Activation act;
  void* y;
  std::int64_t rs, cs;
};

template <class Ptr, class Idx, class V>
void run(const CsrRef& a, const Call& c) {
  using Acc = typename Values<V>::Acc;
  const std::int64_t k = c.k;
  const bool avx2 = cpu_has_avx2();
  const bool transposed = c.x_batch_major && k > 1;
  if (!transposed) require_finite(static_cast<const Acc*>(c.x), a.cols * k, "X", avx2);
  if (c.bias) require_finite(static_cast<const Acc*>(c.bias), a.rows, "bias", avx2);
  std::vector<Acc> owned;
  Acc* scratch = transposed ? transpose_buffer<Acc>(static_cast<std::size_t>(a.cols * k), owned) : nullptr;
  const Acc* xs = transposed ? scratch : static_cast<const Acc*>(c.x);
  bool vectorised = false;
#ifdef HTCORE_CSR_X86
  vectorised = !std::is_same<V, double>::value && avx2;
#endif
  const Job<Ptr, Idx, V> job{
      static_cast<const Ptr*>(a.indptr),
      static_cast<const Idx*>(a.indices),
      Values<V>{static_cast<decltype(Values<V>::d)>(a.data), a.codebook},
      xs,
      k,
      static_cast<const Acc*>(c.bias),
      c.act,
      static_cast<Acc*>(c.y),
      c.rs,
      c.cs,
      a.nnz,
      vectorised,
      a.nnz * static_cast<std::int64_t>(sizeof(Idx) + sizeof(V)) >= kPrefetchBytes && a.nnz >= kPrefetchRow * a.rows};
  check_row_pointers(job.indptr, a.rows, a.nnz);
  // Chunks rather than one part per thread: a thread that starts late (its core busy) then
  // leaves fewer rows undone for the others to wait on, and the caller takes whatever is left.
  const bool reused = k == 1 || a.nnz + a.rows >= kMinReuse * a.cols;
  const int threads = reused ? csr_threads(a.rows, a.nnz, k) : 1;
  const int parts = threads == 1 ? 1 : kChunksPerThread * threads;
  std::vector<std::int64_t> bounds(parts + 1);
  split_rows_by_nnz(job.indptr, a.rows, parts, bounds.data());
  auto kernel = [&](std::int64_t part) {
#ifdef HTCORE_CSR_X86
    if constexpr (!std::is_same<V, double>::value) {
      if (vectorised) return rows_avx2(job, bounds[part], bounds[part + 1]);
    }
#endif
    rows_generic(job, bounds[part], bounds[part + 1]);
  };
  // A transposed X is checked for NaN/Inf by each chunk on its share of X^T, just written and
  // still in cache, rather than in a serial pass over X first; the product starts once every
  // share has passed.
  // Measured: docs/performance.md, "CSR kernels".
  std::atomic<bool> x_finite{true};
  auto transpose_part = [&](std::int64_t part) {
    const std::int64_t c0 = a.cols * part / parts, c1 = a.cols * (part + 1) / parts;
    transpose(static_cast<const Acc*>(c.x), a.cols, k, c0, c1, scratch, k, vectorised);
    if (!finite(scratch + c0 * k, (c1 - c0) * k, avx2)) x_finite.store(false, std::memory_order_relaxed);
  };
  // Threads split the rows and share one X^T: each thread transposing all of X, or threads
  // splitting the batch columns instead, won on some shapes and lost on others, so neither was kept.
  // Measured: docs/performance.md, "CSR kernels".
  const std::int64_t work = product_work(a.rows, a.nnz, k);
  if (transposed) parallel_chunks(threads, parts, work, transpose_part);
  require(x_finite.load(), [] { return non_finite_message("X"); });
  parallel_chunks(threads, parts, work, kernel);
}

template <class Ptr, class Idx>
void dispatch_value(const CsrRef& a, const Call& c) {
  switch (a.value_type) {
    case ValueType::f32: return run<Ptr, Idx, float>(a, c);
    case ValueType::f64: return run<Ptr, Idx, double>(a, c);
    case ValueType::f16: return run<Ptr, Idx, Half>(a, c);
    case ValueType::code8: return run<Ptr, Idx, std::uint8_t>(a, c);
  }
}

template <class Ptr>
void dispatch_index(const CsrRef& a, const Call& c) {
  if (a.index_type == IndexType::u16) return dispatch_value<Ptr, std::uint16_t>(a, c);
  dispatch_value<Ptr, std::int32_t>(a, c);
}

}  // namespace

bool csr_uses_avx2() { return cpu_has_avx2(); }

int csr_threads(std::int64_t rows, std::int64_t nnz, std::int64_t k) {
  return static_cast<int>(
      std::max<std::int64_t>(1, std::min<std::int64_t>(num_threads(), product_work(rows, nnz, k) / kParallelGrain)));
}

void csr_enable_avx2(bool enabled) { g_avx2_enabled.store(enabled, std::memory_order_relaxed); }

void csr_spmm(const CsrRef& a, const void* x, std::int64_t x_size, std::int64_t k, bool x_batch_major, const void* bias,
              std::int64_t bias_size, Activation act, void* y, std::int64_t y_size, std::int64_t y_row_stride,
              std::int64_t y_col_stride) {
  require(a.rows >= 0 && a.cols >= 0 && a.nnz >= 0 && k >= 0, "shape, nnz and k must be non-negative");
  require(a.index_type != IndexType::u16 || a.cols <= 65536, "uint16 column indices need cols <= 65536");
  require(a.value_type != ValueType::code8 || (a.codebook != nullptr && a.codebook_size >= 1 && a.codebook_size <= 256),
          "codebook values need a codebook of 1 to 256 levels");
  // Sizes are products of caller-given numbers: compute them with overflow checks, or a wrapped
  // product could pass a check and let the kernel index outside X or the output.
  std::int64_t x_needed;
  require(!__builtin_mul_overflow(a.cols, k, &x_needed) && x_size == x_needed, [&] {
    return "X must have cols * k elements (cols = " + std::to_string(a.cols) + ", k = " + std::to_string(k) +
           "), got " + std::to_string(x_size);
  });
  require(bias == nullptr || bias_size == a.rows, [&] {
    return "bias must have rows = " + std::to_string(a.rows) + " elements, got " + std::to_string(bias_size);
  });
  require(y_row_stride >= 0 && y_col_stride >= 0, "output strides must be non-negative");
  if (k == 0) return;  // (zero rows still go through, so NaN/Inf in X raise whatever the shape)
  // Rows and columns of the output must not overlap: each element is written by exactly one thread.
  // (A zero-row result writes nothing, whatever its strides.)
  if (a.rows > 0) {
    require((a.rows == 1 || y_row_stride >= 1) && (k == 1 || y_col_stride >= 1),
            "output strides must be positive along every dimension longer than 1");
    std::int64_t row_span, col_span, last;
    const bool overflow = __builtin_mul_overflow(a.rows - 1, y_row_stride, &row_span) ||
                          __builtin_mul_overflow(k - 1, y_col_stride, &col_span) ||
                          __builtin_add_overflow(row_span, col_span, &last);
    require(!overflow && last < y_size, [&] {
      return "output has " + std::to_string(y_size) + " elements, too few for the strided (rows, k) result";
    });
    require(a.rows == 1 || k == 1 || y_row_stride >= k * y_col_stride || y_col_stride >= a.rows * y_row_stride,
            "output strides overlap: rows and columns of the result would share elements");
  }
  const Call call{x, k, x_batch_major, bias, act, y, y_row_stride, y_col_stride};
  if (a.indptr_type == IndptrType::i32) return dispatch_index<std::int32_t>(a, call);
  dispatch_index<std::int64_t>(a, call);
}

}  // namespace htcore
