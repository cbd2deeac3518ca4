// htcore._core: the compiled kernels, bound one domain per file (see common.hpp).
#include "common.hpp"

PYBIND11_MODULE(_core, m) {
  m.doc() =
      "htcore's compiled kernels (private: use the htcore package, which validates arguments and makes "
      "arrays C-contiguous before calling these).";
  htcore::register_errors(m);
  htcore::register_system(m);
  htcore::register_tails(m);
  htcore::register_topk(m);
  htcore::register_csr(m);
  htcore::register_sell(m);
  htcore::register_conv2d(m);
  htcore::register_image_ops(m);
  htcore::register_spectra(m);
}
