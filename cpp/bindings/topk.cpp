// Exact top-k selection and CSR construction (topk.hpp). The kernels see the raw bits of C-contiguous
// float16/32/64 arrays.
#include <type_traits>
#include <vector>

#include "common.hpp"
#include "topk.hpp"

namespace htcore {
namespace {

// Which groups topk_csr_per_group keeps k entries of.
enum class TopkGroup { row, col };

// The CSR arrays of a top-k result (indptr int64; indices uint16 when cols <= 65536, else int32;
// data of the input's dtype) and, in threshold mode, how many ties at the threshold were kept.
struct TopkCsrArrays {
  py::array data, indices, indptr;
  std::int64_t ties_taken = 0;
};

template <class R, class F>
R with_float_bits(const py::array& a, F&& f) {
  switch (a.itemsize()) {
    case 2: return f(std::uint16_t{});
    case 4: return f(std::uint32_t{});
    case 8: return f(std::uint64_t{});
    default: throw type_error("expected a float16, float32 or float64 array");
  }
}

template <class U>
const U* bits_of(const py::array& a) {
  require(a.flags() & py::array::c_style, "internal error: array must be C-contiguous");
  return static_cast<const U*>(a.data());
}

// Hands a kernel's buffer to numpy without copying.
template <class T>
py::array to_numpy(Buffer<T>&& buffer, const py::dtype& dtype) {
  auto* owned = new Buffer<T>(std::move(buffer));
  py::capsule owner(owned, [](void* p) { delete static_cast<Buffer<T>*>(p); });
  return py::array(dtype, {static_cast<py::ssize_t>(owned->size)}, {static_cast<py::ssize_t>(sizeof(T))}, owned->data(),
                   owner);
}

template <class U>
std::vector<TopkSegment<U>> segments_of(const py::list& arrays) {
  std::vector<TopkSegment<U>> segments;
  for (const auto& item : arrays) {
    const auto a = item.cast<py::array>();
    segments.push_back({bits_of<U>(a), static_cast<std::int64_t>(a.size())});
  }
  return segments;
}

// Runs build(Idx{}, w, rows, cols) without the GIL, with uint16 column indices when they fit.
template <class U, class Build>
TopkCsrArrays csr_arrays(const py::array& w, Build&& build) {
  const std::int64_t rows = w.shape(0), cols = w.shape(1);
  const U* bits = bits_of<U>(w);
  const auto finish = [&](auto&& csr) {
    using Idx = std::remove_pointer_t<decltype(csr.indices.data())>;
    TopkCsrArrays out;
    out.data = to_numpy(std::move(csr.data), w.dtype());
    out.indices = to_numpy(std::move(csr.indices), py::dtype::of<Idx>());
    out.indptr = to_numpy(std::move(csr.indptr), py::dtype::of<std::int64_t>());
    out.ties_taken = csr.ties_taken;
    return out;
  };
  const auto without_gil = [&](auto idx) {
    py::gil_scoped_release release;
    return build(idx, bits, rows, cols);
  };
  if (cols <= 65536) return finish(without_gil(std::uint16_t{}));
  return finish(without_gil(std::int32_t{}));
}

TopkSelection select(const py::list& arrays, const std::vector<std::int64_t>& ks, bool sums, const std::string& name) {
  return with_float_bits<TopkSelection>(arrays[0].cast<py::array>(), [&](auto tag) {
    using U = decltype(tag);
    const auto segments = segments_of<U>(arrays);
    py::gil_scoped_release release;
    return topk_select<U>(segments, ks, sums, name);
  });
}

std::int64_t k_for_rel_error(const py::list& arrays, double max_rel_error, const std::string& name) {
  return with_float_bits<std::int64_t>(arrays[0].cast<py::array>(), [&](auto tag) {
    using U = decltype(tag);
    const auto segments = segments_of<U>(arrays);
    py::gil_scoped_release release;
    return topk_k_for_rel_error<U>(segments, max_rel_error, name);
  });
}

TopkCsrArrays csr_threshold(const py::array& w, std::uint64_t key, std::int64_t tie_budget) {
  return with_float_bits<TopkCsrArrays>(w, [&](auto tag) {
    using U = decltype(tag);
    return csr_arrays<U>(w, [&](auto idx, const U* x, std::int64_t rows, std::int64_t cols) {
      return topk_csr_threshold<U, decltype(idx)>(x, rows, cols, key, tie_budget);
    });
  });
}

TopkCsrArrays csr_matrix(const py::array& w, std::int64_t k, const std::string& name) {
  return with_float_bits<TopkCsrArrays>(w, [&](auto tag) {
    using U = decltype(tag);
    return csr_arrays<U>(w, [&](auto idx, const U* x, std::int64_t rows, std::int64_t cols) {
      return topk_csr_matrix<U, decltype(idx)>(x, rows, cols, k, name);
    });
  });
}

TopkCsrArrays csr_per_group(const py::array& w, std::int64_t k, TopkGroup by, const std::string& name) {
  require(by == TopkGroup::row || by == TopkGroup::col, "internal error: by must be TopkGroup.row or TopkGroup.col");
  return with_float_bits<TopkCsrArrays>(w, [&](auto tag) {
    using U = decltype(tag);
    return csr_arrays<U>(w, [&](auto idx, const U* x, std::int64_t rows, std::int64_t cols) {
      using Idx = decltype(idx);
      return by == TopkGroup::row ? topk_csr_rows<U, Idx>(x, rows, cols, k, name)
                                  : topk_csr_cols<U, Idx>(x, rows, cols, k, name);
    });
  });
}

}  // namespace

void register_topk(py::module_& m) {
  py::enum_<TopkGroup>(m, "TopkGroup", "Groups in which topk_csr_per_group keeps the k largest |w|.")
      .value("row", TopkGroup::row, "k in every row, ties to the lowest column.")
      .value("col", TopkGroup::col, "k in every column, ties to the lowest row.");

  py::class_<TopkTarget>(m, "TopkTarget", "The k-th largest |x| for one requested k (see topk_select).")
      .def_readonly("key", &TopkTarget::key, "Bits of |x| at the threshold, as an unsigned integer.")
      .def_readonly("value", &TopkTarget::value, "|x| at the threshold, as a float (exact).")
      .def_readonly("greater", &TopkTarget::greater, "Entries with |x| > value.")
      .def_readonly("ties", &TopkTarget::ties, "Entries with |x| == value.")
      .def_readonly("tail_sq", &TopkTarget::tail_sq,
                    "Sum of x^2 over the entries not among the top k, in the scaled units of total_sq (only with "
                    "sums; only ratios to total_sq are meaningful).");

  py::class_<TopkSelection>(m, "TopkSelection", "Result of topk_select.")
      .def_readonly("targets", &TopkSelection::targets, "One TopkTarget per requested k, in the order of ks.")
      .def_readonly("total_sq", &TopkSelection::total_sq,
                    "Sum of x^2 over all entries, in scaled units (only with sums).");

  py::class_<TopkCsrArrays>(m, "TopkCsr", "CSR arrays of a top-k selection (owned by numpy, no copies made).")
      .def_readonly("data", &TopkCsrArrays::data, "Kept values, bit for bit, in the input's dtype.")
      .def_readonly("indices", &TopkCsrArrays::indices,
                    "Column of each kept value: uint16 if cols <= 65536, else int32.")
      .def_readonly("indptr", &TopkCsrArrays::indptr, "Row pointers, int64, rows + 1 entries.")
      .def_readonly("ties_taken", &TopkCsrArrays::ties_taken,
                    "topk_csr_threshold only: entries equal to the threshold that were kept (else 0).");

  m.def("topk_select", &select, py::arg("arrays"), py::arg("ks"), py::arg("sums"), py::arg("name"),
        "The k-th largest |x| over the concatenated C-contiguous arrays (all of one float dtype: float16, 32 or 64), "
        "for every k in ks (each in [1, total size]; ks may be empty to only check). Reads every entry once and "
        "raises ValueError naming `name` for NaN or Inf. With sums, also the sums of squares for exact relative "
        "Frobenius errors.");
  m.def("topk_k_for_rel_error", &k_for_rel_error, py::arg("arrays"), py::arg("max_rel_error"), py::arg("name"),
        "The smallest k with ||W - W_k||_F <= max_rel_error ||W||_F over the concatenated C-contiguous arrays "
        "(one float dtype). Raises ValueError naming `name` for NaN or Inf.");
  m.def("topk_csr_threshold", &csr_threshold, py::arg("w"), py::arg("key"), py::arg("tie_budget"),
        "CSR of the finite, C-contiguous 2-D float array w keeping every entry whose |w| bits exceed key and, in "
        "row-major order, the first tie_budget entries equal to it (key from topk_select).");
  m.def("topk_csr_matrix", &csr_matrix, py::arg("w"), py::arg("k"), py::arg("name"),
        "CSR of the C-contiguous 2-D float array w keeping its k largest |w| (k <= size), ties to the lowest "
        "flat index. Raises ValueError naming `name` for NaN or Inf.");
  m.def("topk_csr_per_group", &csr_per_group, py::arg("w"), py::arg("k"), py::arg("by"), py::arg("name"),
        "CSR of the C-contiguous 2-D float array w keeping the k largest |w| of every row (by=TopkGroup.row, "
        "k <= cols) or column (by=TopkGroup.col, k <= rows). Raises ValueError naming `name` for NaN or Inf.");
}

}  // namespace htcore
