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

  // ---- top-k selection ----

  // ---- CSR kernels ----
}
