// Sparse 2-D convolution (see conv2d.hpp).
// Design, chosen by measurement (benchmarks/conv/results.md, interleaved A/B, 1 thread; summary in
// docs/performance.md, "Sparse convolution"): the tiled
// loop (accumulators in registers) is 1.05-1.85x faster than the direct loop when the output
// plane is one tile (7x7 outputs: 1x1 and 3x3 layers, stride 1 or 2) and 1.05-1.15x on 1x1 layers
// with larger planes (no dropped columns); on larger planes with padded columns the direct loop is
// as fast or faster (1.0-1.3x; LeNet conv1 1.9-2.7x), so `automatic` takes tiled for L <= 64 or
// W_out == Wq, else direct.
//
// Both loops work on a prepared copy of each image (zero-padded, and at stride > 1 split into
// sh * sw phase planes: see prepare_planes; made by each thread into its own buffer as its items
// reach the image; no copy at stride 1 without padding), so every stride is stride 1 and no
// bounds test is left inside the loops, and on the weights decoded once per
// call into float32 values and input offsets (see decode), so the loops are the same for every
// value, index and row-pointer type. Output (oy, ox) is position j = oy * Wq + ox of a
// "padded-width" plane (Wq = the prepared row length), and a kept weight contributes
// w * xp[off + j] to every j < L = (H_out - 1) * Wq + W_out: one contiguous run, whatever the
// kernel size, padding, stride or dilation (the columns ox >= W_out are computed and dropped).
//   direct: per (image, output channel), an accumulator plane of L floats; each kept weight (4 at
//           a time) streams through it (acc[j] += w * xp[off + j]); then bias + activation.
//   tiled:  (after Elsen et al. 2020) per (image, output channel), tiles of up to 64 positions
//           held in 8 AVX2 registers, each running over the channel's kept weights (broadcast w,
//           load xp[off + j0 ..], FMA); bias + relu in registers. The 1x1 convolution is then
//           the plain SpMM out = W X in CHW layout, its tiles stored straight into the output.
//   dense:  a weight holding every entry in column order (groups 1; the runtime's dense Conv2d
//           and layers kept dense) takes this loop under `automatic`, whatever the shape: per
//           (image, block of 4 output channels), tiles of up to 24 positions in 4 x 3 registers, so
//           each input vector loaded serves 4 FMAs instead of one (1.2-1.4x the tiled loop on
//           dense 3x3 layers of 64-128 channels; benchmarks/results/conv.md, "When to keep a
//           layer dense").
// Each output element is a chain of FMAs (or multiply-adds, portable build) in CSR order starting
// from 0, then + bias, then the activation: both loops give bitwise the same result, at any
// thread count.
#include "conv2d.hpp"

#include <algorithm>
#include <atomic>
#include <limits>
#include <string>
#include <vector>

#include "csr.hpp"
#include "csr_simd.hpp"
#include "errors.hpp"
#include "parallel.hpp"

namespace htcore {
namespace {

using namespace detail;

std::atomic<bool> g_ignore_grain{false};

// Positions per tile of the tiled loop (8 AVX2 registers). (Tiles of up to 96 in 12 registers,
// interleaved A/B at 1 thread: 1.0-1.3x the time on every grid layer but LeNet conv1, where the
// direct loop runs anyway.)
constexpr std::int64_t kConvTile = 64;

// The dense loop's block: kDenseRows output channels x kDenseVectors 8-float vectors of positions
// (12 accumulators; each input vector serves 4 FMAs).
constexpr int kDenseRows = 4;
constexpr std::int64_t kDenseVectors = 3;

// The shape of one call, with the derived sizes.
struct Geometry {
  std::int64_t n, c_in, h, w, c_out, kh, kw, sh, sw, ph, pw, dh, dw, groups;
  std::int64_t cin_g, cout_g, ho, wo, hp, wp;
  // The prepared input: each channel's padded plane split into sh * sw phase planes of hq x wq,
  // phase (a, b) holding padded rows a, a + sh, ... and columns b, b + sw, ... (one phase, the
  // padded plane itself, at stride 1).
  std::int64_t hq, wq;
  std::int64_t phase;      // hq * wq
  std::int64_t plane_in;   // sh * sw * phase: one channel of the prepared input
  std::int64_t plane_out;  // ho * wo
  std::int64_t run;        // L = (ho - 1) * wq + wo

