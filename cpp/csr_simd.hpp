// Pieces shared by the sparse kernels (csr_kernels.cpp, sell.cpp, conv2d.cpp): value accessors for every
// stored value type, the fused activation, the AVX2 helpers (gathers of x, 8-value loads, the
// horizontal sum) and the input checks every Python-facing entry point runs.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "csr.hpp"
#include "errors.hpp"

// HTCORE_PORTABLE (CMake option of the C library) compiles the portable kernels only.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(HTCORE_PORTABLE)
#define HTCORE_CSR_X86 1
#include <immintrin.h>
#endif

namespace htcore {
namespace detail {

struct Half {
  std::uint16_t bits;
};

// IEEE binary16 -> binary32, exact (used where F16C is not available).
inline float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  std::uint32_t exp = (h >> 10) & 0x1fu;
  std::uint32_t mant = h & 0x3ffu;
  std::uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf / nan
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);  // normal: rebias 15 -> 127
  } else if (mant == 0) {
    bits = sign;  // signed zero
  } else {        // subnormal half: normalise
    exp = 113;
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      --exp;
    }
    bits = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
  }
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}

// Value accessors: Values<V>(p) is the p-th stored value as the accumulator type. float and
// double are stored as they are accumulated; Half and uint8 codes are specialised below.
template <class V>
struct Values {
  using Acc = V;
  const V* d;
  const float* codebook;
  V operator()(std::int64_t p) const { return d[p]; }
};
template <>
struct Values<Half> {
  using Acc = float;
  const std::uint16_t* d;
  const float* codebook;
  float operator()(std::int64_t p) const { return half_to_float(d[p]); }
};
template <>
struct Values<std::uint8_t> {
  using Acc = float;
  const std::uint8_t* d;
  const float* codebook;
  float operator()(std::int64_t p) const { return codebook[d[p]]; }
};

// gelu is the exact form x * Phi(x) = x/2 (1 + erf(x / sqrt 2)), torch's default.
template <class T>
inline T activate(T v, Activation act) {
  switch (act) {
    case Activation::relu: return v < T(0) ? T(0) : v;
    case Activation::gelu: return T(0.5) * v * (T(1) + std::erf(v * T(0.70710678118654752440)));
    case Activation::tanh: return std::tanh(v);
    case Activation::none: break;
  }
  return v;
}

// True when no value is NaN or Inf, i.e. none has all exponent bits set. Testing the bits
// vectorises (std::isfinite compiles to a scalar compare per value, ~1 cycle each); the AVX2
// version below is used where the CPU has it (require_finite).
template <class T>
inline bool all_finite(const T* v, std::int64_t n) {
  using Bits = typename std::conditional<sizeof(T) == 4, std::uint32_t, std::uint64_t>::type;
  constexpr Bits kExponent = sizeof(T) == 4 ? Bits(0x7f800000u) : Bits(0x7ff0000000000000ull);
  Bits bad = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    Bits b;
    std::memcpy(&b, v + i, sizeof b);
    bad |= (b & kExponent) == kExponent;
  }
  return bad == 0;
}

// At least n elements kept by the calling thread between calls (a fresh allocation of a few
// hundred KiB is a fresh mmap whose page faults can cost as much as a small product). Use keeps
// the buffers of different uses apart (a tag type: the thread that transposes X also stores
// output chunks; a convolution's accumulator plane and its prepared images).
template <class Use, class T>
T* kept_buffer(std::size_t n) {
  thread_local std::vector<T> kept;
  if (kept.size() < n) kept.resize(n);
  return kept.data();
}

// O(rows) check that makes every row range [indptr[i], indptr[i+1]) lie inside the nnz arrays,
// so a matrix built with CSRMatrix(check=False) can at worst raise, never read out of bounds
// through its row pointers. (Column indices and codes are O(nnz) to check: CSRMatrix does that.)
template <class Ptr>
inline void check_row_pointers(const Ptr* indptr, std::int64_t rows, std::int64_t nnz) {
  require(indptr[0] == 0,
          [&] { return "indptr[0] must be 0, got " + std::to_string(static_cast<std::int64_t>(indptr[0])); });
  require(static_cast<std::int64_t>(indptr[rows]) == nnz, [&] {
    return "indptr[-1] must equal nnz = " + std::to_string(nnz) + ", got " +
           std::to_string(static_cast<std::int64_t>(indptr[rows]));
  });
  Ptr decreasing = 0;  // an integer OR rather than `bool &=`, so the loop vectorises (int32 pointers)
  for (std::int64_t i = 0; i < rows; ++i) decreasing |= static_cast<Ptr>(indptr[i] > indptr[i + 1]);
  require(decreasing == 0, "indptr must be non-decreasing");
}

#ifdef HTCORE_CSR_X86
// Functions between these two are compiled for AVX2+FMA+F16C (callers check the CPU first,
// csr_uses_avx2), the rest of the build stays portable.
#if defined(__clang__)
#define HTCORE_AVX2_BEGIN \
  _Pragma("clang attribute push(__attribute__((target(\"avx2,fma,f16c\"))), apply_to = function)")
#define HTCORE_AVX2_END _Pragma("clang attribute pop")
#else
#define HTCORE_AVX2_BEGIN _Pragma("GCC push_options") _Pragma("GCC target(\"avx2,fma,f16c\")")
#define HTCORE_AVX2_END _Pragma("GCC pop_options")
#endif

// The helpers below sit in every kernel's inner loop: a call (which GCC chose for gather8 once a
// kernel had two instantiations) spills the accumulators around it.
#define HTCORE_ALWAYS_INLINE inline __attribute__((always_inline))

