// The only file that knows about Python. Each kernel binding takes numpy arrays the Python
// layer has already validated and made contiguous, releases the GIL around the C++ call, and
// returns numpy arrays. Users never import this module directly: htcore/*.py wraps it.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <new>
#include <string>

#include "build_info.hpp"
#include "errors.hpp"
#include "parallel.hpp"
#include "tails.hpp"

namespace py = pybind11;
using namespace pybind11::literals;

namespace {

void register_exceptions() {
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const htcore::type_error& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    } catch (const std::bad_alloc&) {
      PyErr_SetString(PyExc_MemoryError, "htcore: out of memory");
    } catch (const std::length_error& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const std::invalid_argument& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const std::domain_error& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });
}

// Lets the tests prove each C++ exception type arrives as the documented Python one.
void throw_for_testing(const std::string& kind) {
  if (kind == "invalid_argument") throw std::invalid_argument("argument 'x' is invalid");
  if (kind == "type_error") throw htcore::type_error("argument 'x' has the wrong type");
  if (kind == "bad_alloc") throw std::bad_alloc();
  if (kind == "length_error") throw std::length_error("argument 'x' is too long");
  if (kind == "domain_error") throw std::domain_error("argument 'x' is out of domain");
  throw std::invalid_argument("unknown exception kind '" + kind + "'");
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "htcore's compiled kernels (private: use the htcore package)";
  register_exceptions();

  // ---- threads and build ----
  m.def("get_num_threads", &htcore::num_threads);
  m.def("set_num_threads", &htcore::set_num_threads, "n"_a);
  m.def("build_info", [] {
    const auto info = htcore::build_info();
    return py::dict("compiler"_a = info.compiler, "build_flags"_a = info.build_flags,
                    "openmp_version"_a = info.openmp_version, "simd"_a = info.simd);
  });
  m.def("_throw_for_testing", &throw_for_testing, "kind"_a);

  // ---- tails (issue: tail estimators) ----
  m.def(
      "tail_estimate",
      [](py::array_t<double, py::array::c_style | py::array::forcecast> x, const std::string& method, long long k,
         std::uint64_t seed, int resamples, double eps_stop, double cap_factor) {
        htcore::TailMethod kind;
        if (method == "hill") kind = htcore::TailMethod::hill;
        else if (method == "moments") kind = htcore::TailMethod::moments;
        else if (method == "pickands") kind = htcore::TailMethod::pickands;
        else throw std::invalid_argument("unknown tail method '" + method + "'");
        htcore::DoubleBootstrapOptions options;
        options.resamples = resamples;
        options.eps_stop = eps_stop;
        options.cap_factor = cap_factor;
        htcore::TailEstimate r;
        {
          py::gil_scoped_release release;
          r = htcore::estimate_tail(kind, x.data(), static_cast<long long>(x.size()), k, seed, options);
        }
        return py::dict("xi"_a = r.xi, "k"_a = r.k, "k1"_a = r.bootstrap.k1, "k2"_a = r.bootstrap.k2,
                        "n1"_a = r.bootstrap.n1, "n2"_a = r.bootstrap.n2);
      },
      "x"_a, "method"_a, "k"_a, "seed"_a, "resamples"_a, "eps_stop"_a, "cap_factor"_a);
  m.def(
      "fit_powerlaw",
      [](py::array_t<double, py::array::c_style | py::array::forcecast> x, double xmax, double xmin, long long grid) {
        htcore::PowerLawResult r;
        {
          py::gil_scoped_release release;
          r = htcore::fit_powerlaw(x.data(), static_cast<long long>(x.size()), xmax, xmin, grid);
        }
        return py::dict("pdf_exponent"_a = r.pdf_exponent, "xmin"_a = r.xmin, "ks_distance"_a = r.ks_distance,
                        "n_tail"_a = r.n_tail, "candidates"_a = r.candidates);
      },
      "x"_a, "xmax"_a, "xmin"_a, "grid"_a);

  // ---- top-k selection ----

  // ---- CSR kernels ----
}