  // True when some tap (ky, kx) reads phase (a, b): (ky dh) % sh == a and (kx dw) % sw == b.
  bool phase_used(std::int64_t a, std::int64_t b) const {
    bool row = false, col = false;
    for (std::int64_t ky = 0; ky < kh && !row; ++ky) row = (ky * dh) % sh == a;
    for (std::int64_t kx = 0; kx < kw && !col; ++kx) col = (kx * dw) % sw == b;
    return row && col;
  }
};

// The weights of one call, decoded: row co's kept weights are p in [ptr[co], ptr[co + 1]),
// value val[p], input offset off[p] in its group's prepared planes.
// One per thread, kept between calls (vectors of a few hundred KiB would be fresh mmaps, with
// their page faults, on every call).
struct Decoded {
  std::vector<std::int64_t> ptr;
  std::vector<float> val;
  std::vector<std::int64_t> off;
  std::vector<std::int64_t> col_off;  // offset of each column
  bool full = false;                  // every row holds every column, in order (a dense weight)
};

#ifdef HTCORE_CSR_X86
HTCORE_AVX2_BEGIN
// The values as float32, 8 at a time (F16C conversions, codebook gathers): a scalar float16
// decode was up to 1.33x the time of a whole batch-1 convolution on 64->128 3x3 7x7 at 70%.
template <class V>
void decode_values_avx2(const Values<V>& vals, std::int64_t nnz, float* out) {
  std::int64_t p = 0;
  for (; p + 8 <= nnz; p += 8) _mm256_storeu_ps(out + p, load_val8(vals, p));
  for (; p < nnz; ++p) out[p] = load_val(vals, p);
}
HTCORE_AVX2_END
#endif

template <class Ptr, class Idx, class V>
void decode(const CsrRef& a, const Geometry& g, bool avx2, Decoded& d) {
  const Ptr* indptr = static_cast<const Ptr*>(a.indptr);
  const Idx* indices = static_cast<const Idx*>(a.indices);
  check_row_pointers(indptr, a.rows, a.nnz);
  const Values<V> vals{static_cast<decltype(Values<V>::d)>(a.data), a.codebook};
  d.ptr.resize(static_cast<std::size_t>(a.rows) + 1);
  for (std::int64_t i = 0; i <= a.rows; ++i) d.ptr[i] = static_cast<std::int64_t>(indptr[i]);
  d.val.resize(static_cast<std::size_t>(a.nnz));
  d.off.resize(static_cast<std::size_t>(a.nnz));
  // Offsets by column first (no divisions per kept weight: with three 64-bit divisions each,
  // decoding 22k weights cost ~100 us, more than a batch-1 convolution of 64->128 3x3 on 7x7).
  d.col_off.resize(static_cast<std::size_t>(a.cols));
  std::int64_t c = 0;
  for (std::int64_t ci = 0; ci < g.cin_g; ++ci)
    for (std::int64_t ky = 0; ky < g.kh; ++ky)
      for (std::int64_t kx = 0; kx < g.kw; ++kx) {
        const std::int64_t dy = ky * g.dh, dx = kx * g.dw;  // the tap's shift in the padded plane
        d.col_off[c++] = ci * g.plane_in + ((dy % g.sh) * g.sw + dx % g.sw) * g.phase + (dy / g.sh) * g.wq + dx / g.sw;
      }
  const std::uint64_t cols = static_cast<std::uint64_t>(a.cols);
  std::uint64_t bad_index = 0;  // ORed flags: the loop has no early exit
  for (std::int64_t p = 0; p < a.nnz; ++p) {
    const std::uint64_t col = static_cast<std::uint64_t>(static_cast<std::int64_t>(indices[p]));  // negative -> huge
    bad_index |= static_cast<std::uint64_t>(col >= cols);
    d.off[p] = d.col_off[col < cols ? col : 0];
  }
  require(bad_index == 0, [&] {
    return "weight column indices must lie in [0, (C_in / groups) * kh * kw) = [0, " + std::to_string(a.cols) + ")";
  });
  d.full = a.nnz == a.rows * a.cols;  // then rows hold cols entries each iff the pointers are i * cols
  for (std::int64_t i = 0; d.full && i <= a.rows; ++i) d.full = d.ptr[i] == i * a.cols;
  for (std::int64_t p = 0, c = 0; d.full && p < a.nnz; ++p, c = c + 1 == a.cols ? 0 : c + 1)
    d.full = static_cast<std::int64_t>(indices[p]) == c;
  if constexpr (std::is_same<V, std::uint8_t>::value) {
    const std::uint8_t* codes = static_cast<const std::uint8_t*>(a.data);
    std::uint8_t top = 0;
    for (std::int64_t p = 0; p < a.nnz; ++p) top = std::max(top, codes[p]);
    require(a.nnz == 0 || top < a.codebook_size, [&] {
      return "weight codes must be smaller than the codebook size " + std::to_string(a.codebook_size) + ", got " +
             std::to_string(top);
    });
  }
#ifdef HTCORE_CSR_X86
  if (avx2) return decode_values_avx2(vals, a.nnz, d.val.data());
#endif
  (void)avx2;
  for (std::int64_t p = 0; p < a.nnz; ++p) d.val[p] = static_cast<float>(vals(p));
}

template <class Ptr, class Idx>
void decode_value(const CsrRef& a, const Geometry& g, bool avx2, Decoded& d) {
  switch (a.value_type) {
    case ValueType::f32: return decode<Ptr, Idx, float>(a, g, avx2, d);
    case ValueType::f16: return decode<Ptr, Idx, Half>(a, g, avx2, d);
    case ValueType::code8: return decode<Ptr, Idx, std::uint8_t>(a, g, avx2, d);
    case ValueType::f64: break;
  }
  throw type_error("conv2d weight values must be float32, float16 or uint8 codes, not float64");
}

template <class Ptr>
void decode_index(const CsrRef& a, const Geometry& g, bool avx2, Decoded& d) {
  if (a.index_type == IndexType::u16) return decode_value<Ptr, std::uint16_t>(a, g, avx2, d);
  decode_value<Ptr, std::int32_t>(a, g, avx2, d);
}

// The bias + activation epilogue over n values, the activation chosen once (the loops vectorise).
inline void finish(float* v, std::int64_t n, const float* b, Activation act) {
  if (b)
    for (std::int64_t i = 0; i < n; ++i) v[i] += *b;
  auto each = [&](auto f) {
    for (std::int64_t i = 0; i < n; ++i) v[i] = f(v[i]);
  };
  switch (act) {
    case Activation::relu: each([](float x) { return activate(x, Activation::relu); }); break;
    case Activation::gelu: each([](float x) { return activate(x, Activation::gelu); }); break;
    case Activation::tanh: each([](float x) { return activate(x, Activation::tanh); }); break;
    case Activation::none: break;
  }
}

// Copies the padded-width plane acc (row stride acc_stride = wq) into out (ho x wo), bias +
// activation applied.
inline void store_plane(const Geometry& g, float* acc, std::int64_t acc_stride, float* out, const float* b,
                        Activation act) {
  for (std::int64_t oy = 0; oy < g.ho; ++oy) {
    float* row = acc + oy * acc_stride;
    finish(row, g.wo, b, act);
    std::copy(row, row + g.wo, out + oy * g.wo);
  }
}

// Prepares planes [q0, q1) of x (each h x w) in xp: zero-padded, and at stride > 1 split into
// phase planes (see Geometry), so that output (oy, ox) reads tap (ky, kx) at phase
// ((ky dh) % sh, (kx dw) % sw), row oy + ky dh / sh, column ox + kx dw / sw: every stride becomes
// stride 1 and the same loops serve it. (Stride 2 with the earlier scalar per-row loop:
// 4-8x slower than dense torch at 70%; see results.md.)
void prepare_planes(const Geometry& g, const float* x, float* xp, std::int64_t q0, std::int64_t q1) {
  for (std::int64_t q = q0; q < q1; ++q) {
    const float* src = x + q * g.h * g.w;
    float* dst = xp + q * g.plane_in;
    if (g.sh == 1 && g.sw == 1) {  // padding only: rows with a zero border
      std::fill(dst, dst + g.ph * g.wp, 0.0f);
      for (std::int64_t r = 0; r < g.h; ++r) {
        float* d = dst + (g.ph + r) * g.wp;
        std::fill(d, d + g.pw, 0.0f);
        std::copy(src + r * g.w, src + (r + 1) * g.w, d + g.pw);
        std::fill(d + g.pw + g.w, d + g.wp, 0.0f);
      }
      std::fill(dst + (g.ph + g.h) * g.wp, dst + g.plane_in, 0.0f);
      continue;
    }
    for (std::int64_t a = 0; a < g.sh; ++a)
      for (std::int64_t b = 0; b < g.sw; ++b) {
        if (!g.phase_used(a, b)) continue;  // no tap reads it (1x1 at stride 2: only phase (0, 0))
        float* ph = dst + (a * g.sw + b) * g.phase;
        // columns c whose input column c * sw + b - pw lies in [0, w): [c0, c1)
        const std::int64_t c0 = std::min(g.wq, g.pw > b ? (g.pw - b + g.sw - 1) / g.sw : 0);
        const std::int64_t c1 =
            std::max(c0, std::min(g.wq, g.w - 1 + g.pw - b >= 0 ? (g.w - 1 + g.pw - b) / g.sw + 1 : 0));
        for (std::int64_t r = 0; r < g.hq; ++r) {
          const std::int64_t iy = r * g.sh + a - g.ph;  // input row of padded row r * sh + a
          float* d = ph + r * g.wq;
          if (iy < 0 || iy >= g.h) {
            std::fill(d, d + g.wq, 0.0f);
            continue;
          }
          const float* s = src + iy * g.w + b - g.pw;
          std::fill(d, d + c0, 0.0f);
          for (std::int64_t c = c0; c < c1; ++c) d[c] = s[c * g.sw];
          std::fill(d + c1, d + g.wq, 0.0f);
        }
      }
  }
}

// Everything the loops need.
struct Job {
  Geometry g;
  const Decoded* d;
  const float* x;  // the input, (n, c_in, h, w)
  bool copied;     // the loops read prepared images (else x itself: stride 1, no padding)
  float* prep;     // copied: one prepared image (c_in * plane_in floats) per part
  const float* bias;
  Activation act;
  float* y;
  bool avx2;

