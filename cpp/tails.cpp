// Hill, moments (Dekkers-Einmahl-de Haan) and Pickands estimators and the double bootstrap that
// chooses k.
#include "tails.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "errors.hpp"
#include "parallel.hpp"
#include "splitmix64.hpp"
#include "vector_math.hpp"

namespace htcore {

namespace {

std::string k_range_message(const char* what, std::int64_t k, std::int64_t n, std::int64_t k_min, std::int64_t k_max) {
  return std::string(what) + " needs " + std::to_string(k_min) + " <= k <= " + std::to_string(k_max) +
         " for n = " + std::to_string(n) + " samples, got k = " + std::to_string(k);
}

// Means over the top k of (ln X_(i) - ln X_(k+1))^j for j = 1, 2; log_at(i) = ln X_(i+1).
template <class LogAt>
void log_excess_moments(LogAt log_at, std::int64_t k, double* m1, double* m2) {
  const double ref = log_at(k);
  double s1 = 0, s2 = 0;
  for (std::int64_t i = 0; i < k; ++i) {
    const double d = log_at(i) - ref;
    s1 += d;
    s2 += d * d;
  }
  *m1 = s1 / static_cast<double>(k);
  *m2 = s2 / static_cast<double>(k);
}

// ln X_(i+1) of an ascending-sorted sample, computed on demand.
auto sorted_log(const double* sorted, std::int64_t n) {
  return [sorted, n](std::int64_t i) { return log_positive(sorted[n - 1 - i]); };
}

std::string ties_message(const char* what, std::int64_t k) {
  return std::string(what) + " is undefined at k = " + std::to_string(k) + ": the order statistics it uses are tied";
}

}  // namespace

namespace {

// Hill or moments estimate at k from log_at(i) = ln X_(i+1).
template <class LogAt>
double log_moment_xi(TailMethod method, LogAt log_at, std::int64_t n, std::int64_t k) {
  double m1, m2;
  if (method == TailMethod::hill) {
    require(k >= 1 && k <= n - 1, [&] { return k_range_message("hill", k, n, 1, n - 1); });
    log_excess_moments(log_at, k, &m1, &m2);
    require(m1 > 0, [&] { return ties_message("hill", k); });
    return m1;
  }
  require(k >= 2 && k <= n - 1, [&] { return k_range_message("moments", k, n, 2, n - 1); });
  log_excess_moments(log_at, k, &m1, &m2);
  require(m2 > 0 && m1 * m1 != m2, [&] { return ties_message("moments", k); });
  return m1 + 1.0 - 0.5 / (1.0 - m1 * m1 / m2);
}

}  // namespace

double tail_xi(TailMethod method, const double* sorted, std::int64_t n, std::int64_t k) {
  if (method != TailMethod::pickands) return log_moment_xi(method, sorted_log(sorted, n), n, k);
  require(k >= 1 && k <= n / 4, [&] { return k_range_message("pickands", k, n, 1, n / 4); });  // (4 * k could overflow)
  const double a = sorted[n - k], b = sorted[n - 2 * k], c = sorted[n - 4 * k];
  require(a > b && b > c, [&] { return ties_message("pickands", k); });
  return std::log((a - b) / (b - c)) / std::log(2.0);
}

double tail_xi_from_logs(TailMethod method, const double* logs, std::int64_t n, std::int64_t k) {
  require(method != TailMethod::pickands, "the Pickands estimator needs the sorted values, not their logs");
  return log_moment_xi(method, [logs](std::int64_t i) { return logs[i]; }, n, k);
}

namespace {

// ---- random numbers: one xoshiro256** stream per (seed, stage, resample) ----

class Rng {
 public:
  Rng(std::uint64_t seed, std::uint64_t stream) {
    std::uint64_t state = seed ^ (stream * 0xD1B54A32D192ED03ull);
    for (auto& word : s_) word = splitmix64(state);
  }
  static Rng from_state(std::uint64_t a, std::uint64_t b, std::uint64_t c, std::uint64_t d) {
    Rng rng;
    rng.s_[0] = a;
    rng.s_[1] = b;
    rng.s_[2] = c;
    rng.s_[3] = d;
    return rng;
  }
  void state(std::uint64_t& a, std::uint64_t& b, std::uint64_t& c, std::uint64_t& d) const {
    a = s_[0];
    b = s_[1];
    c = s_[2];
    d = s_[3];
  }
  // Uniform on (0, 1].
  double uniform() { return static_cast<double>((next() >> 11) + 1) * 0x1.0p-53; }
  double normal() {  // Box-Muller, one of the pair
    return std::sqrt(-2.0 * std::log(uniform())) * std::cos(6.283185307179586 * uniform());
  }
  // Marsaglia & Tsang (2000), shape >= 1.
  double gamma(double shape) {
    const double d = shape - 1.0 / 3.0, c = 1.0 / std::sqrt(9.0 * d);
    for (;;) {
      const double x = normal(), t = 1.0 + c * x;
      if (t <= 0) continue;
      const double v = t * t * t;
      if (std::log(uniform()) < 0.5 * x * x + d - d * v + d * std::log(v)) return d * v;
    }
  }

