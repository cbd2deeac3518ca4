// Continuous power-law fit of Clauset, Shalizi & Newman (2009), exact over all candidate xmin and
// fast by branch and bound.
//
// Definitions (those of powerlaw 2.0's Fit, discrete=False):
// - u_0 < u_1 < ... < u_{m-1}: the distinct sample values <= xmax; below_j = #samples < u_j.
// - For a candidate xmin = u_i: n_t = n - below_i, pdf exponent a = 1 + n_t / sum_{x >= xmin} ln(x / xmin).
// - Empirical tail CDF at u_j (j >= i): A_j = (below_j - below_i) / n_t (the fraction strictly below u_j).
// - Fitted CDF: T_j = (1 - (u_j / xmin)^(1 - a)) / Z, Z = 1 - (xmax / xmin)^(1 - a) with an xmax, else 1.
// - KS distance D_i = max_j |T_j - A_j| over the distinct tail values; the fit is the candidate
//   with the smallest D (the lowest xmin on exact ties).
//
// Branch and bound: D_i is a max over points, so any subset of points gives a lower bound. A
// candidate whose lower bound exceeds the best distance found so far (tau) cannot win and is
// dropped. Survivors are evaluated exactly: first on a coarse grid of about sqrt(n_t) points, then
// inside each coarse interval whose bound (T and A are both non-decreasing, so on (p, q)
// T - A <= T_q - A_p - 1/n_t and A - T <= A_q - T_p - 1/n_t) exceeds the running maximum, in the
// same way (sampled at about sqrt(length) points, only the pieces whose bound exceeds the maximum
// looked into) until the pieces are short enough to scan point by point. Every
// surviving D_i is therefore exact and every dropped one is provably larger than the minimum, so
// the answer does not depend on the order in which threads visit candidates.
#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "errors.hpp"
#include "parallel.hpp"
#include "tails.hpp"
#include "vector_math.hpp"

namespace htcore {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
// Absolute slack on interval bounds for rounding in T and A (both in [0, 1]).
constexpr double kBoundSlack = 1e-14;

// The distinct values u_j of an ascending-sorted sample, reduced to what the fit reads: their
// ranks and logs. The logs overwrite the sorted copy (see distinct_values), so the values
// themselves are gone once the candidates are chosen.
struct DistinctTail {
  std::unique_ptr<std::int64_t[]> below;  // below[j]: samples strictly below u_j, j < m
  const double* log_value = nullptr;      // ln u_j
  std::int64_t n = 0, m = 0;
  std::int64_t size() const { return m; }
};

// Finds the distinct values of sorted[0..n) and moves them to sorted[0..m) (the ranks go to
// t.below); to_logs then replaces them by their logs in place. Without branches on the data: every
// value is written to the next free place, which only a new distinct value claims.
DistinctTail distinct_values(double* sorted, std::int64_t n) {
  DistinctTail t;
  t.n = n;
  t.below.reset(
      new std::int64_t[static_cast<std::size_t>(std::max<std::int64_t>(n, 1))]);  // pages touched only as far as used
  double previous = 0;  // every sample is > 0, so the first is new
  for (std::int64_t i = 0; i < n; ++i) {
    const double value = sorted[i];
    sorted[t.m] = value;
    t.below[static_cast<std::size_t>(t.m)] = i;
    t.m += value != previous;
    previous = value;
  }
  return t;
}

void to_logs(double* values, DistinctTail& t) {
  const std::int64_t m = t.size();
  log_values(values, m, values);
  t.log_value = values;
}

struct Candidate {
  std::int64_t i;           // first distinct value in the tail
  double xmin;              // need not be a sample value when fixed by the user
  double log_xmin;          // ln xmin
  long double log_sum = 0;  // sum of ln x over the samples >= u_i (set by add_log_sums)
};

// Fills log_sum of candidates sorted by i, accumulating over the distinct values from the top.
void add_log_sums(const DistinctTail& t, std::vector<Candidate>& candidates) {
  const std::int64_t m = t.size();
  long double acc = 0;
  auto c = candidates.rbegin();
  for (std::int64_t j = m - 1; j >= 0 && c != candidates.rend(); --j) {
    const std::int64_t next = j + 1 < m ? t.below[static_cast<std::size_t>(j + 1)] : t.n;
    acc += static_cast<long double>(next - t.below[static_cast<std::size_t>(j)]) * t.log_value[j];
    for (; c != candidates.rend() && c->i == j; ++c) c->log_sum = acc;
  }
}

// b as a double, for 0 <= b < 2^52: the bits of 2^52 + b, minus 2^52 (exact; unlike a cast, this
// vectorises without AVX-512).
inline double small_count(std::int64_t b) {
  const std::uint64_t bits = static_cast<std::uint64_t>(b) | 0x4330000000000000ull;
  double d;
  std::memcpy(&d, &bits, sizeof d);
  return d - 0x1p52;
}

// |T_j - A_j| = |(1 - e^(slope (ln u_j - ln xmin))) / Z - (below_j - below_i) / n_t|: the fitted CDF
// (slope = 1 - a < 0, so the exponent is <= 0) against the empirical one. One expression for the
// scalar and the block evaluations, so they agree bit for bit.
inline double ks_gap(double log_value, std::int64_t below, double log_xmin, double slope, double inv_z, double below_i,
                     double inv_n) {
  const double fitted = (1.0 - exp_nonpositive(slope * (log_value - log_xmin))) * inv_z;
  return std::fabs(fitted - (small_count(below) - below_i) * inv_n);
}

// out[t] = ks_gap at j = j0 + t, t < count: the inner loop of the fit (its exponentials vectorise).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void ks_gaps(const double* log_value, const std::int64_t* below, std::int64_t j0, int count, double log_xmin,
             double slope, double inv_z, double below_i, double inv_n, double* out) {
  for (int t = 0; t < count; ++t)
    out[t] = ks_gap(log_value[j0 + t], below[j0 + t], log_xmin, slope, inv_z, below_i, inv_n);
}