  // Image n as the loops read it, (c_in, sh * sw, hq, wq): prepared into part's buffer (in L2 for
  // the channels that follow), or x itself.
  const float* image(std::int64_t n, int part) const {
    const float* xn = x + n * g.c_in * g.h * g.w;
    if (!copied) return xn;
    float* dst = prep + part * g.c_in * g.plane_in;
    prepare_planes(g, xn, dst, 0, g.c_in);
    return dst;
  }
  // Output channel co's group planes in a prepared image.
  const float* x_group(const float* xi, std::int64_t co) const { return xi + (co / g.cout_g) * g.cin_g * g.plane_in; }
  float* y_plane(std::int64_t n, std::int64_t co) const { return y + (n * g.c_out + co) * g.plane_out; }
  const float* b(std::int64_t co) const { return bias ? bias + co : nullptr; }
};

// ---- portable loops ----

// Direct, portable: acc (padded width, L values) += w * xp[off + j].
void direct_generic(const Job& job, const float* xi, std::int64_t n, std::int64_t co, float* acc) {
  const Geometry& g = job.g;
  const float* xg = job.x_group(xi, co);
  const std::int64_t L = g.run;
  std::fill(acc, acc + L, 0.0f);
  for (std::int64_t p = job.d->ptr[co]; p < job.d->ptr[co + 1]; ++p) {
    const float w = job.d->val[p];
    const float* xr = xg + job.d->off[p];
    for (std::int64_t j = 0; j < L; ++j) acc[j] += w * xr[j];
  }
  store_plane(g, acc, g.wq, job.y_plane(n, co), job.b(co), job.act);
}

// Stores tile positions j0 .. j0 + w of a padded-width plane (tile[t] is position j0 + t) into the
// output plane, dropping the columns ox >= wo.
// finished: bias and activation already applied.
inline void store_tile(const Job& job, std::int64_t n, std::int64_t co, std::int64_t j0, std::int64_t w, float* tile,
                       bool finished = false) {
  const Geometry& g = job.g;
  if (!finished) finish(tile, w, job.b(co), job.act);
  float* out = job.y_plane(n, co);
  if (g.wq == g.wo) {
    std::copy(tile, tile + w, out + j0);
    return;
  }
  std::int64_t oy = j0 / g.wq, ox = j0 % g.wq;
  for (std::int64_t t = 0; t < w;) {
    const std::int64_t take = std::min(w - t, g.wq - ox);  // to the end of this padded row
    if (ox < g.wo) std::copy(tile + t, tile + t + std::min(take, g.wo - ox), out + oy * g.wo + ox);
    t += take;
    ox = 0;
    ++oy;
  }
}

void tiled_generic(const Job& job, const float* xi, std::int64_t n, std::int64_t co, std::int64_t j0, std::int64_t w) {
  float tile[kConvTile] = {};
  const float* xg = job.x_group(xi, co) + j0;
  for (std::int64_t p = job.d->ptr[co]; p < job.d->ptr[co + 1]; ++p) {
    const float v = job.d->val[p];
    const float* xr = xg + job.d->off[p];
    for (std::int64_t t = 0; t < w; ++t) tile[t] += v * xr[t];
  }
  store_tile(job, n, co, j0, w, tile);
}

#ifdef HTCORE_CSR_X86
HTCORE_AVX2_BEGIN
HTCORE_ALWAYS_INLINE __m256i tail_mask(std::int64_t r) {  // lanes < r
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(r)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// bias + relu (or none) on 8 sums, as the tiled loop does in registers: + bias, then
// v < 0 ? 0 : v (like activate(): -0 stays -0).
HTCORE_ALWAYS_INLINE __m256 epilogue8(__m256 v, const float* b, bool relu) {
  if (b) v = _mm256_add_ps(v, _mm256_set1_ps(*b));
  if (relu) v = _mm256_andnot_ps(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_LT_OQ), v);
  return v;
}

// store_plane with the epilogue in registers for no activation and relu (the scalar finish per
// row was ~3.5 cycles per output: 28 us of a batch-1 3x3 64->128 14x14 call with no weights).
void store_plane_avx2(const Job& job, const float* acc, float* out, const float* b) {
  const Geometry& g = job.g;
  if (job.act != Activation::none && job.act != Activation::relu)
    return store_plane(g, const_cast<float*>(acc), g.wq, out, b, job.act);
  const bool relu = job.act == Activation::relu;
  const std::int64_t full = g.wo & ~std::int64_t(7);
  const __m256i mask = tail_mask(g.wo - full);
  for (std::int64_t oy = 0; oy < g.ho; ++oy) {
    const float* a = acc + oy * g.wq;
    float* o = out + oy * g.wo;
    std::int64_t ox = 0;
    for (; ox < full; ox += 8) _mm256_storeu_ps(o + ox, epilogue8(_mm256_loadu_ps(a + ox), b, relu));
    if (ox < g.wo) _mm256_maskstore_ps(o + ox, mask, epilogue8(_mm256_maskload_ps(a + ox, mask), b, relu));
  }
}

// Direct: four kept weights per pass over the accumulator plane (one load and one
// store of acc per four FMAs; each position's FMAs still run in CSR order).
void direct_avx2(const Job& job, const float* xi, std::int64_t n, std::int64_t co, float* acc) {
  const Geometry& g = job.g;
  const float* xg = job.x_group(xi, co);
  const std::int64_t L = g.run, full = L & ~std::int64_t(7);
  const __m256i mask = tail_mask(L - full);
  std::fill(acc, acc + L, 0.0f);
  const std::int64_t* off = job.d->off.data();
  const float* val = job.d->val.data();
  std::int64_t p = job.d->ptr[co];
  const std::int64_t end = job.d->ptr[co + 1];
  for (; p + 4 <= end; p += 4) {
    const __m256 w0 = _mm256_set1_ps(val[p]), w1 = _mm256_set1_ps(val[p + 1]), w2 = _mm256_set1_ps(val[p + 2]),
                 w3 = _mm256_set1_ps(val[p + 3]);
    const float *x0 = xg + off[p], *x1 = xg + off[p + 1], *x2 = xg + off[p + 2], *x3 = xg + off[p + 3];
    std::int64_t j = 0;
    for (; j < full; j += 8) {
      __m256 a = _mm256_loadu_ps(acc + j);
      a = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x0 + j), a);
      a = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x1 + j), a);
      a = _mm256_fmadd_ps(w2, _mm256_loadu_ps(x2 + j), a);
      a = _mm256_fmadd_ps(w3, _mm256_loadu_ps(x3 + j), a);
      _mm256_storeu_ps(acc + j, a);
    }
    if (j < L) {
      __m256 a = _mm256_maskload_ps(acc + j, mask);
      a = _mm256_fmadd_ps(w0, _mm256_maskload_ps(x0 + j, mask), a);
      a = _mm256_fmadd_ps(w1, _mm256_maskload_ps(x1 + j, mask), a);
      a = _mm256_fmadd_ps(w2, _mm256_maskload_ps(x2 + j, mask), a);
      a = _mm256_fmadd_ps(w3, _mm256_maskload_ps(x3 + j, mask), a);
      _mm256_maskstore_ps(acc + j, mask, a);
    }
  }
  for (; p < end; ++p) {
    const __m256 w0 = _mm256_set1_ps(val[p]);
    const float* x0 = xg + off[p];
    std::int64_t j = 0;
    for (; j < full; j += 8)
      _mm256_storeu_ps(acc + j, _mm256_fmadd_ps(w0, _mm256_loadu_ps(x0 + j), _mm256_loadu_ps(acc + j)));
    if (j < L)
      _mm256_maskstore_ps(acc + j, mask,
                          _mm256_fmadd_ps(w0, _mm256_maskload_ps(x0 + j, mask), _mm256_maskload_ps(acc + j, mask)));
  }
  store_plane_avx2(job, acc, job.y_plane(n, co), job.b(co));
}

