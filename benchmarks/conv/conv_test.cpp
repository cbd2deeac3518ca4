// Standalone test and timing harness for htcore::sparse_conv2d (cpp/conv2d.cpp).
//
//   conv_test [--cases N] [--seed S]      random shapes against a float64 reference (default)
//   conv_test --bench [--budget SEC] [--layer SUBSTRING] [--threads T]
//                                         direct vs tiled vs the dense weight, interleaved
//   conv_test --formats [--budget SEC] [--threads T]
//                                         value / index formats against float32 + uint16, interleaved
//
// Test: every case runs both loops (direct, tiled) and the automatic choice, with the AVX2 path
// on and off, at 1 and 2 threads (the parallel grain ignored, so small shapes split too); each
// result must be within 1e-5 of the float64 reference (relative to sum |w x| + |bias|, the scale
// of the float32 rounding), bitwise equal between 1 and 2 threads, and (AVX2 and portable
// paths) bitwise equal between the two loops and the automatic choice (the dense loop for a full
// weight). Then argument errors: each must throw with the argument's name.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "conv2d.hpp"
#include "csr.hpp"
#include "csr_simd.hpp"
#include "errors.hpp"
#include "parallel.hpp"

using namespace htcore;

namespace {

std::mt19937_64 rng;
double uniform(double a, double b) { return std::uniform_real_distribution<double>(a, b)(rng); }
int64_t randint(int64_t a, int64_t b) { return std::uniform_int_distribution<int64_t>(a, b)(rng); }

// A random sparse weight in every storage format, and its effective values (what the kernel
// must multiply by) as a dense float64 matrix.
struct Weight {
  int64_t rows = 0, cols = 0;
  std::vector<int32_t> ptr32, idx32;
  std::vector<int64_t> ptr64;
  std::vector<uint16_t> idx16, f16;
  std::vector<float> f32, codebook;
  std::vector<uint8_t> codes;
  std::vector<double> dense[3];  // by ValueType: f32, f16, code8 (index 0, 1, 2)

