// The only file that knows about Python. Each kernel binding takes numpy arrays the Python
// layer has already validated and made contiguous, releases the GIL around the C++ call, and
// returns numpy arrays. Users never import this module directly: htcore/*.py wraps it.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>
#include <string>

#include "build_info.hpp"
#include "csr.hpp"
#include "errors.hpp"
#include "parallel.hpp"
#include "sell.hpp"
#include "symmetric_eigenvalues.hpp"
#include "tails.hpp"
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

// ---- tails (marshalling helpers) ----
// Each is bound for float64 and then float32 samples: pybind11 first tries the overloads without
// conversion, so a float32 array reaches the kernels without a float64 copy (they widen it
// exactly), and any other dtype is converted to float64 by the first overload as before.
template <class T>
using Sample = py::array_t<T, py::array::c_style | py::array::forcecast>;

template <class T>
py::dict tail_estimate(Sample<T> x, const std::string& method, long long k, std::uint64_t seed, int resamples,
                       double eps_stop, double cap_factor, double rho_max) {
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
  const T* data = x.data();
  const auto n = static_cast<long long>(x.size());
  {
    py::gil_scoped_release release;
    r = htcore::estimate_tail(kind, data, n, k, seed, options, rho_max);
  }
  return py::dict("xi"_a = r.xi, "k"_a = r.k, "k1"_a = r.bootstrap.k1, "k2"_a = r.bootstrap.k2,
                  "n1"_a = r.bootstrap.n1, "n2"_a = r.bootstrap.n2, "rho"_a = r.second.rho,
                  "beta"_a = r.second.beta, "k1_second_order"_a = r.second.k1);
}

template <class T>
py::dict fit_powerlaw(Sample<T> x, double xmax, double xmin, long long grid) {
  htcore::PowerLawResult r;
  const T* data = x.data();
  const auto n = static_cast<long long>(x.size());
  {
    py::gil_scoped_release release;
    r = htcore::fit_powerlaw(data, n, xmax, xmin, grid);
  }
  return py::dict("pdf_exponent"_a = r.pdf_exponent, "xmin"_a = r.xmin, "ks_distance"_a = r.ks_distance,
                  "n_tail"_a = r.n_tail, "candidates"_a = r.candidates);
}

// ---- CSR kernels (marshalling helpers) ----
// The Python layer (htcore/csr.py) has validated shapes and dtypes and made every array
// C-contiguous; these helpers only map numpy dtypes to the kernel's enums and refuse the rest.
const void* contiguous_data(const py::array& a, const char* name) {
  if (!(a.flags() & py::array::c_style)) throw htcore::type_error(std::string(name) + " must be C-contiguous");
  return a.data();
}

template <class T>
bool has_dtype(const py::array& a) {
  return a.dtype().is(py::dtype::of<T>());
}

// Data pointer and length of an optional C-contiguous array argument of `dtype` (None: null, 0).
// The array is the caller's object (not a converted copy), so the pointer lives as long as it.
std::pair<const void*, int64_t> optional_array(const py::object& obj, const py::dtype& dtype, const char* name) {
  if (obj.is_none()) return {nullptr, 0};
  if (!py::isinstance<py::array>(obj)) throw htcore::type_error(std::string(name) + " must be None or an array");
  const auto arr = obj.cast<py::array>();
  if (!arr.dtype().is(dtype)) throw htcore::type_error(std::string(name) + " must be " + std::string(py::str(dtype)));
  return {contiguous_data(arr, name), static_cast<int64_t>(arr.size())};
}

// Data pointer of an output array, which must be C-contiguous and writeable.
void* output_data(py::array& out) {
  if (!(out.flags() & py::array::c_style)) throw htcore::type_error("out must be C-contiguous");
  return out.mutable_data();
}

htcore::IndexType index_type(const py::array& indices) {
  if (has_dtype<uint16_t>(indices)) return htcore::IndexType::u16;
  if (has_dtype<int32_t>(indices)) return htcore::IndexType::i32;
  throw htcore::type_error("indices must be uint16 or int32");
}

htcore::ValueType value_type(const py::array& data) {
  if (has_dtype<float>(data)) return htcore::ValueType::f32;
  if (has_dtype<double>(data)) return htcore::ValueType::f64;
  if (data.dtype().kind() == 'f' && data.itemsize() == 2) return htcore::ValueType::f16;
  if (has_dtype<uint8_t>(data)) return htcore::ValueType::code8;
  throw htcore::type_error("data must be float32, float64, float16 or uint8 codes");
}