// Stores the sums a[0 .. G) of positions j0 .. j0 + w of output channel co (the last register
// partial when Masked), with bias and activation; the epilogue runs in registers for no
// activation and relu (relu as v < 0 ? 0 : v, like activate(): -0 stays -0).
template <int G, bool Masked>
HTCORE_ALWAYS_INLINE void store_registers(const Job& job, std::int64_t n, std::int64_t co, std::int64_t j0,
                                          std::int64_t w, __m256* a, __m256i mask) {
  const bool in_registers = job.act == Activation::none || job.act == Activation::relu;
  if (in_registers) {
    for (int i = 0; i < G; ++i) a[i] = epilogue8(a[i], job.b(co), job.act == Activation::relu);
    if (job.g.wq == job.g.wo) {  // the output plane is the padded-width plane: store straight into it
      float* out = job.y_plane(n, co) + j0;
      for (int i = 0; i < G; ++i) {
        if (Masked && i == G - 1) _mm256_maskstore_ps(out + 8 * i, mask, a[i]);
        else _mm256_storeu_ps(out + 8 * i, a[i]);
      }
      return;
    }
  }
  alignas(32) float tile[kConvTile];
  for (int i = 0; i < G; ++i) _mm256_store_ps(tile + 8 * i, a[i]);
  store_tile(job, n, co, j0, w, tile, in_registers);
}

