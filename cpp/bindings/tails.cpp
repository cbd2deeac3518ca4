// Tail estimators and the power-law fit (tails.hpp).
#include "tails.hpp"
#include "common.hpp"

namespace htcore {
namespace {

TailMethod checked(TailMethod method) {
  switch (method) {
    case TailMethod::hill:
    case TailMethod::moments:
    case TailMethod::pickands: return method;
  }
  fail("tail method must be hill, moments or pickands, got " + std::to_string(static_cast<int>(method)));
}

DoubleBootstrapOptions bootstrap_options(int resamples, double eps_stop, double cap_factor) {
  DoubleBootstrapOptions options;
  options.resamples = resamples;
  options.eps_stop = eps_stop;
  options.cap_factor = cap_factor;
  return options;
}

TailEstimate tail_estimate(const py::array& x, TailMethod method, std::int64_t k, std::uint64_t seed, int resamples,
                           double eps_stop, double cap_factor, double rho_max) {
  method = checked(method);
  const auto options = bootstrap_options(resamples, eps_stop, cap_factor);
  return detail::with_sample(x, [&](const auto& sample) {
    const auto* data = sample.data();
    const auto n = static_cast<std::int64_t>(sample.size());
    py::gil_scoped_release release;
    return estimate_tail(method, data, n, k, seed, options, rho_max);
  });
}

ElementStatistics element_statistics_of(const py::array& w, std::uint64_t seed, int resamples, double eps_stop,
                                        double cap_factor, double rho_max, std::int64_t grid, std::int64_t exact_max,
                                        int ccdf_points, std::int64_t min_samples,
                                        const std::vector<std::int64_t>& keep_counts) {
  const auto options = bootstrap_options(resamples, eps_stop, cap_factor);
  return detail::with_sample(w, [&](const auto& sample) {
    const auto* data = sample.data();
    const auto size = static_cast<std::int64_t>(sample.size());
    py::gil_scoped_release release;
    return element_statistics(data, size, seed, options, rho_max, grid, exact_max, ccdf_points, min_samples,
                              keep_counts);
  });
}

PowerLawResult powerlaw(const py::array& x, double xmax, double xmin, std::int64_t grid) {
  return detail::with_sample(x, [&](const auto& sample) {
    const auto* data = sample.data();
    const auto n = static_cast<std::int64_t>(sample.size());
    py::gil_scoped_release release;
    return fit_powerlaw(data, n, xmax, xmin, grid);
  });
}

}  // namespace

void register_tails(py::module_& m) {
  py::enum_<TailMethod>(m, "TailMethod", "Tail-index estimator of tail_estimate.")
      .value("hill", TailMethod::hill, "Hill (1975): 1 <= k <= n - 1.")
      .value("moments", TailMethod::moments, "Dekkers, Einmahl & de Haan (1989) moments estimator: 2 <= k <= n - 1.")
      .value("pickands", TailMethod::pickands, "Pickands (1975): 1 <= k <= n / 4.");

  py::class_<DoubleBootstrap>(
      m, "DoubleBootstrap", "The double bootstrap's choice of k (Danielsson et al. 2001, as in Voitalov et al. 2019).")
      .def_readonly("k_star", &DoubleBootstrap::k_star, "Chosen number of upper order statistics.")
      .def_readonly("k1", &DoubleBootstrap::k1, "AMSE minimiser of the first stage (samples of size n1).")
      .def_readonly("k2", &DoubleBootstrap::k2, "AMSE minimiser of the second stage (samples of size n2).")
      .def_readonly("n1", &DoubleBootstrap::n1, "First-stage bootstrap sample size.")
      .def_readonly("n2", &DoubleBootstrap::n2, "Second-stage bootstrap sample size (n1^2 / n).");

  py::class_<SecondOrder>(
      m, "SecondOrder",
      "Second-order tail parameters in Hall's class, U(t) = C t^xi (1 + xi beta t^rho / rho + ...); "
      "the Hill bias at k is xi beta (n/k)^rho / (1 - rho).")
      .def_readonly("rho", &SecondOrder::rho,
                    "rho < 0 (Fraga Alves, Gomes & de Haan 2003), capped at rho_max; NaN if undefined.")
      .def_readonly("beta", &SecondOrder::beta, "beta (Gomes & Martins 2002) at that rho; NaN if undefined.")
      .def_readonly("k1", &SecondOrder::k1, "Order statistics used, floor(n^0.995).");

  py::class_<TailEstimate>(m, "TailResult", "Result of tail_estimate.")
      .def_readonly("xi", &TailEstimate::xi, "Extreme-value index xi = 1 / alpha (alpha: P(X > x) ~ x^-alpha).")
      .def_readonly("k", &TailEstimate::k, "Number of upper order statistics used (given, or chosen).")
      .def_readonly("bootstrap", &TailEstimate::bootstrap, "How k was chosen (zeros when k was given).")
      .def_readonly("second_order", &TailEstimate::second, "Second-order parameters (zeros when k was given).");

  py::class_<PowerLawResult>(m, "PowerLawResult", "Result of fit_powerlaw.")
      .def_readonly("pdf_exponent", &PowerLawResult::pdf_exponent,
                    "a in p(x) ~ x^-a, a = alpha + 1 (powerlaw's and WeightWatcher's 'alpha').")
      .def_readonly("xmin", &PowerLawResult::xmin, "Start of the power-law tail (a sample value unless fixed).")
      .def_readonly("ks_distance", &PowerLawResult::ks_distance,
                    "KS distance between the tail's empirical and fitted CDFs (as powerlaw 2.0 defines it).")
      .def_readonly("n_tail", &PowerLawResult::n_tail, "Samples in [xmin, xmax].")
      .def_readonly("candidates", &PowerLawResult::candidates, "Number of xmin values scanned.");

  py::class_<ElementTails>(m, "ElementTailsResult", "The tail estimates of element_statistics.")
      .def_readonly("hill", &ElementTails::hill, "Auto-k Hill: what tail_estimate(x, hill, k=0, ...) returns.")
      .def_readonly("fit", &ElementTails::fit, "What fit_powerlaw(x, xmax=inf, xmin=NaN, grid) returns.");

  py::class_<ElementStatistics>(m, "ElementStatistics", "Result of element_statistics.")
      .def_readonly("n", &ElementStatistics::n, "Nonzero entries: the size of the element sample |w|.")
      .def_property_readonly(
          "ccdf_x", [](const ElementStatistics& s) { return py::array_t<double>(s.ccdf_x.size(), s.ccdf_x.data()); },
          "Log-spaced magnitudes x_j from the smallest to the largest (empty below min_samples).")
      .def_property_readonly(
          "ccdf_p", [](const ElementStatistics& s) { return py::array_t<double>(s.ccdf_p.size(), s.ccdf_p.data()); },
          "P(|w| >= x_j) over the nonzero entries.")
      .def_property_readonly(
          "tails", [](const ElementStatistics& s) { return s.has_tails ? py::cast(s.tails) : py::none(); },
          "The ElementTailsResult, or None (below min_samples, or see tails_error).")
      .def_readonly("tails_error", &ElementStatistics::tails_error,
                    "Why there are no tail estimates although n >= min_samples (ties), else empty.")
      .def_readonly("total_sq", &ElementStatistics::total_sq,
                    "Sum of squares of all entries of w, in units of 2^(2e), 2^e <= max |w| < 2^(e+1) (e >= -1000).")
      .def_property_readonly(
          "tail_sq", [](const ElementStatistics& s) { return py::array_t<double>(s.tail_sq.size(), s.tail_sq.data()); },
          "Per keep count k: sum of squares of the entries outside the top k by magnitude (units of total_sq).");

  m.def("tail_estimate", &tail_estimate, py::arg("x"), py::arg("method"), py::arg("k"), py::arg("seed"),
        py::arg("resamples"), py::arg("eps_stop"), py::arg("cap_factor"), py::arg("rho_max"),
        "Tail estimate xi = 1 / alpha of a 1-D sample x the caller has checked to be finite and > 0 (float32 is "
        "read as it is, any other dtype as float64). k > 0: the estimate at k upper order statistics "
        "(hill: 1 <= k <= n - 1, moments: 2 <= k <= n - 1, pickands: 1 <= k <= n / 4). k == 0: k chosen by "
        "the double bootstrap (needs n >= 20; deterministic in seed, independent of the thread count; "
        "resamples per stage, AMSE minimised over k <= eps_stop * n_b and k <= cap_factor * n_b^(2/3); "
        "pickands uses a quarter of the moments k), plus the second-order parameters with rho capped at "
        "rho_max. Raises ValueError for k out of range or when ties make the estimator undefined.");
  m.def("element_statistics", &element_statistics_of, py::arg("w"), py::arg("seed"), py::arg("resamples"),
        py::arg("eps_stop"), py::arg("cap_factor"), py::arg("rho_max"), py::arg("grid"), py::arg("exact_max"),
        py::arg("ccdf_points"), py::arg("min_samples"), py::arg("keep_counts"),
        "From one sort of |w| over the nonzero entries of the flat array w (any sign; float32 read as it is, any "
        "other dtype as float64): their CCDF at ccdf_points log-spaced points, and when there are at least "
        "min_samples (>= 20) of them tail_estimate(|w|, hill, k=0, seed, resamples, eps_stop, cap_factor, "
        "rho_max) and fit_powerlaw(|w|, inf, NaN, grid; 0, every candidate, with at most exact_max of them), bit for "
        "bit; and for every count k in keep_counts the sum of squares outside the top k entries of w by magnitude "
        "(tail_sq; total_sq over all). Raises ValueError when w has NaN or Inf entries; ties that leave the estimates "
        "undefined give tails None and a tails_error.");
  m.def("tail_kernels_path", &tail_kernels_path,
        "The code path of the tail kernels' vectorised loops on this CPU: 'avx512f', 'avx2' or 'portable' "
        "(chosen at run time; every path gives the same bits).");
  m.def("fit_powerlaw", &powerlaw, py::arg("x"), py::arg("xmax"), py::arg("xmin"), py::arg("grid"),
        "Continuous Clauset-Shalizi-Newman power-law fit of a 1-D sample x the caller has checked to be finite "
        "and > 0 (float32 read as it is, any other dtype as float64). xmax: samples above it are dropped and the "
        "fitted CDF is truncated there (inf: none). xmin: fit only at this xmin (NaN: scan candidates). "
        "grid: 0 scans every distinct value but the largest; g > 0 scans g log-spaced candidates snapped to "
        "data values.");
}

}  // namespace htcore