 private:
  Rng() = default;
  static std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  std::uint64_t next() {
    const std::uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const std::uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }
  std::uint64_t s_[4];
};

// v[j] = -ln v[j] for v[j] in [2^-64, 1]. Every clone uses the same IEEE operations (multiply-adds
// are not fused in this file, see CMakeLists.txt), so every clone gives the same bits.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void neg_log_units(double* v, std::int64_t m) {
  for (std::int64_t j = 0; j < m; ++j) v[j] = neg_log_unit(v[j]);
}

// ---- the bootstrap, kLanes resamples at a time ----
//
// Each resample has its own random stream and its own running sums, so resamples r .. r + 7 are
// computed side by side, one per vector lane (arrays indexed [j * kLanes + lane]): every lane does
// exactly the operations, in the same order, that one resample alone would, so the results are
// bit for bit those of a one-at-a-time loop, but the serial dependencies (partial sums) of eight
// resamples overlap and the arithmetic vectorises (one AVX-512 or two AVX2 registers a step; four
// lanes were as fast with AVX2 and slower with AVX-512).
constexpr int kLanes = 8;

// kLanes xoshiro256** streams, word-major so that one step of all of them vectorises.
struct LaneRngs {
  std::uint64_t s[4][kLanes];
  void seed(int lane, const Rng& rng) { rng.state(s[0][lane], s[1][lane], s[2][lane], s[3][lane]); }
  Rng lane(int l) const { return Rng::from_state(s[0][l], s[1][l], s[2][l], s[3][l]); }
};

// u[l] = what Rng::uniform() of lane l returns, for all lanes (the uint64 -> double conversion is
// done in two exact 32-bit halves, which vectorises where a 64-bit one does not).
__attribute__((always_inline)) inline void lane_uniforms(LaneRngs& g, double* u) {
#pragma omp simd
  for (int l = 0; l < kLanes; ++l) {
    const std::uint64_t s1 = g.s[1][l];
    const std::uint64_t x = (s1 << 2) + s1, rotated = (x << 7) | (x >> 57);  // s1 * 5, rotated
    const std::uint64_t result = (rotated << 3) + rotated;                   // times 9
    const std::uint64_t t = s1 << 17;
    g.s[2][l] ^= g.s[0][l];
    g.s[3][l] ^= s1;
    g.s[1][l] = s1 ^ g.s[2][l];
    g.s[0][l] ^= g.s[3][l];
    g.s[2][l] ^= t;
    g.s[3][l] = (g.s[3][l] << 45) | (g.s[3][l] >> 19);
    const std::uint64_t bits = result >> 11, hi = (bits >> 32) | 0x4330000000000000ull,
                        lo = (bits & 0xFFFFFFFFull) | 0x4330000000000000ull;
    double dh, dl;
    std::memcpy(&dh, &hi, sizeof dh);
    std::memcpy(&dl, &lo, sizeof dl);
    // (hi - 2^52) 2^32 + (lo - 2^52) is exact (< 2^53), and so is adding 1 (<= 2^53).
    u[l] = (((dh - 0x1p52) * 0x1p32 + (dl - 0x1p52)) + 1.0) * 0x1p-53;
  }
}

// spacing[j * kLanes + l] = S_(j+1) = E_1 + ... + E_(j+1) of lane l for j < m, E = -ln V for the
// next m uniforms V of each stream; partial[l] ends as S_m. In blocks that stay in cache.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void draw_partial_sums(LaneRngs& rngs, std::int64_t m, double* spacing, double* partial) {
  constexpr std::int64_t kBlock = 64;
  for (std::int64_t j0 = 0; j0 < m; j0 += kBlock) {
    const std::int64_t j1 = std::min(m, j0 + kBlock);
    double* block = spacing + j0 * kLanes;
    for (std::int64_t j = j0; j < j1; ++j) lane_uniforms(rngs, spacing + j * kLanes);
    neg_log_units(block, (j1 - j0) * kLanes);
    for (std::int64_t j = 0; j < j1 - j0; ++j)
#pragma omp simd
      for (int l = 0; l < kLanes; ++l) {
        partial[l] += block[j * kLanes + l];
        block[j * kLanes + l] = partial[l];
      }
  }
}

