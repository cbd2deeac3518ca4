// Reading and validating a compressed-model file (model.hpp). The checks, their order and what
// they refuse follow python/htcore/runtime/_model_file.py and the layer constructors it calls:
// metadata keys and JSON, each architecture entry's keys and field types, the tensors each entry
// needs with their dtypes and shapes, finite float values, every CSR invariant (row pointers,
// column range, strictly increasing columns per row, codes below the codebook size), no tensor
// left unused, then the layer sequence (or graph) and, with an input_shape, shape inference.
// Nothing is allocated from a declared size before the tensors behind it passed these checks.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>

#include "errors.hpp"
#include "model.hpp"
#include "safetensors.hpp"

namespace htcore::runtime {
namespace {

using nlohmann::json;

constexpr const char* kFormat = "htcore-compressed-model";
constexpr std::int64_t kMaxElements = std::int64_t(1) << 40;    // a declared weight shape with more is refused
constexpr std::int64_t kMaxActivation = std::int64_t(1) << 31;  // elements per sample of any layer's output

bool is_int(const json& v) { return v.is_number_integer() && !v.is_boolean(); }

std::int64_t int_value(const json& v) {
  if (v.is_number_unsigned() && v.get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX)) return INT64_MAX;
  return v.get<std::int64_t>();
}

// The value of key `key` of entry `spec`, which must be of JSON kind `kind` (Python's type(v) is k).
const json& field(const json& spec, const char* key, json::value_t kind, const std::string& at) {
  const auto it = spec.find(key);
  const bool ok = it != spec.end() && (kind == json::value_t::number_integer ? is_int(*it) : it->type() == kind);
  if (!ok) {
    const char* names[] = {"null", "dict", "list", "str", "bool", "int", "int", "float", "binary", "discarded"};
    fail(at + ": '" + key + "' must be a " + names[static_cast<int>(kind)] + ", got " +
         (it == spec.end() ? std::string("None") : it->dump()));
  }
  return *it;
}

void require_keys(const json& spec, std::set<std::string> allowed, bool graph, const std::string& at) {
  if (graph) allowed.insert({"name", "inputs"});
  std::set<std::string> got;
  for (const auto& [key, value] : spec.items()) got.insert(key);
  if (got != allowed) {
    std::string want, have;
    for (const auto& k : allowed) want += (want.empty() ? "" : ", ") + k;
    for (const auto& k : got) have += (have.empty() ? "" : ", ") + k;
    fail(at + ": keys must be [" + want + "], got [" + have + "]");
  }
}

// A pair [h, w] of integers in [low, 2**31).
std::pair<std::int64_t, std::int64_t> pair(const json& spec, const char* key, std::int64_t low, const std::string& at) {
  const auto it = spec.find(key);
  const bool ok = it != spec.end() && it->is_array() && it->size() == 2 && is_int((*it)[0]) && is_int((*it)[1]) &&
                  int_value((*it)[0]) >= low && int_value((*it)[0]) < kMaxActivation && int_value((*it)[1]) >= low &&
                  int_value((*it)[1]) < kMaxActivation;
  if (!ok)
    fail(at + ": '" + key + "' must be two integers >= " + std::to_string(low) + ", got " +
         (it == spec.end() ? std::string("None") : it->dump()));
  return {int_value((*it)[0]), int_value((*it)[1])};
}

std::string shape_text(const Shape& s) {
  std::string t = "(";
  for (std::size_t i = 0; i < s.size(); ++i) t += (i ? ", " : "") + std::to_string(s[i]);
  return t + (s.size() == 1 ? ",)" : ")");
}

// Everything the file's tensors are read through: the checked container, the names used so far
// (the rest is refused at the end) and the layer whose tensors are being read.
struct Reader {
  SafetensorsFile file;
  std::set<std::string> used;