// Tiled: positions j0 .. j0 + w (w <= 8 G) of output channel co in G registers. Masked: the last
// register is partial (masked loads never read past the input's planes).
template <int G, bool Masked>
void tile_row_avx2(const Job& job, const float* xi, std::int64_t n, std::int64_t co, std::int64_t j0, std::int64_t w) {
  const __m256i mask = tail_mask(w - 8 * (G - 1));
  __m256 a[G];
  for (int i = 0; i < G; ++i) a[i] = _mm256_setzero_ps();
  const float* xg = job.x_group(xi, co) + j0;
  const std::int64_t* off = job.d->off.data();
  const float* val = job.d->val.data();
  const std::int64_t end = job.d->ptr[co + 1];
  for (std::int64_t p = job.d->ptr[co]; p < end; ++p) {
    const __m256 v = _mm256_set1_ps(val[p]);
    const float* xr = xg + off[p];
    for (int i = 0; i < G; ++i)
      a[i] = _mm256_fmadd_ps(
          v, Masked && i == G - 1 ? _mm256_maskload_ps(xr + 8 * i, mask) : _mm256_loadu_ps(xr + 8 * i), a[i]);
  }
  store_registers<G, Masked>(job, n, co, j0, w, a, mask);
}

template <int G>
void tile_row_g_avx2(const Job& job, const float* xi, std::int64_t n, std::int64_t co, std::int64_t j0,
                     std::int64_t w) {
  if (w % 8) return tile_row_avx2<G, true>(job, xi, n, co, j0, w);
  tile_row_avx2<G, false>(job, xi, n, co, j0, w);
}

void tiled_avx2(const Job& job, const float* xi, std::int64_t n, std::int64_t co, std::int64_t j0, std::int64_t w) {
  static_assert(kConvTile == 64, "tiles are up to 8 registers");
  switch ((w + 7) / 8) {
    case 1: return tile_row_g_avx2<1>(job, xi, n, co, j0, w);
    case 2: return tile_row_g_avx2<2>(job, xi, n, co, j0, w);
    case 3: return tile_row_g_avx2<3>(job, xi, n, co, j0, w);
    case 4: return tile_row_g_avx2<4>(job, xi, n, co, j0, w);
    case 5: return tile_row_g_avx2<5>(job, xi, n, co, j0, w);
    case 6: return tile_row_g_avx2<6>(job, xi, n, co, j0, w);
    case 7: return tile_row_g_avx2<7>(job, xi, n, co, j0, w);
    default: return tile_row_g_avx2<8>(job, xi, n, co, j0, w);
  }
}

// Dense weight (every row holds every column, in order; groups 1): R <= kDenseRows output channels
// co .. co + R at once over positions j0 .. j0 + w in R x G registers, so each input vector loaded
// serves R FMAs (the tiled loop loads an input vector and broadcasts a weight for every FMA).
// Each output is still the FMA chain over the columns in order from 0: bitwise the tiled loop's.
template <int R, int G, bool Masked>
void dense_tile_avx2(const Job& job, const float* xi, std::int64_t n, std::int64_t co, std::int64_t j0,
                     std::int64_t w) {
  const __m256i mask = tail_mask(w - 8 * (G - 1));
  __m256 a[R][G];
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < G; ++i) a[r][i] = _mm256_setzero_ps();
  const std::int64_t cols = job.g.cin_g * job.g.kh * job.g.kw;
  const std::int64_t* off = job.d->col_off.data();
  const float* weights = job.d->val.data() + co * cols;
  const float* xg = xi + j0;
  for (std::int64_t c = 0; c < cols; ++c) {
    const float* xr = xg + off[c];
    __m256 xv[G];
    for (int i = 0; i < G; ++i)
      xv[i] = Masked && i == G - 1 ? _mm256_maskload_ps(xr + 8 * i, mask) : _mm256_loadu_ps(xr + 8 * i);
    for (int r = 0; r < R; ++r) {
      const __m256 v = _mm256_set1_ps(weights[r * cols + c]);
      for (int i = 0; i < G; ++i) a[r][i] = _mm256_fmadd_ps(v, xv[i], a[r][i]);
    }
  }
  for (int r = 0; r < R; ++r) store_registers<G, Masked>(job, n, co + r, j0, w, a[r], mask);
}

template <int R, int G>
void dense_tile_g_avx2(const Job& job, const float* xi, std::int64_t n, std::int64_t co, std::int64_t j0,
                       std::int64_t w) {
  if (w % 8) return dense_tile_avx2<R, G, true>(job, xi, n, co, j0, w);
  dense_tile_avx2<R, G, false>(job, xi, n, co, j0, w);
}

template <int R>
void dense_tile_r_avx2(const Job& job, const float* xi, std::int64_t n, std::int64_t co, std::int64_t j0,
                       std::int64_t w) {
  static_assert(kDenseVectors == 3, "dense tiles are up to 3 registers per channel");
  switch ((w + 7) / 8) {
    case 1: return dense_tile_g_avx2<R, 1>(job, xi, n, co, j0, w);
    case 2: return dense_tile_g_avx2<R, 2>(job, xi, n, co, j0, w);
    default: return dense_tile_g_avx2<R, 3>(job, xi, n, co, j0, w);
  }
}

