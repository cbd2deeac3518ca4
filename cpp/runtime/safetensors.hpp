// The safetensors container, read from a byte buffer with every header field checked before any
// tensor is touched (as python/htcore/io/_safetensors.py): an 8-byte little-endian header length
// N (at most 100 MB and inside the buffer), N bytes of JSON mapping each tensor name to {"dtype",
// "shape", "data_offsets"} plus an optional "__metadata__" of string to string, then the data.
// Every tensor's byte range lies inside the data section, matches its dtype and shape exactly and
// overlaps no other tensor, so nothing read later can leave the buffer.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace htcore::runtime {

// The safetensors dtypes (BF16 is widened to float32 by the model reader, as in Python).
enum class DType { f64, f32, f16, bf16, i64, i32, i16, i8, u64, u32, u16, u8, boolean };

std::size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);  // numpy's name ("float32", "uint16", "bfloat16", ...)

struct TensorView {
  DType dtype = DType::f32;
  std::vector<std::int64_t> shape;
  const unsigned char* data = nullptr;  // inside the buffer; may be misaligned for the dtype
  std::int64_t bytes = 0;

  std::int64_t elements() const { return bytes / static_cast<std::int64_t>(dtype_size(dtype)); }
};

struct SafetensorsFile {
  std::map<std::string, std::string> metadata;
  std::map<std::string, TensorView> tensors;
};

// Parses and validates the container in [data, data + size) (which must outlive the result).
// Throws std::invalid_argument with a message naming the problem.
SafetensorsFile parse_safetensors(const unsigned char* data, std::size_t size);

}  // namespace htcore::runtime
