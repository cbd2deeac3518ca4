// Sparse 2-D convolution: Y = act(conv2d(X, W) + bias), with torch.nn.functional.conv2d's
// semantics (NCHW float32 input and output, stride, zero padding, dilation, groups).
//
// The weight W is a CSR matrix of shape (C_out, (C_in / groups) * kh * kw): row co holds output
// channel co's kept weights, and column c stands for (ci, ky, kx) = (c / (kh*kw), (c / kw) % kh,
// c % kw) within co's group, i.e. the row-major flattening of torch's (C_out, C_in/groups, kh, kw)
// weight. Values may be float32, float16 (accumulated in float32) or uint8 codes into a float32
// codebook; column indices uint16 or int32; row pointers int32 or int64 (see csr.hpp). float64
// weights are refused (the input and output are float32).
//
// Every output element is summed by one thread in CSR order, so results are bitwise identical at
// any thread count. The design (which loop runs for which shape) and its measurements are at the
// top of conv2d.cpp and in benchmarks/conv/results.md.
#pragma once
#include <cstdint>

#include "csr.hpp"

namespace htcore {

struct Conv2dParams {
  std::int64_t batch = 1;                       // N >= 0
  std::int64_t in_channels = 1;                 // C_in >= 1
  std::int64_t height = 1, width = 1;           // H, W >= 1
  std::int64_t out_channels = 1;                // C_out >= 1 (the weight's rows)
  std::int64_t kernel_h = 1, kernel_w = 1;      // kh, kw >= 1
  std::int64_t stride_h = 1, stride_w = 1;      // >= 1
  std::int64_t padding_h = 0, padding_w = 0;    // >= 0 (zeros)
  std::int64_t dilation_h = 1, dilation_w = 1;  // >= 1
  std::int64_t groups = 1;                      // >= 1, divides C_in and C_out
};

// Which loop computes the convolution. automatic picks by shape, and takes a dense loop for a
// weight holding every entry (see conv2d.cpp); the others are for benchmarks and tests. All give
// bitwise the same result.
enum class Conv2dAlgo { automatic, direct, tiled };

// H_out and W_out of a convolution, as torch computes them:
// floor((H + 2 ph - dh (kh - 1) - 1) / sh) + 1. Throws std::invalid_argument on invalid
// parameters or an output smaller than 1 x 1.
void conv2d_output_size(const Conv2dParams& p, std::int64_t* out_h, std::int64_t* out_w);

// y (y_size = N * C_out * H_out * W_out elements, NCHW) = act(conv2d(x, weight) + bias).
// x has x_size = N * C_in * H * W elements (NCHW); bias is null or has bias_size = C_out
// elements. X and bias must be finite (NaN/Inf are refused, as by csr_spmm). Throws
// std::invalid_argument (messages name the argument) on inconsistent sizes or parameters, on
// invalid row pointers, out-of-range column indices or codes (checked on every call: O(nnz), small
// next to the O(nnz * H_out * W_out) product), and htcore::type_error on float64 weights; nothing
// is written to y when it throws. Threads: num_threads(), fewer for small products (csr_threads's
// grain). Each calling thread keeps its decoded weights (12 bytes per kept weight) and, with
// padding or stride > 1, one prepared image per part (kept up to 4 MiB) between calls.
void sparse_conv2d(const CsrRef& weight, const float* x, std::int64_t x_size, const Conv2dParams& p, const float* bias,
                   std::int64_t bias_size, Activation act, float* y, std::int64_t y_size,
                   Conv2dAlgo algo = Conv2dAlgo::automatic);

// Tests only: when true, every call with at least two (image, output channel) items forks
// num_threads() threads, however small (so small random shapes exercise the parallel split).
void conv2d_ignore_parallel_grain(bool ignore);

}  // namespace htcore