// The top k_max + 1 order statistics of kLanes bootstrap resamples (nb draws with replacement
// from n each; lane l is the resample of stream l). Only the smallest drawn ranks matter, so they
// are generated directly in increasing order: the smallest k_max + 1 of nb uniforms are
// U_(j) = S_j / S, with S_j the partial sums of exponential variates E_1..E_(k_max+1) and
// S = S_(k_max+1) + G, G ~ Gamma(nb - k_max) (the remaining nb + 1 - (k_max + 1) spacings).
// A drawn rank is floor(U n). O(k_max), not O(nb): a resample reads only the top of the sorted
// sample. The work is two fused passes over the k_max + 1 statistics (the arrays of four lanes
// outgrow the caches on big samples, so fewer passes matter more than fewer operations).
class LaneResamples {
 public:
  // Draws S_1..S_(k_max+1) (into spacing[j * kLanes + l]) and G; the streams advance as one
  // resample's Rng would: the k_max + 1 uniforms V_j (E_j = -ln V_j), then G.
  LaneResamples(const double* logs, std::int64_t n, std::int64_t nb, std::int64_t k_max, LaneRngs& rngs,
                double* spacing)
      : logs_(logs), spacing_(spacing), last_(static_cast<double>(n - 1)) {
    double partial[kLanes] = {};
    draw_partial_sums(rngs, k_max + 1, spacing, partial);
    for (int l = 0; l < kLanes; ++l) {
      Rng rng = rngs.lane(l);
      const double gamma = rng.gamma(static_cast<double>(nb - k_max));
      rngs.seed(l, rng);
      scale_[l] = static_cast<double>(n) / (partial[l] + gamma);
    }
    log_at(0, 1, top_);
  }

  // out[(j - j0) * kLanes + l] = ln of statistic j of lane l minus ln of its largest, j in [j0, j1).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
  void shifted_logs(std::int64_t j0, std::int64_t j1, double* out) const {
    log_at(j0, j1, out);
    for (std::int64_t j = 0; j < j1 - j0; ++j)
#pragma omp simd
      for (int l = 0; l < kLanes; ++l) out[j * kLanes + l] -= top_[l];
  }

 private:
  __attribute__((always_inline)) void log_at(std::int64_t j0, std::int64_t j1, double* out) const {
    for (std::int64_t j = j0; j < j1; ++j)
#pragma omp simd
      for (int l = 0; l < kLanes; ++l) {
        // min(n - 1, (int64) v) for 0 <= v < 2^52: floor, then the 2^52 trick for the conversion.
        const double rank = std::min(last_, std::floor(spacing_[j * kLanes + l] * scale_[l])) + 0x1p52;
        std::uint64_t bits;
        std::memcpy(&bits, &rank, sizeof bits);
        out[(j - j0) * kLanes + l] = logs_[bits - 0x4330000000000000ull];
      }
  }

  const double* logs_;
  const double* spacing_;
  double last_, scale_[kLanes], top_[kLanes];
};

// The statistic whose bootstrap mean is the AMSE proxy at k (Danielsson et al. for Hill; the
// difference of two moment-type estimators for the moments estimator, as Voitalov et al.), for the
// first `used` lanes, added to sum[k - 1] in lane order (resample order). Values where the moments
// are degenerate are skipped (Voitalov's "cleaning"), which marks that k unusable; count[k - 1]
// counts the values used (Hill's are never degenerate, so it counts only for moments).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void add_hill_amse_terms(const LaneResamples& resamples, const double* inv_k, std::int64_t k_max, int used,
                         double* sum) {
  constexpr std::int64_t kBlock = 128;
  double d[(kBlock + 1) * kLanes];  // statistics j0 - 1 .. j1 - 1 of the current block
  double s1[kLanes] = {}, s2[kLanes] = {}, term[kLanes];
  resamples.shifted_logs(0, 1, d + kBlock * kLanes);
  for (std::int64_t j0 = 1; j0 <= k_max; j0 += kBlock) {
    const std::int64_t j1 = std::min(k_max + 1, j0 + kBlock);
    std::copy(d + kBlock * kLanes, d + (kBlock + 1) * kLanes, d);  // the previous block's last
    resamples.shifted_logs(j0, j1, d + kLanes);
    for (std::int64_t k = j0; k < j1; ++k) {
      const double ik = inv_k[k - 1];
      const double* x = d + (k - j0) * kLanes;
#pragma omp simd
      for (int l = 0; l < kLanes; ++l) {
        const double r = x[kLanes + l];
        s1[l] += x[l];
        s2[l] += x[l] * x[l];
        const double m1 = s1[l] * ik - r;
        const double m2 = s2[l] * ik - 2.0 * r * s1[l] * ik + r * r;
        const double delta = m2 - 2.0 * m1 * m1;
        term[l] = delta * delta;
      }
      double acc = sum[k - 1];
      for (int l = 0; l < used; ++l) acc += term[l];
      sum[k - 1] = acc;
    }
    if (j1 - j0 < kBlock) break;
  }
}

