// The C API (include/htcore/htcore.h) over the C++ runtime (model.hpp): every entry point catches
// everything and turns it into a return code plus a thread-local message.
#include <exception>
#include <new>
#include <stdexcept>
#include <string>

#include "errors.hpp"
#include "htcore/htcore.h"
#include "model.hpp"
#include "parallel.hpp"

struct htcore_model {
  htcore::runtime::Model model;
};

namespace {

thread_local std::string g_last_error;

// A bad argument of the call itself (a null pointer, a wrong count), even while loading.
struct ArgumentError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

// Runs f and maps its exceptions to codes: std::invalid_argument means a bad model while loading
// (`loading`), a bad argument otherwise; std::runtime_error is an I/O error.
template <class F>
int guarded(bool loading, F&& f) {
  try {
    f();
    g_last_error.clear();
    return HTCORE_OK;
  } catch (const ArgumentError& e) {
    g_last_error = e.what();
    return HTCORE_ERROR_INVALID_ARGUMENT;
  } catch (const htcore::type_error& e) {
    g_last_error = e.what();
    return loading ? HTCORE_ERROR_INVALID_MODEL : HTCORE_ERROR_INVALID_ARGUMENT;
  } catch (const std::invalid_argument& e) {
    g_last_error = e.what();
    return loading ? HTCORE_ERROR_INVALID_MODEL : HTCORE_ERROR_INVALID_ARGUMENT;
  } catch (const std::domain_error& e) {
    g_last_error = e.what();
    return HTCORE_ERROR_INVALID_ARGUMENT;
  } catch (const std::bad_alloc&) {
    g_last_error = "out of memory";
    return HTCORE_ERROR_OUT_OF_MEMORY;
  } catch (const std::runtime_error& e) {
    g_last_error = e.what();
    return HTCORE_ERROR_IO;
  } catch (const std::exception& e) {
    g_last_error = std::string("internal error: ") + e.what();
    return HTCORE_ERROR_INTERNAL;
  } catch (...) {
    g_last_error = "internal error";
    return HTCORE_ERROR_INTERNAL;
  }
}

void require_not_null(const void* p, const char* name) {
  if (p == nullptr) throw ArgumentError(std::string(name) + " must not be null");
}

htcore::runtime::Shape sample_shape(const htcore_model* m, const int64_t* dims, int ndim) {
  htcore::runtime::Shape shape;
  if (dims == nullptr) {
    if (!m->model.known_input_shape(&shape))
      throw ArgumentError("the model file declares no input shape: pass input_dims");
    return shape;
  }
  if (ndim < 1 || ndim > HTCORE_MAX_DIMS)
    throw ArgumentError("input_ndim must be in [1, " + std::to_string(HTCORE_MAX_DIMS) + "], got " +
                        std::to_string(ndim));
  for (int i = 0; i < ndim; ++i) {
    if (dims[i] < 1) throw ArgumentError("input_dims must be positive");
    shape.push_back(dims[i]);
  }
  return shape;
}

void write_shape(const htcore::runtime::Shape& shape, int64_t* dims, int* ndim) {
  if (shape.size() > HTCORE_MAX_DIMS) throw ArgumentError("the shape has more than HTCORE_MAX_DIMS dimensions");
  for (std::size_t i = 0; i < shape.size(); ++i) dims[i] = shape[i];
  *ndim = static_cast<int>(shape.size());
}

}  // namespace

extern "C" {

int htcore_model_load(const char* path, htcore_model** model) {
  return guarded(true, [&] {
    require_not_null(path, "path");
    require_not_null(model, "model");
    *model = nullptr;
    *model = new htcore_model{htcore::runtime::load_model_file(path)};
  });
}

int htcore_model_load_buffer(const void* data, size_t size, htcore_model** model) {
  return guarded(true, [&] {
    require_not_null(model, "model");
    *model = nullptr;
    if (size) require_not_null(data, "data");
    *model = new htcore_model{htcore::runtime::load_model(static_cast<const unsigned char*>(data), size, nullptr)};
  });
}

void htcore_model_free(htcore_model* model) { delete model; }

int htcore_model_input_shape(const htcore_model* model, int64_t* dims, int* ndim) {
  return guarded(false, [&] {
    require_not_null(model, "model");
    require_not_null(dims, "dims");
    require_not_null(ndim, "ndim");
    write_shape(sample_shape(model, nullptr, 0), dims, ndim);
  });
}

int htcore_model_output_shape(const htcore_model* model, const int64_t* input_dims, int input_ndim, int64_t* dims,
                              int* ndim) {
  return guarded(false, [&] {
    require_not_null(model, "model");
    require_not_null(dims, "dims");
    require_not_null(ndim, "ndim");
    const auto sample = sample_shape(model, input_dims, input_ndim);
    const auto shapes = model->model.infer_shapes(sample);
    write_shape(shapes.empty() ? sample : shapes.back(), dims, ndim);
  });
}

int htcore_model_run(const htcore_model* model, const float* input, int64_t batch, const int64_t* input_dims,
                     int input_ndim, float* output, int64_t output_size) {
  return guarded(false, [&] {
    require_not_null(model, "model");
    if (batch > 0) {
      require_not_null(input, "input");
      require_not_null(output, "output");
    }
    model->model.run(input, batch, sample_shape(model, input_dims, input_ndim), output, output_size);
  });
}

int htcore_set_num_threads(int n) {
  return guarded(false, [&] { htcore::set_num_threads(n); });
}

int htcore_get_num_threads(void) { return htcore::num_threads(); }

const char* htcore_last_error(void) { return g_last_error.c_str(); }

const char* htcore_version(void) { return HTCORE_VERSION; }

}  // extern "C"
