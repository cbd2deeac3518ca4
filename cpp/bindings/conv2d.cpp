// Sparse 2-D convolution (conv2d.hpp) and its Conv2dAlgo enum.
#include <vector>

#include "common.hpp"
#include "conv2d.hpp"

namespace htcore {
namespace {

Conv2dAlgo checked(Conv2dAlgo algo) {
  switch (algo) {
    case Conv2dAlgo::automatic:
    case Conv2dAlgo::direct:
    case Conv2dAlgo::tiled: return algo;
  }
  fail("algo must be automatic, direct or tiled, got " + std::to_string(static_cast<int>(algo)));
}

// A new (N, C_out, H_out, W_out) float32 array = act(conv2d(x, A) + bias), x of shape (N, C_in, H, W).
py::array_t<float> conv2d(const py::array& indptr, const py::array& indices, const py::array& data,
                          const py::object& codebook, std::int64_t rows, std::int64_t cols, const py::array& x,
                          std::int64_t kernel_h, std::int64_t kernel_w, std::int64_t stride_h, std::int64_t stride_w,
                          std::int64_t padding_h, std::int64_t padding_w, std::int64_t dilation_h,
                          std::int64_t dilation_w, std::int64_t groups, const py::object& bias, Activation activation,
                          Conv2dAlgo algo) {
  const CsrRef a = detail::csr_ref(indptr, indices, data, codebook, rows, cols);
  if (!detail::has_dtype<float>(x)) throw type_error("x must be float32");
  if (x.ndim() != 4) fail("x must be 4-D (N, C_in, H, W), got " + std::to_string(x.ndim()) + "-D");
  Conv2dParams p;
  p.batch = x.shape(0), p.in_channels = x.shape(1), p.height = x.shape(2), p.width = x.shape(3);
  p.out_channels = rows, p.kernel_h = kernel_h, p.kernel_w = kernel_w, p.stride_h = stride_h, p.stride_w = stride_w;
  p.padding_h = padding_h, p.padding_w = padding_w, p.dilation_h = dilation_h, p.dilation_w = dilation_w;
  p.groups = groups;
  const auto* xp = static_cast<const float*>(detail::contiguous_data(x, "x"));
  const auto [bias_data, bias_size] = detail::optional_array(bias, py::dtype::of<float>(), "bias");
  const auto* bp = static_cast<const float*>(bias_data);
  const Activation act = detail::checked(activation);
  const Conv2dAlgo how = checked(algo);
  std::int64_t out_h = 0, out_w = 0;
  conv2d_output_size(p, &out_h, &out_w);  // throws (ValueError) on invalid parameters or an empty output
  py::array_t<float> out(std::vector<py::ssize_t>{p.batch, p.out_channels, out_h, out_w});
  float* yp = out.mutable_data();
  const auto x_size = static_cast<std::int64_t>(x.size()), y_size = static_cast<std::int64_t>(out.size());
  {
    py::gil_scoped_release release;
    sparse_conv2d(a, xp, x_size, p, bp, bias_size, act, yp, y_size, how);
  }
  return out;
}

}  // namespace

void register_conv2d(py::module_& m) {
  py::enum_<Conv2dAlgo>(m, "Conv2dAlgo", "Which loop sparse_conv2d runs; all give bitwise the same result.")
      .value("automatic", Conv2dAlgo::automatic,
             "a dense loop (4 output channels at a time) for a weight holding every entry in column order with "
             "groups 1; else tiled when the padded-width output plane is one tile (<= 64 positions) or has no "
             "dropped columns, else direct (measured: benchmarks/conv/results.md, benchmarks/results/conv.md).")
      .value("direct", Conv2dAlgo::direct, "An accumulator plane per (image, output channel), 4 kept weights a pass.")
      .value("tiled", Conv2dAlgo::tiled, "Tiles of up to 64 output positions held in registers.");

  m.def("sparse_conv2d", &conv2d, py::arg("indptr"), py::arg("indices"), py::arg("data"), py::arg("codebook"),
        py::arg("rows"), py::arg("cols"), py::arg("x"), py::arg("kernel_h"), py::arg("kernel_w"), py::arg("stride_h"),
        py::arg("stride_w"), py::arg("padding_h"), py::arg("padding_w"), py::arg("dilation_h"), py::arg("dilation_w"),
        py::arg("groups"), py::arg("bias"), py::arg("activation"), py::arg("algo"),
        "A new float32 array y of shape (N, C_out, H_out, W_out) = activation(conv2d(x, W) + bias), with "
        "torch.nn.functional.conv2d's semantics: x is a C-contiguous float32 (N, C_in, H, W) array (NCHW), "
        "strides, zero paddings and dilations are in input elements, H_out = floor((H + 2 padding_h - "
        "dilation_h (kernel_h - 1) - 1) / stride_h) + 1 (W_out likewise). The weight W is the (rows, cols) = "
        "(C_out, C_in / groups * kernel_h * kernel_w) CSR matrix A (indptr int32/int64, indices uint16/int32, data "
        "float32/float16, or uint8 codes into a float32 codebook of 1 to 256 levels; codebook None otherwise; "
        "float64 data raise TypeError), column c of row co standing for input channel c / (kh kw) of co's group and "
        "tap (c / kw % kh, c % kw): the row-major flattening of torch's (C_out, C_in / groups, kh, kw) weight. bias is "
        "None or C_out float32 values. Parameters, sizes, row pointers, column indices, codes and finiteness of x and "
        "bias are checked (ValueError), dtypes too (TypeError). Releases the GIL; bitwise identical at any thread "
        "count and for every algo.");
  m.def("_conv2d_ignore_parallel_grain", &conv2d_ignore_parallel_grain, py::arg("ignore"),
        "Test hook: when True, every sparse_conv2d call with at least two (image, output channel) items uses "
        "num_threads threads however small it is (so small shapes exercise the parallel split), process-wide.");
}

}  // namespace htcore
