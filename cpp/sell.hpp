// SELL-8 (sliced ELLPACK, slices of 8 rows, all rows sorted by length) for y = act(A x + bias).
//
// CSR's A x spends most of its time on short rows in per-row overhead: loop exits that mispredict
// and one horizontal sum per row. SELL-8 computes eight rows at once, one row per SIMD lane:
// - the rows are sorted by length, longest first (stable counting sort, ties in row order);
//   perm[8 s + l] is the original row in lane l of slice s (perm has `rows` entries: only the
//   last slice can have lanes past the end, and they hold no row);
// - slice s holds its rows' values column-major, entry j of lane l at slice_ptr[s] + 8 j + l, and
//   is as wide as its longest row: shorter rows are padded with value 0 and a valid column (the
//   row's last one, or 0 for an empty row), so a step of the kernel is one 8-wide load of values,
//   a gather of x and an FMA, with no per-row branch;
// - results leave a slice through perm: each output row is written once, bias indexed by the
//   original row.
// Sorting keeps the padding small on top-k patterns (measured: docs/performance.md, "SELL-8").
// Values are float32 or float16 (accumulated in float32); indices uint16 or int32.
// Slices are split between threads by padded entries (split_rows_by_nnz on slice_ptr); each
// output is computed by one thread in a fixed order, so results are bitwise identical at any
// thread count. The AVX2 path is the CSR kernels' (same switch: csr_uses_avx2/csr_enable_avx2).
#pragma once
#include <cstdint>
#include <vector>

#include "csr.hpp"

namespace htcore {

constexpr std::int64_t kSellLanes = 8;

// A borrowed SELL-8 matrix: perm has rows entries, slice_ptr ceil(rows / 8) + 1, indices and
// data slice_ptr[last] = entries each. value_type is f32 or f16, index_type u16 or i32.
struct SellRef {
  std::int64_t rows = 0, cols = 0, perm_size = 0, slice_ptr_size = 0, entries = 0;
  const std::int32_t* perm = nullptr;
  const std::int64_t* slice_ptr = nullptr;
  const void* indices = nullptr;
  IndexType index_type = IndexType::i32;
  const void* data = nullptr;
  ValueType value_type = ValueType::f32;
};

// The row order and slice pointers of CSR matrix a's SELL-8 layout (a's row pointers are checked).
void sell_layout(const CsrRef& a, std::vector<std::int32_t>& perm, std::vector<std::int64_t>& slice_ptr);

// Fills indices and data (slice_ptr.back() entries each, of a's index and value types) from a,
// given the layout sell_layout returned. a must have float32 or float16 values.
void sell_fill(const CsrRef& a, const std::vector<std::int32_t>& perm, const std::vector<std::int64_t>& slice_ptr,
               void* indices, void* data);

// y = act(A x + bias) for A in SELL-8: x has cols elements, bias null or rows, y rows. Checks the
// sizes, the slice pointers (O(slices)) and that perm lies in [0, rows) (O(rows)); throws
// std::invalid_argument otherwise.
void sell_spmv(const SellRef& a, const float* x, std::int64_t x_size, const float* bias, std::int64_t bias_size,
               Activation act, float* y, std::int64_t y_size);

}  // namespace htcore
