// Running a loaded model (model.hpp): shape inference first, then every layer with the calls the
// Python runtime makes (same kernels, same batch size k per product, the SELL-8 copy at batch 1,
// the same fused activations), so outputs are bitwise equal to Python's at the same thread count.
//
// Values are float32 arrays, batch-major ((batch, ...) images and features) except the output of a
// Linear, which the kernel writes as (features, batch) so the next Linear reads it without a
// transpose (as the Python runtime keeps it). Element-wise layers do not care; softmax wants
// (features, batch); the model output is returned batch-major.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "conv2d.hpp"
#include "errors.hpp"
#include "image_ops.hpp"
#include "model.hpp"

namespace htcore::runtime {
namespace {

constexpr std::int64_t kMaxActivation = std::int64_t(1) << 31;

std::string shape_text(const Shape& s) {
  std::string t = "(";
  for (std::size_t i = 0; i < s.size(); ++i) t += (i ? ", " : "") + std::to_string(s[i]);
  return t + (s.size() == 1 ? ",)" : ")");
}

std::int64_t elements(const Shape& s) {
  std::int64_t n = 1;
  for (auto d : s)
    if (__builtin_mul_overflow(n, d, &n)) return INT64_MAX;
  return n;
}

// One side of a conv or pool: output size, or an error when the window (reach) exceeds the padded input.
std::int64_t window_out(std::int64_t size, std::int64_t reach, std::int64_t pad, std::int64_t stride, const Shape& x,
                        const char* what) {
  if (size + 2 * pad < reach)
    fail(std::string(what) + " window " + std::to_string(reach) + " is larger than the padded input (images of shape " +
         shape_text(x) + ", padding " + std::to_string(pad) + ")");
  return (size + 2 * pad - reach) / stride + 1;
}

Shape output_shape(const Layer& l, const std::vector<Shape>& in) {
  const Shape& x = in[0];
  switch (l.kind) {
    case LayerKind::add:
      if (in[0] != in[1])
        fail("Add needs two inputs of the same shape, got " + shape_text(in[0]) + " and " + shape_text(in[1]));
      return x;
    case LayerKind::flatten: return {elements(x)};
    case LayerKind::activation:
      if (l.softmax && x.size() != 1) fail("softmax needs (features,) input, got " + shape_text(x) + ": add a Flatten");
      return x;
    case LayerKind::linear:
      if (x != Shape{l.in})
        fail("Linear expects (" + std::to_string(l.in) + ",) features per sample, got " + shape_text(x));
      return {l.out};
    default: break;
  }
  if (x.size() != 3) fail("an image layer needs (C, H, W) images per sample, got " + shape_text(x));
  const std::int64_t c = x[0], h = x[1], w = x[2];
  switch (l.kind) {
    case LayerKind::batchnorm2d:
      if (c != l.out)
        fail("BatchNorm2d has " + std::to_string(l.out) + " channels, got images of shape " + shape_text(x));
      return x;
    case LayerKind::adaptiveavgpool2d: return {c, l.out_h, l.out_w};
    case LayerKind::conv2d: {
      if (c != l.in * l.groups)
        fail("Conv2d expects " + std::to_string(l.in * l.groups) + " input channels, got images of shape " +
             shape_text(x));
      return {l.out, window_out(h, l.dilation_h * (l.kernel_h - 1) + 1, l.padding_h, l.stride_h, x, "Conv2d"),
              window_out(w, l.dilation_w * (l.kernel_w - 1) + 1, l.padding_w, l.stride_w, x, "Conv2d")};
    }
    default:  // max/avg pool
      return {c, window_out(h, l.kernel_h, l.padding_h, l.stride_h, x, "pool"),
              window_out(w, l.kernel_w, l.padding_w, l.stride_w, x, "pool")};
  }
}

// A value during a run: batch-major unless `feature_major` ((features, batch), a Linear's output).
struct Value {
  std::vector<float> data;
  Shape shape;  // per sample
  bool feature_major = false;
};

// (rows, cols) row-major -> (cols, rows) row-major.
void transpose(const float* x, std::int64_t rows, std::int64_t cols, float* y) {
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) y[c * rows + r] = x[r * cols + c];
}

void to_feature_major(Value& v, std::int64_t batch) {
  if (v.feature_major) return;
  std::vector<float> t(v.data.size());
  transpose(v.data.data(), batch, elements(v.shape), t.data());
  v.data.swap(t);
  v.feature_major = true;
}

void linear(const Layer& l, const Value& x, std::int64_t batch, Value& y) {
  y.data.resize(static_cast<std::size_t>(l.out * batch));
  y.shape = {l.out};
  y.feature_major = true;
  const Weight& w = l.weight;
  if (batch == 1 && w.has_sell) {  // (in, 1) and (1, in) are the same vector
    sell_spmv(w.sell, x.data.data(), l.in, w.bias, w.bias ? l.out : 0, l.act, y.data.data(), l.out);
    return;
  }
  csr_spmm(w.csr, x.data.data(), l.in * batch, batch, /*x_batch_major=*/!x.feature_major, w.bias, w.bias ? l.out : 0,
           l.act, y.data.data(), l.out * batch, batch, 1);
}

void image_layer(const Layer& l, const Value& x, std::int64_t batch, const Shape& out_shape, Value& y) {
  y.shape = out_shape;
  y.data.resize(static_cast<std::size_t>(batch * elements(out_shape)));
  const auto x_size = static_cast<std::int64_t>(x.data.size()), y_size = static_cast<std::int64_t>(y.data.size());
  const std::int64_t c = x.shape[0], h = x.shape[1], w = x.shape[2];
  if (l.kind == LayerKind::conv2d) {
    Conv2dParams p;
    p.batch = batch, p.in_channels = c, p.height = h, p.width = w, p.out_channels = l.out;
    p.kernel_h = l.kernel_h, p.kernel_w = l.kernel_w, p.stride_h = l.stride_h, p.stride_w = l.stride_w;
    p.padding_h = l.padding_h, p.padding_w = l.padding_w, p.dilation_h = l.dilation_h, p.dilation_w = l.dilation_w;
    p.groups = l.groups;
    sparse_conv2d(l.weight.csr, x.data.data(), x_size, p, l.weight.bias, l.weight.bias ? l.out : 0, l.act,
                  y.data.data(), y_size);
  } else if (l.kind == LayerKind::batchnorm2d) {
    channel_affine(batch, c, h * w, x.data.data(), l.scale, l.shift, y.data.data());
  } else if (l.kind == LayerKind::adaptiveavgpool2d) {
    adaptive_avg_pool2d(batch, c, h, w, l.out_h, l.out_w, x.data.data(), x_size, y.data.data(), y_size);
  } else {
    Pool2dParams p;
    p.batch = batch, p.channels = c, p.height = h, p.width = w;
    p.kernel_h = l.kernel_h, p.kernel_w = l.kernel_w, p.stride_h = l.stride_h, p.stride_w = l.stride_w;
    p.padding_h = l.padding_h, p.padding_w = l.padding_w;
    (l.kind == LayerKind::maxpool2d ? max_pool2d : avg_pool2d)(p, x.data.data(), x_size, y.data.data(), y_size);
  }
}

}  // namespace

