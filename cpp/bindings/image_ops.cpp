// Pooling, per-channel affine, sums and activations (image_ops.hpp), shared by both runtimes.
#include <vector>

#include "common.hpp"
#include "image_ops.hpp"

namespace htcore {
namespace {

const float* float_data(const py::array& a, const char* name) {
  if (!detail::has_dtype<float>(a)) throw type_error(std::string(name) + " must be float32");
  return static_cast<const float*>(detail::contiguous_data(a, name));
}

void require_images(const py::array& x) {
  if (x.ndim() != 4) fail("x must be 4-D (N, C, H, W), got " + std::to_string(x.ndim()) + "-D");
}

py::array_t<float> pool(const py::array& x, std::int64_t kernel_h, std::int64_t kernel_w, std::int64_t stride_h,
                        std::int64_t stride_w, std::int64_t padding_h, std::int64_t padding_w, bool max) {
  const float* xp = float_data(x, "x");
  require_images(x);
  Pool2dParams p;
  p.batch = x.shape(0), p.channels = x.shape(1), p.height = x.shape(2), p.width = x.shape(3);
  p.kernel_h = kernel_h, p.kernel_w = kernel_w, p.stride_h = stride_h, p.stride_w = stride_w;
  p.padding_h = padding_h, p.padding_w = padding_w;
  std::int64_t oh = 0, ow = 0;
  pool2d_output_size(p, &oh, &ow);
  py::array_t<float> out(std::vector<py::ssize_t>{p.batch, p.channels, oh, ow});
  float* yp = out.mutable_data();
  const auto x_size = static_cast<std::int64_t>(x.size()), y_size = static_cast<std::int64_t>(out.size());
  py::gil_scoped_release release;
  (max ? max_pool2d : avg_pool2d)(p, xp, x_size, yp, y_size);
  return out;
}

py::array_t<float> adaptive(const py::array& x, std::int64_t out_h, std::int64_t out_w) {
  const float* xp = float_data(x, "x");
  require_images(x);
  require(out_h >= 1 && out_w >= 1, "output_size must be >= 1");
  py::array_t<float> out(std::vector<py::ssize_t>{x.shape(0), x.shape(1), out_h, out_w});
  float* yp = out.mutable_data();
  const auto x_size = static_cast<std::int64_t>(x.size()), y_size = static_cast<std::int64_t>(out.size());
  py::gil_scoped_release release;
  adaptive_avg_pool2d(x.shape(0), x.shape(1), x.shape(2), x.shape(3), out_h, out_w, xp, x_size, yp, y_size);
  return out;
}

py::array_t<float> affine(const py::array& x, const py::array& scale, const py::array& shift) {
  const float* xp = float_data(x, "x");
  const float* sp = float_data(scale, "scale");
  const float* tp = float_data(shift, "shift");
  if (x.ndim() < 2) fail("x must be (N, C, ...), got " + std::to_string(x.ndim()) + "-D");
  const std::int64_t batch = x.shape(0), channels = x.shape(1);
  require(scale.ndim() == 1 && shift.ndim() == 1 && scale.shape(0) == channels && shift.shape(0) == channels,
          [&] { return "scale and shift must have C = " + std::to_string(channels) + " entries"; });
  const std::int64_t plane = channels * batch != 0 ? static_cast<std::int64_t>(x.size()) / (channels * batch) : 0;
  py::array_t<float> out(std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
  float* yp = out.mutable_data();
  py::gil_scoped_release release;
  channel_affine(batch, channels, plane, xp, sp, tp, yp);
  return out;
}

py::array_t<float> add(const py::array& a, const py::array& b) {
  const float* ap = float_data(a, "a");
  const float* bp = float_data(b, "b");
  const std::vector<py::ssize_t> shape(a.shape(), a.shape() + a.ndim());
  if (std::vector<py::ssize_t>(b.shape(), b.shape() + b.ndim()) != shape) fail("a and b must have the same shape");
  py::array_t<float> out(shape);
  float* yp = out.mutable_data();
  const auto n = static_cast<std::int64_t>(a.size());
  py::gil_scoped_release release;
  add_arrays(ap, bp, yp, n);
  return out;
}

void activate(py::array& x, Activation activation) {
  if (!detail::has_dtype<float>(x)) throw type_error("x must be float32");
  if (!x.writeable()) fail("x must be writeable");
  auto* xp = static_cast<float*>(detail::output_data(x));
  const Activation act = detail::checked(activation);
  const auto n = static_cast<std::int64_t>(x.size());
  py::gil_scoped_release release;
  activate_inplace(act, xp, n);
}

void softmax(py::array& x) {
  if (!detail::has_dtype<float>(x)) throw type_error("x must be float32");
  if (x.ndim() != 2) fail("x must be 2-D (features, batch), got " + std::to_string(x.ndim()) + "-D");
  if (!x.writeable()) fail("x must be writeable");
  auto* xp = static_cast<float*>(detail::output_data(x));
  const std::int64_t rows = x.shape(0), cols = x.shape(1);
  py::gil_scoped_release release;
  softmax_axis0(xp, rows, cols);
}

}  // namespace

void register_image_ops(py::module_& m) {
  m.def(
      "max_pool2d",
      [](const py::array& x, std::int64_t kernel_h, std::int64_t kernel_w, std::int64_t stride_h, std::int64_t stride_w,
         std::int64_t padding_h, std::int64_t padding_w) {
        return pool(x, kernel_h, kernel_w, stride_h, stride_w, padding_h, padding_w, true);
      },
      py::arg("x"), py::arg("kernel_h"), py::arg("kernel_w"), py::arg("stride_h"), py::arg("stride_w"),
      py::arg("padding_h"), py::arg("padding_w"),
      "A new float32 (N, C, H_out, W_out) array: torch's max_pool2d (ceil_mode False, dilation 1, padding with "
      "-inf, at most half the kernel) of the C-contiguous float32 (N, C, H, W) x. ValueError when the window does "
      "not fit the padded input.");
  m.def(
      "avg_pool2d",
      [](const py::array& x, std::int64_t kernel_h, std::int64_t kernel_w, std::int64_t stride_h, std::int64_t stride_w,
         std::int64_t padding_h, std::int64_t padding_w) {
        return pool(x, kernel_h, kernel_w, stride_h, stride_w, padding_h, padding_w, false);
      },
      py::arg("x"), py::arg("kernel_h"), py::arg("kernel_w"), py::arg("stride_h"), py::arg("stride_w"),
      py::arg("padding_h"), py::arg("padding_w"),
      "As max_pool2d, for torch's avg_pool2d (count_include_pad True: each window sum, taken row by row, is divided "
      "by kernel_h * kernel_w).");
  m.def("adaptive_avg_pool2d", &adaptive, py::arg("x"), py::arg("out_h"), py::arg("out_w"),
        "A new float32 (N, C, out_h, out_w) array: torch's adaptive_avg_pool2d of the C-contiguous float32 (N, C, H, "
        "W) x (bins [floor(i H / out_h), ceil((i + 1) H / out_h)), sums taken row by row in float64, rounded once).");
  m.def("channel_affine", &affine, py::arg("x"), py::arg("scale"), py::arg("shift"),
        "A new float32 array x * scale[c] + shift[c] for the C-contiguous float32 (N, C, ...) x and C-entry float32 "
        "scale and shift (an inference BatchNorm2d).");
  m.def("add_arrays", &add, py::arg("a"), py::arg("b"),
        "A new float32 array a + b of two C-contiguous float32 arrays of the same shape.");
  m.def("activate_inplace", &activate, py::arg("x"), py::arg("activation"),
        "x = activation(x) element-wise, in place, for a C-contiguous writeable float32 x: the function the sparse "
        "kernels fuse.");
  m.def("softmax_axis0", &softmax, py::arg("x"),
        "Softmax over axis 0 of the C-contiguous writeable float32 (features, batch) x, in place (per column: exp(x - "
        "max), divided by its sum taken in row order).");
}

}  // namespace htcore
