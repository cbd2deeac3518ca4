// The layers of a compressed model that are not products: pooling, a per-channel affine map
// (an inference BatchNorm2d), element-wise sums and activations. Both runtimes (the Python one in
// python/htcore/runtime and the C one in cpp/runtime) call these, so a model gives bitwise the same
// outputs in either.
//
// Images are NCHW float32, C-contiguous. Every function computes each output element in one fixed
// order on the calling thread (these layers are memory-bound and small next to the products around
// them), so results never depend on the thread count. Sizes are checked (std::invalid_argument
// naming the argument); values are not (the callers check their input for NaN/Inf once).
#pragma once
#include <cstdint>

#include "csr.hpp"

namespace htcore {

// torch's max_pool2d / avg_pool2d with ceil_mode False and dilation 1. Max pooling pads with -inf;
// average pooling counts the zero padding (count_include_pad True): the sum of a window, taken row
// by row, divided by kh * kw.
struct Pool2dParams {
  std::int64_t batch = 1, channels = 1, height = 1, width = 1;  // N >= 0, C, H, W >= 1
  std::int64_t kernel_h = 1, kernel_w = 1;                      // >= 1
  std::int64_t stride_h = 1, stride_w = 1;                      // >= 1
  std::int64_t padding_h = 0, padding_w = 0;                    // 0 <= padding <= kernel / 2
};

// H_out = floor((H + 2 ph - kh) / sh) + 1 (W_out likewise). Throws when a parameter is out of range
// or the window is larger than the padded input.
void pool2d_output_size(const Pool2dParams& p, std::int64_t* out_h, std::int64_t* out_w);

// y (N * C * H_out * W_out elements) = the pooled x (N * C * H * W elements).
void max_pool2d(const Pool2dParams& p, const float* x, std::int64_t x_size, float* y, std::int64_t y_size);
void avg_pool2d(const Pool2dParams& p, const float* x, std::int64_t x_size, float* y, std::int64_t y_size);

// torch's adaptive_avg_pool2d to (out_h, out_w): output (i, j) averages rows
// [floor(i H / out_h), ceil((i + 1) H / out_h)) and the columns likewise; the window sum, taken row
// by row in float64, is divided by its number of elements and rounded once to float32.
void adaptive_avg_pool2d(std::int64_t batch, std::int64_t channels, std::int64_t height, std::int64_t width,
                         std::int64_t out_h, std::int64_t out_w, const float* x, std::int64_t x_size, float* y,
                         std::int64_t y_size);

// y[n, c, i] = x[n, c, i] * scale[c] + shift[c] for x of shape (N, C, plane) (an inference
// BatchNorm2d: scale = gamma / sqrt(var + eps), shift = beta - mean * scale). y may be x.
void channel_affine(std::int64_t batch, std::int64_t channels, std::int64_t plane, const float* x, const float* scale,
                    const float* shift, float* y);

// y[i] = a[i] + b[i] for i < n. y may be a or b.
void add_arrays(const float* a, const float* b, float* y, std::int64_t n);

// x[i] = act(x[i]) for i < n, in place: the same function the sparse kernels fuse (csr_simd.hpp).
void activate_inplace(Activation act, float* x, std::int64_t n);

// Softmax over axis 0 of the (rows, cols) row-major x, in place: each column c becomes
// exp(x[:, c] - max) / sum(exp(x[:, c] - max)), the sum taken in row order. (The runtimes keep
// activations as (features, batch), so this is a softmax over the features of every sample.)
void softmax_axis0(float* x, std::int64_t rows, std::int64_t cols);

}  // namespace htcore
