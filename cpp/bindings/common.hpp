// Shared by the binding files (cpp/bindings/*.cpp), the only code that knows about Python.
//
// Every binding takes numpy arrays that the Python layer (python/htcore/*.py) has already
// validated and made C-contiguous, releases the GIL around the C++ call and returns numpy arrays
// or one of the small result structs bound with py::class_. The helpers here only map numpy
// dtypes to the kernels' enums and re-check what a kernel could not survive (contiguity, dtypes,
// enum values out of range); anything else they refuse raises TypeError or ValueError through the
// translator in errors.cpp. Users never import htcore._core directly.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <utility>

#include "csr.hpp"
#include "errors.hpp"

namespace htcore {

namespace py = pybind11;

// One per domain, called in this order by PYBIND11_MODULE (module.cpp).
void register_errors(py::module_& m);  // exception translation and its test hook
void register_system(py::module_& m);  // threads and build information
void register_tails(py::module_& m);
void register_topk(py::module_& m);
void register_csr(py::module_& m);  // also binds Activation, used by register_sell and register_conv2d
void register_sell(py::module_& m);
void register_conv2d(py::module_& m);
void register_image_ops(py::module_& m);  // pooling, affine, sums, activations (both runtimes)
void register_spectra(py::module_& m);

namespace detail {

// A sample as a C-contiguous array of T (a converted copy only when it is not one already).
template <class T>
using Sample = py::array_t<T, py::array::c_style | py::array::forcecast>;

// Whether two dtypes describe the same values, byte order included (numpy's ==). Not identity:
// numpy gives an unpickled array (one that reached a worker process, say) a fresh dtype object equal
// to the canonical one. A non-native byte order (">f4" on x86) is a different dtype, so it is still
// refused here; the Python layer converts such arrays before they reach a binding.
inline bool same_dtype(const py::dtype& a, const py::dtype& b) {
  return a.is(b) || a.equal(b);  // the identity test first: it is the common case and needs no Python call
}

template <class T>
bool has_dtype(const py::array& a) {
  return same_dtype(a.dtype(), py::dtype::of<T>());
}

// numpy's type number of float16 (NPY_HALF, part of its stable C API), which pybind11 has no C++ type for.
constexpr int kNpyHalf = 23;

// Runs f(Sample<float>) for a float32 sample (the kernels widen it exactly, so no float64 copy is
// made) and f(Sample<double>) for any other dtype, converted to float64 if needed.
template <class F>
auto with_sample(const py::array& x, F&& f) {
  if (has_dtype<float>(x)) {
    auto s = Sample<float>::ensure(x);
    if (!s) throw py::error_already_set();
    return f(s);
  }
  auto s = Sample<double>::ensure(x);
  if (!s) throw py::error_already_set();
  return f(s);
}

inline const void* contiguous_data(const py::array& a, const char* name) {
  if (!(a.flags() & py::array::c_style)) throw type_error(std::string(name) + " must be C-contiguous");
  return a.data();
}

// Data pointer and length of an optional C-contiguous array argument of `dtype` (None: null, 0).
// The array is the caller's object (not a converted copy), so the pointer lives as long as it.
inline std::pair<const void*, std::int64_t> optional_array(const py::object& obj, const py::dtype& dtype,
                                                           const char* name) {
  if (obj.is_none()) return {nullptr, 0};
  if (!py::isinstance<py::array>(obj)) throw type_error(std::string(name) + " must be None or an array");
  const auto arr = obj.cast<py::array>();
  if (!same_dtype(arr.dtype(), dtype)) throw type_error(std::string(name) + " must be " + std::string(py::str(dtype)));
  return {contiguous_data(arr, name), static_cast<std::int64_t>(arr.size())};
}

// Data pointer of an output array, which must be C-contiguous and writeable.
inline void* output_data(py::array& out) {
  if (!(out.flags() & py::array::c_style)) throw type_error("out must be C-contiguous");
  return out.mutable_data();
}

inline IndexType index_type(const py::array& indices) {
  if (has_dtype<std::uint16_t>(indices)) return IndexType::u16;
  if (has_dtype<std::int32_t>(indices)) return IndexType::i32;
  throw type_error("indices must be uint16 or int32");
}

inline ValueType value_type(const py::array& data) {
  if (has_dtype<float>(data)) return ValueType::f32;
  if (has_dtype<double>(data)) return ValueType::f64;
  if (same_dtype(data.dtype(), py::dtype(kNpyHalf))) return ValueType::f16;
  if (has_dtype<std::uint8_t>(data)) return ValueType::code8;
  throw type_error("data must be float32, float64, float16 or uint8 codes");
}

// A borrowed view of CSR arrays (codebook: None, or float32 levels for uint8 codes).
inline CsrRef csr_ref(const py::array& indptr, const py::array& indices, const py::array& data,
                      const py::object& codebook, std::int64_t rows, std::int64_t cols) {
  CsrRef a;
  a.rows = rows;
  a.cols = cols;
  a.nnz = static_cast<std::int64_t>(data.size());
  require(indptr.size() == rows + 1 && indices.size() == a.nnz, "CSR arrays have inconsistent lengths");
  a.indptr = contiguous_data(indptr, "indptr");
  if (has_dtype<std::int32_t>(indptr)) a.indptr_type = IndptrType::i32;
  else if (has_dtype<std::int64_t>(indptr)) a.indptr_type = IndptrType::i64;
  else throw type_error("indptr must be int32 or int64");
  a.indices = contiguous_data(indices, "indices");
  a.index_type = index_type(indices);
  a.data = contiguous_data(data, "data");
  a.value_type = value_type(data);
  if (a.value_type == ValueType::code8) {
    if (codebook.is_none()) throw type_error("uint8 codes need a codebook");
    const auto cb = codebook.cast<py::array>();
    if (!has_dtype<float>(cb)) throw type_error("codebook must be float32");
    a.codebook = static_cast<const float*>(contiguous_data(cb, "codebook"));
    a.codebook_size = static_cast<std::int64_t>(cb.size());
  }
  return a;
}

// A py::enum_ can be built from any integer (Activation(7)); the kernels' switches assume a
// declared value, so each binding taking an enum checks it first.
inline Activation checked(Activation act) {
  switch (act) {
    case Activation::none:
    case Activation::relu:
    case Activation::gelu:
    case Activation::tanh: return act;
  }
  fail("activation must be none, relu, gelu or tanh, got " + std::to_string(static_cast<int>(act)));
}

}  // namespace detail
}  // namespace htcore
