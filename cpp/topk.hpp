// Exact top-k magnitude selection and CSR construction.
//
// Values are handled as raw IEEE bits: U = std::uint16_t (float16), std::uint32_t (float32) or std::uint64_t
// (float64). |x| of a finite float orders exactly like its bit pattern with the sign cleared,
// read as an unsigned integer (the "key"), so selection is a radix select on keys: a few O(n)
// passes with per-thread histograms whose integer merges are exact. Ties at the threshold go to
// the lowest position (flat row-major index, row index in column mode, column in row mode), so
// every result is identical at any thread count. Output values are copied bit for bit.
// Matrix mode first tries sample-select (a fixed pseudo-random sample brackets the threshold; one
// pass counts and copies the few keys in the bracket, one pass writes CSR) and falls back to the
// radix select when the bracket misses; both give the same exact result.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace htcore {

// An uninitialised array (new T[n]), so large outputs are not zero-filled before being written.
template <class T>
struct Buffer {
  std::unique_ptr<T[]> ptr;
  std::size_t size = 0;
  explicit Buffer(std::size_t n) : ptr(new T[n > 0 ? n : 1]), size(n) {}
  T* data() { return ptr.get(); }
};

// CSR arrays. indptr is int64 (rows + 1 entries); the Python layer narrows it.
template <class U, class Idx>
struct TopkCsr {
  Buffer<U> data;
  Buffer<Idx> indices;
  Buffer<std::int64_t> indptr;
  std::int64_t ties_taken = 0;  // threshold mode: how many entries equal to the threshold were kept
  TopkCsr(std::size_t nnz, std::size_t rows) : data(nnz), indices(nnz), indptr(rows + 1) {}
};

// A read-only run of values (one matrix, flattened row-major).
template <class U>
struct TopkSegment {
  const U* x;
  std::int64_t n;
};

// The k-th largest key of the concatenated segments.
struct TopkTarget {
  std::uint64_t key = 0;     // bits of |x| at the threshold
  double value = 0.0;        // |x| at the threshold, as a double (exact)
  std::int64_t greater = 0;  // entries with |x| > value
  std::int64_t ties = 0;     // entries with |x| == value
  double tail_sq = 0.0;      // sum of x^2 over the entries NOT among the top k (only with sums)
};

struct TopkSelection {
  std::vector<TopkTarget> targets;  // one per requested k, same order
  double total_sq = 0.0;            // sum of x^2 over all entries (only with sums)
};

// Finds, for every k in ks (each in [1, n]), the k-th largest |x|. Always reads every entry once
// and throws std::invalid_argument naming `name` if any is NaN or Inf (so ks may be empty to only
// check). With `sums`, also returns sums of squares for exact relative Frobenius errors: they are
// accumulated as integers (exact, order-free) and scaled by 2^(-2 e_max), so only their ratios
// are meaningful.
template <class U>
TopkSelection topk_select(const std::vector<TopkSegment<U>>& segments, const std::vector<std::int64_t>& ks, bool sums,
                          const std::string& name);

// The smallest k whose tail (entries outside the top k) has sum of squares <= max_rel_error^2 times
// the total: ||W - W_k||_F <= max_rel_error ||W||_F. Throws on NaN/Inf like select.
template <class U>
std::int64_t topk_k_for_rel_error(const std::vector<TopkSegment<U>>& segments, double max_rel_error,
                                  const std::string& name);

// Keeps every entry with key > threshold and, in row-major order, the first `tie_budget` entries
// with key == threshold. Input must be finite (select has checked it).
template <class U, class Idx>
TopkCsr<U, Idx> topk_csr_threshold(const U* w, std::int64_t rows, std::int64_t cols, std::uint64_t threshold,
                                   std::int64_t tie_budget);

// Keeps the k largest |x| of the matrix (k <= rows * cols), ties to the lowest flat index.
// Usually two passes over W (sample-select), else selection plus two passes.
template <class U, class Idx>
TopkCsr<U, Idx> topk_csr_matrix(const U* w, std::int64_t rows, std::int64_t cols, std::int64_t k,
                                const std::string& name);

// Keeps the k largest |x| of every row (k <= cols), ties to the lowest column.
template <class U, class Idx>
TopkCsr<U, Idx> topk_csr_rows(const U* w, std::int64_t rows, std::int64_t cols, std::int64_t k,
                              const std::string& name);

// Keeps the k largest |x| of every column (k <= rows), ties to the lowest row.
template <class U, class Idx>
TopkCsr<U, Idx> topk_csr_cols(const U* w, std::int64_t rows, std::int64_t cols, std::int64_t k,
                              const std::string& name);

}  // namespace htcore