void add_moments_amse_terms(const LaneResamples& resamples, const double* inv_k, std::int64_t k_max, int used,
                            double* sum, int* count, double* d) {
  resamples.shifted_logs(0, k_max + 1, d);
  for (int l = 0; l < used; ++l) {
    double s1 = 0, s2 = 0, s3 = 0;
    for (std::int64_t k = 1; k <= k_max; ++k) {
      const double x = d[(k - 1) * kLanes + l], r = d[k * kLanes + l], ik = inv_k[k - 1];
      s1 += x;
      s2 += x * x;
      s3 += x * x * x;
      const double m1 = s1 * ik - r;
      const double m2 = s2 * ik - 2.0 * r * s1 * ik + r * r;
      const double m3 = s3 * ik - 3.0 * r * s2 * ik + 3.0 * r * r * s1 * ik - r * r * r;
      if (m2 <= 0 || m3 == 0 || std::fabs(1.0 - m1 * m1 / m2) < 1e-10 || std::fabs(1.0 - m1 * m2 / m3) < 1e-10)
        continue;
      const double xi2 = m1 + 1.0 - 0.5 / (1.0 - m1 * m1 / m2);
      const double xi3 = std::sqrt(0.5 * m2) + 1.0 - (2.0 / 3.0) / (1.0 - m1 * m2 / m3);
      const double term = (xi2 - xi3) * (xi2 - xi3);
      if (!std::isfinite(term)) continue;
      sum[k - 1] += term;
      ++count[k - 1];
    }
  }
}

// Mean AMSE statistic for k = 1..k_max over `resamples` resamples of size nb; NaN where any
// resample gave a degenerate value. Resamples go kLanes at a time (only the last group may have
// lanes left over) and the groups are split into a fixed number of chunks whose sums are added in
// order, so the result does not depend on the thread count.
std::vector<double> mean_amse(TailMethod method, const double* logs, std::int64_t n, std::int64_t nb,
                              std::int64_t k_max, int resamples, std::uint64_t seed, int stage) {
  constexpr int kChunks = 16;
  std::vector<double> sums(static_cast<std::size_t>(kChunks * k_max), 0.0);
  std::vector<int> counts(method == TailMethod::hill ? 0 : static_cast<std::size_t>(kChunks * k_max), 0);
  std::vector<double> inv_k(static_cast<std::size_t>(k_max));
  for (std::int64_t k = 1; k <= k_max; ++k) inv_k[static_cast<std::size_t>(k - 1)] = 1.0 / static_cast<double>(k);
  // Small bootstraps run on one thread: waking a team costs more than they take.
  const bool parallel = static_cast<double>(resamples) * static_cast<double>(k_max) > 2e5;
#pragma omp parallel num_threads(htcore::num_threads()) if (parallel)
  {
    const std::size_t size = static_cast<std::size_t>((k_max + 1) * kLanes);
    std::vector<double> spacing(size), top(method == TailMethod::hill ? 0 : size);
    const int groups = (resamples + kLanes - 1) / kLanes;
#pragma omp for schedule(dynamic, 1)
    for (int c = 0; c < kChunks; ++c) {
      const int end = std::min(resamples, (c + 1) * groups / kChunks * kLanes);
      for (int r = c * groups / kChunks * kLanes; r < end; r += kLanes) {
        // Resamples r .. r + used - 1; lanes past the last resample are drawn but not added.
        const int used = std::min(kLanes, end - r);
        LaneRngs rngs;
        for (int l = 0; l < kLanes; ++l)
          rngs.seed(l, Rng(seed, (static_cast<std::uint64_t>(stage) << 32) + static_cast<std::uint64_t>(r + l)));
        const LaneResamples drawn(logs, n, nb, k_max, rngs, spacing.data());
        double* sum = &sums[static_cast<std::size_t>(c * k_max)];
        if (method == TailMethod::hill) {
          add_hill_amse_terms(drawn, inv_k.data(), k_max, used, sum);
        } else {
          add_moments_amse_terms(drawn, inv_k.data(), k_max, used, sum,
                                 counts.data() + static_cast<std::size_t>(c * k_max), top.data());
        }
      }
    }
  }
  std::vector<double> mean(static_cast<std::size_t>(k_max));
  for (std::int64_t k = 0; k < k_max; ++k) {
    double s = 0;
    std::int64_t cnt = 0;
    for (int c = 0; c < kChunks; ++c) {
      s += sums[static_cast<std::size_t>(c * k_max + k)];
      if (!counts.empty()) cnt += counts[static_cast<std::size_t>(c * k_max + k)];
    }
    const bool complete = method == TailMethod::hill || cnt == resamples;
    mean[static_cast<std::size_t>(k)] = complete ? s / resamples : std::numeric_limits<double>::quiet_NaN();
  }
  return mean;
}

// argmin over k in [k_lo, k_hi] of mean[k - 1], skipping NaN; 0 when there is none.
std::int64_t argmin_k(const std::vector<double>& mean, std::int64_t k_lo, std::int64_t k_hi) {
  std::int64_t best = 0;
  for (std::int64_t k = k_lo; k <= k_hi; ++k) {
    const double v = mean[static_cast<std::size_t>(k - 1)];
    if (!std::isnan(v) && (best == 0 || v < mean[static_cast<std::size_t>(best - 1)])) best = k;
  }
  return best;
}

