// Elementary functions as plain arithmetic (no calls, no branches), so that loops over them
// vectorise, with results that do not depend on which SIMD clone runs them.
#pragma once
#include <cstdint>
#include <cstring>

namespace htcore {

// ln u for a positive normal double u (2^-1022 <= u < inf), within 1 ulp of std::log(u) (equal in
// about 91% of cases): u = 2^e m with m in [sqrt(1/2), sqrt(2)), ln m = ln(1 + f) = 2 atanh(s),
// s = f / (2 + f), |s| < 0.172, by its Taylor series to s^23 (truncation below 2^-60 relative),
// arranged as f - (f^2/2 - s (f^2/2 + R)), R = sum_{j>=1} 2 s^(2j) / (2j + 1), so that no rounding
// of f is amplified; e ln 2 is split into a part exact for |e| < 2^21 and a correction. Plain
// arithmetic without branches or calls, so loops over it vectorise.
inline double log_normal(double u) {
  constexpr double kLn2Hi = 0x1.62e42feep-1, kLn2Lo = 0x1.a39ef35793c76p-33;  // kLn2Hi + kLn2Lo = ln 2
  std::uint64_t bits;
  std::memcpy(&bits, &u, sizeof bits);
  // q = e + 1023 (>= 0), from the bits of u / sqrt(1/2).
  const std::uint64_t q = (bits - 0x3FE6A09E667F3BCDull + (1023ull << 52)) >> 52;
  const std::uint64_t mantissa = bits - (q << 52) + (1023ull << 52), exponent = q | 0x4330000000000000ull;
  double m, e;
  std::memcpy(&m, &mantissa, sizeof m);
  std::memcpy(&e, &exponent, sizeof e);
  e = (e - 0x1p52) - 1023.0;
  const double f = m - 1.0, s = f / (2.0 + f), z = s * s;
  double p = 2.0 / 23;
  for (int j = 10; j >= 1; --j) p = p * z + 2.0 / (2 * j + 1);
  const double r = z * p, half_f2 = 0.5 * f * f;
  return e * kLn2Hi + ((f - (half_f2 - s * (half_f2 + r))) + e * kLn2Lo);
}

// ln u for any positive finite double, subnormals included (within 2 ulp there: scaled by 2^54 first, selected by an
// integer mask: a floating-point comparison here becomes a branch in gcc, which stops vectorising).
inline double log_positive(double u) {
  constexpr double kLn2 = 0x1.62e42fefa39efp-1;
  std::uint64_t bits;
  std::memcpy(&bits, &u, sizeof bits);
  const std::uint64_t subnormal = 0 - static_cast<std::uint64_t>(static_cast<std::int64_t>(bits) < (std::int64_t{1} << 52));
  const double scaled = u * 0x1p54;
  std::uint64_t scaled_bits;
  std::memcpy(&scaled_bits, &scaled, sizeof scaled_bits);
  bits = (bits & ~subnormal) | (scaled_bits & subnormal);
  double normal;
  std::memcpy(&normal, &bits, sizeof normal);
  double shift;
  const std::uint64_t shift_bits = 0x404B000000000000ull & subnormal;  // 54.0 or +0.0
  std::memcpy(&shift, &shift_bits, sizeof shift);
  return log_normal(normal) - shift * kLn2;
}

// -ln u for 2^-64 <= u <= 1: the exponential variates of the tail bootstrap.
inline double neg_log_unit(double u) { return -log_normal(u); }

// e^y for y <= 0 (and y = -inf: 0; not for NaN), within 2 ulp of std::exp(y): y = k ln 2 + r with k = round(y / ln 2)
// and |r| <= ln(2) / 2 (ln 2 split so that k ln2_hi is exact), e^r by its Taylor series to r^13
// (truncation below 2^-60 relative), then scaled by 2^k in two exact steps of at least 2^-538 each,
// so that results below 2^-1022 round once, to the nearest subnormal, as std::exp's do.
inline double exp_nonpositive(double y) {
  constexpr double kLn2Hi = 0x1.62e42feep-1, kLn2Lo = 0x1.a39ef35793c76p-33, kInvLn2 = 0x1.71547652b82fep0;
  constexpr double kRound = 0x1.8p52;                       // adding it rounds to an integer
  // clamped = max(y, -745.2) (e^-745.2 < 2^-1075: 0 after rounding; -inf gives 0 too), selected by
  // an integer mask: gcc turns a floating-point comparison here into a branch, which stops vectorising.
  constexpr double kLowest = -745.2;
  std::uint64_t bits, lowest;
  std::memcpy(&bits, &y, sizeof bits);
  std::memcpy(&lowest, &kLowest, sizeof lowest);
  const std::int64_t magnitude = static_cast<std::int64_t>(bits & 0x7FFFFFFFFFFFFFFFull);
  const std::uint64_t beyond = 0 - static_cast<std::uint64_t>(magnitude > static_cast<std::int64_t>(lowest & 0x7FFFFFFFFFFFFFFFull));
  bits = (bits & ~beyond) | (lowest & beyond);
  double clamped;
  std::memcpy(&clamped, &bits, sizeof clamped);
  const double k = (clamped * kInvLn2 + kRound) - kRound;  // in [-1075, 0]
  const double r = (clamped - k * kLn2Hi) - k * kLn2Lo;
  // Horner on 1/13!, 1/12!, ..., 1/1!, 1/0! (written out: a loop here kept gcc from vectorising callers).
  double p = 1.0 / 6227020800.0;
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  // 2^k = 2^a 2^b with a = round(k / 2) and b = k - a, both in [-538, 0]: normal numbers, whose bits
  // are (e + 1023) << 52, read off e + 2^52 + 1023 (an integer below 2^53: its low bits are e + 1023).
  const double a = (0.5 * k + kRound) - kRound, b = k - a;
  double scale_a = a + (0x1p52 + 1023), scale_b = b + (0x1p52 + 1023);
  std::uint64_t bits_a, bits_b;
  std::memcpy(&bits_a, &scale_a, sizeof bits_a);
  std::memcpy(&bits_b, &scale_b, sizeof bits_b);
  bits_a <<= 52;
  bits_b <<= 52;
  std::memcpy(&scale_a, &bits_a, sizeof scale_a);
  std::memcpy(&scale_b, &bits_b, sizeof scale_b);
  return (p * scale_a) * scale_b;
}

}  // namespace htcore