// One candidate's fitted model and the evaluation of |T_j - A_j|.
class TailModel {
 public:
  TailModel(const DistinctTail& t, const Candidate& c, double log_xmax) : t_(t), c_(c) {
    n_tail_ = t.n - t.below[static_cast<std::size_t>(c.i)];
    const long double log_sum = c.log_sum - static_cast<long double>(n_tail_) * static_cast<long double>(c.log_xmin);
    exponent_ = static_cast<double>(1.0L + static_cast<long double>(n_tail_) / log_sum);
    const double z = std::isfinite(log_xmax) ? -std::expm1((1.0 - exponent_) * (log_xmax - c.log_xmin)) : 1.0;
    inv_z_ = 1.0 / z;
    inv_n_ = 1.0 / static_cast<double>(n_tail_);
    below_i_ = small_count(t.below[static_cast<std::size_t>(c.i)]);
  }
  double exponent() const { return exponent_; }
  std::int64_t n_tail() const { return n_tail_; }
  double inv_n() const { return inv_n_; }
  double fitted(std::int64_t j) const {
    return (1.0 - exp_nonpositive((1.0 - exponent_) * (t_.log_value[j] - c_.log_xmin))) * inv_z_;
  }
  double empirical(std::int64_t j) const {
    return (small_count(t_.below[static_cast<std::size_t>(j)]) - below_i_) * inv_n_;
  }
  double gap(std::int64_t j) const {
    return ks_gap(t_.log_value[j], t_.below[static_cast<std::size_t>(j)], c_.log_xmin, 1.0 - exponent_, inv_z_,
                  below_i_, inv_n_);
  }
  // out[t] = gap(j0 + t) for t < count.
  void gaps(std::int64_t j0, int count, double* out) const {
    ks_gaps(t_.log_value, t_.below.get(), j0, count, c_.log_xmin, 1.0 - exponent_, inv_z_, below_i_, inv_n_, out);
  }

 private:
  const DistinctTail& t_;
  Candidate c_;
  std::int64_t n_tail_ = 0;
  double exponent_ = 0, inv_z_ = 1, inv_n_ = 1, below_i_ = 0;
};

void atomic_min(std::atomic<double>& target, double value) {
  double current = target.load(std::memory_order_relaxed);
  while (value < current && !target.compare_exchange_weak(current, value, std::memory_order_relaxed)) {
  }
}

// A point of the scan: index j, fitted and empirical CDF there.
struct ScanPoint {
  std::int64_t j;
  double fit, emp;
};

ScanPoint scan_point(const TailModel& model, std::int64_t j) { return {j, model.fitted(j), model.empirical(j)}; }

// The bound on |T_j - A_j| over the points strictly inside (a, b), from the values at a and b: T and
// A are both non-decreasing and A rises by at least 1/n_t per distinct value, so there
// T - A <= T_b - A_a - 1/n_t and A - T <= A_b - T_a - 1/n_t.
double interval_bound(const ScanPoint& a, const ScanPoint& b, double inv_n) {
  return std::max(b.fit - a.emp, b.emp - a.fit) - inv_n + kBoundSlack;
}