void dense_avx2(const Job& job, const float* xi, std::int64_t n, std::int64_t co, std::int64_t rows, std::int64_t j0,
                std::int64_t w) {
  static_assert(kDenseRows == 4, "dense blocks are up to 4 channels");
  switch (rows) {
    case 1: return dense_tile_r_avx2<1>(job, xi, n, co, j0, w);
    case 2: return dense_tile_r_avx2<2>(job, xi, n, co, j0, w);
    case 3: return dense_tile_r_avx2<3>(job, xi, n, co, j0, w);
    default: return dense_tile_r_avx2<4>(job, xi, n, co, j0, w);
  }
}
HTCORE_AVX2_END
#endif  // HTCORE_CSR_X86

// Items t in [t0, t1) are (image, output channel) pairs t = n * c_out + co; part's images are
// prepared as its items reach them.
void run_direct(const Job& job, int part, std::int64_t t0, std::int64_t t1) {
  const Geometry& g = job.g;
  float* acc = kept_buffer<struct DirectAcc, float>(static_cast<std::size_t>(g.run));
  const float* xi = nullptr;
  for (std::int64_t t = t0; t < t1; ++t) {
    const std::int64_t n = t / g.c_out, co = t % g.c_out;
    if (t == t0 || co == 0) xi = job.image(n, part);
#ifdef HTCORE_CSR_X86
    if (job.avx2) {
      direct_avx2(job, xi, n, co, acc);
      continue;
    }
#endif
    direct_generic(job, xi, n, co, acc);
  }
}

// Each (image, output channel) item's tiles in turn, so each output plane is
// written front to back. (Tiles outer and the share's channels inner, as Elsen et al. do to keep
// the tile's input in L1, measured 1.2-1.5x slower at batch 32 on 1x1 64->128 14x14 (each tile
// writes pieces of 128 planes) and no faster at batch 1; blocks of 4 or 16 channels in between.)
void run_tiled(const Job& job, int part, std::int64_t t0, std::int64_t t1) {
  const Geometry& g = job.g;
  // The run's 8-value vectors dealt evenly over ceil(L / 64) tiles: a short last tile would be one
  // FMA chain per kept weight, latency-bound, as slow as a full tile (L = 196: 64+64+64+4 -> 56+56+56+28).
  const std::int64_t vectors = (g.run + 7) / 8, tiles = (g.run + kConvTile - 1) / kConvTile;
  const float* xi = nullptr;
  for (std::int64_t t = t0; t < t1; ++t) {
    const std::int64_t n = t / g.c_out, co = t % g.c_out;
    if (t == t0 || co == 0) xi = job.image(n, part);
    for (std::int64_t tile = 0; tile < tiles; ++tile) {
      const std::int64_t j0 = 8 * (vectors * tile / tiles), j1 = std::min(g.run, 8 * (vectors * (tile + 1) / tiles));
#ifdef HTCORE_CSR_X86
      if (job.avx2) {
        tiled_avx2(job, xi, n, co, j0, j1 - j0);
        continue;
      }
#endif
      tiled_generic(job, xi, n, co, j0, j1 - j0);
    }
  }
}

#ifdef HTCORE_CSR_X86
// Items t in [t0, t1) are (image, block of kDenseRows output channels) pairs; tiles of up to
// kDenseVectors vectors, the run's vectors dealt evenly over them (see run_tiled).
void run_dense(const Job& job, int part, std::int64_t t0, std::int64_t t1) {
  const Geometry& g = job.g;
  const std::int64_t blocks = (g.c_out + kDenseRows - 1) / kDenseRows;
  const std::int64_t vectors = (g.run + 7) / 8, tiles = (vectors + kDenseVectors - 1) / kDenseVectors;
  const float* xi = nullptr;
  for (std::int64_t t = t0; t < t1; ++t) {
    const std::int64_t n = t / blocks, co = t % blocks * kDenseRows;
    if (t == t0 || co == 0) xi = job.image(n, part);
    for (std::int64_t tile = 0; tile < tiles; ++tile) {
      const std::int64_t j0 = 8 * (vectors * tile / tiles), j1 = std::min(g.run, 8 * (vectors * (tile + 1) / tiles));
      dense_avx2(job, xi, n, co, std::min<std::int64_t>(kDenseRows, g.c_out - co), j0, j1 - j0);
    }
  }
}
#endif

// a * b into *out; false on int64 overflow.
inline bool mul(std::int64_t a, std::int64_t b, std::int64_t* out) { return !__builtin_mul_overflow(a, b, out); }