  // density: fraction of kept weights; empty_rows: fraction of rows with none.
  Weight(int64_t r, int64_t c, double density, double empty_rows) : rows(r), cols(c) {
    for (auto& d : dense) d.assign(r * c, 0.0);
    const int levels = static_cast<int>(randint(1, 256));
    for (int i = 0; i < levels; ++i) codebook.push_back(static_cast<float>(uniform(-1, 1)));
    ptr32.push_back(0);
    ptr64.push_back(0);
    for (int64_t i = 0; i < r; ++i) {
      const bool empty = uniform(0, 1) < empty_rows;
      for (int64_t j = 0; j < c; ++j) {
        if (empty || uniform(0, 1) >= density) continue;
        idx32.push_back(static_cast<int32_t>(j));
        idx16.push_back(static_cast<uint16_t>(j));
        const float v = static_cast<float>(uniform(-1, 1));
        f32.push_back(v);
        // binary16 with exponent 10..17 (2^-5 .. 2^2) and a random sign and mantissa
        const uint16_t h = static_cast<uint16_t>((randint(0, 1) << 15) | (randint(10, 17) << 10) | randint(0, 1023));
        f16.push_back(h);
        const uint8_t code = static_cast<uint8_t>(randint(0, levels - 1));
        codes.push_back(code);
        dense[0][i * c + j] = v;
        dense[1][i * c + j] = detail::half_to_float(h);
        dense[2][i * c + j] = codebook[code];
      }
      ptr32.push_back(static_cast<int32_t>(idx32.size()));
      ptr64.push_back(static_cast<int64_t>(idx32.size()));
    }
  }
  int64_t nnz() const { return static_cast<int64_t>(idx32.size()); }
  CsrRef ref(ValueType vt, IndexType it, IndptrType pt) const {
    CsrRef a;
    a.rows = rows, a.cols = cols, a.nnz = nnz();
    a.indptr_type = pt;
    a.indptr = pt == IndptrType::i32 ? static_cast<const void*>(ptr32.data()) : ptr64.data();
    a.index_type = it;
    a.indices = it == IndexType::u16 ? static_cast<const void*>(idx16.data()) : idx32.data();
    a.value_type = vt;
    a.data = vt == ValueType::f32 ? static_cast<const void*>(f32.data())
             : vt == ValueType::f16 ? static_cast<const void*>(f16.data())
                                    : codes.data();
    a.codebook = codebook.data();
    a.codebook_size = static_cast<int64_t>(codebook.size());
    return a;
  }
};

int vt_slot(ValueType vt) { return vt == ValueType::f32 ? 0 : vt == ValueType::f16 ? 1 : 2; }

double act_ref(double v, Activation act) {
  switch (act) {
    case Activation::relu: return v < 0 ? 0 : v;
    case Activation::gelu: return 0.5 * v * (1 + std::erf(v / std::sqrt(2.0)));
    case Activation::tanh: return std::tanh(v);
    case Activation::none: break;
  }
  return v;
}

// Naive float64 convolution (torch's definition), and per output the scale sum |w x| + |bias|.
void reference(const Conv2dParams& p, int64_t ho, int64_t wo, const std::vector<double>& w, const std::vector<float>& x,
               const float* bias, Activation act, std::vector<double>& out, std::vector<double>& scale) {
  const int64_t cig = p.in_channels / p.groups, cog = p.out_channels / p.groups;
  out.assign(p.batch * p.out_channels * ho * wo, 0.0);
  scale.assign(out.size(), 0.0);
  for (int64_t n = 0; n < p.batch; ++n)
    for (int64_t co = 0; co < p.out_channels; ++co) {
      const int64_t g = co / cog;
      for (int64_t oy = 0; oy < ho; ++oy)
        for (int64_t ox = 0; ox < wo; ++ox) {
          double s = 0, a = 0;
          for (int64_t ci = 0; ci < cig; ++ci)
            for (int64_t ky = 0; ky < p.kernel_h; ++ky)
              for (int64_t kx = 0; kx < p.kernel_w; ++kx) {
                const int64_t iy = oy * p.stride_h - p.padding_h + ky * p.dilation_h;
                const int64_t ix = ox * p.stride_w - p.padding_w + kx * p.dilation_w;
                if (iy < 0 || iy >= p.height || ix < 0 || ix >= p.width) continue;
                const double wv = w[co * cig * p.kernel_h * p.kernel_w + (ci * p.kernel_h + ky) * p.kernel_w + kx];
                const double xv = x[((n * p.in_channels + g * cig + ci) * p.height + iy) * p.width + ix];
                s += wv * xv;
                a += std::fabs(wv * xv);
              }
          const double b = bias ? bias[co] : 0.0;
          const size_t o = ((n * p.out_channels + co) * ho + oy) * wo + ox;
          out[o] = act_ref(s + b, act);
          scale[o] = a + std::fabs(b);
        }
    }
}

const char* algo_name(Conv2dAlgo a) {
  return a == Conv2dAlgo::direct ? "direct" : a == Conv2dAlgo::tiled ? "tiled" : "auto";
}

int run_tests(int cases, uint64_t seed) {
  rng.seed(seed);
  const bool has_avx2 = csr_uses_avx2();
  conv2d_ignore_parallel_grain(true);
  int failures = 0, empty_output_cases = 0, ran = 0;
  long long outputs_checked = 0, two_loop_mismatch = 0;
  double worst = 0;
  int by_format[3] = {0, 0, 0};
  for (int c = 0; c < cases; ++c) {
    Conv2dParams p;
    const int kind = static_cast<int>(randint(0, 9));
    int64_t cig = randint(1, 6), cog = randint(1, 6);
    p.groups = 1;
    if (kind < 3) {  // depthwise (channel multiplier 1 or 2)
      p.groups = randint(1, 8);
      cig = 1;
      cog = randint(1, 2);
    } else if (kind < 5) {
      p.groups = randint(2, 4);
    }
    p.in_channels = cig * p.groups, p.out_channels = cog * p.groups;
    p.batch = randint(1, 8);
    p.kernel_h = randint(1, 5), p.kernel_w = randint(1, 5);
    p.stride_h = randint(1, 3), p.stride_w = randint(1, 3);
    if (randint(0, 2) == 0) p.stride_h = p.stride_w = 1;  // the common case, more often
    p.padding_h = randint(0, 2), p.padding_w = randint(0, 2);
    p.dilation_h = randint(1, 2), p.dilation_w = randint(1, 2);
    p.height = randint(1, 12), p.width = randint(1, 12);
    if (kind == 9) p.height = p.width = 1, p.batch = 1;  // one-element planes
    if (randint(0, 4) == 0) {  // long rows: more than one 64-position tile
      p.height = randint(8, 24), p.width = randint(8, 40);
    }
    int64_t ho = 0, wo = 0;
    try {
      conv2d_output_size(p, &ho, &wo);
    } catch (const std::invalid_argument&) {
      ++empty_output_cases;  // kernel larger than the padded input: must throw from the kernel too
      Weight w(p.out_channels, cig * p.kernel_h * p.kernel_w, 0.5, 0);
      std::vector<float> x(p.batch * p.in_channels * p.height * p.width, 1.0f), y(1);
      bool threw = false;
      try {
        sparse_conv2d(w.ref(ValueType::f32, IndexType::i32, IndptrType::i32), x.data(), x.size(), p, nullptr, 0,
                      Activation::none, y.data(), 1);
      } catch (const std::invalid_argument& e) {
        threw = std::strstr(e.what(), "kernel extent") != nullptr;
      }
      if (!threw) {
        ++failures;
        std::printf("FAIL case %d: empty output did not throw the kernel-extent error\n", c);
      }
      continue;
    }
    const double densities[] = {0.0, 0.05, 0.3, 0.7, 1.0};
    const double density = densities[randint(0, 4)];
    Weight w(p.out_channels, cig * p.kernel_h * p.kernel_w, density, randint(0, 2) == 0 ? 0.3 : 0.0);
    std::vector<float> x(p.batch * p.in_channels * p.height * p.width);
    for (auto& v : x) v = static_cast<float>(uniform(-1, 1));
    std::vector<float> bias(p.out_channels);
    for (auto& v : bias) v = static_cast<float>(uniform(-1, 1));
    const bool with_bias = randint(0, 1) == 1;
    const Activation act = static_cast<Activation>(randint(0, 3));
    const ValueType vt = std::vector<ValueType>{ValueType::f32, ValueType::f16, ValueType::code8}[randint(0, 2)];
    ++by_format[vt_slot(vt)];
    const IndexType it = randint(0, 1) ? IndexType::u16 : IndexType::i32;
    const IndptrType pt = randint(0, 1) ? IndptrType::i32 : IndptrType::i64;
    std::vector<double> ref, scale;
    reference(p, ho, wo, w.dense[vt_slot(vt)], x, with_bias ? bias.data() : nullptr, act, ref, scale);
    const CsrRef a = w.ref(vt, it, pt);
    const size_t ysize = ref.size();
    for (int use_avx2 = has_avx2 ? 1 : 0; use_avx2 >= 0; --use_avx2) {
      csr_enable_avx2(use_avx2 == 1);
      std::vector<std::vector<float>> loops;  // direct, tiled, automatic: for the bitwise comparison
      for (Conv2dAlgo algo : {Conv2dAlgo::direct, Conv2dAlgo::tiled, Conv2dAlgo::automatic}) {
        std::vector<float> y1(ysize, NAN), y2(ysize, NAN);
        for (int threads : {1, 2}) {
          set_num_threads(threads);
          sparse_conv2d(a, x.data(), x.size(), p, with_bias ? bias.data() : nullptr, with_bias ? p.out_channels : 0, act,
                        threads == 1 ? y1.data() : y2.data(), ysize, algo);
        }
        ++ran;
        double case_worst = 0;
        for (size_t i = 0; i < ysize; ++i) {
          const double err = std::fabs(y1[i] - ref[i]) / std::max(scale[i], 1e-30);
          case_worst = std::max(case_worst, std::isnan(err) ? INFINITY : err);
        }
        worst = std::max(worst, case_worst);
        outputs_checked += ysize;
        const bool bitwise = std::memcmp(y1.data(), y2.data(), ysize * sizeof(float)) == 0;
        if (case_worst > 1e-5 || !bitwise) {
          ++failures;
          std::printf(
              "FAIL case %d (%s, avx2 %d): N=%lld C_in=%lld C_out=%lld groups=%lld %lldx%lld k=%lldx%lld s=(%lld,%lld) "
              "p=(%lld,%lld) d=(%lld,%lld) nnz=%lld: rel err %.3g, 1 vs 2 threads bitwise %s\n",
              c, algo_name(algo), use_avx2, (long long)p.batch, (long long)p.in_channels, (long long)p.out_channels,
              (long long)p.groups, (long long)p.height, (long long)p.width, (long long)p.kernel_h,
              (long long)p.kernel_w, (long long)p.stride_h, (long long)p.stride_w, (long long)p.padding_h,
              (long long)p.padding_w, (long long)p.dilation_h, (long long)p.dilation_w, (long long)w.nnz(), case_worst,
              bitwise ? "equal" : "DIFFERENT");
        }
        loops.push_back(y1);
      }
      // Every loop (and the automatic choice, which takes the dense loop for a full weight)
      // computes the same chain of FMAs (portable: multiply-adds) per output: they must agree bitwise.
      if (std::memcmp(loops[0].data(), loops[1].data(), ysize * sizeof(float)) != 0 ||
          std::memcmp(loops[0].data(), loops[2].data(), ysize * sizeof(float)) != 0)
        ++two_loop_mismatch;
    }
  }
  csr_enable_avx2(true);
  conv2d_ignore_parallel_grain(false);
  std::printf(
      "%d random cases (%d float32, %d float16, %d uint8 codebook; %d with an empty output, checked to throw): %d runs "
      "(direct / tiled / auto x AVX2 %s x 1 and 2 threads), %lld outputs checked, worst relative error %.3g "
      "(limit 1e-5), runs where direct, tiled and auto differ bitwise (AVX2 and portable): %lld\n",
      cases, by_format[0], by_format[1], by_format[2], empty_output_cases, ran, has_avx2 ? "on/off" : "off (no CPU support)",
      outputs_checked, worst, two_loop_mismatch);
  if (two_loop_mismatch) ++failures;
  return failures;
}

// Runs f; passes when it throws std::invalid_argument (or type_error when want_type) whose
// message contains `needle`.
int expect_error(const char* what, const char* needle, bool want_type, const std::function<void()>& f) {
  try {
    f();
  } catch (const type_error& e) {
    if (want_type && std::strstr(e.what(), needle)) return 0;
    std::printf("FAIL %s: type_error \"%s\"\n", what, e.what());
    return 1;
  } catch (const std::invalid_argument& e) {
    if (!want_type && std::strstr(e.what(), needle)) return 0;
    std::printf("FAIL %s: \"%s\" (wanted \"%s\")\n", what, e.what(), needle);
    return 1;
  }
  std::printf("FAIL %s: no exception\n", what);
  return 1;
}

int run_error_tests() {
  rng.seed(7);
  Conv2dParams p;
  p.batch = 2, p.in_channels = 4, p.out_channels = 6, p.height = 5, p.width = 5, p.kernel_h = 3, p.kernel_w = 3;
  p.padding_h = p.padding_w = 1;
  Weight w(6, 4 * 9, 0.5, 0);
  std::vector<float> x(2 * 4 * 25, 0.5f), y(2 * 6 * 25), bias(6, 0.1f);
  auto call = [&](const CsrRef& a, const Conv2dParams& q, size_t xs, const float* b, int64_t bs, size_t ys) {
    sparse_conv2d(a, x.data(), xs, q, b, bs, Activation::none, y.data(), ys);
  };
  const CsrRef a = w.ref(ValueType::f32, IndexType::i32, IndptrType::i32);
  int f = 0;
  f += expect_error("x size", "x must have", false, [&] { call(a, p, x.size() - 1, nullptr, 0, y.size()); });
  f += expect_error("output size", "output must have", false, [&] { call(a, p, x.size(), nullptr, 0, y.size() + 1); });
  f += expect_error("bias size", "bias must have", false, [&] { call(a, p, x.size(), bias.data(), 5, y.size()); });
  Conv2dParams q = p;
  q.groups = 3;
  f += expect_error("groups", "groups", false, [&] { call(a, q, x.size(), nullptr, 0, y.size()); });
  q = p, q.stride_w = 0;
  f += expect_error("stride", "stride", false, [&] { call(a, q, x.size(), nullptr, 0, y.size()); });
  q = p, q.padding_h = -1;
  f += expect_error("padding", "padding", false, [&] { call(a, q, x.size(), nullptr, 0, y.size()); });
  q = p, q.dilation_h = 0;
  f += expect_error("dilation", "dilation", false, [&] { call(a, q, x.size(), nullptr, 0, y.size()); });
  q = p, q.kernel_h = 5;
  f += expect_error("weight shape", "weight must be", false, [&] { call(a, q, x.size(), nullptr, 0, y.size()); });
  q = p, q.padding_h = 0, q.kernel_h = 3, q.dilation_h = 3;  // extent 7 > 5
  f += expect_error("empty output", "kernel extent", false, [&] { call(a, q, x.size(), nullptr, 0, y.size()); });
  q = p, q.batch = int64_t(1) << 61;  // N * C_in = 2^63
  f += expect_error("size overflow", "overflows int64", false, [&] { call(a, q, x.size(), nullptr, 0, y.size()); });
  {
    Weight bad = w;
    bad.idx32[0] = 36;
    f += expect_error("column index", "column indices", false,
                      [&] { call(bad.ref(ValueType::f32, IndexType::i32, IndptrType::i32), p, x.size(), nullptr, 0, y.size()); });
    bad = w;
    bad.ptr32[3] = bad.ptr32[2] - 1;
    bad.ptr32[2] += 1;
    f += expect_error("indptr order", "indptr must be non-decreasing", false,
                      [&] { call(bad.ref(ValueType::f32, IndexType::i32, IndptrType::i32), p, x.size(), nullptr, 0, y.size()); });
    bad = w;
    bad.ptr32.back() += 1;
    f += expect_error("indptr end", "indptr[-1]", false,
                      [&] { call(bad.ref(ValueType::f32, IndexType::i32, IndptrType::i32), p, x.size(), nullptr, 0, y.size()); });
    bad = w;
    bad.codebook.resize(1);
    std::fill(bad.codes.begin(), bad.codes.end(), 0);
    bad.codes.back() = 1;
    f += expect_error("codes", "codes must be smaller", false,
                      [&] { call(bad.ref(ValueType::code8, IndexType::i32, IndptrType::i32), p, x.size(), nullptr, 0, y.size()); });
  }
  CsrRef f64 = a;
  f64.value_type = ValueType::f64;
  f += expect_error("float64 weights", "float64", true, [&] { call(f64, p, x.size(), nullptr, 0, y.size()); });
  std::vector<float> xn = x;
  xn.back() = NAN;
  f += expect_error("NaN input", "X contains non-finite", false, [&] {
    sparse_conv2d(a, xn.data(), xn.size(), p, nullptr, 0, Activation::none, y.data(), y.size());
  });
  std::vector<float> bn = bias;
  bn[2] = INFINITY;
  f += expect_error("Inf bias", "bias contains non-finite", false, [&] { call(a, p, x.size(), bn.data(), 6, y.size()); });
  // NaN in either thread's share of x, with 2 threads.
  conv2d_ignore_parallel_grain(true);
  set_num_threads(2);
  for (size_t pos : {size_t(0), xn.size() - 1}) {
    std::vector<float> xx = x;
    xx[pos] = NAN;
    f += expect_error("NaN input, 2 threads", "X contains non-finite", false, [&] {
      sparse_conv2d(a, xx.data(), xx.size(), p, nullptr, 0, Activation::none, y.data(), y.size());
    });
  }
  // Called from inside a parallel region (nesting off: the kernel's region gets one thread):
  // every part must still be computed.
  {
    std::vector<float> ref_y(y.size()), in_y(y.size());
    sparse_conv2d(a, x.data(), x.size(), p, bias.data(), 6, Activation::relu, ref_y.data(), ref_y.size());
#pragma omp parallel num_threads(2)
    {
#pragma omp single
      sparse_conv2d(a, x.data(), x.size(), p, bias.data(), 6, Activation::relu, in_y.data(), in_y.size());
    }
    if (std::memcmp(ref_y.data(), in_y.data(), y.size() * sizeof(float)) != 0) {
      ++f;
      std::printf("FAIL call from inside a parallel region: result differs\n");
    }
  }
  conv2d_ignore_parallel_grain(false);
  std::printf("argument checks: %d failures\n", f);
  return f;
}

// ---- timing mode ----

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

struct Layer {
  const char* name;
  int64_t c_in, c_out, hw, k, pad;
};

int run_bench(double budget, const std::string& filter, const std::vector<int>& thread_counts) {
  const Layer layers[] = {{"LeNet conv1 1->8 5x5 28x28", 1, 8, 28, 5, 0},     {"LeNet conv2 8->16 5x5 12x12", 8, 16, 12, 5, 0},
                          {"VGG 32->64 3x3 14x14 p1", 32, 64, 14, 3, 1},      {"VGG 64->128 3x3 7x7 p1", 64, 128, 7, 3, 1},
                          {"VGG 64->128 3x3 14x14 p1", 64, 128, 14, 3, 1},    {"1x1 64->128 7x7", 64, 128, 7, 1, 0},
                          {"1x1 64->128 14x14", 64, 128, 14, 1, 0},           {"VGG 16->32 3x3 28x28 p1", 16, 32, 28, 3, 1}};
  std::printf("| layer | sparsity | batch | threads | direct us | tiled us | tiled/direct | dense(tiled) us | rounds |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|\n");
  rng.seed(1);
  for (const Layer& L : layers)
    if (std::string(L.name).find(filter) != std::string::npos)
    for (double sp : {0.7, 0.8, 0.9, 0.95})
      for (int64_t batch : {1, 32})
        for (int threads : thread_counts) {
          Conv2dParams p;
          p.batch = batch, p.in_channels = L.c_in, p.out_channels = L.c_out, p.height = p.width = L.hw;
          p.kernel_h = p.kernel_w = L.k, p.padding_h = p.padding_w = L.pad;
          int64_t ho, wo;
          conv2d_output_size(p, &ho, &wo);
          Weight w(L.c_out, L.c_in * L.k * L.k, 1 - sp, 0), dense(L.c_out, L.c_in * L.k * L.k, 1.0, 0);
          std::vector<float> x(batch * L.c_in * L.hw * L.hw);
          for (auto& v : x) v = static_cast<float>(uniform(-1, 1));
          std::vector<float> y(batch * L.c_out * ho * wo);
          set_num_threads(threads);
          const CsrRef a = w.ref(ValueType::f32, IndexType::u16, IndptrType::i32);
          const CsrRef ad = dense.ref(ValueType::f32, IndexType::u16, IndptrType::i32);
          std::function<void()> fns[3] = {
              [&] { sparse_conv2d(a, x.data(), x.size(), p, nullptr, 0, Activation::relu, y.data(), y.size(), Conv2dAlgo::direct); },
              [&] { sparse_conv2d(a, x.data(), x.size(), p, nullptr, 0, Activation::relu, y.data(), y.size(), Conv2dAlgo::tiled); },
              [&] { sparse_conv2d(ad, x.data(), x.size(), p, nullptr, 0, Activation::relu, y.data(), y.size(), Conv2dAlgo::tiled); }};
          // Rounds: each times every variant once (a block of calls of ~1 ms), in alternating order
          // (ABC, CBA); the ratio is the median of the per-round ratios (adjacent blocks see the
          // same machine load), the times are medians over rounds.
          std::vector<double> t[3], ratio;
          for (auto& f : fns) f();
          int reps = 1;
          {
            const double t0 = now();
            fns[0]();
            const double one = now() - t0;
            reps = static_cast<int>(std::max(1.0, std::min(1000.0, 0.001 / std::max(one, 1e-7))));
          }
          const double end = now() + budget;
          for (int round = 0; round < 400 && (round < 7 || now() < end); ++round) {
            for (int k = 0; k < 3; ++k) {
              const int v = round % 2 ? 2 - k : k;
              const double t0 = now();
              for (int r = 0; r < reps; ++r) fns[v]();
              t[v].push_back((now() - t0) / reps);
            }
            ratio.push_back(t[1].back() / t[0].back());
          }
          auto median = [](std::vector<double> v) {
            std::sort(v.begin(), v.end());
            return v[v.size() / 2];
          };
          double med[3];
          for (int v = 0; v < 3; ++v) med[v] = median(t[v]) * 1e6;
          std::printf("| %s | %.0f%% | %lld | %d | %.1f | %.1f | %.2f | %.1f | %zu |\n", L.name, sp * 100, (long long)batch,
                      threads, med[0], med[1], median(ratio), med[2], ratio.size());
          std::fflush(stdout);
        }
  return 0;
}

// Value and index formats: the automatic choice with float32 / float16 / uint8-codebook values and
// uint16 / int32 indices on the same pattern, interleaved; ratios to float32 + uint16.
int run_formats(double budget, int threads) {
  const Layer layers[] = {{"LeNet conv2 8->16 5x5 12x12", 8, 16, 12, 5, 0},
                          {"VGG 64->128 3x3 7x7 p1", 64, 128, 7, 3, 1},
                          {"1x1 64->128 7x7", 64, 128, 7, 1, 0}};
  const char* names[] = {"f32+u16", "f16+u16", "code8+u16", "f32+i32", "f16+i32", "code8+i32"};
  std::printf("| layer | sparsity | batch | f32+u16 us | f16+u16 | code8+u16 | f32+i32 | f16+i32 | code8+i32 | rounds |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|\n");
  rng.seed(2);
  set_num_threads(threads);
  for (const Layer& L : layers)
    for (double sp : {0.7, 0.95})
      for (int64_t batch : {1, 32}) {
        Conv2dParams p;
        p.batch = batch, p.in_channels = L.c_in, p.out_channels = L.c_out, p.height = p.width = L.hw;
        p.kernel_h = p.kernel_w = L.k, p.padding_h = p.padding_w = L.pad;
        int64_t ho, wo;
        conv2d_output_size(p, &ho, &wo);
        Weight w(L.c_out, L.c_in * L.k * L.k, 1 - sp, 0);
        std::vector<float> x(batch * L.c_in * L.hw * L.hw), bias(L.c_out, 0.1f);
        for (auto& v : x) v = static_cast<float>(uniform(-1, 1));
        std::vector<float> y(batch * L.c_out * ho * wo);
        std::vector<std::function<void()>> fns;
        for (IndexType it : {IndexType::u16, IndexType::i32})
          for (ValueType vt : {ValueType::f32, ValueType::f16, ValueType::code8}) {
            const CsrRef a = w.ref(vt, it, IndptrType::i32);
            fns.push_back([&, a] {
              sparse_conv2d(a, x.data(), x.size(), p, bias.data(), L.c_out, Activation::relu, y.data(), y.size());
            });
          }
        const size_t V = fns.size();
        for (auto& f : fns) f();
        const double t0 = now();
        fns[0]();
        const int reps = static_cast<int>(std::max(1.0, std::min(1000.0, 0.001 / std::max(now() - t0, 1e-7))));
        std::vector<std::vector<double>> t(V), ratio(V);
        const double end = now() + budget;
        for (int round = 0; round < 400 && (round < 11 || now() < end); ++round) {
          for (size_t k = 0; k < V; ++k) {
            const size_t v = round % 2 ? V - 1 - k : k;
            const double s0 = now();
            for (int r = 0; r < reps; ++r) fns[v]();
            t[v].push_back((now() - s0) / reps);
          }
          for (size_t v = 0; v < V; ++v) ratio[v].push_back(t[v].back() / t[0].back());
        }
        auto median = [](std::vector<double> v) {
          std::sort(v.begin(), v.end());
          return v[v.size() / 2];
        };
        std::printf("| %s | %.0f%% | %lld | %.1f", L.name, sp * 100, (long long)batch, median(t[0]) * 1e6);
        for (size_t v = 1; v < V; ++v) std::printf(" | %.2f", median(ratio[v]));
        std::printf(" | %zu |\n", t[0].size());
        std::fflush(stdout);
        (void)names;
      }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  int cases = 2000;
  uint64_t seed = 12345;
  bool bench = false, formats = false;
  double budget = 0.3;
  std::string filter;
  std::vector<int> thread_counts = {1, 2};
  for (int i = 1; i < argc; ++i) {
    const std::string s = argv[i];
    if (s == "--bench") bench = true;
    else if (s == "--formats") formats = true;
    else if (s == "--cases" && i + 1 < argc) cases = std::atoi(argv[++i]);
    else if (s == "--seed" && i + 1 < argc) seed = std::strtoull(argv[++i], nullptr, 10);
    else if (s == "--budget" && i + 1 < argc) budget = std::atof(argv[++i]);
    else if (s == "--layer" && i + 1 < argc) filter = argv[++i];
    else if (s == "--threads" && i + 1 < argc) thread_counts = {std::atoi(argv[++i])};
    else {
      std::printf("usage: %s [--cases N] [--seed S] | --bench [--budget SEC] [--layer SUBSTRING] [--threads T] | --formats [--budget SEC] [--threads T]\n", argv[0]);
      return 2;
    }
  }
  std::printf("AVX2 path: %s\n", csr_uses_avx2() ? "yes" : "no");
  if (bench) return run_bench(budget, filter, thread_counts);
  if (formats) return run_formats(budget, thread_counts[0]);
  const int failures = run_tests(cases, seed) + run_error_tests();
  std::printf("%s\n", failures ? "FAILED" : "ALL PASSED");
  return failures ? 1 : 0;
}