bool Model::known_input_shape(Shape* shape) const {
  if (has_input_shape) {
    *shape = input_shape;
    return true;
  }
  for (const Layer& l : layers) {  // sequential: a Linear reading the input through Flatten/activations
    if (l.kind == LayerKind::flatten || l.kind == LayerKind::activation) continue;
    if (l.kind != LayerKind::linear) return false;
    *shape = {l.in};
    return true;
  }
  return false;
}

std::vector<Shape> Model::infer_shapes(const Shape& input) const {
  std::vector<Shape> shapes;
  for (const Layer& l : layers) {
    std::vector<Shape> in;
    for (int j : l.inputs) in.push_back(j < 0 ? input : shapes[j]);
    try {
      shapes.push_back(output_shape(l, in));
    } catch (const std::invalid_argument& e) {
      fail(l.name + ": " + e.what());
    }
    if (elements(shapes.back()) > kMaxActivation)
      fail(l.name + ": output of shape " + shape_text(shapes.back()) + " per sample has more than 2**31 elements");
  }
  return shapes;
}

void Model::run(const float* x, std::int64_t batch, const Shape& sample, float* y, std::int64_t y_size) const {
  require(batch >= 0, "batch must be non-negative");
  if (has_input_shape && sample != input_shape)
    fail("input has shape " + shape_text(sample) + " per sample, expected " + shape_text(input_shape));
  if (sample.empty()) fail("input must have at least one dimension per sample");
  const std::vector<Shape> shapes = infer_shapes(sample);
  const Shape& out_shape = shapes.empty() ? sample : shapes.back();
  std::int64_t in_size = 0, out_size = 0;
  if (__builtin_mul_overflow(batch, elements(sample), &in_size) ||
      __builtin_mul_overflow(batch, elements(out_shape), &out_size))
    fail("batch too large");
  for (const Shape& s : shapes) require(!__builtin_mul_overflow(batch, elements(s), &out_size), "batch too large");
  __builtin_mul_overflow(batch, elements(out_shape), &out_size);
  require(y_size == out_size, [&] {
    return "output buffer has " + std::to_string(y_size) + " floats, the output needs " + std::to_string(out_size);
  });
  for (std::int64_t i = 0; i < in_size; ++i)
    if (!std::isfinite(x[i])) fail("X contains non-finite values (NaN or Inf)");

  // Each value is dropped after its last reader (slot 0 is the input, slot j + 1 layer j's output);
  // an element-wise layer that is the last reader of its input takes it over instead of copying.
  std::vector<int> last_reader(layers.size() + 1, -1);
  for (std::size_t i = 0; i < layers.size(); ++i)
    for (int j : layers[i].inputs) last_reader[j + 1] = static_cast<int>(i);
  std::vector<Value> values(layers.size() + 1);
  values[0] = Value{std::vector<float>(x, x + in_size), sample, false};
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const Layer& l = layers[i];
    const int first = l.inputs[0] + 1;
    const bool last = last_reader[first] == static_cast<int>(i) && (l.inputs.size() == 1 || l.inputs[1] != l.inputs[0]);
    Value& a = values[first];
    Value& out = values[i + 1];
    switch (l.kind) {
      case LayerKind::linear: linear(l, a, batch, out); break;
      case LayerKind::flatten:
      case LayerKind::activation:
        out = last ? std::move(a) : a;
        out.shape = shapes[i];
        if (l.kind == LayerKind::flatten || l.fused) break;
        if (l.softmax) {
          to_feature_major(out, batch);
          softmax_axis0(out.data.data(), elements(out.shape), batch);
        } else {
          activate_inplace(l.act, out.data.data(), static_cast<std::int64_t>(out.data.size()));
        }
        break;
      case LayerKind::add: {
        out = last ? std::move(a) : a;
        Value b = values[l.inputs[1] + 1];
        if (out.feature_major != b.feature_major) {
          to_feature_major(out, batch);
          to_feature_major(b, batch);
        }
        add_arrays(out.data.data(), b.data.data(), out.data.data(), static_cast<std::int64_t>(out.data.size()));
        break;
      }
      default: image_layer(l, a, batch, shapes[i], out);
    }
    for (int j : l.inputs)
      if (last_reader[j + 1] == static_cast<int>(i)) values[j + 1] = Value{};
  }
  const Value& result = values.back();
  if (result.feature_major) transpose(result.data.data(), elements(result.shape), batch, y);
  else std::copy(result.data.begin(), result.data.end(), y);
}

}  // namespace htcore::runtime
