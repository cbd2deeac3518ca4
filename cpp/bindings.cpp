// The only file that knows about Python. Each kernel binding takes numpy arrays the Python
// layer has already validated and made contiguous, releases the GIL around the C++ call, and
// returns numpy arrays. Users never import this module directly: htcore/*.py wraps it.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <new>
#include <type_traits>
#include <vector>
#include <string>

#include "build_info.hpp"
#include "errors.hpp"
#include "parallel.hpp"
#include "topk.hpp"
#include "topk.hpp"

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

// ---- top-k selection (marshalling) ----
// The Python layer passes C-contiguous float16/32/64 arrays; the kernels see their raw bits.
namespace topk = htcore::topk;

template <class F>
py::object with_float_bits(const py::array& a, F&& f) {
  switch (a.itemsize()) {
    case 2: return f(std::uint16_t{});
    case 4: return f(std::uint32_t{});
    case 8: return f(std::uint64_t{});
    default: throw htcore::type_error("expected a float16, float32 or float64 array");
  }
}

template <class U>
const U* bits_of(const py::array& a) {
  htcore::require(a.flags() & py::array::c_style, "internal error: array must be C-contiguous");
  return static_cast<const U*>(a.data());
}

// Hands a kernel's buffer to numpy without copying.
template <class T>
py::array to_numpy(topk::Buffer<T>&& buffer, const py::dtype& dtype) {
  auto* owned = new topk::Buffer<T>(std::move(buffer));
  py::capsule owner(owned, [](void* p) { delete static_cast<topk::Buffer<T>*>(p); });
  return py::array(dtype, {static_cast<py::ssize_t>(owned->size)}, {static_cast<py::ssize_t>(sizeof(T))},
                   owned->data(), owner);
}

template <class U>
std::vector<topk::Segment<U>> segments_of(const py::list& arrays) {
  std::vector<topk::Segment<U>> segments;
  for (const auto& item : arrays) {
    const auto a = item.cast<py::array>();
    segments.push_back({bits_of<U>(a), static_cast<std::int64_t>(a.size())});
  }
  return segments;
}

// Runs build(Idx{}, w, rows, cols) without the GIL, with uint16 column indices when they fit,
// and returns (data, indices, indptr as int64, ties_taken).
template <class U, class Build>
py::tuple csr_tuple(const py::array& w, Build&& build) {
  const std::int64_t rows = w.shape(0), cols = w.shape(1);
  const U* bits = bits_of<U>(w);
  const auto finish = [&](auto&& csr) {
    using Idx = std::remove_pointer_t<decltype(csr.indices.data())>;
    const std::int64_t ties_taken = csr.ties_taken;
    return py::make_tuple(to_numpy(std::move(csr.data), w.dtype()), to_numpy(std::move(csr.indices), py::dtype::of<Idx>()),
                          to_numpy(std::move(csr.indptr), py::dtype::of<std::int64_t>()), ties_taken);
  };
  const auto without_gil = [&](auto idx) {
    py::gil_scoped_release release;
    return build(idx, bits, rows, cols);
  };
  if (cols <= 65536) return finish(without_gil(std::uint16_t{}));
  return finish(without_gil(std::int32_t{}));
}

void bind_topk(py::module_& m) {
  m.def("topk_select", [](const py::list& arrays, const std::vector<std::int64_t>& ks, bool sums, const std::string& name) {
    return with_float_bits(arrays[0].cast<py::array>(), [&](auto tag) -> py::object {
      using U = decltype(tag);
      const auto segments = segments_of<U>(arrays);
      topk::Selection sel;
      {
        py::gil_scoped_release release;
        sel = topk::select<U>(segments, ks, sums, name);
      }
      py::list keys, values, greater, ties, tail_sq;
      for (const auto& t : sel.targets) {
        keys.append(t.key);
        values.append(t.value);
        greater.append(t.greater);
        ties.append(t.ties);
        tail_sq.append(t.tail_sq);
      }
      return py::dict("key"_a = keys, "value"_a = values, "greater"_a = greater, "ties"_a = ties,
                      "tail_sq"_a = tail_sq, "total_sq"_a = sel.total_sq);
    });
  }, "arrays"_a, "ks"_a, "sums"_a, "name"_a);
  m.def("topk_k_for_rel_error", [](const py::list& arrays, double max_rel_error, const std::string& name) {
    return with_float_bits(arrays[0].cast<py::array>(), [&](auto tag) -> py::object {
      using U = decltype(tag);
      const auto segments = segments_of<U>(arrays);
      std::int64_t k;
      {
        py::gil_scoped_release release;
        k = topk::k_for_rel_error<U>(segments, max_rel_error, name);
      }
      return py::int_(k);
    });
  }, "arrays"_a, "max_rel_error"_a, "name"_a);
  m.def("topk_csr_threshold", [](const py::array& w, std::uint64_t key, std::int64_t tie_budget) {
    return with_float_bits(w, [&](auto tag) -> py::object {
      using U = decltype(tag);
      return csr_tuple<U>(w, [&](auto idx, const U* x, std::int64_t rows, std::int64_t cols) {
        return topk::csr_by_threshold<U, decltype(idx)>(x, rows, cols, key, tie_budget);
      });
    });
  }, "w"_a, "key"_a, "tie_budget"_a);
  m.def("topk_csr_matrix", [](const py::array& w, std::int64_t k, const std::string& name) {
    return with_float_bits(w, [&](auto tag) -> py::object {
      using U = decltype(tag);
      return csr_tuple<U>(w, [&](auto idx, const U* x, std::int64_t rows, std::int64_t cols) {
        return topk::csr_matrix<U, decltype(idx)>(x, rows, cols, k, name);
      });
    });
  }, "w"_a, "k"_a, "name"_a);
  // k largest in every row (by="row") or every column (by="col")
  m.def("topk_csr_per_group", [](const py::array& w, std::int64_t k, const std::string& by, const std::string& name) {
    htcore::require(by == "row" || by == "col", "internal error: by must be 'row' or 'col'");
    return with_float_bits(w, [&](auto tag) -> py::object {
      using U = decltype(tag);
      return csr_tuple<U>(w, [&](auto idx, const U* x, std::int64_t rows, std::int64_t cols) {
        using Idx = decltype(idx);
        return by == "row" ? topk::csr_rows<U, Idx>(x, rows, cols, k, name) : topk::csr_cols<U, Idx>(x, rows, cols, k, name);
      });
    });
  }, "w"_a, "k"_a, "by"_a, "name"_a);
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
  bind_topk(m);

  // ---- CSR kernels ----
}