// Voitalov's moments_dbs_prefactor (asymptotic constants of the moments estimator).
double moments_prefactor(double xi, std::int64_t n1, std::int64_t k1) {
  const double rho = std::log(static_cast<double>(k1)) /
                     (2.0 * std::log(static_cast<double>(k1)) - 2.0 * std::log(static_cast<double>(n1)));
  double v_sq, v_bar_sq, b, b_bar;
  if (xi >= 0) {
    v_sq = 1.0 + xi * xi;
    v_bar_sq = 0.25 * (1.0 + xi * xi);
  } else {
    v_sq =
        (1.0 - xi) * (1.0 - xi) * (1.0 - 2.0 * xi) * (6.0 * xi * xi - xi + 1.0) / ((1.0 - 3.0 * xi) * (1.0 - 4.0 * xi));
    const double num = 1 - 8 * xi + 48 * xi * xi - 154 * std::pow(xi, 3) + 263 * std::pow(xi, 4) -
                       222 * std::pow(xi, 5) + 72 * std::pow(xi, 6);
    const double den = (1.0 - 2 * xi) * (1 - 3 * xi) * (1 - 4 * xi) * (1 - 5 * xi) * (1 - 6 * xi);
    v_bar_sq = 0.25 * (1.0 - xi) * (1.0 - xi) * num / den;
  }
  if (xi < rho) {
    b = (1.0 - xi) * (1.0 - 2.0 * xi) / ((1.0 - rho - xi) * (1.0 - rho - 2.0 * xi));
    b_bar =
        0.5 * (-rho * (1.0 - xi) * (1.0 - xi)) / ((1.0 - xi - rho) * (1.0 - 2.0 * xi - rho) * (1.0 - 3.0 * xi - rho));
  } else if (xi < 0) {
    b = 1.0 / (1.0 - xi);
    b_bar = (1.0 - 2.0 * xi - std::sqrt((1.0 - xi) * (1.0 - 2.0 * xi))) / ((1.0 - xi) * (1.0 - 2.0 * xi));
  } else {
    b = xi / (rho * (1.0 - rho)) + 1.0 / ((1.0 - rho) * (1.0 - rho));
    b_bar = -(rho + xi * (1.0 - rho)) / (2.0 * std::pow(1.0 - rho, 3));
  }
  return std::pow(v_sq * b_bar * b_bar / (v_bar_sq * b * b), 1.0 / (1.0 - 2.0 * rho));
}

// Largest k whose AMSE is minimised: Voitalov's max_index = argmin |(j + 1) / nb - eps_stop|,
// capped at cap_factor * nb^(2/3). The cap bounds the work (the bootstrap costs O(resamples * k))
// and is the range of the AMSE-optimal k when the second-order parameter |rho| <= 1 (it scales as
// n^(2|rho| / (1 + 2|rho|))); larger optimal k only arise for nearly exact Pareto tails, where any
// large k estimates well.
std::int64_t k_limit(std::int64_t nb, const DoubleBootstrapOptions& o) {
  std::int64_t k = std::llround(o.eps_stop * static_cast<double>(nb)) - 1;
  if (o.cap_factor > 0)
    k = std::min(
        k, static_cast<std::int64_t>(o.cap_factor * std::cbrt(static_cast<double>(nb) * static_cast<double>(nb))));
  return std::clamp<std::int64_t>(k, 2, nb - 1);
}

}  // namespace

DoubleBootstrap double_bootstrap(TailMethod method, const double* logs, std::int64_t n, std::uint64_t seed,
                                 const DoubleBootstrapOptions& o) {
  require(method != TailMethod::pickands, "the double bootstrap chooses k for hill or moments only");
  require(n >= 20, [&] { return "choosing k automatically needs at least 20 samples, got n = " + std::to_string(n); });
  require(o.resamples >= 1, "resamples must be >= 1");
  DoubleBootstrap out;
  const double ln_n = std::log(static_cast<double>(n));
  const double eps_b = 0.5 * (1.0 + std::log(std::floor(o.t * static_cast<double>(n))) / ln_n);
  out.n1 = static_cast<std::int64_t>(std::pow(static_cast<double>(n), eps_b));
  out.n2 =
      static_cast<std::int64_t>(static_cast<double>(out.n1) * static_cast<double>(out.n1) / static_cast<double>(n));
  const std::int64_t k1_max = k_limit(out.n1, o), k2_max = k_limit(out.n2, o);

  const auto mean1 = mean_amse(method, logs, n, out.n1, k1_max, o.resamples, seed, 1);
  const auto mean2 = mean_amse(method, logs, n, out.n2, k2_max, o.resamples, seed, 2);

  // Voitalov's guard against a false AMSE minimum (k2 > k1): move the left border of both searches
  // by 0.5% of n and search again (his code also redraws the resamples; we keep them).
  std::int64_t left = method == TailMethod::hill ? 1 : 0;
  const std::int64_t step = std::max<std::int64_t>(1, static_cast<std::int64_t>(0.005 * static_cast<double>(n)));
  for (;;) {
    out.k1 = argmin_k(mean1, left + 1, k1_max);
    out.k2 = argmin_k(mean2, left + 1, k2_max);
    if (out.k1 == 0 || out.k2 == 0 || out.k2 <= out.k1) break;
    left += step;
  }
  double k_star = std::numeric_limits<double>::quiet_NaN();
  if (out.k1 > 1 && out.k2 > 0) {
    const double k1 = static_cast<double>(out.k1), n1 = static_cast<double>(out.n1);
    const double ratio = k1 * k1 / static_cast<double>(out.k2);
    if (method == TailMethod::hill) {
      // Danielsson et al. (2001)'s own constant. (Voitalov's hill_dbs uses Qi's, which is larger and
      // picked k about 1.3x too large for Student-t tails here: the Hill bias then exceeded the
      // width of the 95% interval.)
      const double rho = std::pow(std::log(k1) / (2.0 * std::log(n1) - std::log(k1)),
                                  2.0 * (std::log(n1) - std::log(k1)) / std::log(n1));
      k_star = std::round(ratio * rho);
    } else {
      const std::int64_t k_n = static_cast<std::int64_t>(std::floor(std::sqrt(static_cast<double>(n))));
      double m1, m2;
      log_excess_moments([logs](std::int64_t i) { return logs[i]; }, k_n, &m1, &m2);
      const double xi_n = m1 + 1.0 - 0.5 / (1.0 - m1 * m1 / m2);
      k_star = std::floor(ratio * moments_prefactor(xi_n, out.n1, out.k1));
    }
  }
  // Fallback when the bootstrap found no usable minimum (e.g. heavy ties): k = sqrt(n).
  if (!std::isfinite(k_star)) k_star = std::floor(std::sqrt(static_cast<double>(n)));
  out.k_star = static_cast<std::int64_t>(std::clamp(k_star, 2.0, static_cast<double>(n - 1)));
  return out;
}

