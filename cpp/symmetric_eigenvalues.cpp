// Symmetric eigenvalues (see symmetric_eigenvalues.hpp).
//
// Storage: the lower triangle of the row-major input is copied into a column-major upper triangle
// (the same numbers: row i of the input, entries 0..i, becomes column i, rows 0..i), with the
// columns 64-byte aligned. The reduction works from the last column backwards (LAPACK dsytd2,
// UPLO='U'), so the active block is always the leading k x k block and every column of it starts
// at row 0, contiguous and aligned.
//
// Step k (k = n-1 .. 1) annihilates rows 0..k-2 of column k with a Householder reflector
// H = I - tau v v^T (v[k-1] = 1) and updates the leading k x k block A <- H A H, which is the
// rank-2 update A <- A - v w^T - w v^T with p = tau A v, w = p - (tau/2)(p.v) v. The update of
// step k and the product A v of step k-1 are one pass over the block (each entry is loaded and
// stored once per step), after column k-1 alone has been updated and its reflector formed.
// Four columns are processed together so the vectors v, w, v', A v' are loaded once per four.
#include "symmetric_eigenvalues.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "errors.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HTCORE_EIG_X86 1
#include <immintrin.h>
#endif

namespace htcore {
namespace {

// One fused pass of step k: the rank-2 update A -= v w^T + w v^T of the leading k x k block
// (the previous reflector) and the product y = A' x with the updated block A' (this step's).
struct Pass {
  const double* v;
  const double* w;
  const double* x;
  double* y;
};

// The two code paths. columns<C>(c, j, pass, s): columns c[0..C) = j..j+C-1, rows 0..j-1 (above
// their diagonal block): update each entry a = c[t][r] - v[r] w[j+t] - w[r] v[j+t], store it, add
// a x[j+t] to y[r], and return s[t] = sum_r a x[r] (the part of y[j+t] from these rows).
// Rows [r0, j) of columns() with scalar multiply-adds K::madd, adding to s.
template <class K, int C>
inline void columns_scalar(double* const* c, std::int64_t r0, std::int64_t j, const Pass& p, double* s) {
  for (std::int64_t r = r0; r < j; ++r) {
    double acc = p.y[r];
    for (int t = 0; t < C; ++t) {
      const double a = K::madd(-p.w[r], p.v[j + t], K::madd(-p.v[r], p.w[j + t], c[t][r]));
      c[t][r] = a;
      s[t] = K::madd(a, p.x[r], s[t]);
      acc = K::madd(a, p.x[j + t], acc);
    }
    p.y[r] = acc;
  }
}

struct Portable {
  static double madd(double a, double b, double c) { return a * b + c; }

  template <int C>
  static void columns(double* const* c, std::int64_t j, const Pass& p, double* s) {
    for (int t = 0; t < C; ++t) s[t] = 0;
    columns_scalar<Portable, C>(c, 0, j, p, s);
  }
};

#ifdef HTCORE_EIG_X86
// AVX2 + FMA: four rows at a time, four partial sums per dot, the leftover rows with scalar FMAs.
struct Avx2 {
  __attribute__((target("avx2,fma"))) static double madd(double a, double b, double c) { return std::fma(a, b, c); }

