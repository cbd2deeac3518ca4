// A C entry point to htcore::sparse_conv2d for bench_conv.py (ctypes), so the kernel can be timed
// interleaved with torch's dense conv2d in one process. Benchmark use only: the Python entry point
// is htcore.sparse_conv2d (binding in cpp/bindings/conv2d.cpp).
#include <cstdio>
#include <stdexcept>

#include "conv2d.hpp"
#include "parallel.hpp"

extern "C" {

void htconv_set_num_threads(int n) { htcore::set_num_threads(n); }

// float32 values, int32 row pointers, uint16 (idx16 = 1) or int32 column indices; params =
// {N, C_in, H, W, C_out, kh, kw, sh, sw, ph, pw, dh, dw, groups}; act 0..3 = none/relu/gelu/tanh;
// algo 0..2 = automatic/direct/tiled. Returns 0, or 1 after printing the exception.
int htconv_conv2d(const int32_t* indptr, const void* indices, int idx16, const float* values, int64_t nnz,
                  const int64_t* params, const float* x, int64_t x_size, const float* bias, int act, float* y,
                  int64_t y_size, int algo) {
  try {
    htcore::Conv2dParams p;
    p.batch = params[0], p.in_channels = params[1], p.height = params[2], p.width = params[3];
    p.out_channels = params[4], p.kernel_h = params[5], p.kernel_w = params[6], p.stride_h = params[7];
    p.stride_w = params[8], p.padding_h = params[9], p.padding_w = params[10], p.dilation_h = params[11];
    p.dilation_w = params[12], p.groups = params[13];
    htcore::CsrRef a;
    a.rows = p.out_channels;
    a.cols = p.in_channels / p.groups * p.kernel_h * p.kernel_w;
    a.nnz = nnz;
    a.indptr = indptr;
    a.indices = indices;
    a.index_type = idx16 ? htcore::IndexType::u16 : htcore::IndexType::i32;
    a.data = values;
    htcore::sparse_conv2d(a, x, x_size, p, bias, bias ? p.out_channels : 0, static_cast<htcore::Activation>(act), y,
                          y_size, static_cast<htcore::Conv2dAlgo>(algo));
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "htconv_conv2d: %s\n", e.what());
    return 1;
  }
}
}