// Raises `best` (and `where`) to the largest gap strictly inside (a, b) if it exceeds `best`: a long
// interval is sampled at about sqrt(length) points, and only the pieces whose bound exceeds the
// running maximum are looked into, most promising first, the same way again; pieces of at most
// kScan points are scanned in blocks of vectorised gaps. Returns false as soon as `best` exceeds
// tau (the candidate cannot win), else true with the exact maximum. `depth` picks this level's
// buffers, reused across candidates (each level takes a square root: 8 levels reach past 2^64).
bool scan_interval(const TailModel& model, const ScanPoint& a, const ScanPoint& b, const std::atomic<double>& tau,
                   double& best, std::int64_t& where, int depth = 0) {
  constexpr std::int64_t kScan = 64;  // below this many points, scanning beats sampling (measured)
  if (b.j - a.j - 1 <= kScan) {
    constexpr int kBlock = 256;
    double gaps[kBlock];
    for (std::int64_t j0 = a.j + 1; j0 < b.j; j0 += kBlock) {
      const int count = static_cast<int>(std::min<std::int64_t>(kBlock, b.j - j0));
      model.gaps(j0, count, gaps);
      for (int t = 0; t < count; ++t) {
        if (gaps[t] > best) {
          best = gaps[t];
          where = j0 + t;
        }
      }
    }
    return best <= tau.load(std::memory_order_relaxed);
  }
  struct Level {
    std::vector<ScanPoint> points;
    std::vector<std::pair<double, std::size_t>> open;  // (bound, piece), pieces worth looking into
  };
  thread_local std::array<Level, 8> levels;
  auto& [points, open] = levels[static_cast<std::size_t>(depth)];
  points.assign(1, a);
  const std::int64_t stride = static_cast<std::int64_t>(std::sqrt(static_cast<double>(b.j - a.j)));
  for (std::int64_t j = a.j + stride; j < b.j; j += stride) {
    points.push_back(scan_point(model, j));
    const double d = std::fabs(points.back().fit - points.back().emp);
    if (d > best) {
      best = d;
      where = j;
      if (best > tau.load(std::memory_order_relaxed)) return false;
    }
  }
  points.push_back(b);
  open.clear();
  for (std::size_t i = 0; i + 1 < points.size(); ++i) {
    const double ub = interval_bound(points[i], points[i + 1], model.inv_n());
    if (points[i + 1].j - points[i].j >= 2 && ub > best) open.emplace_back(ub, i);
  }
  std::sort(open.begin(), open.end(), [](const auto& x, const auto& y) { return x.first > y.first; });
  for (const auto& [ub, i] : open) {
    if (ub <= best) break;
    if (!scan_interval(model, points[i], points[i + 1], tau, best, where, depth + 1)) return false;
  }
  return true;
}

// Exact KS distance of a candidate over the distinct values first..last, or +inf as soon as it
// provably exceeds tau. `hint` holds the index where a recent candidate had its maximum, checked
// first (neighbouring candidates peak nearby); it is updated.
double ks_distance_or_prune(const TailModel& model, std::int64_t first, std::int64_t last,
                            const std::atomic<double>& tau, std::int64_t& hint) {
  if (hint > first && hint <= last && model.gap(hint) > tau.load(std::memory_order_relaxed)) return kInf;
  const ScanPoint a = scan_point(model, first), b = scan_point(model, last);
  double best = std::fabs(a.fit - a.emp);
  std::int64_t where = first;
  if (const double d = std::fabs(b.fit - b.emp); d > best) {
    best = d;
    where = last;
  }
  const bool exact = best <= tau.load(std::memory_order_relaxed) && scan_interval(model, a, b, tau, best, where);
  hint = where;
  return exact ? best : kInf;
}

