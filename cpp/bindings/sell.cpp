// SELL-8 layout and product (sell.hpp).
#include <algorithm>
#include <vector>

#include "common.hpp"
#include "sell.hpp"

namespace htcore {
namespace {

// The arrays of a SELL-8 layout, as sell_build returns them (see sell.hpp).
struct SellArrays {
  py::array perm, slice_ptr, indices, data;
};

SellArrays build(const py::array& indptr, const py::array& indices, const py::array& data, std::int64_t rows,
                 std::int64_t cols) {
  const CsrRef a = detail::csr_ref(indptr, indices, data, py::none(), rows, cols);
  std::vector<std::int32_t> perm;
  std::vector<std::int64_t> slice_ptr;
  {
    py::gil_scoped_release release;
    sell_layout(a, perm, slice_ptr);
  }
  py::array_t<std::int32_t> perm_out(static_cast<py::ssize_t>(perm.size()));
  std::copy(perm.begin(), perm.end(), perm_out.mutable_data());
  py::array_t<std::int64_t> ptr_out(static_cast<py::ssize_t>(slice_ptr.size()));
  std::copy(slice_ptr.begin(), slice_ptr.end(), ptr_out.mutable_data());
  const std::vector<py::ssize_t> shape{static_cast<py::ssize_t>(slice_ptr.back())};
  py::array idx_out(indices.dtype(), shape), val_out(data.dtype(), shape);
  void* ip = idx_out.mutable_data();
  void* vp = val_out.mutable_data();
  {
    py::gil_scoped_release release;
    sell_fill(a, perm, slice_ptr, ip, vp);
  }
  return {perm_out, ptr_out, idx_out, val_out};
}

// out = act(A x + bias) for A in SELL-8 (arrays as sell_build returned them).
void spmv(const py::array& perm, const py::array& slice_ptr, const py::array& indices, const py::array& data,
          std::int64_t rows, std::int64_t cols, const py::array& x, const py::object& bias, Activation activation,
          py::array& out) {
  SellRef a;
  a.rows = rows;
  a.cols = cols;
  if (!detail::has_dtype<std::int32_t>(perm)) throw type_error("perm must be int32");
  if (!detail::has_dtype<std::int64_t>(slice_ptr)) throw type_error("slice_ptr must be int64");
  a.perm = static_cast<const std::int32_t*>(detail::contiguous_data(perm, "perm"));
  a.perm_size = static_cast<std::int64_t>(perm.size());
  a.slice_ptr = static_cast<const std::int64_t*>(detail::contiguous_data(slice_ptr, "slice_ptr"));
  a.slice_ptr_size = static_cast<std::int64_t>(slice_ptr.size());
  require(a.slice_ptr_size >= 1, "slice_ptr must have ceil(rows / 8) + 1 entries, got 0");
  a.entries = static_cast<std::int64_t>(data.size());
  require(static_cast<std::int64_t>(indices.size()) == a.entries, "SELL indices and data have different lengths");
  a.indices = detail::contiguous_data(indices, "indices");
  a.index_type = detail::index_type(indices);
  a.data = detail::contiguous_data(data, "data");
  a.value_type = detail::value_type(data);
  if (a.value_type != ValueType::f32 && a.value_type != ValueType::f16)
    throw type_error("SELL data must be float32 or float16");
  if (!detail::has_dtype<float>(x) || !detail::has_dtype<float>(out)) throw type_error("x and out must be float32");
  const auto* xp = static_cast<const float*>(detail::contiguous_data(x, "x"));
  const auto [bias_data, bias_size] = detail::optional_array(bias, py::dtype::of<float>(), "bias");
  const auto* bp = static_cast<const float*>(bias_data);
  auto* yp = static_cast<float*>(detail::output_data(out));
  const Activation act = detail::checked(activation);
  const auto x_size = static_cast<std::int64_t>(x.size()), y_size = static_cast<std::int64_t>(out.size());
  py::gil_scoped_release release;
  sell_spmv(a, xp, x_size, bp, bias_size, act, yp, y_size);
}

}  // namespace

void register_sell(py::module_& m) {
  py::class_<SellArrays>(m, "SellLayout", "The SELL-8 layout of a CSR matrix (new arrays, see cpp/sell.hpp).")
      .def_readonly("perm", &SellArrays::perm, "int32, rows entries: original row of each lane (rows longest first).")
      .def_readonly("slice_ptr", &SellArrays::slice_ptr,
                    "int64, ceil(rows / 8) + 1 entries: start of each slice in indices and data.")
      .def_readonly(
          "indices", &SellArrays::indices,
          "Columns, slice by slice, column-major within a slice (padding included); the matrix's index dtype.")
      .def_readonly("data", &SellArrays::data,
                    "Values laid out like indices (padding is 0); the matrix's value dtype.");

  m.def("sell_build", &build, py::arg("indptr"), py::arg("indices"), py::arg("data"), py::arg("rows"), py::arg("cols"),
        "SELL-8 layout of the (rows, cols) CSR matrix with C-contiguous indptr (int32/int64), indices (uint16/int32) "
        "and float32 or float16 data. Row pointers are re-checked (ValueError).");
  m.def("sell_spmv", &spmv, py::arg("perm"), py::arg("slice_ptr"), py::arg("indices"), py::arg("data"), py::arg("rows"),
        py::arg("cols"), py::arg("x"), py::arg("bias"), py::arg("activation"), py::arg("out"),
        "out = activation(A x + bias) for A in SELL-8 (the arrays sell_build returned). x (cols values), bias (None "
        "or rows values) and out (rows values) are C-contiguous float32. Sizes, slice pointers, perm and finiteness "
        "of x and bias are re-checked (ValueError), dtypes too (TypeError). Releases the GIL; bitwise identical at "
        "any thread count.");
}

}  // namespace htcore