  bool has(const std::string& name) const { return file.tensors.count(name) != 0; }
  const TensorView& tensor(const std::string& name) {
    const auto it = file.tensors.find(name);
    if (it == file.tensors.end()) fail("missing tensor '" + name + "'");
    used.insert(name);
    return it->second;
  }
};

// A pointer to the tensor's values as T: the buffer itself when aligned, else an owned copy.
template <class T>
const T* aligned(const TensorView& t, Weight& w) {
  if (reinterpret_cast<std::uintptr_t>(t.data) % alignof(T) == 0) return reinterpret_cast<const T*>(t.data);
  auto copy = std::shared_ptr<T>(new T[static_cast<std::size_t>(t.elements())], std::default_delete<T[]>());
  std::memcpy(copy.get(), t.data, static_cast<std::size_t>(t.bytes));
  w.owned.push_back(copy);
  return copy.get();
}

// float32 values of a float32 or bfloat16 tensor (bfloat16 widened, as Python's reader does).
const float* float32_values(const TensorView& t, Weight& w) {
  if (t.dtype == DType::f32) return aligned<float>(t, w);
  auto copy = std::shared_ptr<float>(new float[static_cast<std::size_t>(t.elements())], std::default_delete<float[]>());
  for (std::int64_t i = 0; i < t.elements(); ++i) {
    const std::uint32_t bits = static_cast<std::uint32_t>(t.data[2 * i] | (t.data[2 * i + 1] << 8)) << 16;
    std::memcpy(copy.get() + i, &bits, 4);
  }
  w.owned.push_back(copy);
  return copy.get();
}

template <class T>
bool finite_values(const TensorView& t) {
  for (std::int64_t i = 0; i < t.elements(); ++i) {
    T v;
    std::memcpy(&v, t.data + i * static_cast<std::int64_t>(sizeof(T)), sizeof(T));
    if (!std::isfinite(static_cast<double>(v))) return false;
  }
  return true;
}

bool finite(const TensorView& t) {
  switch (t.dtype) {
    case DType::f64: return finite_values<double>(t);
    case DType::f32: return finite_values<float>(t);
    case DType::f16:
    case DType::bf16:
      for (std::int64_t i = 0; i < t.elements(); ++i) {
        const unsigned hi = t.data[2 * i + 1];
        const bool inf_or_nan =
            t.dtype == DType::f16 ? (hi & 0x7c) == 0x7c : (hi & 0x7f) == 0x7f && (t.data[2 * i] & 0x80) == 0x80;
        if (inf_or_nan) return false;
      }
      return true;
    default: return true;
  }
}

// The effective numpy dtype name (bfloat16 tensors read as float32, as in Python).
const char* effective_name(DType d) { return d == DType::bf16 ? "float32" : dtype_name(d); }

void require_dtype(const TensorView& t, const std::string& name, std::initializer_list<const char*> allowed,
                   const std::string& at) {
  std::string list;
  for (const char* a : allowed) {
    if (std::strcmp(effective_name(t.dtype), a) == 0) return;
    list += (list.empty() ? "" : " or ") + std::string(a);
  }
  fail(at + ": " + name + " must be " + list + ", got " + effective_name(t.dtype));
}

// Column indices strictly increasing within each row and inside [0, cols); row pointers from 0 to
// nnz, non-decreasing. Typed loops over the (aligned) arrays.
template <class Ptr, class Idx>
void check_csr(const Ptr* indptr, const Idx* indices, std::int64_t rows, std::int64_t cols, std::int64_t nnz,
               const std::string& at) {
  if (indptr[0] != 0 || static_cast<std::int64_t>(indptr[rows]) != nnz)
    fail(at + ": invalid CSR weight: indptr must start at 0 and end at nnz = " + std::to_string(nnz) + ", got " +
         std::to_string(static_cast<std::int64_t>(indptr[0])) + " and " +
         std::to_string(static_cast<std::int64_t>(indptr[rows])));
  for (std::int64_t r = 0; r < rows; ++r)
    if (indptr[r] > indptr[r + 1])
      fail(at + ": invalid CSR weight: indptr must be non-decreasing (first decrease at row " + std::to_string(r) +
           ")");
  for (std::int64_t p = 0; p < nnz; ++p) {
    const auto c = static_cast<std::int64_t>(indices[p]);
    if (c < 0 || c >= cols)
      fail(at + ": invalid CSR weight: indices must lie in [0, " + std::to_string(cols) + "), got " +
           std::to_string(c));
  }
  for (std::int64_t r = 0; r < rows; ++r)
    for (auto p = static_cast<std::int64_t>(indptr[r]) + 1; p < static_cast<std::int64_t>(indptr[r + 1]); ++p)
      if (indices[p] <= indices[p - 1])
        fail(at + ": invalid CSR weight: indices must be strictly increasing within each row (sorted, no duplicates)");
}

// Layer i's weight (dense of `shape` or CSR of csr_rows x csr_cols) and bias, as Python's
// _weight_tensors and _weight read them, converted to what the kernels run.
void read_weight(Reader& r, const json& spec, int i, const Shape& shape, std::int64_t csr_rows, std::int64_t csr_cols,
                 const std::string& at, Weight& w) {
  const std::string storage = field(spec, "storage", json::value_t::string, at).get<std::string>();
  if (storage != "csr" && storage != "dense") fail(at + ": storage must be 'csr' or 'dense', got '" + storage + "'");
  const std::string prefix = "layers." + std::to_string(i) + ".";
  std::vector<std::string> names =
      storage == "csr" ? std::vector<std::string>{"indptr", "indices", "data"} : std::vector<std::string>{"weight"};
  if (storage == "csr" && r.has(prefix + "codebook")) names.push_back("codebook");
  if (field(spec, "bias", json::value_t::boolean, at).get<bool>()) names.push_back("bias");
  std::map<std::string, const TensorView*> t;
  for (const auto& n : names) t[n] = &r.tensor(prefix + n);
  const std::string lat = "layer " + std::to_string(i);
  for (const auto& [n, view] : t) {
    if (n == "weight" || n == "codebook" || n == "bias") require_dtype(*view, n, {"float32"}, lat);
    if (n == "indptr") require_dtype(*view, n, {"int32", "int64"}, lat);
    if (n == "indices") require_dtype(*view, n, {"uint16", "int32"}, lat);
    if (n == "data") require_dtype(*view, n, {"float32", "float16", "float64", "uint8"}, lat);
    if (!finite(*view)) fail(lat + ": " + n + " contains non-finite values");
  }
  if (t.count("bias")) {
    if (t["bias"]->shape != Shape{shape[0]})
      fail(lat + ": bias has shape " + shape_text(t["bias"]->shape) + ", expected (" + std::to_string(shape[0]) + ",)");
    w.bias = float32_values(*t["bias"], w);
  }
  if (storage == "dense") {
    const TensorView& wt = *t["weight"];
    if (wt.shape != shape) fail(lat + ": weight has shape " + shape_text(wt.shape) + ", expected " + shape_text(shape));
    // The dense weight as a CSR matrix holding every entry (row-major values shared with the file).
    w.dense = true;
    const std::int64_t rows = csr_rows, cols = csr_cols, nnz = rows * cols;
    if (nnz >= kMaxActivation) fail(lat + ": a dense weight of " + std::to_string(nnz) + " entries is too large");
    auto indptr = std::shared_ptr<std::int32_t>(new std::int32_t[rows + 1], std::default_delete<std::int32_t[]>());
    for (std::int64_t row = 0; row <= rows; ++row) indptr.get()[row] = static_cast<std::int32_t>(row * cols);
    w.csr.indptr = indptr.get();
    w.csr.indptr_type = IndptrType::i32;
    if (cols <= 65536) {
      auto idx = std::shared_ptr<std::uint16_t>(new std::uint16_t[nnz], std::default_delete<std::uint16_t[]>());
      for (std::int64_t p = 0; p < nnz; ++p) idx.get()[p] = static_cast<std::uint16_t>(p % cols);
      w.csr.indices = idx.get(), w.csr.index_type = IndexType::u16;
      w.owned.push_back(idx);
    } else {
      auto idx = std::shared_ptr<std::int32_t>(new std::int32_t[nnz], std::default_delete<std::int32_t[]>());
      for (std::int64_t p = 0; p < nnz; ++p) idx.get()[p] = static_cast<std::int32_t>(p % cols);
      w.csr.indices = idx.get(), w.csr.index_type = IndexType::i32;
      w.owned.push_back(idx);
    }
    w.owned.push_back(indptr);
    w.csr.rows = rows, w.csr.cols = cols, w.csr.nnz = nnz;
    w.csr.data = float32_values(wt, w), w.csr.value_type = ValueType::f32;
    return;
  }
  const TensorView &indptr = *t["indptr"], &indices = *t["indices"], &data = *t["data"];
  const TensorView* codebook = t.count("codebook") ? t["codebook"] : nullptr;
  if ((data.dtype == DType::u8) != (codebook != nullptr))
    fail(lat + ": uint8 data needs a codebook and a codebook needs uint8 data");
  const std::string bad = lat + ": invalid CSR weight";
  if (codebook && (codebook->shape.size() != 1 || codebook->shape[0] < 1 || codebook->shape[0] > 256))
    fail(bad + ": codebook must be 1-D with 1 to 256 levels, got shape " + shape_text(codebook->shape));
  if (data.shape.size() != 1 || indices.shape.size() != 1 || indptr.shape.size() != 1)
    fail(bad + ": data, indices and indptr must be 1-D");
  if (indptr.shape[0] != csr_rows + 1)
    fail(bad + ": indptr must have rows + 1 = " + std::to_string(csr_rows + 1) + " entries, got " +
         std::to_string(indptr.shape[0]));
  const std::int64_t nnz = data.shape[0];
  if (indices.shape[0] != nnz)
    fail(bad + ": indices has " + std::to_string(indices.shape[0]) + " entries but data has " + std::to_string(nnz));
  CsrRef& a = w.csr;
  a.rows = csr_rows, a.cols = csr_cols, a.nnz = nnz;
  a.indptr_type = indptr.dtype == DType::i32 ? IndptrType::i32 : IndptrType::i64;
  a.index_type = indices.dtype == DType::u16 ? IndexType::u16 : IndexType::i32;
  a.indptr = a.indptr_type == IndptrType::i32 ? static_cast<const void*>(aligned<std::int32_t>(indptr, w))
                                              : aligned<std::int64_t>(indptr, w);
  a.indices = a.index_type == IndexType::u16 ? static_cast<const void*>(aligned<std::uint16_t>(indices, w))
                                             : aligned<std::int32_t>(indices, w);
  auto check = [&](auto ptr_tag, auto idx_tag) {
    using Ptr = decltype(ptr_tag);
    using Idx = decltype(idx_tag);
    check_csr(static_cast<const Ptr*>(a.indptr), static_cast<const Idx*>(a.indices), a.rows, a.cols, nnz, bad);
  };
  if (a.indptr_type == IndptrType::i32)
    a.index_type == IndexType::u16 ? check(std::int32_t{}, std::uint16_t{}) : check(std::int32_t{}, std::int32_t{});
  else a.index_type == IndexType::u16 ? check(std::int64_t{}, std::uint16_t{}) : check(std::int64_t{}, std::int32_t{});
  if (a.indptr_type == IndptrType::i32 && nnz >= kMaxActivation)
    fail(bad + ": indptr_dtype int32 cannot address nnz = " + std::to_string(nnz) + "; use int64");
  if (a.index_type == IndexType::u16 && a.cols > 65536)
    fail(bad + ": index_dtype uint16 cannot address " + std::to_string(a.cols) + " columns; use int32");
  switch (data.dtype) {
    case DType::f32: a.data = aligned<float>(data, w), a.value_type = ValueType::f32; break;
    case DType::bf16: a.data = float32_values(data, w), a.value_type = ValueType::f32; break;
    case DType::f16: a.data = aligned<std::uint16_t>(data, w), a.value_type = ValueType::f16; break;
    case DType::f64: {  // computed in float32, as Python's Linear and Conv2d convert float64 weights
      auto values = std::shared_ptr<float>(new float[nnz], std::default_delete<float[]>());
      for (std::int64_t p = 0; p < nnz; ++p) {
        double v;
        std::memcpy(&v, data.data + 8 * p, 8);
        values.get()[p] = static_cast<float>(v);
      }
      w.owned.push_back(values);
      a.data = values.get(), a.value_type = ValueType::f32;
      break;
    }
    default: {  // uint8 codes
      a.data = data.data, a.value_type = ValueType::code8;
      a.codebook = float32_values(*codebook, w);
      a.codebook_size = codebook->shape[0];
      for (std::int64_t p = 0; p < nnz; ++p)
        if (data.data[p] >= a.codebook_size)
          fail(bad + ": codes must be < len(codebook) = " + std::to_string(a.codebook_size) + ", got " +
               std::to_string(data.data[p]));
    }
  }
}

// Python's Linear keeps a SELL-8 copy of a float32/float16 CSR weight with at most 128 values per
// row on average (python/htcore/sparse/_sell.py, sell_eligible) and uses it for batches of 1.
constexpr std::int64_t kSellMaxMeanRow = 128;

void add_sell(Weight& w) {
  const CsrRef& a = w.csr;
  if (w.dense || (a.value_type != ValueType::f32 && a.value_type != ValueType::f16) || a.nnz > kSellMaxMeanRow * a.rows)
    return;
  auto perm = std::make_shared<std::vector<std::int32_t>>();
  auto slice_ptr = std::make_shared<std::vector<std::int64_t>>();
  sell_layout(a, *perm, *slice_ptr);
  const std::int64_t entries = slice_ptr->back();
  const std::size_t index_size = a.index_type == IndexType::u16 ? 2 : 4,
                    value_size = a.value_type == ValueType::f16 ? 2 : 4;
  auto indices = std::shared_ptr<unsigned char>(new unsigned char[entries * index_size + 1],
                                                std::default_delete<unsigned char[]>());
  auto data = std::shared_ptr<unsigned char>(new unsigned char[entries * value_size + 1],
                                             std::default_delete<unsigned char[]>());
  sell_fill(a, *perm, *slice_ptr, indices.get(), data.get());
  SellRef& s = w.sell;
  s.rows = a.rows, s.cols = a.cols, s.perm_size = static_cast<std::int64_t>(perm->size());
  s.slice_ptr_size = static_cast<std::int64_t>(slice_ptr->size()), s.entries = entries;
  s.perm = perm->data(), s.slice_ptr = slice_ptr->data();
  s.indices = indices.get(), s.index_type = a.index_type, s.data = data.get(), s.value_type = a.value_type;
  w.owned.insert(w.owned.end(), {perm, slice_ptr, indices, data});
  w.has_sell = true;
}

Layer read_layer(Reader& r, const json& spec, int i, bool graph, const std::string& at) {
  Layer layer;
  const std::string kind = field(spec, "type", json::value_t::string, at).get<std::string>();
  if (kind == "linear") {
    require_keys(spec, {"type", "storage", "shape", "bias"}, graph, at);
    const json& shape = field(spec, "shape", json::value_t::array, at);
    if (shape.size() != 2 || !is_int(shape[0]) || !is_int(shape[1]) || int_value(shape[0]) < 0 ||
        int_value(shape[1]) < 0)
      fail(at + ": shape must be two non-negative integers, got " + shape.dump());
    layer.kind = LayerKind::linear;
    layer.out = int_value(shape[0]), layer.in = int_value(shape[1]);
    std::int64_t total = 0;
    if (layer.out >= kMaxActivation || layer.in >= kMaxActivation ||
        __builtin_mul_overflow(layer.out, layer.in, &total) || total > kMaxElements)
      fail(at + ": shape " + shape.dump() + " is too large");
    read_weight(r, spec, i, {layer.out, layer.in}, layer.out, layer.in, at, layer.weight);
    add_sell(layer.weight);
  } else if (kind == "conv2d") {
    require_keys(spec, {"type", "storage", "shape", "stride", "padding", "dilation", "groups", "bias"}, graph, at);
    const json& shape = field(spec, "shape", json::value_t::array, at);
    bool ok = shape.size() == 4;
    for (const auto& d : shape) ok = ok && is_int(d) && int_value(d) >= 1;
    if (!ok) fail(at + ": shape must be four positive integers [out, in_per_group, kh, kw], got " + shape.dump());
    const std::int64_t out = int_value(shape[0]), per_group = int_value(shape[1]), kh = int_value(shape[2]),
                       kw = int_value(shape[3]);
    std::int64_t cols = 0, total = 0;
    if (__builtin_mul_overflow(per_group, kh * 1, &cols) || __builtin_mul_overflow(cols, kw, &cols) ||
        __builtin_mul_overflow(cols, out, &total) || total > kMaxElements || cols >= kMaxActivation ||
        out >= kMaxActivation)
      fail(at + ": shape " + shape.dump() + " is too large");
    std::tie(layer.stride_h, layer.stride_w) = pair(spec, "stride", 1, at);
    std::tie(layer.padding_h, layer.padding_w) = pair(spec, "padding", 0, at);
    std::tie(layer.dilation_h, layer.dilation_w) = pair(spec, "dilation", 1, at);
    const std::int64_t groups = int_value(field(spec, "groups", json::value_t::number_integer, at));
    if (groups < 1 || out % groups)
      fail(at + ": groups must be a positive integer dividing the " + std::to_string(out) + " output channels, got " +
           std::to_string(groups));
    layer.kind = LayerKind::conv2d;
    layer.out = out, layer.in = per_group, layer.kernel_h = kh, layer.kernel_w = kw, layer.groups = groups;
    if (kh >= kMaxActivation || kw >= kMaxActivation) fail(at + ": kernel_size must be below 2**31");
    read_weight(r, spec, i, {out, per_group, kh, kw}, out, cols, at, layer.weight);
  } else if (kind == "maxpool2d" || kind == "avgpool2d") {
    require_keys(spec, {"type", "kernel_size", "stride", "padding"}, graph, at);
    layer.kind = kind == "maxpool2d" ? LayerKind::maxpool2d : LayerKind::avgpool2d;
    std::tie(layer.kernel_h, layer.kernel_w) = pair(spec, "kernel_size", 1, at);
    std::tie(layer.stride_h, layer.stride_w) = pair(spec, "stride", 1, at);
    std::tie(layer.padding_h, layer.padding_w) = pair(spec, "padding", 0, at);
    if (layer.padding_h > layer.kernel_h / 2 || layer.padding_w > layer.kernel_w / 2)
      fail(at + ": padding must be at most half the kernel_size (as torch requires)");
  } else if (kind == "adaptiveavgpool2d") {
    require_keys(spec, {"type", "output_size"}, graph, at);
    layer.kind = LayerKind::adaptiveavgpool2d;
    std::tie(layer.out_h, layer.out_w) = pair(spec, "output_size", 1, at);
    if (layer.out_h * layer.out_w >= kMaxActivation)
      fail(at + ": output_size " + spec["output_size"].dump() + " is too large");
  } else if (kind == "batchnorm2d") {
    require_keys(spec, {"type", "channels"}, graph, at);
    const std::int64_t channels = int_value(field(spec, "channels", json::value_t::number_integer, at));
    if (channels < 1 || channels >= kMaxActivation)
      fail(at + ": channels must be a positive integer below 2**31, got " + std::to_string(channels));
    layer.kind = LayerKind::batchnorm2d;
    layer.out = channels;
    const std::string prefix = "layers." + std::to_string(i) + ".";
    const std::string lat = "layer " + std::to_string(i);
    for (const char* n : {"scale", "shift"}) {
      const TensorView& t = r.tensor(prefix + n);
      require_dtype(t, n, {"float32"}, lat);
      if (t.shape != Shape{channels})
        fail(lat + ": " + n + " has shape " + shape_text(t.shape) + ", expected (" + std::to_string(channels) + ",)");
      if (!finite(t)) fail(lat + ": " + n + " contains non-finite values");
      (std::strcmp(n, "scale") == 0 ? layer.scale : layer.shift) = float32_values(t, layer.weight);
    }
  } else if (kind == "add") {
    require_keys(spec, {"type"}, graph, at);
    if (!graph) fail(at + ": an add takes two inputs: it needs a graph file (entries with name and inputs)");
    layer.kind = LayerKind::add;
  } else if (kind == "activation") {
    require_keys(spec, {"type", "kind"}, graph, at);
    const std::string act = field(spec, "kind", json::value_t::string, at).get<std::string>();
    layer.kind = LayerKind::activation;
    if (act == "relu") layer.act = Activation::relu;
    else if (act == "gelu") layer.act = Activation::gelu;
    else if (act == "tanh") layer.act = Activation::tanh;
    else if (act == "softmax") layer.softmax = true;
    else fail(at + ": activation kind must be one of ('relu', 'gelu', 'tanh', 'softmax'), got '" + act + "'");
  } else if (kind == "flatten") {
    require_keys(spec, {"type"}, graph, at);
    layer.kind = LayerKind::flatten;
  } else {
    fail(at + ": unknown layer type '" + kind + "'");
  }
  return layer;
}

bool is_image_layer(LayerKind k) {
  return k == LayerKind::conv2d || k == LayerKind::maxpool2d || k == LayerKind::avgpool2d ||
         k == LayerKind::batchnorm2d || k == LayerKind::adaptiveavgpool2d;
}

// Python's _check_sequential: image layers before any Flatten or Linear; channels of Conv2d and
// BatchNorm2d chain; Linear features chain.
void check_sequential(const std::vector<Layer>& layers) {
  std::int64_t features = -1, channels = -1;
  bool flat_seen = false;
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const Layer& l = layers[i];
    const std::string at = "layers[" + std::to_string(i) + "]";
    if (is_image_layer(l.kind)) {
      if (flat_seen) fail(at + " is an image layer after a Flatten or Linear: image layers must come first");
      if (l.kind == LayerKind::conv2d || l.kind == LayerKind::batchnorm2d) {
        const std::int64_t expects = l.kind == LayerKind::conv2d ? l.in * l.groups : l.out;
        if (channels >= 0 && expects != channels)
          fail(at + " expects " + std::to_string(expects) + " input channels but the previous layer gives " +
               std::to_string(channels));
        channels = l.out;
      }
    } else if (l.kind == LayerKind::linear || l.kind == LayerKind::flatten) {
      flat_seen = true;
    }
    if (l.kind == LayerKind::linear) {
      if (features >= 0 && l.in != features)
        fail(at + " expects " + std::to_string(l.in) + " input features but the previous Linear gives " +
             std::to_string(features));
      features = l.out;
    }
  }
}