Geometry geometry(const Conv2dParams& p) {
  require(p.batch >= 0, [&] { return "batch must be >= 0, got " + std::to_string(p.batch); });
  require(p.in_channels >= 1, [&] { return "in_channels must be >= 1, got " + std::to_string(p.in_channels); });
  require(p.out_channels >= 1, [&] { return "out_channels must be >= 1, got " + std::to_string(p.out_channels); });
  require(p.height >= 1 && p.width >= 1, [&] {
    return "input height and width must be >= 1, got " + std::to_string(p.height) + " x " + std::to_string(p.width);
  });
  require(p.kernel_h >= 1 && p.kernel_w >= 1, [&] {
    return "kernel size must be >= 1, got " + std::to_string(p.kernel_h) + " x " + std::to_string(p.kernel_w);
  });
  require(p.stride_h >= 1 && p.stride_w >= 1, [&] {
    return "stride must be >= 1, got (" + std::to_string(p.stride_h) + ", " + std::to_string(p.stride_w) + ")";
  });
  require(p.padding_h >= 0 && p.padding_w >= 0, [&] {
    return "padding must be >= 0, got (" + std::to_string(p.padding_h) + ", " + std::to_string(p.padding_w) + ")";
  });
  require(p.dilation_h >= 1 && p.dilation_w >= 1, [&] {
    return "dilation must be >= 1, got (" + std::to_string(p.dilation_h) + ", " + std::to_string(p.dilation_w) + ")";
  });
  require(p.groups >= 1, [&] { return "groups must be >= 1, got " + std::to_string(p.groups); });
  require(p.in_channels % p.groups == 0 && p.out_channels % p.groups == 0, [&] {
    return "groups = " + std::to_string(p.groups) + " must divide in_channels = " + std::to_string(p.in_channels) +
           " and out_channels = " + std::to_string(p.out_channels);
  });
  Geometry g{};
  g.n = p.batch, g.c_in = p.in_channels, g.h = p.height, g.w = p.width, g.c_out = p.out_channels;
  g.kh = p.kernel_h, g.kw = p.kernel_w, g.sh = p.stride_h, g.sw = p.stride_w, g.ph = p.padding_h, g.pw = p.padding_w;
  g.dh = p.dilation_h, g.dw = p.dilation_w, g.groups = p.groups;
  g.cin_g = g.c_in / g.groups, g.cout_g = g.c_out / g.groups;
  // Padded size and the dilated kernel's extent, overflow-checked (caller-given numbers).
  std::int64_t span_h, span_w;
  const bool overflow = __builtin_mul_overflow(g.ph, 2, &g.hp) || __builtin_add_overflow(g.hp, g.h, &g.hp) ||
                        __builtin_mul_overflow(g.pw, 2, &g.wp) || __builtin_add_overflow(g.wp, g.w, &g.wp) ||
                        !mul(g.dh, g.kh - 1, &span_h) || !mul(g.dw, g.kw - 1, &span_w) ||
                        !mul(g.hp, g.wp, &g.plane_in);  // (an upper bound of the checks below)
  require(!overflow, "conv2d sizes overflow int64 (padding, dilation or input size too large)");
  require(span_h < g.hp && span_w < g.wp, [&] {
    return "kernel extent dilation * (kernel - 1) + 1 = " + std::to_string(span_h + 1) + " x " +
           std::to_string(span_w + 1) + " exceeds the padded input " + std::to_string(g.hp) + " x " +
           std::to_string(g.wp) + ": the output would be empty";
  });
  g.ho = (g.hp - span_h - 1) / g.sh + 1;
  g.wo = (g.wp - span_w - 1) / g.sw + 1;
  g.plane_out = g.ho * g.wo;
  g.hq = g.hp / g.sh + (g.hp % g.sh != 0);
  g.wq = g.wp / g.sw + (g.wp % g.sw != 0);
  require(mul(g.hq, g.wq, &g.phase) && mul(g.phase, g.sh, &g.plane_in) && mul(g.plane_in, g.sw, &g.plane_in),
          "conv2d sizes overflow int64 (stride or input size too large)");
  g.run = (g.ho - 1) * g.wq + g.wo;
  return g;
}

}  // namespace

void conv2d_ignore_parallel_grain(bool ignore) { g_ignore_grain.store(ignore, std::memory_order_relaxed); }

void conv2d_output_size(const Conv2dParams& p, std::int64_t* out_h, std::int64_t* out_w) {
  const Geometry g = geometry(p);
  *out_h = g.ho;
  *out_w = g.wo;
}

