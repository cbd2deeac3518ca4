// Tail estimators of a positive sample and the continuous power-law fit.
//
// Conventions (docs/conventions.md): X_(1) >= X_(2) >= ... >= X_(n) are the order statistics.
// The estimators return xi = 1 / alpha, where alpha is the tail index, P(X > x) ~ x^(-alpha).
// The power-law fit returns the pdf exponent a = alpha + 1, p(x) ~ x^(-a) (what the `powerlaw`
// package and WeightWatcher call "alpha").
//
// All functions take samples that the caller has checked to be finite and > 0.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace htcore {

// An ascending-sorted copy of a positive, finite sample (radix sorts on the IEEE bit patterns,
// which order like the values for positive numbers: MSD on doubles, LSD on float keys; see
// sort_positive.cpp). float samples are widened exactly, so both overloads give the same doubles
// for the same values.
std::unique_ptr<double[]> sorted_positive(const double* x, std::int64_t n);
std::unique_ptr<double[]> sorted_positive(const float* x, std::int64_t n);
// The same of |w| over the nonzero entries of w[0..size) (any sign), whose number goes to *n.
// Throws std::invalid_argument, naming how many, when w has NaN or Inf entries.
std::unique_ptr<double[]> sorted_magnitudes(const double* w, std::int64_t size, std::int64_t* n);
std::unique_ptr<double[]> sorted_magnitudes(const float* w, std::int64_t size, std::int64_t* n);

// out[i] = ln x[i] for i < m (x positive and finite; out may be x): the vectorised log of
// vector_math.hpp, within 1 ulp of std::log, in parallel for large m (the same values at any thread
// count). Every log of a sample value in the tail estimators and
// the power-law fit is this one, so that values computed apart compare exactly.
void log_values(const double* x, std::int64_t m, double* out);

enum class TailMethod { hill, moments, pickands };

// The estimate at a given k, on an ascending-sorted sample. Throws std::invalid_argument when k is
// out of range (Hill: 1 <= k <= n - 1; moments: 2 <= k <= n - 1; Pickands: 1 <= k <= n / 4) or when ties make the
// estimator undefined at this k.
double tail_xi(TailMethod method, const double* sorted, std::int64_t n, std::int64_t k);
// The same for hill or moments from descending_logs(sorted), bit for bit.
double tail_xi_from_logs(TailMethod method, const double* logs, std::int64_t n, std::int64_t k);

// Danielsson, de Haan, Peng & de Vries (2001) double bootstrap as in Voitalov et al. (2019).
struct DoubleBootstrap {
  std::int64_t k_star = 0;      // chosen number of order statistics
  std::int64_t k1 = 0, k2 = 0;  // AMSE minimisers in the two bootstrap stages
  std::int64_t n1 = 0, n2 = 0;  // bootstrap sample sizes
};

struct DoubleBootstrapOptions {
  double t = 0.5;          // n2 = t n (as Voitalov's t_bootstrap)
  int resamples = 100;     // resamples per stage (Voitalov's r_bootstrap is 500; htcore.hill's default is 100)
  double eps_stop = 0.99;  // AMSE minimised over k <= eps_stop * n_b (Voitalov's eps_stop)
  double cap_factor = 3;   // and over k <= cap_factor * n_b^(2/3) (0: no cap; htcore's addition)
};

// ln X_(i+1) for i in [0, n) of an ascending-sorted sample: the logs of the order statistics,
// largest first (computed once, in parallel, for the bootstrap and the second-order step).
std::unique_ptr<double[]> descending_logs(const double* sorted, std::int64_t n);
// The same values written over the sorted sample itself (no second array).
void to_descending_logs(double* sorted, std::int64_t n);

// Chooses k for Hill (method == hill) or moments (method == moments) from descending_logs(sorted).
// Deterministic in `seed`, independent of the thread count. Requires n >= 20.
DoubleBootstrap double_bootstrap(TailMethod method, const double* logs, std::int64_t n, std::uint64_t seed,
                                 const DoubleBootstrapOptions& options);

// Second-order parameters (rho < 0, beta) of a heavy tail in Hall's class, U(t) = C t^xi (1 +
// xi beta t^rho / rho + o(t^rho)), so that the Hill bias at k is xi beta (n/k)^rho / (1 - rho).
// rho: Fraga Alves, Gomes & de Haan (2003) with tau = 0, capped at rho_max (beta is not
// identifiable as rho -> 0); beta: Gomes & Martins (2002) at that rho. Both at k1 = floor(n^0.995)
// (Caeiro, Gomes & Pestana 2005), from descending_logs(sorted). NaN where ties make them undefined.
// Requires n >= 3.
struct SecondOrder {
  double rho = 0, beta = 0;
  std::int64_t k1 = 0;
};
SecondOrder second_order(const double* logs, std::int64_t n, double rho_max);

