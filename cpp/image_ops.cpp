// Pooling, per-channel affine, sums and activations (image_ops.hpp).
#include "image_ops.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "csr_simd.hpp"
#include "errors.hpp"

namespace htcore {
namespace {

std::string pair_text(std::int64_t h, std::int64_t w) {
  return "(" + std::to_string(h) + ", " + std::to_string(w) + ")";
}

std::int64_t checked_product(std::initializer_list<std::int64_t> factors, const char* what) {
  std::int64_t n = 1;
  for (std::int64_t f : factors) {
    require(f >= 0, [&] { return std::string(what) + " has a negative dimension"; });
    require(!__builtin_mul_overflow(n, f, &n), [&] { return std::string(what) + " is too large"; });
  }
  return n;
}

void require_size(std::int64_t size, std::int64_t needed, const char* name) {
  require(size == needed, [&] {
    return std::string(name) + " must have " + std::to_string(needed) + " elements, got " + std::to_string(size);
  });
}

// Runs window(plane_x, plane_y) over every (image, channel) plane after checking the sizes.
template <class Window>
void pool(const Pool2dParams& p, const float* x, std::int64_t x_size, float* y, std::int64_t y_size, Window window) {
  std::int64_t oh = 0, ow = 0;
  pool2d_output_size(p, &oh, &ow);
  const std::int64_t planes = checked_product({p.batch, p.channels}, "x");
  require_size(x_size, checked_product({planes, p.height, p.width}, "x"), "x");
  require_size(y_size, checked_product({planes, oh, ow}, "y"), "y");
  for (std::int64_t q = 0; q < planes; ++q) {
    const float* xp = x + q * p.height * p.width;
    float* yp = y + q * oh * ow;
    for (std::int64_t i = 0; i < oh; ++i)
      for (std::int64_t j = 0; j < ow; ++j) {
        // The window in padded coordinates starts at (i sh - ph, j sw - pw); clip it to the image.
        const std::int64_t r0 = i * p.stride_h - p.padding_h, c0 = j * p.stride_w - p.padding_w;
        yp[i * ow + j] = window(xp, std::max<std::int64_t>(r0, 0), std::min(r0 + p.kernel_h, p.height),
                                std::max<std::int64_t>(c0, 0), std::min(c0 + p.kernel_w, p.width));
      }
  }
}

}  // namespace

void pool2d_output_size(const Pool2dParams& p, std::int64_t* out_h, std::int64_t* out_w) {
  require(p.batch >= 0 && p.channels >= 1 && p.height >= 1 && p.width >= 1,
          "pool input must have N >= 0 images of C >= 1 channels of H, W >= 1");
  require(p.kernel_h >= 1 && p.kernel_w >= 1 && p.stride_h >= 1 && p.stride_w >= 1,
          "kernel_size and stride must be >= 1");
  require(p.padding_h >= 0 && p.padding_w >= 0 && p.padding_h <= p.kernel_h / 2 && p.padding_w <= p.kernel_w / 2, [&] {
    return "padding must be at most half the kernel_size, got padding=" + pair_text(p.padding_h, p.padding_w) +
           " for kernel_size=" + pair_text(p.kernel_h, p.kernel_w);
  });
  require(p.height + 2 * p.padding_h >= p.kernel_h && p.width + 2 * p.padding_w >= p.kernel_w, [&] {
    return "a pool window of " + pair_text(p.kernel_h, p.kernel_w) + " with padding " +
           pair_text(p.padding_h, p.padding_w) + " does not fit images of " + pair_text(p.height, p.width);
  });
  *out_h = (p.height + 2 * p.padding_h - p.kernel_h) / p.stride_h + 1;
  *out_w = (p.width + 2 * p.padding_w - p.kernel_w) / p.stride_w + 1;
}

void max_pool2d(const Pool2dParams& p, const float* x, std::int64_t x_size, float* y, std::int64_t y_size) {
  const std::int64_t w = p.width;
  pool(p, x, x_size, y, y_size,
       [w](const float* xp, std::int64_t r0, std::int64_t r1, std::int64_t c0, std::int64_t c1) {
         float m = -std::numeric_limits<float>::infinity();  // the padding; a window always holds an image element
         for (std::int64_t r = r0; r < r1; ++r)
           for (std::int64_t c = c0; c < c1; ++c) m = std::max(m, xp[r * w + c]);
         return m;
       });
}

void avg_pool2d(const Pool2dParams& p, const float* x, std::int64_t x_size, float* y, std::int64_t y_size) {
  const std::int64_t w = p.width;
  const auto count = static_cast<float>(p.kernel_h * p.kernel_w);  // the padding counts
  pool(p, x, x_size, y, y_size,
       [w, count](const float* xp, std::int64_t r0, std::int64_t r1, std::int64_t c0, std::int64_t c1) {
         float s = 0.0f;
         for (std::int64_t r = r0; r < r1; ++r)
           for (std::int64_t c = c0; c < c1; ++c) s += xp[r * w + c];
         return s / count;
       });
}

void adaptive_avg_pool2d(std::int64_t batch, std::int64_t channels, std::int64_t height, std::int64_t width,
                         std::int64_t out_h, std::int64_t out_w, const float* x, std::int64_t x_size, float* y,
                         std::int64_t y_size) {
  require(batch >= 0 && channels >= 1 && height >= 1 && width >= 1,
          "adaptive_avg_pool2d input must have N >= 0 images of C >= 1 channels of H, W >= 1");
  require(out_h >= 1 && out_w >= 1, [&] { return "output_size must be >= 1, got " + pair_text(out_h, out_w); });
  const std::int64_t planes = checked_product({batch, channels}, "x");
  require_size(x_size, checked_product({planes, height, width}, "x"), "x");
  require_size(y_size, checked_product({planes, out_h, out_w}, "y"), "y");
  for (std::int64_t q = 0; q < planes; ++q) {
    const float* xp = x + q * height * width;
    float* yp = y + q * out_h * out_w;
    for (std::int64_t i = 0; i < out_h; ++i) {
      const std::int64_t r0 = i * height / out_h, r1 = ((i + 1) * height + out_h - 1) / out_h;
      for (std::int64_t j = 0; j < out_w; ++j) {
        const std::int64_t c0 = j * width / out_w, c1 = ((j + 1) * width + out_w - 1) / out_w;
        double s = 0.0;  // a bin may be a whole image (global pooling): sum it in float64, round once
        for (std::int64_t r = r0; r < r1; ++r)
          for (std::int64_t c = c0; c < c1; ++c) s += xp[r * width + c];
        yp[i * out_w + j] = static_cast<float>(s / static_cast<double>((r1 - r0) * (c1 - c0)));
      }
    }
  }
}

void channel_affine(std::int64_t batch, std::int64_t channels, std::int64_t plane, const float* x, const float* scale,
                    const float* shift, float* y) {
  require(batch >= 0 && channels >= 0 && plane >= 0, "channel_affine sizes must be non-negative");
  for (std::int64_t n = 0; n < batch; ++n)
    for (std::int64_t c = 0; c < channels; ++c) {
      const std::int64_t at = (n * channels + c) * plane;
      const float a = scale[c], b = shift[c];
      for (std::int64_t i = 0; i < plane; ++i) {
        const float scaled = x[at + i] * a;  // two roundings, as numpy's x * scale + shift (no FMA)
        y[at + i] = scaled + b;
      }
    }
}

void add_arrays(const float* a, const float* b, float* y, std::int64_t n) {
  require(n >= 0, "add_arrays needs n >= 0");
  for (std::int64_t i = 0; i < n; ++i) y[i] = a[i] + b[i];
}

void activate_inplace(Activation act, float* x, std::int64_t n) {
  require(n >= 0, "activate_inplace needs n >= 0");
  auto each = [&](auto f) {
    for (std::int64_t i = 0; i < n; ++i) x[i] = f(x[i]);
  };
  switch (act) {  // chosen once, so each loop is a plain map (relu vectorises)
    case Activation::relu: each([](float v) { return detail::activate(v, Activation::relu); }); break;
    case Activation::gelu: each([](float v) { return detail::activate(v, Activation::gelu); }); break;
    case Activation::tanh: each([](float v) { return detail::activate(v, Activation::tanh); }); break;
    case Activation::none: break;
  }
}

void softmax_axis0(float* x, std::int64_t rows, std::int64_t cols) {
  require(rows >= 0 && cols >= 0, "softmax_axis0 needs rows, cols >= 0");
  if (rows == 0 || cols == 0) return;
  std::vector<float> peak(x, x + cols), total(static_cast<std::size_t>(cols), 0.0f);
  for (std::int64_t r = 1; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) peak[c] = std::max(peak[c], x[r * cols + c]);
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) {
      const float e = std::exp(x[r * cols + c] - peak[c]);
      x[r * cols + c] = e;
      total[c] += e;
    }
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) x[r * cols + c] /= total[c];
}

}  // namespace htcore
