// Eigenvalues of dense symmetric matrices (symmetric_eigenvalues.hpp).
#include "common.hpp"
#include "symmetric_eigenvalues.hpp"

namespace htcore {
namespace {

py::array_t<double> eigenvalues(const detail::Sample<double>& a, int max_sweeps) {
  require(a.ndim() == 2 && a.shape(0) == a.shape(1), "internal error: matrix must be square 2-D");
  const auto n = static_cast<std::int64_t>(a.shape(0));
  py::array_t<double> out(n);
  const double* src = a.data();
  double* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    symmetric_eigenvalues(src, n, dst, max_sweeps);
  }
  return out;
}

}  // namespace

void register_spectra(py::module_& m) {
  m.def("symmetric_eigenvalues", &eigenvalues, py::arg("a"), py::arg("max_sweeps"),
        "Eigenvalues, ascending, of the square float64 matrix a (C-contiguous; converted otherwise), reading only "
        "its lower triangle, as numpy.linalg.eigvalsh. Runs on the calling thread with the GIL released, so "
        "several calls run side by side. Raises ValueError for a non-finite entry, or when QL/QR needs more than "
        "max_sweeps * n sweeps in total.");
  m.def("symmetric_eigenvalues_uses_avx2", &symmetric_eigenvalues_uses_avx2,
        "True when symmetric_eigenvalues uses its AVX2+FMA path (the CPU has it and it is enabled).");
  m.def("_symmetric_eigenvalues_enable_avx2", &symmetric_eigenvalues_enable_avx2, py::arg("enabled"),
        "Test hook: enable (default) or disable the AVX2+FMA path of symmetric_eigenvalues, process-wide.");
}

}  // namespace htcore