struct TailEstimate {
  double xi = 0;
  std::int64_t k = 0;
  DoubleBootstrap bootstrap;  // filled when k was chosen automatically
  SecondOrder second;         // filled when k was chosen automatically
};

// Copies and sorts x, then estimates xi at k, or at the double-bootstrap k when k == 0 (for
// Pickands: a quarter of the moments estimator's k, so X_(4k) reaches as deep as its tail); with
// k == 0 it also estimates the second-order parameters (capping rho at rho_max).
// float samples are widened exactly: the same values give the same result either way.
TailEstimate estimate_tail(TailMethod method, const double* x, std::int64_t n, std::int64_t k, std::uint64_t seed,
                           const DoubleBootstrapOptions& options, double rho_max);
TailEstimate estimate_tail(TailMethod method, const float* x, std::int64_t n, std::int64_t k, std::uint64_t seed,
                           const DoubleBootstrapOptions& options, double rho_max);

// Continuous Clauset-Shalizi-Newman power-law fit of an (unsorted) positive sample, with the KS
// distance defined as in powerlaw 2.0 (see powerlaw_fit.cpp).
struct PowerLawResult {
  double pdf_exponent = 0;
  double xmin = 0;
  double ks_distance = 0;
  std::int64_t n_tail = 0;
  std::int64_t candidates = 0;  // number of xmin values scanned
};

// xmax: samples above it are dropped and the fitted CDF is truncated at it (pass +inf for none).
// fixed_xmin: fit only at this xmin (pass NaN to scan candidates). grid: 0 scans every distinct
// value but the largest; g > 0 scans g log-spaced candidates snapped to data values.
PowerLawResult fit_powerlaw(const double* x, std::int64_t n, double xmax, double fixed_xmin, std::int64_t grid);
PowerLawResult fit_powerlaw(const float* x, std::int64_t n, double xmax, double fixed_xmin, std::int64_t grid);
// The same fit of an ascending-sorted sample, which it overwrites (fit_powerlaw sorts a copy).
PowerLawResult fit_sorted_powerlaw(double* sorted, std::int64_t n, double xmax, double fixed_xmin, std::int64_t grid);

// What htcore.analyze measures on the entries of a weight array w[0..size) (any sign, zeros allowed),
// from one sort of the magnitudes of its nonzero entries (the element sample, n of them):
// - the CCDF at ccdf_points log-spaced x from the smallest to the largest magnitude,
//   x_j = 10^(lo + (hi - lo) j / ccdf_points) (x_0 the smallest exactly), p_j = #(|w| >= x_j) / n;
//   one point (x_0, 1) when all magnitudes are equal;
// - auto-k Hill (estimate_tail(hill, k = 0)) and the power-law fit without xmax
//   (fit_powerlaw(x, +inf, NaN, grid), or grid 0, every candidate, when n <= exact_max) of the
//   sample, bit for bit;
// both only when n >= min_samples;
// - for the compressibility curve, at any n: the sum of squares of all entries and, for each count k
//   in keep_counts, of the entries outside the top k by magnitude (the n - k smallest magnitudes,
//   none when k >= n), summed in ascending order in blocks of eight partial sums, in units of
//   2^(2e) with 2^e <= the largest magnitude < 2^(e+1), e >= -1000 (only their ratios mean anything).
// Throws std::invalid_argument, naming how many, when w has NaN or Inf entries. Where ties make the
// tail estimates undefined, tails_error says why (the CCDF and the sums stand).
struct ElementTails {
  TailEstimate hill;
  PowerLawResult fit;
};
struct ElementStatistics {
  std::int64_t n = 0;  // nonzero entries
  std::vector<double> ccdf_x, ccdf_p;
  // Sums of squares for the compressibility curve (scaled, see above): total_sq over every entry,
  // tail_sq[i] over the entries outside the top keep_counts[i] by magnitude (ties do not matter).
  double total_sq = 0;
  std::vector<double> tail_sq;
  bool has_tails = false;
  ElementTails tails;
  std::string tails_error;
};
ElementStatistics element_statistics(const double* w, std::int64_t size, std::uint64_t seed,
                                     const DoubleBootstrapOptions& options, double rho_max, std::int64_t grid,
                                     std::int64_t exact_max, int ccdf_points, std::int64_t min_samples,
                                     const std::vector<std::int64_t>& keep_counts);
ElementStatistics element_statistics(const float* w, std::int64_t size, std::uint64_t seed,
                                     const DoubleBootstrapOptions& options, double rho_max, std::int64_t grid,
                                     std::int64_t exact_max, int ccdf_points, std::int64_t min_samples,
                                     const std::vector<std::int64_t>& keep_counts);

// The code path the tail kernels' vectorised loops take on this CPU: "avx512f", "avx2" or "portable"
// (their target_clones dispatch; every path gives the same bits).
const char* tail_kernels_path();

}  // namespace htcore
