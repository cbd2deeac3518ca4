// C++ exceptions to Python exceptions (the mapping errors.hpp documents) and the test hook that
// proves it.
#include <new>
#include <stdexcept>
#include <string>

#include "common.hpp"

namespace htcore {
namespace {

// Lets the tests prove each C++ exception type arrives as the documented Python one.
void throw_for_testing(const std::string& kind) {
  if (kind == "invalid_argument") throw std::invalid_argument("argument 'x' is invalid");
  if (kind == "type_error") throw type_error("argument 'x' has the wrong type");
  if (kind == "bad_alloc") throw std::bad_alloc();
  if (kind == "length_error") throw std::length_error("argument 'x' is too long");
  if (kind == "domain_error") throw std::domain_error("argument 'x' is out of domain");
  throw std::invalid_argument("unknown exception kind '" + kind + "'");
}

}  // namespace

void register_errors(py::module_& m) {
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const type_error& e) {
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

  m.def("_throw_for_testing", &throw_for_testing, py::arg("kind"),
        "Test hook: throws the C++ exception named by kind (invalid_argument, type_error, bad_alloc, "
        "length_error or domain_error) so tests can check the Python exception it becomes: ValueError, "
        "TypeError, MemoryError, ValueError, ValueError. An unknown kind raises ValueError.");
}

}  // namespace htcore
