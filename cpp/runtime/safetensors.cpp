// safetensors container reader (safetensors.hpp).
#include "safetensors.hpp"

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <tuple>

#include "errors.hpp"

namespace htcore::runtime {
namespace {

using nlohmann::json;

constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;  // as the reference implementation

struct DTypeInfo {
  const char* code;
  const char* name;
  DType dtype;
  std::size_t size;
};
constexpr DTypeInfo kDTypes[] = {
    {"F64", "float64", DType::f64, 8},    {"F32", "float32", DType::f32, 4}, {"F16", "float16", DType::f16, 2},
    {"BF16", "bfloat16", DType::bf16, 2}, {"I64", "int64", DType::i64, 8},   {"I32", "int32", DType::i32, 4},
    {"I16", "int16", DType::i16, 2},      {"I8", "int8", DType::i8, 1},      {"U64", "uint64", DType::u64, 8},
    {"U32", "uint32", DType::u32, 4},     {"U16", "uint16", DType::u16, 2},  {"U8", "uint8", DType::u8, 1},
    {"BOOL", "bool", DType::boolean, 1},
};

const DTypeInfo& info(DType dtype) {
  for (const auto& d : kDTypes)
    if (d.dtype == dtype) return d;
  fail("unknown dtype");
}

// A JSON integer as int64 (false for floats, booleans, or integers outside int64).
bool as_int64(const json& v, std::int64_t* out) {
  if (v.is_number_unsigned()) {
    const auto u = v.get<std::uint64_t>();
    if (u > static_cast<std::uint64_t>(INT64_MAX)) return false;
    *out = static_cast<std::int64_t>(u);
    return true;
  }
  if (v.is_number_integer()) {
    *out = v.get<std::int64_t>();
    return true;
  }
  return false;
}

}  // namespace

std::size_t dtype_size(DType dtype) { return info(dtype).size; }
const char* dtype_name(DType dtype) { return info(dtype).name; }

SafetensorsFile parse_safetensors(const unsigned char* data, std::size_t size) {
  if (size < 8) fail("too short for a safetensors file (" + std::to_string(size) + " bytes)");
  std::uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | data[i];  // little-endian on any host
  if (header_len > kMaxHeaderBytes || header_len > size - 8)
    fail("header length " + std::to_string(header_len) + " does not fit a file of " + std::to_string(size) +
         " bytes (truncated or not safetensors)");
  const json header = json::parse(data + 8, data + 8 + header_len, nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded()) fail("header is not valid JSON");
  if (!header.is_object()) fail("header must be a JSON object");
  const std::size_t data_start = 8 + static_cast<std::size_t>(header_len);
  const auto data_size = static_cast<std::int64_t>(size - data_start);

  SafetensorsFile file;
  std::vector<std::tuple<std::int64_t, std::int64_t, std::string>> spans;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) fail("__metadata__ must map strings to strings");
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) fail("__metadata__ must map strings to strings");
        file.metadata[key] = value.get<std::string>();
      }
      continue;
    }
    const std::string where = "tensor '" + name + "'";
    if (!entry.is_object()) fail(where + ": entry must have exactly dtype, shape, data_offsets");
    for (const auto& [key, value] : entry.items()) {
      (void)value;
      if (key != "dtype" && key != "shape" && key != "data_offsets")
        fail(where + ": entry must have exactly dtype, shape, data_offsets");
    }
    const DTypeInfo* dtype = nullptr;
    if (entry.contains("dtype") && entry["dtype"].is_string())
      for (const auto& d : kDTypes)
        if (entry["dtype"].get<std::string>() == d.code) dtype = &d;
    if (dtype == nullptr) fail(where + ": unsupported dtype");
    TensorView view;
    view.dtype = dtype->dtype;
    const json* shape = entry.contains("shape") ? &entry["shape"] : nullptr;
    if (shape == nullptr || !shape->is_array()) fail(where + ": shape must be a list of non-negative integers");
    // Exact element count with overflow detection: a lying shape must not wrap to a small size.
    bool overflow = false;
    std::int64_t bytes = static_cast<std::int64_t>(dtype->size);
    for (const auto& d : *shape) {
      std::int64_t n = 0;
      if (!as_int64(d, &n) || n < 0) fail(where + ": shape must be a list of non-negative integers");
      view.shape.push_back(n);
      overflow = overflow || __builtin_mul_overflow(bytes, n, &bytes);
    }
    const json* offsets = entry.contains("data_offsets") ? &entry["data_offsets"] : nullptr;
    std::int64_t begin = 0, end = 0;
    if (offsets == nullptr || !offsets->is_array() || offsets->size() != 2 || !as_int64((*offsets)[0], &begin) ||
        !as_int64((*offsets)[1], &end))
      fail(where + ": data_offsets must be two integers");
    if (!(0 <= begin && begin <= end && end <= data_size))
      fail(where + ": bytes [" + std::to_string(begin) + ", " + std::to_string(end) + ") lie outside the " +
           std::to_string(data_size) + "-byte data section (truncated?)");
    if (overflow || end - begin != bytes)
      fail(where + ": holds " + std::to_string(end - begin) + " bytes but its dtype and shape need " +
           (overflow ? std::string("more than 2**63") : std::to_string(bytes)));
    view.data = data + data_start + begin;
    view.bytes = end - begin;
    if (end > begin) spans.emplace_back(begin, end, name);
    file.tensors.emplace(name, std::move(view));
  }
  std::sort(spans.begin(), spans.end());
  for (std::size_t i = 1; i < spans.size(); ++i)
    if (std::get<0>(spans[i]) < std::get<1>(spans[i - 1]))
      fail("tensors '" + std::get<2>(spans[i - 1]) + "' and '" + std::get<2>(spans[i]) + "' overlap");
  return file;
}

}  // namespace htcore::runtime