namespace {

// Sums of N per-index terms over i = 1..count, in a fixed number of chunks added in order, so the
// result does not depend on the thread count. add(begin, end, acc) adds the terms of indices
// begin..end - 1 to acc[0..N), in index order.
template <int N, class Add>
std::array<double, N> chunked_sums(std::int64_t count, Add add) {
  constexpr int kChunks = 64;
  std::vector<std::array<double, N>> partial(kChunks);
#pragma omp parallel for num_threads(htcore::num_threads()) schedule(static) if (count > 100000)
  for (int c = 0; c < kChunks; ++c) {
    std::array<double, N> acc{};
    add(1 + c * count / kChunks, 1 + (c + 1) * count / kChunks, acc.data());
    partial[static_cast<std::size_t>(c)] = acc;
  }
  std::array<double, N> total{};
  for (const auto& acc : partial)
    for (int j = 0; j < N; ++j) total[static_cast<std::size_t>(j)] += acc[static_cast<std::size_t>(j)];
  return total;
}

// out[j] = (i / kd)^(-rho) for i = begin + j, j < count (1 <= i <= kd, rho < 0), as e^(rho (-ln(i / kd))):
// the vectorised log and exp of vector_math.hpp instead of one std::pow per index (which took as
// long as sorting the sample).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void rank_weights(std::int64_t begin, int count, double kd, double rho, double* out) {
  const double first = static_cast<double>(begin);
  for (int j = 0; j < count; ++j)  // (an int offset: int64 -> double conversions do not vectorise before AVX-512)
    out[j] = exp_nonpositive(rho * neg_log_unit((first + static_cast<double>(j)) / kd));
}

}  // namespace

SecondOrder second_order(const double* logs, std::int64_t n, double rho_max) {
  require(n >= 3, "the second-order parameters need at least 3 samples");
  SecondOrder out;
  out.k1 = std::clamp<std::int64_t>(static_cast<std::int64_t>(std::pow(static_cast<double>(n), 0.995)), 2, n - 1);
  const std::int64_t k1 = out.k1;
  const double kd = static_cast<double>(k1);
  const double ref = logs[k1];  // ln X_(k1+1)
  // Log excesses over X_(k1+1), and the scaled log spacings U_i = i (ln X_(i) - ln X_(i+1)).
  auto spacing = [logs](std::int64_t i) { return static_cast<double>(i) * (logs[i - 1] - logs[i]); };
  const auto m = chunked_sums<3>(k1, [&](std::int64_t begin, std::int64_t end, double* acc) {
    for (std::int64_t i = begin; i < end; ++i) {
      const double d = logs[i - 1] - ref;
      acc[0] += d;
      acc[1] += d * d;
      acc[2] += d * d * d;
    }
  });
  const double m1 = m[0] / kd, m2 = m[1] / kd, m3 = m[2] / kd;
  // Fraga Alves, Gomes & de Haan (2003), tau = 0.
  const double t = (std::log(m1) - 0.5 * std::log(m2 / 2)) / (0.5 * std::log(m2 / 2) - std::log(m3 / 6) / 3);
  out.rho = std::min(-std::fabs(3 * (t - 1) / (t - 3)), rho_max);
  // Gomes & Martins (2002): beta = (k1/n)^rho (d(rho) D(0) - D(rho)) / (d(rho) D(rho) - D(2 rho)),
  // d(a) = mean of (i/k1)^(-a), D(a) = mean of (i/k1)^(-a) U_i.
  const double rho = out.rho;
  const auto w = chunked_sums<4>(k1, [&](std::int64_t begin, std::int64_t end, double* acc) {
    constexpr std::int64_t kBlock = 256;
    double weights[kBlock];
    for (std::int64_t b = begin; b < end; b += kBlock) {
      const std::int64_t e = std::min(end, b + kBlock);
      rank_weights(b, static_cast<int>(e - b), kd, rho, weights);
      for (std::int64_t i = b; i < e; ++i) {
        const double u = spacing(i), weight = weights[i - b];
        acc[0] += weight;
        acc[1] += u;
        acc[2] += weight * u;
        acc[3] += weight * weight * u;
      }
    }
  });
  const double d_rho = w[0] / kd, d0 = w[1] / kd, d1 = w[2] / kd, d2 = w[3] / kd;
  out.beta = std::pow(kd / static_cast<double>(n), rho) * (d_rho * d0 - d1) / (d_rho * d1 - d2);
  return out;
}

