// CSR sparse-times-dense kernels: Y = act(A X + bias), with the bias and activation fused.
//
// A is CSR with int32/int64 row pointers, uint16/int32 column indices and float32, float64,
// float16 (bits as uint16; accumulated in float32) or uint8 codebook values (index into a
// float32 codebook of at most 256 levels; accumulated in float32). X, bias and Y are float64 when
// A's values are float64, else float32.
//
// X is (cols, k) row-major, or (k, cols) row-major with x_batch_major (torch's Linear input; it
// is then transposed into a scratch buffer by a blocked transpose first). Y[i, j] is written at y[i * y_row_stride + j
// * y_col_stride], so the same kernel serves A x (k = 1), A X (Y row-major) and torch's Linear X A^T (Y transposed).
//
// Rows are split between threads by nnz (split_rows_by_nnz). Every output element is computed by
// one thread in a fixed order, so results are bitwise identical at any thread count. On x86-64
// CPUs with AVX2+FMA+F16C a vectorised path is chosen at run time (the build stays portable).
#pragma once
#include <cstdint>

namespace htcore {

enum class IndptrType { i32, i64 };
enum class IndexType { u16, i32 };
enum class ValueType { f32, f64, f16, code8 };
enum class Activation { none, relu, gelu, tanh };

// A borrowed CSR matrix. The arrays are assumed structurally valid (htcore.CSRMatrix checks them);
// csr_spmm re-checks only the sizes it is given.
struct CsrRef {
  std::int64_t rows = 0, cols = 0, nnz = 0;
  const void* indptr = nullptr;
  IndptrType indptr_type = IndptrType::i32;
  const void* indices = nullptr;
  IndexType index_type = IndexType::i32;
  const void* data = nullptr;
  ValueType value_type = ValueType::f32;
  const float* codebook = nullptr;  // code8 only
  std::int64_t codebook_size = 0;
};

// Y = act(A X + bias). x has x_size = cols * k elements, bias is null or has bias_size = rows
// elements, y (y_size elements) holds the strided (rows, k) result. Throws std::invalid_argument
// on inconsistent sizes.
void csr_spmm(const CsrRef& a, const void* x, std::int64_t x_size, std::int64_t k, bool x_batch_major, const void* bias,
              std::int64_t bias_size, Activation act, void* y, std::int64_t y_size, std::int64_t y_row_stride,
              std::int64_t y_col_stride);

// Threads one product uses: num_threads(), but no more than one per kParallelGrain multiply-adds
// ((nnz + rows) * k), so a small product runs on the calling thread without a fork/join.
int csr_threads(std::int64_t rows, std::int64_t nnz, std::int64_t k);

// True when the AVX2+FMA+F16C path is used (the CPU has it and it is not disabled).
bool csr_uses_avx2();
// Enable (default) or disable the AVX2 path, so tests can check the portable kernel on any CPU.
void csr_enable_avx2(bool enabled);

}  // namespace htcore
