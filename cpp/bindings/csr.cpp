// CSR sparse-times-dense kernels (csr.hpp) and the Activation enum they share with SELL-8.
#include "common.hpp"

namespace htcore {
namespace {

// out[i * out_row_stride + j * out_col_stride] = act((A X)[i, j] + bias[i]); X is (cols, k), or
// (k, cols) when x_batch_major.
void spmm(const py::array& indptr, const py::array& indices, const py::array& data, const py::object& codebook,
          std::int64_t rows, std::int64_t cols, const py::array& x, std::int64_t k, bool x_batch_major,
          const py::object& bias, Activation activation, py::array& out, std::int64_t out_row_stride,
          std::int64_t out_col_stride) {
  const CsrRef a = detail::csr_ref(indptr, indices, data, codebook, rows, cols);
  const py::dtype acc = a.value_type == ValueType::f64 ? py::dtype::of<double>() : py::dtype::of<float>();
  if (!detail::same_dtype(x.dtype(), acc) || !detail::same_dtype(out.dtype(), acc))
    throw type_error("X and out must be " + std::string(py::str(acc)));
  const void* xp = detail::contiguous_data(x, "X");
  const auto [bp, bias_size] = detail::optional_array(bias, acc, "bias");
  void* yp = detail::output_data(out);
  const Activation act = detail::checked(activation);
  const auto x_size = static_cast<std::int64_t>(x.size()), y_size = static_cast<std::int64_t>(out.size());
  py::gil_scoped_release release;
  csr_spmm(a, xp, x_size, k, x_batch_major, bp, bias_size, act, yp, y_size, out_row_stride, out_col_stride);
}

}  // namespace

void register_csr(py::module_& m) {
  py::enum_<Activation>(m, "Activation", "Element-wise activation fused into csr_spmm and sell_spmv.")
      .value("none", Activation::none, "Identity.")
      .value("relu", Activation::relu, "max(v, 0).")
      .value("gelu", Activation::gelu, "Exact GELU, v * Phi(v) = v/2 (1 + erf(v / sqrt 2)) (torch's default).")
      .value("tanh", Activation::tanh, "tanh(v).");

  m.def("csr_spmm", &spmm, py::arg("indptr"), py::arg("indices"), py::arg("data"), py::arg("codebook"), py::arg("rows"),
        py::arg("cols"), py::arg("x"), py::arg("k"), py::arg("x_batch_major"), py::arg("bias"), py::arg("activation"),
        py::arg("out"), py::arg("out_row_stride"), py::arg("out_col_stride"),
        "out[i * out_row_stride + j * out_col_stride] = activation((A X)[i, j] + bias[i]) for the (rows, cols) CSR "
        "matrix A = (indptr int32/int64, indices uint16/int32, data float32/float64/float16, or uint8 codes into a "
        "float32 codebook of 1 to 256 levels; codebook None otherwise). x holds X as (cols, k), or as (k, cols) "
        "with x_batch_major (torch's Linear input); x, bias (None or rows values) and out are float64 for float64 "
        "data, else float32. Strides are in elements. Every array must be C-contiguous (the Python layer has "
        "validated the matrix); sizes, strides, row pointers and finiteness of x and bias are re-checked here "
        "(ValueError), dtypes too (TypeError). Releases the GIL; bitwise identical at any thread count.");
  m.def("csr_uses_avx2", &csr_uses_avx2,
        "True when the CSR and SELL-8 kernels use their AVX2+FMA+F16C path (the CPU has it and it is enabled).");
  m.def("_csr_threads", &csr_threads, py::arg("rows"), py::arg("nnz"), py::arg("k"),
        "Test hook: threads a product of this size would use (num_threads, but at most one per 8192 "
        "multiply-adds (nnz + rows) * k).");
  m.def("_csr_enable_avx2", &csr_enable_avx2, py::arg("enabled"),
        "Test hook: enable (default) or disable the AVX2 path of the CSR and SELL-8 kernels, process-wide.");
}

}  // namespace htcore
