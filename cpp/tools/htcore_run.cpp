// htcore-run: run a compressed model file on a .npy input without Python.
//
//   htcore-run MODEL.safetensors INPUT.npy OUTPUT.npy [--threads N] [--batch N]
//
// INPUT holds float32 (float64 is converted) samples of shape (samples, ...) (flat samples take the
// model's declared input shape, as in `htcore run`); OUTPUT receives the
// float32 outputs, (samples, ...). Samples run in batches of --batch (default 64, as `htcore run`).
// Errors are one line on stderr; exit codes as the Python CLI: 0 ok, 1 a runtime or data error,
// 2 a usage error. Everything goes through the public C API (htcore/htcore.h).
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "htcore/htcore.h"

namespace {

const char* kUsage = "usage: htcore-run MODEL.safetensors INPUT.npy OUTPUT.npy [--threads N] [--batch N]";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Array {
  std::vector<std::int64_t> shape;
  std::vector<float> data;
};

std::int64_t parse_positive(const char* text, const char* option) {
  char* end = nullptr;
  errno = 0;
  const long long n = std::strtoll(text, &end, 10);
  if (end == text || *end != '\0' || errno != 0 || n < 1 || n > (1ll << 31))
    throw UsageError(std::string(option) + " must be a positive integer, got '" + text + "'");
  return n;
}

// The value of `key` in a .npy header dict (text up to the next ',' at depth 0 or the closing '}').
std::string header_value(const std::string& header, const std::string& key) {
  const auto at = header.find("'" + key + "'");
  if (at == std::string::npos) throw std::runtime_error("its .npy header has no '" + key + "'");
  auto p = header.find(':', at);
  if (p == std::string::npos) throw std::runtime_error("its .npy header is malformed");
  ++p;
  int depth = 0;
  std::string value;
  for (; p < header.size(); ++p) {
    const char c = header[p];
    if (c == '(') ++depth;
    if (c == ')') --depth;
    if (depth == 0 && (c == ',' || c == '}')) break;
    if (c != ' ') value += c;
  }
  return value;
}

// A .npy file of float32 (or float64, converted) values, every header field checked against the
// file size before anything is allocated; pickled (object) arrays are refused, never loaded.
Array read_npy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": " + std::strerror(errno));
  in.seekg(0, std::ios::end);
  const auto size = static_cast<std::int64_t>(in.tellg());
  in.seekg(0);
  const std::string where = path + ": ";
  char magic[8] = {};
  if (size < 10 || !in.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0)
    throw std::runtime_error(where + "not a .npy file (empty, truncated or another format)");
  std::int64_t header_len = 0, prefix = 0;
  unsigned char len[4] = {};
  if (magic[6] == 1) {
    in.read(reinterpret_cast<char*>(len), 2);
    header_len = len[0] | (len[1] << 8), prefix = 10;
  } else if (magic[6] == 2 || magic[6] == 3) {
    in.read(reinterpret_cast<char*>(len), 4);
    header_len = len[0] | (len[1] << 8) | (len[2] << 16) | (static_cast<std::int64_t>(len[3]) << 24), prefix = 12;
  } else {
    throw std::runtime_error(where + "unsupported .npy version " + std::to_string(magic[6]));
  }
  if (!in || prefix + header_len > size) throw std::runtime_error(where + ".npy header is truncated");
  std::string header(static_cast<std::size_t>(header_len), '\0');
  in.read(&header[0], header_len);
  try {
    const std::string descr = header_value(header, "descr");
    if (descr != "'<f4'" && descr != "'<f8'")
      throw std::runtime_error("input must hold float32 values (float64 is converted), got dtype " + descr);
    if (header_value(header, "fortran_order") != "False")
      throw std::runtime_error("input must be a C-order array (np.save of np.ascontiguousarray(x))");
    const std::string shape = header_value(header, "shape");
    if (shape.size() < 2 || shape.front() != '(' || shape.back() != ')')
      throw std::runtime_error("its .npy header has a malformed shape " + shape);
    Array a;
    std::int64_t count = 1;
    std::size_t p = 1;
    while (p + 1 < shape.size()) {
      char* end = nullptr;
      const long long d = std::strtoll(shape.c_str() + p, &end, 10);
      if (end == shape.c_str() + p || d < 0 || __builtin_mul_overflow(count, d, &count))
        throw std::runtime_error("its .npy header has a malformed shape " + shape);
      a.shape.push_back(d);
      p = static_cast<std::size_t>(end - shape.c_str());
      if (shape[p] == ',') ++p;
    }
    const std::int64_t item = descr == "'<f4'" ? 4 : 8;
    std::int64_t bytes = 0;
    if (__builtin_mul_overflow(count, item, &bytes) || bytes != size - prefix - header_len)
      throw std::runtime_error("the .npy data does not match its header's shape (truncated?)");
    if (a.shape.size() < 2 || a.shape[0] == 0)
      throw std::runtime_error("input must hold a non-empty (samples, ...) array, got shape " + shape);
    std::vector<char> raw(static_cast<std::size_t>(bytes));
    in.read(raw.data(), bytes);
    if (!in) throw std::runtime_error("cannot read the .npy data");
    a.data.resize(static_cast<std::size_t>(count));
    for (std::int64_t i = 0; i < count; ++i) {
      if (item == 4) {
        std::memcpy(&a.data[i], raw.data() + 4 * i, 4);
      } else {
        double v;
        std::memcpy(&v, raw.data() + 8 * i, 8);
        a.data[i] = static_cast<float>(v);
      }
    }
    return a;
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(where + e.what());
  }
}