htcore::CsrRef csr_ref(const py::array& indptr, const py::array& indices, const py::array& data,
                       const py::object& codebook, int64_t rows, int64_t cols) {
  htcore::CsrRef a;
  a.rows = rows;
  a.cols = cols;
  a.nnz = static_cast<int64_t>(data.size());
  htcore::require(indptr.size() == rows + 1 && indices.size() == a.nnz, "CSR arrays have inconsistent lengths");
  a.indptr = contiguous_data(indptr, "indptr");
  if (has_dtype<int32_t>(indptr)) a.indptr_type = htcore::IndptrType::i32;
  else if (has_dtype<int64_t>(indptr)) a.indptr_type = htcore::IndptrType::i64;
  else throw htcore::type_error("indptr must be int32 or int64");
  a.indices = contiguous_data(indices, "indices");
  a.index_type = index_type(indices);
  a.data = contiguous_data(data, "data");
  a.value_type = value_type(data);
  if (a.value_type == htcore::ValueType::code8) {
    if (codebook.is_none()) throw htcore::type_error("uint8 codes need a codebook");
    const auto cb = codebook.cast<py::array>();
    if (!has_dtype<float>(cb)) throw htcore::type_error("codebook must be float32");
    a.codebook = static_cast<const float*>(contiguous_data(cb, "codebook"));
    a.codebook_size = static_cast<int64_t>(cb.size());
  }
  return a;
}

htcore::Activation activation_code(const std::string& name) {
  if (name == "none") return htcore::Activation::none;
  if (name == "relu") return htcore::Activation::relu;
  if (name == "gelu") return htcore::Activation::gelu;
  if (name == "tanh") return htcore::Activation::tanh;
  htcore::fail("activation must be none, relu, gelu or tanh, got '" + name + "'");
}

// out[i * out_row_stride + j * out_col_stride] = act((A X)[i, j] + bias[i]); X is (cols, k), or
// (k, cols) when x_batch_major.
void csr_spmm(const py::array& indptr, const py::array& indices, const py::array& data, const py::object& codebook,
              int64_t rows, int64_t cols, const py::array& x, int64_t k, bool x_batch_major, const py::object& bias,
              const std::string& activation, py::array& out, int64_t out_row_stride, int64_t out_col_stride) {
  const htcore::CsrRef a = csr_ref(indptr, indices, data, codebook, rows, cols);
  const py::dtype acc = a.value_type == htcore::ValueType::f64 ? py::dtype::of<double>() : py::dtype::of<float>();
  if (!x.dtype().is(acc) || !out.dtype().is(acc)) throw htcore::type_error("X and out must be " + std::string(py::str(acc)));
  const void* xp = contiguous_data(x, "X");
  const auto [bp, bias_size] = optional_array(bias, acc, "bias");
  void* yp = output_data(out);
  const auto act = activation_code(activation);
  const auto x_size = static_cast<int64_t>(x.size()), y_size = static_cast<int64_t>(out.size());
  py::gil_scoped_release release;
  htcore::csr_spmm(a, xp, x_size, k, x_batch_major, bp, bias_size, act, yp, y_size, out_row_stride, out_col_stride);
}

// ---- SELL-8 (marshalling) ----
// (perm, slice_ptr, indices, data) of the SELL-8 layout of a float32/float16 CSR matrix; indices
// and data keep the matrix's dtypes.
py::tuple sell_build(const py::array& indptr, const py::array& indices, const py::array& data, int64_t rows, int64_t cols) {
  const htcore::CsrRef a = csr_ref(indptr, indices, data, py::none(), rows, cols);
  std::vector<int32_t> perm;
  std::vector<int64_t> slice_ptr;
  {
    py::gil_scoped_release release;
    htcore::sell_layout(a, perm, slice_ptr);
  }
  py::array_t<int32_t> perm_out(static_cast<py::ssize_t>(perm.size()));
  std::copy(perm.begin(), perm.end(), perm_out.mutable_data());
  py::array_t<int64_t> ptr_out(static_cast<py::ssize_t>(slice_ptr.size()));
  std::copy(slice_ptr.begin(), slice_ptr.end(), ptr_out.mutable_data());
  const std::vector<py::ssize_t> shape{static_cast<py::ssize_t>(slice_ptr.back())};
  py::array idx_out(indices.dtype(), shape), val_out(data.dtype(), shape);
  void* ip = idx_out.mutable_data();
  void* vp = val_out.mutable_data();
  {
    py::gil_scoped_release release;
    htcore::sell_fill(a, perm, slice_ptr, ip, vp);
  }
  return py::make_tuple(perm_out, ptr_out, idx_out, val_out);
}