  template <int C>
  __attribute__((target("avx2,fma"))) static void columns(double* const* c, std::int64_t j, const Pass& p, double* s) {
    __m256d vj[C], wj[C], xj[C], sum[C];
    for (int t = 0; t < C; ++t) {
      vj[t] = _mm256_set1_pd(p.v[j + t]);
      wj[t] = _mm256_set1_pd(p.w[j + t]);
      xj[t] = _mm256_set1_pd(p.x[j + t]);
      sum[t] = _mm256_setzero_pd();
    }
    std::int64_t r = 0;
    for (; r + 4 <= j; r += 4) {
      const __m256d vr = _mm256_loadu_pd(p.v + r), wr = _mm256_loadu_pd(p.w + r), xr = _mm256_loadu_pd(p.x + r);
      __m256d acc = _mm256_loadu_pd(p.y + r);
      for (int t = 0; t < C; ++t) {
        const __m256d a = _mm256_fnmadd_pd(wr, vj[t], _mm256_fnmadd_pd(vr, wj[t], _mm256_loadu_pd(c[t] + r)));
        _mm256_storeu_pd(c[t] + r, a);
        sum[t] = _mm256_fmadd_pd(a, xr, sum[t]);
        acc = _mm256_fmadd_pd(a, xj[t], acc);
      }
      _mm256_storeu_pd(p.y + r, acc);
    }
    for (int t = 0; t < C; ++t) {
      alignas(32) double lanes[4];
      _mm256_store_pd(lanes, sum[t]);
      s[t] = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
    }
    columns_scalar<Avx2, C>(c, r, j, p, s);
  }
};
#endif

// The update of one entry, as columns() does it.
template <class K>
inline double update_entry(double a, double vr, double wr, double vj, double wj) {
  return K::madd(-wr, vj, K::madd(-vr, wj, a));
}

// Columns j..j+C-1 of the leading block, whole: columns() above their diagonal block, then the
// C x C triangle at the diagonal, in the same order for every C.
template <class K, int C>
inline __attribute__((always_inline)) void update_and_multiply(double* a, std::int64_t ld, std::int64_t j,
                                                               const Pass& p) {
  double* cols[C];
  for (int t = 0; t < C; ++t) cols[t] = a + (j + t) * ld;
  double s[C];
  K::template columns<C>(cols, j, p, s);
  for (int t = 0; t < C; ++t) {
    double* col = cols[t];
    for (int u = 0; u <= t; ++u) {
      const std::int64_t r = j + u;
      const double val = update_entry<K>(col[r], p.v[r], p.w[r], p.v[j + t], p.w[j + t]);
      col[r] = val;
      if (u < t) {
        s[t] = K::madd(val, p.x[r], s[t]);
        p.y[r] = K::madd(val, p.x[j + t], p.y[r]);
      } else {
        p.y[r] = K::madd(val, p.x[r], p.y[r] + s[t]);
      }
    }
  }
}

// Reflector of column k (LAPACK dlarfg): x = col[0..k-2], alpha = col[k-1]. Writes v (v[k-1] = 1,
// or all zeros when x = 0 and no reflection is needed), returns tau, stores beta in *off_diagonal.
double householder(const double* col, std::int64_t k, double* v, double* off_diagonal) {
  const double alpha = col[k - 1];
  double xnorm2 = 0;
  for (std::int64_t r = 0; r + 1 < k; ++r) xnorm2 += col[r] * col[r];
  if (xnorm2 == 0) {
    std::fill(v, v + k, 0.0);
    *off_diagonal = alpha;
    return 0;
  }
  const double beta = -std::copysign(std::sqrt(alpha * alpha + xnorm2), alpha);
  const double scale = 1 / (alpha - beta);
  for (std::int64_t r = 0; r + 1 < k; ++r) v[r] = col[r] * scale;
  v[k - 1] = 1;
  *off_diagonal = beta;
  return (beta - alpha) / beta;
}

// Householder reduction of the column-major upper triangle `a` (n x n, column stride ld) to the
// tridiagonal (d[0..n), e[0..n-1)); `a` is overwritten. scratch holds 4 n doubles.
template <class K>
inline __attribute__((always_inline)) void tridiagonalise_impl(double* a, std::int64_t n, std::int64_t ld, double* d,
                                                               double* e, double* scratch) {
  double* v = scratch;                       // previous reflector, rows 0..k
  double* w = scratch + n;                   // its w, rows 0..k
  double* vn = scratch + 2 * n;              // this step's reflector
  double* wn = scratch + 3 * n;              // this step's A v, then its w
  std::fill(scratch, scratch + 2 * n, 0.0);  // no previous reflector: the first pass only multiplies
  for (std::int64_t k = n - 1; k >= 1; --k) {
    double* col = a + k * ld;
    for (std::int64_t r = 0; r <= k; ++r) col[r] = update_entry<K>(col[r], v[r], w[r], v[k], w[k]);
    d[k] = col[k];
    const double tau = householder(col, k, vn, &e[k - 1]);
    std::fill(wn, wn + k, 0.0);
    const Pass pass{v, w, vn, wn};
    std::int64_t j = 0;
    for (; j + 4 <= k; j += 4) update_and_multiply<K, 4>(a, ld, j, pass);
    switch (k - j) {
      case 3: update_and_multiply<K, 3>(a, ld, j, pass); break;
      case 2: update_and_multiply<K, 2>(a, ld, j, pass); break;
      case 1: update_and_multiply<K, 1>(a, ld, j, pass); break;
      default: break;
    }
    double pv = 0;
    for (std::int64_t r = 0; r < k; ++r) {
      wn[r] *= tau;
      pv += wn[r] * vn[r];
    }
    const double half = 0.5 * tau * pv;
    for (std::int64_t r = 0; r < k; ++r) wn[r] = K::madd(-half, vn[r], wn[r]);
    std::swap(v, vn);
    std::swap(w, wn);
  }
  if (n > 0) d[0] = update_entry<K>(a[0], v[0], w[0], v[0], w[0]);
}

void tridiagonalise_generic(double* a, std::int64_t n, std::int64_t ld, double* d, double* e, double* scratch) {
  tridiagonalise_impl<Portable>(a, n, ld, d, e, scratch);
}

#ifdef HTCORE_EIG_X86
__attribute__((target("avx2,fma"), flatten)) void tridiagonalise_avx2(double* a, std::int64_t n, std::int64_t ld,
                                                                      double* d, double* e, double* scratch) {
  tridiagonalise_impl<Avx2>(a, n, ld, d, e, scratch);
}
#endif

std::atomic<bool> g_avx2_enabled{true};

bool use_avx2() {
#ifdef HTCORE_EIG_X86
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok && g_avx2_enabled.load(std::memory_order_relaxed);
#else
  return false;
#endif
}

// Eigenvalues of the symmetric 2 x 2 [[a, b], [b, c]] (LAPACK dlae2): rt1 has the larger modulus.
void eigenvalues_2x2(double a, double b, double c, double& rt1, double& rt2) {
  const double sm = a + c, adf = std::abs(a - c), ab = std::abs(b + b);
  const double acmx = std::abs(a) > std::abs(c) ? a : c;
  const double acmn = std::abs(a) > std::abs(c) ? c : a;
  double rt;
  if (adf > ab) rt = adf * std::sqrt(1 + (ab / adf) * (ab / adf));
  else if (adf < ab) rt = ab * std::sqrt(1 + (adf / ab) * (adf / ab));
  else rt = ab * std::sqrt(2.0);
  if (sm < 0) {
    rt1 = 0.5 * (sm - rt);
    rt2 = (acmx / rt1) * acmn - (b / rt1) * b;
  } else if (sm > 0) {
    rt1 = 0.5 * (sm + rt);
    rt2 = (acmx / rt1) * acmn - (b / rt1) * b;
  } else {
    rt1 = 0.5 * rt;
    rt2 = -0.5 * rt;
  }
}

// Wilkinson-type shift from the 2 x 2 at the top of the block (d0 the first diagonal, d1 the
// next, e2 the squared off-diagonal), as dsterf forms it.
double shift(double d0, double d1, double e2) {
  const double rte = std::sqrt(e2);
  const double sigma = (d1 - d0) / (2 * rte);
  const double r = std::hypot(sigma, 1.0);
  return d0 - rte / (sigma + std::copysign(r, sigma));
}

// Eigenvalues of the symmetric tridiagonal (d[0..n), e[0..n-1)), unsorted, in d; e is destroyed.
// Root-free implicit QL or QR (whichever end of each block is smaller in modulus goes first),
// after LAPACK dsterf, including its scaling of each unreduced block into a safe range.
void tridiagonal_eigenvalues(double* d, double* e, std::int64_t n, int max_sweeps) {
  constexpr double kEps = std::numeric_limits<double>::epsilon() / 2;
  constexpr double kEps2 = kEps * kEps;
  const double safmin = std::numeric_limits<double>::min();
  const double ssfmax = std::sqrt(1 / safmin) / 3;
  const double ssfmin = std::sqrt(safmin) / kEps2;
  const std::int64_t max_total = static_cast<std::int64_t>(max_sweeps) * n;
  std::int64_t sweeps = 0;
  std::int64_t l1 = 0;
  while (l1 < n) {
    if (l1 > 0) e[l1 - 1] = 0;
    std::int64_t m = l1;  // end of the unreduced block starting at l1
    for (; m < n - 1; ++m) {
      if (std::abs(e[m]) <= std::sqrt(std::abs(d[m])) * std::sqrt(std::abs(d[m + 1])) * kEps) {
        e[m] = 0;
        break;
      }
    }
    std::int64_t l = l1, lend = m;
    const std::int64_t lsv = l, lendsv = lend;
    l1 = m + 1;
    if (lend == l) continue;
    double anorm = 0;
    for (std::int64_t i = l; i <= lend; ++i) anorm = std::max(anorm, std::abs(d[i]));
    for (std::int64_t i = l; i < lend; ++i) anorm = std::max(anorm, std::abs(e[i]));
    if (anorm == 0) continue;
    double scale = 1;
    if (anorm > ssfmax) scale = ssfmax / anorm;
    if (anorm < ssfmin) scale = ssfmin / anorm;
    if (scale != 1) {
      for (std::int64_t i = l; i <= lend; ++i) d[i] *= scale;
      for (std::int64_t i = l; i < lend; ++i) e[i] *= scale;
    }
    for (std::int64_t i = l; i < lend; ++i) e[i] *= e[i];
    if (std::abs(d[lend]) < std::abs(d[l])) std::swap(l, lend);
    if (lend >= l) {  // QL: eigenvalues found at the top, l moves down
      while (l <= lend) {
        std::int64_t mm = l;
        for (; mm < lend; ++mm)
          if (std::abs(e[mm]) <= kEps2 * std::abs(d[mm] * d[mm + 1])) break;
        if (mm < lend) e[mm] = 0;
        if (mm == l) {
          ++l;
          continue;
        }
        if (mm == l + 1) {
          double rt1, rt2;
          eigenvalues_2x2(d[l], std::sqrt(e[l]), d[l + 1], rt1, rt2);
          d[l] = rt1;
          d[l + 1] = rt2;
          e[l] = 0;
          l += 2;
          continue;
        }
        if (sweeps == max_total)
          throw std::domain_error("symmetric eigenvalues: the QL iteration did not converge in " +
                                  std::to_string(max_total) + " sweeps (max_sweeps=" + std::to_string(max_sweeps) +
                                  ")");
        ++sweeps;
        const double sigma = shift(d[l], d[l + 1], e[l]);
        double c = 1, s = 0, gamma = d[mm] - sigma, p = gamma * gamma;
        for (std::int64_t i = mm - 1; i >= l; --i) {
          const double bb = e[i], r = p + bb;
          if (i != mm - 1) e[i + 1] = s * r;
          const double oldc = c, inverse_c = r / p;  // p / r and r / p side by side: no division
          c = p / r;                                 // waits for another on the critical path
          s = bb / r;
          const double oldgam = gamma, alpha = d[i];
          gamma = c * (alpha - sigma) - s * oldgam;
          d[i + 1] = oldgam + (alpha - gamma);
          p = c != 0 ? (gamma * gamma) * inverse_c : oldc * bb;
        }
        e[l] = s * p;
        d[l] = sigma + gamma;
      }
    } else {  // QR: eigenvalues found at the bottom, l moves up
      while (l >= lend) {
        std::int64_t mm = l;
        for (; mm > lend; --mm)
          if (std::abs(e[mm - 1]) <= kEps2 * std::abs(d[mm] * d[mm - 1])) break;
        if (mm > lend) e[mm - 1] = 0;
        if (mm == l) {
          --l;
          continue;
        }
        if (mm == l - 1) {
          double rt1, rt2;
          eigenvalues_2x2(d[l], std::sqrt(e[l - 1]), d[l - 1], rt1, rt2);
          d[l] = rt1;
          d[l - 1] = rt2;
          e[l - 1] = 0;
          l -= 2;
          continue;
        }
        if (sweeps == max_total)
          throw std::domain_error("symmetric eigenvalues: the QR iteration did not converge in " +
                                  std::to_string(max_total) + " sweeps (max_sweeps=" + std::to_string(max_sweeps) +
                                  ")");
        ++sweeps;
        const double sigma = shift(d[l], d[l - 1], e[l - 1]);
        double c = 1, s = 0, gamma = d[mm] - sigma, p = gamma * gamma;
        for (std::int64_t i = mm; i < l; ++i) {
          const double bb = e[i], r = p + bb;
          if (i != mm) e[i - 1] = s * r;
          const double oldc = c, inverse_c = r / p;  // p / r and r / p side by side: no division
          c = p / r;                                 // waits for another on the critical path
          s = bb / r;
          const double oldgam = gamma, alpha = d[i + 1];
          gamma = c * (alpha - sigma) - s * oldgam;
          d[i] = oldgam + (alpha - gamma);
          p = c != 0 ? (gamma * gamma) * inverse_c : oldc * bb;
        }
        e[l - 1] = s * p;
        d[l] = sigma + gamma;
      }
    }
    if (scale != 1)
      for (std::int64_t i = lsv; i <= lendsv; ++i) d[i] /= scale;
  }
}

// Column stride of the work matrix: a multiple of 8 doubles (64-byte aligned columns) that is
// not a multiple of 512 (4 KiB), so the four columns processed together do not alias in L1.
std::int64_t column_stride(std::int64_t n) {
  std::int64_t ld = (n + 7) / 8 * 8;
  if (ld % 512 == 0) ld += 8;
  return ld;
}

}  // namespace

bool symmetric_eigenvalues_uses_avx2() { return use_avx2(); }

void symmetric_eigenvalues_enable_avx2(bool enabled) { g_avx2_enabled.store(enabled, std::memory_order_relaxed); }

void symmetric_eigenvalues(const double* a, std::int64_t n, double* out, int max_sweeps) {
  require(n >= 0, [&] { return "symmetric eigenvalues: n must be >= 0, got " + std::to_string(n); });
  require(max_sweeps >= 0,
          [&] { return "symmetric eigenvalues: max_sweeps must be >= 0, got " + std::to_string(max_sweeps); });
  if (n == 0) return;
  double amax = 0;
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j <= i; ++j) {
      const double x = a[i * n + j];
      if (!std::isfinite(x))
        fail("symmetric eigenvalues: matrix has a non-finite entry at (" + std::to_string(i) + ", " +
             std::to_string(j) + ")");
      amax = std::max(amax, std::abs(x));
    }
  if (amax == 0) {
    std::fill(out, out + n, 0.0);
    return;
  }
  // Scale by 2^-exponent (exact) so max|a| is in [0.5, 1), clamped so the factor is a normal number.
  int exponent;
  std::frexp(amax, &exponent);
  exponent = std::clamp(exponent, -1000, 1000);
  const double down = std::ldexp(1.0, -exponent), up = std::ldexp(1.0, exponent);

  const std::int64_t ld = column_stride(n);
  std::vector<double> buffer(static_cast<std::size_t>(n * ld + 8 + 5 * n));
  const std::size_t skew = (64 - reinterpret_cast<std::uintptr_t>(buffer.data()) % 64) % 64 / sizeof(double);
  double* work = buffer.data() + skew;
  double* e = work + n * ld;
  double* scratch = e + n;
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j <= i; ++j) work[i * ld + j] = a[i * n + j] * down;
#ifdef HTCORE_EIG_X86
  if (use_avx2()) tridiagonalise_avx2(work, n, ld, out, e, scratch);
  else tridiagonalise_generic(work, n, ld, out, e, scratch);
#else
  tridiagonalise_generic(work, n, ld, out, e, scratch);
#endif
  tridiagonal_eigenvalues(out, e, n, max_sweeps);
  for (std::int64_t i = 0; i < n; ++i) out[i] *= up;
  std::sort(out, out + n);
}

}  // namespace htcore