namespace {

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void log_values_serial(const double* x, std::int64_t m, double* out) {
  for (std::int64_t i = 0; i < m; ++i) out[i] = log_positive(x[i]);
}

}  // namespace

void log_values(const double* x, std::int64_t m, double* out) {
  constexpr int kParts = 16;  // fixed contiguous parts: the same values at any thread count
#pragma omp parallel for num_threads(htcore::num_threads()) schedule(static) if (m > 100000)
  for (int p = 0; p < kParts; ++p) {
    const std::int64_t begin = m * p / kParts, end = m * (p + 1) / kParts;
    log_values_serial(x + begin, end - begin, out + begin);
  }
}

std::unique_ptr<double[]> descending_logs(const double* sorted, std::int64_t n) {
  std::unique_ptr<double[]> logs(new double[static_cast<std::size_t>(n)]);
  std::reverse_copy(sorted, sorted + n, logs.get());
  log_values(logs.get(), n, logs.get());
  return logs;
}

void to_descending_logs(double* sorted, std::int64_t n) {
  std::reverse(sorted, sorted + n);
  log_values(sorted, n, sorted);
}

namespace {

// The double bootstrap's k for hill or moments and the second-order parameters, from
// descending_logs(sorted); with_xi: also the estimate at that k (the Pickands caller takes another k).
TailEstimate auto_k_estimate(TailMethod method, const double* logs, std::int64_t n, std::uint64_t seed,
                             const DoubleBootstrapOptions& options, double rho_max, bool with_xi) {
  TailEstimate out;
  out.bootstrap = double_bootstrap(method, logs, n, seed, options);
  out.k = out.bootstrap.k_star;
  out.second = second_order(logs, n, rho_max);
  if (with_xi) out.xi = tail_xi_from_logs(method, logs, n, out.k);
  return out;
}

template <class T>
TailEstimate estimate_tail_of(TailMethod method, const T* x, std::int64_t n, std::int64_t k, std::uint64_t seed,
                              const DoubleBootstrapOptions& options, double rho_max) {
  const std::unique_ptr<double[]> sorted = sorted_positive(x, n);
  if (k == 0 && method != TailMethod::pickands) {
    // Hill and moments read only the logs, so these overwrite the sorted copy (the peak memory is
    // one float64 copy of the sample).
    to_descending_logs(sorted.get(), n);
    return auto_k_estimate(method, sorted.get(), n, seed, options, rho_max, true);
  }
  TailEstimate out;
  out.k = k;
  if (k == 0) {  // Pickands: a quarter of the moments k; it needs the values too
    out =
        auto_k_estimate(TailMethod::moments, descending_logs(sorted.get(), n).get(), n, seed, options, rho_max, false);
    out.k = std::clamp<std::int64_t>(out.k / 4, 1, n / 4);
  }
  out.xi = tail_xi(method, sorted.get(), n, out.k);
  return out;
}

// The CCDF points of element_statistics (tails.hpp) from the ascending-sorted sample.
void sorted_ccdf(const double* sorted, std::int64_t n, int points, std::vector<double>& x, std::vector<double>& p) {
  const double lo = std::log10(sorted[0]), hi = std::log10(sorted[n - 1]);
  const int count = sorted[n - 1] > sorted[0] ? points : 1;
  x.resize(static_cast<std::size_t>(count));
  p.resize(static_cast<std::size_t>(count));
  for (int j = 0; j < count; ++j) {
    const double at = j == 0 ? sorted[0] : std::pow(10.0, lo + (hi - lo) * j / points);
    const std::int64_t below = std::lower_bound(sorted, sorted + n, at) - sorted;
    x[static_cast<std::size_t>(j)] = at;
    p[static_cast<std::size_t>(j)] = static_cast<double>(n - below) / static_cast<double>(n);
  }
}

// Sum of (scale x[j])^2 over j < m in eight interleaved partial sums (they vectorise; multiply-adds
// are not fused in this file, so every clone gives the same bits).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
double sum_of_squares(const double* x, std::int64_t m, double scale) {
  constexpr int kParts = 8;
  double part[kParts] = {};
  std::int64_t j = 0;
  for (; j + kParts <= m; j += kParts)
    for (int l = 0; l < kParts; ++l) {
      const double v = scale * x[j + l];
      part[l] += v * v;
    }
  double sum = 0;
  for (; j < m; ++j) sum += (scale * x[j]) * (scale * x[j]);
  for (int l = 0; l < kParts; ++l) sum += part[l];
  return sum;
}

// The compressibility sums of element_statistics (tails.hpp) from the ascending-sorted magnitudes.
void error_sums(const double* sorted, std::int64_t n, const std::vector<std::int64_t>& keep_counts,
                ElementStatistics& out) {
  // Entries below cut = n - k are dropped by keeping the top k; cuts taken in ascending order.
  std::vector<std::pair<std::int64_t, std::size_t>> cuts;
  for (std::size_t i = 0; i < keep_counts.size(); ++i)
    cuts.emplace_back(std::max<std::int64_t>(0, n - keep_counts[i]), i);
  std::sort(cuts.begin(), cuts.end());
  // In units of a power of two near the largest magnitude squared (exact), so that weights near
  // 1e300 do not overflow nor subnormal ones underflow; only the ratios are used. (2^1000 at most:
  // 2^1074 would overflow, and the largest subnormal times 2^1000 squares to a normal number.)
  const double scale = n > 0 ? std::ldexp(1.0, std::min(1000, -std::ilogb(sorted[n - 1]))) : 1.0;
  out.tail_sq.assign(keep_counts.size(), 0.0);
  double sum = 0;
  std::int64_t at = 0;
  for (const auto& [cut, i] : cuts) {
    sum += sum_of_squares(sorted + at, cut - at, scale);
    at = cut;
    out.tail_sq[i] = sum;
  }
  out.total_sq = sum + sum_of_squares(sorted + at, n - at, scale);
}

template <class T>
ElementStatistics element_statistics_of(const T* w, std::int64_t size, std::uint64_t seed,
                                        const DoubleBootstrapOptions& options, double rho_max, std::int64_t grid,
                                        std::int64_t exact_max, int ccdf_points, std::int64_t min_samples,
                                        const std::vector<std::int64_t>& keep_counts) {
  ElementStatistics out;
  const std::unique_ptr<double[]> sorted = sorted_magnitudes(w, size, &out.n);
  const std::int64_t n = out.n;
  error_sums(sorted.get(), n, keep_counts, out);
  if (n == 0 || n < min_samples) return out;
  if (ccdf_points > 0) sorted_ccdf(sorted.get(), n, ccdf_points, out.ccdf_x, out.ccdf_p);
  try {
    out.tails.hill =
        auto_k_estimate(TailMethod::hill, descending_logs(sorted.get(), n).get(), n, seed, options, rho_max, true);
    // The logs are freed before the fit, whose own working set (ranks of the distinct values) is as large.
    out.tails.fit = fit_sorted_powerlaw(sorted.get(), n, std::numeric_limits<double>::infinity(),
                                        std::numeric_limits<double>::quiet_NaN(), n <= exact_max ? 0 : grid);
    out.has_tails = true;
  } catch (const std::invalid_argument& e) {  // ties that leave an estimate undefined
    out.tails_error = e.what();
  }
  return out;
}

}  // namespace