void write_npy(const std::string& path, const std::vector<std::int64_t>& shape, const std::vector<float>& data) {
  std::string dims;
  for (std::size_t i = 0; i < shape.size(); ++i)
    dims += std::to_string(shape[i]) + (shape.size() == 1 || i + 1 < shape.size() ? "," : "");
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
  header += std::string(63 - (10 + header.size()) % 64, ' ') + "\n";  // data 64-byte aligned, as numpy writes
  std::ofstream out(path, std::ios::binary);
  const unsigned char prefix[10] = {0x93,
                                    'N',
                                    'U',
                                    'M',
                                    'P',
                                    'Y',
                                    1,
                                    0,
                                    static_cast<unsigned char>(header.size() & 0xff),
                                    static_cast<unsigned char>(header.size() >> 8)};
  out.write(reinterpret_cast<const char*>(prefix), 10);
  out << header;
  out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size() * sizeof(float)));
  if (!out) throw std::runtime_error(path + ": cannot write: " + std::strerror(errno));
}

void check(int status) {
  if (status != HTCORE_OK) throw std::runtime_error(htcore_last_error());
}

int run(int argc, char** argv) {
  std::vector<std::string> files;
  std::int64_t batch = 64, threads = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      std::puts(kUsage);
      return 0;
    }
    if (arg == "--threads" || arg == "--batch") {
      if (i + 1 >= argc) throw UsageError(arg + " needs a value");
      (arg == "--threads" ? threads : batch) = parse_positive(argv[++i], arg.c_str());
    } else if (!arg.empty() && arg[0] == '-' && arg != "-") {
      throw UsageError("unknown option " + arg);
    } else {
      files.push_back(arg);
    }
  }
  if (files.size() != 3)
    throw UsageError("expected MODEL INPUT OUTPUT, got " + std::to_string(files.size()) + " paths");
  if (threads) check(htcore_set_num_threads(static_cast<int>(threads)));
  htcore_model* model = nullptr;
  check(htcore_model_load(files[0].c_str(), &model));
  try {
    const Array x = read_npy(files[1]);
    std::vector<std::int64_t> sample(x.shape.begin() + 1, x.shape.end());
    // Flat samples take the model's declared input shape (as `htcore run` reshapes them).
    std::int64_t declared[HTCORE_MAX_DIMS];
    int declared_ndim = 0;
    if (htcore_model_input_shape(model, declared, &declared_ndim) == HTCORE_OK && sample.size() == 1) {
      std::int64_t n = 1;
      for (int i = 0; i < declared_ndim; ++i) n *= declared[i];
      if (n == sample[0]) sample.assign(declared, declared + declared_ndim);
    }
    if (sample.size() > HTCORE_MAX_DIMS) throw std::runtime_error("input has too many dimensions");
    std::int64_t out_dims[HTCORE_MAX_DIMS];
    int out_ndim = 0;
    check(htcore_model_output_shape(model, sample.data(), static_cast<int>(sample.size()), out_dims, &out_ndim));
    std::int64_t in_size = 1, out_size = 1;
    for (auto d : sample) in_size *= d;
    for (int i = 0; i < out_ndim; ++i) out_size *= out_dims[i];
    const std::int64_t samples = x.shape[0];
    std::vector<float> y(static_cast<std::size_t>(samples * out_size));
    for (std::int64_t start = 0; start < samples; start += batch) {
      const std::int64_t n = std::min(batch, samples - start);
      check(htcore_model_run(model, x.data.data() + start * in_size, n, sample.data(), static_cast<int>(sample.size()),
                             y.data() + start * out_size, n * out_size));
    }
    std::vector<std::int64_t> shape{samples};
    shape.insert(shape.end(), out_dims, out_dims + out_ndim);
    write_npy(files[2], shape, y);
  } catch (...) {
    htcore_model_free(model);
    throw;
  }
  htcore_model_free(model);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "%s\nhtcore-run: error: %s\n", kUsage, e.what());
    return 2;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "htcore-run: error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "htcore-run: error: %s\n", e.what());
    return 1;
  }
}