// out = act(A x + bias) for A in SELL-8 (arrays as sell_build returned them).
void sell_spmv(const py::array& perm, const py::array& slice_ptr, const py::array& indices, const py::array& data,
               int64_t rows, int64_t cols, const py::array& x, const py::object& bias, const std::string& activation,
               py::array& out) {
  htcore::SellRef a;
  a.rows = rows;
  a.cols = cols;
  if (!has_dtype<int32_t>(perm)) throw htcore::type_error("perm must be int32");
  if (!has_dtype<int64_t>(slice_ptr)) throw htcore::type_error("slice_ptr must be int64");
  a.perm = static_cast<const int32_t*>(contiguous_data(perm, "perm"));
  a.perm_size = static_cast<int64_t>(perm.size());
  a.slice_ptr = static_cast<const int64_t*>(contiguous_data(slice_ptr, "slice_ptr"));
  a.slice_ptr_size = static_cast<int64_t>(slice_ptr.size());
  htcore::require(a.slice_ptr_size >= 1, "slice_ptr must have ceil(rows / 8) + 1 entries, got 0");
  a.entries = static_cast<int64_t>(data.size());
  htcore::require(static_cast<int64_t>(indices.size()) == a.entries, "SELL indices and data have different lengths");
  a.indices = contiguous_data(indices, "indices");
  a.index_type = index_type(indices);
  a.data = contiguous_data(data, "data");
  a.value_type = value_type(data);
  if (a.value_type != htcore::ValueType::f32 && a.value_type != htcore::ValueType::f16)
    throw htcore::type_error("SELL data must be float32 or float16");
  if (!has_dtype<float>(x) || !has_dtype<float>(out)) throw htcore::type_error("x and out must be float32");
  const auto* xp = static_cast<const float*>(contiguous_data(x, "x"));
  const auto [bias_data, bias_size] = optional_array(bias, py::dtype::of<float>(), "bias");
  const auto* bp = static_cast<const float*>(bias_data);
  auto* yp = static_cast<float*>(output_data(out));
  const auto act = activation_code(activation);
  const auto x_size = static_cast<int64_t>(x.size()), y_size = static_cast<int64_t>(out.size());
  py::gil_scoped_release release;
  htcore::sell_spmv(a, xp, x_size, bp, bias_size, act, yp, y_size);
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

// ---- symmetric eigenvalues (marshalling) ----
// The Python layer passes a finite, C-contiguous, square float64 matrix.
py::array_t<double> symmetric_eigenvalues(py::array_t<double, py::array::c_style | py::array::forcecast> a, int max_sweeps) {
  htcore::require(a.ndim() == 2 && a.shape(0) == a.shape(1), "internal error: matrix must be square 2-D");
  const auto n = static_cast<std::int64_t>(a.shape(0));
  py::array_t<double> out(n);
  const double* src = a.data();
  double* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    htcore::symmetric_eigenvalues(src, n, dst, max_sweeps);
  }
  return out;
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
  m.def("tail_estimate", &tail_estimate<double>, "x"_a, "method"_a, "k"_a, "seed"_a, "resamples"_a, "eps_stop"_a,
        "cap_factor"_a, "rho_max"_a);
  m.def("tail_estimate", &tail_estimate<float>, "x"_a, "method"_a, "k"_a, "seed"_a, "resamples"_a, "eps_stop"_a,
        "cap_factor"_a, "rho_max"_a);
  m.def("fit_powerlaw", &fit_powerlaw<double>, "x"_a, "xmax"_a, "xmin"_a, "grid"_a);
  m.def("fit_powerlaw", &fit_powerlaw<float>, "x"_a, "xmax"_a, "xmin"_a, "grid"_a);

  // ---- top-k selection ----
  bind_topk(m);

  // ---- CSR kernels ----
  m.def("csr_spmm", &csr_spmm, "indptr"_a, "indices"_a, "data"_a, "codebook"_a, "rows"_a, "cols"_a, "x"_a, "k"_a,
        "x_batch_major"_a, "bias"_a, "activation"_a, "out"_a, "out_row_stride"_a, "out_col_stride"_a);
  m.def("csr_uses_avx2", &htcore::csr_uses_avx2);
  m.def("_csr_threads", &htcore::csr_threads, "rows"_a, "nnz"_a, "k"_a);
  m.def("_csr_enable_avx2", &htcore::csr_enable_avx2, "enabled"_a);

  // ---- SELL-8 ----
  m.def("sell_build", &sell_build, "indptr"_a, "indices"_a, "data"_a, "rows"_a, "cols"_a);
  m.def("sell_spmv", &sell_spmv, "perm"_a, "slice_ptr"_a, "indices"_a, "data"_a, "rows"_a, "cols"_a, "x"_a, "bias"_a,
        "activation"_a, "out"_a);

  // ---- symmetric eigenvalues ----
  m.def("symmetric_eigenvalues", &symmetric_eigenvalues, "a"_a, "max_sweeps"_a);
  m.def("symmetric_eigenvalues_uses_avx2", &htcore::symmetric_eigenvalues_uses_avx2);
  m.def("_symmetric_eigenvalues_enable_avx2", &htcore::symmetric_eigenvalues_enable_avx2, "enabled"_a);
}