TailEstimate estimate_tail(TailMethod method, const double* x, std::int64_t n, std::int64_t k, std::uint64_t seed,
                           const DoubleBootstrapOptions& options, double rho_max) {
  return estimate_tail_of(method, x, n, k, seed, options, rho_max);
}

TailEstimate estimate_tail(TailMethod method, const float* x, std::int64_t n, std::int64_t k, std::uint64_t seed,
                           const DoubleBootstrapOptions& options, double rho_max) {
  return estimate_tail_of(method, x, n, k, seed, options, rho_max);
}

ElementStatistics element_statistics(const double* w, std::int64_t size, std::uint64_t seed,
                                     const DoubleBootstrapOptions& options, double rho_max, std::int64_t grid,
                                     std::int64_t exact_max, int ccdf_points, std::int64_t min_samples,
                                     const std::vector<std::int64_t>& keep_counts) {
  return element_statistics_of(w, size, seed, options, rho_max, grid, exact_max, ccdf_points, min_samples, keep_counts);
}

ElementStatistics element_statistics(const float* w, std::int64_t size, std::uint64_t seed,
                                     const DoubleBootstrapOptions& options, double rho_max, std::int64_t grid,
                                     std::int64_t exact_max, int ccdf_points, std::int64_t min_samples,
                                     const std::vector<std::int64_t>& keep_counts) {
  return element_statistics_of(w, size, seed, options, rho_max, grid, exact_max, ccdf_points, min_samples, keep_counts);
}

const char* tail_kernels_path() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (__builtin_cpu_supports("avx512f")) return "avx512f";
  if (__builtin_cpu_supports("avx2")) return "avx2";
#endif
  return "portable";
}

}  // namespace htcore
