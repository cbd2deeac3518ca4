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
#include <cmath>
#include <cstring>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "errors.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HTCORE_EIG_X86 1
#endif

namespace htcore {
namespace {

using i64 = std::int64_t;

// Multiply-add, contracted to one FMA instruction or not: the two code paths.
struct Fused {
  static double madd(double a, double b, double c) { return std::fma(a, b, c); }
};
struct Separate {
  static double madd(double a, double b, double c) { return a * b + c; }
};

// Columns c[0..3] (rows 0..len-1 each, len <= the column index): apply the rank-2 update
// c[t][r] -= v[r] w[j+t] + w[r] v[j+t], then accumulate the next product y = A' x:
// y[r] += c[t][r] x[j+t] and return the dots s[t] = sum_r c[t][r] x[r].
template <class F, int C>
inline __attribute__((always_inline)) void update_columns(double* const* __restrict c, i64 len, const double* __restrict v,
                                                          const double* __restrict w, const double* vj,
                                                          const double* wj, const double* __restrict x,
                                                          const double* xj, double* __restrict y, double* s) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  double* __restrict c0 = c[0];
  double* __restrict c1 = c[C > 1 ? 1 : 0];
  double* __restrict c2 = c[C > 2 ? 2 : 0];
  double* __restrict c3 = c[C > 3 ? 3 : 0];
#pragma omp simd reduction(+ : s0, s1, s2, s3)
  for (i64 r = 0; r < len; ++r) {
    const double vr = v[r], wr = w[r], xr = x[r];
    double acc = y[r];
    const double a0 = F::madd(-wr, vj[0], F::madd(-vr, wj[0], c0[r]));
    c0[r] = a0;
    s0 = F::madd(a0, xr, s0);
    acc = F::madd(a0, xj[0], acc);
    if (C > 1) {
      const double a1 = F::madd(-wr, vj[1], F::madd(-vr, wj[1], c1[r]));
      c1[r] = a1;
      s1 = F::madd(a1, xr, s1);
      acc = F::madd(a1, xj[1], acc);
    }
    if (C > 2) {
      const double a2 = F::madd(-wr, vj[2], F::madd(-vr, wj[2], c2[r]));
      c2[r] = a2;
      s2 = F::madd(a2, xr, s2);
      acc = F::madd(a2, xj[2], acc);
    }
    if (C > 3) {
      const double a3 = F::madd(-wr, vj[3], F::madd(-vr, wj[3], c3[r]));
      c3[r] = a3;
      s3 = F::madd(a3, xr, s3);
      acc = F::madd(a3, xj[3], acc);
    }
    y[r] = acc;
  }
  s[0] = s0;
  if (C > 1) s[1] = s1;
  if (C > 2) s[2] = s2;
  if (C > 3) s[3] = s3;
}

// The update of one entry, as update_columns does it (used for the diagonal and the small triangle).
template <class F>
inline double update_entry(double a, double vr, double wr, double vj, double wj) {
  return F::madd(-wr, vj, F::madd(-vr, wj, a));
}

// Columns j..j+C-1 of the leading block: update rows 0..j+C-1 with (v, w) and add their part of
// y = A' x (A' the updated symmetric block, only its upper triangle stored).
template <class F, int C>
inline __attribute__((always_inline)) void update_and_multiply(double* a, i64 ld, i64 j, const double* v, const double* w,
                                                               const double* x, double* y) {
  double* cols[4];
  for (int t = 0; t < C; ++t) cols[t] = a + (j + t) * ld;
  double s[4];
  update_columns<F, C>(cols, j, v, w, v + j, w + j, x, x + j, y, s);
  // Rows j..j+C-1 (the C x C triangle at the diagonal), in the same order for every C.
  for (int t = 0; t < C; ++t) {
    double* col = cols[t];
    for (int u = 0; u <= t; ++u) {
      const i64 r = j + u;
      const double val = update_entry<F>(col[r], v[r], w[r], v[j + t], w[j + t]);
      col[r] = val;
      if (u < t) {
        s[t] = F::madd(val, x[r], s[t]);
        y[r] = F::madd(val, x[j + t], y[r]);
      } else {
        y[r] = F::madd(val, x[r], y[r] + s[t]);
      }
    }
  }
}

// Reflector of column k (LAPACK dlarfg): x = col[0..k-2], alpha = col[k-1]. Writes v (v[k-1] = 1,
// or all zeros when x = 0 and no reflection is needed), returns tau, stores beta in *off_diagonal.
double householder(const double* col, i64 k, double* v, double* off_diagonal) {
  const double alpha = col[k - 1];
  double xnorm2 = 0;
  for (i64 r = 0; r + 1 < k; ++r) xnorm2 += col[r] * col[r];
  if (xnorm2 == 0) {
    std::fill(v, v + k, 0.0);
    *off_diagonal = alpha;
    return 0;
  }
  const double beta = -std::copysign(std::sqrt(alpha * alpha + xnorm2), alpha);
  const double scale = 1 / (alpha - beta);
  for (i64 r = 0; r + 1 < k; ++r) v[r] = col[r] * scale;
  v[k - 1] = 1;
  *off_diagonal = beta;
  return (beta - alpha) / beta;
}

// Householder reduction of the column-major upper triangle `a` (n x n, column stride ld) to the
// tridiagonal (d[0..n), e[0..n-1)); `a` is overwritten. scratch holds 4 n doubles.
template <class F>
inline __attribute__((always_inline)) void tridiagonalise_impl(double* a, i64 n, i64 ld, double* d, double* e,
                                                                double* scratch) {
  double* v = scratch;          // previous reflector, rows 0..k
  double* w = scratch + n;      // its w, rows 0..k
  double* vn = scratch + 2 * n; // this step's reflector
  double* wn = scratch + 3 * n; // this step's A v, then its w
  std::fill(scratch, scratch + 2 * n, 0.0);  // no previous reflector: the first pass only multiplies
  for (i64 k = n - 1; k >= 1; --k) {
    double* col = a + k * ld;
    for (i64 r = 0; r <= k; ++r) col[r] = update_entry<F>(col[r], v[r], w[r], v[k], w[k]);
    d[k] = col[k];
    const double tau = householder(col, k, vn, &e[k - 1]);
    std::fill(wn, wn + k, 0.0);
    i64 j = 0;
    for (; j + 4 <= k; j += 4) update_and_multiply<F, 4>(a, ld, j, v, w, vn, wn);
    switch (k - j) {
      case 3: update_and_multiply<F, 3>(a, ld, j, v, w, vn, wn); break;
      case 2: update_and_multiply<F, 2>(a, ld, j, v, w, vn, wn); break;
      case 1: update_and_multiply<F, 1>(a, ld, j, v, w, vn, wn); break;
      default: break;
    }
    double pv = 0;
    for (i64 r = 0; r < k; ++r) {
      wn[r] *= tau;
      pv += wn[r] * vn[r];
    }
    const double half = 0.5 * tau * pv;
    for (i64 r = 0; r < k; ++r) wn[r] = F::madd(-half, vn[r], wn[r]);
    std::swap(v, vn);
    std::swap(w, wn);
  }
  if (n > 0) d[0] = update_entry<F>(a[0], v[0], w[0], v[0], w[0]);
}

void tridiagonalise_generic(double* a, i64 n, i64 ld, double* d, double* e, double* scratch) {
  tridiagonalise_impl<Separate>(a, n, ld, d, e, scratch);
}

#ifdef HTCORE_EIG_X86
__attribute__((target("avx2,fma"))) void tridiagonalise_avx2(double* a, i64 n, i64 ld, double* d, double* e,
                                                             double* scratch) {
  tridiagonalise_impl<Fused>(a, n, ld, d, e, scratch);
}
#endif

bool cpu_has_avx2_fma() {
#ifdef HTCORE_EIG_X86
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
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
void tridiagonal_eigenvalues(double* d, double* e, i64 n, int max_sweeps) {
  constexpr double eps = std::numeric_limits<double>::epsilon() / 2;
  constexpr double eps2 = eps * eps;
  const double safmin = std::numeric_limits<double>::min();
  const double ssfmax = std::sqrt(1 / safmin) / 3;
  const double ssfmin = std::sqrt(safmin) / eps2;
  const i64 max_total = static_cast<i64>(max_sweeps) * n;
  i64 sweeps = 0;
  i64 l1 = 0;
  while (l1 < n) {
    if (l1 > 0) e[l1 - 1] = 0;
    i64 m = l1;  // end of the unreduced block starting at l1
    for (; m < n - 1; ++m) {
      if (std::abs(e[m]) <= std::sqrt(std::abs(d[m])) * std::sqrt(std::abs(d[m + 1])) * eps) {
        e[m] = 0;
        break;
      }
    }
    i64 l = l1, lend = m;
    const i64 lsv = l, lendsv = lend;
    l1 = m + 1;
    if (lend == l) continue;
    double anorm = 0;
    for (i64 i = l; i <= lend; ++i) anorm = std::max(anorm, std::abs(d[i]));
    for (i64 i = l; i < lend; ++i) anorm = std::max(anorm, std::abs(e[i]));
    if (anorm == 0) continue;
    double scale = 1;
    if (anorm > ssfmax) scale = ssfmax / anorm;
    if (anorm < ssfmin) scale = ssfmin / anorm;
    if (scale != 1) {
      for (i64 i = l; i <= lend; ++i) d[i] *= scale;
      for (i64 i = l; i < lend; ++i) e[i] *= scale;
    }
    for (i64 i = l; i < lend; ++i) e[i] *= e[i];
    if (std::abs(d[lend]) < std::abs(d[l])) std::swap(l, lend);
    if (lend >= l) {  // QL: eigenvalues found at the top, l moves down
      while (l <= lend) {
        i64 mm = l;
        for (; mm < lend; ++mm)
          if (std::abs(e[mm]) <= eps2 * std::abs(d[mm] * d[mm + 1])) break;
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
                                  std::to_string(max_total) + " sweeps (max_sweeps=" + std::to_string(max_sweeps) + ")");
        ++sweeps;
        const double sigma = shift(d[l], d[l + 1], e[l]);
        double c = 1, s = 0, gamma = d[mm] - sigma, p = gamma * gamma;
        for (i64 i = mm - 1; i >= l; --i) {
          const double bb = e[i], r = p + bb;
          if (i != mm - 1) e[i + 1] = s * r;
          const double oldc = c, inverse_c = r / p;  // p / r and r / p side by side: no division
          c = p / r;                                   // waits for another on the critical path
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
        i64 mm = l;
        for (; mm > lend; --mm)
          if (std::abs(e[mm - 1]) <= eps2 * std::abs(d[mm] * d[mm - 1])) break;
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
                                  std::to_string(max_total) + " sweeps (max_sweeps=" + std::to_string(max_sweeps) + ")");
        ++sweeps;
        const double sigma = shift(d[l], d[l - 1], e[l - 1]);
        double c = 1, s = 0, gamma = d[mm] - sigma, p = gamma * gamma;
        for (i64 i = mm; i < l; ++i) {
          const double bb = e[i], r = p + bb;
          if (i != mm) e[i - 1] = s * r;
          const double oldc = c, inverse_c = r / p;  // p / r and r / p side by side: no division
          c = p / r;                                   // waits for another on the critical path
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
      for (i64 i = lsv; i <= lendsv; ++i) d[i] /= scale;
  }
}

// Column stride of the work matrix: a multiple of 8 doubles (64-byte aligned columns) that is
// not a multiple of 512 (4 KiB), so the four columns processed together do not alias in L1.
i64 column_stride(i64 n) {
  i64 ld = (n + 7) / 8 * 8;
  if (ld % 512 == 0) ld += 8;
  return ld;
}

}  // namespace

bool symmetric_eigenvalues_uses_avx2() { return cpu_has_avx2_fma(); }

void symmetric_eigenvalues(const double* a, i64 n, double* out, int max_sweeps) {
  require(n >= 0, "symmetric eigenvalues: n must be >= 0, got " + std::to_string(n));
  require(max_sweeps >= 0, "symmetric eigenvalues: max_sweeps must be >= 0, got " + std::to_string(max_sweeps));
  if (n == 0) return;
  double amax = 0;
  for (i64 i = 0; i < n; ++i)
    for (i64 j = 0; j <= i; ++j) {
      const double x = a[i * n + j];
      if (!std::isfinite(x))
        fail("symmetric eigenvalues: matrix has a non-finite entry at (" + std::to_string(i) + ", " + std::to_string(j) + ")");
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

  const i64 ld = column_stride(n);
  std::vector<double> buffer(static_cast<std::size_t>(n * ld + 8 + 5 * n));
  const std::size_t skew = (64 - reinterpret_cast<std::uintptr_t>(buffer.data()) % 64) % 64 / sizeof(double);
  double* work = buffer.data() + skew;
  double* e = work + n * ld;
  double* scratch = e + n;
  for (i64 i = 0; i < n; ++i)
    for (i64 j = 0; j <= i; ++j) work[i * ld + j] = a[i * n + j] * down;
#ifdef HTCORE_EIG_X86
  if (cpu_has_avx2_fma()) tridiagonalise_avx2(work, n, ld, out, e, scratch);
  else tridiagonalise_generic(work, n, ld, out, e, scratch);
#else
  tridiagonalise_generic(work, n, ld, out, e, scratch);
#endif
  tridiagonal_eigenvalues(out, e, n, max_sweeps);
  for (i64 i = 0; i < n; ++i) out[i] *= up;
  std::sort(out, out + n);
}

}  // namespace htcore