HTCORE_AVX2_BEGIN
// x[idx[0..7]] by eight scalar loads, the indices read 64 bits at a time and split in registers:
// fewer loads than one per index, and faster than vgatherdps on the CPUs measured (Zen 4).
HTCORE_ALWAYS_INLINE __m256 gather8(const float* x, const std::uint16_t* idx) {
  std::uint64_t a, b;
  std::memcpy(&a, idx, 8);
  std::memcpy(&b, idx + 4, 8);
  return _mm256_setr_ps(x[a & 0xffff], x[(a >> 16) & 0xffff], x[(a >> 32) & 0xffff], x[a >> 48], x[b & 0xffff],
                        x[(b >> 16) & 0xffff], x[(b >> 32) & 0xffff], x[b >> 48]);
}
HTCORE_ALWAYS_INLINE __m256 gather8(const float* x, const std::int32_t* idx) {
  std::uint64_t a, b, c, d;  // four separate loads: one 32-byte copy would go through the stack
  std::memcpy(&a, idx, 8);
  std::memcpy(&b, idx + 2, 8);
  std::memcpy(&c, idx + 4, 8);
  std::memcpy(&d, idx + 6, 8);
  return _mm256_setr_ps(x[static_cast<std::uint32_t>(a)], x[a >> 32], x[static_cast<std::uint32_t>(b)], x[b >> 32],
                        x[static_cast<std::uint32_t>(c)], x[c >> 32], x[static_cast<std::uint32_t>(d)], x[d >> 32]);
}

// Asks for the cache line holding a[i]. A prefetch never faults, so i may lie past the end of the
// array; the address is computed as an integer, so no out-of-bounds pointer is formed.
template <class T>
HTCORE_ALWAYS_INLINE void prefetch(const T* a, std::int64_t i) {
  _mm_prefetch(
      reinterpret_cast<const char*>(reinterpret_cast<std::uintptr_t>(a) + static_cast<std::uintptr_t>(i) * sizeof(T)),
      _MM_HINT_T0);
}

HTCORE_ALWAYS_INLINE __m256 load_val8(const Values<float>& v, std::int64_t p) { return _mm256_loadu_ps(v.d + p); }
HTCORE_ALWAYS_INLINE __m256 load_val8(const Values<Half>& v, std::int64_t p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v.d + p)));
}
HTCORE_ALWAYS_INLINE __m256 load_val8(const Values<std::uint8_t>& v, std::int64_t p) {
  const __m256i codes = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(v.d + p)));
  return _mm256_i32gather_ps(v.codebook, codes, 4);
}

HTCORE_ALWAYS_INLINE float load_val(const Values<float>& v, std::int64_t p) { return v.d[p]; }
HTCORE_ALWAYS_INLINE float load_val(const Values<Half>& v, std::int64_t p) { return _cvtsh_ss(v.d[p]); }
HTCORE_ALWAYS_INLINE float load_val(const Values<std::uint8_t>& v, std::int64_t p) { return v.codebook[v.d[p]]; }

// all_finite over 32 bytes per load, four loads per step (the portable loop compiles to 16-byte
// steps).
template <class T>
bool all_finite_avx2(const T* v, std::int64_t n) {
  constexpr std::int64_t kLanes = 32 / sizeof(T);  // values per load
  const __m256i e = sizeof(T) == 4 ? _mm256_set1_epi32(0x7f800000) : _mm256_set1_epi64x(0x7ff0000000000000ll);
  auto inf_or_nan = [&](std::int64_t i) {
    const __m256i exponent = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + i)), e);
    return sizeof(T) == 4 ? _mm256_cmpeq_epi32(exponent, e) : _mm256_cmpeq_epi64(exponent, e);
  };
  __m256i bad0 = _mm256_setzero_si256(), bad1 = bad0;
  std::int64_t i = 0;
  for (; i + 4 * kLanes <= n; i += 4 * kLanes) {
    bad0 = _mm256_or_si256(bad0, _mm256_or_si256(inf_or_nan(i), inf_or_nan(i + kLanes)));
    bad1 = _mm256_or_si256(bad1, _mm256_or_si256(inf_or_nan(i + 2 * kLanes), inf_or_nan(i + 3 * kLanes)));
  }
  for (; i + kLanes <= n; i += kLanes) bad0 = _mm256_or_si256(bad0, inf_or_nan(i));
  const __m256i bad = _mm256_or_si256(bad0, bad1);
  return _mm256_testz_si256(bad, bad) && all_finite(v + i, n - i);
}

HTCORE_ALWAYS_INLINE float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

HTCORE_AVX2_END
#endif  // HTCORE_CSR_X86

// True when v[0..n) has no NaN or Inf. avx2: the CPU has AVX2 (csr_uses_avx2).
template <class T>
inline bool finite(const T* v, std::int64_t n, bool avx2) {
#ifdef HTCORE_CSR_X86
  if (avx2) return all_finite_avx2(v, n);
#endif
  (void)avx2;
  return all_finite(v, n);
}

// Non-finite inputs are refused here, in one cheap pass, rather than in Python (where the check
// costs more than a small product).
inline std::string non_finite_message(const char* name) {
  return std::string(name) + " contains non-finite values (NaN or Inf)";
}
template <class T>
inline void require_finite(const T* v, std::int64_t n, const char* name, bool avx2) {
  require(finite(v, n, avx2), [&] { return non_finite_message(name); });
}

}  // namespace detail
}  // namespace htcore