void sparse_conv2d(const CsrRef& weight, const float* x, std::int64_t x_size, const Conv2dParams& p, const float* bias,
                   std::int64_t bias_size, Activation act, float* y, std::int64_t y_size, Conv2dAlgo algo) {
  const Geometry g = geometry(p);
  std::int64_t cols, x_needed, y_needed, xp_needed;
  require(mul(g.cin_g, g.kh, &cols) && mul(cols, g.kw, &cols),
          "weight columns (C_in / groups) * kh * kw overflow int64");
  require(weight.rows == g.c_out && weight.cols == cols, [&] {
    return "weight must be a (C_out, (C_in / groups) * kh * kw) = (" + std::to_string(g.c_out) + ", " +
           std::to_string(cols) + ") matrix, got (" + std::to_string(weight.rows) + ", " + std::to_string(weight.cols) +
           ")";
  });
  require(weight.nnz >= 0, "weight nnz must be non-negative");
  require(weight.index_type != IndexType::u16 || weight.cols <= 65536, "uint16 column indices need cols <= 65536");
  require(weight.value_type != ValueType::code8 ||
              (weight.codebook != nullptr && weight.codebook_size >= 1 && weight.codebook_size <= 256),
          "codebook values need a codebook of 1 to 256 levels");
  require(weight.indptr != nullptr && (weight.nnz == 0 || (weight.indices != nullptr && weight.data != nullptr)),
          "weight arrays must not be null");
  require(mul(g.n, g.c_in, &x_needed) && mul(x_needed, g.h, &x_needed) && mul(x_needed, g.w, &x_needed),
          "input size N * C_in * H * W overflows int64");
  require(x_size == x_needed, [&] {
    return "x must have N * C_in * H * W = " + std::to_string(x_needed) + " elements, got " + std::to_string(x_size);
  });
  require(bias == nullptr || bias_size == g.c_out, [&] {
    return "bias must have C_out = " + std::to_string(g.c_out) + " elements, got " + std::to_string(bias_size);
  });
  require(mul(g.n, g.c_out, &y_needed) && mul(y_needed, g.plane_out, &y_needed),
          "output size N * C_out * H_out * W_out overflows int64");
  require(y_size == y_needed, [&] {
    return "output must have N * C_out * H_out * W_out = " + std::to_string(g.n) + " * " + std::to_string(g.c_out) +
           " * " + std::to_string(g.ho) + " * " + std::to_string(g.wo) + " = " + std::to_string(y_needed) +
           " elements, got " + std::to_string(y_size);
  });
  require(mul(g.n, g.c_in, &xp_needed) && mul(xp_needed, g.plane_in, &xp_needed),
          "prepared input size N * C_in * (H + 2 ph) * (W + 2 pw) (rounded up to strides) overflows int64");
  require((x != nullptr || x_needed == 0) && (y != nullptr || y_needed == 0), "x and the output must not be null");

  const bool avx2 = csr_uses_avx2();
  thread_local Decoded d;
  if (weight.indptr_type == IndptrType::i32) decode_index<std::int32_t>(weight, g, avx2, d);
  else decode_index<std::int64_t>(weight, g, avx2, d);
  if (bias) require_finite(bias, g.c_out, "bias", avx2);
  if (g.n == 0) return;

  // automatic: see the top of this file and benchmarks/conv/results.md.
  // tiled when the padded-width plane is one tile (the direct loop's passes over it are too short
  // to hide the FMA latency) or has no dropped columns (tiles store straight into the output).
  const bool use_tiled =
      algo == Conv2dAlgo::tiled || (algo == Conv2dAlgo::automatic && (g.run <= kConvTile || g.wq == g.wo));
  // A dense weight (every entry kept, e.g. a layer kept dense by the runtime) runs the dense loop:
  // 4 output channels per pass over the input (measured in benchmarks/results/conv.md).
  const bool use_dense = algo == Conv2dAlgo::automatic && avx2 && d.full && g.groups == 1;
  // Items: (image, output channel) pairs, or (image, block of kDenseRows channels) for the dense
  // loop; split between threads by kept weights (+1 per item for its stores), as csr_spmm splits
  // rows by nnz. Threads: csr_threads's grain on (nnz + rows) * H_out W_out.
  const std::int64_t blocks = use_dense ? (g.c_out + kDenseRows - 1) / kDenseRows : g.c_out;
  const std::int64_t items = g.n * blocks;
  std::int64_t all_nnz;
  if (!mul(g.n, weight.nnz, &all_nnz)) all_nnz = std::numeric_limits<std::int64_t>::max() / 2;
  const int threads =
      g_ignore_grain.load(std::memory_order_relaxed) ? num_threads() : csr_threads(g.n * g.c_out, all_nnz, g.plane_out);
  // Parts are chunks on htcore's pool, as the CSR products' (see csr_spmm): a late thread holds up
  // nobody. Up to kChunksPerThread per thread when the batch has an image per part; fewer on small
  // batches, where each extra part would prepare (copy) the same image once more.
  const std::int64_t per_thread = std::clamp<std::int64_t>(g.n / threads, 1, kChunksPerThread);
  const int parts = static_cast<int>(std::min<std::int64_t>(threads * per_thread, items));
  std::vector<std::int64_t> bounds(parts + 1);
  if (parts > 1) {
    std::vector<std::int64_t> prefix(static_cast<std::size_t>(items) + 1);
    const std::int64_t per_image = weight.nnz + g.c_out;
    for (std::int64_t t = 0; t <= items; ++t) {
      const std::int64_t n = t / blocks, co = std::min(g.c_out, t % blocks * (use_dense ? kDenseRows : 1));
      prefix[t] = n * per_image + d.ptr[co] + co;
    }
    split_rows_by_nnz(prefix.data(), items, parts, bounds.data());
  } else {
    bounds[0] = 0, bounds[1] = items;
  }
  // Stride 1 without padding: the loops read x. Else each part prepares (pads, splits into
  // phases) the images of its items one at a time into its own buffer, just before their channels
  // are computed (in L2 then). (Preparing the whole batch up front wrote and re-read a copy of the
  // batch from outside L2: results.md, "Fixed costs".)
  const bool copied = g.ph > 0 || g.pw > 0 || g.sh > 1 || g.sw > 1;
  std::vector<float> owned;
  float* prep = nullptr;
  if (copied) {
    std::int64_t prep_size;  // (parts may exceed N: checked)
    require(mul(parts, g.c_in, &prep_size) && mul(prep_size, g.plane_in, &prep_size),
            "conv2d prepared-input buffers overflow int64");
    constexpr std::int64_t kKeptBytes = std::int64_t(4) << 20;
    if (prep_size * std::int64_t(sizeof(float)) <= kKeptBytes) {
      prep = kept_buffer<struct PreparedImages, float>(static_cast<std::size_t>(prep_size));
    } else {
      owned.resize(static_cast<std::size_t>(prep_size));
      prep = owned.data();
    }
  }
  const Job job{g, &d, x, copied, prep, bias, act, y, avx2};
  auto compute = [&](std::int64_t part) {
#ifdef HTCORE_CSR_X86
    if (use_dense) return run_dense(job, part, bounds[part], bounds[part + 1]);
#endif
    if (use_tiled) run_tiled(job, part, bounds[part], bounds[part + 1]);
    else run_direct(job, part, bounds[part], bounds[part + 1]);
  };
  // Each chunk checks its share of x for NaN/Inf; no chunk computes until every share has
  // passed (so nothing is written on a refused input).
  std::atomic<bool> x_finite{true};
  const std::int64_t planes = g.n * g.c_in;
  auto prepare = [&](std::int64_t part) {
    const std::int64_t q0 = planes * part / parts, q1 = planes * (part + 1) / parts;
    if (!finite(x + q0 * g.h * g.w, (q1 - q0) * g.h * g.w, avx2)) x_finite.store(false, std::memory_order_relaxed);
  };
  auto require_x_finite = [&] { require(x_finite.load(), [] { return non_finite_message("X"); }); };
  if (parts == 1) {
    prepare(0);
    require_x_finite();
    compute(0);
    return;
  }
  const std::int64_t work = product_work(g.n * g.c_out, all_nnz, g.plane_out);
  parallel_chunks(threads, parts, work, prepare);
  if (x_finite.load(std::memory_order_relaxed)) parallel_chunks(threads, parts, work, compute);
  require_x_finite();
}

}  // namespace htcore