// Graph files: names unique and not "input", inputs "input" or earlier names, arity, every entry
// but the last used later.
void read_graph_edges(const json& architecture, std::vector<Layer>& layers) {
  std::map<std::string, int> index;
  std::set<int> used;
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const json& spec = architecture[i];
    const std::string at = "architecture[" + std::to_string(i) + "]";
    const std::string name = field(spec, "name", json::value_t::string, at).get<std::string>();
    if (name.empty() || name == "input") fail(at + ": name must be a non-empty string other than 'input'");
    if (index.count(name)) fail(at + ": duplicate name '" + name + "'");
    const json& inputs = field(spec, "inputs", json::value_t::array, at);
    const std::size_t arity = layers[i].kind == LayerKind::add ? 2 : 1;
    if (inputs.size() != arity)
      fail(at + ": a " + spec["type"].get<std::string>() + " takes " + std::to_string(arity) + " input(s), got " +
           std::to_string(inputs.size()));
    for (const auto& ref : inputs) {
      if (!ref.is_string()) fail(at + ": inputs must be names (strings), got " + inputs.dump());
      const std::string r = ref.get<std::string>();
      if (r == "input") {
        layers[i].inputs.push_back(-1);
        continue;
      }
      const auto it = index.find(r);
      if (it == index.end())
        fail(at + ": input '" + r + "' is not an earlier entry nor 'input' (entries must be in topological order)");
      layers[i].inputs.push_back(it->second);
      used.insert(it->second);
    }
    layers[i].name = "node '" + name + "'";
    index[name] = static_cast<int>(i);
  }
  for (std::size_t i = 0; i + 1 < layers.size(); ++i)
    if (!used.count(static_cast<int>(i)))
      fail("architecture[" + std::to_string(i) + "] (" + layers[i].name + ") is not used by any later entry");
}

