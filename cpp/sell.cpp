// SELL-8 layout and its A x kernel (see sell.hpp): a portable 8-lane loop and an AVX2 one.
#include "sell.hpp"

#include <algorithm>
#include <string>
#include <vector>

#include "csr_simd.hpp"
#include "errors.hpp"
#include "parallel.hpp"

namespace htcore {
namespace {

using namespace detail;

template <class Ptr>
std::int64_t row_length(const Ptr* indptr, std::int64_t r) {
  return static_cast<std::int64_t>(indptr[r + 1]) - static_cast<std::int64_t>(indptr[r]);
}

template <class Ptr>
void layout(const Ptr* indptr, std::int64_t rows, std::int64_t nnz, std::vector<std::int32_t>& perm,
            std::vector<std::int64_t>& slice_ptr) {
  check_row_pointers(indptr, rows, nnz);
  require(rows <= INT32_MAX, [&] { return "SELL-8 needs rows < 2^31, got " + std::to_string(rows); });
  // Counting sort by length, longest first; stable, so equal lengths keep their row order.
  std::int64_t longest = 0;
  for (std::int64_t r = 0; r < rows; ++r) longest = std::max(longest, row_length(indptr, r));
  std::vector<std::int64_t> start(static_cast<std::size_t>(longest) + 2, 0);
  for (std::int64_t r = 0; r < rows; ++r) ++start[longest - row_length(indptr, r) + 1];
  for (std::int64_t b = 1; b <= longest + 1; ++b) start[b] += start[b - 1];
  perm.assign(rows, 0);
  for (std::int64_t r = 0; r < rows; ++r) perm[start[longest - row_length(indptr, r)]++] = static_cast<std::int32_t>(r);
  const std::int64_t slices = (rows + kSellLanes - 1) / kSellLanes;
  slice_ptr.assign(slices + 1, 0);
  for (std::int64_t s = 0; s < slices; ++s)  // the first row of a slice is its longest
    slice_ptr[s + 1] = slice_ptr[s] + kSellLanes * row_length(indptr, perm[s * kSellLanes]);
}

// Raw copies: Bits is the value's storage (std::uint32_t for float32, std::uint16_t for float16); zero bits
// are +0.0 in both.
template <class Ptr, class Idx, class Bits>
void fill(const CsrRef& a, const std::vector<std::int32_t>& perm, const std::vector<std::int64_t>& slice_ptr, Idx* idx,
          Bits* val) {
  const auto* indptr = static_cast<const Ptr*>(a.indptr);
  const auto* src_idx = static_cast<const Idx*>(a.indices);
  const auto* src_val = static_cast<const Bits*>(a.data);
  const std::int64_t slices = static_cast<std::int64_t>(slice_ptr.size()) - 1;
  std::fill(val, val + slice_ptr.back(), Bits(0));
  std::fill(idx, idx + slice_ptr.back(), Idx(0));
  for (std::int64_t s = 0; s < slices; ++s) {
    const std::int64_t width = (slice_ptr[s + 1] - slice_ptr[s]) / kSellLanes;
    const std::int64_t lanes = std::min(kSellLanes, a.rows - s * kSellLanes);
    for (std::int64_t l = 0; l < lanes; ++l) {
      const std::int32_t r = perm[s * kSellLanes + l];
      const std::int64_t begin = static_cast<std::int64_t>(indptr[r]), n = row_length(indptr, r);
      Idx* id = idx + slice_ptr[s] + l;
      Bits* vd = val + slice_ptr[s] + l;
      for (std::int64_t j = 0; j < n; ++j) {
        vd[kSellLanes * j] = src_val[begin + j];
        id[kSellLanes * j] = src_idx[begin + j];
      }
      const Idx pad = n ? src_idx[begin + n - 1] : Idx(0);  // re-reads a cached x element
      for (std::int64_t j = n; j < width; ++j) id[kSellLanes * j] = pad;
    }
  }
}

template <class Ptr>
void fill_typed(const CsrRef& a, const std::vector<std::int32_t>& perm, const std::vector<std::int64_t>& slice_ptr,
                void* idx, void* val) {
  const bool half = a.value_type == ValueType::f16;
  if (a.index_type == IndexType::u16) {
    if (half) return fill<Ptr>(a, perm, slice_ptr, static_cast<std::uint16_t*>(idx), static_cast<std::uint16_t*>(val));
    return fill<Ptr>(a, perm, slice_ptr, static_cast<std::uint16_t*>(idx), static_cast<std::uint32_t*>(val));
  }
  if (half) return fill<Ptr>(a, perm, slice_ptr, static_cast<std::int32_t*>(idx), static_cast<std::uint16_t*>(val));
  fill<Ptr>(a, perm, slice_ptr, static_cast<std::int32_t*>(idx), static_cast<std::uint32_t*>(val));
}

template <class Idx, class V>
struct SellJob {
  const SellRef& a;
  const Idx* idx;
  Values<V> vals;
  const float* x;
  const float* bias;
  Activation act;
  float* y;

