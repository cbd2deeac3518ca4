// The C++ runtime of a compressed model: the model file (python/htcore/runtime/_model_file.py's
// format, sequential or graph) read and validated exactly as the Python loader does, and run with
// the same kernels and the same calls as the Python runtime (python/htcore/runtime/_model.py), so
// the outputs are bitwise equal at the same thread count.
//
// Weights stay in the caller's buffer (or the file's mapping) when their alignment allows; only
// float64 and bfloat16 values (converted to float32, as in Python), misaligned arrays and the
// derived layouts (SELL-8 copies, the CSR form of dense weights) are allocated, each bounded by
// tensors already checked against the buffer's size.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "csr.hpp"
#include "sell.hpp"

namespace htcore::runtime {

enum class LayerKind { linear, conv2d, maxpool2d, avgpool2d, adaptiveavgpool2d, batchnorm2d, add, activation, flatten };

using Shape = std::vector<std::int64_t>;  // per sample, without the batch dimension

// A weight as the kernels read it: CSR (a dense weight holds every entry, as Python's Conv2d does),
// plus its SELL-8 copy for batch 1 when Python's Linear keeps one.
struct Weight {
  CsrRef csr;
  bool dense = false;  // stored dense in the file (a dense Linear runs in the CSR kernel too: see the executor)
  bool has_sell = false;
  SellRef sell;
  const float* bias = nullptr;
  std::vector<std::shared_ptr<void>> owned;  // converted or realigned arrays and the SELL-8 layout
};

struct Layer {
  LayerKind kind = LayerKind::flatten;
  std::vector<int> inputs;  // indices of earlier layers; -1 is the model input
  std::string name;         // graph files: the node name; sequential: "layers[i]"
  // linear: (out, in); conv2d: out channels, in channels per group, kernel; pools: kernel.
  std::int64_t out = 0, in = 0, kernel_h = 1, kernel_w = 1, stride_h = 1, stride_w = 1;
  std::int64_t padding_h = 0, padding_w = 0, dilation_h = 1, dilation_w = 1, groups = 1;
  std::int64_t out_h = 1, out_w = 1;  // adaptiveavgpool2d
  Weight weight;                      // linear, conv2d
  const float* scale = nullptr;       // batchnorm2d (out = channels)
  const float* shift = nullptr;
  bool softmax = false;               // activation: softmax over the features
  Activation act = Activation::none;  // activation: element-wise kind; linear/conv2d: the fused one
  bool fused = false;                 // an activation computed by the layer before it
};

struct Model {
  std::vector<Layer> layers;
  bool graph = false;
  bool has_input_shape = false;
  Shape input_shape;
  std::shared_ptr<void> storage;  // keeps the mapping or the copied file alive (null for a caller's buffer)

  // The per-sample input shape when the model knows it: its input_shape, else [in_features] of
  // a Linear reading the input through Flatten/activations only. False when it does not say.
  bool known_input_shape(Shape* shape) const;
  // Per-sample output shape of every layer for a per-sample input shape (graph files: each layer's
  // inputs; sequential: the previous layer). Throws std::invalid_argument naming the layer.
  std::vector<Shape> infer_shapes(const Shape& input) const;
  // y (batch * prod(output shape) floats) = the model applied to x (batch samples of `sample`
  // shape). Throws std::invalid_argument (bad shapes, NaN/Inf in x) before any kernel runs.
  void run(const float* x, std::int64_t batch, const Shape& sample, float* y, std::int64_t y_size) const;
};

// Reads and validates the model file in [data, data + size) (which must outlive the model unless
// `storage` owns it). Throws std::invalid_argument with a message naming the offending part.
Model load_model(const unsigned char* data, std::size_t size, std::shared_ptr<void> storage);
// Maps (or reads) the file at path and loads it. Throws std::runtime_error for I/O errors.
Model load_model_file(const std::string& path);

}  // namespace htcore::runtime