// Which activations run fused into the layer before them (Python's _plan and _graph_plan): an
// element-wise activation right after (sequential) or the only user of (graph) a Conv2d or a
// sparse Linear.
void plan_fusion(std::vector<Layer>& layers, bool graph) {
  std::vector<int> users(layers.size(), 0);
  for (const auto& l : layers)
    for (int j : l.inputs)
      if (j >= 0) ++users[j];
  for (std::size_t i = 0; i < layers.size(); ++i) {
    Layer& l = layers[i];
    if (l.kind != LayerKind::activation || l.softmax || l.inputs[0] < 0) continue;
    Layer& prev = layers[l.inputs[0]];
    const bool fusable = prev.kind == LayerKind::conv2d || (prev.kind == LayerKind::linear && !prev.weight.dense);
    const bool only_user = graph ? users[l.inputs[0]] == 1 : !prev.fused && prev.act == Activation::none;
    if (fusable && only_user && prev.act == Activation::none) {
      prev.act = l.act;
      l.fused = true;
    }
  }
}

}  // namespace

Model load_model(const unsigned char* data, std::size_t size, std::shared_ptr<void> storage) {
  Reader r{parse_safetensors(data, size), {}};
  const auto& raw = r.file.metadata;
  const std::set<std::string> required{"format",       "format_version", "htcore_version",
                                       "architecture", "provenance",     "metadata"};
  std::set<std::string> keys;
  for (const auto& [k, v] : raw) keys.insert(k);
  std::set<std::string> base = keys;
  base.erase("input_shape");
  if (base != required) fail("not an htcore compressed model (its metadata keys are not the format's)");
  std::map<std::string, json> meta;
  for (const auto& [k, v] : raw) {
    meta[k] = json::parse(v, nullptr, false);
    if (meta[k].is_discarded()) fail("metadata '" + k + "' is not valid JSON");
  }
  if (meta["format"] != kFormat) fail("format is " + meta["format"].dump() + ", expected '" + kFormat + "'");
  const json& version = meta["format_version"];
  if (!((version.is_number() && version.get<double>() == 1.0) || version == true))  // Python's == 1
    fail("format_version " + version.dump() + " is not supported (this htcore reads 1)");
  if (!meta["htcore_version"].is_string()) fail("htcore_version must be a string");
  const json& architecture = meta["architecture"];
  bool objects = architecture.is_array();
  if (objects)
    for (const auto& s : architecture) objects = objects && s.is_object();
  if (!objects) fail("architecture must be a list of objects");
  for (const char* k : {"provenance", "metadata"})
    if (!meta[k].is_object()) fail(std::string(k) + " must be a JSON object");

  Model model;
  model.storage = std::move(storage);
  if (meta.count("input_shape")) {
    const json& s = meta["input_shape"];
    bool ok = s.is_array() && !s.empty();
    std::int64_t total = 1;
    if (ok)
      for (const auto& d : s) {
        ok = ok && is_int(d) && int_value(d) >= 1 && int_value(d) < kMaxActivation &&
             !__builtin_mul_overflow(total, int_value(d), &total);
        if (ok) model.input_shape.push_back(int_value(d));
      }
    if (!ok) fail("input_shape must be a non-empty list of positive integers, got " + s.dump());
    if (total > kMaxActivation) fail("input_shape " + s.dump() + " has more than 2**31 elements per sample");
    model.has_input_shape = true;
  }
  for (const auto& spec : architecture)
    if (spec.contains("name") || spec.contains("inputs")) model.graph = true;
  if (model.graph && !model.has_input_shape) fail("a graph file needs input_shape");

  for (std::size_t i = 0; i < architecture.size(); ++i) {
    const std::string at = "architecture[" + std::to_string(i) + "]";
    model.layers.push_back(read_layer(r, architecture[i], static_cast<int>(i), model.graph, at));
    model.layers.back().name = "layers[" + std::to_string(i) + "]";
    model.layers.back().inputs = {static_cast<int>(i) - 1};
  }
  std::vector<std::string> extra;
  for (const auto& [name, view] : r.file.tensors)
    if (!r.used.count(name)) extra.push_back(name);
  if (!extra.empty())
    fail("tensors not used by the architecture: '" + extra[0] + "'" + (extra.size() > 1 ? ", ..." : ""));
  if (model.graph) {
    if (model.layers.empty()) fail("a graph model needs at least one entry");
    for (auto& l : model.layers) l.inputs.clear();
    read_graph_edges(architecture, model.layers);
  } else {
    check_sequential(model.layers);
  }
  if (model.has_input_shape) model.infer_shapes(model.input_shape);  // throws on a mismatch
  plan_fusion(model.layers, model.graph);
  return model;
}

Model load_model_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw std::runtime_error(path + ": " + std::strerror(errno));
  struct stat st{};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw std::runtime_error(path + ": not a regular file");
  }
  const auto size = static_cast<std::size_t>(st.st_size);
  void* map = size ? ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0) : nullptr;
  ::close(fd);
  if (size && map == MAP_FAILED) throw std::runtime_error(path + ": cannot map the file: " + std::strerror(errno));
  std::shared_ptr<void> storage(map, [size](void* p) {
    if (p) ::munmap(p, size);
  });
  try {
    return load_model(static_cast<const unsigned char*>(map), size, storage);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(path + ": " + e.what());
  }
}

}  // namespace htcore::runtime