// The candidates, from the distinct values u[0..m) before they are replaced by their logs; ln u_j
// is computed here exactly as to_logs computes it, so log_xmin equals t.log_value[i].
std::vector<Candidate> make_candidates(const double* u, std::int64_t m, double fixed_xmin, std::int64_t grid) {
  std::vector<Candidate> out;
  if (!std::isnan(fixed_xmin)) {
    const std::int64_t i = std::lower_bound(u, u + m, fixed_xmin) - u;
    require(i <= m - 2 || (i == m - 1 && u[i] > fixed_xmin), [&] {
      return "xmin = " + std::to_string(fixed_xmin) + " leaves fewer than 2 distinct tail values to fit";
    });
    out.push_back({i, fixed_xmin, log_positive(fixed_xmin)});
    return out;
  }
  require(m >= 2,
          [&] { return "the power-law fit needs at least 2 distinct sample values, got " + std::to_string(m); });
  if (grid <= 0 || grid >= m - 1) {
    out.reserve(static_cast<std::size_t>(m - 1));
    for (std::int64_t i = 0; i + 1 < m; ++i) out.push_back({i, u[i], log_positive(u[i])});
    return out;
  }
  const double lo = log_positive(u[0]), hi = log_positive(u[m - 2]);
  for (std::int64_t g = 0; g < grid; ++g) {
    const double target = grid == 1 ? lo : lo + (hi - lo) * static_cast<double>(g) / static_cast<double>(grid - 1);
    // lower_bound over ln u_j computed on demand: the same comparisons as over the stored logs.
    std::int64_t i = std::lower_bound(u, u + m, target, [](double v, double x) { return log_positive(v) < x; }) - u;
    i = std::min(i, m - 2);
    if (out.empty() || out.back().i != i) out.push_back({i, u[i], log_positive(u[i])});
  }
  return out;
}

}  // namespace

PowerLawResult fit_sorted_powerlaw(double* sorted, std::int64_t n, double xmax, double fixed_xmin, std::int64_t grid) {
  const std::int64_t used = std::upper_bound(sorted, sorted + n, xmax) - sorted;
  require(used >= 2, [&] { return "the power-law fit needs at least 2 samples <= xmax, got " + std::to_string(used); });
  DistinctTail tail = distinct_values(sorted, used);
  std::vector<Candidate> candidates = make_candidates(sorted, tail.size(), fixed_xmin, grid);
  to_logs(sorted, tail);
  add_log_sums(tail, candidates);
  const double log_xmax = std::isfinite(xmax) ? log_positive(xmax) : kInf;
  const std::int64_t count = static_cast<std::int64_t>(candidates.size());
  const std::int64_t last = tail.size() - 1;

  std::atomic<double> tau{kInf};
  double best_d = kInf;
  std::int64_t best_c = -1;
  // A first pass over every stride-th candidate finds a small tau early, so that the full pass
  // prunes most candidates after one or a few points.
  const std::int64_t stride =
      std::max<std::int64_t>(1, static_cast<std::int64_t>(std::sqrt(static_cast<double>(count)) / 4));
  // Small fits run on one thread: waking a team costs more than they take.
  const bool parallel = static_cast<double>(count) * std::sqrt(static_cast<double>(last + 1)) > 2e5;
#pragma omp parallel num_threads(htcore::num_threads()) if (parallel)
  {
    double local_d = kInf;
    std::int64_t local_c = -1;
    std::int64_t hint = -1;
    auto visit = [&](std::int64_t c) {
      const Candidate& cand = candidates[static_cast<std::size_t>(c)];
      const double d = ks_distance_or_prune(TailModel(tail, cand, log_xmax), cand.i, last, tau, hint);
      if (d < local_d || (d == local_d && c < local_c)) {
        local_d = d;
        local_c = c;
      }
      if (d < kInf) atomic_min(tau, d);
    };
#pragma omp for schedule(dynamic, 4)
    for (std::int64_t c = 0; c < count; c += stride) visit(c);
#pragma omp for schedule(dynamic, 64) nowait
    for (std::int64_t c = 0; c < count; ++c) {
      if (c % stride != 0) visit(c);
    }
#pragma omp critical
    {
      if (local_c >= 0 && (local_d < best_d || (local_d == best_d && local_c < best_c) || best_c < 0)) {
        best_d = local_d;
        best_c = local_c;
      }
    }
  }
  require(best_c >= 0, "the power-law fit found no candidate xmin with a finite KS distance");
  const Candidate& win = candidates[static_cast<std::size_t>(best_c)];
  const TailModel model(tail, win, log_xmax);
  PowerLawResult out;
  out.pdf_exponent = model.exponent();
  out.xmin = win.xmin;
  out.ks_distance = best_d;
  out.n_tail = model.n_tail();
  out.candidates = count;
  return out;
}

PowerLawResult fit_powerlaw(const double* x, std::int64_t n, double xmax, double fixed_xmin, std::int64_t grid) {
  return fit_sorted_powerlaw(sorted_positive(x, n).get(), n, xmax, fixed_xmin, grid);
}

PowerLawResult fit_powerlaw(const float* x, std::int64_t n, double xmax, double fixed_xmin, std::int64_t grid) {
  return fit_sorted_powerlaw(sorted_positive(x, n).get(), n, xmax, fixed_xmin, grid);
}

}  // namespace htcore