  // Lane l of slice s (sums[l]) is row perm[8 s + l]; lanes past the last row hold none. Full
  // slices take a loop of fixed length 8 (unrolled: no loop exit to mispredict).
  void store(std::int64_t s, const float* sums) const {
    const std::int32_t* rows = a.perm + s * kSellLanes;
    auto lane = [&](std::int64_t l) {
      const std::int32_t r = rows[l];
      y[r] = activate(bias ? sums[l] + bias[r] : sums[l], act);
    };
    if ((s + 1) * kSellLanes <= a.rows) {
      for (std::int64_t l = 0; l < kSellLanes; ++l) lane(l);
    } else {
      for (std::int64_t l = 0; l < a.rows - s * kSellLanes; ++l) lane(l);
    }
  }
};

template <class Idx, class V>
void slices_generic(const SellJob<Idx, V>& job, std::int64_t s0, std::int64_t s1) {
  for (std::int64_t s = s0; s < s1; ++s) {
    float sums[kSellLanes] = {};
    for (std::int64_t p = job.a.slice_ptr[s]; p < job.a.slice_ptr[s + 1]; p += kSellLanes)
      for (std::int64_t l = 0; l < kSellLanes; ++l) sums[l] += job.vals(p + l) * job.x[job.idx[p + l]];
    job.store(s, sums);
  }
}

#ifdef HTCORE_CSR_X86
// One accumulator for narrow slices; four (consecutive steps rotate through them) from 4 steps
// wide, where one would make each FMA wait on the previous one (narrow slices are faster with one).
// Measured: docs/performance.md, "SELL-8".
HTCORE_AVX2_BEGIN
template <class Idx, class V>
void slices_avx2(const SellJob<Idx, V>& job, std::int64_t s0, std::int64_t s1) {
  const Idx* I = job.idx;
  const float* x = job.x;
  for (std::int64_t s = s0; s < s1; ++s) {
    std::int64_t p = job.a.slice_ptr[s];
    const std::int64_t e = job.a.slice_ptr[s + 1];
    __m256 a0 = _mm256_setzero_ps();
    if (e - p >= 4 * kSellLanes) {
      __m256 a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
      for (; p + 32 <= e; p += 32) {
        a0 = _mm256_fmadd_ps(load_val8(job.vals, p), gather8(x, I + p), a0);
        a1 = _mm256_fmadd_ps(load_val8(job.vals, p + 8), gather8(x, I + p + 8), a1);
        a2 = _mm256_fmadd_ps(load_val8(job.vals, p + 16), gather8(x, I + p + 16), a2);
        a3 = _mm256_fmadd_ps(load_val8(job.vals, p + 24), gather8(x, I + p + 24), a3);
      }
      for (; p < e; p += 8) a1 = _mm256_fmadd_ps(load_val8(job.vals, p), gather8(x, I + p), a1);
      a0 = _mm256_add_ps(_mm256_add_ps(a0, a2), _mm256_add_ps(a1, a3));
    } else {
      for (; p < e; p += 8) a0 = _mm256_fmadd_ps(load_val8(job.vals, p), gather8(x, I + p), a0);
    }
    alignas(32) float sums[kSellLanes];
    _mm256_store_ps(sums, a0);
    job.store(s, sums);
  }
}
HTCORE_AVX2_END
#endif

template <class Idx, class V>
void run(const SellRef& a, const float* x, const float* bias, Activation act, float* y) {
  const SellJob<Idx, V> job{a,
                            static_cast<const Idx*>(a.indices),
                            Values<V>{static_cast<decltype(Values<V>::d)>(a.data), nullptr},
                            x,
                            bias,
                            act,
                            y};
  const std::int64_t slices = a.slice_ptr_size - 1;
  const bool vectorised = csr_uses_avx2();
  // Chunks on htcore's pool, as the CSR products (see csr_spmm): a late thread holds up nobody.
  const int threads = csr_threads(a.rows, a.entries, 1);
  const int parts = threads == 1 ? 1 : kChunksPerThread * threads;
  std::vector<std::int64_t> bounds(parts + 1);
  split_rows_by_nnz(a.slice_ptr, slices, parts, bounds.data());
  auto kernel = [&](std::int64_t part) {
#ifdef HTCORE_CSR_X86
    if (vectorised) return slices_avx2(job, bounds[part], bounds[part + 1]);
#endif
    (void)vectorised;
    slices_generic(job, bounds[part], bounds[part + 1]);
  };
  parallel_chunks(threads, parts, product_work(a.rows, a.entries, 1), kernel);
}

template <class Idx>
void dispatch_value(const SellRef& a, const float* x, const float* bias, Activation act, float* y) {
  if (a.value_type == ValueType::f16) return run<Idx, Half>(a, x, bias, act, y);
  run<Idx, float>(a, x, bias, act, y);
}

void require_sell_values(ValueType t) {
  require(t == ValueType::f32 || t == ValueType::f16, "SELL-8 needs float32 or float16 values");
}

}  // namespace

void sell_layout(const CsrRef& a, std::vector<std::int32_t>& perm, std::vector<std::int64_t>& slice_ptr) {
  require(a.rows >= 0 && a.cols >= 0 && a.nnz >= 0, "shape and nnz must be non-negative");
  if (a.indptr_type == IndptrType::i32)
    return layout(static_cast<const std::int32_t*>(a.indptr), a.rows, a.nnz, perm, slice_ptr);
  layout(static_cast<const std::int64_t*>(a.indptr), a.rows, a.nnz, perm, slice_ptr);
}

void sell_fill(const CsrRef& a, const std::vector<std::int32_t>& perm, const std::vector<std::int64_t>& slice_ptr,
               void* indices, void* data) {
  require_sell_values(a.value_type);
  require(static_cast<std::int64_t>(perm.size()) == a.rows &&
              static_cast<std::int64_t>(slice_ptr.size()) == (a.rows + 7) / 8 + 1,
          "perm and slice_ptr do not match the matrix (use sell_layout)");
  if (a.indptr_type == IndptrType::i32) return fill_typed<std::int32_t>(a, perm, slice_ptr, indices, data);
  fill_typed<std::int64_t>(a, perm, slice_ptr, indices, data);
}

void sell_spmv(const SellRef& a, const float* x, std::int64_t x_size, const float* bias, std::int64_t bias_size,
               Activation act, float* y, std::int64_t y_size) {
  require_sell_values(a.value_type);
  require(a.rows >= 0 && a.cols >= 0, "shape must be non-negative");
  require(a.index_type != IndexType::u16 || a.cols <= 65536, "uint16 column indices need cols <= 65536");
  require(a.perm_size == a.rows, [&] {
    return "perm must have rows = " + std::to_string(a.rows) + " entries, got " + std::to_string(a.perm_size);
  });
  const std::int64_t slices = (a.rows + kSellLanes - 1) / kSellLanes;
  require(a.slice_ptr_size == slices + 1, [&] {
    return "slice_ptr must have ceil(rows / 8) + 1 = " + std::to_string(slices + 1) + " entries, got " +
           std::to_string(a.slice_ptr_size);
  });
  require(x_size == a.cols,
          [&] { return "x must have cols = " + std::to_string(a.cols) + " elements, got " + std::to_string(x_size); });
  require(bias == nullptr || bias_size == a.rows, [&] {
    return "bias must have rows = " + std::to_string(a.rows) + " elements, got " + std::to_string(bias_size);
  });
  require(y_size == a.rows, [&] {
    return "out must have rows = " + std::to_string(a.rows) + " elements, got " + std::to_string(y_size);
  });
  // Every slice must lie inside the arrays, in whole steps of 8, and every lane's row inside y.
  bool ok = a.slice_ptr[0] == 0 && a.slice_ptr[slices] == a.entries;
  for (std::int64_t s = 0; s < slices; ++s) {
    const std::int64_t w = a.slice_ptr[s + 1] - a.slice_ptr[s];
    ok &= w >= 0 && w % kSellLanes == 0;
  }
  require(ok, "slice_ptr must start at 0, end at the number of entries and step by multiples of 8");
  require(a.rows <= INT32_MAX, [&] { return "SELL-8 needs rows < 2^31, got " + std::to_string(a.rows); });
  // 32-bit signed compares, so the loop vectorises (a 64-bit compare per entry is a visible part
  // of a small product).
  const std::int32_t rows32 = static_cast<std::int32_t>(a.rows);
  std::int32_t out_of_range = 0;
  for (std::int64_t i = 0; i < a.rows; ++i) out_of_range |= (a.perm[i] < 0) | (a.perm[i] >= rows32);
  require(out_of_range == 0, "perm must lie in [0, rows)");
  require_finite(x, a.cols, "x", csr_uses_avx2());
  if (bias) require_finite(bias, a.rows, "bias", csr_uses_avx2());
  if (a.index_type == IndexType::u16) return dispatch_value<std::uint16_t>(a, x, bias, act, y);
  dispatch_value<std::int32_t>(a, x, bias, act, y);
}

}  // namespace htcore
